//! The agent's visibility endpoint (SPEC §7, "visibility blocked"): with `--listen ADDR` the
//! agent answers `POST /gp4u/visibility`. The platform sends a fresh nonce signed with its key;
//! the agent checks the signature against the platform key it got at registration, the node
//! id, the nonce's shape and the challenge's age, and answers with its node key's signature
//! (`gp4u_attest::visibility::answer`). A challenge that fails any check is refused with 403
//! `CHALLENGE_REFUSED`; bodies are bounded ([`MAX_BODY_BYTES`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::{SigningKey, VerifyingKey};
use gp4u_proto::{VisibilityAnswer, VisibilityChallenge};
use serde_json::json;

/// The route the platform calls.
pub const PATH: &str = "/gp4u/visibility";
/// The largest request body read (a challenge is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 4096;

/// What the endpoint answers with.
pub struct Responder {
    pub node_id: String,
    pub node_key: SigningKey,
    /// The platform's key; `None` for a node registered with a server that did not give one
    /// (challenges are then answered unverified: the answer is domain-separated, so it is
    /// never a valid signature of anything else).
    pub platform_key: Option<VerifyingKey>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("node_id", &self.node_id)
            .field("platform_key", &self.platform_key.is_some())
            .finish_non_exhaustive()
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

async fn challenge(State(responder): State<Arc<Responder>>, request: Request) -> Response {
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                format!("a challenge is at most {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let challenge: VisibilityChallenge = match serde_json::from_slice(&body) {
        Ok(challenge) => challenge,
        Err(parse) => {
            tracing::warn!(error = %parse, "visibility challenge refused: not a challenge");
            return error(
                StatusCode::FORBIDDEN,
                "CHALLENGE_REFUSED",
                format!("not a visibility challenge: {parse}"),
            );
        }
    };
    match gp4u_attest::visibility::answer(
        &responder.node_key,
        &responder.node_id,
        responder.platform_key.as_ref(),
        &challenge.node_id,
        &challenge.nonce,
        challenge.issued_at_ms,
        &challenge.signature,
        crate::agent::now_ms(),
    ) {
        Ok(signature) => {
            tracing::info!(nonce = %challenge.nonce, "visibility challenge answered");
            Json(VisibilityAnswer {
                node_id: responder.node_id.clone(),
                nonce: challenge.nonce,
                signature,
            })
            .into_response()
        }
        Err(refusal) => {
            tracing::warn!(%refusal, "visibility challenge refused");
            error(
                StatusCode::FORBIDDEN,
                "CHALLENGE_REFUSED",
                refusal.to_string(),
            )
        }
    }
}

/// The endpoint's router.
pub fn router(responder: Arc<Responder>) -> axum::Router {
    axum::Router::new()
        .route(PATH, post(challenge))
        .with_state(responder)
}

/// `--advertise` or, by default, `http://<bound address>`.
pub fn advertised(bound: SocketAddr, advertise: Option<&str>) -> String {
    match advertise {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{bound}"),
    }
}

/// Serves the endpoint on `listener` until the task is dropped or aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    responder: Arc<Responder>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(responder)).await {
            tracing::error!(%error, "the visibility endpoint stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_advertised_url_defaults_to_the_bound_address() {
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(advertised(bound, None), "http://127.0.0.1:4242");
        assert_eq!(
            advertised(bound, Some("http://gpu-7.example:80/")),
            "http://gpu-7.example:80"
        );
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(advertised(v6, None), "http://[::1]:9");
    }
}
