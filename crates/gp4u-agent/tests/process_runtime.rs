//! The agent's file handling without Docker (`--runtime process`): inputs fetched and checked
//! against their SHA-256 before the job starts, stdout and stderr shipped in order (batched),
//! `/output` packed and uploaded with its hash before the final report. Fake control plane on
//! loopback; the jobs are plain `sh` commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use gp4u_proto::AssignmentManifest;
use support::{fake_platform, finals, manifest, process_config, sha256_hex};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_verified_logs_shipped_and_outputs_uploaded() {
    let (server, platform) = fake_platform().await;
    let data = b"the training data\n".to_vec();
    let sha = sha256_hex(&data);
    platform
        .lock()
        .unwrap()
        .artifacts
        .insert("art_data".into(), data);
    let with_input = |mut manifest: AssignmentManifest, hash: &str| {
        manifest.inputs = vec!["art_data".into()];
        manifest.input_sha256 = BTreeMap::from([("art_data".to_string(), hash.to_string())]);
        manifest
    };
    let ok = with_input(
        manifest(
            "job_pok",
            &format!(
                "sha256sum \"$GP4U_INPUT/art_data\" | grep -q '^{sha} ' && echo out line && echo err line >&2 \
                 && mkdir \"$GP4U_OUTPUT/sub\" && echo result > \"$GP4U_OUTPUT/sub/result.txt\""
            ),
            10,
        ),
        &sha,
    );
    let bad = with_input(
        manifest("job_pbad", "echo must not run", 10),
        &"0".repeat(64),
    );
    let missing = {
        let mut manifest = manifest("job_pmissing", "echo must not run", 10);
        manifest.inputs = vec!["art_nothere".into()];
        manifest.input_sha256 = BTreeMap::from([("art_nothere".to_string(), sha.clone())]);
        manifest
    };
    // More output than one batch: it arrives whole and in order.
    let chatty = manifest("job_pchatty", "seq 1 60000; exit 3", 10);
    platform.lock().unwrap().queue = vec![ok, bad, missing, chatty];

    let data_dir = tempfile::tempdir().unwrap();
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
    let config = process_config(&server, data_dir.path());
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(config, stopping));
    let jobs = ["job_pok", "job_pbad", "job_pmissing", "job_pchatty"];
    let done = finals(&platform, &jobs, Duration::from_secs(60)).await;
    let outcome = |job: &str| {
        let report = done
            .get(job)
            .unwrap_or_else(|| panic!("no final report for {job}: {done:?}"));
        (
            report.status.clone(),
            report.exit_code,
            report.reason.clone(),
        )
    };
    assert_eq!(outcome("job_pok"), ("exited".into(), Some(0), None));
    for job in ["job_pbad", "job_pmissing"] {
        assert_eq!(
            outcome(job),
            ("failed".into(), None, Some("INPUT_FAILED".into())),
            "{job}"
        );
    }
    assert!(
        done["job_pbad"]
            .message
            .as_deref()
            .unwrap()
            .contains("SHA-256"),
        "{:?}",
        done["job_pbad"]
    );
    assert_eq!(outcome("job_pchatty"), ("exited".into(), Some(3), None));

    {
        let platform = platform.lock().unwrap();
        let log = String::from_utf8_lossy(&platform.logs["job_pok"]).into_owned();
        assert!(
            log.contains("out line\n") && log.contains("err line\n"),
            "{log:?}"
        );
        let expected: String = (1..=60_000).map(|n| format!("{n}\n")).collect();
        assert_eq!(
            String::from_utf8_lossy(&platform.logs["job_pchatty"]),
            expected
        );
        for job in ["job_pbad", "job_pmissing"] {
            assert!(!platform.logs.contains_key(job), "{job} must not run");
            assert!(!platform.outputs.contains_key(job), "{job} must not run");
        }
        let (declared, archive) = &platform.outputs["job_pok"];
        assert_eq!(*declared, sha256_hex(archive));
        let mut files = Vec::new();
        let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        for entry in reader.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            files.push((entry.path().unwrap().display().to_string(), text));
        }
        files.sort();
        assert_eq!(
            files,
            vec![
                ("sub".to_string(), String::new()),
                ("sub/result.txt".to_string(), "result\n".to_string())
            ]
        );
        // An empty /output is still an archive (of nothing).
        assert!(platform.outputs.contains_key("job_pchatty"));
    }
    // The job directories go once the jobs are reported.
    let leftovers = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(data_dir.path().join("jobs"))
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default()
    };
    for _ in 0..50 {
        if leftovers().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leftovers(), Vec::<std::path::PathBuf>::new());
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}
