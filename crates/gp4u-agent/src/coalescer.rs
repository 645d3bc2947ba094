//! The node's telemetry coalescer: the watchdogs of all of a node's jobs hand it their packet
//! of the period and wait for their own reply; it posts what arrived together as one JSON
//! array to `POST /api/telemetry/russian-doll` and hands each watchdog its item, exactly as a
//! single post would have answered it (see [`crate::telemetry`] for how the ticks are aligned
//! so that the packets of a period do arrive together).
//!
//! - A batch closes [`Batching::window`] after its first packet arrived (never later than a
//!   quarter of the shortest interval in it), or at [`Batching::max_packets`].
//! - A batch of one packet is posted as a plain object, as before arrays existed.
//! - Items: a [`TelemetryReply`] is that packet's reply; `{"status", "error"}` becomes the
//!   refusal a single post would have got ([`ClientError::Refused`] with that status and
//!   error body), so 404/409 fence the job, 429 skips its tick, and so on.
//! - A whole-request refusal of 400/404/405/422, or an answer that is not an array of one item
//!   per packet, means a platform without arrays: the packets go again one by one, and this
//!   coalescer posts singly from then on (until the agent restarts). A 413 posts that batch
//!   singly. Other whole-request failures (401/403, 429, 5xx, transport) are every packet's
//!   failure ([`ClientError::Shared`]).
//! - Batches are posted in their own tasks: a slow platform does not hold up the next batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gp4u_proto::{TelemetryBatchItem, TelemetryPacket, TelemetryReply};
use tokio::sync::{mpsc, oneshot};

use crate::client::{ClientError, PlatformClient};

/// How the coalescer groups packets.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// How long a batch stays open after its first packet (capped at a quarter of the
    /// interval). Zero: every packet is posted on its own.
    pub window: Duration,
    /// A batch is posted at once when it holds this many packets (at most the platform's 256).
    pub max_packets: usize,
    /// Whether the watchdogs tick on the interval's wall-clock boundaries (so that a node's
    /// jobs measure and post together).
    pub align: bool,
}

impl Default for Batching {
    fn default() -> Batching {
        Batching {
            window: Duration::from_millis(50),
            max_packets: 64,
            align: true,
        }
    }
}

/// The most packets one request may carry on the platform's side.
pub const PLATFORM_MAX_PACKETS: usize = 256;

struct Pending {
    packet: TelemetryPacket,
    timeout: Duration,
    /// The batch of this packet closes within this long of its first packet.
    max_wait: Duration,
    reply: oneshot::Sender<Result<TelemetryReply, ClientError>>,
}

/// The node's coalescer: a handle that watchdogs clone; the task ends when every handle is
/// gone.
#[derive(Clone)]
pub struct Coalescer {
    client: PlatformClient,
    sender: mpsc::Sender<Pending>,
}

impl Coalescer {
    /// Starts the coalescer's task.
    pub fn start(client: PlatformClient, batching: Batching) -> Coalescer {
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(gather(client.clone(), batching, receiver));
        Coalescer { client, sender }
    }

    /// Posts one packet with the node's other packets of the moment, and returns its own
    /// answer. `timeout` bounds the request; `interval` is the job's (its batch closes within a
    /// quarter of it).
    pub async fn post(
        &self,
        packet: TelemetryPacket,
        timeout: Duration,
        interval: Duration,
    ) -> Result<TelemetryReply, ClientError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            packet,
            timeout,
            max_wait: interval / 4,
            reply,
        };
        if let Err(mpsc::error::SendError(pending)) = self.sender.send(pending).await {
            // The coalescer is gone (the agent is stopping): post it directly.
            return self.client.post_telemetry(&pending.packet, timeout).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(ClientError::Unexpected {
                what: "a telemetry packet".into(),
                detail: "the coalescer dropped it unanswered".into(),
            })
        })
    }
}

async fn gather(client: PlatformClient, batching: Batching, mut receiver: mpsc::Receiver<Pending>) {
    let max_packets = batching.max_packets.clamp(1, PLATFORM_MAX_PACKETS);
    let arrays = Arc::new(AtomicBool::new(true));
    while let Some(first) = receiver.recv().await {
        let opened = tokio::time::Instant::now();
        let mut closes = opened + batching.window.min(first.max_wait);
        let mut batch = vec![first];
        while batch.len() < max_packets {
            match tokio::time::timeout_at(closes, receiver.recv()).await {
                Ok(Some(next)) => {
                    closes = closes.min(opened + next.max_wait);
                    batch.push(next);
                }
                Ok(None) | Err(_) => break,
            }
        }
        tokio::spawn(deliver(client.clone(), batch, arrays.clone()));
    }
}

/// Posts each packet on its own (concurrently), as before arrays.
fn post_singly(client: &PlatformClient, batch: Vec<Pending>) {
    for pending in batch {
        let client = client.clone();
        tokio::spawn(async move {
            let result = client
                .post_telemetry(&pending.packet, pending.timeout)
                .await;
            let _ = pending.reply.send(result);
        });
    }
}

async fn deliver(client: PlatformClient, batch: Vec<Pending>, arrays: Arc<AtomicBool>) {
    if batch.len() == 1 || !arrays.load(Ordering::Relaxed) {
        post_singly(&client, batch);
        return;
    }
    let timeout = batch
        .iter()
        .map(|pending| pending.timeout)
        .min()
        .unwrap_or(Duration::from_secs(30));
    let packets: Vec<&TelemetryPacket> = batch.iter().map(|pending| &pending.packet).collect();
    let answer = client.post_telemetry_batch(&packets, timeout).await;
    match answer {
        Ok(items) if items.len() == batch.len() => {
            for (pending, item) in batch.into_iter().zip(items) {
                let _ = pending.reply.send(item_result(item));
            }
        }
        Ok(items) => {
            tracing::warn!(
                packets = batch.len(),
                items = items.len(),
                "the platform's answer to a telemetry array is not one item per packet: posting packets one by one from now on"
            );
            arrays.store(false, Ordering::Relaxed);
            post_singly(&client, batch);
        }
        Err(error @ ClientError::Unexpected { .. }) => {
            tracing::warn!(
                %error,
                "the platform's answer to a telemetry array is not an array of items: posting packets one by one from now on"
            );
            arrays.store(false, Ordering::Relaxed);
            post_singly(&client, batch);
        }
        Err(error) if matches!(error.status(), Some(400 | 404 | 405 | 422)) => {
            tracing::info!(%error, "the platform does not take telemetry arrays: posting packets one by one from now on");
            arrays.store(false, Ordering::Relaxed);
            post_singly(&client, batch);
        }
        Err(error) if error.status() == Some(413) => {
            tracing::warn!(
                packets = batch.len(),
                "a telemetry array was too large: posting its packets one by one"
            );
            post_singly(&client, batch);
        }
        Err(error) => {
            let error = Arc::new(error);
            for pending in batch {
                let _ = pending.reply.send(Err(ClientError::Shared(error.clone())));
            }
        }
    }
}

/// One item of an array answer, as the answer to a single post of that packet would be.
fn item_result(item: TelemetryBatchItem) -> Result<TelemetryReply, ClientError> {
    match item {
        TelemetryBatchItem::Reply(reply) => Ok(reply),
        TelemetryBatchItem::Refused { status, error } => Err(ClientError::Refused {
            status,
            code: error.code,
            message: error.message,
            field: error.field,
            retry_after: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn item(value: serde_json::Value) -> TelemetryBatchItem {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn items_answer_as_single_posts_would() {
        let reply = item_result(item(
            json!({"kill_job": true, "reason": "CANCELLED", "anomalies": [], "status": "FAILED"}),
        ))
        .unwrap();
        assert!(reply.kill_job);
        assert_eq!(reply.reason.as_deref(), Some("CANCELLED"));
        let fenced = item_result(item(json!({"status": 409, "error": {"code": "JOB_ALREADY_TERMINAL", "message": "ended", "field": null}})))
        .unwrap_err();
        assert!(fenced.is_fenced());
        assert_eq!(fenced.code(), Some("JOB_ALREADY_TERMINAL"));
        let gone = item_result(item(json!({"status": 404, "error": {"code": "JOB_NOT_FOUND", "message": "no job", "field": null}})))
        .unwrap_err();
        assert!(gone.is_fenced() && !gone.is_route_missing());
        let limited = item_result(item(json!({"status": 429, "error": {"code": "RATE_LIMITED", "message": "slow down", "field": null}})))
        .unwrap_err();
        assert!(limited.is_rate_limited() && !limited.is_fenced());
        let invalid = item_result(item(json!({"status": 400, "error": {"code": "INVALID_TYPE", "message": "bad", "field": "temperature_c"}})))
        .unwrap_err();
        assert_eq!(invalid.status(), Some(400));
        assert!(!invalid.is_fenced() && !invalid.is_transient());
        // An item that is neither does not read: the whole answer is not understood, and the
        // coalescer falls back to single posts.
        assert!(serde_json::from_value::<Vec<TelemetryBatchItem>>(json!([{"hello": 1}])).is_err());
    }
}
