//! Load generator for telemetry ingestion: `POST /api/telemetry/russian-doll` over real HTTP
//! on 127.0.0.1, against PostgreSQL, with PostgreSQL's own COPY and multi-row INSERT of the
//! same rows, in the same run, as the ceiling.
//!
//! ```text
//! scripts/bench-telemetry.sh            # starts a throwaway PostgreSQL, then runs this
//! cargo bench -p gp4u-server --bench telemetry -- --jobs 20000 --nodes 2000 --seconds 10 --concurrency 64
//! ```
//!
//! Setup: `--nodes` provider nodes (one provider each) holding `--jobs` RUNNING jobs between
//! them, written straight into the database (the submission path is measured elsewhere). Load:
//! `--concurrency` client tasks post complete, valid packets round-robin over the jobs, each
//! with its node's provider token, so every packet goes through the whole route: auth (user
//! loaded), node ownership, job lookup, the per-node rate limit, parsing and clamping, the
//! job's window, the rules, and the group-commit write of the row and `latest_metrics`.
//! Before measuring, one unmeasured pass posts every job once (a server in steady state holds
//! each live job's window; a fresh one loads it on the job's first packet), then a warmup.
//! Counted: `200` responses completed inside the measured window (after the warmup); latency
//! is client-side, send to the body read. The full server (`gp4u_server::serve`, with its
//! reapers, relay and chambers) runs in-process on its own two-thread runtime, the client on
//! another, so both share the machine's cores as on one host.
//!
//! Ceiling: the same number of rows as were accepted, shaped like `telemetry`, inserted by
//! one connection into a scratch copy of the table with `COPY … FROM STDIN` and with 400-row
//! `INSERT … VALUES` statements (one transaction per statement).

use gp4u_testkit::bench as support;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gp4u_bus::{EventBus, InProcessBus, SystemClock};
use gp4u_core::clock::Clock;
use gp4u_core::ids::{GpuId, JobId, NodeId, UserId};
use gp4u_core::manifest::{GpuSpec, Role, validate_submission};
use gp4u_core::money::Money;
use gp4u_core::token::{Claims, TokenKeys, TokenSecret, mint};
use gp4u_server::AppState;
use gp4u_server::state::{Limits, os_random_ids};
use gp4u_store::testing::{PG_URL_ENV, TestDatabase};
use gp4u_store::{Engine, NewNode, NewUser, Store};
use serde_json::json;
use sqlx::Connection;
use tokio::net::TcpListener;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const INSERT_ROWS: usize = 400;

const USAGE: &str = "usage: cargo bench -p gp4u-server --bench telemetry -- \
    [--jobs N (20000)] [--nodes N (2000)] [--seconds N (10)] [--concurrency N (64)] \
    [--warmup-seconds N (3)] [--batch N (1): packets per request, one node's jobs] [--commitments 0|1 (0)]";

#[derive(Debug, Clone)]
struct Config {
    jobs: usize,
    nodes: usize,
    seconds: u64,
    concurrency: usize,
    warmup_seconds: u64,
    /// Packets per request (a node posting its jobs' packets together); 1 = one per request.
    batch: usize,
    /// Whether packets carry a power commitment (as real agents' do since stage 6): each then
    /// also writes a `telemetry.committed` outbox event, which the running sealer appends to
    /// the ledger.
    commitments: bool,
}

impl Config {
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Config> {
        let mut config = Config {
            jobs: 20_000,
            nodes: 2_000,
            seconds: 10,
            concurrency: 64,
            warmup_seconds: 3,
            batch: 1,
            commitments: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--bench" {
                continue;
            }
            if arg == "-h" || arg == "--help" {
                bail!("{USAGE}");
            }
            let value = args
                .next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))?;
            let number: u64 = value
                .parse()
                .with_context(|| format!("{arg} {value:?}: not a whole number"))?;
            match arg.as_str() {
                "--jobs" => config.jobs = usize::try_from(number.clamp(1, 1_000_000))?,
                "--nodes" => config.nodes = usize::try_from(number.clamp(1, 100_000))?,
                "--seconds" => config.seconds = number.clamp(1, 600),
                "--concurrency" => config.concurrency = usize::try_from(number.clamp(1, 1024))?,
                "--warmup-seconds" => config.warmup_seconds = number.min(60),
                "--batch" => config.batch = usize::try_from(number.clamp(1, 256))?,
                "--commitments" => config.commitments = number != 0,
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if config.nodes > config.jobs {
            config.nodes = config.jobs;
        }
        Ok(config)
    }
}

/// One request to post: its body (one packet, or an array of one node's packets) and the
/// node's provider's `Bearer …`, with how many packets it carries.
struct Target {
    body: axum::body::Bytes,
    authorization: Arc<str>,
    packets: usize,
}

fn new_user_id() -> UserId {
    UserId::from_random(rand::random::<[u8; 16]>())
}

/// Creates the providers, nodes, GPUs and RUNNING jobs; returns one target per job.
async fn populate(
    store: &Store,
    url: &str,
    secret: &TokenSecret,
    config: &Config,
    now_ms: i64,
) -> anyhow::Result<Vec<Target>> {
    let expires = now_ms / 1000 + 86_400;
    let customer = new_user_id();
    store
        .create_user(
            &NewUser {
                id: customer.clone(),
                name: "bench customer".into(),
                role: Role::Customer,
                university: false,
                region: None,
            },
            now_ms,
        )
        .await?;
    let manifest = validate_submission(&json!({
        "name": "ingestion bench", "gpu": {"model": "RTX 4090"}, "workload_type": "TRAINING",
        "expectedDurationHours": 4.0, "docker_image": "registry.example/org/bert",
        "docker_image_sha256": "a".repeat(64), "command": ["python", "train.py"],
    }))
    .map_err(|error| anyhow::anyhow!("bench manifest: {}", error.message))?;
    let manifest = serde_json::to_string(&manifest)?;
    let per_node = config.jobs.div_ceil(config.nodes);
    // (job, node, gpu, the node's token) and one token per node.
    let mut placed: Vec<(JobId, NodeId, GpuId, usize)> = Vec::with_capacity(config.jobs);
    let mut tokens: Vec<Arc<str>> = Vec::with_capacity(config.nodes);
    let mut created = 0;
    while created < config.jobs {
        let provider = new_user_id();
        store
            .create_user(
                &NewUser {
                    id: provider.clone(),
                    name: "bench provider".into(),
                    role: Role::Provider,
                    university: false,
                    region: None,
                },
                now_ms,
            )
            .await?;
        let count = per_node.min(config.jobs - created);
        let gpus: Vec<(GpuId, GpuSpec)> = (0..count)
            .map(|index| {
                (
                    GpuId::from_random(rand::random::<[u8; 16]>()),
                    GpuSpec {
                        name: "RTX 4090".into(),
                        driver_version: None,
                        power_limit_mw: 450_000,
                        vram_gb: 24.0,
                        price_per_hour: Money::from_micros(2_000_000),
                        uuid: Some(format!("GPU-{index}")),
                        emulated: false,
                    },
                )
            })
            .collect();
        let node = NodeId::from_random(rand::random::<[u8; 16]>());
        store
            .register_node(
                &NewNode {
                    id: node.clone(),
                    owner_id: provider.clone(),
                    region: "us-east-1".into(),
                    public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                    gpus: gpus.clone(),
                    posture: None,
                },
                &[],
                now_ms,
            )
            .await?;
        let token = mint(
            &Claims {
                sub: provider.to_string(),
                clr: Role::Provider.clearance(),
                trs: 50.0,
                exp: expires,
            },
            secret,
        );
        tokens.push(format!("Bearer {token}").into());
        for (gpu, _) in gpus {
            placed.push((
                JobId::from_random(rand::random::<[u8; 16]>()),
                node.clone(),
                gpu,
                tokens.len() - 1,
            ));
        }
        created += count;
    }
    // The jobs, RUNNING on their GPUs, in multi-row inserts.
    let mut connection = sqlx::PgConnection::connect(url).await?;
    for chunk in placed.chunks(INSERT_ROWS) {
        let mut sql = String::from(
            "INSERT INTO jobs (id, owner_id, name, status, workload_type, gpu_id, node_id, gpu_name, \
             gpu_region, manifest, price_micros, cost_estimate_micros, created_at, started_at, \
             assigned_at, picked_up_at) VALUES ",
        );
        for (index, (job, node, gpu, _)) in chunk.iter().enumerate() {
            if index > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{job}', '{customer}', 'ingestion bench', 'RUNNING', 'TRAINING', '{gpu}', '{node}', \
                 'RTX 4090', 'us-east-1', $1, 2000000, 8000000, {now_ms}, {now_ms}, {now_ms}, {now_ms})"
            ));
        }
        // Audited: ids are generated here (base32), everything else is literal.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&manifest)
            .execute(&mut connection)
            .await?;
    }
    // One real commitment (to 380 W, half renewable) reused: the server checks its form only.
    let (commitment, _) = gp4u_attest::energy::commit_reading(
        gp4u_attest::energy::PowerReading {
            power_mw: 380_000,
            renewable_mw: 190_000,
        },
        &mut rand_core::OsRng,
    );
    let commitment = commitment.to_base64();
    let packet = |job: &JobId, node: &NodeId| {
        let mut packet = json!({
            "job_id": job.as_str(), "node_id": node.as_str(),
            "gpu_utilization_pct": 94.2, "vram_used_gb": 22.1, "vram_allocated_gb": 24.0,
            "power_draw_watts": 380.0, "temperature_c": 72, "outbound_bytes_per_sec": 1_200_000,
            "inferred_pattern": "TRAINING", "unique_dest_ips": 3, "foreign_gpu_processes": 0
        });
        if config.commitments {
            packet["power_commitment"] = json!(commitment);
        }
        packet
    };
    let mut targets = Vec::new();
    // `placed` is grouped by node: batches never mix nodes.
    let mut start = 0;
    while start < placed.len() {
        let owner = placed[start].3;
        let mut end = start;
        while end < placed.len() && placed[end].3 == owner && end - start < config.batch {
            end += 1;
        }
        let group = &placed[start..end];
        let body = if config.batch == 1 {
            packet(&group[0].0, &group[0].1)
        } else {
            serde_json::Value::Array(
                group
                    .iter()
                    .map(|(job, node, _, _)| packet(job, node))
                    .collect(),
            )
        };
        targets.push(Target {
            body: axum::body::Bytes::from(body.to_string()),
            authorization: tokens[owner].clone(),
            packets: group.len(),
        });
        start = end;
    }
    Ok(targets)
}

#[derive(Default)]
struct Tally {
    accepted_us: Vec<u64>,
    /// Packets in the accepted requests.
    packets: u64,
    /// Items of batch answers that were errors, with the first one seen.
    item_errors: u64,
    first_item_error: Option<String>,
    refused: std::collections::BTreeMap<u16, (u64, String)>,
    transport_errors: u64,
}

async fn client_task(
    client: reqwest::Client,
    url: Arc<str>,
    targets: Arc<Vec<Target>>,
    next: Arc<AtomicU64>,
    start: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let now = Instant::now();
        if now >= end {
            return tally;
        }
        let index =
            usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or(0) % targets.len();
        let target = &targets[index];
        let sent = Instant::now();
        let response = client
            .post(&*url)
            .header("authorization", &*target.authorization)
            .header("content-type", "application/json")
            .body(target.body.clone())
            .send()
            .await;
        let counted = sent >= start;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                let done = Instant::now();
                if !counted || done > end {
                    continue;
                }
                if status == 200 {
                    tally
                        .accepted_us
                        .push(u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX));
                    if target.packets > 1 {
                        let items: Vec<serde_json::Value> =
                            serde_json::from_slice(&body).unwrap_or_default();
                        for item in items {
                            if item.get("error").is_some() {
                                tally.item_errors += 1;
                                tally.first_item_error.get_or_insert(item.to_string());
                            } else {
                                tally.packets += 1;
                            }
                        }
                    } else {
                        tally.packets += 1;
                    }
                } else {
                    let entry = tally
                        .refused
                        .entry(status)
                        .or_insert((0, String::from_utf8_lossy(&body).into_owned()));
                    entry.0 += 1;
                }
            }
            Err(_) => tally.transport_errors += 1,
        }
    }
}

const BASELINE_TABLE: &str = "CREATE TABLE telemetry_ceiling (LIKE telemetry INCLUDING ALL)";

/// PostgreSQL's own rates for `rows` telemetry rows: (COPY rows/s, multi-row INSERT rows/s).
async fn ceiling(url: &str, rows: usize) -> anyhow::Result<(f64, f64)> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(BASELINE_TABLE)
        .execute(&mut connection)
        .await?;
    let now_ms = SystemClock.now_ms();
    let row = |index: usize| {
        (
            format!("job_{index:026}"),
            "node_bench".to_string(),
            now_ms + i64::try_from(index).unwrap_or(0),
        )
    };
    // COPY.
    let mut csv = String::with_capacity(rows * 120);
    for index in 0..rows {
        let (job, node, at) = row(index);
        csv.push_str(&format!(
            "{job},{node},{at},94.2,22.1,24,380,72,1200000,3,0,0,TRAINING,0\n"
        ));
    }
    let started = Instant::now();
    let mut copy = connection
        .copy_in_raw(
            "COPY telemetry_ceiling (job_id, node_id, at_ms, gpu_utilization_pct, vram_used_gb, \
             vram_allocated_gb, power_draw_watts, temperature_c, outbound_bytes_per_sec, \
             unique_dest_ips, foreign_gpu_processes, throttling, inferred_pattern, emulated) \
             FROM STDIN (FORMAT csv)",
        )
        .await?;
    copy.send(csv.into_bytes()).await?;
    copy.finish().await?;
    let copy_rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::raw_sql("TRUNCATE telemetry_ceiling")
        .execute(&mut connection)
        .await?;
    // Multi-row INSERT, 400 rows (14 parameters each) per statement and transaction.
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let count = INSERT_ROWS.min(rows - done);
        let mut sql = String::from(
            "INSERT INTO telemetry_ceiling (job_id, node_id, at_ms, gpu_utilization_pct, \
             vram_used_gb, vram_allocated_gb, power_draw_watts, temperature_c, \
             outbound_bytes_per_sec, unique_dest_ips, foreign_gpu_processes, throttling, \
             inferred_pattern, emulated) VALUES ",
        );
        for index in 0..count {
            if index > 0 {
                sql.push(',');
            }
            let base = index * 14;
            sql.push('(');
            for column in 1..=14 {
                if column > 1 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", base + column));
            }
            sql.push(')');
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for index in done..done + count {
            let (job, node, at) = row(index);
            query = query
                .bind(job)
                .bind(node)
                .bind(at)
                .bind(94.2f64)
                .bind(22.1f64)
                .bind(24.0f64)
                .bind(380.0f64)
                .bind(72.0f64)
                .bind(1_200_000.0f64)
                .bind(3i64)
                .bind(0i64)
                .bind(0i64)
                .bind("TRAINING")
                .bind(0i64);
        }
        query.execute(&mut connection).await?;
        done += count;
    }
    let insert_rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::raw_sql("DROP TABLE telemetry_ceiling")
        .execute(&mut connection)
        .await?;
    Ok((copy_rate, insert_rate))
}

fn run(config: &Config) -> anyhow::Result<()> {
    let server_rt = support::runtime("bench-server")?;
    let client_rt = support::runtime("bench-client")?;
    let setup_started = Instant::now();
    let (db, state, listener, targets) = server_rt.block_on(async {
        let Some(db) = TestDatabase::create(Engine::Postgres, "bench_telemetry").await else {
            bail!("{PG_URL_ENV} is unset: this bench needs PostgreSQL (scripts/bench-telemetry.sh starts one)");
        };
        let store = db.store().await.context("opening the store")?;
        let secret = TokenSecret::new(rand::random::<[u8; 32]>().to_vec())
            .map_err(|error| anyhow::anyhow!("token secret: {error}"))?;
        let now_ms = SystemClock.now_ms();
        let targets = populate(&store, &db.url, &secret, config, now_ms).await?;
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
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok((db, state, listener, targets))
    })?;
    let addr: SocketAddr = listener.local_addr()?;
    eprintln!(
        "setup: {} RUNNING jobs on {} nodes in {:.1} s",
        config.jobs,
        config.nodes,
        setup_started.elapsed().as_secs_f64()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(gp4u_server::app::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));

    let targets = Arc::new(targets);
    let tally = client_rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.concurrency)
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let url: Arc<str> = format!("http://{addr}{}", gp4u_proto::paths::TELEMETRY).into();
        // A first pass over every job, not measured: in steady state the server holds each
        // live job's window (a fresh replica loads it from the database on the first packet).
        let warm_started = Instant::now();
        {
            use futures::StreamExt as _;
            let failures = futures::stream::iter(targets.iter())
                .map(|target| {
                    let client = client.clone();
                    let url = url.clone();
                    async move {
                        client
                            .post(&*url)
                            .header("authorization", &*target.authorization)
                            .header("content-type", "application/json")
                            .body(target.body.clone())
                            .send()
                            .await
                            .map(|response| response.status().as_u16() != 200)
                            .unwrap_or(true)
                    }
                })
                .buffer_unordered(config.concurrency)
                .filter(|failed| futures::future::ready(*failed))
                .count()
                .await;
            eprintln!(
                "first pass over all {} requests in {:.1} s ({failures} not 200)",
                targets.len(),
                warm_started.elapsed().as_secs_f64()
            );
        }
        let begin = Instant::now();
        let start = begin + Duration::from_secs(config.warmup_seconds);
        let end = start + Duration::from_secs(config.seconds);
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..config.concurrency)
            .map(|_| {
                tokio::spawn(client_task(
                    client.clone(),
                    url.clone(),
                    targets.clone(),
                    next.clone(),
                    start,
                    end,
                ))
            })
            .collect();
        let mut tally = Tally::default();
        for task in tasks {
            let part = task.await?;
            tally.accepted_us.extend(part.accepted_us);
            tally.packets += part.packets;
            tally.item_errors += part.item_errors;
            if tally.first_item_error.is_none() {
                tally.first_item_error = part.first_item_error;
            }
            for (status, (count, body)) in part.refused {
                tally.refused.entry(status).or_insert((0, body)).0 += count;
            }
            tally.transport_errors += part.transport_errors;
        }
        anyhow::Ok(tally)
    })?;
    let _ = stop.send(());
    let _ = server_rt.block_on(server);

    let mut latencies = tally.accepted_us;
    latencies.sort_unstable();
    let accepted = usize::try_from(tally.packets).unwrap_or(usize::MAX);
    let requests = latencies.len();
    let rate = accepted as f64 / config.seconds as f64;
    let (copy_rate, insert_rate) = server_rt.block_on(ceiling(&db.url, accepted.max(1)))?;
    println!(
        "telemetry ingestion (PostgreSQL, {} jobs on {} nodes, {} packets per request, {} in flight, {} s measured after {} s warmup)",
        config.jobs,
        config.nodes,
        config.batch,
        config.concurrency,
        config.seconds,
        config.warmup_seconds
    );
    println!(
        "  accepted {accepted} packets in {requests} requests: {rate:.0} packets/s; request latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        support::percentile_ms(&latencies, 50.0),
        support::percentile_ms(&latencies, 99.0),
        support::percentile_ms(&latencies, 100.0)
    );
    for (status, (count, body)) in &tally.refused {
        println!("  REFUSED {count} with HTTP {status}, e.g. {body}");
    }
    if tally.item_errors > 0 {
        println!(
            "  REFUSED PACKETS in batches: {}, e.g. {}",
            tally.item_errors,
            tally.first_item_error.unwrap_or_default()
        );
    }
    if tally.transport_errors > 0 {
        println!("  TRANSPORT ERRORS: {}", tally.transport_errors);
    }
    println!(
        "  ceiling for the same {accepted} rows on one connection: COPY {copy_rate:.0} rows/s, \
         INSERT x{INSERT_ROWS} {insert_rate:.0} rows/s"
    );
    println!(
        "  ratio: {:.2} of COPY, {:.2} of multi-row INSERT",
        rate / copy_rate,
        rate / insert_rate
    );
    println!(
        "  goals: >= 10000/s {}, p99 <= 50 ms {}",
        if rate >= 10_000.0 { "MET" } else { "MISSED" },
        if support::percentile_ms(&latencies, 99.0) <= 50.0 {
            "MET"
        } else {
            "MISSED"
        }
    );
    server_rt.block_on(async {
        state.store.close().await;
        support::drop_postgres_database(&db.url).await
    })?;
    Ok(())
}

fn main() -> ExitCode {
    let config = match Config::parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("telemetry bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
