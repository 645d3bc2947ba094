//! The agent against the real Docker Engine, with images pulled by digest from a local registry
//! (`scripts/test-images.sh`), and a fake control plane of the test's own that hands out
//! manifests and records the agent's reports. Network: loopback and the project's containers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use gp4u_agent::agent::{AgentConfig, RuntimeKind};
use gp4u_agent::gpu::EmulatedGpu;
use gp4u_proto::AssignmentManifest;
use support::{fake_platform, finals, sha256_hex};
use tokio::sync::watch;

struct TestImage {
    image: String,
    digest: String,
    other_digest: String,
}

fn test_image(test: &str) -> Option<TestImage> {
    match (
        std::env::var("GP4U_TEST_IMAGE"),
        std::env::var("GP4U_TEST_IMAGE_DIGEST"),
        std::env::var("GP4U_TEST_OTHER_DIGEST"),
    ) {
        (Ok(image), Ok(digest), Ok(other_digest)) => Some(TestImage {
            image,
            digest,
            other_digest,
        }),
        _ => {
            if std::env::var("CI").is_ok_and(|value| value == "true") {
                panic!("GP4U_TEST_IMAGE is unset in CI: the Docker suite must run ({test})");
            }
            let _ = writeln!(
                std::io::stderr(),
                "GP4U-DOCKER-SKIPPED: {test}: GP4U_TEST_IMAGE is unset (scripts/test.sh builds the test images)"
            );
            None
        }
    }
}

fn manifest(image: &TestImage, job: &str, command: &str) -> AssignmentManifest {
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
        gpu_power_limit_watts: None,
    }
}

fn agent_config(server: &str, data_dir: &std::path::Path) -> AgentConfig {
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
        listen: None,
        advertise: None,
        net_sample_interval: AgentConfig::DEFAULT_NET_SAMPLE_INTERVAL,
        renewable_pct: 0.0,
    }
}

fn containers_of(job_prefix: &str) -> Vec<String> {
    let output = std::process::Command::new("docker")
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
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|job| job.starts_with(job_prefix))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_hardened_and_end_as_reported() {
    let Some(image) = test_image("jobs_run_hardened_and_end_as_reported") else {
        return;
    };
    let (server, platform) = fake_platform().await;
    let prefix = format!("job_h{}", std::process::id());
    let job = |name: &str| format!("{prefix}{name}");
    let mut bomb = manifest(&image, &job("bomb"), "b() { b | b & }; b; sleep 60");
    bomb.kill_after_seconds = 4;
    let mut hog = manifest(
        &image,
        &job("hog"),
        "x=$(yes | head -c 400000000); echo ${#x}",
    );
    hog.ram_limit_gb = 0.0625;
    // The right digest for another repository: the registry has no such manifest there.
    let mut wrong = manifest(&image, &job("wrong"), "true");
    wrong.docker_image = format!("{}-elsewhere", image.image);
    // Another image of the same repository, by its own digest, is pulled and runs: the digest,
    // not the repository, decides what runs.
    let mut other = manifest(&image, &job("other"), "test -f /etc/gp4u-other");
    other.docker_image_sha256 = image.other_digest.clone();
    let mut missing = manifest(&image, &job("missing"), "true");
    missing.docker_image_sha256 = format!("sha256:{}", "0".repeat(64));
    let mut tag_only = manifest(&image, &job("tagonly"), "true");
    tag_only.docker_image_sha256 = "latest".into();
    // Inputs arrive verified and read-only; a download that differs from its hash never runs.
    let data = b"input bytes\n".to_vec();
    let data_sha = sha256_hex(&data);
    platform
        .lock()
        .unwrap()
        .artifacts
        .insert("art_data".into(), data.clone());
    let mut inputs = manifest(
        &image,
        &job("inputs"),
        &format!(
            "sha256sum /input/art_data | grep -q '^{data_sha} ' && ! touch /input/art_data 2>/dev/null && ! touch /input/new 2>/dev/null && echo inputs ok && echo made > /output/made.txt"
        ),
    );
    inputs.inputs = vec!["art_data".into()];
    inputs.input_sha256 = BTreeMap::from([("art_data".to_string(), data_sha.clone())]);
    let mut bad_input = manifest(&image, &job("badinput"), "echo must not run");
    bad_input.inputs = vec!["art_data".into()];
    bad_input.input_sha256 = BTreeMap::from([("art_data".to_string(), "0".repeat(64))]);
    let manifests = vec![
        // Inside the job: no capabilities, no new privileges.
        manifest(
            &image,
            &job("caps"),
            r#"grep -Eq "^CapEff:[[:space:]]+0000000000000000$" /proc/self/status && grep -Eq "^NoNewPrivs:[[:space:]]+1$" /proc/self/status"#,
        ),
        // Read-only root (EROFS), writable /tmp and /output, read-only /input.
        manifest(
            &image,
            &job("rofs"),
            r#"touch /x 2>/tmp/err; grep -q "Read-only file system" /tmp/err && touch /output/ok && ! touch /input/x 2>/dev/null"#,
        ),
        // The pids cap is 512 (cgroup v1 or v2), and only the declared env is there.
        manifest(
            &image,
            &job("pids"),
            r#"test "$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)" = 512 && test "$GREETING" = hello"#,
        ),
        manifest(&image, &job("exit3"), "exit 3"),
        bomb,
        hog,
        other,
        wrong,
        missing,
        tag_only,
        inputs,
        bad_input,
    ];
    platform.lock().unwrap().queue = manifests;
    let data_dir = tempfile::tempdir().unwrap();
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(
        agent_config(&server, data_dir.path()),
        stopping,
    ));
    let names = [
        "caps", "rofs", "pids", "exit3", "bomb", "hog", "other", "wrong", "missing", "tagonly",
        "inputs", "badinput",
    ]
    .map(job);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let done = finals(&platform, &names, Duration::from_secs(180)).await;
    let outcome = |name: &str| {
        let report = done
            .get(&job(name))
            .unwrap_or_else(|| panic!("no final report for {name}: {done:?}"));
        (
            report.status.clone(),
            report.exit_code,
            report.reason.clone(),
        )
    };
    assert_eq!(
        outcome("caps"),
        ("exited".into(), Some(0), None),
        "CapEff 0 and NoNewPrivs 1 inside"
    );
    assert_eq!(
        outcome("rofs"),
        ("exited".into(), Some(0), None),
        "EROFS on /, /output writable, /input read-only"
    );
    assert_eq!(
        outcome("pids"),
        ("exited".into(), Some(0), None),
        "pids.max = 512, env as declared"
    );
    assert_eq!(outcome("exit3"), ("exited".into(), Some(3), None));
    assert_eq!(
        outcome("bomb"),
        ("failed".into(), None, Some("DURATION_EXCEEDED".into())),
        "the bomb is contained and killed on time"
    );
    assert_eq!(
        outcome("hog"),
        ("exited".into(), Some(137), None),
        "OOM-killed at the cap"
    );
    assert_eq!(
        outcome("other"),
        ("exited".into(), Some(0), None),
        "the image of the digest asked for"
    );
    for name in ["wrong", "missing", "tagonly"] {
        assert_eq!(
            outcome(name),
            ("failed".into(), None, Some("IMAGE_PULL_FAILED".into())),
            "{name}"
        );
    }
    assert_eq!(
        outcome("inputs"),
        ("exited".into(), Some(0), None),
        "inputs verified, read-only"
    );
    assert_eq!(
        outcome("badinput"),
        ("failed".into(), None, Some("INPUT_FAILED".into())),
        "a hash mismatch never runs"
    );
    {
        let platform = platform.lock().unwrap();
        // Outputs arrive before the final report, with their hash; logs too.
        let (sha, archive) = &platform.outputs[&job("inputs")];
        assert_eq!(*sha, sha256_hex(archive));
        let mut files = Vec::new();
        let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        for entry in reader.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.push((entry.path().unwrap().display().to_string(), text));
        }
        assert_eq!(files, vec![("made.txt".to_string(), "made\n".to_string())]);
        assert_eq!(
            String::from_utf8_lossy(&platform.logs[&job("inputs")]),
            "inputs ok\n"
        );
        assert!(!platform.logs.contains_key(&job("badinput")));
        assert!(!platform.outputs.contains_key(&job("badinput")));
        assert!(platform.outputs.contains_key(&job("rofs")), "/output/ok");
    }
    // Every job reported running first (except the ones that never started).
    let reports = platform.lock().unwrap().reports.clone();
    assert!(
        reports
            .iter()
            .any(|(id, report)| *id == job("caps") && report.status == "running")
    );
    // The host is fine: the agent is still taking work, and nothing is left behind.
    platform.lock().unwrap().queue = vec![manifest(&image, &job("after"), "echo still here")];
    let done = finals(&platform, &[job("after").as_str()], Duration::from_secs(60)).await;
    assert_eq!(done[&job("after")].exit_code, Some(0));
    for _ in 0..50 {
        if containers_of(&prefix).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        containers_of(&prefix),
        Vec::<String>::new(),
        "containers left behind"
    );
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
    assert_eq!(platform.lock().unwrap().registrations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_picks_its_jobs_up_and_obeys_kill_orders() {
    let Some(image) = test_image("a_restarted_agent_picks_its_jobs_up") else {
        return;
    };
    let (server, platform) = fake_platform().await;
    let prefix = format!("job_r{}", std::process::id());
    let survivor = format!("{prefix}survivor");
    let doomed = format!("{prefix}doomed");
    let orphan = format!("{prefix}orphan");
    platform.lock().unwrap().queue = vec![
        manifest(&image, &orphan, "sleep 300"),
        manifest(
            &image,
            &survivor,
            "echo before; sleep 4; echo after >&2; exit 7",
        ),
        manifest(&image, &doomed, "sleep 300"),
    ];
    let data_dir = tempfile::tempdir().unwrap();
    let (_stop, stopping) = watch::channel(false);
    let first = tokio::spawn(gp4u_agent::agent::run(
        agent_config(&server, data_dir.path()),
        stopping.clone(),
    ));
    // Wait until both run, then kill the agent mid-job (abort: no chance to clean up).
    let started = Instant::now();
    while platform
        .lock()
        .unwrap()
        .reports
        .iter()
        .filter(|(_, r)| r.status == "running")
        .map(|(j, _)| j.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "jobs did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first agent shipped what the survivor printed so far (and saved its cursor).
    let started = Instant::now();
    while !platform
        .lock()
        .unwrap()
        .logs
        .get(&survivor)
        .is_some_and(|log| log.starts_with(b"before"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no logs shipped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.abort();
    let _ = first.await;
    assert_eq!(
        containers_of(&prefix).len(),
        3,
        "the containers outlive the agent"
    );
    // While the agent is down, the platform cancels one job and forgets another entirely.
    platform.lock().unwrap().kill.push(doomed.clone());
    platform.lock().unwrap().forgotten.push(orphan.clone());
    let second = tokio::spawn(gp4u_agent::agent::run(
        agent_config(&server, data_dir.path()),
        stopping,
    ));
    let done = finals(&platform, &[survivor.as_str()], Duration::from_secs(60)).await;
    assert_eq!(
        done[&survivor].exit_code,
        Some(7),
        "the restarted agent reported the exit"
    );
    assert_eq!(
        String::from_utf8_lossy(&platform.lock().unwrap().logs[&survivor]),
        "before\nafter\n",
        "the restarted agent follows the log from where the first one stopped"
    );
    let started = Instant::now();
    while !containers_of(&prefix).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "left behind: {:?}",
            containers_of(&prefix)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reports = platform.lock().unwrap().reports.clone();
    assert!(
        !reports
            .iter()
            .any(|(job, report)| *job == doomed && report.status != "running"),
        "a killed job gets no final report"
    );
    assert!(
        !platform
            .lock()
            .unwrap()
            .packets(&doomed)
            .iter()
            .any(|(_, packet)| packet.is_final == Some(true)),
        "nor a final packet"
    );
    assert_eq!(
        platform.lock().unwrap().registrations,
        1,
        "the restarted agent is the same node"
    );
    second.abort();
}
