//! The typed client of the GP4U API (SPEC §11): one place that speaks the wire contract of
//! `gp4u-proto`, for the CLI and, over time, the agent, `gp4u verify`, the tests and the benches.
//!
//! - Every call is a method taking and returning `gp4u-proto` types (a few routes whose bodies
//!   are not typed there yet answer `serde_json::Value`).
//! - Errors keep the platform's answer (status, code, message, field) and say which of the
//!   CLI's exit classes they are ([`ClientError::exit_code`]): 3 authentication, 4 the server
//!   cannot be reached, 2 the request itself was refused.
//! - `429` and `503` are retried with backoff, honouring `Retry-After` (bounded; the caller
//!   chooses how many attempts), as are connection failures of requests that are safe to send
//!   again (reads, and submissions carrying an `Idempotency-Key`).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use gp4u_proto::{
    ArtifactCreated, Balance, ChambersView, ConsistencyProof, GpuList, GridFactorBody,
    GridFactorView, GridFactors, InclusionProof, IssuedToken, JobAccepted, JobLedger, JobList,
    JobView, LedgerEntries, ProviderNodeView, SettlementView, Statement, UserView,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// How long one request may take (uploads and downloads excepted: they run as long as bytes
/// flow).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a retryable request (the first included).
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// The longest wait between attempts, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
}

impl ClientError {
    /// The CLI's exit code for this error (SPEC §11): 3 authentication (401, 403), 4 the
    /// server unreachable (or failing: 5xx), 2 anything else the server refused.
    pub fn exit_code(&self) -> i32 {
        match self {
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
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The platform's error code (`JOB_NOT_FOUND`, …), when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

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
enum Resend {
    Safe,
    Never,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    }
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

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request built by `build` (once per attempt), retrying 429/503 and, when
    /// `resend` allows, connection failures. Returns the successful response.
    async fn send(
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

    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        resend: Resend,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> ClientResult<T> {
        let response = self.send(what, resend, build).await?;
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

    async fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> ClientResult<T> {
        let url = self.url(path);
        self.json(what, Resend::Safe, || {
            self.http.get(&url).timeout(DEFAULT_TIMEOUT)
        })
        .await
    }

    /// A GET whose answer is text (the checkpoint, the public key).
    async fn text(&self, what: &str, path: &str) -> ClientResult<String> {
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

    async fn post<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &Value,
    ) -> ClientResult<T> {
        let url = self.url(path);
        self.json(what, Resend::Never, || {
            self.http.post(&url).json(body).timeout(DEFAULT_TIMEOUT)
        })
        .await
    }

    // -------------------------------------------------------------------------------------
    // Health and the caller

    /// `GET /healthz`: whether the server answers at all.
    pub async fn health(&self) -> ClientResult<Value> {
        self.get("the health check", "/healthz").await
    }

    /// `GET /api/billing/balance`: the caller's credit (also how `login` checks a token).
    pub async fn balance(&self) -> ClientResult<Balance> {
        self.get("the balance", "/api/billing/balance").await
    }

    /// `GET /api/billing/statement`: the caller's transfers, newest first.
    pub async fn statement(&self) -> ClientResult<Statement> {
        self.get("the statement", "/api/billing/statement").await
    }

    /// `GET /api/energy?scope=`: energy and carbon over the caller's jobs, nodes or the platform.
    pub async fn energy(&self, scope: Option<&str>) -> ClientResult<Value> {
        let path = match scope {
            Some(scope) => format!("/api/energy?scope={scope}"),
            None => "/api/energy".to_string(),
        };
        self.get("the energy summary", &path).await
    }

    // -------------------------------------------------------------------------------------
    // Jobs

    /// `POST /api/jobs`: submits a job (the body as SPEC §3 writes it). With an
    /// `idempotency_key` a lost answer is safe to ask for again.
    pub async fn submit(
        &self,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> ClientResult<JobAccepted> {
        let url = self.url("/api/jobs");
        let resend = if idempotency_key.is_some() {
            Resend::Safe
        } else {
            Resend::Never
        };
        self.json("the job submission", resend, || {
            let request = self.http.post(&url).json(body).timeout(DEFAULT_TIMEOUT);
            match idempotency_key {
                Some(key) => request.header("Idempotency-Key", key),
                None => request,
            }
        })
        .await
    }

    pub async fn job(&self, id: &str) -> ClientResult<JobView> {
        self.get(&format!("job {id}"), &format!("/api/jobs/{id}"))
            .await
    }

    pub async fn jobs(&self, limit: Option<u32>) -> ClientResult<JobList> {
        let path = match limit {
            Some(limit) => format!("/api/jobs?limit={limit}"),
            None => "/api/jobs".to_string(),
        };
        self.get("the job list", &path).await
    }

    pub async fn cancel(&self, id: &str) -> ClientResult<JobView> {
        self.post(
            &format!("the cancellation of {id}"),
            &format!("/api/jobs/{id}/cancel"),
            &Value::Null,
        )
        .await
    }

    /// The job's stdout and stderr so far.
    pub async fn logs(&self, id: &str) -> ClientResult<String> {
        let url = self.url(&format!("/api/jobs/{id}/logs"));
        let response = self
            .send(&format!("the logs of {id}"), Resend::Safe, || {
                self.http.get(&url).timeout(DEFAULT_TIMEOUT)
            })
            .await?;
        response
            .text()
            .await
            .map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                detail: error.to_string(),
            })
    }

    /// Follows the job's logs (server-sent events, `?follow=1`) until the job ends, handing
    /// each chunk of text to `sink` as it arrives.
    pub async fn follow_logs(&self, id: &str, mut sink: impl FnMut(&str)) -> ClientResult<()> {
        let url = self.url(&format!("/api/jobs/{id}/logs?follow=1"));
        let response = self
            .send(&format!("the logs of {id}"), Resend::Safe, || {
                self.http.get(&url).header("accept", "text/event-stream")
            })
            .await?;
        let mut stream = response.bytes_stream();
        let mut pending = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                detail: format!("following the logs of {id}: {error}"),
            })?;
            pending.push_str(&String::from_utf8_lossy(&chunk));
            // One event per blank line; `data:` lines carry the text (JSON-encoded strings or
            // raw lines, whichever the server sends).
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                for text in sse_data(&event) {
                    sink(&text);
                }
            }
        }
        Ok(())
    }

    /// `GET /api/jobs/{id}/telemetry`: the stored telemetry, oldest first.
    pub async fn telemetry(&self, id: &str, limit: Option<u32>) -> ClientResult<Value> {
        let path = match limit {
            Some(limit) => format!("/api/jobs/{id}/telemetry?limit={limit}"),
            None => format!("/api/jobs/{id}/telemetry"),
        };
        self.get(&format!("the telemetry of {id}"), &path).await
    }

    /// `GET /api/jobs/{id}/settlement`: what the job cost (409 `NOT_SETTLED` until it settles).
    pub async fn settlement(&self, id: &str) -> ClientResult<SettlementView> {
        self.get(
            &format!("the settlement of {id}"),
            &format!("/api/jobs/{id}/settlement"),
        )
        .await
    }

    pub async fn proofs(&self, id: &str) -> ClientResult<gp4u_proto::JobProofs> {
        self.get(
            &format!("the proofs of {id}"),
            &format!("/api/jobs/{id}/proofs"),
        )
        .await
    }

    /// Downloads the job's `/output` archive to `path`, checking it against the SHA-256 the
    /// server declares (`x-gp4u-sha256`); a mismatch leaves nothing at `path`. Returns the
    /// hex SHA-256 and the size. `progress` hears (bytes so far, total when known).
    pub async fn download_output(
        &self,
        id: &str,
        path: &Path,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> ClientResult<(String, u64)> {
        use tokio::io::AsyncWriteExt as _;
        let url = self.url(&format!("/api/jobs/{id}/outputs"));
        let response = self
            .send(&format!("the outputs of {id}"), Resend::Safe, || {
                self.http.get(&url)
            })
            .await?;
        let declared = response
            .headers()
            .get("x-gp4u-sha256")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let total = response.content_length();
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(io_error(&partial))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| ClientError::Unreachable {
                url: self.base.clone(),
                detail: format!("downloading the outputs of {id}: {error}"),
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error(&partial))?;
            written += chunk.len() as u64;
            progress(written, total);
        }
        file.flush().await.map_err(io_error(&partial))?;
        drop(file);
        let actual: String = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        if let Some(expected) = declared
            && expected != actual
        {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ClientError::HashMismatch {
                what: format!("the outputs of {id}"),
                expected,
                actual,
            });
        }
        tokio::fs::rename(&partial, path)
            .await
            .map_err(io_error(path))?;
        Ok((actual, written))
    }

    // -------------------------------------------------------------------------------------
    // The marketplace and artifacts

    pub async fn gpus(&self) -> ClientResult<GpuList> {
        self.get("the GPU listing", "/api/gpus").await
    }

    /// Uploads a job input (`POST /api/artifacts`), streaming the file; `progress` hears the
    /// bytes sent so far and the total.
    pub async fn upload_artifact(
        &self,
        path: &Path,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> ClientResult<ArtifactCreated> {
        let file = tokio::fs::File::open(path).await.map_err(io_error(path))?;
        let total = file.metadata().await.map_err(io_error(path))?.len();
        let progress = std::sync::Arc::new(progress);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stream = tokio_util_free_stream(file).map(move |chunk| {
            if let Ok(bytes) = &chunk {
                let now = sent.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::SeqCst)
                    + bytes.len() as u64;
                progress(now, total);
            }
            chunk
        });
        let request = self
            .http
            .post(self.url("/api/artifacts"))
            .header("content-length", total)
            .body(reqwest::Body::wrap_stream(stream));
        let response =
            self.authorized(request)
                .send()
                .await
                .map_err(|error| ClientError::Unreachable {
                    url: self.base.clone(),
                    detail: format!("uploading {}: {}", path.display(), describe(&error)),
                })?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        response
            .json()
            .await
            .map_err(|error| ClientError::Unexpected {
                what: "the upload".into(),
                detail: error.to_string(),
            })
    }

    // -------------------------------------------------------------------------------------
    // Providers

    pub async fn node(&self, node_id: &str) -> ClientResult<ProviderNodeView> {
        self.get(
            &format!("node {node_id}"),
            &format!("/api/providers/{node_id}"),
        )
        .await
    }

    /// The caller's nodes (`GET /api/providers`).
    pub async fn nodes(&self) -> ClientResult<gp4u_proto::ProviderNodeList> {
        self.get("your nodes", "/api/providers").await
    }

    pub async fn stake(&self, node_id: &str, amount: f64) -> ClientResult<ProviderNodeView> {
        self.post(
            &format!("the stake of {node_id}"),
            &format!("/api/providers/{node_id}/stake"),
            &serde_json::json!({ "amount": amount }),
        )
        .await
    }

    // -------------------------------------------------------------------------------------
    // Operators

    pub async fn create_user(&self, body: &Value) -> ClientResult<UserView> {
        self.post("the new user", "/api/admin/users", body).await
    }

    pub async fn set_user_active(&self, user: &str, active: bool) -> ClientResult<UserView> {
        let action = if active { "activate" } else { "suspend" };
        self.post(
            &format!("the {action} of {user}"),
            &format!("/api/admin/users/{user}/{action}"),
            &Value::Null,
        )
        .await
    }

    pub async fn add_credit(&self, user: &str, amount: f64) -> ClientResult<UserView> {
        self.post(
            &format!("credit for {user}"),
            &format!("/api/admin/users/{user}/credits"),
            &serde_json::json!({ "amount": amount }),
        )
        .await
    }

    pub async fn issue_token(&self, user: &str, ttl_s: Option<i64>) -> ClientResult<IssuedToken> {
        self.post(
            &format!("a token for {user}"),
            &format!("/api/admin/users/{user}/tokens"),
            &serde_json::json!({ "ttl_s": ttl_s }),
        )
        .await
    }

    // -------------------------------------------------------------------------------------
    // The ledger (public: a client without a token reads it as a witness)

    /// `GET /api/ledger/checkpoint`: the latest signed note (C2SP tlog-checkpoint).
    pub async fn checkpoint(&self) -> ClientResult<String> {
        self.text("the checkpoint", "/api/ledger/checkpoint").await
    }

    /// `GET /api/ledger/public-key`: the note verifier key the checkpoints are signed with.
    pub async fn ledger_public_key(&self) -> ClientResult<String> {
        self.text("the ledger's public key", "/api/ledger/public-key")
            .await
            .map(|key| key.trim().to_string())
    }

    /// `GET /api/ledger/entries?start=&end=`: entries `start <= index < end` (at most 1000).
    pub async fn ledger_entries(&self, start: u64, end: u64) -> ClientResult<LedgerEntries> {
        self.get(
            &format!("the ledger's entries {start}..{end}"),
            &format!("/api/ledger/entries?start={start}&end={end}"),
        )
        .await
    }

    /// `GET /api/ledger/proof/inclusion?index=&size=`.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> ClientResult<InclusionProof> {
        self.get(
            &format!("the inclusion proof of entry {index} in {size}"),
            &format!("/api/ledger/proof/inclusion?index={index}&size={size}"),
        )
        .await
    }

    /// `GET /api/ledger/proof/consistency?from=&to=`.
    pub async fn consistency_proof(&self, from: u64, to: u64) -> ClientResult<ConsistencyProof> {
        self.get(
            &format!("the consistency proof from {from} to {to}"),
            &format!("/api/ledger/proof/consistency?from={from}&to={to}"),
        )
        .await
    }

    /// `GET /api/jobs/{id}/ledger`: the job's entries with inclusion proofs against the
    /// checkpoint the answer carries.
    pub async fn job_ledger(&self, id: &str) -> ClientResult<JobLedger> {
        self.get(
            &format!("the ledger entries of {id}"),
            &format!("/api/jobs/{id}/ledger"),
        )
        .await
    }

    /// Every user, oldest first (`GET /api/admin/users`).
    pub async fn users(&self) -> ClientResult<gp4u_proto::UserList> {
        self.get("the users", "/api/admin/users").await
    }

    pub async fn chambers(&self) -> ClientResult<ChambersView> {
        self.get("the chambers", "/api/admin/chambers").await
    }

    pub async fn grid_factors(&self) -> ClientResult<GridFactors> {
        self.get("the grid factors", "/api/grid-factors").await
    }

    pub async fn set_grid_factor(
        &self,
        region: &str,
        body: &GridFactorBody,
    ) -> ClientResult<GridFactorView> {
        let url = self.url(&format!("/api/admin/grid-factors/{region}"));
        self.json(
            &format!("the grid factor of {region}"),
            Resend::Safe,
            || self.http.put(&url).json(body).timeout(DEFAULT_TIMEOUT),
        )
        .await
    }
}

/// The file as a stream of byte chunks (64 KiB), without pulling in tokio-util.
fn tokio_util_free_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut file = file?;
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(buffer), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    })
}

/// The `data:` payloads of one server-sent event, decoded when they are JSON strings.
fn sse_data(event: &str) -> Vec<String> {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    if data.is_empty() {
        return Vec::new();
    }
    let joined = data.join("\n");
    match serde_json::from_str::<Value>(&joined) {
        Ok(Value::String(text)) => vec![text],
        Ok(value) => value
            .get("text")
            .and_then(Value::as_str)
            .map(|text| vec![text.to_string()])
            .unwrap_or_default(),
        Err(_) => vec![format!("{joined}\n")],
    }
}

/// The platform's error body as a [`ClientError::Refused`].
async fn refusal(response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
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
    }
}

/// A transport error, with its cause (connection refused, DNS, timeout) spelled out.
fn describe(error: &reqwest::Error) -> String {
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        let refused = |status| ClientError::Refused {
            status,
            code: "X".into(),
            message: "m".into(),
            field: None,
        };
        assert_eq!(refused(401).exit_code(), 3);
        assert_eq!(refused(403).exit_code(), 3);
        assert_eq!(refused(400).exit_code(), 2);
        assert_eq!(refused(404).exit_code(), 2);
        assert_eq!(refused(503).exit_code(), 4);
        let unreachable = ClientError::Unreachable {
            url: "http://x".into(),
            detail: "refused".into(),
        };
        assert_eq!(unreachable.exit_code(), 4);
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let header = reqwest::header::HeaderValue::from_static("3");
        assert_eq!(backoff(1, Some(&header)), Duration::from_secs(3));
        let huge = reqwest::header::HeaderValue::from_static("3600");
        assert_eq!(backoff(1, Some(&huge)), MAX_BACKOFF);
        assert_eq!(backoff(1, None), Duration::from_secs(1));
        assert_eq!(backoff(30, None), MAX_BACKOFF);
    }

    #[test]
    fn server_sent_events_are_decoded() {
        assert_eq!(sse_data("data: \"hello\\n\"\n\n"), vec!["hello\n"]);
        assert_eq!(sse_data("event: end\n\n"), Vec::<String>::new());
        assert_eq!(sse_data("data: plain text\n\n"), vec!["plain text\n"]);
    }

    #[tokio::test]
    async fn busy_answers_are_retried_and_refusals_kept() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let app = axum::Router::new()
            .route(
                "/api/jobs/{id}",
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
