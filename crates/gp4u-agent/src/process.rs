//! `--runtime process`: the job's command as a plain child process, for machines without Docker.
//! Development only: there is no isolation beyond resource limits (`prlimit`), which is why the
//! agent refuses it unless started with `--allow-unisolated`, and says so loudly.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use gp4u_proto::AssignmentManifest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{Notify, mpsc, watch};

use crate::docker::Exit;
use crate::logs::LogPiece;

/// A job running as a child process.
#[derive(Debug, Clone)]
pub struct ChildJob {
    kill: Arc<Notify>,
    exit: watch::Receiver<Option<Exit>>,
    pid: Option<u32>,
}

impl ChildJob {
    /// The child's pid (the root of the job's process tree), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn kill(&self) {
        self.kill.notify_one();
    }

    pub async fn wait(&self) -> Exit {
        let mut exit = self.exit.clone();
        loop {
            if let Some(exit) = *exit.borrow() {
                return exit;
            }
            if exit.changed().await.is_err() {
                return Exit {
                    code: -1,
                    oom_killed: false,
                };
            }
        }
    }
}

/// Sends what `pipe` yields to `sink` until it closes.
async fn forward(mut pipe: impl AsyncRead + Unpin, sink: mpsc::Sender<LogPiece>) {
    let mut buffer = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                let piece = LogPiece {
                    bytes: buffer[..read].to_vec(),
                    timestamp_ns: None,
                };
                if sink.send(piece).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Where a child job's files are on the host.
#[derive(Debug, Clone, Copy)]
pub struct ProcessPaths<'a> {
    /// The job's directory: the working directory of the command.
    pub dir: &'a Path,
    pub input: &'a Path,
    pub output: &'a Path,
    pub scratch: &'a Path,
}

/// Starts the manifest's command in the job's directory with an address-space cap of the RAM
/// limit, at most 512 processes, and only the job's environment ([`crate::jobenv`], with the
/// host paths of its directories; plus PATH, and `GP4U_INPUT`/`GP4U_OUTPUT` as before). Its
/// stdout and stderr go to `logs`, which closes when both pipes have.
pub fn spawn(
    manifest: &AssignmentManifest,
    paths: &ProcessPaths<'_>,
    logs: mpsc::Sender<LogPiece>,
) -> std::io::Result<ChildJob> {
    let Some((program, args)) = manifest.command.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the process runtime needs a command",
        ));
    };
    let (input, output, scratch) = (
        paths.input.to_string_lossy(),
        paths.output.to_string_lossy(),
        paths.scratch.to_string_lossy(),
    );
    let dirs = crate::jobenv::JobDirs {
        input: &input,
        output: &output,
        scratch: &scratch,
    };
    let env = crate::jobenv::job_env(manifest, &dirs, None);
    let memory = (manifest.ram_limit_gb * 1024.0 * 1024.0 * 1024.0).round() as u64;
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--as={memory}"))
        .arg("--nproc=512")
        .arg("--")
        .arg(program)
        .args(args)
        .current_dir(paths.dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("GP4U_INPUT", paths.input)
        .env("GP4U_OUTPUT", paths.output)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child.id();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(stdout, logs.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(stderr, logs));
    }
    let kill = Arc::new(Notify::new());
    let (exit_tx, exit_rx) = watch::channel(None);
    let kill_signal = kill.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            _ = kill_signal.notified() => {
                let _ = child.kill().await;
                child.wait().await
            }
        };
        let code = match status {
            Ok(status) => status.code().unwrap_or_else(|| {
                // Killed by a signal: report it the way Docker does, 128 + signal.
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt;
                    status.signal().map_or(-1, |signal| 128 + signal)
                }
                #[cfg(not(unix))]
                {
                    -1
                }
            }),
            Err(_) => -1,
        };
        let _ = exit_tx.send(Some(Exit {
            code,
            oom_killed: false,
        }));
    });
    Ok(ChildJob {
        kill,
        exit: exit_rx,
        pid,
    })
}
