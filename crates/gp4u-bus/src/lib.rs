//! GP4U events: the outbox relay, the bus interface with its in-process implementation, and
//! durable subscribers (the chambers).
//!
//! The outbox table is the source of truth. The relay sequences committed outbox rows and
//! publishes them to the bus in order; the bus is a fast path. A subscriber applies events and
//! advances its cursor in one store transaction, and reads from the outbox whenever the bus
//! leaves a gap (lag, a crash between commit and publish, another replica's relay), so after a
//! crash or restart it misses nothing and applies nothing twice.

mod clock;
mod relay;
mod subscriber;

use async_trait::async_trait;
use gp4u_store::Envelope;
use tokio::sync::broadcast;

pub use clock::{ManualClock, SystemClock};
pub use relay::Relay;
pub use subscriber::{SubscriberError, run_chamber};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Where sequenced events go. The in-process bus now; NATS JetStream behind the same interface
/// later. Delivery is at-least-once and in order; subscribers are idempotent by position.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    async fn publish(&self, envelopes: &[Envelope]) -> Result<(), BusError>;
    /// A receiver of everything published from now on.
    fn subscribe(&self) -> broadcast::Receiver<Envelope>;
    fn kind(&self) -> &'static str;
}

/// A broadcast channel inside this process.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<Envelope>,
}

impl InProcessBus {
    /// `capacity` events are buffered per subscriber; a slower subscriber falls back to reading
    /// the outbox, so the capacity bounds memory, not correctness.
    pub fn new(capacity: usize) -> InProcessBus {
        let (sender, _) = broadcast::channel(capacity.max(1));
        InProcessBus { sender }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        InProcessBus::new(4096)
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, envelopes: &[Envelope]) -> Result<(), BusError> {
        for envelope in envelopes {
            // No receivers is fine: subscribers catch up from the outbox when they start.
            let _ = self.sender.send(envelope.clone());
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.sender.subscribe()
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}
