//! Ships a job's stdout/stderr to the platform while it runs: pieces arrive on a channel (from
//! the container's log stream or the child's pipes), are batched (about a second or 64 KiB)
//! and posted in order. The platform caps each job's log; once it says the log is truncated,
//! the rest is read and dropped, so that the job never blocks on its output.
//!
//! Docker pieces carry the engine's timestamp. After each posted batch the newest one is saved
//! in the job's directory (`log-cursor`), so that an agent restarted mid-job follows the
//! container's log again from there rather than from the start: nothing is posted twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::client::PlatformClient;

/// A piece of output, with the Docker timestamp (unix nanoseconds) when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPiece {
    pub bytes: Vec<u8>,
    pub timestamp_ns: Option<i128>,
}

/// Flush when this much is buffered…
pub const BATCH_BYTES: usize = 64 * 1024;
/// …or when the oldest buffered piece is this old.
pub const BATCH_AGE: Duration = Duration::from_secs(1);
/// The platform takes at most 1 MiB per post; stay well below.
const MAX_POST_BYTES: usize = 512 * 1024;
/// Attempts per post while the platform is unreachable, before the batch is dropped.
const POST_ATTEMPTS: u32 = 6;
pub const CURSOR_FILE: &str = "log-cursor";

/// The channel a runtime feeds; bounded, so a job that writes faster than the platform takes
/// its output waits (Docker buffers in its own log, a child on its pipe).
pub fn channel() -> (mpsc::Sender<LogPiece>, mpsc::Receiver<LogPiece>) {
    mpsc::channel(256)
}

/// The saved cursor: the newest timestamp already posted, if any.
pub fn read_cursor(job_dir: &Path) -> Option<i128> {
    std::fs::read_to_string(job_dir.join(CURSOR_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

fn write_cursor(job_dir: &Path, timestamp_ns: i128) {
    let path = job_dir.join(CURSOR_FILE);
    let temporary = job_dir.join(format!("{CURSOR_FILE}.tmp"));
    let written = std::fs::write(&temporary, timestamp_ns.to_string())
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "could not save the log cursor");
    }
}

/// Where a shipper posts.
pub struct Shipper {
    pub client: PlatformClient,
    pub job_id: String,
    pub node_id: String,
    pub job_dir: PathBuf,
}

impl Shipper {
    /// Runs until every sender is dropped (or `stop` turns true) and the last batch is posted.
    pub async fn run(self, mut pieces: mpsc::Receiver<LogPiece>, mut stop: watch::Receiver<bool>) {
        let mut buffer: Vec<u8> = Vec::new();
        let mut newest: Option<i128> = None;
        let mut open = true;
        let mut refused = false;
        while open {
            // Wait for the first piece of a batch, then for more until the batch is due.
            let first = tokio::select! {
                piece = pieces.recv() => piece,
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let Some(first) = first else {
                break;
            };
            buffer.extend_from_slice(&first.bytes);
            newest = first.timestamp_ns.or(newest);
            let due = tokio::time::Instant::now() + BATCH_AGE;
            while buffer.len() < BATCH_BYTES {
                let next = tokio::select! {
                    next = tokio::time::timeout_at(due, pieces.recv()) => next,
                    _ = stop.wait_for(|stop| *stop) => Ok(None),
                };
                match next {
                    Ok(Some(piece)) => {
                        buffer.extend_from_slice(&piece.bytes);
                        newest = piece.timestamp_ns.or(newest);
                    }
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Once refused (the log is full, or closed), the rest is read and dropped.
            if !refused {
                refused = !self.post(&buffer).await;
            }
            buffer.clear();
            if let Some(timestamp_ns) = newest {
                write_cursor(&self.job_dir, timestamp_ns);
            }
        }
    }

    /// Posts a batch (in slices the platform accepts). False when no more should be sent: the
    /// log is full, or the platform refuses this job's log.
    async fn post(&self, batch: &[u8]) -> bool {
        for slice in batch.chunks(MAX_POST_BYTES) {
            let mut backoff = Duration::from_millis(250);
            let mut attempt = 1;
            loop {
                match self
                    .client
                    .append_log(&self.job_id, &self.node_id, slice.to_vec())
                    .await
                {
                    Ok(reply) if reply.truncated => {
                        tracing::info!(job_id = %self.job_id, log_bytes = reply.log_bytes,
                            "the platform's log cap is reached; later output is dropped");
                        return false;
                    }
                    Ok(_) => break,
                    Err(error) if error.is_transient() && attempt < POST_ATTEMPTS => {
                        tracing::warn!(job_id = %self.job_id, %error, retry_in = ?backoff, "posting logs failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(8));
                        attempt += 1;
                    }
                    Err(error) if error.is_transient() => {
                        tracing::warn!(job_id = %self.job_id, %error, bytes = slice.len(), "posting logs failed; this part is lost");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(job_id = %self.job_id, %error, "the platform refuses this job's logs; not sending more");
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// Splits a Docker log line with `timestamps=true` (`2024-05-01T12:00:00.123456789Z text`)
/// into its timestamp (unix ns) and the text. A line without one is returned whole.
pub fn split_timestamp(line: &[u8]) -> (Option<i128>, &[u8]) {
    let Some(space) = line.iter().position(|&byte| byte == b' ') else {
        return (None, line);
    };
    let parsed = std::str::from_utf8(&line[..space]).ok().and_then(|text| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
    });
    match parsed {
        Some(at) => (Some(at.unix_timestamp_nanos()), &line[space + 1..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_are_split_off() {
        let (at, text) = split_timestamp(b"2024-05-01T12:00:00.123456789Z hello world\n");
        assert_eq!(at, Some(1_714_564_800_123_456_789));
        assert_eq!(text, b"hello world\n");
        let (at, text) = split_timestamp(b"2024-05-01T12:00:00.5Z x");
        assert_eq!((at, text), (Some(1_714_564_800_500_000_000), &b"x"[..]));
        assert_eq!(
            split_timestamp(b"no stamp here"),
            (None, &b"no stamp here"[..])
        );
        assert_eq!(split_timestamp(b"nospace"), (None, &b"nospace"[..]));
    }

    #[test]
    fn the_cursor_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cursor(dir.path()), None);
        write_cursor(dir.path(), 1_714_564_800_123_456_789);
        assert_eq!(read_cursor(dir.path()), Some(1_714_564_800_123_456_789));
    }
}
