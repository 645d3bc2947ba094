//! GP4U storage: one interface ([`Store`]), two engines (SQLite and PostgreSQL).
//!
//! Both engines are driven through sqlx's `Any` driver with the same SQL text, so there is one
//! implementation to read and one contract test suite (`tests/contract.rs`) that runs against
//! both. Where the engines differ (locking, column types) the difference is written next to the
//! code that needs it:
//!
//! - **PostgreSQL** serialises competing writers with transaction-scoped advisory locks, so that
//!   several server replicas can share one database (rate limits, outbox sequencing).
//! - **SQLite** has a single writer anyway; we make that explicit with an in-process write lock
//!   so that transactions queue instead of failing with `SQLITE_BUSY`.
//!
//! Every function takes the current time (`now_ms`, unix milliseconds) as an argument: the store
//! never reads the clock, which keeps timeouts and windows testable with an injected clock.

/// Column lists as macros so that queries can be assembled with `concat!` into `&'static str`
/// (sqlx only accepts static SQL without an explicit safety assertion).
macro_rules! user_columns {
    () => {
        "id, name, role, clearance, active, university, region, credit_micros, created_at"
    };
}
/// Columns of `gpus g JOIN provider_nodes n`.
macro_rules! gpu_columns {
    () => {
        "g.id, g.node_id, n.owner_id, g.name, g.vram_gb, g.price_micros, g.uuid, g.status, \
         n.region, n.trust_score, g.created_at, g.emulated, g.driver_version, \
         n.first_seen_at, n.last_seen_at, n.online_ms, n.posture, g.power_limit_mw"
    };
}
macro_rules! job_columns {
    () => {
        "id, owner_id, name, status, failure_reason, ended_by, gpu_id, node_id, gpu_name, \
         gpu_region, manifest, price_micros, cost_estimate_micros, placement, latest_metrics, \
         anomalies, exit_code, energy_kwh, carbon_kg, renewable_pct, created_at, started_at, \
         ended_at, version, assigned_at, picked_up_at, excluded_nodes, output_sha256, \
         output_bytes, log_bytes, log_chunks, log_truncated, last_telemetry_at, retries, \
         attempts, hold_micros, carbon_credit_eligible, gpu_power_limit_mw"
    };
}
macro_rules! node_columns {
    () => {
        "id, owner_id, region, public_key, status, created_at, trust_score, stake_micros, \
         ejected_at, ejected_reason, visibility, visibility_checked_at, first_seen_at, \
         last_seen_at, online_ms, posture"
    };
}

mod artifacts;
mod billing;
mod completion;
mod jobs;
mod ledger;
mod limits;
mod migrate;
mod outbox;
mod placement;
mod records;
pub mod testing;
mod tutela;
mod users;
mod visibility;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use tokio::sync::{Mutex, MutexGuard};

pub use artifacts::{ArtifactRecord, LogReservation};
pub use billing::{Balance, NewTransfer, SettleOutcome, TransferRecord};
pub use completion::{CompletionFacts, GridFactorRecord, ProofOutcome, ProofRecord};
pub use jobs::{CreateJobOutcome, IdempotencyRecord, NewIdempotency, NewJob};
pub use ledger::{
    CheckpointRecord, LedgerAppend, LedgerBodies, LedgerEntryRecord, LedgerLeafRecord,
    NewLedgerEntry,
};
pub use limits::RateDecision;
pub use migrate::SCHEMA_VERSION;
pub use outbox::{Envelope, OutboxEvent, SubscriberState};
pub use placement::Assignment;
pub use records::{GpuRecord, GpuStatus, JobBlobs, JobRecord, NodeRecord, NodeStatus, UserRecord};
pub use tutela::{
    Attempt, EnergySample, NewAnomaly, SlashRecord, TOPIC_TELEMETRY_COMMITTED, TelemetryRow,
};
pub use users::{NewNode, NewUser};
pub use visibility::{ChallengeRecord, is_refusal};

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// Errors from the store, already translated into domain terms where the database was called.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{account} is short of {needed}")]
    InsufficientFunds {
        account: String,
        needed: gp4u_core::money::Money,
    },
    #[error("invalid database url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(what.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Advisory-lock namespace (the first key of `pg_advisory_xact_lock(int, int)`).
pub(crate) const LOCK_NAMESPACE: i32 = 0x6770_3475; // "gp4u"
/// Second keys within the namespace.
pub(crate) const LOCK_MIGRATIONS: i32 = 1;
pub(crate) const LOCK_OUTBOX_SEQUENCER: i32 = 2;
pub(crate) const LOCK_LEDGER: i32 = 3;

/// The connection pool's size: `open` connections, of which `idle` are not checked out; at
/// most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub max: u32,
    pub open: u32,
    pub idle: u32,
}

/// The storage interface. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    engine: Engine,
    /// SQLite allows one writer at a time; write transactions take this lock first so that they
    /// queue in-process rather than racing into `SQLITE_BUSY`. `None` on PostgreSQL, where row
    /// and advisory locks do this job across replicas.
    sqlite_writer: Option<Mutex<()>>,
    /// Number of store operations issued. Exposed so that tests can prove a request was refused
    /// without touching the database, and as a cheap operational counter.
    operations: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.inner.engine)
            .finish()
    }
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and brings the schema up to date.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else {
            return Err(StoreError::InvalidUrl {
                url: redact_url(url),
                reason: "expected sqlite://PATH or postgres://USER@HOST:PORT/DB".into(),
            });
        };
        let url = match engine {
            Engine::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options =
            AnyConnectOptions::from_str(&url).map_err(|error| StoreError::InvalidUrl {
                url: redact_url(&url),
                reason: error.to_string(),
            })?;
        let pool_options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(30))
            .max_connections(match engine {
                Engine::Sqlite => 8,
                Engine::Postgres => 24,
            });
        let pool_options = match engine {
            Engine::Sqlite => pool_options.after_connect(|connection, _metadata| {
                Box::pin(async move {
                    // WAL lets readers proceed while the single writer commits; NORMAL sync is
                    // durable across application crashes (the WAL is fsynced at checkpoints).
                    connection.execute("PRAGMA journal_mode = WAL").await?;
                    connection.execute("PRAGMA synchronous = NORMAL").await?;
                    connection.execute("PRAGMA foreign_keys = ON").await?;
                    connection.execute("PRAGMA busy_timeout = 10000").await?;
                    Ok(())
                })
            }),
            Engine::Postgres => pool_options,
        };
        let pool = pool_options.connect_with(options).await?;
        let store = Store {
            inner: Arc::new(Inner {
                pool,
                engine,
                sqlite_writer: (engine == Engine::Sqlite).then(|| Mutex::new(())),
                operations: AtomicU64::new(0),
            }),
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    pub fn engine(&self) -> Engine {
        self.inner.engine
    }

    /// How many store operations have been issued since this store was opened.
    pub fn operations(&self) -> u64 {
        self.inner.operations.load(Ordering::Relaxed)
    }

    /// The connection pool right now, without touching the database (for `/metrics`).
    pub fn pool_stats(&self) -> PoolStats {
        let open = self.inner.pool.size();
        let idle = u32::try_from(self.inner.pool.num_idle()).unwrap_or(u32::MAX);
        PoolStats {
            max: self.inner.pool.options().get_max_connections(),
            open,
            idle: idle.min(open),
        }
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> StoreResult<()> {
        self.count_op();
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections to return.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes can fail with
    /// `SQLITE_BUSY` when another connection committed in between, which waiting cannot fix.
    pub(crate) async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.inner.engine {
            Engine::Sqlite => self.inner.pool.begin_with("BEGIN IMMEDIATE").await?,
            Engine::Postgres => self.inner.pool.begin().await?,
        })
    }

    /// A write transaction that is the only holder of advisory lock `key` until it ends (one
    /// sequencer across replicas on PostgreSQL; SQLite's writer lock, held by the caller,
    /// already makes it the only writer).
    pub(crate) async fn begin_sequenced(
        &self,
        key: i32,
    ) -> StoreResult<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.begin_write().await?;
        if self.engine() == Engine::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(LOCK_NAMESPACE)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// The JSON `body` a `sql` query (`SELECT body … WHERE job_id = $1`) finds for `job`, if
    /// any; `what` names it in the corruption error.
    pub(crate) async fn job_body(
        &self,
        sql: &'static str,
        job: &gp4u_core::ids::JobId,
        what: &str,
    ) -> StoreResult<Option<serde_json::Value>> {
        self.count_op();
        let row = sqlx::query(sql)
            .bind(job.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.map(|row| {
            let body: String = sqlx::Row::try_get(&row, "body")?;
            serde_json::from_str(&body)
                .map_err(|error| StoreError::corrupt(format!("{what} of {job}: {error}")))
        })
        .transpose()
    }

    pub(crate) fn count_op(&self) {
        self.inner.operations.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the SQLite writer lock (a no-op on PostgreSQL). Hold the guard for the whole write
    /// transaction.
    pub(crate) async fn writer(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.inner.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
}

/// Hides the password part of a database URL before it is shown in an error or a log line.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

pub(crate) fn bool_to_i64(value: bool) -> i64 {
    i64::from(value)
}

/// `($1, $2, …), ($k+1, …), …`: the placeholders of a multi-row `VALUES` list of `rows` rows
/// of `columns` values each. Statements built with it contain only fixed text and these
/// placeholders, never a value (they are audited for `sqlx::AssertSqlSafe` on that basis).
pub(crate) fn values_placeholders(rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for column in 1..=columns {
            if column > 1 {
                text.push_str(", ");
            }
            text.push('$');
            text.push_str(&(row * columns + column).to_string());
        }
        text.push(')');
    }
    text
}

pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|database_error| database_error.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(
            super::values_placeholders(2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(super::values_placeholders(1, 1), "($1)");
        assert_eq!(super::values_placeholders(0, 4), "");
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
