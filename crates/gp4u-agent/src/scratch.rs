//! A job's `/scratch` (SPEC §10): read-write, exec allowed, not delivered, deleted after the
//! job, at most `scratch_gb`.
//!
//! Two ways to hold it to its size, chosen once at the agent's start ([`QuotaMode::detect`])
//! and reported in the host posture:
//! - [`QuotaMode::Loop`]: an ext4 filesystem in a sparse image file in the job's directory,
//!   loop-mounted (`nosuid,nodev`) on the scratch directory. The kernel refuses writes past
//!   the image's size (a hard cap: a runaway job cannot fill the provider's disk), and the
//!   usage is one `statvfs`. Needs root, `mkfs.ext4` and loop devices.
//! - [`QuotaMode::Watched`]: a plain directory whose allocated size the watchdog adds up every
//!   sample. The cap is judged, not enforced: a job can overshoot by what it writes between
//!   two samples before it is killed.
//!
//! Either way the watchdog kills a job whose usage passes its cap and the job fails
//! `SCRATCH_EXCEEDED` (the customer's workload). A `scratch.json` beside the mount point
//! records how it was made, so that a restarted agent measures and removes it the same way.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The directories made in every scratch, each world-writable with the sticky bit (like
/// `/tmp`), so that an image's non-root user can use them: `HOME`, `TMPDIR`, `XDG_CACHE_HOME`.
pub const SUBDIRS: [&str; 3] = ["home", "tmp", ".cache"];
/// The record of how a scratch was made, in the job's directory.
const RECORD_FILE: &str = "scratch.json";
/// The image file of a loop-mounted scratch, in the job's directory.
const IMAGE_FILE: &str = "scratch.img";
/// Room added to a loop image beyond the cap for ext4's own metadata (inode tables, bitmaps),
/// so that the job gets at least its cap: 3 % and 64 MiB.
const IMAGE_SLACK_PERCENT: u64 = 3;
const IMAGE_SLACK_BYTES: u64 = 64 << 20;
/// Files counted per sample in watched mode before the walk gives up (the usage is then a
/// lower bound): a job with millions of small files must not stall the watchdog.
const MAX_WALK_ENTRIES: usize = 1_000_000;

/// How scratch sizes are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaMode {
    /// A loop-mounted ext4 image of the cap's size: enforced by the kernel.
    Loop,
    /// A plain directory, measured by the watchdog: judged.
    Watched,
}

impl QuotaMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            QuotaMode::Loop => "loop",
            QuotaMode::Watched => "watched",
        }
    }

    /// `Loop` when a small image can be made and mounted under `data_dir` right now (root,
    /// `mkfs.ext4`, `mount`, loop devices), else `Watched` with the reason.
    pub fn detect(data_dir: &Path) -> (QuotaMode, Option<String>) {
        let probe = data_dir.join(".scratch-probe");
        let _ = remove_dir(&probe);
        let result = (|| -> Result<(), ScratchError> {
            std::fs::create_dir_all(&probe).map_err(io(&probe))?;
            let made = make_loop(&probe, 16 << 20)?;
            let usage = made.usage_bytes();
            made.remove()?;
            usage.map(|_| ())
        })();
        let _ = remove_dir(&probe);
        match result {
            Ok(()) => (QuotaMode::Loop, None),
            Err(error) => (QuotaMode::Watched, Some(error.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScratchError + '_ {
    move |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), ScratchError> {
    let command = format!("{program} {}", args.join(" "));
    let output =
        Command::new(program)
            .args(args)
            .output()
            .map_err(|error| ScratchError::Command {
                command: command.clone(),
                detail: error.to_string(),
            })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ScratchError::Command {
        command,
        detail: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// What `scratch.json` keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    mode: QuotaMode,
    cap_bytes: u64,
    /// Bytes the empty filesystem already used (loop mode): not the job's.
    baseline_bytes: u64,
}

/// A job's scratch on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Scratch {
    /// The directory mounted at `/scratch`.
    pub path: PathBuf,
    pub mode: QuotaMode,
    /// The job's `scratch_gb` in bytes.
    pub cap_bytes: u64,
    baseline_bytes: u64,
    /// The job's directory (holds the record and, in loop mode, the image).
    job_dir: PathBuf,
}

/// `scratch_gb` in bytes (at least 1 MiB).
pub fn cap_bytes(scratch_gb: f64) -> u64 {
    let bytes = (scratch_gb * 1_073_741_824.0).round();
    if bytes.is_finite() && bytes >= 1_048_576.0 {
        bytes as u64
    } else {
        1_048_576
    }
}

fn make_loop(job_dir: &Path, cap_bytes: u64) -> Result<Scratch, ScratchError> {
    let path = job_dir.join("scratch");
    let image = job_dir.join(IMAGE_FILE);
    std::fs::create_dir_all(&path).map_err(io(&path))?;
    let size = cap_bytes + cap_bytes / 100 * IMAGE_SLACK_PERCENT + IMAGE_SLACK_BYTES;
    let file = std::fs::File::create(&image).map_err(io(&image))?;
    file.set_len(size).map_err(io(&image))?;
    drop(file);
    let image_text = image.to_string_lossy().into_owned();
    let path_text = path.to_string_lossy().into_owned();
    // No journal (scratch does not outlive a crash of the job), lazy inode tables (fast for
    // large sizes), no blocks reserved for root, one inode per 64 KiB.
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-m",
            "0",
            "-i",
            "65536",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,nodiscard",
            &image_text,
        ],
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_file(&image);
    })?;
    if let Err(error) = run(
        "mount",
        &["-o", "loop,nosuid,nodev", &image_text, &path_text],
    ) {
        let _ = std::fs::remove_file(&image);
        return Err(error);
    }
    let mut scratch = Scratch {
        path,
        mode: QuotaMode::Loop,
        cap_bytes,
        baseline_bytes: 0,
        job_dir: job_dir.to_path_buf(),
    };
    // ext4's own files (lost+found) and metadata are not the job's.
    scratch.baseline_bytes = match filesystem_used(&scratch.path) {
        Ok(used) => used,
        Err(error) => {
            let _ = scratch.remove();
            return Err(error);
        }
    };
    Ok(scratch)
}

fn filesystem_used(path: &Path) -> Result<u64, ScratchError> {
    let stat = rustix::fs::statvfs(path).map_err(|errno| ScratchError::Io {
        path: path.to_path_buf(),
        source: errno.into(),
    })?;
    Ok(stat
        .f_blocks
        .saturating_sub(stat.f_bfree)
        .saturating_mul(stat.f_frsize))
}

/// Bytes allocated under `root`, hard links counted once, symlinks not followed; stops
/// counting after [`MAX_WALK_ENTRIES`] entries.
fn tree_allocated(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut seen_links = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    let mut entries = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            entries += 1;
            if entries > MAX_WALK_ENTRIES {
                return total;
            }
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.nlink() > 1
                && !metadata.is_dir()
                && !seen_links.insert((metadata.dev(), metadata.ino()))
            {
                continue;
            }
            total = total.saturating_add(metadata.blocks().saturating_mul(512));
            if metadata.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

fn remove_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(inner), Some(Ok(outer))) = (
        std::fs::symlink_metadata(path),
        path.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    inner.dev() != outer.dev()
}

impl Scratch {
    /// Makes the scratch of a job in `job_dir` (its `scratch` subdirectory), capped at
    /// `cap_bytes`, with [`SUBDIRS`] inside; records how.
    pub fn create(
        job_dir: &Path,
        cap_bytes: u64,
        mode: QuotaMode,
    ) -> Result<Scratch, ScratchError> {
        let scratch = match mode {
            QuotaMode::Loop => make_loop(job_dir, cap_bytes)?,
            QuotaMode::Watched => {
                let path = job_dir.join("scratch");
                std::fs::create_dir_all(&path).map_err(io(&path))?;
                Scratch {
                    path,
                    mode,
                    cap_bytes,
                    baseline_bytes: 0,
                    job_dir: job_dir.to_path_buf(),
                }
            }
        };
        let prepared = (|| {
            for dir in std::iter::once(scratch.path.clone())
                .chain(SUBDIRS.iter().map(|name| scratch.path.join(name)))
            {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
                    .map_err(io(&dir))?;
            }
            scratch.save()
        })();
        if let Err(error) = prepared {
            let _ = scratch.remove();
            return Err(error);
        }
        Ok(scratch)
    }

    fn save(&self) -> Result<(), ScratchError> {
        let path = self.job_dir.join(RECORD_FILE);
        let record = Record {
            mode: self.mode,
            cap_bytes: self.cap_bytes,
            baseline_bytes: self.baseline_bytes,
        };
        let text = serde_json::to_string(&record).unwrap_or_default();
        std::fs::write(&path, text).map_err(io(&path))
    }

    /// The scratch of a job made earlier (by this or an earlier run of the agent), if its
    /// record is there.
    pub fn find(job_dir: &Path) -> Option<Scratch> {
        let text = std::fs::read_to_string(job_dir.join(RECORD_FILE)).ok()?;
        let record: Record = serde_json::from_str(&text).ok()?;
        Some(Scratch {
            path: job_dir.join("scratch"),
            mode: record.mode,
            cap_bytes: record.cap_bytes,
            baseline_bytes: record.baseline_bytes,
            job_dir: job_dir.to_path_buf(),
        })
    }

    /// Bytes the job has put in its scratch.
    pub fn usage_bytes(&self) -> Result<u64, ScratchError> {
        match self.mode {
            QuotaMode::Loop => Ok(filesystem_used(&self.path)?.saturating_sub(self.baseline_bytes)),
            QuotaMode::Watched => Ok(tree_allocated(&self.path)),
        }
    }

    /// Whether the job has used more than its cap. In loop mode the kernel stops writes a
    /// little past the cap (the image's slack): reaching the cap counts as passing it.
    pub fn exceeded(&self) -> Result<bool, ScratchError> {
        let usage = self.usage_bytes()?;
        Ok(match self.mode {
            QuotaMode::Loop => usage >= self.cap_bytes,
            QuotaMode::Watched => usage > self.cap_bytes,
        })
    }

    /// Unmounts (loop mode) and deletes the scratch, its image and its record. Gone already
    /// is fine.
    pub fn remove(&self) -> Result<(), ScratchError> {
        if self.mode == QuotaMode::Loop && is_mount_point(&self.path) {
            let path = self.path.to_string_lossy().into_owned();
            // A lazy unmount if something still holds it (the container's last process
            // exiting): the loop device is freed when the last user lets go.
            if run("umount", &[&path]).is_err() {
                run("umount", &["-l", &path])?;
            }
        }
        remove_dir(&self.path).map_err(io(&self.path))?;
        for file in [IMAGE_FILE, RECORD_FILE] {
            let path = self.job_dir.join(file);
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ScratchError::Io {
                        path,
                        source: error,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn caps_are_whole_bytes_of_at_least_a_mebibyte() {
        assert_eq!(cap_bytes(20.0), 20 * 1_073_741_824);
        assert_eq!(cap_bytes(0.5), 536_870_912);
        assert_eq!(cap_bytes(0.0), 1_048_576);
        assert_eq!(cap_bytes(f64::NAN), 1_048_576);
    }

    #[test]
    fn a_watched_scratch_counts_what_is_written_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(dir.path(), 1 << 20, QuotaMode::Watched).unwrap();
        for name in SUBDIRS {
            let mode = std::fs::metadata(scratch.path.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o1777, "{name}");
        }
        let empty = scratch.usage_bytes().unwrap();
        assert!(!scratch.exceeded().unwrap());
        std::fs::write(scratch.path.join("tmp/blob"), vec![7u8; 2 << 20]).unwrap();
        // A hard link is the same bytes, counted once.
        std::fs::hard_link(
            scratch.path.join("tmp/blob"),
            scratch.path.join("home/link"),
        )
        .unwrap();
        let used = scratch.usage_bytes().unwrap();
        assert!(
            used >= empty + (2 << 20) && used < empty + (3 << 20),
            "{used}"
        );
        assert!(scratch.exceeded().unwrap());
        // A restarted agent finds it again, and removes it.
        let found = Scratch::find(dir.path()).unwrap();
        assert_eq!(found, scratch);
        found.remove().unwrap();
        assert!(!scratch.path.exists());
        assert!(Scratch::find(dir.path()).is_none());
        found.remove().unwrap();
    }
}
