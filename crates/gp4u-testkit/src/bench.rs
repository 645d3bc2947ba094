//! Helpers shared by the server's load generators (`submit`, `telemetry`).

use anyhow::{Context, bail};
use gp4u_store::testing::PG_URL_ENV;

/// Threads per runtime (server and client each), on a 2-core machine.
pub const RUNTIME_THREADS: usize = 2;

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted_us: &[u64], percent: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = (percent / 100.0 * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[index] as f64 / 1000.0
}

pub fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

/// Drops a PostgreSQL database this run created (the engine's `TestDatabase` leaves it).
pub async fn drop_postgres_database(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let admin_url = std::env::var(PG_URL_ENV).context(PG_URL_ENV)?;
    let path = url.split('?').next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or("");
    if !name.starts_with("gp4u_test_")
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!("refusing to drop unexpected database name {name:?}");
    }
    let mut admin = sqlx::AnyConnection::connect(&admin_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;
    Ok(())
}
