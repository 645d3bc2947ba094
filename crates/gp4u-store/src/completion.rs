//! Stage 5 and 6 storage: a finished job's energy and carbon, its Veritas record, the grid
//! factors carbon is computed with, and the proofs providers submit.

use gp4u_core::chambers::CarbonTotals;
use gp4u_core::energy::GridFactor;
use gp4u_core::ids::{JobId, NodeId, UserId};
use sqlx::Row;

use crate::outbox::{OutboxEvent, insert_events};
use crate::{Store, StoreError, StoreResult, bool_to_i64};

/// What completion accounting wrote on the job.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionFacts {
    pub energy_kwh: f64,
    /// The exact integral, mW·ms, as a decimal string (it can exceed i64 in principle).
    pub energy_mwms: String,
    pub carbon_kg: f64,
    pub renewable_pct: f64,
    pub carbon_credit_eligible: bool,
}

/// A region's grid carbon intensity, with where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct GridFactorRecord {
    pub region: String,
    pub g_co2e_per_kwh: f64,
    pub source: String,
    pub as_of: String,
    pub updated_at_ms: i64,
}

impl GridFactorRecord {
    /// A core grid factor as stored, stamped `updated_at_ms`.
    pub fn from_factor(factor: GridFactor, updated_at_ms: i64) -> GridFactorRecord {
        GridFactorRecord {
            region: factor.region,
            g_co2e_per_kwh: factor.g_co2e_per_kwh,
            source: factor.source,
            as_of: factor.as_of,
            updated_at_ms,
        }
    }

    /// The stored factor as core computes carbon with it.
    pub fn into_factor(self) -> GridFactor {
        GridFactor {
            region: self.region,
            g_co2e_per_kwh: self.g_co2e_per_kwh,
            source: self.source,
            as_of: self.as_of,
        }
    }
}

/// A proof as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ProofRecord {
    pub job_id: JobId,
    pub kind: String,
    pub node_id: NodeId,
    pub assurance: Option<String>,
    pub body: serde_json::Value,
    pub verified_at_ms: i64,
}

/// What `insert_proof` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofOutcome {
    Stored,
    /// The same proof was stored before (a retried submission): nothing changed.
    AlreadyStored,
}

impl Store {
    /// Writes a finished job's energy and carbon and its Veritas record, with `events`, once:
    /// when the Veritas record exists already (another replica, a retry) nothing changes and
    /// `false` is returned.
    pub async fn record_completion(
        &self,
        job: &JobId,
        node: Option<&NodeId>,
        facts: &CompletionFacts,
        veritas: &serde_json::Value,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO veritas_records (job_id, node_id, body, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job.as_str())
        .bind(node.map(|node| node.as_str()))
        .bind(veritas.to_string())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE jobs SET energy_kwh = $2, energy_mwms = $3, carbon_kg = $4, renewable_pct = $5, \
             carbon_credit_eligible = $6 WHERE id = $1",
        )
        .bind(job.as_str())
        .bind(facts.energy_kwh)
        .bind(&facts.energy_mwms)
        .bind(facts.carbon_kg)
        .bind(facts.renewable_pct)
        .bind(bool_to_i64(facts.carbon_credit_eligible))
        .execute(&mut *tx)
        .await?;
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A finished job's Veritas record as written at completion, if written yet.
    pub async fn veritas_record(&self, job: &JobId) -> StoreResult<Option<serde_json::Value>> {
        self.job_body(
            "SELECT body FROM veritas_records WHERE job_id = $1",
            job,
            "Veritas record",
        )
        .await
    }

    /// The exact energy integral written at completion (mW·ms, decimal), if accounted yet.
    pub async fn job_energy_mwms(&self, job: &JobId) -> StoreResult<Option<String>> {
        self.count_op();
        let row = sqlx::query("SELECT energy_mwms FROM jobs WHERE id = $1")
            .bind(job.as_str())
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(row) => row.try_get("energy_mwms")?,
            None => None,
        })
    }

    /// Inserts the grid factors that are missing (the built-in table at start-up); existing
    /// rows, which admins may have updated, stay.
    pub async fn seed_grid_factors(
        &self,
        factors: &[GridFactorRecord],
        now_ms: i64,
    ) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        for factor in factors {
            sqlx::query(
                "INSERT INTO grid_factors (region, g_co2e_per_kwh, source, as_of, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (region) DO NOTHING",
            )
            .bind(&factor.region)
            .bind(factor.g_co2e_per_kwh)
            .bind(&factor.source)
            .bind(&factor.as_of)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Seeds one region's factor from the operator's configuration: inserted when the region
    /// is missing, replacing the row when it still carries one of the `built_in` source texts
    /// (seeded by an earlier start), kept when an admin set it. True when it was written.
    pub async fn seed_grid_factor_over_built_in(
        &self,
        factor: &GridFactorRecord,
        built_in: [&str; 2],
        now_ms: i64,
    ) -> StoreResult<bool> {
        self.count_op();
        let _writer = self.writer().await;
        let written = sqlx::query(
            "INSERT INTO grid_factors (region, g_co2e_per_kwh, source, as_of, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (region) DO UPDATE SET \
             g_co2e_per_kwh = excluded.g_co2e_per_kwh, source = excluded.source, \
             as_of = excluded.as_of, updated_at = excluded.updated_at \
             WHERE grid_factors.source = $6 OR grid_factors.source = $7",
        )
        .bind(&factor.region)
        .bind(factor.g_co2e_per_kwh)
        .bind(&factor.source)
        .bind(&factor.as_of)
        .bind(now_ms)
        .bind(built_in[0])
        .bind(built_in[1])
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(written > 0)
    }

    /// Sets one region's factor (admins).
    pub async fn upsert_grid_factor(&self, factor: &GridFactorRecord) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query(
            "INSERT INTO grid_factors (region, g_co2e_per_kwh, source, as_of, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (region) DO UPDATE SET \
             g_co2e_per_kwh = $2, source = $3, as_of = $4, updated_at = $5",
        )
        .bind(&factor.region)
        .bind(factor.g_co2e_per_kwh)
        .bind(&factor.source)
        .bind(&factor.as_of)
        .bind(factor.updated_at_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn list_grid_factors(&self) -> StoreResult<Vec<GridFactorRecord>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT region, g_co2e_per_kwh, source, as_of, updated_at FROM grid_factors ORDER BY region",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(GridFactorRecord {
                    region: row.try_get("region")?,
                    g_co2e_per_kwh: row.try_get("g_co2e_per_kwh")?,
                    source: row.try_get("source")?,
                    as_of: row.try_get("as_of")?,
                    updated_at_ms: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Stores a verified proof with `events`, once per (job, kind). The same body again is a
    /// no-op; a different body for a kind already stored is a `Conflict`.
    pub async fn insert_proof(
        &self,
        proof: &ProofRecord,
        events: &[OutboxEvent],
    ) -> StoreResult<ProofOutcome> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let body = proof.body.to_string();
        let inserted = sqlx::query(
            "INSERT INTO proofs (job_id, kind, node_id, assurance, body, verified_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id, kind) DO NOTHING",
        )
        .bind(proof.job_id.as_str())
        .bind(&proof.kind)
        .bind(proof.node_id.as_str())
        .bind(proof.assurance.as_deref())
        .bind(&body)
        .bind(proof.verified_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: String =
                sqlx::query("SELECT body FROM proofs WHERE job_id = $1 AND kind = $2")
                    .bind(proof.job_id.as_str())
                    .bind(&proof.kind)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("body")?;
            tx.rollback().await?;
            let same = serde_json::from_str::<serde_json::Value>(&existing)
                .is_ok_and(|stored| stored == proof.body);
            return if same {
                Ok(ProofOutcome::AlreadyStored)
            } else {
                Err(StoreError::Conflict(format!(
                    "job {} already has a different {} proof; proofs are immutable once stored",
                    proof.job_id, proof.kind
                )))
            };
        }
        insert_events(&mut tx, events, proof.verified_at_ms).await?;
        tx.commit().await?;
        Ok(ProofOutcome::Stored)
    }

    /// A job's stored proofs, by kind.
    pub async fn job_proofs(&self, job: &JobId) -> StoreResult<Vec<ProofRecord>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT job_id, kind, node_id, assurance, body, verified_at FROM proofs \
             WHERE job_id = $1 ORDER BY kind",
        )
        .bind(job.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let body: String = row.try_get("body")?;
                Ok(ProofRecord {
                    job_id: JobId::parse(&row.try_get::<String, _>("job_id")?)
                        .map_err(|error| StoreError::corrupt(format!("proof job id: {error}")))?,
                    kind: row.try_get("kind")?,
                    node_id: NodeId::parse(&row.try_get::<String, _>("node_id")?)
                        .map_err(|error| StoreError::corrupt(format!("proof node id: {error}")))?,
                    assurance: row.try_get("assurance")?,
                    body: serde_json::from_str(&body)
                        .map_err(|error| StoreError::corrupt(format!("proof body: {error}")))?,
                    verified_at_ms: row.try_get("verified_at")?,
                })
            })
            .collect()
    }

    /// Sets the share of a node's power that its provider declares renewable (0–100).
    pub async fn set_node_renewable(&self, node: &NodeId, renewable_pct: f64) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query("UPDATE provider_nodes SET renewable_pct = $2 WHERE id = $1")
            .bind(node.as_str())
            .bind(renewable_pct)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// A node's declared renewable share (0 when never declared).
    pub async fn node_renewable(&self, node: &NodeId) -> StoreResult<f64> {
        self.count_op();
        let row = sqlx::query("SELECT renewable_pct FROM provider_nodes WHERE id = $1")
            .bind(node.as_str())
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(row) => row.try_get("renewable_pct")?,
            None => 0.0,
        })
    }
    /// Records an agent contact with `node` at `now_ms` (presence, for Mnemo's uptime): the
    /// time since the previous contact counts as online when it is at most `gap_ms`; a longer
    /// silence counts as down. Contacts out of order (another replica's clock) move nothing
    /// back; a contact less than `min_interval_ms` after the last recorded one is not written
    /// (the next one counts from the recorded one, so no time is lost).
    pub async fn record_node_contact(
        &self,
        node: &NodeId,
        now_ms: i64,
        gap_ms: i64,
        min_interval_ms: i64,
    ) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query(
            "UPDATE provider_nodes SET \
             online_ms = online_ms + CASE WHEN last_seen_at IS NOT NULL AND $2 > last_seen_at \
                 AND $2 - last_seen_at <= $3 THEN $2 - last_seen_at ELSE 0 END, \
             last_seen_at = CASE WHEN last_seen_at IS NULL OR $2 > last_seen_at THEN $2 \
                 ELSE last_seen_at END, \
             first_seen_at = CASE WHEN first_seen_at IS NULL OR $2 < first_seen_at THEN $2 \
                 ELSE first_seen_at END \
             WHERE id = $1 AND (last_seen_at IS NULL OR $2 - last_seen_at >= $4 \
                 OR $2 < first_seen_at)",
        )
        .bind(node.as_str())
        .bind(now_ms)
        .bind(gap_ms)
        .bind(min_interval_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }
    /// A customer's jobs that have been accounted (energy known), summed per region (`None`
    /// for jobs that never had one): the customer's side of the Energy chamber.
    pub async fn customer_carbon(
        &self,
        owner: &UserId,
    ) -> StoreResult<Vec<(Option<String>, CarbonTotals)>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT gpu_region, COUNT(*) AS jobs, SUM(energy_kwh) AS kwh, \
             SUM(COALESCE(carbon_kg, 0.0)) AS carbon, \
             SUM(energy_kwh * COALESCE(renewable_pct, 0.0) / 100.0) AS renewable, \
             CAST(COALESCE(SUM(carbon_credit_eligible), 0) AS BIGINT) AS eligible, \
             SUM(CASE WHEN carbon_credit_eligible = 1 THEN energy_kwh ELSE 0.0 END) \
                 AS eligible_kwh, \
             SUM(CASE WHEN carbon_credit_eligible = 1 THEN COALESCE(carbon_kg, 0.0) ELSE 0.0 END) \
                 AS eligible_carbon \
             FROM jobs WHERE owner_id = $1 AND energy_kwh IS NOT NULL \
             GROUP BY gpu_region ORDER BY gpu_region IS NULL, gpu_region",
        )
        .bind(owner.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let count = |column: &str| -> StoreResult<u64> {
                    let value: i64 = row.try_get(column)?;
                    u64::try_from(value).map_err(StoreError::corrupt)
                };
                Ok((
                    row.try_get("gpu_region")?,
                    CarbonTotals {
                        jobs: count("jobs")?,
                        energy_kwh: row.try_get("kwh")?,
                        carbon_kg: row.try_get("carbon")?,
                        renewable_kwh_declared: row.try_get("renewable")?,
                        credit_eligible_jobs: count("eligible")?,
                        credit_eligible_kwh: row.try_get("eligible_kwh")?,
                        credit_eligible_carbon_kg: row.try_get("eligible_carbon")?,
                    },
                ))
            })
            .collect()
    }

    /// The ids of the nodes `owner` registered.
    pub async fn owner_node_ids(&self, owner: &UserId) -> StoreResult<Vec<NodeId>> {
        self.count_op();
        let rows = sqlx::query("SELECT id FROM provider_nodes WHERE owner_id = $1 ORDER BY id")
            .bind(owner.as_str())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                NodeId::parse(&id).map_err(StoreError::corrupt)
            })
            .collect()
    }
}
