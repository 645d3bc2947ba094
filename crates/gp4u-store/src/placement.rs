//! Placement and dispatch: atomic assignment of a job to a GPU, pickup by the node's agent,
//! and the queries Atlas and the reapers run.
//!
//! A GPU holds at most one job: the assignment transaction flips the GPU from AVAILABLE to BUSY
//! with a conditional update (`WHERE status = 'AVAILABLE'`) and moves the job with its version
//! check. Two replicas racing for one GPU: one update matches, the other matches nothing and
//! rolls back. A unique index on `gpus.current_job_id` backs it up.

use gp4u_core::ids::{GpuId, JobId, NodeId};
use gp4u_core::job::{JobState, JobStatus};
use gp4u_core::money::Money;

use crate::outbox::{OutboxEvent, insert_events};
use crate::records::job_from_row;
use crate::{JobRecord, Store, StoreError, StoreResult, is_unique_violation};

/// What an assignment writes besides the job's new state.
#[derive(Debug, Clone)]
pub struct Assignment<'a> {
    pub gpu_id: &'a GpuId,
    pub gpu_name: &'a str,
    pub gpu_region: &'a str,
    /// The chosen GPU's price: requirement jobs were estimated at the dearest match.
    pub price_per_hour: Money,
    /// `{score, reasons}` as shown on the job.
    pub placement: &'a serde_json::Value,
    /// The chosen GPU's registered power limit (mW) as sealed with the assignment: the job's
    /// energy proof must bound its readings by exactly this.
    pub power_limit_mw: Option<u64>,
}

impl Store {
    /// Assigns `job` (at `job.version`) to a GPU: the GPU goes BUSY and the job takes `state`
    /// (ASSIGNED), both or neither. `Conflict` when the GPU was taken or the job changed.
    pub async fn assign_job(
        &self,
        job: &JobRecord,
        state: &JobState,
        assignment: &Assignment<'_>,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<JobRecord> {
        self.count_op();
        let writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let taken = sqlx::query(
            "UPDATE gpus SET status = 'BUSY', current_job_id = $2 WHERE id = $1 AND status = 'AVAILABLE'",
        )
        .bind(assignment.gpu_id.as_str())
        .bind(job.id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|error| {
            // Another replica is assigning this job to another GPU right now.
            if is_unique_violation(&error) {
                StoreError::Conflict(format!("job {} is being assigned elsewhere", job.id))
            } else {
                error.into()
            }
        })?;
        if taken.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "gpu {} is no longer available",
                assignment.gpu_id
            )));
        }
        let placement = assignment.placement.to_string();
        let moved = sqlx::query(
            "UPDATE jobs SET status = $3, node_id = $4, gpu_id = $5, gpu_name = $6, gpu_region = $7, \
             price_micros = $8, placement = $9, assigned_at = $10, picked_up_at = NULL, \
             gpu_power_limit_mw = $11, version = version + 1 WHERE id = $1 AND version = $2",
        )
        .bind(job.id.as_str())
        .bind(job.version)
        .bind(state.status.as_str())
        .bind(state.node_id.as_ref().map(|node| node.as_str()))
        .bind(assignment.gpu_id.as_str())
        .bind(assignment.gpu_name)
        .bind(assignment.gpu_region)
        .bind(assignment.price_per_hour.micros())
        .bind(placement)
        .bind(now_ms)
        .bind(
            assignment
                .power_limit_mw
                .map(crate::users::milliwatts_column)
                .transpose()?,
        )
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "job {} changed since version {}",
                job.id, job.version
            )));
        }
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        drop(writer);
        self.get_job(&job.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {}", job.id)))
    }

    /// Assignments of `node_id` that its agent has not taken yet, oldest first.
    pub async fn pending_assignments(
        &self,
        node_id: &NodeId,
        limit: i64,
    ) -> StoreResult<Vec<JobRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE node_id = $1 AND status = 'ASSIGNED' AND picked_up_at IS NULL \
             ORDER BY assigned_at, id LIMIT $2"
        ))
        .bind(node_id.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Records that the node's agent took the assignment. False when someone else did first
    /// (another long-poll of the same node) or the job moved on.
    pub async fn mark_picked_up(
        &self,
        job_id: &JobId,
        node_id: &NodeId,
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.count_op();
        let _writer = self.writer().await;
        let result = sqlx::query(
            "UPDATE jobs SET picked_up_at = $3 WHERE id = $1 AND node_id = $2 AND status = 'ASSIGNED' \
             AND picked_up_at IS NULL",
        )
        .bind(job_id.as_str())
        .bind(node_id.as_str())
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// ASSIGNED jobs that no agent took by `cutoff_ms`.
    pub async fn unclaimed_assignments(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<JobRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE status = 'ASSIGNED' AND picked_up_at IS NULL AND assigned_at <= $1 \
             ORDER BY assigned_at LIMIT $2"
        ))
        .bind(cutoff_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Puts an ASSIGNED job back in the queue (state PENDING from the state machine, with the
    /// pinned GPU, if any, put back by the caller), frees its GPU and excludes `node_id` for it.
    /// `Conflict` when the job changed first.
    pub async fn requeue_job(
        &self,
        job: &JobRecord,
        state: &JobState,
        exclude: &NodeId,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<JobRecord> {
        self.requeue(job, state, exclude, None, events, now_ms)
            .await
    }

    /// The requeue itself; with `attempts` (the new attempt log), the move counts as a retry.
    pub(crate) async fn requeue(
        &self,
        job: &JobRecord,
        state: &JobState,
        exclude: &NodeId,
        attempts: Option<String>,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<JobRecord> {
        debug_assert_eq!(state.status, JobStatus::Pending);
        let mut excluded = job.excluded_nodes.clone();
        if !excluded.contains(exclude) {
            excluded.push(exclude.clone());
        }
        let excluded = serde_json::to_string(&excluded)
            .map_err(|error| StoreError::corrupt(format!("excluded nodes: {error}")))?;
        let retry = attempts.is_some();
        self.count_op();
        let writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE jobs SET status = $3, node_id = NULL, assigned_at = NULL, picked_up_at = NULL, \
             placement = NULL, excluded_nodes = $4, gpu_id = $5, started_at = $6, \
             last_telemetry_at = NULL, exit_code = NULL, latest_metrics = NULL, \
             retries = retries + $7, attempts = COALESCE($8, attempts), \
             version = version + 1 WHERE id = $1 AND version = $2",
        )
        .bind(job.id.as_str())
        .bind(job.version)
        .bind(state.status.as_str())
        .bind(excluded)
        .bind(state.gpu_id.as_ref().map(|gpu| gpu.as_str()))
        .bind(state.started_at_ms)
        .bind(i64::from(retry))
        .bind(attempts)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "job {} changed since version {}",
                job.id, job.version
            )));
        }
        release_gpus_of(&mut tx, &job.id).await?;
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        drop(writer);
        self.get_job(&job.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {}", job.id)))
    }
}

/// Frees whatever GPU `job_id` holds (inside the caller's transaction).
pub(crate) async fn release_gpus_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &JobId,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE gpus SET status = 'AVAILABLE', current_job_id = NULL WHERE current_job_id = $1",
    )
    .bind(job_id.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
