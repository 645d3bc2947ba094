//! Hardware attestation: the node key signs which GPU ran a job, the digest of the job's
//! telemetry commitments ([`crate::energy::telemetry_digest`]) and the assurance behind it.
//!
//! # Signed message
//!
//! The signature is ed25519 (`verify_strict`) over [`hardware_message`]:
//!
//! ```text
//! "gp4u.hardware.v1\0"
//! str(job_id) str(node_id)
//! str(gpu.name) str(gpu.uuid) u64(gpu.vram_mb) str(gpu.driver_version)
//! opt(str(gpu.serial)) u64(gpu.power_limit_mw)
//! telemetry_digest (32 raw bytes)
//! assurance (1 byte: 0 emulated, 1 provider_signed, 2 hardware_attested)
//! opt(bytes(cc_evidence, decoded))
//! i64(issued_at_ms)
//! ```
//!
//! where `str`/`bytes` are a u32 big-endian length then the bytes, `u64`/`i64` are 8 bytes
//! big-endian, and `opt` is a byte 0 (absent) or 1 followed by the value. Every field has a
//! length prefix or a fixed size, so no two attestations share a message.
//!
//! # The GPU must be the assigned one
//!
//! An attestation names the GPU the job was assigned, as the platform registered it
//! ([`AssignedGpu`], sealed with the job's assignment): `name` and `uuid` exactly as
//! registered (an agent registers an emulated GPU as `<name> (emulated)`), `vram_mb` the
//! registered `vram_gb` in whole MiB (⌊`vram_gb` × 1024⌋, 1 GB = 1024 MiB as GPU vendors
//! count), `power_limit_mw` the registered power limit in milliwatts. [`gpu_mismatches`]
//! lists the fields that differ; the server refuses such an attestation and `gp4u verify`
//! fails on it. The driver version and serial are not compared (a driver update does not
//! make another GPU).
//!
//! # Assurance
//!
//! - `emulated`: no real GPU (a test or emulated node).
//! - `provider_signed`: the provider's node key vouches for the GPU identity; nothing more.
//! - `hardware_attested`: claims NVIDIA confidential-computing evidence (`cc_evidence`). This
//!   crate cannot verify that evidence (it needs NVIDIA's attestation service and certificate
//!   chain), so [`verify_hardware`] answers [`HardwareError::UnverifiableEvidence`] for it even
//!   when the signature is good: the platform refuses the label rather than print an assurance
//!   it cannot check.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"gp4u.hardware.v1\0";
/// The longest text field (ids, GPU name, uuid, driver version, serial), in bytes.
pub const MAX_FIELD_BYTES: usize = 256;
/// The largest confidential-computing evidence, in bytes (decoded).
pub const MAX_EVIDENCE_BYTES: usize = 64 * 1024;
/// The largest attestation JSON [`HardwareAttestation::from_json`] accepts.
pub const MAX_ATTESTATION_JSON_BYTES: usize = 128 * 1024;

/// The GPU a job ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuIdentity {
    pub name: String,
    pub uuid: String,
    pub vram_mb: u64,
    pub driver_version: String,
    #[serde(default)]
    pub serial: Option<String>,
    pub power_limit_mw: u64,
}

/// The GPU a job was assigned, as registered: what its attestation must name (see the module
/// docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssignedGpu<'a> {
    /// `None`: registered without a UUID, so no attestation can name it.
    pub uuid: Option<&'a str>,
    pub name: &'a str,
    pub vram_gb: f64,
    /// `None`: registered before power limits were recorded and not declared since.
    pub power_limit_mw: Option<u64>,
}

/// The VRAM an attestation names for a GPU registered with `vram_gb`: ⌊`vram_gb` × 1024⌋ MiB.
/// An agent registers `vram_total_bytes / 2³⁰` and attests `vram_total_bytes / 2²⁰` (integer
/// division); both are exact in `f64`, so the two agree.
pub fn registered_vram_mb(vram_gb: f64) -> u64 {
    if vram_gb.is_finite() && vram_gb > 0.0 {
        // Registration bounds vram_gb to 4096, far inside u64.
        (vram_gb * 1024.0).floor() as u64
    } else {
        0
    }
}

/// The fields of `gpu` (an attestation's GPU) that are not the assigned GPU's, each said as
/// "`gpu.<field>` is <attested>, the assigned GPU's is <registered>". Empty: it is the
/// assigned GPU.
pub fn gpu_mismatches(gpu: &GpuIdentity, assigned: &AssignedGpu<'_>) -> Vec<String> {
    let mut differ = Vec::new();
    match assigned.uuid {
        Some(uuid) if uuid == gpu.uuid => {}
        Some(uuid) => differ.push(format!(
            "gpu.uuid is {:?}, the assigned GPU's is {uuid:?}",
            gpu.uuid
        )),
        None => differ.push(format!(
            "gpu.uuid is {:?}, but the assigned GPU was registered without a uuid (register it with its NVML UUID)",
            gpu.uuid
        )),
    }
    if gpu.name != assigned.name {
        differ.push(format!(
            "gpu.name is {:?}, the assigned GPU's is {:?}",
            gpu.name, assigned.name
        ));
    }
    let vram_mb = registered_vram_mb(assigned.vram_gb);
    if gpu.vram_mb != vram_mb {
        differ.push(format!(
            "gpu.vram_mb is {}, the assigned GPU's is {vram_mb} ({} GB registered)",
            gpu.vram_mb, assigned.vram_gb
        ));
    }
    match assigned.power_limit_mw {
        Some(limit) if limit == gpu.power_limit_mw => {}
        Some(limit) => differ.push(format!(
            "gpu.power_limit_mw is {}, the assigned GPU's registered limit is {limit} mW",
            gpu.power_limit_mw
        )),
        None => differ.push(format!(
            "gpu.power_limit_mw is {}, but the assigned GPU had no registered power limit when the job was assigned",
            gpu.power_limit_mw
        )),
    }
    differ
}

/// What stands behind an attestation. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assurance {
    Emulated,
    ProviderSigned,
    HardwareAttested,
}

impl Assurance {
    fn tag(self) -> u8 {
        match self {
            Assurance::Emulated => 0,
            Assurance::ProviderSigned => 1,
            Assurance::HardwareAttested => 2,
        }
    }
}

/// The fields to sign, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareClaim {
    pub job_id: String,
    pub node_id: String,
    pub gpu: GpuIdentity,
    pub telemetry_digest: [u8; 32],
    pub assurance: Assurance,
    /// Raw confidential-computing evidence; required for `HardwareAttested`.
    pub cc_evidence: Option<Vec<u8>>,
    pub issued_at_ms: i64,
}

/// A signed hardware attestation, as it travels.
///
/// ```json
/// {"job_id":"job_1","node_id":"node_a",
///  "gpu":{"name":"NVIDIA H100 80GB HBM3","uuid":"GPU-…","vram_mb":81559,
///         "driver_version":"550.54.15","serial":"1654922000001","power_limit_mw":700000},
///  "telemetry_digest":"<64 lowercase hex>","assurance":"provider_signed",
///  "cc_evidence":null,"issued_at_ms":1767225600000,"signature":"<base64, 64 bytes>"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareAttestation {
    pub job_id: String,
    pub node_id: String,
    pub gpu: GpuIdentity,
    /// Lowercase hex of the 32-byte telemetry digest.
    pub telemetry_digest: String,
    pub assurance: Assurance,
    /// Standard base64 of the evidence.
    #[serde(default)]
    pub cc_evidence: Option<String>,
    pub issued_at_ms: i64,
    /// Standard base64 of the 64-byte ed25519 signature.
    pub signature: String,
}

/// Why an attestation can't be signed, parsed or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HardwareError {
    #[error("{field} is {len} bytes, more than {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} must not be empty")]
    EmptyField(&'static str),
    #[error("the telemetry digest must be 64 lowercase hex characters")]
    BadDigest,
    #[error("cc_evidence is not valid base64")]
    BadEvidence,
    #[error("hardware_attested requires cc_evidence")]
    MissingEvidence,
    #[error("the signature is not the node key's")]
    BadSignature,
    #[error(
        "hardware_attested: the confidential-computing evidence cannot be verified here, so the label is refused"
    )]
    UnverifiableEvidence,
    #[error("the attestation is {bytes} bytes, more than {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("malformed: {0}")]
    Malformed(String),
}

fn check_text(field: &'static str, value: &str, required: bool) -> Result<(), HardwareError> {
    if required && value.is_empty() {
        return Err(HardwareError::EmptyField(field));
    }
    if value.len() > MAX_FIELD_BYTES {
        return Err(HardwareError::FieldTooLong {
            field,
            len: value.len(),
            max: MAX_FIELD_BYTES,
        });
    }
    Ok(())
}

fn put_bytes(message: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded far below 4 GiB before it gets here.
    message.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    message.extend_from_slice(bytes);
}

fn encode(
    job_id: &str,
    node_id: &str,
    gpu: &GpuIdentity,
    digest: &[u8; 32],
    assurance: Assurance,
    evidence: Option<&[u8]>,
    issued_at_ms: i64,
) -> Result<Vec<u8>, HardwareError> {
    check_text("job_id", job_id, true)?;
    check_text("node_id", node_id, true)?;
    check_text("gpu.name", &gpu.name, false)?;
    check_text("gpu.uuid", &gpu.uuid, false)?;
    check_text("gpu.driver_version", &gpu.driver_version, false)?;
    if let Some(serial) = &gpu.serial {
        check_text("gpu.serial", serial, false)?;
    }
    if let Some(evidence) = evidence
        && evidence.len() > MAX_EVIDENCE_BYTES
    {
        return Err(HardwareError::FieldTooLong {
            field: "cc_evidence",
            len: evidence.len(),
            max: MAX_EVIDENCE_BYTES,
        });
    }
    if assurance == Assurance::HardwareAttested && evidence.is_none_or(<[u8]>::is_empty) {
        return Err(HardwareError::MissingEvidence);
    }
    let mut message = Vec::with_capacity(256 + evidence.map_or(0, <[u8]>::len));
    message.extend_from_slice(DOMAIN);
    put_bytes(&mut message, job_id.as_bytes());
    put_bytes(&mut message, node_id.as_bytes());
    put_bytes(&mut message, gpu.name.as_bytes());
    put_bytes(&mut message, gpu.uuid.as_bytes());
    message.extend_from_slice(&gpu.vram_mb.to_be_bytes());
    put_bytes(&mut message, gpu.driver_version.as_bytes());
    match &gpu.serial {
        None => message.push(0),
        Some(serial) => {
            message.push(1);
            put_bytes(&mut message, serial.as_bytes());
        }
    }
    message.extend_from_slice(&gpu.power_limit_mw.to_be_bytes());
    message.extend_from_slice(digest);
    message.push(assurance.tag());
    match evidence {
        None => message.push(0),
        Some(evidence) => {
            message.push(1);
            put_bytes(&mut message, evidence);
        }
    }
    message.extend_from_slice(&issued_at_ms.to_be_bytes());
    Ok(message)
}

fn parse_digest(text: &str) -> Result<[u8; 32], HardwareError> {
    if text.len() != 64 {
        return Err(HardwareError::BadDigest);
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        let pair = text
            .get(index * 2..index * 2 + 2)
            .ok_or(HardwareError::BadDigest)?;
        if !pair.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(HardwareError::BadDigest);
        }
        *byte = u8::from_str_radix(pair, 16).map_err(|_| HardwareError::BadDigest)?;
    }
    Ok(digest)
}

/// The canonical bytes an attestation's signature covers (see the module docs). Fails on
/// out-of-bounds fields, a malformed digest or evidence, or `hardware_attested` without
/// evidence.
pub fn hardware_message(attestation: &HardwareAttestation) -> Result<Vec<u8>, HardwareError> {
    let digest = parse_digest(&attestation.telemetry_digest)?;
    let evidence = match &attestation.cc_evidence {
        None => None,
        Some(text) => {
            if text.len() > MAX_EVIDENCE_BYTES.div_ceil(3) * 4 {
                return Err(HardwareError::FieldTooLong {
                    field: "cc_evidence",
                    len: text.len() / 4 * 3,
                    max: MAX_EVIDENCE_BYTES,
                });
            }
            Some(
                STANDARD
                    .decode(text)
                    .map_err(|_| HardwareError::BadEvidence)?,
            )
        }
    };
    encode(
        &attestation.job_id,
        &attestation.node_id,
        &attestation.gpu,
        &digest,
        attestation.assurance,
        evidence.as_deref(),
        attestation.issued_at_ms,
    )
}

/// Signs `claim` with the node key.
pub fn sign_hardware(
    claim: HardwareClaim,
    key: &SigningKey,
) -> Result<HardwareAttestation, HardwareError> {
    let message = encode(
        &claim.job_id,
        &claim.node_id,
        &claim.gpu,
        &claim.telemetry_digest,
        claim.assurance,
        claim.cc_evidence.as_deref(),
        claim.issued_at_ms,
    )?;
    let signature = STANDARD.encode(key.sign(&message).to_bytes());
    Ok(HardwareAttestation {
        job_id: claim.job_id,
        node_id: claim.node_id,
        gpu: claim.gpu,
        telemetry_digest: gp4u_core::hex::encode(&claim.telemetry_digest),
        assurance: claim.assurance,
        cc_evidence: claim.cc_evidence.map(|evidence| STANDARD.encode(evidence)),
        issued_at_ms: claim.issued_at_ms,
        signature,
    })
}

/// Checks the fields' bounds and the node key's signature. A correctly signed
/// `hardware_attested` attestation is still refused with
/// [`HardwareError::UnverifiableEvidence`] (see the module docs).
pub fn verify_hardware(
    attestation: &HardwareAttestation,
    key: &VerifyingKey,
) -> Result<(), HardwareError> {
    let message = hardware_message(attestation)?;
    let signature: [u8; 64] = STANDARD
        .decode(&attestation.signature)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(HardwareError::BadSignature)?;
    key.verify_strict(&message, &Signature::from_bytes(&signature))
        .map_err(|_| HardwareError::BadSignature)?;
    if attestation.assurance == Assurance::HardwareAttested {
        return Err(HardwareError::UnverifiableEvidence);
    }
    Ok(())
}

impl HardwareAttestation {
    /// The 32-byte telemetry digest, if the hex is well-formed.
    pub fn telemetry_digest_bytes(&self) -> Result<[u8; 32], HardwareError> {
        parse_digest(&self.telemetry_digest)
    }

    /// The JSON wire form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON wire form (at most [`MAX_ATTESTATION_JSON_BYTES`]; unknown fields are
    /// refused) and checks the fields' bounds; the signature is checked by
    /// [`verify_hardware`].
    pub fn from_json(text: &str) -> Result<Self, HardwareError> {
        if text.len() > MAX_ATTESTATION_JSON_BYTES {
            return Err(HardwareError::TooLarge {
                bytes: text.len(),
                max: MAX_ATTESTATION_JSON_BYTES,
            });
        }
        let attestation: Self = serde_json::from_str(text)
            .map_err(|error| HardwareError::Malformed(error.to_string()))?;
        hardware_message(&attestation)?;
        Ok(attestation)
    }
}
