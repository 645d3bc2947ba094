//! `POST /api/agent/visibility`: an agent answers a visibility challenge of its node
//! (issued and judged in [`crate::visibility`]).

use axum::Json;
use axum::extract::State;
use gp4u_proto::{ErrorCode, VisibilityAnswer, VisibilityVerdict};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::agent::owned_node;
use crate::state::AppState;

/// The agent's answer to a challenge that rode on one of its job's telemetry replies: the
/// evidence of the job's container, signed with the node key. The verdict is `ANSWERED` or
/// `BAD_ANSWER` (which counts as a refusal); an answer to no open challenge of this node (an
/// unknown or closed nonce, a late or repeated answer) is 404 and changes nothing.
#[utoipa::path(
    post, path = "/api/agent/visibility", tag = "agent", request_body = VisibilityAnswer,
    responses((status = 200, body = VisibilityVerdict), (status = 400, body = gp4u_proto::ErrorBody),
        (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn answer(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<Json<VisibilityVerdict>> {
    let answer: VisibilityAnswer = serde_json::from_value(body.value).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidReport,
            format!("the visibility answer does not parse: {error}"),
        )
    })?;
    if answer.evidence.canonical().is_none() || answer.nonce.len() > 128 {
        return Err(ApiError::new(
            ErrorCode::InvalidReport,
            format!(
                "a visibility answer's nonce is at most 128 characters and each evidence field one line of at most {} characters",
                gp4u_proto::VisibilityEvidence::MAX_FIELD_CHARS
            ),
        ));
    }
    let node = owned_node(&state, &caller, &answer.node_id).await?;
    match crate::visibility::judge_answer(&state, &node, &answer).await? {
        Some((verdict, detail)) => {
            tracing::info!(node_id = %node.id, job_id = %answer.job_id, verdict = verdict.as_str(), detail = ?detail, "visibility answer judged");
            Ok(Json(VisibilityVerdict {
                result: verdict.as_str().to_string(),
                detail,
            }))
        }
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no open visibility challenge {} for job {} of node {}: it is unknown, another node's, or already closed (answered, or past its deadline)",
                answer.nonce, answer.job_id, node.id
            ),
        )),
    }
}
