//! `gp4u verify` against the real binary on SQLite: a job run to the end by a provider acting
//! over HTTP (no Docker), its proofs submitted, then the verifier passes, reads the log from the
//! public routes without the token (seen through a recording proxy), witnesses the log alone
//! without a token, catches tampering in the database, keeps a checkpoint for consistency, and
//! re-verifies offline from saved files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[allow(dead_code)]
#[path = "../src/verify.rs"]
mod verify;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, mint, start_server};
use ed25519_dalek::SigningKey;
use gp4u_attest::energy::{
    EnergyClaim, PowerReading, ReadingCommitment, ReadingOpening, commit_reading, prove_energy,
    telemetry_digest,
};
use gp4u_attest::hardware::{Assurance, GpuIdentity, HardwareClaim, sign_hardware};
use gp4u_attest::proofs::{EnergySubmission, ProofSubmission};
use gp4u_client::Client;
use gp4u_core::energy::{interval_weights, watts_to_mw};
use gp4u_ledger::checkpoint::{Checkpoint, sign_checkpoint};
use gp4u_ledger::hash::{leaf_hash, to_hex};
use gp4u_ledger::note::verifier_key;
use gp4u_ledger::reference::{consistency_proof, mth};
use gp4u_proto::{JobLedger, TelemetryPacket, paths};
use gp4u_testkit::journey;
use rand_core::OsRng;
use serde_json::{Value, json};
use sqlx::Row;

const WATTS: f64 = 380.0;
/// The power limit `register` registers (700 W), in mW: the energy proofs' bound.
const POWER_LIMIT_MW: u64 = 700_000;

fn verify_cmd(job: &str, base: &str, token: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["verify", job, "--server", base, "--token", token])
        .args(extra)
        .env("GP4U_LOG", "warn")
        .env_remove("GP4U_SERVER")
        .env_remove("GP4U_TOKEN")
        .output()
        .unwrap()
}

/// `gp4u verify` without a job: a witness of the log. `GP4U_TOKEN` is set, to show that even a
/// configured token is not sent.
fn witness_cmd(base: &str, token: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["verify", "--server", base])
        .args(extra)
        .env("GP4U_LOG", "warn")
        .env_remove("GP4U_SERVER")
        .env("GP4U_TOKEN", token)
        .output()
        .unwrap()
}

/// A loopback proxy in front of the server that records each request's path and whether it
/// carried an `Authorization` header, then forwards it as it came.
struct RecordingProxy {
    base: String,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

impl RecordingProxy {
    async fn start(upstream: &str) -> RecordingProxy {
        let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (upstream, recorded, http) =
            (upstream.to_owned(), seen.clone(), reqwest::Client::new());
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (upstream, recorded, http) = (upstream.clone(), recorded.clone(), http.clone());
            async move {
                let path = request
                    .uri()
                    .path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let authorization = request.headers().get("authorization").cloned();
                recorded
                    .lock()
                    .unwrap()
                    .push((path.clone(), authorization.is_some()));
                let mut forward =
                    http.request(request.method().clone(), format!("{upstream}{path}"));
                if let Some(value) = authorization {
                    forward = forward.header("authorization", value);
                }
                let answer = forward.send().await.unwrap();
                let mut response = axum::response::Response::builder().status(answer.status());
                if let Some(value) = answer.headers().get("content-type") {
                    response = response.header("content-type", value);
                }
                response
                    .body(axum::body::Body::from(answer.bytes().await.unwrap()))
                    .unwrap()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        RecordingProxy { base, seen }
    }

    /// The requests seen since the last call: (path and query, with a token).
    fn take(&self) -> Vec<(String, bool)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Every request to the log went without the token, every other one with it; and the log's
/// `paths` were all asked for.
#[track_caller]
fn assert_log_read_without_token(seen: &[(String, bool)], wanted: &[String]) {
    // The public log: the key, the checkpoint, entries and proofs.
    let log = [
        paths::LEDGER_PUBLIC_KEY,
        paths::LEDGER_CHECKPOINT,
        paths::LEDGER_ENTRIES,
        paths::LEDGER_INCLUSION,
        paths::LEDGER_CONSISTENCY,
    ];
    for (path, with_token) in seen {
        let public = log.iter().any(|route| path.starts_with(route));
        assert_eq!(
            *with_token,
            !public,
            "{path} was requested {} the token: {seen:?}",
            if *with_token { "with" } else { "without" }
        );
    }
    for wanted in wanted {
        assert!(
            seen.iter().any(|(path, _)| path.starts_with(wanted)),
            "no request for {wanted}: {seen:?}"
        );
    }
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_passes(output: &Output) -> String {
    let (stdout, stderr) = text(output);
    assert!(
        output.status.success(),
        "verify failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[track_caller]
fn assert_fails_naming(output: &Output, names: &[&str]) {
    let (stdout, stderr) = text(output);
    println!("{stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "verify should fail:\n{stdout}\n{stderr}"
    );
    for name in names {
        assert!(
            stderr.contains(name),
            "stderr does not name {name:?}:\n{stderr}\n--- stdout:\n{stdout}"
        );
    }
}

async fn wait_for<T, F, Fut>(what: &str, seconds: u64, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The finished job: everything the tampering cases need.
struct Finished {
    job_id: String,
    node_id: String,
    customer: String,
    /// The node's provider, for another node and job.
    provider: String,
}

/// A client of the server at `base` as `token`, that sends each request once (a refusal is
/// the test's to see, not to be retried).
fn speaker(base: &str, token: &str) -> Client {
    Client::new(base, Some(token)).unwrap().with_attempts(1)
}

/// Registers a node with one RTX 4090 (`uuid`, 700 W) as its provider: (node, GPU).
async fn register(provider: &Client, key: &SigningKey, uuid: &str) -> (String, String) {
    let mut body = journey::register_one_gpu("us-east-1", "RTX 4090", 24.0, 3.1);
    body.public_key = gp4u_attest::key::public_key_base64(key);
    body.renewable_pct = Some(50.0);
    body.gpus[0].uuid = Some(uuid.into());
    body.gpus[0].driver_version = Some("550.54.15".into());
    body.gpus[0].power_limit_watts = 700.0;
    let registered = provider.register(&body).await.unwrap();
    (registered.node_id, registered.gpus[0].id.clone())
}

async fn submit_job(customer: &Client, gpu: &str) -> String {
    customer
        .submit(
            &json!({"name": "verify e2e", "gpuId": gpu, "workload_type": "TRAINING",
                    "expectedDurationHours": 4.0, "docker_image": "registry.example/org/bert",
                    "docker_image_sha256": format!("sha256:{}", "ab".repeat(32)),
                    "command": ["python", "train.py"], "env": {"EPOCHS": "3"}, "costEstimate": 0.01}),
            None,
        )
        .await
        .unwrap()
        .id
}

/// A job its provider ran to the end over HTTP: the readings it committed to.
struct Ran {
    sealed: Vec<(i64, ReadingCommitment)>,
    openings: Vec<ReadingOpening>,
    max_gap_ms: i64,
}

/// Takes the assignment of `job_id` on `node_id`, sends telemetry with power commitments (the
/// server stamps each sample) and the final packet, and waits for the settlement.
async fn run_to_end(provider: &Client, customer: &Client, node_id: &str, job_id: &str) -> Ran {
    // The agent's long poll hands the job out.
    wait_for("the assignment", 30, || async move {
        provider
            .next_assignment(node_id, 1)
            .await
            .unwrap()
            .filter(|assignment| assignment.job_id == job_id)
    })
    .await;

    let power_mw = watts_to_mw(WATTS);
    let mut openings = Vec::new();
    let mut sealed: Vec<(i64, ReadingCommitment)> = Vec::new();
    let mut max_gap_ms = 0;
    let packets = 5;
    for n in 0..packets {
        let (commitment, opening) = commit_reading(
            PowerReading {
                power_mw,
                renewable_mw: power_mw / 2,
            },
            &mut OsRng,
        );
        let last = n == packets - 1;
        let packet = TelemetryPacket {
            job_id: job_id.into(),
            node_id: node_id.into(),
            gpu_utilization_pct: 94.2,
            vram_used_gb: 22.1,
            vram_allocated_gb: 24.0,
            power_draw_watts: WATTS,
            temperature_c: 72.0,
            outbound_bytes_per_sec: 1_200_000.0,
            inferred_pattern: Some("TRAINING".into()),
            unique_dest_ips: Some(2),
            foreign_gpu_processes: Some(0),
            throttling: None,
            dest_ports: None,
            exit_code: last.then_some(0),
            is_final: last.then_some(true),
            power_commitment: Some(commitment.to_base64()),
        };
        let reply = provider
            .post_telemetry(&packet, Duration::from_secs(30))
            .await
            .unwrap_or_else(|error| panic!("packet {n}: {error}"));
        assert!(!reply.kill_job, "{reply:?}");
        sealed.push((reply.at_ms.unwrap(), commitment));
        max_gap_ms = reply.max_gap_ms.unwrap();
        openings.push(opening);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    wait_for("the settlement", 30, || async move {
        customer.settlement(job_id).await.ok()
    })
    .await;
    Ran {
        sealed,
        openings,
        max_gap_ms,
    }
}

/// The energy proof of a run's readings (50 % renewable), each bounded by `power_limit_mw`.
fn energy_proof(job_id: &str, ran: &Ran, power_limit_mw: u64) -> String {
    let timestamps: Vec<i64> = ran.sealed.iter().map(|(at, _)| *at).collect();
    let weights = interval_weights(&timestamps, 0, ran.max_gap_ms).unwrap();
    let energy_mwms: u64 = weights
        .iter()
        .zip(&ran.openings)
        .map(|(w, opening)| w * opening.power_mw)
        .sum();
    let claim = EnergyClaim {
        energy_mwms,
        renewable_share_bp: 5000,
        power_limit_mw,
    };
    let proof = prove_energy(job_id, &claim, &ran.openings, &weights, &mut OsRng).unwrap();
    ProofSubmission::Energy(EnergySubmission {
        job_id: job_id.to_owned(),
        claim,
        proof,
    })
    .to_json()
}

/// The GPU `register` registers with `uuid`, as an attestation names it (24 GB = 24 576 MiB).
fn registered_gpu(uuid: &str) -> GpuIdentity {
    GpuIdentity {
        name: "RTX 4090".into(),
        uuid: uuid.into(),
        vram_mb: 24_576,
        driver_version: "550.54.15".into(),
        serial: None,
        power_limit_mw: POWER_LIMIT_MW,
    }
}

/// A hardware attestation of a run naming `gpu`, signed with `key`.
fn hardware_proof(
    job_id: &str,
    node_id: &str,
    ran: &Ran,
    gpu: GpuIdentity,
    assurance: Assurance,
    key: &SigningKey,
) -> String {
    let cc_evidence =
        (assurance == Assurance::HardwareAttested).then(|| b"not NVIDIA evidence".to_vec());
    ProofSubmission::Hardware(
        sign_hardware(
            HardwareClaim {
                job_id: job_id.to_owned(),
                node_id: node_id.to_owned(),
                gpu,
                telemetry_digest: telemetry_digest(job_id, &ran.sealed),
                assurance,
                cc_evidence,
                issued_at_ms: 1_767_225_600_000,
            },
            key,
        )
        .unwrap(),
    )
    .to_json()
}

/// Posts a proof for `node_id` as `who`: the status, and the refusal's text.
async fn post_proof(who: &Client, node_id: &str, body: String) -> (u16, String) {
    match who.submit_proof(node_id, &body).await {
        Ok(status) => (status, String::new()),
        Err(error) => (error.status().unwrap_or_default(), error.to_string()),
    }
}

/// Posts the energy proof once the platform has accounted the job's energy (503 before).
async fn post_energy_proof(provider: &Client, node_id: &str, body: String) {
    wait_for("the energy proof to be accepted", 30, || {
        let body = body.clone();
        async move {
            let (status, answer) = post_proof(provider, node_id, body).await;
            assert!(
                matches!(status, 200 | 201 | 503),
                "energy proof: {status} {answer}"
            );
            (status != 503).then_some(())
        }
    })
    .await;
}

/// The kinds of a job ledger's entries.
fn kinds(ledger: &JobLedger) -> Vec<&str> {
    ledger
        .entries
        .iter()
        .map(|proven| proven.entry.kind.as_str())
        .collect()
}

/// Waits until the job's ledger has both proofs and its settlement sealed, nothing pending.
async fn wait_sealed(customer: &Client, job_id: &str) {
    wait_for("the proofs to be sealed", 30, || async move {
        let ledger = customer.job_ledger(job_id).await.unwrap();
        let kinds = kinds(&ledger);
        let proofs = kinds
            .iter()
            .filter(|kind| **kind == "proof.verified")
            .count();
        (proofs == 2 && kinds.contains(&"billing.settled") && ledger.pending == 0).then_some(())
    })
    .await;
}

/// Runs a job to the end as its provider's agent would, over HTTP, then proves it.
async fn finished_job(base: &str, data_dir: &Path) -> Finished {
    let admin = speaker(base, &mint(data_dir, "usr_admin", 3));
    let user = |name: &'static str, role: &'static str, credit: Option<f64>| {
        let admin = &admin;
        async move {
            admin
                .create_user(&journey::new_user(name, role, credit))
                .await
                .unwrap()
                .id
        }
    };
    let provider_id = user("Ada's GPUs", "provider", None).await;
    let customer_id = user("Grace", "customer", Some(100_000.0)).await;
    let other_id = user("Other GPUs", "provider", None).await;
    let provider_token = mint(data_dir, &provider_id, 2);
    let customer_token = mint(data_dir, &customer_id, 1);
    let (provider, customer, other) = (
        speaker(base, &provider_token),
        speaker(base, &customer_token),
        speaker(base, &mint(data_dir, &other_id, 2)),
    );

    let node_key = SigningKey::generate(&mut OsRng);
    let (node_id, gpu_id) = register(&provider, &node_key, "GPU-5e1c").await;
    let other_key = SigningKey::generate(&mut OsRng);
    let (_other_node, _) = register(&other, &other_key, "GPU-0th3").await;

    let job_id = submit_job(&customer, &gpu_id).await;
    let ran = run_to_end(&provider, &customer, &node_id, &job_id).await;

    // Proofs: the energy proof over the committed readings, bounded by the GPU's registered
    // limit, and the hardware attestation of the GPU as registered.
    let energy = energy_proof(&job_id, &ran, POWER_LIMIT_MW);
    post_energy_proof(&provider, &node_id, energy).await;
    let hardware = |assurance| {
        hardware_proof(
            &job_id,
            &node_id,
            &ran,
            registered_gpu("GPU-5e1c"),
            assurance,
            &node_key,
        )
    };
    // The packets above do not say `emulated`, so the GPU counts as real: a provider-signed
    // attestation is the honest label, and `hardware_attested` is refused (its evidence cannot
    // be checked here).
    let (status, body) =
        post_proof(&provider, &node_id, hardware(Assurance::HardwareAttested)).await;
    assert_eq!(status, 400, "hardware_attested: {body}");
    assert!(
        body.contains("evidence cannot be verified here"),
        "hardware_attested: {body}"
    );
    let (status, body) = post_proof(&provider, &node_id, hardware(Assurance::ProviderSigned)).await;
    assert_eq!(status, 201, "{body}");

    // Refusals: garbage 400, another provider 404, a customer 403.
    let (status, body) = post_proof(
        &provider,
        &node_id,
        "{\"kind\":\"energy\",\"junk\":1}".into(),
    )
    .await;
    assert_eq!(status, 400, "garbage: {body}");
    let (status, body) = post_proof(&other, &node_id, hardware(Assurance::ProviderSigned)).await;
    assert_eq!(status, 404, "another provider: {body}");
    let (status, body) = post_proof(&customer, &node_id, hardware(Assurance::ProviderSigned)).await;
    assert_eq!(status, 403, "a customer: {body}");

    // Everything sealed: both proofs and the settlement, nothing pending.
    wait_sealed(&customer, &job_id).await;
    Finished {
        job_id,
        node_id,
        customer: customer_token,
        provider: provider_token,
    }
}

async fn db(data_dir: &Path) -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", data_dir.join("gp4u.db").display()))
        .await
        .unwrap()
}

/// One stored text value: `SELECT {column} FROM {row}` (`row` = "table WHERE …").
async fn stored(pool: &sqlx::SqlitePool, column: &str, row: &str) -> String {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {column} FROM {row}")))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("SELECT {column} FROM {row}: {error}"))
        .get(0)
}

/// Overwrites one stored value (tampering, and putting it back).
async fn store(pool: &sqlx::SqlitePool, column: &str, row: &str, value: &str) {
    let (table, filter) = row.split_once(" WHERE ").unwrap();
    let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET {column} = $1 WHERE {filter}"
    )))
    .bind(value)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1, "UPDATE {table} SET {column} WHERE {filter}");
}

/// The served job ledger, for picking entries to tamper with.
async fn job_ledger(base: &str, finished: &Finished) -> JobLedger {
    speaker(base, &finished.customer)
        .job_ledger(&finished.job_id)
        .await
        .unwrap()
}

/// The log index of the ledger's first entry of `kind`.
fn index_of(ledger: &JobLedger, kind: &str) -> u64 {
    ledger
        .entries
        .iter()
        .find(|proven| proven.entry.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} entry: {ledger:?}"))
        .entry
        .index
}

/// Submits another job for the customer and waits until the log is larger than `size`.
async fn job_growing_the_log(base: &str, token: &str, size: u64) -> String {
    let customer = speaker(base, token);
    let gpus = customer.gpus().await.unwrap();
    let job = submit_job(&customer, &gpus.gpus[0].id).await;
    wait_for("the log to grow", 30, || {
        let customer = &customer;
        async move {
            let note = customer.checkpoint().await.unwrap();
            (verify::claimed_size(&note).unwrap() > size).then_some(())
        }
    })
    .await;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_catches_tampering_and_works_offline() {
    let data_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data_dir.path().join("gp4u.db").display());
    let server = start_server(data_dir.path(), &url);
    let base = server.base.clone();
    let finished = finished_job(&base, data_dir.path()).await;
    let job = finished.job_id.as_str();
    let token = finished.customer.as_str();

    // 1. Everything holds; each check is printed.
    let output = verify_cmd(job, &base, token, &["--require-proofs"]);
    let stdout = assert_passes(&output);
    println!("{stdout}");
    for line in [
        "✓ checkpoint signature",
        "trust on first use",
        "✓ entries",
        "✓ energy and carbon (entry",
        "renewable 50 % declared by the provider",
        "✓ veritas (entry",
        "exit code 0, COMPLETE; GPU RTX 4090 (driver 550.54.15)",
        "reproducible",
        "✓ hardware proof",
        "✓ energy proof",
        "each ≤ 700000 mW, renewable ≥ 50.00 % (the registered power limit of the assigned GPU",
        "✓ served proofs",
        "✓ settlement",
        "✓ served settlement",
        "all checks passed",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }

    assert!(stdout.contains("✓ latest checkpoint"), "{stdout}");

    // 1b. Through a recording proxy: the log (key, checkpoint, consistency proofs) is read from
    // the public routes without the token; the token goes only with the job's own documents.
    let proxy = RecordingProxy::start(&base).await;
    assert_passes(&verify_cmd(job, &proxy.base, token, &["--require-proofs"]));
    assert_log_read_without_token(
        &proxy.take(),
        &[
            paths::ledger_public_key(),
            paths::ledger_checkpoint(),
            paths::job_ledger(job),
            paths::job_proofs(job),
            paths::job_settlement(job),
        ],
    );
    // Without a token, the job's documents cannot be fetched: said so, naming the flag.
    let output = Command::new(BIN)
        .args(["verify", job, "--server", &proxy.base])
        .env("GP4U_LOG", "warn")
        .env_remove("GP4U_TOKEN")
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("--token"), "{stderr}");
    assert!(stderr.contains("checks the public log"), "{stderr}");
    assert!(proxy.take().is_empty(), "nothing fetched without the token");

    // A witness without a token (none sent even though GP4U_TOKEN is set): the checkpoint's
    // signature, kept for the next run.
    let witness = work.path().join("witness.json");
    let witness_arg = witness.to_str().unwrap();
    let witness_dir = work.path().join("witness");
    let stdout = assert_passes(&witness_cmd(
        &proxy.base,
        token,
        &["--checkpoint", witness_arg],
    ));
    assert!(stdout.contains("the public log"), "{stdout}");
    assert!(stdout.contains("✓ checkpoint signature"), "{stdout}");
    assert!(
        stdout.contains("! consistency: no earlier checkpoint"),
        "{stdout}"
    );
    assert!(witness.exists());
    let witness_first = work.path().join("witness-first.json");
    std::fs::copy(&witness, &witness_first).unwrap();
    assert_log_read_without_token(
        &proxy.take(),
        &[paths::ledger_public_key(), paths::ledger_checkpoint()],
    );

    // 2. A checkpoint kept between runs: the second run checks consistency, after the log grew.
    let checkpoint = work.path().join("checkpoint.json");
    let checkpoint_arg = checkpoint.to_str().unwrap();
    let stdout = assert_passes(&verify_cmd(
        job,
        &base,
        token,
        &["--checkpoint", checkpoint_arg],
    ));
    assert!(
        stdout.contains("! consistency: no earlier checkpoint"),
        "{stdout}"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
    let old_size = verify::claimed_size(saved["checkpoint"].as_str().unwrap()).unwrap();
    // Grow the log: another job by the same customer (job.created and the rest get sealed).
    let second_job = job_growing_the_log(&base, token, old_size).await;
    let stdout = assert_passes(&verify_cmd(
        job,
        &proxy.base,
        token,
        &["--checkpoint", checkpoint_arg],
    ));
    assert!(stdout.contains("✓ consistency"), "{stdout}");
    assert!(
        stdout.contains("key saved with the earlier checkpoint"),
        "{stdout}"
    );
    // The consistency proofs, from the kept checkpoint and to the latest one, came from the
    let consistency_from = format!("{}?from=", paths::ledger_consistency());
    // public route without the token.
    assert_log_read_without_token(&proxy.take(), std::slice::from_ref(&consistency_from));
    // The witness, too, sees that the log only grew (and keeps what it saw for offline use).
    let stdout = assert_passes(&witness_cmd(
        &proxy.base,
        token,
        &[
            "--checkpoint",
            witness_arg,
            "--save",
            witness_dir.to_str().unwrap(),
        ],
    ));
    assert!(stdout.contains("✓ consistency"), "{stdout}");
    assert!(
        stdout.contains("key saved with the earlier checkpoint"),
        "{stdout}"
    );
    assert_log_read_without_token(&proxy.take(), std::slice::from_ref(&consistency_from));

    // A job without proofs (queued, never ran): a warning naming them, an error when required.
    let stdout = assert_passes(&verify_cmd(&second_job, &base, token, &[]));
    assert!(
        stdout.contains("! proofs: no sealed hardware or energy proof"),
        "{stdout}"
    );
    assert!(stdout.contains("! settlement"), "{stdout}");
    assert_fails_naming(
        &verify_cmd(&second_job, &base, token, &["--require-proofs"]),
        &["proofs: no sealed hardware or energy proof"],
    );
    // Cancelled, it is settled (nothing charged, the hold refunded) and verifies as well.
    let customer = speaker(&base, token);
    customer.cancel(&second_job).await.unwrap();
    wait_for("the cancelled job's settlement to be sealed", 30, || {
        let (customer, second_job) = (&customer, &second_job);
        async move {
            let ledger = customer.job_ledger(second_job).await.unwrap();
            (kinds(&ledger).contains(&"billing.settled") && ledger.pending == 0).then_some(())
        }
    })
    .await;
    let stdout = assert_passes(&verify_cmd(&second_job, &base, token, &[]));
    assert!(stdout.contains("✓ settlement"), "{stdout}");
    assert!(stdout.contains("charged 0.00"), "{stdout}");

    // 3. Save everything for offline use (checked at the end, with the server gone), with
    // the consistency proof from the kept checkpoint (a copy of it is kept for the offline run:
    // the log may have grown since, the second job's events being sealed meanwhile).
    let saved_dir = work.path().join("saved");
    let kept = work.path().join("checkpoint-before-save.json");
    std::fs::copy(&checkpoint, &kept).unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    let kept_size = verify::claimed_size(saved["checkpoint"].as_str().unwrap()).unwrap();
    job_growing_the_log(&base, token, kept_size).await;
    assert_passes(&verify_cmd(
        job,
        &base,
        token,
        &[
            "--save",
            saved_dir.to_str().unwrap(),
            "--checkpoint",
            checkpoint_arg,
        ],
    ));

    // 4. Tampering in the database, each case restored afterwards.
    let pool = db(data_dir.path()).await;
    let ledger = job_ledger(&base, &finished).await;
    let passes = || assert_passes(&verify_cmd(job, &base, token, &[]));
    let fails_naming =
        |names: &[&str]| assert_fails_naming(&verify_cmd(job, &base, token, &[]), names);

    // 4a. A ledger entry's body.
    let index = index_of(&ledger, "billing.settled");
    let entry = format!("ledger_entries WHERE log_index = {index}");
    let body = stored(&pool, "body", &entry).await;
    let altered = body.replacen("\"refunded\":", "\"refunded\":1", 1);
    assert_ne!(altered, body);
    store(&pool, "body", &entry, &altered).await;
    fails_naming(&[&format!("entry {index} (billing.settled)"), "altered"]);
    store(&pool, "body", &entry, &body).await;
    passes();

    // 4b. The settlement row.
    let settlement = format!("settlements WHERE job_id = '{job}'");
    let body = stored(&pool, "body", &settlement).await;
    let mut value: Value = serde_json::from_str(&body).unwrap();
    value["refunded"] = json!(value["refunded"].as_i64().unwrap() + 1_000_000);
    store(&pool, "body", &settlement, &value.to_string()).await;
    fails_naming(&["served settlement", "differs"]);
    store(&pool, "body", &settlement, &body).await;
    passes();

    // 4c. The hardware proof row: another GPU named.
    let hardware = format!("proofs WHERE job_id = '{job}' AND kind = 'hardware'");
    let body = stored(&pool, "body", &hardware).await;
    let mut value: Value = serde_json::from_str(&body).unwrap();
    value["gpu"]["name"] = json!("NVIDIA H100 80GB HBM3");
    store(&pool, "body", &hardware, &value.to_string()).await;
    fails_naming(&["served hardware proof"]);
    store(&pool, "body", &hardware, &body).await;
    passes();

    // 4d. The energy proof row: its claim raised by one mW·ms.
    let energy = format!("proofs WHERE job_id = '{job}' AND kind = 'energy'");
    let body = stored(&pool, "body", &energy).await;
    let mut value: Value = serde_json::from_str(&body).unwrap();
    let claimed = value["claim"]["energy_mwms"].as_u64().unwrap();
    value["claim"]["energy_mwms"] = json!(claimed + 1);
    store(&pool, "body", &energy, &value.to_string()).await;
    fails_naming(&["served energy proof"]);
    store(&pool, "body", &energy, &body).await;
    passes();

    // 4e. A power commitment sealed during the run, swapped for another valid commitment —
    // first the entry alone, then the entry and its stored leaf hash together.
    let index = index_of(&ledger, "telemetry.committed");
    let entry = format!("ledger_entries WHERE log_index = {index}");
    let leaf_node = format!("ledger_nodes WHERE level = 0 AND node_index = {index}");
    let body = stored(&pool, "body", &entry).await;
    let original: Value = serde_json::from_str(&body).unwrap();
    let old_commitment = original["payload"]["commitment"]
        .as_str()
        .unwrap_or_else(|| panic!("no commitment in the sealed body: {body}"))
        .to_owned();
    let (other, _) = commit_reading(
        PowerReading {
            power_mw: 1,
            renewable_mw: 0,
        },
        &mut OsRng,
    );
    let altered = body.replace(&old_commitment, &other.to_base64());
    assert_ne!(altered, body);
    store(&pool, "body", &entry, &altered).await;
    fails_naming(&[&format!("entry {index} (telemetry.committed)"), "altered"]);
    let leaf = stored(&pool, "hash", &leaf_node).await;
    let forged_leaf = to_hex(&leaf_hash(altered.as_bytes()));
    store(&pool, "hash", &leaf_node, &forged_leaf).await;
    store(&pool, "leaf_hash", &entry, &forged_leaf).await;
    fails_naming(&[&format!("entry {index} (telemetry.committed)")]);
    store(&pool, "body", &entry, &body).await;
    store(&pool, "leaf_hash", &entry, &leaf).await;
    store(&pool, "hash", &leaf_node, &leaf).await;
    passes();

    // 4f. A node hash of the tree: the sibling leaf of the job's first entry.
    let index = index_of(&ledger, "job.created");
    let sibling = format!(
        "ledger_nodes WHERE level = 0 AND node_index = {}",
        index ^ 1
    );
    let hash = stored(&pool, "hash", &sibling).await;
    let forged = to_hex(&leaf_hash(b"forged"));
    assert_eq!(forged.len(), hash.len(), "stored hash format: {hash}");
    store(&pool, "hash", &sibling, &forged).await;
    fails_naming(&[&format!("entry {index} (job.created)"), "not included"]);
    store(&pool, "hash", &sibling, &hash).await;
    passes();

    // 4g. The database altered before a job's proofs arrive: its GPU given another uuid and
    // the job another power limit. The server, reading its database, accepts an attestation
    // of that other GPU and an energy proof bounded by that other limit — but the GPU sealed
    // with the job's assignment is the registered one, and verify holds the proofs to it.
    let provider = speaker(&base, &finished.provider);
    let key = SigningKey::generate(&mut OsRng);
    let (node, gpu) = register(&provider, &key, "GPU-7a3e").await;
    let tampered = submit_job(&customer, &gpu).await;
    let ran = run_to_end(&provider, &customer, &node, &tampered).await;
    store(
        &pool,
        "uuid",
        &format!("gpus WHERE id = '{gpu}'"),
        "GPU-0th3",
    )
    .await;
    let changed = sqlx::query("UPDATE jobs SET gpu_power_limit_mw = 450000 WHERE id = $1")
        .bind(&tampered)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1);
    post_energy_proof(&provider, &node, energy_proof(&tampered, &ran, 450_000)).await;
    let other_gpu = GpuIdentity {
        uuid: "GPU-0th3".into(),
        power_limit_mw: 450_000,
        ..registered_gpu("GPU-7a3e")
    };
    let attestation = hardware_proof(
        &tampered,
        &node,
        &ran,
        other_gpu,
        Assurance::ProviderSigned,
        &key,
    );
    let (status, body) = post_proof(&provider, &node, attestation).await;
    assert_eq!(status, 201, "the altered database accepts it: {body}");
    wait_sealed(&customer, &tampered).await;
    assert_fails_naming(
        &verify_cmd(&tampered, &base, token, &[]),
        &[
            "energy proof",
            "bounds each reading by 450000 mW",
            "registered power limit of 700000 mW",
            "hardware proof",
            "gpu.uuid is \"GPU-0th3\", the assigned GPU's is \"GPU-7a3e\"",
            "gpu.power_limit_mw is 450000",
        ],
    );
    // The job's proofs were the only thing wrong: the first job still verifies.
    passes();
    pool.close().await;

    // A pinned key: the right one (from a file) passes, another one fails the signature.
    let key_file = saved_dir.join(verify::files::PUBLIC_KEY);
    let stdout = assert_passes(&verify_cmd(
        job,
        &base,
        token,
        &["--public-key", key_file.to_str().unwrap()],
    ));
    assert!(stdout.contains("key given with --public-key"), "{stdout}");
    let stranger = verifier_key(
        "gp4u.local/obsidian",
        &SigningKey::generate(&mut OsRng).verifying_key(),
    )
    .unwrap();
    assert_fails_naming(
        &verify_cmd(job, &base, token, &["--public-key", &stranger]),
        &["checkpoint signature"],
    );

    // 5. Offline from the saved files, with the server gone.
    drop(server);
    // The witness's saved log: the checkpoint and the consistency proof from the one before.
    let saved_witness: Value =
        serde_json::from_str(&std::fs::read_to_string(&witness).unwrap()).unwrap();
    assert!(verify::claimed_size(saved_witness["checkpoint"].as_str().unwrap()).is_some());
    let output = Command::new(BIN)
        .args(["verify", "--offline", witness_dir.to_str().unwrap()])
        .args(["--checkpoint", witness_first.to_str().unwrap()])
        .env("GP4U_LOG", "warn")
        .output()
        .unwrap();
    let stdout = assert_passes(&output);
    assert!(stdout.contains("the public log (offline)"), "{stdout}");
    assert!(stdout.contains("✓ consistency"), "{stdout}");
    let output = Command::new(BIN)
        .args(["verify", job, "--offline", saved_dir.to_str().unwrap()])
        .env("GP4U_LOG", "warn")
        .env_remove("GP4U_SERVER")
        .env_remove("GP4U_TOKEN")
        .output()
        .unwrap();
    let stdout = assert_passes(&output);
    assert!(stdout.contains("(offline)"), "{stdout}");
    assert!(stdout.contains("✓ energy proof"), "{stdout}");
    // And offline with the checkpoint kept before saving (same key, a log at least as large,
    // the consistency proof between them saved).
    let output = Command::new(BIN)
        .args(["verify", job, "--offline", saved_dir.to_str().unwrap()])
        .args(["--checkpoint", kept.to_str().unwrap()])
        .env("GP4U_LOG", "warn")
        .output()
        .unwrap();
    assert_passes(&output);
    let _ = finished.node_id;
}

// ---------------------------------------------------------------------------------------
// The library without HTTP: consistency against a forked or shrunk log.
// ---------------------------------------------------------------------------------------

const ORIGIN: &str = "test.example/log";

fn note(key: &SigningKey, leaves: &[[u8; 32]]) -> String {
    sign_checkpoint(
        &Checkpoint::new(ORIGIN, leaves.len() as u64, mth(leaves)),
        ORIGIN,
        key,
    )
    .unwrap()
}

fn consistency_case(
    key: &SigningKey,
    current: &[[u8; 32]],
    previous: &str,
    proof_from: &[[u8; 32]],
    old_size: u64,
) -> verify::Check {
    let vkey = verifier_key(ORIGIN, &key.verifying_key()).unwrap();
    let documents = verify::Documents {
        job_id: "job_x".into(),
        ledger: json!({"checkpoint": note(key, current), "tree_size": current.len(),
                       "public_key": vkey, "entries": [], "pending": 0}),
        proofs: None,
        settlement: None,
        latest_checkpoint: None,
        latest_consistency: None,
    };
    let proof = if old_size < proof_from.len() as u64 && old_size > 0 {
        consistency_proof(proof_from, old_size)
            .unwrap()
            .iter()
            .map(|hash| to_hex(hash))
            .collect()
    } else {
        Vec::new()
    };
    let report = verify::verify_documents(
        &documents,
        &verify::Trust {
            key: vkey.clone(),
            source: verify::KeySource::Given,
        },
        Some(&verify::SavedCheckpoint {
            public_key: vkey,
            checkpoint: previous.to_owned(),
        }),
        Some(&json!({"from": old_size, "to": current.len(), "proof": proof})),
        false,
    );
    report
        .checks
        .into_iter()
        .find(|check| check.name == "consistency")
        .expect("a consistency line")
}

#[test]
fn consistency_catches_forks_and_shrinking() {
    let key = SigningKey::generate(&mut OsRng);
    let leaves: Vec<[u8; 32]> = (0..11u8).map(|n| leaf_hash(&[n])).collect();
    let honest_old = note(&key, &leaves[..4]);
    let check = consistency_case(&key, &leaves, &honest_old, &leaves, 4);
    assert_eq!(check.status, verify::Status::Pass, "{check}");

    // A fork: the earlier checkpoint saw different entries at the same positions.
    let mut forked = leaves.clone();
    forked[2] = leaf_hash(b"rewritten");
    let forked_old = note(&key, &forked[..4]);
    let check = consistency_case(&key, &leaves, &forked_old, &leaves, 4);
    assert_eq!(check.status, verify::Status::Fail, "{check}");
    assert!(check.detail.contains("not a prefix"), "{check}");

    // Same size, different root.
    let check = consistency_case(&key, &leaves[..4], &forked_old, &leaves[..4], 4);
    assert_eq!(check.status, verify::Status::Fail, "{check}");

    // The log shrank.
    let bigger = note(&key, &leaves);
    let check = consistency_case(&key, &leaves[..6], &bigger, &leaves[..6], 11);
    assert_eq!(check.status, verify::Status::Fail, "{check}");
    assert!(check.detail.contains("shrank"), "{check}");

    // Signed by another key.
    let other = SigningKey::generate(&mut OsRng);
    let check = consistency_case(&key, &leaves, &note(&other, &leaves[..4]), &leaves, 4);
    assert_eq!(check.status, verify::Status::Fail, "{check}");
}

/// The job's checkpoint must be one of the public log's: the latest public checkpoint extends
/// it, else the job's owner was shown a log of its own.
#[test]
fn the_public_log_must_extend_the_jobs_checkpoint() {
    let key = SigningKey::generate(&mut OsRng);
    let vkey = verifier_key(ORIGIN, &key.verifying_key()).unwrap();
    let leaves: Vec<[u8; 32]> = (0..11u8).map(|n| leaf_hash(&[n])).collect();
    let mut forked = leaves.clone();
    forked[2] = leaf_hash(b"rewritten");
    let latest_check = |latest: &[[u8; 32]], proof_from: &[[u8; 32]], with_proof: bool| {
        let proof: Vec<String> = consistency_proof(proof_from, 6)
            .unwrap()
            .iter()
            .map(|hash| to_hex(hash))
            .collect();
        let documents = verify::Documents {
            job_id: "job_x".into(),
            ledger: json!({"checkpoint": note(&key, &leaves[..6]), "tree_size": 6,
                           "public_key": vkey, "entries": [], "pending": 0}),
            proofs: None,
            settlement: None,
            latest_checkpoint: Some(note(&key, latest)),
            latest_consistency: with_proof
                .then(|| json!({"from": 6, "to": latest.len(), "proof": proof})),
        };
        let trust = verify::Trust {
            key: vkey.clone(),
            source: verify::KeySource::Given,
        };
        verify::verify_documents(&documents, &trust, None, None, false)
            .checks
            .into_iter()
            .find(|check| check.name == "latest checkpoint")
            .expect("a latest checkpoint line")
    };
    let check = latest_check(&leaves, &leaves, true);
    assert_eq!(check.status, verify::Status::Pass, "{check}");
    assert!(check.detail.contains("every witness sees"), "{check}");
    // The public log is another one than the job was shown (its proof made from it, too).
    let check = latest_check(&forked, &forked, true);
    assert_eq!(check.status, verify::Status::Fail, "{check}");
    assert!(check.detail.contains("another log"), "{check}");
    // Smaller than the job's checkpoint.
    let check = latest_check(&leaves[..4], &leaves, false);
    assert_eq!(check.status, verify::Status::Fail, "{check}");
    assert!(check.detail.contains("smaller"), "{check}");
    // Same size, another root.
    let check = latest_check(&forked[..6], &leaves, false);
    assert_eq!(check.status, verify::Status::Fail, "{check}");
    // No proof at hand (a directory saved by an older version): a warning, not a pass.
    let check = latest_check(&leaves, &leaves, false);
    assert_eq!(check.status, verify::Status::Warn, "{check}");
}

/// A witness of the log alone: the signature, and consistency with what it saw before.
#[test]
fn a_witness_checks_the_signature_and_that_the_log_only_grew() {
    let key = SigningKey::generate(&mut OsRng);
    let vkey = verifier_key(ORIGIN, &key.verifying_key()).unwrap();
    let leaves: Vec<[u8; 32]> = (0..11u8).map(|n| leaf_hash(&[n])).collect();
    let mut forked = leaves.clone();
    forked[2] = leaf_hash(b"rewritten");
    let trust = verify::Trust {
        key: vkey.clone(),
        source: verify::KeySource::Saved,
    };
    let witness = |latest: &[[u8; 32]], seen_before: &[[u8; 32]]| {
        let proof: Vec<String> = consistency_proof(latest, 4)
            .unwrap()
            .iter()
            .map(|hash| to_hex(hash))
            .collect();
        let previous = verify::SavedCheckpoint {
            public_key: vkey.clone(),
            checkpoint: note(&key, seen_before),
        };
        verify::verify_log(
            &note(&key, latest),
            &vkey,
            &trust,
            Some(&previous),
            Some(&json!({"from": 4, "to": latest.len(), "proof": proof})),
        )
    };
    let report = witness(&leaves, &leaves[..4]);
    assert!(report.ok(), "{:?}", report.checks);
    assert!(
        report
            .checks
            .iter()
            .any(|check| check.name == "consistency" && check.status == verify::Status::Pass),
        "{:?}",
        report.checks
    );
    assert!(report.new_checkpoint.is_some());
    // It saw another log before: a fork, and the new checkpoint is not kept.
    let report = witness(&leaves, &forked[..4]);
    assert!(!report.ok(), "{:?}", report.checks);
    assert!(report.new_checkpoint.is_none());
    // A checkpoint signed by another key.
    let other = SigningKey::generate(&mut OsRng);
    let report = verify::verify_log(&note(&other, &leaves), &vkey, &trust, None, None);
    assert_eq!(
        report.failures().next().map(|check| check.name.as_str()),
        Some("checkpoint signature"),
        "{:?}",
        report.checks
    );
}
