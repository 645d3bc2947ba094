//! The Obsidian log over HTTP (SPEC §8): entry bodies only for their job's owner and admins;
//! every query value bounded, answered 400 with a message naming the parameter when it is not
//! a usable number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use gp4u_ledger::hash::{hash_from_hex, leaf_hash};
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
            &format!("/api/jobs/{}/ledger", run.job),
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
            "/api/ledger/entries?start=0&end=1000",
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
}

/// Query values that are not numbers, too large for any log, or outside the log: 400
/// `INVALID_QUERY` naming the parameter, never a 500.
async fn out_of_range_query_values_are_400(app: TestApp) {
    let run = sealed_job(&app).await;
    let cases: &[(&str, &str)] = &[
        // Beyond any log index: the database holds indexes as signed 64-bit integers.
        ("/api/ledger/entries?start=9223372036854775808", "start"),
        (
            "/api/ledger/entries?start=9223372036854775000&end=9223372036854775808",
            "end",
        ),
        ("/api/ledger/entries?start=18446744073709551615", "start"),
        // Not a u64 at all.
        ("/api/ledger/entries?start=18446744073709551616", "start"),
        ("/api/ledger/entries?start=-1", "start"),
        ("/api/ledger/entries?start=ten", "start"),
        ("/api/ledger/entries?end=1e3", "end"),
        ("/api/ledger/entries?start=", "start"),
        // A range that is backwards or too long.
        ("/api/ledger/entries?start=5&end=2", "end"),
        ("/api/ledger/entries?start=0&end=1001", "end"),
        ("/api/ledger/proof/inclusion", "index"),
        ("/api/ledger/proof/inclusion?index=x", "index"),
        (
            "/api/ledger/proof/inclusion?index=18446744073709551615",
            "index",
        ),
        (
            "/api/ledger/proof/inclusion?index=0&size=18446744073709551615",
            "size",
        ),
        (
            "/api/ledger/proof/inclusion?index=0&size=99999999999999999999",
            "size",
        ),
        ("/api/ledger/proof/inclusion?index=3&size=3", "index"),
        ("/api/ledger/proof/consistency", "from"),
        (
            "/api/ledger/proof/consistency?from=18446744073709551615",
            "from",
        ),
        (
            "/api/ledger/proof/consistency?from=1&to=18446744073709551615",
            "to",
        ),
        ("/api/ledger/proof/consistency?from=1&to=-2", "to"),
    ];
    for (path, parameter) in cases {
        let reply = app.call(Method::GET, path, Some(&run.customer), None).await;
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
    // In range but past the end of the log: nothing there, not an error.
    let reply = app
        .call(
            Method::GET,
            "/api/ledger/entries?start=9223372036854775000",
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["entries"], json!([]));
}

on_both_engines!(
    entry_bodies_go_to_the_jobs_owner_and_admins,
    out_of_range_query_values_are_400,
);
