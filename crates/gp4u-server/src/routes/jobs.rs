//! Stage 1: job submission, and the customer's view of their jobs.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gp4u_core::atlas::matches_requirement;
use gp4u_core::events::{JobCreated, TOPIC_JOB_CREATED};
use gp4u_core::ids::{GpuId, JobId};
use gp4u_core::job::{EndedBy, JobInput, JobState, TransitionError, transition};
use gp4u_core::manifest::{GpuRequirement, GpuTarget, JobManifest, validate_submission};
use gp4u_core::money::Money;
use gp4u_core::pricing::job_cost;
use gp4u_proto::{ErrorCode, GpuBrief, JobAccepted, JobList, JobView};
use gp4u_store::{
    CreateJobOutcome, GpuRecord, GpuStatus, JobRecord, NewIdempotency, NewJob, OutboxEvent,
    RateDecision, StoreError,
};
use serde::Deserialize;

use crate::auth::{CLEARANCE_CUSTOMER, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdempotencyKey, JsonBody};
use crate::state::AppState;
use crate::views::{job_view, money};

/// One rolling minute.
const RATE_WINDOW_MS: i64 = 60_000;
/// How many listed GPUs a requirement is matched against when estimating its price.
const REQUIREMENT_SCAN_LIMIT: i64 = 10_000;

/// Submit a job (seed stage 1).
#[utoipa::path(
    post, path = "/api/jobs", tag = "jobs",
    request_body = gp4u_proto::JobSubmission,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses(
        (status = 201, body = JobAccepted),
        (status = 400, body = gp4u_proto::ErrorBody), (status = 401, body = gp4u_proto::ErrorBody),
        (status = 403, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody),
        (status = 409, body = gp4u_proto::ErrorBody), (status = 413, body = gp4u_proto::ErrorBody),
        (status = 422, body = gp4u_proto::ErrorBody), (status = 429, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn submit_job(
    State(state): State<AppState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // 1. requireAuth: done by the `Caller` extractor (active user, clearance not above stored).
    caller.require(CLEARANCE_CUSTOMER, ErrorCode::CustomerRequired, "customer")?;

    // 2. Rate limit, before validation, so that spam of invalid jobs is throttled too.
    let now_ms = state.now_ms();
    let limit = i64::from(state.limits.submissions_per_minute);
    if let RateDecision::Limited { retry_after_ms } = state
        .store
        .rate_limit_hit(
            &format!("jobs:{}", caller.id()),
            now_ms,
            RATE_WINDOW_MS,
            limit,
        )
        .await?
    {
        let seconds = u64::try_from((retry_after_ms + 999) / 1000)
            .unwrap_or(1)
            .max(1);
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("more than {limit} job submissions in a minute; retry in {seconds} s"),
        )
        .with_retry_after(seconds));
    }

    // The body is read only now, so that unreadable and oversized bodies count as attempts too.
    let body = JsonBody::read(&headers, body, state.limits.max_body_bytes).await?;

    // A retried request with a known Idempotency-Key gets the first response and creates nothing.
    let request_hash = body.sha256_hex();
    if let Some(key) = &idempotency.0
        && let Some(existing) = state
            .store
            .idempotency_lookup(caller.id(), key, state.limits.idempotency_ttl_ms, now_ms)
            .await?
    {
        return replay(existing, &request_hash);
    }

    // 3. Validation: every rule of SPEC §3, each error naming its field.
    let manifest = validate_submission(&body.value)?;
    // Every input is an artifact the submitter uploaded.
    crate::routes::artifacts::check_inputs(&state, caller.id(), &manifest.inputs).await?;

    // 4. GPU lookup, and 5. the cost, computed here and never taken from the client.
    let target = resolve_target(&state, &manifest).await?;
    let cost_estimate = job_cost(target.price_per_hour, manifest.expected_duration);
    let hold = gp4u_core::billing::hold_amount(cost_estimate);

    // 6. The job row (PENDING) and 7. its job.created event, in one transaction (outbox).
    let job_id = JobId::from_random(state.random_id_bytes());
    let gpu = target.gpu.as_ref();
    let accepted = JobAccepted {
        id: job_id.to_string(),
        status: JobState::new_pending().status,
        cost_estimate: money(cost_estimate),
        gpu: gpu.map(|gpu| GpuBrief {
            name: gpu.name.clone(),
            region: gpu.region.clone(),
        }),
    };
    let response_json =
        serde_json::to_string(&accepted).map_err(|error| ApiError::internal("response", error))?;
    let created_event = JobCreated {
        job_id: job_id.clone(),
        owner_id: caller.id().clone(),
        workload_type: manifest.workload_type.as_str().to_string(),
        gpu_id: gpu.map(|gpu| gpu.id.clone()),
        gpu_name: gpu.map(|gpu| gpu.name.clone()),
        gpu_region: gpu.map(|gpu| gpu.region.clone()),
        gpu_vram_gb: gpu.map(|gpu| gpu.vram_gb),
        requirement: match &manifest.target {
            GpuTarget::Requirement(requirement) => Some(requirement.clone()),
            GpuTarget::Pinned(_) => None,
        },
        customer_region: caller
            .user
            .region
            .clone()
            .or_else(|| match &manifest.target {
                GpuTarget::Requirement(requirement) => requirement.region.clone(),
                GpuTarget::Pinned(_) => None,
            }),
        cost_estimate_micros: cost_estimate.micros(),
        expected_duration_micro_hours: manifest.expected_duration.micro_hours(),
        created_at_ms: now_ms,
    };
    let mut job_state = JobState::new_pending();
    job_state.gpu_id = gpu.map(|gpu| gpu.id.clone());
    let record = JobRecord {
        id: job_id.clone(),
        owner_id: caller.id().clone(),
        name: manifest.name.clone(),
        state: job_state,
        gpu_name: gpu.map(|gpu| gpu.name.clone()),
        gpu_region: gpu.map(|gpu| gpu.region.clone()),
        price_per_hour: target.price_per_hour,
        cost_estimate,
        placement: None,
        latest_metrics: None,
        anomalies: serde_json::Value::Array(Vec::new()),
        energy_kwh: None,
        carbon_kg: None,
        renewable_pct: None,
        carbon_credit_eligible: None,
        created_at_ms: now_ms,
        version: 1,
        assigned_at_ms: None,
        picked_up_at_ms: None,
        excluded_nodes: Vec::new(),
        blobs: Default::default(),
        last_telemetry_at_ms: None,
        retries: 0,
        attempts: Vec::new(),
        hold,
        gpu_power_limit_mw: None,
        manifest,
    };
    let hold_transfer = gp4u_core::billing::hold_transfer(&job_id, caller.id(), hold)
        .map_err(|error| ApiError::internal("billing hold", error))?;
    let new_job = NewJob {
        record,
        idempotency: idempotency.0.map(|key| NewIdempotency {
            key,
            request_hash: request_hash.clone(),
            status_code: StatusCode::CREATED.as_u16(),
            response: response_json,
        }),
        events: vec![OutboxEvent {
            topic: TOPIC_JOB_CREATED.to_string(),
            aggregate_id: job_id.to_string(),
            payload: serde_json::to_value(&created_event)
                .map_err(|error| ApiError::internal("event", error))?,
        }],
        transfers: hold_transfer
            .iter()
            .map(gp4u_store::NewTransfer::from)
            .collect(),
    };
    match state
        .store
        .create_job(&new_job, state.limits.idempotency_ttl_ms, now_ms)
        .await
    {
        Ok(CreateJobOutcome::Created(job)) => {
            state.metrics.submissions.inc();
            state.relay.nudge();
            state.atlas_nudge.notify_one();
            tracing::info!(job_id = %job.id, owner = %job.owner_id, cost_micros = cost_estimate.micros(), "job accepted");
            Ok((StatusCode::CREATED, Json(accepted)).into_response())
        }
        Ok(CreateJobOutcome::Replayed(existing)) => replay(existing, &request_hash),
        Err(StoreError::Conflict(message)) => {
            Err(ApiError::new(ErrorCode::InvalidIdempotencyKey, message))
        }
        Err(StoreError::InsufficientFunds { .. }) => {
            let balance = state.store.balance(caller.id()).await?;
            Err(ApiError::new(
                ErrorCode::InsufficientCredit,
                format!(
                    "this job holds {} of credit until it is settled (estimate {} × 1.1) and you \
                     have {} available; add credit or submit a shorter or cheaper job",
                    hold, cost_estimate, balance.available
                ),
            ))
        }
        Err(error) => Err(error.into()),
    }
}

fn replay(existing: gp4u_store::IdempotencyRecord, request_hash: &str) -> ApiResult<Response> {
    if existing.request_hash != request_hash {
        return Err(ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            format!(
                "this Idempotency-Key was used for a different request (job {}); use a new key for a new job",
                existing.job_id
            ),
        ));
    }
    let status = StatusCode::from_u16(existing.status_code).unwrap_or(StatusCode::CREATED);
    let body: serde_json::Value = serde_json::from_str(&existing.response)
        .map_err(|error| ApiError::internal("stored idempotent response", error))?;
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    Ok(response)
}

/// Where a job will run, as far as stage 1 knows, and the price its estimate uses.
struct Target {
    /// The pinned GPU; `None` until Atlas places a requirement.
    gpu: Option<GpuRecord>,
    price_per_hour: Money,
}

async fn resolve_target(state: &AppState, manifest: &JobManifest) -> ApiResult<Target> {
    match &manifest.target {
        GpuTarget::Pinned(gpu_id) => {
            let gpu = pinned_gpu(state, gpu_id).await?;
            // SPEC §10: a node without an egress filter takes no `public` job (unless its
            // provider accepted unfiltered egress), and none takes more scratch than it offers.
            if let Some(refusal) = gpu
                .node_posture
                .as_ref()
                .and_then(|posture| posture.refusal(manifest.network, manifest.scratch_gb()))
            {
                return Err(ApiError::new(
                    ErrorCode::GpuNotAvailable,
                    format!(
                        "GPU {gpu_id} cannot run this job: {refusal}; pick another GPU from GET /api/gpus or change the job"
                    ),
                ));
            }
            Ok(Target {
                price_per_hour: gpu.price_per_hour,
                gpu: Some(gpu),
            })
        }
        GpuTarget::Requirement(requirement) => {
            let listed = state
                .store
                .list_available_gpus(REQUIREMENT_SCAN_LIMIT)
                .await?;
            let price = estimate_price(requirement, &listed).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NoMatchingGpu,
                    "no AVAILABLE GPU matches `gpu`, and without gpu.max_price_per_hour there is no \
                     price to estimate; relax the requirement or set gpu.max_price_per_hour to queue",
                )
            })?;
            Ok(Target {
                gpu: None,
                price_per_hour: price,
            })
        }
    }
}

async fn pinned_gpu(state: &AppState, gpu_id: &GpuId) -> ApiResult<GpuRecord> {
    let Some(gpu) = state.store.get_gpu(gpu_id).await? else {
        return Err(ApiError::new(
            ErrorCode::GpuNotFound,
            format!("GPU {gpu_id} does not exist; GET /api/gpus lists the available ones"),
        ));
    };
    if gpu.status != GpuStatus::Available {
        return Err(ApiError::new(
            ErrorCode::GpuNotAvailable,
            format!(
                "GPU {gpu_id} is {}; pick an AVAILABLE GPU from GET /api/gpus",
                gpu.status.as_str()
            ),
        ));
    }
    Ok(gpu)
}

/// The price a requirement's estimate uses: the dearest matching GPU (so that the estimate
/// covers whichever one Atlas picks), else the customer's price cap, else nothing.
pub fn estimate_price(requirement: &GpuRequirement, listed: &[GpuRecord]) -> Option<Money> {
    listed
        .iter()
        .filter(|gpu| {
            // The same test Atlas places with, so the estimate covers the GPU it will choose.
            matches_requirement(
                requirement,
                &gpu.name,
                gpu.vram_gb,
                &gpu.region,
                gpu.price_per_hour,
            )
        })
        .map(|gpu| gpu.price_per_hour)
        .max()
        .or(requirement.max_price_per_hour)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// At most this many jobs, newest first (1–500, default 100).
    pub limit: Option<i64>,
    /// The next page: the jobs older than this one of yours (a page's `next_before`).
    pub before: Option<String>,
}

/// The caller's jobs, newest first.
#[utoipa::path(
    get, path = "/api/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 401, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<JobList>> {
    let Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidQuery, error.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("limit must be 1–500, got {limit}"),
        ));
    }
    let before = match query.before.as_deref() {
        None => None,
        Some(before) => {
            let job = JobId::parse(before).ok();
            let owned = match &job {
                Some(job) => state
                    .store
                    .get_job(job)
                    .await?
                    .is_some_and(|record| &record.owner_id == caller.id()),
                None => false,
            };
            if !owned {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!(
                        "before must be one of your jobs (a page's next_before), got {before:?}"
                    ),
                ));
            }
            job
        }
    };
    // One more than asked: whether an older page exists.
    let mut jobs = state
        .store
        .list_jobs_for_owner_before(caller.id(), limit + 1, before.as_ref())
        .await?;
    let more = jobs.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    jobs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Json(JobList {
        next_before: more
            .then(|| jobs.last().map(|job| job.id.as_str().to_string()))
            .flatten(),
        jobs: jobs.iter().map(job_view).collect(),
    }))
}

/// Loads a job the caller may see: its owner or an admin. Anyone else gets the same 404 as for
/// a job that does not exist, so job ids cannot be probed.
pub async fn visible_job(state: &AppState, caller: &Caller, id: &str) -> ApiResult<JobRecord> {
    let not_found = || {
        ApiError::new(
            ErrorCode::JobNotFound,
            format!("no job {id} visible to you"),
        )
    };
    let job_id = JobId::parse(id).map_err(|_| not_found())?;
    let job = state.store.get_job(&job_id).await?.ok_or_else(not_found)?;
    if job.owner_id != *caller.id() && !caller.is_admin() {
        return Err(not_found());
    }
    Ok(job)
}

/// One job (its owner or an admin).
#[utoipa::path(
    get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(job_view(&visible_job(&state, &caller, &id).await?)))
}

/// Cancel a job that has not ended (its owner, or an admin).
#[utoipa::path(
    post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path)),
    responses(
        (status = 200, body = JobView), (status = 404, body = gp4u_proto::ErrorBody),
        (status = 409, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let by = |job: &JobRecord| {
        if job.owner_id == *caller.id() {
            EndedBy::Customer
        } else {
            EndedBy::Platform
        }
    };
    let mut job = visible_job(&state, &caller, &id).await?;
    // Optimistic concurrency: if the job changed under us, decide again on the fresh state.
    for _attempt in 0..5 {
        let now_ms = state.now_ms();
        let (next, events) = match transition(&job.state, JobInput::Cancel { by: by(&job) }, now_ms)
        {
            Ok(outcome) => outcome,
            Err(TransitionError::Terminal { status })
            | Err(TransitionError::Illegal { from: status, .. }) => {
                return Err(ApiError::new(
                    ErrorCode::JobAlreadyTerminal,
                    format!(
                        "job {} is {}; only PENDING, ASSIGNED or RUNNING jobs can be cancelled",
                        job.id,
                        status.as_str()
                    ),
                ));
            }
        };
        let outbox = crate::placement::job_events(&job, &events)?;
        match state
            .store
            .update_job_state(&job.id, job.version, &next, &outbox, now_ms)
            .await
        {
            Ok(updated) => {
                state.relay.nudge();
                state.atlas_nudge.notify_one();
                state.tutela.forget(&updated.id);
                tracing::info!(job_id = %updated.id, ended_by = ?updated.state.ended_by, "job cancelled");
                return Ok(Json(job_view(&updated)));
            }
            Err(StoreError::Conflict(_)) => {
                job = visible_job(&state, &caller, &id).await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::Unavailable,
        "the job kept changing while cancelling; retry",
    )
    .with_retry_after(1))
}
