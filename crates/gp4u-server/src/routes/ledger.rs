//! Obsidian over HTTP (SPEC §8): the signed checkpoint, the verifier key, entries, inclusion and
//! consistency proofs, and a job's entries with their proofs.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gp4u_ledger::hash::{empty_root, to_hex};
use gp4u_ledger::tree::{consistency_proof_plan, inclusion_proof_plan};
use gp4u_proto::ErrorCode;
use gp4u_store::{CheckpointRecord, LedgerEntryRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::obsidian::proof_from_plan;
use crate::state::AppState;

/// Entries one `GET /api/ledger/entries` returns at most.
pub const MAX_ENTRIES: u64 = 1000;

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message)
}

/// The newest signed checkpoint; before anything is sealed, a signed checkpoint of the empty tree.
pub async fn latest(state: &AppState) -> ApiResult<CheckpointRecord> {
    if let Some(checkpoint) = state.store.latest_checkpoint().await? {
        return Ok(checkpoint);
    }
    let note = state
        .obsidian
        .sign(0, empty_root())
        .map_err(|error| ApiError::internal("checkpoint", error))?;
    Ok(CheckpointRecord {
        tree_size: 0,
        root: empty_root(),
        note,
        created_at_ms: state.now_ms(),
    })
}

/// `GET /api/ledger/checkpoint`: the signed note (C2SP tlog-checkpoint), text/plain.
#[utoipa::path(
    get, path = "/api/ledger/checkpoint", tag = "ledger",
    responses((status = 200, description = "the latest signed checkpoint: a C2SP tlog-checkpoint signed note (text/plain)", content_type = "text/plain")),
    security(("bearer" = []))
)]
pub async fn checkpoint(State(state): State<AppState>, _caller: Caller) -> ApiResult<Response> {
    Ok(text(latest(&state).await?.note))
}

/// `GET /api/ledger/public-key`: the note verifier key, text/plain.
#[utoipa::path(
    get, path = "/api/ledger/public-key", tag = "ledger",
    responses((status = 200, description = "the note verifier key <name>+<8 hex key id>+<base64(0x01 || ed25519 key)> (text/plain)", content_type = "text/plain")),
    security(("bearer" = []))
)]
pub async fn public_key(State(state): State<AppState>, _caller: Caller) -> ApiResult<Response> {
    Ok(text(format!("{}\n", state.obsidian.verifier_key)))
}

#[derive(Debug, Deserialize)]
pub struct EntriesQuery {
    pub start: Option<u64>,
    pub end: Option<u64>,
}

/// An entry as served: its body only to an admin or the job's owner (the log is public, the
/// contents of other people's jobs are not; the leaf hash is enough for proofs).
fn entry_view(entry: &LedgerEntryRecord, show_body: bool) -> Value {
    json!({
        "index": entry.index,
        "kind": entry.kind,
        "job_id": entry.job_id,
        "leaf_hash": to_hex(&entry.leaf_hash),
        "body": show_body.then(|| entry.body.clone()),
        "sealed_at_ms": entry.created_at_ms,
    })
}

/// `GET /api/ledger/entries?start=&end=`: entries `start <= index < end` (at most 1000).
#[utoipa::path(
    get, path = "/api/ledger/entries", tag = "ledger", params(("start" = Option<u64>, Query), ("end" = Option<u64>, Query)),
    responses((status = 200, description = "entries start <= index < end (at most 1000): index, kind, job_id, leaf_hash; body for your own jobs"), (status = 400, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<EntriesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(|error| bad_query(error.body_text()))?;
    let start = query.start.unwrap_or(0);
    let end = query.end.unwrap_or(start.saturating_add(100));
    if end < start || end - start > MAX_ENTRIES {
        return Err(bad_query(format!(
            "need start <= end and at most {MAX_ENTRIES} entries, got start={start} end={end}"
        )));
    }
    let entries = state.store.ledger_entries(start, end).await?;
    let mut views = Vec::with_capacity(entries.len());
    // A job's entries come in runs: look each job up once per request.
    let mut owned: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    for entry in &entries {
        let show = match (caller.is_admin(), entry.job_id.as_deref()) {
            (true, _) => true,
            (false, None) => false,
            (false, Some(job)) => match owned.get(job) {
                Some(mine) => *mine,
                None => {
                    let mine = owns_job(&state, &caller, job).await?;
                    owned.insert(job.to_owned(), mine);
                    mine
                }
            },
        };
        views.push(entry_view(entry, show));
    }
    Ok(Json(json!({"start": start, "end": end, "entries": views})))
}

async fn owns_job(state: &AppState, caller: &Caller, job: &str) -> ApiResult<bool> {
    let Ok(job) = gp4u_core::ids::JobId::parse(job) else {
        return Ok(false);
    };
    Ok(state
        .store
        .get_job(&job)
        .await?
        .is_some_and(|record| record.owner_id == *caller.id()))
}

#[derive(Debug, Deserialize)]
pub struct InclusionQuery {
    pub index: u64,
    pub size: Option<u64>,
}

/// `GET /api/ledger/proof/inclusion?index=&size=`: the audit path of entry `index` in the tree
/// of `size` entries (default: the latest checkpoint's).
#[utoipa::path(
    get, path = "/api/ledger/proof/inclusion", tag = "ledger", params(("index" = u64, Query), ("size" = Option<u64>, Query)),
    responses((status = 200, description = "{index, size, proof: [hex]} (RFC 9162 audit path)"), (status = 400, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn inclusion(
    State(state): State<AppState>,
    _caller: Caller,
    query: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(|error| bad_query(error.body_text()))?;
    let checkpoint = latest(&state).await?;
    let size = query.size.unwrap_or(checkpoint.tree_size);
    if size > checkpoint.tree_size {
        return Err(bad_query(format!(
            "size {size} is beyond the latest checkpoint ({}); ask for a size it covers",
            checkpoint.tree_size
        )));
    }
    let plan = inclusion_proof_plan(query.index, size).map_err(|error| {
        bad_query(format!(
            "index {} in a tree of {size}: {error}",
            query.index
        ))
    })?;
    let proof = proof_from_plan(&state, &plan).await?;
    Ok(Json(json!({
        "index": query.index,
        "size": size,
        "proof": proof.iter().map(|hash| to_hex(hash)).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
pub struct ConsistencyQuery {
    pub from: u64,
    pub to: Option<u64>,
}

/// `GET /api/ledger/proof/consistency?from=&to=`: proof that the tree of `from` entries is a
/// prefix of the tree of `to` (default: the latest checkpoint's size).
#[utoipa::path(
    get, path = "/api/ledger/proof/consistency", tag = "ledger", params(("from" = u64, Query), ("to" = Option<u64>, Query)),
    responses((status = 200, description = "{from, to, proof: [hex]} (RFC 9162 consistency proof)"), (status = 400, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn consistency(
    State(state): State<AppState>,
    _caller: Caller,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(|error| bad_query(error.body_text()))?;
    let checkpoint = latest(&state).await?;
    let to = query.to.unwrap_or(checkpoint.tree_size);
    if to > checkpoint.tree_size {
        return Err(bad_query(format!(
            "to={to} is beyond the latest checkpoint ({})",
            checkpoint.tree_size
        )));
    }
    let plan = consistency_proof_plan(query.from, to)
        .map_err(|error| bad_query(format!("from={} to={to}: {error}", query.from)))?;
    let proof = proof_from_plan(&state, &plan).await?;
    Ok(Json(json!({
        "from": query.from,
        "to": to,
        "proof": proof.iter().map(|hash| to_hex(hash)).collect::<Vec<_>>(),
    })))
}

/// `GET /api/jobs/{id}/ledger`: the job's entries with their inclusion proofs against the
/// latest checkpoint (included, so that one answer verifies on its own).
#[utoipa::path(
    get, path = "/api/jobs/{id}/ledger", tag = "ledger", params(("id" = String, Path)),
    responses((status = 200, description = "the job's entries with inclusion proofs against the included checkpoint"), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn job_ledger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = crate::routes::jobs::visible_job(&state, &caller, &id).await?;
    let checkpoint = latest(&state).await?;
    let entries = state.store.ledger_job_entries(job.id.as_str()).await?;
    let mut views = Vec::with_capacity(entries.len());
    let mut unsealed = 0;
    for entry in &entries {
        if entry.index >= checkpoint.tree_size {
            unsealed += 1;
            continue;
        }
        let plan = inclusion_proof_plan(entry.index, checkpoint.tree_size)
            .map_err(|error| ApiError::internal("inclusion plan", error))?;
        let proof = proof_from_plan(&state, &plan).await?;
        let mut view = entry_view(entry, true);
        view["inclusion_proof"] = json!(proof.iter().map(|hash| to_hex(hash)).collect::<Vec<_>>());
        views.push(view);
    }
    Ok(Json(json!({
        "job_id": job.id,
        "checkpoint": checkpoint.note,
        "tree_size": checkpoint.tree_size,
        "public_key": state.obsidian.verifier_key,
        "entries": views,
        "pending": unsealed,
    })))
}
