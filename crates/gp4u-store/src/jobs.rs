//! Jobs, their idempotency keys, and state changes with their outbox events.

use gp4u_core::ids::{JobId, UserId};
use gp4u_core::job::{JobState, JobStatus};
use sqlx::Row;

use crate::outbox::{OutboxEvent, insert_events};
use crate::placement::release_gpus_of;
use crate::records::job_from_row;
use crate::{JobRecord, Store, StoreError, StoreResult, is_unique_violation};

/// The idempotency key a submission came with, and the response to replay for it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIdempotency {
    pub key: String,
    /// Hash of the request body: the same key with another body is refused, not replayed.
    pub request_hash: String,
    pub status_code: u16,
    pub response: String,
}

/// A stored idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub job_id: JobId,
    pub request_hash: String,
    pub status_code: u16,
    pub response: String,
    pub created_at_ms: i64,
}

/// A job to insert, with everything that must commit together with it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub record: JobRecord,
    pub idempotency: Option<NewIdempotency>,
    pub events: Vec<OutboxEvent>,
    /// Posted with the job (the billing hold): `InsufficientFunds` refuses the whole job.
    pub transfers: Vec<crate::NewTransfer>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreateJobOutcome {
    Created(Box<JobRecord>),
    /// Another request with the same idempotency key committed first; nothing was created.
    Replayed(IdempotencyRecord),
}

impl Store {
    /// Inserts a job, its idempotency key and its outbox events in one transaction.
    /// When the idempotency key is taken (also by a request racing this one), nothing is
    /// written and the stored response is returned instead.
    pub async fn create_job(
        &self,
        job: &NewJob,
        idempotency_ttl_ms: i64,
        now_ms: i64,
    ) -> StoreResult<CreateJobOutcome> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let record = &job.record;
        if let Some(idempotency) = &job.idempotency {
            // An expired key may be reused: drop it first (same transaction).
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2 AND created_at <= $3",
            )
            .bind(record.owner_id.as_str())
            .bind(&idempotency.key)
            .bind(now_ms - idempotency_ttl_ms)
            .execute(&mut *tx)
            .await?;
            // On PostgreSQL a concurrent insert of the same key waits here for the other
            // transaction and then does nothing; on SQLite the writer lock already serialises.
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys \
                 (user_id, idem_key, request_hash, job_id, status_code, response, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, idem_key) DO NOTHING",
            )
            .bind(record.owner_id.as_str())
            .bind(&idempotency.key)
            .bind(&idempotency.request_hash)
            .bind(record.id.as_str())
            .bind(i64::from(idempotency.status_code))
            .bind(&idempotency.response)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                tx.rollback().await?;
                drop(_writer);
                return match self
                    .idempotency_lookup(
                        &record.owner_id,
                        &idempotency.key,
                        idempotency_ttl_ms,
                        now_ms,
                    )
                    .await?
                {
                    Some(existing) => Ok(CreateJobOutcome::Replayed(existing)),
                    None => Err(StoreError::Conflict(format!(
                        "idempotency key {:?} is being used by another request; retry",
                        idempotency.key
                    ))),
                };
            }
        }
        let manifest = serde_json::to_string(&record.manifest).map_err(|error| {
            StoreError::corrupt(format!("manifest does not serialise: {error}"))
        })?;
        sqlx::query(
            "INSERT INTO jobs (id, owner_id, name, status, workload_type, gpu_id, node_id, gpu_name, \
             gpu_region, manifest, price_micros, cost_estimate_micros, anomalies, created_at, version, \
             hold_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, '[]', $13, 1, $14)",
        )
        .bind(record.id.as_str())
        .bind(record.owner_id.as_str())
        .bind(&record.name)
        .bind(record.state.status.as_str())
        .bind(record.manifest.workload_type.as_str())
        .bind(record.state.gpu_id.as_ref().map(|id| id.as_str()))
        .bind(record.state.node_id.as_ref().map(|id| id.as_str()))
        .bind(record.gpu_name.as_deref())
        .bind(record.gpu_region.as_deref())
        .bind(manifest)
        .bind(record.price_per_hour.micros())
        .bind(record.cost_estimate.micros())
        .bind(now_ms)
        .bind(record.hold.micros())
        .execute(&mut *tx)
        .await
        .map_err(|error| {
            if is_unique_violation(&error) {
                StoreError::Conflict(format!("job {} already exists", record.id))
            } else {
                error.into()
            }
        })?;
        crate::billing::post_transfers(&mut tx, self.engine(), &job.transfers, now_ms).await?;
        insert_events(&mut tx, &job.events, now_ms).await?;
        tx.commit().await?;
        let mut created = record.clone();
        created.created_at_ms = now_ms;
        created.version = 1;
        Ok(CreateJobOutcome::Created(Box::new(created)))
    }

    /// The unexpired idempotency record of `user_id` for `key`, if any.
    pub async fn idempotency_lookup(
        &self,
        user_id: &UserId,
        key: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        self.count_op();
        let row = sqlx::query(
            "SELECT job_id, request_hash, status_code, response, created_at FROM idempotency_keys \
             WHERE user_id = $1 AND idem_key = $2 AND created_at > $3",
        )
        .bind(user_id.as_str())
        .bind(key)
        .bind(now_ms - ttl_ms)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let job_id: String = row.try_get("job_id")?;
        let status_code: i64 = row.try_get("status_code")?;
        Ok(Some(IdempotencyRecord {
            job_id: JobId::parse(&job_id).map_err(StoreError::corrupt)?,
            request_hash: row.try_get("request_hash")?,
            status_code: u16::try_from(status_code).map_err(StoreError::corrupt)?,
            response: row.try_get("response")?,
            created_at_ms: row.try_get("created_at")?,
        }))
    }

    /// Deletes idempotency keys older than the TTL; returns how many went.
    pub async fn purge_idempotency_keys(&self, ttl_ms: i64, now_ms: i64) -> StoreResult<u64> {
        self.count_op();
        let _writer = self.writer().await;
        let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= $1")
            .bind(now_ms - ttl_ms)
            .execute(self.pool())
            .await?;
        Ok(result.rows_affected())
    }

    pub async fn get_job(&self, id: &JobId) -> StoreResult<Option<JobRecord>> {
        self.count_op();
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// A user's jobs, newest first.
    pub async fn list_jobs_for_owner(
        &self,
        owner: &UserId,
        limit: i64,
    ) -> StoreResult<Vec<JobRecord>> {
        self.list_jobs_for_owner_before(owner, limit, None).await
    }

    /// The owner's jobs newest first, starting after `before` (one of the owner's jobs: the
    /// last of the previous page) when given — keyset pagination on `(created_at, id)`, which
    /// the `jobs_owner_created` index serves. A `before` that is not the owner's job yields
    /// nothing (the caller checks it first, to say so).
    pub async fn list_jobs_for_owner_before(
        &self,
        owner: &UserId,
        limit: i64,
        before: Option<&JobId>,
    ) -> StoreResult<Vec<JobRecord>> {
        self.count_op();
        let rows = match before {
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE owner_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(owner.as_str())
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
            Some(before) => {
                sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE owner_id = $1 AND (created_at, id) < ",
                    "(SELECT created_at, id FROM jobs WHERE id = $3 AND owner_id = $1) ",
                    "ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(owner.as_str())
                .bind(limit)
                .bind(before.as_str())
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(job_from_row).collect()
    }

    /// How many jobs are in each status (wire form, "PENDING", …); statuses with none are absent.
    /// One indexed `GROUP BY` (for the metrics endpoint, which caches it between scrapes).
    pub async fn count_jobs_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        self.count_op();
        let rows = sqlx::query("SELECT status, COUNT(*) AS jobs FROM jobs GROUP BY status")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("status")?, row.try_get("jobs")?)))
            .collect()
    }

    pub async fn count_jobs(&self) -> StoreResult<i64> {
        self.count_op();
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
            .fetch_one(self.pool())
            .await?)
    }

    /// Writes a job's new state if it is still at `expected_version`, with the events the
    /// transition emitted, in one transaction. `Conflict` when someone changed the job first:
    /// the caller re-reads and decides again (the state machine may now refuse).
    pub async fn update_job_state(
        &self,
        id: &JobId,
        expected_version: i64,
        state: &JobState,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<JobRecord> {
        self.count_op();
        let writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE jobs SET status = $3, failure_reason = $4, ended_by = $5, node_id = $6, \
             gpu_id = $7, started_at = $8, ended_at = $9, exit_code = $10, version = version + 1 \
             WHERE id = $1 AND version = $2",
        )
        .bind(id.as_str())
        .bind(expected_version)
        .bind(state.status.as_str())
        .bind(state.failure_reason.map(|reason| reason.as_str()))
        .bind(state.ended_by.map(|by| by.as_str()))
        .bind(state.node_id.as_ref().map(|node| node.as_str()))
        .bind(state.gpu_id.as_ref().map(|gpu| gpu.as_str()))
        .bind(state.started_at_ms)
        .bind(state.ended_at_ms)
        .bind(state.exit_code.map(i64::from))
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "job {id} changed since version {expected_version}"
            )));
        }
        if !matches!(state.status, JobStatus::Assigned | JobStatus::Running) {
            // The job no longer occupies its GPU: free it in the same transaction.
            release_gpus_of(&mut tx, id).await?;
        }
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        drop(writer);
        self.get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }
}
