//! Job inputs: customers upload artifacts; the agent of the node a job runs on downloads the
//! job's inputs (and checks their SHA-256 itself).

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gp4u_core::ids::{ArtifactId, UserId};
use gp4u_proto::{ArtifactCreated, ErrorCode};
use gp4u_store::ArtifactRecord;

use crate::auth::{CLEARANCE_CUSTOMER, Caller};
use crate::blobs;
use crate::error::{ApiError, ApiResult};
use crate::routes::agent::{NodeQuery, node_job, require_live};
use crate::state::AppState;

/// The header that carries a blob's hex SHA-256, in both directions.
pub use gp4u_proto::SHA256_HEADER;

/// Upload an artifact (a job input): the raw request body, any content type.
#[utoipa::path(
    post, path = "/api/artifacts", tag = "files",
    request_body(content = [u8],
        description = "The artifact's bytes, at most GP4U_MAX_ARTIFACT_BYTES (default 256 MiB)"),
    responses(
        (status = 201, body = ArtifactCreated), (status = 401, body = gp4u_proto::ErrorBody),
        (status = 403, body = gp4u_proto::ErrorBody), (status = 413, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn upload_artifact(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    caller.require(CLEARANCE_CUSTOMER, ErrorCode::CustomerRequired, "customer")?;
    let limit = state.limits.max_artifact_bytes;
    blobs::check_declared_length(&headers, "the artifact", limit)?;
    let id = ArtifactId::from_random(state.random_id_bytes());
    let key = blobs::artifact_key(&id);
    let received = blobs::receive(&state.blobs, &key, body, "the artifact", limit).await?;
    let record = ArtifactRecord {
        id: id.clone(),
        owner_id: caller.id().clone(),
        sha256: received.sha256.clone(),
        size_bytes: received.size_bytes,
        created_at_ms: state.now_ms(),
    };
    received.finish().await?;
    if let Err(error) = state.store.insert_artifact(&record).await {
        // Not recorded: the blob is unreachable, so remove it.
        if let Err(delete_error) = object_store::ObjectStoreExt::delete(&*state.blobs, &key).await {
            tracing::warn!(artifact = %id, error = %delete_error, "could not remove an unrecorded artifact");
        }
        return Err(error.into());
    }
    tracing::info!(artifact = %id, owner = %record.owner_id, bytes = record.size_bytes, "artifact stored");
    Ok((
        StatusCode::CREATED,
        Json(ArtifactCreated {
            id: id.to_string(),
            sha256: record.sha256,
            size_bytes: record.size_bytes,
        }),
    )
        .into_response())
}

/// Submission check: every input is an artifact of the submitter, listed once. Someone else's
/// artifact and a missing one get the same answer, so artifact ids cannot be probed.
pub async fn check_inputs(
    state: &AppState,
    owner: &UserId,
    inputs: &[ArtifactId],
) -> ApiResult<()> {
    let mut seen = BTreeSet::new();
    for (index, input) in inputs.iter().enumerate() {
        let invalid = |message: String| {
            let mut error = ApiError::new(ErrorCode::InvalidInputs, message);
            error.field = Some(format!("inputs[{index}]"));
            error
        };
        if !seen.insert(input) {
            return Err(invalid(format!("`inputs` lists {input} twice")));
        }
        match state.store.get_artifact(input).await? {
            Some(artifact) if artifact.owner_id == *owner => {}
            _ => {
                return Err(invalid(format!(
                    "{input} is not an artifact of yours; upload it with POST /api/artifacts first"
                )));
            }
        }
    }
    Ok(())
}

/// The agent downloads one of its job's inputs. Only the node the job is placed on, only while
/// the job has not ended, only the artifacts the job lists; anything else is a 404 (or 409).
#[utoipa::path(
    get, path = "/api/agent/jobs/{id}/inputs/{art_id}", tag = "agent",
    params(("id" = String, Path), ("art_id" = String, Path), NodeQuery),
    responses(
        (status = 200, body = [u8], description = "The artifact's bytes; its SHA-256 in x-gp4u-sha256"),
        (status = 404, body = gp4u_proto::ErrorBody), (status = 409, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn agent_input(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, art_id)): Path<(String, String)>,
    query: Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let (_node, job) = node_job(&state, &caller, &id, query).await?;
    require_live(&job)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::ArtifactNotFound,
            format!("job {} has no input {art_id}", job.id),
        )
    };
    let artifact_id = ArtifactId::parse(&art_id).map_err(|_| not_found())?;
    if !job.manifest.inputs.contains(&artifact_id) {
        return Err(not_found());
    }
    let artifact = state
        .store
        .get_artifact(&artifact_id)
        .await?
        .ok_or_else(not_found)?;
    let Some((size, stream)) =
        blobs::open(&state.blobs, &blobs::artifact_key(&artifact_id)).await?
    else {
        return Err(ApiError::internal(
            "artifact",
            format!("artifact {artifact_id} is recorded but its blob is missing"),
        ));
    };
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&artifact.sha256) {
        headers.insert(SHA256_HEADER, value);
    }
    Ok(response)
}
