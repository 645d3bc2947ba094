//! A fake control plane for the agent's tests: it hands out manifests, serves input artifacts
//! and records what the agent reports, logs, uploads and sends as telemetry, and where it says
//! the visibility answers and host postures it sends. Network: loopback only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use gp4u_agent::agent::{AgentConfig, RuntimeKind};
use gp4u_agent::gpu::EmulatedGpu;
use gp4u_proto::paths;
use gp4u_proto::{
    AgentStatusReply, AgentStatusReport, AssignmentManifest, LogAppended, OutputStored,
    TelemetryPacket, TelemetryReply,
};
#[allow(unused_imports)]
pub use gp4u_testkit::{TestImage, eventually, sha256_hex, skip_unless_ci, test_image};
use serde_json::{Value, json};

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
    /// The platform is older than packet arrays: an array is refused whole (422).
    pub refuse_arrays: bool,
    /// Every telemetry request, in order (arrays and single packets, refused ones too).
    pub telemetry_requests: Vec<TelemetryRequest>,
    /// Jobs on the kill, fenced or forgotten lists are answered so only from their Nth packet
    /// (1-based) on; before it, normally.
    pub orders_from_packet: HashMap<String, usize>,
    /// Jobs whose kill order or fence was answered as an item of an array.
    pub ordered_in_array: Vec<String>,
    /// Jobs whose telemetry is answered 429 `RATE_LIMITED`.
    pub rate_limited: Vec<String>,
    /// The platform's key; its public half goes out with the registration.
    pub platform_key: Option<ed25519_dalek::SigningKey>,
    /// Registrations as sent (the body).
    pub registration_bodies: Vec<Value>,
    /// Nodes registered here.
    pub nodes: Vec<String>,
    /// Visibility challenges to put in a job's next telemetry reply (once), by job.
    pub challenges: HashMap<String, gp4u_proto::VisibilityChallenge>,
    /// `POST /api/agent/visibility` bodies, in order.
    pub answers: Vec<gp4u_proto::VisibilityAnswer>,
    /// `PUT /api/providers/{node}/posture` calls: (node, body).
    pub postures: Vec<(String, Value)>,
}

/// One `POST /api/telemetry/russian-doll`.
#[derive(Debug, Clone)]
pub struct TelemetryRequest {
    pub at: Instant,
    /// The job of each packet, in order.
    pub jobs: Vec<String>,
    /// Whether each packet was a final one (`final: true`).
    pub finals: Vec<bool>,
    /// Posted as an array (even of one).
    pub array: bool,
    /// Refused whole (an older platform).
    pub refused: bool,
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

/// The answer to one packet: its reply, or the refusal (status, code, message).
fn telemetry_one(
    platform: &mut Platform,
    packet: TelemetryPacket,
    in_array: bool,
) -> Result<TelemetryReply, (StatusCode, &'static str, &'static str)> {
    let job = packet.job_id.clone();
    platform.telemetry.push((Instant::now(), packet.clone()));
    // Orders for this job apply from its Nth packet on.
    let seen = platform
        .telemetry
        .iter()
        .filter(|(_, seen)| seen.job_id == job)
        .count();
    let ordered = platform
        .orders_from_packet
        .get(&job)
        .is_none_or(|from| seen >= *from);
    let answer_order = |platform: &mut Platform| {
        platform
            .kill_answered
            .entry(job.clone())
            .or_insert_with(Instant::now);
        if in_array && !platform.ordered_in_array.contains(&job) {
            platform.ordered_in_array.push(job.clone());
        }
    };
    if platform.forgotten.contains(&job) || (ordered && platform.telemetry_forgotten.contains(&job))
    {
        answer_order(platform);
        return Err((
            StatusCode::NOT_FOUND,
            "JOB_NOT_FOUND",
            "no such job on this node",
        ));
    }
    if ordered && platform.fenced.contains(&job) {
        answer_order(platform);
        return Err((
            StatusCode::CONFLICT,
            "JOB_ALREADY_TERMINAL",
            "the job is CANCELLED",
        ));
    }
    if platform.rate_limited.contains(&job) {
        return Err((StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "slow down"));
    }
    let scan = platform
        .kill_over_ips
        .is_some_and(|limit| packet.unique_dest_ips.unwrap_or(0) > limit);
    let kill = packet.is_final != Some(true)
        && ((ordered && (platform.kill.contains(&job) || platform.telemetry_kill.contains(&job)))
            || scan);
    if kill {
        answer_order(platform);
    }
    let status = match (packet.is_final, packet.exit_code) {
        (Some(true), Some(0)) => "COMPLETE",
        (Some(true), Some(_)) => "FAILED",
        _ if kill => "FAILED",
        _ => "RUNNING",
    };
    Ok(TelemetryReply {
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
        at_ms: None,
        max_gap_ms: None,
        challenge: if kill {
            None
        } else {
            platform.challenges.remove(&job)
        },
    })
}

/// A packet, or (unless `refuse_arrays`) an array of packets answered item by item, as the
/// platform's `ingest` does.
async fn telemetry(State(platform): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut platform = platform.lock().unwrap();
    let jobs = |packets: &[Value]| -> Vec<String> {
        packets
            .iter()
            .map(|packet| packet["job_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (array, packets) = match &body {
        Value::Array(packets) => (true, packets.clone()),
        packet => (false, vec![packet.clone()]),
    };
    let refused = platform.no_telemetry_route || (array && platform.refuse_arrays);
    platform.telemetry_requests.push(TelemetryRequest {
        at: Instant::now(),
        jobs: jobs(&packets),
        finals: packets
            .iter()
            .map(|packet| packet["final"] == Value::Bool(true))
            .collect(),
        array,
        refused,
    });
    if platform.no_telemetry_route {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "no route POST {}; GET {} lists them",
                paths::TELEMETRY,
                paths::OPENAPI
            ),
        );
    }
    if array && platform.refuse_arrays {
        // What an older platform's `Json<TelemetryPacket>` extractor answers to an array.
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Failed to deserialize the JSON body into the target type: invalid type: sequence, expected struct TelemetryPacket",
        )
            .into_response();
    }
    if !array {
        let Ok(packet) = serde_json::from_value::<TelemetryPacket>(body) else {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_JSON",
                "not a packet",
            );
        };
        return match telemetry_one(&mut platform, packet, false) {
            Ok(reply) => Json(reply).into_response(),
            Err((status, code, message)) => error(status, code, message),
        };
    }
    if packets.is_empty() || packets.len() > 256 {
        return error(StatusCode::BAD_REQUEST, "INVALID_JSON", "1–256 packets");
    }
    let items: Vec<Value> = packets
        .into_iter()
        .map(|packet| match serde_json::from_value::<TelemetryPacket>(packet) {
            Err(_) => json!({"status": 400, "error": {"code": "INVALID_JSON", "message": "not a packet", "field": null}}),
            Ok(packet) => match telemetry_one(&mut platform, packet, true) {
                Ok(reply) => serde_json::to_value(reply).unwrap(),
                Err((status, code, message)) => json!({"status": status.as_u16(),
                    "error": {"code": code, "message": message, "field": null}}),
            },
        })
        .collect();
    Json(Value::Array(items)).into_response()
}

async fn posture(
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
    platform.postures.push((node, body));
    Json(json!({})).into_response()
}

async fn visibility_answer(
    State(platform): State<Shared>,
    Json(answer): Json<gp4u_proto::VisibilityAnswer>,
) -> Response {
    platform.lock().unwrap().answers.push(answer);
    Json(json!({"result": "ANSWERED", "detail": null})).into_response()
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
    let declared = headers[gp4u_proto::SHA256_HEADER]
        .to_str()
        .unwrap()
        .to_string();
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
        .route(paths::PROVIDERS_REGISTER, post(register))
        .route(paths::AGENT_ASSIGNMENTS, get(assignments))
        .route(paths::AGENT_JOB_STATUS, post(status))
        .route(paths::AGENT_JOB_INPUT, get(input))
        .route(paths::AGENT_JOB_LOGS, post(logs))
        .route(paths::AGENT_JOB_OUTPUTS, put(outputs))
        .route(paths::TELEMETRY, post(telemetry))
        .route(paths::PROVIDER_POSTURE, put(posture))
        .route(paths::AGENT_VISIBILITY, post(visibility_answer))
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

/// Waits until the platform has answered `job` with a stop order (within 30 s) and the job's
/// process, found by `marker`, is gone (within 20 s more); returns how long after the order.
pub async fn stopped_after_order(platform: &Shared, job: &str, marker: &str) -> Duration {
    assert!(
        eventually(Duration::from_secs(30), || platform
            .lock()
            .unwrap()
            .kill_answered
            .contains_key(job))
        .await,
        "{job}: no stop order went out"
    );
    let ordered = platform.lock().unwrap().kill_answered[job];
    assert!(
        eventually(Duration::from_secs(20), || !process_alive(marker)).await,
        "{job} still runs"
    );
    ordered.elapsed()
}

/// A job running `sh -c command` with this telemetry interval (process runtime).
pub fn manifest(job: &str, command: &str, interval_s: u64) -> AssignmentManifest {
    AssignmentManifest {
        job_id: job.to_string(),
        docker_image: "unused".into(),
        docker_image_sha256: "ab".repeat(32),
        gpu_id: "gpu_test0".into(),
        gpu_uuid: None,
        ram_limit_gb: 1.0,
        env: BTreeMap::new(),
        command: vec!["sh".into(), "-c".into(), command.into()],
        inputs: vec![],
        input_sha256: BTreeMap::new(),
        expected_duration_hours: 0.1,
        kill_after_seconds: 120,
        telemetry_interval_seconds: interval_s,
        shm_gb: 0.0,
        scratch_gb: 1.0,
        network: "public".into(),
        gpu_power_limit_watts: None,
    }
}

/// An agent on the unisolated process runtime with one emulated GPU.
pub fn process_config(server: &str, data_dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        server: server.to_string(),
        token: "test-token".into(),
        data_dir: data_dir.to_path_buf(),
        runtime: RuntimeKind::Process,
        allow_unisolated: true,
        emulated: vec![EmulatedGpu::parse("emulated:RTX 4090:24").unwrap()],
        region: "us-east-1".into(),
        price_per_hour: 1.0,
        poll_wait_s: 1,
        refuse_visibility: false,
        net_sample_interval: AgentConfig::DEFAULT_NET_SAMPLE_INTERVAL,
        renewable_pct: 0.0,
        job_runtime: Default::default(),
        metrics_listen: None,
    }
}

/// Whether a process whose command line contains `marker` is alive.
pub fn process_alive(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .any(|cmdline| {
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
        })
}

/// A job running `sh -c command` in the busybox image.
pub fn docker_manifest(image: &TestImage, job: &str, command: &str) -> AssignmentManifest {
    AssignmentManifest {
        job_id: job.to_string(),
        docker_image: image.image.clone(),
        docker_image_sha256: image.digest.clone(),
        gpu_id: "gpu_test0".into(),
        gpu_uuid: Some("GPU-emulated".into()),
        ram_limit_gb: 0.25,
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        command: vec!["sh".into(), "-c".into(), command.into()],
        inputs: vec![],
        input_sha256: BTreeMap::new(),
        expected_duration_hours: 0.1,
        kill_after_seconds: 120,
        telemetry_interval_seconds: 10,
        shm_gb: 0.0,
        scratch_gb: 1.0,
        network: "public".into(),
        gpu_power_limit_watts: None,
    }
}

/// A Docker agent with one emulated GPU, polling every second.
pub fn docker_config(server: &str, data_dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        server: server.to_string(),
        token: "test-token".into(),
        data_dir: data_dir.to_path_buf(),
        runtime: RuntimeKind::Docker,
        allow_unisolated: false,
        emulated: vec![EmulatedGpu::parse("emulated:RTX 4090:24").unwrap()],
        region: "us-east-1".into(),
        price_per_hour: 1.0,
        poll_wait_s: 1,
        refuse_visibility: false,
        net_sample_interval: AgentConfig::DEFAULT_NET_SAMPLE_INTERVAL,
        renewable_pct: 0.0,
        job_runtime: Default::default(),
        metrics_listen: None,
    }
}

/// Mounts under `dir` (an agent's data dir: its jobs' scratch) that are still there.
pub fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|line| line.contains(&*dir.to_string_lossy()))
        .map(str::to_string)
        .collect()
}

/// Waits (up to a minute) until the agent has cleaned up after its jobs: no scratch mounted
/// under its data dir. An agent stopped before that leaves them to its next start.
pub async fn cleaned_up(dir: &std::path::Path) {
    assert!(
        eventually(Duration::from_secs(60), || mounts_under(dir).is_empty()).await,
        "the agent left mounts behind: {:?}",
        mounts_under(dir)
    );
}

/// Unmounts, when dropped, the job scratch still mounted under an agent's data dir (declare it
/// after the data dir's `TempDir`, so that it runs first): a test that stops its agent mid-job
/// never restarts it, and a restarted agent is what sweeps such leftovers.
pub struct Unmount(pub std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for mount in mounts_under(&self.0) {
            if let Some(path) = mount.split(' ').nth(1) {
                let _ = std::process::Command::new("umount")
                    .args(["-l", path])
                    .status();
            }
        }
    }
}
