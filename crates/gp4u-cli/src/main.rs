//! `gp4u`: the one binary. Thin: parses arguments and calls into the library crates.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gp4u_core::token::{Claims, MAX_CLEARANCE, mint};
use gp4u_server::config::DEFAULT_DATA_DIR;
use gp4u_server::{Server, ServerArgs, ServerSettings, secret};

mod account;
mod admin;
mod demo;
mod jobs;
mod render;
mod run;
mod session;
mod verify;

#[derive(Debug, Parser)]
#[command(name = "gp4u", version, about = "GP4U: a GPU compute marketplace")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "GP4U_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// `gp4u server`'s flags on their own, for the demo's embedded server.
#[derive(Debug, Parser)]
struct ServerFlags {
    #[command(flatten)]
    args: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole pipeline on this machine, no setup: an embedded server, a local agent and two
    /// sample jobs (one completes, one is killed for mining), each stage printed as it happens.
    Demo(demo::DemoArgs),
    /// Run the control plane (HTTP API, chambers, outbox relay).
    Server(ServerArgs),
    /// Run the provider agent on this GPU host: register its GPUs, take jobs, run them.
    Agent(AgentArgs),
    /// Verify a job's record against the platform's signed transparency log.
    Verify(verify::VerifyArgs),
    /// Tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Save the server and your token (from --token-file or standard input) for the commands
    /// below, in ~/.config/gp4u/config.toml (0600), after checking them with the server.
    Login(session::LoginArgs),
    /// Submit a job and follow it: live state, logs, outputs, verification.
    Run {
        #[command(flatten)]
        args: run::RunArgs,
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// Your jobs: list, show, logs, cancel, outputs, telemetry.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// The GPUs available on the marketplace.
    Gpus {
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// Your credit: available and held.
    Balance {
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// Your transfers, newest first, and your earnings.
    Statement {
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// Energy and carbon: by default the widest scope your account allows (platform for admins,
    /// your nodes' for providers, your jobs' for customers); --scope customer|provider|platform
    /// picks one.
    Energy {
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// Job inputs.
    Artifacts {
        #[command(subcommand)]
        command: ArtifactsCommand,
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// Your provider nodes: standing, stake.
    Provider {
        #[command(subcommand)]
        command: account::ProviderCommand,
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
    /// Operators: users, tokens, credit, chambers, grid factors.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
        #[command(flatten)]
        connect: session::ConnectArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ArtifactsCommand {
    /// Upload a file as a job input (progress on stderr); prints its id.
    Upload { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a bearer token signed with the server's secret, printed to stdout.
    Mint(MintArgs),
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    /// User id (usr_…).
    #[arg(long)]
    sub: String,
    /// Clearance: 1 customer, 2 provider, 3 admin (0–5).
    #[arg(long)]
    clr: u8,
    /// Trust score, 0–100.
    #[arg(long, default_value_t = 50.0)]
    trs: f64,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// Secret to sign with; default: the one the server uses (GP4U_TOKEN_SECRET, else the data dir's).
    #[arg(long, env = "GP4U_TOKEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The server's data dir, where a generated secret lives.
    #[arg(long, env = "GP4U_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// The control plane, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "GP4U_SERVER")]
    server: String,
    /// File holding the provider's bearer token (`gp4u admin token PROVIDER_ID --ttl-s 31536000`
    /// issues one for a year; the agent stops when it expires).
    #[arg(long, env = "GP4U_TOKEN_FILE")]
    token_file: PathBuf,
    /// Where the node key, the registration and job files live.
    #[arg(long, env = "GP4U_AGENT_DATA_DIR", default_value = "./gp4u-agent")]
    data_dir: PathBuf,
    /// docker (hardened containers) or process (no isolation; needs --allow-unisolated).
    #[arg(long, env = "GP4U_RUNTIME", default_value = "docker", value_parser = ["docker", "process"])]
    runtime: String,
    /// Accept --runtime process, which runs jobs WITHOUT isolation (development only).
    #[arg(long)]
    allow_unisolated: bool,
    /// Declare a GPU without NVIDIA hardware: emulated:<name>:<vram_gb>[:<power_limit_w>]
    /// (repeatable; the power limit, 300 W when left out, bounds its readings and proofs).
    #[arg(long = "gpu", env = "GP4U_GPU", value_delimiter = ',')]
    gpus: Vec<String>,
    /// The node's region, e.g. us-east-1.
    #[arg(long, env = "GP4U_REGION")]
    region: String,
    /// Price per GPU-hour in currency units.
    #[arg(long, env = "GP4U_PRICE")]
    price: f64,
    /// Long-poll wait in seconds.
    #[arg(long, default_value_t = 25)]
    poll_wait: u64,
    /// Deprecated, ignored: visibility challenges arrive in telemetry replies, on the agent's
    /// own connection, so the agent needs no listener.
    #[arg(long, hide = true)]
    listen: Option<String>,
    /// Deprecated, ignored (see --listen).
    #[arg(long, hide = true)]
    advertise: Option<String>,
    /// Never answer the platform's visibility challenges: behave as a provider that blocks
    /// visibility (tests and drills; the platform slashes and ejects the node).
    #[arg(long, hide = true)]
    refuse_visibility: bool,
    /// Milliseconds between samples of a running container's socket tables (the union over
    /// each telemetry period is reported, so short-lived connections are seen).
    #[arg(long, default_value_t = 1000)]
    net_sample_ms: u64,
    /// The share of the node's power from renewable sources, 0–100: declared at registration
    /// and committed with every power reading (the energy proof shows it is met).
    #[arg(long, env = "GP4U_RENEWABLE_PCT", default_value_t = 0.0, value_parser = renewable_pct)]
    renewable_pct: f64,
    /// The most /scratch a job may ask for on this node, in GB (SPEC §10; jobs default to 20).
    #[arg(long, env = "GP4U_MAX_SCRATCH_GB", default_value_t = gp4u_agent::agent::JobRuntimeOptions::DEFAULT_MAX_SCRATCH_GB, value_parser = positive_gb)]
    max_scratch_gb: f64,
    /// Run `public` jobs even when the egress filter (iptables rules that keep jobs off the
    /// host and private networks) cannot be installed. Said at registration.
    #[arg(long, env = "GP4U_ALLOW_UNFILTERED_EGRESS")]
    allow_unfiltered_egress: bool,
    /// CPUs per job [default: the node's cores × the job's share of the node's GPUs].
    #[arg(long, env = "GP4U_CPUS_PER_JOB", value_parser = positive_gb)]
    cpus_per_job: Option<f64>,
    /// DNS server for jobs' containers (repeatable) [default: Docker's, the host's resolvers;
    /// a resolver on a private address is unreachable from jobs behind the egress filter].
    #[arg(long = "job-dns", env = "GP4U_JOB_DNS", value_delimiter = ',')]
    job_dns: Vec<std::net::IpAddr>,
    /// How /scratch sizes are held: loop (a loop-mounted filesystem per job: the kernel
    /// enforces the size; needs root, mkfs.ext4 and loop devices) or watched (the agent
    /// measures and kills past the size) [default: loop where the host allows it].
    #[arg(long, env = "GP4U_SCRATCH_QUOTA", value_parser = ["loop", "watched"])]
    scratch_quota: Option<String>,
    /// Deprecated, ignored: running jobs are reported by the telemetry watchdog every
    /// `telemetry_interval_seconds` of their manifest.
    #[arg(long, hide = true)]
    keepalive: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (containers, image pulls, telemetry
    /// posted, commitments, polls), e.g. 127.0.0.1:9464. No token: bind it where only your
    /// Prometheus reaches [default: not served].
    #[arg(long, env = "GP4U_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// A positive finite number (GB, CPUs).
fn positive_gb(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

/// `--renewable-pct`: a number from 0 to 100.
fn renewable_pct(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?
        .trim()
        .to_string();
    let emulated = args
        .gpus
        .iter()
        .map(|spec| {
            gp4u_agent::gpu::EmulatedGpu::parse(spec)
                .map_err(|error| anyhow::anyhow!("--gpu {spec:?}: {error}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = gp4u_agent::agent::AgentConfig {
        server: args.server,
        token,
        data_dir: args.data_dir,
        runtime: if args.runtime == "process" {
            gp4u_agent::agent::RuntimeKind::Process
        } else {
            gp4u_agent::agent::RuntimeKind::Docker
        },
        allow_unisolated: args.allow_unisolated,
        emulated,
        region: args.region,
        price_per_hour: args.price,
        poll_wait_s: args.poll_wait.min(60),
        refuse_visibility: args.refuse_visibility,
        net_sample_interval: std::time::Duration::from_millis(
            args.net_sample_ms.clamp(100, 60_000),
        ),
        renewable_pct: args.renewable_pct,
        job_runtime: gp4u_agent::agent::JobRuntimeOptions {
            max_scratch_gb: args.max_scratch_gb,
            allow_unfiltered_egress: args.allow_unfiltered_egress,
            cpus_per_job: args.cpus_per_job,
            job_dns: args.job_dns.iter().map(ToString::to_string).collect(),
            scratch_quota: args.scratch_quota.as_deref().map(|mode| {
                if mode == "watched" {
                    gp4u_agent::scratch::QuotaMode::Watched
                } else {
                    gp4u_agent::scratch::QuotaMode::Loop
                }
            }),
        },
        metrics_listen: args.metrics_listen,
    };
    if args.listen.is_some() || args.advertise.is_some() {
        tracing::warn!(
            "--listen and --advertise are deprecated and ignored: visibility challenges arrive in telemetry replies, on the agent's own connection"
        );
    }
    if args.keepalive.is_some() {
        tracing::warn!(
            "--keepalive is deprecated and ignored: running jobs are reported by the telemetry watchdog at their manifest's interval"
        );
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    println!("gp4u agent connecting to {}", config.server);
    gp4u_agent::agent::run(config, stopping).await?;
    Ok(())
}

fn init_logging(format: &str, default_filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GP4U_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        "text" => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        other => bail!("--log-format must be text or json, got {other:?}"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("received SIGINT"),
        _ = terminate => tracing::info!("received SIGTERM"),
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let settings = ServerSettings::resolve(args)?;
    let server = Server::build(&settings).await?;
    let address = server.local_addr()?;
    tracing::info!(%address, engine = server.state.store.engine().as_str(), data_dir = %settings.data_dir.display(), "listening");
    println!("gp4u server listening on http://{address}");
    server.run(shutdown_signal()).await
}

fn mint_token(args: MintArgs) -> anyhow::Result<()> {
    if args.clr > MAX_CLEARANCE {
        bail!("--clr must be 0–{MAX_CLEARANCE}, got {}", args.clr);
    }
    if !(0.0..=100.0).contains(&args.trs) {
        bail!("--trs must be 0–100, got {}", args.trs);
    }
    if args.ttl <= 0 {
        bail!(
            "--ttl must be a positive number of seconds, got {}",
            args.ttl
        );
    }
    let keys = secret::load_for_minting(args.secret.as_deref(), &args.data_dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let exp = i64::try_from(now)
        .context("clock")?
        .saturating_add(args.ttl);
    let claims = Claims {
        sub: args.sub,
        clr: args.clr,
        trs: args.trs,
        exp,
    };
    println!("{}", mint(&claims, &keys));
    Ok(())
}

/// Runs a customer command; the error's exit code (SPEC §11) and what to do about it.
async fn customer(command: Command) -> i32 {
    let json = match &command {
        Command::Run { connect, .. }
        | Command::Jobs { connect, .. }
        | Command::Gpus { connect }
        | Command::Balance { connect }
        | Command::Statement { connect }
        | Command::Energy { connect, .. }
        | Command::Artifacts { connect, .. }
        | Command::Provider { connect, .. }
        | Command::Admin { connect, .. } => connect.json,
        _ => false,
    };
    match customer_command(command, json).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(advice) = session::advice(&error) {
                eprintln!("hint: {advice}");
            }
            session::exit_code(&error)
        }
    }
}

async fn customer_command(command: Command, json: bool) -> anyhow::Result<i32> {
    match command {
        Command::Login(args) => session::login(args, false).await,
        Command::Run { args, connect } => {
            let (server, token) = session::resolve(&connect)?;
            let client = session::client(&connect)?;
            run::run(
                &client,
                &server,
                token.as_deref().unwrap_or_default(),
                args,
                json,
            )
            .await
        }
        Command::Jobs { command, connect } => {
            jobs::run(&session::client(&connect)?, command, json).await
        }
        Command::Gpus { connect } => account::gpus(&session::client(&connect)?, json).await,
        Command::Balance { connect } => account::balance(&session::client(&connect)?, json).await,
        Command::Statement { connect } => {
            account::statement(&session::client(&connect)?, json).await
        }
        Command::Energy { scope, connect } => {
            account::energy(&session::client(&connect)?, scope.as_deref(), json).await
        }
        Command::Artifacts {
            command: ArtifactsCommand::Upload { file },
            connect,
        } => account::upload(&session::client(&connect)?, file, json).await,
        Command::Provider { command, connect } => {
            account::provider(&session::client(&connect)?, command, json).await
        }
        Command::Admin { command, connect } => {
            admin::run(&session::client(&connect)?, command, json).await
        }
        other => Err(session::Exit::usage(format!(
            "not a customer command: {other:?}"
        ))),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo and the customer commands print what people read; their components' logs
    // would drown it (GP4U_LOG brings them back).
    let default_filter = match cli.command {
        Command::Server(_) | Command::Agent(_) => "info,sqlx=warn,tower_http=info",
        _ => "error",
    };
    init_logging(&cli.log_format, default_filter)?;
    match cli.command {
        Command::Server(args) => run_server(args).await,
        Command::Agent(args) => run_agent(args).await,
        Command::Verify(mut args) => {
            // The saved login fills in what the flags and environment leave out.
            if (args.server.is_none() || args.token.is_none())
                && args.offline.is_none()
                && let Ok(Some(saved)) = session::load_login()
            {
                if args.server.is_none() {
                    args.server = Some(saved.server);
                }
                if args.token.is_none() && args.job.is_some() {
                    args.token = Some(saved.token);
                }
            }
            if !verify::run(args).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Mint(args),
        } => mint_token(args),
        Command::Demo(args) => match demo::run(args).await {
            Ok(code) => std::process::exit(code),
            Err(error) => {
                eprintln!("error: the demo stopped: {error:#}");
                std::process::exit(1)
            }
        },
        command => std::process::exit(customer(command).await),
    }
}
