//! The agent's connection to the control plane: `gp4u-client`'s typed client (one attempt per
//! call: the agent's loops pace and retry themselves), counting what it sends into the agent's
//! metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use gp4u_client::ClientError;
use gp4u_proto::{
    AgentStatusReply, AgentStatusReport, AssignmentManifest, LogAppended, OutputStored,
    PowerLimitBody, PowerLimitsBody, RegisterBody, Registered, TelemetryBatchItem, TelemetryPacket,
    TelemetryReply,
};

use crate::metrics::AgentMetrics;

#[derive(Clone)]
pub struct PlatformClient {
    client: gp4u_client::Client,
    /// Polls and telemetry are counted here, where they are sent.
    metrics: Arc<AgentMetrics>,
}

impl PlatformClient {
    pub fn new(base: &str, token: &str) -> Result<PlatformClient, ClientError> {
        Ok(PlatformClient {
            client: gp4u_client::Client::new(base, Some(token))?.with_attempts(1),
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

    pub async fn register(&self, body: &RegisterBody) -> Result<Registered, ClientError> {
        self.client.register(body).await
    }

    /// Reports the host posture, at every start.
    pub async fn set_posture(
        &self,
        node_id: &str,
        posture: &gp4u_core::posture::HostPosture,
    ) -> Result<(), ClientError> {
        self.client.set_posture(node_id, posture).await
    }

    /// Answers a visibility challenge: the platform's verdict.
    pub async fn answer_visibility(
        &self,
        answer: &gp4u_proto::VisibilityAnswer,
    ) -> Result<gp4u_proto::VisibilityVerdict, ClientError> {
        self.client.answer_visibility(answer).await
    }

    /// The commitments the platform stored for a job of this node, with their times, and the
    /// weights cap.
    pub async fn stored_commitments(
        &self,
        job_id: &str,
        node_id: &str,
    ) -> Result<gp4u_proto::JobCommitments, ClientError> {
        self.client.stored_commitments(job_id, node_id).await
    }

    /// Declares the node's renewable share.
    pub async fn set_renewable(
        &self,
        node_id: &str,
        renewable_pct: f64,
    ) -> Result<(), ClientError> {
        self.client.set_renewable(node_id, renewable_pct).await
    }

    /// Declares the enforced power limits of the node's GPUs: `(platform GPU id, watts)`.
    pub async fn set_power_limits(
        &self,
        node_id: &str,
        limits: &[(String, f64)],
    ) -> Result<(), ClientError> {
        let body = PowerLimitsBody {
            gpus: limits
                .iter()
                .map(|(id, watts)| PowerLimitBody {
                    id: id.clone(),
                    power_limit_watts: *watts,
                })
                .collect(),
        };
        self.client.set_power_limits(node_id, &body).await
    }

    /// Posts one Russian-Doll telemetry packet. The `timeout` covers the whole exchange: the
    /// watchdog keeps it under its interval.
    pub async fn post_telemetry(
        &self,
        packet: &TelemetryPacket,
        timeout: Duration,
    ) -> Result<TelemetryReply, ClientError> {
        let result = self.client.post_telemetry(packet, timeout).await;
        self.count_telemetry([packet], &result);
        result
    }

    /// Submits a proof (the JSON `body`): the status on success; on failure the error and the
    /// `Retry-After` the platform asked for.
    pub async fn submit_proof(
        &self,
        node_id: &str,
        body: &str,
    ) -> Result<u16, (ClientError, Option<Duration>)> {
        self.client
            .submit_proof(node_id, body)
            .await
            .map_err(|error| {
                let retry_after = error.retry_after();
                (error, retry_after)
            })
    }

    /// Posts several jobs' packets as one JSON array: one answer item per packet, to be
    /// counted by the caller.
    pub async fn post_telemetry_batch(
        &self,
        packets: &[&TelemetryPacket],
        timeout: Duration,
    ) -> Result<Vec<TelemetryBatchItem>, ClientError> {
        let result = self.client.post_telemetry_batch(packets, timeout).await;
        self.count_telemetry(packets.iter().copied(), &result);
        result
    }

    /// Long-polls for the node's next assignment; `None` when `wait_s` passed without one.
    pub async fn next_assignment(
        &self,
        node_id: &str,
        wait_s: u64,
    ) -> Result<Option<AssignmentManifest>, ClientError> {
        let polled = self.client.next_assignment(node_id, wait_s).await;
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
        self.client.report(job_id, report).await
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
        self.client
            .download_input(job_id, node_id, artifact_id, dest)
            .await
    }

    /// Uploads the job's packed `/output` (streamed from `path`) with its hex SHA-256.
    pub async fn upload_output(
        &self,
        job_id: &str,
        node_id: &str,
        path: &Path,
        sha256: &str,
    ) -> Result<OutputStored, ClientError> {
        self.client
            .upload_output(job_id, node_id, path, sha256)
            .await
    }

    /// Appends a chunk of the job's stdout/stderr.
    pub async fn append_log(
        &self,
        job_id: &str,
        node_id: &str,
        chunk: Vec<u8>,
    ) -> Result<LogAppended, ClientError> {
        self.client.append_log(job_id, node_id, chunk).await
    }
}
