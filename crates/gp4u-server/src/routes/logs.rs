//! Job logs: the agent streams the container's stdout/stderr here in chunks, capped per job
//! (`GP4U_MAX_LOG_BYTES`); the job's owner reads them whole, or follows them live as
//! server-sent events.
//!
//! Each chunk is one blob, `logs/<job>/<seq>`; the job row holds the count and the size, moved
//! together by one conditional update, so the cap holds across replicas. A chunk is reserved
//! before its blob is written: a reader may briefly see a reserved chunk that is not there yet
//! (a follower waits for it; a plain read skips it), and a write that fails after its
//! reservation leaves a gap that readers skip.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use gp4u_core::ids::JobId;
use gp4u_proto::{ErrorCode, LogAppended, LogStreamEnd};
use gp4u_store::{JobRecord, LogReservation};
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::blobs::{self, Utf8Decoder};
use crate::error::{ApiError, ApiResult};
use crate::routes::agent::{NodeQuery, node_job, require_live};
use crate::routes::jobs::visible_job;
use crate::state::AppState;

/// The largest chunk one `POST …/logs` may carry.
pub const MAX_LOG_CHUNK_BYTES: usize = 1024 * 1024;
/// How often a follower looks for new chunks (and for the job's end).
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How long a follower waits for a reserved chunk whose blob is not there before skipping it.
const MISSING_CHUNK_GRACE: Duration = Duration::from_secs(10);

/// The agent appends a chunk of the job's stdout/stderr. Over the per-job cap the chunk is cut
/// or dropped and the job's log is marked truncated; the reply says so (stop sending then).
#[utoipa::path(
    post, path = "/api/agent/jobs/{id}/logs", tag = "agent",
    params(("id" = String, Path), NodeQuery),
    request_body(content = [u8], description = "Raw output bytes, at most 1 MiB per chunk"),
    responses(
        (status = 200, body = LogAppended), (status = 404, body = gp4u_proto::ErrorBody),
        (status = 409, body = gp4u_proto::ErrorBody), (status = 413, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn append_log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<LogAppended>> {
    let (_node, job) = node_job(&state, &caller, &id, query).await?;
    require_live(&job)?;
    let limit = MAX_LOG_CHUNK_BYTES as u64;
    blobs::check_declared_length(&headers, "a log chunk", limit)?;
    let chunk = axum::body::to_bytes(body, MAX_LOG_CHUNK_BYTES)
        .await
        .map_err(|_| blobs::too_large("a log chunk", limit))?;
    let reply = |accepted_bytes: u64, log_bytes: u64, truncated: bool| {
        Json(LogAppended {
            job_id: job.id.to_string(),
            accepted_bytes,
            log_bytes,
            truncated,
        })
    };
    if chunk.is_empty() {
        return Ok(reply(0, job.blobs.log_bytes, job.blobs.log_truncated));
    }
    match state
        .store
        .reserve_log_chunk(&job.id, chunk.len() as u64, state.limits.max_log_bytes)
        .await?
    {
        LogReservation::Chunk {
            seq,
            keep,
            log_bytes,
            truncated,
        } => {
            let kept = chunk.slice(
                ..usize::try_from(keep)
                    .unwrap_or(chunk.len())
                    .min(chunk.len()),
            );
            state
                .blobs
                .put(&blobs::log_key(&job.id, seq), PutPayload::from(kept))
                .await
                .map_err(|error| blobs::store_error("writing a log chunk", error))?;
            if truncated {
                tracing::info!(job_id = %job.id, log_bytes, "job log reached its cap; truncated");
            }
            Ok(reply(keep, log_bytes, truncated))
        }
        LogReservation::Full { log_bytes } => Ok(reply(0, log_bytes, true)),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogsQuery {
    /// `1` (or `true`): a `text/event-stream` that sends the log so far, then each new chunk,
    /// and ends with an `end` event once the job has ended.
    pub follow: Option<String>,
}

fn truncation_line(log_bytes: u64, last_byte: Option<u8>) -> String {
    let separator = if last_byte.is_some_and(|byte| byte != b'\n') {
        "\n"
    } else {
        ""
    };
    format!("{separator}[gp4u: log truncated at {log_bytes} bytes]\n")
}

/// The job's stdout/stderr (its owner or an admin): `text/plain`, every chunk in order, with a
/// last line `[gp4u: log truncated at N bytes]` when the cap cut it. With `?follow=1`, server-sent
/// events: `log` (id = chunk number, data = the text as a JSON string), then `end` (data:
/// `{"status", "exit_code", "log_bytes", "truncated"}`) once the job has ended and every chunk
/// was sent. A reconnecting client sends `Last-Event-ID` to resume after that chunk.
#[utoipa::path(
    get, path = "/api/jobs/{id}/logs", tag = "jobs", params(("id" = String, Path), LogsQuery),
    responses(
        (status = 200, description = "The log; with ?follow=1 a text/event-stream of `log` events (a JSON string each) and a last `end` event (`LogStreamEnd`)",
            content((String = "text/plain"), ("text/event-stream"))),
        (status = 404, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidQuery, error.body_text()))?;
    let follow = match query.follow.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("follow must be 1 or 0, got {other:?}"),
            ));
        }
    };
    let job = visible_job(&state, &caller, &id).await?;
    if follow {
        let resume_after = headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        let next = resume_after.map_or(0, |seq| seq.saturating_add(1));
        let (sender, receiver) = mpsc::channel(8);
        tokio::spawn(follow_log(state, job.id.clone(), next, sender));
        return Ok(Sse::new(channel_stream(receiver))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (sender, receiver) = mpsc::channel(4);
    let snapshot = job.blobs.clone();
    tokio::spawn(async move {
        let mut last_byte = None;
        for seq in 0..snapshot.log_chunks {
            match blobs::read_all(&state.blobs, &blobs::log_key(&job.id, seq)).await {
                Ok(Some(bytes)) => {
                    if let Some(&byte) = bytes.last() {
                        last_byte = Some(byte);
                    }
                    if sender.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                // Reserved but not written (yet): skipped.
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(job_id = %job.id, seq, %error, "reading a log chunk failed");
                    let _ = sender.send(Err(std::io::Error::other(error))).await;
                    return;
                }
            }
        }
        if snapshot.log_truncated {
            let line = truncation_line(snapshot.log_bytes, last_byte);
            let _ = sender.send(Ok(Bytes::from(line))).await;
        }
    });
    let mut response = Body::from_stream(channel_stream(receiver)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-gp4u-log-bytes", HeaderValue::from(job.blobs.log_bytes));
    headers.insert(
        "x-gp4u-log-truncated",
        HeaderValue::from_static(if job.blobs.log_truncated {
            "true"
        } else {
            "false"
        }),
    );
    Ok(response)
}

fn channel_stream<T: Send + 'static>(receiver: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

fn log_event(text: String, seq: Option<u64>) -> Option<Event> {
    let event = Event::default().event("log");
    let event = match seq {
        Some(seq) => event.id(seq.to_string()),
        None => event,
    };
    event.json_data(text).ok()
}

fn end_event(job: &JobRecord) -> Option<Event> {
    Event::default()
        .event("end")
        .json_data(LogStreamEnd {
            status: job.state.status,
            exit_code: job.state.exit_code,
            log_bytes: job.blobs.log_bytes,
            truncated: job.blobs.log_truncated,
        })
        .ok()
}

/// Feeds a follower: chunks from `next` on as they appear; the end once the job has ended and
/// no chunk remains. Stops when the client goes away or the server begins to shut down (the
/// client reconnects with `Last-Event-ID`).
async fn follow_log(
    state: AppState,
    job_id: JobId,
    mut next: u64,
    sender: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut decoder = Utf8Decoder::default();
    let mut missing_since: Option<Instant> = None;
    let mut last_byte = None;
    loop {
        if state.is_draining() {
            return;
        }
        let job = match state.store.get_job(&job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(job_id = %job_id, %error, "following a log: reading the job failed");
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => continue,
                    _ = sender.closed() => return,
                }
            }
        };
        while next < job.blobs.log_chunks {
            match blobs::read_all(&state.blobs, &blobs::log_key(&job_id, next)).await {
                Ok(Some(bytes)) => {
                    missing_since = None;
                    if let Some(&byte) = bytes.last() {
                        last_byte = Some(byte);
                    }
                    if let Some(event) = log_event(decoder.push(&bytes), Some(next))
                        && sender.send(Ok(event)).await.is_err()
                    {
                        return;
                    }
                    next += 1;
                }
                Ok(None) => {
                    let since = *missing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < MISSING_CHUNK_GRACE {
                        break;
                    }
                    tracing::warn!(job_id = %job_id, seq = next, "log chunk missing; skipped");
                    missing_since = None;
                    next += 1;
                }
                Err(error) => {
                    tracing::warn!(job_id = %job_id, seq = next, %error, "reading a log chunk failed");
                    break;
                }
            }
        }
        if job.state.status.is_terminal() && next >= job.blobs.log_chunks {
            let mut tail = decoder.finish();
            if job.blobs.log_truncated {
                tail.push_str(&truncation_line(job.blobs.log_bytes, last_byte));
            }
            if !tail.is_empty()
                && let Some(event) = log_event(tail, None)
                && sender.send(Ok(event)).await.is_err()
            {
                return;
            }
            if let Some(event) = end_event(&job) {
                let _ = sender.send(Ok(event)).await;
            }
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = sender.closed() => return,
        }
    }
}
