//! Job inputs, outputs and logs on the control plane: artifacts are uploaded with their
//! SHA-256 and only their owner may use them; only the job's node downloads them; outputs
//! round-trip with their hash; logs append under a cap and stream as server-sent events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use gp4u_core::atlas::AtlasConfig;
use gp4u_proto::paths;
use gp4u_server::placement::place_pending;
use gp4u_server::state::Limits;
use gp4u_store::Engine;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

async fn sqlite(test: &str) -> TestApp {
    TestApp::new(Engine::Sqlite, test).await.unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Uploads an artifact; returns its id.
async fn upload(app: &TestApp, token: &str, bytes: &[u8]) -> String {
    let (status, _, body) = app
        .raw(
            Method::POST,
            paths::ARTIFACTS,
            Some(token),
            bytes.to_vec(),
            &[],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let created: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(created["sha256"], sha256_hex(bytes));
    assert_eq!(created["size_bytes"], bytes.len());
    created["id"].as_str().unwrap().to_string()
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

/// A job of `customer` on `node`'s GPU with `inputs`, placed, picked up and RUNNING.
async fn running_job(
    app: &TestApp,
    node: &Node,
    customer: &str,
    inputs: &[&str],
) -> (String, Value) {
    let mut body = job_body(&node.gpus[0]);
    body["inputs"] = json!(inputs);
    let job = app.submit(customer, body).await;
    place_pending(&app.state, &AtlasConfig::default())
        .await
        .unwrap();
    let poll = format!(
        "{}?node_id={}&wait=1",
        paths::AGENT_ASSIGNMENTS,
        node.node_id
    );
    let reply = app.call(Method::GET, &poll, Some(&node.token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["job_id"], job.as_str());
    report(app, node, &job, json!({"status": "running"})).await;
    (job, reply.body)
}

async fn report(app: &TestApp, node: &Node, job: &str, mut body: Value) -> Value {
    body["node_id"] = json!(node.node_id);
    let reply = app
        .call(
            Method::POST,
            &paths::agent_job_status(job),
            Some(&node.token),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

#[tokio::test]
async fn artifacts_are_stored_with_their_hash_and_only_their_owner_uses_them() {
    let app = sqlite("artifacts_owner").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let (_, alice) = app.user("customer", None).await;
    let (_, bob) = app.user("customer", None).await;
    // Larger than the 64 KiB JSON body limit: uploads have a cap of their own.
    let big: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
    let art = upload(&app, &alice, &big).await;
    let stored: Vec<String> = files_under(app.blob_dir.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(
        stored[0].ends_with(&format!("artifacts/{art}")),
        "{stored:?}"
    );
    assert_eq!(std::fs::read(&stored[0]).unwrap(), big);
    // An empty artifact is an artifact too.
    upload(&app, &alice, b"").await;

    let (status, _, _) = app
        .raw(Method::POST, paths::ARTIFACTS, None, b"x".to_vec(), &[])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bob cannot run a job on Alice's artifact; nor on one that does not exist; nor twice.
    let mut body = job_body(&node.gpus[0]);
    for (inputs, token) in [
        (json!([art]), &bob),
        (json!(["art_doesnotexist"]), &alice),
        (json!([art, art]), &alice),
    ] {
        body["inputs"] = inputs.clone();
        let reply = app
            .call(Method::POST, paths::JOBS, Some(token), Some(body.clone()))
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, "INVALID_INPUTS"),
            "{inputs}: {:?}",
            reply.body
        );
        assert!(
            reply.body["error"]["field"]
                .as_str()
                .unwrap()
                .starts_with("inputs[")
        );
    }
    assert_eq!(app.store().count_jobs().await.unwrap(), 0);
    body["inputs"] = json!([art]);
    let job = app.submit(&alice, body).await;
    assert_eq!(app.job(&job).await["inputs"], json!([art]));

    // Over the cap: 413, whether declared up front or found while streaming; nothing stays.
    let small = app
        .with_limits(Limits {
            max_artifact_bytes: 1000,
            ..Limits::default()
        })
        .await;
    let before = files_under(app.blob_dir.path()).len();
    let (status, _, body) = small
        .raw(
            Method::POST,
            paths::ARTIFACTS,
            Some(&alice),
            vec![7; 1001],
            &[],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = small
        .raw(
            Method::POST,
            paths::ARTIFACTS,
            Some(&alice),
            vec![7; 1001],
            &[("content-length", "1001")],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        files_under(app.blob_dir.path()).len(),
        before,
        "aborted uploads leave nothing"
    );
    upload(&small, &alice, &[7; 1000]).await;
}

#[tokio::test]
async fn only_the_jobs_node_downloads_its_inputs_and_the_manifest_has_their_hashes() {
    let app = sqlite("agent_inputs").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let other = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let data = b"weights v1\n".to_vec();
    let art = upload(&app, &customer, &data).await;
    let unlisted = upload(&app, &customer, b"not for this job").await;
    let (job, manifest) = running_job(&app, &node, &customer, &[&art]).await;
    assert_eq!(manifest["inputs"], json!([art]));
    assert_eq!(manifest["input_sha256"][&art], sha256_hex(&data));

    let path = |art: &str, node_id: &str| {
        format!("{}?node_id={node_id}", paths::agent_job_input(&job, art))
    };
    let (status, headers, body) = app
        .raw(
            Method::GET,
            &path(&art, &node.node_id),
            Some(&node.token),
            vec![],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);
    assert_eq!(headers["x-gp4u-sha256"], sha256_hex(&data).as_str());

    for (token, node_id, art, expected) in [
        (&other.token, &other.node_id, &art, "JOB_NOT_FOUND"),
        (&other.token, &node.node_id, &art, "NODE_NOT_FOUND"),
        (&node.token, &node.node_id, &unlisted, "ARTIFACT_NOT_FOUND"),
    ] {
        let reply = app
            .call(Method::GET, &path(art, node_id), Some(token), None)
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::NOT_FOUND, expected),
            "{:?}",
            reply.body
        );
    }
    let reply = app
        .call(
            Method::GET,
            &path(&art, &node.node_id),
            Some(&customer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // A job that has ended has no inputs to fetch.
    report(
        &app,
        &node,
        &job,
        json!({"status": "failed", "reason": "INPUT_FAILED"}),
    )
    .await;
    let view = app.job(&job).await;
    assert_eq!(
        (view["failure_reason"].as_str(), view["ended_by"].as_str()),
        (Some("INPUT_FAILED"), Some("platform"))
    );
    let reply = app
        .call(
            Method::GET,
            &path(&art, &node.node_id),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "JOB_ALREADY_TERMINAL")
    );
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn untar(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in reader.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.push((name, data));
    }
    entries
}

#[tokio::test]
async fn outputs_round_trip_with_their_hash() {
    let app = sqlite("outputs").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let other = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let (_, stranger) = app.user("customer", None).await;
    let (job, _) = running_job(&app, &node, &customer, &[]).await;
    let outputs = paths::job_outputs(&job);
    let reply = app.call(Method::GET, &outputs, Some(&customer), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "OUTPUT_NOT_FOUND")
    );

    let archive = tar_gz(&[("result.txt", b"accuracy 0.97\n")]);
    let sha = sha256_hex(&archive);
    let put = |node_id: &str| format!("{}?node_id={node_id}", paths::agent_job_outputs(&job));
    let wrong = "0".repeat(64);
    let cases = [
        (
            &node,
            vec![("x-gp4u-sha256", wrong.as_str())],
            StatusCode::BAD_REQUEST,
            "SHA256_MISMATCH",
        ),
        (&node, vec![], StatusCode::BAD_REQUEST, "INVALID_SHA256"),
        (
            &node,
            vec![("x-gp4u-sha256", "abc")],
            StatusCode::BAD_REQUEST,
            "INVALID_SHA256",
        ),
        (
            &other,
            vec![("x-gp4u-sha256", sha.as_str())],
            StatusCode::NOT_FOUND,
            "JOB_NOT_FOUND",
        ),
    ];
    for (who, headers, status, code) in cases {
        let (got, _, body) = app
            .raw(
                Method::PUT,
                &put(&who.node_id),
                Some(&who.token),
                archive.clone(),
                &headers,
            )
            .await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let reply = app.call(Method::GET, &outputs, Some(&customer), None).await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "a refused upload stores nothing"
    );

    let (status, _, body) = app
        .raw(
            Method::PUT,
            &put(&node.node_id),
            Some(&node.token),
            archive.clone(),
            &[("x-gp4u-sha256", &format!("sha256:{}", sha.to_uppercase()))],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let stored: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (stored["sha256"].as_str(), stored["size_bytes"].as_u64()),
        (Some(sha.as_str()), Some(archive.len() as u64))
    );

    for token in [&customer, &app.admin] {
        let (status, headers, body) = app
            .raw(Method::GET, &outputs, Some(token), vec![], &[])
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/gzip");
        assert_eq!(headers["x-gp4u-sha256"], sha.as_str());
        assert_eq!(sha256_hex(&body), sha);
        assert_eq!(
            untar(&body),
            vec![("result.txt".to_string(), b"accuracy 0.97\n".to_vec())]
        );
    }
    let reply = app.call(Method::GET, &outputs, Some(&stranger), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
    );
    let view = app.job(&job).await;
    assert_eq!(
        (
            view["output_sha256"].as_str(),
            view["output_bytes"].as_u64()
        ),
        (Some(sha.as_str()), Some(archive.len() as u64))
    );

    // Over the cap: 413, and the stored output is untouched.
    let small = app
        .with_limits(Limits {
            max_output_bytes: 10,
            ..Limits::default()
        })
        .await;
    let (status, _, _) = small
        .raw(
            Method::PUT,
            &put(&node.node_id),
            Some(&node.token),
            vec![1; 11],
            &[("x-gp4u-sha256", &sha256_hex(&[1; 11]))],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // A second upload replaces the first.
    let second = tar_gz(&[
        ("result.txt", b"accuracy 0.98\n"),
        ("model.bin", &[0, 1, 2]),
    ]);
    let (status, _, _) = app
        .raw(
            Method::PUT,
            &put(&node.node_id),
            Some(&node.token),
            second.clone(),
            &[("x-gp4u-sha256", &sha256_hex(&second))],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, headers, body) = app
        .raw(Method::GET, &outputs, Some(&customer), vec![], &[])
        .await;
    assert_eq!(
        (body.clone(), headers["x-gp4u-sha256"].to_str().unwrap()),
        (second.clone(), sha256_hex(&second).as_str())
    );
    assert_eq!(untar(&body).len(), 2);

    // Once the job has ended, its outputs are final.
    report(
        &app,
        &node,
        &job,
        json!({"status": "exited", "exit_code": 0}),
    )
    .await;
    let (status, _, _) = app
        .raw(
            Method::PUT,
            &put(&node.node_id),
            Some(&node.token),
            archive.clone(),
            &[("x-gp4u-sha256", &sha)],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, _, body) = app
        .raw(Method::GET, &outputs, Some(&customer), vec![], &[])
        .await;
    assert_eq!(body, second);
}

#[tokio::test]
async fn logs_append_under_a_cap_with_a_truncation_marker() {
    let app = sqlite("logs_cap").await;
    let app = app
        .with_limits(Limits {
            max_log_bytes: 20,
            ..Limits::default()
        })
        .await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let (_, stranger) = app.user("customer", None).await;
    let (job, _) = running_job(&app, &node, &customer, &[]).await;
    let post = format!("{}?node_id={}", paths::agent_job_logs(&job), node.node_id);
    let logs = paths::job_logs(&job);
    let (status, _, body) = app
        .raw(Method::GET, &logs, Some(&customer), vec![], &[])
        .await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));

    let mut replies = Vec::new();
    for chunk in ["hello\n", "", "world\n", "0123456789", "more\n"] {
        let (status, _, body) = app
            .raw(
                Method::POST,
                &post,
                Some(&node.token),
                chunk.as_bytes().to_vec(),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let reply: Value = serde_json::from_slice(&body).unwrap();
        replies.push((
            reply["accepted_bytes"].as_u64().unwrap(),
            reply["log_bytes"].as_u64().unwrap(),
            reply["truncated"].as_bool().unwrap(),
        ));
    }
    assert_eq!(
        replies,
        vec![
            (6, 6, false),
            (0, 6, false),
            (6, 12, false),
            (8, 20, true),
            (0, 20, true)
        ]
    );
    let (status, headers, body) = app
        .raw(Method::GET, &logs, Some(&customer), vec![], &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "hello\nworld\n01234567\n[gp4u: log truncated at 20 bytes]\n"
    );
    let view = app.job(&job).await;
    assert_eq!(
        (view["log_bytes"].as_u64(), view["log_truncated"].as_bool()),
        (Some(20), Some(true))
    );

    let reply = app.call(Method::GET, &logs, Some(&stranger), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
    );
    let reply = app
        .call(
            Method::GET,
            &format!("{logs}?follow=maybe"),
            Some(&customer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let (status, _, _) = app
        .raw(
            Method::POST,
            &post,
            Some(&node.token),
            vec![b'x'; 1024 * 1024 + 1],
            &[],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "a chunk is at most 1 MiB"
    );
    let (status, _, _) = app
        .raw(
            Method::POST,
            &post.replace(&node.node_id, "node_nope"),
            Some(&node.token),
            b"x".to_vec(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Reads SSE frames until `want` has been seen (or the stream ends); returns all text read.
async fn read_until(body: &mut axum::body::Body, text: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains(want) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 10 s; got {text:?}"));
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Some(Err(error)) => panic!("stream error: {error}"),
            None => panic!("stream ended before {want:?}: {text:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_logs_as_events_and_ends_with_the_job() {
    let app = sqlite("logs_follow").await;
    let node = app.node(1, 3.1, "us-east-1").await;
    let (_, customer) = app.user("customer", None).await;
    let (job, _) = running_job(&app, &node, &customer, &[]).await;
    let post = format!("{}?node_id={}", paths::agent_job_logs(&job), node.node_id);
    let append = |chunk: &'static [u8]| {
        let app = &app;
        let post = post.clone();
        let token = node.token.clone();
        async move {
            let (status, _, _) = app
                .raw(Method::POST, &post, Some(&token), chunk.to_vec(), &[])
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    append(b"epoch 1 loss 0.9\n").await;
    // "é" split across two chunks arrives whole.
    append(b"caf\xc3").await;

    let follow = format!("{}?follow=1", paths::job_logs(&job));
    let response = app
        .response(Method::GET, &follow, Some(&customer), &[])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut text = String::new();
    read_until(&mut body, &mut text, "epoch 1 loss 0.9").await;
    assert!(text.contains("event: log"), "{text}");
    assert!(text.contains("id: 0"), "{text}");

    append(b"\xa9\nepoch 2 loss 0.5\n").await;
    read_until(&mut body, &mut text, "epoch 2 loss 0.5").await;
    assert!(text.contains("data: \"caf\""), "{text}");
    assert!(text.contains("data: \"é\\nepoch 2 loss 0.5\\n\""), "{text}");
    assert!(
        !text.contains("event: end"),
        "the job is still running: {text}"
    );

    // The agent's final report ends the job: the stream sends `end` and closes.
    report(
        &app,
        &node,
        &job,
        json!({"status": "exited", "exit_code": 0}),
    )
    .await;
    read_until(&mut body, &mut text, "event: end").await;
    assert!(text.contains("\"status\":\"COMPLETE\""), "{text}");
    let end = text
        .split("\n\n")
        .find(|event| event.contains("event: end"))
        .and_then(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .unwrap();
    let end: Value = serde_json::from_str(end).unwrap();
    assert_eq!(
        field_names(&end),
        ["exit_code", "log_bytes", "status", "truncated"],
        "{end:?}"
    );
    assert_eq!(
        (end["exit_code"].as_i64(), end["truncated"].as_bool()),
        (Some(0), Some(false)),
        "{end:?}"
    );
    let typed: gp4u_proto::LogStreamEnd = serde_json::from_value(end.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), end);
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = String::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                rest.push_str(&String::from_utf8_lossy(&data));
            }
        }
        rest
    })
    .await
    .expect("the stream closes after `end`");
    assert!(!rest.contains("event: log"), "{rest}");

    // Resuming after chunk 1 sends only what came after it, then the end at once.
    let response = app
        .response(
            Method::GET,
            &follow,
            Some(&customer),
            &[("last-event-id", "1")],
        )
        .await;
    let bytes = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("epoch 2") && !text.contains("epoch 1"),
        "{text}"
    );
    assert!(text.contains("event: end"), "{text}");

    // The plain log is the same bytes.
    let (_, _, body) = app
        .raw(
            Method::GET,
            &paths::job_logs(&job),
            Some(&customer),
            vec![],
            &[],
        )
        .await;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "epoch 1 loss 0.9\ncafé\nepoch 2 loss 0.5\n"
    );
}
