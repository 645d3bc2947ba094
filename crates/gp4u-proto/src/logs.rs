//! The live log stream (`GET /api/jobs/{id}/logs?follow=1`, `text/event-stream`): `log`
//! events carry a chunk of text (a JSON string), the last event is `end`.

use gp4u_core::JobStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The data of the `end` event: the job has ended and every stored chunk was sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogStreamEnd {
    pub status: JobStatus,
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    /// Bytes of the stored log.
    pub log_bytes: u64,
    /// The log reached the per-job cap and later output was dropped.
    pub truncated: bool,
}
