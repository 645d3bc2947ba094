//! The transactional outbox and the durable cursors of its subscribers.
//!
//! Writers add events in the same transaction as the state change they describe
//! ([`insert_events`]). The relay then *sequences* them: under one lock it gives every committed,
//! unsequenced event the next `position`. Positions are gap-free and follow commit visibility,
//! so a subscriber that has applied everything up to `position = p` only ever needs `> p`.

use sqlx::{Any, Row, Transaction};

use crate::{LOCK_OUTBOX_SEQUENCER, Store, StoreError, StoreResult};

/// An event to write to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub topic: String,
    /// The entity the event is about (a job id, a node id); for tracing and partitioning.
    pub aggregate_id: String,
    pub payload: serde_json::Value,
}

/// A sequenced event as the bus delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub position: i64,
    pub topic: String,
    pub aggregate_id: String,
    pub payload: serde_json::Value,
    pub created_at_ms: i64,
}

/// A subscriber's durable state: the last position it applied and its read model.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberState {
    pub name: String,
    pub position: i64,
    pub model: serde_json::Value,
    pub updated_at_ms: i64,
}

pub(crate) async fn insert_events(
    tx: &mut Transaction<'_, Any>,
    events: &[OutboxEvent],
    now_ms: i64,
) -> StoreResult<()> {
    // One multi-row INSERT per chunk: a telemetry batch can carry hundreds of events (one
    // sealed commitment per packet), and one statement per event dominated its transaction.
    // Rows keep their order, so ids (and thus positions) follow the order given.
    const ROWS_PER_STATEMENT: usize = 250;
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut sql =
            String::from("INSERT INTO outbox (topic, aggregate_id, payload, created_at) VALUES ");
        sql.push_str(&crate::values_placeholders(chunk.len(), 4));
        // Audited: only `$N` placeholders are formatted into the statement.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for event in chunk {
            query = query
                .bind(&event.topic)
                .bind(&event.aggregate_id)
                .bind(event.payload.to_string())
                .bind(now_ms);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

fn envelope_from_row(row: &sqlx::any::AnyRow) -> StoreResult<Envelope> {
    let payload: String = row.try_get("payload")?;
    Ok(Envelope {
        position: row.try_get("position")?,
        topic: row.try_get("topic")?,
        aggregate_id: row.try_get("aggregate_id")?,
        payload: serde_json::from_str(&payload)
            .map_err(|error| StoreError::corrupt(format!("outbox payload: {error}")))?,
        created_at_ms: row.try_get("created_at")?,
    })
}

impl Store {
    /// Writes events to the outbox on their own (for events that have no row change with them).
    pub async fn append_events(&self, events: &[OutboxEvent], now_ms: i64) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives up to `limit` committed, unsequenced events their positions, in insertion order,
    /// and returns them. One sequencer at a time across all replicas (advisory lock on
    /// PostgreSQL, the writer lock on SQLite), so positions never fork or repeat.
    pub async fn sequence_outbox(&self, limit: i64) -> StoreResult<Vec<Envelope>> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_sequenced(LOCK_OUTBOX_SEQUENCER).await?;
        let head: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM outbox")
            .fetch_one(&mut *tx)
            .await?;
        let head = head.unwrap_or(0);
        let rows = sqlx::query(
            "UPDATE outbox SET position = $1 + numbered.rank \
             FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rank FROM outbox \
                   WHERE position IS NULL ORDER BY id LIMIT $2) AS numbered \
             WHERE outbox.id = numbered.id \
             RETURNING outbox.position, outbox.topic, outbox.aggregate_id, outbox.payload, \
                       outbox.created_at",
        )
        .bind(head)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut envelopes = rows
            .iter()
            .map(envelope_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        envelopes.sort_by_key(|envelope| envelope.position);
        Ok(envelopes)
    }

    /// Sequenced events with `position > after`, in order, at most `limit`.
    pub async fn read_outbox(&self, after: i64, limit: i64) -> StoreResult<Vec<Envelope>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT position, topic, aggregate_id, payload, created_at FROM outbox \
             WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(envelope_from_row).collect()
    }

    /// The highest sequenced position (0 when none).
    pub async fn outbox_head(&self) -> StoreResult<i64> {
        self.count_op();
        let head: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM outbox")
            .fetch_one(self.pool())
            .await?;
        Ok(head.unwrap_or(0))
    }

    /// Events written but not yet sequenced (the relay's backlog).
    pub async fn outbox_unsequenced(&self) -> StoreResult<i64> {
        self.count_op();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE position IS NULL")
            .fetch_one(self.pool())
            .await?;
        Ok(count)
    }

    /// Loads a subscriber's state, creating it at position 0 with `initial_model` if absent.
    pub async fn load_subscriber(
        &self,
        name: &str,
        initial_model: &serde_json::Value,
        now_ms: i64,
    ) -> StoreResult<SubscriberState> {
        self.count_op();
        {
            let _writer = self.writer().await;
            sqlx::query(
                "INSERT INTO subscribers (name, position, model, updated_at) VALUES ($1, 0, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(initial_model.to_string())
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        }
        let row = sqlx::query(
            "SELECT name, position, model, updated_at FROM subscribers WHERE name = $1",
        )
        .bind(name)
        .fetch_one(self.pool())
        .await?;
        subscriber_from_row(&row)
    }

    /// A subscriber's state, read only (`None` before its first `load_subscriber`).
    pub async fn get_subscriber(&self, name: &str) -> StoreResult<Option<SubscriberState>> {
        self.count_op();
        let row = sqlx::query(
            "SELECT name, position, model, updated_at FROM subscribers WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(subscriber_from_row).transpose()
    }

    /// Saves a subscriber's model and advances its cursor from `expected_position` to
    /// `new_position` atomically. `Conflict` when another process moved the cursor first: the
    /// caller reloads and carries on, so no event is applied twice.
    pub async fn save_subscriber(
        &self,
        name: &str,
        expected_position: i64,
        new_position: i64,
        model: &serde_json::Value,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        let result = sqlx::query(
            "UPDATE subscribers SET position = $3, model = $4, updated_at = $5 \
             WHERE name = $1 AND position = $2",
        )
        .bind(name)
        .bind(expected_position)
        .bind(new_position)
        .bind(model.to_string())
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        if result.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "subscriber {name} is no longer at position {expected_position}"
            )))
        }
    }

    pub async fn list_subscribers(&self) -> StoreResult<Vec<SubscriberState>> {
        self.count_op();
        let rows =
            sqlx::query("SELECT name, position, model, updated_at FROM subscribers ORDER BY name")
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(subscriber_from_row).collect()
    }
}

fn subscriber_from_row(row: &sqlx::any::AnyRow) -> StoreResult<SubscriberState> {
    let model: String = row.try_get("model")?;
    Ok(SubscriberState {
        name: row.try_get("name")?,
        position: row.try_get("position")?,
        model: serde_json::from_str(&model)
            .map_err(|error| StoreError::corrupt(format!("subscriber model: {error}")))?,
        updated_at_ms: row.try_get("updated_at")?,
    })
}
