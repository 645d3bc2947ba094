//! The Obsidian log over HTTP (SPEC §8): public to read — anyone may fetch the checkpoint, the
//! key, the entries (index, kind, leaf hash) and the proofs and check them — while entry bodies
//! go only to their job's owner and admins; a token sent to the public routes is judged as
//! everywhere; every query value bounded, answered 400 naming the parameter when unusable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use gp4u_ledger::checkpoint::{Checkpoint, open_checkpoint};
use gp4u_ledger::hash::{Hash, hash_from_hex, leaf_hash};
use gp4u_ledger::reference::mth;
use gp4u_ledger::verify::{verify_consistency, verify_inclusion};
use gp4u_proto::paths;
use gp4u_server::obsidian::seal_once;
use gp4u_server::settlement::settle_once;
use gp4u_store::Engine;
use serde_json::{Value, json};
use support::*;

/// Settles and seals everything that happened so far.
async fn settle_and_seal(app: &TestApp) {
    app.state.relay.run_once().await.unwrap();
    settle_once(&app.state).await.unwrap();
    app.state.relay.run_once().await.unwrap();
    seal_once(&app.state).await.unwrap();
}

/// A job run to the end and sealed: the log has a few dozen entries.
async fn sealed_job(app: &TestApp) -> Running {
    let run = picked_up(app, pinned()).await;
    for _ in 0..3 {
        send(app, &run, json!({})).await;
    }
    let reply = send(app, &run, json!({"final": true, "exit_code": 0})).await;
    assert_eq!(reply.body["status"], "COMPLETE", "{:?}", reply.body);
    settle_and_seal(app).await;
    run
}

/// The indexes of a job's entries, as its owner reads them.
async fn job_indexes(app: &TestApp, run: &Running) -> BTreeSet<u64> {
    let reply = app
        .call(
            Method::GET,
            &paths::job_ledger(&run.job),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let indexes: BTreeSet<u64> = reply.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["index"].as_u64().unwrap())
        .collect();
    assert!(indexes.len() > 3, "{:?}", reply.body);
    indexes
}

/// `GET /api/ledger/entries?start=0&end=1000` as `token`; the entries, and how many store
/// operations the request took.
async fn all_entries(app: &TestApp, token: Option<&str>) -> (Vec<Value>, u64) {
    let before = app.store().operations();
    let reply = app
        .call(
            Method::GET,
            &format!("{}?start=0&end=1000", paths::LEDGER_ENTRIES),
            token,
            None,
        )
        .await;
    let operations = app.store().operations() - before;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    (
        reply.body["entries"].as_array().unwrap().clone(),
        operations,
    )
}

/// The indexes of the entries that came with a body; every body hashes to its leaf.
fn with_bodies(entries: &[Value]) -> BTreeSet<u64> {
    entries
        .iter()
        .filter(|entry| !entry["body"].is_null())
        .map(|entry| {
            let body = entry["body"].as_str().unwrap();
            assert_eq!(
                hash_from_hex(entry["leaf_hash"].as_str().unwrap()).unwrap(),
                leaf_hash(body.as_bytes()),
                "{entry}"
            );
            entry["index"].as_u64().unwrap()
        })
        .collect()
}

/// Entry bodies go to the job's owner and to admins; another customer sees the log without
/// them. Reading a range is one query however many jobs it spans.
async fn entry_bodies_go_to_the_jobs_owner_and_admins(app: TestApp) {
    let first = sealed_job(&app).await;
    let second = sealed_job(&app).await;
    let (first_indexes, second_indexes) = (
        job_indexes(&app, &first).await,
        job_indexes(&app, &second).await,
    );
    let (_, stranger) = app.user("customer", None).await;

    let (entries, operations) = all_entries(&app, Some(&first.customer)).await;
    let size = entries.len();
    assert!(
        size > first_indexes.len() + second_indexes.len(),
        "{entries:?}"
    );
    assert_eq!(with_bodies(&entries), first_indexes);
    // The caller's user, then the range with its owners joined in.
    assert_eq!(operations, 2);
    let (entries, _) = all_entries(&app, Some(&second.customer)).await;
    assert_eq!(with_bodies(&entries), second_indexes);
    let (entries, _) = all_entries(&app, Some(&stranger)).await;
    assert_eq!(
        (entries.len(), with_bodies(&entries)),
        (size, BTreeSet::new())
    );
    let (entries, _) = all_entries(&app, Some(&app.admin)).await;
    assert_eq!(with_bodies(&entries).len(), size);
    // Without a token: the log, no bodies, in one store operation.
    let (entries, operations) = all_entries(&app, None).await;
    assert_eq!(
        (entries.len(), with_bodies(&entries)),
        (size, BTreeSet::new())
    );
    assert_eq!(operations, 1);
    // A client-sent subject header is no identity.
    let reply = app
        .call_with(
            Method::GET,
            &format!("{}?start=0&end=1000", paths::LEDGER_ENTRIES),
            None,
            None,
            &[("x-subject-id", "usr_admin")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        with_bodies(reply.body["entries"].as_array().unwrap()),
        BTreeSet::new()
    );

    // Field by field: what a reader may not read shows index, kind and leaf hash only (no job
    // id to link one job's entries, no sealing time); what it may read, everything.
    let (entries, _) = all_entries(&app, Some(&first.customer)).await;
    for entry in &entries {
        let mut fields: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        if first_indexes.contains(&entry["index"].as_u64().unwrap()) {
            assert_eq!(
                fields,
                [
                    "body",
                    "index",
                    "job_id",
                    "kind",
                    "leaf_hash",
                    "sealed_at_ms"
                ],
                "{entry}"
            );
            assert_eq!(entry["job_id"], json!(first.job), "{entry}");
        } else {
            assert_eq!(fields, ["index", "kind", "leaf_hash"], "{entry}");
        }
    }
}

/// The checkpoint, opened with the key: both fetched without a token.
async fn anonymous_checkpoint(app: &TestApp) -> Checkpoint {
    let (status, headers, key) = app
        .raw(Method::GET, paths::LEDGER_PUBLIC_KEY, None, Vec::new(), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let key = String::from_utf8(key).unwrap();
    let (status, headers, note) = app
        .raw(Method::GET, paths::LEDGER_CHECKPOINT, None, Vec::new(), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    open_checkpoint(note, key.trim(), "gp4u.local/obsidian").unwrap()
}

/// The hex hashes of a proof.
fn hashes(proof: &[String]) -> Vec<Hash> {
    proof
        .iter()
        .map(|hash| hash_from_hex(hash).unwrap())
        .collect()
}

/// The checkpoint, opened with the key, as a witness reads them: through `gp4u-client`, with
/// no token.
async fn witnessed_checkpoint(witness: &gp4u_client::Client) -> Checkpoint {
    let key = witness.ledger_public_key().await.unwrap();
    let note = witness.checkpoint().await.unwrap();
    open_checkpoint(note.into_bytes(), key.trim(), "gp4u.local/obsidian").unwrap()
}

/// A witness without a token (the typed client over a real socket): the signed checkpoint and
/// its key, every leaf (which rebuild the signed root), an inclusion proof, and a consistency
/// proof between two checkpoints.
async fn anyone_may_witness_the_log(app: TestApp) {
    let served = app.serve().await;
    let witness = served.anonymous();
    sealed_job(&app).await;
    let before = witnessed_checkpoint(&witness).await;
    assert_eq!(before, anonymous_checkpoint(&app).await);
    assert!(before.size > 3, "{before:?}");
    let entries = witness.ledger_entries(0, before.size).await.unwrap();
    let leaves: Vec<Hash> = entries
        .entries
        .iter()
        .map(|entry| {
            assert!(
                matches!(entry, gp4u_proto::LedgerEntry::Witnessed(witnessed) if !witnessed.kind.is_empty()),
                "a witness sees leaves, not bodies: {entry:?}"
            );
            hash_from_hex(entry.leaf_hash()).unwrap()
        })
        .collect();
    assert_eq!(
        mth(&leaves),
        before.root,
        "the served leaves are the signed tree"
    );
    let index = before.size / 2;
    let inclusion = witness.inclusion_proof(index, before.size).await.unwrap();
    let index_usize = usize::try_from(index).unwrap();
    verify_inclusion(
        &leaves[index_usize],
        index,
        before.size,
        &hashes(&inclusion.proof),
        &before.root,
    )
    .unwrap();

    // The log grows; the witness checks that it only grew.
    sealed_job(&app).await;
    let after = witnessed_checkpoint(&witness).await;
    assert!(after.size > before.size);
    let consistency = witness
        .consistency_proof(before.size, after.size)
        .await
        .unwrap();
    verify_consistency(
        before.size,
        after.size,
        &hashes(&consistency.proof),
        &before.root,
        &after.root,
    )
    .unwrap();
    // The defaults: the latest checkpoint's size.
    let reply = app
        .call(
            Method::GET,
            &format!("{}?from={}", paths::LEDGER_CONSISTENCY, before.size),
            None,
            None,
        )
        .await;
    assert_eq!(reply.body["to"], json!(after.size), "{:?}", reply.body);
    // The job's own documents still need a token.
    let refused = witness.job_ledger("job_x").await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.code(), refused.exit_code()),
        (Some(401), Some("TOKEN_MISSING"), 3)
    );
}

/// The log's public routes, each with a query it answers 200.
fn public_routes() -> [String; 5] {
    [
        paths::LEDGER_CHECKPOINT.to_owned(),
        paths::LEDGER_PUBLIC_KEY.to_owned(),
        paths::LEDGER_ENTRIES.to_owned(),
        format!("{}?index=0", paths::LEDGER_INCLUSION),
        format!("{}?from=1", paths::LEDGER_CONSISTENCY),
    ]
}

/// A token sent to a public route is judged as everywhere: a bad one is 401 before any
/// database access, a suspended user's 403 — never quietly served as anonymous.
async fn a_token_on_the_public_log_is_still_judged(app: TestApp) {
    let run = sealed_job(&app).await;
    let expired = token_for(&run.customer_id, 1, app.clock_seconds());
    let (payload, _) = run.customer.split_once('.').unwrap();
    // 32 zero bytes, base64url without padding: a well-formed signature that does not verify.
    let bad_signature = format!("{payload}.{}", "A".repeat(43));
    let bearer = |token: &str| format!("Bearer {token}");
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", bearer("garbage"), "TOKEN_MALFORMED"),
        (
            "bad signature",
            bearer(&bad_signature),
            "TOKEN_BAD_SIGNATURE",
        ),
        ("expired", bearer(&expired), "TOKEN_EXPIRED"),
        ("no scheme", run.customer.clone(), "TOKEN_MALFORMED"),
        ("empty", String::new(), "TOKEN_MALFORMED"),
    ];
    for path in &public_routes() {
        for (name, header, code) in &cases {
            let before = app.store().operations();
            let reply = app
                .call_with(Method::GET, path, None, None, &[("authorization", header)])
                .await;
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::UNAUTHORIZED, *code),
                "{name} on {path}: {:?}",
                reply.body
            );
            assert_eq!(
                app.store().operations(),
                before,
                "{name} on {path} touched the database"
            );
        }
        let reply = app.call(Method::GET, path, Some(&run.customer), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
        let reply = app.call(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
    }
    // A suspended user is locked out here too, whatever the token says.
    let reply = app
        .call(
            Method::POST,
            &paths::admin_user_suspend(&run.customer_id),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    for path in &public_routes() {
        let reply = app.call(Method::GET, path, Some(&run.customer), None).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::FORBIDDEN, "USER_SUSPENDED"),
            "{path}: {:?}",
            reply.body
        );
    }
}

/// Query values that are not numbers, too large for any log, or outside the log: 400
/// `INVALID_QUERY` naming the parameter, never a 500.
async fn out_of_range_query_values_are_400(app: TestApp) {
    let run = sealed_job(&app).await;
    let cases: &[(&str, &str)] = &[
        // Beyond any log index: the database holds indexes as signed 64-bit integers.
        (
            &format!("{}?start=9223372036854775808", paths::LEDGER_ENTRIES),
            "start",
        ),
        (
            &format!(
                "{}?start=9223372036854775000&end=9223372036854775808",
                paths::LEDGER_ENTRIES
            ),
            "end",
        ),
        (
            &format!("{}?start=18446744073709551615", paths::LEDGER_ENTRIES),
            "start",
        ),
        // Not a u64 at all.
        (
            &format!("{}?start=18446744073709551616", paths::LEDGER_ENTRIES),
            "start",
        ),
        (&format!("{}?start=-1", paths::LEDGER_ENTRIES), "start"),
        (&format!("{}?start=ten", paths::LEDGER_ENTRIES), "start"),
        (&format!("{}?end=1e3", paths::LEDGER_ENTRIES), "end"),
        (&format!("{}?start=", paths::LEDGER_ENTRIES), "start"),
        // A range that is backwards or too long.
        (&format!("{}?start=5&end=2", paths::LEDGER_ENTRIES), "end"),
        (
            &format!("{}?start=0&end=1001", paths::LEDGER_ENTRIES),
            "end",
        ),
        (paths::LEDGER_INCLUSION, "index"),
        (&format!("{}?index=x", paths::LEDGER_INCLUSION), "index"),
        (
            &format!("{}?index=18446744073709551615", paths::LEDGER_INCLUSION),
            "index",
        ),
        (
            &format!(
                "{}?index=0&size=18446744073709551615",
                paths::LEDGER_INCLUSION
            ),
            "size",
        ),
        (
            &format!(
                "{}?index=0&size=99999999999999999999",
                paths::LEDGER_INCLUSION
            ),
            "size",
        ),
        (
            &format!("{}?index=3&size=3", paths::LEDGER_INCLUSION),
            "index",
        ),
        (paths::LEDGER_CONSISTENCY, "from"),
        (
            &format!("{}?from=18446744073709551615", paths::LEDGER_CONSISTENCY),
            "from",
        ),
        (
            &format!(
                "{}?from=1&to=18446744073709551615",
                paths::LEDGER_CONSISTENCY
            ),
            "to",
        ),
        (&format!("{}?from=1&to=-2", paths::LEDGER_CONSISTENCY), "to"),
    ];
    // Anonymous (the routes are public) and with a token alike.
    for (path, parameter) in cases {
        for token in [None, Some(run.customer.as_str())] {
            let reply = app.call(Method::GET, path, token, None).await;
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::BAD_REQUEST, "INVALID_QUERY"),
                "{path}: {:?}",
                reply.body
            );
            let message = reply.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(parameter),
                "{path}: the message does not name {parameter}: {message}"
            );
        }
    }
    // In range but past the end of the log: nothing there, not an error.
    let reply = app
        .call(
            Method::GET,
            &format!("{}?start=9223372036854775000", paths::LEDGER_ENTRIES),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["entries"], json!([]));
}

on_both_engines!(
    anyone_may_witness_the_log,
    a_token_on_the_public_log_is_still_judged,
    entry_bodies_go_to_the_jobs_owner_and_admins,
    out_of_range_query_values_are_400,
);

/// The OpenAPI document shows the public log without a bearer requirement (a token is
/// optional there: `[{}, {"bearer": []}]`), and the job's own ledger still with one.
#[tokio::test]
async fn the_openapi_document_shows_the_log_public() {
    let app = TestApp::new(Engine::Sqlite, "openapi_public_log")
        .await
        .unwrap();
    let reply = app.call(Method::GET, paths::OPENAPI, None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    for path in [
        paths::LEDGER_CHECKPOINT,
        paths::LEDGER_PUBLIC_KEY,
        paths::LEDGER_ENTRIES,
        paths::LEDGER_INCLUSION,
        paths::LEDGER_CONSISTENCY,
    ] {
        let security = &reply.body["paths"][path]["get"]["security"];
        assert_eq!(security, &json!([{}, {"bearer": []}]), "{path}");
    }
    assert_eq!(
        reply.body["paths"][paths::JOB_LEDGER]["get"]["security"],
        json!([{"bearer": []}])
    );
    assert!(
        reply.body.get("security").is_none(),
        "no global requirement"
    );
}
