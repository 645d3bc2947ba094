//! A customer's jobs: submit, watch, cancel, logs, telemetry, settlement, proofs, outputs and
//! the job's ledger entries.

use std::path::Path;

use futures::StreamExt as _;
use gp4u_proto::{
    JobAccepted, JobLedger, JobList, JobProofs, JobView, SettlementView, TelemetrySeries,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::io_error;
use crate::sse::sse_data;
use crate::{Client, ClientError, ClientResult, DEFAULT_TIMEOUT, Resend};
use gp4u_proto::paths;

impl Client {
    /// `POST /api/jobs`: submits a job (the body as SPEC §3 writes it). With an
    /// `idempotency_key` a lost answer is safe to ask for again.
    pub async fn submit(
        &self,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> ClientResult<JobAccepted> {
        let url = self.url(paths::JOBS);
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
        self.get(&format!("job {id}"), &paths::job(id)).await
    }

    /// The caller's newest jobs (`limit`: 1–500, default 100).
    pub async fn jobs(&self, limit: Option<u32>) -> ClientResult<JobList> {
        self.jobs_page(limit, None).await
    }

    /// A page of the caller's jobs, newest first: those older than `before` (the previous
    /// page's `next_before`), or the newest.
    pub async fn jobs_page(
        &self,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> ClientResult<JobList> {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(before) = before {
            query.push(format!("before={}", paths::segment(before)));
        }
        let path = if query.is_empty() {
            paths::JOBS.to_string()
        } else {
            format!("{}?{}", paths::JOBS, query.join("&"))
        };
        self.get("the job list", &path).await
    }

    pub async fn cancel(&self, id: &str) -> ClientResult<JobView> {
        self.post(
            &format!("the cancellation of {id}"),
            &paths::job_cancel(id),
            &(),
        )
        .await
    }

    /// The job's stdout and stderr so far.
    pub async fn logs(&self, id: &str) -> ClientResult<String> {
        self.text(&format!("the logs of {id}"), &paths::job_logs(id))
            .await
    }

    /// Follows the job's logs (server-sent events, `?follow=1`) until the job ends, handing
    /// each chunk of text to `sink` as it arrives.
    pub async fn follow_logs(&self, id: &str, mut sink: impl FnMut(&str)) -> ClientResult<()> {
        let url = self.url(&format!("{}?follow=1", paths::job_logs(id)));
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
    pub async fn telemetry(&self, id: &str, limit: Option<u32>) -> ClientResult<TelemetrySeries> {
        let path = match limit {
            Some(limit) => format!("{}?limit={limit}", paths::job_telemetry(id)),
            None => paths::job_telemetry(id),
        };
        self.get(&format!("the telemetry of {id}"), &path).await
    }

    /// `GET /api/jobs/{id}/settlement`: what the job cost (409 `NOT_SETTLED` until it settles).
    pub async fn settlement(&self, id: &str) -> ClientResult<SettlementView> {
        self.get(
            &format!("the settlement of {id}"),
            &paths::job_settlement(id),
        )
        .await
    }

    pub async fn proofs(&self, id: &str) -> ClientResult<JobProofs> {
        self.get(&format!("the proofs of {id}"), &paths::job_proofs(id))
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
        let url = self.url(&paths::job_outputs(id));
        let response = self
            .send(&format!("the outputs of {id}"), Resend::Safe, || {
                self.http.get(&url)
            })
            .await?;
        let declared = response
            .headers()
            .get(crate::SHA256_HEADER)
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

    /// `GET /api/jobs/{id}/ledger`: the job's entries with inclusion proofs against the
    /// checkpoint the answer carries.
    pub async fn job_ledger(&self, id: &str) -> ClientResult<JobLedger> {
        self.get(
            &format!("the ledger entries of {id}"),
            &paths::job_ledger(id),
        )
        .await
    }
}
