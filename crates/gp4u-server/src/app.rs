//! Assembling and running the server: router, middleware, background tasks, shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::{Extension, Router};
use gp4u_bus::{EventBus, InProcessBus, SystemClock, run_chamber};
use gp4u_core::chambers::{Aetherion, Energy, Mnemo, Outerim};
use gp4u_core::clock::Clock;
use gp4u_core::ids::UserId;
use gp4u_core::manifest::Role;
use gp4u_proto::ErrorCode;
use gp4u_store::{NewUser, Store, redact_url};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_http::LatencyUnit;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::{authenticate, authenticate_if_present, require_admin_token};
use crate::config::ServerSettings;
use crate::console::ConsoleApi;
use crate::error::ApiError;
use crate::placement::run_atlas;
use crate::state::{AppState, Limits, os_random_ids};
use crate::{route_table, secret};

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// How often chambers look at the outbox for events relayed by other replicas.
const CHAMBER_POLL: Duration = Duration::from_millis(500);
/// How often expired idempotency keys and rate-limit rows are purged.
const JANITOR_PERIOD: Duration = Duration::from_secs(600);

/// Request ids: random, so that they are unique across replicas and restarts.
#[derive(Clone, Copy, Default)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let id = gp4u_core::hex::encode(&rand::random::<[u8; 8]>());
        axum::http::HeaderValue::from_str(&format!("req_{id}"))
            .ok()
            .map(RequestId::new)
    }
}

async fn route_not_found(request: Request) -> ApiError {
    api_route_not_found(request)
}

/// What a browser gets for an unknown page: the console's page; anything else the API's error.
async fn page_or_route_not_found(request: Request) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    crate::console::page_not_found(request.method(), request.uri().path(), request.headers())
        .unwrap_or_else(|| api_route_not_found(request).into_response())
}

fn api_route_not_found(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no route {} {}; GET /api/openapi.json lists them",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The HTTP API and the web console, with their middleware.
pub fn build_router(state: AppState) -> Router {
    let admin = route_table::admin_routes()
        .into_router()
        .route_layer(from_fn(require_admin_token));
    let public_log = route_table::public_log_routes()
        .into_router()
        .route_layer(from_fn_with_state(state.clone(), authenticate_if_present));
    // Everything but the log, the probes and the document needs a valid token.
    let authenticated = route_table::authenticated_routes()
        .into_router()
        .merge(admin)
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    let mut api_routes = Router::new()
        .merge(authenticated)
        .merge(public_log)
        .merge(route_table::public_routes().into_router());
    if state.metrics.enabled() {
        // A route layer, so that each request is timed under its route's template; requests
        // that match no route are not timed (their paths are not bounded).
        api_routes = api_routes
            .merge(route_table::metrics_routes().into_router())
            .route_layer(from_fn_with_state(
                state.metrics.clone(),
                crate::metrics::track_requests,
            ));
    }
    // The console reads this same API in process, as the signed-in user (`console` docs).
    let api = api_routes
        .clone()
        .fallback(route_not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state.clone());
    let console = route_table::console_routes()
        .into_router()
        .layer(Extension(ConsoleApi(api)));
    Router::new()
        .merge(api_routes)
        .merge(console)
        .fallback(page_or_route_not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let request_id = request
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(LatencyUnit::Micros)))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, RandomRequestId))
        .with_state(state)
}

/// Serves `listener` until `shutdown` resolves: in-flight requests finish, then the relay and
/// the chambers stop (the relay after one last pass), then the store closes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tasks, tasks_stopping) = watch::channel(false);
    let mut tasks = spawn_background(&state, tasks_stopping);
    let draining = state.draining.clone();
    let router = build_router(state.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await
        .context("serving HTTP")?;
    let _ = stop_tasks.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("background tasks did not stop within 10 s; aborting them");
        tasks.abort_all();
    }
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn spawn_background(state: &AppState, stopping: watch::Receiver<bool>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    tasks.spawn(state.relay.clone().run(stopping.clone()));
    tasks.spawn(run_chamber::<Mnemo>(
        state.store.clone(),
        state.bus.clone(),
        state.clock.clone(),
        CHAMBER_POLL,
        stopping.clone(),
    ));
    tasks.spawn(run_chamber::<Aetherion>(
        state.store.clone(),
        state.bus.clone(),
        state.clock.clone(),
        CHAMBER_POLL,
        stopping.clone(),
    ));
    tasks.spawn(run_chamber::<Outerim>(
        state.store.clone(),
        state.bus.clone(),
        state.clock.clone(),
        CHAMBER_POLL,
        stopping.clone(),
    ));
    tasks.spawn(run_chamber::<Energy>(
        state.store.clone(),
        state.bus.clone(),
        state.clock.clone(),
        CHAMBER_POLL,
        stopping.clone(),
    ));
    tasks.spawn(run_atlas(state.clone(), stopping.clone()));
    tasks.spawn(crate::tutela::run_reapers(state.clone(), stopping.clone()));
    tasks.spawn(crate::visibility::run_visibility(
        state.clone(),
        stopping.clone(),
    ));
    tasks.spawn(crate::settlement::run_settlement(
        state.clone(),
        stopping.clone(),
    ));
    tasks.spawn(crate::obsidian::run_sealer(state.clone(), stopping.clone()));
    tasks.spawn(janitor(state.clone(), stopping));
    tasks
}

/// Purges expired idempotency keys and rate-limit rows, so that both tables stay small.
async fn janitor(state: AppState, mut stopping: watch::Receiver<bool>) {
    loop {
        let now_ms = state.now_ms();
        if let Err(error) = state
            .store
            .purge_idempotency_keys(state.limits.idempotency_ttl_ms, now_ms)
            .await
        {
            tracing::warn!(%error, "purging idempotency keys failed");
        }
        if let Err(error) = state.store.purge_rate_limit_hits(60_000, now_ms).await {
            tracing::warn!(%error, "purging rate-limit rows failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(JANITOR_PERIOD) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// A configured, bound server ready to run.
pub struct Server {
    pub state: AppState,
    pub listener: TcpListener,
}

impl Server {
    /// Opens the store (running migrations), loads or generates the token secret, creates the
    /// bootstrap admin, and binds the listener.
    pub async fn build(settings: &ServerSettings) -> anyhow::Result<Server> {
        Server::build_with(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with(
        settings: &ServerSettings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
        let keys = secret::load_or_generate(
            settings.token_secret.as_deref(),
            settings.token_secret_previous.as_deref(),
            &settings.data_dir,
            rand::random::<[u8; 32]>,
        )?;
        let platform_key = gp4u_attest::key::load_or_generate_file(
            &settings.data_dir,
            gp4u_attest::key::PLATFORM_KEY_FILE,
            rand::random::<[u8; 32]>,
        )
        .with_context(|| {
            format!(
                "loading the platform key ({} in {})",
                gp4u_attest::key::PLATFORM_KEY_FILE,
                settings.data_dir.display()
            )
        })?;
        let store = Store::connect(&settings.database_url)
            .await
            .with_context(|| format!("opening database {}", redact_url(&settings.database_url)))?;
        if let Some(admin) = &settings.bootstrap_admin {
            bootstrap_admin(&store, admin, clock.now_ms()).await?;
        }
        std::fs::create_dir_all(&settings.blob_dir)
            .with_context(|| format!("creating blob dir {}", settings.blob_dir.display()))?;
        let blobs: Arc<dyn ObjectStore> = Arc::new(
            LocalFileSystem::new_with_prefix(&settings.blob_dir)
                .with_context(|| format!("opening blob dir {}", settings.blob_dir.display()))?,
        );
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let limits = Limits {
            submissions_per_minute: settings.rate_limit_per_minute,
            max_body_bytes: settings.max_body_bytes,
            idempotency_ttl_ms: i64::try_from(
                settings.idempotency_ttl_hours.saturating_mul(3_600_000),
            )
            .unwrap_or(i64::MAX),
            pickup_timeout_ms: i64::try_from(settings.pickup_timeout_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            max_artifact_bytes: settings.max_artifact_bytes,
            max_output_bytes: settings.max_output_bytes,
            max_log_bytes: settings.max_log_bytes,
        };
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::default());
        let state = AppState::new(store, clock, keys, limits, os_random_ids(), bus)
            .with_blobs(blobs)
            .with_atlas(settings.atlas.clone())
            .with_tutela(settings.tutela.clone(), platform_key)
            .with_billing(settings.billing.clone())?
            .with_metrics(if settings.metrics {
                crate::metrics::Metrics::new(settings.metrics_token.as_deref())
            } else {
                crate::metrics::Metrics::disabled()
            });
        if settings.metrics {
            tracing::info!(
                token_required = settings.metrics_token.is_some(),
                "serving Prometheus metrics at GET /metrics"
            );
        }
        Ok(Server { state, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        serve(self.listener, self.state, shutdown).await
    }
}

async fn bootstrap_admin(store: &Store, id: &str, now_ms: i64) -> anyhow::Result<()> {
    let id = UserId::parse(id).with_context(|| format!("GP4U_BOOTSTRAP_ADMIN {id:?}"))?;
    let created = store
        .ensure_user(
            &NewUser {
                id: id.clone(),
                name: "bootstrap admin".into(),
                role: Role::Admin,
                university: false,
                region: None,
            },
            now_ms,
        )
        .await?;
    if created {
        tracing::info!(user_id = %id, "created bootstrap admin");
    } else if let Some(user) = store.get_user(&id).await?
        && (user.role != Role::Admin || !user.active)
    {
        tracing::warn!(
            user_id = %id,
            role = user.role.as_str(),
            active = user.active,
            "GP4U_BOOTSTRAP_ADMIN names an existing user that is not an active admin; left unchanged"
        );
    }
    Ok(())
}
