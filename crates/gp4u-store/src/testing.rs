//! Test support shared by every crate's tests: a fresh database per test, on either engine.
//!
//! PostgreSQL tests need `GP4U_TEST_DATABASE_URL` (a role that may create databases; the
//! project's `scripts/test.sh` starts a throwaway cluster and sets it). Without it they skip,
//! printing `GP4U-PG-SKIPPED` loudly — except in CI (`CI=true`), where skipping is a failure.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, AssertSqlSafe, Connection};

use crate::{Engine, Store, StoreResult};

pub const PG_URL_ENV: &str = "GP4U_TEST_DATABASE_URL";

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        nanos
    )
}

/// The PostgreSQL URL to create test databases through, or `None` (after saying so loudly)
/// when it is not configured. Panics in CI, where the PostgreSQL suite must run.
pub fn postgres_admin_url(test: &str) -> Option<String> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|value| value == "true") {
                panic!("{PG_URL_ENV} is unset in CI: the PostgreSQL suite must run ({test})");
            }
            // Written straight to stderr, not through `eprintln!`, which the test harness
            // captures and hides for passing tests: a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "GP4U-PG-SKIPPED: {test}: {PG_URL_ENV} is unset, so this PostgreSQL test did not run \
                 (scripts/test.sh starts a throwaway cluster and sets it)"
            );
            None
        }
    }
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    pub engine: Engine,
    pub url: String,
    sqlite_dir: Option<PathBuf>,
}

impl TestDatabase {
    /// Creates an empty database on `engine`; `None` when PostgreSQL is not configured.
    pub async fn create(engine: Engine, test: &str) -> Option<TestDatabase> {
        match engine {
            Engine::Sqlite => {
                let dir = std::env::temp_dir().join(format!("gp4u-test-{}", unique_suffix()));
                std::fs::create_dir_all(&dir)
                    .expect("creating a temp dir for a SQLite test database");
                Some(TestDatabase {
                    engine,
                    url: format!("sqlite://{}", dir.join("gp4u.db").display()),
                    sqlite_dir: Some(dir),
                })
            }
            Engine::Postgres => {
                let admin_url = postgres_admin_url(test)?;
                let name = format!("gp4u_test_{}", unique_suffix());
                sqlx::any::install_default_drivers();
                let mut admin = AnyConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|error| panic!("connecting to {PG_URL_ENV}: {error}"));
                // The name is ours (digits and underscores), never input.
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|error| panic!("creating test database {name}: {error}"));
                let _ = admin.close().await;
                Some(TestDatabase {
                    engine,
                    url: replace_database(&admin_url, &name),
                    sqlite_dir: None,
                })
            }
        }
    }

    /// A handle on a database that another `TestDatabase` owns (it is not removed on drop).
    pub fn existing(engine: Engine, url: String) -> TestDatabase {
        TestDatabase {
            engine,
            url,
            sqlite_dir: None,
        }
    }

    /// Opens a store on this database (each call a separate pool: a separate "replica").
    pub async fn store(&self) -> StoreResult<Store> {
        Store::connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(dir) = &self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `postgres://u@h:p/olddb?x` → `postgres://u@h:p/newdb?x`.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |index| index + 3);
    let path_start = base[scheme_end..].find('/').map(|index| scheme_end + index);
    let host_part = match path_start {
        Some(index) => &base[..index],
        None => base,
    };
    match query {
        Some(query) => format!("{host_part}/{database}?{query}"),
        None => format!("{host_part}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            replace_database("postgres://u@h:5/postgres", "t1"),
            "postgres://u@h:5/t1"
        );
        assert_eq!(
            replace_database("postgres://u@h:5", "t1"),
            "postgres://u@h:5/t1"
        );
        assert_eq!(
            replace_database("postgres://u@h/db?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
    }
}
