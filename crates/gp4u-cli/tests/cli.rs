//! The customer and operator CLI of SPEC §11 against the real `gp4u server` and `gp4u agent`
//! (Docker, the busybox test image): `admin users create` and `admin token` instead of the
//! server's secret, `login`, `gpus`, `run` of a real job to COMPLETE with its outputs downloaded
//! and verified, a failing job's exit code, `--detach` then `jobs logs`/`show`/`cancel`, every
//! `--json` shape parsed into the wire types, and the errors (and exit codes) for invalid
//! input, a wrong token and an unreachable server. Network: loopback and the test's containers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{BIN, docker_image, people, start_agent, start_server};
use gp4u_proto::{
    ArtifactCreated, FailureReason, GpuList, IssuedToken, JobList, JobStatus, JobView, UserView,
};
use gp4u_store::Engine;
use gp4u_store::testing::TestDatabase;
use serde_json::Value;

/// `gp4u ARGS` as a user with its own home (so its own config), no GP4U_* variables.
fn gp4u(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("GP4U_LOG", "error")
        .env_remove("GP4U_SERVER")
        .env_remove("GP4U_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json_of<T: serde::de::DeserializeOwned>(output: &Output) -> T {
    assert_eq!(output.status.code(), Some(0), "{}", text(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("--json printed something else ({error}): {}", text(output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_a_job_end_to_end_without_curl() {
    let Some((image, digest)) = docker_image("the_cli_runs_a_job_end_to_end_without_curl") else {
        return;
    };
    let db = TestDatabase::create(Engine::Sqlite, "cli_end_to_end")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let server = start_server(data_dir.path(), &db.url);
    let base = server.base.clone();
    // The operator: the bootstrap admin's token (the only one minted from the secret here).
    let operators = people(&base, data_dir.path(), 1.0).await;
    let admin_home = tempfile::tempdir().unwrap();
    let admin = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &base, "--token", &operators.admin]);
        gp4u(admin_home.path(), &all, None)
    };
    let user: UserView = json_of(&admin(&[
        "admin", "users", "create", "Grace", "--role", "customer", "--credit", "100", "--json",
    ]));
    assert_eq!((user.role.as_str(), user.clearance), ("customer", 1));
    let issued: IssuedToken = json_of(&admin(&["admin", "token", &user.id, "--json"]));
    // Without --json: the token alone on stdout (for `> token`).
    let plain = admin(&["admin", "users", "token", &user.id, "--ttl-s", "3600"]);
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain));
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout)
            .trim()
            .split('.')
            .count(),
        2
    );
    // A region's carbon factor: without its source and date it is refused before any request
    // (exit 2, naming both flags); with them it is set and listed.
    let half = admin(&["admin", "grid-factor", "xx-test-1", "--g-per-kwh", "123.5"]);
    assert_eq!(half.status.code(), Some(2), "{}", text(&half));
    let said = String::from_utf8_lossy(&half.stderr);
    assert!(
        said.contains("--source") && said.contains("--as-of"),
        "{said}"
    );
    let set = admin(&[
        "admin",
        "grid-factor",
        "xx-test-1",
        "--g-per-kwh",
        "123.5",
        "--source",
        "test table",
        "--as-of",
        "2026-01-01",
        "--json",
    ]);
    let set: Value = json_of(&set);
    assert_eq!(set["g_co2e_per_kwh"], 123.5, "{set}");
    let listed: Value = json_of(&admin(&["admin", "grid-factor", "--json"]));
    assert!(
        listed["factors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|factor| factor["region"] == "xx-test-1" && factor["source"] == "test table"),
        "{listed}"
    );

    // The customer logs in once (token on stdin); the config is theirs alone.
    let home = tempfile::tempdir().unwrap();
    let login = gp4u(
        home.path(),
        &["login", "--server", &base],
        Some(&issued.token),
    );
    assert_eq!(login.status.code(), Some(0), "{}", text(&login));
    let config = home.path().join("config/gp4u/config.toml");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A provider's agent offers a GPU.
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&base, &operators.token_file, agent_dir.path());
    let gpus = loop {
        let list: GpuList = json_of(&gp4u(home.path(), &["gpus", "--json"], None));
        if !list.gpus.is_empty() {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let table = gp4u(home.path(), &["gpus"], None);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains(&gpus.gpus[0].id),
        "{}",
        text(&table)
    );

    // An input uploaded, a job run to COMPLETE: logs on stdout, outputs unpacked, verified.
    let input = home.path().join("data.txt");
    std::fs::write(&input, "the training data\n").unwrap();
    let artifact: ArtifactCreated = json_of(&gp4u(
        home.path(),
        &["artifacts", "upload", input.to_str().unwrap(), "--json"],
        None,
    ));
    let outputs = home.path().join("outputs");
    let run = |command: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--name",
            "cli",
            "--workload-type",
            "BATCH",
            "--hours",
            "0.1",
            "--image",
            &image,
            "--digest",
            &digest,
            "--output-dir",
            outputs.to_str().unwrap(),
        ];
        args.extend(extra);
        args.extend(["--", "sh", "-c", command]);
        gp4u(home.path(), &args, None)
    };
    let done = run(
        &format!(
            "cat /input/{id} && echo hello from the cli && echo 0.97 > /output/accuracy.txt",
            id = artifact.id
        ),
        &["--input", &artifact.id],
    );
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        stdout.contains("the training data") && stdout.contains("hello from the cli"),
        "{}",
        text(&done)
    );
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("placed on"), "{}", text(&done));
    assert!(stderr.contains("all checks passed"), "{}", text(&done));
    let list: JobList = json_of(&gp4u(home.path(), &["jobs", "list", "--json"], None));
    let job = &list.jobs[0];
    assert_eq!(job.status, JobStatus::Complete);
    assert_eq!(
        std::fs::read_to_string(outputs.join(&job.id).join("accuracy.txt")).unwrap(),
        "0.97\n"
    );
    // A failing job: exit code 1, and --json prints the summary only.
    let failed = run("exit 3", &["--json", "--no-verify"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let summary: Value = serde_json::from_slice(&failed.stdout).unwrap();
    let view: JobView = serde_json::from_value(summary["job"].clone()).unwrap();
    assert_eq!(
        (view.status, view.failure_reason, view.exit_code),
        (JobStatus::Failed, Some(FailureReason::NonzeroExit), Some(3))
    );

    // Detached: the id, then logs, show and cancel.
    let detached = run("echo started; sleep 300", &["--detach"]);
    assert_eq!(detached.status.code(), Some(0), "{}", text(&detached));
    let id = String::from_utf8_lossy(&detached.stdout).trim().to_string();
    assert!(id.starts_with("job_"), "{}", text(&detached));
    let mut started = false;
    for _ in 0..100 {
        let logs = gp4u(home.path(), &["jobs", "logs", &id], None);
        if String::from_utf8_lossy(&logs.stdout).contains("started") {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started, "the detached job's log never showed");
    let shown: JobView = json_of(&gp4u(home.path(), &["jobs", "show", &id, "--json"], None));
    assert_eq!(shown.status, JobStatus::Running);
    let cancelled: JobView = json_of(&gp4u(home.path(), &["jobs", "cancel", &id, "--json"], None));
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let human = gp4u(home.path(), &["jobs", "show", &id], None);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("CANCELLED_BY_CUSTOMER"),
        "{}",
        text(&human)
    );
    for (args, key) in [
        (&["balance", "--json"][..], "balance"),
        (&["statement", "--json"][..], "transfers"),
        (&["energy", "--json"][..], "total"),
    ] {
        let value: Value = json_of(&gp4u(home.path(), args, None));
        assert!(value.get(key).is_some(), "{args:?}: {value}");
    }

    // Errors say what went wrong and what to do, with SPEC §11's exit codes.
    let invalid = gp4u(
        home.path(),
        &[
            "run",
            "--name",
            "bad",
            "--workload-type",
            "BATCH",
            "--hours",
            "0.1",
            "--image",
            &image,
            "--digest",
            "not-a-digest",
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(invalid.status.code(), Some(2), "{}", text(&invalid));
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("docker_image_sha256"),
        "{}",
        text(&invalid)
    );
    let wrong = gp4u(home.path(), &["balance", "--token", "not.a-token"], None);
    assert_eq!(wrong.status.code(), Some(3), "{}", text(&wrong));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("hint:"));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let unreachable = gp4u(
        home.path(),
        &["gpus", "--server", &format!("http://{closed}")],
        None,
    );
    assert_eq!(unreachable.status.code(), Some(4), "{}", text(&unreachable));
    let nobody = tempfile::tempdir().unwrap();
    let no_login = gp4u(nobody.path(), &["gpus"], None);
    assert_eq!(no_login.status.code(), Some(2), "{}", text(&no_login));
    assert!(
        String::from_utf8_lossy(&no_login.stderr).contains("gp4u login"),
        "{}",
        text(&no_login)
    );
    let refused = gp4u(
        nobody.path(),
        &["login", "--server", &base],
        Some("not.a-token"),
    );
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(!nobody.path().join("config/gp4u/config.toml").exists());
    drop(server);
}
