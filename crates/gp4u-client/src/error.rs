//! What can go wrong talking to the platform, told apart the way callers need: the CLI's exit
//! classes, and the agent's "try again later" / "this job is not yours any more".

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the GP4U server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{message} (HTTP {status} {code})")]
    Refused {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
        /// The wait the server asked for (`Retry-After`, in seconds), when it said.
        retry_after: Option<Duration>,
    },
    #[error("the server's answer to {what} is not what this client understands: {detail}")]
    Unexpected { what: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the download of {what} does not match its SHA-256: the server said {expected}, the bytes are {actual}; nothing was kept"
    )]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// One failure shared by several callers (e.g. a telemetry array refused or lost as a
    /// whole): every method answers as for the error inside.
    #[error("{0}")]
    Shared(Arc<ClientError>),
}

impl ClientError {
    /// The error itself, out of a [`ClientError::Shared`].
    pub fn inner(&self) -> &ClientError {
        match self {
            ClientError::Shared(inner) => inner.inner(),
            other => other,
        }
    }

    /// The CLI's exit code for this error (SPEC §11): 3 authentication (401, 403), 4 the
    /// server unreachable (or failing: 5xx), 2 anything else the server refused.
    pub fn exit_code(&self) -> i32 {
        match self.inner() {
            ClientError::Refused {
                status: 401 | 403, ..
            } => 3,
            ClientError::Refused { status, .. } if *status >= 500 => 4,
            ClientError::Unreachable { .. } => 4,
            _ => 2,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self.inner() {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The platform's error code (`JOB_NOT_FOUND`, …), when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self.inner() {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The wait the server asked for before trying again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner() {
            ClientError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later may help (the platform down, overloaded or rate-limiting),
    /// as opposed to a refusal that will not change (bad token, unknown node, bad input).
    pub fn is_transient(&self) -> bool {
        match self.inner() {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// 429: rate-limited.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429)
    }

    /// A 404 that says the *route* does not exist (a platform older than the call), as
    /// opposed to the job or node not being found.
    pub fn is_route_missing(&self) -> bool {
        matches!(
            self.inner(),
            ClientError::Refused { status: 404, code, message, .. }
                if code == "NOT_FOUND" && message.starts_with("no route")
        )
    }

    /// The platform says the job is not (or no longer) the caller's to run: 404 (not on this
    /// node, unknown) or 409 (already ended). An agent must kill it and report nothing more.
    pub fn is_fenced(&self) -> bool {
        matches!(self.status(), Some(404 | 409)) && !self.is_route_missing()
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The `Retry-After` header as a wait (seconds; HTTP dates are not sent by GP4U).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The platform's error body (`{"error": {"code", "message", "field"}}`) as a
/// [`ClientError::Refused`]; a body that is not one is kept as the message.
pub(crate) async fn refusal(response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    refused_from_text(status, &text, retry_after)
}

pub(crate) fn refused_from_text(
    status: u16,
    text: &str,
    retry_after: Option<Duration>,
) -> ClientError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = &body["error"];
    ClientError::Refused {
        status,
        code: error["code"].as_str().unwrap_or("HTTP_ERROR").to_string(),
        message: error["message"].as_str().map_or_else(
            || {
                let text = text.trim();
                if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    text.chars().take(300).collect()
                }
            },
            str::to_string,
        ),
        field: error["field"].as_str().map(str::to_string),
        retry_after,
    }
}

/// A transport error, with its cause (connection refused, DNS, timeout) spelled out.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, body: &str) -> ClientError {
        refused_from_text(status, body, None)
    }

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        assert_eq!(refused(401, "").exit_code(), 3);
        assert_eq!(refused(403, "").exit_code(), 3);
        assert_eq!(refused(400, "").exit_code(), 2);
        assert_eq!(refused(404, "").exit_code(), 2);
        assert_eq!(refused(503, "").exit_code(), 4);
        let unreachable = ClientError::Unreachable {
            url: "http://x".into(),
            detail: "refused".into(),
        };
        assert_eq!(unreachable.exit_code(), 4);
    }

    #[test]
    fn refusals_are_told_apart() {
        let gone = refused(
            404,
            r#"{"error":{"code":"JOB_NOT_FOUND","message":"no job job_x on node node_y"}}"#,
        );
        assert!(gone.is_fenced() && !gone.is_route_missing() && !gone.is_transient());
        assert_eq!(gone.code(), Some("JOB_NOT_FOUND"));
        let ended = refused(
            409,
            r#"{"error":{"code":"JOB_ALREADY_TERMINAL","message":"job job_x is COMPLETE"}}"#,
        );
        assert!(ended.is_fenced());
        // A bare 404 (not the platform's error body) is still the job being gone.
        assert!(refused(404, "").is_fenced());
        let old = refused(
            404,
            r#"{"error":{"code":"NOT_FOUND","message":"no route POST /api/telemetry/russian-doll; GET /api/openapi.json lists them"}}"#,
        );
        assert!(old.is_route_missing() && !old.is_fenced());
        let limited = refused(
            429,
            r#"{"error":{"code":"RATE_LIMITED","message":"slow down"}}"#,
        );
        assert!(limited.is_rate_limited() && limited.is_transient() && !limited.is_fenced());
        assert!(refused(503, "").is_transient());
        assert!(!refused(400, "").is_transient() && !refused(400, "").is_fenced());
        // A shared error answers as the one inside.
        let shared = ClientError::Shared(Arc::new(ended));
        assert!(shared.is_fenced() && !shared.is_transient());
        assert_eq!(
            (shared.status(), shared.code()),
            (Some(409), Some("JOB_ALREADY_TERMINAL"))
        );
        assert!(ClientError::Shared(Arc::new(old)).is_route_missing());
        assert!(ClientError::Shared(Arc::new(refused(503, ""))).is_transient());
        // A non-JSON body is kept as the message.
        assert!(
            refused(502, "bad gateway")
                .to_string()
                .contains("bad gateway")
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(
            "retry-after",
            reqwest::header::HeaderValue::from_static(" 7"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            "retry-after",
            reqwest::header::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
