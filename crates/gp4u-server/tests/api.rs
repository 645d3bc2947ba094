//! The HTTP API in-process: stage 0 (tokens, requireAuth, admin gate) and stage 1 (submission).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gp4u_core::ids::GpuId;
use gp4u_core::token::{Claims, TokenSecret, mint};
use gp4u_proto::paths;
use gp4u_store::{Engine, GpuStatus};
use serde_json::json;
use support::*;

async fn sqlite(test: &str) -> TestApp {
    TestApp::new(Engine::Sqlite, test).await.unwrap()
}

#[tokio::test]
async fn bad_tokens_get_401_before_any_database_access() {
    let app = sqlite("bad_tokens").await;
    let exp = app.clock_seconds() + 3600;
    let valid = token_for("usr_admin", 3, exp);
    let (payload, signature) = valid.split_once('.').unwrap();
    let changed_payload = {
        let claims = json!({"sub": "usr_admin", "clr": 5, "trs": 50.0, "exp": exp});
        format!("{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string()))
    };
    let bad_signature = format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
    let expired = token_for("usr_admin", 3, app.clock_seconds());
    let other_key = mint(
        &Claims {
            sub: "usr_admin".into(),
            clr: 3,
            trs: 50.0,
            exp,
        },
        &TokenSecret::new(OTHER_SECRET.to_vec()).unwrap(),
    );
    let huge = format!("{payload}{}.{signature}", "A".repeat(8 * 1024));
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "TOKEN_MISSING"),
        ("garbage", Some("garbage".into()), "TOKEN_MALFORMED"),
        ("bad signature", Some(bad_signature), "TOKEN_BAD_SIGNATURE"),
        (
            "changed payload",
            Some(changed_payload),
            "TOKEN_BAD_SIGNATURE",
        ),
        ("expired", Some(expired), "TOKEN_EXPIRED"),
        ("other key", Some(other_key), "TOKEN_BAD_SIGNATURE"),
        ("8 KiB", Some(huge), "TOKEN_TOO_LONG"),
    ];
    for path in [paths::JOBS, paths::ADMIN_CHAMBERS, paths::GPUS] {
        for (name, token, code) in &cases {
            let before = app.store().operations();
            let reply = app.call(Method::GET, path, token.as_deref(), None).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{name} on {path}: {:?}",
                reply.body
            );
            assert_eq!(reply.code(), *code, "{name} on {path}");
            assert!(
                reply.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert_eq!(
                app.store().operations(),
                before,
                "{name} on {path} touched the database"
            );
        }
    }
    // The same request with the valid token does reach the store.
    let before = app.store().operations();
    assert_eq!(
        app.call(Method::GET, paths::JOBS, Some(&valid), None)
            .await
            .status,
        StatusCode::OK
    );
    assert!(app.store().operations() > before);
}

#[tokio::test]
async fn a_bearer_prefix_is_required() {
    let app = sqlite("bearer_prefix").await;
    let reply = app
        .call_with(
            Method::GET,
            paths::JOBS,
            None,
            None,
            &[("authorization", &format!("Token {}", app.admin))],
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNAUTHORIZED, "TOKEN_MALFORMED")
    );
}

#[tokio::test]
async fn authorization_rules_of_stage_0() {
    let app = sqlite("authorization").await;
    let (customer_id, customer) = app.user("customer", None).await;
    // Customer on an admin route: 403 without touching the database.
    let before = app.store().operations();
    let reply = app
        .call(Method::GET, paths::ADMIN_CHAMBERS, Some(&customer), None)
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "ADMIN_REQUIRED")
    );
    assert_eq!(app.store().operations(), before);
    // A token claiming more clearance than stored.
    let inflated = app.token(&customer_id, 3);
    let reply = app
        .call(Method::GET, paths::ADMIN_CHAMBERS, Some(&inflated), None)
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "CLEARANCE_EXCEEDS_STORED")
    );
    let reply = app
        .call(
            Method::GET,
            paths::JOBS,
            Some(&app.token(&customer_id, 2)),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "CLEARANCE_EXCEEDS_STORED")
    );
    // A valid token for a user that does not exist.
    let reply = app
        .call(
            Method::GET,
            paths::JOBS,
            Some(&app.token("usr_ghost", 1)),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "USER_UNKNOWN")
    );
    // Suspension locks the user out at once, whatever the token says.
    assert_eq!(
        app.call(Method::GET, paths::JOBS, Some(&customer), None)
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .call(
            Method::POST,
            &paths::admin_user_suspend(&customer_id),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["active"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    let reply = app
        .call(Method::GET, paths::JOBS, Some(&customer), None)
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "USER_SUSPENDED")
    );
    app.call(
        Method::POST,
        &paths::admin_user_activate(&customer_id),
        Some(&app.admin),
        None,
    )
    .await;
    assert_eq!(
        app.call(Method::GET, paths::JOBS, Some(&customer), None)
            .await
            .status,
        StatusCode::OK
    );
    // A customer cannot register a node.
    let reply = app
        .call(
            Method::POST,
            paths::PROVIDERS_REGISTER,
            Some(&customer),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "PROVIDER_REQUIRED")
    );
}

#[tokio::test]
async fn x_subject_id_from_the_client_is_replaced() {
    let app = sqlite("subject_header").await;
    let gpu = app.gpu(3.1).await;
    let (_, alice) = app.user("customer", None).await;
    let (bob_id, bob) = app.user("customer", None).await;
    let reply = app
        .call(Method::POST, paths::JOBS, Some(&bob), Some(job_body(&gpu)))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    // Alice claims to be Bob through the header: she still sees only her own (no) jobs.
    let reply = app
        .call_with(
            Method::GET,
            paths::JOBS,
            Some(&alice),
            None,
            &[("x-subject-id", &bob_id)],
        )
        .await;
    assert_eq!(reply.body["jobs"], json!([]));
}

#[tokio::test]
async fn submission_end_to_end_with_server_side_cost() {
    let app = sqlite("submission").await;
    let gpu = app.gpu(3.1).await;
    let (customer_id, customer) = app.user("customer", Some("eu-west-1")).await;
    let mut body = job_body(&gpu);
    body["costEstimate"] = json!(0.01);
    body["cost"] = json!(0);
    body["unknown_field"] = json!({"ignored": true});
    let reply = app
        .call(Method::POST, paths::JOBS, Some(&customer), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "PENDING");
    assert_eq!(reply.body["costEstimate"], json!(12.4));
    assert_eq!(
        reply.body["gpu"],
        json!({"name": "RTX 4090", "region": "us-east-1"})
    );
    let id = reply.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job_"));
    let job = app
        .call(Method::GET, &paths::job(&id), Some(&customer), None)
        .await;
    assert_eq!(job.status, StatusCode::OK);
    for field in [
        "id",
        "name",
        "status",
        "failure_reason",
        "ended_by",
        "costEstimate",
        "gpu",
        "node_id",
        "placement",
        "created_at",
        "started_at",
        "ended_at",
        "exit_code",
        "latest_metrics",
        "anomalies",
        "energy_kwh",
        "carbon_kg",
        "renewable_pct",
    ] {
        assert!(
            job.body.get(field).is_some(),
            "job JSON lacks {field}: {}",
            job.body
        );
    }
    assert_eq!(job.body["owner_id"], customer_id.as_str());
    // The job.created event is in the outbox, written with the row.
    assert_eq!(
        app.store().outbox_unsequenced().await.unwrap(),
        2,
        "node.registered + job.created"
    );
    // Admins see any job; other customers get 404, as for a job that does not exist.
    assert_eq!(
        app.call(Method::GET, &paths::job(&id), Some(&app.admin), None)
            .await
            .status,
        StatusCode::OK
    );
    let (_, other) = app.user("customer", None).await;
    let reply = app
        .call(Method::GET, &paths::job(&id), Some(&other), None)
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
    );
    let reply = app
        .call(
            Method::GET,
            &paths::job("job_doesnotexist"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
    );
    let reply = app
        .call(Method::POST, &paths::job_cancel(&id), Some(&other), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn gpu_lookup_and_requirements() {
    let app = sqlite("gpu_lookup").await;
    let gpu = app.gpu(2.5).await;
    let (_, customer) = app.user("customer", None).await;
    let reply = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(job_body("gpu_unknown")),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "GPU_NOT_FOUND")
    );
    app.store()
        .set_gpu_status(&GpuId::parse(&gpu).unwrap(), GpuStatus::Busy)
        .await
        .unwrap();
    let reply = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(job_body(&gpu)),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "GPU_NOT_AVAILABLE")
    );
    app.store()
        .set_gpu_status(&GpuId::parse(&gpu).unwrap(), GpuStatus::Available)
        .await
        .unwrap();
    // A requirement: the estimate uses the dearest matching GPU; nothing is placed yet.
    app.gpu(4.0).await;
    let mut body = job_body(&gpu);
    body.as_object_mut().unwrap().remove("gpuId");
    body["gpu"] = json!({"model": "rtx 4090", "min_vram_gb": 16});
    let reply = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(body.clone()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(
        (
            reply.body["costEstimate"].clone(),
            reply.body["gpu"].clone()
        ),
        (json!(16.0), json!(null))
    );
    body["gpu"] = json!({"model": "H100"});
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
        (StatusCode::CONFLICT, "NO_MATCHING_GPU")
    );
    body["gpu"] = json!({"model": "H100", "max_price_per_hour": 9.99});
    let reply = app
        .call(Method::POST, paths::JOBS, Some(&customer), Some(body))
        .await;
    assert_eq!(
        (reply.status, reply.body["costEstimate"].clone()),
        (StatusCode::CREATED, json!(39.96))
    );
}

#[tokio::test]
async fn validation_errors_name_their_field_and_change_nothing() {
    let app = sqlite("validation").await;
    let gpu = app.gpu(3.1).await;
    let (_, customer) = app.user("customer", None).await;
    let cases = [
        ("name", json!("   "), "INVALID_NAME"),
        ("expectedDurationHours", json!(0.09), "INVALID_DURATION"),
        ("expectedDurationHours", json!("4"), "INVALID_DURATION"),
        ("workload_type", json!("MINING"), "INVALID_WORKLOAD_TYPE"),
        ("docker_image_sha256", json!("abc"), "INVALID_IMAGE_DIGEST"),
        ("env", json!({"LD_PRELOAD": "/x.so"}), "FORBIDDEN_ENV_KEY"),
        ("env", json!({"lower": "x"}), "INVALID_ENV_KEY"),
        ("gpuId", json!("not-a-gpu"), "INVALID_GPU_ID"),
        // SPEC §10: /dev/shm within the memory cap (16 GB by default), /scratch, network.
        ("shm_gb", json!(17), "INVALID_SHM_SIZE"),
        ("scratch_gb", json!(0), "INVALID_SCRATCH_SIZE"),
        ("network", json!("host"), "INVALID_NETWORK"),
    ];
    for (field, value, code) in cases {
        let mut body = job_body(&gpu);
        body[field] = value;
        let reply = app
            .call(Method::POST, paths::JOBS, Some(&customer), Some(body))
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, code),
            "{field}: {:?}",
            reply.body
        );
        assert!(
            reply.body["error"]["field"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{:?}",
            reply.body
        );
    }
    let reply = app
        .call_with(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some("{not json".into()),
            &[],
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_JSON")
    );
    let reply = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(json!([1, 2])),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_BODY")
    );
    assert_eq!(app.store().count_jobs().await.unwrap(), 0);
}

#[tokio::test]
async fn bodies_over_64_kib_get_413() {
    let app = sqlite("body_limit").await;
    let gpu = app.gpu(3.1).await;
    let (_, customer) = app.user("customer", None).await;
    let mut body = job_body(&gpu);
    body["padding"] = json!("x".repeat(64 * 1024));
    let reply = app
        .call(Method::POST, paths::JOBS, Some(&customer), Some(body))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE")
    );
    let mut body = job_body(&gpu);
    body["padding"] = json!("x".repeat(60 * 1024));
    assert_eq!(
        app.call(Method::POST, paths::JOBS, Some(&customer), Some(body))
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn rate_limit_30_per_rolling_minute_with_an_injected_clock() {
    let app = sqlite("rate_limit").await;
    let gpu = app.gpu(3.1).await;
    let (_, customer) = app.user("customer", None).await;
    for attempt in 0..30 {
        // Invalid submissions count too: the limit comes before validation.
        let body = if attempt % 2 == 0 {
            job_body(&gpu)
        } else {
            json!({"name": ""})
        };
        let reply = app
            .call(Method::POST, paths::JOBS, Some(&customer), Some(body))
            .await;
        assert_ne!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "attempt {attempt}"
        );
        app.clock.advance_ms(1000);
    }
    let reply = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(job_body(&gpu)),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
    );
    assert_eq!(reply.headers["retry-after"], "30");
    // Another customer is unaffected.
    let (_, other) = app.user("customer", None).await;
    assert_eq!(
        app.call(
            Method::POST,
            paths::JOBS,
            Some(&other),
            Some(job_body(&gpu))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    // A minute after the first attempt, one slot is free again.
    app.clock.advance_ms(30_000);
    assert_eq!(
        app.call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(job_body(&gpu))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(job_body(&gpu))
        )
        .await
        .status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn two_instances_share_the_rate_limit(app: TestApp) {
    let replica = app.replica().await;
    let gpu = app.gpu(3.1).await;
    let (_, customer) = app.user("customer", None).await;
    for attempt in 0..30 {
        let instance = if attempt % 2 == 0 { &app } else { &replica };
        assert_eq!(
            instance
                .call(
                    Method::POST,
                    paths::JOBS,
                    Some(&customer),
                    Some(job_body(&gpu))
                )
                .await
                .status,
            StatusCode::CREATED
        );
    }
    for instance in [&app, &replica] {
        let reply = instance
            .call(
                Method::POST,
                paths::JOBS,
                Some(&customer),
                Some(job_body(&gpu)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    }
}

async fn idempotency_key_replays_once_even_when_racing(app: TestApp) {
    let gpu = app.gpu(3.1).await;
    let (_, customer) = app.user("customer", None).await;
    let key = [("idempotency-key", "retry-me-1")];
    let body = job_body(&gpu).to_string();
    let first = app
        .call_with(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(body.clone()),
            &key,
        )
        .await;
    let second = app
        .call_with(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first.body, second.body);
    assert_eq!(app.store().count_jobs().await.unwrap(), 1);
    // The same key with another body is refused, not replayed.
    let mut other = job_body(&gpu);
    other["name"] = json!("another job");
    let reply = app
        .call_with(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(other.to_string()),
            &key,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
    );
    // Racing requests with a fresh key, through two instances: one job, one answer.
    let replica = app.replica().await;
    let race_key = [("idempotency-key", "race-1")];
    let requests = (0..6).map(|n| {
        let instance = if n % 2 == 0 { &app } else { &replica };
        instance.call_with(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(body.clone()),
            &race_key,
        )
    });
    let replies = futures::future::join_all(requests).await;
    let ids: std::collections::BTreeSet<_> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
            reply.body["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.store().count_jobs().await.unwrap(), 2);
    // 24 hours later the key is forgotten.
    app.clock.advance_ms(24 * 3_600_000 + 1);
    let later = app
        .call_with(Method::POST, paths::JOBS, Some(&customer), Some(body), &key)
        .await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert_ne!(later.body["id"], first.body["id"]);
}

#[tokio::test]
async fn idempotency_key_must_be_sane() {
    let app = sqlite("idempotency_header").await;
    let (_, customer) = app.user("customer", None).await;
    let long = "k".repeat(256);
    let reply = app
        .call_with(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some("{}".into()),
            &[("idempotency-key", &long)],
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_IDEMPOTENCY_KEY")
    );
}

async fn cancel_moves_to_cancelled_once(app: TestApp) {
    let gpu = app.gpu(3.1).await;
    let (_, customer) = app.user("customer", None).await;
    let id = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&customer),
            Some(job_body(&gpu)),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = app
        .call(Method::POST, &paths::job_cancel(&id), Some(&customer), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        (
            reply.body["status"].as_str(),
            reply.body["failure_reason"].as_str(),
            reply.body["ended_by"].as_str()
        ),
        (
            Some("CANCELLED"),
            Some("CANCELLED_BY_CUSTOMER"),
            Some("customer")
        )
    );
    assert!(reply.body["ended_at"].is_string());
    let again = app
        .call(Method::POST, &paths::job_cancel(&id), Some(&customer), None)
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "JOB_ALREADY_TERMINAL")
    );
    let events = app.store().sequence_outbox(100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        ["node.registered", "job.created", "job.cancelled"]
    );
}

/// SPEC §11: an admin issues tokens without shell access to the secret; the token carries the
/// user's stored clearance and works at once; bounds and refusals say what to do.
async fn admins_issue_tokens_at_the_users_clearance(app: TestApp) {
    let (customer_id, _) = app.user("customer", None).await;
    let path = paths::admin_user_tokens(&customer_id);
    let reply = app
        .call(
            Method::POST,
            &path,
            Some(&app.admin),
            Some(json!({"ttl_s": 3600})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let token = reply.body["token"].as_str().unwrap().to_string();
    let expires = time::OffsetDateTime::parse(
        reply.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    assert_eq!(expires, app.clock_seconds() + 3600);
    let claims = gp4u_core::token::verify(&token, &keys(), app.clock_seconds()).unwrap();
    assert_eq!((claims.sub.as_str(), claims.clr), (customer_id.as_str(), 1));
    let mine = app.call(Method::GET, paths::JOBS, Some(&token), None).await;
    assert_eq!(mine.status, StatusCode::OK, "{:?}", mine.body);
    // No body: 30 days.
    let reply = app.call(Method::POST, &path, Some(&app.admin), None).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let claims = gp4u_core::token::verify(
        reply.body["token"].as_str().unwrap(),
        &keys(),
        app.clock_seconds(),
    )
    .unwrap();
    assert_eq!(claims.exp, app.clock_seconds() + 30 * 24 * 3600);
    for (ttl, code) in [
        (json!(59), "INVALID_TYPE"),
        (json!(366 * 24 * 3600), "INVALID_TYPE"),
        (json!("1h"), "INVALID_TYPE"),
    ] {
        let reply = app
            .call(
                Method::POST,
                &path,
                Some(&app.admin),
                Some(json!({"ttl_s": ttl})),
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, code),
            "{ttl}"
        );
        assert_eq!(reply.body["error"]["field"], "ttl_s");
    }
    let reply = app
        .call(
            Method::POST,
            &paths::admin_user_tokens("usr_nobody"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // Only admins; and not for a suspended user.
    let reply = app.call(Method::POST, &path, Some(&token), None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let suspended = app
        .call(
            Method::POST,
            &paths::admin_user_suspend(&customer_id),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(suspended.status, StatusCode::OK);
    let reply = app.call(Method::POST, &path, Some(&app.admin), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "USER_SUSPENDED")
    );
}

on_both_engines!(
    admins_issue_tokens_at_the_users_clearance,
    two_instances_share_the_rate_limit,
    idempotency_key_replays_once_even_when_racing,
    cancel_moves_to_cancelled_once
);

#[tokio::test]
async fn credits_and_user_admin() {
    let app = sqlite("credits").await;
    let (id, _) = app.user("customer", None).await;
    let reply = app
        .call(
            Method::POST,
            &paths::admin_user_credits(&id),
            Some(&app.admin),
            Some(json!({"amount": 100.0})),
        )
        .await;
    // The fixture gave the user 100 000 to start with.
    assert_eq!(
        (reply.status, reply.body["credit"].clone()),
        (StatusCode::OK, json!(100100.0))
    );
    let reply = app
        .call(
            Method::POST,
            &paths::admin_user_credits(&id),
            Some(&app.admin),
            Some(json!({"amount": -100100.01})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "CREDIT_BELOW_ZERO")
    );
    let reply = app
        .call(
            Method::POST,
            &paths::admin_user_credits("usr_nobody"),
            Some(&app.admin),
            Some(json!({"amount": 1})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "USER_NOT_FOUND")
    );
    let reply = app
        .call(
            Method::POST,
            paths::ADMIN_USERS,
            Some(&app.admin),
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_ROLE")
    );
}

/// A path with its parameters unnamed: `/api/providers/{nodeId}` and `/api/providers/{node_id}`
/// are the same route.
fn route_shape(path: &str) -> String {
    let mut shape = String::new();
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_parameter = true;
                shape.push_str("{}");
            }
            '}' => in_parameter = false,
            _ if in_parameter => {}
            _ => shape.push(c),
        }
    }
    shape
}

/// The document and the router list the same routes: a handler added without its `#[utoipa::path]`
/// (or documented but never routed) fails here.
#[test]
fn openapi_documents_exactly_the_routed_api() {
    use std::collections::BTreeSet;
    use utoipa::OpenApi as _;
    let document = serde_json::to_value(gp4u_server::openapi::ApiDoc::openapi()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                documented.insert((method.to_uppercase(), route_shape(path)));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = gp4u_server::route_table::api_routes()
        .into_iter()
        .map(|(method, path)| (method.to_string(), route_shape(path)))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in the OpenAPI document: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
    assert!(routed.len() >= 40, "{} routes", routed.len());
}

/// The closed wire enums are closed in the document too: a client generated from it gets the
/// exact values the server sends (SPEC §4 states, §5 failure reasons, roles, GPU and node
/// states), not a free string.
#[test]
fn openapi_states_and_reasons_are_closed_enums() {
    use utoipa::OpenApi as _;
    let document = serde_json::to_value(gp4u_server::openapi::ApiDoc::openapi()).unwrap();
    let schemas = &document["components"]["schemas"];
    let values = |name: &str| -> Vec<String> {
        let list = schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is not an enum schema: {}", schemas[name]));
        list.iter()
            .map(|value| value.as_str().unwrap().to_string())
            .collect()
    };
    let expected: [(&str, Vec<&str>); 8] = [
        (
            "JobStatus",
            gp4u_core::JobStatus::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "FailureReason",
            gp4u_core::FailureReason::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "EndedBy",
            gp4u_core::EndedBy::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "WorkloadType",
            gp4u_core::WorkloadType::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "JobNetwork",
            gp4u_core::JobNetwork::ALL.map(|v| v.as_str()).to_vec(),
        ),
        ("Role", gp4u_core::Role::ALL.map(|v| v.as_str()).to_vec()),
        (
            "GpuStatus",
            gp4u_core::GpuStatus::ALL.map(|v| v.as_str()).to_vec(),
        ),
        (
            "NodeStatus",
            gp4u_core::NodeStatus::ALL.map(|v| v.as_str()).to_vec(),
        ),
    ];
    for (name, wire) in expected {
        assert_eq!(values(name), wire, "{name}");
    }
    assert_eq!(
        values("SettlementOutcome"),
        [
            "completed",
            "failed_customer_fault",
            "failed_provider_fault",
            "never_ran"
        ]
    );
    // And the views use them.
    let job = &schemas["JobView"]["properties"];
    for (field, schema) in [
        ("status", "JobStatus"),
        ("workload_type", "WorkloadType"),
        ("network", "JobNetwork"),
    ] {
        assert_eq!(
            job[field]["$ref"],
            format!("#/components/schemas/{schema}"),
            "JobView.{field}: {}",
            job[field]
        );
    }
    assert!(
        job["failure_reason"].to_string().contains("FailureReason"),
        "{}",
        job["failure_reason"]
    );
    assert_eq!(
        schemas["UserView"]["properties"]["role"]["$ref"],
        "#/components/schemas/Role"
    );
    assert_eq!(
        schemas["GpuView"]["properties"]["status"]["$ref"],
        "#/components/schemas/GpuStatus"
    );
}

/// The answers that used to be built by hand are documented by their types: the energy
/// report, a job's telemetry series, the telemetry batch answer and its items, the Veritas
/// record, and what a job view holds of its telemetry.
#[test]
fn openapi_names_the_typed_answers() {
    use utoipa::OpenApi as _;
    let document = serde_json::to_value(gp4u_server::openapi::ApiDoc::openapi()).unwrap();
    let schemas = &document["components"]["schemas"];
    let reference = |name: &str| json!(format!("#/components/schemas/{name}"));
    let answer = |path: &str, method: &str, content: &str| {
        document["paths"][path][method]["responses"]["200"]["content"][content]["schema"].clone()
    };
    assert_eq!(
        answer(paths::ENERGY, "get", "application/json")["$ref"],
        reference("EnergyReport")
    );
    assert_eq!(
        answer(paths::JOB_TELEMETRY, "get", "application/json")["$ref"],
        reference("TelemetrySeries")
    );
    assert_eq!(
        answer(paths::JOB_VERITAS, "get", "application/json")["$ref"],
        reference("VeritasRecord")
    );
    for (path, other) in [
        (paths::ENERGY, "image/svg+xml"),
        (paths::JOB_TELEMETRY, "image/svg+xml"),
        (paths::JOB_TELEMETRY, "text/event-stream"),
        (paths::JOB_LOGS, "text/event-stream"),
    ] {
        assert!(
            document["paths"][path]["get"]["responses"]["200"]["content"]
                .get(other)
                .is_some(),
            "{path} {other}: {}",
            document["paths"][path]["get"]["responses"]["200"]
        );
    }
    // One packet gets a reply; an array of packets an array of items, each a reply or a refusal.
    assert_eq!(
        answer(paths::TELEMETRY, "post", "application/json")["$ref"],
        reference("TelemetryAnswer")
    );
    let one_of = |name: &str| schemas[name]["oneOf"].as_array().unwrap().clone();
    let answers = one_of("TelemetryAnswer");
    assert!(
        answers.contains(
            &json!({"type": "array", "items": {"$ref": reference("TelemetryBatchItem")}})
        ),
        "{answers:?}"
    );
    assert!(
        answers.contains(&json!({"$ref": reference("TelemetryReply")})),
        "{answers:?}"
    );
    let items = one_of("TelemetryBatchItem");
    assert!(
        items.contains(&json!({"$ref": reference("TelemetryReply")})),
        "{items:?}"
    );
    let refused = items
        .iter()
        .find(|item| item["properties"].get("error").is_some())
        .unwrap_or_else(|| panic!("no refusal among {items:?}"));
    assert_eq!(
        refused["properties"]["error"]["$ref"],
        reference("RefusedPacket")
    );
    assert_eq!(refused["required"], json!(["status", "error"]));
    assert!(
        schemas["RefusedPacket"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("field")),
        "`field` is always sent: {}",
        schemas["RefusedPacket"]
    );
    // The series' samples, the energy scopes and rows, and the job view's telemetry.
    assert_eq!(
        schemas["TelemetrySeries"]["properties"]["samples"]["items"]["$ref"],
        reference("TelemetrySampleView")
    );
    assert_eq!(
        schemas["EnergyScope"]["enum"],
        json!(["customer", "provider", "platform"])
    );
    assert_eq!(
        schemas["EnergyReport"]["properties"]["scope"]["$ref"],
        reference("EnergyScope")
    );
    assert_eq!(
        schemas["EnergyReport"]["properties"]["total"]["$ref"],
        reference("CarbonTotals")
    );
    for row in ["RegionEnergy", "NodeEnergy"] {
        assert!(
            schemas[row]
                .to_string()
                .contains("#/components/schemas/CarbonTotals"),
            "{row}: {}",
            schemas[row]
        );
    }
    assert!(
        schemas["RegionEnergy"]["allOf"][1]["properties"]["grid_factor"]
            .to_string()
            .contains("#/components/schemas/GridFactorUsed"),
        "{}",
        schemas["RegionEnergy"]
    );
    assert_eq!(
        schemas["CarbonTotals"]["required"].as_array().map(Vec::len),
        Some(7),
        "every total is always sent: {}",
        schemas["CarbonTotals"]
    );
    let job = &schemas["JobView"]["properties"];
    assert!(
        job["latest_metrics"]
            .to_string()
            .contains("#/components/schemas/LatestMetrics"),
        "{}",
        job["latest_metrics"]
    );
    assert_eq!(
        job["anomalies"]["items"]["$ref"],
        reference("AnomalySummary")
    );
    // The event-stream payloads are in the document too.
    for name in ["TelemetryStreamEnd", "LogStreamEnd"] {
        assert!(schemas.get(name).is_some(), "OpenAPI lacks {name}");
    }
}

#[tokio::test]
async fn openapi_health_and_unknown_routes() {
    let app = sqlite("openapi").await;
    let reply = app.call(Method::GET, paths::OPENAPI, None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.body["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        reply.body["openapi"]
    );
    for path in [
        paths::JOBS,
        paths::JOB,
        paths::JOB_CANCEL,
        paths::PROVIDERS_REGISTER,
        paths::GPUS,
        paths::ADMIN_USERS,
        paths::ADMIN_USER_SUSPEND,
        paths::ADMIN_USER_CREDITS,
        paths::ADMIN_CHAMBERS,
        paths::ARTIFACTS,
        paths::JOB_OUTPUTS,
        paths::JOB_LOGS,
        paths::AGENT_JOB_INPUT,
        paths::AGENT_JOB_OUTPUTS,
        paths::AGENT_JOB_LOGS,
        paths::JOB_SETTLEMENT,
        paths::BALANCE,
        paths::PROVIDER_PROOFS,
        paths::JOB_PROOFS,
        paths::LEDGER_CHECKPOINT,
        paths::LEDGER_PUBLIC_KEY,
        paths::LEDGER_ENTRIES,
        paths::LEDGER_INCLUSION,
        paths::LEDGER_CONSISTENCY,
        paths::JOB_LEDGER,
        paths::PROVIDER_POWER_LIMITS,
    ] {
        // The document names a node's id `{nodeId}` where the router's template says
        // `{node_id}`; otherwise its keys are the templates themselves.
        let documented = path.replace("{node_id}", "{nodeId}");
        assert!(
            reply.body["paths"].get(&documented).is_some(),
            "OpenAPI lacks {documented}"
        );
    }
    for schema in [
        "JobAccepted",
        "ArtifactCreated",
        "OutputStored",
        "LogAppended",
        "PowerLimitsBody",
    ] {
        assert!(
            reply.body["components"]["schemas"].get(schema).is_some(),
            "OpenAPI lacks {schema}"
        );
    }
    // Every GPU carries its power limit: required at registration, shown in the listings.
    let schemas = &reply.body["components"]["schemas"];
    let required = schemas["RegisterGpuBody"]["required"].as_array().unwrap();
    assert!(
        required.contains(&json!("power_limit_watts")),
        "{}",
        schemas["RegisterGpuBody"]
    );
    for view in ["GpuView", "RegisteredGpuView"] {
        assert!(
            schemas[view]["properties"]
                .get("power_limit_watts")
                .is_some(),
            "{view}: {}",
            schemas[view]
        );
    }
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );
    let ready = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (ready.status, ready.body["engine"].as_str()),
        (StatusCode::OK, Some("sqlite"))
    );
    let reply = app.call(Method::GET, "/nope", None, None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "NOT_FOUND")
    );
    // Not a route: health lives at `/healthz`, outside `/api`.
    let reply = app
        .call(Method::GET, "/api/healthz", Some(&app.admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.headers.contains_key("x-request-id"));
}

/// Every JSON request body the document describes is a named schema of `gp4u-proto` (what the
/// client sends), not a bare object: the posture route and the registration's `posture` were
/// once undocumented (`request_body = Object`, no `posture` in `RegisterBody`).
#[test]
fn openapi_request_bodies_are_named_types() {
    use utoipa::OpenApi as _;
    let document = serde_json::to_value(gp4u_server::openapi::ApiDoc::openapi()).unwrap();
    let mut bare = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                continue;
            }
            let named = schema.get("$ref").is_some()
                || schema["items"].get("$ref").is_some()
                || schema["oneOf"].as_array().is_some_and(|choices| {
                    choices.iter().all(|choice| {
                        choice.get("$ref").is_some() || choice["items"].get("$ref").is_some()
                    })
                });
            if !named {
                bare.push(format!("{method} {path}: {schema}"));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "request bodies without a named schema: {bare:#?}"
    );
    let schemas = &document["components"]["schemas"];
    assert!(
        schemas["RegisterBody"]["properties"]["posture"].is_object(),
        "{}",
        schemas["RegisterBody"]
    );
    assert!(schemas["HostPosture"]["properties"]["egress_filter"].is_object());
    assert!(schemas["RenewableBody"]["properties"]["renewable_pct"].is_object());
}

/// The paths callers build (`gp4u_proto::paths`) are exactly the paths the server routes: a
/// route added, renamed or dropped on one side only fails here.
#[test]
fn callers_build_exactly_the_routed_paths() {
    use std::collections::BTreeSet;
    let routed: BTreeSet<&str> = gp4u_server::route_table::api_routes()
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    let spelled: BTreeSet<&str> = gp4u_proto::paths::ALL.iter().copied().collect();
    assert_eq!(
        gp4u_proto::paths::ALL.len(),
        spelled.len(),
        "a path is spelled twice"
    );
    assert_eq!(
        routed.difference(&spelled).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "routed but not in gp4u_proto::paths"
    );
    assert_eq!(
        spelled.difference(&routed).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "in gp4u_proto::paths but not routed"
    );
}
