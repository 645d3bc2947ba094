//! `gp4u jobs list|show|logs|cancel|outputs|telemetry`: the customer's jobs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gp4u_client::Client;
use gp4u_proto::JobView;

use crate::render;
use crate::session::exit;

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Your jobs, newest first.
    List {
        /// At most this many (1–500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The next page: jobs older than this one (the `next_before` a page ends with).
        #[arg(long)]
        before: Option<String>,
    },
    /// One job: state, placement and its reasons, cost, energy, outputs.
    Show { job: String },
    /// The job's stdout and stderr; `-f` follows them until the job ends.
    Logs {
        job: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a PENDING, ASSIGNED or RUNNING job.
    Cancel { job: String },
    /// Download the job's /output (tar.gz, SHA-256 checked) and unpack it.
    Outputs {
        job: String,
        /// Where to put `<job>.tar.gz` and the unpacked `<job>/`.
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
    },
    /// The job's telemetry, oldest first.
    Telemetry {
        job: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn run(client: &Client, command: JobsCommand, json: bool) -> anyhow::Result<i32> {
    match command {
        JobsCommand::List { limit, before } => {
            let list = client
                .jobs_page(Some(limit.clamp(1, 500)), before.as_deref())
                .await?;
            if json {
                render::json(&list)?;
            } else if list.jobs.is_empty() {
                println!("no jobs yet: `gp4u run MANIFEST` submits one");
            } else {
                let rows = list.jobs.iter().map(row).collect();
                println!(
                    "{}",
                    render::table(
                        &["id", "name", "status", "reason", "gpu", "cost", "created"],
                        rows
                    )
                );
                if let Some(next) = &list.next_before {
                    println!("older jobs: gp4u jobs list --before {next}");
                }
            }
        }
        JobsCommand::Show { job } => {
            let view = client.job(&job).await?;
            if json {
                render::json(&view)?;
            } else {
                println!("{}", describe(&view));
            }
        }
        JobsCommand::Logs { job, follow } => {
            if follow {
                client
                    .follow_logs(&job, |text| {
                        print!("{text}");
                        let _ = std::io::stdout().flush();
                    })
                    .await?;
            } else {
                print!("{}", client.logs(&job).await?);
            }
        }
        JobsCommand::Cancel { job } => {
            let view = client.cancel(&job).await?;
            if json {
                render::json(&view)?;
            } else {
                println!(
                    "{} {} ({})",
                    view.id,
                    view.status,
                    render::or_dash(view.failure_reason)
                );
            }
        }
        JobsCommand::Outputs { job, output_dir } => {
            let (archive, sha256, bytes, unpacked) = download(client, &job, &output_dir).await?;
            if json {
                render::json(&serde_json::json!({"job_id": job, "archive": archive,
                    "sha256": sha256, "bytes": bytes, "unpacked": unpacked}))?;
            } else {
                println!(
                    "{} ({bytes} bytes, sha256 {sha256} checked) unpacked in {}",
                    archive.display(),
                    unpacked.display()
                );
            }
        }
        JobsCommand::Telemetry { job, limit } => {
            let telemetry = client.telemetry(&job, Some(limit)).await?;
            if json {
                render::json(&telemetry)?;
            } else {
                let rows = telemetry
                    .samples
                    .iter()
                    .map(|sample| {
                        vec![
                            sample.at.clone(),
                            sample.gpu_utilization_pct.to_string(),
                            sample.vram_used_gb.to_string(),
                            sample.power_draw_watts.to_string(),
                            sample.temperature_c.to_string(),
                            sample.outbound_bytes_per_sec.to_string(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    render::table(
                        &["at", "util %", "VRAM GB", "power W", "temp °C", "out B/s"],
                        rows
                    )
                );
            }
        }
    }
    Ok(exit::OK)
}

fn row(job: &JobView) -> Vec<String> {
    vec![
        job.id.clone(),
        job.name.clone(),
        job.status.to_string(),
        render::or_dash(job.failure_reason),
        job.gpu.as_ref().map_or_else(
            || "-".into(),
            |gpu| format!("{} ({})", gpu.name, gpu.region),
        ),
        render::money(job.cost_estimate),
        job.created_at.clone(),
    ]
}

/// A job for people.
pub fn describe(job: &JobView) -> String {
    let placement = job.placement.as_ref().map(|placement| {
        let reasons: Vec<String> = placement["reasons"]
            .as_array()
            .map(|reasons| {
                reasons
                    .iter()
                    .filter_map(|reason| reason["detail"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "score {} on {}: {}",
            render::value(&placement["score"]),
            render::value(&placement["node_id"]),
            reasons.join("; ")
        )
    });
    render::fields(&[
        ("id", job.id.clone()),
        ("name", job.name.clone()),
        (
            "status",
            match (&job.failure_reason, &job.ended_by) {
                (Some(reason), Some(by)) => format!("{} {reason} (ended by {by})", job.status),
                (Some(reason), None) => format!("{} {reason}", job.status),
                _ => job.status.to_string(),
            },
        ),
        (
            "gpu",
            job.gpu.as_ref().map_or_else(
                || "not placed yet".into(),
                |gpu| format!("{} in {}", gpu.name, gpu.region),
            ),
        ),
        ("placement", render::or_dash(placement)),
        (
            "image",
            format!("{}@sha256:{}", job.docker_image, job.docker_image_sha256),
        ),
        (
            "runtime",
            format!(
                "{} GB memory, {} GB /dev/shm, {} GB /scratch, network {}",
                job.ram_limit_gb, job.shm_gb, job.scratch_gb, job.network
            ),
        ),
        (
            "cost",
            format!(
                "estimate {} at {}/h for {} h",
                render::money(job.cost_estimate),
                render::money(job.price_per_hour),
                job.expected_duration_hours
            ),
        ),
        ("created", job.created_at.clone()),
        ("started", render::or_dash(job.started_at.as_deref())),
        ("ended", render::or_dash(job.ended_at.as_deref())),
        ("exit code", render::or_dash(job.exit_code)),
        (
            "energy",
            match (job.energy_kwh, job.carbon_kg) {
                (Some(kwh), Some(kg)) => format!("{kwh:.6} kWh, {kg:.6} kg CO2e"),
                _ => "-".into(),
            },
        ),
        ("anomalies", {
            let rules: Vec<String> = job
                .anomaly_summary()
                .into_iter()
                .map(|anomaly| format!("{} ×{}", anomaly.rule, anomaly.count))
                .collect();
            if rules.is_empty() {
                "none".to_string()
            } else {
                rules.join(", ")
            }
        }),
        (
            "outputs",
            match (&job.output_sha256, job.output_bytes) {
                (Some(sha), Some(bytes)) => format!("{bytes} bytes, sha256 {sha}"),
                _ => "-".into(),
            },
        ),
        ("logs", format!("{} bytes", job.log_bytes)),
    ])
}

/// Downloads the job's outputs into `dir` (`<job>.tar.gz`, hash checked) and unpacks them into
/// `dir/<job>/`. Returns (archive, sha256, bytes, unpacked dir).
pub async fn download(
    client: &Client,
    job: &str,
    dir: &Path,
) -> anyhow::Result<(PathBuf, String, u64, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let archive = dir.join(format!("{job}.tar.gz"));
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let (sha256, bytes) = client
        .download_output(job, &archive, |done, total| {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
        })
        .await?;
    bar.finish_and_clear();
    let unpacked = dir.join(job);
    let file =
        std::fs::File::open(&archive).with_context(|| format!("opening {}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&unpacked)
        .with_context(|| {
            format!(
                "unpacking {} into {}",
                archive.display(),
                unpacked.display()
            )
        })?;
    Ok((archive, sha256, bytes, unpacked))
}
