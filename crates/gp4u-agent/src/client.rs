//! The agent's HTTP client for the control plane.

use std::time::Duration;

use gp4u_proto::{AgentStatusReply, AgentStatusReport, AssignmentManifest, Registered};
use reqwest::StatusCode;
use serde_json::Value;

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
}

impl ClientError {
    /// Whether retrying later may help (the platform down or overloaded), as opposed to a
    /// refusal that will not change (bad token, unknown node).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Refused { status, .. } => *status == 429 || *status >= 500,
            ClientError::BadAnswer { .. } => false,
        }
    }
}

#[derive(Clone)]
pub struct PlatformClient {
    http: reqwest::Client,
    base: String,
    token: String,
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
        })
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

    pub async fn register(&self, body: &Value) -> Result<Registered, ClientError> {
        let what = "node registration";
        let response = self
            .send(
                what,
                self.http
                    .post(format!("{}/api/providers/register", self.base))
                    .json(body),
            )
            .await?;
        response
            .json()
            .await
            .map_err(|source| ClientError::BadAnswer {
                what: what.into(),
                source,
            })
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
        let response = self.send(&what, request).await?;
        response
            .json()
            .await
            .map_err(|source| ClientError::BadAnswer { what, source })
    }
}
