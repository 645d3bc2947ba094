//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gp4u_proto::Health;

use crate::state::AppState;

fn health(state: &AppState, status: &str) -> Json<Health> {
    Json(Health {
        status: status.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        engine: state.store.engine().as_str().to_string(),
    })
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    health(&state, "ok")
}

/// The server can serve: the database answers and shutdown has not begun.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, health(&state, "draining"));
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, health(&state, "ready")),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                health(&state, "database unavailable"),
            )
        }
    }
}
