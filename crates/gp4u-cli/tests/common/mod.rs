//! Helpers shared by the black-box tests: the real `gp4u` binary started on a real port,
//! tokens minted with its own `token mint`, the people of a marketplace (spoken to through
//! `gp4u-client`), the agent, Docker and `gp4u verify`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

#[allow(unused_imports)]
pub use gp4u_testkit::{free_port, sha256_hex, skip_unless_ci};

pub const BIN: &str = env!("CARGO_BIN_EXE_gp4u");

pub struct Running {
    pub child: Child,
    pub base: String,
    /// An agent's data dir: the job scratch still mounted under it when the test kills the
    /// agent is unmounted (a restarted agent would sweep it; a killed one never restarts).
    pub unmount: Option<std::path::PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.unmount {
            unmount_under(dir);
        }
    }
}

/// Lazily unmounts every mount under `dir` (job scratch a killed agent left).
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    for mount in mounts.lines().filter_map(|line| line.split(' ').nth(1)) {
        if mount.starts_with(&prefix) {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
    }
}

pub fn start_server(data_dir: &Path, database_url: &str) -> Running {
    start_server_with(data_dir, database_url, &[])
}

/// `gp4u server` with extra flags.
pub fn start_server_with(data_dir: &Path, database_url: &str, extra: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap-admin",
            "usr_admin",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--database-url")
        .arg(database_url)
        .args(extra)
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
    Running {
        child,
        base,
        unmount: None,
    }
}

pub fn mint(data_dir: &Path, sub: &str, clr: u8) -> String {
    let output = Command::new(BIN)
        .args([
            "token",
            "mint",
            "--sub",
            sub,
            "--clr",
            &clr.to_string(),
            "--ttl",
            "3600",
        ])
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

/// The test image (`GP4U_TEST_IMAGE`, `GP4U_TEST_IMAGE_DIGEST`) from `scripts/test-images.sh`,
/// or `None` after saying loudly that `test` is skipped (a failure in CI).
pub fn docker_image(test: &str) -> Option<(String, String)> {
    gp4u_testkit::test_image(test).map(|image| (image.image, image.digest))
}

/// Runs the `docker` CLI; its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The containers (running or not) labelled with this job.
pub fn job_containers(job_id: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label=gp4u.job={job_id}")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `gp4u agent` for an emulated RTX 4090, as the README starts it (no listener: visibility
/// challenges arrive on its own connection).
pub fn start_agent(base: &str, token_file: &Path, data_dir: &Path) -> Running {
    start_agent_with(base, token_file, data_dir, &[])
}

/// [`start_agent`] with extra flags.
pub fn start_agent_with(base: &str, token_file: &Path, data_dir: &Path, extra: &[&str]) -> Running {
    let child = Command::new(BIN)
        .args([
            "agent",
            "--server",
            base,
            "--region",
            "us-east-1",
            "--price",
            "2.5",
            "--poll-wait",
            "2",
        ])
        .arg("--token-file")
        .arg(token_file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--gpu", "emulated:RTX 4090:24"])
        .args(extra)
        .env("GP4U_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Running {
        child,
        base: String::new(),
        unmount: Some(data_dir.to_path_buf()),
    }
}

/// Runs `gp4u verify JOB --require-proofs` until it passes (the last proofs and the settlement
/// are sealed within moments of being stored), for at most `seconds`; panics with its output
/// when it never does.
pub async fn assert_verifies_within(job: &str, base: &str, token: &str, seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let output = Command::new(BIN)
            .args([
                "verify",
                job,
                "--server",
                base,
                "--token",
                token,
                "--require-proofs",
            ])
            .env("GP4U_LOG", "warn")
            .env_remove("GP4U_SERVER")
            .env_remove("GP4U_TOKEN")
            .output()
            .unwrap();
        if output.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gp4u verify failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The people of a test marketplace on a started server: the bootstrap admin, a provider
/// whose token is in a file for its agent, and a customer with `credit`.
pub struct People {
    pub admin: String,
    pub customer: String,
    /// `<data_dir>/provider.token`, for `gp4u agent --token-file`.
    pub token_file: std::path::PathBuf,
}

/// Creates [`People`] through the admin API with `gp4u-client` (the admin's token minted with
/// the server's secret in `data_dir`, the others issued by the platform).
pub async fn people(base: &str, data_dir: &Path, credit: f64) -> People {
    let admin = mint(data_dir, "usr_admin", 3);
    let client = gp4u_client::Client::new(base, Some(&admin)).unwrap();
    let user = |name: &str, role: &str, credit: Option<f64>| gp4u_proto::NewUserBody {
        name: name.into(),
        role: role.into(),
        university: None,
        region: None,
        credit,
    };
    let provider = client
        .create_user(&user("Ada's GPUs", "provider", None))
        .await
        .unwrap();
    let customer = client
        .create_user(&user("Grace", "customer", Some(credit)))
        .await
        .unwrap();
    let token_file = data_dir.join("provider.token");
    let provider_token = client.issue_token(&provider.id, None).await.unwrap().token;
    std::fs::write(&token_file, provider_token).unwrap();
    People {
        customer: client.issue_token(&customer.id, None).await.unwrap().token,
        admin,
        token_file,
    }
}
