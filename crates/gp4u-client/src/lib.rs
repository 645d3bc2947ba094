//! The typed client of the GP4U API (SPEC §11): the one place that speaks the wire contract
//! of `gp4u-proto`, for the CLI, the agent, `gp4u verify`, the tests and the benches.
//!
//! - Every call is a method taking and returning `gp4u-proto` types, grouped by who calls
//!   it: [`account`](crate::account) (the caller's money and energy), [`jobs`](crate::jobs),
//!   [`market`](crate::market) (GPUs, artifacts), [`providers`](crate::providers),
//!   [`admin`](crate::admin), [`ledger`](crate::ledger) (public: a witness needs no token) and
//!   [`agent`](crate::agent) (the node agent's routes).
//! - Errors keep the platform's answer (status, code, message, field, `Retry-After`) and say
//!   which of the CLI's exit classes they are ([`ClientError::exit_code`]): 3 authentication,
//!   4 the server cannot be reached, 2 the request itself was refused; and whether trying
//!   again may help ([`ClientError::is_transient`]).
//! - `429` and `503` are retried with backoff, honouring `Retry-After` (bounded; the caller
//!   chooses how many attempts: the agent, which paces itself, asks for one), as are
//!   connection failures of requests that are safe to send again (reads, and submissions
//!   carrying an `Idempotency-Key`).

pub mod account;
pub mod admin;
pub mod agent;
mod error;
pub mod jobs;
pub mod ledger;
pub mod market;
pub mod providers;
mod sse;

pub use error::{ClientError, ClientResult};
pub use gp4u_proto::SHA256_HEADER;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{describe, refusal};

/// How long one request may take (uploads and downloads excepted: they run as long as bytes
/// flow).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a retryable request (the first included).
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// The longest wait between attempts, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A connection to one GP4U server, as one user (or none: the public routes).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    attempts: u32,
}

/// Whether a request may be sent again after a connection failure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    Safe,
    Never,
}

/// The wait before the next attempt: `Retry-After` seconds when the server said, else
/// exponential from half a second, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32, retry_after: Option<&reqwest::header::HeaderValue>) -> Duration {
    let said = retry_after
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    said.unwrap_or_else(|| Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6))))
        .min(MAX_BACKOFF)
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`), with a bearer `token` (or
    /// none, for the public routes).
    pub fn new(base: &str, token: Option<&str>) -> ClientResult<Client> {
        let base = base.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Unreachable {
                url: base.clone(),
                detail: "the server must be an http:// or https:// URL, like http://127.0.0.1:8080"
                    .into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| ClientError::Unreachable {
                url: base.clone(),
                detail: error.to_string(),
            })?;
        Ok(Client {
            http,
            base,
            token: token.map(|token| token.trim().to_string()),
            attempts: DEFAULT_ATTEMPTS,
        })
    }

    /// At most this many attempts of a retryable request (at least one).
    pub fn with_attempts(mut self, attempts: u32) -> Client {
        self.attempts = attempts.max(1);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request built by `build` (once per attempt), retrying 429/503 and, when
    /// `resend` allows, connection failures. Returns the successful response.
    pub(crate) async fn send(
        &self,
        what: &str,
        resend: Resend,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> ClientResult<reqwest::Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.attempts;
            match self.authorized(build()).send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status().as_u16();
                    if matches!(status, 429 | 503) && !last {
                        let wait = backoff(attempt, response.headers().get("retry-after"));
                        tracing::debug!(what, status, ?wait, "busy; trying again");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(refusal(response).await);
                }
                Err(error) if resend == Resend::Safe && !last && !error.is_builder() => {
                    let wait = backoff(attempt, None);
                    tracing::debug!(what, %error, ?wait, "not delivered; trying again");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    return Err(ClientError::Unreachable {
                        url: self.base.clone(),
                        detail: format!("{what}: {}", describe(&error)),
                    });
                }
            }
        }
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        resend: Resend,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> ClientResult<T> {
        let response = self.send(what, resend, build).await?;
        self.decode(what, response).await
    }

    /// Sends a request whose body streams once (an upload): no retry; a refusal is the
    /// server's error, a success its JSON answer.
    pub(crate) async fn send_once<T: DeserializeOwned>(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> ClientResult<T> {
        let response =
            self.authorized(request)
                .send()
                .await
                .map_err(|error| ClientError::Unreachable {
                    url: self.base.clone(),
                    detail: format!("{what}: {}", describe(&error)),
                })?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        self.decode(what, response).await
    }

    /// A successful response's JSON body as `T`.
    pub(crate) async fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        response: reqwest::Response,
    ) -> ClientResult<T> {
        let bytes = response
            .bytes()
            .await
            .map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                detail: format!("{what}: {error}"),
            })?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Unexpected {
            what: what.to_string(),
            detail: error.to_string(),
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> ClientResult<T> {
        let url = self.url(path);
        self.json(what, Resend::Safe, || {
            self.http.get(&url).timeout(DEFAULT_TIMEOUT)
        })
        .await
    }

    /// A GET whose answer is text (the checkpoint, the public key).
    pub(crate) async fn text(&self, what: &str, path: &str) -> ClientResult<String> {
        let url = self.url(path);
        let response = self
            .send(what, Resend::Safe, || {
                self.http.get(&url).timeout(DEFAULT_TIMEOUT)
            })
            .await?;
        response
            .text()
            .await
            .map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                detail: format!("{what}: {error}"),
            })
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> ClientResult<T> {
        let url = self.url(path);
        self.json(what, Resend::Never, || {
            self.http.post(&url).json(body).timeout(DEFAULT_TIMEOUT)
        })
        .await
    }

    /// A PUT: replaces a resource, so safe to send again.
    pub(crate) async fn put<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> ClientResult<T> {
        let url = self.url(path);
        self.json(what, Resend::Safe, || {
            self.http.put(&url).json(body).timeout(DEFAULT_TIMEOUT)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let header = reqwest::header::HeaderValue::from_static("3");
        assert_eq!(backoff(1, Some(&header)), Duration::from_secs(3));
        let huge = reqwest::header::HeaderValue::from_static("3600");
        assert_eq!(backoff(1, Some(&huge)), MAX_BACKOFF);
        assert_eq!(backoff(1, None), Duration::from_secs(1));
        assert_eq!(backoff(30, None), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn busy_answers_are_retried_and_refusals_kept() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let app = axum::Router::new()
            .route(
                gp4u_proto::paths::JOB,
                axum::routing::get(move || {
                    let counter = counter.clone();
                    async move {
                        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                            (
                                axum::http::StatusCode::TOO_MANY_REQUESTS,
                                [("retry-after", "0")],
                                "{}",
                            )
                                .into_response()
                        } else {
                            (
                                axum::http::StatusCode::NOT_FOUND,
                                axum::Json(serde_json::json!({"error": {"code": "JOB_NOT_FOUND", "message": "no job job_x of yours"}})),
                            )
                                .into_response()
                        }
                    }
                }),
            );
        use axum::response::IntoResponse as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::new(&format!("http://{address}"), Some("t")).unwrap();
        let error = client.job("job_x").await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the 429 was retried");
        assert_eq!(error.code(), Some("JOB_NOT_FOUND"));
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("no job job_x of yours"));
        // Nothing listens here any more: unreachable, exit code 4.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let client = Client::new(&format!("http://{closed}"), None)
            .unwrap()
            .with_attempts(1);
        let error = client.health().await.unwrap_err();
        assert_eq!(error.exit_code(), 4, "{error}");
    }
}
