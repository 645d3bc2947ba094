//! The agent's main loop: register (once), recover containers after a restart, long-poll for
//! assignments, and run each job: pull by digest, start hardened, keep the platform informed
//! (the Russian-Doll watchdog, [`crate::telemetry`]), enforce the duration, report how it
//! ended (a final telemetry packet with the exit code). The platform's visibility challenges
//! arrive in telemetry replies and are answered by the watchdogs ([`crate::visibility`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gp4u_proto::{AgentStatusReport, AssignmentManifest, TelemetryPacket};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::client::{ClientError, PlatformClient};
use crate::coalescer::{Batching, Coalescer};
use crate::docker::{
    ContainerPlan, DockerRuntime, Exit, GpuAttach, JobNetwork, JobPaths, Ulimits, container_config,
};
use crate::files::{fetch_inputs, pack_output};
use crate::gpu::{EmulatedGpu, EmulatedSource, GpuInfo, GpuSource, NvmlSource};
use crate::logs::{self, LogPiece, Shipper};
use crate::metrics::{AgentMetrics, Outcome};
use crate::process::{self, ChildJob};
use crate::proofs::{JobReadings, ProofJob};
use crate::scratch::{QuotaMode, Scratch};
use crate::telemetry::{
    Fence, GpuTelemetry, Subject, Watchdog, WatchdogConfig, final_packet, node_offset_ms,
};
use crate::visibility::Responder;
use gp4u_core::posture::HostPosture;

/// After a job exits, how long its remaining output may take to reach the shipper.
const LOG_DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Upload attempts for a job's outputs while the platform is unreachable (about 4 minutes).
const OUTPUT_UPLOAD_ATTEMPTS: u32 = 10;
/// The packed `/output`, beside (not inside) the job's output dir.
const OUTPUT_ARCHIVE: &str = "output.tar.gz";
/// Timeout of the final telemetry packet (it is retried while the platform is unreachable).
const FINAL_PACKET_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a running job's `/scratch` usage is measured against its cap.
const SCRATCH_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Whether a job the platform stopped gets its proofs: yes when it ended (409) or was killed
/// for something that is not the provider's fault; not when it is no longer this node's (404)
/// or the kill names a provider fault (a slashing rule).
fn proofs_after(fence: &Fence) -> bool {
    match fence {
        Fence::Gone { status, .. } => *status == 409,
        // A kill reason that names a slashing rule is the provider's fault.
        Fence::Kill { reason } => reason
            .as_deref()
            .and_then(|reason| {
                serde_json::from_value::<gp4u_core::tutela::Rule>(serde_json::json!(reason)).ok()
            })
            .is_none_or(|rule| rule.slash_kind().is_none()),
    }
}

/// Which runtime runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Docker,
    Process,
}

/// Everything `gp4u agent` is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub runtime: RuntimeKind,
    pub allow_unisolated: bool,
    pub emulated: Vec<EmulatedGpu>,
    pub region: String,
    pub price_per_hour: f64,
    /// Long-poll wait, seconds.
    pub poll_wait_s: u64,
    /// Never answer visibility challenges (`--refuse-visibility`, hidden): behave as a
    /// provider that blocks the platform's visibility, for tests and drills.
    pub refuse_visibility: bool,
    /// How often a running container's socket tables are sampled between telemetry packets
    /// (short-lived connections vanish between packets).
    pub net_sample_interval: Duration,
    /// The share of the node's power from renewable sources, 0–100 (`--renewable-pct`): sent
    /// at registration and committed with every reading's renewable part.
    pub renewable_pct: f64,
    /// What jobs' containers get beyond the manifest (SPEC §10).
    pub job_runtime: JobRuntimeOptions,
    /// Where to serve Prometheus metrics (`--metrics-listen`); `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The node's side of the job runtime (SPEC §10): flags of `gp4u agent`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRuntimeOptions {
    /// The most `/scratch` a job may ask for on this node, GB (`--max-scratch-gb`).
    pub max_scratch_gb: f64,
    /// Run `public` jobs even when the egress filter cannot be installed
    /// (`--allow-unfiltered-egress`; said at registration).
    pub allow_unfiltered_egress: bool,
    /// CPUs per job (`--cpus-per-job`); default the node's cores × the job's share of the
    /// node's GPUs.
    pub cpus_per_job: Option<f64>,
    /// DNS servers for jobs (`--job-dns`); default Docker's (the host's resolvers).
    pub job_dns: Vec<String>,
    /// How scratch sizes are held (`--scratch-quota`); default: a loop-mounted filesystem
    /// where the host allows it, else watched.
    pub scratch_quota: Option<QuotaMode>,
}

impl JobRuntimeOptions {
    /// The node's scratch maximum when not given.
    pub const DEFAULT_MAX_SCRATCH_GB: f64 = 100.0;
}

impl Default for JobRuntimeOptions {
    fn default() -> Self {
        JobRuntimeOptions {
            max_scratch_gb: Self::DEFAULT_MAX_SCRATCH_GB,
            allow_unfiltered_egress: false,
            cpus_per_job: None,
            job_dns: Vec::new(),
            scratch_quota: None,
        }
    }
}

/// Whether `public` jobs are behind the egress filter ([`crate::firewall`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Egress {
    /// Installed and checked.
    Filtered(crate::firewall::Coverage),
    /// Not installed, and the provider accepted that (`--allow-unfiltered-egress`).
    Unfiltered { reason: String },
    /// Not installed: `public` jobs are refused.
    Refused { reason: String },
    /// No containers (the process runtime): there is nothing to filter.
    NotApplicable,
}

impl AgentConfig {
    /// The default socket-table sampling period.
    pub const DEFAULT_NET_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "--runtime process runs jobs without isolation; start the agent with --allow-unisolated to accept that (development only)"
    )]
    UnisolatedRefused,
    #[error(
        "no GPUs to offer: NVML found none ({0}); on a machine without NVIDIA GPUs pass --gpu emulated:<name>:<vram_gb>"
    )]
    NoGpus(String),
    #[error(
        "docker: {0}; without Docker use --runtime process --allow-unisolated (development only)"
    )]
    Docker(#[from] crate::docker::DockerError),
    #[error(transparent)]
    Platform(#[from] ClientError),
    #[error(transparent)]
    Key(#[from] crate::key::KeyError),
    #[error(
        "NVML cannot read the enforced power limit of GPU {index} {name:?} ({uuid}), and the platform bounds every energy proof of its jobs by it: check that `nvidia-smi -q -d POWER` shows an enforced power limit (power management supported and enabled, a current driver), then start the agent again"
    )]
    NoPowerLimit {
        index: u32,
        name: String,
        uuid: String,
    },
    #[error(
        "GPU {index} {name:?} ({uuid}) reports an enforced power limit of {watts} W, outside the 0–2000 W the platform accepts (its telemetry clamp): lower it with `nvidia-smi -pl`, then start the agent again"
    )]
    PowerLimitOutOfRange {
        index: u32,
        name: String,
        uuid: String,
        watts: f64,
    },
    #[error(
        "--metrics-listen {address}: cannot listen there ({source}); pick a free address and port, or leave the flag out"
    )]
    MetricsListen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The node's registration, kept in the data dir so that a restarted agent is the same node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub server: String,
    /// GPU UUID → the platform's GPU id.
    pub gpus: Vec<(String, String)>,
    pub emulated: bool,
    /// The platform's public key (base64), given at registration: visibility challenges must
    /// be signed with it. Absent in files written before it existed, or from older servers.
    #[serde(default)]
    pub platform_public_key: Option<String>,
}

const NODE_FILE: &str = "node.json";

enum Runtime {
    Docker(DockerRuntime),
    Process,
}

/// A task that ends with its owner: a job's helpers (log follower, shipper, waiter) stop when
/// the job's watch does, e.g. when the agent itself is stopped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Launched {
    Container(String),
    Child(ChildJob),
}

struct Agent {
    config: AgentConfig,
    client: PlatformClient,
    runtime: Runtime,
    node: NodeState,
    gpu: GpuTelemetry,
    /// The node's telemetry coalescer, shared by the watchdogs.
    coalescer: Coalescer,
    batching: Batching,
    /// The node key: signs hardware attestations.
    key: Arc<ed25519_dalek::SigningKey>,
    /// How jobs' scratch sizes are held.
    scratch_mode: QuotaMode,
    egress: Egress,
    /// CPUs each job's container gets.
    cpus_per_job: f64,
    /// The ulimits each job's container gets.
    ulimits: Ulimits,
    /// Answers visibility challenges (the watchdogs hand them over).
    responder: Arc<Responder>,
    /// The enforced power limit of each GPU (by UUID) in milliwatts, as declared at this start:
    /// the bound of a job's readings when its assignment does not say one.
    power_limits: std::collections::HashMap<String, u64>,
}

/// What the watchdog of one job needs besides the job's process.
struct JobTelemetry {
    interval: Duration,
    gpu_uuid: Option<String>,
    /// The bound of the job's readings (mW): the limit its GPU was assigned with, else the
    /// one declared at this start. Readings above it are reported at it.
    power_limit_mw: Option<u64>,
}

/// Unix milliseconds from the system clock (the agent's one clock reader).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The GPUs this node offers: the emulated ones if any were declared, else NVML's.
pub fn discover_gpus(emulated: &[EmulatedGpu]) -> Result<(Vec<GpuInfo>, bool), AgentError> {
    if !emulated.is_empty() {
        let source = crate::gpu::EmulatedSource::new(emulated.iter().cloned());
        return Ok((source.inventory().gpus, true));
    }
    let inventory = NvmlSource::open().inventory();
    if inventory.gpus.is_empty() {
        return Err(AgentError::NoGpus(
            inventory.note.unwrap_or_else(|| "no devices".into()),
        ));
    }
    Ok((inventory.gpus, false))
}

/// The driver version to declare at registration: NVML's, trimmed, when the platform would
/// accept it; none when NVML could not read it (`unknown`) or it is not a plain version
/// string (said in the log: registration must not fail over it).
fn declared_driver(version: &str) -> Option<&str> {
    let version = version.trim();
    if version == "unknown" {
        return None;
    }
    if gp4u_core::manifest::is_valid_driver_version(version) {
        Some(version)
    } else {
        tracing::warn!(
            driver_version = version,
            "the GPU driver version is not a plain version string; registering without it"
        );
        None
    }
}

/// A GPU's enforced power limit in milliwatts as the agent declares it, or why it cannot
/// declare one (NVML could not read it, or it is beyond what the platform accepts).
pub fn declared_power_limit(gpu: &GpuInfo) -> Result<u64, AgentError> {
    match (gpu.power_limit_mw(), gpu.power_limit_watts) {
        (Some(milliwatts), _) => Ok(milliwatts),
        (None, Some(watts)) if watts.is_finite() && watts > 0.0 => {
            Err(AgentError::PowerLimitOutOfRange {
                index: gpu.index,
                name: gpu.name.clone(),
                uuid: gpu.uuid.clone(),
                watts,
            })
        }
        (None, _) => Err(AgentError::NoPowerLimit {
            index: gpu.index,
            name: gpu.name.clone(),
            uuid: gpu.uuid.clone(),
        }),
    }
}

/// The registration body of these GPUs. A GPU whose power limit cannot be declared is
/// refused: registered without one, none of its jobs' energy proofs could be accepted.
pub fn registration_gpus(
    gpus: &[GpuInfo],
    price_per_hour: f64,
) -> Result<Vec<gp4u_proto::RegisterGpuBody>, AgentError> {
    gpus.iter()
        .map(|gpu| {
            let milliwatts = declared_power_limit(gpu)?;
            Ok(gp4u_proto::RegisterGpuBody {
                name: gpu.registered_name(),
                vram_gb: gpu.vram_total_bytes as f64 / 1_073_741_824.0,
                price_per_hour,
                uuid: Some(gpu.uuid.clone()),
                driver_version: declared_driver(&gpu.driver_version).map(str::to_string),
                power_limit_watts: gp4u_core::energy::mw_to_watts(milliwatts),
                emulated: Some(gpu.emulated),
            })
        })
        .collect()
}

/// The node's registration: loaded from the data dir, or made now (with the host's
/// `posture`). The flag says whether it was made now.
async fn register_or_load(
    config: &AgentConfig,
    client: &PlatformClient,
    posture: &HostPosture,
) -> Result<(NodeState, bool), AgentError> {
    let path = config.data_dir.join(NODE_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(state) = serde_json::from_str::<NodeState>(&text)
        && state.server == config.server
    {
        tracing::info!(node_id = %state.node_id, "resuming as a registered node");
        return Ok((state, false));
    }
    let key = crate::key::load_or_generate(&config.data_dir, rand::random::<[u8; 32]>)?;
    let (gpus, emulated) = discover_gpus(&config.emulated)?;
    let body = gp4u_proto::RegisterBody {
        region: config.region.clone(),
        public_key: crate::key::public_key_base64(&key),
        gpus: registration_gpus(&gpus, config.price_per_hour)?,
        endpoint: None,
        renewable_pct: (config.renewable_pct > 0.0).then_some(config.renewable_pct),
        posture: Some(posture.clone()),
    };
    let registered = client.register(&body).await?;
    let state = NodeState {
        node_id: registered.node_id.clone(),
        server: config.server.clone(),
        gpus: gpus
            .iter()
            .zip(&registered.gpus)
            .map(|(gpu, listed)| (gpu.uuid.clone(), listed.id.clone()))
            .collect(),
        emulated,
        platform_public_key: registered.platform_public_key.clone(),
    };
    let text = serde_json::to_string_pretty(&state).unwrap_or_default();
    std::fs::write(&path, text).map_err(io_error(&path))?;
    tracing::info!(node_id = %state.node_id, gpus = state.gpus.len(), emulated, "registered the node");
    Ok((state, true))
}

/// Where the watchdogs read GPUs: the emulated ones, NVML, or nothing (said once, here).
fn gpu_telemetry(config: &AgentConfig, node: &NodeState) -> GpuTelemetry {
    if node.emulated {
        return GpuTelemetry::Emulated(Arc::new(EmulatedSource::new(config.emulated.clone())));
    }
    let nvml = NvmlSource::open();
    if nvml.is_available() {
        GpuTelemetry::Nvml(Arc::new(nvml))
    } else {
        tracing::warn!(
            note = ?nvml.inventory().note,
            "no readable GPU on this node: telemetry reports zero GPU figures"
        );
        GpuTelemetry::Unavailable
    }
}

/// The enforced power limit of each of the node's GPUs (by UUID, in mW) as read now, and, on a
/// resumed node, declared to the platform (`PUT /api/providers/{nodeId}/power-limits`): a GPU
/// registered before power limits were recorded gets one, and a limit changed on the host is
/// followed for jobs assigned from now on. Failures are logged: the node still runs.
async fn declare_power_limits(
    client: &PlatformClient,
    node: &NodeState,
    gpu: &GpuTelemetry,
    registered_now: bool,
) -> std::collections::HashMap<String, u64> {
    let inventory = match gpu {
        GpuTelemetry::Nvml(source) => {
            let source = source.clone();
            tokio::task::spawn_blocking(move || source.inventory())
                .await
                .unwrap_or_default()
        }
        GpuTelemetry::Emulated(source) => source.inventory(),
        GpuTelemetry::Unavailable => Default::default(),
    };
    let mut limits = std::collections::HashMap::new();
    let mut declared = Vec::new();
    for (uuid, gpu_id) in &node.gpus {
        let Some(info) = inventory.gpus.iter().find(|info| info.uuid == *uuid) else {
            tracing::warn!(%uuid, gpu_id, "a registered GPU is not in the inventory now: its power limit is not declared");
            continue;
        };
        match declared_power_limit(info) {
            Ok(milliwatts) => {
                limits.insert(uuid.clone(), milliwatts);
                declared.push((gpu_id.clone(), gp4u_core::energy::mw_to_watts(milliwatts)));
            }
            Err(error) => tracing::warn!(%error, gpu_id,
                "this GPU's power limit is not declared; the platform keeps the one it has on record"),
        }
    }
    if !registered_now && !declared.is_empty() {
        match client.set_power_limits(&node.node_id, &declared).await {
            Ok(()) => tracing::info!(gpus = declared.len(), "declared the GPUs' power limits"),
            Err(error) => tracing::warn!(%error,
                "could not declare the GPUs' power limits; the platform keeps the ones it has on record (jobs of a GPU it has none for cannot be proven)"),
        }
    }
    limits
}

/// The responder of the node's watchdogs: the node key, and the platform's key from
/// registration (challenges are answered unverified, and said so, without it).
fn responder(
    config: &AgentConfig,
    node: &NodeState,
    key: Arc<ed25519_dalek::SigningKey>,
) -> Arc<Responder> {
    let platform_key = node.platform_public_key.as_deref().and_then(|text| {
        let key = crate::key::parse_public_key(text);
        if key.is_none() {
            tracing::error!("node.json holds an unreadable platform key; ignoring it");
        }
        key
    });
    if platform_key.is_none() {
        tracing::warn!(
            "no platform key (registered with an older server): visibility challenges are answered without checking their signature"
        );
    }
    if config.refuse_visibility {
        tracing::warn!(
            "--refuse-visibility: visibility challenges are ignored; the platform will slash and eject this node"
        );
    }
    Arc::new(Responder {
        node_id: node.node_id.clone(),
        node_key: key,
        platform_key,
        refuse: config.refuse_visibility,
    })
}

/// Runs the agent until `shutdown` turns true. Jobs in flight keep running in their containers;
/// the next start of the agent picks them up.
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    run_with(config, Batching::default(), shutdown).await
}

/// [`run`], with the telemetry coalescing given (see [`crate::coalescer`]).
pub async fn run_with(
    mut config: AgentConfig,
    batching: Batching,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let runtime = match config.runtime {
        RuntimeKind::Docker => Runtime::Docker(DockerRuntime::connect().await?),
        RuntimeKind::Process if config.allow_unisolated => {
            tracing::warn!(
                "RUNTIME PROCESS: jobs run as plain child processes WITHOUT ISOLATION (development only)"
            );
            Runtime::Process
        }
        RuntimeKind::Process => return Err(AgentError::UnisolatedRefused),
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io_error(&config.data_dir))?;
    // Absolute from here on: the engine takes bind mounts by absolute path only (a relative
    // one, like the default `./gp4u-agent`, is taken for a volume name and refused).
    config.data_dir =
        std::fs::canonicalize(&config.data_dir).map_err(io_error(&config.data_dir))?;
    let (scratch_mode, egress) = prepare_host(&config, &runtime).await;
    let client = PlatformClient::new(&config.server, &config.token)?;
    if let Some(address) = config.metrics_listen {
        // Bound before registering, so that a taken port stops the agent at once.
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| AgentError::MetricsListen { address, source })?;
        tokio::spawn(crate::metrics::serve(
            listener,
            client.metrics().clone(),
            shutdown.clone(),
        ));
    }
    let gpu_count = match discover_gpus(&config.emulated) {
        Ok((gpus, _)) => gpus.len(),
        Err(_) => 1,
    };
    let cpus_per_job = cpus_per_job(&config.job_runtime, gpu_count);
    let (ulimits, lowered) = Ulimits::for_host();
    if !lowered.is_empty() {
        tracing::warn!(
            ?lowered,
            "this host cannot give jobs SPEC §10's ulimits; they get the host's maximum"
        );
    }
    let posture = host_posture(
        &config,
        &runtime,
        scratch_mode,
        &egress,
        cpus_per_job,
        ulimits,
    );
    let (node, registered_now) = register_or_load(&config, &client, &posture).await?;
    if !registered_now {
        // A resumed node declares its share and its host again: flags may have changed since
        // it registered, energy proofs must claim what the platform has on record, and
        // placement must know what the host gives jobs now.
        if let Err(error) = client
            .set_renewable(&node.node_id, config.renewable_pct)
            .await
        {
            tracing::warn!(%error, renewable_pct = config.renewable_pct,
                "could not declare the renewable share; energy proofs may be refused until it is");
        }
        if let Err(error) = client.set_posture(&node.node_id, &posture).await {
            tracing::warn!(%error, "could not report the host posture; placement goes by the last one reported");
        }
    }
    let gpu = gpu_telemetry(&config, &node);
    let power_limits = declare_power_limits(&client, &node, &gpu, registered_now).await;
    let key = Arc::new(crate::key::load_or_generate(
        &config.data_dir,
        rand::random::<[u8; 32]>,
    )?);
    let responder = responder(&config, &node, key.clone());
    let coalescer = Coalescer::start(client.clone(), batching);
    tracing::info!(
        scratch = scratch_mode.as_str(),
        egress = ?egress,
        cpus_per_job,
        max_scratch_gb = config.job_runtime.max_scratch_gb,
        "job runtime ready"
    );
    let agent = Arc::new(Agent {
        config,
        client,
        runtime,
        node,
        gpu,
        coalescer,
        batching,
        key,
        scratch_mode,
        egress,
        cpus_per_job,
        ulimits,
        responder,
        power_limits,
    });
    // Every job runs in this set, so that stopping the agent stops its watchers too (the
    // containers run on; the next start of the agent recovers them).
    let mut jobs = JoinSet::new();
    agent.clone().recover(&mut jobs).await;
    let mut backoff = Duration::from_millis(500);
    loop {
        while jobs.try_join_next().is_some() {}
        let poll = agent
            .client
            .next_assignment(&agent.node.node_id, agent.config.poll_wait_s);
        let result = tokio::select! {
            result = poll => result,
            _ = shutdown.changed() => {
                agent.stop().await;
                return Ok(());
            }
        };
        match result {
            Ok(Some(manifest)) => {
                backoff = Duration::from_millis(500);
                tracing::info!(job_id = %manifest.job_id, image = %manifest.docker_image, "assignment received");
                jobs.spawn(agent.clone().run_job(manifest));
            }
            Ok(None) => backoff = Duration::from_millis(500),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, retry_in = ?backoff, "polling failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {
                        agent.stop().await;
                        return Ok(());
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The exit code `docker run` gives when the engine could not start the image's command
/// (126: not executable, 127: not found): the customer's image. `None` for anything else
/// the engine refused (mounts, devices, limits): the node's.
pub fn customer_start_failure(message: &str) -> Option<i32> {
    let message = message.to_ascii_lowercase();
    if message.contains("executable file not found")
        || (message.contains("no such file or directory") && message.contains("exec"))
    {
        Some(127)
    } else if message.contains("permission denied") && message.contains("exec") {
        Some(126)
    } else {
        None
    }
}

/// The CPUs a job gets: `--cpus-per-job`, else the node's cores × the job's share of the
/// node's GPUs (one GPU of four: a quarter of the cores), at least one hundredth of a core.
pub fn cpus_per_job(options: &JobRuntimeOptions, node_gpus: usize) -> f64 {
    if let Some(cpus) = options.cpus_per_job {
        return cpus.max(0.01);
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores as f64 / node_gpus.max(1) as f64).max(0.01)
}

/// What the agent reports of its host (SPEC §10).
fn host_posture(
    config: &AgentConfig,
    runtime: &Runtime,
    scratch_mode: QuotaMode,
    egress: &Egress,
    cpus_per_job: f64,
    ulimits: Ulimits,
) -> HostPosture {
    let facts = match runtime {
        Runtime::Docker(docker) => docker.facts().clone(),
        Runtime::Process => Default::default(),
    };
    let (egress_filter, ipv6) = match egress {
        Egress::Filtered(coverage) => ("iptables", coverage.ipv6_filtered),
        _ => ("none", false),
    };
    HostPosture {
        runtime: match runtime {
            Runtime::Docker(_) => "docker",
            Runtime::Process => "process",
        }
        .to_string(),
        engine_version: facts.version.clone().filter(|version| {
            gp4u_core::posture::validate_posture(&json!({
                "runtime": "docker", "engine_version": version, "egress_filter": "none",
                "scratch_quota": "loop", "max_scratch_gb": 1, "cpus_per_job": 1}))
            .is_ok()
        }),
        seccomp: facts.has("seccomp"),
        apparmor: facts.has("apparmor"),
        selinux: facts.has("selinux"),
        userns_remap: facts.has("userns"),
        rootless: facts.has("rootless"),
        cgroup_version: facts.cgroup_version,
        egress_filter: egress_filter.to_string(),
        egress_ipv6_filtered: ipv6,
        // The process runtime isolates nothing; its provider accepted that with
        // --allow-unisolated.
        unfiltered_egress_allowed: matches!(egress, Egress::Unfiltered { .. })
            || matches!(runtime, Runtime::Process),
        scratch_quota: scratch_mode.as_str().to_string(),
        max_scratch_gb: config.job_runtime.max_scratch_gb,
        cpus_per_job,
        ulimits: gp4u_core::posture::PostureUlimits {
            nofile: ulimits.nofile,
            memlock: ulimits.memlock,
            stack: ulimits.stack,
        },
    }
}

/// Readies the host for jobs: how scratch sizes are held, and (with Docker) the egress filter.
async fn prepare_host(config: &AgentConfig, runtime: &Runtime) -> (QuotaMode, Egress) {
    let data_dir = config.data_dir.clone();
    let (scratch_mode, why_not_loop) = match config.job_runtime.scratch_quota {
        Some(QuotaMode::Watched) => (QuotaMode::Watched, Some("--scratch-quota watched".into())),
        wanted => {
            let detected = tokio::task::spawn_blocking(move || QuotaMode::detect(&data_dir))
                .await
                .unwrap_or((QuotaMode::Watched, Some("the probe did not finish".into())));
            if wanted == Some(QuotaMode::Loop) && detected.0 != QuotaMode::Loop {
                tracing::error!(reason = ?detected.1, "--scratch-quota loop: this host cannot loop-mount job scratch; watching sizes instead");
            }
            detected
        }
    };
    if let Some(reason) = why_not_loop {
        tracing::warn!(%reason, "scratch sizes are watched, not enforced: a job can overshoot its /scratch by what it writes between two checks (a loop-mounted filesystem needs root, mkfs.ext4 and loop devices)");
    }
    let egress = match runtime {
        Runtime::Process => Egress::NotApplicable,
        Runtime::Docker(_) => match tokio::task::spawn_blocking(crate::firewall::install).await {
            Ok(Ok(coverage)) => {
                tracing::info!(
                    ipv6_filtered = coverage.ipv6_filtered,
                    "egress filter installed and checked: jobs reach public addresses only"
                );
                Egress::Filtered(coverage)
            }
            Ok(Err(error)) if config.job_runtime.allow_unfiltered_egress => {
                tracing::warn!(%error, "EGRESS UNFILTERED: public jobs can reach the host's networks (--allow-unfiltered-egress)");
                Egress::Unfiltered {
                    reason: error.to_string(),
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "no egress filter: `public` jobs will be refused (network \"none\" jobs still run); fix the error or pass --allow-unfiltered-egress");
                Egress::Refused {
                    reason: error.to_string(),
                }
            }
            Err(error) => Egress::Refused {
                reason: error.to_string(),
            },
        },
    };
    (scratch_mode, egress)
}

impl Agent {
    /// The agent stops (its jobs run on): the egress filter goes too when no job network is
    /// left on the host, whichever node it belongs to.
    async fn stop(&self) {
        let Runtime::Docker(docker) = &self.runtime else {
            return;
        };
        if !matches!(self.egress, Egress::Filtered(_)) {
            return;
        }
        match docker.job_networks(None).await {
            Ok(networks) if networks.is_empty() => {
                let _ = tokio::task::spawn_blocking(crate::firewall::remove).await;
                tracing::info!("no job network left on this host: the egress filter is removed");
            }
            Ok(networks) => {
                tracing::info!(
                    networks = networks.len(),
                    "job networks remain on this host: the egress filter stays"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "cannot list job networks: the egress filter stays")
            }
        }
    }

    fn job_dir(&self, job_id: &str) -> PathBuf {
        self.config.data_dir.join("jobs").join(job_id)
    }

    /// The UUID the watchdog reads for a job: the manifest's when this node has that GPU, else
    /// the node's GPU with the manifest's platform id, else the manifest's as given.
    fn job_gpu_uuid(&self, gpu_uuid: Option<&str>, gpu_id: Option<&str>) -> Option<String> {
        if let Some(uuid) = gpu_uuid
            && self.node.gpus.iter().any(|(known, _)| known == uuid)
        {
            return Some(uuid.to_string());
        }
        if let Some(id) = gpu_id
            && let Some((uuid, _)) = self.node.gpus.iter().find(|(_, known)| known == id)
        {
            return Some(uuid.clone());
        }
        gpu_uuid.map(str::to_string)
    }

    fn subject(&self, launched: &Launched) -> Subject {
        match (&self.runtime, launched) {
            (Runtime::Docker(docker), Launched::Container(id)) => Subject::Container {
                docker: docker.clone(),
                id: id.clone(),
            },
            (_, Launched::Child(child)) => Subject::Process { pid: child.pid() },
            _ => Subject::Process { pid: None },
        }
    }

    fn gpu_attach(&self, manifest: &AssignmentManifest) -> GpuAttach {
        match (&self.runtime, &manifest.gpu_uuid) {
            (Runtime::Docker(docker), Some(uuid))
                if docker.has_nvidia_runtime() && !self.node.emulated =>
            {
                GpuAttach::Nvidia { uuid: uuid.clone() }
            }
            _ => GpuAttach::None,
        }
    }

    /// Sends a report, retrying while the platform is unreachable: a final report must not be
    /// lost. Returns whether the platform wants the job killed.
    async fn report(
        &self,
        job_id: &str,
        status: &str,
        exit_code: Option<i32>,
        reason: Option<&str>,
        message: Option<String>,
    ) -> bool {
        let report = AgentStatusReport {
            node_id: self.node.node_id.clone(),
            status: status.to_string(),
            exit_code,
            reason: reason.map(str::to_string),
            message,
        };
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.client.report(job_id, &report).await {
                Ok(reply) => return reply.kill,
                Err(error) if error.is_transient() && status != "running" => {
                    tracing::warn!(job_id, %error, retry_in = ?backoff, "report failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                // The platform does not know this job (any more) on this node: a container
                // with no job behind it is an orphan, and orphans are killed.
                Err(ClientError::Refused { status: 404, .. }) => {
                    tracing::warn!(job_id, "the platform does not know this job: killing it");
                    return true;
                }
                Err(error) => {
                    tracing::warn!(job_id, %error, "report failed");
                    return false;
                }
            }
        }
    }

    async fn run_job(self: Arc<Self>, manifest: AssignmentManifest) {
        let job_id = manifest.job_id.clone();
        let deadline_ms = now_ms().saturating_add(
            i64::try_from(manifest.kill_after_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
        );
        let dir = self.job_dir(&job_id);
        let (input, output) = (dir.join("input"), dir.join("output"));
        for path in [&input, &output] {
            let made = std::fs::create_dir_all(path).and_then(|()| {
                // The image's user may not be root: /output is for whoever the job runs as.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777))
            });
            if let Err(error) = made {
                tracing::error!(job_id, path = %path.display(), %error, "cannot prepare the job's directories");
                self.setup_failed(
                    &job_id,
                    format!("agent could not prepare {}: {error}", path.display()),
                )
                .await;
                return;
            }
        }
        if let Some(refusal) = self.refusal(&manifest) {
            tracing::error!(job_id, %refusal, "job refused");
            self.setup_failed(&job_id, refusal).await;
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let reference = match &self.runtime {
            Runtime::Docker(docker) => {
                let pull_started = std::time::Instant::now();
                let pulled = docker
                    .pull(&manifest.docker_image, &manifest.docker_image_sha256)
                    .await;
                let metrics = self.client.metrics();
                metrics
                    .image_pull_seconds
                    .observe(pull_started.elapsed().as_secs_f64());
                AgentMetrics::count(
                    &metrics.image_pulls,
                    if pulled.is_ok() { "ok" } else { "failed" },
                );
                match pulled {
                    Ok(reference) => Some(reference),
                    Err(error) => {
                        tracing::warn!(job_id, %error, "image pull failed");
                        if error.is_pull_failure() {
                            self.report(
                                &job_id,
                                "failed",
                                None,
                                Some("IMAGE_PULL_FAILED"),
                                Some(error.to_string()),
                            )
                            .await;
                        } else {
                            self.setup_failed(&job_id, error.to_string()).await;
                        }
                        let _ = std::fs::remove_dir_all(&dir);
                        return;
                    }
                }
            }
            Runtime::Process => None,
        };
        if !self.inputs_ready(&manifest, &input).await {
            return;
        }
        let scratch = {
            let (dir, cap, mode) = (
                dir.clone(),
                crate::scratch::cap_bytes(manifest.scratch_gb),
                self.scratch_mode,
            );
            tokio::task::spawn_blocking(move || Scratch::create(&dir, cap, mode))
                .await
                .unwrap_or_else(|error| {
                    Err(crate::scratch::ScratchError::Command {
                        command: "scratch".into(),
                        detail: error.to_string(),
                    })
                })
        };
        let scratch = match scratch {
            Ok(scratch) => scratch,
            Err(error) => {
                tracing::error!(job_id, %error, "cannot prepare the job's /scratch");
                self.setup_failed(
                    &job_id,
                    format!("agent could not prepare /scratch: {error}"),
                )
                .await;
                self.discard(&job_id).await;
                return;
            }
        };
        let launched = match (&self.runtime, reference) {
            (Runtime::Docker(docker), Some(reference)) => {
                let network = match self.prepare_network(docker, &manifest).await {
                    Ok(network) => network,
                    Err(message) => {
                        tracing::error!(job_id, %message, "the job's network could not be prepared");
                        self.setup_failed(&job_id, message).await;
                        self.discard(&job_id).await;
                        return;
                    }
                };
                let gpu = self.gpu_attach(&manifest);
                let plan = ContainerPlan {
                    reference: &reference,
                    paths: JobPaths {
                        input: &input,
                        output: &output,
                        scratch: &scratch.path,
                    },
                    gpu: &gpu,
                    network: &network,
                    node_id: &self.node.node_id,
                    deadline_ms,
                    cpus: self.cpus_per_job,
                    dns: &self.config.job_runtime.job_dns,
                    ulimits: self.ulimits,
                };
                match docker
                    .create_and_start(
                        container_config(&manifest, &plan),
                        &format!("gp4u-{job_id}"),
                    )
                    .await
                {
                    Ok(id) => (Launched::Container(id), None),
                    Err(error) => {
                        tracing::warn!(job_id, %error, "container did not start");
                        let message = error.to_string();
                        match customer_start_failure(&message) {
                            // The image's command cannot run: the customer's, as `docker run`
                            // says it (126 not executable, 127 not found).
                            Some(code) => {
                                self.report(&job_id, "exited", Some(code), None, Some(message))
                                    .await;
                            }
                            None => self.setup_failed(&job_id, message).await,
                        }
                        self.discard(&job_id).await;
                        return;
                    }
                }
            }
            _ => {
                let (sender, receiver) = logs::channel();
                let paths = process::ProcessPaths {
                    dir: &dir,
                    input: &input,
                    output: &output,
                    scratch: &scratch.path,
                };
                match process::spawn(&manifest, &paths, sender) {
                    Ok(child) => (Launched::Child(child), Some(receiver)),
                    Err(error) => {
                        self.report(
                            &job_id,
                            "exited",
                            Some(127),
                            None,
                            Some(format!("could not start the command: {error}")),
                        )
                        .await;
                        self.discard(&job_id).await;
                        return;
                    }
                }
            }
        };
        let (launched, pieces) = launched;
        self.client.metrics().containers_started.inc();
        let gpu_uuid = self.job_gpu_uuid(manifest.gpu_uuid.as_deref(), Some(&manifest.gpu_id));
        let declared = gpu_uuid
            .as_ref()
            .and_then(|uuid| self.power_limits.get(uuid).copied());
        let assigned = manifest
            .gpu_power_limit_watts
            .map(gp4u_core::energy::watts_to_mw);
        if let (Some(assigned), Some(declared)) = (assigned, declared)
            && assigned != declared
        {
            tracing::warn!(
                job_id,
                assigned_mw = assigned,
                declared_mw = declared,
                "the job was assigned with another power limit than this agent declared: its readings are bounded by the assigned one"
            );
        }
        let telemetry = JobTelemetry {
            interval: Duration::from_secs(manifest.telemetry_interval_seconds),
            gpu_uuid,
            power_limit_mw: assigned.or(declared),
        };
        self.watch(job_id, launched, deadline_ms, pieces, telemetry)
            .await;
    }

    /// Reports that this node could not set the job up (`NODE_SETUP_FAILED`: the provider's;
    /// the platform places it elsewhere, and the customer pays nothing for it).
    async fn setup_failed(&self, job_id: &str, message: String) {
        self.report(
            job_id,
            "failed",
            None,
            Some("NODE_SETUP_FAILED"),
            Some(message),
        )
        .await;
    }

    /// Why this node cannot run the job as asked, if it cannot: more scratch than the node
    /// offers, or a `public` job without the egress filter (unless the provider accepted
    /// unfiltered egress).
    fn refusal(&self, manifest: &AssignmentManifest) -> Option<String> {
        let max = self.config.job_runtime.max_scratch_gb;
        if manifest.scratch_gb > max {
            return Some(format!(
                "the job asks for {} GB of /scratch; this node offers at most {max} GB (--max-scratch-gb)",
                manifest.scratch_gb
            ));
        }
        if matches!(self.runtime, Runtime::Docker(_))
            && !manifest.network_none()
            && let Egress::Refused { reason } = &self.egress
        {
            return Some(format!(
                "this node refuses `public` jobs: its egress filter could not be installed ({reason}); the provider can fix that or start the agent with --allow-unfiltered-egress"
            ));
        }
        None
    }

    /// The job's network: none, or its own behind the egress filter (checked first, and
    /// reinstalled if someone changed it).
    async fn prepare_network(
        &self,
        docker: &DockerRuntime,
        manifest: &AssignmentManifest,
    ) -> Result<JobNetwork, String> {
        if manifest.network_none() {
            return Ok(JobNetwork::None);
        }
        if let Egress::Filtered(_) = &self.egress {
            let checked = tokio::task::spawn_blocking(|| {
                crate::firewall::check().or_else(|drift| {
                    tracing::warn!(%drift, "the egress filter changed since it was installed; reinstalling");
                    crate::firewall::install().map(|_| ())
                })
            })
            .await
            .map_err(|error| error.to_string())
            .and_then(|result| result.map_err(|error| error.to_string()));
            if let Err(error) = checked {
                return Err(format!(
                    "the egress filter is not in place and could not be reinstalled: {error}"
                ));
            }
        }
        docker
            .create_job_network(&manifest.job_id, &self.node.node_id)
            .await
            .map(JobNetwork::Own)
            .map_err(|error| format!("could not create the job's network: {error}"))
    }

    /// Removes what a job that did not start left: its network, its scratch, its directory.
    async fn discard(&self, job_id: &str) {
        if let Runtime::Docker(docker) = &self.runtime
            && let Err(error) = docker.remove_job_network(job_id).await
        {
            tracing::warn!(job_id, %error, "could not remove the job's network");
        }
        let dir = self.job_dir(job_id);
        let removed = tokio::task::spawn_blocking(move || {
            if let Some(scratch) = Scratch::find(&dir) {
                scratch.remove()?;
            }
            // Never delete through a scratch that is still mounted.
            if crate::scratch::is_mount_point(&dir.join("scratch")) {
                return Err(crate::scratch::ScratchError::Command {
                    command: "umount".into(),
                    detail: format!("{} is still mounted", dir.join("scratch").display()),
                });
            }
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(job_id, %error, "could not remove the job's /scratch")
            }
            Err(error) => tracing::error!(job_id, %error, "removing the job's files failed"),
        }
    }

    /// Fetches and verifies the job's inputs. On failure the job is reported `INPUT_FAILED`,
    /// its directory removed, and false returned.
    async fn inputs_ready(&self, manifest: &AssignmentManifest, input: &Path) -> bool {
        match fetch_inputs(&self.client, &self.node.node_id, manifest, input).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(job_id = %manifest.job_id, %error, "inputs failed");
                self.report(
                    &manifest.job_id,
                    "failed",
                    None,
                    Some("INPUT_FAILED"),
                    Some(error.to_string()),
                )
                .await;
                let _ = std::fs::remove_dir_all(self.job_dir(&manifest.job_id));
                false
            }
        }
    }

    /// Starts shipping the job's output: the container's log (after the saved cursor, when an
    /// earlier run of the agent shipped part of it), or the child's pipes.
    fn start_log_shipping(
        &self,
        job_id: &str,
        launched: &Launched,
        pieces: Option<mpsc::Receiver<LogPiece>>,
    ) -> (
        AbortOnDrop<()>,
        Option<AbortOnDrop<()>>,
        watch::Sender<bool>,
    ) {
        let job_dir = self.job_dir(job_id);
        let (source, pieces) = match (&self.runtime, launched, pieces) {
            (_, _, Some(pieces)) => (None, pieces),
            (Runtime::Docker(docker), Launched::Container(id), None) => {
                let (sender, receiver) = logs::channel();
                let docker = docker.clone();
                let id = id.clone();
                let after = logs::read_cursor(&job_dir);
                let job = job_id.to_string();
                let source = tokio::spawn(async move {
                    if let Err(error) = docker.follow_logs(&id, after, sender).await {
                        tracing::warn!(job_id = %job, %error, "following the container's log failed");
                    }
                });
                (Some(AbortOnDrop(source)), receiver)
            }
            // Nothing to follow: an empty, closed channel.
            _ => (None, logs::channel().1),
        };
        let (stop, stopping) = watch::channel(false);
        let shipper = Shipper {
            client: self.client.clone(),
            job_id: job_id.to_string(),
            node_id: self.node.node_id.clone(),
            job_dir,
        };
        (
            AbortOnDrop(tokio::spawn(shipper.run(pieces, stopping))),
            source,
            stop,
        )
    }

    /// Packs the job's `/output` and uploads it with its SHA-256, retrying while the platform
    /// is unreachable. A failure is logged; the final report goes out regardless.
    async fn upload_outputs(&self, job_id: &str) {
        let dir = self.job_dir(job_id);
        let (output, archive) = (dir.join("output"), dir.join(OUTPUT_ARCHIVE));
        let packed = match tokio::task::spawn_blocking(move || pack_output(&output, &archive)).await
        {
            Ok(Ok(packed)) => packed,
            Ok(Err(error)) => {
                tracing::error!(job_id, %error, "could not pack the job's /output; not uploaded");
                return;
            }
            Err(error) => {
                tracing::error!(job_id, %error, "packing the job's /output failed");
                return;
            }
        };
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=OUTPUT_UPLOAD_ATTEMPTS {
            match self
                .client
                .upload_output(job_id, &self.node.node_id, &packed.path, &packed.sha256)
                .await
            {
                Ok(stored) => {
                    tracing::info!(job_id, bytes = stored.size_bytes, sha256 = %stored.sha256, "outputs uploaded");
                    return;
                }
                Err(error) if error.is_transient() && attempt < OUTPUT_UPLOAD_ATTEMPTS => {
                    tracing::warn!(job_id, %error, retry_in = ?backoff, "output upload failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(error) => {
                    tracing::error!(job_id, %error, bytes = packed.size_bytes, "output upload failed; the job's outputs are lost");
                    return;
                }
            }
        }
    }

    async fn wait(&self, launched: &Launched) -> Exit {
        match (&self.runtime, launched) {
            (Runtime::Docker(docker), Launched::Container(id)) => {
                docker.wait(id).await.unwrap_or(Exit {
                    code: -1,
                    oom_killed: false,
                })
            }
            (_, Launched::Child(child)) => child.wait().await,
            _ => Exit {
                code: -1,
                oom_killed: false,
            },
        }
    }

    async fn kill(&self, launched: &Launched) {
        match (&self.runtime, launched) {
            (Runtime::Docker(docker), Launched::Container(id)) => {
                if let Err(error) = docker.kill(id).await {
                    tracing::error!(container = %id, %error, "could not kill a container");
                }
            }
            (_, Launched::Child(child)) => child.kill(),
            _ => {}
        }
    }

    async fn cleanup(&self, job_id: &str, launched: &Launched) {
        // The job's output went to the platform (see `logs`), not into the agent's own log.
        if let (Runtime::Docker(docker), Launched::Container(id)) = (&self.runtime, launched)
            && let Err(error) = docker.remove(id).await
        {
            tracing::warn!(container = %id, %error, "could not remove a container");
        }
        self.discard(job_id).await;
    }

    /// Sends the job's final telemetry packet (`final: true` with the exit code), retrying
    /// while the platform is unreachable: it ends the job and must not be lost. A platform
    /// without the telemetry route, or one that refuses the packet, gets the exit on the status
    /// route instead.
    async fn finish(
        &self,
        job_id: &str,
        exit: Exit,
        last: Option<&TelemetryPacket>,
        readings: &JobReadings,
    ) -> bool {
        let message = exit
            .oom_killed
            .then(|| "killed by the kernel at the memory cap (OOM)".to_string());
        let code = if exit.oom_killed && exit.code == 0 {
            137
        } else {
            exit.code
        };
        let mut packet = final_packet(job_id, &self.node.node_id, last, code);
        // The final reading is committed to as well (the same commitment on every retry).
        let mut pending = readings.commit(&mut packet);
        let mut backoff = Duration::from_millis(500);
        loop {
            match self
                .client
                .post_telemetry(&packet, FINAL_PACKET_TIMEOUT)
                .await
            {
                Ok(reply) => {
                    tracing::info!(job_id, exit_code = code, status = %reply.status, "final telemetry delivered");
                    if let Some(pending) = pending.take() {
                        readings.accept(pending, &reply);
                    }
                    return true;
                }
                Err(error) if error.is_route_missing() => {
                    self.report(job_id, "exited", Some(code), None, message)
                        .await;
                    return false;
                }
                Err(error) if error.is_fenced() => {
                    tracing::warn!(job_id, %error, "the platform had already ended this job");
                    // 409: it ended (e.g. cancelled by its customer); 404: not ours any more.
                    return error.status() == Some(409);
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(job_id, %error, retry_in = ?backoff, "final telemetry failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(error) => {
                    tracing::error!(job_id, %error, "final telemetry refused; reporting the exit on the status route");
                    self.report(job_id, "exited", Some(code), None, message)
                        .await;
                    return true;
                }
            }
        }
    }

    /// Watches a started job to its end: its output shipped as it comes, the telemetry
    /// watchdog (whose replies carry kill orders back, acted on at once), the duration
    /// watchdog; then the rest of the output, `/output` uploaded, and the final packet, in
    /// that order, so that a job the platform sees ended has all of its logs and outputs.
    async fn watch(
        self: Arc<Self>,
        job_id: String,
        launched: Launched,
        deadline_ms: i64,
        pieces: Option<mpsc::Receiver<LogPiece>>,
        telemetry: JobTelemetry,
    ) {
        let telemetry_gpu = telemetry.gpu_uuid.clone();
        let power_limit_mw = telemetry.power_limit_mw;
        let (mut shipping, log_source, stop_shipping) =
            self.start_log_shipping(&job_id, &launched, pieces);
        let launched = Arc::new(launched);
        let metrics = self.client.metrics().clone();
        metrics.containers_running.inc();
        let mut killed_by_platform = self.report(&job_id, "running", None, None, None).await;
        if killed_by_platform {
            self.kill(&launched).await;
        }
        let (fence_sender, mut fences) = mpsc::channel::<Fence>(1);
        let readings = JobReadings::persistent(
            &self.job_dir(&job_id),
            &job_id,
            self.config.renewable_pct,
            power_limit_mw,
        );
        // The platform's order that stopped the job, if any: provider faults get no proofs.
        let mut stopped_by: Option<Fence> = None;
        let watchdog = (!killed_by_platform).then(|| {
            Watchdog::spawn(
                self.client.clone(),
                self.coalescer.clone(),
                self.gpu.clone(),
                self.subject(&launched),
                WatchdogConfig {
                    job_id: job_id.clone(),
                    node_id: self.node.node_id.clone(),
                    interval: telemetry.interval,
                    net_sample_every: self.config.net_sample_interval,
                    gpu_uuid: telemetry.gpu_uuid,
                    align_offset_ms: self
                        .batching
                        .align
                        .then(|| node_offset_ms(&self.node.node_id)),
                    readings: Some(readings.clone()),
                    visibility: Some(self.responder.clone()),
                },
                fence_sender,
            )
        });
        let mut fences_open = watchdog.is_some();
        let mut waiter = {
            let agent = self.clone();
            let launched = launched.clone();
            AbortOnDrop(tokio::spawn(async move { agent.wait(&launched).await }))
        };
        let until_deadline =
            Duration::from_millis(u64::try_from(deadline_ms - now_ms()).unwrap_or(0));
        let deadline = tokio::time::sleep(until_deadline);
        tokio::pin!(deadline);
        let mut duration_exceeded = false;
        let scratch = Scratch::find(&self.job_dir(&job_id));
        let mut scratch_checks = tokio::time::interval(SCRATCH_CHECK_INTERVAL);
        scratch_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scratch_exceeded = false;
        let exit = loop {
            tokio::select! {
                exit = &mut waiter.0 => break exit.unwrap_or(Exit { code: -1, oom_killed: false }),
                _ = scratch_checks.tick(), if scratch.is_some() && !scratch_exceeded && !duration_exceeded => {
                    let Some(scratch) = scratch.clone() else { continue };
                    let cap_bytes = scratch.cap_bytes;
                    match tokio::task::spawn_blocking(move || scratch.usage_bytes()).await {
                        Ok(Ok(used)) if used >= cap_bytes => {
                            tracing::warn!(job_id, used, cap_bytes, "the job wrote past its /scratch size: killing");
                            scratch_exceeded = true;
                            self.kill(&launched).await;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => tracing::warn!(job_id, %error, "cannot measure the job's /scratch"),
                        Err(error) => tracing::warn!(job_id, %error, "measuring the job's /scratch failed"),
                    }
                }
                fence = fences.recv(), if fences_open => {
                    fences_open = false;
                    if let Some(fence) = fence {
                        tracing::warn!(job_id, ?fence, "the platform stopped this job: killing it now");
                        killed_by_platform = true;
                        stopped_by = Some(fence);
                        self.kill(&launched).await;
                    }
                }
                _ = &mut deadline, if !duration_exceeded => {
                    tracing::warn!(job_id, "duration exceeded (1.1 × declared): killing");
                    duration_exceeded = true;
                    self.kill(&launched).await;
                }
            }
        };
        if let Some(watchdog) = &watchdog {
            watchdog.exited();
        }
        metrics.containers_running.dec();
        metrics.ended(if duration_exceeded {
            Outcome::DurationExceeded
        } else if scratch_exceeded {
            Outcome::ScratchExceeded
        } else if killed_by_platform {
            Outcome::KilledByPlatform
        } else if exit.oom_killed {
            Outcome::OomKilled
        } else if exit.code == 0 {
            Outcome::Exited
        } else {
            Outcome::Failed
        });
        // The rest of the output: the container's log stream ends when it stops, a child's
        // pipes when it exits; a straggler (a grandchild holding a pipe) gets a grace period.
        if tokio::time::timeout(LOG_DRAIN_GRACE, &mut shipping.0)
            .await
            .is_err()
        {
            tracing::warn!(
                job_id,
                "the job's output did not close; shipping what there is"
            );
            drop(log_source);
            let _ = stop_shipping.send(true);
            if tokio::time::timeout(LOG_DRAIN_GRACE, &mut shipping.0)
                .await
                .is_err()
            {
                tracing::warn!(job_id, "shipping the job's last output timed out");
            }
        }
        // A fence that arrived after the exit (the job cancelled while its logs drained).
        if let Ok(fence) = fences.try_recv() {
            killed_by_platform = true;
            stopped_by = Some(fence);
        }
        if !killed_by_platform {
            self.upload_outputs(&job_id).await;
        }
        let end = match watchdog {
            Some(watchdog) => watchdog.stop().await,
            None => Default::default(),
        };
        killed_by_platform |= end.fenced;
        let prove = if duration_exceeded {
            self.report(&job_id, "failed", None, Some("DURATION_EXCEEDED"), None)
                .await;
            true
        } else if scratch_exceeded && !killed_by_platform {
            let message = scratch.as_ref().map(|scratch| {
                format!(
                    "the job wrote more than its /scratch allows ({} bytes, scratch_gb)",
                    scratch.cap_bytes
                )
            });
            self.report(&job_id, "failed", None, Some("SCRATCH_EXCEEDED"), message)
                .await;
            true
        } else if !killed_by_platform {
            self.finish(&job_id, exit, end.last.as_ref(), &readings)
                .await
        } else {
            stopped_by.as_ref().is_some_and(proofs_after)
        };
        tracing::info!(
            job_id,
            exit_code = exit.code,
            oom = exit.oom_killed,
            duration_exceeded,
            scratch_exceeded,
            killed_by_platform,
            "job ended"
        );
        self.cleanup(&job_id, &launched).await;
        if prove {
            let gpu = self.job_gpu_info(telemetry_gpu.as_deref()).await;
            let job = ProofJob {
                job_id: job_id.clone(),
                node_id: self.node.node_id.clone(),
                readings,
                gpu,
                power_limit_mw,
                key: self.key.clone(),
            };
            crate::proofs::submit_proofs(&self.client, job).await;
        } else {
            tracing::info!(job_id, "the job ended on the provider's side: no proofs");
        }
    }

    /// The inventory entry of the job's GPU (NVML is read on a blocking thread).
    async fn job_gpu_info(&self, uuid: Option<&str>) -> Option<GpuInfo> {
        let uuid = uuid?.to_string();
        let inventory = match &self.gpu {
            GpuTelemetry::Nvml(source) => {
                let source = source.clone();
                tokio::task::spawn_blocking(move || source.inventory())
                    .await
                    .ok()?
            }
            GpuTelemetry::Emulated(source) => source.inventory(),
            GpuTelemetry::Unavailable => return None,
        };
        inventory.gpus.into_iter().find(|gpu| gpu.uuid == uuid)
    }

    /// After a restart: networks and job directories (with their scratch) of this node whose
    /// container is gone — the agent stopped between making them and starting the job, or
    /// between the job's end and its cleanup — are removed. Nothing is left behind.
    async fn sweep_orphans(&self, found: &[crate::docker::Found]) {
        let live: std::collections::HashSet<&str> = found
            .iter()
            .map(|container| container.job_id.as_str())
            .collect();
        let mut orphans = std::collections::BTreeSet::new();
        if let Runtime::Docker(docker) = &self.runtime {
            match docker.job_networks(Some(&self.node.node_id)).await {
                Ok(networks) => orphans.extend(
                    networks
                        .into_iter()
                        .map(|(_, job)| job)
                        .filter(|job| !live.contains(job.as_str())),
                ),
                Err(error) => tracing::warn!(%error, "cannot list this node's job networks"),
            }
        }
        if let Ok(listing) = std::fs::read_dir(self.config.data_dir.join("jobs")) {
            orphans.extend(
                listing
                    .flatten()
                    .filter_map(|entry| entry.file_name().into_string().ok())
                    .filter(|job| !live.contains(job.as_str())),
            );
        }
        for job_id in orphans {
            tracing::info!(
                job_id,
                "removing what a job without a container left behind"
            );
            self.discard(&job_id).await;
        }
    }

    /// After a restart: every container of ours is either watched again or, if it ended while
    /// we were away, reported and removed. Nothing is left behind.
    async fn recover(self: Arc<Self>, jobs: &mut JoinSet<()>) {
        let Runtime::Docker(docker) = &self.runtime else {
            // A child process never outlives the agent: whatever a job left is an orphan.
            self.sweep_orphans(&[]).await;
            return;
        };
        let found = match docker.ours(&self.node.node_id).await {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "cannot list our containers for recovery");
                return;
            }
        };
        self.sweep_orphans(&found).await;
        for container in found {
            tracing::info!(job_id = %container.job_id, running = container.running, "recovering a container");
            let deadline_ms = container.deadline_ms.unwrap_or_else(now_ms);
            let gpu_uuid =
                self.job_gpu_uuid(container.gpu_uuid.as_deref(), container.gpu_id.as_deref());
            let telemetry = JobTelemetry {
                interval: Duration::from_secs(container.telemetry_interval_s),
                power_limit_mw: gpu_uuid
                    .as_ref()
                    .and_then(|uuid| self.power_limits.get(uuid).copied()),
                gpu_uuid,
            };
            jobs.spawn(self.clone().watch(
                container.job_id,
                Launched::Container(container.container_id),
                deadline_ms,
                None,
                telemetry,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_the_image_cannot_run_is_the_customers_and_the_rest_the_nodes() {
        let not_found = "docker engine: Docker responded with status code 400: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"python\": executable file not found in $PATH: unknown";
        assert_eq!(customer_start_failure(not_found), Some(127));
        let denied = "OCI runtime create failed: unable to start container process: exec: \"/run.sh\": permission denied: unknown";
        assert_eq!(customer_start_failure(denied), Some(126));
        for node in [
            "docker engine: Docker responded with status code 400: create ./gp4u-agent/jobs/j/input: \"./gp4u-agent/jobs/j/input\" includes invalid characters for a local volume name",
            "OCI runtime create failed: error setting rlimits for ready process: error setting rlimit type 7: operation not permitted",
            "could not select device driver \"nvidia\" with capabilities: [[gpu]]",
        ] {
            assert_eq!(customer_start_failure(node), None, "{node}");
        }
    }

    #[test]
    fn only_plain_driver_versions_are_declared() {
        assert_eq!(declared_driver(" 550.54.15 "), Some("550.54.15"));
        assert_eq!(declared_driver("emulated"), Some("emulated"));
        assert_eq!(declared_driver("unknown"), None);
        assert_eq!(declared_driver("550\n; rm -rf /"), None);
        assert_eq!(declared_driver(&"9".repeat(65)), None);
    }

    fn nvml_gpu(power_limit_watts: Option<f64>) -> GpuInfo {
        GpuInfo {
            index: 1,
            uuid: "GPU-aa121f36-df66-370d-0c60-f484b45b975e".into(),
            name: "NVIDIA H200 ".into(),
            vram_total_bytes: 150_754_820_096,
            driver_version: "580.159.04".into(),
            serial: None,
            power_limit_watts,
            pci_bus_id: None,
            emulated: false,
        }
    }

    #[test]
    fn every_gpu_is_registered_with_its_power_limit_or_not_at_all() {
        // NVML's enforced limit (H200: 700 W), to the milliwatt; the name as the platform
        // keeps it (trimmed).
        let body = registration_gpus(&[nvml_gpu(Some(699.999))], 2.5).unwrap();
        assert_eq!(body[0].power_limit_watts, 699.999);
        assert_eq!(body[0].name, "NVIDIA H200");
        // A GPU whose limit NVML cannot read is refused, saying what to check.
        let refused = registration_gpus(&[nvml_gpu(Some(700.0)), nvml_gpu(None)], 2.5)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("cannot read the enforced power limit of GPU 1")
                && refused.contains("GPU-aa121f36")
                && refused.contains("nvidia-smi -q -d POWER"),
            "{refused}"
        );
        let refused = registration_gpus(&[nvml_gpu(Some(2500.0))], 2.5)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("2500 W") && refused.contains("nvidia-smi -pl"),
            "{refused}"
        );
        // An emulated GPU: its declared limit (300 W by default), its name marked.
        let emulated = crate::gpu::EmulatedSource::new([
            EmulatedGpu::parse("emulated:RTX 4090:24").unwrap(),
            EmulatedGpu::parse("emulated:L4:24:72").unwrap(),
        ])
        .inventory()
        .gpus;
        let body = registration_gpus(&emulated, 1.0).unwrap();
        assert_eq!(
            (body[0].name.as_str(), body[0].power_limit_watts),
            ("RTX 4090 (emulated)", 300.0)
        );
        assert_eq!(body[1].power_limit_watts, 72.0);
        assert_eq!(body[1].vram_gb, 24.0);
    }

    #[test]
    fn proofs_follow_a_stop_unless_the_provider_was_at_fault() {
        let kill = |reason: Option<&str>| Fence::Kill {
            reason: reason.map(str::to_owned),
        };
        // Slashing rules: the provider's fault, no proofs.
        assert!(!proofs_after(&kill(Some("CRYPTO_MINING_DURING_ML_JOB"))));
        assert!(!proofs_after(&kill(Some("VRAM_OVERCLAIM"))));
        // The customer's workload, the duration, or no reason: proofs.
        assert!(proofs_after(&kill(Some("CRYPTO_MINING_PATTERN"))));
        assert!(proofs_after(&kill(Some("OUTBOUND_PORT_SCAN"))));
        assert!(proofs_after(&kill(Some("DURATION_EXCEEDED"))));
        assert!(proofs_after(&kill(None)));
        // Ended (409): proofs; no longer this node's (404): none.
        assert!(proofs_after(&Fence::Gone {
            status: 409,
            code: None
        }));
        assert!(!proofs_after(&Fence::Gone {
            status: 404,
            code: None
        }));
    }
}
