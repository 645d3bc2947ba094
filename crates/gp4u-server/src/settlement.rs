//! Stages 5 and 7 after a job ends: energy and carbon, the Veritas record, and settlement.
//!
//! A durable subscriber (`settlement`, its cursor in the subscribers table) reads the outbox
//! for `job.completed`, `job.failed` and `job.cancelled` and finishes each job once:
//! completion accounting writes the job's energy, carbon and Veritas record with a
//! `job.energy` and a `veritas.recorded` event; settlement posts the double-entry transfers
//! with a `billing.settled` event. Both are idempotent in the store (the Veritas row and the
//! settlement row are keyed by job), so a retry or a second replica changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use gp4u_core::atlas::CarbonTable;
use gp4u_core::billing::{Outcome, SettlementInput, settle};
use gp4u_core::energy::{
    GridFactor, carbon_kg, credit_eligible, default_grid_factors, grid_factor_for, integrate,
    watts_to_mw,
};
use gp4u_core::job::JobStatus;
use gp4u_proto::{VeritasInput, VeritasRecord, VeritasRuntime};
use gp4u_store::{
    CompletionFacts, GridFactorRecord, JobRecord, NewTransfer, OutboxEvent, StoreError,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::state::AppState;

/// The subscriber's name in the subscribers table.
const SUBSCRIBER: &str = "settlement";
/// Outbox rows read per pass.
const BATCH: i64 = 200;
const POLL: Duration = Duration::from_millis(250);
/// Telemetry samples of one run read at most (a week at 10 s).
const MAX_SAMPLES: i64 = 60_480;

/// The samples of the job's final run (from its node, since it started), oldest first: what
/// its energy is integrated over and what its energy proof must cover — one reader for both,
/// so that the bill and the proof can never look at different samples.
pub async fn final_run_samples(
    state: &AppState,
    job: &JobRecord,
) -> Result<Vec<gp4u_store::EnergySample>, StoreError> {
    match (&job.state.node_id, job.state.started_at_ms) {
        (Some(node), Some(started)) => {
            state
                .store
                .energy_series(&job.id, node, started, MAX_SAMPLES)
                .await
        }
        _ => Ok(Vec::new()),
    }
}

pub use gp4u_core::chambers::TOPIC_JOB_ENERGY;
pub use gp4u_core::chambers::TOPIC_VERITAS_RECORDED;
pub const TOPIC_BILLING_SETTLED: &str = "billing.settled";

/// Puts grid factors into the table: the regions of the operator's own `[atlas.carbon]` table
/// (when it is not the built-in one) where a region is missing or still has a built-in figure
/// from an earlier start, then the built-in defaults where a region is missing. A figure an
/// admin set (`PUT /api/admin/grid-factors/{region}`) is never overwritten.
pub async fn seed_grid_factors(state: &AppState) -> Result<(), StoreError> {
    let now_ms = state.now_ms();
    let built_in_factors = default_grid_factors();
    if state.atlas.carbon != CarbonTable::default() {
        let atlas_defaults = CarbonTable::default();
        for (region, intensity) in state.atlas.carbon.entries() {
            let energy_source = built_in_factors
                .iter()
                .find(|factor| factor.region == region)
                .map_or("", |factor| factor.source.as_str());
            let atlas_source = atlas_defaults
                .intensity(region)
                .map_or("", |intensity| intensity.source.as_str());
            let record = GridFactorRecord::from_factor(
                GridFactor {
                    region: region.to_owned(),
                    g_co2e_per_kwh: intensity.g_co2e_per_kwh,
                    source: intensity.source.clone(),
                    as_of: intensity.as_of.clone(),
                },
                now_ms,
            );
            state
                .store
                .seed_grid_factor_over_built_in(&record, [energy_source, atlas_source], now_ms)
                .await?;
        }
    }
    let records: Vec<GridFactorRecord> = built_in_factors
        .into_iter()
        .map(|factor| GridFactorRecord::from_factor(factor, now_ms))
        .collect();
    state.store.seed_grid_factors(&records, now_ms).await
}

fn is_terminal_topic(topic: &str) -> bool {
    gp4u_core::job::TERMINAL_TOPICS.contains(&topic)
}

/// Finishes every job that ended since the cursor. Returns how many jobs were looked at.
pub async fn settle_once(state: &AppState) -> Result<usize, StoreError> {
    let mut handled = 0;
    loop {
        // Read only on every pass; the row is created (a write) once.
        let cursor = match state.store.get_subscriber(SUBSCRIBER).await? {
            Some(cursor) => cursor,
            None => {
                state
                    .store
                    .load_subscriber(SUBSCRIBER, &json!({}), state.now_ms())
                    .await?
            }
        };
        let events = state.store.read_outbox(cursor.position, BATCH).await?;
        let Some(last) = events.last() else {
            return Ok(handled);
        };
        for envelope in events
            .iter()
            .filter(|event| is_terminal_topic(&event.topic))
        {
            let Ok(job_id) = gp4u_core::ids::JobId::parse(&envelope.aggregate_id) else {
                continue;
            };
            let Some(job) = state.store.get_job(&job_id).await? else {
                continue;
            };
            match finish_job(state, &job).await {
                Ok(()) => handled += 1,
                // Nothing will ever settle this job as it is stored: say so loudly and go on,
                // so that one bad row does not hold up every job after it. (An operator can
                // settle it after repairing the row; a transient error retries the batch.)
                Err(StoreError::Corrupt(reason)) => {
                    tracing::error!(job_id = %job.id, %reason, "job not settled: its stored state cannot be settled");
                }
                Err(error) => return Err(error),
            }
        }
        match state
            .store
            .save_subscriber(
                SUBSCRIBER,
                cursor.position,
                last.position,
                &json!({}),
                state.now_ms(),
            )
            .await
        {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
        if i64::try_from(events.len()).unwrap_or(i64::MAX) < BATCH {
            return Ok(handled);
        }
    }
}

/// Runs [`settle_once`] until `stopping`, woken by the bus.
pub async fn run_settlement(state: AppState, mut stopping: watch::Receiver<bool>) {
    if let Err(error) = seed_grid_factors(&state).await {
        tracing::warn!(%error, "seeding grid factors failed");
    }
    let mut events = state.bus.subscribe();
    loop {
        if let Err(error) = settle_once(&state).await {
            tracing::warn!(%error, "settling finished jobs failed; retrying");
        }
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// Completion accounting and settlement of one ended job (both idempotent).
pub async fn finish_job(state: &AppState, job: &JobRecord) -> Result<(), StoreError> {
    if !job.state.status.is_terminal() {
        return Ok(());
    }
    account_completion(state, job).await?;
    settle_job(state, job).await?;
    state.relay.nudge();
    Ok(())
}

/// Energy (Σ Pᵢ·Δtᵢ over the final run's samples), carbon, and the Veritas record.
async fn account_completion(state: &AppState, job: &JobRecord) -> Result<(), StoreError> {
    let node = job.state.node_id.clone();
    let samples = final_run_samples(state, job).await?;
    let points: Vec<(i64, u64)> = samples
        .iter()
        .map(|sample| (sample.at_ms, watts_to_mw(sample.power_draw_watts)))
        .collect();
    // The first sample accounts for no time: the interval before it has no reading (the
    // energy proof weighs readings the same way, so both agree to the milliwatt-millisecond).
    let first_at = points.first().map_or(0, |point| point.0);
    let total = integrate(&points, first_at, state.tutela.settings.energy_max_gap_ms())
        .map_err(|error| StoreError::Corrupt(format!("telemetry of job {}: {error}", job.id)))?;
    let mut records = state.store.list_grid_factors().await?;
    if records.is_empty() {
        // A fresh database: the built-in table (admins may update it later).
        seed_grid_factors(state).await?;
        records = state.store.list_grid_factors().await?;
    }
    let factors: Vec<GridFactor> = records
        .into_iter()
        .map(GridFactorRecord::into_factor)
        .collect();
    let region = job.gpu_region.clone().unwrap_or_default();
    let fallback = default_grid_factors();
    let factor = grid_factor_for(&factors, &region)
        .or_else(|| grid_factor_for(&fallback, &region))
        .cloned();
    let renewable_pct = match &node {
        Some(node) => state.store.node_renewable(node).await?,
        None => 0.0,
    };
    let carbon = factor
        .as_ref()
        .map_or(0.0, |factor| carbon_kg(total.kwh, factor));
    let facts = CompletionFacts {
        energy_kwh: total.kwh,
        energy_mwms: total.energy_mwms.to_string(),
        carbon_kg: carbon,
        renewable_pct,
        carbon_credit_eligible: credit_eligible(renewable_pct) && total.kwh > 0.0,
    };
    let mut inputs = Vec::new();
    for artifact in &job.manifest.inputs {
        let sha = state
            .store
            .get_artifact(artifact)
            .await?
            .map(|record| record.sha256);
        inputs.push(VeritasInput {
            artifact_id: artifact.to_string(),
            sha256: sha,
        });
    }
    // The GPU as its agent registered it: the driver is part of what reproduces a run.
    let gpu = match &job.state.gpu_id {
        Some(gpu) => state.store.get_gpu(gpu).await?,
        None => None,
    };
    // The host the job ran on, as its agent reported it (SPEC §10): runtime, seccomp,
    // AppArmor/SELinux, user namespaces, cgroup version, egress filter, scratch, limits.
    let posture = match &job.state.node_id {
        Some(node) => state
            .store
            .get_node(node)
            .await?
            .and_then(|node| node.posture),
        None => None,
    };
    let env: BTreeMap<&String, &String> = job.manifest.env.iter().collect();
    let env_hash =
        gp4u_core::hex::sha256(serde_json::to_string(&env).unwrap_or_default().as_bytes());
    let veritas = VeritasRecord {
        job_id: job.id.to_string(),
        node_id: node.as_ref().map(ToString::to_string),
        image: job.manifest.docker_image.clone(),
        image_digest: format!("sha256:{}", job.manifest.docker_image_sha256),
        command: job.manifest.command.clone(),
        env_sha256: env_hash,
        inputs,
        output_sha256: job.blobs.output_sha256.clone(),
        exit_code: job.state.exit_code,
        status: job.state.status,
        gpu_model: job.gpu_name.clone(),
        gpu_driver: gpu.as_ref().and_then(|gpu| gpu.driver_version.clone()),
        gpu_uuid: gpu.as_ref().and_then(|gpu| gpu.uuid.clone()),
        host_posture: posture
            .map(serde_json::to_value)
            .transpose()
            .map_err(|error| StoreError::Corrupt(format!("the host posture: {error}")))?,
        runtime: Some(VeritasRuntime {
            shm_gb: job.manifest.shm_gb(),
            scratch_gb: job.manifest.scratch_gb(),
            network: job.manifest.network,
        }),
        // The image is pinned by digest at submission, so a completed job with a recorded exit
        // code is reproducible in the sense Veritas scores: same image, inputs, env, command.
        reproducible: job.state.status == JobStatus::Complete && job.state.exit_code == Some(0),
    };
    // Stored, sealed and served as this JSON.
    let veritas = serde_json::to_value(&veritas).map_err(|error| {
        StoreError::Corrupt(format!("the Veritas record of job {}: {error}", job.id))
    })?;
    let energy_event = json!({
        "job_id": job.id,
        "node_id": node,
        "region": job.gpu_region,
        "energy_kwh": facts.energy_kwh,
        "energy_mwms": facts.energy_mwms,
        "samples": total.samples,
        "covered_ms": total.covered_ms,
        "gaps": total.gaps,
        "max_gap_ms": state.tutela.settings.energy_max_gap_ms(),
        "carbon_kg": facts.carbon_kg,
        "grid_factor": factor.as_ref().map(|factor| json!({
            "region": factor.region,
            "g_co2e_per_kwh": factor.g_co2e_per_kwh,
            "source": factor.source,
            "as_of": factor.as_of,
        })),
        "renewable_pct": renewable_pct,
        "renewable_basis": "declared by the provider",
        "carbon_credit_eligible": facts.carbon_credit_eligible,
    });
    let events = vec![
        OutboxEvent {
            topic: TOPIC_JOB_ENERGY.into(),
            aggregate_id: job.id.to_string(),
            payload: energy_event,
        },
        OutboxEvent {
            topic: TOPIC_VERITAS_RECORDED.into(),
            aggregate_id: job.id.to_string(),
            payload: json!({"job_id": job.id, "record": veritas}),
        },
    ];
    state
        .store
        .record_completion(
            &job.id,
            node.as_ref(),
            &facts,
            &veritas,
            &events,
            state.now_ms(),
        )
        .await?;
    Ok(())
}

/// Settles the job: metered RUNNING time × price, fee, provider, student programme, release.
async fn settle_job(state: &AppState, job: &JobRecord) -> Result<(), StoreError> {
    let outcome = Outcome::from_job(
        job.state.status,
        job.state.failure_reason,
        job.state.ended_by,
    )
    .map_err(|error| StoreError::Corrupt(format!("job {}: {error}", job.id)))?;
    let provider = match &job.state.node_id {
        Some(node) => state.store.get_node(node).await?,
        None => None,
    };
    let provider_user = match &provider {
        Some(node) => state.store.get_user(&node.owner_id).await?,
        None => None,
    };
    let running_ms = match (job.state.started_at_ms, job.state.ended_at_ms) {
        (Some(started), Some(ended)) => ended.saturating_sub(started).max(0),
        _ => 0,
    };
    let input = SettlementInput {
        job_id: job.id.clone(),
        customer_id: job.owner_id.clone(),
        // A job that never reached a node pays no provider; the customer stands in so that
        // the input is well formed (nothing is charged: the outcome is not billable).
        provider_id: provider_user
            .as_ref()
            .map_or_else(|| job.owner_id.clone(), |user| user.id.clone()),
        provider_is_university: provider_user.as_ref().is_some_and(|user| user.university),
        price_per_hour: job.price_per_hour,
        running_ms: if provider_user.is_some() {
            running_ms
        } else {
            0
        },
        held: job.hold,
        outcome: if provider_user.is_some() {
            outcome
        } else {
            Outcome::NeverRan
        },
        fee_bp: state.billing.platform_fee_bp,
        student_bp: state.billing.student_program_bp,
    };
    let settlement = settle(&input)
        .map_err(|error| StoreError::Corrupt(format!("settling job {}: {error}", job.id)))?;
    let body = serde_json::to_value(&settlement)
        .map_err(|error| StoreError::Corrupt(format!("settlement of {}: {error}", job.id)))?;
    let transfers: Vec<NewTransfer> = settlement.transfers.iter().map(NewTransfer::from).collect();
    let event = OutboxEvent {
        topic: TOPIC_BILLING_SETTLED.into(),
        aggregate_id: job.id.to_string(),
        payload: json!({"job_id": job.id, "settlement": body}),
    };
    state
        .store
        .settle_job(&job.id, &body, &transfers, &[event], state.now_ms())
        .await?;
    Ok(())
}

/// The settlement route's view: SPEC §8's fields in currency units, and the exact settlement
/// as stored (and sealed). `None` when the stored settlement does not parse (never written so).
pub fn settlement_view(stored: &Value) -> Option<gp4u_proto::SettlementView> {
    let settlement: gp4u_core::billing::Settlement = serde_json::from_value(stored.clone()).ok()?;
    let units = |micros: i64| micros as f64 / 1_000_000.0;
    let transfers = settlement
        .transfers
        .iter()
        .map(|transfer| gp4u_proto::SettlementTransfer {
            id: transfer.id.clone(),
            debit: transfer.debit.to_string(),
            credit: transfer.credit.to_string(),
            amount: units(transfer.amount.micros()),
            amount_micros: transfer.amount.micros(),
            kind: transfer.kind.into(),
        })
        .collect();
    Some(gp4u_proto::SettlementView {
        job_id: settlement.input.job_id.to_string(),
        gpu_hours: units(settlement.gpu_hours.micro_hours()),
        customer_charged: units(settlement.customer_charged.micros()),
        platform_fee: units(settlement.platform_fee.micros()),
        provider_earnings: units(settlement.provider_earnings.micros()),
        student_program: units(settlement.student_program.micros()),
        refunded: units(settlement.refunded.micros()),
        held: units(settlement.input.held.micros()),
        outcome: settlement.input.outcome,
        currency: "USD".into(),
        transfers,
        exact: stored.clone(),
    })
}
