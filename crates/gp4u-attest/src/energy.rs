//! Zero-knowledge energy attestation: Pedersen commitments to telemetry readings and a
//! Bulletproofs proof that the committed readings add up to a claimed energy, stay under the
//! GPU's power limit and meet a renewable share, without revealing any single reading.
//!
//! # Flow
//!
//! 1. With each telemetry packet (~every 10 s) the agent calls [`commit_reading`] and sends the
//!    [`ReadingCommitment`] (64 bytes, [`ReadingCommitment::to_base64`]); it keeps the
//!    [`ReadingOpening`] privately. The server stores the commitments as they arrive and seals
//!    [`telemetry_digest`] in its transparency log.
//! 2. After the job the agent calls [`prove_energy`] with its openings and the public weights
//!    (the milliseconds each reading accounts for, from the public timestamps, e.g. with
//!    `gp4u_core::energy::interval_weights`: w_0 = 0, w_i = min(t_i − t_(i−1), max gap)) and sends the [`EnergyClaim`] and the [`EnergyProof`].
//! 3. The server calls [`verify_energy`] with the commitments it stored, the same weights and
//!    the claim.
//!
//! # Units
//!
//! Power in milliwatts (`< 2^32`, i.e. up to ~4.29 MW), time in milliseconds, energy in
//! milliwatt-milliseconds (mW·ms; 1 kWh = 3.6e12 mW·ms). Energy is a `u64` (up to ~5.1 GWh).
//!
//! # What the proof shows
//!
//! Write `B`, `H` for the Pedersen generators (`PedersenGens::default()`: `B` the ristretto
//! basepoint, `H` = `B_blinding`), `C_i = P_i·B + r_i·H` the power commitment and
//! `D_i = ren_i·B + s_i·H` the renewable commitment of reading `i`, `w_i` its public weight.
//!
//! - **(a) energy**: the proof reveals `ρ = Σ w_i·r_i` and the verifier checks
//!   `Σ w_i·C_i − E·B == ρ·H`, i.e. `Σ w_i·P_i ≡ E`. (See [`EnergyProof`] for why revealing
//!   `ρ` leaks nothing beyond `E`.)
//! - **(b), (c) limits**: one Bulletproofs range proof (32-bit) on each of
//!   `limit − P_i` (commitment `limit·B − C_i`), `ren_i` (commitment `D_i`) and
//!   `P_i − ren_i` (commitment `C_i − D_i`). The range proof on `P_i` itself is implied and
//!   therefore left out: `P_i = ren_i + (P_i − ren_i)` is a sum of two values in `[0, 2^32)`,
//!   so `P_i ∈ [0, 2^33)` with no wrap-around modulo the group order, and then
//!   `limit − P_i ∈ [0, 2^32)` with `limit < 2^32` gives `0 ≤ P_i ≤ limit` as integers;
//!   `ren_i ≥ 0` and `P_i − ren_i ≥ 0` give `0 ≤ ren_i ≤ P_i`. This saves a quarter of the
//!   proving work.
//! - **(d) renewable share**: `v = 10000·R − share_bp·E` with `R = Σ w_i·ren_i`. The verifier
//!   derives a commitment to `v` as `10000·Σ w_i·D_i − share_bp·E·B` (R stays hidden). `v` can
//!   reach `10000·2^64 ≈ 2^77.3`, more than one 64-bit range proof covers, so the prover splits
//!   it in three 32-bit limbs `v = v0 + 2^32·v1 + 2^64·v2`, sends commitments `V1`, `V2` (fresh
//!   blindings), the verifier derives `V0 = V − 2^32·V1 − 2^64·V2`, and the three limbs join
//!   the 32-bit range proofs. Each limb in `[0, 2^32)` gives `v ∈ [0, 2^96)`; a negative `v`
//!   would be `q − |v| > 2^251` modulo the group order, so `10000·R ≥ share_bp·E` holds as
//!   integers.
//!
//! All sums are far below the group order `q ≈ 2^252` (`w_i < 2^64`, `P_i < 2^33`,
//! at most [`MAX_READINGS`] = 2^16 readings: `|Σ w_i·P_i| < 2^113`), so the congruences above
//! are integer equalities.
//!
//! # Aggregation
//!
//! The `3n + 3` values are proven in aggregated 32-bit range proofs whose sizes are powers of
//! two: full chunks of [`MAX_CHUNK`] values, then the binary decomposition of the remainder
//! (for 360 readings: 1083 = 1024 + 32 + 16 + 8 + 2 + 1 — six proofs, no padding). Proving cost
//! is linear in the padded size, so no padding proves fastest; a one-off comparison during
//! development (BENCHMARKS.md, not reproduced by `benches/energy.rs`) found it also the fastest
//! to verify and nearly the smallest. All
//! proofs share one merlin transcript (domain "gp4u.energy.v1") that first binds the job id,
//! the claim, the reading count, the weights, `ρ`, `V1` and `V2`.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bulletproofs::{BulletproofGens, PedersenGens, RangeProof};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use merlin::Transcript;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The most readings one proof covers: 2^16 readings, about 7.6 days at one per 10 s.
pub const MAX_READINGS: usize = 1 << 16;
/// The largest aggregated range proof (values per proof). The Bulletproofs generators for it
/// (32 × 1024 × 2 points, ~10 MB) are built once per process.
pub const MAX_CHUNK: usize = 1024;
/// The largest energy proof JSON [`EnergyProof::from_json`] accepts.
pub const MAX_PROOF_JSON_BYTES: usize = 1 << 20;
/// The largest power limit, in mW: values are proven in 32-bit ranges.
pub const MAX_POWER_LIMIT_MW: u64 = u32::MAX as u64;
/// Basis points in a whole.
pub const FULL_SHARE_BP: u32 = 10_000;

const DOMAIN: &[u8] = b"gp4u.energy.v1";
const TELEMETRY_DOMAIN: &[u8] = b"gp4u.telemetry.v1\0";
const PROOF_VERSION: u32 = 1;
const RANGE_BITS: usize = 32;

/// Why a proof can't be made, parsed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnergyProofError {
    #[error("no readings: an energy proof needs at least one")]
    NoReadings,
    #[error("{readings} readings, more than the {max} one proof covers")]
    TooManyReadings { readings: usize, max: usize },
    #[error("{readings} readings but {weights} weights")]
    LengthMismatch { readings: usize, weights: usize },
    #[error("the power limit {limit_mw} mW is above {MAX_POWER_LIMIT_MW} mW")]
    LimitTooLarge { limit_mw: u64 },
    #[error("the renewable share {share_bp} bp is above 10000 bp")]
    ShareOutOfRange { share_bp: u32 },
    #[error("reading {index}: {power_mw} mW is above the power limit {limit_mw} mW")]
    ReadingAboveLimit {
        index: usize,
        power_mw: u64,
        limit_mw: u64,
    },
    #[error("reading {index}: renewable {renewable_mw} mW is above the power {power_mw} mW")]
    RenewableAbovePower {
        index: usize,
        renewable_mw: u64,
        power_mw: u64,
    },
    #[error("the weighted energy does not fit in 64 bits (mW·ms)")]
    WeightOverflow,
    #[error("the claim says {claimed} mW·ms, the readings add up to {actual} mW·ms")]
    EnergyMismatch { claimed: u64, actual: u64 },
    #[error("the renewable energy {renewable} mW·ms is below {share_bp} bp of {energy} mW·ms")]
    ShareNotMet {
        renewable: u128,
        energy: u64,
        share_bp: u32,
    },
    #[error("the proof covers {proof} readings, {commitments} commitments were given")]
    ReadingCountMismatch { proof: usize, commitments: usize },
    #[error("commitment {index} is not a valid point")]
    InvalidCommitment { index: usize },
    #[error("the committed readings do not add up to the claimed energy")]
    EnergySumInvalid,
    #[error("range proof {chunk} does not verify")]
    RangeProofInvalid { chunk: usize },
    #[error("the proof is {bytes} bytes, more than {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("the prover failed: {0}")]
    Prover(String),
}

/// One telemetry power reading, in mW. `renewable_mw ≤ power_mw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerReading {
    pub power_mw: u64,
    pub renewable_mw: u64,
}

/// The public commitments to one reading: `power = P·B + r·H`, `renewable = ren·B + s·H`.
/// On the wire: standard base64 of the 64 bytes (power, then renewable), as a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadingCommitment {
    pub power: CompressedRistretto,
    pub renewable: CompressedRistretto,
}

/// The private opening of a [`ReadingCommitment`]; the agent keeps it until it proves.
/// Serializes with the blindings as standard base64 of their 32 canonical bytes. `Debug`
/// leaves the blindings out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OpeningWire", into = "OpeningWire")]
pub struct ReadingOpening {
    pub power_mw: u64,
    pub renewable_mw: u64,
    pub power_blinding: Scalar,
    pub renewable_blinding: Scalar,
}

/// What the prover claims about a job's energy. All of it is public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyClaim {
    /// `E = Σ w_i·P_i`, in mW·ms.
    pub energy_mwms: u64,
    /// The claim `R ≥ share·E`, in basis points (0..=10000).
    pub renewable_share_bp: u32,
    /// Every reading is at most this, in mW (≤ 2^32 − 1).
    pub power_limit_mw: u64,
}

/// The energy proof. Wire form (JSON, all byte fields standard base64):
///
/// ```json
/// {"version":1,"readings":360,"aggregate_blinding":"<32 bytes>",
///  "share_limbs":["<32 bytes>","<32 bytes>"],"range_proofs":["<1248 bytes>","..."]}
/// ```
///
/// # Why revealing `ρ = Σ w_i·r_i` leaks no individual reading
///
/// Let `x` be the (unknown to anyone) discrete log with `B = x·H`, so
/// `C_i = (x·P_i + r_i)·H`. Take any other readings `P'_i` with the same public energy
/// `Σ w_i·P'_i = E`, and set `r'_i = r_i + x·(P_i − P'_i)`. Then `P'_i·B + r'_i·H = C_i` for
/// every `i` and `Σ w_i·r'_i = ρ + x·(E − E) = ρ`. Since the `r_i` are independent and uniform,
/// `(r'_i)` is exactly as likely as `(r_i)`: the commitments together with `ρ` are distributed
/// identically whatever the readings, as long as they add up to `E`. So `ρ` reveals `E` (which
/// is public in the claim) and nothing else; the hiding is perfect, not merely computational.
/// (With a single reading, `P_1 = E / w_1` is public anyway.) The range proofs are
/// zero-knowledge, and `V1`, `V2` carry fresh uniform blindings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ProofWire", into = "ProofWire")]
pub struct EnergyProof {
    readings: u32,
    aggregate_blinding: Scalar,
    share_limbs: [CompressedRistretto; 2],
    range_proofs: Vec<RangeProofBytes>,
}

/// A range proof with its canonical bytes kept alongside (`RangeProof` has no `PartialEq`).
#[derive(Debug, Clone)]
struct RangeProofBytes {
    proof: RangeProof,
    bytes: Vec<u8>,
}

impl PartialEq for RangeProofBytes {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for RangeProofBytes {}

fn pedersen() -> PedersenGens {
    PedersenGens::default()
}

fn bulletproof_gens() -> &'static BulletproofGens {
    static GENS: OnceLock<BulletproofGens> = OnceLock::new();
    GENS.get_or_init(|| BulletproofGens::new(RANGE_BITS, MAX_CHUNK))
}

/// Commits to one reading with fresh blindings from `rng`. Nothing is checked here (the
/// agent sends what it measured); [`prove_energy`] refuses readings it can't prove.
pub fn commit_reading(
    reading: PowerReading,
    rng: &mut (impl RngCore + CryptoRng),
) -> (ReadingCommitment, ReadingOpening) {
    let opening = ReadingOpening {
        power_mw: reading.power_mw,
        renewable_mw: reading.renewable_mw,
        power_blinding: Scalar::random(rng),
        renewable_blinding: Scalar::random(rng),
    };
    (opening.commitment(), opening)
}

impl ReadingOpening {
    /// The commitment this opening opens.
    pub fn commitment(&self) -> ReadingCommitment {
        let gens = pedersen();
        ReadingCommitment {
            power: gens
                .commit(Scalar::from(self.power_mw), self.power_blinding)
                .compress(),
            renewable: gens
                .commit(Scalar::from(self.renewable_mw), self.renewable_blinding)
                .compress(),
        }
    }
}

impl std::fmt::Debug for ReadingOpening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadingOpening")
            .field("power_mw", &self.power_mw)
            .field("renewable_mw", &self.renewable_mw)
            .finish_non_exhaustive()
    }
}

impl ReadingCommitment {
    /// The 64 bytes: power commitment, then renewable commitment.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(self.power.as_bytes());
        bytes[32..].copy_from_slice(self.renewable.as_bytes());
        bytes
    }

    /// Parses the 64 bytes; both halves must be valid ristretto points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnergyProofError> {
        let bytes: &[u8; 64] = bytes.try_into().map_err(|_| {
            EnergyProofError::Malformed(format!(
                "a reading commitment is 64 bytes, not {}",
                bytes.len()
            ))
        })?;
        let power = point(&bytes[..32], "power commitment")?;
        let renewable = point(&bytes[32..], "renewable commitment")?;
        Ok(Self { power, renewable })
    }

    /// Standard base64 of the 64 bytes (88 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.to_bytes())
    }

    /// Parses [`to_base64`](Self::to_base64)'s form.
    pub fn from_base64(text: &str) -> Result<Self, EnergyProofError> {
        if text.len() > 100 {
            return Err(EnergyProofError::Malformed(
                "a reading commitment is 88 base64 characters".into(),
            ));
        }
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|error| EnergyProofError::Malformed(format!("reading commitment: {error}")))?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for ReadingCommitment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for ReadingCommitment {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// A compressed point that decompresses.
fn point(bytes: &[u8], what: &str) -> Result<CompressedRistretto, EnergyProofError> {
    let compressed = CompressedRistretto::from_slice(bytes)
        .map_err(|_| EnergyProofError::Malformed(format!("{what}: not 32 bytes")))?;
    compressed
        .decompress()
        .ok_or_else(|| EnergyProofError::Malformed(format!("{what}: not a valid point")))?;
    Ok(compressed)
}

fn scalar_from_base64(text: &str, what: &str) -> Result<Scalar, EnergyProofError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|error| EnergyProofError::Malformed(format!("{what}: {error}")))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| EnergyProofError::Malformed(format!("{what}: not 32 bytes")))?;
    Option::from(Scalar::from_canonical_bytes(bytes))
        .ok_or_else(|| EnergyProofError::Malformed(format!("{what}: not a canonical scalar")))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpeningWire {
    power_mw: u64,
    renewable_mw: u64,
    power_blinding: String,
    renewable_blinding: String,
}

impl From<ReadingOpening> for OpeningWire {
    fn from(opening: ReadingOpening) -> Self {
        Self {
            power_mw: opening.power_mw,
            renewable_mw: opening.renewable_mw,
            power_blinding: STANDARD.encode(opening.power_blinding.as_bytes()),
            renewable_blinding: STANDARD.encode(opening.renewable_blinding.as_bytes()),
        }
    }
}

impl TryFrom<OpeningWire> for ReadingOpening {
    type Error = EnergyProofError;
    fn try_from(wire: OpeningWire) -> Result<Self, Self::Error> {
        Ok(Self {
            power_mw: wire.power_mw,
            renewable_mw: wire.renewable_mw,
            power_blinding: scalar_from_base64(&wire.power_blinding, "power_blinding")?,
            renewable_blinding: scalar_from_base64(&wire.renewable_blinding, "renewable_blinding")?,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofWire {
    version: u32,
    readings: u32,
    aggregate_blinding: String,
    share_limbs: [String; 2],
    range_proofs: Vec<String>,
}

impl From<EnergyProof> for ProofWire {
    fn from(proof: EnergyProof) -> Self {
        Self {
            version: PROOF_VERSION,
            readings: proof.readings,
            aggregate_blinding: STANDARD.encode(proof.aggregate_blinding.as_bytes()),
            share_limbs: proof
                .share_limbs
                .map(|limb| STANDARD.encode(limb.as_bytes())),
            range_proofs: proof
                .range_proofs
                .iter()
                .map(|range| STANDARD.encode(&range.bytes))
                .collect(),
        }
    }
}

impl TryFrom<ProofWire> for EnergyProof {
    type Error = EnergyProofError;
    fn try_from(wire: ProofWire) -> Result<Self, Self::Error> {
        if wire.version != PROOF_VERSION {
            return Err(EnergyProofError::Malformed(format!(
                "version {} (this is version {PROOF_VERSION})",
                wire.version
            )));
        }
        let readings = wire.readings as usize;
        check_reading_count(readings)?;
        let plan = chunk_plan(value_count(readings));
        if wire.range_proofs.len() != plan.len() {
            return Err(EnergyProofError::Malformed(format!(
                "{} readings take {} range proofs, not {}",
                readings,
                plan.len(),
                wire.range_proofs.len()
            )));
        }
        let mut range_proofs = Vec::with_capacity(plan.len());
        for (index, (text, &values)) in wire.range_proofs.iter().zip(&plan).enumerate() {
            let expected = range_proof_len(values);
            // Reject before decoding anything oversized.
            if text.len() != expected.div_ceil(3) * 4 {
                return Err(EnergyProofError::Malformed(format!(
                    "range proof {index} must be {expected} bytes"
                )));
            }
            let bytes = STANDARD.decode(text).map_err(|error| {
                EnergyProofError::Malformed(format!("range proof {index}: {error}"))
            })?;
            if bytes.len() != expected {
                return Err(EnergyProofError::Malformed(format!(
                    "range proof {index} must be {expected} bytes"
                )));
            }
            let proof = RangeProof::from_bytes(&bytes).map_err(|error| {
                EnergyProofError::Malformed(format!("range proof {index}: {error}"))
            })?;
            range_proofs.push(RangeProofBytes { proof, bytes });
        }
        let limb = |index: usize| {
            let bytes = STANDARD
                .decode(&wire.share_limbs[index])
                .map_err(|error| EnergyProofError::Malformed(format!("share limb: {error}")))?;
            point(&bytes, "share limb")
        };
        Ok(Self {
            readings: wire.readings,
            aggregate_blinding: scalar_from_base64(&wire.aggregate_blinding, "aggregate_blinding")?,
            share_limbs: [limb(0)?, limb(1)?],
            range_proofs,
        })
    }
}

impl EnergyProof {
    /// The number of readings the proof covers.
    pub fn readings(&self) -> usize {
        self.readings as usize
    }

    /// The revealed aggregate blinding `ρ = Σ w_i·r_i`.
    pub fn aggregate_blinding(&self) -> Scalar {
        self.aggregate_blinding
    }

    /// The proof's size in bytes, without the JSON and base64 overhead.
    pub fn byte_len(&self) -> usize {
        32 + 64
            + self
                .range_proofs
                .iter()
                .map(|range| range.bytes.len())
                .sum::<usize>()
    }

    /// The JSON wire form.
    pub fn to_json(&self) -> String {
        // Serializing strings and integers into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON wire form: at most [`MAX_PROOF_JSON_BYTES`], every field its exact size.
    pub fn from_json(text: &str) -> Result<Self, EnergyProofError> {
        if text.len() > MAX_PROOF_JSON_BYTES {
            return Err(EnergyProofError::TooLarge {
                bytes: text.len(),
                max: MAX_PROOF_JSON_BYTES,
            });
        }
        serde_json::from_str(text).map_err(|error| EnergyProofError::Malformed(error.to_string()))
    }
}

/// Three range-proven values per reading, three limbs for the share.
fn value_count(readings: usize) -> usize {
    3 * readings + 3
}

/// Aggregation sizes: full [`MAX_CHUNK`]s, then the binary decomposition of the rest, largest
/// first. Every size is a power of two, so nothing is padded.
fn chunk_plan(values: usize) -> Vec<usize> {
    let mut plan = vec![MAX_CHUNK; values / MAX_CHUNK];
    let rest = values % MAX_CHUNK;
    plan.extend(
        (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(|size| rest & size != 0),
    );
    plan
}

/// Bytes of an aggregated 32-bit range proof over `values` values: `(9 + 2·lg(32·m))·32`.
fn range_proof_len(values: usize) -> usize {
    let bits = (RANGE_BITS * values).trailing_zeros() as usize;
    (9 + 2 * bits) * 32
}

fn check_reading_count(readings: usize) -> Result<(), EnergyProofError> {
    if readings == 0 {
        return Err(EnergyProofError::NoReadings);
    }
    if readings > MAX_READINGS {
        return Err(EnergyProofError::TooManyReadings {
            readings,
            max: MAX_READINGS,
        });
    }
    Ok(())
}

fn check_claim(claim: &EnergyClaim) -> Result<(), EnergyProofError> {
    if claim.power_limit_mw > MAX_POWER_LIMIT_MW {
        return Err(EnergyProofError::LimitTooLarge {
            limit_mw: claim.power_limit_mw,
        });
    }
    if claim.renewable_share_bp > FULL_SHARE_BP {
        return Err(EnergyProofError::ShareOutOfRange {
            share_bp: claim.renewable_share_bp,
        });
    }
    Ok(())
}

fn check_shape(readings: usize, weights: &[u64]) -> Result<(), EnergyProofError> {
    check_reading_count(readings)?;
    if weights.len() != readings {
        return Err(EnergyProofError::LengthMismatch {
            readings,
            weights: weights.len(),
        });
    }
    Ok(())
}

/// The transcript both sides start from: the statement, then the proof's public scalars.
fn statement_transcript(
    job_id: &str,
    claim: &EnergyClaim,
    weights: &[u64],
    aggregate_blinding: &Scalar,
    share_limbs: &[CompressedRistretto; 2],
) -> Transcript {
    let mut transcript = Transcript::new(DOMAIN);
    transcript.append_message(b"job_id", job_id.as_bytes());
    transcript.append_u64(b"energy_mwms", claim.energy_mwms);
    transcript.append_u64(b"renewable_share_bp", u64::from(claim.renewable_share_bp));
    transcript.append_u64(b"power_limit_mw", claim.power_limit_mw);
    transcript.append_u64(b"readings", weights.len() as u64);
    let weight_bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_be_bytes()).collect();
    transcript.append_message(b"weights", &weight_bytes);
    transcript.append_message(b"aggregate_blinding", aggregate_blinding.as_bytes());
    transcript.append_message(b"share_limb_1", share_limbs[0].as_bytes());
    transcript.append_message(b"share_limb_2", share_limbs[1].as_bytes());
    transcript
}

/// `2^k` as a scalar.
fn pow2(k: u32) -> Scalar {
    Scalar::from(1u128 << k)
}

/// Proves `claim` about the readings in `openings`, weighted by `weights` (ms per reading).
/// Refuses inputs it can't prove truthfully: a reading above the limit, renewable above
/// power, an energy that isn't the weighted sum, a share that isn't met.
pub fn prove_energy(
    job_id: &str,
    claim: &EnergyClaim,
    openings: &[ReadingOpening],
    weights: &[u64],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<EnergyProof, EnergyProofError> {
    check_claim(claim)?;
    check_shape(openings.len(), weights)?;
    let limit = claim.power_limit_mw;
    let mut energy: u128 = 0;
    let mut renewable: u128 = 0;
    for (index, (opening, &weight)) in openings.iter().zip(weights).enumerate() {
        if opening.power_mw > limit {
            return Err(EnergyProofError::ReadingAboveLimit {
                index,
                power_mw: opening.power_mw,
                limit_mw: limit,
            });
        }
        if opening.renewable_mw > opening.power_mw {
            return Err(EnergyProofError::RenewableAbovePower {
                index,
                renewable_mw: opening.renewable_mw,
                power_mw: opening.power_mw,
            });
        }
        // Each term < 2^96, at most 2^16 terms: no u128 overflow.
        energy += u128::from(weight) * u128::from(opening.power_mw);
        renewable += u128::from(weight) * u128::from(opening.renewable_mw);
    }
    let energy = u64::try_from(energy).map_err(|_| EnergyProofError::WeightOverflow)?;
    if energy != claim.energy_mwms {
        return Err(EnergyProofError::EnergyMismatch {
            claimed: claim.energy_mwms,
            actual: energy,
        });
    }
    // renewable ≤ energy < 2^64: both products < 2^78.
    let required = u128::from(claim.renewable_share_bp) * u128::from(energy);
    let surplus = (u128::from(FULL_SHARE_BP) * renewable)
        .checked_sub(required)
        .ok_or(EnergyProofError::ShareNotMet {
            renewable,
            energy,
            share_bp: claim.renewable_share_bp,
        })?;

    let pc_gens = pedersen();
    let mut aggregate_blinding = Scalar::ZERO;
    let mut renewable_blinding = Scalar::ZERO;
    let mut values = Vec::with_capacity(value_count(openings.len()));
    let mut blindings = Vec::with_capacity(value_count(openings.len()));
    for (opening, &weight) in openings.iter().zip(weights) {
        let weight = Scalar::from(weight);
        aggregate_blinding += weight * opening.power_blinding;
        renewable_blinding += weight * opening.renewable_blinding;
        values.extend([
            limit - opening.power_mw,
            opening.renewable_mw,
            opening.power_mw - opening.renewable_mw,
        ]);
        blindings.extend([
            -opening.power_blinding,
            opening.renewable_blinding,
            opening.power_blinding - opening.renewable_blinding,
        ]);
    }
    // surplus < 2^78: three 32-bit limbs.
    let limbs = [
        (surplus & 0xffff_ffff) as u64,
        ((surplus >> 32) & 0xffff_ffff) as u64,
        (surplus >> 64) as u64,
    ];
    let limb_blindings = [Scalar::random(rng), Scalar::random(rng)];
    let limb0_blinding = Scalar::from(u64::from(FULL_SHARE_BP)) * renewable_blinding
        - pow2(32) * limb_blindings[0]
        - pow2(64) * limb_blindings[1];
    let share_limbs = [
        pc_gens
            .commit(Scalar::from(limbs[1]), limb_blindings[0])
            .compress(),
        pc_gens
            .commit(Scalar::from(limbs[2]), limb_blindings[1])
            .compress(),
    ];
    values.extend(limbs);
    blindings.extend([limb0_blinding, limb_blindings[0], limb_blindings[1]]);

    let mut transcript =
        statement_transcript(job_id, claim, weights, &aggregate_blinding, &share_limbs);
    let mut range_proofs = Vec::new();
    let mut start = 0;
    for size in chunk_plan(values.len()) {
        let end = start + size;
        let (proof, _) = RangeProof::prove_multiple_with_rng(
            bulletproof_gens(),
            &pc_gens,
            &mut transcript,
            &values[start..end],
            &blindings[start..end],
            RANGE_BITS,
            rng,
        )
        .map_err(|error| EnergyProofError::Prover(error.to_string()))?;
        let bytes = proof.to_bytes();
        range_proofs.push(RangeProofBytes { proof, bytes });
        start = end;
    }
    Ok(EnergyProof {
        // check_shape bounds it by MAX_READINGS.
        readings: openings.len() as u32,
        aggregate_blinding,
        share_limbs,
        range_proofs,
    })
}

/// Verifies `proof` for `claim` against the commitments the server stored for `job_id` (in
/// order) and the weights it computed from the public timestamps. `rng` draws the range
/// proofs' batching challenge, which must be unpredictable to the prover.
pub fn verify_energy(
    job_id: &str,
    claim: &EnergyClaim,
    commitments: &[ReadingCommitment],
    weights: &[u64],
    proof: &EnergyProof,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(), EnergyProofError> {
    check_claim(claim)?;
    check_shape(commitments.len(), weights)?;
    if proof.readings() != commitments.len() {
        return Err(EnergyProofError::ReadingCountMismatch {
            proof: proof.readings(),
            commitments: commitments.len(),
        });
    }
    let plan = chunk_plan(value_count(commitments.len()));
    if plan.len() != proof.range_proofs.len() {
        return Err(EnergyProofError::Malformed(
            "the range proofs do not match the reading count".into(),
        ));
    }
    let pc_gens = pedersen();
    let mut power = Vec::with_capacity(commitments.len());
    let mut renewable = Vec::with_capacity(commitments.len());
    for (index, commitment) in commitments.iter().enumerate() {
        let invalid = || EnergyProofError::InvalidCommitment { index };
        power.push(commitment.power.decompress().ok_or_else(invalid)?);
        renewable.push(commitment.renewable.decompress().ok_or_else(invalid)?);
    }
    let weight_scalars: Vec<Scalar> = weights.iter().map(|&w| Scalar::from(w)).collect();

    // (a) Σ w_i·C_i − E·B − ρ·H = 0.
    let energy = Scalar::from(claim.energy_mwms);
    let check = RistrettoPoint::vartime_multiscalar_mul(
        weight_scalars
            .iter()
            .copied()
            .chain([-energy, -proof.aggregate_blinding]),
        power.iter().copied().chain([pc_gens.B, pc_gens.B_blinding]),
    );
    if check != RistrettoPoint::identity() {
        return Err(EnergyProofError::EnergySumInvalid);
    }

    // (b), (c): limit·B − C_i, D_i, C_i − D_i.
    let limit_point = pc_gens.B * Scalar::from(claim.power_limit_mw);
    let mut derived = Vec::with_capacity(value_count(commitments.len()));
    for ((c, d), commitment) in power.iter().zip(&renewable).zip(commitments) {
        derived.push((limit_point - c).compress());
        derived.push(commitment.renewable);
        derived.push((c - d).compress());
    }
    // (d) V = 10000·Σ w_i·D_i − share·E·B;  V0 = V − 2^32·V1 − 2^64·V2.
    let limb = |index: usize| {
        proof.share_limbs[index]
            .decompress()
            .ok_or_else(|| EnergyProofError::Malformed("share limb: not a valid point".into()))
    };
    let (limb1, limb2) = (limb(0)?, limb(1)?);
    let full = Scalar::from(u64::from(FULL_SHARE_BP));
    let required = Scalar::from(u64::from(claim.renewable_share_bp)) * energy;
    let limb0 = RistrettoPoint::vartime_multiscalar_mul(
        weight_scalars
            .iter()
            .map(|w| full * w)
            .chain([-required, -pow2(32), -pow2(64)]),
        renewable.iter().copied().chain([pc_gens.B, limb1, limb2]),
    );
    derived.extend([limb0.compress(), proof.share_limbs[0], proof.share_limbs[1]]);

    let mut transcript = statement_transcript(
        job_id,
        claim,
        weights,
        &proof.aggregate_blinding,
        &proof.share_limbs,
    );
    let mut start = 0;
    for (chunk, (size, range)) in plan.iter().zip(&proof.range_proofs).enumerate() {
        let end = start + size;
        range
            .proof
            .verify_multiple_with_rng(
                bulletproof_gens(),
                &pc_gens,
                &mut transcript,
                &derived[start..end],
                RANGE_BITS,
                rng,
            )
            .map_err(|_| EnergyProofError::RangeProofInvalid { chunk })?;
        start = end;
    }
    Ok(())
}

/// SHA-256 over the canonical encoding of a job's telemetry commitments:
/// `"gp4u.telemetry.v1\0"`, the job id's length (u32 big-endian) and bytes, then per entry
/// its timestamp (i64 big-endian, ms) and the 64 commitment bytes. Entries are fixed-size, so
/// the encoding is unambiguous. The server computes it from what it stored, the agent from
/// what it sent.
pub fn telemetry_digest(job_id: &str, entries: &[(i64, ReadingCommitment)]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(TELEMETRY_DOMAIN);
    // Job ids are short; a longer one is cut at the length prefix's range.
    let len = u32::try_from(job_id.len()).unwrap_or(u32::MAX);
    hasher.update(len.to_be_bytes());
    hasher.update(&job_id.as_bytes()[..len as usize]);
    for (t_ms, commitment) in entries {
        hasher.update(t_ms.to_be_bytes());
        hasher.update(commitment.to_bytes());
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunk_plans_are_powers_of_two_and_cover_everything() {
        assert_eq!(chunk_plan(6), vec![4, 2]);
        assert_eq!(chunk_plan(1083), vec![1024, 32, 16, 8, 2, 1]);
        assert_eq!(chunk_plan(2048 + 3), vec![1024, 1024, 2, 1]);
        for values in 1..3000 {
            let plan = chunk_plan(values);
            assert_eq!(plan.iter().sum::<usize>(), values);
            assert!(
                plan.iter()
                    .all(|size| size.is_power_of_two() && *size <= MAX_CHUNK)
            );
        }
        assert_eq!(range_proof_len(1), (9 + 10) * 32);
        assert_eq!(range_proof_len(1024), (9 + 30) * 32);
    }
}
