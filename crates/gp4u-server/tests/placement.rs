//! Stage 2–3 on the control plane: Atlas assigns, the long-poll dispatches, agents report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use gp4u_core::atlas::AtlasConfig;
use gp4u_proto::paths;
use gp4u_server::placement::{place_pending, reap_unclaimed};
use gp4u_store::Engine;
use serde_json::{Value, json};
use support::*;

async fn sqlite(test: &str) -> TestApp {
    TestApp::new(Engine::Sqlite, test).await.unwrap()
}

async fn place(app: &TestApp) -> usize {
    place_pending(&app.state, &AtlasConfig::default())
        .await
        .unwrap()
}

async fn report(app: &TestApp, node: &Node, job: &str, body: Value) -> (StatusCode, Value) {
    let mut body = body;
    body["node_id"] = json!(node.node_id);
    let reply = app
        .call(
            Method::POST,
            &paths::agent_job_status(job),
            Some(&node.token),
            Some(body),
        )
        .await;
    (reply.status, reply.body)
}

#[tokio::test]
async fn assign_dispatch_run_and_complete() {
    let app = sqlite("assign_dispatch").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let job = app.submit(&customer, job_body(&node.gpus[0])).await;
    assert_eq!(place(&app).await, 1);
    let view = app.job(&job).await;
    assert_eq!(
        (view["status"].as_str(), view["node_id"].as_str()),
        (Some("ASSIGNED"), Some(node.node_id.as_str()))
    );
    assert!(view["placement"]["score"].as_f64().unwrap() > 0.0, "{view}");
    assert!(!view["placement"]["reasons"].as_array().unwrap().is_empty());
    // The GPU holds the job: it left the marketplace.
    let listing = app
        .call(Method::GET, paths::GPUS, Some(&customer), None)
        .await;
    assert_eq!(listing.body["gpus"], json!([]));

    let poll = format!(
        "{}?node_id={}&wait=1",
        paths::AGENT_ASSIGNMENTS,
        node.node_id
    );
    let reply = app.call(Method::GET, &poll, Some(&node.token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let manifest = reply.body;
    assert_eq!(manifest["job_id"], job.as_str());
    assert_eq!(manifest["docker_image_sha256"], "a".repeat(64));
    assert_eq!(manifest["gpu_uuid"], "GPU-0");
    assert_eq!(manifest["kill_after_seconds"], 15_840, "1.1 × 4 h");
    assert_eq!(manifest["telemetry_interval_seconds"], 10);
    for field in [
        "docker_image",
        "ram_limit_gb",
        "env",
        "command",
        "inputs",
        "expected_duration_hours",
    ] {
        assert!(manifest.get(field).is_some(), "manifest lacks {field}");
    }
    // Taken once: the next poll finds nothing.
    let reply = app
        .call(
            Method::GET,
            &poll.replace("wait=1", "wait=0"),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);

    let (status, body) = report(&app, &node, &job, json!({"status": "running"})).await;
    assert_eq!(
        (status, body["status"].as_str(), body["kill"].as_bool()),
        (StatusCode::OK, Some("RUNNING"), Some(false))
    );
    let (_, body) = report(&app, &node, &job, json!({"status": "running"})).await;
    assert_eq!(
        body["status"], "RUNNING",
        "a repeated start is a keep-alive"
    );
    let (_, body) = report(
        &app,
        &node,
        &job,
        json!({"status": "exited", "exit_code": 0}),
    )
    .await;
    assert_eq!(body["status"], "COMPLETE");
    let view = app.job(&job).await;
    assert_eq!(
        (view["exit_code"].as_i64(), view["started_at"].is_string()),
        (Some(0), true)
    );
    // The GPU is free again.
    let listing = app
        .call(Method::GET, paths::GPUS, Some(&customer), None)
        .await;
    assert_eq!(listing.body["gpus"].as_array().unwrap().len(), 1);
    // A report on a finished job: nothing changes, and the agent is told to stop.
    let (_, body) = report(&app, &node, &job, json!({"status": "running"})).await;
    assert_eq!(
        (body["status"].as_str(), body["kill"].as_bool()),
        (Some("COMPLETE"), Some(true))
    );
}

#[tokio::test]
async fn failures_reported_by_the_agent() {
    let app = sqlite("agent_failures").await;
    let node = app.node(3, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let jobs: Vec<String> =
        futures::future::join_all((0..3).map(|_| app.submit(&customer, any_gpu_body()))).await;
    assert_eq!(place(&app).await, 3);
    let cases = [
        (
            json!({"status": "exited", "exit_code": 3}),
            "NONZERO_EXIT",
            "customer",
        ),
        (
            json!({"status": "failed", "reason": "DURATION_EXCEEDED"}),
            "DURATION_EXCEEDED",
            "platform",
        ),
        (
            json!({"status": "failed", "reason": "IMAGE_PULL_FAILED"}),
            "IMAGE_PULL_FAILED",
            "customer",
        ),
    ];
    for (job, (body, reason, ended_by)) in jobs.iter().zip(cases) {
        let (status, reply) = report(&app, &node, job, body).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (StatusCode::OK, Some("FAILED")),
            "{reply}"
        );
        let view = app.job(job).await;
        assert_eq!(
            (view["failure_reason"].as_str(), view["ended_by"].as_str()),
            (Some(reason), Some(ended_by))
        );
    }
    let (status, reply) = report(&app, &node, &jobs[0], json!({"status": "exploded"})).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_REPORT"))
    );
    let (status, _) = report(&app, &node, &jobs[0], json!({"status": "exited"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "exited needs exit_code");
}

#[tokio::test]
async fn only_the_owner_of_a_node_polls_or_reports_for_it() {
    let app = sqlite("node_ownership").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let other = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let job = app.submit(&customer, job_body(&node.gpus[0])).await;
    place(&app).await;
    let poll = format!(
        "{}?node_id={}&wait=0",
        paths::AGENT_ASSIGNMENTS,
        node.node_id
    );
    let reply = app.call(Method::GET, &poll, Some(&other.token), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "NODE_NOT_FOUND")
    );
    let reply = app.call(Method::GET, &poll, Some(&customer), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "PROVIDER_REQUIRED")
    );
    let reply = app
        .call(
            Method::GET,
            &format!("{}?node_id=node_nope&wait=0", paths::AGENT_ASSIGNMENTS),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = app
        .call(
            Method::GET,
            &poll.replace("wait=0", "wait=61"),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_QUERY")
    );
    // Another provider reporting on this node's job, through their own node: fenced, no change.
    let (_, body) = report(&app, &other, &job, json!({"status": "running"})).await;
    assert_eq!(
        (body["status"].as_str(), body["kill"].as_bool()),
        (Some("ASSIGNED"), Some(true))
    );
    assert_eq!(app.job(&job).await["status"], "ASSIGNED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_poll_wakes_when_its_job_is_assigned() {
    let app = sqlite("dispatch_wakes").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let poll = format!(
        "{}?node_id={}&wait=30",
        paths::AGENT_ASSIGNMENTS,
        node.node_id
    );
    let waiting = {
        let router = app.router.clone();
        let token = node.token.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let request = axum::http::Request::get(poll)
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let started = std::time::Instant::now();
            let response = router.oneshot(request).await.unwrap();
            (response.status(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.submit(&customer, job_body(&node.gpus[0])).await;
    place(&app).await;
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // Woken by the assignment, not by the end of its 30 s wait.
    assert!(
        waited < Duration::from_secs(25),
        "the poll waited {waited:?}"
    );
}

#[tokio::test]
async fn cancelling_frees_the_gpu_and_fences_the_agent() {
    let app = sqlite("cancel_frees").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let first = app.submit(&customer, job_body(&node.gpus[0])).await;
    place(&app).await;
    report(&app, &node, &first, json!({"status": "running"})).await;
    // A second job that any RTX 4090 would do waits: the only one is busy.
    let waiting = app.submit(&customer, any_gpu_body()).await;
    assert_eq!(place(&app).await, 0);
    assert_eq!(app.job(&waiting).await["status"], "PENDING");
    let reply = app
        .call(
            Method::POST,
            &paths::job_cancel(&first),
            Some(&customer),
            None,
        )
        .await;
    assert_eq!(reply.body["status"], "CANCELLED");
    let (_, body) = report(&app, &node, &first, json!({"status": "running"})).await;
    assert_eq!(body["kill"], true, "the agent must stop a cancelled job");
    // The GPU is free at once, and the queued job gets it.
    assert_eq!(place(&app).await, 1);
    assert_eq!(app.job(&waiting).await["status"], "ASSIGNED");
}

#[tokio::test]
async fn unclaimed_assignments_move_elsewhere_or_fail_when_pinned() {
    let app = sqlite("pickup_timeout").await;
    let slow = app.node(1, 1.0, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let flexible = app.submit(&customer, any_gpu_body()).await;
    assert_eq!(place(&app).await, 1);
    assert_eq!(app.job(&flexible).await["node_id"], slow.node_id.as_str());
    app.clock.advance_ms(59_000);
    assert_eq!(
        reap_unclaimed(&app.state).await.unwrap(),
        0,
        "not before the timeout"
    );
    app.clock.advance_ms(2_000);
    assert_eq!(reap_unclaimed(&app.state).await.unwrap(), 1);
    let view = app.job(&flexible).await;
    assert_eq!(
        (view["status"].as_str(), view["node_id"].as_str()),
        (Some("PENDING"), None)
    );
    // The slow node is excluded for this job: with only it available, nothing is placed.
    assert_eq!(place(&app).await, 0);
    let other = app.node(1, 9.0, "us-east-1").await;
    assert_eq!(place(&app).await, 1);
    assert_eq!(app.job(&flexible).await["node_id"], other.node_id.as_str());
    // A job pinned to the slow node's GPU cannot go elsewhere: it fails, the provider's fault.
    let pinned = app.submit(&customer, job_body(&slow.gpus[0])).await;
    assert_eq!(place(&app).await, 1);
    app.clock.advance_ms(61_000);
    reap_unclaimed(&app.state).await.unwrap();
    let view = app.job(&pinned).await;
    assert_eq!(
        (
            view["status"].as_str(),
            view["failure_reason"].as_str(),
            view["ended_by"].as_str()
        ),
        (Some("FAILED"), Some("PICKUP_TIMEOUT"), Some("provider"))
    );
}

/// Two server instances on one database race to place the same jobs on the same GPUs.
async fn two_instances_never_double_book(app: TestApp) {
    let replica = app.replica().await;
    let node = app.node(5, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    for _ in 0..8 {
        app.submit(&customer, any_gpu_body()).await;
    }
    for _ in 0..4 {
        let (a, b) = tokio::join!(place(&app), place(&replica));
        let _ = (a, b);
    }
    let jobs = app
        .call(
            Method::GET,
            &format!("{}?limit=100", paths::JOBS),
            Some(&customer),
            None,
        )
        .await
        .body["jobs"]
        .clone();
    let assigned: Vec<&Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|job| job["status"] == "ASSIGNED")
        .collect();
    assert_eq!(assigned.len(), 5, "every GPU used once: {jobs}");
    let gpus: BTreeSet<&str> = assigned
        .iter()
        .map(|job| job["gpu_id"].as_str().unwrap())
        .collect();
    assert_eq!(gpus.len(), 5, "no GPU holds two jobs");
    assert!(
        gpus.iter()
            .all(|gpu| node.gpus.iter().any(|own| own == gpu))
    );
}

#[tokio::test]
async fn reproducibility_sensitive_jobs_weigh_provenance_and_emulated_gpus_say_so() {
    let app = sqlite("provenance").await;
    let (_, provider) = app.user("provider", None).await;
    let reply = app
        .call(Method::POST, paths::PROVIDERS_REGISTER, Some(&provider), Some(json!({
            "region": "us-east-1", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "gpus": [{"name": "RTX 4090 (emulated)", "vram_gb": 24, "price_per_hour": 1.0, "power_limit_watts": 450, "emulated": true}]})))
        .await;
    assert_eq!(
        (reply.status, reply.body["gpus"][0]["emulated"].as_bool()),
        (StatusCode::CREATED, Some(true))
    );
    let (_, customer) = app.user("customer", None).await;
    let listing = app
        .call(Method::GET, paths::GPUS, Some(&customer), None)
        .await;
    assert_eq!(listing.body["gpus"][0]["emulated"], true);
    let mut body = any_gpu_body();
    body["reproducibility_sensitive"] = json!("yes");
    let reply = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_TYPE")
    );
    assert_eq!(reply.body["error"]["field"], "reproducibility_sensitive");
    body["reproducibility_sensitive"] = json!(true);
    let sensitive = app.submit(&customer, body).await;
    assert_eq!(place(&app).await, 1);
    let factors: Vec<String> = app.job(&sensitive).await["placement"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|reason| reason["factor"].as_str().unwrap().to_string())
        .collect();
    assert!(factors.contains(&"provenance".to_string()), "{factors:?}");
    // An ordinary job is placed without provenance.
    let node = app.node(1, 1.0, "us-east-1").await;
    let plain = app.submit(&customer, job_body(&node.gpus[0])).await;
    assert_eq!(place(&app).await, 1);
    let reasons = app.job(&plain).await["placement"]["reasons"].clone();
    assert!(
        !reasons
            .as_array()
            .unwrap()
            .iter()
            .any(|reason| reason["factor"] == "provenance"),
        "{reasons}"
    );
}

/// SPEC §10: `shm_gb`, `scratch_gb` and `network` are shown on the job and reach the agent in
/// its manifest, with their defaults when not given; a job that wrote past its scratch ends
/// `SCRATCH_EXCEEDED`, the customer's fault.
async fn the_job_runtime_reaches_the_job_and_its_agent(app: TestApp) {
    let node = app.node(2, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let mut asked = job_body(&node.gpus[0]);
    asked["ram_limit_gb"] = json!(4);
    asked["shm_gb"] = json!(2.5);
    asked["scratch_gb"] = json!(5);
    asked["network"] = json!("none");
    let asked = app.submit(&customer, asked).await;
    let plain = app.submit(&customer, job_body(&node.gpus[1])).await;
    let view = app.job(&asked).await;
    assert_eq!(
        (
            view["ram_limit_gb"].as_f64(),
            view["shm_gb"].as_f64(),
            view["scratch_gb"].as_f64(),
            view["network"].as_str()
        ),
        (Some(4.0), Some(2.5), Some(5.0), Some("none"))
    );
    let view = app.job(&plain).await;
    assert_eq!(
        (
            view["ram_limit_gb"].as_f64(),
            view["shm_gb"].as_f64(),
            view["scratch_gb"].as_f64(),
            view["network"].as_str()
        ),
        (Some(16.0), Some(8.0), Some(20.0), Some("public")),
        "the defaults: half the memory cap, 20 GB, public"
    );
    assert_eq!(place(&app).await, 2);
    let poll = format!(
        "{}?node_id={}&wait=0",
        paths::AGENT_ASSIGNMENTS,
        node.node_id
    );
    let mut manifests = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let reply = app.call(Method::GET, &poll, Some(&node.token), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        manifests.insert(
            reply.body["job_id"].as_str().unwrap().to_string(),
            reply.body,
        );
    }
    let runtime = |job: &str| {
        let manifest = &manifests[job];
        (
            manifest["shm_gb"].as_f64(),
            manifest["scratch_gb"].as_f64(),
            manifest["network"].as_str(),
        )
    };
    assert_eq!(runtime(&asked), (Some(2.5), Some(5.0), Some("none")));
    assert_eq!(runtime(&plain), (Some(8.0), Some(20.0), Some("public")));

    let (status, _) = report(&app, &node, &asked, json!({"status": "running"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = report(
        &app,
        &node,
        &asked,
        json!({"status": "failed", "reason": "SCRATCH_EXCEEDED", "message": "wrote 6 GB"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let view = app.job(&asked).await;
    assert_eq!(
        (
            view["status"].as_str(),
            view["failure_reason"].as_str(),
            view["ended_by"].as_str()
        ),
        (Some("FAILED"), Some("SCRATCH_EXCEEDED"), Some("customer"))
    );
}

/// A node that could not set a job up (`NODE_SETUP_FAILED`) failed the attempt, not the job:
/// a job that may move goes back to the queue without that node; a pinned one fails, ended by
/// the provider, and costs its customer nothing.
async fn a_node_that_cannot_set_a_job_up_loses_the_attempt(app: TestApp) {
    let node = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let mut movable = any_gpu_body();
    movable["max_retries"] = json!(1);
    let movable = app.submit(&customer, movable).await;
    assert_eq!(place(&app).await, 1);
    let failed = json!({"status": "failed", "reason": "NODE_SETUP_FAILED",
        "message": "the egress filter could not be installed"});
    let (status, body) = report(&app, &node, &movable, failed.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let view = app.job(&movable).await;
    assert_eq!(view["status"], "PENDING", "{view}");
    let job = app
        .store()
        .get_job(&gp4u_core::ids::JobId::parse(&movable).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.excluded_nodes[0].as_str(), node.node_id);
    let pinned = app.submit(&customer, job_body(&node.gpus[0])).await;
    assert_eq!(place(&app).await, 1);
    let (status, body) = report(&app, &node, &pinned, failed).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let view = app.job(&pinned).await;
    assert_eq!(
        (
            view["status"].as_str(),
            view["failure_reason"].as_str(),
            view["ended_by"].as_str()
        ),
        (Some("FAILED"), Some("NODE_SETUP_FAILED"), Some("provider"))
    );
}

on_both_engines!(
    two_instances_never_double_book,
    the_job_runtime_reaches_the_job_and_its_agent,
    a_node_that_cannot_set_a_job_up_loses_the_attempt
);
