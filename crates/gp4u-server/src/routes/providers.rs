//! Providers: node registration and the marketplace listing.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gp4u_core::events::{NodeRegistered, RegisteredGpu, TOPIC_NODE_REGISTERED};
use gp4u_core::ids::{GpuId, NodeId};
use gp4u_core::manifest::validate_registration;
use gp4u_proto::{ErrorCode, GpuList, Registered, RegisteredGpuView};
use gp4u_store::{NewNode, OutboxEvent};

use crate::auth::{CLEARANCE_PROVIDER, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::views::{gpu_view, price};

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
    let registration = validate_registration(&body.value)?;
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
    state.relay.nudge();
    tracing::info!(node_id = %record.id, owner = %record.owner_id, gpus = gpus.len(), "node registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            node_id: record.id.to_string(),
            gpus: gpus
                .iter()
                .map(|gpu| RegisteredGpuView {
                    id: gpu.id.to_string(),
                    name: gpu.name.clone(),
                    vram_gb: gpu.vram_gb,
                    price_per_hour: price(gpu.price_per_hour),
                    region: gpu.region.clone(),
                    status: gpu.status.as_str().to_string(),
                    emulated: gpu.emulated,
                })
                .collect(),
        }),
    ))
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
