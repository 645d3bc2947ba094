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
}
