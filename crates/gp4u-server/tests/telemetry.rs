//! Stage 4 on the control plane (SPEC §7): telemetry ingestion, Tutela's verdicts and what
//! they do (kills, slashes, retries, flags), fencing, the heartbeat reaper with its grace and
//! breaker, the duration check, visibility challenges, and a provider's standing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use axum::http::{Method, StatusCode};
use gp4u_core::atlas::AtlasConfig;
use gp4u_proto::paths;
use gp4u_server::placement::place_pending;
use gp4u_server::tutela::reap_once;
use gp4u_store::Engine;
use serde_json::{Value, json};
use support::*;

// ---------------------------------------------------------------------------------------
// Ingestion
// ---------------------------------------------------------------------------------------

async fn ingestion_checks_who_what_and_clamps(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    let other = app.node(1, 3.1, "us-east-1").await;
    // Another provider, with their own node: the job is not on it.
    let reply = packet(&app, &other.token, &other.node_id, &run.job, json!({})).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
    );
    // Another provider naming the right node: not theirs.
    let reply = packet(&app, &other.token, &run.node.node_id, &run.job, json!({})).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "NODE_NOT_FOUND")
    );
    // The customer's own token: not a provider.
    let reply = packet(&app, &run.customer, &run.node.node_id, &run.job, json!({})).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "PROVIDER_REQUIRED")
    );
    // Wrong types: 400 naming the field, nothing stored, the job still ASSIGNED.
    for (extra, field) in [
        (json!({"gpu_utilization_pct": "94"}), "gpu_utilization_pct"),
        (json!({"power_draw_watts": null}), "power_draw_watts"),
        (json!({"inferred_pattern": "GAMING"}), "inferred_pattern"),
        (json!({"final": "yes"}), "final"),
        (json!({"final": true}), "exit_code"),
        (json!({"job_id": 7}), "job_id"),
    ] {
        let reply = send(&app, &run, extra.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{extra}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["field"], field, "{extra}");
    }
    assert_eq!(app.job(&run.job).await["status"], "ASSIGNED");
    // Absurd values are clamped before anything sees them; the first packet starts the job.
    let reply = send(
        &app,
        &run,
        json!({"gpu_utilization_pct": 1e9, "power_draw_watts": -5, "temperature_c": 9000}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        (
            reply.body["kill_job"].as_bool(),
            reply.body["status"].as_str()
        ),
        (Some(false), Some("RUNNING"))
    );
    let view = app.job(&run.job).await;
    assert_eq!(view["status"], "RUNNING");
    let metrics = &view["latest_metrics"];
    assert_eq!(
        field_names(metrics),
        [
            "at",
            "clamped",
            "emulated",
            "foreign_gpu_processes",
            "gpu_utilization_pct",
            "inferred_pattern",
            "outbound_bytes_per_sec",
            "power_draw_watts",
            "temperature_c",
            "throttling",
            "unique_dest_ips",
            "vram_allocated_gb",
            "vram_used_gb"
        ],
        "{metrics:?}"
    );
    assert_eq!(metrics["throttling"], Value::Null, "{metrics:?}");
    let typed: gp4u_proto::LatestMetrics = serde_json::from_value(metrics.clone()).unwrap();
    assert_eq!(&serde_json::to_value(&typed).unwrap(), metrics);
    assert_eq!(metrics["gpu_utilization_pct"], json!(100.0));
    assert_eq!(metrics["power_draw_watts"], json!(0.0));
    assert_eq!(metrics["temperature_c"], json!(150.0));
    assert_eq!(metrics["emulated"], json!(false));
    let clamped: Vec<&str> = metrics["clamped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field.as_str().unwrap())
        .collect();
    assert_eq!(
        clamped,
        ["gpu_utilization_pct", "power_draw_watts", "temperature_c"]
    );
    let job_id = gp4u_core::ids::JobId::parse(&run.job).unwrap();
    assert_eq!(app.store().count_telemetry(&job_id).await.unwrap(), 1);
    let stored = app.store().recent_telemetry(&job_id, 10).await.unwrap();
    assert_eq!(stored[0].gpu_utilization_pct, 100.0);
}

async fn a_node_may_post_its_jobs_packets_together(app: TestApp) {
    let node = app.node(2, 3.1, "us-east-1").await;
    let first = running_on(
        &app,
        Node {
            token: node.token.clone(),
            node_id: node.node_id.clone(),
            gpus: vec![node.gpus[0].clone()],
        },
        pinned(),
    )
    .await;
    let second = running_on(
        &app,
        Node {
            token: node.token.clone(),
            node_id: node.node_id.clone(),
            gpus: vec![node.gpus[1].clone()],
        },
        pinned(),
    )
    .await;
    let stranger = picked_up(&app, pinned()).await;
    let packet = |job: &str| merge(healthy(), json!({"job_id": job, "node_id": node.node_id}));
    let batch = json!([
        packet(&first.job),
        merge(packet(&second.job), json!({"unique_dest_ips": 80})),
        packet(&stranger.job),
        merge(packet(&first.job), json!({"power_draw_watts": "lots"})),
    ]);
    let reply = app
        .call(
            Method::POST,
            paths::TELEMETRY,
            Some(&node.token),
            Some(batch),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let items = reply.body.as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(
        (items[0]["kill_job"].as_bool(), items[0]["status"].as_str()),
        (Some(false), Some("RUNNING"))
    );
    assert_eq!(items[1]["reason"], "OUTBOUND_PORT_SCAN");
    assert_eq!(
        (
            items[2]["status"].as_u64(),
            items[2]["error"]["code"].as_str()
        ),
        (Some(404), Some("JOB_NOT_FOUND"))
    );
    assert_eq!(
        (
            items[3]["status"].as_u64(),
            items[3]["error"]["field"].as_str()
        ),
        (Some(400), Some("power_draw_watts"))
    );
    // The shapes on the wire: a reply, or `{"status", "error": {"code", "message", "field"}}`
    // with `field` null when no field is at fault.
    assert_eq!(
        field_names(&items[0]),
        [
            "anomalies",
            "at_ms",
            "kill_job",
            "max_gap_ms",
            "reason",
            "status"
        ],
        "{:?}",
        items[0]
    );
    for item in &items[2..] {
        assert_eq!(field_names(item), ["error", "status"], "{item:?}");
        assert_eq!(
            field_names(&item["error"]),
            ["code", "field", "message"],
            "{item:?}"
        );
    }
    assert_eq!(items[2]["error"]["field"], Value::Null);
    // The answer is exactly its typed form (nothing more, nothing less).
    let typed: gp4u_proto::TelemetryAnswer = serde_json::from_value(reply.body.clone()).unwrap();
    let gp4u_proto::TelemetryAnswer::Batch(typed_items) = &typed else {
        panic!("a batch is answered with an array: {typed:?}");
    };
    assert!(matches!(
        &typed_items[2],
        gp4u_proto::TelemetryBatchItem::Refused { status: 404, error } if error.code == "JOB_NOT_FOUND"
    ));
    assert_eq!(serde_json::to_value(&typed).unwrap(), reply.body);
    assert_eq!(app.job(&first.job).await["status"], "RUNNING");
    let killed = app.job(&second.job).await;
    assert_eq!(killed["failure_reason"], "KILLED_ANOMALY");
    // The job's `anomalies` summary: one entry per rule.
    let summary = killed["anomalies"].as_array().unwrap();
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert_eq!(
        field_names(&summary[0]),
        [
            "attribution",
            "count",
            "evidence",
            "first_at",
            "kill",
            "last_at",
            "rule",
            "severity"
        ],
        "{summary:?}"
    );
    assert_eq!(
        (
            summary[0]["rule"].as_str(),
            summary[0]["count"].as_u64(),
            summary[0]["kill"].as_bool()
        ),
        (Some("OUTBOUND_PORT_SCAN"), Some(1), Some(true))
    );
    let typed: Vec<gp4u_proto::AnomalySummary> =
        serde_json::from_value(killed["anomalies"].clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), killed["anomalies"]);
    for bad in [json!([]), Value::Array(vec![json!({}); 257])] {
        let reply = app
            .call(Method::POST, paths::TELEMETRY, Some(&node.token), Some(bad))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    }
}

async fn a_flood_from_one_node_is_rate_limited_and_others_are_not(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    let calm = picked_up(&app, pinned()).await;
    // The clock stands still: the burst (40) is all a node gets.
    let body = merge(
        healthy(),
        json!({"job_id": run.job, "node_id": run.node.node_id}),
    );
    let mut limited = 0;
    for _ in 0..60 {
        let reply = app
            .call(
                Method::POST,
                paths::TELEMETRY,
                Some(&run.node.token),
                Some(body.clone()),
            )
            .await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply.code(), "RATE_LIMITED");
            assert!(reply.headers.contains_key("retry-after"));
            limited += 1;
        } else {
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        }
    }
    assert_eq!(limited, 20, "40 of 60 allowed in the burst");
    // Another node is not starved.
    let body = merge(
        healthy(),
        json!({"job_id": calm.job, "node_id": calm.node.node_id}),
    );
    let reply = app
        .call(
            Method::POST,
            paths::TELEMETRY,
            Some(&calm.node.token),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    // Time refills the bucket.
    app.clock.advance_ms(1_000);
    let reply = send(&app, &run, json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

// ---------------------------------------------------------------------------------------
// Verdicts and what they do
// ---------------------------------------------------------------------------------------

async fn mining_in_the_customers_container_kills_and_flags_the_customer(app: TestApp) {
    let run = picked_up(&app, any_gpu_body()).await;
    stake(&app, &run.node, 100.0).await;
    assert_eq!(send(&app, &run, json!({})).await.status, StatusCode::OK);
    let reply = send(
        &app,
        &run,
        json!({"inferred_pattern": "CRYPTO_MINING", "gpu_utilization_pct": 100, "dest_ports": [3333]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["kill_job"], true);
    assert_eq!(reply.body["reason"], "CRYPTO_MINING_PATTERN");
    assert_eq!(reply.body["anomalies"][0]["attribution"], "CUSTOMER");
    assert_eq!(reply.body["status"], "FAILED");
    let view = app.job(&run.job).await;
    assert_eq!(
        (view["failure_reason"].as_str(), view["ended_by"].as_str()),
        (Some("KILLED_ANOMALY"), Some("platform"))
    );
    assert_eq!(view["anomalies"][0]["rule"], "CRYPTO_MINING_PATTERN");
    // The customer is flagged; the provider is not slashed.
    let flag = app
        .store()
        .user_flag(&gp4u_core::ids::UserId::parse(&run.customer_id).unwrap())
        .await
        .unwrap();
    assert!(flag.unwrap().1.contains("CRYPTO_MINING_PATTERN"));
    let node = standing(&app, &run.node.node_id).await;
    assert_eq!(node["slashes"], json!([]));
    assert_eq!(node["stake"], json!(100.0));
    // The agent is fenced: its next packet is refused and tells it to stop.
    let reply = send(&app, &run, json!({})).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "JOB_ALREADY_TERMINAL")
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("KILLED_ANOMALY")
    );
    // The verdict is published for the ledger.
    assert_topic(&app, "tutela.kill_order").await;
}

async fn assert_topic(app: &TestApp, topic: &str) {
    app.state.relay.run_once().await.unwrap();
    let events = app.store().read_outbox(0, 10_000).await.unwrap();
    assert!(
        events.iter().any(|event| event.topic == topic),
        "no {topic} event in {:?}",
        events.iter().map(|event| &event.topic).collect::<Vec<_>>()
    );
}

async fn mining_by_foreign_processes_slashes_the_provider_and_moves_the_job(app: TestApp) {
    let run = picked_up(&app, any_gpu_body()).await;
    let spare = app.node(1, 3.1, "us-east-1").await;
    stake(&app, &run.node, 100.0).await;
    let reply = send(
        &app,
        &run,
        json!({"inferred_pattern": "CRYPTO_MINING", "foreign_gpu_processes": 2}),
    )
    .await;
    assert_eq!(reply.body["kill_job"], true, "{:?}", reply.body);
    assert_eq!(reply.body["reason"], "CRYPTO_MINING_DURING_ML_JOB");
    assert_eq!(reply.body["status"], "PENDING", "retried elsewhere");
    let node = standing(&app, &run.node.node_id).await;
    assert_eq!(node["slashes"][0]["kind"], "CRYPTO_MINING_DURING_ML_JOB");
    assert_eq!(node["slashes"][0]["severity"], "HARD");
    assert_eq!(node["stake"], json!(90.0), "10 % of the stake");
    assert_eq!(node["trust_score"], json!(35.0), "50 − 15");
    // The job is placed on the other node, never back on the slashed one.
    place_pending(&app.state, &AtlasConfig::default())
        .await
        .unwrap();
    let view = app.job(&run.job).await;
    assert_eq!(view["status"], "ASSIGNED");
    assert_eq!(view["node_id"], spare.node_id.as_str());
    // The old node is fenced.
    let reply = send(&app, &run, json!({})).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.body);
}

async fn vram_overclaim_is_one_soft_slash_and_the_job_runs_on(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    stake(&app, &run.node, 50.0).await;
    for _ in 0..3 {
        let reply = send(&app, &run, json!({"vram_used_gb": 30.0})).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["kill_job"], false);
        assert_eq!(reply.body["anomalies"][0]["rule"], "VRAM_OVERCLAIM");
    }
    let node = standing(&app, &run.node.node_id).await;
    let slashes = node["slashes"].as_array().unwrap();
    assert_eq!(slashes.len(), 1, "one slash per job, however many packets");
    assert_eq!(slashes[0]["kind"], "VRAM_OVERCLAIM");
    assert_eq!(slashes[0]["severity"], "SOFT");
    assert_eq!(node["stake"], json!(49.5), "1 %");
    assert_eq!(node["trust_score"], json!(48.0));
    let view = app.job(&run.job).await;
    assert_eq!(view["status"], "RUNNING");
    assert_eq!(view["anomalies"][0]["count"], 3);
    let job_id = gp4u_core::ids::JobId::parse(&run.job).unwrap();
    assert_eq!(app.store().count_anomalies(&job_id).await.unwrap(), 3);
    assert_topic(&app, "tutela.slash").await;
}

async fn port_scans_are_killed_and_near_misses_are_not(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    let reply = send(&app, &run, json!({"unique_dest_ips": 50})).await;
    assert_eq!(
        reply.body["kill_job"], false,
        "50 is the limit, not over it"
    );
    let reply = send(&app, &run, json!({"outbound_bytes_per_sec": 2e8})).await;
    assert_eq!(
        (
            reply.body["kill_job"].as_bool(),
            reply.body["anomalies"][0]["rule"].as_str()
        ),
        (Some(false), Some("HIGH_OUTBOUND_BANDWIDTH")),
        "flagged, not killed"
    );
    let reply = send(&app, &run, json!({"unique_dest_ips": 51})).await;
    assert_eq!(reply.body["kill_job"], true);
    assert_eq!(reply.body["reason"], "OUTBOUND_PORT_SCAN");
    let view = app.job(&run.job).await;
    assert_eq!(view["failure_reason"], "KILLED_ANOMALY");
}

async fn the_final_packet_ends_the_job(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    send(&app, &run, json!({})).await;
    let reply = send(&app, &run, json!({"final": true, "exit_code": 0})).await;
    assert_eq!(
        (reply.status, reply.body["status"].as_str()),
        (StatusCode::OK, Some("COMPLETE"))
    );
    let failing = picked_up(&app, pinned()).await;
    let reply = send(&app, &failing, json!({"final": true, "exit_code": 3})).await;
    assert_eq!(reply.body["status"], "FAILED");
    let view = app.job(&failing.job).await;
    assert_eq!(
        (view["failure_reason"].as_str(), view["exit_code"].as_i64()),
        (Some("NONZERO_EXIT"), Some(3))
    );
}

async fn the_series_is_the_owners_as_json_and_as_a_chart(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    for util in [10.0, 50.0, 90.0] {
        send(&app, &run, json!({"gpu_utilization_pct": util})).await;
    }
    let path = paths::job_telemetry(&run.job);
    let series = app
        .call(Method::GET, &path, Some(&run.customer), None)
        .await;
    assert_eq!(series.status, StatusCode::OK, "{:?}", series.body);
    let utils: Vec<f64> = series.body["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| sample["gpu_utilization_pct"].as_f64().unwrap())
        .collect();
    assert_eq!(utils, [10.0, 50.0, 90.0], "oldest first");
    assert_eq!(
        field_names(&series.body),
        ["emulated", "job_id", "samples"],
        "{:?}",
        series.body
    );
    assert_eq!(series.body["job_id"], run.job.as_str());
    assert_eq!(series.body["emulated"], false);
    let typed: gp4u_proto::TelemetrySeries = serde_json::from_value(series.body.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), series.body);
    assert_eq!(
        field_names(&series.body["samples"][0]),
        SAMPLE_FIELDS,
        "{:?}",
        series.body
    );
    let (status, headers, svg) = app
        .raw(
            Method::GET,
            &format!("{path}?format=svg"),
            Some(&run.customer),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/svg+xml");
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<polyline").count() == 3,
        "{svg}"
    );
    let (_, stranger) = app.user("customer", None).await;
    let refused = app.call(Method::GET, &path, Some(&stranger), None).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let refused = app
        .call(
            Method::GET,
            &format!("{path}?format=png"),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

/// The fields of one sample of a job's series.
const SAMPLE_FIELDS: [&str; 9] = [
    "at",
    "gpu_utilization_pct",
    "inferred_pattern",
    "outbound_bytes_per_sec",
    "power_draw_watts",
    "temperature_c",
    "unique_dest_ips",
    "vram_allocated_gb",
    "vram_used_gb",
];

/// `?follow=1`: the stored samples, then each one as it is stored, then `end` — for the
/// owner only; `after_ms` skips what a page already shows.
async fn the_series_can_be_followed_live(app: TestApp) {
    use http_body_util::BodyExt as _;
    let run = picked_up(&app, pinned()).await;
    send(&app, &run, json!({"gpu_utilization_pct": 10.0})).await;
    let path = format!("{}?follow=1", paths::job_telemetry(&run.job));
    let (_, stranger) = app.user("customer", None).await;
    let refused = app.call(Method::GET, &path, Some(&stranger), None).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let response = app
        .response(Method::GET, &path, Some(&run.customer), &[])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    for (util, extra) in [
        (50.0, json!({})),
        (90.0, json!({"final": true, "exit_code": 0})),
    ] {
        app.clock.advance_ms(1000);
        let mut packet = extra;
        packet["gpu_utilization_pct"] = json!(util);
        let reply = send(&app, &run, packet).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let mut text = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while !text.contains("event: end") {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                _ => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no end event: {text}");
    let samples: Vec<Value> = text
        .split("\n\n")
        .filter(|event| event.contains("event: sample"))
        .map(|event| {
            let data = event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect();
    let utils: Vec<f64> = samples
        .iter()
        .map(|sample| sample["gpu_utilization_pct"].as_f64().unwrap())
        .collect();
    assert_eq!(utils, [10.0, 50.0, 90.0], "each once, in order: {text}");
    let first_ms = samples[0]["at_ms"].as_i64().unwrap();
    assert!(samples[1]["at_ms"].as_i64().unwrap() > first_ms, "{text}");
    assert!(text.contains("\"status\":\"COMPLETE\""), "{text}");
    // A `sample` event is the series' sample with `at_ms`; `end` is `{"status"}`.
    let mut event_fields: Vec<&str> = SAMPLE_FIELDS.to_vec();
    event_fields.push("at_ms");
    event_fields.sort_unstable();
    for sample in &samples {
        assert_eq!(field_names(sample), event_fields, "{sample:?}");
        let typed: gp4u_proto::TelemetrySampleView =
            serde_json::from_value(sample.clone()).unwrap();
        assert_eq!(&serde_json::to_value(&typed).unwrap(), sample);
    }
    let end = text
        .split("\n\n")
        .find(|event| event.contains("event: end"))
        .and_then(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(end).unwrap(),
        json!({"status": "COMPLETE"})
    );
    // From after the first sample: the rest, then the end at once (the job has ended).
    let (status, _, later) = app
        .raw(
            Method::GET,
            &format!("{path}&after_ms={first_ms}"),
            Some(&run.customer),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let later = String::from_utf8(later).unwrap();
    assert_eq!(later.matches("event: sample").count(), 2, "{later}");
    assert!(later.contains("event: end"), "{later}");
}

// ---------------------------------------------------------------------------------------
// Heartbeats, duration, visibility
// ---------------------------------------------------------------------------------------

async fn a_silent_job_is_dropped_after_the_timeout_with_one_slash(app: TestApp) {
    app.clock.advance_ms(120_000); // past the restart grace
    let mut body = pinned();
    body["max_retries"] = json!(0);
    let run = picked_up(&app, body).await;
    stake(&app, &run.node, 100.0).await;
    send(&app, &run, json!({})).await; // RUNNING, last heard now
    app.clock.advance_ms(59_000);
    assert_eq!(reap_once(&app.state).await.unwrap(), vec![]);
    assert_eq!(app.job(&run.job).await["status"], "RUNNING");
    app.clock.advance_ms(2_000); // 61 s
    let ended = reap_once(&app.state).await.unwrap();
    assert_eq!(ended.len(), 1);
    let view = app.job(&run.job).await;
    assert_eq!(
        (
            view["status"].as_str(),
            view["failure_reason"].as_str(),
            view["ended_by"].as_str()
        ),
        (Some("FAILED"), Some("JOB_DROPPED"), Some("provider"))
    );
    assert_eq!(reap_once(&app.state).await.unwrap(), vec![]);
    let node = standing(&app, &run.node.node_id).await;
    let slashes = node["slashes"].as_array().unwrap();
    assert_eq!(slashes.len(), 1, "exactly one slash");
    assert_eq!(slashes[0]["kind"], "JOB_DROPPED_UNEXPECTEDLY");
    assert_eq!(node["stake"], json!(98.0));
    // The agent comes back: fenced.
    let reply = send(&app, &run, json!({})).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
}

async fn a_dropped_job_with_retries_left_moves_to_another_node(app: TestApp) {
    app.clock.advance_ms(120_000);
    let run = picked_up(&app, any_gpu_body()).await; // max_retries defaults to 1
    let spare = app.node(1, 3.1, "us-east-1").await;
    send(&app, &run, json!({})).await;
    app.clock.advance_ms(61_000);
    assert_eq!(reap_once(&app.state).await.unwrap().len(), 1);
    let view = app.job(&run.job).await;
    assert_eq!(view["status"], "PENDING");
    place_pending(&app.state, &AtlasConfig::default())
        .await
        .unwrap();
    let view = app.job(&run.job).await;
    assert_eq!(view["node_id"], spare.node_id.as_str());
    let record = app
        .store()
        .get_job(&gp4u_core::ids::JobId::parse(&run.job).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.retries, 1);
    assert_eq!(record.attempts[0].node_id.as_str(), run.node.node_id);
    assert_eq!(record.attempts[0].reason.as_str(), "JOB_DROPPED");
    // The retry on the second node is dropped too: no retries left → FAILED.
    let poll = format!(
        "{}?node_id={}&wait=0",
        paths::AGENT_ASSIGNMENTS,
        spare.node_id
    );
    app.call(Method::GET, &poll, Some(&spare.token), None).await;
    packet(&app, &spare.token, &spare.node_id, &run.job, json!({})).await;
    app.clock.advance_ms(61_000);
    assert_eq!(reap_once(&app.state).await.unwrap().len(), 1);
    let view = app.job(&run.job).await;
    assert_eq!(
        (view["status"].as_str(), view["failure_reason"].as_str()),
        (Some("FAILED"), Some("JOB_DROPPED"))
    );
}

async fn nothing_is_dropped_during_the_restart_grace_or_when_the_breaker_opens(app: TestApp) {
    app.clock.advance_ms(120_000);
    let runs = [
        picked_up(&app, pinned()).await,
        picked_up(&app, pinned()).await,
        picked_up(&app, pinned()).await,
    ];
    for run in &runs {
        send(&app, run, json!({})).await;
    }
    // The control plane restarts (a replica starting now) after everything went quiet.
    app.clock.advance_ms(300_000);
    let restarted = app.replica().await;
    assert_eq!(reap_once(&restarted.state).await.unwrap(), vec![]);
    for run in &runs {
        assert_eq!(app.job(&run.job).await["status"], "RUNNING");
    }
    // Past the grace, all three nodes are still silent: the breaker opens, nothing fails.
    app.clock.advance_ms(61_000);
    assert_eq!(reap_once(&restarted.state).await.unwrap(), vec![]);
    assert!(restarted.state.tutela.breaker_open());
    for run in &runs {
        assert_eq!(app.job(&run.job).await["status"], "RUNNING");
    }
    assert_topic(&restarted, "tutela.alert").await;
    // Two nodes report again: the one still silent is dropped.
    send(&restarted, &runs[0], json!({})).await;
    send(&restarted, &runs[1], json!({})).await;
    let ended = reap_once(&restarted.state).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].as_str(), runs[2].job);
    assert!(!restarted.state.tutela.breaker_open());
}

async fn a_job_far_past_its_duration_is_failed_without_a_slash(app: TestApp) {
    let run = picked_up(&app, pinned()).await; // 4 h declared → 4.4 h cap
    stake(&app, &run.node, 10.0).await;
    send(&app, &run, json!({})).await;
    // Keep it talking, so the heartbeat is not what ends it.
    app.clock.advance_ms(4 * 3_600_000 + 24 * 60_000 - 10_000);
    let reply = send(&app, &run, json!({})).await;
    assert_eq!(reply.body["kill_job"], false, "not yet past the cap");
    let reply = send(&app, &run, json!({})).await;
    assert_eq!(reply.body["kill_job"], true, "{:?}", reply.body);
    assert_eq!(reply.body["reason"], "DURATION_EXCEEDED");
    let view = app.job(&run.job).await;
    assert_eq!(
        (view["failure_reason"].as_str(), view["ended_by"].as_str()),
        (Some("DURATION_EXCEEDED"), Some("platform"))
    );
    assert_eq!(
        standing(&app, &run.node.node_id).await["slashes"],
        json!([])
    );
}

async fn the_duration_reaper_catches_an_agent_that_does_not_stop(app: TestApp) {
    app.clock.advance_ms(120_000);
    let run = picked_up(&app, pinned()).await;
    send(&app, &run, json!({})).await;
    // Silent long past the cap: the duration rule, not the heartbeat, is the reason.
    app.clock.advance_ms(5 * 3_600_000);
    let ended = reap_once(&app.state).await.unwrap();
    assert_eq!(ended.len(), 1);
    let view = app.job(&run.job).await;
    assert_eq!(view["failure_reason"], "DURATION_EXCEEDED");
    assert_eq!(
        standing(&app, &run.node.node_id).await["slashes"],
        json!([])
    );
}

async fn a_job_taken_but_never_started_moves_without_a_slash(app: TestApp) {
    app.clock.advance_ms(120_000);
    let run = picked_up(&app, any_gpu_body()).await; // picked up, never started
    stake(&app, &run.node, 10.0).await;
    app.clock.advance_ms(899_000);
    assert_eq!(reap_once(&app.state).await.unwrap(), vec![]);
    app.clock.advance_ms(2_000);
    assert_eq!(reap_once(&app.state).await.unwrap().len(), 1);
    let view = app.job(&run.job).await;
    assert_eq!(view["status"], "PENDING", "{view}");
    assert_eq!(
        standing(&app, &run.node.node_id).await["slashes"],
        json!([])
    );
}

async fn a_nodes_standing_is_for_its_owner_and_admins(app: TestApp) {
    let node = app.node(1, 3.1, "us-east-1").await;
    let other = app.node(1, 3.1, "us-east-1").await;
    let path = paths::provider(&node.node_id);
    let mine = app.call(Method::GET, &path, Some(&node.token), None).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(
        (
            mine.body["status"].as_str(),
            mine.body["trust_score"].as_f64(),
            mine.body["stake"].as_f64(),
            mine.body["visibility"].as_str()
        ),
        (Some("ACTIVE"), Some(50.0), Some(0.0), Some("UNCHECKED"))
    );
    let theirs = app.call(Method::GET, &path, Some(&other.token), None).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    // A stake needs the credit behind it (the fixture gave the owner 100 000).
    let reply = app
        .call(
            Method::POST,
            &paths::provider_stake(&node.node_id),
            Some(&node.token),
            Some(json!({"amount": 100000.01})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "CREDIT_BELOW_ZERO")
    );
    // The host posture is the node's agent's to report, validated field by field.
    let posture_path = paths::provider_posture(&node.node_id);
    let posture = json!({"runtime": "docker", "engine_version": "20.10.24", "seccomp": true,
        "cgroup_version": 1, "egress_filter": "iptables", "egress_ipv6_filtered": false,
        "unfiltered_egress_allowed": false, "scratch_quota": "loop", "max_scratch_gb": 50,
        "cpus_per_job": 2, "ulimits": {"nofile": 65536, "memlock": null, "stack": 67108864}});
    let mut bad = posture.clone();
    bad["egress_filter"] = json!("pf");
    for (token, body, status) in [
        (&node.token, posture.clone(), StatusCode::OK),
        (&node.token, bad, StatusCode::BAD_REQUEST),
        (&other.token, posture.clone(), StatusCode::NOT_FOUND),
    ] {
        let reply = app
            .call(Method::PUT, &posture_path, Some(token), Some(body.clone()))
            .await;
        assert_eq!(reply.status, status, "{body}: {:?}", reply.body);
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(reply.body["error"]["field"], "posture.egress_filter");
        }
    }
    let mine = app.call(Method::GET, &path, Some(&node.token), None).await;
    assert_eq!(mine.body["posture"]["egress_filter"], "iptables");
    assert_eq!(mine.body["posture"]["max_scratch_gb"], json!(50.0));
    assert_eq!(mine.body["posture"]["ulimits"]["memlock"], Value::Null);
    assert!(mine.body.get("endpoint").is_none(), "{:?}", mine.body);
}

on_both_engines!(
    ingestion_checks_who_what_and_clamps,
    a_flood_from_one_node_is_rate_limited_and_others_are_not,
    a_node_may_post_its_jobs_packets_together,
    mining_in_the_customers_container_kills_and_flags_the_customer,
    mining_by_foreign_processes_slashes_the_provider_and_moves_the_job,
    vram_overclaim_is_one_soft_slash_and_the_job_runs_on,
    port_scans_are_killed_and_near_misses_are_not,
    the_final_packet_ends_the_job,
    the_series_is_the_owners_as_json_and_as_a_chart,
    the_series_can_be_followed_live,
    a_silent_job_is_dropped_after_the_timeout_with_one_slash,
    a_dropped_job_with_retries_left_moves_to_another_node,
    nothing_is_dropped_during_the_restart_grace_or_when_the_breaker_opens,
    a_job_far_past_its_duration_is_failed_without_a_slash,
    the_duration_reaper_catches_an_agent_that_does_not_stop,
    a_job_taken_but_never_started_moves_without_a_slash,
    a_nodes_standing_is_for_its_owner_and_admins,
);
