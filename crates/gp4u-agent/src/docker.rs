//! The Docker runtime: digest-pinned pulls and the seed's hardened container, via the Engine API.
//!
//! Hardening (seed stage 3b, SPEC §6), all in [`container_config`] so that it is one place to
//! read and to test: only the assigned GPU (a device request naming its UUID, when the host has
//! the NVIDIA runtime), a memory cap with swap off, pids limit 512, every capability dropped,
//! `no-new-privileges`, read-only root with a small tmpfs on /tmp, the bridge network, `/input`
//! read-only, `/output` read-write, the declared env only, and labels that let a restarted
//! agent find its containers.

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions,
};
use futures::StreamExt;
use gp4u_proto::AssignmentManifest;

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
}

/// The container the seed describes, for one manifest.
pub fn container_config(
    manifest: &AssignmentManifest,
    reference: &str,
    paths: &JobPaths<'_>,
    gpu: &GpuAttach,
    node_id: &str,
    deadline_ms: i64,
) -> ContainerCreateBody {
    let memory = (manifest.ram_limit_gb * 1024.0 * 1024.0 * 1024.0).round() as i64;
    let device_requests = match gpu {
        GpuAttach::Nvidia { uuid } => Some(vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: None,
            device_ids: Some(vec![uuid.clone()]),
            capabilities: Some(vec![vec!["gpu".into()]]),
            options: None,
        }]),
        GpuAttach::None => None,
    };
    let host_config = HostConfig {
        memory: Some(memory),
        // Equal to `memory`: no swap on top of the cap.
        memory_swap: Some(memory),
        memory_swappiness: Some(0),
        pids_limit: Some(PIDS_LIMIT),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_string(),
            TMPFS_SIZE.to_string(),
        )])),
        network_mode: Some("bridge".into()),
        binds: Some(vec![
            format!("{}:/input:ro", paths.input.display()),
            format!("{}:/output:rw", paths.output.display()),
        ]),
        device_requests,
        ..Default::default()
    };
    let env = manifest
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    ContainerCreateBody {
        image: Some(reference.to_string()),
        cmd: (!manifest.command.is_empty()).then(|| manifest.command.clone()),
        env: Some(env),
        labels: Some(labels(manifest, node_id, deadline_ms)),
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

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    nvidia: bool,
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
        Ok(DockerRuntime { docker, nvidia })
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
    fn the_container_is_hardened_as_the_seed_says() {
        let paths = JobPaths {
            input: Path::new("/d/in"),
            output: Path::new("/d/out"),
        };
        let config = container_config(
            &manifest(),
            "img@sha256:ab",
            &paths,
            &GpuAttach::None,
            "node_n",
            42,
        );
        let host = config.host_config.clone().unwrap();
        assert_eq!(host.memory, Some(536_870_912));
        assert_eq!(host.memory_swap, host.memory, "no swap above the cap");
        assert_eq!(host.pids_limit, Some(512));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert!(host.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(
            host.binds,
            Some(vec![
                "/d/in:/input:ro".to_string(),
                "/d/out:/output:rw".to_string()
            ])
        );
        assert_eq!(host.device_requests, None);
        assert_eq!(config.env, Some(vec!["EPOCHS=3".to_string()]));
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
    fn only_the_assigned_gpu_is_requested() {
        let paths = JobPaths {
            input: Path::new("/i"),
            output: Path::new("/o"),
        };
        let gpu = GpuAttach::Nvidia {
            uuid: "GPU-5e1c".into(),
        };
        let config = container_config(&manifest(), "img@sha256:ab", &paths, &gpu, "node_n", 0);
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
}
