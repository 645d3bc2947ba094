//! The agent's main loop: register (once), recover containers after a restart, long-poll for
//! assignments, and run each job: pull by digest, start hardened, keep the platform informed,
//! enforce the duration, report how it ended.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gp4u_proto::{AgentStatusReport, AssignmentManifest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::client::{ClientError, PlatformClient};
use crate::docker::{DockerRuntime, Exit, GpuAttach, JobPaths, container_config};
use crate::files::{fetch_inputs, pack_output};
use crate::gpu::{EmulatedGpu, GpuInfo, GpuSource, NvmlSource};
use crate::logs::{self, LogPiece, Shipper};
use crate::process::{self, ChildJob};

/// After a job exits, how long its remaining output may take to reach the shipper.
const LOG_DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Upload attempts for a job's outputs while the platform is unreachable (about 4 minutes).
const OUTPUT_UPLOAD_ATTEMPTS: u32 = 10;
/// The packed `/output`, beside (not inside) the job's output dir.
const OUTPUT_ARCHIVE: &str = "output.tar.gz";

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
    /// How often a running job is reported (a keep-alive that also carries kill orders back).
    pub keepalive: Duration,
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
}

fn now_ms() -> i64 {
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

async fn register_or_load(
    config: &AgentConfig,
    client: &PlatformClient,
) -> Result<NodeState, AgentError> {
    let path = config.data_dir.join(NODE_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(state) = serde_json::from_str::<NodeState>(&text)
        && state.server == config.server
    {
        tracing::info!(node_id = %state.node_id, "resuming as a registered node");
        return Ok(state);
    }
    let key = crate::key::load_or_generate(&config.data_dir, rand::random::<[u8; 32]>)?;
    let (gpus, emulated) = discover_gpus(&config.emulated)?;
    let body = json!({
        "region": config.region,
        "public_key": crate::key::public_key_base64(&key),
        "gpus": gpus.iter().map(|gpu| json!({
            "name": if gpu.emulated { format!("{} (emulated)", gpu.name) } else { gpu.name.clone() },
            "vram_gb": gpu.vram_total_bytes as f64 / 1_073_741_824.0,
            "price_per_hour": config.price_per_hour,
            "uuid": gpu.uuid,
                    "emulated": gpu.emulated,
        })).collect::<Vec<_>>(),
    });
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
    };
    let text = serde_json::to_string_pretty(&state).unwrap_or_default();
    std::fs::write(&path, text).map_err(io_error(&path))?;
    tracing::info!(node_id = %state.node_id, gpus = state.gpus.len(), emulated, "registered the node");
    Ok(state)
}

/// Runs the agent until `shutdown` turns true. Jobs in flight keep running in their containers;
/// the next start of the agent picks them up.
pub async fn run(
    config: AgentConfig,
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
    let client = PlatformClient::new(&config.server, &config.token)?;
    let node = register_or_load(&config, &client).await?;
    let agent = Arc::new(Agent {
        config,
        client,
        runtime,
        node,
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
            _ = shutdown.changed() => return Ok(()),
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
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

impl Agent {
    fn job_dir(&self, job_id: &str) -> PathBuf {
        self.config.data_dir.join("jobs").join(job_id)
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
            if let Err(error) = std::fs::create_dir_all(path) {
                tracing::error!(job_id, path = %path.display(), %error, "cannot prepare the job's directories");
                self.report(
                    &job_id,
                    "exited",
                    Some(125),
                    None,
                    Some(format!(
                        "agent could not prepare {}: {error}",
                        path.display()
                    )),
                )
                .await;
                return;
            }
        }
        let launched = match &self.runtime {
            Runtime::Docker(docker) => {
                let reference = match docker
                    .pull(&manifest.docker_image, &manifest.docker_image_sha256)
                    .await
                {
                    Ok(reference) => reference,
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
                            self.report(
                                &job_id,
                                "exited",
                                Some(125),
                                None,
                                Some(error.to_string()),
                            )
                            .await;
                        }
                        return;
                    }
                };
                if !self.inputs_ready(&manifest, &input).await {
                    return;
                }
                let paths = JobPaths {
                    input: &input,
                    output: &output,
                };
                let config = container_config(
                    &manifest,
                    &reference,
                    &paths,
                    &self.gpu_attach(&manifest),
                    &self.node.node_id,
                    deadline_ms,
                );
                match docker
                    .create_and_start(config, &format!("gp4u-{job_id}"))
                    .await
                {
                    Ok(id) => (Launched::Container(id), None),
                    Err(error) => {
                        tracing::warn!(job_id, %error, "container did not start");
                        self.report(&job_id, "exited", Some(125), None, Some(error.to_string()))
                            .await;
                        return;
                    }
                }
            }
            Runtime::Process => {
                if !self.inputs_ready(&manifest, &input).await {
                    return;
                }
                let (sender, receiver) = logs::channel();
                match process::spawn(&manifest, &dir, &input, &output, sender) {
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
                        return;
                    }
                }
            }
        };
        let (launched, pieces) = launched;
        self.watch(job_id, launched, deadline_ms, pieces).await;
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
        let _ = std::fs::remove_dir_all(self.job_dir(job_id));
    }

    /// Watches a started job to its end: its output shipped as it comes, keep-alives (which
    /// carry kill orders back), the duration watchdog; then the rest of the output, `/output`
    /// uploaded, and the final report, in that order, so that a job the platform sees ended
    /// has all of its logs and outputs.
    async fn watch(
        self: Arc<Self>,
        job_id: String,
        launched: Launched,
        deadline_ms: i64,
        pieces: Option<mpsc::Receiver<LogPiece>>,
    ) {
        let (mut shipping, log_source, stop_shipping) =
            self.start_log_shipping(&job_id, &launched, pieces);
        let launched = Arc::new(launched);
        let mut killed_by_platform = self.report(&job_id, "running", None, None, None).await;
        if killed_by_platform {
            self.kill(&launched).await;
        }
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
        let exit = loop {
            tokio::select! {
                exit = &mut waiter.0 => break exit.unwrap_or(Exit { code: -1, oom_killed: false }),
                _ = tokio::time::sleep(self.config.keepalive), if !killed_by_platform => {
                    if self.report(&job_id, "running", None, None, None).await {
                        tracing::warn!(job_id, "the platform ordered this job killed");
                        killed_by_platform = true;
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
        if !killed_by_platform {
            self.upload_outputs(&job_id).await;
        }
        if duration_exceeded {
            self.report(&job_id, "failed", None, Some("DURATION_EXCEEDED"), None)
                .await;
        } else if !killed_by_platform {
            let message = exit
                .oom_killed
                .then(|| "killed by the kernel at the memory cap (OOM)".to_string());
            let code = if exit.oom_killed && exit.code == 0 {
                137
            } else {
                exit.code
            };
            self.report(&job_id, "exited", Some(code), None, message)
                .await;
        }
        tracing::info!(
            job_id,
            exit_code = exit.code,
            oom = exit.oom_killed,
            duration_exceeded,
            killed_by_platform,
            "job ended"
        );
        self.cleanup(&job_id, &launched).await;
    }

    /// After a restart: every container of ours is either watched again or, if it ended while
    /// we were away, reported and removed. Nothing is left behind.
    async fn recover(self: Arc<Self>, jobs: &mut JoinSet<()>) {
        let Runtime::Docker(docker) = &self.runtime else {
            return;
        };
        let found = match docker.ours(&self.node.node_id).await {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "cannot list our containers for recovery");
                return;
            }
        };
        for container in found {
            tracing::info!(job_id = %container.job_id, running = container.running, "recovering a container");
            let deadline_ms = container.deadline_ms.unwrap_or_else(now_ms);
            jobs.spawn(self.clone().watch(
                container.job_id,
                Launched::Container(container.container_id),
                deadline_ms,
                None,
            ));
        }
    }
}
