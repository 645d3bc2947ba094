//! Visibility challenges on both engines (SPEC §7): every node that runs a job is challenged
//! on its own channel (the job's telemetry replies), with no endpoint to register; an answer
//! must carry the node key's signature over evidence of the job's container that holds, and
//! keeps holding; a node that does not answer while its telemetry keeps arriving, or answers
//! badly, twice in a row, is slashed and ejected; a silent node is the heartbeat's to judge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use axum::http::{Method, StatusCode};
use ed25519_dalek::SigningKey;
use gp4u_attest::visibility::{answer_message, challenge_message, sign_base64, verify_base64};
use gp4u_proto::{VisibilityAnswer, VisibilityChallenge, VisibilityEvidence, paths};
use gp4u_server::visibility::{Verdict, answer_window_ms, round};
use gp4u_store::Engine;
use serde_json::{Value, json};
use support::*;

/// The challenge in a telemetry reply, checked against the platform's key.
fn challenge_in(app: &TestApp, reply: &Reply) -> VisibilityChallenge {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let challenge: VisibilityChallenge = serde_json::from_value(reply.body["challenge"].clone())
        .unwrap_or_else(|error| panic!("no challenge in the reply ({error}): {:?}", reply.body));
    let platform =
        gp4u_attest::key::parse_public_key(&app.state.tutela.platform_public_key()).unwrap();
    assert!(verify_base64(
        &platform,
        &challenge_message(
            &challenge.node_id,
            &challenge.job_id,
            &challenge.nonce,
            challenge.issued_at_ms
        ),
        &challenge.signature
    ));
    challenge
}

/// What an honest agent sees of the job's container.
fn evidence(job: &str, cpu_ns: u64) -> VisibilityEvidence {
    VisibilityEvidence {
        container_id: "c0".repeat(32),
        image: format!("registry.example/org/bert@sha256:{}", "a".repeat(64)),
        env_job_id: Some(job.to_string()),
        init_started_ticks: Some(4242),
        cpu_ns: Some(cpu_ns),
        processes: 3,
    }
}

fn signed(
    key: &SigningKey,
    challenge: &VisibilityChallenge,
    evidence: VisibilityEvidence,
) -> Value {
    let signature = sign_base64(
        key,
        &answer_message(
            &challenge.node_id,
            &challenge.job_id,
            &challenge.nonce,
            challenge.issued_at_ms,
            &evidence.canonical().unwrap(),
        ),
    );
    serde_json::to_value(VisibilityAnswer {
        node_id: challenge.node_id.clone(),
        job_id: challenge.job_id.clone(),
        nonce: challenge.nonce.clone(),
        issued_at_ms: challenge.issued_at_ms,
        evidence,
        signature,
    })
    .unwrap()
}

async fn answer(app: &TestApp, token: &str, body: Value) -> Reply {
    app.call(
        Method::POST,
        paths::AGENT_VISIBILITY,
        Some(token),
        Some(body),
    )
    .await
}

/// Issues a challenge (one round) and returns it from the job's next telemetry reply.
async fn challenged(app: &TestApp, run: &Running) -> VisibilityChallenge {
    round(&app.state).await.unwrap();
    let reply = send(app, run, json!({})).await;
    let challenge = challenge_in(app, &reply);
    assert_eq!(
        (challenge.node_id.as_str(), challenge.job_id.as_str()),
        (run.node.node_id.as_str(), run.job.as_str())
    );
    challenge
}

async fn answers_are_judged_by_their_evidence(app: TestApp) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let node = keyed_node(&app, &key).await;
    stake(&app, &node, 100.0).await;
    let run = running_on(&app, node, pinned()).await;
    let first = send(&app, &run, json!({}));
    assert!(
        first.await.body.get("challenge").is_none(),
        "none issued yet"
    );

    // A true answer passes; answering it again, or for another's node, changes nothing.
    let challenge = challenged(&app, &run).await;
    let reply = answer(
        &app,
        &run.node.token,
        signed(&key, &challenge, evidence(&run.job, 1_000)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["result"], "ANSWERED");
    assert_eq!(
        standing(&app, &run.node.node_id).await["visibility"],
        "ANSWERED"
    );
    let again = answer(
        &app,
        &run.node.token,
        signed(&key, &challenge, evidence(&run.job, 1_000)),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{:?}", again.body);
    let stranger = app.node(1, 3.1, "us-east-1").await;
    let theirs = answer(
        &app,
        &stranger.token,
        signed(&key, &challenge, evidence(&run.job, 1_000)),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    // The answered challenge is gone from the replies.
    assert!(
        send(&app, &run, json!({}))
            .await
            .body
            .get("challenge")
            .is_none()
    );

    // Evidence that does not continue the last answer's is a bad answer: CPU time went back.
    let challenge = challenged(&app, &run).await;
    let reply = answer(
        &app,
        &run.node.token,
        signed(&key, &challenge, evidence(&run.job, 999)),
    )
    .await;
    assert_eq!(reply.body["result"], "BAD_ANSWER", "{:?}", reply.body);
    assert!(
        reply.body["detail"].as_str().unwrap().contains("went back"),
        "{:?}",
        reply.body
    );
    let view = standing(&app, &run.node.node_id).await;
    assert_eq!(
        (view["status"].as_str(), view["slashes"].clone()),
        (Some("ACTIVE"), json!([])),
        "one refusal is not yet a block"
    );

    // A second bad answer in a row (another key signed it): blocked.
    let challenge = challenged(&app, &run).await;
    let intruder = SigningKey::from_bytes(&[9; 32]);
    let reply = answer(
        &app,
        &run.node.token,
        signed(&intruder, &challenge, evidence(&run.job, 5_000)),
    )
    .await;
    assert_eq!(reply.body["result"], "BAD_ANSWER", "{:?}", reply.body);
    let view = standing(&app, &run.node.node_id).await;
    assert_eq!(view["status"], "EJECTED", "{view}");
    assert_eq!(view["slashes"][0]["kind"], "VISIBILITY_BLOCKED");
    assert!(
        view["slashes"][0]["evidence"]
            .as_str()
            .unwrap()
            .contains("not signed with node"),
        "{view}"
    );
    assert_eq!(view["stake"], json!(90.0));
    let job = app.job(&run.job).await;
    assert_eq!(
        (job["status"].as_str(), job["failure_reason"].as_str()),
        (Some("FAILED"), Some("VISIBILITY_BLOCKED"))
    );

    // Each kind of evidence that does not hold is named.
    let other_key = SigningKey::from_bytes(&[8; 32]);
    let other = keyed_node(&app, &other_key).await;
    let run = running_on(&app, other, pinned()).await;
    send(&app, &run, json!({})).await;
    for (what, bad, expected) in [
        (
            "another job's container",
            VisibilityEvidence {
                env_job_id: Some("job_someone_else".into()),
                ..evidence(&run.job, 10)
            },
            "GP4U_JOB_ID",
        ),
        (
            "another image",
            VisibilityEvidence {
                image: format!("registry.example/org/bert@sha256:{}", "b".repeat(64)),
                ..evidence(&run.job, 10)
            },
            "not the job's image",
        ),
    ] {
        let challenge = challenged(&app, &run).await;
        let reply = answer(&app, &run.node.token, signed(&other_key, &challenge, bad)).await;
        assert_eq!(
            reply.body["result"], "BAD_ANSWER",
            "{what}: {:?}",
            reply.body
        );
        assert!(
            reply.body["detail"].as_str().unwrap().contains(expected),
            "{what}: {:?}",
            reply.body
        );
        // Between the two, a true answer: the refusals are not in a row.
        let challenge = challenged(&app, &run).await;
        let reply = answer(
            &app,
            &run.node.token,
            signed(&other_key, &challenge, evidence(&run.job, 20)),
        )
        .await;
        assert_eq!(reply.body["result"], "ANSWERED", "{what}: {:?}", reply.body);
    }
    assert_eq!(standing(&app, &run.node.node_id).await["status"], "ACTIVE");
    // Malformed answers are 400 and change nothing.
    let challenge = challenged(&app, &run).await;
    let mut multiline = signed(&other_key, &challenge, evidence(&run.job, 30));
    multiline["evidence"]["image"] = json!("a\nb");
    let reply = answer(&app, &run.node.token, multiline).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_REPORT")
    );
    let reply = answer(&app, &run.node.token, json!({"nonce": 1})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

async fn unanswered_while_reporting_is_blocking_and_silence_is_not(app: TestApp) {
    // A node that reports but never answers, and one that fell silent.
    let hiding = keyed_node(&app, &SigningKey::from_bytes(&[11; 32])).await;
    stake(&app, &hiding, 100.0).await;
    let mut body = any_gpu_body();
    body["max_retries"] = json!(0);
    let hiding_run = running_on(&app, hiding, body).await;
    send(&app, &hiding_run, json!({})).await;
    let silent = keyed_node(&app, &SigningKey::from_bytes(&[12; 32])).await;
    let silent_run = running_on(&app, silent, pinned()).await;
    send(&app, &silent_run, json!({})).await;
    // No node is left out: neither registered anything to be reached at.
    round(&app.state).await.unwrap();
    let window = answer_window_ms(&app.state);
    // The hiding node keeps reporting (its replies carry the challenge); the silent one not.
    challenge_in(&app, &send(&app, &hiding_run, json!({})).await);
    app.clock.advance_ms(window);
    let verdicts = round(&app.state).await.unwrap();
    let verdict = |node: &str| {
        verdicts
            .iter()
            .find(|(id, _)| id.as_str() == node)
            .map(|(_, verdict)| *verdict)
    };
    assert_eq!(verdict(&hiding_run.node.node_id), Some(Verdict::Unanswered));
    assert_eq!(verdict(&silent_run.node.node_id), Some(Verdict::Timeout));
    let view = standing(&app, &hiding_run.node.node_id).await;
    assert_eq!(
        (view["status"].as_str(), view["visibility"].as_str()),
        (Some("ACTIVE"), Some("UNANSWERED")),
        "one refusal is not yet a block"
    );
    // The same again: blocking visibility while reporting is a hard slash and ejection.
    challenge_in(&app, &send(&app, &hiding_run, json!({})).await);
    app.clock.advance_ms(window);
    round(&app.state).await.unwrap();
    let view = standing(&app, &hiding_run.node.node_id).await;
    assert_eq!(view["status"], "EJECTED", "{view}");
    assert_eq!(view["slashes"][0]["kind"], "VISIBILITY_BLOCKED");
    assert!(
        view["slashes"][0]["evidence"]
            .as_str()
            .unwrap()
            .contains("unanswered while the job's telemetry kept arriving"),
        "{view}"
    );
    assert_eq!(view["slashes"].as_array().unwrap().len(), 1);
    let job = app.job(&hiding_run.job).await;
    assert_eq!(
        (job["status"].as_str(), job["failure_reason"].as_str()),
        (Some("FAILED"), Some("VISIBILITY_BLOCKED"))
    );
    // Its fenced agent's next packet is refused.
    let reply = send(&app, &hiding_run, json!({})).await;
    assert!(reply.status.is_client_error(), "{:?}", reply.body);
    // The silent node timed out twice: no slash (the heartbeat judges silence).
    let view = standing(&app, &silent_run.node.node_id).await;
    assert_eq!(
        (view["status"].as_str(), view["visibility"].as_str()),
        (Some("ACTIVE"), Some("TIMEOUT"))
    );
    assert_eq!(view["slashes"], json!([]));
}

on_both_engines!(
    answers_are_judged_by_their_evidence,
    unanswered_while_reporting_is_blocking_and_silence_is_not,
);
