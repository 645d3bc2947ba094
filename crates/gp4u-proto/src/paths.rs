//! The API's paths, spelled once: the server routes these templates (axum's `{param}` syntax)
//! and every caller builds its request paths with the functions beside them (`gp4u-client`,
//! the console's in-process reads, the tests' raw requests). A test holds the templates against
//! the server's route table, so neither side can drift.
//!
//! Path parameters are percent-encoded as one segment; query strings are the caller's.

use std::fmt::Write as _;

/// One path segment, percent-encoded (ids are plain; a region or a bad id from a user is not).
pub fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

macro_rules! paths {
    ($(
        $(#[$doc:meta])*
        $name:ident = $template:literal => $builder:ident($($param:ident),*) $body:literal;
    )*) => {
        $(
            $(#[$doc])*
            pub const $name: &str = $template;

            $(#[$doc])*
            pub fn $builder($($param: &str),*) -> String {
                $(let $param = segment($param);)*
                format!($body)
            }
        )*

        /// Every template, for the test that holds them against the router.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

paths! {
    /// `GET`: liveness.
    HEALTHZ = "/healthz" => healthz() "/healthz";
    /// `GET`: readiness.
    READYZ = "/readyz" => readyz() "/readyz";
    /// `GET`: the OpenAPI document.
    OPENAPI = "/api/openapi.json" => openapi() "/api/openapi.json";

    /// `POST` a user, `GET` every user.
    ADMIN_USERS = "/api/admin/users" => admin_users() "/api/admin/users";
    /// `POST`: suspend a user (every token of theirs refused).
    ADMIN_USER_SUSPEND = "/api/admin/users/{id}/suspend" => admin_user_suspend(id) "/api/admin/users/{id}/suspend";
    /// `POST`: activate a suspended user.
    ADMIN_USER_ACTIVATE = "/api/admin/users/{id}/activate" => admin_user_activate(id) "/api/admin/users/{id}/activate";
    /// `POST`: credit (or correct) a user's balance.
    ADMIN_USER_CREDITS = "/api/admin/users/{id}/credits" => admin_user_credits(id) "/api/admin/users/{id}/credits";
    /// `POST`: issue a token for a user.
    ADMIN_USER_TOKENS = "/api/admin/users/{id}/tokens" => admin_user_tokens(id) "/api/admin/users/{id}/tokens";
    /// `GET`: the chambers' cursors, lag and summaries.
    ADMIN_CHAMBERS = "/api/admin/chambers" => admin_chambers() "/api/admin/chambers";
    /// `PUT`: a region's grid carbon intensity.
    ADMIN_GRID_FACTOR = "/api/admin/grid-factors/{region}" => admin_grid_factor(region) "/api/admin/grid-factors/{region}";

    /// `GET`: the latest signed checkpoint (text).
    LEDGER_CHECKPOINT = "/api/ledger/checkpoint" => ledger_checkpoint() "/api/ledger/checkpoint";
    /// `GET`: the log's public key (text).
    LEDGER_PUBLIC_KEY = "/api/ledger/public-key" => ledger_public_key() "/api/ledger/public-key";
    /// `GET ?start=&end=`: entries.
    LEDGER_ENTRIES = "/api/ledger/entries" => ledger_entries() "/api/ledger/entries";
    /// `GET ?index=&size=`: an inclusion proof.
    LEDGER_INCLUSION = "/api/ledger/proof/inclusion" => ledger_inclusion() "/api/ledger/proof/inclusion";
    /// `GET ?from=&to=`: a consistency proof.
    LEDGER_CONSISTENCY = "/api/ledger/proof/consistency" => ledger_consistency() "/api/ledger/proof/consistency";

    /// `POST` a job, `GET` the caller's jobs.
    JOBS = "/api/jobs" => jobs() "/api/jobs";
    /// `GET`: one job.
    JOB = "/api/jobs/{id}" => job(id) "/api/jobs/{id}";
    /// `POST`: cancel a job.
    JOB_CANCEL = "/api/jobs/{id}/cancel" => job_cancel(id) "/api/jobs/{id}/cancel";
    /// `GET`: the job's `/output` archive.
    JOB_OUTPUTS = "/api/jobs/{id}/outputs" => job_outputs(id) "/api/jobs/{id}/outputs";
    /// `GET`: the job's logs (`?follow=1`: server-sent events).
    JOB_LOGS = "/api/jobs/{id}/logs" => job_logs(id) "/api/jobs/{id}/logs";
    /// `GET`: the job's telemetry (`?follow=1`, `?format=svg`).
    JOB_TELEMETRY = "/api/jobs/{id}/telemetry" => job_telemetry(id) "/api/jobs/{id}/telemetry";
    /// `GET`: what the job cost.
    JOB_SETTLEMENT = "/api/jobs/{id}/settlement" => job_settlement(id) "/api/jobs/{id}/settlement";
    /// `GET`: the job's Veritas record.
    JOB_VERITAS = "/api/jobs/{id}/veritas" => job_veritas(id) "/api/jobs/{id}/veritas";
    /// `GET`: the job's ledger entries with inclusion proofs.
    JOB_LEDGER = "/api/jobs/{id}/ledger" => job_ledger(id) "/api/jobs/{id}/ledger";
    /// `GET`: the job's proofs.
    JOB_PROOFS = "/api/jobs/{id}/proofs" => job_proofs(id) "/api/jobs/{id}/proofs";

    /// `GET`: the caller's balance.
    BALANCE = "/api/billing/balance" => balance() "/api/billing/balance";
    /// `GET`: the caller's statement.
    STATEMENT = "/api/billing/statement" => statement() "/api/billing/statement";
    /// `GET`: the grid factors in use.
    GRID_FACTORS = "/api/grid-factors" => grid_factors() "/api/grid-factors";
    /// `GET ?scope=`: energy and carbon.
    ENERGY = "/api/energy" => energy() "/api/energy";
    /// `POST`: upload a job input.
    ARTIFACTS = "/api/artifacts" => artifacts() "/api/artifacts";
    /// `GET`: the marketplace.
    GPUS = "/api/gpus" => gpus() "/api/gpus";

    /// `POST`: register a node.
    PROVIDERS_REGISTER = "/api/providers/register" => providers_register() "/api/providers/register";
    /// `GET`: the caller's nodes.
    PROVIDERS = "/api/providers" => providers() "/api/providers";
    /// `GET`: one node's standing.
    PROVIDER = "/api/providers/{node_id}" => provider(node_id) "/api/providers/{node_id}";
    /// `POST`: stake.
    PROVIDER_STAKE = "/api/providers/{node_id}/stake" => provider_stake(node_id) "/api/providers/{node_id}/stake";
    /// `PUT`: the host posture.
    PROVIDER_POSTURE = "/api/providers/{node_id}/posture" => provider_posture(node_id) "/api/providers/{node_id}/posture";
    /// `PUT`: the declared renewable share.
    PROVIDER_ENERGY = "/api/providers/{node_id}/energy" => provider_energy(node_id) "/api/providers/{node_id}/energy";
    /// `PUT`: the GPUs' enforced power limits.
    PROVIDER_POWER_LIMITS = "/api/providers/{node_id}/power-limits" => provider_power_limits(node_id) "/api/providers/{node_id}/power-limits";
    /// `POST`: a job's proofs.
    PROVIDER_PROOFS = "/api/providers/{node_id}/zk-proofs" => provider_proofs(node_id) "/api/providers/{node_id}/zk-proofs";

    /// `POST`: one telemetry packet or an array of them.
    TELEMETRY = "/api/telemetry/russian-doll" => telemetry() "/api/telemetry/russian-doll";
    /// `GET ?node_id=&wait=`: the assignment long-poll.
    AGENT_ASSIGNMENTS = "/api/agent/assignments" => agent_assignments() "/api/agent/assignments";
    /// `POST`: a job's status as its node saw it.
    AGENT_JOB_STATUS = "/api/agent/jobs/{id}/status" => agent_job_status(id) "/api/agent/jobs/{id}/status";
    /// `POST`: the answer to a visibility challenge.
    AGENT_VISIBILITY = "/api/agent/visibility" => agent_visibility() "/api/agent/visibility";
    /// `GET ?node_id=`: one of the job's inputs.
    AGENT_JOB_INPUT = "/api/agent/jobs/{id}/inputs/{art_id}" => agent_job_input(id, art_id) "/api/agent/jobs/{id}/inputs/{art_id}";
    /// `PUT ?node_id=`: the job's `/output` archive.
    AGENT_JOB_OUTPUTS = "/api/agent/jobs/{id}/outputs" => agent_job_outputs(id) "/api/agent/jobs/{id}/outputs";
    /// `POST ?node_id=`: a chunk of the job's logs.
    AGENT_JOB_LOGS = "/api/agent/jobs/{id}/logs" => agent_job_logs(id) "/api/agent/jobs/{id}/logs";
    /// `GET ?node_id=`: the commitments stored for the job.
    AGENT_JOB_COMMITMENTS = "/api/agent/jobs/{id}/commitments" => agent_job_commitments(id) "/api/agent/jobs/{id}/commitments";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_one_segment_and_templates_match_builders() {
        assert_eq!(job("job_abc"), "/api/jobs/job_abc");
        assert_eq!(job("../admin"), "/api/jobs/..%2Fadmin");
        assert_eq!(
            admin_grid_factor("eu west/1"),
            "/api/admin/grid-factors/eu%20west%2F1"
        );
        assert_eq!(
            agent_job_input("job_a", "art_b"),
            "/api/agent/jobs/job_a/inputs/art_b"
        );
        assert_eq!(
            job_telemetry("job a?b"),
            "/api/jobs/job%20a%3Fb/telemetry",
            "a query cannot be smuggled through an id"
        );
    }
}
