//! A fake control plane for the agent's tests: it hands out manifests, serves input artifacts
//! and records what the agent reports, logs, uploads and sends as telemetry, and where it says
//! its visibility endpoint is. Network: loopback only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use gp4u_proto::{
    AgentStatusReply, AgentStatusReport, AssignmentManifest, LogAppended, OutputStored,
    TelemetryPacket, TelemetryReply,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What the fake platform saw and what it hands out.
#[derive(Default)]
pub struct Platform {
    pub queue: Vec<AssignmentManifest>,
    pub reports: Vec<(String, AgentStatusReport)>,
    /// Jobs whose next keep-alive is answered with a kill order.
    pub kill: Vec<String>,
    /// Jobs the platform no longer knows: reports on them get 404.
    pub forgotten: Vec<String>,
    pub registrations: usize,
    /// Artifacts the agent may download, by id.
    pub artifacts: HashMap<String, Vec<u8>>,
    /// Log bytes received, per job.
    pub logs: HashMap<String, Vec<u8>>,
    /// Output archives received (with the hash the agent declared), per job.
    pub outputs: HashMap<String, (String, Vec<u8>)>,
    /// Telemetry packets received, with when, in order.
    pub telemetry: Vec<(Instant, TelemetryPacket)>,
    /// Jobs whose telemetry (only) is answered 404 `JOB_NOT_FOUND`.
    pub telemetry_forgotten: Vec<String>,
    /// Jobs whose telemetry (only) is answered with `kill_job: true`.
    pub telemetry_kill: Vec<String>,
    /// Jobs whose telemetry is answered 409 `JOB_ALREADY_TERMINAL` (the agent is fenced).
    pub fenced: Vec<String>,
    /// Answer `kill_job: true` to a packet with more unique destination IPs than this
    /// (the platform's `OUTBOUND_PORT_SCAN`).
    pub kill_over_ips: Option<u32>,
    /// When a kill order (or fence) was answered, per job.
    pub kill_answered: HashMap<String, Instant>,
    /// The platform is older than the telemetry route: 404 `NOT_FOUND` "no route …".
    pub no_telemetry_route: bool,
    /// The platform's key; its public half goes out with the registration.
    pub platform_key: Option<ed25519_dalek::SigningKey>,
    /// Registrations as sent (the body).
    pub registration_bodies: Vec<Value>,
    /// Nodes registered here.
    pub nodes: Vec<String>,
    /// `PUT /api/providers/{node}/endpoint` calls: (node, endpoint).
    pub endpoints: Vec<(String, String)>,
}

impl Platform {
    /// The telemetry packets of one job.
    pub fn packets(&self, job: &str) -> Vec<(Instant, TelemetryPacket)> {
        self.telemetry
            .iter()
            .filter(|(_, packet)| packet.job_id == job)
            .cloned()
            .collect()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub type Shared = Arc<Mutex<Platform>>;

/// Each fake platform's node is a different node, as two real nodes sharing a Docker host are:
/// a restarted agent must recover only its own containers.
fn unique_node_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("node_test{}x{n}", std::process::id())
}

async fn register(State(platform): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut platform = platform.lock().unwrap();
    platform.registrations += 1;
    platform.registration_bodies.push(body.clone());
    let gpus: Vec<Value> = body["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(n, gpu)| json!({"id": format!("gpu_test{n}"), "name": gpu["name"], "vram_gb": gpu["vram_gb"],
            "price_per_hour": gpu["price_per_hour"], "region": body["region"], "status": "AVAILABLE", "emulated": gpu["emulated"]}))
        .collect();
    let node_id = unique_node_id();
    platform.nodes.push(node_id.clone());
    let key = platform
        .platform_key
        .as_ref()
        .map(gp4u_attest::key::public_key_base64);
    (
        StatusCode::CREATED,
        Json(json!({"node_id": node_id, "gpus": gpus, "platform_public_key": key})),
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn telemetry(
    State(platform): State<Shared>,
    Json(packet): Json<TelemetryPacket>,
) -> Response {
    let mut platform = platform.lock().unwrap();
    if platform.no_telemetry_route {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no route POST /api/telemetry/russian-doll; GET /api/openapi.json lists them",
        );
    }
    let job = packet.job_id.clone();
    platform.telemetry.push((Instant::now(), packet.clone()));
    if platform.forgotten.contains(&job) || platform.telemetry_forgotten.contains(&job) {
        platform
            .kill_answered
            .entry(job.clone())
            .or_insert_with(Instant::now);
        return error(
            StatusCode::NOT_FOUND,
            "JOB_NOT_FOUND",
            "no such job on this node",
        );
    }
    if platform.fenced.contains(&job) {
        platform
            .kill_answered
            .entry(job.clone())
            .or_insert_with(Instant::now);
        return error(
            StatusCode::CONFLICT,
            "JOB_ALREADY_TERMINAL",
            "the job is CANCELLED",
        );
    }
    let scan = platform
        .kill_over_ips
        .is_some_and(|limit| packet.unique_dest_ips.unwrap_or(0) > limit);
    let kill = packet.is_final != Some(true)
        && (platform.kill.contains(&job) || platform.telemetry_kill.contains(&job) || scan);
    if kill {
        platform
            .kill_answered
            .entry(job.clone())
            .or_insert_with(Instant::now);
    }
    let status = match (packet.is_final, packet.exit_code) {
        (Some(true), Some(0)) => "COMPLETE",
        (Some(true), Some(_)) => "FAILED",
        _ if kill => "FAILED",
        _ => "RUNNING",
    };
    Json(TelemetryReply {
        kill_job: kill,
        reason: kill.then(|| {
            if scan {
                "OUTBOUND_PORT_SCAN"
            } else {
                "CANCELLED"
            }
            .to_string()
        }),
        anomalies: vec![],
        status: status.into(),
    })
    .into_response()
}

async fn endpoint(
    State(platform): State<Shared>,
    Path(node): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut platform = platform.lock().unwrap();
    if !platform.nodes.contains(&node) {
        return error(
            StatusCode::NOT_FOUND,
            "NODE_NOT_FOUND",
            "no such node of yours",
        );
    }
    let Some(endpoint) = body["endpoint"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "INVALID_JSON", "endpoint missing");
    };
    platform.endpoints.push((node, endpoint.to_string()));
    StatusCode::NO_CONTENT.into_response()
}

async fn assignments(State(platform): State<Shared>) -> Response {
    for _ in 0..20 {
        if let Some(manifest) = platform.lock().unwrap().queue.pop() {
            return Json(manifest).into_response();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn status(
    State(platform): State<Shared>,
    Path(job): Path<String>,
    Json(report): Json<AgentStatusReport>,
) -> Response {
    let mut platform = platform.lock().unwrap();
    if platform.forgotten.contains(&job) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "JOB_NOT_FOUND", "message": "no such job"}})),
        )
            .into_response();
    }
    let kill = report.status == "running" && platform.kill.contains(&job);
    platform.reports.push((job.clone(), report));
    Json(AgentStatusReply {
        job_id: job,
        status: "RUNNING".into(),
        kill,
    })
    .into_response()
}

async fn input(
    State(platform): State<Shared>,
    Path((_job, artifact)): Path<(String, String)>,
) -> Response {
    match platform.lock().unwrap().artifacts.get(&artifact) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn logs(
    State(platform): State<Shared>,
    Path(job): Path<String>,
    body: Bytes,
) -> Json<LogAppended> {
    let mut platform = platform.lock().unwrap();
    let log = platform.logs.entry(job.clone()).or_default();
    log.extend_from_slice(&body);
    Json(LogAppended {
        job_id: job,
        accepted_bytes: body.len() as u64,
        log_bytes: log.len() as u64,
        truncated: false,
    })
}

async fn outputs(
    State(platform): State<Shared>,
    Path(job): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let declared = headers["x-gp4u-sha256"].to_str().unwrap().to_string();
    if declared != sha256_hex(&body) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    platform
        .lock()
        .unwrap()
        .outputs
        .insert(job.clone(), (declared.clone(), body.to_vec()));
    Json(OutputStored {
        job_id: job,
        sha256: declared,
        size_bytes: body.len() as u64,
    })
    .into_response()
}

pub async fn fake_platform() -> (String, Shared) {
    let platform: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/api/providers/register", post(register))
        .route("/api/agent/assignments", get(assignments))
        .route("/api/agent/jobs/{id}/status", post(status))
        .route("/api/agent/jobs/{id}/inputs/{artifact}", get(input))
        .route("/api/agent/jobs/{id}/logs", post(logs))
        .route("/api/agent/jobs/{id}/outputs", put(outputs))
        .route("/api/telemetry/russian-doll", post(telemetry))
        .route("/api/providers/{id}/endpoint", put(endpoint))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(platform.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), platform)
}

/// The final report of each job, waiting up to `limit`: a status report other than "running"
/// (failures, `DURATION_EXCEEDED`), or a final telemetry packet, shown as an "exited" report.
pub async fn finals(
    platform: &Shared,
    jobs: &[&str],
    limit: Duration,
) -> HashMap<String, AgentStatusReport> {
    let started = Instant::now();
    loop {
        let done: HashMap<String, AgentStatusReport> = {
            let platform = platform.lock().unwrap();
            let reports = platform
                .reports
                .iter()
                .filter(|(_, report)| report.status != "running")
                .map(|(job, report)| (job.clone(), report.clone()));
            let packets = platform
                .telemetry
                .iter()
                .filter(|(_, packet)| packet.is_final == Some(true))
                .map(|(_, packet)| {
                    (
                        packet.job_id.clone(),
                        AgentStatusReport {
                            node_id: packet.node_id.clone(),
                            status: "exited".into(),
                            exit_code: packet.exit_code,
                            reason: None,
                            message: None,
                        },
                    )
                });
            reports.chain(packets).collect()
        };
        if jobs.iter().all(|job| done.contains_key(*job)) || started.elapsed() > limit {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the container of this job is still running (`docker inspect`); gone counts as not.
pub fn container_running(job: &str) -> bool {
    let output = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.State.Running}}",
            &format!("gp4u-{job}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "true"
}

/// Waits until `check` holds, polling every 50 ms, up to `limit`; whether it held.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if check() {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
