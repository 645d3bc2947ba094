//! A fake control plane for the agent's tests: it hands out manifests, serves input artifacts
//! and records what the agent reports, logs and uploads. Network: loopback only.
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
    let gpus: Vec<Value> = body["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(n, gpu)| json!({"id": format!("gpu_test{n}"), "name": gpu["name"], "vram_gb": gpu["vram_gb"],
            "price_per_hour": gpu["price_per_hour"], "region": body["region"], "status": "AVAILABLE", "emulated": gpu["emulated"]}))
        .collect();
    (
        StatusCode::CREATED,
        Json(json!({"node_id": unique_node_id(), "gpus": gpus})),
    )
        .into_response()
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
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(platform.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), platform)
}

/// The final report of each job, waiting up to `limit`.
pub async fn finals(
    platform: &Shared,
    jobs: &[&str],
    limit: Duration,
) -> HashMap<String, AgentStatusReport> {
    let started = Instant::now();
    loop {
        let done: HashMap<String, AgentStatusReport> = platform
            .lock()
            .unwrap()
            .reports
            .iter()
            .filter(|(_, report)| report.status != "running")
            .map(|(job, report)| (job.clone(), report.clone()))
            .collect();
        if jobs.iter().all(|job| done.contains_key(*job)) || started.elapsed() > limit {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
