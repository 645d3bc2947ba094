//! Stage 6 over HTTP: `POST /api/providers/{nodeId}/zk-proofs` checks a proof on receipt and
//! stores and seals it; `GET /api/jobs/{id}/proofs` returns a job's proofs with everything a
//! customer needs to check them again (the node key, the sealed commitments, the weights rule).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gp4u_attest::energy::{ReadingCommitment, telemetry_digest, verify_energy};
use gp4u_attest::hardware::{AssignedGpu, Assurance, gpu_mismatches, verify_hardware};
use gp4u_attest::proofs::{EnergySubmission, ProofSubmission};
use gp4u_core::energy::{interval_weights, mw_to_watts};
use gp4u_core::ids::JobId;
use gp4u_proto::{
    ErrorCode, JobCommitments, JobProofs, ProofAccepted, ProofAssurance, ProofKind,
    SealedCommitment, StoredProof,
};
use gp4u_store::{JobRecord, OutboxEvent, ProofOutcome, ProofRecord, StoreError};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Outbox topic of a proof accepted and stored.
pub const TOPIC_PROOF_VERIFIED: &str = "proof.verified";

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidProof, message)
}

/// The sealed commitments of the job's final run, oldest first, and how many samples lack one.
pub async fn job_commitments(
    state: &AppState,
    job: &JobRecord,
) -> ApiResult<(Vec<(i64, ReadingCommitment)>, usize)> {
    let samples = crate::settlement::final_run_samples(state, job).await?;
    let mut commitments = Vec::with_capacity(samples.len());
    let mut missing = 0;
    for sample in samples {
        match sample
            .commitment
            .as_deref()
            .map(ReadingCommitment::from_base64)
        {
            Some(Ok(commitment)) => commitments.push((sample.at_ms, commitment)),
            Some(Err(error)) => {
                return Err(ApiError::internal("stored commitment", error));
            }
            None => missing += 1,
        }
    }
    Ok((commitments, missing))
}

/// `POST /api/providers/{nodeId}/zk-proofs`: a hardware attestation or an energy proof for a
/// job that ran on the node and has ended. Verified before anything is stored: garbage 400,
/// another provider's node 404, a customer 403.
#[utoipa::path(
    post, path = "/api/providers/{nodeId}/zk-proofs", tag = "providers", params(("nodeId" = String, Path)),
    responses((status = 201, description = "verified and stored", body = ProofAccepted), (status = 200, description = "the same proof again", body = ProofAccepted), (status = 400, description = "INVALID_PROOF", body = gp4u_proto::ErrorBody), (status = 403, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody), (status = 409, body = gp4u_proto::ErrorBody), (status = 503, description = "the job's energy is being accounted; retry", body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Path(node_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<ProofAccepted>)> {
    let node = crate::routes::agent::owned_node(&state, &caller, &node_id).await?;
    let text =
        std::str::from_utf8(&body).map_err(|_| invalid("the proof must be UTF-8 JSON".into()))?;
    let submission =
        ProofSubmission::from_json(text).map_err(|error| invalid(error.to_string()))?;
    let not_found = || {
        ApiError::new(
            ErrorCode::JobNotFound,
            format!("no job {} ran on node {}", submission.job_id(), node.id),
        )
    };
    let job_id = JobId::parse(submission.job_id()).map_err(|_| not_found())?;
    let job = state.store.get_job(&job_id).await?.ok_or_else(not_found)?;
    if job.state.node_id.as_ref() != Some(&node.id) {
        return Err(not_found());
    }
    if !job.state.status.is_terminal() {
        return Err(ApiError::new(
            ErrorCode::InvalidReport,
            format!(
                "job {job_id} is {}: proofs are submitted after the job ends",
                job.state.status.as_str()
            ),
        ));
    }
    let (commitments, missing) = job_commitments(&state, &job).await?;
    let (kind, assurance) = match &submission {
        ProofSubmission::Hardware(attestation) => {
            let key = gp4u_attest::key::parse_public_key(&node.public_key).ok_or_else(|| {
                invalid(format!("node {} has no usable ed25519 public key", node.id))
            })?;
            if attestation.node_id != node.id.as_str() {
                return Err(invalid(format!(
                    "the attestation names node {}, not {}",
                    attestation.node_id, node.id
                )));
            }
            verify_hardware(attestation, &key).map_err(|error| invalid(error.to_string()))?;
            let emulated = job.ran_emulated();
            if emulated && attestation.assurance != Assurance::Emulated {
                return Err(invalid(format!(
                    "job {job_id} ran on an emulated GPU: its attestation must say `emulated`"
                )));
            }
            check_assigned_gpu(&state, &job, &attestation.gpu).await?;
            let expected =
                gp4u_ledger::hash::to_hex(&telemetry_digest(job_id.as_str(), &commitments));
            if attestation.telemetry_digest != expected {
                return Err(invalid(format!(
                    "telemetry_digest {} does not match the {} commitments sealed for job {job_id} ({expected})",
                    attestation.telemetry_digest,
                    commitments.len()
                )));
            }
            (
                ProofKind::Hardware,
                Some(wire_assurance(attestation.assurance)),
            )
        }
        ProofSubmission::Energy(energy) => {
            check_energy(&state, &job, energy, &commitments, missing).await?;
            (ProofKind::Energy, None)
        }
    };
    let body: Value = serde_json::from_str(text).map_err(|error| invalid(error.to_string()))?;
    let record = ProofRecord {
        job_id: job_id.clone(),
        kind: kind.as_str().to_owned(),
        node_id: node.id.clone(),
        assurance: assurance.map(|assurance| assurance.as_str().to_owned()),
        body: body.clone(),
        verified_at_ms: state.now_ms(),
    };
    let event = OutboxEvent {
        topic: TOPIC_PROOF_VERIFIED.into(),
        aggregate_id: job_id.to_string(),
        payload: json!({
            "job_id": job_id,
            "node_id": node.id,
            "kind": kind,
            "assurance": assurance,
            "node_public_key": node.public_key,
            "submission": body,
        }),
    };
    let status = match state.store.insert_proof(&record, &[event]).await {
        Ok(ProofOutcome::Stored) => StatusCode::CREATED,
        Ok(ProofOutcome::AlreadyStored) => StatusCode::OK,
        Err(StoreError::Conflict(message)) => {
            return Err(ApiError::new(ErrorCode::ProofExists, message));
        }
        Err(error) => return Err(error.into()),
    };
    state.relay.nudge();
    tracing::info!(job_id = %job_id, node_id = %node.id, kind = kind.as_str(), "proof verified and stored");
    Ok((
        status,
        Json(ProofAccepted {
            job_id: job_id.to_string(),
            kind,
            assurance,
            verified: true,
        }),
    ))
}

fn wire_assurance(assurance: Assurance) -> ProofAssurance {
    match assurance {
        Assurance::Emulated => ProofAssurance::Emulated,
        Assurance::ProviderSigned => ProofAssurance::ProviderSigned,
        Assurance::HardwareAttested => ProofAssurance::HardwareAttested,
    }
}

fn sealed(commitments: &[(i64, ReadingCommitment)]) -> Vec<SealedCommitment> {
    commitments
        .iter()
        .map(|(at_ms, commitment)| SealedCommitment {
            at_ms: *at_ms,
            commitment: commitment.to_base64(),
        })
        .collect()
}

/// A proof as stored, in wire terms; a kind or assurance the contract does not know is corrupt.
fn stored_proof(proof: &ProofRecord) -> ApiResult<StoredProof> {
    let kind = ProofKind::parse(&proof.kind).ok_or_else(|| {
        ApiError::internal(
            "stored proof",
            format!("unknown proof kind {:?}", proof.kind),
        )
    })?;
    let assurance = match &proof.assurance {
        Some(name) => Some(ProofAssurance::parse(name).ok_or_else(|| {
            ApiError::internal("stored proof", format!("unknown assurance {name:?}"))
        })?),
        None => None,
    };
    Ok(StoredProof {
        kind,
        node_id: proof.node_id.to_string(),
        assurance,
        verified_at_ms: proof.verified_at_ms,
        submission: proof.body.clone(),
    })
}

/// The GPU the job was assigned (its final run's), as registered: the power limit is the one
/// sealed with the assignment, the rest cannot change after registration.
async fn assigned_gpu(state: &AppState, job: &JobRecord) -> ApiResult<gp4u_store::GpuRecord> {
    let gpu_id = job.state.gpu_id.as_ref().ok_or_else(|| {
        invalid(format!(
            "job {} has no assigned GPU to hold its proofs to",
            job.id
        ))
    })?;
    state.store.get_gpu(gpu_id).await?.ok_or_else(|| {
        ApiError::internal("proofs", format!("job {}'s gpu {gpu_id} is gone", job.id))
    })
}

/// A hardware attestation must name the GPU the job was assigned, as registered: its UUID,
/// name, VRAM (whole MiB) and the power limit sealed with the assignment
/// ([`gp4u_attest::hardware`]'s module docs say the rule).
async fn check_assigned_gpu(
    state: &AppState,
    job: &JobRecord,
    attested: &gp4u_attest::hardware::GpuIdentity,
) -> ApiResult<()> {
    let gpu = assigned_gpu(state, job).await?;
    let assigned = AssignedGpu {
        uuid: gpu.uuid.as_deref(),
        name: &gpu.name,
        vram_gb: gpu.vram_gb,
        power_limit_mw: job.gpu_power_limit_mw,
    };
    let differ = gpu_mismatches(attested, &assigned);
    if differ.is_empty() {
        return Ok(());
    }
    Err(invalid(format!(
        "the attestation does not name the GPU job {} was assigned ({}, {:?}): {}; attest the \
         assigned GPU as registered (GET /api/providers/{} lists it)",
        job.id,
        gpu.id,
        gpu.name,
        differ.join("; "),
        gpu.node_id
    )))
}

/// The energy proof's per-reading bound must be exactly the power limit the job's GPU had
/// registered when the job was assigned (sealed with `job.assigned`): a bound the provider
/// picks afterwards bounds nothing.
async fn check_power_bound(
    state: &AppState,
    job: &JobRecord,
    energy: &EnergySubmission,
) -> ApiResult<()> {
    let claimed = energy.claim.power_limit_mw;
    match job.gpu_power_limit_mw {
        Some(registered) if registered == claimed => Ok(()),
        Some(registered) => {
            let gpu = assigned_gpu(state, job).await?;
            Err(invalid(format!(
                "the claim's power_limit_mw is {claimed} mW, but job {}'s GPU {} ({:?}) had a \
                 registered power limit of {registered} mW ({} W) when the job was assigned: \
                 prove every reading ≤ exactly {registered} mW",
                job.id,
                gpu.id,
                gpu.name,
                mw_to_watts(registered)
            )))
        }
        None => Err(invalid(format!(
            "the claim's power_limit_mw is {claimed} mW, but job {} was assigned to a GPU with no \
             registered power limit (registered before power limits were recorded), so no \
             energy proof can be bounded for it; restart the node's agent, which declares its \
             GPUs' limits at every start (PUT /api/providers/{{nodeId}}/power-limits), and later \
             jobs can be proven",
            job.id
        ))),
    }
}

/// The energy proof must be about the energy the platform measured, over every reading the
/// node committed to, with at least the renewable share the job was accounted with, each
/// reading bounded by the GPU's registered power limit.
async fn check_energy(
    state: &AppState,
    job: &JobRecord,
    energy: &EnergySubmission,
    commitments: &[(i64, ReadingCommitment)],
    missing: usize,
) -> ApiResult<()> {
    if missing > 0 {
        return Err(invalid(format!(
            "{missing} of job {}'s samples carry no power commitment: no energy proof can cover them",
            job.id
        )));
    }
    if commitments.is_empty() {
        return Err(invalid(format!("job {} has no committed readings", job.id)));
    }
    check_power_bound(state, job, energy).await?;
    let measured = state.store.job_energy_mwms(&job.id).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "job {}'s energy is being accounted; retry in a second",
                job.id
            ),
        )
        .with_retry_after(1)
    })?;
    if measured != energy.claim.energy_mwms.to_string() {
        return Err(invalid(format!(
            "the claim says {} mW·ms, the platform measured {measured} mW·ms from the sealed telemetry",
            energy.claim.energy_mwms
        )));
    }
    // The share the job was accounted with (its carbon-credit eligibility rests on it): the
    // proof must show at least that much. A claim above it still has to verify against the
    // commitments; one below it cannot back what the platform recorded.
    let recorded = match state
        .store
        .get_job(&job.id)
        .await?
        .and_then(|job| job.renewable_pct)
    {
        Some(recorded) => recorded,
        None => match &job.state.node_id {
            Some(node) => state.store.node_renewable(node).await?,
            None => 0.0,
        },
    };
    let recorded_bp = (recorded * 100.0).round() as u32;
    if energy.claim.renewable_share_bp < recorded_bp {
        return Err(invalid(format!(
            "the claim's renewable share is {} bp; job {} was accounted with {recorded_bp} bp \
             (the node's declared share when it ended): claim at least that",
            energy.claim.renewable_share_bp, job.id
        )));
    }
    let timestamps: Vec<i64> = commitments.iter().map(|(at, _)| *at).collect();
    let weights = interval_weights(&timestamps, 0, state.tutela.settings.energy_max_gap_ms())
        .map_err(|error| ApiError::internal("weights", error))?;
    let points: Vec<ReadingCommitment> = commitments.iter().map(|(_, c)| *c).collect();
    verify_energy(
        job.id.as_str(),
        &energy.claim,
        &points,
        &weights,
        &energy.proof,
        &mut rand_core::OsRng,
    )
    .map_err(|error| invalid(format!("the energy proof does not verify: {error}")))
}

/// `GET /api/agent/jobs/{id}/commitments?node_id=` (the node's provider): the commitments the
/// platform stored for the job's run, with their times and the weights cap — what the agent's
/// energy proof must cover, also for packets whose reply it never received.
#[utoipa::path(
    get, path = "/api/agent/jobs/{id}/commitments", tag = "agent", params(("id" = String, Path), ("node_id" = String, Query)),
    responses((status = 200, description = "the sealed commitments the energy proof must cover; power_limit_mw is its per-reading bound, the GPU's registered limit when the job was assigned (null: none registered)", body = JobCommitments), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn agent_commitments(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<
        axum::extract::Query<crate::routes::agent::NodeQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult<Json<JobCommitments>> {
    let (_node, job) = crate::routes::agent::node_job(&state, &caller, &id, query).await?;
    let (commitments, missing) = job_commitments(&state, &job).await?;
    Ok(Json(JobCommitments {
        job_id: job.id.to_string(),
        max_gap_ms: state.tutela.settings.energy_max_gap_ms(),
        commitments: sealed(&commitments),
        samples_without_commitment: missing as u64,
        // The energy proof's per-reading bound: the GPU's registered limit at assignment.
        power_limit_mw: job.gpu_power_limit_mw,
    }))
}

/// `GET /api/jobs/{id}/proofs` (owner or admin).
#[utoipa::path(
    get, path = "/api/jobs/{id}/proofs", tag = "ledger", params(("id" = String, Path)),
    responses((status = 200, description = "the job's proofs, sealed commitments, node key and weights rule", body = JobProofs), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn job_proofs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobProofs>> {
    let job = crate::routes::jobs::visible_job(&state, &caller, &id).await?;
    let proofs = state.store.job_proofs(&job.id).await?;
    let (commitments, missing) = job_commitments(&state, &job).await?;
    let node_key = match &job.state.node_id {
        Some(node) => state
            .store
            .get_node(node)
            .await?
            .map(|node| node.public_key),
        None => None,
    };
    Ok(Json(JobProofs {
        job_id: job.id.to_string(),
        node_id: job.state.node_id.as_ref().map(ToString::to_string),
        node_public_key: node_key,
        energy_mwms: state.store.job_energy_mwms(&job.id).await?,
        max_gap_ms: state.tutela.settings.energy_max_gap_ms(),
        weights_rule: "w_0 = 0; w_i = min(t_i − t_(i−1), max_gap_ms)".into(),
        commitments: sealed(&commitments),
        samples_without_commitment: missing as u64,
        proofs: proofs.iter().map(stored_proof).collect::<ApiResult<_>>()?,
    }))
}
