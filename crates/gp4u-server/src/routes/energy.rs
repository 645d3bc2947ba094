//! Energy over HTTP (stage 5): carbon accounting summed for a customer's jobs, a provider's
//! nodes, or the whole platform, with carbon-credit eligibility.
//!
//! A customer's figures come from their own jobs' rows (exact, at once); a provider's and the
//! platform's from the Energy chamber, which folds every sealed `job.energy` event (a second
//! or so behind). Renewable shares are declared by providers, not metered, and are labelled so.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
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
    /// `json` (default) or `svg`: a bar chart of energy per region (per node for providers),
    /// the credit-eligible part shaded, carbon written beside each bar.
    pub format: Option<String>,
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
) -> ApiResult<Response> {
    let Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidQuery, error.body_text()))?;
    let svg = match query.format.as_deref().unwrap_or("json") {
        "json" => false,
        "svg" => true,
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("format must be json or svg, got {other:?}"),
            ));
        }
    };
    let scope = match query.scope.as_deref() {
        Some(scope) => scope,
        None if caller.is_admin() => "platform",
        None if caller.clearance() >= CLEARANCE_PROVIDER => "provider",
        None => "customer",
    };
    let Json(summary) = match scope {
        "customer" => customer(&state, &caller).await?,
        "provider" => {
            caller.require(CLEARANCE_PROVIDER, ErrorCode::ProviderRequired, "provider")?;
            provider(&state, &caller).await?
        }
        "platform" => {
            caller.require(CLEARANCE_ADMIN, ErrorCode::AdminRequired, "admin")?;
            platform(&state).await?
        }
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("scope must be customer, provider or platform, got {other:?}"),
            ));
        }
    };
    if !svg {
        return Ok(Json(summary).into_response());
    }
    // Providers see their nodes; customers and admins the regions.
    let (rows, key) = if scope == "provider" {
        (&summary["nodes"], "node_id")
    } else {
        (&summary["regions"], "region")
    };
    let bars: Vec<Bar> = rows
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| Bar {
                    label: row[key].as_str().unwrap_or("?").to_owned(),
                    kwh: row["energy_kwh"].as_f64().unwrap_or(0.0),
                    eligible_kwh: row["credit_eligible_kwh"].as_f64().unwrap_or(0.0),
                    carbon_kg: row["carbon_kg"].as_f64().unwrap_or(0.0),
                    jobs: row["jobs"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let title = format!("GP4U energy and carbon ({scope})");
    Ok((
        [(axum::http::header::CONTENT_TYPE, "image/svg+xml")],
        energy_chart_svg(&title, &bars),
    )
        .into_response())
}

/// One bar of the energy chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub kwh: f64,
    pub eligible_kwh: f64,
    pub carbon_kg: f64,
    pub jobs: u64,
}

/// An SVG bar chart: one horizontal bar per row, its length the energy (kWh, scaled to the
/// largest), the carbon-credit-eligible part shaded green, jobs and carbon written beside it.
/// Pure: the same bars give the same bytes.
pub fn energy_chart_svg(title: &str, bars: &[Bar]) -> String {
    const WIDTH: f64 = 800.0;
    const LEFT: f64 = 190.0;
    const TOP: f64 = 40.0;
    const ROW: f64 = 26.0;
    const BAR_W: f64 = 360.0;
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    #[allow(clippy::cast_precision_loss)] // a few hundred rows at most
    let height = TOP + ROW * bars.len().max(1) as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    if bars.is_empty() {
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{}\">no accounted jobs yet</text>\n</svg>\n",
            TOP + 16.0
        ));
        return svg;
    }
    let largest = bars.iter().map(|bar| bar.kwh).fold(0.0_f64, f64::max);
    let scale = |kwh: f64| {
        if largest > 0.0 && kwh.is_finite() {
            (kwh.max(0.0) / largest * BAR_W).min(BAR_W)
        } else {
            0.0
        }
    };
    for (index, bar) in bars.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let y = TOP + ROW * index as f64;
        let total = scale(bar.kwh);
        let eligible = scale(bar.eligible_kwh.min(bar.kwh));
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{LEFT}\" y=\"{y}\" width=\"{total:.1}\" height=\"{}\" fill=\"#8c8c8c\"/>\n\
             <rect x=\"{LEFT}\" y=\"{y}\" width=\"{eligible:.1}\" height=\"{}\" fill=\"#2ca02c\"/>\n\
             <text x=\"{}\" y=\"{}\">{:.3} kWh, {:.3} kg CO2e, {} job{}</text>\n",
            LEFT - 8.0,
            y + 14.0,
            escape(&bar.label),
            ROW - 8.0,
            ROW - 8.0,
            LEFT + total + 6.0,
            y + 14.0,
            bar.kwh,
            bar.carbon_kg,
            bar.jobs,
            if bar.jobs == 1 { "" } else { "s" },
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    let legend_y = TOP + ROW * bars.len() as f64 + 20.0;
    svg.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#2ca02c\"/>\n\
         <text x=\"{}\" y=\"{legend_y}\">carbon-credit eligible (renewable share declared by the provider)</text>\n</svg>\n",
        legend_y - 10.0,
        LEFT + 18.0,
    ));
    svg
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_a_bar_per_row_with_the_eligible_part() {
        let bars = [
            Bar {
                label: "eu-north-1".into(),
                kwh: 2.0,
                eligible_kwh: 2.0,
                carbon_kg: 0.08,
                jobs: 1,
            },
            Bar {
                label: "us-east-1 <&>".into(),
                kwh: 4.0,
                eligible_kwh: 1.0,
                carbon_kg: 1.52,
                jobs: 3,
            },
        ];
        let svg = energy_chart_svg("title", &bars);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains(">eu-north-1</text>"), "{svg}");
        // Escaped, the largest bar full width, the others scaled; eligible parts in green.
        assert!(svg.contains("us-east-1 &lt;&amp;&gt;"), "{svg}");
        assert!(
            svg.contains("width=\"360.0\" height=\"18\" fill=\"#8c8c8c\""),
            "{svg}"
        );
        assert!(
            svg.contains("width=\"180.0\" height=\"18\" fill=\"#2ca02c\""),
            "{svg}"
        );
        assert!(
            svg.contains("width=\"90.0\" height=\"18\" fill=\"#2ca02c\""),
            "{svg}"
        );
        assert!(svg.contains("4.000 kWh, 1.520 kg CO2e, 3 jobs"), "{svg}");
        assert!(svg.contains("1 job<"), "{svg}");
        assert_eq!(svg, energy_chart_svg("title", &bars), "deterministic");
        assert!(energy_chart_svg("none", &[]).contains("no accounted jobs yet"));
    }
}
