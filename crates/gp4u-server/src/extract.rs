//! Request extractors that fail with our JSON errors rather than axum's plain-text ones.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use gp4u_proto::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body, read up to the configured limit (413 beyond it), kept raw as well so
/// that idempotency can compare request bodies.
#[derive(Debug, Clone)]
pub struct JsonBody {
    pub value: serde_json::Value,
    pub raw: Bytes,
}

impl JsonBody {
    /// Hex SHA-256 of the raw body.
    pub fn sha256_hex(&self) -> String {
        gp4u_core::hex::sha256(&self.raw)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("the request body is larger than {limit} bytes; send a smaller body"),
    )
}

impl JsonBody {
    /// Reads and parses a body. Handlers that must do something first (the rate limit counts
    /// every attempt, even unreadable ones) take the raw `Body` and call this themselves.
    pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<JsonBody, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large(limit));
        }
        let raw = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_large(limit))?;
        let value = serde_json::from_slice(&raw).map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the request body is not valid JSON ({error}); send a JSON object"),
            )
        })?;
        Ok(JsonBody { value, raw })
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<JsonBody, ApiError> {
        let (parts, body) = request.into_parts();
        JsonBody::read(&parts.headers, body, state.limits.max_body_bytes).await
    }
}

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The optional `Idempotency-Key` header: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<IdempotencyKey, ApiError> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_HEADER) else {
            return Ok(IdempotencyKey(None));
        };
        let invalid = || {
            ApiError::new(
                ErrorCode::InvalidIdempotencyKey,
                format!(
                    "Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                ),
            )
        };
        let text = value.to_str().map_err(|_| invalid())?;
        if text.is_empty()
            || text.len() > MAX_IDEMPOTENCY_KEY_LEN
            || !text.bytes().all(|byte| byte.is_ascii_graphic())
        {
            return Err(invalid());
        }
        Ok(IdempotencyKey(Some(text.to_string())))
    }
}
