//! Rows as the rest of GP4U sees them, and their decoding from database rows.

use gp4u_core::chambers::Presence;
pub use gp4u_core::fleet::{GpuStatus, NodeStatus};
use gp4u_core::ids::{GpuId, JobId, NodeId, UserId};
use gp4u_core::job::{EndedBy, FailureReason, JobState, JobStatus};
use gp4u_core::manifest::{JobManifest, Role};
use gp4u_core::money::Money;
use gp4u_core::posture::HostPosture;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: UserId,
    pub name: String,
    pub role: Role,
    pub clearance: u8,
    pub active: bool,
    pub university: bool,
    pub region: Option<String>,
    pub credit: Money,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub id: NodeId,
    pub owner_id: UserId,
    pub region: String,
    pub public_key: String,
    /// `ACTIVE` or `EJECTED`.
    pub status: NodeStatus,
    pub created_at_ms: i64,
    /// 0–100: Atlas weighs it; slashes lower it.
    pub trust_score: f64,
    /// What the provider has at stake; slashes take from it.
    pub stake: Money,
    pub ejected_at_ms: Option<i64>,
    pub ejected_reason: Option<String>,
    /// The last visibility check's result (`UNCHECKED` until one ran).
    pub visibility: String,
    pub visibility_checked_at_ms: Option<i64>,
    /// The agent's first and last contact (assignment polls) since presence is recorded, and
    /// the time it was present: contacts at most the presence gap apart, summed.
    pub presence: Presence,
    /// What the node's agent last reported of its host (`None`: an older agent never did).
    pub posture: Option<HostPosture>,
}

/// `provider_nodes.status` values.
pub const NODE_ACTIVE: &str = NodeStatus::Active.as_str();
pub const NODE_EJECTED: &str = NodeStatus::Ejected.as_str();

/// A GPU with the facts of its node that listings and pricing need.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRecord {
    pub id: GpuId,
    pub node_id: NodeId,
    pub owner_id: UserId,
    pub name: String,
    pub vram_gb: f64,
    pub price_per_hour: Money,
    pub uuid: Option<String>,
    pub status: GpuStatus,
    pub region: String,
    /// The node's trust score (0–100).
    pub trust_score: f64,
    pub created_at_ms: i64,
    /// Declared without hardware behind it.
    pub emulated: bool,
    /// The GPU driver the agent declared at registration.
    pub driver_version: Option<String>,
    /// The enforced power limit in milliwatts, as registered or last declared by the agent;
    /// `None` for a GPU registered before power limits were recorded, until its agent
    /// declares one.
    pub power_limit_mw: Option<u64>,
    /// Its node's presence.
    pub node_presence: Presence,
    /// The posture of the GPU's node, as its agent last reported it.
    pub node_posture: Option<HostPosture>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub owner_id: UserId,
    pub name: String,
    pub state: JobState,
    pub manifest: JobManifest,
    pub gpu_name: Option<String>,
    pub gpu_region: Option<String>,
    pub price_per_hour: Money,
    pub cost_estimate: Money,
    pub placement: Option<serde_json::Value>,
    pub latest_metrics: Option<serde_json::Value>,
    pub anomalies: serde_json::Value,
    pub energy_kwh: Option<f64>,
    pub carbon_kg: Option<f64>,
    pub renewable_pct: Option<f64>,
    /// Set with the energy at completion (declared renewable share ≥ 80 %).
    pub carbon_credit_eligible: Option<bool>,
    pub created_at_ms: i64,
    /// Optimistic-concurrency counter: every state change bumps it.
    pub version: i64,
    /// When Atlas last assigned the job, and when the node's agent took the assignment.
    pub assigned_at_ms: Option<i64>,
    pub picked_up_at_ms: Option<i64>,
    /// Nodes the job must not be placed on again (it timed out or failed there).
    pub excluded_nodes: Vec<NodeId>,
    /// What the blob store holds for this job: its output archive and its log.
    pub blobs: JobBlobs,
    /// When the last telemetry packet arrived (the heartbeat).
    pub last_telemetry_at_ms: Option<i64>,
    /// Provider-fault retries used so far (at most the manifest's `max_retries`).
    pub retries: u32,
    /// Every attempt that ended on a node without ending the job.
    pub attempts: Vec<crate::tutela::Attempt>,
    /// What the customer's credit holds for this job until it is settled (estimate × 1.1).
    pub hold: Money,
    /// The assigned GPU's power limit in milliwatts when the job was last assigned (sealed
    /// with `job.assigned`): the bound its energy proof must use. `None` before an
    /// assignment, or for one to a GPU without a registered limit.
    pub gpu_power_limit_mw: Option<u64>,
}

impl JobRecord {
    /// Whether its latest telemetry came from an emulated GPU (no hardware behind it).
    pub fn ran_emulated(&self) -> bool {
        self.latest_metrics
            .as_ref()
            .and_then(|metrics| metrics.get("emulated"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// A job's output archive and log, as far as the database knows (the bytes are blobs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobBlobs {
    /// Hex SHA-256 of the uploaded output archive, once there is one.
    pub output_sha256: Option<String>,
    pub output_bytes: Option<u64>,
    /// Total size of the stored log chunks.
    pub log_bytes: u64,
    /// Log chunks reserved so far: blobs `logs/<job>/<seq>` for seq in `0..log_chunks`.
    pub log_chunks: u64,
    /// The per-job cap was reached: later output was dropped.
    pub log_truncated: bool,
}

pub(crate) fn user_from_row(row: &AnyRow) -> StoreResult<UserRecord> {
    let id: String = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    let clearance: i64 = row.try_get("clearance")?;
    Ok(UserRecord {
        id: UserId::parse(&id).map_err(StoreError::corrupt)?,
        name: row.try_get("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::corrupt(format!("user role {role:?}")))?,
        clearance: u8::try_from(clearance).map_err(StoreError::corrupt)?,
        active: row.try_get::<i64, _>("active")? != 0,
        university: row.try_get::<i64, _>("university")? != 0,
        region: row.try_get("region")?,
        credit: Money::from_micros(row.try_get("credit_micros")?),
        created_at_ms: row.try_get("created_at")?,
    })
}

pub(crate) fn node_from_row(row: &AnyRow) -> StoreResult<NodeRecord> {
    let id: String = row.try_get("id")?;
    let owner: String = row.try_get("owner_id")?;
    Ok(NodeRecord {
        id: NodeId::parse(&id).map_err(StoreError::corrupt)?,
        owner_id: UserId::parse(&owner).map_err(StoreError::corrupt)?,
        region: row.try_get("region")?,
        public_key: row.try_get("public_key")?,
        status: {
            let status: String = row.try_get("status")?;
            NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::corrupt(format!("node status {status:?}")))?
        },
        created_at_ms: row.try_get("created_at")?,
        trust_score: row.try_get("trust_score")?,
        stake: Money::from_micros(row.try_get("stake_micros")?),
        ejected_at_ms: row.try_get("ejected_at")?,
        ejected_reason: row.try_get("ejected_reason")?,
        visibility: row.try_get("visibility")?,
        visibility_checked_at_ms: row.try_get("visibility_checked_at")?,
        presence: Presence {
            first_seen_at_ms: row.try_get("first_seen_at")?,
            last_seen_at_ms: row.try_get("last_seen_at")?,
            online_ms: row.try_get("online_ms")?,
        },
        posture: posture_from_row(row)?,
    })
}

fn posture_from_row(row: &AnyRow) -> StoreResult<Option<HostPosture>> {
    let text: Option<String> = row.try_get("posture")?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|error| StoreError::corrupt(format!("provider_nodes.posture: {error}")))
    })
    .transpose()
}

pub(crate) fn gpu_from_row(row: &AnyRow) -> StoreResult<GpuRecord> {
    let id: String = row.try_get("id")?;
    let node: String = row.try_get("node_id")?;
    let owner: String = row.try_get("owner_id")?;
    let status: String = row.try_get("status")?;
    Ok(GpuRecord {
        id: GpuId::parse(&id).map_err(StoreError::corrupt)?,
        node_id: NodeId::parse(&node).map_err(StoreError::corrupt)?,
        owner_id: UserId::parse(&owner).map_err(StoreError::corrupt)?,
        name: row.try_get("name")?,
        vram_gb: row.try_get("vram_gb")?,
        price_per_hour: Money::from_micros(row.try_get("price_micros")?),
        uuid: row.try_get("uuid")?,
        status: GpuStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt(format!("gpu status {status:?}")))?,
        region: row.try_get("region")?,
        trust_score: row.try_get("trust_score")?,
        created_at_ms: row.try_get("created_at")?,
        emulated: row.try_get::<i64, _>("emulated")? != 0,
        driver_version: row.try_get("driver_version")?,
        power_limit_mw: milliwatts(row, "power_limit_mw")?,
        node_presence: Presence {
            first_seen_at_ms: row.try_get("first_seen_at")?,
            last_seen_at_ms: row.try_get("last_seen_at")?,
            online_ms: row.try_get("online_ms")?,
        },
        node_posture: posture_from_row(row)?,
    })
}

/// A nullable milliwatt column (stored as a signed 64-bit integer).
fn milliwatts(row: &AnyRow, column: &str) -> StoreResult<Option<u64>> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|mw| u64::try_from(mw).map_err(StoreError::corrupt))
        .transpose()
}

fn parse_json(column: &str, text: Option<String>) -> StoreResult<Option<serde_json::Value>> {
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|error| StoreError::corrupt(format!("jobs.{column}: {error}")))
    })
    .transpose()
}

pub(crate) fn job_from_row(row: &AnyRow) -> StoreResult<JobRecord> {
    let id: String = row.try_get("id")?;
    let owner: String = row.try_get("owner_id")?;
    let status: String = row.try_get("status")?;
    let failure_reason: Option<String> = row.try_get("failure_reason")?;
    let ended_by: Option<String> = row.try_get("ended_by")?;
    let gpu_id: Option<String> = row.try_get("gpu_id")?;
    let node_id: Option<String> = row.try_get("node_id")?;
    let manifest: String = row.try_get("manifest")?;
    let exit_code: Option<i64> = row.try_get("exit_code")?;
    let state = JobState {
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt(format!("job status {status:?}")))?,
        failure_reason: failure_reason
            .map(|reason| {
                FailureReason::parse(&reason)
                    .ok_or_else(|| StoreError::corrupt(format!("failure reason {reason:?}")))
            })
            .transpose()?,
        ended_by: ended_by
            .map(|by| {
                EndedBy::parse(&by).ok_or_else(|| StoreError::corrupt(format!("ended_by {by:?}")))
            })
            .transpose()?,
        node_id: node_id
            .map(|node| NodeId::parse(&node).map_err(StoreError::corrupt))
            .transpose()?,
        gpu_id: gpu_id
            .map(|gpu| GpuId::parse(&gpu).map_err(StoreError::corrupt))
            .transpose()?,
        started_at_ms: row.try_get("started_at")?,
        ended_at_ms: row.try_get("ended_at")?,
        exit_code: exit_code
            .map(|code| i32::try_from(code).map_err(StoreError::corrupt))
            .transpose()?,
    };
    Ok(JobRecord {
        id: JobId::parse(&id).map_err(StoreError::corrupt)?,
        owner_id: UserId::parse(&owner).map_err(StoreError::corrupt)?,
        name: row.try_get("name")?,
        state,
        manifest: serde_json::from_str(&manifest)
            .map_err(|error| StoreError::corrupt(format!("jobs.manifest: {error}")))?,
        gpu_name: row.try_get("gpu_name")?,
        gpu_region: row.try_get("gpu_region")?,
        price_per_hour: Money::from_micros(row.try_get("price_micros")?),
        cost_estimate: Money::from_micros(row.try_get("cost_estimate_micros")?),
        placement: parse_json("placement", row.try_get("placement")?)?,
        latest_metrics: parse_json("latest_metrics", row.try_get("latest_metrics")?)?,
        anomalies: parse_json("anomalies", row.try_get("anomalies")?)?
            .unwrap_or(serde_json::Value::Array(Vec::new())),
        energy_kwh: row.try_get("energy_kwh")?,
        carbon_kg: row.try_get("carbon_kg")?,
        renewable_pct: row.try_get("renewable_pct")?,
        carbon_credit_eligible: row
            .try_get::<Option<i64>, _>("carbon_credit_eligible")?
            .map(|flag| flag != 0),
        created_at_ms: row.try_get("created_at")?,
        version: row.try_get("version")?,
        assigned_at_ms: row.try_get("assigned_at")?,
        picked_up_at_ms: row.try_get("picked_up_at")?,
        excluded_nodes: {
            let text: String = row.try_get("excluded_nodes")?;
            serde_json::from_str(&text)
                .map_err(|error| StoreError::corrupt(format!("jobs.excluded_nodes: {error}")))?
        },
        blobs: JobBlobs {
            output_sha256: row.try_get("output_sha256")?,
            output_bytes: row
                .try_get::<Option<i64>, _>("output_bytes")?
                .map(|bytes| u64::try_from(bytes).map_err(StoreError::corrupt))
                .transpose()?,
            log_bytes: u64::try_from(row.try_get::<i64, _>("log_bytes")?)
                .map_err(StoreError::corrupt)?,
            log_chunks: u64::try_from(row.try_get::<i64, _>("log_chunks")?)
                .map_err(StoreError::corrupt)?,
            log_truncated: row.try_get::<i64, _>("log_truncated")? != 0,
        },
        last_telemetry_at_ms: row.try_get("last_telemetry_at")?,
        retries: u32::try_from(row.try_get::<i64, _>("retries")?).map_err(StoreError::corrupt)?,
        hold: Money::from_micros(row.try_get("hold_micros")?),
        gpu_power_limit_mw: milliwatts(row, "gpu_power_limit_mw")?,
        attempts: {
            let text: String = row.try_get("attempts")?;
            serde_json::from_str(&text)
                .map_err(|error| StoreError::corrupt(format!("jobs.attempts: {error}")))?
        },
    })
}
