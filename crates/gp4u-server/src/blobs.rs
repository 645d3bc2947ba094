//! The blob store (`object_store`): job inputs, outputs and logs. A local directory by default
//! (`GP4U_BLOB_DIR`, `<data dir>/blobs`); any `ObjectStore` (S3 and the like) fits the same calls.
//!
//! Keys: `artifacts/<art_id>` (a customer's upload), `outputs/<job_id>.tar.gz` (the job's
//! `/output`, packed by the agent), `logs/<job_id>/<seq, 10 digits>` (stdout/stderr chunks in
//! order). The database says which exist, who owns them and their SHA-256 (`gp4u-store`).
//!
//! Uploads stream: the body goes through SHA-256 into a multipart upload, at most a few parts
//! in memory at a time, and nothing appears at the key until [`Received::finish`] — a body over
//! its cap, or with the wrong hash, is aborted and leaves nothing behind (an earlier object at
//! the key stays as it was).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures::{Stream, StreamExt, TryStreamExt};
use gp4u_core::ids::{ArtifactId, JobId};
use gp4u_proto::ErrorCode;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Parts of an upload in flight at once (5 MiB each): bounds the memory one upload holds.
const UPLOAD_CONCURRENCY: usize = 2;

pub fn artifact_key(id: &ArtifactId) -> Path {
    Path::from(format!("artifacts/{id}"))
}

pub fn output_key(job: &JobId) -> Path {
    Path::from(format!("outputs/{job}.tar.gz"))
}

pub fn log_key(job: &JobId, seq: u64) -> Path {
    Path::from(format!("logs/{job}/{seq:010}"))
}

/// A SHA-256 as clients send it: 64 hex digits, optionally prefixed with `sha256:`; lowercased.
pub fn parse_sha256(text: &str) -> Option<String> {
    let hex = text.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    (hex.len() == 64 && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

pub fn too_large(what: &str, limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("{what} is larger than {limit} bytes; send a smaller one"),
    )
}

pub fn store_error(context: &str, error: object_store::Error) -> ApiError {
    ApiError::internal(context, error)
}

/// 413 at once when the declared `Content-Length` is over `limit`.
pub fn check_declared_length(headers: &HeaderMap, what: &str, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large(what, limit));
    }
    Ok(())
}

/// A body that has been streamed into an upload and hashed, not yet visible at its key.
pub struct Received {
    pub sha256: String,
    pub size_bytes: u64,
    upload: WriteMultipart,
}

impl Received {
    /// Publishes the object at its key (replacing what was there).
    pub async fn finish(self) -> Result<(), ApiError> {
        self.upload
            .finish()
            .await
            .map(|_| ())
            .map_err(|error| store_error("finishing an upload", error))
    }

    /// Drops the upload: nothing changes at the key.
    pub async fn abort(self) {
        if let Err(error) = self.upload.abort().await {
            tracing::warn!(%error, "aborting an upload failed");
        }
    }
}

/// Streams `body` into a multipart upload at `key`, hashing as it goes. Over `limit` bytes:
/// the upload is aborted and the answer is 413 (`what` names the body in the message).
pub async fn receive(
    blobs: &Arc<dyn ObjectStore>,
    key: &Path,
    body: Body,
    what: &str,
    limit: u64,
) -> Result<Received, ApiError> {
    let upload = blobs
        .put_multipart(key)
        .await
        .map_err(|error| store_error("starting an upload", error))?;
    let mut upload = WriteMultipart::new(upload);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    let failure = loop {
        let chunk = match stream.next().await {
            None => break None,
            Some(Ok(chunk)) => chunk,
            Some(Err(error)) => {
                break Some(ApiError::new(
                    ErrorCode::BodyUnreadable,
                    format!("the request body could not be read ({error}); send it again"),
                ));
            }
        };
        size = size.saturating_add(chunk.len() as u64);
        if size > limit {
            break Some(too_large(what, limit));
        }
        hasher.update(&chunk);
        if let Err(error) = upload.wait_for_capacity(UPLOAD_CONCURRENCY).await {
            break Some(store_error("writing an upload", error));
        }
        upload.put(chunk);
    };
    if let Some(error) = failure {
        if let Err(abort_error) = upload.abort().await {
            tracing::warn!(error = %abort_error, "aborting an upload failed");
        }
        return Err(error);
    }
    Ok(Received {
        sha256: gp4u_core::hex::encode(&hasher.finalize()),
        size_bytes: size,
        upload,
    })
}

/// An object as a response body stream, with its size; `None` when there is no such object.
pub async fn open(
    blobs: &Arc<dyn ObjectStore>,
    key: &Path,
) -> Result<
    Option<(
        u64,
        impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    )>,
    ApiError,
> {
    match blobs.get(key).await {
        Ok(result) => {
            let size = result.meta.size;
            let stream = result.into_stream().map_err(std::io::Error::other);
            Ok(Some((size, stream)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(store_error("reading a blob", error)),
    }
}

/// A whole (small) object, e.g. one log chunk; `None` when there is no such object.
pub async fn read_all(
    blobs: &Arc<dyn ObjectStore>,
    key: &Path,
) -> Result<Option<Bytes>, object_store::Error> {
    match blobs.get(key).await {
        Ok(result) => result.bytes().await.map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Decodes a byte stream as UTF-8 across chunk boundaries: a character split between two
/// chunks comes out whole; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    carry: Vec<u8>,
}

impl Utf8Decoder {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.carry;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match error.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &rest[valid + bad..];
                        }
                        // An incomplete character at the end: wait for the next chunk.
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        self.carry = rest.to_vec();
        out
    }

    /// Whatever is left (an incomplete character), lossily.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hashes() {
        let job = JobId::parse("job_abc").unwrap();
        assert_eq!(log_key(&job, 7).as_ref(), "logs/job_abc/0000000007");
        assert_eq!(output_key(&job).as_ref(), "outputs/job_abc.tar.gz");
        let art = ArtifactId::parse("art_x").unwrap();
        assert_eq!(artifact_key(&art).as_ref(), "artifacts/art_x");
        let upper = "AB".repeat(32);
        assert_eq!(
            parse_sha256(&format!("sha256:{upper}")),
            Some("ab".repeat(32))
        );
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&"g".repeat(64)), None);
    }

    #[test]
    fn utf8_survives_chunk_boundaries() {
        let text = "héllo — wörld ✓";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut decoder = Utf8Decoder::default();
            let mut out = decoder.push(&bytes[..split]);
            out.push_str(&decoder.push(&bytes[split..]));
            out.push_str(&decoder.finish());
            assert_eq!(out, text, "split at {split}");
        }
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(decoder.push(b"\xe2\x9c"), "");
        assert_eq!(decoder.finish(), "\u{FFFD}");
    }
}
