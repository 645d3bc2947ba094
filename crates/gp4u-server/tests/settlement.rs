//! Stages 5–7 on the control plane (SPEC §8): the billing hold at submission, energy and
//! carbon at completion, settlement (once, balanced), and the Obsidian ledger with its signed
//! checkpoints and proofs over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use axum::http::{Method, StatusCode};
use gp4u_ledger::checkpoint::open_checkpoint;
use gp4u_ledger::hash::{hash_from_hex, leaf_hash};
use gp4u_ledger::verify::{verify_consistency, verify_inclusion};
use gp4u_proto::paths;
use gp4u_server::obsidian::seal_once;
use gp4u_server::settlement::settle_once;
use gp4u_store::Engine;
use serde_json::{Value, json};
use support::*;

async fn balance(app: &TestApp, token: &str) -> Value {
    let reply = app
        .call(Method::GET, paths::BALANCE, Some(token), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

/// Settles and seals everything that happened so far.
async fn settle_and_seal(app: &TestApp) {
    app.state.relay.run_once().await.unwrap();
    settle_once(&app.state).await.unwrap();
    app.state.relay.run_once().await.unwrap();
    seal_once(&app.state).await.unwrap();
}

/// `GET /api/jobs/{id}/settlement` as the job's customer (200 expected).
async fn settlement(app: &TestApp, run: &Running) -> Value {
    let reply = app
        .call(
            Method::GET,
            &paths::job_settlement(&run.job),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

/// `GET /api/jobs/{id}/ledger` as the job's customer.
async fn job_ledger(app: &TestApp, run: &Running) -> Value {
    let reply = app
        .call(
            Method::GET,
            &paths::job_ledger(&run.job),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

/// The kinds of a job ledger's entries, in log order.
fn kinds(ledger: &Value) -> Vec<String> {
    ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// The parsed body of the first entry of `kind`.
fn sealed_body(ledger: &Value, kind: &str) -> Value {
    let entry = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} entry in {ledger:?}"));
    serde_json::from_str(entry["body"].as_str().unwrap()).unwrap()
}

async fn a_short_credit_is_refused_with_402_and_nothing_is_held(app: TestApp) {
    let node = app.node(1, 3.1, "us-east-1").await;
    let reply = app
        .call(
            Method::POST,
            paths::ADMIN_USERS,
            Some(&app.admin),
            Some(json!({"name": "poor", "role": "customer", "credit": 5})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let poor = app.token(reply.body["id"].as_str().unwrap(), 1);
    // 4 h at 3.10/h = 12.40, held × 1.1 = 13.64 > 5.
    let reply = app
        .call(
            Method::POST,
            paths::JOBS,
            Some(&poor),
            Some(job_body(&node.gpus[0])),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYMENT_REQUIRED, "INSUFFICIENT_CREDIT"),
        "{:?}",
        reply.body
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("13.64"),
        "{:?}",
        reply.body
    );
    let after = balance(&app, &poor).await;
    assert_eq!(
        (after["balance"].clone(), after["held"].clone()),
        (json!(5.0), json!(0.0))
    );
    assert_eq!(after["currency"], "USD");
}

async fn a_completed_job_is_metered_settled_once_and_sealed(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    // The reads go through the client, as a customer's and a provider's would.
    let served = app.serve().await;
    let customer = served.client(&run.customer);
    let provider = served.client(&run.node.token);
    let held = customer.balance().await.unwrap();
    assert_eq!(held.held, 13.64);
    // 30 minutes of RUNNING time at 380 W, in packets every 10 s (the first starts the job).
    for _ in 0..180 {
        let reply = send(&app, &run, json!({})).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["max_gap_ms"], json!(30_000));
        assert!(reply.body["at_ms"].as_i64().is_some());
    }
    let reply = send(&app, &run, json!({"final": true, "exit_code": 0})).await;
    assert_eq!(reply.body["status"], "COMPLETE");
    let early = app
        .call(
            Method::GET,
            &paths::job_settlement(&run.job),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(
        (early.status, early.code()),
        (StatusCode::CONFLICT, "NOT_SETTLED")
    );
    settle_and_seal(&app).await;
    // Settling again (a retry, another replica) changes nothing.
    settle_and_seal(&app).await;
    let settlement = customer.settlement(&run.job).await.unwrap();
    assert_eq!(settlement.job_id, run.job);
    // Started at the first packet, ended at the final one: 180 × 10 s = 0.5 h × 3.10 = 1.55.
    assert_eq!(settlement.gpu_hours, 0.5);
    assert_eq!(settlement.customer_charged, 1.55);
    assert_eq!(settlement.platform_fee, 0.155);
    assert_eq!(settlement.provider_earnings, 1.395);
    assert_eq!(settlement.student_program, 0.0);
    assert_eq!(settlement.refunded, 12.09);
    assert_eq!(settlement.transfers.len(), 3);
    let customer_balance = customer.balance().await.unwrap();
    assert_eq!(
        (customer_balance.balance, customer_balance.held),
        (99998.45, 0.0)
    );
    let provider_balance = provider.balance().await.unwrap();
    assert_eq!(provider_balance.balance, 100001.395);
    assert!(app.store().audit_balances().await.unwrap().is_empty());
    let statement = provider.statement().await.unwrap();
    assert_eq!(statement.earnings, 1.395, "{statement:?}");

    // Energy: 180 intervals of 10 s at 380 W (the first packet accounts for no time) = 0.19 kWh;
    // us-east-1's factor is in the table with its source.
    let job = customer.job(&run.job).await.unwrap();
    let kwh = job.energy_kwh.unwrap();
    assert!((kwh - 0.19).abs() < 1e-12, "{job:?}");
    // The node declared no renewable share: not eligible for carbon credits.
    assert_eq!(job.carbon_credit_eligible, Some(false), "{job:?}");
    let factors = customer.grid_factors().await.unwrap();
    let us_east = factors
        .factors
        .iter()
        .find(|factor| factor.region == "us-east-1")
        .unwrap();
    let grams = us_east.g_co2e_per_kwh;
    assert!((job.carbon_kg.unwrap() - 0.19 * grams / 1000.0).abs() < 1e-9);

    // The ledger: the job's entries, each included in the signed checkpoint.
    let public_key = customer.ledger_public_key().await.unwrap();
    let ledger = customer.job_ledger(&run.job).await.unwrap();
    assert_eq!(ledger.job_id, run.job);
    assert_eq!(ledger.public_key, public_key.trim());
    let key = ledger.public_key.as_str();
    let checkpoint = open_checkpoint(&ledger.checkpoint, key, "gp4u.local/obsidian").unwrap();
    let kinds: Vec<&str> = ledger
        .entries
        .iter()
        .map(|proven| proven.entry.kind.as_str())
        .collect();
    for kind in [
        "job.created",
        "job.assigned",
        "job.started",
        "job.completed",
        "job.energy",
        "veritas.recorded",
        "billing.settled",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    for proven in &ledger.entries {
        let leaf = leaf_hash(proven.entry.body.as_bytes());
        assert_eq!(hash_from_hex(&proven.entry.leaf_hash).unwrap(), leaf);
        let proof: Vec<_> = proven
            .inclusion_proof
            .iter()
            .map(|hash| hash_from_hex(hash).unwrap())
            .collect();
        verify_inclusion(
            &leaf,
            proven.entry.index,
            checkpoint.size,
            &proof,
            &checkpoint.root,
        )
        .unwrap();
    }
    // The parsed body of the first entry of `kind`.
    let sealed = |kind: &str| -> Value {
        let proven = ledger
            .entries
            .iter()
            .find(|proven| proven.entry.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} entry in {ledger:?}"));
        serde_json::from_str(&proven.entry.body).unwrap()
    };
    // The settlement is sealed exactly as served.
    let body = sealed("billing.settled");
    assert_eq!(body["payload"]["settlement"], settlement.exact);
    // The Veritas record: what reproduces the run.
    let record = sealed("veritas.recorded")["payload"]["record"].clone();
    assert_eq!(
        record["image_digest"],
        json!(format!("sha256:{}", "a".repeat(64)))
    );
    assert_eq!(record["command"], json!(["python", "train.py"]));
    assert_eq!(
        record["env_sha256"],
        json!(gp4u_core::hex::sha256(br#"{"EPOCHS":"3"}"#))
    );
    assert_eq!(
        (
            record["exit_code"].clone(),
            record["status"].clone(),
            record["gpu_model"].clone()
        ),
        (json!(0), json!("COMPLETE"), json!("RTX 4090"))
    );
    assert_eq!(record["node_id"], json!(run.node.node_id));
    assert_eq!(record["reproducible"], json!(true));

    // Another customer sees neither the settlement nor the entries' bodies.
    let (_, stranger) = app.user("customer", None).await;
    let reply = app
        .call(
            Method::GET,
            &paths::job_settlement(&run.job),
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let entries = app
        .call(
            Method::GET,
            &format!("{}?start=0&end=1000", paths::LEDGER_ENTRIES),
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(entries.status, StatusCode::OK);
    assert!(
        entries.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["body"].is_null())
    );

    // A later checkpoint is consistent with this one.
    let second = picked_up(&app, pinned()).await;
    send(&app, &second, json!({"final": true, "exit_code": 0})).await;
    settle_and_seal(&app).await;
    let (status, headers, note) = app
        .raw(
            Method::GET,
            paths::LEDGER_CHECKPOINT,
            Some(&run.customer),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let later = open_checkpoint(note, key, "gp4u.local/obsidian").unwrap();
    assert!(later.size > checkpoint.size);
    let consistency = customer
        .consistency_proof(checkpoint.size, later.size)
        .await
        .unwrap();
    assert_eq!(
        (consistency.from, consistency.to),
        (checkpoint.size, later.size)
    );
    let proof: Vec<_> = consistency
        .proof
        .iter()
        .map(|hash| hash_from_hex(hash).unwrap())
        .collect();
    verify_consistency(
        checkpoint.size,
        later.size,
        &proof,
        &checkpoint.root,
        &later.root,
    )
    .unwrap();
    let reply = app
        .call(
            Method::GET,
            &format!(
                "{}?index=0&size={}",
                paths::LEDGER_INCLUSION,
                later.size + 1
            ),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, "INVALID_QUERY")
    );
}

async fn a_provider_fault_costs_the_customer_nothing(app: TestApp) {
    let mut body = pinned();
    body["max_retries"] = json!(0);
    let run = picked_up(&app, body).await;
    for _ in 0..30 {
        send(&app, &run, json!({})).await;
    }
    // Foreign processes mining on the assigned GPU: the provider's fault.
    for _ in 0..3 {
        send(
            &app,
            &run,
            json!({"foreign_gpu_processes": 2, "inferred_pattern": "CRYPTO_MINING"}),
        )
        .await;
    }
    let job = app.job(&run.job).await;
    assert_eq!(
        (job["status"].as_str(), job["failure_reason"].as_str()),
        (Some("FAILED"), Some("CRYPTO_MINING_DURING_ML_JOB")),
        "{job:?}"
    );
    settle_and_seal(&app).await;
    let reply = app
        .call(
            Method::GET,
            &paths::job_settlement(&run.job),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{job:?} {:?}", reply.body);
    assert_eq!(reply.body["customer_charged"], json!(0.0));
    assert_eq!(reply.body["refunded"], json!(13.64));
    let customer = balance(&app, &run.customer).await;
    assert_eq!(
        (customer["balance"].clone(), customer["held"].clone()),
        (json!(100000.0), json!(0.0))
    );
}

async fn admins_update_grid_factors_with_a_source(app: TestApp) {
    settle_once(&app.state).await.unwrap();
    let reply = app
        .call(
            Method::PUT,
            &paths::admin_grid_factor("eu-north-1"),
            Some(&app.admin),
            Some(json!({"g_co2e_per_kwh": 35.5, "source": "Ember 2025 review", "as_of": "2025-06-30"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    for (body, field) in [
        (
            json!({"g_co2e_per_kwh": -1, "source": "x", "as_of": "2025-06-30"}),
            "g_co2e_per_kwh",
        ),
        (
            json!({"g_co2e_per_kwh": 10, "source": "", "as_of": "2025-06-30"}),
            "source",
        ),
        (
            json!({"g_co2e_per_kwh": 10, "source": "x", "as_of": "2025-02-30"}),
            "as_of",
        ),
    ] {
        let reply = app
            .call(
                Method::PUT,
                &paths::admin_grid_factor("eu-north-1"),
                Some(&app.admin),
                Some(body),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
        assert_eq!(reply.body["error"]["field"], field);
    }
    let (_, customer) = app.user("customer", None).await;
    let reply = app
        .call(
            Method::PUT,
            &paths::admin_grid_factor("eu-north-1"),
            Some(&customer),
            Some(json!({"g_co2e_per_kwh": 1, "source": "x", "as_of": "2025-06-30"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let factors = app
        .call(Method::GET, paths::GRID_FACTORS, Some(&customer), None)
        .await;
    let north = factors.body["factors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|factor| factor["region"] == "eu-north-1")
        .unwrap()
        .clone();
    assert_eq!(
        (north["g_co2e_per_kwh"].clone(), north["source"].clone()),
        (json!(35.5), json!("Ember 2025 review"))
    );

    // Atlas scores the figure admins set (the one the job's carbon is computed with).
    let reply = app
        .call(
            Method::PUT,
            &paths::admin_grid_factor("us-east-1"),
            Some(&app.admin),
            Some(json!({"g_co2e_per_kwh": 40, "source": "our own meter", "as_of": "2026-10-31"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let run = picked_up(&app, pinned()).await;
    let job = app.job(&run.job).await;
    let reasons = job["placement"]["reasons"].as_array().unwrap().clone();
    let carbon = reasons
        .iter()
        .find(|reason| reason["factor"] == "carbon")
        .unwrap_or_else(|| panic!("no carbon reason: {reasons:?}"));
    assert_eq!(carbon["value"], json!(0.95), "{carbon:?}");
    assert!(
        carbon["detail"].as_str().unwrap().contains("our own meter"),
        "{carbon:?}"
    );
}

/// Mnemo keeps each node's record from the sealed stage-5 events, and Atlas scores the next
/// placement on the same node with it instead of "unknown".
async fn a_finished_job_feeds_the_nodes_uptime_and_provenance_to_atlas(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    send(&app, &run, json!({})).await;
    send(&app, &run, json!({"final": true, "exit_code": 0})).await;
    settle_and_seal(&app).await;
    // Mnemo catches up with the outbox, then stops.
    catch_up::<gp4u_core::chambers::Mnemo>(&app, |summary| {
        summary["providers_with_a_record"] == json!(1)
    })
    .await;
    let mut body = pinned();
    body["reproducibility_sensitive"] = json!(true);
    let next = running_on(&app, run.node, body).await;
    let job = app.job(&next.job).await;
    let reasons = job["placement"]["reasons"].as_array().unwrap().clone();
    let factor = |name: &str| {
        reasons
            .iter()
            .find(|reason| reason["factor"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {reasons:?}"))["value"]
            .clone()
    };
    // One job, completed and reproducible: uptime 1 and provenance 1, not the neutral 0.5.
    assert_eq!(
        (factor("uptime"), factor("provenance")),
        (json!(1.0), json!(1.0)),
        "{reasons:?}"
    );
}

/// A node registered with a real key (the fixture's all-zero key cannot sign), with one
/// "RTX 4090" of 24 GB, uuid `GPU-k`, a 700 W power limit.
async fn keyed_node(app: &TestApp, renewable_pct: f64) -> (Node, ed25519_dalek::SigningKey) {
    use base64::Engine as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    let (_, token) = app.user("provider", None).await;
    let (node, _) = app
        .register(
            &token,
            json!({"region": "us-east-1", "public_key": public, "renewable_pct": renewable_pct,
                   "gpus": [{"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 3.1, "power_limit_watts": 700, "uuid": "GPU-k"}]}),
        )
        .await;
    (node, key)
}

/// Proofs are checked on receipt against what was sealed during the run: the energy the
/// platform measured, the commitments it stored, the share the node declared, the node key.
async fn proofs_are_verified_against_the_sealed_run(app: TestApp) {
    use gp4u_attest::energy::{
        EnergyClaim, PowerReading, commit_reading, prove_energy, telemetry_digest,
    };
    use gp4u_attest::hardware::{Assurance, GpuIdentity, HardwareClaim, sign_hardware};
    use gp4u_attest::proofs::{EnergySubmission, ProofSubmission};
    use gp4u_core::energy::{interval_weights, watts_to_mw};
    let (node, key) = keyed_node(&app, 50.0).await;
    let node_id = node.node_id.clone();
    let token = node.token.clone();
    let run = running_on(&app, node, pinned()).await;
    let mut rng = rand_core::OsRng;
    let mut openings = Vec::new();
    let mut sealed = Vec::new();
    let mut max_gap = 0;
    for (index, watts) in [300.0, 310.5, 0.0, 450.25, 120.0].into_iter().enumerate() {
        let power_mw = watts_to_mw(watts);
        let (commitment, opening) = commit_reading(
            PowerReading {
                power_mw,
                renewable_mw: power_mw.div_ceil(2),
            },
            &mut rng,
        );
        let mut extra =
            json!({"power_draw_watts": watts, "power_commitment": commitment.to_base64()});
        if index == 4 {
            extra["final"] = json!(true);
            extra["exit_code"] = json!(0);
        }
        let reply = send(&app, &run, extra).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        sealed.push((reply.body["at_ms"].as_i64().unwrap(), commitment));
        max_gap = reply.body["max_gap_ms"].as_i64().unwrap();
        openings.push(opening);
    }
    // The node's provider reads back what was stored (for replies its agent never got).
    let path = format!(
        "{}?node_id={node_id}",
        paths::agent_job_commitments(&run.job)
    );
    let stored = app.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(stored.status, StatusCode::OK, "{:?}", stored.body);
    let listed: Vec<(i64, String)> = stored.body["commitments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["at_ms"].as_i64().unwrap(),
                item["commitment"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = sealed
        .iter()
        .map(|(at, commitment)| (*at, commitment.to_base64()))
        .collect();
    assert_eq!(listed, expected);
    let (_, other_provider) = app.user("provider", None).await;
    let refused = app
        .call(Method::GET, &path, Some(&other_provider), None)
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let refused = app
        .call(Method::GET, &path, Some(&run.customer), None)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let times: Vec<i64> = sealed.iter().map(|(at, _)| *at).collect();
    let weights = interval_weights(&times, 0, max_gap).unwrap();
    let energy: u64 = weights
        .iter()
        .zip(&openings)
        .map(|(w, o)| w * o.power_mw)
        .sum();
    let claim = EnergyClaim {
        energy_mwms: energy,
        renewable_share_bp: 5000,
        power_limit_mw: 700_000,
    };
    let submit = |body: String| {
        let app = &app;
        let path = paths::provider_proofs(&node_id);
        let token = token.clone();
        async move {
            app.raw(
                Method::POST,
                &path,
                Some(&token),
                body.into_bytes(),
                &[("content-type", "application/json")],
            )
            .await
        }
    };
    let energy_body = |claim: EnergyClaim, openings: &[gp4u_attest::energy::ReadingOpening]| {
        let proof =
            prove_energy(&run.job, &claim, openings, &weights, &mut rand_core::OsRng).unwrap();
        ProofSubmission::Energy(EnergySubmission {
            job_id: run.job.clone(),
            claim,
            proof,
        })
        .to_json()
    };
    // Before the platform accounted the job's energy: 503, try again shortly.
    let (status, _, _) = submit(energy_body(claim, &openings)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    settle_and_seal(&app).await;
    let measured = app.job(&run.job).await;
    assert!(measured["energy_kwh"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (
            measured["renewable_pct"].clone(),
            measured["carbon_credit_eligible"].clone()
        ),
        (json!(50.0), json!(false))
    );
    // A claim one mW·ms off what the platform measured is refused, naming both.
    // (A proof that is valid for its own openings: one reading 1 mW higher.)
    let mut shifted = openings.clone();
    shifted[1].power_mw += 1;
    shifted[1].renewable_mw += 1;
    let off = EnergyClaim {
        energy_mwms: energy + weights[1],
        ..claim
    };
    let (status, _, body) = submit(energy_body(off, &shifted)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("platform measured"));
    // Readings that are not the ones committed during the run do not verify.
    let mut other = Vec::new();
    for opening in &openings {
        other.push(
            commit_reading(
                PowerReading {
                    power_mw: opening.power_mw,
                    renewable_mw: opening.renewable_mw,
                },
                &mut rng,
            )
            .1,
        );
    }
    let (status, _, body) = submit(energy_body(claim, &other)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("does not verify"));
    // A share below the one the job was accounted with cannot back it: refused.
    let greedy = EnergyClaim {
        renewable_share_bp: 4000,
        ..claim
    };
    let (status, _, _) = submit(energy_body(greedy, &openings)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Garbage is 400, a customer 403, another provider's node 404.
    let (status, _, _) = submit("{\"kind\": \"energy\", \"nonsense\": 1}".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = app
        .raw(
            Method::POST,
            &paths::provider_proofs(&node_id),
            Some(&run.customer),
            energy_body(claim, &openings).into_bytes(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, stranger) = app.user("provider", None).await;
    let (status, _, _) = app
        .raw(
            Method::POST,
            &paths::provider_proofs(&node_id),
            Some(&stranger),
            energy_body(claim, &openings).into_bytes(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Proofs of long jobs are large: up to 1 MiB gets to the verifier, beyond it 413.
    let padded = format!(
        "{{\"kind\": \"energy\", \"pad\": \"{}\"}}",
        "x".repeat(200_000)
    );
    let (status, _, _) = submit(padded).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = format!(
        "{{\"kind\": \"energy\", \"pad\": \"{}\"}}",
        "x".repeat(1_100_000)
    );
    let (status, _, _) = submit(huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The provider lowers its declared share after the job ended (an agent restarted with
    // another flag): the job was accounted at 50 %, and the proof of that share still counts.
    let redeclared = app
        .call(
            Method::PUT,
            &paths::provider_energy(&node_id),
            Some(&token),
            Some(json!({"renewable_pct": 30})),
        )
        .await;
    assert_eq!(
        redeclared.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        redeclared.body
    );
    // The honest proof is stored (201), the same again is a no-op (200).
    let honest = energy_body(claim, &openings);
    let (status, _, body) = submit(honest.clone()).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = submit(honest).await;
    assert_eq!(status, StatusCode::OK);
    // Hardware: bound to the sealed commitments' digest and signed by the node key.
    let hardware = |digest: [u8; 32], key: &ed25519_dalek::SigningKey| {
        ProofSubmission::Hardware(
            sign_hardware(
                HardwareClaim {
                    job_id: run.job.clone(),
                    node_id: node_id.clone(),
                    // The GPU as registered (keyed_node): 24 GB = 24 576 MiB, 700 W.
                    gpu: GpuIdentity {
                        name: "RTX 4090".into(),
                        uuid: "GPU-k".into(),
                        vram_mb: 24_576,
                        driver_version: "550.54.15".into(),
                        serial: None,
                        power_limit_mw: 700_000,
                    },
                    telemetry_digest: digest,
                    assurance: Assurance::ProviderSigned,
                    cc_evidence: None,
                    issued_at_ms: 1,
                },
                key,
            )
            .unwrap(),
        )
        .to_json()
    };
    let digest = telemetry_digest(&run.job, &sealed);
    let (status, _, _) = submit(hardware(
        digest,
        &ed25519_dalek::SigningKey::from_bytes(&[8; 32]),
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "another key");
    let (status, _, body) = submit(hardware(telemetry_digest(&run.job, &sealed[1..]), &key)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("telemetry_digest"));
    let (status, _, body) = submit(hardware(digest, &key)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    settle_and_seal(&app).await;
    let proofs = app
        .call(
            Method::GET,
            &paths::job_proofs(&run.job),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(
        proofs.body["proofs"].as_array().unwrap().len(),
        2,
        "{:?}",
        proofs.body
    );
    assert_eq!(proofs.body["commitments"].as_array().unwrap().len(), 5);
    let kinds = kinds(&job_ledger(&app, &run).await);
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| **kind == "telemetry.committed")
            .count(),
        5,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| **kind == "proof.verified")
            .count(),
        2,
        "{kinds:?}"
    );
}

/// A job run to its end on `node` with committed readings (`watts`), settled and sealed:
/// what its proofs are checked against. Openings and weights let a test prove it.
struct CommittedRun {
    run: Running,
    node_id: String,
    token: String,
    openings: Vec<gp4u_attest::energy::ReadingOpening>,
    weights: Vec<u64>,
    sealed: Vec<(i64, gp4u_attest::energy::ReadingCommitment)>,
    energy_mwms: u64,
}

async fn committed_run(app: &TestApp, node: Node, watts: &[f64]) -> CommittedRun {
    use gp4u_attest::energy::{PowerReading, commit_reading};
    use gp4u_core::energy::{interval_weights, watts_to_mw};
    let node_id = node.node_id.clone();
    let token = node.token.clone();
    let run = running_on(app, node, pinned()).await;
    let (mut openings, mut sealed, mut max_gap) = (Vec::new(), Vec::new(), 0);
    for (index, reading) in watts.iter().enumerate() {
        let power_mw = watts_to_mw(*reading);
        let (commitment, opening) = commit_reading(
            PowerReading {
                power_mw,
                renewable_mw: power_mw.div_ceil(2),
            },
            &mut rand_core::OsRng,
        );
        let mut extra =
            json!({"power_draw_watts": reading, "power_commitment": commitment.to_base64()});
        if index + 1 == watts.len() {
            extra["final"] = json!(true);
            extra["exit_code"] = json!(0);
        }
        let reply = send(app, &run, extra).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        sealed.push((reply.body["at_ms"].as_i64().unwrap(), commitment));
        max_gap = reply.body["max_gap_ms"].as_i64().unwrap();
        openings.push(opening);
    }
    settle_and_seal(app).await;
    let times: Vec<i64> = sealed.iter().map(|(at, _)| *at).collect();
    let weights = interval_weights(&times, 0, max_gap).unwrap();
    let energy_mwms = weights
        .iter()
        .zip(&openings)
        .map(|(w, o)| w * o.power_mw)
        .sum();
    CommittedRun {
        run,
        node_id,
        token,
        openings,
        weights,
        sealed,
        energy_mwms,
    }
}

impl CommittedRun {
    /// An energy proof of the run's readings (50 % renewable) bounded by `power_limit_mw`.
    fn energy(&self, power_limit_mw: u64) -> String {
        use gp4u_attest::energy::{EnergyClaim, prove_energy};
        use gp4u_attest::proofs::{EnergySubmission, ProofSubmission};
        let claim = EnergyClaim {
            energy_mwms: self.energy_mwms,
            renewable_share_bp: 5000,
            power_limit_mw,
        };
        let proof = prove_energy(
            &self.run.job,
            &claim,
            &self.openings,
            &self.weights,
            &mut rand_core::OsRng,
        )
        .unwrap();
        ProofSubmission::Energy(EnergySubmission {
            job_id: self.run.job.clone(),
            claim,
            proof,
        })
        .to_json()
    }

    /// A hardware attestation of the run naming `gpu`, signed with `key`.
    fn hardware(
        &self,
        gpu: gp4u_attest::hardware::GpuIdentity,
        key: &ed25519_dalek::SigningKey,
    ) -> String {
        use gp4u_attest::energy::telemetry_digest;
        use gp4u_attest::hardware::{Assurance, HardwareClaim, sign_hardware};
        use gp4u_attest::proofs::ProofSubmission;
        ProofSubmission::Hardware(
            sign_hardware(
                HardwareClaim {
                    job_id: self.run.job.clone(),
                    node_id: self.node_id.clone(),
                    gpu,
                    telemetry_digest: telemetry_digest(&self.run.job, &self.sealed),
                    assurance: Assurance::ProviderSigned,
                    cc_evidence: None,
                    issued_at_ms: 1,
                },
                key,
            )
            .unwrap(),
        )
        .to_json()
    }

    /// Submits a proof as the node's provider: the status and the answer.
    async fn submit(&self, app: &TestApp, body: String) -> (StatusCode, Value) {
        let (status, _, body) = app
            .raw(
                Method::POST,
                &paths::provider_proofs(&self.node_id),
                Some(&self.token),
                body.into_bytes(),
                &[("content-type", "application/json")],
            )
            .await;
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned())),
        )
    }
}

/// The GPU `keyed_node` registers, as an attestation names it.
fn keyed_gpu() -> gp4u_attest::hardware::GpuIdentity {
    gp4u_attest::hardware::GpuIdentity {
        name: "RTX 4090".into(),
        uuid: "GPU-k".into(),
        vram_mb: 24_576,
        driver_version: "550.54.15".into(),
        serial: None,
        power_limit_mw: 700_000,
    }
}

/// A refusal: 400 `INVALID_PROOF` whose message names everything in `names`.
#[track_caller]
fn refused_naming(answer: &(StatusCode, Value), names: &[&str]) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_PROOF", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for name in names {
        assert!(message.contains(name), "{name:?} not in {message:?}");
    }
}

/// The energy proof's per-reading bound is the power limit the GPU had registered when the job
/// was assigned (sealed with `job.assigned`), not one the provider picks; the hardware
/// attestation names that GPU as registered. Anything else is 400 INVALID_PROOF naming it.
async fn proofs_are_held_to_the_assigned_gpu_as_registered(app: TestApp) {
    let (node, key) = keyed_node(&app, 50.0).await;
    let gpu_id = node.gpus[0].clone();
    let committed = committed_run(&app, node, &[300.0, 310.5, 0.0, 450.25, 120.0]).await;
    // The assignment sealed the GPU as registered.
    let assigned = sealed_body(&job_ledger(&app, &committed.run).await, "job.assigned");
    assert_eq!(
        assigned["payload"]["gpu"],
        json!({"gpu_id": gpu_id, "uuid": "GPU-k", "name": "RTX 4090", "vram_gb": 24.0,
               "power_limit_watts": 700.0}),
        "{assigned}"
    );
    // The provider's agent restarts with another limit after the job was assigned: the GPU
    // shows it, the job keeps the one it was assigned with.
    let redeclared = app
        .call(
            Method::PUT,
            &paths::provider_power_limits(&committed.node_id),
            Some(&committed.token),
            Some(json!({"gpus": [{"id": gpu_id, "power_limit_watts": 600}]})),
        )
        .await;
    assert_eq!(
        redeclared.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        redeclared.body
    );
    let node_view = app
        .call(
            Method::GET,
            &paths::provider(&committed.node_id),
            Some(&committed.token),
            None,
        )
        .await;
    assert_eq!(node_view.body["gpus"][0]["power_limit_watts"], json!(600.0));
    let stored = app
        .call(
            Method::GET,
            &format!(
                "{}?node_id={}",
                paths::agent_job_commitments(&committed.run.job),
                committed.node_id
            ),
            Some(&committed.token),
            None,
        )
        .await;
    assert_eq!(
        stored.body["power_limit_mw"],
        json!(700_000),
        "{:?}",
        stored.body
    );

    // Energy: a bound above the registered limit, the GPU's limit now, and one below it (still
    // above every reading, so the proof verifies by itself) — each refused naming both.
    for bound in [800_000, 600_000, 460_000] {
        refused_naming(
            &committed.submit(&app, committed.energy(bound)).await,
            &[
                &format!("{bound} mW"),
                "700000 mW",
                "registered power limit",
            ],
        );
    }
    // The registered one is accepted.
    let (status, body) = committed.submit(&app, committed.energy(700_000)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Hardware: another GPU's uuid, another power limit, another VRAM, another name — each
    // refused naming the field with both values.
    let other_uuid = gp4u_attest::hardware::GpuIdentity {
        uuid: "GPU-0th3".into(),
        ..keyed_gpu()
    };
    refused_naming(
        &committed
            .submit(&app, committed.hardware(other_uuid, &key))
            .await,
        &["gpu.uuid", "GPU-0th3", "GPU-k", &gpu_id],
    );
    let other_limit = gp4u_attest::hardware::GpuIdentity {
        power_limit_mw: 600_000,
        ..keyed_gpu()
    };
    refused_naming(
        &committed
            .submit(&app, committed.hardware(other_limit, &key))
            .await,
        &["gpu.power_limit_mw is 600000", "700000 mW"],
    );
    let other_vram = gp4u_attest::hardware::GpuIdentity {
        vram_mb: 24_564,
        ..keyed_gpu()
    };
    refused_naming(
        &committed
            .submit(&app, committed.hardware(other_vram, &key))
            .await,
        &["gpu.vram_mb is 24564", "24576"],
    );
    let other_name = gp4u_attest::hardware::GpuIdentity {
        name: "NVIDIA H100 80GB HBM3".into(),
        ..keyed_gpu()
    };
    refused_naming(
        &committed
            .submit(&app, committed.hardware(other_name, &key))
            .await,
        &["gpu.name", "NVIDIA H100 80GB HBM3"],
    );
    // The assigned GPU as registered is accepted.
    let (status, body) = committed
        .submit(&app, committed.hardware(keyed_gpu(), &key))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    settle_and_seal(&app).await;
    let kinds = kinds(&job_ledger(&app, &committed.run).await);
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| **kind == "proof.verified")
            .count(),
        2,
        "{kinds:?}"
    );
}

/// Every GPU carries a power limit: registration refuses a GPU without one, naming the field.
/// A GPU registered before limits were recorded (NULL) has its jobs' proofs refused with a
/// message saying what to do, until its agent declares the limit (at every start), after
/// which jobs assigned to it are proven as any other.
async fn a_gpu_without_a_registered_limit_gets_one_from_its_agent(app: TestApp) {
    let (_, provider) = app.user("provider", None).await;
    for (gpu, field) in [
        (
            json!({"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 3.1}),
            "gpus[0].power_limit_watts",
        ),
        (
            json!({"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 3.1, "power_limit_watts": 2000.5}),
            "gpus[0].power_limit_watts",
        ),
    ] {
        let refused = app
            .call(
                Method::POST,
                paths::PROVIDERS_REGISTER,
                Some(&provider),
                Some(json!({"region": "us-east-1",
                            "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                            "gpus": [gpu]})),
            )
            .await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            refused.body
        );
        assert_eq!(refused.body["error"]["field"], field, "{:?}", refused.body);
    }

    let (node, key) = keyed_node(&app, 50.0).await;
    let (node_id, token, gpu_id) = (
        node.node_id.clone(),
        node.token.clone(),
        node.gpus[0].clone(),
    );
    // As a GPU registered before migration 0008 is stored.
    let changed = app
        .execute_sql(
            "UPDATE gpus SET power_limit_mw = NULL WHERE id = $1",
            &[&gpu_id],
        )
        .await;
    assert_eq!(changed, 1);
    let listing = app.call(Method::GET, paths::GPUS, Some(&token), None).await;
    let listed = listing.body["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|gpu| gpu["id"] == gpu_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["power_limit_watts"], Value::Null, "{listed}");
    let committed = committed_run(&app, node, &[300.0, 200.0, 100.0]).await;
    let assigned = sealed_body(&job_ledger(&app, &committed.run).await, "job.assigned");
    assert_eq!(
        assigned["payload"]["gpu"]["power_limit_watts"],
        Value::Null,
        "{assigned}"
    );
    refused_naming(
        &committed.submit(&app, committed.energy(700_000)).await,
        &["no registered power limit", "restart the node's agent"],
    );
    refused_naming(
        &committed
            .submit(&app, committed.hardware(keyed_gpu(), &key))
            .await,
        &["gpu.power_limit_mw", "no registered power limit"],
    );

    // The declaration: refused for a GPU that is not the node's, a limit out of range, or
    // someone else's node; accepted for the node's own GPU.
    let declare = |token: String, body: Value| {
        let (app, node_id) = (&app, node_id.clone());
        async move {
            app.call(
                Method::PUT,
                &paths::provider_power_limits(&node_id),
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let other = app.node(1, 3.1, "us-east-1").await;
    let reply = declare(
        token.clone(),
        json!({"gpus": [{"id": other.gpus[0], "power_limit_watts": 450}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["field"], "gpus[0].id");
    let reply = declare(
        token.clone(),
        json!({"gpus": [{"id": gpu_id, "power_limit_watts": 2500}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["field"], "gpus[0].power_limit_watts");
    let reply = declare(
        other.token.clone(),
        json!({"gpus": [{"id": gpu_id, "power_limit_watts": 450}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.body);
    let reply = declare(
        token.clone(),
        json!({"gpus": [{"id": gpu_id, "power_limit_watts": 450}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.body);
    let node_view = app
        .call(Method::GET, &paths::provider(&node_id), Some(&token), None)
        .await;
    assert_eq!(node_view.body["gpus"][0]["power_limit_watts"], json!(450.0));
    // The job assigned before the declaration stays unprovable; the next one is proven.
    refused_naming(
        &committed.submit(&app, committed.energy(450_000)).await,
        &["no registered power limit"],
    );
    let next = committed_run(
        &app,
        Node {
            token: token.clone(),
            node_id: node_id.clone(),
            gpus: vec![gpu_id.clone()],
        },
        &[300.0, 200.0, 100.0],
    )
    .await;
    let (status, body) = next.submit(&app, next.energy(450_000)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let declared = gp4u_attest::hardware::GpuIdentity {
        power_limit_mw: 450_000,
        ..keyed_gpu()
    };
    let (status, body) = next.submit(&app, next.hardware(declared, &key)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A node declaring ≥ 80 % renewable makes its jobs carbon-credit eligible (labelled declared).
async fn a_mostly_renewable_node_makes_its_jobs_credit_eligible(app: TestApp) {
    // Registered with nothing declared, then declared (as a restarted agent does).
    let (node, _) = keyed_node(&app, 0.0).await;
    let path = paths::provider_energy(&node.node_id);
    let (_, stranger) = app.user("provider", None).await;
    let (_, customer) = app.user("customer", None).await;
    for (token, body, status) in [
        (
            &node.token,
            json!({"renewable_pct": 150}),
            StatusCode::BAD_REQUEST,
        ),
        (&node.token, json!({}), StatusCode::BAD_REQUEST),
        (
            &stranger,
            json!({"renewable_pct": 85}),
            StatusCode::NOT_FOUND,
        ),
        (
            &customer,
            json!({"renewable_pct": 85}),
            StatusCode::FORBIDDEN,
        ),
        (
            &node.token,
            json!({"renewable_pct": 85}),
            StatusCode::NO_CONTENT,
        ),
    ] {
        let reply = app.call(Method::PUT, &path, Some(token), Some(body)).await;
        assert_eq!(reply.status, status, "{:?}", reply.body);
    }
    let run = running_on(&app, node, pinned()).await;
    send(&app, &run, json!({})).await;
    send(&app, &run, json!({"final": true, "exit_code": 0})).await;
    settle_and_seal(&app).await;
    let job = app.job(&run.job).await;
    assert_eq!(
        (
            job["renewable_pct"].clone(),
            job["carbon_credit_eligible"].clone()
        ),
        (json!(85.0), json!(true)),
        "{job:?}"
    );
    let body = sealed_body(&job_ledger(&app, &run).await, "job.energy");
    assert_eq!(
        body["payload"]["renewable_basis"],
        "declared by the provider"
    );
    assert_eq!(body["payload"]["carbon_credit_eligible"], true);
}

/// The sample that starts a job is part of its energy even when the clock moves while the
/// request runs (regression: the start was stamped with a later reading than the sample, so
/// the first sample fell outside the run and its interval was lost).
async fn the_first_sample_counts_when_the_clock_moves_within_a_request(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    app.clock.set_tick_ms(1);
    let mut times = Vec::new();
    for index in 0..4 {
        let extra = if index == 3 {
            json!({"final": true, "exit_code": 0})
        } else {
            json!({})
        };
        let reply = send(&app, &run, extra).await;
        times.push(reply.body["at_ms"].as_i64().unwrap());
    }
    app.clock.set_tick_ms(0);
    settle_and_seal(&app).await;
    let weights = gp4u_core::energy::interval_weights(&times, 0, 30_000).unwrap();
    let expected: u64 = weights.iter().map(|weight| weight * 380_000).sum();
    let proofs = app
        .call(
            Method::GET,
            &paths::job_proofs(&run.job),
            Some(&run.customer),
            None,
        )
        .await;
    assert_eq!(
        proofs.body["energy_mwms"],
        json!(expected.to_string()),
        "{times:?}"
    );
    let job = app.job(&run.job).await;
    assert_eq!(job["started_at"], json!(rfc3339_ms(times[0])), "{job:?}");
}

fn rfc3339_ms(at_ms: i64) -> String {
    gp4u_server::views::rfc3339(at_ms)
}

/// A node's array of packets with commitments fits the route's body limit up to the 256
/// packets it allows (the default 64 KiB limit refused about 130).
async fn a_full_array_of_committed_packets_is_not_too_large(app: TestApp) {
    let run = picked_up(&app, pinned()).await;
    let (commitment, _) = gp4u_attest::energy::commit_reading(
        gp4u_attest::energy::PowerReading {
            power_mw: 380_000,
            renewable_mw: 0,
        },
        &mut rand_core::OsRng,
    );
    let packet = json!({
        "job_id": run.job, "node_id": run.node.node_id,
        "gpu_utilization_pct": 94.2, "vram_used_gb": 22.1, "vram_allocated_gb": 24.0,
        "power_draw_watts": 380.0, "temperature_c": 72, "outbound_bytes_per_sec": 1_200_000,
        "inferred_pattern": "TRAINING", "unique_dest_ips": 2, "foreign_gpu_processes": 0,
        "power_commitment": commitment.to_base64(),
    });
    let body = Value::Array(vec![packet; 256]);
    assert!(body.to_string().len() > 100_000);
    let reply = app
        .call(
            Method::POST,
            paths::TELEMETRY,
            Some(&run.node.token),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body.as_array().unwrap().len(), 256);
}

/// A job that cannot be settled (its stored state makes no sense) is reported and skipped; it
/// must not stop every job after it from being settled (regression: the subscriber's cursor
/// never moved past it).
async fn one_unsettleable_job_does_not_stop_the_others(app: TestApp) {
    let broken = picked_up(&app, pinned()).await;
    send(&app, &broken, json!({"final": true, "exit_code": 3})).await;
    // FAILED without a reason: no outcome can be derived from it.
    let id = gp4u_core::ids::JobId::parse(&broken.job).unwrap();
    let record = app.store().get_job(&id).await.unwrap().unwrap();
    let mut state = record.state.clone();
    state.failure_reason = None;
    app.store()
        .update_job_state(&id, record.version, &state, &[], app.clock_seconds() * 1000)
        .await
        .unwrap();
    let fine = picked_up(&app, pinned()).await;
    send(&app, &fine, json!({"final": true, "exit_code": 0})).await;
    settle_and_seal(&app).await;
    let settled = |job: String, token: String| {
        let app = &app;
        async move {
            app.call(
                Method::GET,
                &paths::job_settlement(&job),
                Some(&token),
                None,
            )
            .await
            .status
        }
    };
    assert_eq!(
        settled(fine.job.clone(), fine.customer.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        settled(broken.job.clone(), broken.customer.clone()).await,
        StatusCode::CONFLICT
    );
}

async fn a_university_provider_pays_the_student_programme_its_share(app: TestApp) {
    // A university's provider account (created by an admin with `university: true`).
    let reply = app
        .call(
            Method::POST,
            paths::ADMIN_USERS,
            Some(&app.admin),
            Some(json!({"name": "Campus GPUs", "role": "provider", "university": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let provider = app.token(
        reply.body["id"].as_str().unwrap(),
        reply.body["clearance"].as_u64().unwrap() as u8,
    );
    let (node, _) = app
        .register(
            &provider,
            json!({"region": "us-east-1", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                   "gpus": [{"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 3.1, "power_limit_watts": 450, "uuid": "GPU-0"}]}),
        )
        .await;
    let run = running_on(&app, node, pinned()).await;
    // 6 minutes of RUNNING time: 36 packets 10 s apart after the one that starts the job.
    for _ in 0..36 {
        send(&app, &run, json!({})).await;
    }
    let reply = send(&app, &run, json!({"final": true, "exit_code": 0})).await;
    assert_eq!(reply.body["status"], "COMPLETE", "{:?}", reply.body);
    settle_and_seal(&app).await;
    let settlement = settlement(&app, &run).await;
    // 0.1 h × 3.10 = 0.31: fee 10 % = 0.031; of the provider's 0.279, 25 % (0.06975) goes to
    // the student programme and 0.20925 to the provider.
    assert_eq!(settlement["gpu_hours"], json!(0.1));
    assert_eq!(settlement["customer_charged"], json!(0.31));
    assert_eq!(settlement["platform_fee"], json!(0.031));
    assert_eq!(settlement["student_program"], json!(0.06975));
    assert_eq!(settlement["provider_earnings"], json!(0.20925));
    assert_eq!(settlement["refunded"], json!(13.33));
    let transfers = settlement["transfers"].as_array().unwrap();
    let student = transfers
        .iter()
        .find(|transfer| transfer["credit"] == "platform:student_program")
        .unwrap_or_else(|| panic!("no transfer to the student programme: {transfers:?}"));
    assert_eq!(student["amount"], json!(0.06975), "{student:?}");
    assert_eq!(
        app.store()
            .account_balance("platform:student_program")
            .await
            .unwrap()
            .micros(),
        69_750
    );
    let statement = app
        .call(Method::GET, paths::STATEMENT, Some(&provider), None)
        .await;
    assert_eq!(
        statement.body["earnings"],
        json!(0.20925),
        "{:?}",
        statement.body
    );
    assert_eq!(balance(&app, &provider).await["balance"], json!(0.20925));
    // The sealed settlement carries the same split.
    let sealed = sealed_body(&job_ledger(&app, &run).await, "billing.settled");
    assert_eq!(sealed["payload"]["settlement"], settlement["exact"]);
    assert_eq!(
        sealed["payload"]["settlement"]["student_program"],
        json!(69_750)
    );
    assert!(app.store().audit_balances().await.unwrap().is_empty());
}

/// Runs chamber `C` until `done` holds for its summary in `GET /api/admin/chambers`.
async fn catch_up<C: gp4u_core::chambers::Chamber>(app: &TestApp, done: impl Fn(&Value) -> bool) {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let chamber = tokio::spawn(gp4u_bus::run_chamber::<C>(
        app.state.store.clone(),
        app.state.bus.clone(),
        app.state.clock.clone(),
        std::time::Duration::from_millis(20),
        stopping,
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let chambers = app
            .call(Method::GET, paths::ADMIN_CHAMBERS, Some(&app.admin), None)
            .await;
        let summary = chambers.body["chambers"]
            .as_array()
            .and_then(|list| list.iter().find(|chamber| chamber["name"] == C::NAME))
            .map(|chamber| chamber["summary"].clone())
            .unwrap_or(Value::Null);
        if done(&summary) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not catch up: {:?}",
            C::NAME,
            chambers.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let _ = chamber.await;
}

/// `GET /api/energy` as `token` (with `query`), expecting `status`.
async fn energy(app: &TestApp, token: &str, query: &str, status: StatusCode) -> Value {
    let reply = app
        .call(
            Method::GET,
            &format!("{}{query}", paths::ENERGY),
            Some(token),
            None,
        )
        .await;
    assert_eq!(reply.status, status, "{:?}", reply.body);
    if status == StatusCode::OK {
        // A report is exactly its typed form.
        let typed: gp4u_proto::EnergyReport = serde_json::from_value(reply.body.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), reply.body);
    }
    reply.body
}

fn close(actual: &Value, expected: f64) -> bool {
    actual
        .as_f64()
        .is_some_and(|actual| (actual - expected).abs() < 1e-9)
}

async fn the_energy_chamber_sums_carbon_for_customers_providers_and_the_platform(app: TestApp) {
    // A node declaring 85 % renewable power, and an ordinary one; a job on each.
    let (green, _) = keyed_node(&app, 85.0).await;
    let green_token = green.token.clone();
    let green_node = green.node_id.clone();
    let on_green = running_on(&app, green, pinned()).await;
    let plain = picked_up(&app, pinned()).await;
    for run in [&on_green, &plain] {
        for _ in 0..10 {
            send(&app, run, json!({})).await;
        }
        let reply = send(&app, run, json!({"final": true, "exit_code": 0})).await;
        assert_eq!(reply.body["status"], "COMPLETE", "{:?}", reply.body);
    }
    settle_and_seal(&app).await;
    let green_job = app.job(&on_green.job).await;
    let plain_job = app.job(&plain.job).await;
    let kwh = green_job["energy_kwh"].as_f64().unwrap();
    assert!(kwh > 0.0, "{green_job:?}");

    // A customer's figures are their own jobs', at once (no chamber needed).
    let mine = energy(&app, &on_green.customer, "", StatusCode::OK).await;
    assert_eq!(mine["scope"], "customer");
    assert!(
        mine["basis"].as_str().unwrap().contains("declared"),
        "{mine:?}"
    );
    assert_eq!(mine["total"]["jobs"], json!(1), "{mine:?}");
    assert!(close(&mine["total"]["energy_kwh"], kwh), "{mine:?}");
    assert!(close(
        &mine["total"]["carbon_kg"],
        green_job["carbon_kg"].as_f64().unwrap()
    ));
    assert!(
        close(&mine["total"]["renewable_kwh_declared"], kwh * 0.85),
        "{mine:?}"
    );
    assert_eq!(mine["total"]["credit_eligible_jobs"], json!(1));
    assert_eq!(mine["regions"][0]["region"], "us-east-1");
    // The shapes: totals, and rows of totals with their region (or node).
    let totals = [
        "carbon_kg",
        "credit_eligible_carbon_kg",
        "credit_eligible_jobs",
        "credit_eligible_kwh",
        "energy_kwh",
        "jobs",
        "renewable_kwh_declared",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut names: Vec<&str> = totals.iter().chain(extra).copied().collect();
        names.sort_unstable();
        names
    };
    assert_eq!(
        field_names(&mine),
        ["basis", "regions", "scope", "total"],
        "{mine:?}"
    );
    assert_eq!(field_names(&mine["total"]), totals, "{mine:?}");
    assert_eq!(
        field_names(&mine["regions"][0]),
        with(&["region"]),
        "{mine:?}"
    );
    let theirs = energy(&app, &plain.customer, "", StatusCode::OK).await;
    assert_eq!(
        theirs["total"]["credit_eligible_jobs"],
        json!(0),
        "{theirs:?}"
    );
    assert!(close(
        &theirs["total"]["carbon_kg"],
        plain_job["carbon_kg"].as_f64().unwrap()
    ));
    assert!(close(&theirs["total"]["renewable_kwh_declared"], 0.0));

    // Providers and the platform read the Energy chamber once it has folded both jobs.
    catch_up::<gp4u_core::chambers::Energy>(&app, |summary| summary["total"]["jobs"] == json!(2))
        .await;
    let provider = energy(&app, &green_token, "", StatusCode::OK).await;
    assert_eq!(provider["scope"], "provider");
    assert_eq!(
        provider["nodes"][0]["node_id"],
        green_node.as_str(),
        "{provider:?}"
    );
    assert_eq!(provider["nodes"][0]["credit_eligible_jobs"], json!(1));
    assert_eq!(
        field_names(&provider),
        ["as_of_position", "basis", "nodes", "scope", "total"],
        "{provider:?}"
    );
    assert!(provider["as_of_position"].as_i64().unwrap() > 0);
    assert_eq!(
        field_names(&provider["nodes"][0]),
        with(&["node_id"]),
        "{provider:?}"
    );
    assert!(
        close(&provider["total"]["credit_eligible_kwh"], kwh),
        "{provider:?}"
    );
    let platform = energy(&app, &app.admin, "", StatusCode::OK).await;
    assert_eq!(platform["scope"], "platform");
    assert_eq!(platform["total"]["jobs"], json!(2), "{platform:?}");
    assert_eq!(platform["total"]["credit_eligible_jobs"], json!(1));
    let total_carbon =
        green_job["carbon_kg"].as_f64().unwrap() + plain_job["carbon_kg"].as_f64().unwrap();
    assert!(
        close(&platform["total"]["carbon_kg"], total_carbon),
        "{platform:?}"
    );
    let region = &platform["regions"][0];
    assert_eq!(region["region"], "us-east-1", "{platform:?}");
    assert!(
        region["grid_factor"]["source"]
            .as_str()
            .is_some_and(|source| !source.is_empty())
    );
    assert_eq!(platform["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(
        field_names(&platform),
        [
            "as_of_position",
            "basis",
            "intake",
            "nodes",
            "regions",
            "scope",
            "total"
        ],
        "{platform:?}"
    );
    assert_eq!(
        field_names(region),
        with(&["grid_factor", "region"]),
        "{platform:?}"
    );
    assert_eq!(
        field_names(&region["grid_factor"]),
        ["as_of", "g_co2e_per_kwh", "source"],
        "{platform:?}"
    );
    assert_eq!(
        field_names(&platform["nodes"][0]),
        with(&["node_id"]),
        "{platform:?}"
    );
    assert_eq!(
        field_names(&platform["intake"]),
        ["applied", "ignored", "malformed"],
        "{platform:?}"
    );

    // The same as a chart: a bar per region, the credit-eligible part shaded.
    let (status, headers, body) = app
        .raw(
            Method::GET,
            &format!("{}?scope=platform&format=svg", paths::ENERGY),
            Some(&app.admin),
            vec![],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/svg+xml");
    let svg = String::from_utf8(body).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains(">us-east-1</text>"),
        "{svg}"
    );
    assert!(svg.contains("2 jobs"), "{svg}");
    let (status, _, body) = app
        .raw(
            Method::GET,
            &format!("{}?format=svg", paths::ENERGY),
            Some(&green_token),
            vec![],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8(body).unwrap().contains(&green_node),
        "the provider's nodes"
    );
    let bad = energy(&app, &app.admin, "?format=png", StatusCode::BAD_REQUEST).await;
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("png"),
        "{bad:?}"
    );
    // Scopes beyond the caller's clearance, and unknown ones, are refused.
    energy(
        &app,
        &on_green.customer,
        "?scope=platform",
        StatusCode::FORBIDDEN,
    )
    .await;
    energy(
        &app,
        &on_green.customer,
        "?scope=provider",
        StatusCode::FORBIDDEN,
    )
    .await;
    energy(&app, &green_token, "?scope=platform", StatusCode::FORBIDDEN).await;
    let bad = energy(&app, &app.admin, "?scope=everyone", StatusCode::BAD_REQUEST).await;
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("everyone"),
        "{bad:?}"
    );
    // A provider may look at their own jobs as a customer too (none here).
    let as_customer = energy(&app, &green_token, "?scope=customer", StatusCode::OK).await;
    assert_eq!(as_customer["total"]["jobs"], json!(0));
}

async fn the_veritas_record_names_the_gpu_and_its_driver(app: TestApp) {
    let (_, token) = app.user("provider", None).await;
    let register = |driver: Value| {
        json!({"region": "us-east-1", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
               "gpus": [{"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 3.1, "power_limit_watts": 450,
                         "uuid": "GPU-d", "driver_version": driver}]})
    };
    for bad in [
        json!(""),
        json!(550),
        json!("550.54.15; rm -rf /"),
        json!("9".repeat(65)),
    ] {
        let reply = app
            .call(
                Method::POST,
                paths::PROVIDERS_REGISTER,
                Some(&token),
                Some(register(bad.clone())),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            reply.body
        );
        assert!(
            reply.body.to_string().contains("gpus[0].driver_version"),
            "{:?}",
            reply.body
        );
    }
    let (node, registered) = app.register(&token, register(json!("550.54.15"))).await;
    assert_eq!(registered["gpus"][0]["driver_version"], "550.54.15");
    let listed = app.call(Method::GET, paths::GPUS, Some(&token), None).await;
    let gpu = listed.body["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|gpu| gpu["id"] == node.gpus[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(gpu["driver_version"], "550.54.15", "{gpu:?}");
    let run = running_on(&app, node, pinned()).await;
    send(&app, &run, json!({})).await;
    let veritas = paths::job_veritas(&run.job);
    let early = app
        .call(Method::GET, &veritas, Some(&run.customer), None)
        .await;
    assert_eq!(
        (early.status, early.code()),
        (StatusCode::CONFLICT, "NOT_SETTLED"),
        "{:?}",
        early.body
    );
    send(&app, &run, json!({"final": true, "exit_code": 0})).await;
    settle_and_seal(&app).await;
    let record =
        sealed_body(&job_ledger(&app, &run).await, "veritas.recorded")["payload"]["record"].clone();
    // The customer reads the same record directly; nobody else can.
    let served = app
        .call(Method::GET, &veritas, Some(&run.customer), None)
        .await;
    assert_eq!(served.status, StatusCode::OK, "{:?}", served.body);
    assert_eq!(served.body, record);
    assert_eq!(
        field_names(&record),
        [
            "command",
            "env_sha256",
            "exit_code",
            "gpu_driver",
            "gpu_model",
            "gpu_uuid",
            "host_posture",
            "image",
            "image_digest",
            "inputs",
            "job_id",
            "node_id",
            "output_sha256",
            "reproducible",
            "runtime",
            "status"
        ],
        "{record:?}"
    );
    assert_eq!(
        field_names(&record["runtime"]),
        ["network", "scratch_gb", "shm_gb"],
        "{record:?}"
    );
    let typed: gp4u_proto::VeritasRecord = serde_json::from_value(record.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), record);
    let (_, stranger) = app.user("customer", None).await;
    let hidden = app.call(Method::GET, &veritas, Some(&stranger), None).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert_eq!(
        (
            record["gpu_model"].clone(),
            record["gpu_driver"].clone(),
            record["gpu_uuid"].clone()
        ),
        (json!("RTX 4090"), json!("550.54.15"), json!("GPU-d")),
        "{record:?}"
    );
}

async fn agent_polls_measure_the_nodes_uptime_for_atlas(app: TestApp) {
    let node = app.node(1, 3.1, "us-east-1").await;
    let poll = format!(
        "{}?node_id={}&wait=0",
        paths::AGENT_ASSIGNMENTS,
        node.node_id
    );
    // Twenty minutes of polls 20 s apart, then ten minutes of silence, then back.
    for _ in 0..=60 {
        let reply = app.call(Method::GET, &poll, Some(&node.token), None).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.body);
        app.clock.advance_ms(20_000);
    }
    app.clock.advance_ms(10 * 60_000 - 20_000);
    app.call(Method::GET, &poll, Some(&node.token), None).await;
    let view = app
        .call(
            Method::GET,
            &paths::provider(&node.node_id),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(view.status, StatusCode::OK, "{:?}", view.body);
    let record = &view.body["record"];
    assert!(close(&record["online_hours"], 1.0 / 3.0), "{record:?}");
    assert!(close(&record["observed_hours"], 0.5), "{record:?}");
    assert!(close(&record["presence_uptime"], 2.0 / 3.0), "{record:?}");
    // No job has ended on it: the completion rate is unknown, the uptime is presence alone.
    assert_eq!(record["completion_rate"], Value::Null);
    assert!(close(&record["uptime"], 2.0 / 3.0), "{record:?}");
    // Another provider cannot read it.
    let (_, stranger) = app.user("provider", None).await;
    let hidden = app
        .call(
            Method::GET,
            &paths::provider(&node.node_id),
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    // Atlas scores the measured uptime, not the neutral 0.5 of an unknown node.
    let next = running_on(&app, node, pinned()).await;
    let job = app.job(&next.job).await;
    let reasons = job["placement"]["reasons"].as_array().unwrap().clone();
    let uptime = reasons
        .iter()
        .find(|reason| reason["factor"] == "uptime")
        .unwrap_or_else(|| panic!("no uptime reason: {reasons:?}"));
    assert!(close(&uptime["value"], 2.0 / 3.0), "{uptime:?}");
    assert!(
        !uptime["detail"].to_string().contains("unknown"),
        "{uptime:?}"
    );
}

async fn an_operators_carbon_table_seeds_the_grid_factors(app: TestApp) {
    use gp4u_core::atlas::{AtlasConfig, CarbonIntensity, CarbonTable};
    let atlas = AtlasConfig {
        carbon: CarbonTable::from_entries([(
            "us-east-1",
            CarbonIntensity {
                g_co2e_per_kwh: 123.0,
                source: "our meter".into(),
                as_of: "2026".into(),
            },
        )]),
        ..AtlasConfig::default()
    };
    // An earlier start seeded the built-in figures; an admin set eu-north-1 since.
    gp4u_server::settlement::seed_grid_factors(&app.state)
        .await
        .unwrap();
    let reply = app
        .call(
            Method::PUT,
            &paths::admin_grid_factor("eu-north-1"),
            Some(&app.admin),
            Some(json!({"g_co2e_per_kwh": 35.5, "source": "Ember 2025 review", "as_of": "2025-06-30"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    // Now the operator configures us-east-1 and eu-north-1: the built-in us-east-1 figure is
    // replaced, the admin's eu-north-1 figure is kept.
    let mut atlas = atlas;
    atlas.carbon.set(
        "eu-north-1",
        CarbonIntensity {
            g_co2e_per_kwh: 99.0,
            source: "config".into(),
            as_of: "2026".into(),
        },
    );
    let state = app.state.clone().with_atlas(atlas);
    gp4u_server::settlement::seed_grid_factors(&state)
        .await
        .unwrap();
    // Seeding again (a restart, another replica) keeps what is there.
    gp4u_server::settlement::seed_grid_factors(&state)
        .await
        .unwrap();
    gp4u_server::settlement::seed_grid_factors(&app.state)
        .await
        .unwrap();
    let factors = app
        .call(Method::GET, paths::GRID_FACTORS, Some(&app.admin), None)
        .await;
    let factor = |region: &str| {
        factors.body["factors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|factor| factor["region"] == region)
            .unwrap_or_else(|| panic!("no {region}: {:?}", factors.body))
            .clone()
    };
    let configured = factor("us-east-1");
    assert_eq!(
        (
            configured["g_co2e_per_kwh"].clone(),
            configured["source"].clone()
        ),
        (json!(123.0), json!("our meter"))
    );
    let kept = factor("eu-north-1");
    assert_eq!(
        (kept["g_co2e_per_kwh"].clone(), kept["source"].clone()),
        (json!(35.5), json!("Ember 2025 review"))
    );
    // Regions the operator did not list come from the built-in table, with its sources.
    assert!(
        factor("eu-west-1")["source"]
            .as_str()
            .unwrap()
            .contains("a default for operators to replace"),
        "{:?}",
        factors.body
    );
}

on_both_engines!(
    proofs_are_held_to_the_assigned_gpu_as_registered,
    a_gpu_without_a_registered_limit_gets_one_from_its_agent,
    an_operators_carbon_table_seeds_the_grid_factors,
    the_energy_chamber_sums_carbon_for_customers_providers_and_the_platform,
    the_veritas_record_names_the_gpu_and_its_driver,
    agent_polls_measure_the_nodes_uptime_for_atlas,
    a_university_provider_pays_the_student_programme_its_share,
    one_unsettleable_job_does_not_stop_the_others,
    a_full_array_of_committed_packets_is_not_too_large,
    the_first_sample_counts_when_the_clock_moves_within_a_request,
    a_mostly_renewable_node_makes_its_jobs_credit_eligible,
    proofs_are_verified_against_the_sealed_run,
    a_finished_job_feeds_the_nodes_uptime_and_provenance_to_atlas,
    a_short_credit_is_refused_with_402_and_nothing_is_held,
    a_completed_job_is_metered_settled_once_and_sealed,
    a_provider_fault_costs_the_customer_nothing,
    admins_update_grid_factors_with_a_source,
);
