//! Stage 6 end to end: the real `gp4u server` (the binary, on SQLite, loopback) and this
//! agent in-process (`--gpu emulated`, the process runtime, 50 % renewable). The agent commits
//! to every reading, and after the job it proves the energy and signs the hardware; the server
//! verifies both on receipt and lists them under `GET /api/jobs/{id}/proofs`.
//!
//! The `gp4u` binary is not built by this crate: the test uses `GP4U_BIN`, else `gp4u` beside
//! the test's own target directory (`cargo build -p gp4u-cli` first), and is skipped loudly
//! without one (a failure in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gp4u_attest::energy::{ReadingCommitment, verify_energy};
use gp4u_attest::hardware::{Assurance, verify_hardware};
use gp4u_attest::proofs::ProofSubmission;
use gp4u_client::Client;
use gp4u_core::energy::interval_weights;
use gp4u_testkit::journey::{self, new_user};
use serde_json::json;

fn gp4u_bin(test: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("GP4U_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            // target/debug/deps/<test> → target/debug/gp4u
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("gp4u"))
        })
        .filter(|path| path.is_file());
    if candidate.is_none() {
        support::skip_unless_ci(
            "GP4U-SERVER-SKIPPED",
            test,
            "no gp4u binary (cargo build -p gp4u-cli, or GP4U_BIN)",
        );
    }
    candidate
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &Path, data_dir: &Path) -> Server {
    let url = format!("sqlite://{}", data_dir.join("gp4u.db").display());
    let mut child = Command::new(bin)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap-admin",
            "usr_admin",
            "--telemetry-interval-s",
            "1",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--database-url")
        .arg(&url)
        .env_remove("GP4U_TOKEN_SECRET")
        .env("GP4U_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting gp4u server");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("gp4u server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Server { child, base }
}

fn mint(bin: &Path, data_dir: &Path, sub: &str, clr: u8) -> String {
    let output = Command::new(bin)
        .args(["token", "mint", "--sub", sub, "--clr", &clr.to_string()])
        .args(["--ttl", "3600"])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("GP4U_TOKEN_SECRET")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_proves_energy_and_hardware_after_a_job() {
    let test = "the_agent_proves_energy_and_hardware_after_a_job";
    let Some(bin) = gp4u_bin(test) else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
    let server = start_server(&bin, data_dir.path());
    let base = server.base.clone();
    let admin = Client::new(&base, Some(&mint(&bin, data_dir.path(), "usr_admin", 3))).unwrap();
    let provider = admin
        .create_user(&new_user("Ada's GPUs", "provider", None))
        .await
        .unwrap();
    let customer_id = admin
        .create_user(&new_user("Grace", "customer", None))
        .await
        .unwrap()
        .id;
    admin.add_credit(&customer_id, 100.0).await.unwrap();
    let provider_token = mint(&bin, data_dir.path(), &provider.id, 2);
    let customer = Client::new(&base, Some(&mint(&bin, data_dir.path(), &customer_id, 1))).unwrap();

    // The agent, in-process.
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = support::process_config(&base, agent_dir.path());
    config.token = provider_token;
    config.renewable_pct = 50.0;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(config, stopping));

    let gpu = journey::first_gpu(&customer, Duration::from_secs(30)).await;
    let (gpu_id, node_id) = (gpu.id, gpu.node_id);

    // A short job: about five readings at the 1 s interval, then the final packet.
    let accepted = customer.submit(&json!({"name": "proofs", "gpuId": gpu_id, "workload_type": "TRAINING",
                    "expectedDurationHours": 0.1, "docker_image": "registry.example/org/proofs",
                    "docker_image_sha256": format!("sha256:{}", "ab".repeat(32)),
                    "command": ["sh", "-c", "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; sleep 2"],
                    "costEstimate": 1.0}), None).await.unwrap();
    let job_id = accepted.id;

    let proofs = journey::proven(&customer, &job_id, Duration::from_secs(120)).await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;

    // Every stored sample carries a commitment, and both proofs check again from what is served.
    assert_eq!(proofs.samples_without_commitment, 0, "{proofs:?}");
    assert_eq!(proofs.node_id.as_deref(), Some(node_id.as_str()));
    let commitments: Vec<(i64, ReadingCommitment)> = proofs
        .commitments
        .iter()
        .map(|c| {
            (
                c.at_ms,
                ReadingCommitment::from_base64(&c.commitment).unwrap(),
            )
        })
        .collect();
    assert!(commitments.len() >= 2, "{proofs:?}");
    let key =
        gp4u_attest::key::parse_public_key(proofs.node_public_key.as_deref().unwrap()).unwrap();
    for proof in &proofs.proofs {
        let submission = ProofSubmission::from_json(&proof.submission.to_string()).unwrap();
        match submission {
            ProofSubmission::Energy(energy) => {
                assert_eq!(energy.claim.renewable_share_bp, 5000);
                // Bounded by the emulated GPU's declared (default) limit, as registered.
                assert_eq!(energy.claim.power_limit_mw, 300_000);
                assert_eq!(
                    proofs.energy_mwms,
                    Some(energy.claim.energy_mwms.to_string()),
                    "{proofs:?}"
                );
                let stamps: Vec<i64> = commitments.iter().map(|(at, _)| *at).collect();
                let weights = interval_weights(&stamps, 0, proofs.max_gap_ms).unwrap();
                let points: Vec<ReadingCommitment> = commitments.iter().map(|(_, c)| *c).collect();
                verify_energy(
                    &job_id,
                    &energy.claim,
                    &points,
                    &weights,
                    &energy.proof,
                    &mut rand_core::OsRng,
                )
                .unwrap();
            }
            ProofSubmission::Hardware(attestation) => {
                assert_eq!(attestation.assurance, Assurance::Emulated);
                assert_eq!(attestation.node_id, node_id);
                // The GPU as the agent registered it (the server compared it too).
                assert_eq!(attestation.gpu.name, "RTX 4090 (emulated)");
                assert_eq!(attestation.gpu.power_limit_mw, 300_000);
                verify_hardware(&attestation, &key).unwrap();
                assert_eq!(
                    attestation.telemetry_digest_bytes().unwrap(),
                    gp4u_attest::energy::telemetry_digest(&job_id, &commitments)
                );
            }
        }
    }
    drop(server);
}
