//! Telemetry as the platform shows it (SPEC §7): the answer to a batch of packets, a job's
//! stored series (JSON and its live `text/event-stream` events), and what a job view holds of
//! its telemetry (`latest_metrics`, the `anomalies` summary).

use gp4u_core::JobStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{JobView, TelemetryReply};

/// One item of the answer to a batch of packets (`POST /api/telemetry/russian-doll` with a
/// JSON array), in the order of the packets: the packet's reply, or why it was refused (the
/// status and error body a single packet would have got).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TelemetryBatchItem {
    Reply(TelemetryReply),
    Refused {
        /// The HTTP status this packet alone would have been answered with.
        status: u16,
        error: RefusedPacket,
    },
}

/// Why a packet of a batch was refused: the error body's `{code, message, field}`, with
/// `field` always present (`null` unless a field of the packet is at fault).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RefusedPacket {
    /// SNAKE_CASE, stable: the error codes of a single packet's answer.
    pub code: String,
    pub message: String,
    /// The packet field at fault, for validation errors; `null` otherwise.
    #[schema(required = true)]
    pub field: Option<String>,
}

/// The answer to `POST /api/telemetry/russian-doll`: one reply for one packet (a JSON
/// object), or one item per packet for a batch (a JSON array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TelemetryAnswer {
    Batch(Vec<TelemetryBatchItem>),
    Single(TelemetryReply),
}

/// `GET /api/jobs/{id}/telemetry`: the job's stored samples, oldest first, values clamped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySeries {
    pub job_id: String,
    /// The readings were derived from CPU use (an emulated GPU), not measured.
    pub emulated: bool,
    pub samples: Vec<TelemetrySampleView>,
}

/// One stored sample: an item of a series' `samples`, and the data of a `sample` event of
/// `GET /api/jobs/{id}/telemetry?follow=1` (which adds `at_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySampleView {
    /// When the platform received it, RFC 3339.
    pub at: String,
    pub gpu_utilization_pct: f64,
    pub vram_used_gb: f64,
    pub vram_allocated_gb: f64,
    pub power_draw_watts: f64,
    pub temperature_c: f64,
    pub outbound_bytes_per_sec: f64,
    #[schema(required = true)]
    pub unique_dest_ips: Option<u32>,
    /// The agent's inference: `TRAINING`, `INFERENCE`, `CRYPTO_MINING` or `IDLE`.
    #[schema(required = true)]
    pub inferred_pattern: Option<String>,
    /// `sample` events only: the receipt time in unix ms (the event's id; `after_ms` resumes
    /// after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
}

/// The data of the `end` event of `GET /api/jobs/{id}/telemetry?follow=1`: the job has
/// ended, no sample follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryStreamEnd {
    pub status: JobStatus,
}

/// A job's latest telemetry as its view shows it (`JobView.latest_metrics`): the last
/// packet's values after clamping. Stored with the job when the packet arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatestMetrics {
    pub gpu_utilization_pct: f64,
    pub vram_used_gb: f64,
    pub vram_allocated_gb: f64,
    pub power_draw_watts: f64,
    pub temperature_c: f64,
    pub outbound_bytes_per_sec: f64,
    /// The agent's inference: `TRAINING`, `INFERENCE`, `CRYPTO_MINING` or `IDLE`.
    #[schema(required = true)]
    pub inferred_pattern: Option<String>,
    #[schema(required = true)]
    pub unique_dest_ips: Option<u32>,
    #[schema(required = true)]
    pub foreign_gpu_processes: Option<u32>,
    #[schema(required = true)]
    pub throttling: Option<bool>,
    /// Derived from CPU use (an emulated GPU), not measured.
    #[serde(default)]
    #[schema(required = true)]
    pub emulated: bool,
    /// The fields whose values were clamped to their physical range.
    #[serde(default)]
    #[schema(required = true)]
    pub clamped: Vec<String>,
    /// When the platform received the packet, RFC 3339.
    pub at: String,
}

/// One entry of a job's `anomalies` summary (`JobView.anomalies`): a rule that fired on the
/// job, how often, first and last, with its latest evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnomalySummary {
    /// The rule (`AnomalyView.rule`).
    pub rule: String,
    /// `INFO`, `SOFT` or `HARD`.
    pub severity: String,
    /// `CUSTOMER`, `PROVIDER` or `NONE`.
    pub attribution: String,
    /// Whether any of its verdicts ordered a kill.
    #[serde(default)]
    #[schema(required = true)]
    pub kill: bool,
    /// Verdicts of this rule on the job.
    #[serde(default)]
    #[schema(required = true)]
    pub count: u64,
    /// RFC 3339.
    pub first_at: String,
    pub last_at: String,
    /// The latest verdict's evidence.
    pub evidence: String,
}

/// Typed readings of what a job view holds as stored JSON.
impl JobView {
    /// `latest_metrics` typed; `None` when there is none or it does not read.
    pub fn metrics(&self) -> Option<LatestMetrics> {
        self.latest_metrics
            .as_ref()
            .and_then(|metrics| LatestMetrics::deserialize(metrics).ok())
    }

    /// The `anomalies` summary typed; entries that do not read are left out.
    pub fn anomaly_summary(&self) -> Vec<AnomalySummary> {
        self.anomalies
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|entry| AnomalySummary::deserialize(entry).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A refused packet says `field: null` rather than leaving it out, and a batch reads back
    /// item by item.
    #[test]
    fn a_batch_answer_reads_reply_by_reply() {
        let answer = json!([
            {"kill_job": false, "reason": null, "anomalies": [], "status": "RUNNING", "at_ms": 5, "max_gap_ms": 60000},
            {"status": 404, "error": {"code": "JOB_NOT_FOUND", "message": "no job", "field": null}},
            {"status": 400, "error": {"code": "INVALID_TYPE", "message": "bad", "field": "power_draw_watts"}},
        ]);
        let items: Vec<TelemetryBatchItem> = serde_json::from_value(answer.clone()).unwrap();
        assert!(matches!(&items[0], TelemetryBatchItem::Reply(reply) if reply.status == "RUNNING"));
        assert!(matches!(
            &items[1],
            TelemetryBatchItem::Refused { status: 404, error } if error.field.is_none()
        ));
        assert_eq!(serde_json::to_value(&items).unwrap(), answer);
        let TelemetryAnswer::Batch(read) = serde_json::from_value(answer).unwrap() else {
            panic!("an array is a batch");
        };
        assert_eq!(read, items);
        let single = json!({"kill_job": true, "reason": "OUTBOUND_PORT_SCAN", "anomalies": [], "status": "FAILED"});
        assert!(matches!(
            serde_json::from_value(single).unwrap(),
            TelemetryAnswer::Single(reply) if reply.kill_job
        ));
    }

    /// `at_ms` is on events only; the series' samples have none.
    #[test]
    fn a_sample_names_at_ms_only_when_it_has_one() {
        let mut sample = TelemetrySampleView {
            at: "2027-01-15T08:00:00Z".into(),
            gpu_utilization_pct: 50.0,
            vram_used_gb: 1.0,
            vram_allocated_gb: 2.0,
            power_draw_watts: 100.0,
            temperature_c: 60.0,
            outbound_bytes_per_sec: 0.0,
            unique_dest_ips: None,
            inferred_pattern: None,
            at_ms: None,
        };
        let value = serde_json::to_value(&sample).unwrap();
        assert!(value.get("at_ms").is_none(), "{value}");
        assert_eq!(value["unique_dest_ips"], serde_json::Value::Null);
        sample.at_ms = Some(7);
        assert_eq!(serde_json::to_value(&sample).unwrap()["at_ms"], 7);
    }

    /// What jobs stored before these types existed still reads, and a summary entry missing
    /// its counters reads as the hand-built code read it (none, no kill).
    #[test]
    fn stored_metrics_and_summaries_read() {
        let metrics: LatestMetrics = serde_json::from_value(json!({
            "gpu_utilization_pct": 100.0, "vram_used_gb": 22.1, "vram_allocated_gb": 24.0,
            "power_draw_watts": 0.0, "temperature_c": 150.0, "outbound_bytes_per_sec": 1.0,
            "inferred_pattern": "TRAINING", "unique_dest_ips": 2, "foreign_gpu_processes": 0,
            "throttling": null, "emulated": false, "clamped": ["temperature_c"],
            "at": "2027-01-15T08:00:00Z"
        }))
        .unwrap();
        assert_eq!(metrics.clamped, ["temperature_c"]);
        assert_eq!(metrics.throttling, None);
        let entry: AnomalySummary = serde_json::from_value(json!({
            "rule": "OUTBOUND_PORT_SCAN", "severity": "HARD", "attribution": "CUSTOMER",
            "first_at": "2027-01-15T08:00:00Z", "last_at": "2027-01-15T08:00:00Z",
            "evidence": "80 destinations"
        }))
        .unwrap();
        assert_eq!((entry.count, entry.kill), (0, false));
    }
}
