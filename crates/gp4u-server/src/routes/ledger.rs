//! Obsidian over HTTP (SPEC §8): the signed checkpoint, the verifier key, entries, inclusion and
//! consistency proofs, and a job's entries with their proofs.
//!
//! The log is public to read: the first five routes need no token (anyone may witness the log),
//! and a token, when sent, is verified as everywhere (`auth::authenticate_if_present`) and only
//! decides which entry bodies `entries` shows. Each answer is bounded — at most
//! [`MAX_ENTRIES`] entries, proofs of O(log² n) stored hashes, one store query for a range —
//! and every query value is parsed here, with a 400 naming it when it is not usable.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gp4u_ledger::hash::{Hash, empty_root, to_hex};
use gp4u_ledger::tree::{consistency_proof_plan, inclusion_proof_plan};
use gp4u_proto::{
    ConsistencyProof, ErrorCode, InclusionProof, JobLedger, LedgerEntries, LedgerEntry,
    ProvenEntry, ReadableEntry, WitnessedEntry,
};
use gp4u_store::{CheckpointRecord, LedgerBodies, LedgerEntryRecord, LedgerLeafRecord};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::obsidian::proof_from_plan;
use crate::state::AppState;

/// Entries one `GET /api/ledger/entries` returns at most.
pub const MAX_ENTRIES: u64 = 1000;
/// Entries `GET /api/ledger/entries` returns when `end` is not given.
pub const DEFAULT_ENTRIES: u64 = 100;
/// The largest index or size any query may name: the store keeps them as signed 64-bit
/// integers, so no log gets larger.
pub const MAX_LOG_NUMBER: u64 = i64::MAX as u64;

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message)
}

/// A query parameter that names a log index or size: a whole number from 0 to
/// [`MAX_LOG_NUMBER`]. Query values arrive as text and are parsed here, one by one, so that
/// every refusal names its parameter and what it accepts.
fn log_number(name: &str, value: Option<&str>) -> ApiResult<Option<u64>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let number = value.parse::<u64>().map_err(|_| {
        bad_query(format!(
            "{name}={value:?} is not a whole number from 0 to {MAX_LOG_NUMBER}"
        ))
    })?;
    if number > MAX_LOG_NUMBER {
        return Err(bad_query(format!(
            "{name}={number} is beyond any log: indexes and sizes go up to {MAX_LOG_NUMBER}"
        )));
    }
    Ok(Some(number))
}

/// A [`log_number`] the route cannot do without.
fn required_log_number(name: &str, value: Option<&str>, example: &str) -> ApiResult<u64> {
    log_number(name, value)?.ok_or_else(|| bad_query(format!("{name} is required, e.g. {example}")))
}

fn query_text(
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<LogQuery> {
    query
        .map(|Query(query)| query)
        .map_err(|error| bad_query(error.body_text()))
}

/// The query parameters of the log's routes, as text (see [`log_number`]); each route reads
/// the ones it documents and ignores the rest.
#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    pub start: Option<String>,
    pub end: Option<String>,
    pub index: Option<String>,
    pub size: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
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
    responses((status = 200, description = "the latest signed checkpoint: a C2SP tlog-checkpoint signed note (text/plain)", content_type = "text/plain"), (status = 401, description = "only when a token is sent: it is missing its Bearer scheme, malformed, badly signed or expired (without a token the route answers anonymously)", body = gp4u_proto::ErrorBody), (status = 403, description = "only when a token is sent: its user is suspended or unknown, or it claims more clearance than stored", body = gp4u_proto::ErrorBody)),
    security((), ("bearer" = []))
)]
pub async fn checkpoint(
    State(state): State<AppState>,
    _caller: Option<Caller>,
) -> ApiResult<Response> {
    Ok(text(latest(&state).await?.note))
}

/// `GET /api/ledger/public-key`: the note verifier key, text/plain.
#[utoipa::path(
    get, path = "/api/ledger/public-key", tag = "ledger",
    responses((status = 200, description = "the note verifier key <name>+<8 hex key id>+<base64(0x01 || ed25519 key)> (text/plain)", content_type = "text/plain"), (status = 401, description = "only when a token is sent: it is missing its Bearer scheme, malformed, badly signed or expired (without a token the route answers anonymously)", body = gp4u_proto::ErrorBody), (status = 403, description = "only when a token is sent: its user is suspended or unknown, or it claims more clearance than stored", body = gp4u_proto::ErrorBody)),
    security((), ("bearer" = []))
)]
pub async fn public_key(
    State(state): State<AppState>,
    _caller: Option<Caller>,
) -> ApiResult<Response> {
    Ok(text(format!("{}\n", state.obsidian.verifier_key)))
}

/// An entry its reader may read: everything, the body included.
fn readable(entry: &LedgerEntryRecord) -> ReadableEntry {
    ReadableEntry {
        index: entry.index,
        kind: entry.kind.clone(),
        job_id: entry.job_id.clone(),
        leaf_hash: to_hex(&entry.leaf_hash),
        body: entry.body.clone(),
        sealed_at_ms: entry.created_at_ms,
    }
}

/// An entry of a range as its reader may see it. The log is public, what happened in other
/// people's jobs is not: an entry the reader may not read (anonymous, or another user's job)
/// shows only what a witness needs to check the tree and what the spec makes public — its
/// index, kind and leaf hash. Its job id would link the entries of one job together (when it
/// ran, for how long, whether it was killed or slashed, what it cost) and tie them to anyone
/// who knows the id; its sealing time is not part of the leaf, so it proves nothing and only
/// dates the activity. Both stay with the body. See ARCHITECTURE.md, "The public log".
fn leaf_view(leaf: &LedgerLeafRecord) -> LedgerEntry {
    match &leaf.body {
        Some(body) => LedgerEntry::Readable(ReadableEntry {
            index: leaf.index,
            kind: leaf.kind.clone(),
            job_id: leaf.job_id.clone(),
            leaf_hash: to_hex(&leaf.leaf_hash),
            body: body.clone(),
            sealed_at_ms: leaf.created_at_ms,
        }),
        None => LedgerEntry::Witnessed(WitnessedEntry {
            index: leaf.index,
            kind: leaf.kind.clone(),
            leaf_hash: to_hex(&leaf.leaf_hash),
        }),
    }
}

fn hex_path(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(|hash| to_hex(hash)).collect()
}

/// `GET /api/ledger/entries?start=&end=`: entries `start <= index < end` (at most 1000), with
/// the bodies the caller may read.
#[utoipa::path(
    get, path = "/api/ledger/entries", tag = "ledger", params(
        ("start" = Option<u64>, Query, description = "first index (default 0); at most 9223372036854775807"),
        ("end" = Option<u64>, Query, description = "one past the last index (default start + 100); end - start at most 1000"),
    ),
    responses((status = 200, description = "entries start <= index < end (at most 1000), each with index, kind and leaf_hash; entries the caller may read (a token of the job's owner, or an admin's) also carry job_id, body (the leaf's data) and sealed_at_ms", body = LedgerEntries), (status = 400, body = gp4u_proto::ErrorBody), (status = 401, description = "only when a token is sent: it is missing its Bearer scheme, malformed, badly signed or expired (without a token the route answers anonymously)", body = gp4u_proto::ErrorBody), (status = 403, description = "only when a token is sent: its user is suspended or unknown, or it claims more clearance than stored", body = gp4u_proto::ErrorBody)),
    security((), ("bearer" = []))
)]
pub async fn entries(
    State(state): State<AppState>,
    caller: Option<Caller>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<LedgerEntries>> {
    let query = query_text(query)?;
    let start = log_number("start", query.start.as_deref())?.unwrap_or(0);
    let end = log_number("end", query.end.as_deref())?
        .unwrap_or_else(|| start.saturating_add(DEFAULT_ENTRIES).min(MAX_LOG_NUMBER));
    if end < start {
        return Err(bad_query(format!(
            "end={end} is before start={start}: entries start <= index < end are served"
        )));
    }
    if end - start > MAX_ENTRIES {
        return Err(bad_query(format!(
            "end={end} asks for {} entries from start={start}; at most {MAX_ENTRIES} per request, \
             page through the log",
            end - start
        )));
    }
    let bodies = match &caller {
        None => LedgerBodies::None,
        Some(caller) if caller.is_admin() => LedgerBodies::All,
        Some(caller) => LedgerBodies::JobsOf(caller.id()),
    };
    let leaves = state.store.ledger_leaves(start, end, bodies).await?;
    Ok(Json(LedgerEntries {
        start,
        end,
        entries: leaves.iter().map(leaf_view).collect(),
    }))
}

/// `GET /api/ledger/proof/inclusion?index=&size=`: the audit path of entry `index` in the tree
/// of `size` entries (default: the latest checkpoint's).
#[utoipa::path(
    get, path = "/api/ledger/proof/inclusion", tag = "ledger", params(
        ("index" = u64, Query, description = "the entry's index, below size"),
        ("size" = Option<u64>, Query, description = "the tree size (default: the latest checkpoint's); at most the latest checkpoint's"),
    ),
    responses((status = 200, description = "the RFC 9162 audit path", body = InclusionProof), (status = 400, body = gp4u_proto::ErrorBody), (status = 401, description = "only when a token is sent: it is missing its Bearer scheme, malformed, badly signed or expired (without a token the route answers anonymously)", body = gp4u_proto::ErrorBody), (status = 403, description = "only when a token is sent: its user is suspended or unknown, or it claims more clearance than stored", body = gp4u_proto::ErrorBody)),
    security((), ("bearer" = []))
)]
pub async fn inclusion(
    State(state): State<AppState>,
    _caller: Option<Caller>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<InclusionProof>> {
    let query = query_text(query)?;
    let index = required_log_number("index", query.index.as_deref(), "?index=0&size=10")?;
    let size = log_number("size", query.size.as_deref())?;
    let checkpoint = latest(&state).await?;
    let size = size.unwrap_or(checkpoint.tree_size);
    if size > checkpoint.tree_size {
        return Err(bad_query(format!(
            "size={size} is beyond the latest checkpoint ({}); ask for a size it covers",
            checkpoint.tree_size
        )));
    }
    let plan = inclusion_proof_plan(index, size)
        .map_err(|error| bad_query(format!("index={index} in a tree of size {size}: {error}")))?;
    let proof = proof_from_plan(&state, &plan).await?;
    Ok(Json(InclusionProof {
        index,
        size,
        proof: hex_path(&proof),
    }))
}

/// `GET /api/ledger/proof/consistency?from=&to=`: proof that the tree of `from` entries is a
/// prefix of the tree of `to` (default: the latest checkpoint's size).
#[utoipa::path(
    get, path = "/api/ledger/proof/consistency", tag = "ledger", params(
        ("from" = u64, Query, description = "the older tree size, at most to"),
        ("to" = Option<u64>, Query, description = "the newer tree size (default: the latest checkpoint's); at most the latest checkpoint's"),
    ),
    responses((status = 200, description = "the RFC 9162 consistency proof", body = ConsistencyProof), (status = 400, body = gp4u_proto::ErrorBody), (status = 401, description = "only when a token is sent: it is missing its Bearer scheme, malformed, badly signed or expired (without a token the route answers anonymously)", body = gp4u_proto::ErrorBody), (status = 403, description = "only when a token is sent: its user is suspended or unknown, or it claims more clearance than stored", body = gp4u_proto::ErrorBody)),
    security((), ("bearer" = []))
)]
pub async fn consistency(
    State(state): State<AppState>,
    _caller: Option<Caller>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ConsistencyProof>> {
    let query = query_text(query)?;
    let from = required_log_number("from", query.from.as_deref(), "?from=10&to=20")?;
    let to = log_number("to", query.to.as_deref())?;
    let checkpoint = latest(&state).await?;
    let to = to.unwrap_or(checkpoint.tree_size);
    if to > checkpoint.tree_size {
        return Err(bad_query(format!(
            "to={to} is beyond the latest checkpoint ({}); ask for a size it covers",
            checkpoint.tree_size
        )));
    }
    let plan = consistency_proof_plan(from, to)
        .map_err(|error| bad_query(format!("from={from} to={to}: {error}")))?;
    let proof = proof_from_plan(&state, &plan).await?;
    Ok(Json(ConsistencyProof {
        from,
        to,
        proof: hex_path(&proof),
    }))
}

/// `GET /api/jobs/{id}/ledger`: the job's entries with their inclusion proofs against the
/// latest checkpoint (included, so that one answer verifies on its own).
#[utoipa::path(
    get, path = "/api/jobs/{id}/ledger", tag = "ledger", params(("id" = String, Path)),
    responses((status = 200, description = "the job's entries with inclusion proofs against the included checkpoint", body = JobLedger), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn job_ledger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobLedger>> {
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
        views.push(ProvenEntry {
            entry: readable(entry),
            inclusion_proof: hex_path(&proof),
        });
    }
    Ok(Json(JobLedger {
        job_id: job.id.to_string(),
        checkpoint: checkpoint.note,
        tree_size: checkpoint.tree_size,
        public_key: state.obsidian.verifier_key.clone(),
        entries: views,
        pending: unsealed,
    }))
}
