//! Rate limiting kept in the database, so that a limit holds across server replicas.
//!
//! A sliding log: each allowed attempt is recorded; an attempt is allowed when fewer than
//! `limit` recorded attempts of the key fall inside the window. PostgreSQL keeps a key's
//! attempts in one row (an array), so a check-and-record is a single upsert; SQLite keeps a row
//! per attempt under its single writer. Refused attempts are not logged, so a client that
//! keeps retrying is let in again as soon as its oldest attempt leaves the window.

use crate::{Engine, Store, StoreResult};

/// The outcome of [`Store::rate_limit_hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed { remaining: i64 },
    Limited { retry_after_ms: i64 },
}

impl Store {
    /// Records an attempt by `user_id` at `now_ms` unless `limit` attempts already fall within
    /// the `window_ms` before it. Atomic per user across replicas.
    pub async fn rate_limit_hit(
        &self,
        key: &str,
        now_ms: i64,
        window_ms: i64,
        limit: i64,
    ) -> StoreResult<RateDecision> {
        self.count_op();
        match self.engine() {
            Engine::Postgres => {
                self.rate_limit_hit_postgres(key, now_ms, window_ms, limit)
                    .await
            }
            Engine::Sqlite => {
                self.rate_limit_hit_sqlite(key, now_ms, window_ms, limit)
                    .await
            }
        }
    }

    /// One statement, one round trip: the upsert's row lock serialises attempts on one key
    /// across replicas, and its `WHERE` refuses the attempt when the window is full.
    async fn rate_limit_hit_postgres(
        &self,
        key: &str,
        now_ms: i64,
        window_ms: i64,
        limit: i64,
    ) -> StoreResult<RateDecision> {
        let window_start = now_ms - window_ms;
        let recorded: Option<i64> = sqlx::query_scalar(
            "INSERT INTO rate_limits AS r (key, hits) VALUES ($1, ARRAY[$2::BIGINT]) \
             ON CONFLICT (key) DO UPDATE \
             SET hits = ARRAY(SELECT h FROM unnest(r.hits) AS h WHERE h > $3 ORDER BY h) || $2::BIGINT \
             WHERE (SELECT COUNT(*) FROM unnest(r.hits) AS h WHERE h > $3) < $4 \
             RETURNING cardinality(hits)::BIGINT",
        )
        .bind(key)
        .bind(now_ms)
        .bind(window_start)
        .bind(limit)
        .fetch_optional(self.pool())
        .await?;
        if let Some(count) = recorded {
            return Ok(RateDecision::Allowed {
                remaining: limit - count,
            });
        }
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(h) FROM rate_limits, unnest(hits) AS h WHERE key = $1 AND h > $2",
        )
        .bind(key)
        .bind(window_start)
        .fetch_one(self.pool())
        .await?;
        Ok(limited(oldest, now_ms, window_ms))
    }

    /// SQLite has one writer: under the writer lock, prune, count and record in a transaction.
    async fn rate_limit_hit_sqlite(
        &self,
        key: &str,
        now_ms: i64,
        window_ms: i64,
        limit: i64,
    ) -> StoreResult<RateDecision> {
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let window_start = now_ms - window_ms;
        sqlx::query("DELETE FROM rate_limit_hits WHERE user_id = $1 AND at_ms <= $2")
            .bind(key)
            .bind(window_start)
            .execute(&mut *tx)
            .await?;
        let (count, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MIN(at_ms) FROM rate_limit_hits WHERE user_id = $1")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
        if count >= limit {
            tx.commit().await?;
            return Ok(limited(oldest, now_ms, window_ms));
        }
        sqlx::query("INSERT INTO rate_limit_hits (user_id, at_ms) VALUES ($1, $2)")
            .bind(key)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RateDecision::Allowed {
            remaining: limit - count - 1,
        })
    }
}

fn limited(oldest_in_window: Option<i64>, now_ms: i64, window_ms: i64) -> RateDecision {
    let oldest = oldest_in_window.unwrap_or(now_ms);
    RateDecision::Limited {
        retry_after_ms: (oldest + window_ms - now_ms).max(1),
    }
}

impl Store {
    /// Deletes rate-limit rows that have left every window; returns how many went.
    pub async fn purge_rate_limit_hits(&self, window_ms: i64, now_ms: i64) -> StoreResult<u64> {
        self.count_op();
        let _writer = self.writer().await;
        let statement = match self.engine() {
            // `hits` is sorted: its last element is the newest attempt.
            Engine::Postgres => "DELETE FROM rate_limits WHERE hits[cardinality(hits)] <= $1",
            Engine::Sqlite => "DELETE FROM rate_limit_hits WHERE at_ms <= $1",
        };
        let result = sqlx::query(statement)
            .bind(now_ms - window_ms)
            .execute(self.pool())
            .await?;
        Ok(result.rows_affected())
    }
}
