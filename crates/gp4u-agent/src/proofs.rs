//! Energy and hardware proofs (SPEC §8, seed stage 6).
//!
//! During a job the agent commits to every power reading it sends: each telemetry packet
//! carries `power_commitment`, the base64 of a [`ReadingCommitment`] to
//! `power_mw = watts_to_mw(power_draw_watts)` (the watts the platform stores, i.e. clamped to
//! [`POWER_RANGE_W`]) and its renewable part `renewable_mw = ⌈power_mw × share_bp / 10000⌉`.
//! A reading above the job's power bound — the limit its GPU was registered with when the
//! job was assigned (the manifest's `gpu_power_limit_watts`; else the limit this agent
//! declared at its start) — is sent and committed at the bound: NVML's instantaneous power
//! can overshoot the enforced limit for a moment, and the energy proof bounds every reading
//! by exactly the registered limit. The platform then bills no energy the proof cannot bound
//! (the provider loses the overshoot, the customer never pays for it).
//! The opening stays with the agent ([`JobReadings`]); it is kept with the time the platform
//! stored the sample (`at_ms` of the reply) once the packet is accepted. Every opening is also
//! appended, before its packet leaves, to `openings.jsonl` in the job's directory (mode 0600,
//! next to the job's inputs and outputs, removed with them): an agent restarted mid-job
//! reloads them, so the job is still proven in full ([`JobReadings::persistent`]).
//!
//! After the job (ended normally, by the customer or by the platform's order; not after a
//! provider-fault ending) the agent posts two submissions to
//! `POST /api/providers/{nodeId}/zk-proofs` ([`submit_proofs`]):
//!
//! - energy: weights `interval_weights(at_ms, 0, max_gap_ms)` (the platform's own rule), the
//!   claim `E = Σ wᵢ·Pᵢ`, the declared renewable share in basis points, and as the per-reading
//!   bound exactly the power limit the platform registered for the job's GPU when it was
//!   assigned (it says which with the stored commitments; else the job's bound above) — the
//!   platform refuses any other — proven with `prove_energy` on a blocking thread;
//! - hardware: the GPU's identity as registered (its registered name, UUID, VRAM in MiB, the
//!   same power limit) and the telemetry digest of the (at_ms, commitment) list, signed with
//!   the node key; `emulated` assurance for emulated GPUs, `provider_signed` with NVML.
//!
//! The platform answers 503 (with `Retry-After`) until it has accounted the job's energy:
//! retried for up to [`SUBMIT_PATIENCE`]. A 4xx is logged as an error and not retried.
//!
//! Why the renewable part is rounded up: the proof shows `10000·Σ wᵢ·renᵢ ≥ share_bp·E`;
//! rounding each `renᵢ` down could make that false by a few mW·ms (e.g. 50 % of 1 mW), and the
//! proof would be refused. Rounding up (never above `power_mw`) makes it hold for every reading.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gp4u_attest::energy::{
    EnergyClaim, EnergyProofError, PowerReading, ReadingCommitment, ReadingOpening, commit_reading,
    prove_energy, telemetry_digest,
};
use gp4u_attest::hardware::{Assurance, GpuIdentity, HardwareClaim, HardwareError, sign_hardware};
use gp4u_attest::proofs::{EnergySubmission, ProofSubmission};
use gp4u_core::energy::{interval_weights, mw_to_watts, watts_to_mw};
use gp4u_core::tutela::POWER_RANGE_W;
use gp4u_proto::{TelemetryPacket, TelemetryReply};
use rand_core::OsRng;

use crate::client::PlatformClient;
use crate::gpu::GpuInfo;

/// The most readings the agent commits to per job (beyond: no commitment, a warning).
pub const MAX_READINGS_PER_JOB: usize = 65_536;
/// How long the agent keeps offering a job's proofs while the platform answers 503.
pub const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);
/// The weight cap when no reply said one (the platform's default is sent with every reply).
const FALLBACK_MAX_GAP_MS: i64 = 60_000;

/// The renewable share in basis points, as the platform derives it from the declared percent.
pub fn share_bp(renewable_pct: f64) -> u32 {
    if renewable_pct.is_nan() {
        return 0;
    }
    (renewable_pct.clamp(0.0, 100.0) * 100.0).round() as u32
}

/// The milliwatts the platform accounts for a packet's watts (it clamps them first).
pub fn committed_mw(watts: f64) -> u64 {
    if watts.is_nan() {
        return 0;
    }
    watts_to_mw(watts.clamp(POWER_RANGE_W.0, POWER_RANGE_W.1))
}

/// The renewable part of a reading: `⌈power_mw × share_bp / 10000⌉`, at most `power_mw`.
pub fn renewable_mw(power_mw: u64, share_bp: u32) -> u64 {
    let share = u128::from(share_bp.min(10_000));
    let value = (u128::from(power_mw) * share).div_ceil(10_000);
    u64::try_from(value).unwrap_or(u64::MAX).min(power_mw)
}

/// A commitment sent with a packet whose answer has not come yet. `Debug` omits the opening.
pub struct Pending {
    commitment: ReadingCommitment,
    opening: ReadingOpening,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("commitment", &self.commitment.to_base64())
            .finish_non_exhaustive()
    }
}

/// One accepted reading: when the platform stored it, the commitment it stored, the opening.
#[derive(Clone)]
pub struct Committed {
    pub at_ms: i64,
    pub commitment: ReadingCommitment,
    pub opening: ReadingOpening,
}

struct Inner {
    share_bp: u32,
    /// The job's power bound (mW): readings above it are sent and committed at it.
    power_limit_mw: Option<u64>,
    bound_warned: bool,
    entries: Vec<Committed>,
    /// Every opening the agent made for this job, by its commitment's bytes, also for packets
    /// whose reply never came: the platform may have stored them anyway, and the energy proof
    /// must cover everything it stored ([`JobReadings::reconcile`]).
    openings: std::collections::HashMap<[u8; 64], ReadingOpening>,
    max_gap_ms: Option<i64>,
    full_warned: bool,
    /// Where every opening is appended as it is made (`None`: in memory only).
    journal: Option<std::fs::File>,
    journal_warned: bool,
}

/// The journal's name in a job's directory.
pub const OPENINGS_FILE: &str = "openings.jsonl";

/// One journal line: the share the readings were committed with (the first line), or one
/// opening with its commitment.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum JournalLine {
    Share {
        share_bp: u32,
    },
    Opening {
        commitment: String,
        opening: ReadingOpening,
    },
}

/// The openings of one job's accepted readings, shared by its watchdog and its final packet.
#[derive(Clone)]
pub struct JobReadings {
    job_id: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for JobReadings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobReadings")
            .field("job_id", &self.job_id)
            .field("readings", &self.len())
            .finish_non_exhaustive()
    }
}

impl JobReadings {
    /// Readings kept in memory only, bounded by `power_limit_mw` (the job's GPU's registered
    /// limit; `None`: unknown, readings are committed as read).
    pub fn new(job_id: &str, renewable_pct: f64, power_limit_mw: Option<u64>) -> JobReadings {
        JobReadings {
            job_id: job_id.into(),
            inner: Arc::new(Mutex::new(Inner {
                share_bp: share_bp(renewable_pct),
                power_limit_mw,
                bound_warned: false,
                entries: Vec::new(),
                openings: std::collections::HashMap::new(),
                max_gap_ms: None,
                full_warned: false,
                journal: None,
                journal_warned: false,
            })),
        }
    }

    /// Readings journalled in `dir` (the job's directory): the openings a previous run of the
    /// agent made for this job are loaded first, and the share they were committed with is
    /// kept (a restart with another `--renewable-pct` does not change what was committed).
    /// A journal that cannot be opened is reported and the readings stay in memory.
    pub fn persistent(
        dir: &std::path::Path,
        job_id: &str,
        renewable_pct: f64,
        power_limit_mw: Option<u64>,
    ) -> JobReadings {
        let readings = JobReadings::new(job_id, renewable_pct, power_limit_mw);
        let path = dir.join(OPENINGS_FILE);
        let mut inner = readings.lock();
        let mut loaded = 0_usize;
        let mut unreadable = 0_usize;
        let mut recorded_share = None;
        let mut torn = false;
        if let Ok(text) = std::fs::read_to_string(&path) {
            torn = !text.is_empty() && !text.ends_with('\n');
            for line in text.lines().filter(|line| !line.trim().is_empty()) {
                match serde_json::from_str::<JournalLine>(line) {
                    Ok(JournalLine::Share { share_bp }) => recorded_share = Some(share_bp),
                    Ok(JournalLine::Opening {
                        commitment,
                        opening,
                    }) => match ReadingCommitment::from_base64(&commitment) {
                        Ok(commitment) if opening.commitment() == commitment => {
                            inner.openings.insert(commitment.to_bytes(), opening);
                            loaded += 1;
                        }
                        _ => unreadable += 1,
                    },
                    // A line cut short by a crash mid-write, or damaged: skipped.
                    Err(_) => unreadable += 1,
                }
            }
        }
        let fresh = recorded_share.is_none();
        if let Some(recorded) = recorded_share {
            if recorded != inner.share_bp {
                tracing::warn!(
                    job_id,
                    recorded,
                    configured = inner.share_bp,
                    "the job's readings were committed with another renewable share: keeping it"
                );
            }
            inner.share_bp = recorded;
        }
        if loaded > 0 || unreadable > 0 {
            tracing::info!(
                job_id,
                loaded,
                unreadable,
                "openings reloaded from the job's journal"
            );
        }
        match open_journal(&path) {
            Ok(mut file) => {
                // End a torn last line, so that the next opening starts a line of its own.
                if torn {
                    use std::io::Write as _;
                    if let Err(error) = file.write_all(b"\n") {
                        tracing::warn!(job_id, %error, "cannot mend the openings journal");
                    }
                }
                if fresh {
                    let header = JournalLine::Share {
                        share_bp: inner.share_bp,
                    };
                    if let Err(error) = write_line(&mut file, &header) {
                        tracing::warn!(job_id, %error, path = %path.display(), "cannot write the openings journal; keeping openings in memory only");
                    } else {
                        inner.journal = Some(file);
                    }
                } else {
                    inner.journal = Some(file);
                }
            }
            Err(error) => tracing::warn!(
                job_id,
                %error,
                path = %path.display(),
                "cannot open the openings journal; keeping openings in memory only (a restart mid-job loses the energy proof)"
            ),
        }
        drop(inner);
        readings
    }

    /// Openings held (also for packets not acknowledged, and those reloaded after a restart).
    pub fn openings(&self) -> usize {
        self.lock().openings.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepted readings so far.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commits to the packet's reading and puts the commitment in it. `None` (and no
    /// commitment in the packet) once the job has [`MAX_READINGS_PER_JOB`].
    pub fn commit(&self, packet: &mut TelemetryPacket) -> Option<Pending> {
        let mut inner = self.lock();
        // Both caps: readings accepted in this run, and openings held (they survive restarts,
        // so a job restarted many times could fill them first). A commitment is only sent with
        // its opening kept, or it could never be proven.
        if inner.entries.len() >= MAX_READINGS_PER_JOB
            || inner.openings.len() >= 2 * MAX_READINGS_PER_JOB
        {
            packet.power_commitment = None;
            if !inner.full_warned {
                inner.full_warned = true;
                tracing::warn!(
                    job_id = %self.job_id,
                    max = MAX_READINGS_PER_JOB,
                    "the job has the most readings the agent commits to: no more commitments (no energy proof)"
                );
            }
            return None;
        }
        let mut power_mw = committed_mw(packet.power_draw_watts);
        if let Some(limit) = inner.power_limit_mw
            && power_mw > limit
        {
            // Sent at the bound too: what the platform stores is what the agent commits.
            packet.power_draw_watts = mw_to_watts(limit);
            power_mw = limit;
            if !inner.bound_warned {
                inner.bound_warned = true;
                tracing::info!(job_id = %self.job_id, limit_mw = limit,
                    "a power reading above the GPU's registered limit is reported at the limit");
            }
        }
        let reading = PowerReading {
            power_mw,
            renewable_mw: renewable_mw(power_mw, inner.share_bp),
        };
        let (commitment, opening) = commit_reading(reading, &mut OsRng);
        inner
            .openings
            .insert(commitment.to_bytes(), opening.clone());
        // Journalled before the packet leaves: whatever the platform stores, the opening
        // survives a restart of the agent.
        let line = JournalLine::Opening {
            commitment: commitment.to_base64(),
            opening: opening.clone(),
        };
        if let Some(file) = inner.journal.as_mut()
            && let Err(error) = write_line(file, &line)
            && !inner.journal_warned
        {
            inner.journal_warned = true;
            tracing::warn!(job_id = %self.job_id, %error, "cannot append to the openings journal; a restart mid-job would lose the energy proof");
        }
        drop(inner);
        packet.power_commitment = Some(commitment.to_base64());
        Some(Pending {
            commitment,
            opening,
        })
    }

    /// The packet was accepted: keep its opening under the time the platform stored it.
    pub fn accept(&self, pending: Pending, reply: &TelemetryReply) {
        let mut inner = self.lock();
        if let Some(gap) = reply.max_gap_ms {
            inner.max_gap_ms = Some(gap);
        }
        match reply.at_ms {
            Some(at_ms) if inner.entries.len() < MAX_READINGS_PER_JOB => {
                inner.entries.push(Committed {
                    at_ms,
                    commitment: pending.commitment,
                    opening: pending.opening,
                });
            }
            Some(_) => {}
            None => tracing::debug!(
                job_id = %self.job_id,
                "the platform did not say when it stored the sample (an older server): no proof can cover it"
            ),
        }
    }

    /// The accepted readings, by stored time (stable: ties keep the sending order), and the
    /// platform's weight cap.
    pub fn snapshot(&self) -> (Vec<Committed>, i64, u32) {
        let inner = self.lock();
        let mut entries = inner.entries.clone();
        entries.sort_by_key(|entry| entry.at_ms);
        (
            entries,
            inner.max_gap_ms.unwrap_or(FALLBACK_MAX_GAP_MS),
            inner.share_bp,
        )
    }
}

impl JobReadings {
    /// The readings the platform stored (`stored`: its times and commitments, in its order),
    /// each with the opening the agent kept for it. `Err(n)`: `n` stored commitments have no
    /// opening here (not this agent's, or made before a restart), so no proof can cover them.
    pub fn reconcile(&self, stored: &[(i64, ReadingCommitment)]) -> Result<Vec<Committed>, usize> {
        let inner = self.lock();
        let mut entries = Vec::with_capacity(stored.len());
        let mut missing = 0;
        for (at_ms, commitment) in stored {
            match inner.openings.get(&commitment.to_bytes()) {
                Some(opening) => entries.push(Committed {
                    at_ms: *at_ms,
                    commitment: *commitment,
                    opening: opening.clone(),
                }),
                None => missing += 1,
            }
        }
        if missing > 0 {
            Err(missing)
        } else {
            Ok(entries)
        }
    }
}

fn open_journal(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Appends one line in a single write (a crash leaves at most one torn last line).
fn write_line(file: &mut std::fs::File, line: &JournalLine) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    file.write_all(&bytes)
}

/// What the platform stored for a job (`GET /api/agent/jobs/{id}/commitments`).
struct Stored {
    /// The commitments with the times the platform stored them, in its order.
    commitments: Vec<(i64, ReadingCommitment)>,
    max_gap_ms: i64,
    /// The power bound the energy proof must use: the job's GPU's registered limit when the
    /// job was assigned (`None` from older platforms, or when none is registered).
    power_limit_mw: Option<u64>,
}

/// The platform's list of what it stored for the job, its commitments decoded (`None` when one
/// does not decode).
fn parse_stored(answer: &gp4u_proto::JobCommitments) -> Option<Stored> {
    let commitments = answer
        .commitments
        .iter()
        .map(|item| {
            let commitment = ReadingCommitment::from_base64(&item.commitment).ok()?;
            Some((item.at_ms, commitment))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Stored {
        commitments,
        max_gap_ms: answer.max_gap_ms,
        power_limit_mw: answer.power_limit_mw,
    })
}

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("no committed readings")]
    NoReadings,
    #[error("weights: {0}")]
    Weights(String),
    #[error("the weighted energy overflows")]
    Overflow,
    #[error(transparent)]
    Energy(#[from] EnergyProofError),
    #[error(transparent)]
    Hardware(#[from] HardwareError),
}

/// The weights (the platform's rule) and the claim for these readings, bounded by exactly
/// `power_limit_mw` (the registered limit: proving fails if a reading is above it, it is
/// never raised to fit).
pub fn energy_claim(
    entries: &[Committed],
    max_gap_ms: i64,
    share_bp: u32,
    power_limit_mw: u64,
) -> Result<(EnergyClaim, Vec<u64>), ProofError> {
    if entries.is_empty() {
        return Err(ProofError::NoReadings);
    }
    let timestamps: Vec<i64> = entries.iter().map(|entry| entry.at_ms).collect();
    let weights = interval_weights(&timestamps, 0, max_gap_ms)
        .map_err(|error| ProofError::Weights(error.to_string()))?;
    let mut energy: u128 = 0;
    for (entry, weight) in entries.iter().zip(&weights) {
        energy += u128::from(*weight) * u128::from(entry.opening.power_mw);
    }
    let energy_mwms = u64::try_from(energy).map_err(|_| ProofError::Overflow)?;
    Ok((
        EnergyClaim {
            energy_mwms,
            renewable_share_bp: share_bp,
            power_limit_mw,
        },
        weights,
    ))
}

/// The energy submission: claim and proof (seconds of CPU for hundreds of readings: call it
/// off the async threads).
pub fn energy_submission(
    job_id: &str,
    entries: &[Committed],
    max_gap_ms: i64,
    share_bp: u32,
    power_limit_mw: u64,
) -> Result<ProofSubmission, ProofError> {
    let (claim, weights) = energy_claim(entries, max_gap_ms, share_bp, power_limit_mw)?;
    let openings: Vec<ReadingOpening> = entries.iter().map(|e| e.opening.clone()).collect();
    let proof = prove_energy(job_id, &claim, &openings, &weights, &mut OsRng)?;
    Ok(ProofSubmission::Energy(EnergySubmission {
        job_id: job_id.to_string(),
        claim,
        proof,
    }))
}

/// The GPU's identity as the hardware attestation names it: as the agent registered it (the
/// registered name, the UUID, the VRAM in whole MiB — the registered `vram_gb` is the same
/// bytes over 2³⁰ — and `power_limit_mw`, the job's registered bound), which is what the
/// platform and `gp4u verify` hold it to.
pub fn gpu_identity(info: &GpuInfo, power_limit_mw: u64) -> GpuIdentity {
    GpuIdentity {
        name: info.registered_name(),
        uuid: info.uuid.clone(),
        vram_mb: info.vram_total_bytes / (1024 * 1024),
        driver_version: info.driver_version.clone(),
        serial: info.serial.clone(),
        power_limit_mw,
    }
}

/// The signed hardware attestation of a job on `gpu`, bounded by `power_limit_mw`.
pub fn hardware_submission(
    job_id: &str,
    node_id: &str,
    gpu: &GpuInfo,
    power_limit_mw: u64,
    digest_entries: &[(i64, ReadingCommitment)],
    key: &SigningKey,
    issued_at_ms: i64,
) -> Result<ProofSubmission, ProofError> {
    let claim = HardwareClaim {
        job_id: job_id.to_string(),
        node_id: node_id.to_string(),
        gpu: gpu_identity(gpu, power_limit_mw),
        telemetry_digest: telemetry_digest(job_id, digest_entries),
        assurance: if gpu.emulated {
            Assurance::Emulated
        } else {
            Assurance::ProviderSigned
        },
        cc_evidence: None,
        issued_at_ms,
    };
    Ok(ProofSubmission::Hardware(sign_hardware(claim, key)?))
}

/// Everything the agent needs to prove a job after it ended.
pub struct ProofJob {
    pub job_id: String,
    pub node_id: String,
    pub readings: JobReadings,
    /// The job's GPU (`None`: no identity known, no hardware attestation).
    pub gpu: Option<GpuInfo>,
    /// The job's power bound as the agent knows it (see the module docs); the platform's word
    /// on it, given with the stored commitments, wins.
    pub power_limit_mw: Option<u64>,
    pub key: Arc<SigningKey>,
}

/// Proves the job's energy and hardware and submits both. Errors are logged.
pub async fn submit_proofs(client: &PlatformClient, job: ProofJob) {
    let (mut entries, mut max_gap_ms, share) = job.readings.snapshot();
    let job_id = job.job_id.clone();
    let mut bound = job.power_limit_mw;
    // What the hardware attestation binds: the commitments the platform stored, in its order.
    let mut digest_entries: Vec<(i64, ReadingCommitment)> = entries
        .iter()
        .map(|entry| (entry.at_ms, entry.commitment))
        .collect();
    // Prove what the platform stored, not what the agent saw acknowledged: a packet whose
    // reply was lost may still have been stored. An older platform without the route: the
    // acknowledged readings.
    match stored_commitments(client, &job_id, &job.node_id).await {
        Ok(answer) => match parse_stored(&answer) {
            Some(Stored {
                commitments: stored,
                max_gap_ms: gap,
                power_limit_mw: registered,
            }) => {
                if let Some(registered) = registered {
                    if bound.is_some_and(|known| known != registered) {
                        tracing::warn!(job_id, registered_mw = registered, known_mw = ?bound,
                            "the platform registered another power limit for the job's GPU: proving with the registered one");
                    }
                    bound = Some(registered);
                }
                digest_entries.clone_from(&stored);
                match job.readings.reconcile(&stored) {
                    Ok(reconciled) => {
                        if reconciled.len() != entries.len() {
                            tracing::info!(
                                job_id,
                                acknowledged = entries.len(),
                                stored = reconciled.len(),
                                "proving the readings the platform stored"
                            );
                        }
                        entries = reconciled;
                        max_gap_ms = gap;
                    }
                    Err(missing) => {
                        tracing::error!(
                            job_id,
                            missing,
                            "the platform stored commitments this agent holds no opening for: no energy proof can cover them"
                        );
                        entries.clear();
                    }
                }
            }
            None => tracing::warn!(
                job_id,
                "a commitment in the platform's list of stored commitments does not decode; proving the acknowledged readings"
            ),
        },
        Err(error) => {
            tracing::warn!(job_id, %error, "could not read the stored commitments; proving the acknowledged readings")
        }
    }
    let Some(limit) = bound else {
        tracing::error!(
            job_id,
            "no power limit is registered for the job's GPU: no energy proof or hardware attestation can be accepted for it (restart the agent: it declares its GPUs' limits at every start)"
        );
        return;
    };
    let entries = Arc::new(entries);
    if entries.is_empty() {
        tracing::warn!(
            job_id,
            "no committed readings were accepted: no energy proof"
        );
    } else {
        let (id, proving) = (job_id.clone(), entries.clone());
        let started = Instant::now();
        let made = tokio::task::spawn_blocking(move || {
            energy_submission(&id, &proving, max_gap_ms, share, limit)
        })
        .await;
        match made {
            Ok(Ok(submission)) => {
                tracing::debug!(job_id, readings = entries.len(), elapsed = ?started.elapsed(), "energy proof made");
                submit(
                    client,
                    &job.node_id,
                    &job_id,
                    "energy",
                    &submission.to_json(),
                )
                .await;
            }
            Ok(Err(error)) => {
                tracing::error!(job_id, %error, "could not prove the job's energy")
            }
            Err(error) => tracing::error!(job_id, %error, "the energy prover failed"),
        }
    }
    match &job.gpu {
        Some(gpu) => {
            match hardware_submission(
                &job_id,
                &job.node_id,
                gpu,
                limit,
                &digest_entries,
                &job.key,
                crate::agent::now_ms(),
            ) {
                Ok(submission) => {
                    submit(
                        client,
                        &job.node_id,
                        &job_id,
                        "hardware",
                        &submission.to_json(),
                    )
                    .await
                }
                Err(error) => {
                    tracing::error!(job_id, %error, "could not sign the hardware attestation")
                }
            }
        }
        None => tracing::warn!(job_id, "the job's GPU is unknown: no hardware attestation"),
    }
}

/// The platform's list of the job's stored commitments, retrying 503/429/transport failures
/// for up to [`SUBMIT_PATIENCE`] (without it, only the readings acknowledged to this run of
/// the agent could be proven: short of the whole job after a restart).
async fn stored_commitments(
    client: &PlatformClient,
    job_id: &str,
    node_id: &str,
) -> Result<gp4u_proto::JobCommitments, crate::client::ClientError> {
    let started = Instant::now();
    loop {
        match client.stored_commitments(job_id, node_id).await {
            Err(error) if error.is_transient() && started.elapsed() < SUBMIT_PATIENCE => {
                tracing::debug!(job_id, %error, "the stored commitments are not available yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => return other,
        }
    }
}

/// Posts one submission, retrying 503/429/transport failures for up to [`SUBMIT_PATIENCE`].
async fn submit(client: &PlatformClient, node_id: &str, job_id: &str, kind: &str, body: &str) {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        match client.submit_proof(node_id, body).await {
            Ok(status) => {
                tracing::info!(job_id, kind, status, "proof accepted by the platform");
                return;
            }
            Err((error, retry_after)) if error.is_transient() => {
                let wait = retry_after.unwrap_or(backoff).max(backoff);
                if started.elapsed() + wait > SUBMIT_PATIENCE {
                    tracing::error!(job_id, kind, %error, "proof not delivered; giving up");
                    return;
                }
                tracing::debug!(job_id, kind, %error, retry_in = ?wait, "proof not taken yet; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
            Err((error, _)) => {
                tracing::error!(job_id, kind, %error, "the platform refused the proof");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gp4u_attest::energy::verify_energy;
    use gp4u_attest::hardware::verify_hardware;

    fn packet(watts: f64) -> TelemetryPacket {
        crate::telemetry::build_packet("job_1", "node_a", None, None, None, None).tap(watts)
    }

    trait Tap {
        fn tap(self, watts: f64) -> Self;
    }
    impl Tap for TelemetryPacket {
        fn tap(mut self, watts: f64) -> Self {
            self.power_draw_watts = watts;
            self
        }
    }

    fn reply(at_ms: i64) -> TelemetryReply {
        TelemetryReply {
            kill_job: false,
            reason: None,
            anomalies: vec![],
            status: "RUNNING".into(),
            at_ms: Some(at_ms),
            max_gap_ms: Some(30_000),
            challenge: None,
        }
    }

    #[test]
    fn commitments_open_to_the_milliwatts_the_platform_stores() {
        let readings = JobReadings::new("job_1", 37.5, None);
        for watts in [0.0, 1.0005, 250.123456, 333.3, 2500.0, -4.0] {
            let mut packet = packet(watts);
            let pending = readings.commit(&mut packet).unwrap();
            // What goes on the wire parses back to the commitment kept.
            let wire = serde_json::to_string(&packet).unwrap();
            let back: TelemetryPacket = serde_json::from_str(&wire).unwrap();
            let sent =
                ReadingCommitment::from_base64(back.power_commitment.as_deref().unwrap()).unwrap();
            assert_eq!(sent, pending.opening.commitment());
            let stored = back.power_draw_watts.clamp(0.0, 2000.0);
            assert_eq!(pending.opening.power_mw, watts_to_mw(stored));
            let expected_ren = (pending.opening.power_mw * 3750).div_ceil(10_000);
            assert_eq!(pending.opening.renewable_mw, expected_ren);
            assert!(pending.opening.renewable_mw <= pending.opening.power_mw);
        }
    }

    #[test]
    fn renewable_rounding_and_share() {
        assert_eq!(share_bp(0.0), 0);
        assert_eq!(share_bp(37.504), 3750);
        assert_eq!(share_bp(100.0), 10_000);
        assert_eq!(share_bp(f64::NAN), 0);
        assert_eq!(renewable_mw(1, 5000), 1);
        assert_eq!(renewable_mw(300_000, 5000), 150_000);
        assert_eq!(renewable_mw(7, 0), 0);
        assert_eq!(renewable_mw(7, 10_000), 7);
    }

    #[test]
    fn the_claim_follows_the_platform_weights() {
        let readings = JobReadings::new("job_1", 0.0, None);
        for (at, watts) in [
            (1_000, 100.0),
            (11_000, 200.0),
            (11_000, 999.0),
            (101_000, 50.0),
        ] {
            let mut packet = packet(watts);
            let pending = readings.commit(&mut packet).unwrap();
            readings.accept(pending, &reply(at));
        }
        let (entries, gap, share) = readings.snapshot();
        assert_eq!(gap, 30_000);
        let (claim, weights) = energy_claim(&entries, gap, share, 700_000).unwrap();
        // w_0 = 0; 10 s; a repeated time 0; a 90 s gap capped at 30 s.
        assert_eq!(weights, vec![0, 10_000, 0, 30_000]);
        assert_eq!(claim.energy_mwms, 10_000 * 200_000 + 30_000 * 50_000);
        assert_eq!(claim.renewable_share_bp, 0);
        // The bound is the registered limit, never raised to fit a reading above it (it used
        // to be raised to the largest reading, which bounded nothing): such readings cannot
        // be proven.
        assert_eq!(claim.power_limit_mw, 700_000);
        assert!(matches!(
            energy_submission("job_1", &entries, gap, share, 700_000),
            Err(ProofError::Energy(
                EnergyProofError::ReadingAboveLimit { .. }
            ))
        ));
    }

    #[test]
    fn readings_above_the_bound_are_sent_and_committed_at_it() {
        let readings = JobReadings::new("job_1", 50.0, Some(450_000));
        let mut sent = Vec::new();
        for (index, (watts, reported)) in [(300.0, 300.0), (450.0004, 450.0004), (700.0, 450.0)]
            .into_iter()
            .enumerate()
        {
            let mut packet = packet(watts);
            let pending = readings.commit(&mut packet).unwrap();
            // The packet carries the reading the commitment opens to: what the platform bills.
            assert_eq!(packet.power_draw_watts, reported, "{watts} W");
            assert_eq!(pending.opening.power_mw, watts_to_mw(reported), "{watts} W");
            let at = 1_000 * (index as i64 + 1);
            sent.push((at, pending.opening.commitment()));
            readings.accept(pending, &reply(at));
        }
        // Proven against the registered limit, the proof verifies.
        let (entries, gap, share) = readings.snapshot();
        let ProofSubmission::Energy(energy) =
            energy_submission("job_1", &entries, gap, share, 450_000).unwrap()
        else {
            panic!("not energy")
        };
        assert_eq!(energy.claim.power_limit_mw, 450_000);
        let weights = interval_weights(&[1_000, 2_000, 3_000], 0, gap).unwrap();
        let points: Vec<_> = sent.iter().map(|(_, c)| *c).collect();
        verify_energy(
            "job_1",
            &energy.claim,
            &points,
            &weights,
            &energy.proof,
            &mut OsRng,
        )
        .unwrap();
    }

    /// The energy proof made from `reconciled` (readings stored at 1, 2 and 3 s) verifies
    /// against the commitments the platform stored.
    fn assert_proves_stored(
        reconciled: &[Committed],
        sent: &[(i64, ReadingCommitment)],
        share: u32,
    ) {
        let submission = energy_submission("job_1", reconciled, 30_000, share, 700_000).unwrap();
        let ProofSubmission::Energy(energy) = submission else {
            panic!("not energy")
        };
        let weights = interval_weights(&[1_000, 2_000, 3_000], 0, 30_000).unwrap();
        let commitments: Vec<_> = sent.iter().map(|(_, c)| *c).collect();
        verify_energy(
            "job_1",
            &energy.claim,
            &commitments,
            &weights,
            &energy.proof,
            &mut OsRng,
        )
        .unwrap();
    }

    #[test]
    fn a_stored_packet_whose_reply_was_lost_is_still_proven() {
        let readings = JobReadings::new("job_1", 50.0, None);
        let mut sent = Vec::new();
        for (index, watts) in [100.0, 200.0, 300.0].into_iter().enumerate() {
            let mut packet = packet(watts);
            let pending = readings.commit(&mut packet).unwrap();
            let commitment =
                ReadingCommitment::from_base64(packet.power_commitment.as_deref().unwrap())
                    .unwrap();
            let at = 1_000 * (index as i64 + 1);
            sent.push((at, commitment));
            // The second reply is lost: the agent never learns the packet was stored.
            if index != 1 {
                readings.accept(pending, &reply(at));
            }
        }
        assert_eq!(readings.len(), 2);
        let reconciled = readings.reconcile(&sent).unwrap();
        assert_eq!(reconciled.len(), 3);
        assert_eq!(reconciled[1].at_ms, 2_000);
        assert_eq!(reconciled[1].opening.power_mw, 200_000);
        assert_eq!(reconciled[1].opening.commitment(), sent[1].1);
        // The proof over all three verifies against what the platform stored.
        assert_proves_stored(&reconciled, &sent, 5_000);
        // A commitment the agent never made cannot be covered.
        let (stranger, _) = commit_reading(
            PowerReading {
                power_mw: 1,
                renewable_mw: 0,
            },
            &mut OsRng,
        );
        let mut with_stranger = sent.clone();
        with_stranger.push((4_000, stranger));
        assert!(matches!(readings.reconcile(&with_stranger), Err(1)));
    }

    #[test]
    fn openings_survive_a_restart_of_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let first = JobReadings::persistent(dir.path(), "job_1", 50.0, None);
        let mut sent = Vec::new();
        for (index, watts) in [100.0, 200.0, 300.0].into_iter().enumerate() {
            let mut packet = packet(watts);
            let pending = first.commit(&mut packet).unwrap();
            let commitment =
                ReadingCommitment::from_base64(packet.power_commitment.as_deref().unwrap())
                    .unwrap();
            let at = 1_000 * (index as i64 + 1);
            sent.push((at, commitment));
            first.accept(pending, &reply(at));
        }
        drop(first);
        // A crash mid-write leaves a torn last line; the journal is private to the provider.
        let path = dir.path().join(OPENINGS_FILE);
        {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            file.write_all(b"{\"commitment\":\"AAAA").unwrap();
        }
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Restarted with another declared share: the openings come back with the share they
        // were committed with, and the whole run is proven.
        let second = JobReadings::persistent(dir.path(), "job_1", 90.0, None);
        assert_eq!(second.openings(), 3);
        assert_eq!(second.len(), 0, "acknowledgements are not journalled");
        let reconciled = second.reconcile(&sent).unwrap();
        let (_, _, share) = second.snapshot();
        assert_eq!(share, 5_000);
        assert_proves_stored(&reconciled, &sent, share);
        // Readings after the restart are journalled too (after the torn line).
        let mut later = packet(400.0);
        second.commit(&mut later).unwrap();
        drop(second);
        assert_eq!(
            JobReadings::persistent(dir.path(), "job_1", 50.0, None).openings(),
            4
        );
        // Without a usable directory the readings stay in memory.
        let memory = JobReadings::persistent(&dir.path().join("missing"), "job_2", 50.0, None);
        let mut unjournalled = packet(100.0);
        assert!(memory.commit(&mut unjournalled).is_some());
        assert_eq!(memory.openings(), 1);
    }

    #[test]
    fn refused_packets_leave_nothing_and_the_cap_holds() {
        let readings = JobReadings::new("job_1", 0.0, None);
        let mut packet = packet(10.0);
        let _dropped = readings.commit(&mut packet).unwrap();
        assert!(readings.is_empty());
        let pending = readings.commit(&mut packet).unwrap();
        let mut no_time = reply(5);
        no_time.at_ms = None;
        readings.accept(pending, &no_time);
        assert!(readings.is_empty());
    }

    #[test]
    fn no_commitment_is_sent_without_room_for_its_opening() {
        let readings = JobReadings::new("job_1", 0.0, None);
        let mut first = packet(10.0);
        let pending = readings.commit(&mut first).unwrap();
        {
            // Openings reloaded over many restarts fill the map before this run's readings.
            let mut inner = readings.lock();
            for n in 0..2 * MAX_READINGS_PER_JOB {
                let mut key = [0u8; 64];
                key[..8].copy_from_slice(&(n as u64).to_be_bytes());
                inner.openings.insert(key, pending.opening.clone());
            }
        }
        let mut full = packet(10.0);
        assert!(readings.commit(&mut full).is_none());
        assert_eq!(full.power_commitment, None);
    }

    #[test]
    fn submissions_parse_and_verify() {
        let readings = JobReadings::new("job_7", 50.0, None);
        let mut at = 1_767_225_600_000;
        let mut points = Vec::new();
        for watts in [120.5, 250.25, 0.0, 299.999, 301.0] {
            let mut packet = packet(watts);
            let pending = readings.commit(&mut packet).unwrap();
            points.push(
                ReadingCommitment::from_base64(packet.power_commitment.as_deref().unwrap())
                    .unwrap(),
            );
            readings.accept(pending, &reply(at));
            at += 10_000;
        }
        let (entries, gap, share) = readings.snapshot();
        let energy = energy_submission("job_7", &entries, gap, share, 330_000).unwrap();
        let parsed = ProofSubmission::from_json(&energy.to_json()).unwrap();
        let ProofSubmission::Energy(energy) = parsed else {
            panic!("not energy")
        };
        assert_eq!(energy.claim.renewable_share_bp, 5000);
        let stamps: Vec<i64> = entries.iter().map(|e| e.at_ms).collect();
        let weights = interval_weights(&stamps, 0, gap).unwrap();
        verify_energy(
            "job_7",
            &energy.claim,
            &points,
            &weights,
            &energy.proof,
            &mut OsRng,
        )
        .unwrap();

        let key = SigningKey::from_bytes(&[7; 32]);
        let gpu = GpuInfo {
            index: 0,
            uuid: "GPU-emulated-0".into(),
            name: "RTX 4090".into(),
            vram_total_bytes: 24 << 30,
            driver_version: "emulated".into(),
            serial: None,
            power_limit_watts: Some(330.0),
            pci_bus_id: None,
            emulated: true,
        };
        let digest: Vec<_> = entries.iter().map(|e| (e.at_ms, e.commitment)).collect();
        let hardware = hardware_submission(
            "job_7",
            "node_a",
            &gpu,
            330_000,
            &digest,
            &key,
            1_767_225_700_000,
        )
        .unwrap();
        let ProofSubmission::Hardware(attestation) =
            ProofSubmission::from_json(&hardware.to_json()).unwrap()
        else {
            panic!("not hardware")
        };
        verify_hardware(&attestation, &key.verifying_key()).unwrap();
        assert_eq!(attestation.assurance, Assurance::Emulated);
        // The GPU as the agent registered it: the name with ` (emulated)`, VRAM in MiB, the
        // job's bound.
        assert_eq!(attestation.gpu.name, "RTX 4090 (emulated)");
        assert_eq!(attestation.gpu.power_limit_mw, 330_000);
        assert_eq!(attestation.gpu.vram_mb, 24 * 1024);
        assert_eq!(
            gp4u_attest::hardware::gpu_mismatches(
                &attestation.gpu,
                &gp4u_attest::hardware::AssignedGpu {
                    uuid: Some("GPU-emulated-0"),
                    name: &gpu.registered_name(),
                    vram_gb: gpu.vram_total_bytes as f64 / 1_073_741_824.0,
                    power_limit_mw: Some(330_000),
                }
            ),
            Vec::<String>::new()
        );
        let listed: Vec<(i64, ReadingCommitment)> =
            stamps.iter().copied().zip(points.iter().copied()).collect();
        assert_eq!(
            attestation.telemetry_digest_bytes().unwrap(),
            telemetry_digest("job_7", &listed)
        );
    }
}
