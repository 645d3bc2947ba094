//! Stage 4's storage: the telemetry time series (written in batches), anomaly verdicts,
//! slashes against a node's stake and trust, ejection, retries, customer flags, and the
//! visibility endpoint and results.

use gp4u_core::ids::{JobId, NodeId, UserId};
use gp4u_core::job::{FailureReason, JobState, JobStatus};
use gp4u_core::money::Money;
use gp4u_core::posture::HostPosture;
use gp4u_core::tutela::{SlashKind, SlashSchedule, TelemetrySample, slash};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::outbox::{OutboxEvent, insert_events};
use crate::records::{JobRecord, NODE_ACTIVE, NODE_EJECTED, NodeRecord, job_from_row};
use crate::{Store, StoreError, StoreResult, bool_to_i64};

/// One attempt of a job that ended on a node without ending the job (it was retried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub node_id: NodeId,
    pub reason: FailureReason,
    pub at_ms: i64,
}

/// One clamped telemetry sample to store, with the job's new `latest_metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    pub job_id: JobId,
    pub node_id: NodeId,
    pub sample: TelemetrySample,
    pub emulated: bool,
    /// The JSON written to `jobs.latest_metrics`.
    pub latest_metrics: serde_json::Value,
    /// The agent's Pedersen commitment to this sample's power (base64, stage 6); sealed in the
    /// ledger as it arrives (a `telemetry.committed` outbox event in the same transaction).
    pub commitment: Option<String>,
}

/// A verdict to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAnomaly {
    pub id: String,
    pub rule: String,
    pub severity: String,
    pub kill: bool,
    pub attribution: String,
    pub evidence: String,
    pub observed: f64,
    pub threshold: f64,
}

/// A slash as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SlashRecord {
    pub id: String,
    pub node_id: NodeId,
    /// `None` for node-level slashes (visibility).
    pub job_id: Option<JobId>,
    pub kind: SlashKind,
    pub stake_taken: Money,
    pub trust_before: f64,
    pub trust_after: f64,
    pub evidence: String,
    pub at_ms: i64,
}

/// Rows per INSERT statement (15 parameters each, well under both engines' limits).
const TELEMETRY_ROWS_PER_STATEMENT: usize = 400;

fn slash_kind_parse(text: &str) -> Option<SlashKind> {
    [
        SlashKind::VramOverclaim,
        SlashKind::JobDroppedUnexpectedly,
        SlashKind::CryptoMiningDuringMlJob,
        SlashKind::VisibilityBlocked,
    ]
    .into_iter()
    .find(|kind| kind.as_str() == text)
}

fn sample_from_row(row: &sqlx::any::AnyRow) -> StoreResult<TelemetrySample> {
    let count = |column: &str| -> StoreResult<Option<u32>> {
        row.try_get::<Option<i64>, _>(column)?
            .map(|value| u32::try_from(value).map_err(StoreError::corrupt))
            .transpose()
    };
    let pattern: Option<String> = row.try_get("inferred_pattern")?;
    Ok(TelemetrySample {
        gpu_utilization_pct: row.try_get("gpu_utilization_pct")?,
        vram_used_gb: row.try_get("vram_used_gb")?,
        vram_allocated_gb: row.try_get("vram_allocated_gb")?,
        power_draw_watts: row.try_get("power_draw_watts")?,
        temperature_c: row.try_get("temperature_c")?,
        outbound_bytes_per_sec: row.try_get("outbound_bytes_per_sec")?,
        inferred_pattern: pattern
            .as_deref()
            .and_then(gp4u_core::tutela::Pattern::parse),
        unique_dest_ips: count("unique_dest_ips")?,
        foreign_gpu_processes: count("foreign_gpu_processes")?,
        throttling: row
            .try_get::<Option<i64>, _>("throttling")?
            .map(|value| value != 0),
        dest_ports: None,
        at_ms: row.try_get("at_ms")?,
    })
}

fn u32_column(value: Option<u32>) -> Option<i64> {
    value.map(i64::from)
}

/// Outbox topic of a sample's sealed power commitment.
pub const TOPIC_TELEMETRY_COMMITTED: &str = "telemetry.committed";

/// A sample's power reading with its commitment, for energy accounting and proofs.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergySample {
    pub at_ms: i64,
    pub power_draw_watts: f64,
    pub commitment: Option<String>,
}

impl Store {
    /// A job's samples from `node` at or after `since_ms` (its final run: a retried job's
    /// earlier runs on other nodes are not its energy), oldest first, at most `limit`.
    pub async fn energy_series(
        &self,
        job: &JobId,
        node: &NodeId,
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<EnergySample>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT at_ms, power_draw_watts, commitment FROM telemetry \
             WHERE job_id = $1 AND node_id = $2 AND at_ms >= $3 ORDER BY at_ms, id LIMIT $4",
        )
        .bind(job.as_str())
        .bind(node.as_str())
        .bind(since_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EnergySample {
                    at_ms: row.try_get("at_ms")?,
                    power_draw_watts: row.try_get("power_draw_watts")?,
                    commitment: row.try_get("commitment")?,
                })
            })
            .collect()
    }

    /// Stores a batch of samples and moves each job's `latest_metrics` and heartbeat, in one
    /// transaction (the ingestion route's group commit: many requests, one commit). A row is
    /// accepted only while its job is RUNNING on the row's node — checked here, by the same
    /// statement that writes, so a job that ended or moved meanwhile (on any replica) is never
    /// written to. Returns, per row, whether it was accepted.
    pub async fn insert_telemetry_batch(&self, rows: &[TelemetryRow]) -> StoreResult<Vec<bool>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.count_op();
        let writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        // The newest sample of each job becomes its latest_metrics and heartbeat: one
        // UPDATE … FROM a VALUES list per chunk (both engines), not one statement per job.
        let mut latest: Vec<&TelemetryRow> = Vec::new();
        let mut position: std::collections::HashMap<&JobId, usize> =
            std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            match position.get(&row.job_id) {
                Some(&index) => {
                    if latest[index].sample.at_ms <= row.sample.at_ms {
                        latest[index] = row;
                    }
                }
                None => {
                    position.insert(&row.job_id, latest.len());
                    latest.push(row);
                }
            }
        }
        // A fixed order keeps concurrent batches from locking the same jobs crosswise.
        latest.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        let mut live: std::collections::HashSet<String> =
            std::collections::HashSet::with_capacity(latest.len());
        for chunk in latest.chunks(TELEMETRY_ROWS_PER_STATEMENT) {
            let mut sql = String::from("WITH v(id, node, m, t) AS (VALUES ");
            sql.push_str(&crate::values_placeholders(chunk.len(), 4));
            sql.push_str(
                ") UPDATE jobs SET latest_metrics = v.m, last_telemetry_at = CASE \
                 WHEN jobs.last_telemetry_at IS NULL OR jobs.last_telemetry_at < v.t THEN v.t \
                 ELSE jobs.last_telemetry_at END FROM v \
                 WHERE jobs.id = v.id AND jobs.node_id = v.node AND jobs.status = 'RUNNING' \
                 RETURNING jobs.id",
            );
            // Audited: only `$N` placeholders are formatted into the text.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for row in chunk {
                query = query
                    .bind(row.job_id.as_str())
                    .bind(row.node_id.as_str())
                    .bind(row.latest_metrics.to_string())
                    .bind(row.sample.at_ms);
            }
            for returned in query.fetch_all(&mut *tx).await? {
                live.insert(returned.try_get::<String, _>(0)?);
            }
        }
        let accepted: Vec<bool> = rows
            .iter()
            .map(|row| live.contains(row.job_id.as_str()))
            .collect();
        let stored: Vec<&TelemetryRow> = rows
            .iter()
            .zip(&accepted)
            .filter(|(_, accepted)| **accepted)
            .map(|(row, _)| row)
            .collect();
        for chunk in stored.chunks(TELEMETRY_ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO telemetry (job_id, node_id, at_ms, gpu_utilization_pct, vram_used_gb, \
                 vram_allocated_gb, power_draw_watts, temperature_c, outbound_bytes_per_sec, \
                 unique_dest_ips, foreign_gpu_processes, throttling, inferred_pattern, emulated, \
                 commitment) VALUES ",
            );
            sql.push_str(&crate::values_placeholders(chunk.len(), 15));
            // Audited: the text is built only from fixed column names and `$N` placeholders.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for row in chunk {
                let sample = &row.sample;
                query = query
                    .bind(row.job_id.as_str())
                    .bind(row.node_id.as_str())
                    .bind(sample.at_ms)
                    .bind(sample.gpu_utilization_pct)
                    .bind(sample.vram_used_gb)
                    .bind(sample.vram_allocated_gb)
                    .bind(sample.power_draw_watts)
                    .bind(sample.temperature_c)
                    .bind(sample.outbound_bytes_per_sec)
                    .bind(u32_column(sample.unique_dest_ips))
                    .bind(u32_column(sample.foreign_gpu_processes))
                    .bind(sample.throttling.map(bool_to_i64))
                    .bind(sample.inferred_pattern.map(|pattern| pattern.as_str()))
                    .bind(bool_to_i64(row.emulated))
                    .bind(row.commitment.as_deref());
            }
            query.execute(&mut *tx).await?;
        }
        let sealed: Vec<OutboxEvent> = stored
            .iter()
            .filter_map(|row| {
                row.commitment.as_ref().map(|commitment| OutboxEvent {
                    topic: TOPIC_TELEMETRY_COMMITTED.into(),
                    aggregate_id: row.job_id.to_string(),
                    payload: serde_json::json!({
                        "job_id": row.job_id,
                        "node_id": row.node_id,
                        "at_ms": row.sample.at_ms,
                        "commitment": commitment,
                    }),
                })
            })
            .collect();
        if !sealed.is_empty() {
            let now_ms = stored.iter().map(|row| row.sample.at_ms).max().unwrap_or(0);
            insert_events(&mut tx, &sealed, now_ms).await?;
        }
        tx.commit().await?;
        drop(writer);
        Ok(accepted)
    }

    /// The job's latest `limit` samples, oldest first.
    pub async fn recent_telemetry(
        &self,
        job: &JobId,
        limit: i64,
    ) -> StoreResult<Vec<TelemetrySample>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT at_ms, gpu_utilization_pct, vram_used_gb, vram_allocated_gb, power_draw_watts, \
             temperature_c, outbound_bytes_per_sec, unique_dest_ips, foreign_gpu_processes, \
             throttling, inferred_pattern FROM telemetry WHERE job_id = $1 \
             ORDER BY at_ms DESC, id DESC LIMIT $2",
        )
        .bind(job.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let mut samples = rows
            .iter()
            .map(sample_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        samples.reverse();
        Ok(samples)
    }

    /// The job's first `limit` samples, oldest first (a run's series, for charts and energy).
    pub async fn telemetry_series(
        &self,
        job: &JobId,
        limit: i64,
    ) -> StoreResult<Vec<TelemetrySample>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT at_ms, gpu_utilization_pct, vram_used_gb, vram_allocated_gb, power_draw_watts, \
             temperature_c, outbound_bytes_per_sec, unique_dest_ips, foreign_gpu_processes, \
             throttling, inferred_pattern FROM telemetry WHERE job_id = $1 \
             ORDER BY at_ms, id LIMIT $2",
        )
        .bind(job.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sample_from_row).collect()
    }

    /// How many samples a job has stored.
    pub async fn count_telemetry(&self, job: &JobId) -> StoreResult<i64> {
        self.count_op();
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM telemetry WHERE job_id = $1")
                .bind(job.as_str())
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Stores verdicts on a job with their outbox events, and replaces the job's `anomalies`
    /// summary, in one transaction.
    pub async fn record_anomalies(
        &self,
        job: &JobId,
        node: &NodeId,
        anomalies: &[NewAnomaly],
        summary: &serde_json::Value,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<()> {
        self.count_op();
        let writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        for anomaly in anomalies {
            sqlx::query(
                "INSERT INTO anomalies (id, job_id, node_id, rule, severity, kill, attribution, \
                 evidence, observed, threshold, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&anomaly.id)
            .bind(job.as_str())
            .bind(node.as_str())
            .bind(&anomaly.rule)
            .bind(&anomaly.severity)
            .bind(bool_to_i64(anomaly.kill))
            .bind(&anomaly.attribution)
            .bind(&anomaly.evidence)
            .bind(anomaly.observed)
            .bind(anomaly.threshold)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE jobs SET anomalies = $2 WHERE id = $1")
            .bind(job.as_str())
            .bind(summary.to_string())
            .execute(&mut *tx)
            .await?;
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        drop(writer);
        Ok(())
    }

    /// Counts the stored verdicts of a job (all rules).
    pub async fn count_anomalies(&self, job: &JobId) -> StoreResult<i64> {
        self.count_op();
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM anomalies WHERE job_id = $1")
                .bind(job.as_str())
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Slashes `node` for `kind` by `schedule`, at most once per (node, job, kind): a second
    /// call for the same job returns `None` and changes nothing (so a retried reaper or a
    /// racing replica never slashes twice). The node's stake and trust move with a
    /// compare-and-set, retried when another slash got there first; the slash row, the node
    /// and `events` (built by `events_for` from the record) commit together.
    #[allow(clippy::too_many_arguments)] // the slash's facts, each of its own type
    pub async fn slash_node(
        &self,
        node: &NodeId,
        job: Option<&JobId>,
        kind: SlashKind,
        schedule: &SlashSchedule,
        evidence: &str,
        id: &str,
        now_ms: i64,
        events_for: impl Fn(&SlashRecord) -> Vec<OutboxEvent>,
    ) -> StoreResult<Option<SlashRecord>> {
        for _attempt in 0..8 {
            let current = self
                .get_node(node)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("node {node}")))?;
            let outcome = slash(current.stake, current.trust_score, kind, schedule);
            let record = SlashRecord {
                id: id.to_owned(),
                node_id: node.clone(),
                job_id: job.cloned(),
                kind,
                stake_taken: outcome.stake_taken,
                trust_before: current.trust_score,
                trust_after: outcome.new_trust,
                evidence: evidence.to_owned(),
                at_ms: now_ms,
            };
            self.count_op();
            let writer = self.writer().await;
            let mut tx = self.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO slashes (id, node_id, job_id, kind, severity, stake_taken_micros, \
                 trust_before, trust_after, evidence, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (node_id, job_id, kind) DO NOTHING",
            )
            .bind(id)
            .bind(node.as_str())
            .bind(job.map_or("", |job| job.as_str()))
            .bind(kind.as_str())
            .bind(match kind.severity() {
                gp4u_core::tutela::Severity::Hard => "HARD",
                gp4u_core::tutela::Severity::Soft => "SOFT",
                gp4u_core::tutela::Severity::Info => "INFO",
            })
            .bind(record.stake_taken.micros())
            .bind(record.trust_before)
            .bind(record.trust_after)
            .bind(evidence)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let moved = sqlx::query(
                "UPDATE provider_nodes SET stake_micros = $2, trust_score = $3 \
                 WHERE id = $1 AND stake_micros = $4 AND trust_score = $5",
            )
            .bind(node.as_str())
            .bind(outcome.new_stake.micros())
            .bind(outcome.new_trust)
            .bind(current.stake.micros())
            .bind(current.trust_score)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 0 {
                // Another slash or deposit changed the node: compute again.
                tx.rollback().await?;
                drop(writer);
                continue;
            }
            if record.stake_taken.micros() > 0 {
                // The stake column moved above; the journal and the receiving account move here.
                crate::billing::journal_only(
                    &mut tx,
                    &crate::NewTransfer {
                        id: format!("slash:{id}"),
                        debit: format!("node:{node}:stake"),
                        credit: "platform:slashes".into(),
                        amount: record.stake_taken,
                        kind: "slash".into(),
                        job_id: job.map(|job| job.to_string()),
                    },
                    now_ms,
                )
                .await?;
                crate::billing::apply_account_delta(
                    &mut tx,
                    "platform:slashes",
                    record.stake_taken.micros(),
                )
                .await?;
            }
            insert_events(&mut tx, &events_for(&record), now_ms).await?;
            tx.commit().await?;
            drop(writer);
            return Ok(Some(record));
        }
        Err(StoreError::Conflict(format!(
            "node {node} kept changing while being slashed; retry"
        )))
    }

    /// A node's slashes, newest first.
    pub async fn list_slashes(&self, node: &NodeId, limit: i64) -> StoreResult<Vec<SlashRecord>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT id, node_id, job_id, kind, stake_taken_micros, trust_before, trust_after, \
             evidence, at_ms FROM slashes WHERE node_id = $1 ORDER BY at_ms DESC, id DESC LIMIT $2",
        )
        .bind(node.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let job: String = row.try_get("job_id")?;
                let node: String = row.try_get("node_id")?;
                Ok(SlashRecord {
                    id: row.try_get("id")?,
                    node_id: NodeId::parse(&node).map_err(StoreError::corrupt)?,
                    job_id: if job.is_empty() {
                        None
                    } else {
                        Some(JobId::parse(&job).map_err(StoreError::corrupt)?)
                    },
                    kind: slash_kind_parse(&kind)
                        .ok_or_else(|| StoreError::corrupt(format!("slash kind {kind:?}")))?,
                    stake_taken: Money::from_micros(row.try_get("stake_taken_micros")?),
                    trust_before: row.try_get("trust_before")?,
                    trust_after: row.try_get("trust_after")?,
                    evidence: row.try_get("evidence")?,
                    at_ms: row.try_get("at_ms")?,
                })
            })
            .collect()
    }

    /// Ejects a node: it gets no more jobs (its GPUs leave the marketplace). Returns false
    /// when it was already ejected. The node's running jobs are the caller's to fail or retry.
    pub async fn eject_node(
        &self,
        node: &NodeId,
        reason: &str,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.count_op();
        let writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE provider_nodes SET status = $2, ejected_at = $3, ejected_reason = $4 \
             WHERE id = $1 AND status = $5",
        )
        .bind(node.as_str())
        .bind(NODE_EJECTED)
        .bind(now_ms)
        .bind(reason)
        .bind(NODE_ACTIVE)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE gpus SET status = 'OFFLINE' WHERE node_id = $1 AND current_job_id IS NULL",
        )
        .bind(node.as_str())
        .execute(&mut *tx)
        .await?;
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        drop(writer);
        Ok(true)
    }

    /// Moves `amount` of the owner's credit into the node's stake. `Conflict` when the credit
    /// is short.
    pub async fn add_stake(
        &self,
        node: &NodeId,
        owner: &UserId,
        amount: Money,
        transfer_id: &str,
        now_ms: i64,
    ) -> StoreResult<NodeRecord> {
        self.count_op();
        let writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let debited = sqlx::query(
            "UPDATE users SET credit_micros = credit_micros - $2 \
             WHERE id = $1 AND credit_micros >= $2",
        )
        .bind(owner.as_str())
        .bind(amount.micros())
        .execute(&mut *tx)
        .await?;
        if debited.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "user {owner} has less than {amount} of credit to stake"
            )));
        }
        sqlx::query(
            "UPDATE provider_nodes SET stake_micros = stake_micros + $2 WHERE id = $1 AND owner_id = $3",
        )
        .bind(node.as_str())
        .bind(amount.micros())
        .bind(owner.as_str())
        .execute(&mut *tx)
        .await?;
        crate::billing::journal_only(
            &mut tx,
            &crate::NewTransfer {
                id: transfer_id.to_owned(),
                debit: format!("user:{owner}:available"),
                credit: format!("node:{node}:stake"),
                amount,
                kind: "stake_deposit".into(),
                job_id: None,
            },
            now_ms,
        )
        .await?;
        tx.commit().await?;
        drop(writer);
        self.get_node(node)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {node}")))
    }

    /// Records what the node's agent reports of its host (at every start of the agent).
    pub async fn set_node_posture(&self, node: &NodeId, posture: &HostPosture) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query("UPDATE provider_nodes SET posture = $2 WHERE id = $1")
            .bind(node.as_str())
            .bind(crate::users::posture_json(Some(posture))?)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records a visibility check's result.
    pub async fn record_visibility(
        &self,
        node: &NodeId,
        result: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query(
            "UPDATE provider_nodes SET visibility = $2, visibility_checked_at = $3 WHERE id = $1",
        )
        .bind(node.as_str())
        .bind(result)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether any RUNNING job of `node` sent telemetry after `since_ms`: the agent is alive.
    pub async fn node_heard_since(&self, node: &NodeId, since_ms: i64) -> StoreResult<bool> {
        self.count_op();
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE node_id = $1 AND status = 'RUNNING' \
             AND last_telemetry_at > $2 LIMIT 1",
        )
        .bind(node.as_str())
        .bind(since_ms)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Jobs in `status`, oldest first (Atlas's queue is `PENDING`; the reapers read the others).
    pub async fn jobs_in_status(
        &self,
        status: JobStatus,
        limit: i64,
    ) -> StoreResult<Vec<JobRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE status = $1 ORDER BY created_at, id LIMIT $2"
        ))
        .bind(status.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// A node's jobs in `status`.
    pub async fn node_jobs_in_status(
        &self,
        node: &NodeId,
        status: JobStatus,
    ) -> StoreResult<Vec<JobRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE node_id = $1 AND status = $2 ORDER BY created_at, id LIMIT 1000"
        ))
        .bind(node.as_str())
        .bind(status.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Puts a job whose attempt failed for a provider fault back in the queue (`state` is the
    /// state machine's PENDING), excluding the node, counting the retry and recording the
    /// attempt. `Conflict` when the job changed first.
    pub async fn retry_job(
        &self,
        job: &JobRecord,
        state: &JobState,
        attempt: Attempt,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<JobRecord> {
        let mut attempts = job.attempts.clone();
        let node = attempt.node_id.clone();
        attempts.push(attempt);
        let attempts = serde_json::to_string(&attempts)
            .map_err(|error| StoreError::corrupt(format!("attempts: {error}")))?;
        self.requeue(job, state, &node, Some(attempts), events, now_ms)
            .await
    }

    /// Flags a customer account (mining or scanning caught in their container). The first
    /// flag's reason is kept.
    pub async fn flag_user(&self, user: &UserId, reason: &str, now_ms: i64) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query(
            "UPDATE users SET flagged_at = $2, flagged_reason = $3 WHERE id = $1 AND flagged_at IS NULL",
        )
        .bind(user.as_str())
        .bind(now_ms)
        .bind(reason)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// When and why a user was flagged, if they were.
    pub async fn user_flag(&self, user: &UserId) -> StoreResult<Option<(i64, String)>> {
        self.count_op();
        let row = sqlx::query("SELECT flagged_at, flagged_reason FROM users WHERE id = $1")
            .bind(user.as_str())
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let at: Option<i64> = row.try_get("flagged_at")?;
        let reason: Option<String> = row.try_get("flagged_reason")?;
        Ok(at.map(|at| (at, reason.unwrap_or_default())))
    }
}
