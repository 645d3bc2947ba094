//! The node agent's routes: registration, host facts, the assignment long-poll, status
//! reports, telemetry, visibility answers, proofs, inputs, outputs and logs.
//!
//! The agent paces and retries these itself (its loops know what a lost telemetry packet or
//! poll costs), so it builds its client with one attempt ([`Client::with_attempts`]); each call
//! here carries its own timeout.

use std::path::Path;
use std::time::Duration;

use gp4u_core::posture::HostPosture;
use gp4u_proto::{
    AgentStatusReply, AgentStatusReport, AssignmentManifest, JobCommitments, LogAppended,
    OutputStored, PowerLimitsBody, RegisterBody, Registered, TelemetryBatchItem, TelemetryPacket,
    TelemetryReply, VisibilityAnswer, VisibilityVerdict,
};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::error::io_error;
use crate::{Client, ClientError, ClientResult, DEFAULT_TIMEOUT, Resend, SHA256_HEADER};
use gp4u_proto::paths;

/// The longest an output upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

impl Client {
    /// `POST /api/providers/register`: the node, its GPUs and the platform's public key.
    pub async fn register(&self, body: &RegisterBody) -> ClientResult<Registered> {
        self.post("node registration", paths::PROVIDERS_REGISTER, body)
            .await
    }

    /// `PUT /api/providers/{node_id}/posture`: the host's posture, at every start.
    pub async fn set_posture(&self, node_id: &str, posture: &HostPosture) -> ClientResult<()> {
        let url = self.url(&paths::provider_posture(node_id));
        self.send("the host posture", Resend::Safe, || {
            self.http.put(&url).json(posture).timeout(DEFAULT_TIMEOUT)
        })
        .await
        .map(drop)
    }

    /// `PUT /api/providers/{node_id}/energy`: the node's declared renewable share.
    pub async fn set_renewable(&self, node_id: &str, renewable_pct: f64) -> ClientResult<()> {
        let url = self.url(&paths::provider_energy(node_id));
        let body = gp4u_proto::RenewableBody { renewable_pct };
        self.send("the renewable share", Resend::Safe, || {
            self.http.put(&url).json(&body).timeout(DEFAULT_TIMEOUT)
        })
        .await
        .map(drop)
    }

    /// `PUT /api/providers/{node_id}/power-limits`: the enforced power limits of the node's
    /// GPUs.
    pub async fn set_power_limits(
        &self,
        node_id: &str,
        body: &PowerLimitsBody,
    ) -> ClientResult<()> {
        let url = self.url(&paths::provider_power_limits(node_id));
        self.send("the GPUs' power limits", Resend::Safe, || {
            self.http.put(&url).json(body).timeout(DEFAULT_TIMEOUT)
        })
        .await
        .map(drop)
    }

    /// `GET /api/agent/assignments?node_id=&wait=`: long-polls for the node's next assignment;
    /// `None` when `wait_s` passed without one.
    pub async fn next_assignment(
        &self,
        node_id: &str,
        wait_s: u64,
    ) -> ClientResult<Option<AssignmentManifest>> {
        let what = "the assignment poll";
        let url = self.url(paths::AGENT_ASSIGNMENTS);
        let wait = wait_s.to_string();
        let response = self
            .send(what, Resend::Safe, || {
                self.http
                    .get(&url)
                    .query(&[("node_id", node_id), ("wait", &wait)])
                    .timeout(Duration::from_secs(wait_s + 30))
            })
            .await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        self.decode(what, response).await.map(Some)
    }

    /// `POST /api/agent/jobs/{job_id}/status`: the job's progress as the node saw it.
    pub async fn report(
        &self,
        job_id: &str,
        report: &AgentStatusReport,
    ) -> ClientResult<AgentStatusReply> {
        self.post(
            &format!("the status report on {job_id}"),
            &paths::agent_job_status(job_id),
            report,
        )
        .await
    }

    /// `POST /api/telemetry/russian-doll` with one packet. `timeout` covers the whole
    /// exchange (a watchdog keeps it under its interval).
    pub async fn post_telemetry(
        &self,
        packet: &TelemetryPacket,
        timeout: Duration,
    ) -> ClientResult<TelemetryReply> {
        let url = self.url(paths::TELEMETRY);
        self.json(
            &format!("the telemetry of {}", packet.job_id),
            Resend::Never,
            || self.http.post(&url).json(packet).timeout(timeout),
        )
        .await
    }

    /// `POST /api/telemetry/russian-doll` with several jobs' packets as one array: one item per
    /// packet, in order (its reply, or the refusal a single post of it would have got). The
    /// caller checks the count; an answer that is not an array of items (a platform older than
    /// arrays) is [`ClientError::Unexpected`].
    pub async fn post_telemetry_batch(
        &self,
        packets: &[&TelemetryPacket],
        timeout: Duration,
    ) -> ClientResult<Vec<TelemetryBatchItem>> {
        let url = self.url(paths::TELEMETRY);
        self.json(
            &format!("a telemetry batch of {} packets", packets.len()),
            Resend::Never,
            || self.http.post(&url).json(packets).timeout(timeout),
        )
        .await
    }

    /// `POST /api/agent/visibility`: answers a visibility challenge; the platform's verdict.
    pub async fn answer_visibility(
        &self,
        answer: &VisibilityAnswer,
    ) -> ClientResult<VisibilityVerdict> {
        self.post(
            &format!("the answer to challenge {}", answer.nonce),
            paths::AGENT_VISIBILITY,
            answer,
        )
        .await
    }

    /// `GET /api/agent/jobs/{job_id}/commitments?node_id=`: the commitments the platform
    /// stored for a job of this node, with their times, and the weights cap.
    pub async fn stored_commitments(
        &self,
        job_id: &str,
        node_id: &str,
    ) -> ClientResult<JobCommitments> {
        let url = self.url(&paths::agent_job_commitments(job_id));
        self.json(
            &format!("the stored commitments of {job_id}"),
            Resend::Safe,
            || {
                self.http
                    .get(&url)
                    .query(&[("node_id", node_id)])
                    .timeout(DEFAULT_TIMEOUT)
            },
        )
        .await
    }

    /// `POST /api/providers/{node_id}/zk-proofs` with a proofs body already serialized (the
    /// agent keeps it on disk until it is accepted): the HTTP status on success. A refusal
    /// carries the server's `Retry-After` ([`ClientError::retry_after`]).
    pub async fn submit_proof(&self, node_id: &str, body: &str) -> ClientResult<u16> {
        let url = self.url(&paths::provider_proofs(node_id));
        let response = self
            .send("a proof submission", Resend::Never, || {
                self.http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_owned())
                    .timeout(DEFAULT_TIMEOUT)
            })
            .await?;
        Ok(response.status().as_u16())
    }

    /// `GET /api/agent/jobs/{job_id}/inputs/{artifact_id}?node_id=`: downloads one of the
    /// job's inputs into `dest`, hashing while writing; the hex SHA-256 of what was written.
    /// A body cut short is [`ClientError::Unreachable`].
    pub async fn download_input(
        &self,
        job_id: &str,
        node_id: &str,
        artifact_id: &str,
        dest: &Path,
    ) -> ClientResult<String> {
        let what = format!("the download of input {artifact_id} of {job_id}");
        let url = self.url(&paths::agent_job_input(job_id, artifact_id));
        let mut response = self
            .send(&what, Resend::Safe, || {
                self.http.get(&url).query(&[("node_id", node_id)])
            })
            .await?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(io_error(dest))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) =
            response
                .chunk()
                .await
                .map_err(|error| ClientError::Unreachable {
                    url: self.base.clone(),
                    detail: format!("{what}: {}", crate::error::describe(&error)),
                })?
        {
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error(dest))?;
        }
        file.flush().await.map_err(io_error(dest))?;
        file.sync_all().await.map_err(io_error(dest))?;
        Ok(hex(&hasher.finalize()))
    }

    /// `PUT /api/agent/jobs/{job_id}/outputs?node_id=`: uploads the job's packed `/output`,
    /// streamed from `path`, with its hex SHA-256.
    pub async fn upload_output(
        &self,
        job_id: &str,
        node_id: &str,
        path: &Path,
        sha256: &str,
    ) -> ClientResult<OutputStored> {
        let what = format!("the output upload of {job_id}");
        let file = tokio::fs::File::open(path).await.map_err(io_error(path))?;
        let length = file.metadata().await.map_err(io_error(path))?.len();
        let url = self.url(&paths::agent_job_outputs(job_id));
        // A file body streams once: this request is not sent again.
        let request = self
            .http
            .put(&url)
            .query(&[("node_id", node_id)])
            .header(SHA256_HEADER, sha256)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(reqwest::Body::from(file))
            .timeout(UPLOAD_TIMEOUT);
        self.send_once(&what, request).await
    }

    /// `POST /api/agent/jobs/{job_id}/logs?node_id=`: appends a chunk of the job's stdout and
    /// stderr.
    pub async fn append_log(
        &self,
        job_id: &str,
        node_id: &str,
        chunk: Vec<u8>,
    ) -> ClientResult<LogAppended> {
        let url = self.url(&paths::agent_job_logs(job_id));
        let chunk = bytes::Bytes::from(chunk);
        self.json(&format!("a log chunk of {job_id}"), Resend::Never, || {
            self.http
                .post(&url)
                .query(&[("node_id", node_id)])
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(chunk.clone())
                .timeout(DEFAULT_TIMEOUT)
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
