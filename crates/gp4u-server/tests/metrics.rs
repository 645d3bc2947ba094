//! `GET /metrics` in-process (SPEC §11): what the pipeline counts, the request histograms by
//! route template, the levels read from the store (and not read again within the cache), the
//! optional token, both exposition formats, and metrics off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use gp4u_proto::paths;
use gp4u_server::build_router;
use gp4u_server::metrics::Metrics;
use gp4u_store::Engine;
use http_body_util::BodyExt;
use serde_json::json;
use support::*;
use tower::ServiceExt;

const TOKEN: &str = "metrics-token-0123456789abcdef";

async fn get(router: &Router, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::builder().method(Method::GET).uri("/metrics");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
}

async fn scrape(app: &TestApp) -> String {
    let (status, _, text) = get(&app.router, &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    text
}

async fn the_pipeline_is_counted_where_it_happens(app: TestApp) {
    // (No scrape before: it would cache the levels for the next 2 s.)
    let run = picked_up(&app, any_gpu_body()).await;
    stake(&app, &run.node, 100.0).await;
    let reply = send(&app, &run, json!({})).await;
    assert_eq!(reply.body["kill_job"], false, "{:?}", reply.body);
    let reply = send(
        &app,
        &run,
        json!({"inferred_pattern": "CRYPTO_MINING", "foreign_gpu_processes": 2}),
    )
    .await;
    assert_eq!(reply.body["reason"], "CRYPTO_MINING_DURING_ML_JOB");
    assert_eq!(reply.body["status"], "PENDING", "retried elsewhere");
    // A request without a token, timed under its route as 4xx.
    let refused = app.call(Method::GET, paths::JOBS, None, None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // And one that matches no route: not timed, its path not a label.
    let unknown = app
        .call(Method::GET, "/no/such/route-xyz", None, None)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let text = scrape(&app).await;
    let timed = |route: &str, method: &str, status: &str| {
        format!(
            "gp4u_http_request_duration_seconds_count{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
        )
    };
    for (series, expected) in [
        ("gp4u_job_submissions_total", 1.0),
        ("gp4u_placements_total", 1.0),
        ("gp4u_telemetry_packets_ingested_total", 2.0),
        (
            "gp4u_anomalies_total{rule=\"CRYPTO_MINING_DURING_ML_JOB\"}",
            1.0,
        ),
        (
            "gp4u_kills_total{reason=\"CRYPTO_MINING_DURING_ML_JOB\"}",
            1.0,
        ),
        ("gp4u_kill_order_duration_seconds_count", 1.0),
        (
            "gp4u_slashes_total{kind=\"CRYPTO_MINING_DURING_ML_JOB\"}",
            1.0,
        ),
        // The levels, read from the store at this scrape.
        ("gp4u_jobs{status=\"PENDING\"}", 1.0),
        ("gp4u_jobs{status=\"RUNNING\"}", 0.0),
        ("gp4u_jobs{status=\"COMPLETE\"}", 0.0),
        (timed(paths::JOBS, "POST", "2xx").as_str(), 1.0),
        (timed(paths::JOBS, "GET", "4xx").as_str(), 1.0),
        (timed(paths::TELEMETRY, "POST", "2xx").as_str(), 2.0),
    ] {
        assert_eq!(sample(&text, series), Some(expected), "{series} in\n{text}");
    }
    // Routes by template: no job or node id, and no unmatched path, is a label value.
    assert!(!text.contains(&run.job) && !text.contains(&run.node.node_id));
    assert!(!text.contains("route-xyz"));
    // Each chamber's lag and the ledger are there (their values move with the background
    // loops, which this in-process app does not run).
    for chamber in ["mnemo", "aetherion", "outerim", "energy"] {
        let series = format!("gp4u_outbox_lag_events{{chamber=\"{chamber}\"}}");
        assert!(
            sample(&text, &series).is_some_and(|lag| lag >= 0.0),
            "{series} in\n{text}"
        );
    }
    assert!(sample(&text, "gp4u_ledger_entries").is_some());
    let pool = app.store().pool_stats();
    assert_eq!(
        sample(&text, "gp4u_db_pool_max_connections"),
        Some(f64::from(pool.max))
    );
    assert!(sample(&text, "gp4u_db_pool_connections{state=\"idle\"}").is_some());
    // The levels are cached: a second scrape at once does not touch the database.
    let operations = app.store().operations();
    scrape(&app).await;
    assert_eq!(app.store().operations(), operations);
}

on_both_engines!(the_pipeline_is_counted_where_it_happens);

#[tokio::test]
async fn the_token_guards_metrics_when_set_and_only_then() {
    let app = TestApp::new(Engine::Sqlite, "metrics_token").await.unwrap();
    // No token configured: open.
    let (status, _, _) = get(&app.router, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let guarded = build_router(app.state.clone().with_metrics(Metrics::new(Some(TOKEN))));
    let (status, _, body) = get(&guarded, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("TOKEN_MISSING") && body.contains("GP4U_METRICS_TOKEN"));
    let wrong = format!("Bearer {TOKEN}x");
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    // A platform token, valid for the API, is not the metrics token either.
    let api_token = format!("Bearer {}", app.admin);
    for header in [wrong.as_str(), short.as_str(), api_token.as_str(), TOKEN] {
        let (status, _, body) = get(&guarded, &[("authorization", header)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}: {body}");
        assert!(!body.contains(TOKEN), "the answer shows the token: {body}");
    }
    let right = format!("Bearer {TOKEN}");
    let (status, headers, body) = get(&guarded, &[("authorization", &right)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(sample(&body, "gp4u_job_submissions_total").is_some());
}

#[tokio::test]
async fn prometheus_gets_openmetrics_and_others_the_text_format() {
    let app = TestApp::new(Engine::Sqlite, "metrics_formats")
        .await
        .unwrap();
    // What Prometheus 2.x sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, headers, body) = get(&app.router, &[("accept", accept)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE gp4u_job_submissions counter\n"));
    let (_, headers, body) = get(&app.router, &[("accept", "text/plain")]).await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(!body.contains("# EOF"));
    assert!(body.contains("# TYPE gp4u_job_submissions_total counter\n"));
}

#[tokio::test]
async fn metrics_off_means_no_endpoint() {
    let app = TestApp::new(Engine::Sqlite, "metrics_off").await.unwrap();
    let off = build_router(app.state.clone().with_metrics(Metrics::disabled()));
    let (status, _, body) = get(&off, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The API itself is unchanged.
    let request = Request::builder()
        .uri("/healthz")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        off.clone().oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );
}
