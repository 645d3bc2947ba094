//! Stage 3's control-plane side: the long-poll dispatch and the agent's status reports.
//! (The agent's inputs, outputs and logs are in `artifacts`, `outputs` and `logs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gp4u_core::chambers::PRESENCE_GAP_MS;
use gp4u_core::ids::{JobId, NodeId};
use gp4u_core::job::{EndedBy, FailureReason, JobInput, JobStatus, transition};
use gp4u_core::pricing::duration_cap;
use gp4u_proto::{AgentStatusReply, AgentStatusReport, AssignmentManifest, ErrorCode};
use gp4u_store::{JobRecord, NodeRecord, StoreError};
use serde::Deserialize;

use crate::auth::{CLEARANCE_PROVIDER, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::placement::job_events;
use crate::state::AppState;

/// The longest long-poll, in seconds.
const MAX_WAIT_S: u64 = 60;
/// While waiting, the database is also checked this often, for assignments made by another
/// replica (this replica's own assignments wake the poll at once).
const CROSS_REPLICA_CHECK: Duration = Duration::from_millis(1000);
/// Contacts closer than this to the last recorded one are not written (a provider polling
/// with `wait=0` in a loop costs no writes); presence loses nothing by it.
const PRESENCE_MIN_INTERVAL_MS: i64 = 5_000;

/// Loads a node the caller owns. Someone else's node is a 404, like a node that does not exist.
pub async fn owned_node(state: &AppState, caller: &Caller, node_id: &str) -> ApiResult<NodeRecord> {
    caller.require(CLEARANCE_PROVIDER, ErrorCode::ProviderRequired, "provider")?;
    let not_found = || {
        ApiError::new(
            ErrorCode::NodeNotFound,
            format!("no node {node_id} of yours"),
        )
    };
    let id = NodeId::parse(node_id).map_err(|_| not_found())?;
    let node = state.store.get_node(&id).await?.ok_or_else(not_found)?;
    if node.owner_id != *caller.id() {
        return Err(not_found());
    }
    Ok(node)
}

/// `?node_id=` on the agent's per-job routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct NodeQuery {
    pub node_id: String,
}

/// Loads a job of a node the caller owns: the job must be placed on that node. Anything else
/// (someone else's node, another node's job, no such job) is a 404.
pub async fn node_job(
    state: &AppState,
    caller: &Caller,
    job_id: &str,
    query: Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(NodeRecord, JobRecord)> {
    let Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidQuery, error.body_text()))?;
    let node = owned_node(state, caller, &query.node_id).await?;
    let not_found = || {
        ApiError::new(
            ErrorCode::JobNotFound,
            format!("no job {job_id} on node {}", node.id),
        )
    };
    let id = JobId::parse(job_id).map_err(|_| not_found())?;
    let job = state.store.get_job(&id).await?.ok_or_else(not_found)?;
    if job.state.node_id.as_ref() != Some(&node.id) {
        return Err(not_found());
    }
    Ok((node, job))
}

/// 409 when the job has ended: its files can no longer change.
pub fn require_live(job: &JobRecord) -> ApiResult<()> {
    if job.state.status.is_terminal() {
        return Err(ApiError::new(
            ErrorCode::JobAlreadyTerminal,
            format!(
                "job {} is {}; its inputs, outputs and logs are closed",
                job.id,
                job.state.status.as_str()
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AssignmentQuery {
    pub node_id: String,
    /// Seconds to wait for an assignment (0–60, default 25).
    pub wait: Option<u64>,
}

/// The node's next job: 200 with its manifest as soon as one is assigned, 204 after `wait`.
#[utoipa::path(
    get, path = "/api/agent/assignments", tag = "agent", params(AssignmentQuery),
    responses((status = 200, body = AssignmentManifest), (status = 204), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn next_assignment(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AssignmentQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidQuery, error.body_text()))?;
    let node = owned_node(&state, &caller, &query.node_id).await?;
    let wait = query.wait.unwrap_or(25);
    if wait > MAX_WAIT_S {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("wait must be 0–{MAX_WAIT_S} seconds, got {wait}"),
        ));
    }
    // A poll is the agent's contact: at its start and at its end (a long poll held open is
    // the node being present). Presence is best effort: it never fails a poll.
    record_contact(&state, &node.id).await;
    let result = wait_for_assignment(&state, &node.id, wait).await;
    record_contact(&state, &node.id).await;
    result
}

async fn record_contact(state: &AppState, node: &NodeId) {
    if let Err(error) = state
        .store
        .record_node_contact(
            node,
            state.now_ms(),
            PRESENCE_GAP_MS,
            PRESENCE_MIN_INTERVAL_MS,
        )
        .await
    {
        tracing::warn!(%error, node_id = %node, "an agent contact was not recorded as presence");
    }
}

/// Hands out the node's next assigned job, waiting up to `wait` seconds for one.
async fn wait_for_assignment(state: &AppState, node: &NodeId, wait: u64) -> ApiResult<Response> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let notifier = state.dispatch.notifier(node);
    loop {
        // Register interest before looking, so an assignment in between still wakes us.
        let notified = notifier.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        for job in state.store.pending_assignments(node, 4).await? {
            if state
                .store
                .mark_picked_up(&job.id, node, state.now_ms())
                .await?
            {
                tracing::info!(job_id = %job.id, node_id = %node, "assignment picked up");
                return Ok(Json(manifest(state, &job).await?).into_response());
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || state.is_draining() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let nap = (deadline - now).min(CROSS_REPLICA_CHECK);
        let _ = tokio::time::timeout(nap, notified).await;
    }
}

async fn manifest(state: &AppState, job: &JobRecord) -> ApiResult<AssignmentManifest> {
    let gpu_id = job.state.gpu_id.clone().ok_or_else(|| {
        ApiError::internal("dispatch", format!("assigned job {} has no gpu", job.id))
    })?;
    let gpu_uuid = state.store.get_gpu(&gpu_id).await?.and_then(|gpu| gpu.uuid);
    let manifest = &job.manifest;
    let mut input_sha256 = BTreeMap::new();
    for input in &manifest.inputs {
        let artifact = state.store.get_artifact(input).await?.ok_or_else(|| {
            ApiError::internal(
                "dispatch",
                format!("job {} lists missing artifact {input}", job.id),
            )
        })?;
        input_sha256.insert(input.to_string(), artifact.sha256);
    }
    let cap_micro_hours = duration_cap(manifest.expected_duration).micro_hours();
    Ok(AssignmentManifest {
        job_id: job.id.to_string(),
        docker_image: manifest.docker_image.clone(),
        docker_image_sha256: manifest.docker_image_sha256.clone(),
        gpu_id: gpu_id.to_string(),
        gpu_uuid,
        ram_limit_gb: manifest.ram_limit_gb,
        env: manifest.env.clone(),
        command: manifest.command.clone(),
        inputs: manifest.inputs.iter().map(ToString::to_string).collect(),
        input_sha256,
        expected_duration_hours: manifest.expected_duration.as_f64(),
        // micro-hours × 3600 s / 1e6, rounded up: the job gets at least its full allowance.
        kill_after_seconds: u64::try_from(
            (i128::from(cap_micro_hours) * 3600 + 999_999) / 1_000_000,
        )
        .unwrap_or(u64::MAX),
        telemetry_interval_seconds: state.tutela.settings.telemetry_interval_s,
        shm_gb: manifest.shm_gb(),
        scratch_gb: manifest.scratch_gb(),
        network: manifest.network.as_str().to_string(),
        gpu_power_limit_watts: job.gpu_power_limit_mw.map(gp4u_core::energy::mw_to_watts),
    })
}

fn report_input(report: &AgentStatusReport) -> ApiResult<Option<JobInput>> {
    let invalid = |message: String| ApiError::new(ErrorCode::InvalidReport, message);
    match report.status.as_str() {
        "running" => Ok(Some(JobInput::Start)),
        "exited" => {
            let exit_code = report
                .exit_code
                .ok_or_else(|| invalid("`exited` needs `exit_code`".into()))?;
            Ok(Some(JobInput::Exit { exit_code }))
        }
        "failed" => match report.reason.as_deref() {
            // The customer's image could not be pulled or did not match its digest.
            Some("IMAGE_PULL_FAILED") => Ok(Some(JobInput::Fail {
                reason: FailureReason::ImagePullFailed,
                ended_by: EndedBy::Customer,
            })),
            // An input could not be fetched or did not match its hash: not the customer's
            // fault, and not provably the provider's (see FailureReason::is_provider_fault).
            Some("INPUT_FAILED") => Ok(Some(JobInput::Fail {
                reason: FailureReason::InputFailed,
                ended_by: EndedBy::Platform,
            })),
            // The platform's duration rule: no one's fault, no slash.
            Some("DURATION_EXCEEDED") => Ok(Some(JobInput::Fail {
                reason: FailureReason::DurationExceeded,
                ended_by: EndedBy::Platform,
            })),
            // The workload wrote past its /scratch size: the customer's fault, no slash.
            Some("SCRATCH_EXCEEDED") => Ok(Some(JobInput::Fail {
                reason: FailureReason::ScratchExceeded,
                ended_by: EndedBy::Customer,
            })),
            // The node could not set the job up: the provider's; placed elsewhere while the
            // job has retries left (see `report_status`), never charged to the customer.
            Some("NODE_SETUP_FAILED") => Ok(Some(JobInput::Fail {
                reason: FailureReason::NodeSetupFailed,
                ended_by: EndedBy::Provider,
            })),
            other => Err(invalid(format!(
                "`failed` needs `reason` IMAGE_PULL_FAILED, INPUT_FAILED, DURATION_EXCEEDED, SCRATCH_EXCEEDED or NODE_SETUP_FAILED, got {other:?}"
            ))),
        },
        other => Err(invalid(format!(
            "`status` must be running, exited or failed, got {other:?}"
        ))),
    }
}

/// The agent reports on a job of its node: started (and still running), exited, or failed.
/// The reply says whether to kill the container: the job was cancelled or ended elsewhere.
#[utoipa::path(
    post, path = "/api/agent/jobs/{id}/status", tag = "agent", params(("id" = String, Path)),
    request_body = AgentStatusReport,
    responses((status = 200, body = AgentStatusReply), (status = 400, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn report_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<AgentStatusReply>> {
    let report: AgentStatusReport = serde_json::from_value(body.value).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidReport,
            format!("the report does not parse: {error}"),
        )
    })?;
    let node = owned_node(&state, &caller, &report.node_id).await?;
    let input = report_input(&report)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::JobNotFound,
            format!("no job {id} on node {}", node.id),
        )
    };
    let job_id = JobId::parse(&id).map_err(|_| not_found())?;
    // A provider-fault failure ends the attempt, not necessarily the job: retried elsewhere.
    if let Some(JobInput::Fail { reason, ended_by }) = &input
        && reason.is_provider_fault()
    {
        let job = state.store.get_job(&job_id).await?.ok_or_else(not_found)?;
        if job.state.node_id.as_ref() != Some(&node.id) {
            return Ok(Json(reply(&job, true)));
        }
        tracing::warn!(job_id = %job_id, node_id = %node.id, reason = reason.as_str(), message = ?report.message, "the node could not run the job");
        let ended =
            crate::tutela::end_attempt(&state, &job_id, &node.id, *reason, *ended_by).await?;
        let job = match ended {
            Some(job) => job,
            None => state.store.get_job(&job_id).await?.ok_or_else(not_found)?,
        };
        return Ok(Json(reply(&job, false)));
    }
    for _attempt in 0..5 {
        let job = state.store.get_job(&job_id).await?.ok_or_else(not_found)?;
        if job.state.node_id.as_ref() != Some(&node.id) {
            // Not (or no longer) this node's job: fenced. The agent must stop it.
            return Ok(Json(reply(&job, true)));
        }
        let Some(input) = input.clone() else {
            return Ok(Json(reply(&job, false)));
        };
        let now_ms = state.now_ms();
        if input == JobInput::Start && job.state.status == JobStatus::Running {
            return Ok(Json(reply(&job, false)));
        }
        let (next, events) = match transition(&job.state, input, now_ms) {
            Ok(outcome) => outcome,
            // Terminal (cancelled, failed by the platform): stop the container.
            Err(_) => return Ok(Json(reply(&job, job.state.status.is_terminal()))),
        };
        match state
            .store
            .update_job_state(
                &job.id,
                job.version,
                &next,
                &job_events(&job, &events)?,
                now_ms,
            )
            .await
        {
            Ok(updated) => {
                state.relay.nudge();
                state.tutela.forget(&updated.id);
                if updated.state.status.is_terminal() {
                    state.atlas_nudge.notify_one();
                }
                tracing::info!(job_id = %updated.id, node_id = %node.id, status = updated.state.status.as_str(),
                    exit_code = ?updated.state.exit_code, "agent report");
                return Ok(Json(reply(&updated, false)));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(ApiError::new(ErrorCode::Unavailable, "the job kept changing; retry").with_retry_after(1))
}

fn reply(job: &JobRecord, kill: bool) -> AgentStatusReply {
    AgentStatusReply {
        job_id: job.id.to_string(),
        status: job.state.status.as_str().to_string(),
        kill,
    }
}
