//! GP4U wire types: HTTP request and response bodies, and the error-code vocabulary.
//!
//! Everything here is part of the public contract (SPEC.md): field names follow the spec
//! exactly, including its mixed casing (`costEstimate`, `expectedDurationHours`). Change by
//! adding, never by renaming. The OpenAPI document is generated from these types.

mod billing;
mod energy;
mod errors;
mod ledger;
mod logs;
pub mod paths;
mod proofs;
mod telemetry;
mod veritas;

use std::collections::BTreeMap;

pub use gp4u_core::posture::{HostPosture, PostureUlimits};
pub use gp4u_core::{
    EndedBy, FailureReason, GpuStatus, JobNetwork, JobStatus, NodeStatus, Role, WorkloadType,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use billing::{
    Balance, GridFactorBody, GridFactorView, GridFactors, SettlementOutcome, SettlementTransfer,
    SettlementView, Statement, StatementLine, TransferKind,
};
pub use energy::{
    CarbonTotals, EnergyReport, EnergyScope, GridFactorUsed, Intake, NodeEnergy, RegionEnergy,
};
pub use errors::{ErrorBody, ErrorCode, ErrorDetail};
pub use ledger::{
    ConsistencyProof, InclusionProof, JobLedger, LedgerEntries, LedgerEntry, ProvenEntry,
    ReadableEntry, WitnessedEntry,
};
pub use logs::LogStreamEnd;
pub use proofs::{
    JobCommitments, JobProofs, ProofAccepted, ProofAssurance, ProofKind, SealedCommitment,
    StoredProof,
};
pub use telemetry::{
    AnomalySummary, LatestMetrics, RefusedPacket, TelemetryAnswer, TelemetryBatchItem,
    TelemetrySampleView, TelemetrySeries, TelemetryStreamEnd,
};
pub use veritas::{VeritasInput, VeritasRecord, VeritasRuntime};

/// The header that carries a blob's hex SHA-256 (artifacts, outputs).
pub const SHA256_HEADER: &str = "x-gp4u-sha256";

/// `gpu` in job responses: where the job runs (or will).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuBrief {
    pub name: String,
    pub region: String,
}

/// Request body of `POST /api/jobs`. Validation is done field by field on the raw JSON (so that
/// every error names its field); this type documents the shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobSubmission {
    /// 1–200 characters after trimming.
    pub name: String,
    /// Pins a listed GPU. One of `gpuId` and `gpu` is required.
    #[serde(rename = "gpuId")]
    pub gpu_id: Option<String>,
    /// Lets Atlas choose a GPU.
    pub gpu: Option<GpuRequirementBody>,
    /// TRAINING, INFERENCE, FINE_TUNING, RENDERING or BATCH.
    pub workload_type: String,
    /// In [0.1, 720].
    #[serde(rename = "expectedDurationHours")]
    pub expected_duration_hours: f64,
    /// Repository, without digest (e.g. `registry.example/org/bert`).
    pub docker_image: String,
    /// 64 hex digits, optionally prefixed with `sha256:`.
    pub docker_image_sha256: String,
    pub command: Option<Vec<String>>,
    /// Keys `[A-Z_][A-Z0-9_]*`, at most 64; runtime-changing keys are refused.
    pub env: Option<BTreeMap<String, String>>,
    /// Artifact ids (`art_…`).
    pub inputs: Option<Vec<String>>,
    /// Memory cap of the container; default 16.
    pub ram_limit_gb: Option<f64>,
    /// Retries on provider-fault failures; 0–10, default 1.
    pub max_retries: Option<u32>,
    /// Size of `/dev/shm` in GB, at most `ram_limit_gb` (it is counted in the memory cap);
    /// default half the memory cap.
    pub shm_gb: Option<f64>,
    /// Size cap of `/scratch` in GB, (0, 16384]; default 20. Writing past it fails the job
    /// `SCRATCH_EXCEEDED`.
    pub scratch_gb: Option<f64>,
    /// `public` (default: a network of the job's own, public addresses only) or `none`.
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuRequirementBody {
    pub model: Option<String>,
    pub min_vram_gb: Option<f64>,
    pub region: Option<String>,
    pub max_price_per_hour: Option<f64>,
}

/// Response of `POST /api/jobs` (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobAccepted {
    pub id: String,
    pub status: JobStatus,
    /// Server-computed: price per hour × expected hours, in currency units rounded to the cent.
    #[serde(rename = "costEstimate")]
    pub cost_estimate: f64,
    pub gpu: Option<GpuBrief>,
}

/// A job as its owner (or an admin) sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub status: JobStatus,
    pub failure_reason: Option<FailureReason>,
    /// Who ended a FAILED or CANCELLED job.
    pub ended_by: Option<EndedBy>,
    #[serde(rename = "costEstimate")]
    pub cost_estimate: f64,
    pub price_per_hour: f64,
    pub gpu: Option<GpuBrief>,
    pub gpu_id: Option<String>,
    pub node_id: Option<String>,
    /// `{score, reasons}` once Atlas has placed the job.
    #[schema(value_type = Option<Object>)]
    pub placement: Option<serde_json::Value>,
    pub workload_type: WorkloadType,
    #[serde(rename = "expectedDurationHours")]
    pub expected_duration_hours: f64,
    pub docker_image: String,
    pub docker_image_sha256: String,
    pub max_retries: u32,
    /// The container's memory cap, GB (swap off).
    pub ram_limit_gb: f64,
    /// The size of its `/dev/shm`, GB (counted in the memory cap).
    pub shm_gb: f64,
    /// The size cap of its `/scratch`, GB.
    pub scratch_gb: f64,
    /// SPEC §10.
    pub network: JobNetwork,
    /// RFC 3339 timestamps.
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub exit_code: Option<i32>,
    /// The last telemetry, clamped.
    // A `LatestMetrics` held as the JSON stored with the job, shown as stored (what an older
    // version stored is shown as it was); `JobView::metrics` reads it typed.
    #[schema(value_type = Option<LatestMetrics>)]
    pub latest_metrics: Option<serde_json::Value>,
    /// One entry per rule that fired on the job.
    // `AnomalySummary` entries held as stored; `JobView::anomaly_summary` reads them typed.
    #[schema(value_type = Vec<AnomalySummary>)]
    pub anomalies: serde_json::Value,
    pub energy_kwh: Option<f64>,
    pub carbon_kg: Option<f64>,
    pub renewable_pct: Option<f64>,
    /// Carbon-credit eligible: the node's declared renewable share is at least 80 % (declared
    /// by the provider, not measured). `null` until the job's energy is accounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carbon_credit_eligible: Option<bool>,
    /// The job's input artifacts (`art_…`), mounted read-only at `/input/<id>`.
    pub inputs: Vec<String>,
    /// Hex SHA-256 of the uploaded `/output` archive (`GET /api/jobs/{id}/outputs`), once there is one.
    pub output_sha256: Option<String>,
    pub output_bytes: Option<u64>,
    /// Bytes of stdout/stderr stored so far (`GET /api/jobs/{id}/logs`).
    pub log_bytes: u64,
    /// True when the log reached the per-job cap and later output was dropped.
    pub log_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// More, older jobs exist: pass this as `?before=` for the next page. Absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// A GPU on the marketplace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuView {
    pub id: String,
    pub name: String,
    pub vram_gb: f64,
    pub price_per_hour: f64,
    pub region: String,
    pub status: GpuStatus,
    pub node_id: String,
    /// The provider node's trust score, 0–100.
    pub trust_score: f64,
    /// Declared without hardware behind it (a development or test node).
    #[serde(default)]
    pub emulated: bool,
    /// The driver the GPU runs under, as its agent declared it.
    #[serde(default)]
    pub driver_version: Option<String>,
    /// The GPU's enforced power limit in watts as registered (NVML's, or declared for an
    /// emulated GPU): every energy proof of a job on it bounds each reading by it. `null` for
    /// a GPU registered before power limits were recorded whose agent has not declared one.
    #[serde(default)]
    pub power_limit_watts: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuList {
    pub gpus: Vec<GpuView>,
}

/// Request body of `POST /api/admin/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewUserBody {
    pub name: String,
    /// customer | provider | admin
    pub role: String,
    pub university: Option<bool>,
    /// The customer's home region, used for edge demand.
    pub region: Option<String>,
    /// Opening credit in currency units (a top-up transfer), default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub clearance: u8,
    pub active: bool,
    pub university: bool,
    pub region: Option<String>,
    /// Credit balance in currency units.
    pub credit: f64,
}

/// `GET /api/admin/users`: every user, oldest first (at most 1000).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// Request body of `POST /api/admin/users/{id}/credits`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreditsBody {
    /// Positive to add, negative to correct; never takes a balance below zero.
    pub amount: f64,
}

/// Request body of `POST /api/providers/register`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterBody {
    pub region: String,
    /// Base64 of the node's 32-byte ed25519 public key.
    pub public_key: String,
    pub gpus: Vec<RegisterGpuBody>,
    /// Where the platform reaches the agent for visibility challenges
    /// (`http://host:port`, see `VisibilityChallenge`). Optional; a node without one cannot be
    /// checked and says so in `GET /api/providers/{nodeId}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The share of the node's power from renewable sources, 0–100, as the provider declares
    /// it (energy reports label it "declared"; carbon credits need ≥ 80). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewable_pct: Option<f64>,
    /// What the agent reads of its host (SPEC §10); also sent at every start to
    /// `PUT /api/providers/{nodeId}/posture`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<HostPosture>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterGpuBody {
    pub name: String,
    pub vram_gb: f64,
    pub price_per_hour: f64,
    pub uuid: Option<String>,
    /// The GPU's enforced power limit in watts, greater than 0 and at most 2000 (NVML's
    /// enforced limit; declared for an emulated GPU). Required: every energy proof of a job
    /// on the GPU bounds each reading by exactly this, and its hardware attestation names it.
    pub power_limit_watts: f64,
    /// The driver version as NVML reports it (e.g. `550.54.15`), named in Veritas records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// True for a GPU declared without hardware (`gp4u agent --gpu emulated:…`).
    pub emulated: Option<bool>,
}

/// `PUT /api/providers/{nodeId}/power-limits`: the enforced power limits of the node's GPUs,
/// as its agent declares them at every start. A change applies to jobs assigned from then on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PowerLimitsBody {
    pub gpus: Vec<PowerLimitBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PowerLimitBody {
    /// The platform's GPU id (`gpu_…`), one of the node's.
    pub id: String,
    /// Greater than 0 and at most 2000.
    pub power_limit_watts: f64,
}

/// Response of `POST /api/providers/register` (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub node_id: String,
    pub gpus: Vec<RegisteredGpuView>,
    /// The platform's ed25519 public key (base64): visibility challenges are signed with it,
    /// so the agent answers only the platform. Absent from older servers' answers.
    #[serde(default)]
    pub platform_public_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisteredGpuView {
    pub id: String,
    pub name: String,
    pub vram_gb: f64,
    pub price_per_hour: f64,
    pub region: String,
    pub status: GpuStatus,
    /// Added after the first release: absent from older servers' answers, hence the default.
    #[serde(default)]
    pub emulated: bool,
    /// The driver the agent declared at registration (stage 5), if it did.
    #[serde(default)]
    pub driver_version: Option<String>,
    /// The GPU's enforced power limit in watts as registered or last declared by its agent;
    /// `null` for a GPU registered before power limits were recorded, until its agent
    /// declares one (no energy proof of its jobs is accepted until then).
    #[serde(default)]
    pub power_limit_watts: Option<f64>,
}

/// One chamber in `GET /api/admin/chambers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChamberView {
    pub name: String,
    /// The last outbox position this chamber applied.
    pub cursor: i64,
    /// Sequenced events it has not applied yet.
    pub lag: i64,
    pub updated_at: Option<String>,
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChambersView {
    /// Which bus carries events (`in-process`).
    pub bus: String,
    /// The highest sequenced outbox position.
    pub head: i64,
    /// Events committed but not yet sequenced by the relay.
    pub unsequenced: i64,
    pub chambers: Vec<ChamberView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub engine: String,
}

/// `GET /api/agent/assignments` (200): what the agent needs to run a job (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssignmentManifest {
    pub job_id: String,
    pub docker_image: String,
    /// 64 hex digits, without the `sha256:` prefix.
    pub docker_image_sha256: String,
    pub gpu_id: String,
    /// The GPU's UUID as the provider registered it (NVML's `GPU-…`).
    pub gpu_uuid: Option<String>,
    pub ram_limit_gb: f64,
    pub env: BTreeMap<String, String>,
    pub command: Vec<String>,
    /// Artifact ids (`art_…`); the agent fetches each into the job's `/input/<id>`.
    pub inputs: Vec<String>,
    /// Hex SHA-256 of each input, by artifact id: the agent refuses a download that differs.
    #[serde(default)]
    pub input_sha256: BTreeMap<String, String>,
    pub expected_duration_hours: f64,
    /// 1.1 × the declared duration: the agent kills the job then (`DURATION_EXCEEDED`).
    pub kill_after_seconds: u64,
    pub telemetry_interval_seconds: u64,
    /// Size of the job's `/dev/shm`, GB (SPEC §10; counted in the memory cap). Absent from
    /// older servers: [`AssignmentManifest::DEFAULT_SHM_SHARE`] of the memory cap.
    #[serde(default)]
    pub shm_gb: f64,
    /// Size cap of the job's `/scratch`, GB; beyond it the job fails `SCRATCH_EXCEEDED`.
    #[serde(default = "default_scratch_gb")]
    pub scratch_gb: f64,
    /// `public` (a network of the job's own, public egress only) or `none` (no network).
    #[serde(default = "default_network")]
    pub network: String,
    /// The assigned GPU's registered power limit in watts when the job was assigned: the job's
    /// energy proof bounds every reading by exactly this (the agent reports a reading above it
    /// at the limit). Absent from older servers, and for a GPU without a registered limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_power_limit_watts: Option<f64>,
}

impl AssignmentManifest {
    /// `/dev/shm` as a share of the memory cap when the server did not say.
    pub const DEFAULT_SHM_SHARE: f64 = 0.5;

    /// The `/dev/shm` size to give the container, GB.
    pub fn shm_gb(&self) -> f64 {
        if self.shm_gb > 0.0 {
            self.shm_gb.min(self.ram_limit_gb)
        } else {
            self.ram_limit_gb * Self::DEFAULT_SHM_SHARE
        }
    }

    /// Whether the job runs with no network at all.
    pub fn network_none(&self) -> bool {
        self.network == "none"
    }
}

fn default_scratch_gb() -> f64 {
    20.0
}

fn default_network() -> String {
    "public".to_string()
}

/// `POST /api/agent/jobs/{id}/status`: the agent's report on a job it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentStatusReport {
    pub node_id: String,
    /// `running` (the container started; repeat it as a keep-alive), `exited` (with
    /// `exit_code`), or `failed` (with `reason`: `IMAGE_PULL_FAILED`, `INPUT_FAILED` or
    /// `DURATION_EXCEEDED`).
    pub status: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// The platform's answer to a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentStatusReply {
    pub job_id: String,
    pub status: String,
    /// True when the agent must stop the container now (cancelled, failed elsewhere, fenced).
    pub kill: bool,
}

/// Response of `POST /api/artifacts` (201): the stored artifact, to list in a job's `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactCreated {
    /// `art_…`
    pub id: String,
    /// Hex SHA-256 of the bytes received.
    pub sha256: String,
    pub size_bytes: u64,
}

/// Response of `PUT /api/agent/jobs/{id}/outputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputStored {
    pub job_id: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// Response of `POST /api/agent/jobs/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogAppended {
    pub job_id: String,
    /// Bytes of this chunk that were stored (less than sent when the cap cut it).
    pub accepted_bytes: u64,
    /// The job's stored log size after this chunk.
    pub log_bytes: u64,
    /// True once the per-job cap is reached: later chunks are dropped, stop sending.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agents and clients read answers of servers older than themselves: fields added later
    /// must not be required.
    #[test]
    fn later_fields_are_optional_when_reading() {
        let gpu: RegisteredGpuView = serde_json::from_value(serde_json::json!({
            "id": "gpu_a", "name": "RTX 4090", "vram_gb": 24.0, "price_per_hour": 1.0,
            "region": "us-east-1", "status": "AVAILABLE"
        }))
        .unwrap();
        assert!(!gpu.emulated);
        let listed: GpuView = serde_json::from_value(serde_json::json!({
            "id": "gpu_a", "name": "RTX 4090", "vram_gb": 24.0, "price_per_hour": 1.0,
            "region": "us-east-1", "status": "AVAILABLE", "node_id": "node_a", "trust_score": 50.0
        }))
        .unwrap();
        assert!(!listed.emulated);
    }
}

/// `POST /api/telemetry/russian-doll`: one Russian-Doll packet (SPEC §7). The seed's fields,
/// plus the optional ones. The server parses the raw JSON field by field (each error names its
/// field) and clamps every number to its physical range; this type documents the shape and is
/// what the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryPacket {
    pub job_id: String,
    pub node_id: String,
    pub gpu_utilization_pct: f64,
    pub vram_used_gb: f64,
    pub vram_allocated_gb: f64,
    pub power_draw_watts: f64,
    pub temperature_c: f64,
    pub outbound_bytes_per_sec: f64,
    /// The agent's own inference: `TRAINING`, `INFERENCE`, `CRYPTO_MINING` or `IDLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inferred_pattern: Option<String>,
    /// Distinct remote IPs of the container's sockets over the last period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_dest_ips: Option<u32>,
    /// Compute processes on the assigned GPU that are not the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_gpu_processes: Option<u32>,
    /// The GPU reported a clock throttle reason (power cap, thermal, …) this period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling: Option<bool>,
    /// Remote ports of the container's connections this period (at most 64, distinct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_ports: Option<Vec<u16>>,
    /// With `final: true`: the container's exit code; ends the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last packet of the job: the container has exited (`exit_code` required).
    #[serde(rename = "final", default, skip_serializing_if = "Option::is_none")]
    pub is_final: Option<bool>,
    /// Pedersen commitments to this reading's power and its renewable part, in milliwatts
    /// (`gp4u_attest::energy::ReadingCommitment`, 64 bytes, base64). Sealed in the ledger as it
    /// arrives; the energy proof after the job is checked against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_commitment: Option<String>,
}

/// One anomaly verdict, as stored, published and sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnomalyView {
    /// `CRYPTO_MINING_PATTERN`, `CRYPTO_MINING_DURING_ML_JOB`, `OUTBOUND_PORT_SCAN`,
    /// `VRAM_OVERCLAIM`, `HIGH_OUTBOUND_BANDWIDTH`, `THERMAL_THROTTLE_SUSTAINED`.
    pub rule: String,
    /// `INFO`, `SOFT` or `HARD`.
    pub severity: String,
    pub kill: bool,
    /// Who is at fault: `CUSTOMER`, `PROVIDER` or `NONE`.
    pub attribution: String,
    pub evidence: String,
    pub observed: f64,
    pub threshold: f64,
    /// RFC 3339.
    pub at: String,
}

/// The answer to a telemetry packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryReply {
    /// Stop the container now.
    pub kill_job: bool,
    /// Why, when `kill_job` (the rule, or `DURATION_EXCEEDED`).
    pub reason: Option<String>,
    /// The verdicts on this packet.
    pub anomalies: Vec<AnomalyView>,
    /// The job's status after this packet.
    #[serde(default)]
    pub status: String,
    /// The time the platform stored this sample under (unix ms): energy is integrated, and the
    /// energy proof weighted, by these times. Absent when the sample was not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// The longest interval one sample accounts for in energy (a gap beyond it is not billed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_ms: Option<i64>,
    /// A visibility challenge for this job, to be answered at once on
    /// `POST /api/agent/visibility`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<VisibilityChallenge>,
}

/// A visibility challenge (SPEC §7): issued by the platform for one running job of a node
/// and delivered in the reply to that job's next telemetry packet (`TelemetryReply.challenge`)
/// — on the agent's own channel, so a node behind NAT is reached and no provider can point the
/// platform at an address. `signature` is the platform key's ed25519 signature (base64) over
/// `gp4u_attest::visibility::challenge_message(node_id, job_id, nonce, issued_at_ms)`. The
/// agent answers on `POST /api/agent/visibility` before `deadline_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VisibilityChallenge {
    pub node_id: String,
    pub job_id: String,
    /// 64 hex characters, fresh per challenge.
    pub nonce: String,
    pub issued_at_ms: i64,
    /// Unix ms by which the answer must have arrived.
    pub deadline_ms: i64,
    pub signature: String,
}

/// What the agent saw of the job's container when it answered: facts only a node that runs
/// the container can read (from its engine, its cgroup and the host's `/proc`), checked by the
/// platform against the job and against the node's earlier answers for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VisibilityEvidence {
    /// The engine's container id (64 hex), or `process:<pid>` for the process runtime.
    pub container_id: String,
    /// The image the container was created from, as the engine records it
    /// (`repo@sha256:…`); empty for the process runtime.
    pub image: String,
    /// `GP4U_JOB_ID` in the container's environment, as the engine records it.
    pub env_job_id: Option<String>,
    /// Start time of the container's first process (clock ticks since boot, `/proc/PID/stat`):
    /// the same for the job's whole life, unless it was restarted.
    pub init_started_ticks: Option<u64>,
    /// CPU time the job's processes used so far (ns, from its cgroup): never goes back.
    pub cpu_ns: Option<u64>,
    /// How many processes the job has now.
    pub processes: u32,
}

impl VisibilityEvidence {
    /// Longest accepted text field.
    pub const MAX_FIELD_CHARS: usize = 512;

    /// The fields, one per line, in the order the node signs them (`-` for absent). `None`
    /// when a field could not be put on one line (a newline, or too long).
    pub fn canonical(&self) -> Option<String> {
        let text = [
            self.container_id.clone(),
            self.image.clone(),
            self.env_job_id.clone().unwrap_or_else(|| "-".into()),
            self.init_started_ticks
                .map_or_else(|| "-".into(), |ticks| ticks.to_string()),
            self.cpu_ns.map_or_else(|| "-".into(), |ns| ns.to_string()),
            self.processes.to_string(),
        ];
        if text
            .iter()
            .any(|field| field.contains('\n') || field.chars().count() > Self::MAX_FIELD_CHARS)
        {
            return None;
        }
        Some(text.join("\n"))
    }
}

/// `POST /api/agent/visibility`: the agent's answer to a challenge. `signature` is the node
/// key's signature (base64) over `gp4u_attest::visibility::answer_message(node_id, job_id,
/// nonce, issued_at_ms, evidence.canonical())`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VisibilityAnswer {
    pub node_id: String,
    pub job_id: String,
    pub nonce: String,
    pub issued_at_ms: i64,
    pub evidence: VisibilityEvidence,
    pub signature: String,
}

/// The platform's verdict on an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VisibilityVerdict {
    /// `ANSWERED`, or `BAD_ANSWER` (counted as a refusal).
    pub result: String,
    /// Why a bad answer is bad.
    pub detail: Option<String>,
}

/// One slash, in `GET /api/providers/{nodeId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SlashView {
    pub id: String,
    /// `VRAM_OVERCLAIM`, `JOB_DROPPED_UNEXPECTEDLY`, `CRYPTO_MINING_DURING_ML_JOB`, `VISIBILITY_BLOCKED`.
    pub kind: String,
    /// `SOFT` or `HARD`.
    pub severity: String,
    pub job_id: Option<String>,
    /// Currency units taken from the stake.
    pub stake_taken: f64,
    pub trust_before: f64,
    pub trust_after: f64,
    pub evidence: String,
    pub at: String,
}

/// `GET /api/providers/{nodeId}`: a node's standing (its owner or an admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderNodeView {
    pub node_id: String,
    pub owner_id: String,
    pub region: String,
    pub status: NodeStatus,
    pub stake: f64,
    pub trust_score: f64,
    pub ejected_at: Option<String>,
    pub ejected_reason: Option<String>,
    /// What the node's agent last reported of its host (SPEC §10): runtime, seccomp,
    /// AppArmor/SELinux, user-namespace remapping, rootless, cgroup version, egress filter,
    /// scratch quota and limits. `null` for an agent that never reported it.
    #[schema(value_type = Option<Object>)]
    pub posture: Option<HostPosture>,
    /// The last visibility verdict: `ANSWERED`, `BAD_ANSWER`, `UNANSWERED`, `TIMEOUT`, or
    /// `UNCHECKED`.
    pub visibility: String,
    pub visibility_checked_at: Option<String>,
    pub gpus: Vec<RegisteredGpuView>,
    pub slashes: Vec<SlashView>,
    /// Mnemo's record of the node: presence, jobs kept, provenance (stage 5).
    #[serde(default)]
    pub record: Option<NodeRecordView>,
}

/// `GET /api/providers`: the caller's nodes, each as `GET /api/providers/{nodeId}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderNodeList {
    pub nodes: Vec<ProviderNodeView>,
}

/// What Mnemo knows of a provider node, as Atlas weighs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeRecordView {
    /// The agent's first and last contact (assignment polls) since presence is recorded.
    pub first_seen_at: Option<String>,
    pub last_seen_at: Option<String>,
    /// Hours the agent was present, and hours observed (since the first contact).
    pub online_hours: f64,
    pub observed_hours: f64,
    /// online ÷ observed, once observed for ten minutes; `null` before.
    pub presence_uptime: Option<f64>,
    /// Jobs that ended COMPLETE on the node, and jobs it dropped or hid.
    pub completed_jobs: u64,
    pub dropped_jobs: u64,
    /// completed ÷ (completed + dropped); `null` before the first.
    pub completion_rate: Option<f64>,
    /// Veritas records of jobs that ended on the node, and how many are reproducible.
    pub veritas_records: u64,
    pub reproducible: u64,
    /// reproducible ÷ records; `null` before the first.
    pub provenance: Option<f64>,
    /// The uptime Atlas scores: presence × completion rate (either alone when only it is known).
    pub uptime: Option<f64>,
}

/// `POST /api/providers/{nodeId}/stake`: moves credit into the node's stake.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StakeBody {
    pub amount: f64,
}

/// `PUT /api/providers/{nodeId}/energy`: the share of the node's power its provider declares
/// renewable, 0–100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RenewableBody {
    pub renewable_pct: f64,
}

/// `POST /api/admin/users/{id}/tokens`: the token's lifetime (optional; 60 s to a year,
/// default 30 days).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenRequest {
    pub ttl_s: Option<i64>,
}

/// A token the platform issued (201): send it as `Authorization: Bearer <token>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}
