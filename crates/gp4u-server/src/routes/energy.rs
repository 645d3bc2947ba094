//! Energy over HTTP (stage 5): carbon accounting summed for a customer's jobs, a provider's
//! nodes, or the whole platform, with carbon-credit eligibility.
//!
//! A customer's figures come from their own jobs' rows (exact, at once); a provider's and the
//! platform's from the Energy chamber, which folds every sealed `job.energy` event (a second
//! or so behind). Renewable shares are declared by providers, not metered, and are labelled so.

use axum::Json;
use axum::extract::{Query, State};
use gp4u_core::chambers::{CarbonTotals, Chamber, Energy};
use gp4u_proto::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{CLEARANCE_ADMIN, CLEARANCE_PROVIDER, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What the figures rest on, said with every answer.
const BASIS: &str = "energy = Σ power × interval over the sealed telemetry; carbon = kWh × the \
                     region's grid factor (GET /api/grid-factors); renewable shares are declared \
                     by providers, not metered; credit eligibility = a declared share of at \
                     least 80 %";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EnergyQuery {
    /// `customer` (your jobs), `provider` (your nodes) or `platform` (admins); by default the
    /// widest your clearance allows.
    pub scope: Option<String>,
}

/// `GET /api/energy`: energy, carbon and carbon-credit eligibility, summed.
#[utoipa::path(
    get, path = "/api/energy", tag = "billing", params(EnergyQuery),
    responses((status = 200, description = "{\"scope\", \"basis\", \"total\", \"regions\": [...], \"nodes\": [...]}: totals of jobs, energy_kwh, carbon_kg, renewable_kwh_declared, credit_eligible_jobs, credit_eligible_kwh, credit_eligible_carbon_kg"),
        (status = 400, body = gp4u_proto::ErrorBody), (status = 403, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<EnergyQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidQuery, error.body_text()))?;
    let scope = match query.scope.as_deref() {
        Some(scope) => scope,
        None if caller.is_admin() => "platform",
        None if caller.clearance() >= CLEARANCE_PROVIDER => "provider",
        None => "customer",
    };
    match scope {
        "customer" => customer(&state, &caller).await,
        "provider" => {
            caller.require(CLEARANCE_PROVIDER, ErrorCode::ProviderRequired, "provider")?;
            provider(&state, &caller).await
        }
        "platform" => {
            caller.require(CLEARANCE_ADMIN, ErrorCode::AdminRequired, "admin")?;
            platform(&state).await
        }
        other => Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("scope must be customer, provider or platform, got {other:?}"),
        )),
    }
}

async fn customer(state: &AppState, caller: &Caller) -> ApiResult<Json<Value>> {
    let rows = state.store.customer_carbon(caller.id()).await?;
    let mut total = CarbonTotals::default();
    let regions: Vec<Value> = rows
        .iter()
        .map(|(region, totals)| {
            total.merge(totals);
            with_key("region", region.as_deref().unwrap_or("unknown"), totals)
        })
        .collect();
    Ok(Json(json!({
        "scope": "customer",
        "basis": BASIS,
        "total": total,
        "regions": regions,
    })))
}

async fn provider(state: &AppState, caller: &Caller) -> ApiResult<Json<Value>> {
    let (energy, as_of) = chamber(state).await?;
    let mut total = CarbonTotals::default();
    let mut nodes = Vec::new();
    for node in state.store.owner_node_ids(caller.id()).await? {
        let totals = energy.nodes.get(node.as_str()).cloned().unwrap_or_default();
        total.merge(&totals);
        nodes.push(with_key("node_id", node.as_str(), &totals));
    }
    Ok(Json(json!({
        "scope": "provider",
        "basis": BASIS,
        "as_of_position": as_of,
        "total": total,
        "nodes": nodes,
    })))
}

async fn platform(state: &AppState) -> ApiResult<Json<Value>> {
    let (energy, as_of) = chamber(state).await?;
    let regions: Vec<Value> = energy
        .regions
        .iter()
        .map(|(region, totals)| {
            let mut row = with_key("region", region, totals);
            row["grid_factor"] = json!(energy.grid_factors.get(region));
            row
        })
        .collect();
    let nodes: Vec<Value> = energy
        .nodes
        .iter()
        .map(|(node, totals)| with_key("node_id", node, totals))
        .collect();
    Ok(Json(json!({
        "scope": "platform",
        "basis": BASIS,
        "as_of_position": as_of,
        "total": energy.total,
        "regions": regions,
        "nodes": nodes,
        "intake": energy.intake,
    })))
}

/// The Energy chamber's model as last saved, with the outbox position it has applied.
async fn chamber(state: &AppState) -> ApiResult<(Energy, i64)> {
    let Some(stored) = state.store.get_subscriber(Energy::NAME).await? else {
        return Ok((Energy::default(), 0));
    };
    let energy = serde_json::from_value(stored.model).map_err(|error| {
        ApiError::internal(
            "energy",
            format!("the Energy chamber's model does not read: {error}"),
        )
    })?;
    Ok((energy, stored.position))
}

fn with_key(key: &str, value: &str, totals: &CarbonTotals) -> Value {
    let mut row = json!(totals);
    row[key] = json!(value);
    row
}
