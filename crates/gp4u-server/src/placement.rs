//! Stage 2 in the server: the Atlas loop (places PENDING jobs on free GPUs), the pickup reaper
//! (moves assignments no agent took in time), and the dispatch notifier that wakes a node's
//! long-poll the moment its job is assigned.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gp4u_core::atlas::{self, AtlasConfig, Candidate, CarbonIntensity, PlacementRequest};
use gp4u_core::chambers::{Chamber, Mnemo, ProviderRecord, uptime_score};
use gp4u_core::events::{AssignedGpu, JobStateChanged};
use gp4u_core::ids::{NodeId, UserId};
use gp4u_core::job::{EndedBy, FailureReason, JobInput, transition};
use gp4u_core::manifest::GpuTarget;
use gp4u_store::{Assignment, GpuRecord, JobRecord, OutboxEvent, StoreError, StoreResult};
use tokio::sync::{Notify, watch};

use crate::state::AppState;

/// Wakes the long-polls waiting for a node's next assignment.
#[derive(Debug, Default)]
pub struct Dispatch {
    waiters: Mutex<HashMap<NodeId, Arc<Notify>>>,
}

impl Dispatch {
    /// The notifier of `node`; a waiter takes it before looking at the database, so an
    /// assignment that lands in between is never missed (`Notify` keeps one permit).
    pub fn notifier(&self, node: &NodeId) -> Arc<Notify> {
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        waiters.entry(node.clone()).or_default().clone()
    }

    /// Wakes every poll waiting now, and leaves a permit for one that is about to wait.
    pub fn notify(&self, node: &NodeId) {
        let notifier = self.notifier(node);
        notifier.notify_waiters();
        notifier.notify_one();
    }
}

/// How many PENDING jobs one Atlas pass considers.
const ATLAS_BATCH: i64 = 200;
/// How many listed GPUs one pass considers.
const CANDIDATE_LIMIT: i64 = 10_000;
/// Atlas also runs on this period, for GPUs freed and jobs queued by other replicas.
const ATLAS_PERIOD: Duration = Duration::from_millis(500);

pub(crate) fn job_events(
    job: &JobRecord,
    events: &[gp4u_core::job::JobEvent],
) -> StoreResult<Vec<OutboxEvent>> {
    job_events_with_gpu(job, events, None)
}

/// [`job_events`], with the GPU the job was assigned sealed with its `job.assigned` event.
fn job_events_with_gpu(
    job: &JobRecord,
    events: &[gp4u_core::job::JobEvent],
    assigned: Option<&AssignedGpu>,
) -> StoreResult<Vec<OutboxEvent>> {
    events
        .iter()
        .map(|event| {
            let gpu = match event {
                gp4u_core::job::JobEvent::Assigned { .. } => assigned,
                _ => None,
            };
            Ok(OutboxEvent {
                topic: event.topic().to_string(),
                aggregate_id: job.id.to_string(),
                payload: serde_json::to_value(JobStateChanged {
                    job_id: &job.id,
                    event,
                    gpu,
                })
                .map_err(|error| {
                    StoreError::Corrupt(format!("event does not serialise: {error}"))
                })?,
            })
        })
        .collect()
}

/// Mnemo's record of every provider node, as its chamber last saved it (empty before the
/// chamber first ran, or if its model does not read: unknown is neutral in Atlas).
pub(crate) async fn provider_records(
    state: &AppState,
) -> StoreResult<BTreeMap<String, ProviderRecord>> {
    let Some(providers) = state
        .store
        .get_subscriber(Mnemo::NAME)
        .await?
        .and_then(|mnemo| mnemo.model.get("providers").cloned())
        .filter(|providers| !providers.is_null())
    else {
        return Ok(BTreeMap::new());
    };
    Ok(match serde_json::from_value(providers) {
        Ok(providers) => providers,
        Err(error) => {
            tracing::warn!(%error, "Mnemo's provider records do not read; scoring uptime and provenance as unknown");
            BTreeMap::new()
        }
    })
}

fn candidate(
    gpu: &GpuRecord,
    providers: &BTreeMap<String, ProviderRecord>,
    now_ms: i64,
) -> Candidate {
    let record = providers.get(gpu.node_id.as_str());
    Candidate {
        gpu_id: gpu.id.clone(),
        node_id: gpu.node_id.clone(),
        gpu_name: gpu.name.clone(),
        vram_gb: gpu.vram_gb,
        region: gpu.region.clone(),
        price_per_hour: gpu.price_per_hour,
        trust_score: gpu.trust_score,
        // The node's presence (its agent's polls) and Mnemo's record of the jobs it kept
        // (stage 5); a node without either is unknown, i.e. neutral.
        uptime: uptime_score(
            gpu.node_presence.uptime(now_ms),
            record.and_then(ProviderRecord::completion_rate),
        ),
        provenance: record.and_then(ProviderRecord::provenance),
        posture: gpu.node_posture.clone(),
    }
}

/// Atlas's config with the grid-factor table over its carbon table: the figure an admin set
/// (`PUT /api/admin/grid-factors/{region}`) is the one Atlas scores and the one the job's
/// carbon is computed with. The table's `default` row (the fallback for carbon accounting)
/// is not a region: Atlas keeps scoring a region it does not know as neutral.
async fn with_grid_factors(state: &AppState, config: &AtlasConfig) -> StoreResult<AtlasConfig> {
    let mut config = config.clone();
    for factor in state.store.list_grid_factors().await? {
        if factor.region == gp4u_core::energy::DEFAULT_GRID_REGION {
            continue;
        }
        config.carbon.set(
            factor.region,
            CarbonIntensity {
                g_co2e_per_kwh: factor.g_co2e_per_kwh,
                source: factor.source,
                as_of: factor.as_of,
            },
        );
    }
    Ok(config)
}

/// One Atlas pass: place what can be placed now. Returns how many jobs were assigned.
pub async fn place_pending(state: &AppState, config: &AtlasConfig) -> StoreResult<usize> {
    let pending = state
        .store
        .jobs_in_status(gp4u_core::job::JobStatus::Pending, ATLAS_BATCH)
        .await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let free = state.store.list_available_gpus(CANDIDATE_LIMIT).await?;
    if free.is_empty() {
        return Ok(0);
    }
    let mut regions: HashMap<UserId, Option<String>> = HashMap::new();
    let mut requests = Vec::with_capacity(pending.len());
    for job in &pending {
        if !regions.contains_key(&job.owner_id) {
            let region = state
                .store
                .get_user(&job.owner_id)
                .await?
                .and_then(|user| user.region);
            regions.insert(job.owner_id.clone(), region);
        }
        requests.push(PlacementRequest {
            job_id: job.id.clone(),
            target: job.manifest.target.clone(),
            customer_region: regions.get(&job.owner_id).cloned().flatten(),
            reproducibility_sensitive: job.manifest.reproducibility_sensitive,
            excluded_nodes: job.excluded_nodes.clone(),
            network: job.manifest.network,
            scratch_gb: job.manifest.scratch_gb(),
        });
    }
    let providers = provider_records(state).await?;
    let candidates: Vec<Candidate> = free
        .iter()
        .map(|gpu| candidate(gpu, &providers, state.now_ms()))
        .collect();
    let config = with_grid_factors(state, config).await?;
    let plan = atlas::plan(&requests, &candidates, &config);
    let mut placed = 0;
    for assignment in plan {
        let Some(job) = pending.iter().find(|job| job.id == assignment.job_id) else {
            continue;
        };
        let chosen = &assignment.scored.candidate;
        let input = JobInput::Assign {
            node_id: chosen.node_id.clone(),
            gpu_id: chosen.gpu_id.clone(),
        };
        let Ok((next, events)) = transition(&job.state, input, state.now_ms()) else {
            continue;
        };
        let Some(gpu) = free.iter().find(|gpu| gpu.id == chosen.gpu_id) else {
            continue;
        };
        // The GPU as registered now, sealed with the assignment: what the job's proofs must
        // name and be bounded by (a later change of its power limit does not move them).
        let assigned = AssignedGpu {
            gpu_id: gpu.id.clone(),
            uuid: gpu.uuid.clone(),
            name: gpu.name.clone(),
            vram_gb: gpu.vram_gb,
            power_limit_watts: gpu.power_limit_mw.map(gp4u_core::energy::mw_to_watts),
        };
        let placement = atlas::placement_json(&assignment.scored);
        let record = Assignment {
            gpu_id: &chosen.gpu_id,
            gpu_name: &chosen.gpu_name,
            gpu_region: &chosen.region,
            price_per_hour: chosen.price_per_hour,
            placement: &placement,
            power_limit_mw: gpu.power_limit_mw,
        };
        match state
            .store
            .assign_job(
                job,
                &next,
                &record,
                &job_events_with_gpu(job, &events, Some(&assigned))?,
                state.now_ms(),
            )
            .await
        {
            Ok(assigned) => {
                placed += 1;
                state.metrics.placements.inc();
                tracing::info!(job_id = %assigned.id, node_id = %chosen.node_id, gpu_id = %chosen.gpu_id,
                    score = assignment.scored.score, "job assigned");
                state.dispatch.notify(&chosen.node_id);
            }
            // Another replica took the GPU or moved the job: the next pass sees the new state.
            Err(StoreError::Conflict(reason)) => {
                tracing::debug!(job_id = %job.id, %reason, "assignment lost a race")
            }
            Err(error) => return Err(error),
        }
    }
    if placed > 0 {
        state.relay.nudge();
    }
    Ok(placed)
}

/// Moves assignments that no agent took within the pickup timeout: a job that asked for any
/// matching GPU goes back to the queue with that node excluded; a job pinned to that GPU fails
/// with `PICKUP_TIMEOUT` (the provider's fault: nothing else can run it).
pub async fn reap_unclaimed(state: &AppState) -> StoreResult<usize> {
    let now_ms = state.now_ms();
    let cutoff = now_ms - state.limits.pickup_timeout_ms;
    let mut moved = 0;
    for job in state.store.unclaimed_assignments(cutoff, 100).await? {
        let Some(node) = job.state.node_id.clone() else {
            continue;
        };
        let result = match &job.manifest.target {
            GpuTarget::Requirement(_) => {
                let Ok((next, events)) = transition(&job.state, JobInput::PickupTimedOut, now_ms)
                else {
                    continue;
                };
                state
                    .store
                    .requeue_job(&job, &next, &node, &job_events(&job, &events)?, now_ms)
                    .await
            }
            GpuTarget::Pinned(_) => {
                let input = JobInput::Fail {
                    reason: FailureReason::PickupTimeout,
                    ended_by: EndedBy::Provider,
                };
                let Ok((next, events)) = transition(&job.state, input, now_ms) else {
                    continue;
                };
                state
                    .store
                    .update_job_state(
                        &job.id,
                        job.version,
                        &next,
                        &job_events(&job, &events)?,
                        now_ms,
                    )
                    .await
            }
        };
        match result {
            Ok(updated) => {
                moved += 1;
                tracing::warn!(job_id = %updated.id, node_id = %node, status = updated.state.status.as_str(),
                    "assignment not picked up in time");
            }
            Err(StoreError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
    }
    if moved > 0 {
        state.relay.nudge();
        state.atlas_nudge.notify_one();
    }
    Ok(moved)
}

/// Runs Atlas and the pickup reaper until `stopping` turns true.
pub async fn run_atlas(state: AppState, mut stopping: watch::Receiver<bool>) {
    let config = state.atlas.clone();
    loop {
        if let Err(error) = reap_unclaimed(&state).await {
            tracing::error!(%error, "pickup reaper failed");
        }
        if let Err(error) = place_pending(&state, &config).await {
            tracing::error!(%error, "atlas pass failed");
        }
        tokio::select! {
            _ = state.atlas_nudge.notified() => {}
            _ = tokio::time::sleep(ATLAS_PERIOD) => {}
            _ = stopping.changed() => return,
        }
    }
}
