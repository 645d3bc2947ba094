//! The outbox relay: sequences committed outbox rows and publishes them to the bus in order.

use std::sync::Arc;
use std::time::Duration;

use gp4u_store::{Envelope, Store, StoreError};
use tokio::sync::{Notify, watch};

use crate::EventBus;

/// Moves events from the outbox to the bus. Run one per replica: sequencing is serialised in
/// the database, so replicas never hand out the same position twice.
#[derive(Clone)]
pub struct Relay {
    store: Store,
    bus: Arc<dyn EventBus>,
    nudge: Arc<Notify>,
    batch: i64,
    poll: Duration,
}

impl Relay {
    pub fn new(store: Store, bus: Arc<dyn EventBus>) -> Relay {
        Relay {
            store,
            bus,
            nudge: Arc::new(Notify::new()),
            batch: 500,
            poll: Duration::from_millis(250),
        }
    }

    /// How often the relay looks for events written by other replicas when nobody nudges it.
    pub fn with_poll_interval(mut self, poll: Duration) -> Relay {
        self.poll = poll;
        self
    }

    /// Call after committing outbox rows so that they are relayed now rather than at the next
    /// poll. Nudges never get lost: `Notify` stores one permit.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Sequences everything committed so far and publishes it. Returns the published events.
    /// If the process dies between sequencing and publishing, subscribers still get the events
    /// from the outbox.
    pub async fn run_once(&self) -> Result<Vec<Envelope>, StoreError> {
        let mut relayed = Vec::new();
        loop {
            let batch = self.store.sequence_outbox(self.batch).await?;
            if batch.is_empty() {
                return Ok(relayed);
            }
            if let Err(error) = self.bus.publish(&batch).await {
                // Subscribers read the outbox when the bus falls silent; nothing is lost.
                tracing::warn!(%error, events = batch.len(), "bus publish failed");
            }
            let full = i64::try_from(batch.len()).unwrap_or(i64::MAX) >= self.batch;
            relayed.extend(batch);
            if !full {
                return Ok(relayed);
            }
        }
    }

    /// Relays until `shutdown` turns true, then relays what is left once more.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.run_once().await {
                tracing::error!(%error, "outbox relay failed; retrying");
            }
            tokio::select! {
                _ = self.nudge.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.changed() => {
                    if let Err(error) = self.run_once().await {
                        tracing::error!(%error, "final outbox relay failed");
                    }
                    return;
                }
            }
        }
    }
}
