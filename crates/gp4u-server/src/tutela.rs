//! Tutela, the enforcement side of stage 4 (SPEC §7): what happens to jobs and providers
//! when telemetry says something is wrong, or stops saying anything.
//!
//! - [`Tutela`] holds the settings, the platform key, each job's recent telemetry window
//!   (filled from the database on a miss, so a restart or another replica loses nothing),
//!   the per-node telemetry rate limit, and the group-commit writer of telemetry rows.
//! - [`end_attempt`] fails a job or, for a provider-fault reason with retries left, puts it
//!   back in the queue for another node; [`slash`] and [`eject`] act on providers.
//! - [`run_reapers`] is the heartbeat reaper (with the restart grace and the breaker) and the
//!   server-side duration check. Visibility challenges are [`crate::visibility`]'s.
//!
//! The rules themselves are pure, in `gp4u_core::tutela`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use gp4u_core::ids::{JobId, NodeId};
use gp4u_core::job::{EndedBy, FailureReason, JobInput, JobStatus, fail_or_retry, transition};
use gp4u_core::manifest::GpuTarget;
use gp4u_core::pricing::duration_cap;
use gp4u_core::tutela::{
    HeartbeatConfig, HeartbeatDecision, LiveJob, SlashKind, TelemetrySample, judge_heartbeats,
};
use gp4u_store::{
    Attempt, JobRecord, OutboxEvent, SlashRecord, Store, StoreError, StoreResult, TelemetryRow,
    UserRecord,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::sync::{OnceCell, broadcast, mpsc, oneshot};

use crate::config::TutelaSettings;
use crate::placement::job_events;
use crate::state::AppState;

/// Jobs whose windows are cached at most; beyond it the cache starts over (windows reload
/// from the database on a miss).
const MAX_CACHED_WINDOWS: usize = 200_000;
/// Nodes whose rate-limit buckets are kept at most; full buckets are dropped first.
const MAX_BUCKETS: usize = 100_000;
/// Jobs the reapers look at per round.
const REAPER_BATCH: i64 = 10_000;

type WriteRequest = (TelemetryRow, oneshot::Sender<Result<bool, String>>);

/// What the ingestion route needs to know of a live job on every packet, read once when its
/// window is loaded. The database stays the judge: a packet is written only while the job is
/// RUNNING on its node (checked by the write itself), so a stale fact can delay a refusal by
/// one packet but never let a write through.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub node_id: NodeId,
    pub owner_id: gp4u_core::ids::UserId,
    pub status: JobStatus,
    pub started_at_ms: Option<i64>,
    /// 1.1 × the declared duration, in milliseconds.
    pub cap_ms: i64,
    pub emulated: bool,
}

/// A job's recent samples and its facts.
#[derive(Debug, Clone)]
pub struct Window {
    pub samples: VecDeque<TelemetrySample>,
    pub facts: JobFacts,
}

/// 1.1 × the job's declared duration, in milliseconds.
pub fn cap_ms(job: &JobRecord) -> i64 {
    // micro-hours × 3600 s × 1000 ms / 1e6 = micro-hours × 3.6
    duration_cap(job.manifest.expected_duration)
        .micro_hours()
        .saturating_mul(36)
        / 10
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Stage 4's shared state.
pub struct Tutela {
    pub settings: TutelaSettings,
    /// Signs visibility challenges and ledger checkpoints.
    pub platform_key: SigningKey,
    /// When this control plane started: the heartbeat reaper's restart grace counts from it.
    pub started_ms: i64,
    windows: Mutex<HashMap<JobId, Window>>,
    /// Node → owner. A node's owner never changes, so this never goes stale.
    owners: Mutex<HashMap<NodeId, gp4u_core::ids::UserId>>,
    /// The hot path's users, each with when it was read; at most `cache_ttl_ms` old, and
    /// dropped at once when this replica changes them.
    users: Mutex<HashMap<gp4u_core::ids::UserId, (UserRecord, i64)>>,
    buckets: Mutex<HashMap<NodeId, Bucket>>,
    writer: OnceCell<mpsc::Sender<WriteRequest>>,
    breaker_open: AtomicBool,
    /// The open visibility challenges, handed to agents in telemetry replies.
    pub challenges: crate::visibility::ChallengeBook,
    /// Each sample this replica stored, as it is stored: what `GET /api/jobs/{id}/telemetry
    /// ?follow=1` (and so the console's live charts) sends on at once. A follower that falls
    /// behind, or a sample stored by another replica, is caught up from the database.
    pub live: broadcast::Sender<LiveSample>,
}

/// A sample just stored, for live followers.
#[derive(Debug, Clone)]
pub struct LiveSample {
    pub job_id: JobId,
    pub sample: TelemetrySample,
    pub emulated: bool,
}

/// Samples a live follower may fall behind by before it is caught up from the database.
const LIVE_CAPACITY: usize = 1024;

impl std::fmt::Debug for Tutela {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tutela")
            .field("settings", &self.settings)
            .field("started_ms", &self.started_ms)
            .finish_non_exhaustive()
    }
}

impl Tutela {
    pub fn new(settings: TutelaSettings, platform_key: SigningKey, started_ms: i64) -> Tutela {
        Tutela {
            settings,
            platform_key,
            started_ms,
            windows: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            writer: OnceCell::new(),
            breaker_open: AtomicBool::new(false),
            live: broadcast::channel(LIVE_CAPACITY).0,
            challenges: Default::default(),
        }
    }

    /// The platform's public key, as agents receive it at registration.
    pub fn platform_public_key(&self) -> String {
        gp4u_attest::key::public_key_base64(&self.platform_key)
    }

    /// Whether the heartbeat breaker is open now (most nodes silent: nothing is failed).
    pub fn breaker_open(&self) -> bool {
        self.breaker_open.load(Ordering::SeqCst)
    }

    fn window_len(&self) -> usize {
        let rules = &self.settings.rules;
        rules
            .inference
            .max_window_samples
            .max(rules.thermal_consecutive_samples)
            .clamp(1, 1000)
    }

    /// Takes one telemetry token of `node`'s bucket; `Err(retry_after_s)` when it is empty.
    pub fn take_token(&self, node: &NodeId, now_ms: i64) -> Result<(), u64> {
        let rate = self.settings.telemetry_per_node_per_s;
        let burst = self.settings.telemetry_burst_per_node;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(node) {
            #[allow(clippy::cast_precision_loss)] // milliseconds since a recent instant
            buckets.retain(|_, bucket| {
                bucket.tokens + (now_ms - bucket.at_ms) as f64 / 1000.0 * rate < burst
            });
        }
        let bucket = buckets.entry(node.clone()).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        #[allow(clippy::cast_precision_loss)]
        let elapsed_s = (now_ms - bucket.at_ms).max(0) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed_s * rate).min(burst);
        bucket.at_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
            Err(wait)
        }
    }

    /// The facts of a job whose window this replica holds.
    pub fn facts(&self, job: &JobId) -> Option<JobFacts> {
        self.windows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(job)
            .map(|window| window.facts.clone())
    }

    /// Loads a live job's window: its facts from `job` and its latest samples from the
    /// database (a restart or another replica loses nothing).
    pub async fn load_window(&self, store: &Store, job: &JobRecord) -> StoreResult<JobFacts> {
        let keep = self.window_len();
        let samples = store
            .recent_telemetry(&job.id, i64::try_from(keep).unwrap_or(0))
            .await?;
        let emulated = match &job.state.gpu_id {
            Some(gpu) => store.get_gpu(gpu).await?.is_some_and(|gpu| gpu.emulated),
            None => false,
        };
        let node_id = job
            .state
            .node_id
            .clone()
            .ok_or_else(|| StoreError::Conflict(format!("job {} has no node", job.id)))?;
        let facts = JobFacts {
            node_id,
            owner_id: job.owner_id.clone(),
            status: job.state.status,
            started_at_ms: job.state.started_at_ms,
            cap_ms: cap_ms(job),
            emulated,
        };
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if windows.len() >= MAX_CACHED_WINDOWS {
            windows.clear();
        }
        windows.insert(
            job.id.clone(),
            Window {
                samples: samples.into_iter().collect(),
                facts: facts.clone(),
            },
        );
        Ok(facts)
    }

    /// Records that this replica started the job.
    pub fn started(&self, job: &JobId, started_at_ms: Option<i64>) {
        if let Some(window) = self
            .windows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get_mut(job)
        {
            window.facts.status = JobStatus::Running;
            window.facts.started_at_ms = started_at_ms;
        }
    }

    /// Appends `sample` to the job's window and returns the window, oldest first; `None` when
    /// the window is not held (load it first).
    pub fn push(&self, job: &JobId, sample: TelemetrySample) -> Option<Vec<TelemetrySample>> {
        let keep = self.window_len();
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let window = windows.get_mut(job)?;
        window.samples.push_back(sample);
        while window.samples.len() > keep {
            window.samples.pop_front();
        }
        Some(window.samples.iter().cloned().collect())
    }

    /// The owner of `node` (`None` when there is no such node), from memory after the first
    /// lookup: ownership never changes.
    pub async fn node_owner(
        &self,
        store: &Store,
        node: &NodeId,
    ) -> StoreResult<Option<gp4u_core::ids::UserId>> {
        if let Some(owner) = self
            .owners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(node)
        {
            return Ok(Some(owner.clone()));
        }
        let Some(record) = store.get_node(node).await? else {
            return Ok(None);
        };
        let mut owners = self
            .owners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if owners.len() >= MAX_CACHED_WINDOWS {
            owners.clear();
        }
        owners.insert(node.clone(), record.owner_id.clone());
        Ok(Some(record.owner_id))
    }

    /// Forgets what is cached of a job: its window and facts (it ended, moved or changed).
    pub fn forget(&self, job: &JobId) {
        self.windows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(job);
    }

    /// Forgets a cached user (suspended, activated, changed).
    pub fn forget_user(&self, user: &gp4u_core::ids::UserId) {
        self.users
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(user);
    }

    /// The user, from the cache when read less than `cache_ttl_ms` ago.
    pub async fn cached_user(
        &self,
        store: &Store,
        id: &gp4u_core::ids::UserId,
        now_ms: i64,
    ) -> StoreResult<Option<UserRecord>> {
        let ttl = i64::try_from(self.settings.cache_ttl_ms).unwrap_or(0);
        if let Some((user, at)) = self
            .users
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(id)
            && now_ms.saturating_sub(*at) < ttl
        {
            return Ok(Some(user.clone()));
        }
        let user = store.get_user(id).await?;
        if let Some(user) = &user {
            let mut users = self
                .users
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if users.len() >= MAX_CACHED_WINDOWS {
                users.clear();
            }
            users.insert(id.clone(), (user.clone(), now_ms));
        }
        Ok(user)
    }

    /// Stores one sample through the group-commit writer: the call returns once the
    /// transaction holding it committed, so an acknowledged packet is never lost, while
    /// many concurrent packets share one commit. `Ok(false)`: refused, the job is not (or no
    /// longer) RUNNING on the packet's node.
    pub async fn write(&self, store: &Store, row: TelemetryRow) -> Result<bool, String> {
        let batch = self.settings.telemetry_batch_rows;
        let writers = self.settings.telemetry_writers;
        let sender = self
            .writer
            .get_or_init(|| async {
                let (sender, receiver) = mpsc::channel(batch.saturating_mul(8).max(64));
                // Several writers, each committing its own batch: while one waits for its
                // commit to be flushed, the next batch is already being written (PostgreSQL
                // flushes concurrent commits together).
                let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
                for _ in 0..writers.max(1) {
                    tokio::spawn(run_writer(store.clone(), receiver.clone(), batch));
                }
                sender
            })
            .await;
        let (done, result) = oneshot::channel();
        sender
            .send((row, done))
            .await
            .map_err(|_| "the telemetry writer stopped".to_string())?;
        result
            .await
            .map_err(|_| "the telemetry writer stopped".to_string())?
    }
}

async fn run_writer(
    store: Store,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<WriteRequest>>>,
    batch: usize,
) {
    let mut rows = Vec::with_capacity(batch);
    let mut waiters = Vec::with_capacity(batch);
    loop {
        {
            let mut receiver = receiver.lock().await;
            let Some((row, done)) = receiver.recv().await else {
                return;
            };
            rows.push(row);
            waiters.push(done);
            while rows.len() < batch {
                match receiver.try_recv() {
                    Ok((row, done)) => {
                        rows.push(row);
                        waiters.push(done);
                    }
                    Err(_) => break,
                }
            }
        }
        // Two writers updating the same jobs may deadlock (the database aborts one): retry.
        let mut result = Err(String::new());
        for attempt in 1..=3 {
            result = store
                .insert_telemetry_batch(&rows)
                .await
                .map_err(|error| error.to_string());
            match &result {
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, attempt, rows = rows.len(), "storing a telemetry batch failed")
                }
            }
        }
        rows.clear();
        for (index, done) in waiters.drain(..).enumerate() {
            let _ = done.send(match &result {
                Ok(accepted) => Ok(accepted.get(index).copied().unwrap_or(false)),
                Err(error) => Err(error.clone()),
            });
        }
    }
}

/// A fresh id with `prefix` (`an_`, `sl_`).
pub fn new_id(state: &AppState, prefix: &str) -> String {
    let bytes = state.random_id_bytes();
    format!("{prefix}{}", gp4u_core::hex::encode(&bytes))
}

/// Ends the job's current attempt for `reason`: a provider-fault reason with retries left
/// puts it back in the queue for another node (the node is excluded and the attempt
/// recorded); anything else fails it. Re-reads and decides again when the job changed
/// meanwhile; `Ok(None)` when it had already ended or left `node`.
pub async fn end_attempt(
    state: &AppState,
    job_id: &JobId,
    node: &NodeId,
    reason: FailureReason,
    ended_by: EndedBy,
) -> StoreResult<Option<JobRecord>> {
    for _attempt in 0..5 {
        let Some(job) = state.store.get_job(job_id).await? else {
            return Ok(None);
        };
        if job.state.status.is_terminal() || job.state.node_id.as_ref() != Some(node) {
            return Ok(None);
        }
        let pinned = matches!(job.manifest.target, GpuTarget::Pinned(_));
        let input = fail_or_retry(
            reason,
            ended_by,
            job.retries,
            job.manifest.max_retries,
            pinned,
        );
        let now_ms = state.now_ms();
        let Ok((next, events)) = transition(&job.state, input.clone(), now_ms) else {
            return Ok(None);
        };
        let events = job_events(&job, &events)?;
        let result = match input {
            JobInput::Retry { reason } => {
                let attempt = Attempt {
                    node_id: node.clone(),
                    reason,
                    at_ms: now_ms,
                };
                state
                    .store
                    .retry_job(&job, &next, attempt, &events, now_ms)
                    .await
            }
            _ => {
                state
                    .store
                    .update_job_state(&job.id, job.version, &next, &events, now_ms)
                    .await
            }
        };
        match result {
            Ok(updated) => {
                state.tutela.forget(&job.id);
                state.relay.nudge();
                state.atlas_nudge.notify_one();
                tracing::warn!(job_id = %job.id, node_id = %node, reason = reason.as_str(),
                    status = updated.state.status.as_str(), retries = updated.retries,
                    "attempt ended");
                return Ok(Some(updated));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(StoreError::Conflict(format!(
        "job {job_id} kept changing while being ended; the next round retries"
    )))
}

/// Slashes `node` for `kind`, at most once per (node, job, kind); the slash is published
/// (`tutela.slash`) in the same transaction. `None` when it had already been slashed for this.
pub async fn slash(
    state: &AppState,
    node: &NodeId,
    job: Option<&JobId>,
    kind: SlashKind,
    evidence: &str,
) -> StoreResult<Option<SlashRecord>> {
    let id = new_id(state, "sl_");
    let record = state
        .store
        .slash_node(
            node,
            job,
            kind,
            &state.tutela.settings.slashes,
            evidence,
            &id,
            state.now_ms(),
            |record| {
                vec![OutboxEvent {
                    topic: gp4u_core::chambers::TOPIC_TUTELA_SLASH.into(),
                    aggregate_id: record.node_id.to_string(),
                    payload: slash_payload(record),
                }]
            },
        )
        .await?;
    if let Some(record) = &record {
        state
            .metrics
            .slashes
            .get_or_create(&crate::metrics::KindLabel {
                kind: kind.as_str(),
            })
            .inc();
        state.relay.nudge();
        tracing::warn!(node_id = %node, job_id = ?job.map(JobId::as_str), kind = kind.as_str(),
            stake_taken = %record.stake_taken, trust = record.trust_after, "provider slashed");
    }
    Ok(record)
}

fn slash_payload(record: &SlashRecord) -> serde_json::Value {
    json!({
        "slash_id": record.id,
        "node_id": record.node_id.as_str(),
        "job_id": record.job_id.as_ref().map(JobId::as_str),
        "kind": record.kind.as_str(),
        "stake_taken_micros": record.stake_taken.micros(),
        "trust_before": record.trust_before,
        "trust_after": record.trust_after,
        "evidence": record.evidence,
        "at_ms": record.at_ms,
    })
}

/// Ejects `node` (no more jobs) and ends the attempts of the jobs it holds for `reason`
/// (provider fault: they are retried elsewhere while retries remain).
pub async fn eject(
    state: &AppState,
    node: &NodeId,
    reason: FailureReason,
    why: &str,
) -> StoreResult<bool> {
    let events = [OutboxEvent {
        topic: "tutela.ejected".into(),
        aggregate_id: node.to_string(),
        payload: json!({"node_id": node.as_str(), "reason": reason.as_str(), "evidence": why}),
    }];
    let ejected = state
        .store
        .eject_node(node, reason.as_str(), &events, state.now_ms())
        .await?;
    if ejected {
        tracing::error!(node_id = %node, reason = reason.as_str(), why, "node ejected");
    }
    for status in [JobStatus::Running, JobStatus::Assigned] {
        for job in state.store.node_jobs_in_status(node, status).await? {
            end_attempt(state, &job.id, node, reason, EndedBy::Provider).await?;
        }
    }
    state.relay.nudge();
    Ok(ejected)
}

fn heartbeat_config(settings: &TutelaSettings) -> HeartbeatConfig {
    let ms = |seconds: u64| i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    HeartbeatConfig {
        timeout_ms: ms(settings.heartbeat_timeout_s),
        restart_grace_ms: ms(settings.heartbeat_restart_grace_s),
        breaker_min_nodes: settings.breaker_min_nodes,
        breaker_silent_fraction: settings.breaker_silent_fraction,
    }
}

/// When the job was last heard from: its last packet, else its start, else its pickup.
pub fn last_seen_ms(job: &JobRecord) -> Option<i64> {
    job.last_telemetry_at_ms
        .or(job.state.started_at_ms)
        .or(job.picked_up_at_ms)
}

/// One round of the heartbeat reaper and the duration check. Returns the jobs it ended.
pub async fn reap_once(state: &AppState) -> StoreResult<Vec<JobId>> {
    let settings = &state.tutela.settings;
    let config = heartbeat_config(settings);
    let running = state
        .store
        .jobs_in_status(JobStatus::Running, REAPER_BATCH)
        .await?;
    let now_ms = state.now_ms();
    let mut ended = Vec::new();

    // Duration: the agent kills at 1.1 × on its own; this catches an agent that does not.
    let grace_ms = i64::try_from(settings.duration_grace_s.saturating_mul(1000)).unwrap_or(0);
    for job in &running {
        let (Some(started), Some(node)) = (job.state.started_at_ms, &job.state.node_id) else {
            continue;
        };
        if now_ms > started.saturating_add(cap_ms(job)).saturating_add(grace_ms)
            && end_attempt(
                state,
                &job.id,
                node,
                FailureReason::DurationExceeded,
                EndedBy::Platform,
            )
            .await?
            .is_some()
        {
            ended.push(job.id.clone());
        }
    }

    // Taken but never started: the agent died or hung before its container ran.
    let start_timeout_ms =
        i64::try_from(settings.start_timeout_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    for job in state
        .store
        .jobs_in_status(JobStatus::Assigned, REAPER_BATCH)
        .await?
    {
        let (Some(picked_up), Some(node)) = (job.picked_up_at_ms, &job.state.node_id) else {
            continue;
        };
        if now_ms.saturating_sub(picked_up) > start_timeout_ms
            && end_attempt(
                state,
                &job.id,
                node,
                FailureReason::JobDropped,
                EndedBy::Provider,
            )
            .await?
            .is_some()
        {
            tracing::warn!(job_id = %job.id, node_id = %node, "taken but never started: moved");
            ended.push(job.id.clone());
        }
    }

    let live: Vec<LiveJob> = running
        .iter()
        .filter(|job| !ended.contains(&job.id))
        .filter_map(|job| {
            Some(LiveJob {
                job_id: job.id.clone(),
                node_id: job.state.node_id.clone()?,
                last_seen_ms: last_seen_ms(job)?,
            })
        })
        .collect();
    match judge_heartbeats(&live, now_ms, state.tutela.started_ms, &config) {
        HeartbeatDecision::Grace { .. } => {}
        HeartbeatDecision::Breaker {
            silent_nodes,
            live_nodes,
        } => {
            if !state.tutela.breaker_open.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    silent_nodes,
                    live_nodes,
                    "ALERT: most nodes went silent at once; the platform is the likely fault. \
                     Failing no job until they report again"
                );
                state
                    .store
                    .append_events(
                        &[OutboxEvent {
                            topic: "tutela.alert".into(),
                            aggregate_id: "heartbeat".into(),
                            payload: json!({"alert": "HEARTBEAT_BREAKER_OPEN",
                                "silent_nodes": silent_nodes, "live_nodes": live_nodes}),
                        }],
                        now_ms,
                    )
                    .await?;
                state.relay.nudge();
            }
        }
        HeartbeatDecision::Drop(jobs) => {
            if state.tutela.breaker_open.swap(false, Ordering::SeqCst) {
                tracing::warn!("heartbeat breaker closed: nodes are reporting again");
            }
            for job_id in jobs {
                if let Some(id) = drop_job(state, &job_id, &config).await? {
                    ended.push(id);
                }
            }
        }
    }
    Ok(ended)
}

/// Fails (or retries) a silent job and slashes its node once. The job is read again first,
/// so that a packet that arrived since the round began saves it.
async fn drop_job(
    state: &AppState,
    job_id: &JobId,
    config: &HeartbeatConfig,
) -> StoreResult<Option<JobId>> {
    let Some(job) = state.store.get_job(job_id).await? else {
        return Ok(None);
    };
    let (Some(node), Some(seen)) = (job.state.node_id.clone(), last_seen_ms(&job)) else {
        return Ok(None);
    };
    let silence = state.now_ms() - seen;
    if job.state.status != JobStatus::Running || silence <= config.timeout_ms {
        return Ok(None);
    }
    let Some(_ended) = end_attempt(
        state,
        job_id,
        &node,
        FailureReason::JobDropped,
        EndedBy::Provider,
    )
    .await?
    else {
        return Ok(None);
    };
    let evidence = format!(
        "no telemetry for {} s (timeout {} s)",
        silence / 1000,
        config.timeout_ms / 1000
    );
    slash(
        state,
        &node,
        Some(job_id),
        SlashKind::JobDroppedUnexpectedly,
        &evidence,
    )
    .await?;
    Ok(Some(job_id.clone()))
}

/// Runs [`reap_once`] every `reaper_interval_ms` until `stopping`.
pub async fn run_reapers(state: AppState, mut stopping: watch::Receiver<bool>) {
    let period = Duration::from_millis(state.tutela.settings.reaper_interval_ms);
    loop {
        if let Err(error) = reap_once(&state).await {
            tracing::warn!(%error, "the heartbeat reaper's round failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopping.changed() => return,
        }
    }
}
