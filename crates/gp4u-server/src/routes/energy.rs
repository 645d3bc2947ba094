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
use gp4u_proto::{EnergyReport, EnergyScope, ErrorCode, NodeEnergy, RegionEnergy};
use serde::Deserialize;

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
    responses((status = 200, description = "The report (JSON), or with `?format=svg` a bar chart",
            content((EnergyReport = "application/json"), ("image/svg+xml"))),
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
        Some(scope) => EnergyScope::parse(scope).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidQuery,
                format!("scope must be customer, provider or platform, got {scope:?}"),
            )
        })?,
        None if caller.is_admin() => EnergyScope::Platform,
        None if caller.clearance() >= CLEARANCE_PROVIDER => EnergyScope::Provider,
        None => EnergyScope::Customer,
    };
    let report = match scope {
        EnergyScope::Customer => customer(&state, &caller).await?,
        EnergyScope::Provider => {
            caller.require(CLEARANCE_PROVIDER, ErrorCode::ProviderRequired, "provider")?;
            provider(&state, &caller).await?
        }
        EnergyScope::Platform => {
            caller.require(CLEARANCE_ADMIN, ErrorCode::AdminRequired, "admin")?;
            platform(&state).await?
        }
    };
    if !svg {
        return Ok(Json(report).into_response());
    }
    // Providers see their nodes; customers and admins the regions.
    let bar = |label: &str, totals: &CarbonTotals| Bar {
        label: label.to_owned(),
        kwh: totals.energy_kwh,
        eligible_kwh: totals.credit_eligible_kwh,
        carbon_kg: totals.carbon_kg,
        jobs: totals.jobs,
    };
    let bars: Vec<Bar> = if scope == EnergyScope::Provider {
        report
            .nodes
            .iter()
            .flatten()
            .map(|row| bar(&row.node_id, &row.totals))
            .collect()
    } else {
        report
            .regions
            .iter()
            .flatten()
            .map(|row| bar(&row.region, &row.totals))
            .collect()
    };
    let title = format!("GP4U energy and carbon ({})", scope.as_str());
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

async fn customer(state: &AppState, caller: &Caller) -> ApiResult<EnergyReport> {
    let rows = state.store.customer_carbon(caller.id()).await?;
    let mut total = CarbonTotals::default();
    let regions = rows
        .into_iter()
        .map(|(region, totals)| {
            total.merge(&totals);
            RegionEnergy {
                region: region.unwrap_or_else(|| "unknown".to_owned()),
                totals,
                grid_factor: None,
            }
        })
        .collect();
    Ok(EnergyReport {
        scope: EnergyScope::Customer,
        basis: BASIS.to_owned(),
        as_of_position: None,
        total,
        regions: Some(regions),
        nodes: None,
        intake: None,
    })
}

async fn provider(state: &AppState, caller: &Caller) -> ApiResult<EnergyReport> {
    let (energy, as_of) = chamber(state).await?;
    let mut total = CarbonTotals::default();
    let mut nodes = Vec::new();
    for node in state.store.owner_node_ids(caller.id()).await? {
        let totals = energy.nodes.get(node.as_str()).cloned().unwrap_or_default();
        total.merge(&totals);
        nodes.push(NodeEnergy {
            node_id: node.to_string(),
            totals,
        });
    }
    Ok(EnergyReport {
        scope: EnergyScope::Provider,
        basis: BASIS.to_owned(),
        as_of_position: Some(as_of),
        total,
        regions: None,
        nodes: Some(nodes),
        intake: None,
    })
}

async fn platform(state: &AppState) -> ApiResult<EnergyReport> {
    let (energy, as_of) = chamber(state).await?;
    let Energy {
        intake,
        total,
        regions,
        nodes,
        grid_factors,
    } = energy;
    let regions = regions
        .into_iter()
        .map(|(region, totals)| RegionEnergy {
            // Always named on the platform's regions: `null` when none was recorded.
            grid_factor: Some(grid_factors.get(&region).cloned()),
            region,
            totals,
        })
        .collect();
    let nodes = nodes
        .into_iter()
        .map(|(node_id, totals)| NodeEnergy { node_id, totals })
        .collect();
    Ok(EnergyReport {
        scope: EnergyScope::Platform,
        basis: BASIS.to_owned(),
        as_of_position: Some(as_of),
        total,
        regions: Some(regions),
        nodes: Some(nodes),
        intake: Some(intake),
    })
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
