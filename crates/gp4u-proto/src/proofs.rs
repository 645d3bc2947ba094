//! Stage 6's answers (SPEC §7): the proofs a node submitted, the commitments they cover.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProofKind {
    /// The zero-knowledge energy proof over the job's sealed power commitments.
    Energy,
    /// The node's signed statement of the GPU the job ran on.
    Hardware,
}

impl ProofKind {
    pub const fn as_str(&self) -> &'static str {
        match self {
            ProofKind::Energy => "energy",
            ProofKind::Hardware => "hardware",
        }
    }

    /// The kind a stored proof names; `None` for a name the wire contract does not know.
    pub fn parse(name: &str) -> Option<ProofKind> {
        [ProofKind::Energy, ProofKind::Hardware]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// How much a hardware attestation is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProofAssurance {
    /// The GPU is emulated: nothing about hardware is claimed.
    Emulated,
    /// Signed with the node's key: the provider vouches for it.
    ProviderSigned,
    /// Backed by the GPU's own attestation evidence.
    HardwareAttested,
}

impl ProofAssurance {
    pub const fn as_str(&self) -> &'static str {
        match self {
            ProofAssurance::Emulated => "emulated",
            ProofAssurance::ProviderSigned => "provider_signed",
            ProofAssurance::HardwareAttested => "hardware_attested",
        }
    }

    /// The assurance a stored proof names; `None` for a name the wire contract does not know.
    pub fn parse(name: &str) -> Option<ProofAssurance> {
        [
            ProofAssurance::Emulated,
            ProofAssurance::ProviderSigned,
            ProofAssurance::HardwareAttested,
        ]
        .into_iter()
        .find(|assurance| assurance.as_str() == name)
    }
}

/// `POST /api/providers/{nodeId}/zk-proofs` (201 stored, 200 stored before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProofAccepted {
    pub job_id: String,
    pub kind: ProofKind,
    /// For a hardware attestation; `null` for an energy proof.
    pub assurance: Option<ProofAssurance>,
    /// Always true: a proof that does not verify is refused (400 `INVALID_PROOF`).
    pub verified: bool,
}

/// One sealed power commitment of a job's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SealedCommitment {
    /// When the platform stored the sample it came with (unix ms): its weight's clock.
    pub at_ms: i64,
    /// The Pedersen commitment, base64.
    pub commitment: String,
}

/// `GET /api/agent/jobs/{id}/commitments?node_id=`: what the node's energy proof must cover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobCommitments {
    pub job_id: String,
    /// The longest interval one reading is weighted by.
    pub max_gap_ms: i64,
    pub commitments: Vec<SealedCommitment>,
    /// Samples of the run that came without a commitment (the proof cannot cover them).
    pub samples_without_commitment: u64,
    /// The energy proof's per-reading bound: the GPU's registered power limit when the job was
    /// assigned, milliwatts (`null`: none was registered).
    pub power_limit_mw: Option<u64>,
}

/// A proof as stored, with what its node submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredProof {
    pub kind: ProofKind,
    pub node_id: String,
    pub assurance: Option<ProofAssurance>,
    pub verified_at_ms: i64,
    /// The submission as the node sent it (SPEC §7).
    #[schema(value_type = Object)]
    pub submission: serde_json::Value,
}

/// `GET /api/jobs/{id}/proofs` (owner or admin): everything needed to check the proofs again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobProofs {
    pub job_id: String,
    pub node_id: Option<String>,
    /// The node's Ed25519 key the attestation is signed with.
    pub node_public_key: Option<String>,
    /// The metered energy in mW·ms (a decimal string: it can exceed 2⁶³), once the job ended.
    pub energy_mwms: Option<String>,
    pub max_gap_ms: i64,
    /// How each reading is weighted in the energy proof.
    pub weights_rule: String,
    pub commitments: Vec<SealedCommitment>,
    pub samples_without_commitment: u64,
    pub proofs: Vec<StoredProof>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names_and_parse_back() {
        for kind in [ProofKind::Energy, ProofKind::Hardware] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(ProofKind::parse(kind.as_str()), Some(kind));
        }
        for assurance in [
            ProofAssurance::Emulated,
            ProofAssurance::ProviderSigned,
            ProofAssurance::HardwareAttested,
        ] {
            assert_eq!(serde_json::to_value(assurance).unwrap(), assurance.as_str());
            assert_eq!(ProofAssurance::parse(assurance.as_str()), Some(assurance));
        }
        assert_eq!(ProofKind::parse("Energy"), None);
        assert_eq!(ProofAssurance::parse("attested"), None);
    }
}
