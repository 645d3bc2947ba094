//! `gp4u verify JOB`: the customer's own check of a job's record (SPEC §8).
//!
//! Everything the platform says about a job is checked against the signed checkpoint of
//! Obsidian, the platform's transparency log, with nothing but the platform's public key:
//!
//! 1. the checkpoint's signature (key given, saved from an earlier run, or fetched and then
//!    only trusted on first use);
//! 2. every entry of the job: its leaf hash is the hash of its body, and its inclusion proof
//!    leads to the checkpoint's root;
//! 3. consistency with the checkpoint seen on an earlier run (`--checkpoint FILE`): the log
//!    only grew, it was not rewritten or forked;
//! 4. the proofs sealed for the job: the hardware attestation's signature by the node key,
//!    its telemetry digest over the sealed commitments, and that it names the GPU sealed with
//!    the job's assignment (`job.assigned`'s `gpu`: UUID, name, VRAM, power limit); the energy
//!    proof against the sealed commitments, weights and measured energy, with exactly that
//!    GPU's registered power limit as its per-reading bound; and that the proofs the platform
//!    serves are the sealed ones;
//! 5. the sealed settlement's arithmetic (`Settlement::check`), and that the settlement the
//!    platform serves is the sealed one.
//!
//! The log is public (SPEC §8): the key, the checkpoint and the consistency proofs are fetched
//! without the token, from the routes every witness of the log reads, and the job's checkpoint
//! must be one of theirs — the latest public checkpoint must extend it (a consistency proof), so
//! a platform cannot show the job's owner a log of its own. The token goes only with the job's
//! own documents: its ledger entries with their bodies and inclusion proofs, its proofs, its
//! settlement. Without a JOB, `gp4u verify --server URL` is a witness of the log alone:
//! the latest checkpoint's signature and its consistency with the one saved last time.
//!
//! [`verify_documents`] does the checking on documents already fetched (or loaded from a
//! `--save` directory), [`verify_log`] the witness's checks; [`run`] fetches, prints and exits.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gp4u_attest::energy::{EnergyClaim, ReadingCommitment, telemetry_digest, verify_energy};
use gp4u_attest::hardware::{AssignedGpu, gpu_mismatches, verify_hardware};
use gp4u_attest::proofs::ProofSubmission;
use gp4u_core::billing::Settlement;
use gp4u_core::energy::{interval_weights, watts_to_mw};
use gp4u_core::events::AssignedGpu as SealedGpu;
use gp4u_ledger::checkpoint::{Checkpoint, open_checkpoint_with};
use gp4u_ledger::hash::{Hash, hash_from_hex, leaf_hash, to_hex};
use gp4u_ledger::note::NoteVerifier;
use gp4u_ledger::verify::{verify_consistency, verify_inclusion};
use gp4u_proto::paths;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The proof kinds a finished job should have.
pub const EXPECTED_PROOFS: [&str; 2] = ["hardware", "energy"];

/// File names inside a `--save` / `--offline` directory.
pub mod files {
    pub const PUBLIC_KEY: &str = "public-key.txt";
    pub const CHECKPOINT: &str = "checkpoint.txt";
    pub const LEDGER: &str = "ledger.json";
    pub const PROOFS: &str = "proofs.json";
    pub const SETTLEMENT: &str = "settlement.json";
    pub const CONSISTENCY: &str = "consistency.json";
    /// The consistency proof from the job's checkpoint to the latest public one.
    pub const LATEST_CONSISTENCY: &str = "latest-consistency.json";
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The job id (job_…). Without it, only the public log is checked: the latest checkpoint's
    /// signature and its consistency with --checkpoint (no token needed).
    pub job: Option<String>,
    /// The control plane, e.g. http://127.0.0.1:8080 (not needed with --offline).
    #[arg(long, env = "GP4U_SERVER")]
    pub server: Option<String>,
    /// Bearer token of the job's owner (or an admin): sent only for the job's own documents,
    /// never to the public log's routes.
    #[arg(long, env = "GP4U_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Checkpoint file: checked for consistency with the log if it exists, then replaced by
    /// the new checkpoint (with the platform key).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The platform's verifier key (`<name>+<hex>+<base64>`), or a file holding it.
    #[arg(long)]
    pub public_key: Option<String>,
    /// Fail when a proof (hardware, energy) is missing instead of warning.
    #[arg(long, requires = "job")]
    pub require_proofs: bool,
    /// Write everything fetched to this directory, for `--offline`.
    #[arg(long, conflicts_with = "offline")]
    pub save: Option<PathBuf>,
    /// Verify from a directory written by `--save`, without the network.
    #[arg(long)]
    pub offline: Option<PathBuf>,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// What was checked, e.g. `checkpoint signature`, `entry 12 (billing.settled)`.
    pub name: String,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

/// Everything checked, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The checkpoint to remember for the next run: set when its signature holds and it is
    /// consistent with the previous one.
    pub new_checkpoint: Option<SavedCheckpoint>,
}

impl Report {
    fn push(&mut self, status: Status, name: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check {
            status,
            name: name.into(),
            detail: detail.into(),
        });
    }
    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push(Status::Pass, name, detail);
    }
    fn warn(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push(Status::Warn, name, detail);
    }
    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push(Status::Fail, name, detail);
    }

    /// True when no check failed (warnings allowed).
    pub fn ok(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|check| check.status == Status::Fail)
    }
}

/// The checkpoint file of `--checkpoint`: the signed note and the key it was checked with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCheckpoint {
    pub public_key: String,
    pub checkpoint: String,
}

/// Where the trusted platform key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `--public-key`.
    Given,
    /// The `--checkpoint` file of an earlier run.
    Saved,
    /// Fetched from the server (or its saved copy) now: trust on first use.
    FirstUse,
}

/// The key checkpoints are checked with.
#[derive(Debug, Clone)]
pub struct Trust {
    pub key: String,
    pub source: KeySource,
}

/// The documents the server serves about a job.
#[derive(Debug, Clone)]
pub struct Documents {
    pub job_id: String,
    /// `GET /api/jobs/{id}/ledger`.
    pub ledger: Value,
    /// `GET /api/jobs/{id}/proofs`, if fetched.
    pub proofs: Option<Value>,
    /// `GET /api/jobs/{id}/settlement`; `None` when it answered 404 or 409 (not settled).
    pub settlement: Option<Value>,
    /// `GET /api/ledger/checkpoint` (the latest public note, fetched after the job's ledger),
    /// if fetched.
    pub latest_checkpoint: Option<String>,
    /// `GET /api/ledger/proof/consistency` from the job's checkpoint to the latest one, when the
    /// latest is larger.
    pub latest_consistency: Option<Value>,
}

/// A sealed entry that verified.
#[derive(Debug, Clone)]
struct Sealed {
    index: u64,
    kind: String,
    payload: Value,
}

/// The verified entries, and the kinds of those that failed (whose checks are then moot).
#[derive(Debug, Default)]
struct Entries {
    sealed: Vec<Sealed>,
    broken: BTreeSet<String>,
}

/// The body of a signed note: everything up to and including the line before the blank line.
fn note_body(note: &str) -> Option<&str> {
    note.find("\n\n").map(|end| &note[..=end])
}

/// The tree size a checkpoint note claims, read without checking its signature (only to ask
/// for the right consistency proof; the note is checked later).
pub fn claimed_size(note: &str) -> Option<u64> {
    Checkpoint::parse_body(note_body(note)?)
        .ok()
        .map(|checkpoint| checkpoint.size)
}

fn parse_verifier(key: &str) -> Result<NoteVerifier, String> {
    NoteVerifier::parse(key.trim())
        .map_err(|error| format!("the platform key is unusable: {error}"))
}

fn open(verifier: &NoteVerifier, note: &str) -> Result<Checkpoint, String> {
    open_checkpoint_with(note, verifier, &verifier.name).map_err(|error| error.to_string())
}

fn hashes(value: &Value) -> Option<Vec<Hash>> {
    value
        .as_array()?
        .iter()
        .map(|hash| hash.as_str().and_then(|text| hash_from_hex(text).ok()))
        .collect()
}

/// Checks the documents. `previous` is the checkpoint of an earlier run; `consistency` the
/// `/api/ledger/proof/consistency` answer from its size to the job checkpoint's size.
pub fn verify_documents(
    documents: &Documents,
    trust: &Trust,
    previous: Option<&SavedCheckpoint>,
    consistency: Option<&Value>,
    require_proofs: bool,
) -> Report {
    let mut report = Report::default();

    // 1. The checkpoint's signature.
    let verifier = match parse_verifier(&trust.key) {
        Ok(verifier) => verifier,
        Err(error) => {
            report.fail("checkpoint signature", error);
            return report;
        }
    };
    let origin_note = key_origin(trust.source);
    let note = documents.ledger["checkpoint"].as_str().unwrap_or_default();
    let checkpoint = match open(&verifier, note) {
        Ok(checkpoint) => checkpoint,
        Err(error) => {
            report.fail(
                "checkpoint signature",
                format!(
                    "the job's checkpoint does not verify under {} ({origin_note}): {error}",
                    verifier.name
                ),
            );
            return report;
        }
    };
    if documents.ledger["tree_size"].as_u64() != Some(checkpoint.size) {
        report.fail(
            "checkpoint signature",
            format!(
                "the ledger answer says tree_size {}, its signed checkpoint says {}",
                documents.ledger["tree_size"], checkpoint.size
            ),
        );
        return report;
    }
    let served_key = documents.ledger["public_key"].as_str().unwrap_or_default();
    if served_key.trim() != trust.key.trim() {
        report.warn(
            "platform key",
            format!(
                "the server now names key {served_key:?}, not the trusted {:?}",
                trust.key.trim()
            ),
        );
    }
    report.pass(
        "checkpoint signature",
        format!(
            "{} size {} root {} signed by {} ({origin_note})",
            checkpoint.origin,
            checkpoint.size,
            to_hex(&checkpoint.root),
            verifier.name
        ),
    );
    if let Some(latest) = &documents.latest_checkpoint {
        check_latest(
            &mut report,
            &verifier,
            &checkpoint,
            latest,
            documents.latest_consistency.as_ref(),
        );
    }

    // 3. Consistency with the checkpoint seen before.
    let consistent = check_consistency(&mut report, &verifier, &checkpoint, previous, consistency);
    if consistent {
        report.new_checkpoint = Some(SavedCheckpoint {
            public_key: trust.key.trim().to_owned(),
            checkpoint: note.to_owned(),
        });
    }

    // 2. Every entry.
    let entries = check_entries(&mut report, documents, &checkpoint);

    // 3. What the platform sealed about the job's end (its entries verified above).
    describe_completion(&mut report, &entries.sealed);

    // 4. Proofs.
    check_proofs(&mut report, documents, &entries.sealed, require_proofs);

    // 5. Settlement.
    check_settlement(&mut report, documents, &entries);
    report
}

/// The checks of a witness of the public log, without a job: the latest checkpoint's signature
/// (`served_key` is the key the server names now) and its consistency with `previous`;
/// `consistency` is the `/api/ledger/proof/consistency` answer from `previous`'s size to the
/// latest's.
pub fn verify_log(
    latest: &str,
    served_key: &str,
    trust: &Trust,
    previous: Option<&SavedCheckpoint>,
    consistency: Option<&Value>,
) -> Report {
    let mut report = Report::default();
    let verifier = match parse_verifier(&trust.key) {
        Ok(verifier) => verifier,
        Err(error) => {
            report.fail("checkpoint signature", error);
            return report;
        }
    };
    let checkpoint = match open(&verifier, latest) {
        Ok(checkpoint) => checkpoint,
        Err(error) => {
            report.fail(
                "checkpoint signature",
                format!(
                    "the latest checkpoint does not verify under {} ({}): {error}",
                    verifier.name,
                    key_origin(trust.source)
                ),
            );
            return report;
        }
    };
    if served_key.trim() != trust.key.trim() {
        report.warn(
            "platform key",
            format!(
                "the server now names key {:?}, not the trusted {:?}",
                served_key.trim(),
                trust.key.trim()
            ),
        );
    }
    report.pass(
        "checkpoint signature",
        format!(
            "{} size {} root {} signed by {} ({})",
            checkpoint.origin,
            checkpoint.size,
            to_hex(&checkpoint.root),
            verifier.name,
            key_origin(trust.source)
        ),
    );
    if check_consistency(&mut report, &verifier, &checkpoint, previous, consistency) {
        report.new_checkpoint = Some(SavedCheckpoint {
            public_key: trust.key.trim().to_owned(),
            checkpoint: latest.to_owned(),
        });
    }
    report
}

fn key_origin(source: KeySource) -> &'static str {
    match source {
        KeySource::Given => "key given with --public-key",
        KeySource::Saved => "key saved with the earlier checkpoint",
        KeySource::FirstUse => {
            "key fetched from the server, trust on first use: pin it with --public-key or --checkpoint"
        }
    }
}

/// The proof in a `/api/ledger/proof/consistency` answer, if the answer is the one from `from`
/// to `to` and parses; an empty proof where none is needed (equal sizes, or from the empty tree).
fn consistency_proof_in(answer: Option<&Value>, from: u64, to: u64) -> Option<Vec<Hash>> {
    if from == to || from == 0 {
        return Some(Vec::new());
    }
    let answer = answer?;
    (answer["from"].as_u64() == Some(from) && answer["to"].as_u64() == Some(to))
        .then(|| hashes(&answer["proof"]))
        .flatten()
}

/// The job's checkpoint is one of the public log's: the latest checkpoint, the one every witness
/// reads without a token, is signed by the same key and extends it. Otherwise the platform
/// could show a job's owner a log of its own (a split view).
fn check_latest(
    report: &mut Report,
    verifier: &NoteVerifier,
    checkpoint: &Checkpoint,
    latest: &str,
    answer: Option<&Value>,
) {
    let head = match open(verifier, latest) {
        Ok(head) => head,
        Err(error) => {
            report.fail(
                "latest checkpoint",
                format!("the public log's latest checkpoint does not verify: {error}"),
            );
            return;
        }
    };
    if head.size < checkpoint.size {
        report.fail(
            "latest checkpoint",
            format!(
                "the public log's latest checkpoint has size {}, smaller than the job's checkpoint \
                 ({}): the job was shown a log the public does not see",
                head.size, checkpoint.size
            ),
        );
        return;
    }
    let Some(proof) = consistency_proof_in(answer, checkpoint.size, head.size) else {
        report.warn(
            "latest checkpoint",
            format!(
                "signed, size {} ≥ the job's {}, but no consistency proof between them is at hand \
                 (saved by an older gp4u verify?): verify online to check that the public log \
                 contains the job's checkpoint",
                head.size, checkpoint.size
            ),
        );
        return;
    };
    match verify_consistency(
        checkpoint.size,
        head.size,
        &proof,
        &checkpoint.root,
        &head.root,
    ) {
        Ok(()) => report.pass(
            "latest checkpoint",
            format!(
                "the public log's latest checkpoint (size {}) extends the job's (size {}): the \
                 job's entries are in the log every witness sees",
                head.size, checkpoint.size
            ),
        ),
        Err(error) => report.fail(
            "latest checkpoint",
            format!(
                "the public log at size {} does not extend the job's checkpoint at size {} (the \
                 job was shown another log): {error}",
                head.size, checkpoint.size
            ),
        ),
    }
}

fn check_consistency(
    report: &mut Report,
    verifier: &NoteVerifier,
    checkpoint: &Checkpoint,
    previous: Option<&SavedCheckpoint>,
    consistency: Option<&Value>,
) -> bool {
    let Some(previous) = previous else {
        report.warn(
            "consistency",
            "no earlier checkpoint to compare with (use --checkpoint FILE to keep one)",
        );
        return true;
    };
    let old_verifier = match parse_verifier(&previous.public_key) {
        Ok(old) => old,
        Err(error) => {
            report.fail(
                "consistency",
                format!("the saved checkpoint's key: {error}"),
            );
            return false;
        }
    };
    if old_verifier.to_key_string() != verifier.to_key_string() {
        report.fail(
            "consistency",
            format!(
                "the saved checkpoint was signed by {}, the log is now checked with {}",
                old_verifier.to_key_string(),
                verifier.to_key_string()
            ),
        );
        return false;
    }
    let old = match open(verifier, &previous.checkpoint) {
        Ok(old) => old,
        Err(error) => {
            report.fail(
                "consistency",
                format!("the saved checkpoint does not verify: {error}"),
            );
            return false;
        }
    };
    if old.size > checkpoint.size {
        report.fail(
            "consistency",
            format!(
                "the log shrank: {} entries before, {} now",
                old.size, checkpoint.size
            ),
        );
        return false;
    }
    let proof = if old.size == checkpoint.size || old.size == 0 {
        Some(Vec::new())
    } else {
        consistency.and_then(|answer| {
            (answer["from"].as_u64() == Some(old.size)
                && answer["to"].as_u64() == Some(checkpoint.size))
            .then(|| hashes(&answer["proof"]))
            .flatten()
        })
    };
    let Some(proof) = proof else {
        let held = match consistency {
            None => "none was served or saved (save with --save DIR --checkpoint FILE to keep \
                     one for that checkpoint)"
                .to_owned(),
            Some(answer)
                if answer["from"].as_u64() == Some(old.size)
                    && answer["to"].as_u64() == Some(checkpoint.size) =>
            {
                "the one at hand does not parse as a list of hashes".to_owned()
            }
            Some(answer) => format!(
                "the one at hand is from size {} to {}",
                answer["from"]
                    .as_u64()
                    .map_or("?".to_owned(), |n| n.to_string()),
                answer["to"]
                    .as_u64()
                    .map_or("?".to_owned(), |n| n.to_string())
            ),
        };
        report.fail(
            "consistency",
            format!(
                "no usable consistency proof from size {} to {}: {held}",
                old.size, checkpoint.size
            ),
        );
        return false;
    };
    match verify_consistency(
        old.size,
        checkpoint.size,
        &proof,
        &old.root,
        &checkpoint.root,
    ) {
        Ok(()) => {
            report.pass(
                "consistency",
                format!(
                    "the log at size {} (root {}) is a prefix of the log at size {}",
                    old.size,
                    to_hex(&old.root),
                    checkpoint.size
                ),
            );
            true
        }
        Err(error) => {
            report.fail(
                "consistency",
                format!(
                    "the log at size {} is not a prefix of the log at size {} (rewritten or forked): {error}",
                    old.size, checkpoint.size
                ),
            );
            false
        }
    }
}

fn check_entries(report: &mut Report, documents: &Documents, checkpoint: &Checkpoint) -> Entries {
    let job_id = documents.job_id.as_str();
    let mut entries: Vec<&Value> = documents.ledger["entries"]
        .as_array()
        .map(|list| list.iter().collect())
        .unwrap_or_default();
    entries.sort_by_key(|entry| entry["index"].as_u64().unwrap_or(u64::MAX));
    if entries.is_empty() {
        report.fail(
            "entries",
            format!("the server returned no sealed entries for job {job_id}"),
        );
        return Entries::default();
    }
    let mut sealed = Vec::new();
    let mut broken = BTreeSet::new();
    for entry in &entries {
        let kind = entry["kind"].as_str().unwrap_or("?");
        let Some(index) = entry["index"].as_u64() else {
            report.fail(format!("entry ? ({kind})"), "has no index");
            broken.insert(kind.to_owned());
            continue;
        };
        let name = format!("entry {index} ({kind})");
        match check_entry(entry, index, kind, job_id, checkpoint) {
            Ok(payload) => sealed.push(Sealed {
                index,
                kind: kind.to_owned(),
                payload,
            }),
            Err(error) => {
                report.fail(name, error);
                broken.insert(kind.to_owned());
            }
        }
    }
    if broken.is_empty() {
        let kinds: Vec<&str> = sealed.iter().map(|entry| entry.kind.as_str()).collect();
        report.pass(
            "entries",
            format!(
                "{} entries hash to their bodies and are included in the checkpoint ({})",
                sealed.len(),
                summarize_kinds(&kinds)
            ),
        );
    }
    if !sealed.iter().any(|entry| entry.kind == "job.created") && !broken.contains("job.created") {
        report.fail(
            "entries",
            format!("no sealed job.created entry for job {job_id}"),
        );
    }
    if let Some(pending) = documents.ledger["pending"]
        .as_u64()
        .filter(|&pending| pending > 0)
    {
        report.warn(
            "entries",
            format!("{pending} entries of the job are not sealed in this checkpoint yet: run again later"),
        );
    }
    Entries { sealed, broken }
}

fn summarize_kinds(kinds: &[&str]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = kinds.iter().peekable();
    while let Some(kind) = iter.next() {
        let mut count = 1;
        while iter.peek() == Some(&kind) {
            iter.next();
            count += 1;
        }
        out.push(if count > 1 {
            format!("{kind}×{count}")
        } else {
            (*kind).to_owned()
        });
    }
    out.join(", ")
}

/// The entry's payload when its hash, inclusion proof and body hold.
fn check_entry(
    entry: &Value,
    index: u64,
    kind: &str,
    job_id: &str,
    checkpoint: &Checkpoint,
) -> Result<Value, String> {
    let body = entry["body"]
        .as_str()
        .ok_or("the server returned no body")?;
    let claimed = entry["leaf_hash"]
        .as_str()
        .and_then(|text| hash_from_hex(text).ok())
        .ok_or("no well-formed leaf_hash")?;
    let computed = leaf_hash(body.as_bytes());
    if computed != claimed {
        return Err(format!(
            "its body does not hash to its leaf hash (body hashes to {}, leaf hash {}): the body was altered",
            to_hex(&computed),
            to_hex(&claimed)
        ));
    }
    let proof = hashes(&entry["inclusion_proof"]).ok_or("no well-formed inclusion_proof")?;
    verify_inclusion(&computed, index, checkpoint.size, &proof, &checkpoint.root).map_err(
        |error| {
            format!(
                "not included in the checkpoint of size {} ({error}): the entry or the tree was altered",
                checkpoint.size
            )
        },
    )?;
    let parsed: Value =
        serde_json::from_str(body).map_err(|error| format!("body is not JSON: {error}"))?;
    if parsed["kind"].as_str() != Some(kind) {
        return Err(format!(
            "the body says kind {}, the server says {kind}",
            parsed["kind"]
        ));
    }
    if parsed["job_id"].as_str() != Some(job_id) {
        return Err(format!(
            "the body is about job {}, not {job_id}",
            parsed["job_id"]
        ));
    }
    Ok(parsed["payload"].clone())
}

/// The job's sealed energy, carbon and Veritas record, as the customer's receipt: these
/// entries passed the inclusion check, so what they say is what the platform committed to.
fn describe_completion(report: &mut Report, sealed: &[Sealed]) {
    if let Some(energy) = last_of(sealed, "job.energy") {
        let payload = &energy.payload;
        let factor = &payload["grid_factor"];
        let grid = match factor["g_co2e_per_kwh"].as_f64() {
            Some(grams) => format!(
                " at {grams} g CO2e/kWh ({}, as of {})",
                factor["source"].as_str().unwrap_or("no source"),
                factor["as_of"].as_str().unwrap_or("?")
            ),
            None => String::new(),
        };
        let eligible = if payload["carbon_credit_eligible"].as_bool() == Some(true) {
            ", carbon-credit eligible"
        } else {
            ""
        };
        report.pass(
            format!("energy and carbon (entry {})", energy.index),
            format!(
                "{:.6} kWh, {:.6} kg CO2e{grid}; renewable {} % declared by the provider{eligible}",
                payload["energy_kwh"].as_f64().unwrap_or(0.0),
                payload["carbon_kg"].as_f64().unwrap_or(0.0),
                payload["renewable_pct"].as_f64().unwrap_or(0.0),
            ),
        );
    }
    if let Some(veritas) = last_of(sealed, "veritas.recorded") {
        let record = &veritas.payload["record"];
        let text = |field: &str| record[field].as_str().unwrap_or("unknown").to_owned();
        report.pass(
            format!("veritas (entry {})", veritas.index),
            format!(
                "{} ({}), exit code {}, {}; GPU {} (driver {}); {}",
                text("image"),
                text("image_digest"),
                record["exit_code"]
                    .as_i64()
                    .map_or("none".to_owned(), |code| code.to_string()),
                text("status"),
                text("gpu_model"),
                text("gpu_driver"),
                if record["reproducible"].as_bool() == Some(true) {
                    "reproducible"
                } else {
                    "not reproducible"
                }
            ),
        );
    }
}

fn last_of<'a>(sealed: &'a [Sealed], kind: &str) -> Option<&'a Sealed> {
    sealed.iter().rev().find(|entry| entry.kind == kind)
}

/// The sealed commitments of the job's last run on `node`: the `telemetry.committed` entries
/// after the last `job.started`, oldest first.
fn sealed_commitments(
    sealed: &[Sealed],
    node: &str,
) -> Result<Vec<(i64, ReadingCommitment)>, String> {
    let since = last_of(sealed, "job.started").map_or(0, |entry| entry.index);
    sealed
        .iter()
        .filter(|entry| {
            entry.kind == "telemetry.committed"
                && entry.index > since
                && entry.payload["node_id"].as_str() == Some(node)
        })
        .map(|entry| {
            let at = entry.payload["at_ms"]
                .as_i64()
                .ok_or_else(|| format!("entry {}: no at_ms", entry.index))?;
            let commitment = entry.payload["commitment"]
                .as_str()
                .ok_or_else(|| format!("entry {}: no commitment", entry.index))
                .and_then(|text| {
                    ReadingCommitment::from_base64(text)
                        .map_err(|error| format!("entry {}: {error}", entry.index))
                })?;
            Ok((at, commitment))
        })
        .collect()
}

/// The GPU sealed with the job's last assignment (its final run's), with that entry's index
/// and node, or why there is none to hold the proofs to.
fn sealed_assignment(sealed: &[Sealed]) -> Result<(u64, String, SealedGpu), String> {
    let entry = last_of(sealed, "job.assigned")
        .ok_or("no sealed job.assigned entry names the GPU the job was assigned")?;
    let node = entry.payload["event"]["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match entry.payload.get("gpu").filter(|gpu| !gpu.is_null()) {
        None => Err(format!(
            "the job's assignment (entry {}) was sealed without the GPU's identity (by a platform \
             from before power limits were recorded)",
            entry.index
        )),
        Some(gpu) => serde_json::from_value(gpu.clone())
            .map(|gpu| (entry.index, node, gpu))
            .map_err(|error| {
                format!(
                    "the GPU sealed with the job's assignment (entry {}) does not parse: {error}",
                    entry.index
                )
            }),
    }
}

/// The sealed assignment a proof of `proof_node` is held to; an error when the assignment is
/// another node's. `None`: nothing sealed to hold it to (said once, by `check_proofs`).
fn assignment_of<'a>(
    assignment: &'a Result<(u64, String, SealedGpu), String>,
    proof_node: &str,
) -> Result<Option<(u64, &'a SealedGpu)>, String> {
    match assignment {
        Ok((index, node, gpu)) if node == proof_node => Ok(Some((*index, gpu))),
        Ok((index, node, _)) => Err(format!(
            "the proof is from node {proof_node}, but the job's last assignment (entry {index}) \
             sealed node {node}"
        )),
        Err(_) => Ok(None),
    }
}

fn check_proofs(
    report: &mut Report,
    documents: &Documents,
    sealed: &[Sealed],
    require_proofs: bool,
) {
    let assignment = sealed_assignment(sealed);
    let job_id = documents.job_id.as_str();
    let served = documents.proofs.as_ref();
    let node_key = served
        .and_then(|proofs| proofs["node_public_key"].as_str())
        .and_then(gp4u_attest::key::parse_public_key);
    let energy = last_of(sealed, "job.energy");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let proof_entries: Vec<&Sealed> = sealed
        .iter()
        .filter(|entry| entry.kind == "proof.verified")
        .collect();
    for entry in &proof_entries {
        let kind = entry.payload["kind"].as_str().unwrap_or("?").to_owned();
        let name = format!("{kind} proof (entry {})", entry.index);
        let submission: ProofSubmission =
            match serde_json::from_value(entry.payload["submission"].clone()) {
                Ok(submission) => submission,
                Err(error) => {
                    report.fail(
                        name,
                        format!("the sealed submission does not parse: {error}"),
                    );
                    continue;
                }
            };
        seen.insert(kind.clone());
        if submission.job_id() != job_id {
            report.fail(
                name,
                format!("the submission is about job {}", submission.job_id()),
            );
            continue;
        }
        let node = entry.payload["node_id"].as_str().unwrap_or_default();
        // The node key sealed with the proof wins over the one served now: a key swapped in
        // the database later cannot make a forged attestation pass.
        let node_key = entry.payload["node_public_key"]
            .as_str()
            .and_then(gp4u_attest::key::parse_public_key)
            .or(node_key);
        let commitments = match sealed_commitments(sealed, node) {
            Ok(commitments) => commitments,
            Err(error) => {
                report.fail(name, format!("the sealed commitments: {error}"));
                continue;
            }
        };
        match &submission {
            ProofSubmission::Hardware(attestation) => {
                let Some(key) = node_key else {
                    report.fail(name, "no usable node public key served for the job's node");
                    continue;
                };
                if attestation.node_id != node {
                    report.fail(
                        name,
                        format!(
                            "the attestation names node {}, the entry {node}",
                            attestation.node_id
                        ),
                    );
                    continue;
                }
                if let Err(error) = verify_hardware(attestation, &key) {
                    report.fail(
                        name,
                        format!("the node's signature does not verify: {error}"),
                    );
                    continue;
                }
                let expected = to_hex(&telemetry_digest(job_id, &commitments));
                if attestation.telemetry_digest != expected {
                    report.fail(
                        name,
                        format!(
                            "telemetry digest {} is not the digest of the {} sealed commitments ({expected})",
                            attestation.telemetry_digest,
                            commitments.len()
                        ),
                    );
                    continue;
                }
                match assignment_of(&assignment, node) {
                    Err(error) => {
                        report.fail(name, error);
                        continue;
                    }
                    Ok(Some((index, gpu))) => {
                        let differ = gpu_mismatches(
                            &attestation.gpu,
                            &AssignedGpu {
                                uuid: gpu.uuid.as_deref(),
                                name: &gpu.name,
                                vram_gb: gpu.vram_gb,
                                power_limit_mw: gpu.power_limit_watts.map(watts_to_mw),
                            },
                        );
                        if !differ.is_empty() {
                            report.fail(
                                name,
                                format!(
                                    "the attestation names another GPU than the job was assigned \
                                     ({} {:?}, sealed in entry {index}): {}",
                                    gpu.gpu_id,
                                    gpu.name,
                                    differ.join("; ")
                                ),
                            );
                            continue;
                        }
                    }
                    Ok(None) => {}
                }
                report.pass(
                    name,
                    format!(
                        "signed by node {node}'s key, {} assurance, GPU {} ({}), covers the {} sealed telemetry commitments",
                        serde_json::to_value(attestation.assurance)
                            .ok()
                            .and_then(|value| value.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        attestation.gpu.name,
                        attestation.gpu.uuid,
                        commitments.len()
                    ),
                );
            }
            ProofSubmission::Energy(energy_submission) => {
                let bound = match assignment_of(&assignment, node) {
                    Err(error) => {
                        report.fail(name, error);
                        continue;
                    }
                    Ok(Some((index, gpu))) => {
                        match check_bound(&energy_submission.claim, index, gpu) {
                            Ok(bound) => Some(bound),
                            Err(error) => {
                                report.fail(name, error);
                                continue;
                            }
                        }
                    }
                    Ok(None) => None,
                };
                match check_energy(
                    job_id,
                    &energy_submission.claim,
                    &energy_submission.proof,
                    &commitments,
                    energy,
                ) {
                    Ok(detail) => report.pass(
                        name,
                        match bound {
                            Some(bound) => format!("{detail} ({bound})"),
                            None => detail,
                        },
                    ),
                    Err(error) => report.fail(name, error),
                }
            }
        }
    }
    if let (Err(why), false) = (&assignment, proof_entries.is_empty()) {
        let detail = format!("{why}: the proofs' power bound and GPU are not checked against it");
        if require_proofs {
            report.fail(
                "assigned gpu",
                format!("{detail} (an error with --require-proofs)"),
            );
        } else {
            report.warn("assigned gpu", detail);
        }
    }
    let missing: Vec<&str> = EXPECTED_PROOFS
        .iter()
        .copied()
        .filter(|kind| !seen.contains(*kind))
        .collect();
    if !missing.is_empty() {
        let detail = format!("no sealed {} proof for job {job_id}", missing.join(" or "));
        if require_proofs {
            report.fail("proofs", detail);
        } else {
            report.warn(
                "proofs",
                format!("{detail} (not required; --require-proofs makes it an error)"),
            );
        }
    }

    // What the server serves now must be what was sealed.
    let Some(served) = served else {
        return;
    };
    let served_list = served["proofs"].as_array().cloned().unwrap_or_default();
    let mut mismatched = false;
    for proof in &served_list {
        let kind = proof["kind"].as_str().unwrap_or("?");
        let sealed: Vec<_> = proof_entries
            .iter()
            .filter(|entry| entry.payload["kind"].as_str() == Some(kind))
            .collect();
        if sealed.is_empty() {
            // Accepted a moment ago and not sealed yet (the log seals within seconds): not
            // evidence of tampering — the missing proof is reported above.
            mismatched = true;
            report.warn(
                format!("served {kind} proof"),
                "served but not sealed in the log yet; verify again in a few seconds",
            );
            continue;
        }
        let matches = sealed
            .iter()
            .any(|entry| entry.payload["submission"] == proof["submission"]);
        if !matches {
            mismatched = true;
            report.fail(
                format!("served {kind} proof"),
                "the proof the server serves is not the one sealed in the log (altered in its database)",
            );
        }
    }
    for entry in &proof_entries {
        let kind = entry.payload["kind"].as_str().unwrap_or("?");
        if !served_list
            .iter()
            .any(|proof| proof["kind"].as_str() == Some(kind))
        {
            mismatched = true;
            report.fail(
                format!("served {kind} proof"),
                format!("sealed in entry {} but no longer served", entry.index),
            );
        }
    }
    if !mismatched && !served_list.is_empty() {
        report.pass(
            "served proofs",
            format!(
                "the {} proofs served are the sealed ones",
                served_list.len()
            ),
        );
    }
}

/// The energy proof's per-reading bound must be exactly the power limit registered for the
/// GPU the job was assigned, as sealed with the assignment. Says so when it holds.
fn check_bound(claim: &EnergyClaim, index: u64, gpu: &SealedGpu) -> Result<String, String> {
    let Some(watts) = gpu.power_limit_watts else {
        return Err(format!(
            "bounds each reading by {} mW, but the GPU the job was assigned ({} {:?}, entry \
             {index}) had no registered power limit: the bound is the provider's own pick",
            claim.power_limit_mw, gpu.gpu_id, gpu.name
        ));
    };
    let registered = watts_to_mw(watts);
    if claim.power_limit_mw != registered {
        return Err(format!(
            "bounds each reading by {} mW, but the GPU the job was assigned ({} {:?}, entry \
             {index}) has a registered power limit of {registered} mW ({watts} W)",
            claim.power_limit_mw, gpu.gpu_id, gpu.name
        ));
    }
    Ok(format!(
        "the registered power limit of the assigned GPU {}, entry {index}",
        gpu.gpu_id
    ))
}

fn check_energy(
    job_id: &str,
    claim: &EnergyClaim,
    proof: &gp4u_attest::energy::EnergyProof,
    commitments: &[(i64, ReadingCommitment)],
    energy: Option<&Sealed>,
) -> Result<String, String> {
    let energy = energy.ok_or("no sealed job.energy entry to check the claim against")?;
    let measured = energy.payload["energy_mwms"]
        .as_str()
        .ok_or("the sealed job.energy entry has no energy_mwms")?;
    if claim.energy_mwms.to_string() != measured {
        return Err(format!(
            "claims {} mW·ms, the platform sealed {measured} mW·ms (entry {})",
            claim.energy_mwms, energy.index
        ));
    }
    // The proof must back the renewable share the job was accounted with (and its carbon-credit
    // eligibility): a claim of at least that share.
    if let Some(sealed_pct) = energy.payload["renewable_pct"].as_f64() {
        let sealed_bp = (sealed_pct * 100.0).round();
        if f64::from(claim.renewable_share_bp) < sealed_bp {
            return Err(format!(
                "claims renewable ≥ {}.{:02} %, less than the {sealed_pct} % the platform sealed (entry {})",
                claim.renewable_share_bp / 100,
                claim.renewable_share_bp % 100,
                energy.index
            ));
        }
    }
    let max_gap = energy.payload["max_gap_ms"]
        .as_i64()
        .ok_or("the sealed job.energy entry has no max_gap_ms")?;
    let timestamps: Vec<i64> = commitments.iter().map(|(at, _)| *at).collect();
    let weights =
        interval_weights(&timestamps, 0, max_gap).map_err(|error| format!("weights: {error}"))?;
    let points: Vec<ReadingCommitment> = commitments.iter().map(|(_, point)| *point).collect();
    verify_energy(
        job_id,
        claim,
        &points,
        &weights,
        proof,
        &mut rand_core::OsRng,
    )
    .map_err(|error| {
        format!(
            "the proof does not verify against the {} sealed commitments: {error}",
            points.len()
        )
    })?;
    Ok(format!(
        "{} mW·ms ({:.6} kWh) over {} sealed readings, each ≤ {} mW, renewable ≥ {}.{:02} %",
        claim.energy_mwms,
        gp4u_core::energy::mwms_to_kwh(u128::from(claim.energy_mwms)),
        points.len(),
        claim.power_limit_mw,
        claim.renewable_share_bp / 100,
        claim.renewable_share_bp % 100
    ))
}

fn check_settlement(report: &mut Report, documents: &Documents, entries: &Entries) {
    let job_id = documents.job_id.as_str();
    let Some(entry) = last_of(&entries.sealed, "billing.settled") else {
        if entries.broken.contains("billing.settled") {
            report.fail(
                "settlement",
                "not checked: its billing.settled entry does not verify (see above)",
            );
        } else if documents.settlement.is_some() {
            report.fail(
                "settlement",
                "the server serves a settlement but none is sealed in the log",
            );
        } else {
            report.warn("settlement", format!("job {job_id} is not settled yet"));
        }
        return;
    };
    let name = format!("settlement (entry {})", entry.index);
    let sealed_value = &entry.payload["settlement"];
    let settlement: Settlement = match serde_json::from_value(sealed_value.clone()) {
        Ok(settlement) => settlement,
        Err(error) => {
            report.fail(
                name,
                format!("the sealed settlement does not parse: {error}"),
            );
            return;
        }
    };
    if settlement.job_id().as_str() != job_id {
        report.fail(
            name,
            format!("the sealed settlement is for job {}", settlement.job_id()),
        );
        return;
    }
    if let Err(error) = settlement.check() {
        report.fail(name, format!("the arithmetic does not hold: {error}"));
        return;
    }
    report.pass(
        name.clone(),
        format!(
            "charged {} = fee {} + provider {} + student programme {}; refunded {}; {} transfers balance",
            settlement.customer_charged,
            settlement.platform_fee,
            settlement.provider_earnings,
            settlement.student_program,
            settlement.refunded,
            settlement.transfers.len()
        ),
    );
    match &documents.settlement {
        None => report.fail(
            "served settlement",
            "sealed in the log, but the server has no settlement for the job",
        ),
        Some(served) if served["exact"] == *sealed_value => {
            report.pass("served settlement", "the settlement the server serves is the sealed one");
        }
        Some(_) => report.fail(
            "served settlement",
            format!(
                "the settlement the server serves differs from the one sealed in entry {} (altered in its database)",
                entry.index
            ),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Fetching, saving, loading and the command.
// ---------------------------------------------------------------------------------------

/// What one run fetched (or loaded).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub public_key: String,
    pub documents: Documents,
    pub consistency: Option<Value>,
}

/// What a witness of the log fetched (or loaded): no job, no token.
#[derive(Debug, Clone)]
pub struct FetchedLog {
    pub public_key: String,
    /// The latest checkpoint.
    pub checkpoint: String,
    /// The consistency proof from the `--checkpoint`'s size to the latest's.
    pub consistency: Option<Value>,
}

/// Who the verifier talks to: the public log is read without the token, so that it is checked
/// from what every witness sees; the job's own documents with the token of its owner (or an
/// admin).
struct Sources {
    public: gp4u_client::Client,
    owner: Option<gp4u_client::Client>,
}

impl Sources {
    fn new(server: &str, token: Option<&str>) -> anyhow::Result<Sources> {
        Ok(Sources {
            public: gp4u_client::Client::new(server, None)?,
            owner: token
                .map(|token| gp4u_client::Client::new(server, Some(token)))
                .transpose()?,
        })
    }

    fn owner(&self) -> anyhow::Result<&gp4u_client::Client> {
        self.owner.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "the job's documents need --token (or GP4U_TOKEN): the job's owner's or an admin's"
            )
        })
    }

    /// A public read, refused with 401 only by a server that breaks SPEC §8.
    /// A refusal of the public log's `GET route`.
    fn public_refusal(route: &str, error: gp4u_client::ClientError) -> anyhow::Error {
        match error.status() {
            Some(401) => anyhow::anyhow!(
                "GET {route}: {error}: this server does not let its log be read without a token \
                 (SPEC §8 says it must)"
            ),
            _ => anyhow::anyhow!("GET {route}: {error}"),
        }
    }

    async fn public_key(&self) -> anyhow::Result<String> {
        self.public
            .ledger_public_key()
            .await
            .map_err(|error| Self::public_refusal(paths::LEDGER_PUBLIC_KEY, error))
    }

    async fn checkpoint(&self) -> anyhow::Result<String> {
        self.public
            .checkpoint()
            .await
            .map_err(|error| Self::public_refusal(paths::LEDGER_CHECKPOINT, error))
    }

    /// `GET /api/ledger/proof/consistency?from=&to=`, when a proof is needed between them.
    async fn consistency(
        &self,
        from: Option<u64>,
        to: Option<u64>,
    ) -> anyhow::Result<Option<Value>> {
        match (from, to) {
            (Some(from), Some(to)) if 0 < from && from < to => {
                let proof = self
                    .public
                    .consistency_proof(from, to)
                    .await
                    .map_err(|error| Self::public_refusal(paths::LEDGER_CONSISTENCY, error))?;
                Ok(Some(serde_json::to_value(proof)?))
            }
            _ => Ok(None),
        }
    }
}

async fn fetch(
    sources: &Sources,
    job: &str,
    previous: Option<&SavedCheckpoint>,
) -> anyhow::Result<Fetched> {
    let public_key = sources.public_key().await?;
    let owner = sources.owner()?;
    let ledger = serde_json::to_value(owner.job_ledger(job).await?)?;
    let proofs = serde_json::to_value(owner.proofs(job).await?)?;
    let settlement = match owner.settlement(job).await {
        Ok(settlement) => Some(serde_json::to_value(settlement)?),
        // 409 NOT_SETTLED: the job has not ended (or settles in a second).
        Err(error) if matches!(error.status(), Some(404 | 409)) => None,
        Err(error) => return Err(error.into()),
    };
    // After the job's ledger, so that the public log has had the time to reach its checkpoint.
    let latest = sources.checkpoint().await?;
    let job_size = ledger["checkpoint"].as_str().and_then(claimed_size);
    let old_size = previous.and_then(|saved| claimed_size(&saved.checkpoint));
    let consistency = sources.consistency(old_size, job_size).await?;
    let latest_consistency = sources.consistency(job_size, claimed_size(&latest)).await?;
    Ok(Fetched {
        public_key,
        documents: Documents {
            job_id: job.to_owned(),
            ledger,
            proofs: Some(proofs),
            settlement,
            latest_checkpoint: Some(latest),
            latest_consistency,
        },
        consistency,
    })
}

async fn fetch_log(
    sources: &Sources,
    previous: Option<&SavedCheckpoint>,
) -> anyhow::Result<FetchedLog> {
    let public_key = sources.public_key().await?;
    let checkpoint = sources.checkpoint().await?;
    let old_size = previous.and_then(|saved| claimed_size(&saved.checkpoint));
    let consistency = sources
        .consistency(old_size, claimed_size(&checkpoint))
        .await?;
    Ok(FetchedLog {
        public_key,
        checkpoint,
        consistency,
    })
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Writes `value` to `path`, or removes `path` (a stale file of an earlier run) when `None`.
fn write_optional_json(path: &Path, value: Option<&Value>) -> anyhow::Result<()> {
    match value {
        Some(value) => write_json(path, value),
        None => match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(error).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        },
    }
}

/// Writes what was fetched into `dir` for `--offline`.
pub fn save(dir: &Path, fetched: &Fetched) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(files::PUBLIC_KEY),
        format!("{}\n", fetched.public_key),
    )?;
    let documents = &fetched.documents;
    if let Some(latest) = &documents.latest_checkpoint {
        std::fs::write(dir.join(files::CHECKPOINT), latest)?;
    }
    write_json(&dir.join(files::LEDGER), &documents.ledger)?;
    if let Some(proofs) = &documents.proofs {
        write_json(&dir.join(files::PROOFS), proofs)?;
    }
    write_optional_json(&dir.join(files::SETTLEMENT), documents.settlement.as_ref())?;
    write_optional_json(&dir.join(files::CONSISTENCY), fetched.consistency.as_ref())?;
    write_optional_json(
        &dir.join(files::LATEST_CONSISTENCY),
        documents.latest_consistency.as_ref(),
    )
}

/// Writes what a witness fetched into `dir` for `--offline` (without a job).
pub fn save_log(dir: &Path, fetched: &FetchedLog) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(files::PUBLIC_KEY),
        format!("{}\n", fetched.public_key),
    )?;
    std::fs::write(dir.join(files::CHECKPOINT), &fetched.checkpoint)?;
    write_optional_json(&dir.join(files::CONSISTENCY), fetched.consistency.as_ref())
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn read_json_optional(path: &Path) -> anyhow::Result<Option<Value>> {
    read_optional(path)?
        .map(|text| {
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
        })
        .transpose()
}

fn read_public_key(dir: &Path) -> anyhow::Result<String> {
    Ok(read_optional(&dir.join(files::PUBLIC_KEY))?
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// Loads a directory written by [`save`].
pub fn load(dir: &Path, job: &str) -> anyhow::Result<Fetched> {
    let ledger = read_json_optional(&dir.join(files::LEDGER))?.with_context(|| {
        format!(
            "{} has no {}: was it written by --save?",
            dir.display(),
            files::LEDGER
        )
    })?;
    if ledger["job_id"].as_str().is_some_and(|saved| saved != job) {
        bail!(
            "{} holds job {}, not {job}",
            dir.display(),
            ledger["job_id"]
        );
    }
    Ok(Fetched {
        public_key: read_public_key(dir)?,
        documents: Documents {
            job_id: job.to_owned(),
            ledger,
            proofs: read_json_optional(&dir.join(files::PROOFS))?,
            settlement: read_json_optional(&dir.join(files::SETTLEMENT))?,
            latest_checkpoint: read_optional(&dir.join(files::CHECKPOINT))?,
            latest_consistency: read_json_optional(&dir.join(files::LATEST_CONSISTENCY))?,
        },
        consistency: read_json_optional(&dir.join(files::CONSISTENCY))?,
    })
}

/// Loads a directory written by [`save_log`] (or the log's part of one written by [`save`]).
pub fn load_log(dir: &Path) -> anyhow::Result<FetchedLog> {
    let checkpoint = read_optional(&dir.join(files::CHECKPOINT))?.with_context(|| {
        format!(
            "{} has no {}: was it written by --save?",
            dir.display(),
            files::CHECKPOINT
        )
    })?;
    Ok(FetchedLog {
        public_key: read_public_key(dir)?,
        checkpoint,
        consistency: read_json_optional(&dir.join(files::CONSISTENCY))?,
    })
}

/// `--public-key`: the key itself, or a file holding it.
fn given_key(value: &str) -> anyhow::Result<String> {
    if NoteVerifier::parse(value.trim()).is_ok() {
        return Ok(value.trim().to_owned());
    }
    let text = std::fs::read_to_string(value).with_context(|| {
        format!("--public-key {value:?} is neither a verifier key nor a readable file")
    })?;
    let key = text.trim().to_owned();
    NoteVerifier::parse(&key).with_context(|| format!("{value}: not a verifier key"))?;
    Ok(key)
}

/// The key to check checkpoints with: given, else saved with the earlier checkpoint, else the
/// one the server names (trust on first use).
fn trusted_key(
    args: &VerifyArgs,
    previous: Option<&SavedCheckpoint>,
    served: &str,
) -> anyhow::Result<Trust> {
    Ok(match (&args.public_key, previous) {
        (Some(value), _) => Trust {
            key: given_key(value)?,
            source: KeySource::Given,
        },
        (None, Some(saved)) => Trust {
            key: saved.public_key.clone(),
            source: KeySource::Saved,
        },
        (None, None) => Trust {
            key: served.to_owned(),
            source: KeySource::FirstUse,
        },
    })
}

/// The command: fetch (or load), verify, print, save. `Ok(true)` when everything held.
pub async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    run_to(args, &mut std::io::stdout()).await
}

/// [`run`], the report written to `out` (`gp4u run` keeps standard output for the job's own).
pub async fn run_to(args: VerifyArgs, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    match &args.job {
        Some(job) => writeln!(out, "gp4u verify {job}{}", offline_mark(&args))?,
        None => writeln!(out, "gp4u verify: the public log{}", offline_mark(&args))?,
    }
    let report = evaluate(&args).await?;
    for check in &report.checks {
        writeln!(out, "{check}")?;
    }
    if let (Some(path), Some(_)) = (&args.checkpoint, &report.new_checkpoint) {
        writeln!(out, "checkpoint saved to {}", path.display())?;
    }
    if report.ok() {
        writeln!(out, "all checks passed")?;
        return Ok(true);
    }
    for failure in report.failures() {
        eprintln!("FAILED {}: {}", failure.name, failure.detail);
    }
    Ok(false)
}

/// [`run`] without printing (for `gp4u run --json`): whether every check passed.
pub async fn check(args: VerifyArgs) -> anyhow::Result<bool> {
    Ok(evaluate(&args).await?.ok())
}

/// Runs the checks and keeps the new checkpoint (`--checkpoint`).
async fn evaluate(args: &VerifyArgs) -> anyhow::Result<Report> {
    let previous: Option<SavedCheckpoint> = match &args.checkpoint {
        Some(path) => read_optional(path)?
            .map(|text| {
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: not a checkpoint file written by gp4u verify",
                        path.display()
                    )
                })
            })
            .transpose()?,
        None => None,
    };
    let report = match &args.job {
        Some(job) => verify_job(args, job, previous.as_ref()).await?,
        None => witness_log(args, previous.as_ref()).await?,
    };
    if let (Some(path), Some(new)) = (&args.checkpoint, &report.new_checkpoint) {
        let text = serde_json::to_string_pretty(new)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn offline_mark(args: &VerifyArgs) -> &'static str {
    if args.offline.is_some() {
        " (offline)"
    } else {
        ""
    }
}

async fn verify_job(
    args: &VerifyArgs,
    job: &str,
    previous: Option<&SavedCheckpoint>,
) -> anyhow::Result<Report> {
    let fetched = match &args.offline {
        Some(dir) => load(dir, job)?,
        None => {
            let Some(server) = &args.server else {
                bail!("--server is needed unless --offline DIR is given");
            };
            let Some(token) = &args.token else {
                bail!(
                    "--token (or GP4U_TOKEN) is needed for job {job}'s own documents — its ledger \
                     entries with their bodies, its proofs and settlement — unless --offline DIR \
                     is given; without a job, `gp4u verify --server URL` checks the public log \
                     alone, no token needed"
                );
            };
            fetch(&Sources::new(server, Some(token))?, job, previous).await?
        }
    };
    if let Some(dir) = &args.save {
        save(dir, &fetched)?;
    }
    let trust = trusted_key(args, previous, &fetched.public_key)?;
    Ok(verify_documents(
        &fetched.documents,
        &trust,
        previous,
        fetched.consistency.as_ref(),
        args.require_proofs,
    ))
}

async fn witness_log(
    args: &VerifyArgs,
    previous: Option<&SavedCheckpoint>,
) -> anyhow::Result<Report> {
    let fetched = match &args.offline {
        Some(dir) => load_log(dir)?,
        None => {
            let Some(server) = &args.server else {
                bail!("--server is needed unless --offline DIR is given");
            };
            // No token, even when one is configured: the log is checked as any witness sees it.
            fetch_log(&Sources::new(server, None)?, previous).await?
        }
    };
    if let Some(dir) = &args.save {
        save_log(dir, &fetched)?;
    }
    let trust = trusted_key(args, previous, &fetched.public_key)?;
    Ok(verify_log(
        &fetched.checkpoint,
        &fetched.public_key,
        &trust,
        previous,
        fetched.consistency.as_ref(),
    ))
}

#[cfg(test)]
mod tests {
    use gp4u_attest::energy::{PowerReading, commit_reading, prove_energy};
    use gp4u_core::energy::interval_weights;
    use rand_core::OsRng;
    use serde_json::json;

    use super::*;

    /// A proof of three readings at 50 % renewable, and the sealed energy entry to check it by.
    fn proven(
        sealed_pct: f64,
    ) -> (
        EnergyClaim,
        gp4u_attest::energy::EnergyProof,
        Vec<(i64, ReadingCommitment)>,
        Sealed,
    ) {
        let times = [1_000, 2_000, 3_000];
        let weights = interval_weights(&times, 0, 30_000).unwrap();
        let mut openings = Vec::new();
        let mut commitments = Vec::new();
        for (at, power_mw) in times.iter().zip([100_000_u64, 200_000, 300_000]) {
            let (commitment, opening) = commit_reading(
                PowerReading {
                    power_mw,
                    renewable_mw: power_mw / 2,
                },
                &mut OsRng,
            );
            commitments.push((*at, commitment));
            openings.push(opening);
        }
        let energy_mwms = weights
            .iter()
            .zip(&openings)
            .map(|(w, o)| w * o.power_mw)
            .sum();
        let claim = EnergyClaim {
            energy_mwms,
            renewable_share_bp: 5_000,
            power_limit_mw: 700_000,
        };
        let proof = prove_energy("job_1", &claim, &openings, &weights, &mut OsRng).unwrap();
        let sealed = Sealed {
            index: 7,
            kind: "job.energy".into(),
            payload: json!({"energy_mwms": energy_mwms.to_string(), "max_gap_ms": 30_000,
                            "renewable_pct": sealed_pct}),
        };
        (claim, proof, commitments, sealed)
    }

    /// A proof the server accepted a moment ago and the log has not sealed yet is not
    /// "altered" (it failed `gp4u run`'s verification whenever the job ended fast); one that
    /// differs from its sealed entry still is.
    #[test]
    fn a_served_proof_not_yet_sealed_is_a_warning_an_altered_one_a_failure() {
        let submission = json!({"job_id": "job_1", "claim": {"energy_mwms": "5"}});
        let documents = Documents {
            job_id: "job_1".into(),
            ledger: Value::Null,
            proofs: Some(json!({"proofs": [{"kind": "energy", "submission": submission}]})),
            settlement: None,
            latest_checkpoint: None,
            latest_consistency: None,
        };
        let statuses = |sealed: &[Sealed]| {
            let mut report = Report::default();
            check_proofs(&mut report, &documents, sealed, false);
            report
                .checks
                .iter()
                .filter(|check| check.name == "served energy proof")
                .map(|check| check.status)
                .collect::<Vec<_>>()
        };
        assert_eq!(statuses(&[]), [Status::Warn]);
        let altered = Sealed {
            index: 3,
            kind: "proof.verified".into(),
            payload: json!({"job_id": "job_1", "kind": "energy",
                            "submission": {"job_id": "job_1", "claim": {"energy_mwms": "6"}}}),
        };
        assert_eq!(statuses(&[altered]), [Status::Fail]);
    }

    #[test]
    fn the_energy_proof_must_back_the_sealed_renewable_share() {
        let (claim, proof, commitments, sealed) = proven(50.0);
        let passed = check_energy("job_1", &claim, &proof, &commitments, Some(&sealed)).unwrap();
        assert!(passed.contains("renewable ≥ 50.00 %"), "{passed}");
        // A platform that sealed a larger share than the proof backs is caught.
        let (claim, proof, commitments, sealed) = proven(85.0);
        let failed =
            check_energy("job_1", &claim, &proof, &commitments, Some(&sealed)).unwrap_err();
        assert!(
            failed.contains("85 % the platform sealed (entry 7)"),
            "{failed}"
        );
        // A smaller sealed share is backed by the proof.
        let (claim, proof, commitments, sealed) = proven(20.0);
        assert!(check_energy("job_1", &claim, &proof, &commitments, Some(&sealed)).is_ok());
    }

    fn assigned(gpu: Value) -> Sealed {
        Sealed {
            index: 3,
            kind: "job.assigned".into(),
            payload: json!({"job_id": "job_1",
                            "event": {"event": "assigned", "node_id": "node_a", "gpu_id": "gpu_a"},
                            "gpu": gpu}),
        }
    }

    #[test]
    fn the_energy_bound_must_be_the_sealed_assignments_power_limit() {
        let (claim, ..) = proven(50.0);
        assert_eq!(claim.power_limit_mw, 700_000);
        let gpu = |watts: Value| {
            json!({"gpu_id": "gpu_a", "uuid": "GPU-1", "name": "RTX 4090", "vram_gb": 24.0,
                   "power_limit_watts": watts})
        };
        let sealed = [assigned(gpu(json!(700.0)))];
        let assignment = sealed_assignment(&sealed);
        let (index, held) = assignment_of(&assignment, "node_a").unwrap().unwrap();
        assert_eq!(index, 3);
        let passed = check_bound(&claim, index, held).unwrap();
        assert!(passed.contains("gpu_a, entry 3"), "{passed}");
        // A bound above or below the registered limit is named with both numbers.
        for (watts, registered) in [
            (450.0, "450000 mW"),
            (700.001, "700001 mW"),
            (1000.0, "1000000 mW"),
        ] {
            let sealed = [assigned(gpu(json!(watts)))];
            let assignment = sealed_assignment(&sealed);
            let (index, held) = assignment_of(&assignment, "node_a").unwrap().unwrap();
            let failed = check_bound(&claim, index, held).unwrap_err();
            assert!(
                failed.contains("bounds each reading by 700000 mW") && failed.contains(registered),
                "{failed}"
            );
        }
        // No registered limit: no bound can be the registered one.
        let sealed = [assigned(gpu(Value::Null))];
        let assignment = sealed_assignment(&sealed);
        let (index, held) = assignment_of(&assignment, "node_a").unwrap().unwrap();
        let failed = check_bound(&claim, index, held).unwrap_err();
        assert!(failed.contains("no registered power limit"), "{failed}");
        // A proof from another node than the sealed assignment's.
        let failed = assignment_of(&assignment, "node_b").unwrap_err();
        assert!(failed.contains("sealed node node_a"), "{failed}");
        // An assignment sealed before GPUs were sealed with it: nothing to hold the proofs to.
        let old = Sealed {
            payload: json!({"job_id": "job_1",
                            "event": {"event": "assigned", "node_id": "node_a", "gpu_id": "gpu_a"}}),
            ..assigned(Value::Null)
        };
        let none = [old];
        let why = sealed_assignment(&none).unwrap_err();
        assert!(why.contains("sealed without the GPU's identity"), "{why}");
        assert!(matches!(
            assignment_of(&sealed_assignment(&none), "node_a"),
            Ok(None)
        ));
        assert!(sealed_assignment(&[]).is_err());
    }
}
