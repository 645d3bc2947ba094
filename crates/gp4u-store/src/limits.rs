//! Rate limiting kept in the database, so that a limit holds across server replicas.
//!
//! A sliding log: each allowed attempt is a row; an attempt is allowed when fewer than `limit`
//! rows of the caller fall inside the window. Refused attempts are not logged, so a client that
//! keeps retrying is let in again as soon as its oldest attempt leaves the window.

use crate::{Engine, LOCK_NAMESPACE, Store, StoreResult};

/// The outcome of [`Store::rate_limit_hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed { remaining: i64 },
    Limited { retry_after_ms: i64 },
}

/// Second advisory-lock key space for per-user rate limits (hashed user ids land here).
const LOCK_RATE_LIMIT_NAMESPACE: i32 = LOCK_NAMESPACE + 1;

impl Store {
    /// Records an attempt by `user_id` at `now_ms` unless `limit` attempts already fall within
    /// the `window_ms` before it. Atomic per user across replicas.
    pub async fn rate_limit_hit(
        &self,
        user_id: &str,
        now_ms: i64,
        window_ms: i64,
        limit: i64,
    ) -> StoreResult<RateDecision> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        if self.engine() == Engine::Postgres {
            // Serialises attempts of one user (across replicas) without blocking other users.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(LOCK_RATE_LIMIT_NAMESPACE)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        let window_start = now_ms - window_ms;
        sqlx::query("DELETE FROM rate_limit_hits WHERE user_id = $1 AND at_ms <= $2")
            .bind(user_id)
            .bind(window_start)
            .execute(&mut *tx)
            .await?;
        let (count, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MIN(at_ms) FROM rate_limit_hits WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
        if count >= limit {
            tx.commit().await?;
            let oldest = oldest.unwrap_or(now_ms);
            return Ok(RateDecision::Limited {
                retry_after_ms: (oldest + window_ms - now_ms).max(1),
            });
        }
        sqlx::query("INSERT INTO rate_limit_hits (user_id, at_ms) VALUES ($1, $2)")
            .bind(user_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RateDecision::Allowed {
            remaining: limit - count - 1,
        })
    }
}

impl Store {
    /// Deletes rate-limit rows that have left every window; returns how many went.
    pub async fn purge_rate_limit_hits(&self, window_ms: i64, now_ms: i64) -> StoreResult<u64> {
        self.count_op();
        let _writer = self.writer().await;
        let result = sqlx::query("DELETE FROM rate_limit_hits WHERE at_ms <= $1")
            .bind(now_ms - window_ms)
            .execute(self.pool())
            .await?;
        Ok(result.rows_affected())
    }
}
