//! The body of `POST /api/providers/{nodeId}/zk-proofs`: either a signed hardware
//! attestation or an energy claim with its proof, tagged by `"kind"`.
//!
//! ```json
//! {"kind":"hardware","job_id":"job_1","node_id":"node_a","gpu":{…},"telemetry_digest":"…",
//!  "assurance":"provider_signed","cc_evidence":null,"issued_at_ms":1767225600000,
//!  "signature":"…"}
//!
//! {"kind":"energy","job_id":"job_1",
//!  "claim":{"energy_mwms":2520000000000,"renewable_share_bp":5000,"power_limit_mw":700000},
//!  "proof":{"version":1,"readings":360,"aggregate_blinding":"…","share_limbs":["…","…"],
//!           "range_proofs":["…"]}}
//! ```

use serde::{Deserialize, Serialize};

use crate::energy::{EnergyClaim, EnergyProof};
use crate::hardware::{HardwareAttestation, hardware_message};

/// The largest submission [`ProofSubmission::from_json`] accepts.
pub const MAX_SUBMISSION_BYTES: usize = 1 << 20;

/// An energy claim and its proof, for one job. The verifier takes the commitments and the
/// weights from what the server stored for `job_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergySubmission {
    pub job_id: String,
    pub claim: EnergyClaim,
    pub proof: EnergyProof,
}

/// A proof submitted by a provider's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProofSubmission {
    Hardware(HardwareAttestation),
    Energy(EnergySubmission),
}

/// Why a submission can't be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmissionError {
    #[error("the submission is {bytes} bytes, more than {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("malformed submission: {0}")]
    Malformed(String),
    #[error(transparent)]
    Hardware(#[from] crate::hardware::HardwareError),
}

impl ProofSubmission {
    /// The job the submission is about.
    pub fn job_id(&self) -> &str {
        match self {
            ProofSubmission::Hardware(attestation) => &attestation.job_id,
            ProofSubmission::Energy(energy) => &energy.job_id,
        }
    }

    /// The JSON wire form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a submission: at most [`MAX_SUBMISSION_BYTES`], unknown fields refused, every
    /// field of the energy proof its exact size, the attestation's fields within bounds.
    /// Signatures and proofs are checked by [`crate::hardware::verify_hardware`] and
    /// [`crate::energy::verify_energy`].
    pub fn from_json(text: &str) -> Result<Self, SubmissionError> {
        if text.len() > MAX_SUBMISSION_BYTES {
            return Err(SubmissionError::TooLarge {
                bytes: text.len(),
                max: MAX_SUBMISSION_BYTES,
            });
        }
        let submission: Self = serde_json::from_str(text)
            .map_err(|error| SubmissionError::Malformed(error.to_string()))?;
        match &submission {
            ProofSubmission::Hardware(attestation) => {
                hardware_message(attestation)?;
            }
            ProofSubmission::Energy(energy) => {
                if energy.job_id.is_empty()
                    || energy.job_id.len() > crate::hardware::MAX_FIELD_BYTES
                {
                    return Err(SubmissionError::Malformed(
                        "job_id must be 1–256 bytes".into(),
                    ));
                }
            }
        }
        Ok(submission)
    }
}
