//! Obsidian's storage: the entries of the append-only log, the perfect-subtree hashes that answer
//! every proof, and the signed checkpoints.
//!
//! One sequencer per log: appends run in one transaction that first takes the log's lock (a
//! transaction-scoped advisory lock on PostgreSQL; SQLite's single writer), re-reads the tree
//! size and the frontier inside it, and only then hashes and inserts. Two replicas appending at
//! once therefore queue instead of forking the tree, and a crash mid-append leaves nothing.

use std::collections::HashMap;

use gp4u_core::ids::UserId;
use gp4u_ledger::hash::{Hash, hash_from_hex, leaf_hash, to_hex};
use gp4u_ledger::tree::{Frontier, NodeId};
use sqlx::{Any, Row, Transaction};

use crate::{LOCK_LEDGER, Store, StoreError, StoreResult};

/// Rows per multi-row INSERT (each row binds at most 7 values; well under both engines' limits).
const INSERT_CHUNK: usize = 400;

/// An entry to append: the exact bytes of `body` are the leaf's data.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLedgerEntry {
    /// The outbox position the entry seals; an entry for a position already sealed is skipped.
    pub source_position: i64,
    pub kind: String,
    pub job_id: Option<String>,
    pub body: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntryRecord {
    pub index: u64,
    pub source_position: i64,
    pub kind: String,
    pub job_id: Option<String>,
    pub body: String,
    pub leaf_hash: Hash,
    pub created_at_ms: i64,
}

/// Whose entry bodies a range read returns (see [`Store::ledger_leaves`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerBodies<'a> {
    /// No bodies: an anonymous witness of the log.
    None,
    /// The bodies of the entries of this user's jobs.
    JobsOf(&'a UserId),
    /// Every body: an admin.
    All,
}

/// An entry of a range read: `body` only where [`LedgerBodies`] allowed it.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerLeafRecord {
    pub index: u64,
    pub kind: String,
    pub job_id: Option<String>,
    pub leaf_hash: Hash,
    pub created_at_ms: i64,
    pub body: Option<String>,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerAppend {
    /// Entries appended by this call (skipped duplicates not counted).
    pub appended: u64,
    /// The tree after the append.
    pub size: u64,
    pub root: Hash,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRecord {
    pub tree_size: u64,
    pub root: Hash,
    pub note: String,
    pub created_at_ms: i64,
}

fn stored_hash(row: &sqlx::any::AnyRow, column: &str) -> StoreResult<Hash> {
    let text: String = row.try_get(column)?;
    hash_from_hex(&text)
        .map_err(|error| StoreError::corrupt(format!("ledger {column} {text:?}: {error}")))
}

fn to_i64(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::corrupt(format!("{what} {value} out of range")))
}

fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("{what} {value} is negative")))
}

fn entry_from_row(row: &sqlx::any::AnyRow) -> StoreResult<LedgerEntryRecord> {
    Ok(LedgerEntryRecord {
        index: to_u64(row.try_get("log_index")?, "log_index")?,
        source_position: row.try_get("source_position")?,
        kind: row.try_get("kind")?,
        job_id: row.try_get("job_id")?,
        body: row.try_get("body")?,
        leaf_hash: stored_hash(row, "leaf_hash")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

async fn tree_size(tx: &mut Transaction<'_, Any>) -> StoreResult<u64> {
    let size: i64 =
        sqlx::query("SELECT COALESCE(MAX(log_index) + 1, 0) AS size FROM ledger_entries")
            .fetch_one(&mut **tx)
            .await?
            .try_get("size")?;
    to_u64(size, "ledger size")
}

async fn fetch_nodes(
    executor: &mut sqlx::AnyConnection,
    ids: &[NodeId],
) -> StoreResult<HashMap<NodeId, Hash>> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(INSERT_CHUNK) {
        if chunk.is_empty() {
            continue;
        }
        let mut sql = String::from("SELECT level, node_index, hash FROM ledger_nodes WHERE ");
        for index in 0..chunk.len() {
            if index > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(level = ${} AND node_index = ${})",
                index * 2 + 1,
                index * 2 + 2
            ));
        }
        // Audited: only fixed text and `$N` placeholders are formatted into the statement.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query
                .bind(i64::from(id.level))
                .bind(to_i64(id.index, "node index")?);
        }
        for row in query.fetch_all(&mut *executor).await? {
            let level: i64 = row.try_get("level")?;
            let index: i64 = row.try_get("node_index")?;
            let id = NodeId {
                level: u8::try_from(level)
                    .map_err(|_| StoreError::corrupt(format!("ledger node level {level}")))?,
                index: to_u64(index, "node index")?,
            };
            found.insert(id, stored_hash(&row, "hash")?);
        }
    }
    Ok(found)
}

impl Store {
    /// Appends `entries` in order, as one transaction under the log's sequencer lock. Entries
    /// whose `source_position` is not above the highest one sealed are skipped (the caller reads
    /// the outbox in order, so a lower or equal position was sealed by someone else already).
    pub async fn append_ledger(
        &self,
        entries: &[NewLedgerEntry],
        now_ms: i64,
    ) -> StoreResult<LedgerAppend> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_sequenced(LOCK_LEDGER).await?;
        let size = tree_size(&mut tx).await?;
        let sealed: i64 =
            sqlx::query("SELECT COALESCE(MAX(source_position), 0) AS sealed FROM ledger_entries")
                .fetch_one(&mut *tx)
                .await?
                .try_get("sealed")?;
        let frontier_ids = Frontier::node_ids(size);
        let stored = fetch_nodes(&mut tx, &frontier_ids).await?;
        let mut parts = Vec::with_capacity(frontier_ids.len());
        for id in &frontier_ids {
            parts.push(*stored.get(id).ok_or_else(|| {
                StoreError::corrupt(format!(
                    "ledger node (level {}, index {}) of the frontier is missing",
                    id.level, id.index
                ))
            })?);
        }
        let mut frontier = Frontier::from_parts(size, parts)
            .map_err(|error| StoreError::corrupt(format!("ledger frontier: {error}")))?;
        let mut last_position = sealed;
        let mut rows = Vec::new();
        let mut nodes = Vec::new();
        for entry in entries {
            if entry.source_position <= last_position {
                continue;
            }
            last_position = entry.source_position;
            let leaf = leaf_hash(entry.body.as_bytes());
            let index = frontier.size();
            nodes.extend(frontier.append(leaf).map_err(|error| {
                StoreError::corrupt(format!("ledger append at size {index}: {error}"))
            })?);
            rows.push((index, entry, leaf));
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO ledger_entries \
                 (log_index, source_position, kind, job_id, body, leaf_hash, created_at) VALUES ",
            );
            sql.push_str(&crate::values_placeholders(chunk.len(), 7));
            // Audited: only fixed text and `$N` placeholders are formatted into the statement.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (index, entry, leaf) in chunk {
                query = query
                    .bind(to_i64(*index, "log index")?)
                    .bind(entry.source_position)
                    .bind(&entry.kind)
                    .bind(entry.job_id.as_deref())
                    .bind(&entry.body)
                    .bind(to_hex(leaf))
                    .bind(now_ms);
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in nodes.chunks(INSERT_CHUNK) {
            let mut sql =
                String::from("INSERT INTO ledger_nodes (level, node_index, hash) VALUES ");
            sql.push_str(&crate::values_placeholders(chunk.len(), 3));
            // Audited: only fixed text and `$N` placeholders are formatted into the statement.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, hash) in chunk {
                query = query
                    .bind(i64::from(id.level))
                    .bind(to_i64(id.index, "node index")?)
                    .bind(to_hex(hash));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(LedgerAppend {
            appended: u64::try_from(rows.len()).unwrap_or(u64::MAX),
            size: frontier.size(),
            root: frontier.root(),
        })
    }

    /// The number of entries in the log.
    pub async fn ledger_size(&self) -> StoreResult<u64> {
        self.count_op();
        let size: i64 =
            sqlx::query("SELECT COALESCE(MAX(log_index) + 1, 0) AS size FROM ledger_entries")
                .fetch_one(self.pool())
                .await?
                .try_get("size")?;
        to_u64(size, "ledger size")
    }

    /// The highest outbox position sealed (0 when none).
    pub async fn ledger_sealed_position(&self) -> StoreResult<i64> {
        self.count_op();
        Ok(
            sqlx::query("SELECT COALESCE(MAX(source_position), 0) AS sealed FROM ledger_entries")
                .fetch_one(self.pool())
                .await?
                .try_get("sealed")?,
        )
    }

    /// Entries with `start <= index < end`, in order.
    pub async fn ledger_entries(
        &self,
        start: u64,
        end: u64,
    ) -> StoreResult<Vec<LedgerEntryRecord>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT log_index, source_position, kind, job_id, body, leaf_hash, created_at \
             FROM ledger_entries WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
        )
        .bind(to_i64(start, "start")?)
        .bind(to_i64(end, "end")?)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Entries with `start <= index < end`, in order, with the bodies `bodies` allows. One
    /// query whoever asks: the owner of each entry's job is joined in, and bodies nobody may
    /// read here are not selected, so that reading a range costs no more than the range (an
    /// energy proof's entry alone can be hundreds of kilobytes).
    pub async fn ledger_leaves(
        &self,
        start: u64,
        end: u64,
        bodies: LedgerBodies<'_>,
    ) -> StoreResult<Vec<LedgerLeafRecord>> {
        self.count_op();
        let (start, end) = (to_i64(start, "start")?, to_i64(end, "end")?);
        let rows = match bodies {
            LedgerBodies::None => {
                sqlx::query(
                    "SELECT log_index, kind, job_id, leaf_hash, created_at FROM ledger_entries \
                     WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
                )
                .bind(start)
                .bind(end)
                .fetch_all(self.pool())
                .await?
            }
            LedgerBodies::JobsOf(owner) => {
                sqlx::query(
                    "SELECT e.log_index, e.kind, e.job_id, e.leaf_hash, e.created_at, \
                     CASE WHEN j.owner_id = $3 THEN e.body END AS body \
                     FROM ledger_entries e LEFT JOIN jobs j ON j.id = e.job_id \
                     WHERE e.log_index >= $1 AND e.log_index < $2 ORDER BY e.log_index",
                )
                .bind(start)
                .bind(end)
                .bind(owner.as_str())
                .fetch_all(self.pool())
                .await?
            }
            LedgerBodies::All => {
                sqlx::query(
                    "SELECT log_index, kind, job_id, leaf_hash, created_at, body \
                     FROM ledger_entries WHERE log_index >= $1 AND log_index < $2 \
                     ORDER BY log_index",
                )
                .bind(start)
                .bind(end)
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                Ok(LedgerLeafRecord {
                    index: to_u64(row.try_get("log_index")?, "log_index")?,
                    kind: row.try_get("kind")?,
                    job_id: row.try_get("job_id")?,
                    leaf_hash: stored_hash(row, "leaf_hash")?,
                    created_at_ms: row.try_get("created_at")?,
                    body: match bodies {
                        LedgerBodies::None => None,
                        _ => row.try_get("body")?,
                    },
                })
            })
            .collect()
    }

    /// A job's entries, in log order.
    pub async fn ledger_job_entries(&self, job_id: &str) -> StoreResult<Vec<LedgerEntryRecord>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT log_index, source_position, kind, job_id, body, leaf_hash, created_at \
             FROM ledger_entries WHERE job_id = $1 ORDER BY log_index",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// The stored perfect-subtree hashes among `ids` (missing ones are absent from the map).
    pub async fn ledger_nodes(&self, ids: &[NodeId]) -> StoreResult<HashMap<NodeId, Hash>> {
        self.count_op();
        let mut connection = self.pool().acquire().await?;
        fetch_nodes(&mut connection, ids).await
    }

    /// Stores a signed checkpoint (idempotent per tree size: the first one stays).
    pub async fn save_checkpoint(
        &self,
        tree_size: u64,
        root: &Hash,
        note: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        sqlx::query(
            "INSERT INTO ledger_checkpoints (tree_size, root, note, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(to_i64(tree_size, "tree size")?)
        .bind(to_hex(root))
        .bind(note)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes all but the `keep` newest checkpoints (by tree size); returns how many went.
    /// Only the newest is ever served; older ones are history a client keeps for itself
    /// (consistency proofs come from the tree, not from stored checkpoints).
    pub async fn prune_checkpoints(&self, keep: u64) -> StoreResult<u64> {
        self.count_op();
        let keep = to_i64(keep.max(1), "checkpoints kept")?;
        let _writer = self.writer().await;
        Ok(sqlx::query(
            "DELETE FROM ledger_checkpoints WHERE tree_size < (SELECT MIN(tree_size) FROM \
             (SELECT tree_size FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT $1) AS newest)",
        )
        .bind(keep)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// The checkpoint of the largest tree signed so far.
    pub async fn latest_checkpoint(&self) -> StoreResult<Option<CheckpointRecord>> {
        self.count_op();
        let row = sqlx::query(
            "SELECT tree_size, root, note, created_at FROM ledger_checkpoints \
             ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(CheckpointRecord {
                tree_size: to_u64(row.try_get("tree_size")?, "tree size")?,
                root: stored_hash(&row, "root")?,
                note: row.try_get("note")?,
                created_at_ms: row.try_get("created_at")?,
            })
        })
        .transpose()
    }
}
