//! Obsidian, the sealer: every outbox event becomes an entry of the append-only log, in outbox
//! order, and every append is followed by a checkpoint signed with the platform key.
//!
//! Why the outbox: every state change and its event commit together, and outbox positions are
//! gap-free and follow commit order, so sealing "everything up to position p" is complete by
//! construction — nothing that happened can be missing from the log, and nothing is sealed
//! twice (an entry records the position it seals; appends skip positions already sealed).
//! One sequencer per log: appends serialise on the log's lock in the store, so replicas
//! sealing at once queue instead of forking the tree.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use gp4u_ledger::checkpoint::{Checkpoint, sign_checkpoint};
use gp4u_ledger::hash::Hash;
use gp4u_ledger::tree::{NodeId, ProofPlan, assemble};
use gp4u_store::{Envelope, NewLedgerEntry, StoreError};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::state::AppState;

/// How often the sealer looks for events when the bus is quiet.
const SEAL_POLL: Duration = Duration::from_millis(200);
/// The least time between two appends while events keep coming: under load the sealer
/// appends what gathered meanwhile as one batch (one transaction, one checkpoint) instead of
/// a small append per bus wake-up.
const SEAL_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// The log's identity and signing key.
pub struct Obsidian {
    /// Origin line of checkpoints and the key name of their signature.
    pub origin: String,
    key: SigningKey,
    /// `<name>+<hex id>+<base64(0x01 ‖ key)>`, as `GET /api/ledger/public-key` serves it.
    pub verifier_key: String,
    /// Entries per append at most.
    pub batch: i64,
}

impl Obsidian {
    pub fn new(origin: &str, key: SigningKey, batch: i64) -> Result<Obsidian, String> {
        let verifier_key = gp4u_ledger::note::verifier_key(origin, &key.verifying_key())
            .map_err(|error| format!("ledger origin {origin:?}: {error}"))?;
        Ok(Obsidian {
            origin: origin.to_owned(),
            key,
            verifier_key,
            batch,
        })
    }

    /// The signed note for a tree of `size` with `root`.
    pub fn sign(&self, size: u64, root: Hash) -> Result<String, String> {
        sign_checkpoint(
            &Checkpoint::new(self.origin.clone(), size, root),
            &self.origin,
            &self.key,
        )
        .map_err(|error| format!("signing checkpoint: {error}"))
    }
}

/// The job an event is about: the payload's `job_id`, else the aggregate of a `job.*` event.
fn job_of(envelope: &Envelope) -> Option<String> {
    if let Some(job) = envelope.payload.get("job_id").and_then(Value::as_str) {
        return Some(job.to_owned());
    }
    envelope
        .topic
        .starts_with("job.")
        .then(|| envelope.aggregate_id.clone())
}

/// The leaf data of an event: canonical JSON (keys sorted, no spaces), so that anyone can read
/// it and the hash covers every field.
pub fn entry_body(envelope: &Envelope) -> String {
    json!({
        "v": 1,
        "position": envelope.position,
        "kind": envelope.topic,
        "subject": envelope.aggregate_id,
        "job_id": job_of(envelope),
        "at_ms": envelope.created_at_ms,
        "payload": envelope.payload,
    })
    .to_string()
}

/// Seals everything the outbox holds beyond what is sealed. Returns the entries appended.
pub async fn seal_once(state: &AppState) -> Result<u64, StoreError> {
    let obsidian = &state.obsidian;
    let mut total = 0;
    loop {
        let sealed = state.store.ledger_sealed_position().await?;
        let events = state.store.read_outbox(sealed, obsidian.batch).await?;
        if events.is_empty() {
            return Ok(total);
        }
        let entries: Vec<NewLedgerEntry> = events
            .iter()
            .map(|envelope| NewLedgerEntry {
                source_position: envelope.position,
                kind: envelope.topic.clone(),
                job_id: job_of(envelope),
                body: entry_body(envelope),
            })
            .collect();
        let appended = state.store.append_ledger(&entries, state.now_ms()).await?;
        total += appended.appended;
        if appended.appended > 0 {
            match obsidian.sign(appended.size, appended.root) {
                Ok(note) => {
                    state
                        .store
                        .save_checkpoint(appended.size, &appended.root, &note, state.now_ms())
                        .await?;
                }
                Err(error) => tracing::error!(%error, "checkpoint not signed"),
            }
        }
        if i64::try_from(events.len()).unwrap_or(i64::MAX) < obsidian.batch {
            return Ok(total);
        }
    }
}

/// Signed checkpoints kept in the database (one is written per append, at most four a second
/// under load); older ones are pruned every [`PRUNE_EVERY`]. Only the newest is served.
pub const KEEP_CHECKPOINTS: u64 = 10_000;
/// How often old checkpoints are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Runs the sealer until `stopping`: woken by the bus, and by a poll for other replicas' events.
pub async fn run_sealer(state: AppState, mut stopping: watch::Receiver<bool>) {
    let mut events = state.bus.subscribe();
    let mut pruned_at = tokio::time::Instant::now();
    loop {
        let started = tokio::time::Instant::now();
        if let Err(error) = seal_once(&state).await {
            tracing::warn!(%error, "sealing the ledger failed; retrying");
        }
        if started.duration_since(pruned_at) >= PRUNE_EVERY {
            pruned_at = started;
            match state.store.prune_checkpoints(KEEP_CHECKPOINTS).await {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "old checkpoints pruned"),
                Err(error) => tracing::warn!(%error, "pruning old checkpoints failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + SEAL_MIN_INTERVAL) => {}
            _ = stopping.changed() => {
                let _ = seal_once(&state).await;
                return;
            }
        }
        // Wake-ups that came during the pause are covered by the next pass.
        while events.try_recv().is_ok() {}
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(SEAL_POLL) => {}
            _ = stopping.changed() => {
                // One last pass so that what was committed before shutdown is sealed.
                let _ = seal_once(&state).await;
                return;
            }
        }
    }
}

/// Fetches the stored nodes a proof plan names and puts the proof together.
/// A stored node the plan needs and the store lacks is corruption; a busy database stays a
/// store error (503 with Retry-After, not 500).
pub async fn proof_from_plan(state: &AppState, plan: &ProofPlan) -> Result<Vec<Hash>, StoreError> {
    let ids: Vec<NodeId> = plan.iter().flatten().copied().collect();
    let nodes = state.store.ledger_nodes(&ids).await?;
    assemble(plan, |id| nodes.get(&id).copied())
        .map_err(|error| StoreError::Corrupt(format!("ledger proof: {error}")))
}
