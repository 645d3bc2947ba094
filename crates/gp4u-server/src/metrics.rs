//! `GET /metrics` (SPEC §11): the server's Prometheus metrics, every name `gp4u_…`.
//!
//! Two kinds of numbers:
//! - **events**, counted where they happen (a submission accepted, a job placed, a packet
//!   stored, an anomaly found, a kill ordered, a slash taken) and the request-latency
//!   histograms filled by [`track_requests`]. These are atomics (the histograms a short
//!   mutex): counting costs nanoseconds next to the request.
//! - **levels** read from the store at scrape time (jobs by status, the outbox's lag per
//!   chamber, the ledger's size) and from the pool (open and idle connections). They are read
//!   at most once per [`REFRESH_EVERY`], whoever scrapes, so that many scrapers (or a scrape
//!   loop gone wild) cost the database a few indexed counts a second at most.
//!
//! Counters are per process: after a restart, or across replicas, they start again from zero,
//! which Prometheus's `rate()` and `increase()` expect. Levels are the database's, the same on
//! every replica.
//!
//! The output is OpenMetrics when the scraper asks for it (Prometheus does) and the classic
//! text format 0.0.4 otherwise (curl, `promtool check metrics`).
//!
//! The endpoint is open unless `GP4U_METRICS_TOKEN` is set; then it wants
//! `Authorization: Bearer <token>`, compared in constant time (digests of both, so that not
//! even the length leaks), and never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gp4u_core::chambers::{Aetherion, Chamber, Energy, Mnemo, Outerim};
use gp4u_core::job::{FailureReason, JobStatus};
use gp4u_core::tutela::{Rule, SlashKind};
use gp4u_proto::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::state::AppState;

/// The levels read from the store are read again at most this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// Request latency buckets, seconds: 0.5 ms to 10 s (a long-poll of the agent waits up to its
/// poll time, and lands in the last buckets).
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Seconds from the packet that showed an anomaly to the kill order committed.
const KILL_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route as declared (`/api/jobs/{id}`), never the raw path: the label's values are
    /// bounded by the route table.
    pub route: String,
    pub method: String,
    /// `2xx`, `4xx`, …
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChamberLabel {
    pub chamber: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// `idle` or `in_use`.
    pub state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The server's metrics. One per process, shared by every request and background loop.
pub struct Metrics {
    registry: Registry,
    /// `false` (`GP4U_METRICS=false`): no `/metrics` route and no request timing; the event
    /// counters still count (atomics), unread.
    enabled: bool,
    /// `None`: `/metrics` is open.
    token_digest: Option<[u8; 32]>,
    pub requests: HistogramFamily<RequestLabels>,
    pub submissions: Counter,
    pub placements: Counter,
    pub telemetry_packets: Counter,
    pub anomalies: Family<RuleLabel, Counter>,
    pub kills: Family<ReasonLabel, Counter>,
    pub kill_seconds: Histogram,
    pub slashes: Family<KindLabel, Counter>,
    jobs: Family<StatusLabel, Gauge>,
    outbox_lag: Family<ChamberLabel, Gauge>,
    outbox_unsequenced: Gauge,
    ledger_entries: Gauge,
    pool_connections: Family<PoolLabel, Gauge>,
    pool_max: Gauge,
    refresh_failures: Counter,
    /// When the levels were last read; the lock also makes concurrent scrapes wait for one read.
    refreshed: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token, not even its digest.
        f.debug_struct("Metrics")
            .field("token_required", &self.token_digest.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

impl Metrics {
    /// Metrics whose endpoint wants `token` when one is given.
    pub fn new(token: Option<&str>) -> Metrics {
        let mut registry = Registry::with_prefix("gp4u");
        let requests = HistogramFamily::<RequestLabels>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "HTTP requests by route template, method and status class, from the request's arrival at the router to its response headers",
            Unit::Seconds,
            requests.clone(),
        );
        let submissions = Counter::default();
        registry.register(
            "job_submissions",
            "Jobs accepted by POST /api/jobs (201; an idempotent replay is not counted again)",
            submissions.clone(),
        );
        let placements = Counter::default();
        registry.register(
            "placements",
            "Jobs Atlas assigned to a GPU (a job moved to another node counts again)",
            placements.clone(),
        );
        let telemetry_packets = Counter::default();
        registry.register(
            "telemetry_packets_ingested",
            "Telemetry packets stored (each packet of a batch counts)",
            telemetry_packets.clone(),
        );
        let anomalies = Family::<RuleLabel, Counter>::default();
        registry.register(
            "anomalies",
            "Anomaly verdicts by rule (SPEC 7)",
            anomalies.clone(),
        );
        let kills = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "kills",
            "Kill orders given to agents in telemetry replies, by the rule or reason",
            kills.clone(),
        );
        let kill_seconds = Histogram::new(KILL_BUCKETS);
        registry.register_with_unit(
            "kill_order_duration",
            "From the arrival of the packet that called for a kill to the kill order committed",
            Unit::Seconds,
            kill_seconds.clone(),
        );
        let slashes = Family::<KindLabel, Counter>::default();
        registry.register(
            "slashes",
            "Slashes taken from providers, by kind",
            slashes.clone(),
        );
        let jobs = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the database by status (read at scrape time)",
            jobs.clone(),
        );
        let outbox_lag = Family::<ChamberLabel, Gauge>::default();
        registry.register(
            "outbox_lag_events",
            "Sequenced outbox events a chamber has not applied yet",
            outbox_lag.clone(),
        );
        let outbox_unsequenced = Gauge::default();
        registry.register(
            "outbox_unsequenced_events",
            "Outbox events written but not yet sequenced by the relay",
            outbox_unsequenced.clone(),
        );
        let ledger_entries = Gauge::default();
        registry.register(
            "ledger_entries",
            "Entries in the ledger (Obsidian)",
            ledger_entries.clone(),
        );
        let pool_connections = Family::<PoolLabel, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Open database connections of this process, idle or in use",
            pool_connections.clone(),
        );
        let pool_max = Gauge::default();
        registry.register(
            "db_pool_max_connections",
            "The most database connections this process opens",
            pool_max.clone(),
        );
        let refresh_failures = Counter::default();
        registry.register(
            "metrics_refresh_failures",
            "Scrapes whose store-backed levels could not be read (the previous values were served)",
            refresh_failures.clone(),
        );
        // Every known label value starts at zero, so that its series exists (and `rate()` and
        // `increase()` see the first event) before anything happened.
        for rule in Rule::ALL {
            anomalies
                .get_or_create(&RuleLabel {
                    rule: rule.as_str(),
                })
                .get();
            kills
                .get_or_create(&ReasonLabel {
                    reason: rule.as_str(),
                })
                .get();
        }
        kills
            .get_or_create(&ReasonLabel {
                reason: FailureReason::DurationExceeded.as_str(),
            })
            .get();
        for kind in SlashKind::ALL {
            slashes
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .get();
        }
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "The server's version (always 1)", build);
        Metrics {
            registry,
            enabled: true,
            token_digest: token.map(digest),
            requests,
            submissions,
            placements,
            telemetry_packets,
            anomalies,
            kills,
            kill_seconds,
            slashes,
            jobs,
            outbox_lag,
            outbox_unsequenced,
            ledger_entries,
            pool_connections,
            pool_max,
            refresh_failures,
            refreshed: Mutex::new(None),
        }
    }

    /// Metrics with no endpoint and no request timing (`GP4U_METRICS=false`).
    pub fn disabled() -> Metrics {
        Metrics {
            enabled: false,
            ..Metrics::new(None)
        }
    }

    /// Whether `/metrics` is served and requests are timed.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `/metrics` wants a token.
    pub fn token_required(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Whether the request carries the metrics token (always, when none is configured).
    fn authorized(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.token_digest else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            return Err(ApiError::new(
                ErrorCode::TokenMissing,
                "this server's /metrics wants the metrics token (GP4U_METRICS_TOKEN): send Authorization: Bearer <token>",
            ));
        };
        if bool::from(digest(presented.trim()).ct_eq(expected)) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::TokenBadSignature,
                "the bearer token is not this server's metrics token (GP4U_METRICS_TOKEN)",
            ))
        }
    }

    /// Reads the store-backed levels again if the last read is older than [`REFRESH_EVERY`].
    async fn refresh(&self, state: &AppState) {
        let pool = state.store.pool_stats();
        self.pool_max.set(i64::from(pool.max));
        self.pool_connections
            .get_or_create(&PoolLabel { state: "idle" })
            .set(i64::from(pool.idle));
        self.pool_connections
            .get_or_create(&PoolLabel { state: "in_use" })
            .set(i64::from(pool.open - pool.idle));
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return;
        }
        match self.read_levels(state).await {
            Ok(()) => *refreshed = Some(Instant::now()),
            Err(error) => {
                self.refresh_failures.inc();
                tracing::warn!(%error, "metrics: reading jobs, outbox and ledger levels failed; serving the previous values");
            }
        }
    }

    async fn read_levels(&self, state: &AppState) -> Result<(), gp4u_store::StoreError> {
        let counts = state.store.count_jobs_by_status().await?;
        for status in JobStatus::ALL {
            let count = counts
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count);
            self.jobs
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(count);
        }
        let head = state.store.outbox_head().await?;
        let subscribers = state.store.list_subscribers().await?;
        for chamber in [Mnemo::NAME, Aetherion::NAME, Outerim::NAME, Energy::NAME] {
            let position = subscribers
                .iter()
                .find(|subscriber| subscriber.name == chamber)
                .map_or(0, |subscriber| subscriber.position);
            self.outbox_lag
                .get_or_create(&ChamberLabel { chamber })
                .set((head - position).max(0));
        }
        self.outbox_unsequenced
            .set(state.store.outbox_unsequenced().await?);
        let ledger = state.store.ledger_size().await?;
        self.ledger_entries
            .set(i64::try_from(ledger).unwrap_or(i64::MAX));
        Ok(())
    }

    /// The registry in OpenMetrics or, when `openmetrics` is false, the text format 0.0.4.
    pub fn render(&self, openmetrics: bool) -> Result<(String, &'static str), std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
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

    /// Counts a kill order given `since` the packet that called for it arrived.
    pub fn kill_ordered(&self, reason: &'static str, since: Instant) {
        self.kills.get_or_create(&ReasonLabel { reason }).inc();
        self.kill_seconds.observe(since.elapsed().as_secs_f64());
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether the scraper takes OpenMetrics (Prometheus says so in `Accept`).
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"))
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let metrics = state.metrics.clone();
    if let Err(error) = metrics.authorized(&headers) {
        return error.into_response();
    }
    metrics.refresh(&state).await;
    match metrics.render(wants_openmetrics(&headers)) {
        Ok((body, content_type)) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response(),
        Err(error) => ApiError::internal("encoding metrics", error).into_response(),
    }
}

/// Middleware (a route layer, so that the route is known): times every routed request into
/// `gp4u_http_request_duration_seconds`.
pub async fn track_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    let status = status_class(response.status());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_token_is_compared_whole_and_never_shown() {
        let metrics = Metrics::new(Some("s3cret-metrics-token"));
        let mut headers = HeaderMap::new();
        assert_eq!(
            metrics.authorized(&headers).unwrap_err().code,
            "TOKEN_MISSING"
        );
        for wrong in [
            "Bearer s3cret-metrics-toke",
            "Bearer s3cret-metrics-token!",
            "Bearer ",
            "Basic s3cret-metrics-token",
            "s3cret-metrics-token",
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(wrong).unwrap());
            assert!(metrics.authorized(&headers).is_err(), "{wrong} was let in");
        }
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret-metrics-token"),
        );
        assert!(metrics.authorized(&headers).is_ok());
        assert!(!format!("{metrics:?}").contains("s3cret"));
        assert!(Metrics::new(None).authorized(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn both_formats_name_everything_gp4u_and_end_as_their_format_wants() {
        let metrics = Metrics::default();
        metrics.submissions.inc();
        metrics
            .anomalies
            .get_or_create(&RuleLabel {
                rule: "CRYPTO_MINING_DURING_ML_JOB",
            })
            .inc();
        metrics.kill_ordered("CRYPTO_MINING_DURING_ML_JOB", Instant::now());
        let (open, content_type) = metrics.render(true).unwrap();
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("gp4u_job_submissions_total 1\n"), "{open}");
        let (text, content_type) = metrics.render(false).unwrap();
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# TYPE gp4u_job_submissions_total counter\n"),
            "{text}"
        );
        assert!(text.contains("gp4u_anomalies_total{rule=\"CRYPTO_MINING_DURING_ML_JOB\"} 1\n"));
        assert!(text.contains("gp4u_kill_order_duration_seconds_count 1\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("gp4u_"), "{line}");
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(StatusCode::CREATED), "2xx");
        assert_eq!(status_class(StatusCode::UNAUTHORIZED), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
    }
}
