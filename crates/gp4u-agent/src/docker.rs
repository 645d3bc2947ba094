//! The Docker runtime: digest-pinned pulls and the seed's hardened container, via the Engine API.
//!
//! Hardening (seed stage 3b, SPEC §6 and §10), all in [`container_config`] so that it is one
//! place to read and to test: only the assigned GPU (a device request naming its UUID, when the
//! host has the NVIDIA runtime, and `NVIDIA_VISIBLE_DEVICES` naming it alone), a memory cap with
//! swap off, `/dev/shm` of the job's `shm_gb` (counted in the cap), pids limit 512, a CPU quota,
//! the ulimits of SPEC §10, every capability dropped, `no-new-privileges`, the engine's default
//! seccomp profile, read-only root with a small tmpfs on /tmp, a network of the job's own (or
//! none), `/input` read-only, `/output` read-write, `/scratch` read-write with exec, the
//! declared env and the platform's variables only ([`crate::jobenv`]), and labels that let a
//! restarted agent find its containers and networks.

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, NetworkCreateRequest, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    ListNetworksOptions, RemoveContainerOptions,
};
use futures::StreamExt;
use gp4u_proto::AssignmentManifest;
use sha2::Digest as _;

/// Label carrying the job id: how a restarted agent finds its containers.
pub const JOB_LABEL: &str = "gp4u.job";
/// Label carrying the unix-ms deadline of the duration watchdog, so it survives restarts.
pub const DEADLINE_LABEL: &str = "gp4u.deadline-ms";
/// Label carrying the node id: a restarted agent recovers its own node's containers only, even
/// when several agents (nodes) share one Docker host.
pub const NODE_LABEL: &str = "gp4u.node";
/// Label carrying the manifest's telemetry interval (seconds): a restarted agent keeps the
/// job's cadence. Absent on older containers: [`DEFAULT_TELEMETRY_INTERVAL_S`].
pub const TELEMETRY_INTERVAL_LABEL: &str = "gp4u.telemetry-interval-s";
/// Label carrying the assigned GPU's UUID, for the watchdog's readings after a restart.
pub const GPU_UUID_LABEL: &str = "gp4u.gpu-uuid";
/// Label carrying the platform's id of the assigned GPU.
pub const GPU_ID_LABEL: &str = "gp4u.gpu-id";
/// The telemetry interval of a recovered container without the label.
pub const DEFAULT_TELEMETRY_INTERVAL_S: u64 = 10;
pub const PIDS_LIMIT: i64 = 512;
pub const TMPFS_SIZE: &str = "rw,noexec,nosuid,size=64m";

/// A job's ulimits (soft = hard); `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ulimits {
    pub nofile: Option<u64>,
    pub memlock: Option<u64>,
    pub stack: Option<u64>,
}

impl Ulimits {
    /// SPEC §10's (NVIDIA's recommendation for its PyTorch containers): open files 65536,
    /// locked memory unlimited (pinned host buffers), stack 64 MiB.
    pub const SPEC: Ulimits = Ulimits {
        nofile: Some(65_536),
        memlock: None,
        stack: Some(64 << 20),
    };

    /// What this host can give: SPEC's, where the agent can raise its own hard limit that far
    /// (it then has the privilege the engine needs too), else the agent's own hard limit (a
    /// container cannot get more than the engine's, and runc fails the start if asked). The
    /// second value names each limit lowered, for the log and the host posture.
    pub fn for_host() -> (Ulimits, Vec<String>) {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let mut lowered = Vec::new();
        let mut grant = |name: &str, resource: Resource, wanted: Option<u64>| -> Option<u64> {
            let own = getrlimit(resource);
            let fits = |maximum: Option<u64>| match (maximum, wanted) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(maximum), Some(wanted)) => maximum >= wanted,
            };
            if fits(own.maximum) {
                return wanted;
            }
            let raised = Rlimit {
                current: own.current,
                maximum: wanted,
            };
            if setrlimit(resource, raised).is_ok() {
                return wanted;
            }
            lowered.push(format!(
                "{name} {} (asked {})",
                own.maximum.map_or("unlimited".into(), |m| m.to_string()),
                wanted.map_or("unlimited".into(), |w| w.to_string())
            ));
            own.maximum
        };
        let ulimits = Ulimits {
            nofile: grant("nofile", Resource::Nofile, Self::SPEC.nofile),
            memlock: grant("memlock", Resource::Memlock, Self::SPEC.memlock),
            stack: grant("stack", Resource::Stack, Self::SPEC.stack),
        };
        (ulimits, lowered)
    }

    fn engine(self) -> Vec<ResourcesUlimits> {
        let entry = |name: &str, limit: Option<u64>| {
            let limit = limit.map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
            ResourcesUlimits {
                name: Some(name.to_string()),
                soft: Some(limit),
                hard: Some(limit),
            }
        };
        vec![
            entry("nofile", self.nofile),
            entry("memlock", self.memlock),
            entry("stack", self.stack),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("image reference refused: {0}")]
    RefusedReference(String),
    #[error("pulling {reference} failed: {reason}")]
    PullFailed { reference: String, reason: String },
    #[error("pulled {reference} but its repo digests {found:?} do not contain {expected}")]
    DigestMismatch {
        reference: String,
        expected: String,
        found: Vec<String>,
    },
    #[error("docker engine: {0}")]
    Engine(#[from] bollard::errors::Error),
}

impl DockerError {
    /// Whether the customer's image is at fault (`IMAGE_PULL_FAILED`).
    pub fn is_pull_failure(&self) -> bool {
        matches!(
            self,
            DockerError::RefusedReference(_)
                | DockerError::PullFailed { .. }
                | DockerError::DigestMismatch { .. }
        )
    }
}

/// `repo@sha256:<hex>` for a manifest; refuses a repository that already carries a digest and
/// a digest that is not 64 hex digits (a tag-only reference can never reach the engine).
pub fn pinned_reference(image: &str, sha256_hex: &str) -> Result<String, DockerError> {
    let hex = sha256_hex.strip_prefix("sha256:").unwrap_or(sha256_hex);
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(DockerError::RefusedReference(format!(
            "{image}: the digest must be sha256 with 64 hex digits; tag-only images are refused"
        )));
    }
    if image.is_empty() || image.contains('@') || image.chars().any(char::is_whitespace) {
        return Err(DockerError::RefusedReference(format!(
            "{image:?} is not a plain repository name"
        )));
    }
    // A tag next to a digest is ignored by the engine; drop it so that only the digest counts.
    let repository = match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    };
    Ok(format!("{repository}@sha256:{}", hex.to_ascii_lowercase()))
}

/// The Docker network of a `public` job.
pub fn network_name(job_id: &str) -> String {
    format!("gp4u-{job_id}")
}

/// The bridge interface of a job's network: [`crate::firewall::BRIDGE_PREFIX`] and 11 hex
/// digits of the job id's SHA-256 (an interface name has at most 15 characters), so that the
/// node's firewall rules match every job's bridge by wildcard.
pub fn bridge_name(job_id: &str) -> String {
    let digest = sha2::Sha256::digest(job_id.as_bytes());
    let hex = gp4u_core::hex::encode(&digest);
    format!("{}{}", crate::firewall::BRIDGE_PREFIX, &hex[..11])
}

/// The request that creates a job's network: a bridge of its own (no other container joins
/// it), inter-container traffic off, IPv4 only, NAT to the outside as usual, labelled so that
/// a restarted agent finds it.
pub fn network_config(job_id: &str, node_id: &str) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: network_name(job_id),
        driver: Some("bridge".into()),
        internal: Some(false),
        attachable: Some(false),
        enable_ipv6: Some(false),
        options: Some(HashMap::from([
            (
                "com.docker.network.bridge.name".to_string(),
                bridge_name(job_id),
            ),
            (
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string(),
            ),
            (
                "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                "true".to_string(),
            ),
        ])),
        labels: Some(HashMap::from([
            (JOB_LABEL.to_string(), job_id.to_string()),
            (NODE_LABEL.to_string(), node_id.to_string()),
        ])),
        ..Default::default()
    }
}

/// How the job gets its GPU.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuAttach {
    /// The host has the NVIDIA container runtime: request exactly this GPU.
    Nvidia { uuid: String },
    /// No NVIDIA runtime (or an emulated GPU): no device is passed.
    None,
}

/// Where the job's files live on the host.
#[derive(Debug, Clone)]
pub struct JobPaths<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    /// Mounted at `/scratch` ([`crate::scratch`]).
    pub scratch: &'a Path,
}

/// The network a job's container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobNetwork {
    /// Its own network ([`network_name`]), behind the node's egress filter.
    Own(String),
    /// No network: loopback only.
    None,
}

/// Everything besides the manifest that decides the container.
#[derive(Debug, Clone)]
pub struct ContainerPlan<'a> {
    /// `repo@sha256:…`.
    pub reference: &'a str,
    pub paths: JobPaths<'a>,
    pub gpu: &'a GpuAttach,
    pub network: &'a JobNetwork,
    pub node_id: &'a str,
    /// Unix ms when the duration watchdog kills the job.
    pub deadline_ms: i64,
    /// CPUs the job may use (its share of the node's cores).
    pub cpus: f64,
    /// DNS servers for the job (`--job-dns`); empty: Docker's (the host's resolvers).
    pub dns: &'a [String],
    /// [`Ulimits::for_host`].
    pub ulimits: Ulimits,
}

fn gigabytes(gb: f64) -> i64 {
    (gb * 1024.0 * 1024.0 * 1024.0).round() as i64
}

/// The container the seed and SPEC §10 describe, for one manifest.
pub fn container_config(
    manifest: &AssignmentManifest,
    plan: &ContainerPlan<'_>,
) -> ContainerCreateBody {
    let memory = gigabytes(manifest.ram_limit_gb);
    let (device_requests, nvidia_uuid) = match plan.gpu {
        GpuAttach::Nvidia { uuid } => (
            Some(vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count: None,
                device_ids: Some(vec![uuid.clone()]),
                capabilities: Some(vec![vec!["gpu".into()]]),
                options: None,
            }]),
            Some(uuid.as_str()),
        ),
        GpuAttach::None => (None, None),
    };
    let (network_mode, sysctls) = match plan.network {
        // The job's network is IPv4 only; its IPv6 stays off, so that no link-local address
        // reaches the host's bridge.
        JobNetwork::Own(name) => (
            name.clone(),
            Some(HashMap::from([(
                "net.ipv6.conf.all.disable_ipv6".to_string(),
                "1".to_string(),
            )])),
        ),
        JobNetwork::None => ("none".to_string(), None),
    };
    let host_config = HostConfig {
        memory: Some(memory),
        // Equal to `memory`: no swap on top of the cap.
        memory_swap: Some(memory),
        memory_swappiness: Some(0),
        // A tmpfs whose pages are charged to the container's memory cgroup: within the cap.
        shm_size: Some(gigabytes(manifest.shm_gb()).min(memory)),
        nano_cpus: Some((plan.cpus.max(0.01) * 1e9).round() as i64),
        pids_limit: Some(PIDS_LIMIT),
        ulimits: Some(plan.ulimits.engine()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_string(),
            TMPFS_SIZE.to_string(),
        )])),
        network_mode: Some(network_mode),
        sysctls,
        dns: (!plan.dns.is_empty()).then(|| plan.dns.to_vec()),
        binds: Some(vec![
            format!("{}:/input:ro", plan.paths.input.display()),
            format!("{}:/output:rw", plan.paths.output.display()),
            format!("{}:/scratch:rw", plan.paths.scratch.display()),
        ]),
        device_requests,
        ..Default::default()
    };
    let env = crate::jobenv::job_env(manifest, &crate::jobenv::CONTAINER_DIRS, nvidia_uuid)
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    ContainerCreateBody {
        image: Some(plan.reference.to_string()),
        cmd: (!manifest.command.is_empty()).then(|| manifest.command.clone()),
        env: Some(env),
        labels: Some(labels(manifest, plan.node_id, plan.deadline_ms)),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn labels(
    manifest: &AssignmentManifest,
    node_id: &str,
    deadline_ms: i64,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (JOB_LABEL.to_string(), manifest.job_id.clone()),
        (NODE_LABEL.to_string(), node_id.to_string()),
        (DEADLINE_LABEL.to_string(), deadline_ms.to_string()),
        (
            TELEMETRY_INTERVAL_LABEL.to_string(),
            manifest.telemetry_interval_seconds.to_string(),
        ),
        (GPU_ID_LABEL.to_string(), manifest.gpu_id.clone()),
    ]);
    if let Some(uuid) = &manifest.gpu_uuid {
        labels.insert(GPU_UUID_LABEL.to_string(), uuid.clone());
    }
    labels
}

/// A container of ours found on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub container_id: String,
    pub job_id: String,
    pub deadline_ms: Option<i64>,
    pub running: bool,
    /// The job's telemetry interval ([`DEFAULT_TELEMETRY_INTERVAL_S`] when unlabelled).
    pub telemetry_interval_s: u64,
    pub gpu_uuid: Option<String>,
    pub gpu_id: Option<String>,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub oom_killed: bool,
}

/// What the engine says of itself (`docker info`), for the host posture.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineFacts {
    pub version: Option<String>,
    /// `SecurityOptions`, e.g. `name=seccomp,profile=default`, `name=apparmor`,
    /// `name=selinux`, `name=userns`, `name=rootless`.
    pub security_options: Vec<String>,
    /// 1 or 2, when the engine says.
    pub cgroup_version: Option<u8>,
}

impl EngineFacts {
    /// Whether a security option of this name is on (`name=seccomp,…`).
    pub fn has(&self, name: &str) -> bool {
        self.security_options
            .iter()
            .any(|option| option.split(',').any(|part| part == format!("name={name}")))
    }
}

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    nvidia: bool,
    facts: EngineFacts,
}

impl DockerRuntime {
    /// Connects to the local engine and agrees on an API version it speaks.
    pub async fn connect() -> Result<DockerRuntime, DockerError> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        let info = docker.info().await?;
        let nvidia = info
            .runtimes
            .as_ref()
            .is_some_and(|runtimes| runtimes.contains_key("nvidia"));
        let facts = EngineFacts {
            version: info.server_version.clone(),
            security_options: info.security_options.clone().unwrap_or_default(),
            cgroup_version: info
                .cgroup_version
                .map(|version| version.to_string())
                .and_then(|version| version.trim().parse().ok()),
        };
        Ok(DockerRuntime {
            docker,
            nvidia,
            facts,
        })
    }

    /// What the engine says of itself.
    pub fn facts(&self) -> &EngineFacts {
        &self.facts
    }

    /// Whether the host can pass an NVIDIA GPU into a container.
    pub fn has_nvidia_runtime(&self) -> bool {
        self.nvidia
    }

    /// Pulls `image@sha256:…` and checks that the image's repo digests contain exactly it.
    pub async fn pull(&self, image: &str, sha256_hex: &str) -> Result<String, DockerError> {
        let reference = pinned_reference(image, sha256_hex)?;
        let options = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            if let Err(error) = step {
                return Err(DockerError::PullFailed {
                    reference,
                    reason: error.to_string(),
                });
            }
        }
        let inspected = self
            .docker
            .inspect_image(&reference)
            .await
            .map_err(|error| DockerError::PullFailed {
                reference: reference.clone(),
                reason: error.to_string(),
            })?;
        let found = inspected.repo_digests.unwrap_or_default();
        let (repository, digest) = reference
            .split_once('@')
            .unwrap_or((reference.as_str(), ""));
        let expected = format!("{repository}@{digest}");
        if !found.contains(&expected) {
            return Err(DockerError::DigestMismatch {
                reference,
                expected,
                found,
            });
        }
        Ok(reference)
    }

    pub async fn create_and_start(
        &self,
        config: ContainerCreateBody,
        name: &str,
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let created = self.docker.create_container(Some(options), config).await?;
        if let Err(error) = self
            .docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = self.remove(&created.id).await;
            return Err(error.into());
        }
        Ok(created.id)
    }

    /// Waits for the container to exit and reports how (an OOM kill at the cap is exit 137).
    pub async fn wait(&self, container_id: &str) -> Result<Exit, DockerError> {
        let mut waiting = self.docker.wait_container(
            container_id,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        // One item arrives when the container stops; bollard reports a non-zero exit as an
        // error, and the inspection below has the code either way.
        match waiting.next().await {
            Some(Ok(_))
            | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. }))
            | None => {}
            Some(Err(error)) => return Err(error.into()),
        }
        let inspected = self
            .docker
            .inspect_container(
                container_id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await?;
        let state = inspected.state.unwrap_or_default();
        Ok(Exit {
            code: i32::try_from(state.exit_code.unwrap_or(-1)).unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    /// Kills the container now (SIGKILL). Already stopped is fine.
    pub async fn kill(&self, container_id: &str) -> Result<(), DockerError> {
        let options = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        match self
            .docker
            .kill_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409 | 404,
                ..
            }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes the container (and its anonymous volumes); gone already is fine.
    pub async fn remove(&self, container_id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The containers of ours on this host, running or not.
    pub async fn ours(&self, node_id: &str) -> Result<Vec<Found>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![JOB_LABEL.to_string(), format!("{NODE_LABEL}={node_id}")],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let labels = container.labels.unwrap_or_default();
                Some(Found {
                    container_id: container.id?,
                    job_id: labels.get(JOB_LABEL)?.clone(),
                    deadline_ms: labels
                        .get(DEADLINE_LABEL)
                        .and_then(|value| value.parse().ok()),
                    running: container
                        .state
                        .is_some_and(|state| state.to_string() == "running"),
                    telemetry_interval_s: labels
                        .get(TELEMETRY_INTERVAL_LABEL)
                        .and_then(|value| value.parse().ok())
                        .unwrap_or(DEFAULT_TELEMETRY_INTERVAL_S),
                    gpu_uuid: labels.get(GPU_UUID_LABEL).cloned(),
                    gpu_id: labels.get(GPU_ID_LABEL).cloned(),
                })
            })
            .collect())
    }

    /// Creates the network of a `public` job ([`network_config`]); one that exists already
    /// (a retry, or an agent restarted in between) is reused.
    pub async fn create_job_network(
        &self,
        job_id: &str,
        node_id: &str,
    ) -> Result<String, DockerError> {
        let name = network_name(job_id);
        match self
            .docker
            .create_network(network_config(job_id, node_id))
            .await
        {
            Ok(_) => Ok(name),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(name),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes a job's network; gone already is fine.
    pub async fn remove_job_network(&self, job_id: &str) -> Result<(), DockerError> {
        match self.docker.remove_network(&network_name(job_id)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The job networks on this host, as (network name, job id): this node's, or every
    /// node's when `node_id` is `None`.
    pub async fn job_networks(
        &self,
        node_id: Option<&str>,
    ) -> Result<Vec<(String, String)>, DockerError> {
        let mut labels = vec![JOB_LABEL.to_string()];
        if let Some(node_id) = node_id {
            labels.push(format!("{NODE_LABEL}={node_id}"));
        }
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([("label".to_string(), labels)])),
        };
        let networks = self.docker.list_networks(Some(options)).await?;
        Ok(networks
            .into_iter()
            .filter_map(|network| {
                let job = network.labels.as_ref()?.get(JOB_LABEL)?.clone();
                Some((network.name?, job))
            })
            .collect())
    }

    /// What the engine records of a container, for a visibility answer: its id, the image it
    /// was created from, and `GP4U_JOB_ID` in its environment.
    pub async fn container_facts(
        &self,
        container_id: &str,
    ) -> Result<(String, String, Option<String>), DockerError> {
        let inspected = self
            .docker
            .inspect_container(
                container_id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await?;
        let config = inspected.config.unwrap_or_default();
        let job = config
            .env
            .unwrap_or_default()
            .into_iter()
            .find_map(|entry| entry.strip_prefix("GP4U_JOB_ID=").map(str::to_string));
        Ok((
            inspected.id.unwrap_or_else(|| container_id.to_string()),
            config.image.unwrap_or_default(),
            job,
        ))
    }

    /// The host pid of the container's init process; `None` when it is not running.
    pub async fn init_pid(&self, container_id: &str) -> Result<Option<u32>, DockerError> {
        let inspected = self
            .docker
            .inspect_container(
                container_id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await?;
        Ok(inspected
            .state
            .and_then(|state| state.pid)
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0))
    }

    /// The container's CPU time so far (nanoseconds), from one `docker stats` sample: the
    /// fallback where its cgroup files cannot be read.
    pub async fn cpu_usage_ns(&self, container_id: &str) -> Result<Option<u64>, DockerError> {
        let options = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stats = self.docker.stats(container_id, Some(options));
        match stats.next().await {
            Some(Ok(stats)) => Ok(stats
                .cpu_stats
                .and_then(|cpu| cpu.cpu_usage)
                .and_then(|usage| usage.total_usage)),
            Some(Err(error)) => Err(error.into()),
            None => Ok(None),
        }
    }

    /// The host pids of the container's processes (`docker top`): the fallback where its
    /// cgroup files cannot be read.
    pub async fn top_pids(
        &self,
        container_id: &str,
    ) -> Result<std::collections::HashSet<u32>, DockerError> {
        let top = self
            .docker
            .top_processes(container_id, None::<bollard::query_parameters::TopOptions>)
            .await?;
        let column = top
            .titles
            .unwrap_or_default()
            .iter()
            .position(|title| title == "PID");
        Ok(match column {
            Some(column) => top
                .processes
                .unwrap_or_default()
                .iter()
                .filter_map(|row| row.get(column)?.parse().ok())
                .collect(),
            None => std::collections::HashSet::new(),
        })
    }

    /// Follows the container's stdout and stderr (interleaved, as the engine stores them) into
    /// `sink` until the container stops: from the start, or after `after_ns` (a timestamp
    /// already shipped by an earlier run of the agent). Each piece carries its timestamp.
    pub async fn follow_logs(
        &self,
        container_id: &str,
        after_ns: Option<i128>,
        sink: tokio::sync::mpsc::Sender<crate::logs::LogPiece>,
    ) -> Result<(), DockerError> {
        let since = after_ns
            .map(|ns| i32::try_from(ns / 1_000_000_000).unwrap_or(i32::MAX))
            .unwrap_or(0);
        let options = bollard::query_parameters::LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            since,
            ..Default::default()
        };
        let mut stream = self.docker.logs(container_id, Some(options));
        while let Some(item) = stream.next().await {
            let output = item?;
            let (timestamp_ns, text) = crate::logs::split_timestamp(output.as_ref());
            if let (Some(at), Some(after)) = (timestamp_ns, after_ns)
                && at <= after
            {
                continue;
            }
            let piece = crate::logs::LogPiece {
                bytes: text.to_vec(),
                timestamp_ns,
            };
            if sink.send(piece).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn manifest() -> AssignmentManifest {
        AssignmentManifest {
            job_id: "job_abc".into(),
            docker_image: "127.0.0.1:5055/gp4u/busybox".into(),
            docker_image_sha256: "ab".repeat(32),
            gpu_id: "gpu_x".into(),
            gpu_uuid: Some("GPU-5e1c".into()),
            ram_limit_gb: 0.5,
            env: BTreeMap::from([("EPOCHS".to_string(), "3".to_string())]),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            inputs: vec![],
            input_sha256: BTreeMap::new(),
            expected_duration_hours: 0.1,
            kill_after_seconds: 396,
            telemetry_interval_seconds: 10,
            gpu_power_limit_watts: None,
            shm_gb: 0.0,
            scratch_gb: 20.0,
            network: "public".into(),
        }
    }

    fn plan<'a>(
        paths: JobPaths<'a>,
        gpu: &'a GpuAttach,
        network: &'a JobNetwork,
    ) -> ContainerPlan<'a> {
        ContainerPlan {
            reference: "img@sha256:ab",
            paths,
            gpu,
            network,
            node_id: "node_n",
            deadline_ms: 42,
            cpus: 1.5,
            dns: &[],
            ulimits: Ulimits::SPEC,
        }
    }

    fn paths() -> JobPaths<'static> {
        JobPaths {
            input: Path::new("/d/in"),
            output: Path::new("/d/out"),
            scratch: Path::new("/d/scratch"),
        }
    }

    #[test]
    fn references_are_digest_pinned_or_refused() {
        let hex = "AB".repeat(32);
        assert_eq!(
            pinned_reference("reg/org/img", &hex).unwrap(),
            format!("reg/org/img@sha256:{}", "ab".repeat(32))
        );
        assert_eq!(
            pinned_reference("reg:5000/img:v1", &format!("sha256:{hex}")).unwrap(),
            format!("reg:5000/img@sha256:{}", "ab".repeat(32))
        );
        assert_eq!(
            pinned_reference("reg:5000/img", &hex).unwrap(),
            format!("reg:5000/img@sha256:{}", "ab".repeat(32))
        );
        for (image, digest) in [
            ("img", ""),
            ("img", "latest"),
            ("img@sha256:00", &hex),
            ("img", &hex[..63]),
        ] {
            assert!(pinned_reference(image, digest).is_err(), "{image} {digest}");
        }
    }

    #[test]
    fn the_container_is_hardened_as_the_seed_and_spec_say() {
        let network = JobNetwork::Own(network_name("job_abc"));
        let config = container_config(&manifest(), &plan(paths(), &GpuAttach::None, &network));
        let host = config.host_config.clone().unwrap();
        assert_eq!(host.memory, Some(536_870_912));
        assert_eq!(host.memory_swap, host.memory, "no swap above the cap");
        // SPEC §10: /dev/shm defaults to half the memory cap.
        assert_eq!(host.shm_size, Some(268_435_456));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.pids_limit, Some(512));
        let ulimits: Vec<_> = host
            .ulimits
            .clone()
            .unwrap()
            .into_iter()
            .map(|u| (u.name.unwrap(), u.soft.unwrap(), u.hard.unwrap()))
            .collect();
        assert_eq!(
            ulimits,
            vec![
                ("nofile".to_string(), 65_536, 65_536),
                ("memlock".to_string(), -1, -1),
                ("stack".to_string(), 67_108_864, 67_108_864),
            ]
        );
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_string()]),
            "no seccomp override: the engine's default profile applies"
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(host.network_mode.as_deref(), Some("gp4u-job_abc"));
        assert_eq!(host.sysctls.unwrap()["net.ipv6.conf.all.disable_ipv6"], "1");
        assert_eq!(
            host.binds,
            Some(vec![
                "/d/in:/input:ro".to_string(),
                "/d/out:/output:rw".to_string(),
                "/d/scratch:/scratch:rw".to_string(),
            ])
        );
        assert_eq!(host.device_requests, None);
        assert_eq!(host.dns, None);
        let env = config.env.unwrap();
        for expected in [
            "EPOCHS=3",
            "HOME=/scratch/home",
            "TMPDIR=/scratch/tmp",
            "XDG_CACHE_HOME=/scratch/.cache",
            "GP4U_JOB_ID=job_abc",
            "GP4U_SCRATCH_DIR=/scratch",
            "NVIDIA_VISIBLE_DEVICES=void",
        ] {
            assert!(env.contains(&expected.to_string()), "{expected} in {env:?}");
        }
        let labels = config.labels.unwrap();
        assert_eq!(labels[JOB_LABEL], "job_abc");
        assert_eq!(labels[NODE_LABEL], "node_n");
        assert_eq!(labels[DEADLINE_LABEL], "42");
        assert_eq!(labels[TELEMETRY_INTERVAL_LABEL], "10");
        assert_eq!(labels[GPU_UUID_LABEL], "GPU-5e1c");
        assert_eq!(labels[GPU_ID_LABEL], "gpu_x");
        assert!(host.privileged.is_none() && host.cap_add.is_none());
    }

    #[test]
    fn shm_is_as_asked_within_the_memory_cap_and_no_network_means_none() {
        let mut asked = manifest();
        asked.shm_gb = 0.125;
        let config = container_config(&asked, &plan(paths(), &GpuAttach::None, &JobNetwork::None));
        let host = config.host_config.unwrap();
        assert_eq!(host.shm_size, Some(134_217_728));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.sysctls, None);
        let mut above = manifest();
        above.shm_gb = 4.0;
        let capped = container_config(&above, &plan(paths(), &GpuAttach::None, &JobNetwork::None));
        assert_eq!(capped.host_config.unwrap().shm_size, Some(536_870_912));
    }

    #[test]
    fn only_the_assigned_gpu_is_requested_and_visible() {
        let gpu = GpuAttach::Nvidia {
            uuid: "GPU-5e1c".into(),
        };
        let config = container_config(&manifest(), &plan(paths(), &gpu, &JobNetwork::None));
        assert!(
            config
                .env
                .unwrap()
                .contains(&"NVIDIA_VISIBLE_DEVICES=GPU-5e1c".to_string())
        );
        let requests = config.host_config.unwrap().device_requests.unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(requests[0].device_ids, Some(vec!["GPU-5e1c".to_string()]));
        assert_eq!(
            requests[0].count, None,
            "a count would ask for any GPUs, not this one"
        );
        assert_eq!(
            requests[0].capabilities,
            Some(vec![vec!["gpu".to_string()]])
        );
    }

    #[test]
    fn each_job_has_its_own_bridge_under_the_filtered_prefix() {
        let config = network_config("job_abc", "node_n");
        let options = config.options.unwrap();
        let bridge = &options["com.docker.network.bridge.name"];
        assert!(bridge.starts_with("gp4u") && bridge.len() == 15, "{bridge}");
        assert_eq!(bridge, &bridge_name("job_abc"));
        assert_ne!(bridge_name("job_abc"), bridge_name("job_abd"));
        assert_eq!(options["com.docker.network.bridge.enable_icc"], "false");
        assert_eq!(config.enable_ipv6, Some(false));
        assert_eq!(config.name, "gp4u-job_abc");
        assert_eq!(config.labels.unwrap()[JOB_LABEL], "job_abc");
    }
}
