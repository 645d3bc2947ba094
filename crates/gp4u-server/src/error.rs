//! One error type for every handler. It renders as `{"error": {"code", "message"}}` with the
//! status that belongs to the code; store errors are translated where they surface.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gp4u_core::manifest::FieldError;
use gp4u_core::token::TokenError;
use gp4u_proto::{ErrorBody, ErrorCode, ErrorDetail};
use gp4u_store::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log with the request id; the client gets no internals.
        tracing::error!(%error, context, "internal error");
        ApiError::new(
            ErrorCode::Internal,
            "internal error; the request id in x-request-id finds it in the server log",
        )
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: error.code.as_str(),
            message: error.message,
            field: Some(error.field),
            retry_after: None,
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> ApiError {
        let code = match error {
            TokenError::TooLong => ErrorCode::TokenTooLong,
            TokenError::Malformed => ErrorCode::TokenMalformed,
            TokenError::BadSignature => ErrorCode::TokenBadSignature,
            TokenError::Expired => ErrorCode::TokenExpired,
            // A server-side problem, never the client's token.
            TokenError::SecretTooShort => return ApiError::internal("token secret", error),
        };
        ApiError::new(
            code,
            format!("{error}; send Authorization: Bearer <token> with a valid, unexpired token"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound(what) => {
                ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
            }
            StoreError::Database(sqlx::Error::PoolTimedOut) => ApiError::new(
                ErrorCode::Unavailable,
                "the database is saturated; retry shortly",
            )
            .with_retry_after(1),
            other => ApiError::internal("store", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
