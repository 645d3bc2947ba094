//! Stage 7 over HTTP: a job's settlement, the caller's balance and earnings statement, and the
//! grid factors carbon is computed with.

use axum::Json;
use axum::extract::{Path, State};
use gp4u_proto::{
    Balance, ErrorCode, GridFactorBody, GridFactorView, GridFactors, SettlementView, Statement,
    StatementLine, TransferKind, VeritasRecord,
};
use gp4u_store::GridFactorRecord;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::settlement::settlement_view;
use crate::state::AppState;

fn units(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// `GET /api/jobs/{id}/settlement` (owner or admin).
#[utoipa::path(
    get, path = "/api/jobs/{id}/settlement", tag = "billing", params(("id" = String, Path)),
    responses((status = 200, description = "SPEC §8: what the job cost and where the money went; `exact` = the sealed settlement in micros", body = SettlementView), (status = 404, body = gp4u_proto::ErrorBody), (status = 409, description = "NOT_SETTLED: the job has not ended", body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn job_settlement(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SettlementView>> {
    let job = crate::routes::jobs::visible_job(&state, &caller, &id).await?;
    match state.store.get_settlement(&job.id).await? {
        Some(settlement) => settlement_view(&settlement).map(Json).ok_or_else(|| {
            ApiError::internal(
                "settlement",
                format!("the stored settlement of {} does not parse", job.id),
            )
        }),
        None => Err(ApiError::new(
            ErrorCode::NotSettled,
            format!(
                "job {} is {} and not settled yet: it settles within a second of ending",
                job.id,
                job.state.status.as_str()
            ),
        )),
    }
}

/// `GET /api/jobs/{id}/veritas` (owner or admin): the job's reproducibility record, written
/// when it ended and sealed in the ledger as `veritas.recorded`.
#[utoipa::path(
    get, path = "/api/jobs/{id}/veritas", tag = "billing", params(("id" = String, Path)),
    responses((status = 200, description = "The record exactly as sealed (records sealed before the host posture and runtime were recorded lack them)", body = VeritasRecord), (status = 404, body = gp4u_proto::ErrorBody), (status = 409, description = "NOT_SETTLED: the job has not ended (or is being accounted)", body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn job_veritas(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = crate::routes::jobs::visible_job(&state, &caller, &id).await?;
    // Served exactly as stored and sealed (a `VeritasRecord`, built by the settlement), not
    // re-serialized: `gp4u verify` and the ledger's readers compare it with the sealed entry,
    // and a record sealed by an older version keeps the fields it was sealed with.
    match state.store.veritas_record(&job.id).await? {
        Some(record) => Ok(Json(record)),
        None => Err(ApiError::new(
            ErrorCode::NotSettled,
            format!(
                "job {} is {}: its Veritas record is written within a second of its end",
                job.id,
                job.state.status.as_str()
            ),
        )),
    }
}

/// `GET /api/billing/balance`: `{"balance", "held", "currency"}` of the caller.
#[utoipa::path(
    get, path = "/api/billing/balance", tag = "billing",
    responses((status = 200, description = "the caller's credit", body = Balance)),
    security(("bearer" = []))
)]
pub async fn balance(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Balance>> {
    let balance = state.store.balance(caller.id()).await?;
    Ok(Json(Balance {
        balance: units(balance.available.micros()),
        held: units(balance.held.micros()),
        currency: "USD".into(),
        balance_micros: balance.available.micros(),
        held_micros: balance.held.micros(),
    }))
}

/// `GET /api/billing/statement`: the caller's transfers (earnings for providers), newest
/// first, with totals per kind.
#[utoipa::path(
    get, path = "/api/billing/statement", tag = "billing",
    responses((status = 200, description = "the caller's transfers, newest first, with earnings and totals per kind", body = Statement)),
    security(("bearer" = []))
)]
pub async fn statement(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Statement>> {
    let account = format!("user:{}:available", caller.id());
    let transfers = state.store.account_transfers(&account, 500).await?;
    let mut totals = std::collections::BTreeMap::new();
    let mut lines = Vec::with_capacity(transfers.len());
    for transfer in &transfers {
        let kind = TransferKind::parse(&transfer.kind).ok_or_else(|| {
            ApiError::internal(
                "statement",
                format!(
                    "transfer {} has an unknown kind {:?}",
                    transfer.id, transfer.kind
                ),
            )
        })?;
        let signed = if transfer.credit == account {
            transfer.amount.micros()
        } else {
            -transfer.amount.micros()
        };
        *totals.entry(kind).or_insert(0) += signed;
        lines.push(StatementLine {
            id: transfer.id.clone(),
            kind,
            job_id: transfer.job_id.clone(),
            amount: units(signed),
            amount_micros: signed,
            debit: transfer.debit.clone(),
            credit: transfer.credit.clone(),
            at_ms: transfer.created_at_ms,
        });
    }
    let earnings = totals.get(&TransferKind::Earnings).copied().unwrap_or(0);
    Ok(Json(Statement {
        user_id: caller.id().to_string(),
        account,
        currency: "USD".into(),
        earnings: units(earnings),
        earnings_micros: earnings,
        totals_micros: totals,
        transfers: lines,
    }))
}

fn factor_view(record: &GridFactorRecord) -> GridFactorView {
    GridFactorView {
        region: record.region.clone(),
        g_co2e_per_kwh: record.g_co2e_per_kwh,
        source: record.source.clone(),
        as_of: record.as_of.clone(),
        updated_at_ms: record.updated_at_ms,
    }
}

/// `GET /api/grid-factors`: the carbon table, with sources and dates.
#[utoipa::path(
    get, path = "/api/grid-factors", tag = "billing",
    responses((status = 200, description = "grid carbon intensity per region (g CO2e/kWh) with source and date", body = GridFactors)),
    security(("bearer" = []))
)]
pub async fn grid_factors(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<GridFactors>> {
    let records = state.store.list_grid_factors().await?;
    Ok(Json(GridFactors {
        factors: records.iter().map(factor_view).collect(),
    }))
}

/// `PUT /api/admin/grid-factors/{region}` `{"g_co2e_per_kwh", "source", "as_of"}` (admins).
#[utoipa::path(
    put, path = "/api/admin/grid-factors/{region}", tag = "admin", params(("region" = String, Path)),
    request_body = GridFactorBody,
    responses((status = 200, description = "the factor as stored", body = GridFactorView), (status = 400, body = gp4u_proto::ErrorBody), (status = 403, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn set_grid_factor(
    State(state): State<AppState>,
    caller: Caller,
    Path(region): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<GridFactorView>> {
    let field = |name: &str, message: String| {
        ApiError::from(gp4u_core::manifest::FieldError::new(
            gp4u_core::manifest::ValidationCode::InvalidType,
            name,
            message,
        ))
    };
    if region.is_empty()
        || region.len() > 64
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(field(
            "region",
            format!("region {region:?} must be 1–64 letters, digits, '-' or '_'"),
        ));
    }
    let grams = body.value["g_co2e_per_kwh"]
        .as_f64()
        .filter(|grams| grams.is_finite() && (0.0..=5000.0).contains(grams))
        .ok_or_else(|| {
            field(
                "g_co2e_per_kwh",
                "`g_co2e_per_kwh` must be a number 0–5000".into(),
            )
        })?;
    let source = body.value["source"]
        .as_str()
        .map(str::trim)
        .filter(|source| !source.is_empty() && source.len() <= 500)
        .ok_or_else(|| {
            field(
                "source",
                "`source` must name where the figure comes from (1–500 characters)".into(),
            )
        })?;
    let as_of = body.value["as_of"]
        .as_str()
        .filter(|date| is_date(date))
        .ok_or_else(|| field("as_of", "`as_of` must be a date YYYY-MM-DD".into()))?;
    let record = GridFactorRecord {
        region: region.clone(),
        g_co2e_per_kwh: grams,
        source: source.to_owned(),
        as_of: as_of.to_owned(),
        updated_at_ms: state.now_ms(),
    };
    state.store.upsert_grid_factor(&record).await?;
    tracing::info!(region = %record.region, grams, by = %caller.id(), "grid factor set");
    Ok(Json(factor_view(&record)))
}

/// `YYYY-MM-DD` naming a real day.
fn is_date(text: &str) -> bool {
    let mut parts = text.split('-');
    let (Some(year), Some(month), Some(day), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return false;
    }
    let (Ok(year), Ok(month), Ok(day)) =
        (year.parse::<i32>(), month.parse::<u8>(), day.parse::<u8>())
    else {
        return false;
    };
    time::Month::try_from(month)
        .ok()
        .and_then(|month| time::Date::from_calendar_date(year, month, day).ok())
        .is_some()
}
