//! Job outputs: on exit the agent packs `/output` as a tar.gz and uploads it with its SHA-256;
//! the job's owner downloads it.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use gp4u_proto::{ErrorCode, OutputStored};

use crate::auth::Caller;
use crate::blobs;
use crate::error::{ApiError, ApiResult};
use crate::routes::agent::{NodeQuery, node_job, require_live};
use crate::routes::artifacts::SHA256_HEADER;
use crate::routes::jobs::visible_job;
use crate::state::AppState;

/// The agent uploads the job's `/output` (tar.gz) before its final report. The body's SHA-256
/// must equal `x-gp4u-sha256`, else nothing is stored (400). A new upload replaces the last.
#[utoipa::path(
    put, path = "/api/agent/jobs/{id}/outputs", tag = "agent",
    params(("id" = String, Path), NodeQuery,
        ("x-gp4u-sha256" = String, Header, description = "Hex SHA-256 of the body")),
    request_body(content = [u8], description = "`/output` as tar.gz, at most GP4U_MAX_OUTPUT_BYTES (default 1 GiB)"),
    responses(
        (status = 200, body = OutputStored), (status = 400, body = gp4u_proto::ErrorBody),
        (status = 404, body = gp4u_proto::ErrorBody), (status = 409, body = gp4u_proto::ErrorBody),
        (status = 413, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn upload_output(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<OutputStored>> {
    let (node, job) = node_job(&state, &caller, &id, query).await?;
    require_live(&job)?;
    let expected = headers
        .get(SHA256_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(blobs::parse_sha256)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidSha256,
                format!("send the body's SHA-256 as {SHA256_HEADER}: 64 hex digits"),
            )
        })?;
    let limit = state.limits.max_output_bytes;
    blobs::check_declared_length(&headers, "the output archive", limit)?;
    let received = blobs::receive(
        &state.blobs,
        &blobs::output_key(&job.id),
        body,
        "the output archive",
        limit,
    )
    .await?;
    if received.sha256 != expected {
        let actual = received.sha256.clone();
        received.abort().await;
        return Err(ApiError::new(
            ErrorCode::Sha256Mismatch,
            format!(
                "the body's SHA-256 is {actual}, not {expected} as {SHA256_HEADER} says; nothing was stored"
            ),
        ));
    }
    let (sha256, size_bytes) = (received.sha256.clone(), received.size_bytes);
    received.finish().await?;
    state
        .store
        .record_job_output(&job.id, &sha256, size_bytes)
        .await?;
    tracing::info!(job_id = %job.id, node_id = %node.id, bytes = size_bytes, %sha256, "job output stored");
    Ok(Json(OutputStored {
        job_id: job.id.to_string(),
        sha256,
        size_bytes,
    }))
}

/// The job's `/output` as the agent packed it (tar.gz), with its SHA-256 in `x-gp4u-sha256`.
/// Its owner or an admin; 404 `OUTPUT_NOT_FOUND` until the agent has uploaded it.
#[utoipa::path(
    get, path = "/api/jobs/{id}/outputs", tag = "jobs", params(("id" = String, Path)),
    responses(
        (status = 200, body = [u8], content_type = "application/gzip",
            description = "tar.gz of the job's /output; x-gp4u-sha256 is its hex SHA-256"),
        (status = 404, body = gp4u_proto::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn download_output(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = visible_job(&state, &caller, &id).await?;
    let not_yet = || {
        ApiError::new(
            ErrorCode::OutputNotFound,
            format!(
                "job {} has no outputs (yet): the agent uploads /output when the job exits; it is {}",
                job.id,
                job.state.status.as_str()
            ),
        )
    };
    let sha256 = job.blobs.output_sha256.clone().ok_or_else(not_yet)?;
    let (size, stream) = blobs::open(&state.blobs, &blobs::output_key(&job.id))
        .await?
        .ok_or_else(not_yet)?;
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&sha256) {
        headers.insert(SHA256_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-output.tar.gz\"",
        job.id
    )) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
