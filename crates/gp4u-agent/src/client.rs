//! The agent's HTTP client for the control plane.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gp4u_proto::{
    AgentStatusReply, AgentStatusReport, AssignmentManifest, LogAppended, OutputStored, Registered,
    TelemetryPacket, TelemetryReply,
};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::metrics::AgentMetrics;

/// The header that carries a blob's hex SHA-256.
pub const SHA256_HEADER: &str = "x-gp4u-sha256";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the platform at {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("the platform refused {what} ({status}): {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
    #[error("the platform's answer to {what} does not parse: {source}")]
    BadAnswer {
        what: String,
        source: reqwest::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The answer parsed but is not what was asked for (e.g. an item of a packet array that is
    /// neither a reply nor an error), or the request was dropped unanswered.
    #[error("the platform's answer to {what} is not understood: {message}")]
    Unexpected { what: String, message: String },
    /// One failure shared by several callers (a packet array refused or lost as a whole):
    /// every method answers as for the error inside.
    #[error("{0}")]
    Shared(Arc<ClientError>),
}

impl ClientError {
    /// Whether retrying later may help (the platform down or overloaded), as opposed to a
    /// refusal that will not change (bad token, unknown node).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Refused { status, .. } => *status == 429 || *status >= 500,
            ClientError::BadAnswer { .. }
            | ClientError::Io { .. }
            | ClientError::Unexpected { .. } => false,
            ClientError::Shared(inner) => inner.is_transient(),
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            ClientError::Shared(inner) => inner.status(),
            _ => None,
        }
    }

    /// The error itself, out of a [`ClientError::Shared`].
    fn inner(&self) -> &ClientError {
        match self {
            ClientError::Shared(inner) => inner.inner(),
            other => other,
        }
    }

    /// The platform's error code of a refusal (`{"error": {"code": …}}`), when it sent one.
    pub fn code(&self) -> Option<String> {
        let ClientError::Refused { body, .. } = self.inner() else {
            return None;
        };
        let value: Value = serde_json::from_str(body).ok()?;
        value["error"]["code"].as_str().map(str::to_string)
    }

    /// A 404 that says the *route* does not exist (a platform older than the call), as
    /// opposed to the job or node not being found.
    pub fn is_route_missing(&self) -> bool {
        let ClientError::Refused {
            status: 404, body, ..
        } = self.inner()
        else {
            return false;
        };
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            return false;
        };
        value["error"]["code"] == "NOT_FOUND"
            && value["error"]["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("no route"))
    }

    /// The platform says the job is not (or no longer) this node's to run: 404 (not on this
    /// node, unknown) or 409 (already ended). The agent must kill it and report nothing more.
    pub fn is_fenced(&self) -> bool {
        matches!(self.status(), Some(404 | 409)) && !self.is_route_missing()
    }

    /// 429: rate-limited; skip this tick.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429)
    }
}

#[derive(Clone)]
pub struct PlatformClient {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Polls and telemetry are counted here, where they are sent.
    metrics: Arc<AgentMetrics>,
}

impl PlatformClient {
    pub fn new(base: &str, token: &str) -> Result<PlatformClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Transport {
                url: base.to_string(),
                source,
            })?;
        Ok(PlatformClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            metrics: Arc::new(AgentMetrics::new()),
        })
    }

    /// The same client counting into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> PlatformClient {
        self.metrics = metrics;
        self
    }

    /// The agent's metrics (shared by every clone of this client).
    pub fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.metrics
    }

    /// Counts `packets` posted (or failed), and the commitments delivered with them.
    fn count_telemetry<'p, T>(
        &self,
        packets: impl IntoIterator<Item = &'p TelemetryPacket>,
        result: &Result<T, ClientError>,
    ) {
        for packet in packets {
            if result.is_ok() {
                self.metrics.telemetry_posted.inc();
                if packet.power_commitment.is_some() {
                    self.metrics.commitments_sent.inc();
                }
            } else {
                self.metrics.telemetry_failed.inc();
            }
        }
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: self.base.clone(),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Err(ClientError::Refused {
            what: what.to_string(),
            status,
            body: body.chars().take(500).collect(),
        })
    }

    /// Sends `request` and decodes the JSON answer.
    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        what: String,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(&what, request).await?;
        response
            .json()
            .await
            .map_err(|source| ClientError::BadAnswer { what, source })
    }

    pub async fn register(&self, body: &Value) -> Result<Registered, ClientError> {
        let request = self
            .http
            .post(format!("{}/api/providers/register", self.base))
            .json(body);
        self.send_json("node registration".into(), request).await
    }

    /// Reports the host posture (`PUT /api/providers/{node_id}/posture`), at every start.
    pub async fn set_posture(
        &self,
        node_id: &str,
        posture: &gp4u_core::posture::HostPosture,
    ) -> Result<(), ClientError> {
        let request = self
            .http
            .put(format!("{}/api/providers/{node_id}/posture", self.base))
            .json(posture)
            .timeout(Duration::from_secs(30));
        self.send("the host posture", request).await.map(drop)
    }

    /// Answers a visibility challenge (`POST /api/agent/visibility`): the platform's verdict.
    pub async fn answer_visibility(
        &self,
        answer: &gp4u_proto::VisibilityAnswer,
    ) -> Result<gp4u_proto::VisibilityVerdict, ClientError> {
        let request = self
            .http
            .post(format!("{}/api/agent/visibility", self.base))
            .json(answer)
            .timeout(Duration::from_secs(30));
        let value = self
            .send_json(format!("the answer to challenge {}", answer.nonce), request)
            .await?;
        serde_json::from_value(value).map_err(|error| ClientError::Unexpected {
            what: "the visibility answer".into(),
            message: error.to_string(),
        })
    }

    /// The commitments the platform stored for a job of this node, with their times, and the
    /// weights cap (`GET /api/agent/jobs/{id}/commitments`).
    pub async fn stored_commitments(
        &self,
        job_id: &str,
        node_id: &str,
    ) -> Result<gp4u_proto::JobCommitments, ClientError> {
        let request = self
            .http
            .get(format!("{}/api/agent/jobs/{job_id}/commitments", self.base))
            .query(&[("node_id", node_id)])
            .timeout(Duration::from_secs(30));
        self.send_json(format!("the stored commitments of {job_id}"), request)
            .await
    }

    /// Declares the node's renewable share (`PUT /api/providers/{nodeId}/energy`).
    pub async fn set_renewable(
        &self,
        node_id: &str,
        renewable_pct: f64,
    ) -> Result<(), ClientError> {
        let request = self
            .http
            .put(format!("{}/api/providers/{node_id}/energy", self.base))
            .json(&serde_json::json!({ "renewable_pct": renewable_pct }))
            .timeout(Duration::from_secs(30));
        self.send("the renewable share", request).await.map(drop)
    }

    /// Declares the enforced power limits of the node's GPUs (`PUT
    /// /api/providers/{node_id}/power-limits`): `(platform GPU id, watts)`.
    pub async fn set_power_limits(
        &self,
        node_id: &str,
        limits: &[(String, f64)],
    ) -> Result<(), ClientError> {
        let gpus: Vec<serde_json::Value> = limits
            .iter()
            .map(|(id, watts)| serde_json::json!({"id": id, "power_limit_watts": watts}))
            .collect();
        let request = self
            .http
            .put(format!(
                "{}/api/providers/{node_id}/power-limits",
                self.base
            ))
            .json(&serde_json::json!({ "gpus": gpus }))
            .timeout(Duration::from_secs(30));
        self.send("the GPUs' power limits", request).await.map(drop)
    }

    /// Posts one Russian-Doll telemetry packet (`POST /api/telemetry/russian-doll`). The
    /// `timeout` covers the whole exchange: the watchdog keeps it under its interval.
    pub async fn post_telemetry(
        &self,
        packet: &TelemetryPacket,
        timeout: Duration,
    ) -> Result<TelemetryReply, ClientError> {
        let what = format!("the telemetry of {}", packet.job_id);
        let request = self
            .http
            .post(format!("{}/api/telemetry/russian-doll", self.base))
            .json(packet)
            .timeout(timeout);
        let result = self.send_json(what, request).await;
        self.count_telemetry([packet], &result);
        result
    }

    /// Submits a proof (`POST /api/providers/{node_id}/zk-proofs`, the JSON `body`): the
    /// status on success; on failure the error and the `Retry-After` the platform asked for.
    pub async fn submit_proof(
        &self,
        node_id: &str,
        body: &str,
    ) -> Result<u16, (ClientError, Option<Duration>)> {
        let what = "a proof submission";
        let response = self
            .http
            .post(format!("{}/api/providers/{node_id}/zk-proofs", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .timeout(Duration::from_secs(30))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| {
                (
                    ClientError::Transport {
                        url: self.base.clone(),
                        source,
                    },
                    None,
                )
            })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(status);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        Err((
            ClientError::Refused {
                what: what.to_string(),
                status,
                body: body.chars().take(500).collect(),
            },
            retry_after,
        ))
    }

    /// Posts several jobs' packets as one JSON array (`POST /api/telemetry/russian-doll`); the
    /// answer is returned as it came, to be checked by the caller: a platform that takes arrays
    /// answers one item per packet, in order (a [`TelemetryReply`] or `{"status", "error"}`).
    pub async fn post_telemetry_batch(
        &self,
        packets: &[&TelemetryPacket],
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let what = format!("a telemetry batch of {} packets", packets.len());
        let request = self
            .http
            .post(format!("{}/api/telemetry/russian-doll", self.base))
            .json(packets)
            .timeout(timeout);
        let result = self.send_json(what, request).await;
        self.count_telemetry(packets.iter().copied(), &result);
        result
    }

    /// Long-polls for the node's next assignment; `None` when `wait_s` passed without one.
    pub async fn next_assignment(
        &self,
        node_id: &str,
        wait_s: u64,
    ) -> Result<Option<AssignmentManifest>, ClientError> {
        let what = "the assignment poll";
        let request = self
            .http
            .get(format!("{}/api/agent/assignments", self.base))
            .query(&[("node_id", node_id), ("wait", &wait_s.to_string())])
            .timeout(Duration::from_secs(wait_s + 30));
        let polled = async {
            let response = self.send(what, request).await?;
            if response.status() == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            response
                .json()
                .await
                .map(Some)
                .map_err(|source| ClientError::BadAnswer {
                    what: what.into(),
                    source,
                })
        }
        .await;
        let result = match &polled {
            Ok(Some(_)) => "assignment",
            Ok(None) => "empty",
            Err(_) => "error",
        };
        AgentMetrics::count(&self.metrics.polls, result);
        polled
    }

    pub async fn report(
        &self,
        job_id: &str,
        report: &AgentStatusReport,
    ) -> Result<AgentStatusReply, ClientError> {
        let what = format!("the status report on {job_id}");
        let request = self
            .http
            .post(format!("{}/api/agent/jobs/{job_id}/status", self.base))
            .json(report)
            .timeout(Duration::from_secs(30));
        self.send_json(what, request).await
    }

    /// Downloads one of the job's inputs into `dest`, hashing while writing; returns the hex
    /// SHA-256 of what was written. A body cut short is a transport error.
    pub async fn download_input(
        &self,
        job_id: &str,
        node_id: &str,
        artifact_id: &str,
        dest: &Path,
    ) -> Result<String, ClientError> {
        let what = format!("the download of input {artifact_id} of {job_id}");
        let request = self
            .http
            .get(format!(
                "{}/api/agent/jobs/{job_id}/inputs/{artifact_id}",
                self.base
            ))
            .query(&[("node_id", node_id)]);
        let mut response = self.send(&what, request).await?;
        let io = |source| ClientError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| ClientError::Transport {
                url: self.base.clone(),
                source,
            })?
        {
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(gp4u_core::hex::encode(&hasher.finalize()))
    }

    /// Uploads the job's packed `/output` (streamed from `path`) with its hex SHA-256.
    pub async fn upload_output(
        &self,
        job_id: &str,
        node_id: &str,
        path: &Path,
        sha256: &str,
    ) -> Result<OutputStored, ClientError> {
        let what = format!("the output upload of {job_id}");
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let length = file
            .metadata()
            .await
            .map_err(|source| ClientError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let request = self
            .http
            .put(format!("{}/api/agent/jobs/{job_id}/outputs", self.base))
            .query(&[("node_id", node_id)])
            .header(SHA256_HEADER, sha256)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(reqwest::Body::from(file))
            .timeout(Duration::from_secs(3600));
        self.send_json(what, request).await
    }

    /// Appends a chunk of the job's stdout/stderr.
    pub async fn append_log(
        &self,
        job_id: &str,
        node_id: &str,
        chunk: Vec<u8>,
    ) -> Result<LogAppended, ClientError> {
        let what = format!("a log chunk of {job_id}");
        let request = self
            .http
            .post(format!("{}/api/agent/jobs/{job_id}/logs", self.base))
            .query(&[("node_id", node_id)])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(chunk)
            .timeout(Duration::from_secs(30));
        self.send_json(what, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, body: &str) -> ClientError {
        ClientError::Refused {
            what: "x".into(),
            status,
            body: body.into(),
        }
    }

    #[test]
    fn refusals_are_told_apart() {
        let gone = refused(
            404,
            r#"{"error":{"code":"JOB_NOT_FOUND","message":"no job job_x on node node_y"}}"#,
        );
        assert!(gone.is_fenced() && !gone.is_route_missing() && !gone.is_transient());
        assert_eq!(gone.code().as_deref(), Some("JOB_NOT_FOUND"));
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
            (shared.status(), shared.code().as_deref()),
            (Some(409), Some("JOB_ALREADY_TERMINAL"))
        );
        assert!(ClientError::Shared(Arc::new(old)).is_route_missing());
        assert!(ClientError::Shared(Arc::new(refused(503, ""))).is_transient());
    }
}
