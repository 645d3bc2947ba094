//! Black box, SPEC §11's metrics: Debian's real `prometheus` scrapes a real `gp4u server`
//! (behind `GP4U_METRICS_TOKEN`) and a real `gp4u agent` (`--metrics-listen`, Docker with the
//! test registry's image); `promtool check metrics` lints both expositions; after jobs run,
//! Prometheus's own query API shows the counters moved.
//!
//! Needs `prometheus` and `promtool` on PATH (Debian's `prometheus` package) and the Docker
//! test image: without them it says loudly that it is skipped, and fails in CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, docker_image, people, start_agent_with, start_server_with};
use gp4u_client::Client;
use gp4u_proto::{JobStatus, paths};
use gp4u_store::Engine;
use gp4u_store::testing::TestDatabase;
use gp4u_testkit::journey;
use serde_json::{Value, json};

const METRICS_TOKEN: &str = "prometheus-test-metrics-token-0123456789";
const JOBS: usize = 3;

/// Whether `tool` runs; if not, says loudly that `test` is skipped (a failure in CI).
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        common::skip_unless_ci(
            "GP4U-PROMETHEUS-SKIPPED",
            test,
            &format!("`{tool}` is not on PATH (apt-get install prometheus; .ci/run installs it)"),
        );
    }
    found
}

/// `promtool check metrics` on `exposition`: its complaints, if any.
fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// An instant query through Prometheus's HTTP API: the first series' value, if any.
async fn query(client: &reqwest::Client, prometheus: &str, promql: &str) -> Option<f64> {
    let answer: Value = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    assert_eq!(answer["status"], "success", "{promql}: {answer}");
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|value| value.parse().ok())
}

/// Polls `promql` until `holds` is true of its value, for at most `within`.
async fn until(
    client: &reqwest::Client,
    prometheus: &str,
    promql: &str,
    within: Duration,
    holds: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = query(client, prometheus, promql).await;
        if let Some(value) = value
            && holds(value)
        {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {promql}; Prometheus says {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_server_and_the_agent_and_sees_submissions() {
    const TEST: &str = "prometheus_scrapes_the_server_and_the_agent_and_sees_submissions";
    if !have("prometheus", TEST) || !have("promtool", TEST) {
        return;
    }
    let Some((image, digest)) = docker_image(TEST) else {
        return;
    };
    let db = TestDatabase::create(Engine::Sqlite, "prometheus_scrape")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let server = start_server_with(
        data_dir.path(),
        &db.url,
        &[
            "--metrics-token",
            METRICS_TOKEN,
            "--telemetry-interval-s",
            "1",
        ],
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let operators = people(&base, data_dir.path(), 100_000.0).await;
    let agent_metrics = format!("127.0.0.1:{}", common::free_port());
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent_with(
        &base,
        &operators.token_file,
        agent_dir.path(),
        &["--metrics-listen", &agent_metrics],
    );
    let customer = Client::new(&base, Some(&operators.customer)).unwrap();
    journey::first_gpu(&customer, Duration::from_secs(60)).await;

    // Both expositions, as curl or promtool would fetch them (the text format 0.0.4), pass
    // promtool's lint with nothing to say.
    let refused = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401, "/metrics answered without the token");
    let server_text = client
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let agent_text = client
        .get(format!("http://{agent_metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (who, text, must_have) in [
        ("server", &server_text, "gp4u_job_submissions_total"),
        ("agent", &agent_text, "gp4u_agent_polls_total"),
    ] {
        assert!(text.contains(must_have), "{who}: {text}");
        let (passed, said) = promtool_check(text);
        assert!(
            passed && said.trim().is_empty(),
            "promtool check metrics on the {who}'s /metrics: {said}\n{text}"
        );
    }

    // Prometheus itself, scraping both every second.
    let prometheus_dir = tempfile::tempdir().unwrap();
    let token_file = prometheus_dir.path().join("metrics.token");
    std::fs::write(&token_file, METRICS_TOKEN).unwrap();
    let server_target = base.trim_start_matches("http://");
    let config = prometheus_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: gp4u-server\n\
             \x20   authorization:\n\
             \x20     type: Bearer\n\
             \x20     credentials_file: {token}\n\
             \x20   static_configs:\n\
             \x20     - targets: ['{server_target}']\n\
             \x20 - job_name: gp4u-agent\n\
             \x20   static_configs:\n\
             \x20     - targets: ['{agent_metrics}']\n",
            token = token_file.display()
        ),
    )
    .unwrap();
    let (checked, said) = {
        let output = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    assert!(checked, "promtool check config: {said}");
    let prometheus_address = format!("127.0.0.1:{}", common::free_port());
    let _prometheus = Running {
        child: Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prometheus_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus_address}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting prometheus"),
        base: String::new(),
        unmount: None,
    };
    let prometheus = format!("http://{prometheus_address}");

    // Both targets up, scraped without an error.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets: Option<Value> = match client
            .get(format!("{prometheus}/api/v1/targets"))
            .send()
            .await
        {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let active = targets
            .as_ref()
            .and_then(|targets| targets["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default();
        let up = active
            .iter()
            .filter(|target| target["health"] == "up" && target["lastError"] == "")
            .count();
        if active.len() == 2 && up == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus's targets are not both up: {targets:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let submitted_before = until(
        &client,
        &prometheus,
        "gp4u_job_submissions_total{job=\"gp4u-server\"}",
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    assert_eq!(submitted_before, 0.0);

    // Jobs run to the end on the real agent.
    let mut jobs = Vec::new();
    for n in 0..JOBS {
        // Any RTX 4090 under 10/h: the one GPU takes them in turn.
        let accepted = customer
            .submit(
                &json!({"name": format!("metrics {n}"), "workload_type": "BATCH",
                "gpu": {"model": "RTX 4090", "max_price_per_hour": 10.0},
                "expectedDurationHours": 0.1, "docker_image": image, "docker_image_sha256": digest,
                "command": ["sh", "-c", "echo counted"], "max_retries": 0}),
                None,
            )
            .await
            .unwrap();
        jobs.push(accepted.id);
    }
    for job in &jobs {
        let view = journey::finished(&customer, job, Duration::from_secs(120), |_| {}).await;
        assert_eq!(view.status, JobStatus::Complete, "job {job} ended {view:?}");
    }

    // What Prometheus scraped: the submissions counter moved by exactly the jobs sent, and the
    // rest of the pipeline with it, on both sides.
    let within = Duration::from_secs(30);
    let jobs_sent = JOBS as f64;
    let moved = until(
        &client,
        &prometheus,
        "gp4u_job_submissions_total{job=\"gp4u-server\"}",
        within,
        |value| value >= jobs_sent,
    )
    .await;
    assert_eq!(moved - submitted_before, jobs_sent);
    let increase = until(
        &client,
        &prometheus,
        "max_over_time(gp4u_job_submissions_total[5m]) - min_over_time(gp4u_job_submissions_total[5m])",
        within,
        |value| value >= jobs_sent,
    )
    .await;
    assert_eq!(increase, jobs_sent);
    let submissions_served = format!(
        "sum(gp4u_http_request_duration_seconds_count{{route=\"{}\",method=\"POST\",status=\"2xx\"}})",
        paths::JOBS
    );
    for (promql, at_least) in [
        ("gp4u_placements_total", jobs_sent),
        ("gp4u_jobs{status=\"COMPLETE\"}", jobs_sent),
        ("gp4u_telemetry_packets_ingested_total", jobs_sent),
        (submissions_served.as_str(), jobs_sent),
        ("gp4u_ledger_entries", 1.0),
        ("gp4u_db_pool_max_connections", 1.0),
        ("gp4u_agent_containers_started_total", jobs_sent),
        (
            "gp4u_agent_containers_ended_total{outcome=\"exited\"}",
            jobs_sent,
        ),
        ("gp4u_agent_image_pulls_total{result=\"ok\"}", jobs_sent),
        ("gp4u_agent_image_pull_duration_seconds_count", jobs_sent),
        ("gp4u_agent_telemetry_packets_posted_total", jobs_sent),
        ("gp4u_agent_power_commitments_sent_total", jobs_sent),
        ("gp4u_agent_polls_total{result=\"assignment\"}", jobs_sent),
    ] {
        until(&client, &prometheus, promql, within, |value| {
            value >= at_least
        })
        .await;
    }
    // Exactly what ran: nothing ended otherwise, nothing is left running.
    until(
        &client,
        &prometheus,
        "gp4u_agent_containers_running",
        within,
        |value| value == 0.0,
    )
    .await;
    let ended = until(
        &client,
        &prometheus,
        "sum(gp4u_agent_containers_ended_total)",
        within,
        |value| value >= jobs_sent,
    )
    .await;
    assert_eq!(ended, jobs_sent);

    // The Grafana dashboard's queries, as Grafana would send them: each is valid PromQL that
    // Prometheus answers, every metric it names is one the server or the agent declares, and
    // each returns series now (counters of events this run had none of, such as anomalies,
    // exist at zero from the start).
    let declared: Vec<&str> = [&server_text, &agent_text]
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/grafana/gp4u.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut expressions: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(expressions.len() >= 20, "{} queries", expressions.len());
    expressions.extend(
        dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|variable| variable["query"]["query"].as_str())
            .filter_map(|query| query.strip_prefix("label_values("))
            .map(|query| query.rsplit_once(',').unwrap().0.to_string()),
    );
    for expression in &expressions {
        let promql = expression
            .replace("$__rate_interval", "1m")
            .replace("$server_job", "gp4u-server")
            .replace("$agent_job", "gp4u-agent")
            .replace("$agent_instance", ".*");
        let mut rest = promql.as_str();
        while let Some(start) = rest.find("gp4u_") {
            let name: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[start + name.len()..];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                declared.contains(&family) || declared.contains(&name.as_str()),
                "the dashboard's {expression:?} names {name}, which neither /metrics declares"
            );
        }
        let answer: Value = client
            .get(format!("{prometheus}/api/v1/query"))
            .query(&[("query", promql.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        let series = answer["data"]["result"].as_array().map_or(0, Vec::len);
        assert!(series > 0, "the dashboard's {promql} has no data: {answer}");
    }
    drop(server);
}

/// A taken `--metrics-listen` address stops the agent at start, naming the flag and the
/// address (before it registers: no server is needed to see it).
#[test]
fn a_taken_metrics_address_stops_the_agent_saying_which() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t").unwrap();
    let output = Command::new(common::BIN)
        .args([
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--region",
            "us-east-1",
            "--price",
            "1",
            "--runtime",
            "process",
            "--allow-unisolated",
            "--metrics-listen",
            &address,
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--gpu", "emulated:Dev:8"])
        .env("GP4U_LOG", "error")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--metrics-listen {address}: cannot listen there")),
        "{stderr}"
    );
}
