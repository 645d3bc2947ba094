//! The agent's Prometheus metrics (`gp4u agent --metrics-listen ADDR`): containers, image
//! pulls, telemetry posted, commitments sent, polls. Every name is `gp4u_agent_…`.
//!
//! The numbers live in [`AgentMetrics`], held by the [`crate::client::PlatformClient`] (which
//! counts polls and telemetry where it sends them) and read by the agent loop (containers,
//! pulls). They are counted whether or not a listener serves them: atomics, nanoseconds each.
//!
//! The listener has no token: providers scrape it from their own Prometheus, often from
//! another host, so it binds where the provider says. It shows no job content, only counts;
//! bind it to loopback or a private interface when the host is exposed.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Pull durations, seconds: a cached image answers in milliseconds, a large one in minutes.
const PULL_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// How a container ended: see [`Outcome`].
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// How a job's container (or, with `--runtime process`, its child process) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Exited,
    /// A non-zero exit code.
    Failed,
    /// The kernel killed it at its memory cap.
    OomKilled,
    /// The platform ordered it killed (an anomaly, a cancel, the job gone).
    KilledByPlatform,
    /// The agent's duration watchdog (1.1 × declared).
    DurationExceeded,
    /// It wrote past its `/scratch` size.
    ScratchExceeded,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Exited,
        Outcome::Failed,
        Outcome::OomKilled,
        Outcome::KilledByPlatform,
        Outcome::DurationExceeded,
        Outcome::ScratchExceeded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Exited => "exited",
            Outcome::Failed => "failed",
            Outcome::OomKilled => "oom_killed",
            Outcome::KilledByPlatform => "killed_by_platform",
            Outcome::DurationExceeded => "duration_exceeded",
            Outcome::ScratchExceeded => "scratch_exceeded",
        }
    }
}

/// The agent's metrics; one per agent, shared through `Arc`.
pub struct AgentMetrics {
    registry: Registry,
    pub containers_running: Gauge,
    pub containers_started: Counter,
    pub containers_ended: Family<OutcomeLabel, Counter>,
    pub image_pulls: Family<ResultLabel, Counter>,
    pub image_pull_seconds: Histogram,
    pub telemetry_posted: Counter,
    pub telemetry_failed: Counter,
    pub commitments_sent: Counter,
    pub polls: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("gp4u_agent");
        let containers_running = Gauge::default();
        registry.register(
            "containers_running",
            "Job containers (or child processes) this agent watches now",
            containers_running.clone(),
        );
        let containers_started = Counter::default();
        registry.register(
            "containers_started",
            "Job containers (or child processes) started",
            containers_started.clone(),
        );
        let containers_ended = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "containers_ended",
            "Job containers (or child processes) ended, by outcome",
            containers_ended.clone(),
        );
        let image_pulls = Family::<ResultLabel, Counter>::default();
        registry.register(
            "image_pulls",
            "Digest-pinned image pulls, by result (ok or failed)",
            image_pulls.clone(),
        );
        let image_pull_seconds = Histogram::new(PULL_BUCKETS);
        registry.register_with_unit(
            "image_pull_duration",
            "Image pulls, from the request to the digest checked, whatever the result",
            Unit::Seconds,
            image_pull_seconds.clone(),
        );
        let telemetry_posted = Counter::default();
        registry.register(
            "telemetry_packets_posted",
            "Telemetry packets the platform answered (alone or in a batch)",
            telemetry_posted.clone(),
        );
        let telemetry_failed = Counter::default();
        registry.register(
            "telemetry_packet_failures",
            "Telemetry packets whose post failed (unreachable, timed out or refused)",
            telemetry_failed.clone(),
        );
        let commitments_sent = Counter::default();
        registry.register(
            "power_commitments_sent",
            "Commitments to power readings delivered with telemetry packets",
            commitments_sent.clone(),
        );
        let polls = Family::<ResultLabel, Counter>::default();
        registry.register(
            "polls",
            "Assignment long-polls, by result (assignment, empty or error)",
            polls.clone(),
        );
        // Every known label value starts at zero, so that its series exists before the first
        // event (and `rate()` sees that one).
        for outcome in Outcome::ALL {
            containers_ended
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.as_str(),
                })
                .get();
        }
        for result in ["ok", "failed"] {
            AgentMetrics::touch(&image_pulls, result);
        }
        for result in ["assignment", "empty", "error"] {
            AgentMetrics::touch(&polls, result);
        }
        AgentMetrics {
            registry,
            containers_running,
            containers_started,
            containers_ended,
            image_pulls,
            image_pull_seconds,
            telemetry_posted,
            telemetry_failed,
            commitments_sent,
            polls,
        }
    }

    fn touch(family: &Family<ResultLabel, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabel { result }).get();
    }

    /// Counts one more of `result` in `family` (a family of [`ResultLabel`]).
    pub fn count(family: &Family<ResultLabel, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a container that ended.
    pub fn ended(&self, outcome: Outcome) {
        self.containers_ended
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The registry in OpenMetrics or, when `openmetrics` is false, the text format 0.0.4.
    pub fn render(&self, openmetrics: bool) -> Result<(String, &'static str), std::fmt::Error> {
        let mut text = String::with_capacity(4096);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
            Ok((
                text,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ))
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
            Ok((
                text,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            ))
        }
    }
}

async fn serve_metrics(State(metrics): State<Arc<AgentMetrics>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    match metrics.render(openmetrics) {
        Ok((body, content_type)) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {error}"),
        )
            .into_response(),
    }
}

/// The listener's router: `GET /metrics`, nothing else.
pub fn router(metrics: Arc<AgentMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(metrics)
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let address = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |address| address.to_string());
    tracing::info!(%address, "serving Prometheus metrics at GET /metrics");
    let served = axum::serve(listener, router(metrics))
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    // The agent is gone: stop with it.
                    return;
                }
            }
        })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the metrics listener stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_metric_is_gp4u_agent_and_counts_show() {
        let metrics = AgentMetrics::new();
        metrics.containers_started.inc();
        metrics.ended(Outcome::KilledByPlatform);
        AgentMetrics::count(&metrics.polls, "empty");
        metrics.image_pull_seconds.observe(0.2);
        let (text, content_type) = metrics.render(false).unwrap();
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(
            text.contains("gp4u_agent_containers_started_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gp4u_agent_containers_ended_total{outcome=\"killed_by_platform\"} 1\n")
        );
        assert!(text.contains("gp4u_agent_polls_total{result=\"empty\"} 1\n"));
        assert!(text.contains("gp4u_agent_image_pull_duration_seconds_count 1\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("gp4u_agent_"), "{line}");
        }
        let (open, _) = metrics.render(true).unwrap();
        assert!(open.ends_with("# EOF\n"));
    }
}
