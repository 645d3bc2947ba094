//! The closed vocabulary of error codes and their HTTP statuses.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error body: `{"error": {"code", "message"}}` (and `field` for validation errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// SNAKE_CASE, stable: clients branch on it.
    pub code: String,
    /// For people: what went wrong, which input, what to do.
    pub message: String,
    /// The request field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Error codes other than the per-field validation codes (which come from
/// `gp4u_core::manifest::ValidationCode` and are all 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    TokenMissing,
    TokenMalformed,
    TokenBadSignature,
    TokenExpired,
    TokenTooLong,
    UserUnknown,
    UserSuspended,
    ClearanceExceedsStored,
    AdminRequired,
    ProviderRequired,
    CustomerRequired,
    InvalidJson,
    InvalidIdempotencyKey,
    InvalidQuery,
    NotFound,
    JobNotFound,
    NodeNotFound,
    InvalidReport,
    BodyUnreadable,
    InvalidInputs,
    InvalidSha256,
    Sha256Mismatch,
    ArtifactNotFound,
    OutputNotFound,
    GpuNotFound,
    UserNotFound,
    GpuNotAvailable,
    NoMatchingGpu,
    JobAlreadyTerminal,
    UserExists,
    CreditBelowZero,
    InsufficientCredit,
    InvalidProof,
    ProofExists,
    NotSettled,
    IdempotencyKeyReused,
    BodyTooLarge,
    RateLimited,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TokenMissing => "TOKEN_MISSING",
            ErrorCode::TokenMalformed => "TOKEN_MALFORMED",
            ErrorCode::TokenBadSignature => "TOKEN_BAD_SIGNATURE",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::TokenTooLong => "TOKEN_TOO_LONG",
            ErrorCode::UserUnknown => "USER_UNKNOWN",
            ErrorCode::UserSuspended => "USER_SUSPENDED",
            ErrorCode::ClearanceExceedsStored => "CLEARANCE_EXCEEDS_STORED",
            ErrorCode::AdminRequired => "ADMIN_REQUIRED",
            ErrorCode::ProviderRequired => "PROVIDER_REQUIRED",
            ErrorCode::CustomerRequired => "CUSTOMER_REQUIRED",
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::InvalidIdempotencyKey => "INVALID_IDEMPOTENCY_KEY",
            ErrorCode::InvalidQuery => "INVALID_QUERY",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::JobNotFound => "JOB_NOT_FOUND",
            ErrorCode::NodeNotFound => "NODE_NOT_FOUND",
            ErrorCode::InvalidReport => "INVALID_REPORT",
            ErrorCode::BodyUnreadable => "BODY_UNREADABLE",
            ErrorCode::InvalidInputs => "INVALID_INPUTS",
            ErrorCode::InvalidSha256 => "INVALID_SHA256",
            ErrorCode::Sha256Mismatch => "SHA256_MISMATCH",
            ErrorCode::ArtifactNotFound => "ARTIFACT_NOT_FOUND",
            ErrorCode::OutputNotFound => "OUTPUT_NOT_FOUND",
            ErrorCode::GpuNotFound => "GPU_NOT_FOUND",
            ErrorCode::UserNotFound => "USER_NOT_FOUND",
            ErrorCode::GpuNotAvailable => "GPU_NOT_AVAILABLE",
            ErrorCode::NoMatchingGpu => "NO_MATCHING_GPU",
            ErrorCode::JobAlreadyTerminal => "JOB_ALREADY_TERMINAL",
            ErrorCode::UserExists => "USER_EXISTS",
            ErrorCode::CreditBelowZero => "CREDIT_BELOW_ZERO",
            ErrorCode::InsufficientCredit => "INSUFFICIENT_CREDIT",
            ErrorCode::InvalidProof => "INVALID_PROOF",
            ErrorCode::ProofExists => "PROOF_EXISTS",
            ErrorCode::NotSettled => "NOT_SETTLED",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::BodyTooLarge => "BODY_TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::TokenMissing
            | ErrorCode::TokenMalformed
            | ErrorCode::TokenBadSignature
            | ErrorCode::TokenExpired
            | ErrorCode::TokenTooLong => 401,
            ErrorCode::UserUnknown
            | ErrorCode::UserSuspended
            | ErrorCode::ClearanceExceedsStored
            | ErrorCode::AdminRequired
            | ErrorCode::ProviderRequired
            | ErrorCode::CustomerRequired => 403,
            ErrorCode::InvalidJson
            | ErrorCode::InvalidIdempotencyKey
            | ErrorCode::InvalidQuery
            | ErrorCode::InvalidReport
            | ErrorCode::BodyUnreadable
            | ErrorCode::InvalidInputs
            | ErrorCode::InvalidSha256
            | ErrorCode::Sha256Mismatch
            | ErrorCode::InvalidProof => 400,
            ErrorCode::InsufficientCredit => 402,
            ErrorCode::NotFound
            | ErrorCode::JobNotFound
            | ErrorCode::NodeNotFound
            | ErrorCode::GpuNotFound
            | ErrorCode::UserNotFound
            | ErrorCode::ArtifactNotFound
            | ErrorCode::OutputNotFound => 404,
            ErrorCode::GpuNotAvailable
            | ErrorCode::NoMatchingGpu
            | ErrorCode::JobAlreadyTerminal
            | ErrorCode::UserExists
            | ErrorCode::CreditBelowZero
            | ErrorCode::ProofExists
            | ErrorCode::NotSettled => 409,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::BodyTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}
