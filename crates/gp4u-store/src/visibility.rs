//! Visibility challenges (SPEC §7): issued for a running job of a node, answered by its
//! agent on the agent's own channel, judged by the platform. One row per challenge
//! (`visibility_challenges`, migration 0009); the node's latest verdict also stays on
//! `provider_nodes.visibility` for its standing.

use gp4u_core::ids::{JobId, NodeId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, StoreResult};

/// A challenge as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeRecord {
    pub nonce: String,
    pub node_id: NodeId,
    pub job_id: JobId,
    pub issued_at_ms: i64,
    pub deadline_ms: i64,
    pub answered_at_ms: Option<i64>,
    /// `None` while open; `ANSWERED`, `BAD_ANSWER`, `UNANSWERED` or `TIMEOUT` once closed.
    pub result: Option<String>,
    pub detail: Option<String>,
    /// The evidence of an answered challenge (JSON, as the agent signed it).
    pub evidence: Option<String>,
}

/// A verdict that counts against the node: it could have answered and did not, or answered
/// with what its container does not show.
pub fn is_refusal(result: &str) -> bool {
    matches!(result, "UNANSWERED" | "BAD_ANSWER")
}

macro_rules! challenge_columns {
    () => {
        "nonce, node_id, job_id, issued_at, deadline, answered_at, result, detail, evidence"
    };
}

fn challenge_from_row(row: &AnyRow) -> StoreResult<ChallengeRecord> {
    let node: String = row.try_get("node_id")?;
    let job: String = row.try_get("job_id")?;
    Ok(ChallengeRecord {
        nonce: row.try_get("nonce")?,
        node_id: NodeId::parse(&node).map_err(StoreError::corrupt)?,
        job_id: JobId::parse(&job).map_err(StoreError::corrupt)?,
        issued_at_ms: row.try_get("issued_at")?,
        deadline_ms: row.try_get("deadline")?,
        answered_at_ms: row.try_get("answered_at")?,
        result: row.try_get("result")?,
        detail: row.try_get("detail")?,
        evidence: row.try_get("evidence")?,
    })
}

impl Store {
    /// Records a new open challenge.
    pub async fn issue_challenge(&self, challenge: &ChallengeRecord) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query(
            "INSERT INTO visibility_challenges (nonce, node_id, job_id, issued_at, deadline) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&challenge.nonce)
        .bind(challenge.node_id.as_str())
        .bind(challenge.job_id.as_str())
        .bind(challenge.issued_at_ms)
        .bind(challenge.deadline_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A challenge by its nonce.
    pub async fn get_challenge(&self, nonce: &str) -> StoreResult<Option<ChallengeRecord>> {
        self.count_op();
        let row = sqlx::query(concat!(
            "SELECT ",
            challenge_columns!(),
            " FROM visibility_challenges WHERE nonce = $1"
        ))
        .bind(nonce)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(challenge_from_row).transpose()
    }

    /// The open challenges (to hand to agents), oldest first.
    pub async fn open_challenges(&self, limit: i64) -> StoreResult<Vec<ChallengeRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            challenge_columns!(),
            " FROM visibility_challenges WHERE result IS NULL \
             ORDER BY issued_at LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(challenge_from_row).collect()
    }

    /// Closes an open challenge with a verdict; `false` when it was closed already (a late or
    /// repeated answer, or another replica judged it first).
    pub async fn close_challenge(
        &self,
        nonce: &str,
        result: &str,
        detail: Option<&str>,
        evidence: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.count_op();
        let _writer = self.writer().await;
        let done = sqlx::query(
            "UPDATE visibility_challenges SET result = $2, detail = $3, evidence = $4, \
             answered_at = $5 WHERE nonce = $1 AND result IS NULL",
        )
        .bind(nonce)
        .bind(result)
        .bind(detail)
        .bind(evidence)
        .bind(evidence.map(|_| now_ms))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The node's latest closed challenge before `before_ms` that was not a `TIMEOUT` (a
    /// timeout says nothing of the node: the heartbeat judges silence).
    pub async fn previous_verdict(
        &self,
        node: &NodeId,
        before_ms: i64,
    ) -> StoreResult<Option<ChallengeRecord>> {
        self.count_op();
        let row = sqlx::query(concat!(
            "SELECT ",
            challenge_columns!(),
            " FROM visibility_challenges WHERE node_id = $1 \
             AND result IS NOT NULL AND result <> 'TIMEOUT' AND issued_at < $2 \
             ORDER BY issued_at DESC LIMIT 1"
        ))
        .bind(node.as_str())
        .bind(before_ms)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(challenge_from_row).transpose()
    }

    /// The job's latest answered challenge (its evidence is what the next one must continue).
    pub async fn last_answered(&self, job: &JobId) -> StoreResult<Option<ChallengeRecord>> {
        self.count_op();
        let row = sqlx::query(concat!(
            "SELECT ",
            challenge_columns!(),
            " FROM visibility_challenges WHERE job_id = $1 \
             AND result = 'ANSWERED' ORDER BY issued_at DESC LIMIT 1"
        ))
        .bind(job.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(challenge_from_row).transpose()
    }

    /// RUNNING jobs of ACTIVE nodes that have no open challenge, as (node, job), by node:
    /// the candidates of a round of challenges.
    pub async fn jobs_to_challenge(&self, limit: i64) -> StoreResult<Vec<(NodeId, JobId)>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT j.node_id, j.id FROM jobs j JOIN provider_nodes n ON n.id = j.node_id \
             WHERE j.status = 'RUNNING' AND n.status = 'ACTIVE' AND NOT EXISTS \
             (SELECT 1 FROM visibility_challenges c WHERE c.node_id = j.node_id \
              AND c.result IS NULL) \
             ORDER BY j.node_id, j.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let node: String = row.try_get("node_id")?;
                let job: String = row.try_get("id")?;
                Ok((
                    NodeId::parse(&node).map_err(StoreError::corrupt)?,
                    JobId::parse(&job).map_err(StoreError::corrupt)?,
                ))
            })
            .collect()
    }

    /// Whether the job's telemetry arrived after `since_ms`: a packet whose reply carried the
    /// challenge issued then.
    pub async fn job_heard_since(&self, job: &JobId, since_ms: i64) -> StoreResult<bool> {
        self.count_op();
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = $1 AND last_telemetry_at > $2 LIMIT 1",
        )
        .bind(job.as_str())
        .bind(since_ms)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }
}
