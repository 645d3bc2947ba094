//! The account and the marketplace: `gp4u gpus`, `gp4u balance`, `gp4u statement`,
//! `gp4u energy`, `gp4u artifacts upload`; a provider's `gp4u provider status|stake`.

use std::path::PathBuf;

use gp4u_client::Client;

use crate::render;
use crate::session::exit;

/// `gp4u gpus`: the marketplace.
pub async fn gpus(client: &Client, json: bool) -> anyhow::Result<i32> {
    let list = client.gpus().await?;
    if json {
        render::json(&list)?;
        return Ok(exit::OK);
    }
    if list.gpus.is_empty() {
        println!("no GPU is available right now");
        return Ok(exit::OK);
    }
    let rows = list
        .gpus
        .iter()
        .map(|gpu| {
            vec![
                gpu.id.clone(),
                gpu.name.clone(),
                format!("{}", gpu.vram_gb),
                render::money(gpu.price_per_hour),
                gpu.region.clone(),
                format!("{:.0}", gpu.trust_score),
                gpu.power_limit_watts
                    .map_or_else(|| "-".into(), |watts| format!("{watts:.0}")),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(
            &[
                "id", "gpu", "VRAM GB", "price/h", "region", "trust", "limit W"
            ],
            rows
        )
    );
    Ok(exit::OK)
}

/// `gp4u balance`.
pub async fn balance(client: &Client, json: bool) -> anyhow::Result<i32> {
    let balance = client.balance().await?;
    if json {
        render::json(&balance)?;
    } else {
        println!(
            "{}",
            render::fields(&[
                ("available", render::money(balance.balance)),
                ("held", render::money(balance.held)),
                ("currency", balance.currency.clone()),
            ])
        );
    }
    Ok(exit::OK)
}

/// `gp4u statement`: transfers, newest first, and totals.
pub async fn statement(client: &Client, json: bool) -> anyhow::Result<i32> {
    let statement = client.statement().await?;
    if json {
        render::json(&statement)?;
        return Ok(exit::OK);
    }
    let rows = statement
        .transfers
        .iter()
        .map(|line| {
            vec![
                gp4u_server::views::rfc3339(line.at_ms),
                render::label(&line.kind),
                line.amount.to_string(),
                line.job_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!("{}", render::table(&["at", "kind", "amount", "job"], rows));
    println!("earnings {} {}", statement.earnings, statement.currency);
    Ok(exit::OK)
}

/// `gp4u energy`: energy and carbon of the caller's jobs (`--scope provider|platform`).
pub async fn energy(client: &Client, scope: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let summary = client.energy(scope).await?;
    if json {
        render::json(&summary)?;
        return Ok(exit::OK);
    }
    let total = &summary.total;
    println!(
        "{}",
        render::fields(&[
            ("scope", summary.scope.as_str().to_string()),
            ("jobs", total.jobs.to_string()),
            ("energy kWh", total.energy_kwh.to_string()),
            ("carbon kg CO2e", total.carbon_kg.to_string()),
            (
                "renewable kWh (declared)",
                total.renewable_kwh_declared.to_string()
            ),
            (
                "credit-eligible jobs",
                total.credit_eligible_jobs.to_string()
            ),
        ])
    );
    println!("{}", summary.basis);
    Ok(exit::OK)
}

/// `gp4u artifacts upload FILE`: a job input, with a progress bar; prints its id.
pub async fn upload(client: &Client, file: PathBuf, json: bool) -> anyhow::Result<i32> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(format!("uploading {}", file.display()));
    let progress = bar.clone();
    let created = client
        .upload_artifact(&file, move |sent, total| {
            progress.set_length(total);
            progress.set_position(sent);
        })
        .await;
    bar.finish_and_clear();
    let created = created?;
    if json {
        render::json(&created)?;
    } else {
        println!(
            "{} ({} bytes, sha256 {}): list it in a job's inputs, mounted at /input/{}",
            created.id, created.size_bytes, created.sha256, created.id
        );
    }
    Ok(exit::OK)
}

#[derive(Debug, clap::Subcommand)]
pub enum ProviderCommand {
    /// A node's standing: status, stake, trust, posture, visibility, GPUs, slashes, record.
    Status { node: String },
    /// Move credit into a node's stake (what slashes take from).
    Stake { node: String, amount: f64 },
}

pub async fn provider(
    client: &Client,
    command: ProviderCommand,
    json: bool,
) -> anyhow::Result<i32> {
    let view = match command {
        ProviderCommand::Status { node } => client.node(&node).await?,
        ProviderCommand::Stake { node, amount } => client.stake(&node, amount).await?,
    };
    if json {
        render::json(&view)?;
        return Ok(exit::OK);
    }
    let posture = view.posture.as_ref().map(|posture| {
        format!(
            "{} {}, egress filter {}, scratch {} (≤ {} GB), seccomp {}",
            posture.runtime,
            render::or_dash(posture.engine_version.as_ref()),
            posture.egress_filter,
            posture.scratch_quota,
            posture.max_scratch_gb,
            posture.seccomp,
        )
    });
    println!(
        "{}",
        render::fields(&[
            ("node", view.node_id.clone()),
            ("status", view.status.to_string()),
            ("region", view.region.clone()),
            ("stake", render::money(view.stake)),
            ("trust", format!("{:.1}", view.trust_score)),
            ("posture", render::or_dash(posture)),
            ("visibility", view.visibility.clone()),
            (
                "uptime",
                render::or_dash(view.record.as_ref().and_then(|record| record.uptime)),
            ),
        ])
    );
    let gpus = view
        .gpus
        .iter()
        .map(|gpu| {
            vec![
                gpu.id.clone(),
                gpu.name.clone(),
                gpu.status.to_string(),
                render::money(gpu.price_per_hour),
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(&["gpu", "name", "status", "price/h"], gpus)
    );
    if !view.slashes.is_empty() {
        let slashes = view
            .slashes
            .iter()
            .map(|slash| {
                vec![
                    slash.at.clone(),
                    slash.kind.clone(),
                    render::money(slash.stake_taken),
                    slash.evidence.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            render::table(&["at", "slash", "stake taken", "evidence"], slashes)
        );
    }
    Ok(exit::OK)
}
