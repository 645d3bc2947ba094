//! Network telemetry of real containers (Docker Engine, the busybox test image by digest from
//! the local registry), and the watchdog of containers run by the agent against the fake
//! control plane.
//!
//! NETWORK RULE: every byte these tests make a container send goes to its own loopback or to
//! another container the test itself created. Nothing else is ever contacted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gp4u_agent::agent::{AgentConfig, RuntimeKind};
use gp4u_agent::gpu::EmulatedGpu;
use gp4u_agent::netns::NetSampler;
use gp4u_proto::AssignmentManifest;
use support::{container_running, eventually, fake_platform, finals};
use tokio::sync::watch;

const TEST_LABEL: &str = "gp4u.test=telemetry";

/// 60 listeners (busybox `nc -l`, held open by `sleep` on stdin) and a client connected to
/// each on its own loopback address 127.0.0.N: 60 distinct destination IPs in the container's
/// namespace (the clients' 127.0.0.1..60; the listeners' peers are 127.0.0.1), and 120
/// destination ports (the listeners' 20001..20060 and the clients' ephemeral ones).
const LOOPBACK_SCAN: &str = "for i in $(seq 1 60); do sleep 600 | nc -l -p $((20000 + i)) > /dev/null & done; \
     sleep 1; \
     for i in $(seq 1 60); do sleep 600 | nc 127.0.0.$i $((20000 + i)) > /dev/null & done; \
     sleep 600";

fn test_image(test: &str) -> Option<String> {
    support::test_image(test).map(|image| image.pinned())
}

/// Containers this test started, removed when it ends (also on failure).
struct Containers(Vec<String>);

impl Containers {
    fn run(&mut self, image: &str, command: &str) -> String {
        let output = Command::new("docker")
            .args(["run", "-d", "--label", TEST_LABEL, "--network", "bridge"])
            .arg(image)
            .args(["sh", "-c", command])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        self.0.push(id.clone());
        id
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&self.0)
                .output();
        }
    }
}

fn inspect(container: &str, format: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn pid_of(container: &str) -> u32 {
    inspect(container, "{{.State.Pid}}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_sees_a_loopback_scan_and_outbound_bytes() {
    let Some(image) = test_image("the_sampler_sees_a_loopback_scan_and_outbound_bytes") else {
        return;
    };
    let mut containers = Containers(Vec::new());

    // More than 50 distinct destinations, all inside the container's own loopback.
    let scanner = containers.run(&image, LOOPBACK_SCAN);
    let mut sampler = NetSampler::start(pid_of(&scanner), Duration::from_millis(200)).unwrap();
    let mut seen = 0;
    let mut ports = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let period = sampler.take_period().unwrap();
        seen = period.unique_dest_ips;
        ports = period.dest_ports;
        if seen >= 60 {
            break;
        }
    }
    assert!(seen >= 51, "the sampler saw {seen} unique destination IPs");
    // Capped at 64, ascending: the listeners' ports come before the ephemeral ones.
    assert_eq!(ports.len(), 64, "{ports:?}");
    assert!(
        ports.contains(&20_001) && ports.contains(&20_060),
        "{ports:?}"
    );

    // Outbound bytes on eth0: to a listener in another container of this test, by its
    // bridge address. Nothing else is contacted.
    // (busybox nc closes the connection when its stdin ends: `sleep` holds it open.)
    let sink = containers.run(&image, "sleep 600 | nc -l -p 9000 > /dev/null; sleep 600");
    let sink_ip = inspect(&sink, "{{.NetworkSettings.IPAddress}}");
    assert!(
        sink_ip.starts_with("172.")
            || sink_ip.starts_with("10.")
            || sink_ip.starts_with("192.168."),
        "{sink_ip}"
    );
    let sender = containers.run(
        &image,
        &format!(
            "sleep 2; dd if=/dev/zero bs=1024 count=2048 2>/dev/null | nc {sink_ip} 9000; sleep 600"
        ),
    );
    let mut sampler = NetSampler::start(pid_of(&sender), Duration::from_millis(200)).unwrap();
    let mut outbound = 0.0;
    let mut destinations = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let period = sampler.take_period().unwrap();
        destinations = destinations.max(period.unique_dest_ips);
        if period.outbound_bytes_per_sec > outbound {
            outbound = period.outbound_bytes_per_sec;
        }
        if outbound > 100_000.0 {
            break;
        }
    }
    assert!(outbound > 100_000.0, "outbound peaked at {outbound} B/s");
    assert!(destinations >= 1);
    // The scanner sent nothing on eth0 (its traffic was loopback): a quiet period reads ~0.
    let mut quiet = NetSampler::start(pid_of(&scanner), Duration::from_millis(200)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(quiet.take_period().unwrap().outbound_bytes_per_sec < 10_000.0);

    // Once the container is gone the sampler says so instead of reading someone else.
    let _ = Command::new("docker").args(["rm", "-f", &scanner]).output();
    assert!(eventually(Duration::from_secs(10), || quiet.take_period().is_err()).await);
}

fn manifest(image: &str, job: &str, command: &str, interval_s: u64) -> AssignmentManifest {
    let (repository, digest) = image.split_once('@').unwrap();
    AssignmentManifest {
        job_id: job.to_string(),
        docker_image: repository.to_string(),
        docker_image_sha256: digest.to_string(),
        gpu_id: "gpu_test0".into(),
        gpu_uuid: Some("GPU-emulated".into()),
        ram_limit_gb: 0.25,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_reports_containers_and_kills_them_on_order() {
    let Some(image) = test_image("the_watchdog_reports_containers_and_kills_them_on_order") else {
        return;
    };
    let (server, platform) = fake_platform().await;
    let tag = std::process::id();
    let job = |name: &str| format!("job_t{tag}{name}");
    let (ticking, busy, scan, cancelled, fenced) = (
        job("tick"),
        job("busy"),
        job("scan"),
        job("cancel"),
        job("fence"),
    );
    // The kill-order jobs post every 6 s (the first packet soon after the start): the kill
    // must land well within one interval.
    let interval = 6;
    {
        let mut platform = platform.lock().unwrap();
        platform.kill_over_ips = Some(50);
        platform.telemetry_kill.push(cancelled.clone());
        platform.fenced.push(fenced.clone());
        platform.queue = vec![
            manifest(&image, &ticking, "sleep 4.5; exit 5", 1),
            manifest(&image, &busy, "yes > /dev/null & p=$!; sleep 4; kill $p", 1),
            manifest(&image, &scan, LOOPBACK_SCAN, interval),
            manifest(&image, &cancelled, "sleep 600", interval),
            manifest(&image, &fenced, "sleep 600", interval),
        ];
    }
    let data_dir = tempfile::tempdir().unwrap();
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
    let (stop, stopping) = watch::channel(false);
    let config = AgentConfig {
        server: server.clone(),
        token: "test-token".into(),
        data_dir: data_dir.path().to_path_buf(),
        runtime: RuntimeKind::Docker,
        allow_unisolated: false,
        emulated: vec![EmulatedGpu::parse("emulated:RTX 4090:24").unwrap()],
        region: "us-east-1".into(),
        price_per_hour: 1.0,
        poll_wait_s: 1,
        refuse_visibility: false,
        net_sample_interval: Duration::from_millis(500),
        renewable_pct: 0.0,
        job_runtime: Default::default(),
        metrics_listen: None,
    };
    let agent = tokio::spawn(gp4u_agent::agent::run(config, stopping));

    // Orders: each container stops well within one interval of the order (generous bound:
    // two thirds of it), and nothing more is sent for the job. The orders come at different
    // times (the cancelled and fenced jobs' first packets come soon after they start, the
    // scan's once it scans): each job is checked as its order comes.
    let mut waiting = vec![scan.clone(), cancelled.clone(), fenced.clone()];
    while !waiting.is_empty() {
        assert!(
            eventually(Duration::from_secs(90), || {
                let platform = platform.lock().unwrap();
                waiting
                    .iter()
                    .any(|job| platform.kill_answered.contains_key(job))
            })
            .await,
            "{waiting:?}: no order given"
        );
        let (job, ordered) = {
            let platform = platform.lock().unwrap();
            waiting
                .iter()
                .filter_map(|job| platform.kill_answered.get(job).map(|at| (job.clone(), *at)))
                .min_by_key(|(_, at)| *at)
                .unwrap()
        };
        waiting.retain(|other| *other != job);
        assert!(
            eventually(Duration::from_secs(30), || !container_running(&job)).await,
            "{job}: still running"
        );
        let took = ordered.elapsed();
        assert!(
            took < Duration::from_secs(interval * 2 / 3),
            "{job}: stopped {took:?} after the order (interval {interval} s)"
        );
    }
    // The scan was seen from inside the container's namespace: > 50 loopback destinations.
    let scan_packets = platform.lock().unwrap().packets(&scan);
    let (_, flagged) = scan_packets.last().unwrap();
    assert!(
        flagged.unique_dest_ips.unwrap() > 50,
        "{:?}",
        flagged.unique_dest_ips
    );
    assert_eq!(flagged.dest_ports.as_ref().unwrap().len(), 64);

    let done = finals(
        &platform,
        &[ticking.as_str(), busy.as_str()],
        Duration::from_secs(60),
    )
    .await;
    let node_id = platform.lock().unwrap().nodes[0].clone();
    assert_eq!(done[&ticking].exit_code, Some(5), "{done:?}");
    assert_eq!(done[&busy].exit_code, Some(0), "{done:?}");
    let packets = platform.lock().unwrap().packets(&ticking);
    let (last_at, last) = packets.last().unwrap().clone();
    assert_eq!((last.is_final, last.exit_code), (Some(true), Some(5)));
    let running: Vec<_> = packets
        .iter()
        .filter(|(at, packet)| packet.is_final.is_none() && *at < last_at)
        .collect();
    assert!(running.len() >= 3, "{} packets", running.len());
    for pair in running.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
            "{gap:?}"
        );
    }
    for (_, packet) in &running {
        assert_eq!(
            (packet.job_id.as_str(), packet.node_id.as_str()),
            (ticking.as_str(), node_id.as_str())
        );
        assert_eq!(packet.vram_allocated_gb, 24.0);
        assert!(packet.inferred_pattern.is_some());
    }
    // While the container ran, its namespace was read (no connections: zero destinations).
    assert_eq!(running[0].1.unique_dest_ips, Some(0));
    assert_eq!(running[0].1.dest_ports, Some(vec![]));
    // The emulated GPU follows the container's cgroup CPU use.
    let peak = platform
        .lock()
        .unwrap()
        .packets(&busy)
        .iter()
        .map(|(_, packet)| packet.gpu_utilization_pct)
        .fold(0.0, f64::max);
    assert!(peak >= 50.0, "emulated utilization peaked at {peak}");

    {
        let platform = platform.lock().unwrap();
        for job in [&scan, &cancelled, &fenced] {
            let ordered = platform.kill_answered[job];
            assert!(
                !platform.packets(job).iter().any(|(at, _)| *at > ordered),
                "{job}: telemetry after the order"
            );
            assert!(
                !platform
                    .reports
                    .iter()
                    .any(|(id, report)| id == job && report.status != "running"),
                "{job}: a final report after the order"
            );
        }
    }
    let prefix = format!("job_t{tag}");
    assert!(
        eventually(Duration::from_secs(30), || {
            let output = Command::new("docker")
                .args([
                    "ps",
                    "-a",
                    "--filter",
                    "label=gp4u.job",
                    "--format",
                    "{{.Label \"gp4u.job\"}}",
                ])
                .output()
                .unwrap();
            !String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|job| job.starts_with(&prefix))
        })
        .await,
        "containers left behind"
    );
    support::cleaned_up(data_dir.path()).await;
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}
