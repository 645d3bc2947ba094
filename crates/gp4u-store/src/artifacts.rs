//! What the blob store holds, as rows: customers' artifacts (job inputs), each job's output
//! archive and its log chunks. The bytes themselves live in the blob store (`object_store`);
//! the database records ownership, sizes, hashes and the log's sequence and cap.

use gp4u_core::ids::{ArtifactId, JobId, UserId};
use sqlx::Row;

use crate::{Store, StoreError, StoreResult, is_unique_violation};

/// A stored artifact (a job input uploaded by a customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub id: ArtifactId,
    pub owner_id: UserId,
    /// Hex SHA-256 (lowercase) of the bytes.
    pub sha256: String,
    pub size_bytes: u64,
    pub created_at_ms: i64,
}

/// The outcome of [`Store::reserve_log_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogReservation {
    /// Store the first `keep` bytes of the chunk as blob number `seq`. `truncated` when the cap
    /// cut this chunk (`keep` is less than was sent): the log is full from now on.
    Chunk {
        seq: u64,
        keep: u64,
        log_bytes: u64,
        truncated: bool,
    },
    /// The log is already at its cap: the chunk is dropped (the job is marked truncated).
    Full { log_bytes: u64 },
}

fn to_i64(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::corrupt(format!("{what} {value} out of range")))
}

fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("{what} {value} is negative")))
}

impl Store {
    /// Records an uploaded artifact. `Conflict` if the id exists (ids are random: a bug).
    pub async fn insert_artifact(&self, artifact: &ArtifactRecord) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query(
            "INSERT INTO artifacts (id, owner_id, sha256, size_bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(artifact.id.as_str())
        .bind(artifact.owner_id.as_str())
        .bind(&artifact.sha256)
        .bind(to_i64(artifact.size_bytes, "artifact size")?)
        .bind(artifact.created_at_ms)
        .execute(self.pool())
        .await
        .map_err(|error| {
            if is_unique_violation(&error) {
                StoreError::Conflict(format!("artifact {} already exists", artifact.id))
            } else {
                error.into()
            }
        })?;
        Ok(())
    }

    pub async fn get_artifact(&self, id: &ArtifactId) -> StoreResult<Option<ArtifactRecord>> {
        self.count_op();
        let row = sqlx::query(
            "SELECT id, owner_id, sha256, size_bytes, created_at FROM artifacts WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let owner: String = row.try_get("owner_id")?;
        Ok(Some(ArtifactRecord {
            id: ArtifactId::parse(&id).map_err(StoreError::corrupt)?,
            owner_id: UserId::parse(&owner).map_err(StoreError::corrupt)?,
            sha256: row.try_get("sha256")?,
            size_bytes: to_u64(row.try_get("size_bytes")?, "artifact size")?,
            created_at_ms: row.try_get("created_at")?,
        }))
    }

    /// Records the job's uploaded output archive (replacing an earlier upload's record).
    /// `NotFound` if the job does not exist.
    pub async fn record_job_output(
        &self,
        job: &JobId,
        sha256: &str,
        size_bytes: u64,
    ) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        let result =
            sqlx::query("UPDATE jobs SET output_sha256 = $2, output_bytes = $3 WHERE id = $1")
                .bind(job.as_str())
                .bind(sha256)
                .bind(to_i64(size_bytes, "output size")?)
                .execute(self.pool())
                .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("job {job}")));
        }
        Ok(())
    }

    /// Reserves room for a log chunk of `len` bytes under the per-job cap `cap`, atomically
    /// across replicas: the sequence number and the byte count move together in one
    /// conditional update. A chunk that fits is kept whole; one that crosses the cap is cut to
    /// what fits and the job is marked truncated; once the cap is reached every chunk is
    /// dropped. `NotFound` if the job does not exist.
    pub async fn reserve_log_chunk(
        &self,
        job: &JobId,
        len: u64,
        cap: u64,
    ) -> StoreResult<LogReservation> {
        self.count_op();
        let len_i = to_i64(len, "log chunk size")?;
        let cap_i = to_i64(cap, "log cap")?;
        let _writer = self.writer().await;
        // The common case, one statement: the whole chunk fits.
        let row = sqlx::query(
            "UPDATE jobs SET log_chunks = log_chunks + 1, log_bytes = log_bytes + $2 \
             WHERE id = $1 AND log_bytes + $2 <= $3 RETURNING log_chunks, log_bytes",
        )
        .bind(job.as_str())
        .bind(len_i)
        .bind(cap_i)
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = row {
            return Ok(LogReservation::Chunk {
                seq: to_u64(row.try_get::<i64, _>("log_chunks")? - 1, "log chunks")?,
                keep: len,
                log_bytes: to_u64(row.try_get("log_bytes")?, "log bytes")?,
                truncated: false,
            });
        }
        // It does not fit: keep what does, as a compare-and-set on the size we read.
        for _attempt in 0..8 {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT log_bytes FROM jobs WHERE id = $1")
                    .bind(job.as_str())
                    .fetch_optional(self.pool())
                    .await?;
            let Some(current) = current else {
                return Err(StoreError::NotFound(format!("job {job}")));
            };
            if current >= cap_i {
                sqlx::query("UPDATE jobs SET log_truncated = 1 WHERE id = $1")
                    .bind(job.as_str())
                    .execute(self.pool())
                    .await?;
                return Ok(LogReservation::Full {
                    log_bytes: to_u64(current, "log bytes")?,
                });
            }
            let row = sqlx::query(
                "UPDATE jobs SET log_chunks = log_chunks + 1, log_bytes = $3, log_truncated = 1 \
                 WHERE id = $1 AND log_bytes = $2 RETURNING log_chunks",
            )
            .bind(job.as_str())
            .bind(current)
            .bind(cap_i)
            .fetch_optional(self.pool())
            .await?;
            if let Some(row) = row {
                return Ok(LogReservation::Chunk {
                    seq: to_u64(row.try_get::<i64, _>("log_chunks")? - 1, "log chunks")?,
                    keep: to_u64(cap_i - current, "log room")?,
                    log_bytes: cap,
                    truncated: true,
                });
            }
        }
        Err(StoreError::Conflict(format!(
            "the log of job {job} kept changing; retry"
        )))
    }
}
