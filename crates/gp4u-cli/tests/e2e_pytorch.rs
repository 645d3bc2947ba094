//! An ordinary PyTorch training job, unchanged, through GP4U: the real `gp4u server` and
//! `gp4u agent` (Docker, emulated GPU) and an image built from Debian's `python3-torch`
//! (`scripts/pytorch-image.sh`, served by the test registry with `GP4U_TEST_PYTORCH=1`).
//! `workloads/pytorch/train.py` trains a small CNN on image-sized synthetic tensors with
//! `DataLoader(num_workers=2)` (batches through `/dev/shm`), writes a cache under `$HOME`, a
//! temporary file, and a checkpoint to `/output`. The job must COMPLETE with its checkpoint
//! downloadable, its energy, proofs and settlement present, and `gp4u verify` passing.
//! Network: loopback and the job's own container.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{assert_verifies_within, call, sha256_hex, start_agent, start_server_with};
use gp4u_store::Engine;
use gp4u_store::testing::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};

/// The PyTorch image, or `None` after saying loudly that the test is skipped (a failure in
/// CI, where `.ci/run` sets `GP4U_TEST_PYTORCH=1`).
fn pytorch_image() -> Option<(String, String)> {
    match (
        std::env::var("GP4U_TEST_PYTORCH_IMAGE"),
        std::env::var("GP4U_TEST_PYTORCH_DIGEST"),
    ) {
        (Ok(image), Ok(digest)) => Some((image, digest)),
        _ => {
            common::skip_unless_ci(
                "GP4U-DOCKER-SKIPPED",
                "a_pytorch_training_job_runs_unchanged",
                "GP4U_TEST_PYTORCH_IMAGE is unset (GP4U_TEST_PYTORCH=1 scripts/test.sh builds it)",
            );
            None
        }
    }
}

async fn get(client: &reqwest::Client, url: String, token: &str) -> Value {
    call(client, Method::GET, url, token, None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pytorch_training_job_runs_unchanged() {
    let Some((image, digest)) = pytorch_image() else {
        return;
    };
    let db = TestDatabase::create(Engine::Sqlite, "e2e_pytorch")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    // A packet a second: the job takes seconds, and its energy is integrated over packets.
    let server = start_server_with(data_dir.path(), &db.url, &["--telemetry-interval-s", "1"]);
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let people = common::people(&base, data_dir.path(), 1000.0).await;
    let customer_token = people.customer.clone();
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&base, &people.token_file, agent_dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let gpu_id = loop {
        let listing = get(&client, format!("{base}/api/gpus"), &customer_token).await;
        if let Some(gpu) = listing["gpus"].as_array().and_then(|gpus| gpus.first()) {
            break gpu["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the agent did not register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The image's own command (python3 /opt/gp4u/train.py), the platform's defaults: a
    // public network, /dev/shm of half the 4 GB cap, 20 GB of /scratch.
    let submitted = Instant::now();
    let (status, accepted) = call(
        &client,
        Method::POST,
        format!("{base}/api/jobs"),
        &customer_token,
        Some(
            json!({"name": "resnet-ish on synthetic images", "gpuId": gpu_id,
            "workload_type": "TRAINING", "expectedDurationHours": 0.1,
            "docker_image": image, "docker_image_sha256": digest, "ram_limit_gb": 4}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{accepted}");
    let job_id = accepted["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut running_after = None;
    let job = loop {
        let job = get(
            &client,
            format!("{base}/api/jobs/{job_id}"),
            &customer_token,
        )
        .await;
        if running_after.is_none() && job["status"] == "RUNNING" {
            running_after = Some(submitted.elapsed());
        }
        if matches!(
            job["status"].as_str(),
            Some("COMPLETE" | "FAILED" | "CANCELLED")
        ) {
            break job;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let logs = client
        .get(format!("{base}/api/jobs/{job_id}/logs"))
        .bearer_auth(&customer_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(job["status"], "COMPLETE", "{job}\nlog:\n{logs}");
    assert!(logs.contains("TRAINING COMPLETE"), "{logs}");
    assert_eq!(
        (job["shm_gb"].as_f64(), job["network"].as_str()),
        (Some(2.0), Some("public"))
    );
    eprintln!(
        "pytorch job: RUNNING {:?} after submission, COMPLETE after {:?} (started_at {}, ended_at {})",
        running_after,
        submitted.elapsed(),
        job["started_at"],
        job["ended_at"]
    );

    // The checkpoint is downloadable, hash-checked.
    let response = client
        .get(format!("{base}/api/jobs/{job_id}/outputs"))
        .bearer_auth(&customer_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let declared = response.headers()["x-gp4u-sha256"]
        .to_str()
        .unwrap()
        .to_string();
    let archive = response.bytes().await.unwrap();
    assert_eq!(sha256_hex(&archive), declared);
    let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    let mut files = Vec::new();
    for entry in reader.entries().unwrap() {
        let entry = entry.unwrap();
        files.push((
            entry.path().unwrap().display().to_string(),
            entry.header().size().unwrap(),
        ));
    }
    files.sort();
    assert!(
        files
            .iter()
            .any(|(name, size)| name == "checkpoint.pt" && *size > 1000),
        "{files:?}"
    );
    assert!(
        files.iter().any(|(name, _)| name == "metrics.json"),
        "{files:?}"
    );

    // Energy, proofs and settlement, and the whole record verifies.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let proofs = get(
            &client,
            format!("{base}/api/jobs/{job_id}/proofs"),
            &customer_token,
        )
        .await;
        let kinds: Vec<&str> = proofs["proofs"]
            .as_array()
            .map(|list| list.iter().filter_map(|p| p["kind"].as_str()).collect())
            .unwrap_or_default();
        if kinds.contains(&"energy") && kinds.contains(&"hardware") {
            break;
        }
        assert!(Instant::now() < deadline, "no proofs: {proofs}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settlement = get(
        &client,
        format!("{base}/api/jobs/{job_id}/settlement"),
        &customer_token,
    )
    .await;
    assert!(
        settlement["customer_charged"].as_f64().unwrap() > 0.0,
        "{settlement}"
    );
    let job = get(
        &client,
        format!("{base}/api/jobs/{job_id}"),
        &customer_token,
    )
    .await;
    assert!(job["energy_kwh"].as_f64().unwrap() > 0.0, "{job}");
    assert_verifies_within(&job_id, &base, &customer_token, 60).await;
}
