//! Domain events as they travel through the outbox and the bus. Their serde form is part of
//! the wire contract (NATS subjects and payloads later), so fields are only ever added.

use serde::{Deserialize, Serialize};

use crate::ids::{GpuId, JobId, NodeId, UserId};
use crate::job::JobEvent;
use crate::manifest::GpuRequirement;

pub const TOPIC_JOB_CREATED: &str = "job.created";
pub const TOPIC_NODE_REGISTERED: &str = "node.registered";

/// `job.created`: a job was accepted (stage 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCreated {
    pub job_id: JobId,
    pub owner_id: UserId,
    pub workload_type: String,
    /// The pinned GPU, when the customer chose one.
    pub gpu_id: Option<GpuId>,
    pub gpu_name: Option<String>,
    pub gpu_region: Option<String>,
    pub gpu_vram_gb: Option<f64>,
    /// What Atlas must find, when the customer did not pin a GPU.
    pub requirement: Option<GpuRequirement>,
    /// Where the customer is (their home region, or the region they asked for).
    pub customer_region: Option<String>,
    pub cost_estimate_micros: i64,
    pub expected_duration_micro_hours: i64,
    pub created_at_ms: i64,
}

/// One GPU of a `node.registered` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredGpu {
    pub gpu_id: GpuId,
    pub name: String,
    pub vram_gb: f64,
    pub price_per_hour_micros: i64,
    /// The GPU's enforced power limit as registered (added with power limits; absent from
    /// events written before them).
    #[serde(default)]
    pub power_limit_watts: Option<f64>,
}

/// `node.registered`: a provider brought a node and its GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistered {
    pub node_id: NodeId,
    pub owner_id: UserId,
    pub region: String,
    pub gpus: Vec<RegisteredGpu>,
}

/// A job state change (`job.assigned`, `job.cancelled`, …): the transition's event with the job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStateChanged<'a> {
    pub job_id: &'a JobId,
    pub event: &'a JobEvent,
    /// With `job.assigned` only: the GPU the job was placed on, as registered at that moment.
    /// Sealed with the assignment, it is what `gp4u verify` holds the job's proofs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<&'a AssignedGpu>,
}

/// The GPU a job was assigned, as registered when it was assigned (`job.assigned`'s `gpu`).
/// The job's energy proof must bound every reading by exactly `power_limit_watts`, and its
/// hardware attestation must name this GPU: `uuid` and `name` exactly, `vram_gb` as
/// ⌊`vram_gb` × 1024⌋ MiB, the power limit in milliwatts (round(`power_limit_watts` × 1000)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedGpu {
    pub gpu_id: GpuId,
    /// The hardware UUID the provider registered (NVML's `GPU-…`); `None` when it gave none.
    pub uuid: Option<String>,
    /// The name as registered (an agent's emulated GPUs end in ` (emulated)`).
    pub name: String,
    pub vram_gb: f64,
    /// `None` for a GPU registered before power limits were recorded whose agent has not
    /// declared its limit since: no energy proof or attestation of such a job is accepted.
    pub power_limit_watts: Option<f64>,
}
