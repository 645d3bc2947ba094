//! Veritas (stage 5): a finished job's reproducibility record, written when it ended, sealed in
//! the ledger as `veritas.recorded` and served by `GET /api/jobs/{id}/veritas` exactly as
//! sealed.

use gp4u_core::{JobNetwork, JobStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What reproduces a run: image and digest, command, environment hash, inputs and output
/// hashes, exit code and status, the GPU and its driver, the node and its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VeritasRecord {
    pub job_id: String,
    #[schema(required = true)]
    pub node_id: Option<String>,
    /// Repository, without digest.
    pub image: String,
    /// `sha256:` and 64 hex digits.
    pub image_digest: String,
    pub command: Vec<String>,
    /// Hex SHA-256 of the job's `env` as canonical JSON (keys sorted).
    pub env_sha256: String,
    pub inputs: Vec<VeritasInput>,
    #[schema(required = true)]
    pub output_sha256: Option<String>,
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    pub status: JobStatus,
    #[schema(required = true)]
    pub gpu_model: Option<String>,
    #[schema(required = true)]
    pub gpu_driver: Option<String>,
    #[schema(required = true)]
    pub gpu_uuid: Option<String>,
    /// The node's host posture as its agent last reported it (SPEC §10). Absent from records
    /// written before it was recorded.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub host_posture: Option<serde_json::Value>,
    /// What the container was given. Absent from records written before it was recorded.
    #[serde(default)]
    pub runtime: Option<VeritasRuntime>,
    /// A completed job with exit code 0: same image, inputs, env and command reproduce it.
    pub reproducible: bool,
}

/// An input of the job, with the hash it was stored under (`null` once the artifact is gone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VeritasInput {
    /// `art_…`
    pub artifact_id: String,
    #[schema(required = true)]
    pub sha256: Option<String>,
}

/// The job's runtime (SPEC §10): `/dev/shm` and `/scratch` sizes in GB, and its network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VeritasRuntime {
    pub shm_gb: f64,
    pub scratch_gb: f64,
    pub network: JobNetwork,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record sealed before the host posture and runtime were recorded still reads.
    #[test]
    fn an_early_record_reads() {
        let record: VeritasRecord = serde_json::from_value(json!({
            "job_id": "job_a", "node_id": "node_a", "image": "registry.example/bert",
            "image_digest": format!("sha256:{}", "a".repeat(64)), "command": ["python", "train.py"],
            "env_sha256": "00", "inputs": [{"artifact_id": "art_a", "sha256": null}],
            "output_sha256": null, "exit_code": 0, "status": "COMPLETE", "gpu_model": "RTX 4090",
            "gpu_driver": null, "gpu_uuid": null, "reproducible": true
        }))
        .unwrap();
        assert_eq!((record.runtime, record.host_posture), (None, None));
        assert_eq!(record.status, JobStatus::Complete);
    }
}
