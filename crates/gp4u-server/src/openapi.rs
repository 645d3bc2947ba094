//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire types.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    admin, agent, artifacts, billing, energy, health, jobs, ledger, logs, outputs, proofs,
    providers, telemetry, visibility,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("P.S (base64url JSON claims . base64url HMAC-SHA256)")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "GP4U control plane", description = "GPU compute marketplace: submit, place, run, watch, settle and verify GPU jobs."),
    paths(
        health::healthz, health::readyz, openapi_json,
        jobs::submit_job, jobs::list_jobs, jobs::get_job, jobs::cancel_job,
        outputs::download_output, logs::get_logs, artifacts::upload_artifact,
        providers::register, providers::list_gpus, providers::list_nodes, providers::get_node, providers::add_stake,
        providers::set_posture, providers::set_energy, providers::set_power_limits,
        telemetry::ingest, telemetry::job_telemetry,
        agent::next_assignment, agent::report_status, visibility::answer,
        artifacts::agent_input, outputs::upload_output, logs::append_log,
        admin::create_user, admin::list_users, admin::suspend_user, admin::activate_user, admin::add_credits, admin::issue_token, admin::chambers,
        billing::job_settlement, billing::balance, billing::statement, billing::grid_factors,
        billing::set_grid_factor, billing::job_veritas, energy::summary, proofs::submit, proofs::job_proofs, proofs::agent_commitments,
        ledger::checkpoint, ledger::public_key, ledger::entries, ledger::inclusion,
        ledger::consistency, ledger::job_ledger,
    ),
    components(schemas(gp4u_proto::ErrorBody, gp4u_proto::ErrorDetail,
        gp4u_proto::VisibilityChallenge, gp4u_proto::VisibilityAnswer,
        gp4u_proto::VisibilityEvidence, gp4u_proto::VisibilityVerdict,
        // Event-stream payloads, named in the routes' descriptions (no body type carries them).
        gp4u_proto::TelemetryStreamEnd, gp4u_proto::LogStreamEnd)),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Stage 1: submission and the customer's jobs"),
        (name = "files", description = "Job inputs: artifacts uploaded by customers"),
        (name = "providers", description = "Provider nodes and the GPU marketplace"),
        (name = "agent", description = "Provider agents: dispatch, status reports, inputs, outputs and logs"),
        (name = "admin", description = "Operators (clearance ≥ 3)"),
        (name = "billing", description = "Stage 7: balances, settlements, earnings; carbon factors"),
        (name = "ledger", description = "Obsidian: signed checkpoints, entries, inclusion and consistency proofs; a job's proofs"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<serde_json::Value> =
    LazyLock::new(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default());

/// This document (OpenAPI 3.1), generated from the handlers' annotations and the wire types.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(DOCUMENT.clone())
}
