//! `POST /api/telemetry/russian-doll` (SPEC §7): the agent's packet in, Tutela's verdicts and
//! kill order out.
//!
//! Order: the caller must own the node (providers only; anyone else 403/404), the node must
//! hold the job (404 otherwise), the job must be live (a job that already ended answers 409:
//! the agent is fenced and kills its container), the node's telemetry rate (429), then the
//! body (400 naming the field). Then: the first packet makes an ASSIGNED job RUNNING; the
//! window is judged; the sample is stored (group commit) and becomes `latest_metrics`; each
//! verdict is stored and published; slashes, kills and retries follow; `final` ends the job.

use axum::Json;
use axum::extract::State;
use gp4u_core::ids::{JobId, NodeId};
use gp4u_core::job::{EndedBy, FailureReason, JobInput, JobStatus, transition};
use gp4u_core::manifest::{FieldError, ValidationCode};
use gp4u_core::tutela::{
    Attribution, Rule, Severity, TelemetrySample, Verdict, evaluate, kill_reason, parse_sample,
};
use gp4u_proto::{
    AnomalySummary, AnomalyView, ErrorCode, LatestMetrics, RefusedPacket, TelemetryAnswer,
    TelemetryBatchItem, TelemetryReply, TelemetrySampleView, TelemetrySeries, TelemetryStreamEnd,
};
use gp4u_store::{JobRecord, NewAnomaly, OutboxEvent, StoreError, TelemetryRow};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::auth::{CLEARANCE_PROVIDER, Caller, HotCaller};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::placement::job_events;
use crate::state::AppState;
use crate::tutela::{end_attempt, new_id, slash};
use crate::views::rfc3339;

/// Distinct rules kept in a job's `anomalies` summary (there are six).
const SUMMARY_RULES: usize = 16;

fn string_field<'a>(body: &'a Value, field: &str) -> ApiResult<&'a str> {
    body.get(field).and_then(Value::as_str).ok_or_else(|| {
        FieldError::new(
            ValidationCode::InvalidType,
            field,
            format!("`{field}` is required: a string"),
        )
        .into()
    })
}

/// `final` and `exit_code`: `Some(code)` for a final packet.
fn final_exit(body: &Value) -> ApiResult<Option<i32>> {
    let is_final = match body.get("final") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(value)) => *value,
        Some(other) => {
            return Err(FieldError::new(
                ValidationCode::InvalidType,
                "final",
                format!("`final` must be true or false, got {other}"),
            )
            .into());
        }
    };
    let exit_code = match body.get("exit_code") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_i64()
                .and_then(|code| i32::try_from(code).ok())
                .ok_or_else(|| {
                    FieldError::new(
                        ValidationCode::InvalidType,
                        "exit_code",
                        format!("`exit_code` must be a 32-bit integer, got {value}"),
                    )
                })?,
        ),
    };
    match (is_final, exit_code) {
        (true, None) => Err(FieldError::new(
            ValidationCode::InvalidType,
            "exit_code",
            "a packet with `final: true` needs `exit_code`: the container's exit status".into(),
        )
        .into()),
        (true, Some(code)) => Ok(Some(code)),
        (false, _) => Ok(None),
    }
}

fn severity_str(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "INFO",
        Severity::Soft => "SOFT",
        Severity::Hard => "HARD",
    }
}

fn attribution_str(attribution: Attribution) -> &'static str {
    match attribution {
        Attribution::Customer => "CUSTOMER",
        Attribution::Provider => "PROVIDER",
        Attribution::None => "NONE",
    }
}

fn anomaly_view(verdict: &Verdict, at_ms: i64) -> AnomalyView {
    AnomalyView {
        rule: verdict.rule.as_str().to_string(),
        severity: severity_str(verdict.severity).to_string(),
        kill: verdict.kill,
        attribution: attribution_str(verdict.attribution).to_string(),
        evidence: verdict.evidence.clone(),
        observed: verdict.observed,
        threshold: verdict.threshold,
        at: rfc3339(at_ms),
    }
}

/// The job's `anomalies` summary ([`AnomalySummary`] entries): one entry per rule, with its
/// count, first and last time and latest evidence. The summary is stored JSON: an entry this
/// version cannot read is kept as it is, never rewritten.
fn summarize(previous: &Value, verdicts: &[Verdict], at_ms: i64) -> ApiResult<Value> {
    let mut entries: Vec<Value> = previous.as_array().cloned().unwrap_or_default();
    for verdict in verdicts {
        let rule = verdict.rule.as_str();
        let room = entries.len() < SUMMARY_RULES;
        let updated = match entries
            .iter_mut()
            .find(|entry| entry.get("rule").and_then(Value::as_str) == Some(rule))
        {
            Some(entry) => match AnomalySummary::deserialize(&*entry) {
                Ok(mut summary) => {
                    summary.count += 1;
                    summary.last_at = rfc3339(at_ms);
                    summary.evidence.clone_from(&verdict.evidence);
                    summary.kill |= verdict.kill;
                    Some((Some(entry), summary))
                }
                Err(error) => {
                    tracing::warn!(rule, %error, "a stored anomaly summary entry does not read; kept as it is");
                    None
                }
            },
            None if room => Some((
                None,
                AnomalySummary {
                    rule: rule.to_owned(),
                    severity: severity_str(verdict.severity).to_owned(),
                    attribution: attribution_str(verdict.attribution).to_owned(),
                    kill: verdict.kill,
                    count: 1,
                    first_at: rfc3339(at_ms),
                    last_at: rfc3339(at_ms),
                    evidence: verdict.evidence.clone(),
                },
            )),
            None => None,
        };
        if let Some((slot, summary)) = updated {
            let value = serde_json::to_value(summary)
                .map_err(|error| ApiError::internal("anomaly summary", error))?;
            match slot {
                Some(entry) => *entry = value,
                None => entries.push(value),
            }
        }
    }
    Ok(Value::Array(entries))
}

/// `latest_metrics`: the packet's values as clamped, stored with the job.
fn latest_metrics(sample: &TelemetrySample, emulated: bool, clamped: Vec<String>) -> LatestMetrics {
    LatestMetrics {
        gpu_utilization_pct: sample.gpu_utilization_pct,
        vram_used_gb: sample.vram_used_gb,
        vram_allocated_gb: sample.vram_allocated_gb,
        power_draw_watts: sample.power_draw_watts,
        temperature_c: sample.temperature_c,
        outbound_bytes_per_sec: sample.outbound_bytes_per_sec,
        inferred_pattern: sample
            .inferred_pattern
            .map(|pattern| pattern.as_str().to_owned()),
        unique_dest_ips: sample.unique_dest_ips,
        foreign_gpu_processes: sample.foreign_gpu_processes,
        throttling: sample.throttling,
        emulated,
        clamped,
        at: rfc3339(sample.at_ms),
    }
}

/// Applies `input` to a live job, re-reading on a version conflict; `None` when the job ended
/// meanwhile or the state machine refuses. The transition is stamped `at_ms`, the packet's own
/// time, so that the start is the first sample's time and the end the final sample's (metered
/// running time and the energy integral then cover exactly the samples of the run, however the
/// clock moves during the request).
async fn apply(
    state: &AppState,
    job: &JobRecord,
    input: JobInput,
    at_ms: i64,
) -> ApiResult<Option<JobRecord>> {
    let mut job = job.clone();
    for _attempt in 0..5 {
        let now_ms = at_ms;
        let Ok((next, events)) = transition(&job.state, input.clone(), now_ms) else {
            return Ok(None);
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
                if updated.state.status.is_terminal() {
                    state.tutela.forget(&updated.id);
                    state.atlas_nudge.notify_one();
                }
                return Ok(Some(updated));
            }
            Err(StoreError::Conflict(_)) => {
                let Some(fresh) = state.store.get_job(&job.id).await? else {
                    return Ok(None);
                };
                job = fresh;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ApiError::new(ErrorCode::Unavailable, "the job kept changing; retry").with_retry_after(1))
}

fn fenced(job: &JobRecord) -> ApiError {
    let reason = job
        .state
        .failure_reason
        .map(|reason| format!(" ({})", reason.as_str()))
        .unwrap_or_default();
    ApiError::new(
        ErrorCode::JobAlreadyTerminal,
        format!(
            "job {} is {}{reason}: its telemetry is refused; stop its container",
            job.id,
            job.state.status.as_str()
        ),
    )
}

/// Ingest a Russian-Doll packet, or a JSON array of up to 256 packets (a node's jobs posted
/// together): the answer is then an array in the same order, each item a reply or
/// `{"status", "error": {"code", "message", "field"}}`, with HTTP 200.
#[utoipa::path(
    post, path = "/api/telemetry/russian-doll", tag = "agent", request_body = gp4u_proto::TelemetryPacket,
    responses((status = 200, description = "A `TelemetryReply` for one packet; for an array of packets, an array of `TelemetryBatchItem` in the same order", body = TelemetryAnswer), (status = 400, body = gp4u_proto::ErrorBody),
        (status = 403, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody),
        (status = 409, body = gp4u_proto::ErrorBody), (status = 429, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn ingest(
    State(state): State<AppState>,
    HotCaller(caller): HotCaller,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<TelemetryAnswer>> {
    // A node's packets together may exceed the general body limit: up to 256 packets of about
    // 0.5 KiB (with a commitment) each.
    let limit = state.limits.max_body_bytes.max(MAX_TELEMETRY_BODY_BYTES);
    let body = JsonBody::read(&headers, body, limit).await?;
    match body.value {
        Value::Array(packets) => {
            if packets.is_empty() || packets.len() > MAX_PACKETS_PER_REQUEST {
                return Err(ApiError::new(
                    ErrorCode::InvalidJson,
                    format!(
                        "a batch holds 1–{MAX_PACKETS_PER_REQUEST} packets, got {}",
                        packets.len()
                    ),
                ));
            }
            // Concurrently, so that the batch's rows share the writers' commits.
            let replies = futures::future::join_all(
                packets
                    .into_iter()
                    .map(|packet| ingest_one(&state, &caller, packet)),
            )
            .await;
            let items = replies
                .into_iter()
                .map(|reply| match reply {
                    Ok(reply) => TelemetryBatchItem::Reply(reply),
                    Err(error) => TelemetryBatchItem::Refused {
                        status: error.status.as_u16(),
                        error: RefusedPacket {
                            code: error.code.to_owned(),
                            message: error.message,
                            field: error.field,
                        },
                    },
                })
                .collect();
            Ok(Json(TelemetryAnswer::Batch(items)))
        }
        packet => Ok(Json(TelemetryAnswer::Single(
            ingest_one(&state, &caller, packet).await?,
        ))),
    }
}

/// Packets one request may carry (a node posts its jobs' packets together).
pub const MAX_PACKETS_PER_REQUEST: usize = 256;
/// The largest telemetry request body: 256 packets of up to 1 KiB.
pub const MAX_TELEMETRY_BODY_BYTES: usize = MAX_PACKETS_PER_REQUEST * 1024;

/// One packet: everything [`ingest`] does for it.
async fn ingest_one(state: &AppState, caller: &Caller, body: Value) -> ApiResult<TelemetryReply> {
    let arrived = std::time::Instant::now();
    if !body.is_object() {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the telemetry packet must be a JSON object",
        ));
    }
    let job_field = string_field(&body, "job_id")?;
    let node_field = string_field(&body, "node_id")?;
    caller.require(CLEARANCE_PROVIDER, ErrorCode::ProviderRequired, "provider")?;
    let node_missing = || {
        ApiError::new(
            ErrorCode::NodeNotFound,
            format!("no node {node_field} of yours"),
        )
    };
    let node_id = NodeId::parse(node_field).map_err(|_| node_missing())?;
    match state.tutela.node_owner(&state.store, &node_id).await? {
        Some(owner) if owner == *caller.id() => {}
        _ => return Err(node_missing()),
    }
    let not_found = || {
        ApiError::new(
            ErrorCode::JobNotFound,
            format!("no job {job_field} on node {node_id}"),
        )
    };
    let job_id = JobId::parse(job_field).map_err(|_| not_found())?;
    // The job's facts: held by this replica since its first packet, else from the database.
    // (The record just read, when the facts had to be loaded: the start below reuses it.)
    let (mut facts, mut fresh) = match state.tutela.facts(&job_id) {
        Some(facts) if facts.node_id == node_id => (facts, None),
        _ => {
            let job = refuse_unless_live(state, &job_id, &node_id).await?;
            (
                state.tutela.load_window(&state.store, &job).await?,
                Some(job),
            )
        }
    };
    let now_ms = state.now_ms();
    if let Err(retry_after) = state.tutela.take_token(&node_id, now_ms) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "node {node_id} sends telemetry faster than {} packets/s; slow down",
                state.tutela.settings.telemetry_per_node_per_s
            ),
        )
        .with_retry_after(retry_after));
    }
    let (sample, clamped) = parse_sample(&body, now_ms)?;
    let exit = final_exit(&body)?;
    let commitment = power_commitment(&body)?;

    // The first packet starts the job.
    if facts.status == JobStatus::Assigned {
        let job = match fresh.take() {
            Some(job) => job,
            None => refuse_unless_live(state, &job_id, &node_id).await?,
        };
        let job = match apply(state, &job, JobInput::Start, now_ms).await? {
            Some(started) => started,
            None => refuse_unless_live(state, &job_id, &node_id).await?,
        };
        state.tutela.started(&job_id, job.state.started_at_ms);
        facts.status = JobStatus::Running;
        facts.started_at_ms = job.state.started_at_ms;
    }

    let window = match state.tutela.push(&job_id, sample.clone()) {
        Some(window) => window,
        None => {
            // Evicted meanwhile: load it again.
            let job = refuse_unless_live(state, &job_id, &node_id).await?;
            state.tutela.load_window(&state.store, &job).await?;
            state
                .tutela
                .push(&job_id, sample.clone())
                .unwrap_or_else(|| vec![sample.clone()])
        }
    };
    let verdicts = evaluate(&window, &state.tutela.settings.rules);
    let clamped_fields: Vec<String> = clamped.into_iter().map(|change| change.field).collect();
    // Cloned for live followers only when someone follows.
    let live_sample = (state.tutela.live.receiver_count() > 0).then(|| sample.clone());
    let row = TelemetryRow {
        job_id: job_id.clone(),
        node_id: node_id.clone(),
        latest_metrics: serde_json::to_value(latest_metrics(
            &sample,
            facts.emulated,
            clamped_fields,
        ))
        .map_err(|error| ApiError::internal("latest metrics", error))?,
        sample,
        emulated: facts.emulated,
        commitment,
    };
    let accepted = state
        .tutela
        .write(&state.store, row)
        .await
        .map_err(|error| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("the telemetry could not be stored ({error}); send it again"),
            )
            .with_retry_after(1)
        })?;
    if !accepted {
        // The job ended or moved (here or on another replica): the database says how.
        state.tutela.forget(&job_id);
        refuse_unless_live(state, &job_id, &node_id).await?;
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("job {job_id} changed while its packet was stored; send it again"),
        )
        .with_retry_after(1));
    }
    if let Some(sample) = live_sample {
        // No follower left is fine: the send only fails then.
        let _ = state.tutela.live.send(crate::tutela::LiveSample {
            job_id: job_id.clone(),
            sample,
            emulated: facts.emulated,
        });
    }

    state.metrics.telemetry_packets.inc();
    let mut kill: Option<String> = None;
    let anomalies: Vec<AnomalyView> = verdicts
        .iter()
        .map(|verdict| anomaly_view(verdict, now_ms))
        .collect();
    if !verdicts.is_empty() {
        let job = state.store.get_job(&job_id).await?.ok_or_else(not_found)?;
        record_verdicts(state, &job, &verdicts, now_ms).await?;
        for verdict in &verdicts {
            state
                .metrics
                .anomalies
                .get_or_create(&crate::metrics::RuleLabel {
                    rule: verdict.rule.as_str(),
                })
                .inc();
        }
        for verdict in &verdicts {
            if let Some(kind) = verdict.rule.slash_kind() {
                slash(state, &node_id, Some(&job_id), kind, &verdict.evidence).await?;
            }
        }
        if let Some(verdict) = kill_reason(&verdicts) {
            kill = Some(verdict.rule.as_str().to_string());
            let (reason, ended_by) = if verdict.rule == Rule::CryptoMiningDuringMlJob {
                (FailureReason::CryptoMiningDuringMlJob, EndedBy::Provider)
            } else {
                (FailureReason::KilledAnomaly, EndedBy::Platform)
            };
            if verdict.attribution == Attribution::Customer {
                state
                    .store
                    .flag_user(
                        &facts.owner_id,
                        &format!(
                            "{} in job {job_id}: {}",
                            verdict.rule.as_str(),
                            verdict.evidence
                        ),
                        now_ms,
                    )
                    .await?;
            }
            end_attempt(state, &job_id, &node_id, reason, ended_by).await?;
            state.metrics.kill_ordered(verdict.rule.as_str(), arrived);
            tracing::warn!(job_id = %job_id, node_id = %node_id, rule = verdict.rule.as_str(),
                "kill order: {}", verdict.evidence);
        }
    }

    // Past 1.1 × the declared duration: the agent should have killed it; order it now.
    if kill.is_none()
        && exit.is_none()
        && let Some(started) = facts.started_at_ms
        && now_ms > started.saturating_add(facts.cap_ms)
    {
        kill = Some(FailureReason::DurationExceeded.as_str().to_string());
        end_attempt(
            state,
            &job_id,
            &node_id,
            FailureReason::DurationExceeded,
            EndedBy::Platform,
        )
        .await?;
        state
            .metrics
            .kill_ordered(FailureReason::DurationExceeded.as_str(), arrived);
    }

    let mut status = facts.status;
    if kill.is_none()
        && let Some(exit_code) = exit
    {
        let job = state.store.get_job(&job_id).await?.ok_or_else(not_found)?;
        if let Some(ended) = apply(state, &job, JobInput::Exit { exit_code }, now_ms).await? {
            status = ended.state.status;
            tracing::info!(job_id = %job_id, node_id = %node_id, exit_code, status = status.as_str(), "final telemetry");
        }
    }
    // Re-read only when a kill may have moved the job (failed, or back to the queue).
    if kill.is_some()
        && let Some(fresh) = state.store.get_job(&job_id).await?
    {
        status = fresh.state.status;
    }
    // An open visibility challenge for this job rides on its reply (from memory: nothing read).
    let challenge = (kill.is_none() && status == JobStatus::Running)
        .then(|| state.tutela.challenges.for_job(&job_id, now_ms))
        .flatten();
    Ok(TelemetryReply {
        kill_job: kill.is_some(),
        reason: kill,
        anomalies,
        status: status.as_str().to_string(),
        at_ms: Some(now_ms),
        max_gap_ms: Some(state.tutela.settings.energy_max_gap_ms()),
        challenge,
    })
}

/// The optional `power_commitment`: 64 bytes of two compressed Ristretto points, base64.
fn power_commitment(body: &Value) -> ApiResult<Option<String>> {
    match body.get("power_commitment") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            gp4u_attest::energy::ReadingCommitment::from_base64(text).map_err(|error| {
                ApiError::from(FieldError::new(
                    ValidationCode::InvalidType,
                    "power_commitment",
                    format!(
                        "`power_commitment` must be 64 bytes of two Ristretto points in base64: {error}"
                    ),
                ))
            })?;
            Ok(Some(text.clone()))
        }
        Some(_) => Err(FieldError::new(
            ValidationCode::InvalidType,
            "power_commitment",
            "`power_commitment` must be a base64 string".to_owned(),
        )
        .into()),
    }
}

/// Reads the job and refuses unless it is ASSIGNED or RUNNING on `node`: 404 when it is not
/// (or no longer) this node's, 409 when it ended (the agent is fenced and stops it).
async fn refuse_unless_live(
    state: &AppState,
    job_id: &JobId,
    node: &NodeId,
) -> ApiResult<JobRecord> {
    let not_found = || {
        ApiError::new(
            ErrorCode::JobNotFound,
            format!("no job {job_id} on node {node}"),
        )
    };
    let job = state.store.get_job(job_id).await?.ok_or_else(not_found)?;
    if job.state.node_id.as_ref() != Some(node) {
        state.tutela.forget(job_id);
        return Err(not_found());
    }
    if job.state.status.is_terminal() {
        state.tutela.forget(job_id);
        return Err(fenced(&job));
    }
    if !matches!(job.state.status, JobStatus::Assigned | JobStatus::Running) {
        return Err(not_found());
    }
    Ok(job)
}

/// Stores the verdicts, updates the job's summary and publishes `tutela.verdict` (and
/// `tutela.kill_order` for a kill) in one transaction.
async fn record_verdicts(
    state: &AppState,
    job: &JobRecord,
    verdicts: &[Verdict],
    now_ms: i64,
) -> ApiResult<()> {
    let node = job
        .state
        .node_id
        .clone()
        .ok_or_else(|| ApiError::internal("tutela", format!("job {} has no node", job.id)))?;
    let mut rows = Vec::with_capacity(verdicts.len());
    let mut events = Vec::with_capacity(verdicts.len() + 1);
    for verdict in verdicts {
        let id = new_id(state, "an_");
        let payload = json!({
            "anomaly_id": id,
            "job_id": job.id.as_str(),
            "node_id": node.as_str(),
            "rule": verdict.rule.as_str(),
            "severity": severity_str(verdict.severity),
            "kill": verdict.kill,
            "attribution": attribution_str(verdict.attribution),
            "evidence": verdict.evidence,
            "observed": verdict.observed,
            "threshold": verdict.threshold,
            "at_ms": now_ms,
        });
        events.push(OutboxEvent {
            topic: "tutela.verdict".into(),
            aggregate_id: job.id.to_string(),
            payload: payload.clone(),
        });
        if verdict.kill {
            events.push(OutboxEvent {
                topic: "tutela.kill_order".into(),
                aggregate_id: job.id.to_string(),
                payload,
            });
        }
        rows.push(NewAnomaly {
            id,
            rule: verdict.rule.as_str().to_string(),
            severity: severity_str(verdict.severity).to_string(),
            kill: verdict.kill,
            attribution: attribution_str(verdict.attribution).to_string(),
            evidence: verdict.evidence.clone(),
            observed: verdict.observed,
            threshold: verdict.threshold,
        });
    }
    let summary = summarize(&job.anomalies, verdicts, now_ms)?;
    state
        .store
        .record_anomalies(&job.id, &node, &rows, &summary, &events, now_ms)
        .await?;
    state.relay.nudge();
    Ok(())
}

/// `?format=` and `?limit=` of the series route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct SeriesQuery {
    /// `json` (default) or `svg` (a chart of utilization, power and temperature).
    pub format: Option<String>,
    /// At most this many samples from the start of the run (1–10000, default 10000).
    pub limit: Option<i64>,
    /// `1` (or `true`): a `text/event-stream` of `sample` events (the stored samples after
    /// `after_ms`, then each new one as it is stored), ending with an `end` event once the job
    /// has ended.
    pub follow: Option<String>,
    /// With `follow`: only samples received after this time (milliseconds since the epoch),
    /// e.g. the last one a page already shows.
    pub after_ms: Option<i64>,
}

/// Samples a series returns at most.
const MAX_SERIES: i64 = 10_000;

/// A job's stored telemetry, oldest first (its owner or an admin): JSON, or an SVG chart with
/// `?format=svg`. Values are the clamped ones; `emulated` says whether they were measured.
#[utoipa::path(
    get, path = "/api/jobs/{id}/telemetry", tag = "jobs", params(("id" = String, Path), SeriesQuery),
    responses((status = 200, description = "The series (JSON); with `?format=svg` a chart; with `?follow=1` a `text/event-stream` of `sample` events (`TelemetrySampleView` with `at_ms`) and a last `end` event (`TelemetryStreamEnd`)",
            content((TelemetrySeries = "application/json"), ("image/svg+xml"), ("text/event-stream"))),
        (status = 400, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn job_telemetry(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    query: Result<axum::extract::Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let axum::extract::Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidQuery, error.body_text()))?;
    let limit = query.limit.unwrap_or(MAX_SERIES);
    if !(1..=MAX_SERIES).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("limit must be 1–{MAX_SERIES}, got {limit}"),
        ));
    }
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
    let job = crate::routes::jobs::visible_job(&state, &caller, &id).await?;
    if follow {
        // Subscribed before the stored samples are read, so that none falls between.
        let live = state.tutela.live.subscribe();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let after_ms = query.after_ms.unwrap_or(i64::MIN);
        tokio::spawn(follow_telemetry(state, job.id, after_ms, live, sender));
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        return Ok(axum::response::sse::Sse::new(stream)
            .keep_alive(axum::response::sse::KeepAlive::default())
            .into_response());
    }
    let samples = state.store.telemetry_series(&job.id, limit).await?;
    let emulated = job.ran_emulated();
    match query.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(TelemetrySeries {
            job_id: job.id.to_string(),
            emulated,
            samples: samples.iter().map(sample_view).collect(),
        })
        .into_response()),
        "svg" => Ok((
            [(axum::http::header::CONTENT_TYPE, "image/svg+xml")],
            chart_svg(job.id.as_str(), &samples, emulated),
        )
            .into_response()),
        other => Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("format must be json or svg, got {other:?}"),
        )),
    }
}

/// One stored sample on the wire (the series route's `samples`).
fn sample_view(sample: &TelemetrySample) -> TelemetrySampleView {
    TelemetrySampleView {
        at: rfc3339(sample.at_ms),
        gpu_utilization_pct: sample.gpu_utilization_pct,
        vram_used_gb: sample.vram_used_gb,
        vram_allocated_gb: sample.vram_allocated_gb,
        power_draw_watts: sample.power_draw_watts,
        temperature_c: sample.temperature_c,
        outbound_bytes_per_sec: sample.outbound_bytes_per_sec,
        unique_dest_ips: sample.unique_dest_ips,
        inferred_pattern: sample
            .inferred_pattern
            .map(|pattern| pattern.as_str().to_owned()),
        at_ms: None,
    }
}

/// How often a telemetry follower looks at the job (has it ended?).
const FOLLOW_JOB_POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// Every this many looks, a follower also reads the stored series: samples another replica
/// stored reach it this way.
const FOLLOW_SERIES_EVERY: u32 = 5;

/// A `sample` event: the series' sample with `at_ms` (when the server received it).
fn sample_event(sample: &TelemetrySample) -> Option<axum::response::sse::Event> {
    let event = TelemetrySampleView {
        at_ms: Some(sample.at_ms),
        ..sample_view(sample)
    };
    axum::response::sse::Event::default()
        .event("sample")
        .id(sample.at_ms.to_string())
        .json_data(event)
        .ok()
}

type EventSender =
    tokio::sync::mpsc::Sender<Result<axum::response::sse::Event, std::convert::Infallible>>;

/// Sends the stored samples after `*last_ms`, moving it on. `false` when the client is gone.
async fn send_stored(
    state: &AppState,
    job_id: &JobId,
    last_ms: &mut i64,
    sender: &EventSender,
) -> bool {
    let samples = match state.store.telemetry_series(job_id, MAX_SERIES).await {
        Ok(samples) => samples,
        Err(error) => {
            tracing::warn!(job_id = %job_id, %error, "following telemetry: reading the series failed");
            return true;
        }
    };
    for sample in &samples {
        if sample.at_ms <= *last_ms {
            continue;
        }
        *last_ms = sample.at_ms;
        if let Some(event) = sample_event(sample)
            && sender.send(Ok(event)).await.is_err()
        {
            return false;
        }
    }
    true
}

/// Feeds a telemetry follower: the stored samples after `last_ms`, then each sample as this
/// replica stores it (the database again when it fell behind, and every ten seconds for other
/// replicas' samples), then `end` (`{"status"}`) once the job has ended. Samples go out in
/// order of receipt, each once: a sample is known by its receipt time, so a second sample of
/// the same job received in the same millisecond is not sent (an agent sends one per job per
/// telemetry period, at least a second apart; the stored series has both).
async fn follow_telemetry(
    state: AppState,
    job_id: JobId,
    mut last_ms: i64,
    mut live: tokio::sync::broadcast::Receiver<crate::tutela::LiveSample>,
    sender: EventSender,
) {
    use tokio::sync::broadcast::error::RecvError;
    if !send_stored(&state, &job_id, &mut last_ms, &sender).await {
        return;
    }
    let mut poll = tokio::time::interval(FOLLOW_JOB_POLL);
    let mut polls: u32 = 0;
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(live) => {
                    if live.job_id == job_id && live.sample.at_ms > last_ms {
                        last_ms = live.sample.at_ms;
                        if let Some(event) = sample_event(&live.sample)
                            && sender.send(Ok(event)).await.is_err()
                        {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    if !send_stored(&state, &job_id, &mut last_ms, &sender).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = poll.tick() => {
                if state.is_draining() {
                    return;
                }
                polls = polls.wrapping_add(1);
                let ended = match state.store.get_job(&job_id).await {
                    Ok(Some(job)) => job.state.status.is_terminal().then_some(job),
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(job_id = %job_id, %error, "following telemetry: reading the job failed");
                        None
                    }
                };
                if (ended.is_some() || polls.is_multiple_of(FOLLOW_SERIES_EVERY))
                    && !send_stored(&state, &job_id, &mut last_ms, &sender).await
                {
                    return;
                }
                if let Some(job) = ended {
                    if let Ok(event) = axum::response::sse::Event::default()
                        .event("end")
                        .json_data(TelemetryStreamEnd { status: job.state.status })
                    {
                        let _ = sender.send(Ok(event)).await;
                    }
                    return;
                }
            }
            _ = sender.closed() => return,
        }
    }
}

/// Maps a sample to a value in [0, 1] for the chart.
type Scale = Box<dyn Fn(&TelemetrySample) -> f64>;

/// An SVG line chart of a run: utilization (%), power (W, scaled to its maximum) and
/// temperature (°C, 0–150) against time. Pure: the same samples give the same bytes.
pub fn chart_svg(title: &str, samples: &[TelemetrySample], emulated: bool) -> String {
    const WIDTH: f64 = 800.0;
    const HEIGHT: f64 = 320.0;
    const LEFT: f64 = 50.0;
    const TOP: f64 = 30.0;
    const PLOT_W: f64 = WIDTH - LEFT - 20.0;
    const PLOT_H: f64 = HEIGHT - TOP - 50.0;
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"14\">{}{}</text>\n\
         <rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{PLOT_W}\" height=\"{PLOT_H}\" fill=\"none\" stroke=\"#999\"/>\n",
        escape(title),
        if emulated {
            " (emulated GPU: derived from CPU use)"
        } else {
            ""
        }
    );
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\">no telemetry yet</text>\n</svg>\n",
            LEFT + 10.0,
            TOP + 20.0
        ));
        return svg;
    };
    #[allow(clippy::cast_precision_loss)] // milliseconds of one run
    let span = ((last.at_ms - first.at_ms).max(1)) as f64;
    let max_power = samples
        .iter()
        .map(|sample| sample.power_draw_watts)
        .fold(1.0_f64, f64::max);
    let series: [(&str, &str, Scale); 3] = [
        (
            "utilization %",
            "#1f77b4",
            Box::new(|sample: &TelemetrySample| sample.gpu_utilization_pct / 100.0),
        ),
        (
            "power W",
            "#d62728",
            Box::new(move |sample: &TelemetrySample| sample.power_draw_watts / max_power),
        ),
        (
            "temperature °C",
            "#2ca02c",
            Box::new(|sample: &TelemetrySample| sample.temperature_c / 150.0),
        ),
    ];
    for (index, (label, color, value)) in series.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|sample| {
                #[allow(clippy::cast_precision_loss)]
                let x = LEFT + (sample.at_ms - first.at_ms) as f64 / span * PLOT_W;
                let y = TOP + PLOT_H - value(sample).clamp(0.0, 1.0) * PLOT_H;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        #[allow(clippy::cast_precision_loss)]
        let legend_x = LEFT + index as f64 * 170.0;
        svg.push_str(&format!(
            "<text x=\"{legend_x}\" y=\"{}\" fill=\"{color}\">{label}</text>\n",
            HEIGHT - 12.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\" fill=\"#555\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" fill=\"#555\" text-anchor=\"end\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" fill=\"#555\" text-anchor=\"end\">power max {max_power:.0} W</text>\n</svg>\n",
        TOP + PLOT_H + 16.0,
        rfc3339(first.at_ms),
        LEFT + PLOT_W,
        TOP + PLOT_H + 16.0,
        rfc3339(last.at_ms),
        LEFT + PLOT_W,
        TOP - 6.0,
    ));
    svg
}
