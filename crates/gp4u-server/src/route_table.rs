//! The API's routes, declared once: each group registers its handlers and remembers every
//! (method, path) it registered, so that [`api_routes`] can be held against the OpenAPI
//! document by a test — a route missing from the document (or documented but not routed)
//! fails it.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};

use crate::routes::{
    admin, agent, artifacts, billing, energy, health, jobs, ledger, logs, outputs, proofs,
    providers, telemetry, visibility,
};
use crate::state::AppState;
use crate::{console, openapi};
use gp4u_proto::paths;

/// A group of routes under one set of layers, and the (method, full path) of each.
pub struct Routes {
    router: Router<AppState>,
    table: Vec<(Method, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    fn add<H, T>(self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add_limited(method, path, handler, None)
    }

    /// A route whose body limit differs from the router's default (uploads, telemetry batches).
    fn add_limited<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        handler: H,
        limit: Option<DefaultBodyLimit>,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("route {method} {path}: no method filter for {method}"));
        let mut route = on(filter, handler);
        if let Some(limit) = limit {
            route = route.layer(limit);
        }
        self.router = self.router.route(path, route);
        self.table.push((method, path));
        self
    }

    /// The routes' router, for layering and merging.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }

    /// Every (method, path) the group routes.
    pub fn table(&self) -> &[(Method, &'static str)] {
        &self.table
    }
}

/// Operators' routes: behind a valid token whose clearance is an admin's.
pub fn admin_routes() -> Routes {
    Routes::new()
        .add(Method::POST, paths::ADMIN_USERS, admin::create_user)
        .add(Method::GET, paths::ADMIN_USERS, admin::list_users)
        .add(Method::POST, paths::ADMIN_USER_SUSPEND, admin::suspend_user)
        .add(
            Method::POST,
            paths::ADMIN_USER_ACTIVATE,
            admin::activate_user,
        )
        .add(Method::POST, paths::ADMIN_USER_CREDITS, admin::add_credits)
        .add(Method::POST, paths::ADMIN_USER_TOKENS, admin::issue_token)
        .add(Method::GET, paths::ADMIN_CHAMBERS, admin::chambers)
        .add(
            Method::PUT,
            paths::ADMIN_GRID_FACTOR,
            billing::set_grid_factor,
        )
}

/// The log (SPEC §8): public to read — anyone may witness it; a token, when sent, is verified as
/// everywhere and lets its owner (or an admin) read entry bodies.
pub fn public_log_routes() -> Routes {
    Routes::new()
        .add(Method::GET, paths::LEDGER_CHECKPOINT, ledger::checkpoint)
        .add(Method::GET, paths::LEDGER_PUBLIC_KEY, ledger::public_key)
        .add(Method::GET, paths::LEDGER_ENTRIES, ledger::entries)
        .add(Method::GET, paths::LEDGER_INCLUSION, ledger::inclusion)
        .add(Method::GET, paths::LEDGER_CONSISTENCY, ledger::consistency)
}

/// Everything a customer, provider or agent calls with a valid token.
pub fn authenticated_routes() -> Routes {
    Routes::new()
        .add(Method::POST, paths::JOBS, jobs::submit_job)
        .add(Method::GET, paths::JOBS, jobs::list_jobs)
        .add(Method::GET, paths::JOB, jobs::get_job)
        .add(Method::POST, paths::JOB_CANCEL, jobs::cancel_job)
        .add(Method::GET, paths::JOB_OUTPUTS, outputs::download_output)
        .add(Method::GET, paths::JOB_LOGS, logs::get_logs)
        .add(Method::GET, paths::JOB_TELEMETRY, telemetry::job_telemetry)
        .add(Method::GET, paths::JOB_SETTLEMENT, billing::job_settlement)
        .add(Method::GET, paths::JOB_VERITAS, billing::job_veritas)
        .add(Method::GET, paths::JOB_LEDGER, ledger::job_ledger)
        .add(Method::GET, paths::JOB_PROOFS, proofs::job_proofs)
        // An energy proof grows with the job (about 320 KB for a week of readings).
        .add_limited(
            Method::POST,
            paths::PROVIDER_PROOFS,
            proofs::submit,
            Some(DefaultBodyLimit::max(
                gp4u_attest::proofs::MAX_SUBMISSION_BYTES,
            )),
        )
        .add(Method::PUT, paths::PROVIDER_ENERGY, providers::set_energy)
        .add(
            Method::PUT,
            paths::PROVIDER_POWER_LIMITS,
            providers::set_power_limits,
        )
        .add(Method::GET, paths::BALANCE, billing::balance)
        .add(Method::GET, paths::STATEMENT, billing::statement)
        .add(Method::GET, paths::GRID_FACTORS, billing::grid_factors)
        .add(Method::GET, paths::ENERGY, energy::summary)
        // Uploads stream with caps of their own, not the JSON body limit.
        .add_limited(
            Method::POST,
            paths::ARTIFACTS,
            artifacts::upload_artifact,
            Some(DefaultBodyLimit::disable()),
        )
        .add(Method::POST, paths::PROVIDERS_REGISTER, providers::register)
        .add(Method::GET, paths::GPUS, providers::list_gpus)
        .add(Method::GET, paths::PROVIDERS, providers::list_nodes)
        .add(Method::GET, paths::PROVIDER, providers::get_node)
        .add(Method::POST, paths::PROVIDER_STAKE, providers::add_stake)
        .add(Method::PUT, paths::PROVIDER_POSTURE, providers::set_posture)
        // A node's packets together: up to 256 of about 0.5 KiB each (with a commitment).
        .add_limited(
            Method::POST,
            paths::TELEMETRY,
            telemetry::ingest,
            Some(DefaultBodyLimit::max(telemetry::MAX_TELEMETRY_BODY_BYTES)),
        )
        .add(
            Method::GET,
            paths::AGENT_ASSIGNMENTS,
            agent::next_assignment,
        )
        .add(Method::POST, paths::AGENT_JOB_STATUS, agent::report_status)
        .add(Method::POST, paths::AGENT_VISIBILITY, visibility::answer)
        .add(Method::GET, paths::AGENT_JOB_INPUT, artifacts::agent_input)
        .add_limited(
            Method::PUT,
            paths::AGENT_JOB_OUTPUTS,
            outputs::upload_output,
            Some(DefaultBodyLimit::disable()),
        )
        .add(Method::POST, paths::AGENT_JOB_LOGS, logs::append_log)
        .add(
            Method::GET,
            paths::AGENT_JOB_COMMITMENTS,
            proofs::agent_commitments,
        )
}

/// Routes anyone may call: the probes and the document.
pub fn public_routes() -> Routes {
    Routes::new()
        .add(Method::GET, paths::HEALTHZ, health::healthz)
        .add(Method::GET, paths::READYZ, health::readyz)
        .add(Method::GET, paths::OPENAPI, openapi::openapi_json)
}

/// The web console: HTML pages for browsers, their event stream and assets. Not the API (not in
/// the OpenAPI document); each handler checks the session cookie itself and reads the API in
/// process (`console` module docs).
pub fn console_routes() -> Routes {
    Routes::new()
        .add(Method::GET, "/", console::jobs_page)
        .add(Method::GET, "/console/sign-in", console::sign_in_page)
        .add(Method::POST, "/console/sign-in", console::sign_in)
        .add(Method::POST, "/console/sign-out", console::sign_out)
        .add(Method::GET, "/console/jobs/{id}", console::job_page)
        .add(
            Method::POST,
            "/console/jobs/{id}/cancel",
            console::cancel_job,
        )
        .add(
            Method::GET,
            "/console/jobs/{id}/telemetry",
            console::job_telemetry_stream,
        )
        .add(Method::GET, "/console/provider", console::provider_page)
        .add(Method::GET, "/console/admin", console::admin_page)
        .add(Method::GET, "/console/assets/console.js", console::script)
        .add(
            Method::GET,
            "/console/assets/console.css",
            console::stylesheet,
        )
}

/// Outside the API (and so outside its OpenAPI document, like the probes' purpose but not their
/// audience): Prometheus's scrape, behind its own optional token (`GP4U_METRICS_TOKEN`),
/// routed only when metrics are on.
pub fn metrics_routes() -> Routes {
    Routes::new().add(Method::GET, "/metrics", crate::metrics::metrics)
}

/// Every (method, path) of the API, as routed (path parameters as the router names them).
pub fn api_routes() -> Vec<(Method, &'static str)> {
    [
        admin_routes(),
        public_log_routes(),
        authenticated_routes(),
        public_routes(),
    ]
    .iter()
    .flat_map(|group| group.table().iter().cloned())
    .collect()
}
