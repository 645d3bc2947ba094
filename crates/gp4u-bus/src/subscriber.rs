//! Durable subscribers: a chamber's model and cursor advance together, in one transaction.

use std::sync::Arc;
use std::time::Duration;

use gp4u_core::chambers::Chamber;
use gp4u_core::clock::Clock;
use gp4u_store::{Envelope, Store, StoreError};
use tokio::sync::{broadcast, watch};

use crate::EventBus;

#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored model of chamber {chamber} does not load: {reason}")]
    CorruptModel {
        chamber: &'static str,
        reason: String,
    },
}

/// How many outbox rows a subscriber reads per catch-up query.
const CATCH_UP_BATCH: i64 = 500;

/// A chamber being fed: its model and the last position applied to it.
struct Feed<C: Chamber> {
    store: Store,
    clock: Arc<dyn Clock>,
    model: C,
    position: i64,
}

impl<C: Chamber> Feed<C> {
    async fn load(store: Store, clock: Arc<dyn Clock>) -> Result<Feed<C>, SubscriberError> {
        let initial =
            serde_json::to_value(C::default()).map_err(|error| SubscriberError::CorruptModel {
                chamber: C::NAME,
                reason: error.to_string(),
            })?;
        let state = store
            .load_subscriber(C::NAME, &initial, clock.now_ms())
            .await?;
        let model =
            serde_json::from_value(state.model).map_err(|error| SubscriberError::CorruptModel {
                chamber: C::NAME,
                reason: error.to_string(),
            })?;
        Ok(Feed {
            store,
            clock,
            model,
            position: state.position,
        })
    }

    /// Applies `envelopes` (consecutive, starting right after the cursor) and saves model and
    /// cursor atomically. A conflict means another replica advanced this chamber: reload.
    async fn apply(&mut self, envelopes: &[Envelope]) -> Result<(), SubscriberError> {
        let Some(last) = envelopes.last() else {
            return Ok(());
        };
        let mut model = std::mem::take(&mut self.model);
        for envelope in envelopes {
            model.apply(&envelope.topic, &envelope.payload);
        }
        let json = serde_json::to_value(&model).map_err(|error| SubscriberError::CorruptModel {
            chamber: C::NAME,
            reason: error.to_string(),
        })?;
        match self
            .store
            .save_subscriber(
                C::NAME,
                self.position,
                last.position,
                &json,
                self.clock.now_ms(),
            )
            .await
        {
            Ok(()) => {
                self.model = model;
                self.position = last.position;
                Ok(())
            }
            Err(StoreError::Conflict(_)) => {
                let reloaded = Feed::<C>::load(self.store.clone(), self.clock.clone()).await?;
                self.model = reloaded.model;
                self.position = reloaded.position;
                Ok(())
            }
            // The feed is dropped and reloaded from the store by `run_chamber`, so the
            // half-applied in-memory model goes with it.
            Err(error) => Err(error.into()),
        }
    }

    /// Reads and applies everything in the outbox after the cursor.
    async fn catch_up(&mut self) -> Result<(), SubscriberError> {
        loop {
            let batch = self
                .store
                .read_outbox(self.position, CATCH_UP_BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(());
            }
            self.apply(&batch).await?;
        }
    }
}

/// Runs chamber `C` until `shutdown` turns true: catches up from its durable cursor, then
/// applies events from the bus as they come, reading the outbox whenever the bus skips.
/// `poll` bounds how stale the chamber gets when events arrive through another replica.
pub async fn run_chamber<C: Chamber>(
    store: Store,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        match feed_until_shutdown::<C>(&store, &bus, &clock, poll, &mut shutdown).await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(chamber = C::NAME, %error, "chamber stopped; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn feed_until_shutdown<C: Chamber>(
    store: &Store,
    bus: &Arc<dyn EventBus>,
    clock: &Arc<dyn Clock>,
    poll: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SubscriberError> {
    // Subscribe before catching up, so that nothing published meanwhile is missed.
    let mut receiver = bus.subscribe();
    let mut feed = Feed::<C>::load(store.clone(), clock.clone()).await?;
    feed.catch_up().await?;
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Ok(first) => {
                    let mut batch = vec![first];
                    while let Ok(next) = receiver.try_recv() {
                        batch.push(next);
                    }
                    batch.retain(|envelope| envelope.position > feed.position);
                    if is_contiguous_after(feed.position, &batch) {
                        feed.apply(&batch).await?;
                    } else {
                        feed.catch_up().await?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => feed.catch_up().await?,
                Err(broadcast::error::RecvError::Closed) => {
                    receiver = bus.subscribe();
                    feed.catch_up().await?;
                }
            },
            _ = tokio::time::sleep(poll) => feed.catch_up().await?,
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

fn is_contiguous_after(position: i64, batch: &[Envelope]) -> bool {
    batch
        .iter()
        .enumerate()
        .all(|(offset, envelope)| envelope.position == position + 1 + offset as i64)
}

#[cfg(test)]
mod tests {
    use super::is_contiguous_after;
    use gp4u_store::Envelope;

    fn at(position: i64) -> Envelope {
        Envelope {
            position,
            topic: "t".into(),
            aggregate_id: "a".into(),
            payload: serde_json::Value::Null,
            created_at_ms: 0,
        }
    }

    #[test]
    fn contiguity() {
        assert!(is_contiguous_after(4, &[at(5), at(6)]));
        assert!(!is_contiguous_after(4, &[at(6)]));
        assert!(!is_contiguous_after(4, &[at(5), at(7)]));
        assert!(is_contiguous_after(4, &[]));
    }
}
