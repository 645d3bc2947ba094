//! The Russian-Doll watchdog (SPEC §6, §7): one task per running job that, every
//! `telemetry_interval_seconds`, measures the job and posts a [`TelemetryPacket`] to
//! `POST /api/telemetry/russian-doll` (together with the node's other jobs' packets of the
//! period, as one array), and tells the job's watch loop at once when the platform wants the
//! job dead.
//!
//! Each packet has:
//! - the assigned GPU's reading ([`GpuTelemetry`]): NVML for real GPUs (utilization, VRAM
//!   used and total in GB of 2³⁰ bytes, as registration declares `vram_gb`, power,
//!   temperature, `throttling` when a throttle reason is active, and `foreign_gpu_processes`:
//!   compute processes on that GPU whose host pid is not one of the job's); for an emulated
//!   node the [`EmulatedSource`] fed with the job's CPU use (CPU-seconds over wall seconds,
//!   from its cgroup or process tree); with no readable GPU, zeros;
//! - the network of the container's own namespace ([`crate::netns`]): outbound bytes/s, unique
//!   destination IPs and ports over the period (omitted for `--runtime process`, which has no
//!   namespace of its own: outbound 0);
//! - `inferred_pattern` from [`gp4u_core::tutela::infer_pattern`] over the watchdog's window.
//!
//! When: the first packet goes out one interval after the watchdog starts, as it always did
//! (not postponed to a boundary: the agent's "running" report already told the platform the
//! job runs, and the first period's CPU reading covers a whole interval). After it the ticks are aligned to the
//! interval's wall-clock boundaries: unix time in ms a multiple of the interval plus the
//! node's constant offset ([`node_offset_ms`], under a second, the same for every interval),
//! the first such boundary at least three quarters of an interval after the previous tick
//! ([`next_boundary_ms`]; a tick that comes late skips to the next boundary). So all of a
//! node's jobs measure at the same moment, and jobs whose intervals are multiples of each
//! other meet on the common boundaries; different nodes tick at different moments. The gap
//! between ticks is kept on the monotonic clock; only the phase comes from the wall clock, so
//! a clock jump moves one tick, not the schedule. (Without alignment,
//! [`WatchdogConfig::align_offset_ms`] `None`, a tick follows the previous by one interval.)
//!
//! How: the packet goes to the node's [`Coalescer`] (one task of the agent, shared by every
//! watchdog), which waits a short window after the first packet of a batch (50 ms by default,
//! never more than a quarter of the interval) or until 64 packets, posts them as one JSON
//! array, and hands each watchdog the answer a single post of its packet would have had: its
//! reply, or its item's error as that refusal. A lone packet is posted as a plain object; a
//! platform that refuses arrays (400/404/405/422 on the whole request, or an answer that is
//! not one item per packet) gets each packet posted on its own, and no more arrays until the
//! agent restarts. The final packet (`final: true`, sent by the job's watch loop) does not go
//! through the coalescer: it is posted directly, as are the keep-alives of a platform without
//! the telemetry route.
//!
//! Replies: `kill_job: true`, 404 (not this node's job) and 409 (already ended: fenced) stop the
//! job now, through the fence channel (after the coalescing window at most: the reply is acted
//! on as soon as the array's answer comes); 429 skips the tick; 5xx and transport errors are
//! logged and the next tick posts again. Every request has a timeout shorter than the interval
//! (an array's: the shortest of its packets'), and the watchdog runs in its own task, so
//! nothing else of the agent can hold it up.
//!
//! After the container exits the watchdog keeps posting (GPU readings only, no network) while
//! the agent ships the last logs and uploads `/output`, so that a long upload does not look
//! like a dropped job; the job's watch loop then stops it and sends the final packet itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gp4u_core::tutela::{InferenceConfig, Pattern, TelemetrySample, infer_pattern};
use gp4u_proto::{AgentStatusReport, TelemetryPacket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cgroup::{self, CgroupFiles};
use crate::client::PlatformClient;
use crate::coalescer::Coalescer;
use crate::docker::DockerRuntime;
use crate::gpu::{BYTES_PER_GB, EmulatedSource, GpuReading, GpuSource, NvmlSource};
use crate::netns::{NetPeriod, NetSampler};
use crate::proofs::JobReadings;

/// The shortest interval the watchdog accepts (a manifest asking for 0 gets this).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Where the assigned GPU's readings come from.
#[derive(Clone)]
pub enum GpuTelemetry {
    /// Real GPUs through NVML.
    Nvml(Arc<NvmlSource>),
    /// Declared GPUs whose readings follow the job's CPU use.
    Emulated(Arc<EmulatedSource>),
    /// A real node whose GPUs cannot be read (no driver): zeros.
    Unavailable,
}

impl std::fmt::Debug for GpuTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuTelemetry::Nvml(_) => "Nvml",
            GpuTelemetry::Emulated(_) => "Emulated",
            GpuTelemetry::Unavailable => "Unavailable",
        })
    }
}

/// What runs the job.
#[derive(Clone)]
pub enum Subject {
    Container {
        docker: DockerRuntime,
        id: String,
    },
    /// `--runtime process`: the child's pid.
    Process {
        pid: Option<u32>,
    },
}

/// Why the platform stopped a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// `kill_job: true`, with the platform's reason.
    Kill { reason: Option<String> },
    /// 404 (the platform does not know the job on this node) or 409 (it already ended).
    Gone { status: u16, code: Option<String> },
}

/// The watchdog's settings for one job.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    pub job_id: String,
    pub node_id: String,
    pub interval: Duration,
    /// How often the socket tables are sampled between packets.
    pub net_sample_every: Duration,
    /// The assigned GPU (`None`: no readings, zeros).
    pub gpu_uuid: Option<String>,
    /// `Some(offset)`: after the first packet, tick on the interval's wall-clock boundaries
    /// (unix ms multiples of the interval) plus this many ms, as the node's other jobs do
    /// ([`node_offset_ms`]); `None`: every interval from the first packet.
    pub align_offset_ms: Option<i64>,
    /// Where the commitments to the job's power readings and their openings are kept
    /// ([`crate::proofs`]); `None`: packets carry no commitment.
    pub readings: Option<JobReadings>,
    /// Answers the visibility challenges that arrive in the job's replies; `None`: none.
    pub visibility: Option<Arc<crate::visibility::Responder>>,
}

/// The job's phase, as its watch loop tells the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// The container exited: keep posting GPU readings (a heartbeat) until stopped.
    Exited,
    Stop,
}

/// How the watchdog ended.
#[derive(Debug, Clone, Default)]
pub struct WatchdogEnd {
    /// The last packet the platform accepted.
    pub last: Option<TelemetryPacket>,
    /// The platform fenced the job (it must get no final packet).
    pub fenced: bool,
}

/// A running watchdog.
pub struct Watchdog {
    phase: watch::Sender<Phase>,
    task: Option<JoinHandle<WatchdogEnd>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Watchdog {
    /// Starts the watchdog of one job. Its first packet goes out one interval from now, the
    /// next ones on the interval's boundaries (when
    /// [`WatchdogConfig::align_offset_ms`] is set), through the node's `coalescer`. Fences
    /// arrive on `fence`.
    pub fn spawn(
        client: PlatformClient,
        coalescer: Coalescer,
        gpu: GpuTelemetry,
        subject: Subject,
        config: WatchdogConfig,
        fence: mpsc::Sender<Fence>,
    ) -> Watchdog {
        let (phase, phases) = watch::channel(Phase::Running);
        let task = tokio::spawn(run(client, coalescer, gpu, subject, config, fence, phases));
        Watchdog {
            phase,
            task: Some(task),
        }
    }

    /// The job's process ended: no more network or CPU sampling (its pid may be reused).
    pub fn exited(&self) {
        let _ = self.phase.send(Phase::Exited);
    }

    /// Stops the watchdog, letting a packet in flight finish (it has its own timeout).
    pub async fn stop(mut self) -> WatchdogEnd {
        let _ = self.phase.send(Phase::Stop);
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => WatchdogEnd::default(),
        }
    }
}

/// The HTTP timeout for an interval: three quarters of it, between 0.5 s and 30 s.
pub fn request_timeout(interval: Duration) -> Duration {
    (interval * 3 / 4).clamp(Duration::from_millis(500), Duration::from_secs(30))
}

/// One packet from its measurements. `reading` is `None` where no GPU could be read (zeros);
/// `net` is `None` where the job has no namespace of its own (outbound 0, IPs and ports
/// omitted).
pub fn build_packet(
    job_id: &str,
    node_id: &str,
    reading: Option<&GpuReading>,
    net: Option<&NetPeriod>,
    foreign_gpu_processes: Option<u32>,
    pattern: Option<Pattern>,
) -> TelemetryPacket {
    let gb = |bytes: u64| bytes as f64 / BYTES_PER_GB;
    TelemetryPacket {
        job_id: job_id.to_string(),
        node_id: node_id.to_string(),
        gpu_utilization_pct: reading.map_or(0.0, |r| r.utilization_pct),
        vram_used_gb: reading.map_or(0.0, |r| gb(r.vram_used_bytes)),
        vram_allocated_gb: reading.map_or(0.0, |r| gb(r.vram_total_bytes)),
        power_draw_watts: reading.and_then(|r| r.power_watts).unwrap_or(0.0),
        temperature_c: reading.and_then(|r| r.temperature_c).unwrap_or(0.0),
        outbound_bytes_per_sec: net.map_or(0.0, |n| n.outbound_bytes_per_sec),
        inferred_pattern: pattern.map(|p| p.as_str().to_string()),
        unique_dest_ips: net.map(|n| n.unique_dest_ips),
        foreign_gpu_processes,
        throttling: reading.map(|r| !r.throttle_reasons.is_empty()),
        dest_ports: net.map(|n| n.dest_ports.clone()),
        exit_code: None,
        is_final: None,
        power_commitment: None,
    }
}

/// The job's last packet: the last GPU figures the platform saw (zeros if none), no network
/// or per-period findings (they were reported already), the exit code, `final: true`.
pub fn final_packet(
    job_id: &str,
    node_id: &str,
    last: Option<&TelemetryPacket>,
    exit_code: i32,
) -> TelemetryPacket {
    let mut packet = last
        .cloned()
        .unwrap_or_else(|| build_packet(job_id, node_id, None, None, None, None));
    packet.job_id = job_id.to_string();
    packet.node_id = node_id.to_string();
    packet.outbound_bytes_per_sec = 0.0;
    packet.inferred_pattern = None;
    packet.unique_dest_ips = None;
    packet.dest_ports = None;
    packet.foreign_gpu_processes = None;
    packet.throttling = None;
    packet.exit_code = Some(exit_code);
    packet.is_final = Some(true);
    packet.power_commitment = None;
    packet
}

/// The sample the inference window keeps of a packet.
fn sample_of(packet: &TelemetryPacket, at_ms: i64) -> TelemetrySample {
    TelemetrySample {
        gpu_utilization_pct: packet.gpu_utilization_pct,
        vram_used_gb: packet.vram_used_gb,
        vram_allocated_gb: packet.vram_allocated_gb,
        power_draw_watts: packet.power_draw_watts,
        temperature_c: packet.temperature_c,
        outbound_bytes_per_sec: packet.outbound_bytes_per_sec,
        inferred_pattern: None,
        unique_dest_ips: packet.unique_dest_ips,
        foreign_gpu_processes: packet.foreign_gpu_processes,
        throttling: packet.throttling,
        dest_ports: packet.dest_ports.clone(),
        at_ms,
    }
}

/// The job's processes and CPU use, read each tick.
struct Probe {
    subject: Subject,
    /// The container's init pid or the child's pid, while it runs.
    pid: Option<u32>,
    cgroup: Option<CgroupFiles>,
    net: Option<NetSampler>,
    cpu_last: Option<(u64, Instant)>,
    /// Each thread's run-queue wait at the last reading (nanoseconds, by thread id).
    waits_last: HashMap<u32, u64>,
    warned: HashSet<&'static str>,
}

impl Probe {
    async fn start(subject: Subject, config: &WatchdogConfig) -> Probe {
        let job_id = config.job_id.as_str();
        let pid = match &subject {
            Subject::Container { docker, id } => match docker.init_pid(id).await {
                Ok(pid) => pid,
                Err(error) => {
                    tracing::warn!(job_id, %error, "cannot find the container's pid: no network or CPU telemetry");
                    None
                }
            },
            Subject::Process { pid } => *pid,
        };
        let mut probe = Probe {
            subject,
            pid,
            cgroup: None,
            net: None,
            cpu_last: None,
            waits_last: HashMap::new(),
            warned: HashSet::new(),
        };
        if let (Subject::Container { .. }, Some(pid)) = (&probe.subject, pid) {
            match NetSampler::start(pid, config.net_sample_every) {
                Ok(sampler) => probe.net = Some(sampler),
                // The container already ended (a short job): nothing to sample.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    tracing::debug!(
                        job_id,
                        pid,
                        "the container ended before its namespace was read"
                    )
                }
                Err(error) => {
                    tracing::warn!(job_id, pid, %error, "cannot read the container's network namespace")
                }
            }
            probe.cgroup = CgroupFiles::of_pid(pid).ok();
        }
        if let Some(ns) = probe.cpu_ns().await {
            probe.cpu_last = Some((ns, Instant::now()));
        }
        probe
    }

    fn warn_once(&mut self, what: &'static str, job_id: &str, message: &str) {
        if self.warned.insert(what) {
            tracing::warn!(job_id, "{message}");
        }
    }

    /// The process ended: forget its pid (it may be reused) and stop sampling.
    fn exited(&mut self) {
        self.pid = None;
        self.net = None;
        self.cpu_last = None;
        self.waits_last.clear();
    }

    /// The job's CPU time so far, nanoseconds.
    async fn cpu_ns(&self) -> Option<u64> {
        let pid = self.pid?;
        match &self.subject {
            Subject::Container { docker, id } => {
                if let Some(ns) = self.cgroup.as_ref().and_then(CgroupFiles::cpu_ns) {
                    return Some(ns);
                }
                docker.cpu_usage_ns(id).await.ok().flatten()
            }
            Subject::Process { .. } => cgroup::process_tree(pid).map(|(_, ns)| ns),
        }
    }

    /// CPU-seconds per wall second since the last call (`None` the first time or without
    /// a reading). With `count_waiting`, the seconds its threads spent waiting for a CPU count
    /// too: the job's demand, which a busy host does not lower (what an emulated GPU's
    /// utilization follows, so that a miner pinned at 100 % looks pinned on a loaded laptop).
    async fn cpu_fraction(&mut self, count_waiting: bool) -> Option<f64> {
        let ns = self.cpu_ns().await?;
        let waited = if count_waiting {
            let waits = match self.pids().await {
                Some(pids) => cgroup::run_queue_waits(&pids),
                None => HashMap::new(),
            };
            // Threads seen at both readings; a new one counts from its first reading.
            let waited: u64 = waits
                .iter()
                .filter_map(|(tid, now)| {
                    self.waits_last
                        .get(tid)
                        .map(|before| now.saturating_sub(*before))
                })
                .sum();
            self.waits_last = waits;
            waited
        } else {
            0
        };
        let now = Instant::now();
        let fraction = self.cpu_last.map(|(before, at)| {
            let wall = now.saturating_duration_since(at).as_nanos() as f64;
            if wall > 0.0 {
                ns.saturating_sub(before).saturating_add(waited) as f64 / wall
            } else {
                0.0
            }
        });
        self.cpu_last = Some((ns, now));
        fraction
    }

    /// The job's host pids, or `None` when they cannot be read.
    async fn pids(&self) -> Option<HashSet<u32>> {
        let pid = self.pid?;
        match &self.subject {
            Subject::Container { docker, id } => {
                if let Some(pids) = self
                    .cgroup
                    .as_ref()
                    .and_then(CgroupFiles::pids)
                    .filter(|pids| !pids.is_empty())
                {
                    return Some(pids);
                }
                docker
                    .top_pids(id)
                    .await
                    .ok()
                    .filter(|pids| !pids.is_empty())
            }
            Subject::Process { .. } => cgroup::process_tree(pid).map(|(pids, _)| pids),
        }
    }

    /// What the node sees of the job's container now, for a visibility answer.
    async fn evidence(&self) -> gp4u_proto::VisibilityEvidence {
        let init_started_ticks = self.pid.and_then(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|text| cgroup::parse_start_ticks(&text))
        });
        let (container_id, image, env_job_id) = match &self.subject {
            Subject::Container { docker, id } => match docker.container_facts(id).await {
                Ok(facts) => facts,
                Err(error) => {
                    tracing::warn!(container = %id, %error, "cannot inspect the container for a visibility answer");
                    (id.clone(), String::new(), None)
                }
            },
            Subject::Process { pid } => {
                let job = pid.and_then(|pid| {
                    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                    environ.split(|byte| *byte == 0).find_map(|entry| {
                        entry
                            .strip_prefix(b"GP4U_JOB_ID=")
                            .map(|value| String::from_utf8_lossy(value).into_owned())
                    })
                });
                (
                    format!("process:{}", pid.unwrap_or_default()),
                    String::new(),
                    job,
                )
            }
        };
        gp4u_proto::VisibilityEvidence {
            container_id,
            image,
            env_job_id,
            init_started_ticks,
            cpu_ns: self.cpu_ns().await,
            processes: self
                .pids()
                .await
                .map_or(0, |pids| u32::try_from(pids.len()).unwrap_or(u32::MAX)),
        }
    }

    fn network(&mut self, job_id: &str) -> Option<NetPeriod> {
        if !matches!(self.subject, Subject::Container { .. }) {
            return None;
        }
        let sampler = self.net.as_mut()?;
        match sampler.take_period() {
            Ok(period) => Some(period),
            Err(error) => {
                tracing::debug!(job_id, %error, "the container's namespace is gone");
                self.net = None;
                None
            }
        }
    }
}

/// Reads the assigned GPU (blocking NVML calls off the runtime's threads).
async fn read_gpu(
    gpu: &GpuTelemetry,
    uuid: Option<&str>,
    cpu_fraction: Option<f64>,
) -> Result<Option<GpuReading>, String> {
    let Some(uuid) = uuid else {
        return Ok(None);
    };
    match gpu {
        GpuTelemetry::Unavailable => Ok(None),
        GpuTelemetry::Emulated(source) => {
            source.set_cpu_fraction(uuid, cpu_fraction.unwrap_or(0.0));
            source.reading(uuid).map(Some).map_err(|e| e.to_string())
        }
        GpuTelemetry::Nvml(source) => {
            let (source, uuid) = (source.clone(), uuid.to_string());
            match tokio::task::spawn_blocking(move || source.reading(&uuid)).await {
                Ok(reading) => reading.map(Some).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            }
        }
    }
}

/// The wall-clock time (unix ms) of the next tick: the first boundary (a multiple of the
/// interval, plus `offset_ms`) at or after `earliest_ms`.
pub fn next_boundary_ms(earliest_ms: i64, interval: Duration, offset_ms: i64) -> i64 {
    let period = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let offset = offset_ms.rem_euclid(period);
    let base = earliest_ms - offset;
    let k = base.div_euclid(period) + i64::from(base.rem_euclid(period) != 0);
    k.saturating_mul(period).saturating_add(offset)
}

/// A node's constant offset from the interval boundaries, under one second (the same for all
/// intervals, so that a 3 s job's ticks fall on a 1 s job's): a node's jobs tick together,
/// different nodes at different moments.
pub fn node_offset_ms(node_id: &str) -> i64 {
    // FNV-1a: stable across runs and builds.
    let hash = node_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    i64::try_from(hash % 1000).unwrap_or(0)
}

/// When the tick after one at `last` goes: aligned, the first boundary at least three
/// quarters of an interval after `last` (and not in the past); otherwise one interval after.
fn next_tick(
    last: tokio::time::Instant,
    interval: Duration,
    offset_ms: Option<i64>,
) -> tokio::time::Instant {
    let Some(offset_ms) = offset_ms else {
        return last + interval;
    };
    let now = tokio::time::Instant::now();
    // The gap is kept on the monotonic clock; only the phase comes from the wall clock (so a
    // wall-clock jump moves one tick, not the schedule).
    let gap = (last + interval * 3 / 4).saturating_duration_since(now);
    let now_wall = crate::agent::now_ms();
    let earliest = now_wall.saturating_add(i64::try_from(gap.as_millis()).unwrap_or(i64::MAX));
    let target = next_boundary_ms(earliest, interval, offset_ms);
    now + Duration::from_millis(u64::try_from(target - now_wall).unwrap_or(0))
}

async fn run(
    client: PlatformClient,
    coalescer: Coalescer,
    gpu: GpuTelemetry,
    subject: Subject,
    config: WatchdogConfig,
    fence: mpsc::Sender<Fence>,
    mut phases: watch::Receiver<Phase>,
) -> WatchdogEnd {
    let job_id = config.job_id.clone();
    let interval = config.interval.max(MIN_INTERVAL);
    let timeout = request_timeout(interval);
    let started = tokio::time::Instant::now();
    let mut probe = Probe::start(subject, &config).await;
    let inference = InferenceConfig::default();
    let mut window: VecDeque<TelemetrySample> = VecDeque::new();
    let mut end = WatchdogEnd::default();
    let mut legacy = false;
    let mut due = started + interval;
    let mut phase = *phases.borrow();
    loop {
        if phase == Phase::Exited {
            probe.exited();
        }
        tokio::select! {
            changed = phases.changed() => {
                phase = if changed.is_ok() { *phases.borrow() } else { Phase::Stop };
                if phase == Phase::Stop {
                    return end;
                }
                continue;
            }
            _ = tokio::time::sleep_until(due) => {}
        }
        let ticked = tokio::time::Instant::now();
        if end.fenced {
            due = ticked + interval;
            continue; // told the watch loop; wait to be stopped
        }
        // Measure.
        let cpu_fraction = probe
            .cpu_fraction(matches!(gpu, GpuTelemetry::Emulated(_)))
            .await;
        let reading = match read_gpu(&gpu, config.gpu_uuid.as_deref(), cpu_fraction).await {
            Ok(reading) => reading,
            Err(error) => {
                probe.warn_once(
                    "gpu",
                    &job_id,
                    &format!("cannot read the assigned GPU ({error}): reporting zeros"),
                );
                None
            }
        };
        let foreign = match (&gpu, &reading) {
            (GpuTelemetry::Nvml(_), Some(reading)) => {
                if reading.compute_processes.is_empty() {
                    Some(0)
                } else {
                    probe.pids().await.map(|ours| {
                        let foreign = reading
                            .compute_processes
                            .iter()
                            .filter(|process| !ours.contains(&process.pid))
                            .count();
                        u32::try_from(foreign).unwrap_or(u32::MAX)
                    })
                }
            }
            _ => None,
        };
        let net = probe.network(&job_id);
        let mut packet = build_packet(
            &job_id,
            &config.node_id,
            reading.as_ref(),
            net.as_ref(),
            foreign,
            None,
        );
        window.push_back(sample_of(&packet, crate::agent::now_ms()));
        while window.len() > inference.max_window_samples.max(1) {
            window.pop_front();
        }
        let pattern = infer_pattern(window.make_contiguous(), &inference);
        packet.inferred_pattern = Some(pattern.as_str().to_string());
        // Commit to the reading (the opening is kept only if the packet is accepted).
        let pending = match (&config.readings, legacy) {
            (Some(readings), false) => readings.commit(&mut packet),
            _ => None,
        };
        // Post.
        let verdict = if legacy {
            legacy_keepalive(&client, &config).await
        } else {
            match coalescer.post(packet.clone(), timeout, interval).await {
                Ok(reply) => {
                    if let (Some(readings), Some(pending)) = (&config.readings, pending) {
                        readings.accept(pending, &reply);
                    }
                    if let (Some(responder), Some(challenge)) =
                        (&config.visibility, reply.challenge.clone())
                        && responder.accepts(&job_id, &challenge)
                    {
                        let evidence = probe.evidence().await;
                        let (client, responder) = (client.clone(), responder.clone());
                        tokio::spawn(async move {
                            responder.answer(&client, &challenge, evidence).await;
                        });
                    }
                    end.last = Some(packet);
                    reply.kill_job.then_some(Fence::Kill {
                        reason: reply.reason,
                    })
                }
                Err(error) if error.is_route_missing() => {
                    tracing::warn!(
                        job_id,
                        "the platform has no telemetry route (an older server): keeping the job alive with status reports"
                    );
                    legacy = true;
                    legacy_keepalive(&client, &config).await
                }
                Err(error) if error.is_fenced() => Some(Fence::Gone {
                    status: error.status().unwrap_or(404),
                    code: error.code().map(str::to_string),
                }),
                Err(error) if error.is_rate_limited() => {
                    tracing::debug!(job_id, "telemetry rate-limited: skipping this tick");
                    None
                }
                Err(error) => {
                    tracing::warn!(job_id, %error, "telemetry not delivered; the next tick posts again");
                    None
                }
            }
        };
        if let Some(verdict) = verdict {
            tracing::warn!(job_id, fence = ?verdict, "the platform stopped this job");
            end.fenced = true;
            let _ = fence.try_send(verdict);
        }
        due = next_tick(ticked, interval, config.align_offset_ms);
    }
}

/// The keep-alive of a platform without the telemetry route: the "running" status report,
/// whose reply carries kill orders.
async fn legacy_keepalive(client: &PlatformClient, config: &WatchdogConfig) -> Option<Fence> {
    let report = AgentStatusReport {
        node_id: config.node_id.clone(),
        status: "running".into(),
        exit_code: None,
        reason: None,
        message: None,
    };
    match client.report(&config.job_id, &report).await {
        Ok(reply) => reply.kill.then_some(Fence::Kill { reason: None }),
        Err(error) if error.is_fenced() => Some(Fence::Gone {
            status: error.status().unwrap_or(404),
            code: error.code().map(str::to_string),
        }),
        Err(error) => {
            tracing::warn!(job_id = %config.job_id, %error, "keep-alive not delivered");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gpu::GpuProcess;

    fn reading() -> GpuReading {
        GpuReading {
            uuid: "GPU-1".into(),
            utilization_pct: 87.0,
            memory_utilization_pct: Some(40.0),
            vram_used_bytes: 20 << 30,
            vram_total_bytes: 141 << 30,
            power_watts: Some(512.5),
            temperature_c: None,
            throttle_reasons: vec!["SW_POWER_CAP".into()],
            compute_processes: vec![GpuProcess {
                pid: 7,
                used_memory_bytes: None,
            }],
            emulated: false,
        }
    }

    #[test]
    fn packets_use_the_registration_gb_and_zero_what_is_missing() {
        let net = NetPeriod {
            outbound_bytes_per_sec: 1234.5,
            unique_dest_ips: 3,
            dest_ports: vec![3333, 443],
        };
        let packet = build_packet(
            "job_a",
            "node_b",
            Some(&reading()),
            Some(&net),
            Some(1),
            Some(Pattern::Training),
        );
        assert_eq!(
            (packet.job_id.as_str(), packet.node_id.as_str()),
            ("job_a", "node_b")
        );
        assert_eq!(packet.gpu_utilization_pct, 87.0);
        assert_eq!(packet.vram_used_gb, 20.0);
        assert_eq!(packet.vram_allocated_gb, 141.0);
        assert_eq!(packet.power_draw_watts, 512.5);
        assert_eq!(packet.temperature_c, 0.0, "None → 0");
        assert_eq!(packet.throttling, Some(true));
        assert_eq!(packet.outbound_bytes_per_sec, 1234.5);
        assert_eq!(packet.unique_dest_ips, Some(3));
        assert_eq!(packet.dest_ports, Some(vec![3333, 443]));
        assert_eq!(packet.foreign_gpu_processes, Some(1));
        assert_eq!(packet.inferred_pattern.as_deref(), Some("TRAINING"));
        assert_eq!((packet.exit_code, packet.is_final), (None, None));
        let json = serde_json::to_value(&packet).unwrap();
        assert!(json.get("final").is_none() && json.get("exit_code").is_none());

        // No GPU, no namespace: zeros, and the optional fields are omitted.
        let bare = build_packet("job_a", "node_b", None, None, None, None);
        assert_eq!(
            (
                bare.gpu_utilization_pct,
                bare.vram_used_gb,
                bare.vram_allocated_gb,
                bare.power_draw_watts,
                bare.temperature_c,
                bare.outbound_bytes_per_sec
            ),
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        );
        let json = serde_json::to_value(&bare).unwrap();
        for omitted in [
            "unique_dest_ips",
            "dest_ports",
            "throttling",
            "foreign_gpu_processes",
        ] {
            assert!(json.get(omitted).is_none(), "{omitted}: {json}");
        }
    }

    #[test]
    fn the_final_packet_carries_the_exit_code() {
        let last = build_packet(
            "job_a",
            "node_b",
            Some(&reading()),
            Some(&NetPeriod {
                outbound_bytes_per_sec: 9.0,
                unique_dest_ips: 60,
                dest_ports: vec![1],
            }),
            Some(2),
            Some(Pattern::CryptoMining),
        );
        let packet = final_packet("job_a", "node_b", Some(&last), 3);
        assert_eq!(packet.exit_code, Some(3));
        assert_eq!(packet.is_final, Some(true));
        assert_eq!(packet.vram_allocated_gb, 141.0);
        assert_eq!(packet.outbound_bytes_per_sec, 0.0);
        assert_eq!(packet.unique_dest_ips, None);
        assert_eq!(packet.inferred_pattern, None);
        let json = serde_json::to_value(&packet).unwrap();
        assert_eq!(json["final"], true);
        assert_eq!(json["exit_code"], 3);
        let fresh = final_packet("job_a", "node_b", None, 0);
        assert_eq!((fresh.exit_code, fresh.gpu_utilization_pct), (Some(0), 0.0));
    }

    #[test]
    fn ticks_fall_on_the_interval_boundaries_plus_the_node_offset() {
        let second = Duration::from_secs(1);
        assert_eq!(next_boundary_ms(10_000, second, 0), 10_000);
        assert_eq!(next_boundary_ms(10_001, second, 0), 11_000);
        assert_eq!(next_boundary_ms(10_001, second, 250), 10_250);
        assert_eq!(next_boundary_ms(10_250, second, 250), 10_250);
        assert_eq!(next_boundary_ms(10_251, second, 1250), 11_250);
        let three = Duration::from_secs(3);
        assert_eq!(next_boundary_ms(10_001, three, 0), 12_000);
        assert_eq!(next_boundary_ms(10_001, three, 400), 12_400);
        // A 3 s job's boundaries are among a 1 s job's (same node offset).
        let offset = node_offset_ms("node_abc");
        assert!((0..1000).contains(&offset));
        assert_eq!(offset, node_offset_ms("node_abc"));
        let slow = next_boundary_ms(1_700_000_000_123, three, offset);
        assert_eq!(next_boundary_ms(slow, second, offset), slow);
        assert_eq!((slow - offset) % 3000, 0);
    }

    #[test]
    fn timeouts_stay_under_the_interval() {
        assert_eq!(
            request_timeout(Duration::from_secs(10)),
            Duration::from_millis(7500)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(1)),
            Duration::from_millis(750)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(600)),
            Duration::from_secs(30)
        );
    }
}
