//! Stage 2–3 latencies and the agent's footprint, with the real `gp4u` binary:
//!
//! - submit → assignment received by a waiting long-poll (goal p99 ≤ 250 ms);
//! - submit → container running, image already present (goal p50 ≤ 2 s), with the real agent
//!   and Docker (needs GP4U_TEST_IMAGE / GP4U_TEST_IMAGE_DIGEST: scripts/test-images.sh);
//! - the agent's idle resident memory (goal ≤ 25 MB);
//! - kill latency: an anomalous packet accepted (the job seen FAILED) → the container gone
//!   (goal p99 ≤ 1 s), with a port-scanning workload inside the container's own namespace;
//! - the platform's overhead on a real PyTorch training job (with GP4U_TEST_PYTORCH_IMAGE /
//!   GP4U_TEST_PYTORCH_DIGEST: `GP4U_TEST_PYTORCH=1 scripts/test-images.sh start`): the job
//!   through GP4U (submit → COMPLETE) against the same image and hardening run by hand with
//!   `docker run`, alternating, in the same run.
//!
//! `cargo bench -p gp4u-cli --bench pipeline [-- --polls 200 --starts 20 --kills 20 --pytorch 5]`.
//! Loopback and the bench's own containers only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gp4u_client::Client;
use gp4u_proto::{AgentStatusReport, JobStatus, JobView};
use gp4u_testkit::journey::{self, new_user};
use serde_json::json;

// The black-box helpers of the tests (start, mint), shared rather than copied.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{BIN, mint};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        common::unmount_under(&self.0);
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The job's view once it ended (COMPLETE or FAILED), polled every 50 ms.
async fn ended(admin: &Client, job: &str) -> JobView {
    loop {
        let view = admin.job(job).await.unwrap();
        if view.status.is_terminal() {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh customer: 30 submissions per customer per minute, so long runs rotate.
async fn new_customer(admin: &Client, dir: &std::path::Path) -> Client {
    let user = admin
        .create_user(&new_user("c", "customer", Some(100000.0)))
        .await
        .unwrap();
    speaker(admin.base(), &mint(dir, &user.id, 1))
}

/// A client of the bench's server as `token`, one attempt per call (a refusal is a finding).
fn speaker(base: &str, token: &str) -> Client {
    Client::new(base, Some(token)).unwrap().with_attempts(1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p90, p99) = (
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
    );
    println!(
        "RESULT {name} n={} p50_ms={p50:.1} p90_ms={p90:.1} p99_ms={p99:.1} max_ms={:.1}",
        samples.len(),
        samples.last().copied().unwrap_or(f64::NAN)
    );
    (p50, p99)
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn rfc3339_ms(text: &str) -> f64 {
    // "2026-11-28T21:40:08.123Z" → ms since the start of the day is enough for differences.
    let time = text
        .split('T')
        .nth(1)
        .unwrap_or("0:0:0Z")
        .trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    let minutes: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    let seconds: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    ((hours * 60.0 + minutes) * 60.0 + seconds) * 1000.0
}

#[tokio::main]
async fn main() {
    let polls = arg("--polls", 200);
    let starts = arg("--starts", 20);
    let kills = arg("--kills", 20);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap-admin",
            "usr_admin",
            "--telemetry-interval-s",
            "1",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("GP4U_TOKEN_SECRET")
        .env("GP4U_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Killed(server);
    let base = line
        .trim()
        .trim_start_matches("gp4u server listening on ")
        .to_string();
    let admin = speaker(&base, &mint(dir.path(), "usr_admin", 3));
    let provider = admin
        .create_user(&new_user("p", "provider", None))
        .await
        .unwrap();
    let provider = speaker(&base, &mint(dir.path(), &provider.id, 2));
    let customer = new_customer(&admin, dir.path()).await;
    println!(
        "machine: {} cores; gp4u {} build; SQLite in a temp dir",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if cfg!(debug_assertions) {
            "debug (not a figure to report)"
        } else {
            "release"
        }
    );

    // 1. submit → assignment received by a waiting long-poll.
    let node = provider
        .register(&journey::register_one_gpu(
            "us-east-1",
            "RTX 4090",
            24.0,
            1.0,
        ))
        .await
        .unwrap();
    let node_id = node.node_id.clone();
    let gpu_id = node.gpus[0].id.clone();
    let body = |gpu: &str, image: &str, digest: &str, command: &str| {
        json!({"name": "bench", "gpuId": gpu, "workload_type": "BATCH",
        "expectedDurationHours": 0.1, "docker_image": image, "docker_image_sha256": digest, "command": ["sh", "-c", command]})
    };
    let mut dispatch = Vec::with_capacity(polls);
    let mut customers = vec![customer.clone()];
    for n in 0..polls {
        // 30 submissions per customer per minute: spread the load over fresh customers.
        if n > 0 && n % 25 == 0 {
            customers.push(new_customer(&admin, dir.path()).await);
        }
        let poll = {
            let provider = provider.clone();
            let node_id = node_id.clone();
            tokio::spawn(async move {
                let manifest = provider.next_assignment(&node_id, 25).await;
                (manifest, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let submitted = Instant::now();
        customers
            .last()
            .unwrap()
            .submit(
                &body(&gpu_id, "registry.example/bench", &"ab".repeat(32), "true"),
                None,
            )
            .await
            .unwrap();
        let (manifest, received) = poll.await.unwrap();
        let manifest = manifest.unwrap().expect("the poll did not get the job");
        dispatch.push(received.duration_since(submitted).as_secs_f64() * 1000.0);
        for (status, exit_code) in [("running", None), ("exited", Some(0))] {
            provider
                .report(
                    &manifest.job_id,
                    &AgentStatusReport {
                        node_id: node_id.clone(),
                        status: status.into(),
                        exit_code,
                        reason: None,
                        message: None,
                    },
                )
                .await
                .unwrap();
        }
    }
    let (_, dispatch_p99) = summary("submit_to_assignment_received", dispatch);
    println!(
        "goal p99 <= 250 ms: {}",
        if dispatch_p99 <= 250.0 {
            "MET"
        } else {
            "MISSED"
        }
    );

    // 2 and 3: the real agent with Docker.
    let (Ok(image), Ok(digest)) = (
        std::env::var("GP4U_TEST_IMAGE"),
        std::env::var("GP4U_TEST_IMAGE_DIGEST"),
    ) else {
        println!(
            "GP4U_TEST_IMAGE unset: skipping the agent measurements (scripts/test-images.sh start)"
        );
        return;
    };
    let agent_provider = {
        let user = admin
            .create_user(&new_user("a", "provider", None))
            .await
            .unwrap();
        mint(dir.path(), &user.id, 2)
    };
    let token_file = dir.path().join("agent.token");
    std::fs::write(&token_file, agent_provider).unwrap();
    let agent_dir = dir.path().join("agent");
    let agent = Command::new(BIN)
        .args([
            "agent",
            "--server",
            &base,
            "--region",
            "eu-west-1",
            "--price",
            "0.5",
            "--poll-wait",
            "25",
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--data-dir")
        .arg(&agent_dir)
        .args(["--gpu", "emulated:Bench GPU:16"])
        .env("GP4U_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let agent_pid = agent.id();
    // Dropped after the agent: the scratch of a job still running when the bench ends.
    let _unmount = Unmount(agent_dir.clone());
    let _agent = Killed(agent);
    let agent_gpu = loop {
        let listing = customer.gpus().await.unwrap();
        if let Some(gpu) = listing.gpus.iter().find(|gpu| gpu.region == "eu-west-1") {
            break gpu.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = rss_kib(agent_pid);
    println!("RESULT agent_idle_rss_kib={rss} agent_peak_rss_kib={hwm}");
    println!(
        "goal idle RSS <= 25 MB: {}",
        if rss <= 25 * 1024 { "MET" } else { "MISSED" }
    );

    let mut starts_ms = Vec::new();
    for n in 0..=starts {
        if n % 25 == 0 {
            customers.push(new_customer(&admin, dir.path()).await);
        }
        let accepted = customers
            .last()
            .unwrap()
            .submit(&body(&agent_gpu, &image, &digest, "sleep 0.2"), None)
            .await
            .unwrap();
        let finished = ended(&admin, &accepted.id).await;
        assert_eq!(finished.status, JobStatus::Complete, "{finished:?}");
        // Server-side timestamps: accepted at created_at, RUNNING at the agent's start report.
        let started =
            rfc3339_ms(finished.started_at.as_deref().unwrap()) - rfc3339_ms(&finished.created_at);
        if n == 0 {
            println!(
                "first job (pulls the image unless Docker already has it): submit → running {started:.0} ms"
            );
        } else {
            starts_ms.push(started);
        }
    }
    let (start_p50, _) = summary("submit_to_container_running_image_present", starts_ms);
    println!(
        "goal p50 <= 2000 ms: {}",
        if start_p50 <= 2000.0 { "MET" } else { "MISSED" }
    );
    let (rss, hwm) = rss_kib(agent_pid);
    println!("RESULT agent_rss_after_jobs_kib={rss} agent_peak_rss_kib={hwm}");

    // 4. Kill latency: the job is seen FAILED (the platform committed the kill and answers the
    // packet) → no container of the job is running.
    let scanner = "for i in $(seq 1 60); do sleep 600 | nc -l -p $((9000 + i)) > /dev/null & done; \
                   sleep 1; for i in $(seq 1 60); do sleep 600 | nc 127.0.0.$i $((9000 + i)) & done; sleep 600";
    let running = |job: &str| {
        let output = Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("label=gp4u.job={job}")])
            .output()
            .unwrap();
        !String::from_utf8_lossy(&output.stdout).trim().is_empty()
    };
    let mut kill_ms = Vec::with_capacity(kills);
    for n in 0..kills {
        if n % 25 == 0 {
            customers.push(new_customer(&admin, dir.path()).await);
        }
        let accepted = customers
            .last()
            .unwrap()
            .submit(&body(&agent_gpu, &image, &digest, scanner), None)
            .await
            .unwrap();
        let job = accepted.id;
        let deadline = Instant::now() + Duration::from_secs(60);
        let failed_at = loop {
            let view = admin.job(&job).await.unwrap();
            if view.status == JobStatus::Failed {
                assert_eq!(
                    view.failure_reason,
                    Some(gp4u_proto::FailureReason::KilledAnomaly),
                    "{view:?}"
                );
                break Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the scanner was not killed: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        while running(&job) {
            assert!(
                failed_at.elapsed() < Duration::from_secs(30),
                "the container of {job} is still running"
            );
        }
        kill_ms.push(failed_at.elapsed().as_secs_f64() * 1000.0);
    }
    let (_, kill_p99) = summary("anomaly_accepted_to_container_gone", kill_ms);
    println!(
        "goal p99 <= 1000 ms: {}",
        if kill_p99 <= 1000.0 { "MET" } else { "MISSED" }
    );

    // 5. A real PyTorch job through GP4U against the same container run by hand.
    let (Ok(torch_image), Ok(torch_digest)) = (
        std::env::var("GP4U_TEST_PYTORCH_IMAGE"),
        std::env::var("GP4U_TEST_PYTORCH_DIGEST"),
    ) else {
        println!("GP4U_TEST_PYTORCH_IMAGE unset: skipping the PyTorch comparison");
        return;
    };
    let runs = arg("--pytorch", 5);
    let reference = format!("{torch_image}@{torch_digest}");
    let pulled = Command::new("docker")
        .args(["pull", "-q", &reference])
        .output()
        .unwrap();
    assert!(pulled.status.success(), "docker pull {reference}");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string();
    let mut through_gp4u = Vec::new();
    let mut in_container = Vec::new();
    let mut by_hand = Vec::new();
    for n in 0..=runs {
        // By hand: the same image, command, limits and hardening, one `docker run`.
        let scratch = tempfile::tempdir().unwrap();
        let output = tempfile::tempdir().unwrap();
        for sub in ["home", "tmp", ".cache"] {
            std::fs::create_dir_all(scratch.path().join(sub)).unwrap();
        }
        let _ = Command::new("chmod")
            .args(["-R", "1777"])
            .arg(scratch.path())
            .arg(output.path())
            .status();
        let began = Instant::now();
        let status = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--read-only",
                "--tmpfs",
                "/tmp:rw,noexec,nosuid,size=64m",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges:true",
                "--memory",
                "4g",
                "--memory-swap",
                "4g",
                "--shm-size",
                "2g",
                "--pids-limit",
                "512",
                "--cpus",
                &cpus,
                "-e",
                "HOME=/scratch/home",
                "-e",
                "TMPDIR=/scratch/tmp",
                "-e",
                "XDG_CACHE_HOME=/scratch/.cache",
            ])
            .arg("-v")
            .arg(format!("{}:/scratch", scratch.path().display()))
            .arg("-v")
            .arg(format!("{}:/output", output.path().display()))
            .arg(&reference)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let hand_ms = began.elapsed().as_secs_f64() * 1000.0;
        assert!(status.success(), "the PyTorch job failed when run by hand");
        // Through GP4U: submit → COMPLETE, seen by the customer polling every 50 ms.
        if n % 25 == 0 {
            customers.push(new_customer(&admin, dir.path()).await);
        }
        let submitted = Instant::now();
        let accepted = customers
            .last()
            .unwrap()
            .submit(
                &json!({"name": "pytorch", "gpuId": agent_gpu, "workload_type": "TRAINING",
                "expectedDurationHours": 0.1, "docker_image": torch_image,
                "docker_image_sha256": torch_digest, "ram_limit_gb": 4}),
                None,
            )
            .await
            .unwrap();
        let finished = ended(&admin, &accepted.id).await;
        let gp4u_ms = submitted.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(finished.status, JobStatus::Complete, "{finished:?}");
        let ran = rfc3339_ms(finished.ended_at.as_deref().unwrap())
            - rfc3339_ms(finished.started_at.as_deref().unwrap());
        if n == 0 {
            println!(
                "first PyTorch run (warms caches): by hand {hand_ms:.0} ms, through GP4U {gp4u_ms:.0} ms"
            );
            continue;
        }
        by_hand.push(hand_ms);
        through_gp4u.push(gp4u_ms);
        in_container.push(ran);
    }
    let (hand_p50, _) = summary("pytorch_docker_run_by_hand", by_hand);
    let (gp4u_p50, _) = summary("pytorch_submit_to_complete_through_gp4u", through_gp4u);
    summary("pytorch_started_to_ended_through_gp4u", in_container);
    println!(
        "RESULT pytorch_overhead_ratio_p50={:.2} (through GP4U / by hand)",
        gp4u_p50 / hand_p50
    );
}
