//! `gp4u demo [--once] [--listen ADDR]`: the whole pipeline on this machine with no setup
//! (SPEC §11). An embedded server in a temporary data dir, a local agent (Docker when it is
//! usable, with an image built here and served by digest from a registry of the demo's own;
//! else the process runtime, said plainly), emulated GPUs when NVML finds none, and two sample
//! jobs: a training-like one that completes, and a miner-like one that Tutela kills. Each stage
//! is printed as it happens, with its time; then a summary, the server's URL and a sign-in
//! token, and the demo serves until Ctrl-C (`--once` exits after the summary: 0 when every
//! stage held).

mod image;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use gp4u_client::Client;
use gp4u_proto::{FailureReason, JobStatus, JobView, NewUserBody, ProofKind};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::render;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Exit after the summary (0 when every stage held), instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Where the demo's server listens [default: a free port on 127.0.0.1].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// How long the whole pipeline may take before the demo gives up on a stage, seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout_s: u64,
}

/// The server settings of the demo: a telemetry packet a second, and a short inference window
/// (the miner is judged over its last five samples instead of five minutes) that tolerates the
/// jitter of an emulated GPU on a busy laptop (utilization derived from CPU time, shared with
/// the demo's own server and agent): a standard deviation under 8 points instead of 3.
const SERVER_CONFIG: &str =
    "[tutela.rules.inference]\nmax_window_samples = 5\nmining_max_util_std = 8.0\n";

/// One sample job and what it must go through.
struct Sample {
    label: &'static str,
    script: &'static str,
    /// The stages that must hold, in order.
    stages: &'static [&'static str],
}

const TRAINING: Sample = Sample {
    label: "training",
    script: "train.sh",
    stages: &[
        "submitted",
        "placed",
        "running",
        "telemetry",
        "completed",
        "energy",
        "proofs",
        "settled",
        "ledger verified",
    ],
};

const MINER: Sample = Sample {
    label: "miner",
    script: "mine.sh",
    stages: &[
        "submitted",
        "placed",
        "running",
        "telemetry",
        "killed",
        "settled",
        "ledger verified",
    ],
};

/// A stage that held, or did not.
#[derive(Debug, Clone)]
struct Stage {
    job: &'static str,
    name: &'static str,
    at: Duration,
    detail: String,
}

/// How jobs will run here.
enum Runtime {
    /// Docker, with the demo image served from `registry`.
    Docker { image: String, digest: String },
    /// No usable Docker (or no static busybox to build the image from): child processes.
    Process {
        reason: String,
        dir: tempfile::TempDir,
    },
}

async fn choose_runtime() -> anyhow::Result<Runtime> {
    let process = |reason: String| -> anyhow::Result<Runtime> {
        let dir = tempfile::tempdir().context("creating a dir for the demo's workloads")?;
        for (name, script) in image::WORKLOADS {
            std::fs::write(dir.path().join(name), script)?;
        }
        Ok(Runtime::Process { reason, dir })
    };
    if let Err(error) = gp4u_agent::docker::DockerRuntime::connect().await {
        return process(format!("Docker is not usable here ({error})"));
    }
    let Some(busybox) = image::static_busybox() else {
        return process(
            "no statically linked busybox to build the demo image from (Debian: apt-get install busybox-static)"
                .into(),
        );
    };
    let built = match image::build(&busybox) {
        Ok(built) => built,
        Err(error) => return process(format!("the demo image could not be built: {error:#}")),
    };
    let digest = built.digest.clone();
    match image::serve(built).await {
        Ok(address) => Ok(Runtime::Docker {
            image: format!("{address}/{}", image::REPOSITORY),
            digest,
        }),
        Err(error) => process(format!("the demo's registry could not start: {error:#}")),
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let say = |text: String| println!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());
    let data = tempfile::tempdir().context("creating the demo's data dir")?;
    let config = data.path().join("demo.toml");
    std::fs::write(&config, SERVER_CONFIG)?;
    let listen = args
        .listen
        .map_or_else(|| "127.0.0.1:0".to_string(), |address| address.to_string());
    let server_args = crate::ServerFlags::try_parse_from([
        "server",
        "--listen",
        &listen,
        "--data-dir",
        &data.path().display().to_string(),
        "--bootstrap-admin",
        "usr_admin",
        "--telemetry-interval-s",
        "1",
        "--visibility-interval-s",
        "5",
        "--config",
        &config.display().to_string(),
    ])
    .context("the demo's server flags")?
    .args;
    let settings = gp4u_server::ServerSettings::resolve(server_args)?;
    let server = gp4u_server::Server::build(&settings).await?;
    let address = server.local_addr()?;
    let base = format!("http://{address}");
    let keys = server.state.keys.clone();
    let (stop_server, server_stopping) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = server_stopping.await;
    }));
    say(format!(
        "server on {base} (SQLite in {})",
        data.path().display()
    ));

    // The operator, a provider and a customer, with tokens the platform issues.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let admin_token = gp4u_core::token::mint(
        &gp4u_core::token::Claims {
            sub: "usr_admin".into(),
            clr: 3,
            trs: 50.0,
            exp: i64::try_from(now).unwrap_or(0) + 24 * 3600,
        },
        &keys.current,
    );
    let admin = Client::new(&base, Some(&admin_token))?;
    let provider = admin
        .create_user(&NewUserBody {
            name: "Demo provider".into(),
            role: "provider".into(),
            university: None,
            region: None,
            credit: None,
        })
        .await?;
    let customer = admin
        .create_user(&NewUserBody {
            name: "Demo customer".into(),
            role: "customer".into(),
            university: None,
            region: Some("eu-west-1".into()),
            credit: Some(100.0),
        })
        .await?;
    let provider_token = admin.issue_token(&provider.id, None).await?.token;
    let customer_token = admin.issue_token(&customer.id, None).await?.token;
    let customer_client = Client::new(&base, Some(&customer_token))?;

    // The agent, in this process.
    let runtime = choose_runtime().await?;
    let token_file = data.path().join("provider.token");
    std::fs::write(&token_file, &provider_token)?;
    use gp4u_agent::gpu::GpuSource as _;
    let nvml = gp4u_agent::gpu::NvmlSource::open();
    let emulated = if nvml.inventory().gpus.is_empty() {
        vec![
            gp4u_agent::gpu::EmulatedGpu::parse("emulated:Demo GPU:24:300")?,
            gp4u_agent::gpu::EmulatedGpu::parse("emulated:Demo GPU:24:300")?,
        ]
    } else {
        Vec::new()
    };
    let gpu_note = if emulated.is_empty() {
        "this machine's NVIDIA GPUs (NVML)".to_string()
    } else {
        "two emulated GPUs (NVML found none): their readings are derived from the jobs' CPU use"
            .to_string()
    };
    let (agent_runtime, runtime_note) = match &runtime {
        Runtime::Docker { .. } => (
            gp4u_agent::agent::RuntimeKind::Docker,
            "Docker: hardened containers, the demo image pulled by digest from the demo's own registry".to_string(),
        ),
        Runtime::Process { reason, .. } => (
            gp4u_agent::agent::RuntimeKind::Process,
            format!("PROCESS RUNTIME, NO ISOLATION: {reason}; jobs run as plain child processes (development only)"),
        ),
    };
    say(format!("agent: {runtime_note}; {gpu_note}"));
    let agent_config = gp4u_agent::agent::AgentConfig {
        server: base.clone(),
        token: provider_token.clone(),
        data_dir: data.path().join("agent"),
        runtime: agent_runtime,
        allow_unisolated: true,
        emulated,
        region: "eu-west-1".into(),
        price_per_hour: 1.2,
        poll_wait_s: 5,
        refuse_visibility: false,
        net_sample_interval: gp4u_agent::agent::AgentConfig::DEFAULT_NET_SAMPLE_INTERVAL,
        renewable_pct: 85.0,
        job_runtime: gp4u_agent::agent::JobRuntimeOptions {
            // The demo's jobs need no network: it runs where no egress filter can be installed.
            allow_unfiltered_egress: false,
            ..Default::default()
        },
        metrics_listen: None,
    };
    let (stop_agent, agent_stopping) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(agent_config, agent_stopping));

    // Whatever happens from here (a stage that does not hold, a job that cannot be followed),
    // the demo's jobs are wound down before the agent stops: nothing of it outlives it.
    let outcome: anyhow::Result<bool> = async {
        // The jobs, each followed by a task that reports its stages as they hold, once the
        // agent's GPUs are on the marketplace.
        let deadline = started + Duration::from_secs(args.timeout_s);
        loop {
            let listed = customer_client.gpus().await?;
            if !listed.gpus.is_empty() {
                say(format!(
                    "marketplace: {} GPU(s) listed, e.g. {} at {}/h in {}",
                    listed.gpus.len(),
                    listed.gpus[0].name,
                    render::money(listed.gpus[0].price_per_hour),
                    listed.gpus[0].region
                ));
                break;
            }
            if agent.is_finished() || Instant::now() > deadline {
                anyhow::bail!("the demo's agent did not register its GPUs (see the log above)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let samples: Vec<&Sample> = match &runtime {
            Runtime::Docker { .. } => vec![&TRAINING, &MINER],
            Runtime::Process { .. } => {
                say("miner: skipped — without containers the agent cannot see a job's own network, so the miner's pool connection cannot be judged".into());
                vec![&TRAINING]
            }
        };
        let (events, mut stages) = mpsc::unbounded_channel::<Stage>();
        let mut followers = Vec::new();
        for sample in &samples {
            let (image_name, digest, command) = match &runtime {
                Runtime::Docker { image, digest } => (
                    image.clone(),
                    digest.clone(),
                    vec!["sh".to_string(), format!("/demo/{}", sample.script)],
                ),
                Runtime::Process { dir, .. } => (
                    "gp4u/demo-process".to_string(),
                    format!("sha256:{}", "0".repeat(64)),
                    vec![
                        "sh".to_string(),
                        dir.path().join(sample.script).display().to_string(),
                    ],
                ),
            };
            let body = json!({
                "name": format!("demo {}", sample.label), "workload_type": "TRAINING",
                "expectedDurationHours": 0.1, "docker_image": image_name,
                "docker_image_sha256": digest, "command": command, "ram_limit_gb": 1,
                "scratch_gb": 1, "network": "none", "gpu": {},
                "reproducibility_sensitive": sample.label == "training",
            });
            let client = customer_client.clone();
            let events = events.clone();
            let server = base.clone();
            let token = customer_token.clone();
            let label = sample.label;
            followers.push(tokio::spawn(async move {
                follow(
                    client, server, token, label, body, started, deadline, events,
                )
                .await
            }));
        }
        drop(events);
        let mut held: BTreeMap<(&'static str, &'static str), Stage> = BTreeMap::new();
        while let Some(stage) = stages.recv().await {
            println!(
                "[{:>5.1}s] {:<9} {:<15} {}",
                stage.at.as_secs_f64(),
                stage.job,
                stage.name,
                stage.detail
            );
            held.insert((stage.job, stage.name), stage);
        }
        for follower in followers {
            if let Ok(Err(error)) = follower.await {
                say(format!("a job could not be followed: {error:#}"));
            }
        }

        // The summary: every stage of every sample, in order, held or not.
        println!();
        let mut rows = Vec::new();
        let mut all_held = true;
        for sample in &samples {
            for name in sample.stages {
                let stage = held.get(&(sample.label, *name));
                all_held &= stage.is_some();
                rows.push(vec![
                    sample.label.to_string(),
                    (*name).to_string(),
                    stage.map_or_else(|| "✗ did not hold".into(), |_| "✓".to_string()),
                    stage.map_or_else(
                        || "-".into(),
                        |stage| format!("{:.1}s", stage.at.as_secs_f64()),
                    ),
                ]);
            }
        }
        println!("{}", render::table(&["job", "stage", "held", "at"], rows));
        println!(
            "the whole pipeline in {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            if all_held {
                "every stage held"
            } else {
                "SOME STAGES DID NOT HOLD"
            }
        );
        println!();
        println!(
            "the server: {base}   (its API: {base}{})",
            gp4u_proto::paths::OPENAPI
        );
        println!("the console: {base}/   (open it in a browser)");
        println!("sign in as the demo customer with this token:\n{customer_token}");
        println!("or the CLI: `gp4u login --server {base}` (paste the token), then `gp4u jobs list`");
        if !args.once {
            println!("serving until Ctrl-C …");
            let _ = tokio::signal::ctrl_c().await;
        }
        Ok(all_held)
    }
    .await;
    wind_down(&customer_client, data.path(), &say).await;
    let _ = stop_agent.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), agent).await;
    let _ = stop_server.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), serving).await;
    drop(runtime);
    Ok(if outcome? {
        crate::session::exit::OK
    } else {
        crate::session::exit::JOB_FAILED
    })
}

/// Cancels the demo's jobs that have not ended (a stage that did not hold, a follower that gave
/// up, Ctrl-C while serving) and waits for the agent to tear them down — container, network,
/// scratch — before it is stopped: a demo that fails must not leave a miner running.
async fn wind_down(client: &Client, data_dir: &std::path::Path, say: &impl Fn(String)) {
    let open: Vec<String> = match client.jobs(Some(200)).await {
        Ok(list) => list
            .jobs
            .into_iter()
            .filter(|job| !job.status.is_terminal())
            .map(|job| job.id)
            .collect(),
        Err(error) => {
            say(format!(
                "could not list the demo's jobs to wind them down: {error}"
            ));
            Vec::new()
        }
    };
    for job in &open {
        match client.cancel(job).await {
            Ok(_) => say(format!("{job} cancelled: the demo is ending")),
            Err(error) => say(format!("could not cancel {job}: {error}")),
        }
    }
    // The agent unmounts a job's scratch last, once its container and network are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = mounts_under(data_dir);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            say(format!(
                "the agent did not tear its jobs down within 30 s; still mounted: {} \
                 (`docker ps --filter name=gp4u-job_` lists their containers)",
                left.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The mount points under `dir` (`/proc/mounts`).
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|mount| mount.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Submits one sample and reports its stages as they hold, until it is verified or the
/// deadline passes.
#[allow(clippy::too_many_arguments)] // one job's follower: what it follows and where it reports
async fn follow(
    client: Client,
    server: String,
    token: String,
    label: &'static str,
    body: Value,
    started: Instant,
    deadline: Instant,
    events: mpsc::UnboundedSender<Stage>,
) -> anyhow::Result<()> {
    let report = |name: &'static str, detail: String| {
        let _ = events.send(Stage {
            job: label,
            name,
            at: started.elapsed(),
            detail,
        });
    };
    let accepted = client.submit(&body, None).await?;
    let job = accepted.id.clone();
    report(
        "submitted",
        format!("{job} (estimate {})", render::money(accepted.cost_estimate)),
    );
    let mut seen: Vec<&'static str> = Vec::new();
    let once = |name: &'static str, detail: String, seen: &mut Vec<&'static str>| {
        if !seen.contains(&name) {
            seen.push(name);
            report(name, detail);
        }
    };
    let mut view: JobView;
    loop {
        view = client.job(&job).await?;
        if view.placement.is_some() {
            let placement = view.placement.clone().unwrap_or_default();
            let reasons: Vec<String> = placement["reasons"]
                .as_array()
                .map(|reasons| {
                    reasons
                        .iter()
                        .filter_map(|reason| reason["factor"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            once(
                "placed",
                format!(
                    "on {} score {} ({})",
                    render::value(&placement["node_id"]),
                    render::number(&placement["score"], 1),
                    reasons.join(", ")
                ),
                &mut seen,
            );
        }
        if view.started_at.is_some() {
            once("running", view.status.to_string(), &mut seen);
        }
        if let Some(metrics) = view.metrics() {
            once(
                "telemetry",
                format!(
                    "GPU {:.0}%, {:.0} W{}",
                    metrics.gpu_utilization_pct,
                    metrics.power_draw_watts,
                    if metrics.emulated { " (emulated)" } else { "" }
                ),
                &mut seen,
            );
        }
        if view.status.is_terminal() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{job} did not end in time (still {})", view.status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match (view.status, view.failure_reason) {
        (JobStatus::Complete, _) => once(
            "completed",
            format!("exit code {}", render::or_dash(view.exit_code)),
            &mut seen,
        ),
        (JobStatus::Failed, Some(FailureReason::KilledAnomaly)) => {
            let rules: Vec<String> = view
                .anomaly_summary()
                .into_iter()
                .map(|anomaly| anomaly.rule)
                .collect();
            once(
                "killed",
                format!(
                    "{} → FAILED KILLED_ANOMALY, the customer flagged, no provider slash",
                    rules.join(", ")
                ),
                &mut seen,
            );
        }
        (status, reason) => anyhow::bail!("{job} ended {status} {reason:?}"),
    }
    // Stages 5–7: energy, proofs, settlement, the ledger.
    loop {
        let view = client.job(&job).await?;
        if let (Some(kwh), Some(kg)) = (view.energy_kwh, view.carbon_kg) {
            once(
                "energy",
                format!(
                    "{kwh:.6} kWh, {kg:.6} kg CO2e, {}% renewable (declared){}",
                    render::or_dash(view.renewable_pct),
                    if view.carbon_credit_eligible == Some(true) {
                        ", carbon-credit eligible"
                    } else {
                        ""
                    }
                ),
                &mut seen,
            );
        }
        let proofs = client.proofs(&job).await?;
        let has = |kind| proofs.proofs.iter().any(|proof| proof.kind == kind);
        if has(ProofKind::Energy) && has(ProofKind::Hardware) {
            once(
                "proofs",
                "energy (Bulletproofs over the sealed commitments) and hardware attestation verified on receipt".into(),
                &mut seen,
            );
        }
        match client.settlement(&job).await {
            Ok(settlement) => once(
                "settled",
                format!(
                    "charged {:.4}, provider {:.4}, fee {:.4}, refunded {:.4}",
                    settlement.customer_charged,
                    settlement.provider_earnings,
                    settlement.platform_fee,
                    settlement.refunded
                ),
                &mut seen,
            ),
            Err(error) if error.status() == Some(409) => {}
            Err(error) => return Err(error.into()),
        }
        let waiting_for_proofs = label == "training" && !seen.contains(&"proofs");
        if seen.contains(&"settled") && !waiting_for_proofs {
            // The last documents are sealed moments after they are stored.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let args = crate::verify::VerifyArgs {
                job: Some(job.clone()),
                server: Some(server.clone()),
                token: Some(token.clone()),
                checkpoint: None,
                public_key: None,
                require_proofs: false,
                save: None,
                offline: None,
            };
            if crate::verify::check(args).await? {
                once(
                    "ledger verified",
                    "every entry included in the signed checkpoint; proofs, settlement and energy match what was sealed".into(),
                    &mut seen,
                );
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("{job}: stages after the end did not all hold in time");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
