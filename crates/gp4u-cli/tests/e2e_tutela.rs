//! Black box, stage 4 (SPEC §7) with the real binaries, the real Docker Engine and an
//! emulated GPU: a miner-like workload talking to a "pool" on port 3333 (inside its own
//! network namespace: a job's network reaches no other container) is killed and ends
//! KILLED_ANOMALY; a workload reaching more than
//! 50 loopback addresses inside its own network namespace trips OUTBOUND_PORT_SCAN; an agent
//! killed mid-job gets its job failed JOB_DROPPED after the timeout with exactly one slash,
//! and when it comes back it is fenced and its container killed; an agent started without any
//! listener flags answers the visibility challenges that ride on its telemetry replies, and
//! one that keeps reporting while refusing them (`--refuse-visibility`) is slashed, ejected,
//! and its job failed VISIBILITY_BLOCKED; an agent restarted mid-job (within the
//! heartbeat timeout) still proves the whole job's energy, and `gp4u verify` passes.
//!
//! Network rule: every connection here goes to loopback or to containers this test created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_verifies_within, docker, docker_image, job_containers, start_agent_with,
    start_server_with,
};
use gp4u_client::Client;
use gp4u_proto::{EndedBy, FailureReason, JobStatus, JobView, NodeStatus, ProviderNodeView};
use gp4u_store::Engine;
use gp4u_store::testing::TestDatabase;
use gp4u_testkit::journey;
use serde_json::json;

/// A running `gp4u server` with a provider and a customer, and where an agent of theirs keeps
/// its data. Fields drop in order: the server first, then its data.
struct Platform {
    _server: common::Running,
    base: String,
    /// The customer's token, and the customer and the admin as clients.
    customer_token: String,
    customer: Client,
    admin: Client,
    token_file: std::path::PathBuf,
    image: String,
    digest: String,
    agent_dir: tempfile::TempDir,
    _data_dir: tempfile::TempDir,
    _db: TestDatabase,
}

/// Starts the platform for `test` with server `flags` (and `config`, TOML, as `--config`);
/// `None` when the Docker test image is not set up (said loudly; a failure in CI).
async fn platform(test: &str, flags: &[&str], config: Option<&str>) -> Option<Platform> {
    let (image, digest) = docker_image(test)?;
    let db = TestDatabase::create(Engine::Sqlite, test).await.unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let mut flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
    if let Some(config) = config {
        let path = data_dir.path().join("gp4u.toml");
        std::fs::write(&path, config).unwrap();
        flags.extend(["--config".to_string(), path.display().to_string()]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_server_with(data_dir.path(), &db.url, &flags);
    let base = server.base.clone();
    let people = common::people(&base, data_dir.path(), 100_000.0).await;
    Some(Platform {
        _server: server,
        customer: Client::new(&base, Some(&people.customer)).unwrap(),
        admin: Client::new(&base, Some(&people.admin)).unwrap(),
        customer_token: people.customer,
        base,
        token_file: people.token_file,
        image,
        digest,
        agent_dir: tempfile::tempdir().unwrap(),
        _data_dir: data_dir,
        _db: db,
    })
}

impl Platform {
    /// `gp4u agent` of the provider, with an emulated GPU.
    fn agent(&self, extra: &[&str]) -> common::Running {
        start_agent_with(&self.base, &self.token_file, self.agent_dir.path(), extra)
    }

    /// The node's standing, as an admin sees it.
    async fn standing(&self, node: &str) -> ProviderNodeView {
        self.admin.node(node).await.unwrap()
    }

    /// The agent's GPU, once it registered: (GPU, node).
    async fn gpu(&self) -> (String, String) {
        let gpu = journey::first_gpu(&self.customer, Duration::from_secs(30)).await;
        (gpu.id, gpu.node_id)
    }

    async fn submit(&self, gpu: &str, script: &str) -> String {
        let (image, digest) = (&self.image, &self.digest);
        self.customer
            .submit(
                &json!({"name": "tutela e2e", "gpuId": gpu, "workload_type": "TRAINING",
                "expectedDurationHours": 0.1, "docker_image": image, "docker_image_sha256": digest,
                "command": ["sh", "-c", script], "max_retries": 0}),
                None,
            )
            .await
            .unwrap()
            .id
    }

    async fn job(&self, id: &str) -> JobView {
        self.customer.job(id).await.unwrap()
    }

    async fn wait_for(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "waited {within:?} for job {id}: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn ended(job: &JobView) -> bool {
    job.status.is_terminal()
}

/// Running, with its first telemetry in.
fn reporting(job: &JobView) -> bool {
    job.status == JobStatus::Running && job.metrics().is_some()
}

/// Waits until no container of the job is left; returns how long that took.
async fn containers_gone(job: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while !job_containers(job).is_empty() {
        assert!(
            start.elapsed() < within,
            "job {job}'s container is still there after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_and_a_port_scanner_are_killed_for_what_they_do() {
    // A short inference window, so that the container's first (partial) second does not hide
    // the steady profile for the default five minutes.
    let Some(platform) = platform(
        "e2e_tutela_mining",
        &["--telemetry-interval-s", "1"],
        Some("[tutela.rules.inference]\nmax_window_samples = 5\n"),
    )
    .await
    else {
        return;
    };
    let reference = format!("{}@{}", platform.image, platform.digest);
    docker(&["pull", &reference]);
    let _agent = platform.agent(&[]);
    let (gpu, _) = platform.gpu().await;

    // The miner: two spinning loops (at least one full core even on a busy machine), a
    // long-lived connection to a "pool" on port 3333 with a small steady flow of "shares".
    // The pool listens inside the job's own network namespace: the job's network reaches no
    // other container (SPEC §10), and the agent sees the socket's remote port all the same.
    let miner = "sleep 3600 | nc -l -p 3333 > /dev/null & sleep 0.5; \
                 while :; do :; done & while :; do :; done & \
                 while true; do (while true; do echo share; sleep 1; done | nc 127.0.0.1 3333); sleep 1; done"
        .to_string();
    let job = platform.submit(&gpu, &miner).await;
    let view = platform
        .wait_for(&job, Duration::from_secs(120), ended)
        .await;
    let failed_at = Instant::now();
    assert_eq!(
        (view.status, view.failure_reason),
        (JobStatus::Failed, Some(FailureReason::KilledAnomaly)),
        "{view:?}"
    );
    let rules: Vec<String> = view
        .anomaly_summary()
        .into_iter()
        .map(|entry| entry.rule)
        .collect();
    assert!(
        rules.iter().any(|rule| rule == "CRYPTO_MINING_PATTERN"),
        "{view:?}"
    );
    assert!(
        view.metrics().is_some_and(|metrics| metrics.emulated),
        "{view:?}"
    );
    let gone = containers_gone(&job, Duration::from_secs(20)).await;
    eprintln!(
        "miner: container gone {gone:?} after the job was seen FAILED ({:?} polling)",
        failed_at.elapsed()
    );

    // The scanner: holds connections to 60 distinct loopback addresses of its own namespace.
    let scanner = "for i in $(seq 1 60); do sleep 600 | nc -l -p $((9000 + i)) > /dev/null & done; sleep 1; \
                   for i in $(seq 1 60); do sleep 600 | nc 127.0.0.$i $((9000 + i)) & done; sleep 600";
    let job = platform.submit(&gpu, scanner).await;
    let view = platform
        .wait_for(&job, Duration::from_secs(120), ended)
        .await;
    assert_eq!(
        (view.status, view.failure_reason),
        (JobStatus::Failed, Some(FailureReason::KilledAnomaly)),
        "{view:?}"
    );
    assert_eq!(
        view.anomaly_summary()
            .first()
            .map(|entry| entry.rule.as_str()),
        Some("OUTBOUND_PORT_SCAN"),
        "{view:?}"
    );
    containers_gone(&job, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_agent_is_slashed_once_and_fenced_when_it_returns() {
    let Some(platform) = platform(
        "e2e_tutela_dropped",
        &[
            "--telemetry-interval-s",
            "1",
            "--heartbeat-timeout-s",
            "4",
            "--visibility-interval-s",
            "1",
        ],
        None,
    )
    .await
    else {
        return;
    };
    let mut agent = platform.agent(&[]);
    let (gpu, _) = platform.gpu().await;
    let job = platform.submit(&gpu, "sleep 300").await;
    let view = platform
        .wait_for(&job, Duration::from_secs(60), reporting)
        .await;
    let node = view.node_id.clone().unwrap();
    // The platform reaches the agent: its visibility challenges are answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let standing = platform.standing(&node).await;
        if standing.visibility == "ANSWERED" {
            break;
        }
        assert!(Instant::now() < deadline, "never ANSWERED: {standing:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The agent dies mid-job; its container runs on, unwatched.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let killed_at = Instant::now();
    let view = platform
        .wait_for(&job, Duration::from_secs(30), ended)
        .await;
    assert_eq!(
        (view.status, view.failure_reason, view.ended_by),
        (
            JobStatus::Failed,
            Some(FailureReason::JobDropped),
            Some(EndedBy::Provider)
        ),
        "{view:?}"
    );
    assert!(
        killed_at.elapsed() >= Duration::from_secs(4),
        "dropped before the 4 s timeout"
    );
    let standing = platform.standing(&node).await;
    assert_eq!(standing.slashes.len(), 1, "exactly one slash: {standing:?}");
    assert_eq!(standing.slashes[0].kind, "JOB_DROPPED_UNEXPECTEDLY");
    assert_eq!(
        standing.status,
        NodeStatus::Active,
        "a dead agent is not hiding: {standing:?}"
    );
    assert_eq!(job_containers(&job).len(), 1, "the orphan is still running");

    // The agent comes back: it finds its container, reports, is fenced, and kills it.
    let _agent = platform.agent(&[]);
    let gone = containers_gone(&job, Duration::from_secs(30)).await;
    eprintln!("fenced: the returning agent removed its container {gone:?} after restarting");
    let standing = platform.standing(&node).await;
    assert_eq!(standing.slashes.len(), 1, "{standing:?}");
    assert_eq!(
        platform.job(&job).await.failure_reason,
        Some(FailureReason::JobDropped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_hiding_from_visibility_checks_is_ejected() {
    let Some(platform) = platform(
        "e2e_tutela_visibility",
        &[
            "--telemetry-interval-s",
            "1",
            "--visibility-interval-s",
            "1",
        ],
        None,
    )
    .await
    else {
        return;
    };
    // The agent keeps reporting but never answers a challenge (what a provider that blocks
    // the platform's visibility does).
    let _agent = platform.agent(&["--refuse-visibility"]);
    let (gpu, _) = platform.gpu().await;
    let job = platform.submit(&gpu, "sleep 300").await;
    let view = platform
        .wait_for(&job, Duration::from_secs(60), ended)
        .await;
    assert_eq!(
        (view.status, view.failure_reason),
        (JobStatus::Failed, Some(FailureReason::VisibilityBlocked)),
        "{view:?}"
    );
    let node = view.node_id.as_deref().unwrap();
    let standing = platform.standing(node).await;
    assert_eq!(standing.status, NodeStatus::Ejected, "{standing:?}");
    let kinds: Vec<&str> = standing
        .slashes
        .iter()
        .map(|slash| slash.kind.as_str())
        .collect();
    assert_eq!(kinds, ["VISIBILITY_BLOCKED"], "{standing:?}");
    // Fenced: the agent's next packet is refused and it stops the container.
    containers_gone(&job, Duration::from_secs(20)).await;
    // An ejected node's GPU is no longer offered.
    let listing = platform.customer.gpus().await.unwrap();
    assert!(listing.gpus.is_empty(), "{listing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_is_fenced_when_it_comes_back() {
    let Some(platform) = platform(
        "e2e_tutela_partition",
        &["--telemetry-interval-s", "1", "--heartbeat-timeout-s", "3"],
        None,
    )
    .await
    else {
        return;
    };
    let agent = platform.agent(&[]);
    let (gpu, _) = platform.gpu().await;
    let job = platform.submit(&gpu, "sleep 300").await;
    platform
        .wait_for(&job, Duration::from_secs(60), reporting)
        .await;
    // The agent is cut off (frozen: it sends nothing, its container runs on) ...
    let pid = agent.child.id().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    let view = platform
        .wait_for(&job, Duration::from_secs(30), ended)
        .await;
    assert_eq!(
        view.failure_reason,
        Some(FailureReason::JobDropped),
        "{view:?}"
    );
    assert_eq!(job_containers(&job).len(), 1, "the container ran on");
    // ... and comes back: its next packet is refused (409) and it kills the container.
    signal("-CONT");
    let gone = containers_gone(&job, Duration::from_secs(30)).await;
    eprintln!("partition: the returning agent removed its container {gone:?} after resuming");
    assert_eq!(
        platform.job(&job).await.failure_reason,
        Some(FailureReason::JobDropped)
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_still_proves_the_whole_job() {
    let Some(platform) = platform(
        "e2e_restarted_agent_proves",
        &["--telemetry-interval-s", "1"],
        None,
    )
    .await
    else {
        return;
    };
    let mut agent = platform.agent(&[]);
    let (gpu, _) = platform.gpu().await;
    let job = platform.submit(&gpu, "sleep 20").await;
    platform
        .wait_for(&job, Duration::from_secs(60), reporting)
        .await;
    // A few committed readings stored, then the agent dies (SIGKILL) and comes back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let telemetry = platform.customer.telemetry(&job, None).await.unwrap();
        if telemetry.samples.len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no telemetry: {telemetry:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(
        platform.job(&job).await.status,
        JobStatus::Running,
        "the job must outlive the agent for this test to mean anything"
    );
    let _agent = platform.agent(&[]);
    let view = platform
        .wait_for(&job, Duration::from_secs(60), ended)
        .await;
    assert_eq!(view.status, JobStatus::Complete, "{view:?}");
    // Both proofs arrive, covering every stored reading, before and after the restart.
    let proofs = journey::proven(&platform.customer, &job, Duration::from_secs(60)).await;
    assert_eq!(proofs.samples_without_commitment, 0, "{proofs:?}");
    // The proof covers readings committed by both runs of the agent (same machine clock).
    let times: Vec<i64> = proofs.commitments.iter().map(|c| c.at_ms).collect();
    assert!(
        times.iter().any(|at| *at < killed_at_ms) && times.iter().any(|at| *at > killed_at_ms),
        "commitments from before and after the restart: {times:?} (killed at {killed_at_ms})"
    );
    assert_verifies_within(&job, &platform.base, &platform.customer_token, 30).await;
}
