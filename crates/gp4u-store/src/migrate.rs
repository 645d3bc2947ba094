//! Schema migrations: ordered SQL scripts per engine, each applied once, recorded in
//! `gp4u_schema_migrations`. On PostgreSQL a session advisory lock makes concurrent starts of
//! several replicas apply each script exactly once.

use sqlx::Acquire;

use crate::{Engine, LOCK_MIGRATIONS, LOCK_NAMESPACE, Store, StoreResult};

struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        sqlite: include_str!("../migrations/sqlite/0002_placement.sql"),
        postgres: include_str!("../migrations/postgres/0002_placement.sql"),
    },
    Migration {
        version: 3,
        sqlite: include_str!("../migrations/sqlite/0003_blobs.sql"),
        postgres: include_str!("../migrations/postgres/0003_blobs.sql"),
    },
    Migration {
        version: 4,
        sqlite: include_str!("../migrations/sqlite/0004_emulated_gpus.sql"),
        postgres: include_str!("../migrations/postgres/0004_emulated_gpus.sql"),
    },
    Migration {
        version: 5,
        sqlite: include_str!("../migrations/sqlite/0005_tutela.sql"),
        postgres: include_str!("../migrations/postgres/0005_tutela.sql"),
    },
    Migration {
        version: 6,
        sqlite: include_str!("../migrations/sqlite/0006_settlement_ledger.sql"),
        postgres: include_str!("../migrations/postgres/0006_settlement_ledger.sql"),
    },
    Migration {
        version: 7,
        sqlite: include_str!("../migrations/sqlite/0007_driver_presence.sql"),
        postgres: include_str!("../migrations/postgres/0007_driver_presence.sql"),
    },
    Migration {
        version: 8,
        sqlite: include_str!("../migrations/sqlite/0008_power_limits.sql"),
        postgres: include_str!("../migrations/postgres/0008_power_limits.sql"),
    },
    Migration {
        version: 9,
        sqlite: include_str!("../migrations/sqlite/0009_posture_visibility.sql"),
        postgres: include_str!("../migrations/postgres/0009_posture_visibility.sql"),
    },
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = 9;

pub(crate) async fn run(store: &Store) -> StoreResult<()> {
    let _writer = store.writer().await;
    let mut connection = store.pool().acquire().await?;
    if store.engine() == Engine::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(LOCK_NAMESPACE)
            .bind(LOCK_MIGRATIONS)
            .execute(&mut *connection)
            .await?;
    }
    let result = apply_pending(store.engine(), &mut connection).await;
    if store.engine() == Engine::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(LOCK_NAMESPACE)
            .bind(LOCK_MIGRATIONS)
            .execute(&mut *connection)
            .await?;
    }
    result
}

async fn apply_pending(engine: Engine, connection: &mut sqlx::AnyConnection) -> StoreResult<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS gp4u_schema_migrations (\
            version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *connection)
    .await?;
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM gp4u_schema_migrations")
            .fetch_one(&mut *connection)
            .await?;
    let applied = applied.unwrap_or(0);
    for migration in MIGRATIONS.iter().filter(|m| m.version > applied) {
        let script = match engine {
            Engine::Sqlite => migration.sqlite,
            Engine::Postgres => migration.postgres,
        };
        let mut tx = connection.begin().await?;
        sqlx::raw_sql(script).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO gp4u_schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(0_i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            version = migration.version,
            engine = engine.as_str(),
            "applied schema migration"
        );
    }
    Ok(())
}
