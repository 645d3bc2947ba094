//! Load generator for the submission path: `POST /api/jobs` over real HTTP on 127.0.0.1.
//!
//! ```text
//! cargo bench -p gp4u-server --bench submit -- --engine postgres --seconds 10 --concurrency 32
//! ```
//!
//! The full server runs in-process (`gp4u_server::serve`: router, auth, rate limit, relay,
//! chambers, janitor) on its own Tokio runtime with two worker threads; the client runs on a
//! second runtime with two worker threads, so both share the machine's cores as they would on a
//! single host. Every request is a complete, valid submission with a bearer token, pinned to one
//! of many AVAILABLE GPUs, round-robin over enough customers that none reaches the (default,
//! enabled) limit of 30 submissions per minute. Only `201 Created` counts as accepted; anything
//! else is reported by status code, loudly.
//!
//! Counted: responses that complete inside the measured window (after the warmup). Latency is
//! client-side, from send until the whole response body is read, over the accepted requests.
//! PostgreSQL needs `GP4U_TEST_DATABASE_URL` (see `scripts/bench.sh`, which starts a throwaway
//! cluster); each run uses a fresh database and drops it afterwards.
//!
//! No tracing subscriber is installed, so the server's per-request log lines cost nothing here
//! (a deployed server formats and writes them).
//!
//! Metrics (`--metrics on|off|both`, default on, as `gp4u server` runs): on, `GET /metrics` is
//! routed, every request is timed into its route's histogram, and a scraper in the client
//! runtime fetches `/metrics` every `--scrape-ms` (1000, fifteen times Prometheus's default
//! rate) for the whole run; off, the server runs with metrics disabled and nobody scrapes.
//! `both` runs `--rounds` pairs in one process, alternating which goes first, each run on a
//! fresh database, and compares the medians: SPEC's goal is that metrics cost at most 3 % of
//! the accepted submissions per second.

use gp4u_testkit::bench as support;
use std::collections::BTreeMap;

use support::RUNTIME_THREADS;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use futures::StreamExt;
use gp4u_bus::{EventBus, InProcessBus, SystemClock};
use gp4u_core::clock::Clock;
use gp4u_core::ids::{GpuId, NodeId, UserId};
use gp4u_core::manifest::{GpuSpec, Role};
use gp4u_core::money::Money;
use gp4u_core::token::{Claims, TokenKeys, TokenSecret, mint};
use gp4u_server::AppState;
use gp4u_server::metrics::{Metrics, RequestLabels};
use gp4u_server::state::{Limits, os_random_ids};
use gp4u_store::testing::{PG_URL_ENV, TestDatabase};
use gp4u_store::{Engine, NewNode, NewUser, Store};
use serde_json::json;
use tokio::net::TcpListener;

/// Each customer sends at most this many submissions per run: under the limit of 30 a minute
/// (the whole run is shorter than the one-minute window), with room for rounding.
const PER_USER_BUDGET: u64 = 25;
/// GPUs per registered provider node.
const GPUS_PER_NODE: usize = 8;
/// A single request never waits longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: cargo bench -p gp4u-server --bench submit -- \
    [--engine sqlite|postgres] [--seconds N (10)] [--concurrency N (32)] \
    [--warmup-seconds N (2)] [--max-rate N (5000)] [--gpus N (200)] \
    [--metrics on|off|both (on)] [--rounds N (3, with both)] [--scrape-ms N (1000)]";

/// Whether the server counts, times and serves metrics (and is scraped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricsMode {
    On,
    Off,
    Both,
}

#[derive(Debug, Clone)]
struct Config {
    engine: Engine,
    seconds: u64,
    concurrency: usize,
    warmup_seconds: u64,
    /// Upper bound on submissions per second, used only to size the customer pool.
    max_rate: u64,
    gpus: usize,
    metrics: MetricsMode,
    /// With `--metrics both`: how many (off, on) pairs.
    rounds: u64,
    /// How often the scraper fetches `/metrics` when metrics are on.
    scrape_every: Duration,
}

impl Config {
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Config> {
        let mut config = Config {
            engine: Engine::Sqlite,
            seconds: 10,
            concurrency: 32,
            warmup_seconds: 2,
            max_rate: 5000,
            gpus: 200,
            metrics: MetricsMode::On,
            rounds: 3,
            scrape_every: Duration::from_millis(1000),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            // `cargo bench` passes `--bench` to harness = false targets.
            if arg == "--bench" {
                continue;
            }
            if arg == "-h" || arg == "--help" {
                bail!("{USAGE}");
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))?,
            };
            let number = |low: u64, high: u64| -> anyhow::Result<u64> {
                let parsed: u64 = value
                    .parse()
                    .with_context(|| format!("{flag} {value:?}: not a whole number"))?;
                if !(low..=high).contains(&parsed) {
                    bail!("{flag} {parsed}: must be {low}..={high}");
                }
                Ok(parsed)
            };
            match flag.as_str() {
                "--engine" => {
                    config.engine = match value.as_str() {
                        "sqlite" => Engine::Sqlite,
                        "postgres" => Engine::Postgres,
                        other => bail!("--engine {other:?}: expected sqlite or postgres"),
                    }
                }
                "--seconds" => config.seconds = number(1, 600)?,
                "--concurrency" => config.concurrency = usize::try_from(number(1, 1024)?)?,
                "--warmup-seconds" => config.warmup_seconds = number(0, 60)?,
                "--max-rate" => config.max_rate = number(1, 1_000_000)?,
                "--gpus" => config.gpus = usize::try_from(number(1, 100_000)?)?,
                "--metrics" => {
                    config.metrics = match value.as_str() {
                        "on" => MetricsMode::On,
                        "off" => MetricsMode::Off,
                        "both" => MetricsMode::Both,
                        other => bail!("--metrics {other:?}: expected on, off or both"),
                    }
                }
                "--rounds" => config.rounds = number(1, 50)?,
                "--scrape-ms" => config.scrape_every = Duration::from_millis(number(10, 60_000)?),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        Ok(config)
    }

    /// Enough customers that `max_rate` submissions a second for the whole run (warmup
    /// included) give none of them more than `PER_USER_BUDGET`.
    fn customers(&self) -> usize {
        let total = self.max_rate * (self.seconds + self.warmup_seconds);
        usize::try_from(total.div_ceil(PER_USER_BUDGET).max(1)).unwrap_or(usize::MAX)
    }
}

/// What the load generator needs to address the server.
struct Fixture {
    addr: SocketAddr,
    /// `Bearer …` header values, one per customer.
    authorizations: Vec<String>,
    /// One complete submission body per GPU.
    bodies: Vec<Bytes>,
}

fn job_body(gpu: &str) -> Bytes {
    Bytes::from(
        json!({
            "name": "BERT fine-tune — medical NLP", "gpuId": gpu, "workload_type": "TRAINING",
            "expectedDurationHours": 4.0, "docker_image": "registry.example/org/bert",
            "docker_image_sha256": "a".repeat(64), "command": ["python", "train.py"],
            "env": {"EPOCHS": "3"},
        })
        .to_string(),
    )
}

fn new_user_id() -> UserId {
    UserId::from_random(rand::random::<[u8; 16]>())
}

/// Creates the customers (returning their tokens) and the GPUs (returning their ids) through
/// the store directly, several at a time.
async fn populate(
    store: &Store,
    secret: &TokenSecret,
    config: &Config,
    now_ms: i64,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let expires = now_ms / 1000 + 86_400;
    let customers: Vec<UserId> = (0..config.customers()).map(|_| new_user_id()).collect();
    let created = futures::stream::iter(customers.iter().enumerate().map(|(index, id)| {
        let user = NewUser {
            id: id.clone(),
            name: format!("bench customer {index}"),
            role: Role::Customer,
            university: false,
            region: None,
        };
        async move {
            store.create_user(&user, now_ms).await?;
            // Every submission holds its estimate × 1.1 until settled.
            store
                .add_credit(
                    &user.id,
                    Money::from_micros(1_000_000_000_000),
                    &format!("top_up:bench:{}", user.id),
                    now_ms,
                )
                .await
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    for result in created {
        result.context("creating a customer")?;
    }
    let authorizations = customers
        .iter()
        .map(|id| {
            let token = mint(
                &Claims {
                    sub: id.to_string(),
                    clr: Role::Customer.clearance(),
                    trs: 50.0,
                    exp: expires,
                },
                secret,
            );
            format!("Bearer {token}")
        })
        .collect();

    let nodes = config.gpus.div_ceil(GPUS_PER_NODE);
    let mut gpu_ids = Vec::with_capacity(config.gpus);
    for node_index in 0..nodes {
        let provider = new_user_id();
        store
            .create_user(
                &NewUser {
                    id: provider.clone(),
                    name: format!("bench provider {node_index}"),
                    role: Role::Provider,
                    university: false,
                    region: None,
                },
                now_ms,
            )
            .await
            .context("creating a provider")?;
        let first = node_index * GPUS_PER_NODE;
        let last = (first + GPUS_PER_NODE).min(config.gpus);
        let gpus: Vec<(GpuId, GpuSpec)> = (first..last)
            .map(|index| {
                let cents = 100 + i64::try_from(index % 50).unwrap_or(0) * 10;
                (
                    GpuId::from_random(rand::random::<[u8; 16]>()),
                    GpuSpec {
                        name: "RTX 4090".into(),
                        driver_version: None,
                        power_limit_mw: 450_000,
                        vram_gb: 24.0,
                        price_per_hour: Money::from_micros(cents * 10_000),
                        uuid: Some(format!("GPU-{index}")),
                        emulated: false,
                    },
                )
            })
            .collect();
        gpu_ids.extend(gpus.iter().map(|(id, _)| id.to_string()));
        store
            .register_node(
                &NewNode {
                    id: NodeId::from_random(rand::random::<[u8; 16]>()),
                    owner_id: provider,
                    region: "us-east-1".into(),
                    public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                    gpus,
                    posture: None,
                },
                &[],
                now_ms,
            )
            .await
            .context("registering a node")?;
    }
    Ok((authorizations, gpu_ids))
}

/// What one client task saw.
#[derive(Default)]
struct Tally {
    /// Latency in microseconds of each accepted request completed inside the window.
    accepted_us: Vec<u64>,
    /// Non-201 responses inside the window, by status, with the first body seen.
    refused: BTreeMap<u16, (u64, String)>,
    transport_errors: u64,
    first_transport_error: Option<String>,
    /// Every request sent, warmup and tail included (for the rate-limit budget).
    sent: u64,
    /// `/metrics` fetched over the run, and the size of the last exposition.
    scrapes: (u64, usize),
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.accepted_us.extend(other.accepted_us);
        for (status, (count, body)) in other.refused {
            let entry = self.refused.entry(status).or_insert((0, body));
            entry.0 += count;
        }
        self.transport_errors += other.transport_errors;
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
        self.sent += other.sent;
    }

    fn refused_total(&self) -> u64 {
        self.refused.values().map(|(count, _)| count).sum()
    }
}

struct Window {
    start: Instant,
    end: Instant,
}

async fn client_task(
    client: reqwest::Client,
    url: Arc<str>,
    fixture: Arc<Fixture>,
    next: Arc<AtomicU64>,
    window: Arc<Window>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let started = Instant::now();
        if started >= window.end {
            return tally;
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        let user = usize::try_from(n).unwrap_or(0) % fixture.authorizations.len();
        let gpu = usize::try_from(n).unwrap_or(0) % fixture.bodies.len();
        tally.sent += 1;
        let outcome = match client
            .post(&*url)
            .header("authorization", &fixture.authorizations[user])
            .header("content-type", "application/json")
            .body(fixture.bodies[gpu].clone())
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|body| (status, body))
            }
            Err(error) => Err(error),
        };
        let finished = Instant::now();
        if finished < window.start || finished >= window.end {
            continue;
        }
        match outcome {
            Ok((201, _)) => {
                let micros = finished.duration_since(started).as_micros();
                tally
                    .accepted_us
                    .push(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            Ok((status, body)) => {
                let entry = tally.refused.entry(status).or_insert_with(|| {
                    (
                        0,
                        String::from_utf8_lossy(&body).chars().take(300).collect(),
                    )
                });
                entry.0 += 1;
            }
            Err(error) => {
                tally.transport_errors += 1;
                if tally.first_transport_error.is_none() {
                    tally.first_transport_error = Some(error.to_string());
                }
            }
        }
    }
}

/// CPU time, in clock ticks, of the machine and of the parties to the benchmark.
#[derive(Debug, Clone, Default)]
struct CpuSample {
    total: u64,
    idle: u64,
    cpus: usize,
    /// This process's threads, grouped by name.
    threads: BTreeMap<&'static str, u64>,
    /// All processes named `postgres` (the backends serving the server, and the cluster's own).
    postgres: u64,
}

/// `(comm, utime + stime)` from a `/proc/…/stat` line.
fn parse_stat(text: &str) -> Option<(&str, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?;
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn thread_group(name: &str) -> &'static str {
    if name.starts_with("bench-server") {
        "server"
    } else if name.starts_with("bench-client") {
        "client"
    } else if name.starts_with("sqlx-sqlite") {
        "sqlite"
    } else {
        "other-in-process"
    }
}

/// Reads `/proc` (Linux); `None` where it is not there.
fn sample_cpu() -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let first = stat.lines().next()?;
    let values: Vec<u64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    if values.len() < 8 {
        return None;
    }
    let mut sample = CpuSample {
        total: values[..8].iter().sum(),
        idle: values[3] + values[4],
        cpus: stat
            .lines()
            .filter(|line| {
                line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
            })
            .count()
            .max(1),
        ..CpuSample::default()
    };
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((name, ticks)) = parse_stat(&text)
        {
            *sample.threads.entry(thread_group(name)).or_insert(0) += ticks;
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|byte| byte.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some(("postgres", ticks)) = parse_stat(&text)
        {
            sample.postgres += ticks;
        }
    }
    Some(sample)
}

/// Cores used by each party between two samples, and idle, as `(label, cores)`.
fn cpu_split(before: &CpuSample, after: &CpuSample) -> Vec<(String, f64)> {
    let total = after.total.saturating_sub(before.total).max(1) as f64;
    let cores = |ticks: u64| ticks as f64 / total * after.cpus as f64;
    let mut split = Vec::new();
    let mut accounted = 0;
    for (group, ticks) in &after.threads {
        let delta = ticks.saturating_sub(before.threads.get(group).copied().unwrap_or(0));
        accounted += delta;
        split.push(((*group).to_string(), cores(delta)));
    }
    let postgres = after.postgres.saturating_sub(before.postgres);
    accounted += postgres;
    split.push(("postgres".into(), cores(postgres)));
    let idle = after.idle.saturating_sub(before.idle);
    let busy = after
        .total
        .saturating_sub(before.total)
        .saturating_sub(idle);
    split.push((
        "rest-of-machine".into(),
        cores(busy.saturating_sub(accounted)),
    ));
    split.push(("idle".into(), cores(idle)));
    split
}

/// Fetches `url` every `every` until `end`, as Prometheus would; how many scrapes, and how many
/// bytes the last one had. A scrape that fails fails the run.
async fn scrape(
    client: reqwest::Client,
    url: String,
    every: Duration,
    end: Instant,
) -> anyhow::Result<(u64, usize)> {
    let mut ticks = tokio::time::interval(every);
    let (mut scrapes, mut bytes) = (0, 0);
    while Instant::now() < end {
        ticks.tick().await;
        let response = client
            .get(&url)
            .header("accept", "application/openmetrics-text;version=1.0.0")
            .send()
            .await
            .with_context(|| format!("scraping {url}"))?;
        if !response.status().is_success() {
            bail!("scraping {url}: HTTP {}", response.status());
        }
        bytes = response.bytes().await.context("reading a scrape")?.len();
        scrapes += 1;
    }
    Ok((scrapes, bytes))
}

/// What the server side looked like over the window.
struct ServerProbe {
    ops_before: u64,
    ops_after: u64,
    cpu_before: Option<CpuSample>,
    cpu_after: Option<CpuSample>,
}

async fn run_load(
    config: &Config,
    fixture: Arc<Fixture>,
    store: Store,
) -> anyhow::Result<(Tally, ServerProbe, Duration)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let url: Arc<str> = format!("http://{}{}", fixture.addr, gp4u_proto::paths::JOBS).into();
    let begin = Instant::now();
    let window = Arc::new(Window {
        start: begin + Duration::from_secs(config.warmup_seconds),
        end: begin + Duration::from_secs(config.warmup_seconds + config.seconds),
    });
    let next = Arc::new(AtomicU64::new(0));
    let scraper = (config.metrics == MetricsMode::On).then(|| {
        tokio::spawn(scrape(
            client.clone(),
            format!("http://{}/metrics", fixture.addr),
            config.scrape_every,
            window.end,
        ))
    });
    let tasks: Vec<_> = (0..config.concurrency)
        .map(|_| {
            tokio::spawn(client_task(
                client.clone(),
                url.clone(),
                fixture.clone(),
                next.clone(),
                window.clone(),
            ))
        })
        .collect();

    tokio::time::sleep_until(window.start.into()).await;
    let cpu_before = sample_cpu();
    let ops_before = store.operations();
    let measured_from = Instant::now();
    tokio::time::sleep_until(window.end.into()).await;
    let cpu_after = sample_cpu();
    let ops_after = store.operations();
    let measured = measured_from.elapsed();

    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.context("a client task panicked")?);
    }
    if let Some(scraper) = scraper {
        tally.scrapes = scraper.await.context("the scraper panicked")??;
    }
    Ok((
        tally,
        ServerProbe {
            ops_before,
            ops_after,
            cpu_before,
            cpu_after,
        },
        measured,
    ))
}

/// One run's figures.
struct Outcome {
    clean: bool,
    accepted_per_s: f64,
    p50: f64,
    p99: f64,
    /// CPU time of the server's threads (not the database's) per accepted submission, µs.
    server_cpu_us: Option<f64>,
}

/// Clock ticks per second in `/proc` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

fn run(config: &Config) -> anyhow::Result<Outcome> {
    let server_rt = support::runtime("bench-server")?;
    let client_rt = support::runtime("bench-client")?;
    let engine = config.engine.as_str();

    let setup_started = Instant::now();
    let (db, state, listener, fixture) = server_rt.block_on(async {
        let Some(db) = TestDatabase::create(config.engine, "bench").await else {
            bail!("{PG_URL_ENV} is unset: the PostgreSQL bench needs a server (scripts/bench.sh starts one)");
        };
        let store = db.store().await.context("opening the store")?;
        let secret = TokenSecret::new(rand::random::<[u8; 32]>().to_vec())
            .map_err(|error| anyhow::anyhow!("token secret: {error}"))?;
        let now_ms = SystemClock.now_ms();
        let (authorizations, gpu_ids) = populate(&store, &secret, config, now_ms).await?;
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::default());
        let state = AppState::new(
            store,
            Arc::new(SystemClock),
            TokenKeys {
                current: secret,
                previous: None,
            },
            Limits::default(),
            os_random_ids(),
            bus,
        )
        .with_metrics(match config.metrics {
            MetricsMode::Off => Metrics::disabled(),
            MetricsMode::On | MetricsMode::Both => Metrics::new(None),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let fixture = Fixture {
            addr,
            authorizations,
            bodies: gpu_ids.iter().map(|gpu| job_body(gpu)).collect(),
        };
        anyhow::Ok((db, state, listener, fixture))
    })?;
    let setup = setup_started.elapsed();
    let customers = fixture.authorizations.len();
    let gpus = fixture.bodies.len();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(gp4u_server::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));

    let fixture = Arc::new(fixture);
    let (tally, probe, measured) =
        client_rt.block_on(run_load(config, fixture.clone(), state.store.clone()))?;
    drop(client_rt);

    // The relay's backlog when the load stopped, and how long it took to clear.
    let (backlog, drain, jobs_in_db) = server_rt.block_on(async {
        let backlog = state.store.outbox_unsequenced().await?;
        let drain_started = Instant::now();
        let mut drained = backlog == 0;
        while !drained && drain_started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drained = state.store.outbox_unsequenced().await? == 0;
        }
        let drain = drained.then(|| drain_started.elapsed());
        let jobs = state.store.count_jobs().await?;
        anyhow::Ok((backlog, drain, jobs))
    })?;
    let _ = stop.send(());
    server_rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(30), server).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(error.context("the server failed")),
            Ok(Err(error)) => Err(anyhow::anyhow!("the server task panicked: {error}")),
            Err(_) => Err(anyhow::anyhow!("the server did not stop within 30 s")),
        }
    })?;
    if config.engine == Engine::Postgres
        && let Err(error) = server_rt.block_on(support::drop_postgres_database(&db.url))
    {
        eprintln!("warning: could not drop the bench database: {error:#}");
    }
    drop(db);

    // Report.
    let mut latencies = tally.accepted_us.clone();
    latencies.sort_unstable();
    let accepted = latencies.len() as u64;
    let seconds = measured.as_secs_f64();
    let accepted_per_s = accepted as f64 / seconds;
    let (p50, p90, p99, max) = (
        support::percentile_ms(&latencies, 50.0),
        support::percentile_ms(&latencies, 90.0),
        support::percentile_ms(&latencies, 99.0),
        support::percentile_ms(&latencies, 100.0),
    );
    let errors = tally.refused_total() + tally.transport_errors;
    let ops = probe.ops_after.saturating_sub(probe.ops_before);
    let server_cpu_us = match (&probe.cpu_before, &probe.cpu_after) {
        (Some(before), Some(after)) if accepted > 0 => {
            let ticks = |sample: &CpuSample| sample.threads.get("server").copied().unwrap_or(0);
            let used = ticks(after).saturating_sub(ticks(before));
            Some(used as f64 / TICKS_PER_SECOND * 1e6 / accepted as f64)
        }
        _ => None,
    };

    println!();
    println!(
        "== submit bench: engine={engine}, metrics {}, {seconds:.2} s measured after {} s warmup, \
         concurrency {}, {RUNTIME_THREADS} server + {RUNTIME_THREADS} client threads ==",
        metrics_label(config.metrics),
        config.warmup_seconds,
        config.concurrency
    );
    println!(
        "setup: {customers} customers, {gpus} GPUs on {} nodes, in {:.1} s",
        gpus.div_ceil(GPUS_PER_NODE),
        setup.as_secs_f64()
    );
    println!("  {:<34} {:>12}", "accepted (201) in window", accepted);
    println!("  {:<34} {:>12.1}", "accepted / s", accepted_per_s);
    println!("  {:<34} {:>12.2}", "latency p50 ms (201s)", p50);
    println!("  {:<34} {:>12.2}", "latency p90 ms (201s)", p90);
    println!("  {:<34} {:>12.2}", "latency p99 ms (201s)", p99);
    println!("  {:<34} {:>12.2}", "latency max ms (201s)", max);
    println!(
        "  {:<34} {:>12}",
        "non-201 responses in window",
        tally.refused_total()
    );
    println!(
        "  {:<34} {:>12}",
        "transport errors in window", tally.transport_errors
    );
    println!(
        "  {:<34} {:>12}",
        "requests sent (warmup + tail too)", tally.sent
    );
    println!("  {:<34} {:>12}", "jobs in the database", jobs_in_db);
    if config.metrics == MetricsMode::On {
        println!(
            "  {:<34} {:>12}   (every {} ms; the last {} bytes)",
            "/metrics scrapes",
            tally.scrapes.0,
            config.scrape_every.as_millis(),
            tally.scrapes.1
        );
    }
    if accepted > 0 {
        println!(
            "  {:<34} {:>12.2}",
            "store calls / accepted (all tasks)",
            ops as f64 / accepted as f64
        );
    }
    if let Some(us) = server_cpu_us {
        println!("  {:<34} {:>12.1}", "server-thread CPU µs / accepted", us);
    }
    match drain {
        Some(drain) => println!(
            "  {:<34} {:>12}   (cleared in {} ms)",
            "relay backlog at end (events)",
            backlog,
            drain.as_millis()
        ),
        None => println!(
            "  {:<34} {:>12}   (NOT cleared within 30 s)",
            "relay backlog at end (events)", backlog
        ),
    }
    if let (Some(before), Some(after)) = (&probe.cpu_before, &probe.cpu_after) {
        let split = cpu_split(before, after);
        let text: Vec<String> = split
            .iter()
            .map(|(label, cores)| format!("{label} {cores:.2}"))
            .collect();
        println!(
            "  cpu over the window (cores of {}): {}",
            after.cpus,
            text.join(", ")
        );
    }
    if tally.sent > PER_USER_BUDGET * customers as u64 {
        println!(
            "!!! {} requests for {customers} customers: more than {PER_USER_BUDGET} each, so the \
             rate limit may have refused some; rerun with a larger --max-rate",
            tally.sent
        );
    }
    if errors > 0 {
        println!(
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
        println!("!!! {errors} submissions were NOT accepted (engine={engine}):");
        for (status, (count, body)) in &tally.refused {
            println!("!!!   HTTP {status}: {count} times; first body: {body}");
        }
        if tally.transport_errors > 0 {
            println!(
                "!!!   transport errors: {}; first: {}",
                tally.transport_errors,
                tally.first_transport_error.as_deref().unwrap_or("?")
            );
        }
        println!(
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
    }
    let by_status: Vec<String> = tally
        .refused
        .iter()
        .map(|(status, (count, _))| format!("{status}:{count}"))
        .collect();
    println!(
        "RESULT engine={engine} metrics={} accepted_per_s={accepted_per_s:.1} p50_ms={p50:.2} \
         p90_ms={p90:.2} p99_ms={p99:.2} max_ms={max:.2} accepted={accepted} errors={errors} \
         non201={} transport_errors={} seconds={seconds:.2} concurrency={} warmup_s={}",
        metrics_label(config.metrics),
        if by_status.is_empty() {
            "none".to_string()
        } else {
            by_status.join(",")
        },
        tally.transport_errors,
        config.concurrency,
        config.warmup_seconds
    );
    Ok(Outcome {
        clean: errors == 0,
        accepted_per_s,
        p50,
        p99,
        server_cpu_us,
    })
}

fn metrics_label(mode: MetricsMode) -> &'static str {
    match mode {
        MetricsMode::On => "on",
        MetricsMode::Off => "off",
        MetricsMode::Both => "both",
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// `--metrics both`: `rounds` pairs, alternating which of off and on goes first; the medians
/// and their ratio against SPEC's 3 % goal.
fn compare(config: &Config) -> anyhow::Result<bool> {
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut clean = true;
    for round in 0..config.rounds {
        let order = if round % 2 == 0 {
            [MetricsMode::Off, MetricsMode::On]
        } else {
            [MetricsMode::On, MetricsMode::Off]
        };
        for mode in order {
            let outcome = run(&Config {
                metrics: mode,
                ..config.clone()
            })?;
            clean &= outcome.clean;
            match mode {
                MetricsMode::Off => off.push(outcome),
                _ => on.push(outcome),
            }
        }
    }
    let rates = |runs: &[Outcome]| {
        runs.iter()
            .map(|run| run.accepted_per_s)
            .collect::<Vec<_>>()
    };
    let show = |values: &[f64]| {
        values
            .iter()
            .map(|value| format!("{value:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (off_rates, on_rates) = (rates(&off), rates(&on));
    let off_median = median(&mut off_rates.clone());
    let on_median = median(&mut on_rates.clone());
    let ratio = on_median / off_median;
    let p99 = |runs: &[Outcome]| median(&mut runs.iter().map(|run| run.p99).collect::<Vec<_>>());
    let p50 = |runs: &[Outcome]| median(&mut runs.iter().map(|run| run.p50).collect::<Vec<_>>());
    println!();
    println!(
        "== metrics cost: engine={}, {} rounds of off and on, alternating ==",
        config.engine.as_str(),
        config.rounds
    );
    println!("  off accepted/s: {}", show(&off_rates));
    println!("  on  accepted/s: {}", show(&on_rates));
    println!(
        "  median off {off_median:.1}/s (p50 {:.2} ms, p99 {:.2} ms); median on {on_median:.1}/s \
         (p50 {:.2} ms, p99 {:.2} ms)",
        p50(&off),
        p99(&off),
        p50(&on),
        p99(&on)
    );
    let pairs: Vec<String> = off
        .iter()
        .zip(&on)
        .map(|(off, on)| format!("{:.3}", on.accepted_per_s / off.accepted_per_s))
        .collect();
    println!("  on / off, round by round: {}", pairs.join(", "));
    let cpu = |runs: &[Outcome]| {
        let mut values: Vec<f64> = runs.iter().filter_map(|run| run.server_cpu_us).collect();
        (!values.is_empty()).then(|| median(&mut values))
    };
    if let (Some(cpu_off), Some(cpu_on)) = (cpu(&off), cpu(&on)) {
        println!(
            "  server-thread CPU per accepted submission: median off {cpu_off:.1} µs, on \
             {cpu_on:.1} µs ({:+.2} %)",
            (cpu_on / cpu_off - 1.0) * 100.0
        );
    }
    // What counting costs per request in isolation: the request histogram (labels built as
    // the middleware builds them) and one counter, on one thread.
    let metrics = Metrics::new(None);
    let counted = 200_000u32;
    let started = Instant::now();
    for _ in 0..counted {
        let since = Instant::now();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: gp4u_proto::paths::JOBS.to_string(),
                method: "POST".to_string(),
                status: "2xx",
            })
            .observe(since.elapsed().as_secs_f64());
        metrics.submissions.inc();
    }
    let per_request = started.elapsed() / counted;
    println!("  counting one request in isolation: {per_request:?}");
    let cost_pct = (1.0 - ratio) * 100.0;
    println!(
        "  on / off = {ratio:.4} (metrics cost {cost_pct:.2} % of throughput): goal ≤ 3 % {}",
        if cost_pct <= 3.0 { "MET" } else { "MISSED" }
    );
    println!(
        "METRICS_COST engine={} rounds={} off_median={off_median:.1} on_median={on_median:.1} \
         ratio={ratio:.4} cost_pct={cost_pct:.2}",
        config.engine.as_str(),
        config.rounds
    );
    Ok(clean)
}

fn main() -> ExitCode {
    let config = match Config::parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(64);
        }
    };
    let result = if config.metrics == MetricsMode::Both {
        compare(&config)
    } else {
        run(&config).map(|outcome| outcome.clean)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Non-201 responses: the figures are printed, but the run is not clean.
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("submit bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
