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

use common::{assert_verifies_within, sha256_hex, start_agent, start_server_with};
use gp4u_client::Client;
use gp4u_proto::{JobNetwork, JobStatus};
use gp4u_store::Engine;
use gp4u_store::testing::TestDatabase;
use gp4u_testkit::journey;
use serde_json::json;

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
    let people = common::people(&base, data_dir.path(), 1000.0).await;
    let customer_token = people.customer.clone();
    let customer = Client::new(&base, Some(&customer_token)).unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&base, &people.token_file, agent_dir.path());
    let gpu_id = journey::first_gpu(&customer, Duration::from_secs(60))
        .await
        .id;

    // The image's own command (python3 /opt/gp4u/train.py), the platform's defaults: a
    // public network, /dev/shm of half the 4 GB cap, 20 GB of /scratch.
    let submitted = Instant::now();
    let accepted = customer
        .submit(
            &json!({"name": "resnet-ish on synthetic images", "gpuId": gpu_id,
            "workload_type": "TRAINING", "expectedDurationHours": 0.1,
            "docker_image": image, "docker_image_sha256": digest, "ram_limit_gb": 4}),
            None,
        )
        .await
        .unwrap();
    let job_id = accepted.id;
    let mut running_after = None;
    let job = journey::finished(&customer, &job_id, Duration::from_secs(300), |job| {
        if running_after.is_none() && job.status == JobStatus::Running {
            running_after = Some(submitted.elapsed());
        }
    })
    .await;
    let logs = customer.logs(&job_id).await.unwrap();
    assert_eq!(job.status, JobStatus::Complete, "{job:?}\nlog:\n{logs}");
    assert!(logs.contains("TRAINING COMPLETE"), "{logs}");
    assert_eq!((job.shm_gb, job.network), (2.0, JobNetwork::Public));
    eprintln!(
        "pytorch job: RUNNING {:?} after submission, COMPLETE after {:?} (started_at {:?}, ended_at {:?})",
        running_after,
        submitted.elapsed(),
        job.started_at,
        job.ended_at
    );

    // The checkpoint is downloadable, hash-checked against the header as it is written, and
    // is the archive the job names.
    let archive_path = data_dir.path().join("outputs.tar.gz");
    let (archive_sha, _) = customer
        .download_output(&job_id, &archive_path, |_, _| {})
        .await
        .unwrap();
    assert_eq!(job.output_sha256.as_deref(), Some(archive_sha.as_str()));
    let archive = std::fs::read(&archive_path).unwrap();
    assert_eq!(sha256_hex(&archive), archive_sha);
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
    journey::proven(&customer, &job_id, Duration::from_secs(120)).await;
    let settlement = customer.settlement(&job_id).await.unwrap();
    assert!(settlement.customer_charged > 0.0, "{settlement:?}");
    let job = customer.job(&job_id).await.unwrap();
    assert!(job.energy_kwh.unwrap_or_default() > 0.0, "{job:?}");
    assert_verifies_within(&job_id, &base, &customer_token, 60).await;
}
