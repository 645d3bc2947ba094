//! Black box: the real `gp4u` binary on a real port, driven over HTTP like a user would,
//! on SQLite and on PostgreSQL. Stage 0–1 of SPEC: bootstrap admin → provider registers a GPU →
//! customer submits → 201 with the server's cost; the chambers see it; SIGTERM stops cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Running, assert_verifies_within, mint, sha256_hex, start_server};
use gp4u_client::Client;
use gp4u_proto::{
    FailureReason, GpuBrief, HostPosture, JobNetwork, JobStatus, NewUserBody, ProofKind,
    VeritasRecord,
};
use gp4u_store::Engine;
use gp4u_store::testing::TestDatabase;
use gp4u_testkit::{eventually_async, journey};
use serde_json::{Value, json};

async fn stage_0_to_1(engine: Engine) {
    let Some(db) = TestDatabase::create(engine, "e2e_stage_0_to_1").await else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();
    let server = start_server(data_dir.path(), &db.url);
    let base = server.base.clone();

    // The server generated its token secret (mode 0600); the CLI mints with it. Everything
    // else goes through gp4u-client, as the CLI and the agent speak to the server.
    let admin = Client::new(&base, Some(&mint(data_dir.path(), "usr_admin", 3))).unwrap();
    let provider = admin
        .create_user(&journey::new_user("Ada's GPUs", "provider", None))
        .await
        .unwrap();
    let customer = admin
        .create_user(&NewUserBody {
            name: "Grace".into(),
            role: "customer".into(),
            university: None,
            region: Some("eu-west-1".into()),
            credit: Some(100000.0),
        })
        .await
        .unwrap();
    assert_eq!((provider.clearance, customer.clearance), (2, 1));
    // The provider's token minted with the secret, the customer's issued by the platform.
    let provider = Client::new(&base, Some(&mint(data_dir.path(), &provider.id, 2))).unwrap();
    let issued = admin.issue_token(&customer.id, Some(3600)).await.unwrap();
    let customer = Client::new(&base, Some(&issued.token)).unwrap();

    let registered = provider
        .register(&journey::register_one_gpu(
            "us-east-1",
            "RTX 4090",
            24.0,
            3.1,
        ))
        .await
        .unwrap();
    let gpu_id = registered.gpus[0].id.clone();
    let listing = customer.gpus().await.unwrap();
    assert_eq!(listing.gpus[0].id, gpu_id);

    let accepted = customer
        .submit(
            &json!({"name": "BERT fine-tune — medical NLP", "gpuId": gpu_id, "workload_type": "TRAINING",
                    "expectedDurationHours": 4.0, "docker_image": "registry.example/org/bert",
                    "docker_image_sha256": format!("sha256:{}", "ab".repeat(32)), "command": ["python", "train.py"],
                    "env": {"EPOCHS": "3"}, "costEstimate": 0.01}),
            Some("e2e-stage-0-to-1"),
        )
        .await
        .unwrap();
    assert_eq!(accepted.status, JobStatus::Pending);
    assert_eq!(accepted.cost_estimate, 12.4);
    assert_eq!(
        accepted.gpu,
        Some(GpuBrief {
            name: "RTX 4090".into(),
            region: "us-east-1".into()
        })
    );
    let job_id = accepted.id.as_str();
    // Atlas places it on the only GPU at once.
    let placed = eventually_async(Duration::from_secs(10), || async {
        let job = customer.job(job_id).await.unwrap();
        if job.status == JobStatus::Pending {
            return false;
        }
        assert_eq!(job.status, JobStatus::Assigned);
        assert_eq!(job.gpu_id.as_deref(), Some(gpu_id.as_str()));
        assert!(
            job.placement
                .as_ref()
                .is_some_and(|placement| placement["score"].as_f64().is_some()),
            "{job:?}"
        );
        true
    })
    .await;
    assert!(placed, "the job was not placed");
    // The same key again: the same job, not a second one.
    let again = customer
        .submit(&json!({"name": "BERT fine-tune — medical NLP", "gpuId": gpu_id, "workload_type": "TRAINING",
                    "expectedDurationHours": 4.0, "docker_image": "registry.example/org/bert",
                    "docker_image_sha256": format!("sha256:{}", "ab".repeat(32)), "command": ["python", "train.py"],
                    "env": {"EPOCHS": "3"}, "costEstimate": 0.01}), Some("e2e-stage-0-to-1"))
        .await
        .unwrap();
    assert_eq!(again.id, accepted.id);

    // The relay and the chambers run in the server: the events reach all three
    // (node.registered, job.created, job.assigned).
    let caught_up = eventually_async(Duration::from_secs(10), || async {
        let chambers = admin.chambers().await.unwrap();
        if !(chambers.head == 3
            && chambers
                .chambers
                .iter()
                .all(|chamber| chamber.lag == 0 && chamber.cursor == 3))
        {
            return false;
        }
        assert_eq!(
            chambers.chambers[0].summary["hottest"]["model_region"],
            "RTX 4090@us-east-1"
        );
        assert_eq!(
            chambers.chambers[2].summary["underserved_regions"][0]["region"],
            "eu-west-1"
        );
        true
    })
    .await;
    assert!(
        caught_up,
        "chambers did not catch up: {:?}",
        admin.chambers().await
    );

    // Graceful shutdown on SIGTERM: exit status 0.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn stage_0_to_1_on_sqlite() {
    stage_0_to_1(Engine::Sqlite).await;
}

#[tokio::test]
async fn stage_0_to_1_on_postgres() {
    stage_0_to_1(Engine::Postgres).await;
}

#[test]
fn a_short_token_secret_is_refused_with_a_clear_error() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["server", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("GP4U_TOKEN_SECRET", "short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    assert!(
        !stderr.contains("short\""),
        "the secret must not be echoed: {stderr}"
    );
}

#[test]
fn mint_without_a_secret_says_where_to_find_one() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["token", "mint", "--sub", "usr_x", "--clr", "1"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env_remove("GP4U_TOKEN_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("GP4U_TOKEN_SECRET"));
}

/// A provider starts `gp4u agent` (emulated GPU, Docker runtime) as the README says; a customer's
/// digest-pinned job is placed on it, gets its uploaded input verified and read-only, runs in the
/// hardened container and ends as it should; its outputs and logs reach the customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_a_digest_pinned_job_end_to_end() {
    let Some((image, digest)) =
        common::docker_image("an_agent_runs_a_digest_pinned_job_end_to_end")
    else {
        return;
    };
    let db = TestDatabase::create(Engine::Sqlite, "e2e_agent")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let server = start_server(data_dir.path(), &db.url);
    let base = server.base.clone();
    let admin_token = mint(data_dir.path(), "usr_admin", 3);
    let admin = Client::new(&base, Some(&admin_token)).unwrap();
    let user = journey::new_user;
    let provider = admin
        .create_user(&user("Ada's GPUs", "provider", None))
        .await
        .unwrap();
    let customer_user = admin
        .create_user(&user("Grace", "customer", Some(100_000.0)))
        .await
        .unwrap();
    let token_file = data_dir.path().join("provider.token");
    std::fs::write(&token_file, mint(data_dir.path(), &provider.id, 2)).unwrap();
    let customer_token = mint(data_dir.path(), &customer_user.id, 1);
    let customer = Client::new(&base, Some(&customer_token)).unwrap();

    let agent_dir = tempfile::tempdir().unwrap();
    let agent = Command::new(BIN)
        .args([
            "agent",
            "--server",
            &base,
            "--region",
            "us-east-1",
            "--price",
            "2.5",
            "--poll-wait",
            "2",
            "--keepalive",
            "1",
        ])
        .arg("--token-file")
        .arg(&token_file)
        // The README's default data dir, relative to where the provider starts the agent
        // (the engine takes only absolute bind mounts: this failed every job before).
        .current_dir(agent_dir.path())
        .args(["--data-dir", "./gp4u-agent"])
        .args(["--gpu", "emulated:RTX 4090:24:450"])
        .env("GP4U_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _agent = Running {
        child: agent,
        base: String::new(),
        unmount: Some(agent_dir.path().to_path_buf()),
    };

    // The agent registers its emulated GPU, marked as such.
    let gpu = journey::first_gpu(&customer, Duration::from_secs(30)).await;
    assert_eq!(gpu.name, "RTX 4090 (emulated)");
    assert!(gpu.emulated, "{gpu:?}");
    // The agent declares the driver from its GPU source (NVML, or `emulated`).
    assert_eq!(gpu.driver_version.as_deref(), Some("emulated"), "{gpu:?}");
    // And the power limit it was given: the bound of the job's energy proof.
    assert_eq!(gpu.power_limit_watts, Some(450.0), "{gpu:?}");
    let gpu_id = gpu.id;

    // The customer uploads an input; the job checks it arrived intact and read-only, writes an
    // output and prints a line.
    let input = b"the training data\n".to_vec();
    let input_sha = sha256_hex(&input);
    let input_file = data_dir.path().join("training-data.txt");
    std::fs::write(&input_file, &input).unwrap();
    let artifact = customer
        .upload_artifact(&input_file, |_, _| {})
        .await
        .unwrap();
    assert_eq!(artifact.sha256, input_sha);
    assert_eq!(artifact.size_bytes, input.len() as u64);
    let art = artifact.id;

    let submit = |command: &str, inputs: &[&str]| {
        json!({"name": "e2e", "gpuId": gpu_id, "workload_type": "BATCH", "expectedDurationHours": 0.1,
               "docker_image": image, "docker_image_sha256": digest, "command": ["sh", "-c", command],
               "inputs": inputs})
    };
    let checks = format!(
        "grep -q 'NoNewPrivs:.*1' /proc/self/status \
         && sha256sum /input/{art} | grep -q '^{input_sha} ' \
         && ! touch /input/{art} 2>/dev/null && ! touch /input/new 2>/dev/null \
         && echo 'accuracy 0.97' > /output/result.txt \
         && echo hello from gp4u && echo to stderr >&2"
    );
    let mut finished = Vec::new();
    for (command, inputs, expected) in [
        (
            checks.as_str(),
            vec![art.as_str()],
            (JobStatus::Complete, None, Some(0)),
        ),
        (
            "exit 4",
            vec![],
            (JobStatus::Failed, Some(FailureReason::NonzeroExit), Some(4)),
        ),
    ] {
        let accepted = customer
            .submit(&submit(command, &inputs), None)
            .await
            .unwrap();
        let job = journey::finished(&customer, &accepted.id, Duration::from_secs(90), |_| {}).await;
        assert!(
            job.started_at.is_some() && job.ended_at.is_some(),
            "{job:?}"
        );
        assert_eq!(
            (job.status, job.failure_reason, job.exit_code),
            expected,
            "{job:?}"
        );
        finished.push(job);
    }

    // Outputs and logs were in before the job ended: the customer downloads /output as a
    // tar.gz whose SHA-256 is the one the job names (the client checks it against the header
    // as it writes), and the log has the job's lines.
    let job_id = finished[0].id.as_str();
    let archive_path = data_dir.path().join("outputs.tar.gz");
    let (archive_sha, archive_size) = customer
        .download_output(job_id, &archive_path, |_, _| {})
        .await
        .unwrap();
    let archive = std::fs::read(&archive_path).unwrap();
    assert_eq!(
        (sha256_hex(&archive), archive.len() as u64),
        (archive_sha.clone(), archive_size)
    );
    assert_eq!(
        finished[0].output_sha256.as_deref(),
        Some(archive_sha.as_str())
    );
    let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    let mut files = Vec::new();
    for entry in reader.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
        files.push((entry.path().unwrap().display().to_string(), text));
    }
    assert_eq!(
        files,
        vec![("result.txt".to_string(), "accuracy 0.97\n".to_string())]
    );
    let logs = customer.logs(job_id).await.unwrap();
    assert!(
        logs.contains("hello from gp4u\n") && logs.contains("to stderr\n"),
        "{logs:?}"
    );
    // Stages 5–7: the agent proved the job's energy and hardware, the platform settled it and
    // sealed every stage; `gp4u verify` checks all of it and passes.
    let proofs = journey::proven(&customer, job_id, Duration::from_secs(120)).await;
    assert_eq!(proofs.samples_without_commitment, 0, "{proofs:?}");
    // Both proofs name the declared limit; the attestation the GPU as registered.
    for proof in &proofs.proofs {
        let submission = &proof.submission;
        match proof.kind {
            ProofKind::Energy => {
                assert_eq!(submission["claim"]["power_limit_mw"], 450_000, "{proof:?}");
            }
            ProofKind::Hardware => {
                assert_eq!(submission["gpu"]["power_limit_mw"], 450_000, "{proof:?}");
                assert_eq!(
                    submission["gpu"]["name"], "RTX 4090 (emulated)",
                    "{proof:?}"
                );
                assert_eq!(submission["gpu"]["vram_mb"], 24_576, "{proof:?}");
            }
        }
    }
    let settlement = customer.settlement(job_id).await.unwrap();
    assert_eq!(settlement.job_id, job_id);
    assert!(
        (settlement.customer_charged + settlement.refunded - settlement.held).abs() < 1e-9,
        "{settlement:?}"
    );
    // The proofs' ledger entries are sealed within moments of being stored.
    assert_verifies_within(job_id, &base, &customer_token, 30).await;
    // The sealed Veritas record names the GPU and the driver the agent declared, and the
    // customer's carbon accounting has the job.
    let ledger = customer.job_ledger(job_id).await.unwrap();
    let veritas = ledger
        .entries
        .iter()
        .find(|proven| proven.entry.kind == "veritas.recorded")
        .unwrap_or_else(|| panic!("no Veritas record sealed: {ledger:?}"));
    let event: Value = serde_json::from_str(&veritas.entry.body).unwrap();
    let record: VeritasRecord = serde_json::from_value(event["payload"]["record"].clone()).unwrap();
    assert_eq!(
        (record.gpu_model.as_deref(), record.gpu_driver.as_deref()),
        (Some("RTX 4090 (emulated)"), Some("emulated")),
        "{record:?}"
    );
    // The host the job ran on, as the agent read it from its engine (SPEC §10), is sealed too,
    // and is what the node shows.
    let sealed_posture: HostPosture =
        serde_json::from_value(record.host_posture.clone().unwrap()).unwrap();
    assert_eq!(
        (
            sealed_posture.runtime.as_str(),
            sealed_posture.egress_filter.as_str(),
            sealed_posture.seccomp
        ),
        ("docker", "iptables", true),
        "{record:?}"
    );
    assert_eq!(
        record.runtime.as_ref().map(|runtime| runtime.network),
        Some(JobNetwork::Public),
        "{record:?}"
    );
    let node = finished[0].node_id.as_deref().unwrap();
    let provider_view = admin.node(node).await.unwrap();
    assert_eq!(
        provider_view.posture.as_ref(),
        Some(&sealed_posture),
        "{provider_view:?}"
    );
    let energy = customer.energy(None).await.unwrap();
    // (This customer's earlier jobs in this test ended too: each accounted job counts.)
    let job = customer.job(job_id).await.unwrap();
    assert!(energy.total.jobs >= 1, "{energy:?}");
    let job_kwh = job
        .energy_kwh
        .unwrap_or_else(|| panic!("the job has no energy_kwh: {job:?}"));
    assert!(energy.total.energy_kwh >= job_kwh, "{energy:?} {job:?}");

    // Followed after the end: the whole log as events, then the end.
    let mut followed = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        customer.follow_logs(job_id, |text| followed.push_str(text)),
    )
    .await
    .expect("following an ended job's log returns at its end")
    .unwrap();
    assert!(followed.contains("hello from gp4u"), "{followed}");
    // Someone else's artifact cannot be a job's input.
    let stranger = admin
        .create_user(&user("Mallory", "customer", Some(100_000.0)))
        .await
        .unwrap();
    let stranger = Client::new(&base, Some(&mint(data_dir.path(), &stranger.id, 1))).unwrap();
    let refused = stranger
        .submit(&submit("true", &[art.as_str()]), None)
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(400), Some("INVALID_INPUTS")),
        "{refused}"
    );
}

#[test]
fn the_process_runtime_is_refused_without_allow_unisolated() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t").unwrap();
    let output = Command::new(BIN)
        .args([
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--region",
            "us-east-1",
            "--price",
            "1",
            "--runtime",
            "process",
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--gpu", "emulated:Dev:8"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-unisolated"), "{stderr}");
}
