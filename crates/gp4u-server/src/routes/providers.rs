//! Providers: node registration, the marketplace listing, a node's standing (stake, trust,
//! slashes), stake deposits and the agent's visibility endpoint.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gp4u_core::chambers::uptime_score;
use gp4u_core::energy::mw_to_watts;
use gp4u_core::events::{NodeRegistered, RegisteredGpu, TOPIC_NODE_REGISTERED};
use gp4u_core::ids::{GpuId, NodeId};
use gp4u_core::manifest::{
    FieldError, ValidationCode, validate_credit_amount, validate_power_limits,
    validate_registration,
};
use gp4u_proto::{
    ErrorCode, GpuList, NodeRecordView, ProviderNodeView, Registered, RegisteredGpuView, SlashView,
};
use gp4u_store::{GpuRecord, NewNode, NodeRecord, OutboxEvent, StoreError};

use crate::auth::{CLEARANCE_ADMIN, CLEARANCE_PROVIDER, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::views::{gpu_view, money, price, rfc3339};

/// How many GPUs the listing shows.
const LISTING_LIMIT: i64 = 1000;

/// Register a provider node and its GPUs; the caller owns the node.
#[utoipa::path(
    post, path = "/api/providers/register", tag = "providers", request_body = gp4u_proto::RegisterBody,
    responses((status = 201, body = Registered), (status = 400, body = gp4u_proto::ErrorBody), (status = 403, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    caller.require(CLEARANCE_PROVIDER, ErrorCode::ProviderRequired, "provider")?;
    let renewable_pct = renewable_pct(&body.value)?.unwrap_or(0.0);
    // The agent's host posture is validated with the rest (a 400 names `posture.…`).
    let registration = match body.value.as_object() {
        Some(object) => {
            let mut stripped = object.clone();
            stripped.remove("renewable_pct");
            validate_registration(&serde_json::Value::Object(stripped))?
        }
        None => validate_registration(&body.value)?,
    };
    let node = NewNode {
        id: NodeId::from_random(state.random_id_bytes()),
        owner_id: caller.id().clone(),
        region: registration.region,
        public_key: registration.public_key,
        gpus: registration
            .gpus
            .into_iter()
            .map(|spec| (GpuId::from_random(state.random_id_bytes()), spec))
            .collect(),
        posture: registration.posture,
    };
    let event = NodeRegistered {
        node_id: node.id.clone(),
        owner_id: node.owner_id.clone(),
        region: node.region.clone(),
        gpus: node
            .gpus
            .iter()
            .map(|(id, spec)| RegisteredGpu {
                gpu_id: id.clone(),
                name: spec.name.clone(),
                vram_gb: spec.vram_gb,
                price_per_hour_micros: spec.price_per_hour.micros(),
                power_limit_watts: Some(mw_to_watts(spec.power_limit_mw)),
            })
            .collect(),
    };
    let events = [OutboxEvent {
        topic: TOPIC_NODE_REGISTERED.to_string(),
        aggregate_id: node.id.to_string(),
        payload: serde_json::to_value(&event)
            .map_err(|error| ApiError::internal("event", error))?,
    }];
    let (record, gpus) = state
        .store
        .register_node(&node, &events, state.now_ms())
        .await?;
    if renewable_pct > 0.0 {
        state
            .store
            .set_node_renewable(&record.id, renewable_pct)
            .await?;
    }
    state.relay.nudge();
    tracing::info!(node_id = %record.id, owner = %record.owner_id, gpus = gpus.len(), "node registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            node_id: record.id.to_string(),
            gpus: gpus.iter().map(registered_gpu_view).collect(),
            platform_public_key: Some(state.tutela.platform_public_key()),
        }),
    ))
}

fn registered_gpu_view(gpu: &GpuRecord) -> RegisteredGpuView {
    RegisteredGpuView {
        id: gpu.id.to_string(),
        name: gpu.name.clone(),
        vram_gb: gpu.vram_gb,
        price_per_hour: price(gpu.price_per_hour),
        region: gpu.region.clone(),
        status: gpu.status,
        emulated: gpu.emulated,
        driver_version: gpu.driver_version.clone(),
        power_limit_watts: gpu.power_limit_mw.map(mw_to_watts),
    }
}

/// Loads a node the caller may see: its owner, or an admin. Anyone else gets 404.
async fn visible_node(state: &AppState, caller: &Caller, node_id: &str) -> ApiResult<NodeRecord> {
    let not_found = || {
        ApiError::new(
            ErrorCode::NodeNotFound,
            format!("no node {node_id} of yours"),
        )
    };
    let id = NodeId::parse(node_id).map_err(|_| not_found())?;
    let node = state.store.get_node(&id).await?.ok_or_else(not_found)?;
    let admin = caller.clearance() >= CLEARANCE_ADMIN;
    if node.owner_id != *caller.id() && !admin {
        return Err(not_found());
    }
    Ok(node)
}

async fn node_view(state: &AppState, node: &NodeRecord) -> ApiResult<ProviderNodeView> {
    let gpus = state.store.list_node_gpus(&node.id).await?;
    let slashes = state.store.list_slashes(&node.id, 100).await?;
    let mnemo = crate::placement::provider_records(state)
        .await?
        .remove(node.id.as_str())
        .unwrap_or_default();
    let now_ms = state.now_ms();
    let presence = node.presence;
    let hours = |ms: i64| ms as f64 / 3_600_000.0;
    let record = NodeRecordView {
        first_seen_at: presence.first_seen_at_ms.map(rfc3339),
        last_seen_at: presence.last_seen_at_ms.map(rfc3339),
        online_hours: hours(presence.online_ms(now_ms)),
        observed_hours: hours(presence.observed_ms(now_ms)),
        presence_uptime: presence.uptime(now_ms),
        completed_jobs: mnemo.completed,
        dropped_jobs: mnemo.dropped,
        completion_rate: mnemo.completion_rate(),
        veritas_records: mnemo.veritas_records,
        reproducible: mnemo.reproducible,
        provenance: mnemo.provenance(),
        uptime: uptime_score(presence.uptime(now_ms), mnemo.completion_rate()),
    };
    Ok(ProviderNodeView {
        node_id: node.id.to_string(),
        owner_id: node.owner_id.to_string(),
        region: node.region.clone(),
        status: node.status,
        stake: money(node.stake),
        trust_score: node.trust_score,
        ejected_at: node.ejected_at_ms.map(rfc3339),
        ejected_reason: node.ejected_reason.clone(),
        posture: node.posture.clone(),
        visibility: node.visibility.clone(),
        visibility_checked_at: node.visibility_checked_at_ms.map(rfc3339),
        gpus: gpus.iter().map(registered_gpu_view).collect(),
        slashes: slashes
            .iter()
            .map(|slash| SlashView {
                id: slash.id.clone(),
                kind: slash.kind.as_str().to_string(),
                severity: match slash.kind.severity() {
                    gp4u_core::tutela::Severity::Hard => "HARD",
                    _ => "SOFT",
                }
                .to_string(),
                job_id: slash.job_id.as_ref().map(ToString::to_string),
                stake_taken: money(slash.stake_taken),
                trust_before: slash.trust_before,
                trust_after: slash.trust_after,
                evidence: slash.evidence.clone(),
                at: rfc3339(slash.at_ms),
            })
            .collect(),
        record: Some(record),
    })
}

/// A node's standing: status (ACTIVE or EJECTED), stake, trust score, visibility, GPUs and
/// slashes (newest first, at most 100). Its owner or an admin; anyone else 404.
#[utoipa::path(
    get, path = "/api/providers/{nodeId}", tag = "providers", params(("nodeId" = String, Path)),
    responses((status = 200, body = ProviderNodeView), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(node_id): Path<String>,
) -> ApiResult<Json<ProviderNodeView>> {
    let node = visible_node(&state, &caller, &node_id).await?;
    Ok(Json(node_view(&state, &node).await?))
}

/// The caller's nodes (a provider's own; an admin's own too), each with its standing as
/// `GET /api/providers/{nodeId}` shows it, in id order.
#[utoipa::path(
    get, path = "/api/providers", tag = "providers",
    responses((status = 200, body = gp4u_proto::ProviderNodeList), (status = 403, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<gp4u_proto::ProviderNodeList>> {
    caller.require(CLEARANCE_PROVIDER, ErrorCode::ProviderRequired, "provider")?;
    let mut nodes = Vec::new();
    for node_id in state.store.owner_node_ids(caller.id()).await? {
        if let Some(node) = state.store.get_node(&node_id).await? {
            nodes.push(node_view(&state, &node).await?);
        }
    }
    Ok(Json(gp4u_proto::ProviderNodeList { nodes }))
}

/// Moves `amount` of the owner's credit into the node's stake (what slashes take from).
#[utoipa::path(
    post, path = "/api/providers/{nodeId}/stake", tag = "providers", params(("nodeId" = String, Path)),
    request_body = gp4u_proto::StakeBody,
    responses((status = 200, body = ProviderNodeView), (status = 400, body = gp4u_proto::ErrorBody),
        (status = 404, body = gp4u_proto::ErrorBody), (status = 409, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn add_stake(
    State(state): State<AppState>,
    caller: Caller,
    Path(node_id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<ProviderNodeView>> {
    let node = crate::routes::agent::owned_node(&state, &caller, &node_id).await?;
    let amount = validate_credit_amount(&body.value)?;
    if amount.micros() <= 0 {
        return Err(FieldError::new(
            ValidationCode::InvalidAmount,
            "amount",
            "`amount` must be positive: a stake only grows by deposits".to_owned(),
        )
        .into());
    }
    let node = match state
        .store
        .add_stake(
            &node.id,
            caller.id(),
            amount,
            &format!("stake:{}", state.random_reference()),
            state.now_ms(),
        )
        .await
    {
        Ok(node) => node,
        Err(StoreError::Conflict(message)) => {
            return Err(ApiError::new(ErrorCode::CreditBelowZero, message));
        }
        Err(error) => return Err(error.into()),
    };
    tracing::info!(node_id = %node.id, stake = %node.stake, "stake deposited");
    Ok(Json(node_view(&state, &node).await?))
}

/// Records what the node's agent reads of its host (SPEC §10): the body is the posture
/// (`runtime`, `seccomp`, `egress_filter`, `scratch_quota`, `max_scratch_gb`, …). The agent
/// sends it at every start; placement goes by the latest.
#[utoipa::path(
    put, path = "/api/providers/{nodeId}/posture", tag = "providers", params(("nodeId" = String, Path)),
    request_body = gp4u_proto::HostPosture,
    responses((status = 200, body = ProviderNodeView), (status = 400, body = gp4u_proto::ErrorBody),
        (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn set_posture(
    State(state): State<AppState>,
    caller: Caller,
    Path(node_id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<ProviderNodeView>> {
    let node = crate::routes::agent::owned_node(&state, &caller, &node_id).await?;
    let posture = gp4u_core::posture::validate_posture(&body.value)?;
    state.store.set_node_posture(&node.id, &posture).await?;
    tracing::info!(node_id = %node.id, egress_filter = %posture.egress_filter,
        scratch_quota = %posture.scratch_quota, "host posture reported");
    let node = state.store.get_node(&node.id).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NodeNotFound,
            format!("no node {node_id} of yours"),
        )
    })?;
    Ok(Json(node_view(&state, &node).await?))
}

/// The marketplace: AVAILABLE GPUs with price, region and the provider's trust score.
#[utoipa::path(
    get, path = "/api/gpus", tag = "providers",
    responses((status = 200, body = GpuList), (status = 401, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_gpus(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<GpuList>> {
    let gpus = state.store.list_available_gpus(LISTING_LIMIT).await?;
    Ok(Json(GpuList {
        gpus: gpus.iter().map(gpu_view).collect(),
    }))
}

/// The optional `renewable_pct` of a body: a number 0–100.
fn renewable_pct(body: &serde_json::Value) -> ApiResult<Option<f64>> {
    match body.get("renewable_pct") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|pct| (0.0..=100.0).contains(pct))
            .map(Some)
            .ok_or_else(|| {
                ApiError::from(FieldError::new(
                    ValidationCode::InvalidType,
                    "renewable_pct",
                    "`renewable_pct` must be a number from 0 to 100".to_owned(),
                ))
            }),
    }
}

/// Sets the share of the node's power its provider declares renewable
/// (`{"renewable_pct": 85}`): what jobs ending from now on are accounted and proven with. The
/// agent sends its `--renewable-pct` at every start.
#[utoipa::path(
    put, path = "/api/providers/{nodeId}/energy", tag = "providers", params(("nodeId" = String, Path)),
    request_body = gp4u_proto::RenewableBody,
    responses((status = 204), (status = 400, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn set_energy(
    State(state): State<AppState>,
    caller: Caller,
    Path(node_id): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    let node = crate::routes::agent::owned_node(&state, &caller, &node_id).await?;
    let pct = renewable_pct(&body.value)?.ok_or_else(|| {
        ApiError::from(FieldError::new(
            ValidationCode::InvalidType,
            "renewable_pct",
            "the body must be like {\"renewable_pct\": 85}".to_owned(),
        ))
    })?;
    state.store.set_node_renewable(&node.id, pct).await?;
    tracing::info!(node_id = %node.id, renewable_pct = pct, "declared renewable share set");
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the enforced power limits of the node's GPUs
/// (`{"gpus": [{"id": "gpu_…", "power_limit_watts": 450}]}`). The agent sends NVML's limits
/// (or its emulated GPUs' declared ones) at every start, so that a GPU registered before power
/// limits were recorded gets one without registering again, and a limit changed on the host
/// (`nvidia-smi -pl`) is followed. A change applies to jobs assigned from then on: each job's
/// energy proof is bound by the limit sealed with its assignment.
#[utoipa::path(
    put, path = "/api/providers/{nodeId}/power-limits", tag = "providers", params(("nodeId" = String, Path)),
    request_body = gp4u_proto::PowerLimitsBody,
    responses((status = 204), (status = 400, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn set_power_limits(
    State(state): State<AppState>,
    caller: Caller,
    Path(node_id): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    let node = crate::routes::agent::owned_node(&state, &caller, &node_id).await?;
    let limits = validate_power_limits(&body.value)?;
    let gpus = state.store.list_node_gpus(&node.id).await?;
    for (index, (gpu, _)) in limits.iter().enumerate() {
        if !gpus.iter().any(|known| known.id == *gpu) {
            let field = format!("gpus[{index}].id");
            return Err(FieldError::new(
                ValidationCode::InvalidGpu,
                &field,
                format!(
                    "`{field}`: {gpu} is not a GPU of node {}; its GPUs are {}",
                    node.id,
                    gpus.iter()
                        .map(|gpu| gpu.id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .into());
        }
    }
    state.store.set_gpu_power_limits(&node.id, &limits).await?;
    for (gpu, milliwatts) in &limits {
        let before = gpus
            .iter()
            .find(|known| known.id == *gpu)
            .and_then(|known| known.power_limit_mw);
        if before != Some(*milliwatts) {
            tracing::info!(node_id = %node.id, gpu_id = %gpu, before_mw = ?before, power_limit_mw = milliwatts,
                "gpu power limit declared");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
