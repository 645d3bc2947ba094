//! `gp4u run [MANIFEST] [flags]`: submit a job, follow it live (state, placement and its
//! reasons, elapsed against declared, utilization, power, cost so far) with its logs streamed,
//! download and unpack its outputs (hash checked), and verify it against the ledger. Exit
//! codes (SPEC §11): 0 COMPLETE, 1 FAILED or CANCELLED, 2 usage or invalid input, 3
//! authentication, 4 server unreachable.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gp4u_client::Client;
use gp4u_proto::JobView;
use serde_json::{Map, Value, json};

use crate::render;
use crate::session::{Exit, exit};

/// How long to wait after a job ends for its settlement (sealed with the rest) before verifying.
const SETTLEMENT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A manifest: TOML (.toml), YAML (.yaml, .yml) or JSON (.json), with the fields of
    /// `POST /api/jobs` (SPEC §3). Flags override it.
    pub manifest: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    /// Pin a listed GPU (gpu_…); else Atlas chooses by --model/--min-vram-gb/--region/--max-price.
    #[arg(long)]
    pub gpu_id: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub min_vram_gb: Option<f64>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub max_price: Option<f64>,
    /// TRAINING, INFERENCE, FINE_TUNING, RENDERING or BATCH.
    #[arg(long)]
    pub workload_type: Option<String>,
    /// Declared duration (expectedDurationHours); killed at 1.1 × it.
    #[arg(long)]
    pub hours: Option<f64>,
    /// The image repository (pinned by --digest).
    #[arg(long)]
    pub image: Option<String>,
    /// The image's sha256 digest.
    #[arg(long)]
    pub digest: Option<String>,
    /// An environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// An input: an artifact id (art_…) or a local file, uploaded first (repeatable).
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    #[arg(long)]
    pub ram_gb: Option<f64>,
    #[arg(long)]
    pub shm_gb: Option<f64>,
    #[arg(long)]
    pub scratch_gb: Option<f64>,
    /// public (default) or none.
    #[arg(long)]
    pub network: Option<String>,
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// The result must be reproducible (Atlas weighs provenance).
    #[arg(long)]
    pub reproducible: bool,
    /// Return after the submission (print the job id).
    #[arg(long)]
    pub detach: bool,
    /// Where the outputs go: `<dir>/<job>.tar.gz` and `<dir>/<job>/`.
    #[arg(long, default_value = "gp4u-outputs")]
    pub output_dir: PathBuf,
    /// Skip the verification against the ledger at the end.
    #[arg(long)]
    pub no_verify: bool,
    /// The command, after `--` (overrides the manifest's).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The manifest file as JSON, by its extension.
pub fn read_manifest(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        Exit::usage(format!(
            "cannot read the manifest {}: {error}",
            path.display()
        ))
    })?;
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let value: Value = match extension.as_str() {
        "toml" => toml::from_str::<toml::Value>(&text)
            .map_err(|error| error.to_string())
            .and_then(|value| serde_json::to_value(value).map_err(|error| error.to_string())),
        "yaml" | "yml" => serde_yaml::from_str::<Value>(&text).map_err(|error| error.to_string()),
        "json" => serde_json::from_str::<Value>(&text).map_err(|error| error.to_string()),
        other => Err(format!(
            "the manifest must be .toml, .yaml, .yml or .json, not {other:?}"
        )),
    }
    .map_err(|error| Exit::usage(format!("{}: {error}", path.display())))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Exit::usage(format!(
            "{}: the manifest must be a table/object of the job's fields",
            path.display()
        ))),
    }
}

/// The submission body: the manifest's fields, then the flags over them.
pub fn submission(args: &RunArgs) -> anyhow::Result<Map<String, Value>> {
    let mut body = match &args.manifest {
        Some(path) => read_manifest(path)?,
        None => Map::new(),
    };
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            body.insert(key.to_string(), value);
        }
    };
    set("name", args.name.clone().map(Value::from));
    set("gpuId", args.gpu_id.clone().map(Value::from));
    set("workload_type", args.workload_type.clone().map(Value::from));
    set("expectedDurationHours", args.hours.map(Value::from));
    set("docker_image", args.image.clone().map(Value::from));
    set("docker_image_sha256", args.digest.clone().map(Value::from));
    set("ram_limit_gb", args.ram_gb.map(Value::from));
    set("shm_gb", args.shm_gb.map(Value::from));
    set("scratch_gb", args.scratch_gb.map(Value::from));
    set("network", args.network.clone().map(Value::from));
    set("max_retries", args.max_retries.map(Value::from));
    if args.reproducible {
        set("reproducibility_sensitive", Some(Value::Bool(true)));
    }
    if !args.command.is_empty() {
        set("command", Some(json!(args.command)));
    }
    let requirement: Vec<(&str, Option<Value>)> = vec![
        ("model", args.model.clone().map(Value::from)),
        ("min_vram_gb", args.min_vram_gb.map(Value::from)),
        ("region", args.region.clone().map(Value::from)),
        ("max_price_per_hour", args.max_price.map(Value::from)),
    ];
    if requirement.iter().any(|(_, value)| value.is_some()) {
        let gpu = body
            .entry("gpu")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(gpu) = gpu {
            for (key, value) in requirement {
                if let Some(value) = value {
                    gpu.insert(key.to_string(), value);
                }
            }
        }
    }
    if !args.env.is_empty() {
        let env = body
            .entry("env")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(env) = env else {
            return Err(Exit::usage(
                "the manifest's `env` must be a table of KEY = \"value\"",
            ));
        };
        for pair in &args.env {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Exit::usage(format!("--env {pair:?}: write it KEY=VALUE")))?;
            env.insert(key.to_string(), Value::from(value));
        }
    }
    if !args.inputs.is_empty() {
        body.insert("inputs".into(), json!(args.inputs));
    }
    // Without a target, let Atlas choose any GPU.
    if !body.contains_key("gpuId") && !body.contains_key("gpu") {
        body.insert("gpu".into(), Value::Object(Map::new()));
    }
    Ok(body)
}

/// Uploads the inputs that are local files (anything not `art_…` that exists), replacing them
/// with their artifact ids.
async fn upload_inputs(
    client: &Client,
    body: &mut Map<String, Value>,
    quiet: bool,
) -> anyhow::Result<()> {
    let Some(Value::Array(inputs)) = body.get_mut("inputs") else {
        return Ok(());
    };
    for input in inputs.iter_mut() {
        let Some(text) = input.as_str() else { continue };
        let path = Path::new(text);
        if text.starts_with("art_") || !path.is_file() {
            continue;
        }
        if !quiet {
            eprintln!("uploading {} …", path.display());
        }
        let created = client
            .upload_artifact(path, |_, _| {})
            .await
            .with_context(|| format!("uploading the input {}", path.display()))?;
        if !quiet {
            eprintln!(
                "  {} → {} (sha256 {})",
                path.display(),
                created.id,
                created.sha256
            );
        }
        *input = Value::from(created.id);
    }
    Ok(())
}

/// A random idempotency key: a submission whose answer was lost is safe to send again.
fn idempotency_key() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("gp4u-run-{}", gp4u_core::hex::encode(&bytes))
}

fn elapsed_s(job: &JobView) -> f64 {
    let started = job.started_at.as_deref().and_then(|text| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
    });
    let ended = job
        .ended_at
        .as_deref()
        .and_then(|text| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
        })
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    started.map_or(0.0, |started| (ended - started).as_seconds_f64().max(0.0))
}

fn clock(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The live line: state, elapsed against declared, utilization, power, cost so far.
pub fn status_line(job: &JobView) -> String {
    let elapsed = elapsed_s(job);
    let declared = job.expected_duration_hours * 3600.0;
    let mut line = format!("{} {} / {}", job.status, clock(elapsed), clock(declared));
    if let Some(metrics) = job.metrics() {
        line.push_str(&format!(
            " · GPU {:.0}% · {:.0} W",
            metrics.gpu_utilization_pct, metrics.power_draw_watts
        ));
    }
    let cost = job.price_per_hour * elapsed / 3600.0;
    line.push_str(&format!(" · cost so far {}", render::money(cost)));
    line
}

fn placement_line(job: &JobView) -> Option<String> {
    let placement = job.placement.as_ref()?;
    let reasons: Vec<String> = placement["reasons"]
        .as_array()?
        .iter()
        .filter_map(|reason| reason["detail"].as_str().map(str::to_string))
        .collect();
    Some(format!(
        "placed on {} ({}) score {}: {}",
        job.gpu.as_ref().map_or_else(
            || "?".into(),
            |gpu| format!("{} in {}", gpu.name, gpu.region)
        ),
        render::value(&placement["node_id"]),
        render::value(&placement["score"]),
        reasons.join("; ")
    ))
}

pub async fn run(
    client: &Client,
    server: &str,
    token: &str,
    args: RunArgs,
    json_output: bool,
) -> anyhow::Result<i32> {
    let mut body = submission(&args)?;
    upload_inputs(client, &mut body, json_output).await?;
    let accepted = client
        .submit(&Value::Object(body), Some(&idempotency_key()))
        .await?;
    if args.detach {
        if json_output {
            render::json(&accepted)?;
        } else {
            println!("{}", accepted.id);
            eprintln!(
                "submitted {} ({}, estimate {}); follow it with `gp4u jobs show {0}` or `gp4u jobs logs -f {0}`",
                accepted.id,
                accepted.status,
                render::money(accepted.cost_estimate)
            );
        }
        return Ok(exit::OK);
    }
    let job_id = accepted.id.clone();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(120));
    let say = |line: String| bar.suspend(|| eprintln!("{line}"));
    say(format!(
        "submitted {job_id}: estimate {}",
        render::money(accepted.cost_estimate)
    ));
    // The logs, streamed to stdout while the job runs (not with --json: stdout is the JSON).
    let logs = (!json_output).then(|| {
        let client = client.clone();
        let bar = bar.clone();
        let job = job_id.clone();
        tokio::spawn(async move {
            client
                .follow_logs(&job, |text| {
                    bar.suspend(|| {
                        print!("{text}");
                        let _ = std::io::stdout().flush();
                    });
                })
                .await
        })
    });
    let mut last_status = None;
    let mut placed = false;
    let job = loop {
        let job = tokio::select! {
            job = client.job(&job_id) => job?,
            _ = tokio::signal::ctrl_c() => {
                bar.finish_and_clear();
                eprintln!("stopped following {job_id}: it goes on. `gp4u jobs show {job_id}` follows it, `gp4u jobs cancel {job_id}` cancels it");
                return Ok(exit::JOB_FAILED);
            }
        };
        if Some(job.status) != last_status {
            say(format!("{} {}", job.status, job.id));
            last_status = Some(job.status);
        }
        if !placed && let Some(line) = placement_line(&job) {
            say(line);
            placed = true;
        }
        bar.set_message(status_line(&job));
        if job.status.is_terminal() {
            break job;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    bar.finish_and_clear();
    if let Some(logs) = logs {
        // The log stream ends with the job; give its tail a moment.
        let _ = tokio::time::timeout(Duration::from_secs(10), logs).await;
    }
    let mut summary = json!({"job": job});
    match (&job.failure_reason, &job.ended_by) {
        (Some(reason), by) => eprintln!(
            "{} {} {reason}{} after {}",
            job.status,
            job.id,
            by.map(|by| format!(" (ended by {by})")).unwrap_or_default(),
            clock(elapsed_s(&job))
        ),
        (None, _) => eprintln!(
            "{} {} exit code {} after {}",
            job.status,
            job.id,
            render::or_dash(job.exit_code),
            clock(elapsed_s(&job))
        ),
    }
    if job.output_sha256.is_some() {
        let (archive, sha256, bytes, unpacked) =
            crate::jobs::download(client, &job_id, &args.output_dir).await?;
        eprintln!(
            "outputs: {} ({bytes} bytes, sha256 {sha256} checked), unpacked in {}",
            archive.display(),
            unpacked.display()
        );
        summary["outputs"] = json!({"archive": archive, "sha256": sha256, "bytes": bytes,
            "unpacked": unpacked});
    }
    // Not verified only when the check ran and failed: a job not settled within the wait is
    // reported as such (`"verified": null`), never as verified.
    let mut verified = true;
    if !args.no_verify {
        let outcome = verify(client, server, token, &job_id, json_output, SETTLEMENT_WAIT).await?;
        summary["verified"] = json!(outcome);
        verified = outcome != Some(false);
    }
    if json_output {
        render::json(&summary)?;
    }
    Ok(match (job.status.as_str(), verified) {
        ("COMPLETE", true) => exit::OK,
        ("COMPLETE", false) => {
            eprintln!("the job completed, but its record does not verify (see above)");
            exit::JOB_FAILED
        }
        _ => exit::JOB_FAILED,
    })
}

/// Waits for the job's settlement, then checks the job against the ledger (`gp4u verify`),
/// keeping the checkpoint it saw beside the login, so that the next run checks the log only grew.
/// `None` when the job was not settled within `wait`: nothing was checked.
async fn verify(
    client: &Client,
    server: &str,
    token: &str,
    job: &str,
    quiet: bool,
    wait: Duration,
) -> anyhow::Result<Option<bool>> {
    let deadline = Instant::now() + wait;
    loop {
        match client.settlement(job).await {
            Ok(_) => break,
            Err(error) if error.status() == Some(409) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) if error.status() == Some(409) => {
                eprintln!(
                    "{job} is not settled after {} s, so it was not verified: verify it later \
                     with `gp4u verify {job}`",
                    wait.as_secs()
                );
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        }
    }
    // The last proofs and the settlement are sealed moments after they are stored.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let checkpoint = crate::session::config_path()
        .and_then(|path| path.parent().map(|dir| dir.join("checkpoint.json")));
    let args = crate::verify::VerifyArgs {
        job: Some(job.to_string()),
        server: Some(server.to_string()),
        token: Some(token.to_string()),
        checkpoint,
        public_key: None,
        require_proofs: false,
        save: None,
        offline: None,
    };
    if quiet {
        // With --json the verifier's lines would break the JSON on stdout: run it silently.
        return crate::verify::check(args).await.map(Some);
    }
    eprintln!("verifying {job} against the ledger:");
    crate::verify::run_to(args, &mut std::io::stderr())
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(line: &[&str]) -> RunArgs {
        Wrapper::try_parse_from(std::iter::once("run").chain(line.iter().copied()))
            .unwrap()
            .run
    }

    #[test]
    fn manifests_in_three_formats_read_the_same_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("job.toml");
        std::fs::write(
            &toml,
            "name = \"train\"\nworkload_type = \"TRAINING\"\nexpectedDurationHours = 0.5\n\
             docker_image = \"reg/img\"\ndocker_image_sha256 = \"ab\"\ncommand = [\"python3\", \"train.py\"]\n\
             shm_gb = 2\n[env]\nEPOCHS = \"3\"\n[gpu]\nmodel = \"4090\"\n",
        )
        .unwrap();
        let yaml = dir.path().join("job.yaml");
        std::fs::write(
            &yaml,
            "name: train\nworkload_type: TRAINING\nexpectedDurationHours: 0.5\ndocker_image: reg/img\n\
             docker_image_sha256: ab\ncommand: [python3, train.py]\nshm_gb: 2\nenv: {EPOCHS: \"3\"}\ngpu: {model: \"4090\"}\n",
        )
        .unwrap();
        let from_toml = submission(&args(&[toml.to_str().unwrap()])).unwrap();
        let from_yaml = submission(&args(&[yaml.to_str().unwrap()])).unwrap();
        assert_eq!(from_toml, from_yaml);
        let json = dir.path().join("job.json");
        std::fs::write(&json, serde_json::to_string(&from_toml).unwrap()).unwrap();
        assert_eq!(
            submission(&args(&[json.to_str().unwrap()])).unwrap(),
            from_toml
        );

        let flagged = submission(&args(&[
            toml.to_str().unwrap(),
            "--env",
            "EPOCHS=5",
            "--region",
            "eu-west-1",
            "--scratch-gb",
            "50",
            "--",
            "sh",
            "-c",
            "echo hi",
        ]))
        .unwrap();
        assert_eq!(flagged["env"]["EPOCHS"], "5");
        assert_eq!(
            flagged["gpu"],
            json!({"model": "4090", "region": "eu-west-1"})
        );
        assert_eq!(flagged["scratch_gb"], json!(50.0));
        assert_eq!(flagged["command"], json!(["sh", "-c", "echo hi"]));
    }

    #[test]
    fn bad_manifests_and_flags_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("job.ini");
        std::fs::write(&bad, "x").unwrap();
        let error = submission(&args(&[bad.to_str().unwrap()])).unwrap_err();
        assert_eq!(crate::session::exit_code(&error), exit::USAGE);
        assert!(error.to_string().contains(".toml"), "{error}");
        let error = submission(&args(&["--env", "NOEQUALS"])).unwrap_err();
        assert_eq!(crate::session::exit_code(&error), exit::USAGE);
        let missing = submission(&args(&["/no/such/job.toml"])).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        // No target: any GPU.
        assert_eq!(submission(&args(&[])).unwrap()["gpu"], json!({}));
    }

    #[test]
    fn the_live_line_says_state_time_and_cost() {
        let mut job: JobView = serde_json::from_value(json!({
            "id": "job_a", "name": "n", "owner_id": "usr_a", "status": "RUNNING",
            "failure_reason": null, "ended_by": null, "costEstimate": 1.0, "price_per_hour": 3.6,
            "gpu": null, "gpu_id": null, "node_id": null, "placement": null,
            "workload_type": "BATCH", "expectedDurationHours": 0.5, "docker_image": "i",
            "docker_image_sha256": "ab", "max_retries": 1, "ram_limit_gb": 16.0, "shm_gb": 8.0,
            "scratch_gb": 20.0, "network": "public", "created_at": "2026-12-03T10:00:00Z",
            "started_at": "2026-12-03T10:00:00Z", "ended_at": "2026-12-03T10:01:40Z",
            "exit_code": null, "latest_metrics": {"gpu_utilization_pct": 87.0, "power_draw_watts": 250.0,
                "vram_used_gb": 10.0, "vram_allocated_gb": 12.0, "temperature_c": 60.0,
                "outbound_bytes_per_sec": 0.0, "inferred_pattern": "TRAINING", "unique_dest_ips": 0,
                "foreign_gpu_processes": 0, "throttling": false, "emulated": false, "clamped": [],
                "at": "2026-12-03T10:01:40Z"},
            "anomalies": [], "energy_kwh": null, "carbon_kg": null, "renewable_pct": null,
            "inputs": [], "output_sha256": null, "output_bytes": null, "log_bytes": 0,
            "log_truncated": false
        }))
        .unwrap();
        assert_eq!(
            status_line(&job),
            "RUNNING 0:01:40 / 0:30:00 · GPU 87% · 250 W · cost so far 0.10"
        );
        job.latest_metrics = None;
        assert!(!status_line(&job).contains("GPU"));
    }

    /// A job that completes but is not settled within the wait is reported unverified, not
    /// verified (it used to count as verified).
    #[tokio::test]
    async fn an_unsettled_job_is_not_reported_verified() {
        use axum::http::StatusCode;
        let router = axum::Router::new().route(
            gp4u_proto::paths::JOB_SETTLEMENT,
            axum::routing::get(|| async {
                (
                    StatusCode::CONFLICT,
                    axum::Json(serde_json::json!({"error": {"code": "NOT_SETTLED",
                        "message": "not settled yet"}})),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = Client::new(&server, Some("t.t")).unwrap();
        let outcome = verify(&client, &server, "t.t", "job_x", true, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(outcome, None);
    }
}
