//! The web console (SPEC §11) at `GET /`: server-rendered HTML, a little vanilla JavaScript
//! embedded in the binary, SVG charts updated over server-sent events. No JavaScript toolchain
//! and nothing fetched from elsewhere (`Content-Security-Policy: default-src 'self'`).
//!
//! **A client of the API, in process.** Every page reads the JSON API — the same router, called
//! in process with the session's token as `Authorization: Bearer` — and parses the answers
//! into the wire types, so the console applies exactly the API's checks: a job of another
//! customer is the API's 404, and the console's 404 page then shows nothing of it.
//!
//! **The session is a token of its own.** Signing in checks the pasted token as the API would
//! (signature, expiry, user active, clearance) and sets a *session* token in the
//! `gp4u_session` cookie: the same user and clearance, signed with the platform's current
//! secret, living at most [`SESSION_TTL_S`] (12 h) and never past the pasted token — so the
//! browser never holds the user's long-lived API token, and a cookie that leaks is good for
//! hours, not for the API token's lifetime. The cookie is `HttpOnly` (no script reads it),
//! `SameSite=Strict`, `Path=/`, `Secure` when the request came over HTTPS (`X-Forwarded-Proto:
//! https` from a TLS proxy), expiring with the session. Nothing is kept on the server, so every
//! replica serves every session and a suspension applies at the next page. Signing out clears
//! the cookie; the session token itself stays valid until it expires (there is no revocation
//! list: an admin suspends a user to cut every token of theirs off at once).
//!
//! **CSRF.** State-changing requests (sign in, sign out, cancel a job) are POSTs that must come
//! from this origin (`Origin` and `Sec-Fetch-Site` checked when the browser sends them), and
//! those of a session also carry a CSRF token bound to it: the first 32 hex digits of
//! `SHA-256("gp4u console csrf\n" ‖ session token)`, rendered into the forms. The cookie is
//! `SameSite=Strict` besides.

mod html;
mod pages;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Router};
use gp4u_proto::ErrorBody;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

use crate::auth::Caller;
use crate::state::AppState;
use gp4u_proto::paths;

pub use html::escape;

/// The longest a console session lives (the pasted token's own expiry when sooner).
pub const SESSION_TTL_S: i64 = 12 * 3600;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gp4u_session";
/// The console's policy: everything from this server, nothing inline but JSON data blocks.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// The API router the console calls in process (see the module docs).
#[derive(Clone)]
pub struct ConsoleApi(pub Router);

/// A signed-in request: the token from the cookie, judged as the API judges it.
pub struct Session {
    pub token: String,
    pub caller: Caller,
    pub csrf: String,
}

impl Session {
    fn nav(&self) -> html::Nav<'_> {
        html::Nav {
            user_id: self.caller.user.id.as_str(),
            user_name: &self.caller.user.name,
            role: self.caller.user.role.as_str(),
            clearance: self.caller.clearance(),
            csrf: &self.csrf,
        }
    }
}

/// The CSRF token bound to a session token.
pub fn csrf_token(session_token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"gp4u console csrf\n")
        .chain_update(session_token.as_bytes())
        .finalize();
    gp4u_core::hex::encode(&digest[..16])
}

/// Compares in time independent of where the strings differ.
fn same_secret(left: &str, right: &str) -> bool {
    left.len() == right.len()
        && left
            .bytes()
            .zip(right.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// What the cookie says: no session, a session, or a token the API refuses now (expired,
/// suspended user…) with the API's reason.
enum SessionState {
    None,
    Valid(Box<Session>),
    Refused(String),
}

async fn session_of(state: &AppState, headers: &HeaderMap) -> SessionState {
    let Some(token) = cookie_value(headers, SESSION_COOKIE) else {
        return SessionState::None;
    };
    match Caller::from_token(state, token).await {
        Ok(caller) => SessionState::Valid(Box::new(Session {
            csrf: csrf_token(token),
            token: token.to_string(),
            caller,
        })),
        Err(error) => SessionState::Refused(error.message),
    }
}

/// Whether the request came over HTTPS (directly, or as a TLS proxy says).
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

fn session_cookie(token: &str, max_age_s: i64, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age_s.max(0),
        if secure { "; Secure" } else { "" }
    )
}

fn clear_cookie(secure: bool) -> String {
    session_cookie("", 0, secure)
}

/// A state-changing request must come from this origin: a browser's `Origin` (when sent) names
/// this host — the `Host` header, or the `X-Forwarded-Host` a reverse proxy sets (a page on
/// another site cannot set either on a form post) — and its `Sec-Fetch-Site` (when sent) is
/// `same-origin`.
fn from_this_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.to_str(), Ok("same-origin"))
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|name| headers.get(name).and_then(|value| value.to_str().ok()))
        .any(|host| origin == format!("http://{host}") || origin == format!("https://{host}"))
}

/// An HTML answer with the console's headers.
fn html_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

/// `Referrer-Policy: same-origin`, not `no-referrer`: under `no-referrer` a browser sends
/// `Origin: null` with form posts, which the origin check must refuse.
fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn see_other(location: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    if let Some(cookie) = cookie.and_then(|cookie| HeaderValue::from_str(&cookie).ok()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    secure_headers(headers);
    response
}

/// Where sign-in may send the browser next: a path of this console, never another site (no
/// `//host`, no scheme, no backslash), in the characters its URLs use; else `/`.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path.len() <= 200
                && path.bytes().all(|byte| {
                    byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'_' | b'-')
                }) =>
        {
            path
        }
        _ => "/",
    }
}

/// The page for a request without a usable session: to the sign-in page, which comes back to
/// `here` (clearing a cookie the API now refuses, and saying why).
fn to_sign_in(session: SessionState, headers: &HeaderMap, here: &str) -> Response {
    let here = safe_next(Some(here));
    match session {
        SessionState::Refused(reason) => {
            let body = html::page(
                "Sign in",
                None,
                &pages::sign_in(
                    Some(&format!("Your session ended: {reason}. Sign in again.")),
                    here,
                ),
            );
            let mut response = html_response(StatusCode::UNAUTHORIZED, body);
            if let Ok(value) = HeaderValue::from_str(&clear_cookie(over_https(headers))) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        _ if here == "/" => see_other("/console/sign-in", None),
        _ => see_other(&format!("/console/sign-in?next={here}"), None),
    }
}

/// An answer of the API called in process.
#[derive(Debug)]
pub enum ApiAnswer<T> {
    Ok(T),
    /// The API refused: its status and message.
    Refused(StatusCode, String),
}

/// Calls the API in process as the session's user.
async fn api_call<T: DeserializeOwned>(
    api: &ConsoleApi,
    token: &str,
    method: Method,
    path_and_query: &str,
) -> ApiAnswer<T> {
    let request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty());
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            return ApiAnswer::Refused(StatusCode::BAD_REQUEST, format!("bad request: {error}"));
        }
    };
    let response = match api.0.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status();
    let body = match axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await {
        Ok(body) => body,
        Err(error) => {
            return ApiAnswer::Refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the API's answer failed: {error}"),
            );
        }
    };
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|body| body.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return ApiAnswer::Refused(status, message);
    }
    match serde_json::from_slice(&body) {
        Ok(value) => ApiAnswer::Ok(value),
        Err(error) => {
            tracing::error!(path = path_and_query, %error, "console: the API's answer did not parse");
            ApiAnswer::Refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the API's answer did not parse; the server log has the detail".into(),
            )
        }
    }
}

async fn api_get<T: DeserializeOwned>(
    api: &ConsoleApi,
    session: &Session,
    path: &str,
) -> ApiAnswer<T> {
    api_call(api, &session.token, Method::GET, path).await
}

fn error_page(session: &Session, status: StatusCode, title: &str, message: &str) -> Response {
    html_response(
        status,
        html::page(
            title,
            Some(&session.nav()),
            &format!(
                "<h1>{}</h1><p role=\"alert\">{}</p><p><a href=\"/\">Back to your jobs</a></p>",
                html::escape(title),
                html::escape(message)
            ),
        ),
    )
}

/// A browser asking for a page that does not exist (not under `/api/`, and accepting HTML)
/// gets a page saying so with a way back, not the API's JSON error; `None` for anything else.
pub fn page_not_found(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if path.starts_with("/api/") || !wants_html || !matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    Some(html_response(
        StatusCode::NOT_FOUND,
        html::page(
            "Page not found",
            None,
            "<h1>Page not found</h1><p role=\"alert\">There is no page at this address.</p>\
             <p><a href=\"/\">Your jobs</a> · <a href=\"/console/sign-in\">Sign in</a></p>",
        ),
    ))
}

/// The page for a job the API does not show this user: nothing of it, whatever the reason.
fn job_not_found(session: &Session) -> Response {
    error_page(
        session,
        StatusCode::NOT_FOUND,
        "Job not found",
        "No job of yours has this id.",
    )
}

/// `/?before=`: the page of jobs older than this one (the API's `next_before`).
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub before: Option<String>,
}

/// Jobs per page of the console's list.
const JOBS_PER_PAGE: u32 = 50;

pub async fn jobs_page(
    State(state): State<AppState>,
    Extension(api): Extension<ConsoleApi>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let session = match session_of(&state, &headers).await {
        SessionState::Valid(session) => session,
        other => return to_sign_in(other, &headers, "/"),
    };
    let before = query.ok().and_then(|Query(query)| query.before);
    let mut path = format!("{}?limit={JOBS_PER_PAGE}", paths::JOBS);
    if let Some(before) = &before {
        path.push_str(&format!("&before={}", paths::segment(before)));
    }
    match api_get::<gp4u_proto::JobList>(&api, &session, &path).await {
        ApiAnswer::Ok(list) => html_response(
            StatusCode::OK,
            html::page(
                "Jobs",
                Some(&session.nav()),
                &pages::jobs(&list, before.is_some()),
            ),
        ),
        ApiAnswer::Refused(status, message) => {
            error_page(&session, status, "Jobs unavailable", &message)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    /// Where to go after signing in (a console path; anything else is `/`).
    pub next: Option<String>,
}

pub async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref());
    if let SessionState::Valid(_) = session_of(&state, &headers).await {
        return see_other(next, None);
    }
    html_response(
        StatusCode::OK,
        html::page("Sign in", None, &pages::sign_in(None, next)),
    )
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    pub token: String,
    /// Where to go after signing in (see [`NextQuery`]).
    pub next: Option<String>,
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !from_this_origin(&headers) {
        return forbidden_cross_origin();
    }
    let Ok(Form(form)) = form else {
        return html_response(
            StatusCode::UNAUTHORIZED,
            html::page(
                "Sign in",
                None,
                &pages::sign_in(Some("Paste a token to sign in."), "/"),
            ),
        );
    };
    let next = safe_next(form.next.as_deref());
    let refused = |message: String| {
        html_response(
            StatusCode::UNAUTHORIZED,
            html::page("Sign in", None, &pages::sign_in(Some(&message), next)),
        )
    };
    let token = form.token.trim();
    if token.is_empty() {
        return refused("Paste a token to sign in.".into());
    }
    // A token is base64url text and one dot; anything else never reaches the cookie.
    if !token
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
    {
        return refused("That is not a GP4U token.".into());
    }
    match Caller::from_token(&state, token).await {
        Ok(caller) => {
            let now = state.clock.now_unix_seconds();
            let claims = gp4u_core::token::Claims {
                exp: caller.claims.exp.min(now + SESSION_TTL_S),
                ..caller.claims.clone()
            };
            let session = gp4u_core::token::mint(&claims, &state.keys.current);
            tracing::info!(user_id = %caller.id(), "console sign-in");
            see_other(
                next,
                Some(session_cookie(
                    &session,
                    claims.exp - now,
                    over_https(&headers),
                )),
            )
        }
        Err(error) => refused(format!("The token was refused: {}", error.message)),
    }
}

fn forbidden_cross_origin() -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        html::page(
            "Refused",
            None,
            "<h1>Refused</h1><p role=\"alert\">This request did not come from the console's own \
             pages (cross-site request refused).</p>",
        ),
    )
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// Whether a state-changing request of a session is good: from this origin, with the
/// session's CSRF token.
fn csrf_ok(
    headers: &HeaderMap,
    session: &Session,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> bool {
    from_this_origin(headers) && form.is_ok_and(|Form(form)| same_secret(&form.csrf, &session.csrf))
}

pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let secure = over_https(&headers);
    match session_of(&state, &headers).await {
        SessionState::Valid(session) => {
            if !csrf_ok(&headers, &session, form) {
                return forbidden_cross_origin();
            }
            see_other("/console/sign-in", Some(clear_cookie(secure)))
        }
        // A refused or missing session has nothing to protect: the cookie just goes.
        _ => see_other("/console/sign-in", Some(clear_cookie(secure))),
    }
}

/// A path parameter that is a job id as the API spells them (the API judges it again).
fn job_path(id: &str) -> Option<String> {
    (!id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_'))
    .then(|| id.to_string())
}

pub async fn job_page(
    State(state): State<AppState>,
    Extension(api): Extension<ConsoleApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match session_of(&state, &headers).await {
        SessionState::Valid(session) => session,
        other => return to_sign_in(other, &headers, &format!("/console/jobs/{id}")),
    };
    let Some(id) = job_path(&id) else {
        return job_not_found(&session);
    };
    let job = match api_get::<gp4u_proto::JobView>(&api, &session, &paths::job(&id)).await {
        ApiAnswer::Ok(job) => job,
        ApiAnswer::Refused(StatusCode::NOT_FOUND | StatusCode::FORBIDDEN, _) => {
            return job_not_found(&session);
        }
        ApiAnswer::Refused(status, message) => {
            return error_page(&session, status, "Job unavailable", &message);
        }
    };
    let paths = [
        format!("{}?limit=10000", paths::job_telemetry(&id)),
        paths::job_settlement(&id),
        paths::job_proofs(&id),
        paths::job_ledger(&id),
    ];
    let (telemetry, settlement, proofs, ledger) = tokio::join!(
        api_get::<serde_json::Value>(&api, &session, &paths[0]),
        api_get::<serde_json::Value>(&api, &session, &paths[1]),
        api_get::<serde_json::Value>(&api, &session, &paths[2]),
        api_get::<serde_json::Value>(&api, &session, &paths[3]),
    );
    let body = pages::job(&pages::JobPage {
        job: &job,
        csrf: &session.csrf,
        telemetry: answer_value(telemetry),
        settlement: answer_value(settlement),
        proofs: answer_value(proofs),
        ledger: answer_value(ledger),
    });
    html_response(
        StatusCode::OK,
        html::page(&format!("Job {}", job.name), Some(&session.nav()), &body),
    )
}

/// An optional part of a page: the value, or why there is none.
fn answer_value(answer: ApiAnswer<serde_json::Value>) -> Result<serde_json::Value, String> {
    match answer {
        ApiAnswer::Ok(value) => Ok(value),
        ApiAnswer::Refused(_, message) => Err(message),
    }
}

pub async fn cancel_job(
    State(state): State<AppState>,
    Extension(api): Extension<ConsoleApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let session = match session_of(&state, &headers).await {
        SessionState::Valid(session) => session,
        other => return to_sign_in(other, &headers, &format!("/console/jobs/{id}")),
    };
    if !csrf_ok(&headers, &session, form) {
        return forbidden_cross_origin();
    }
    let Some(id) = job_path(&id) else {
        return job_not_found(&session);
    };
    match api_call::<gp4u_proto::JobView>(
        &api,
        &session.token,
        Method::POST,
        &paths::job_cancel(&id),
    )
    .await
    {
        ApiAnswer::Ok(_) => see_other(&format!("/console/jobs/{id}"), None),
        ApiAnswer::Refused(StatusCode::NOT_FOUND | StatusCode::FORBIDDEN, _) => {
            job_not_found(&session)
        }
        ApiAnswer::Refused(status, message) => {
            error_page(&session, status, "Not cancelled", &message)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct FollowQuery {
    pub after_ms: Option<i64>,
}

/// The job's live telemetry for its page: the API's `?follow=1` event stream, passed through.
pub async fn job_telemetry_stream(
    State(state): State<AppState>,
    Extension(api): Extension<ConsoleApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<FollowQuery>,
) -> Response {
    let session = match session_of(&state, &headers).await {
        SessionState::Valid(session) => session,
        _ => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let Some(id) = job_path(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut path = format!("{}?follow=1", paths::job_telemetry(&id));
    if let Some(after_ms) = query.after_ms {
        path.push_str(&format!("&after_ms={after_ms}"));
    }
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", session.token))
        .body(Body::empty());
    let Ok(request) = request else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let response = match api.0.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if !response.status().is_success() {
        // Nothing of the API's message: a job not the user's is just not found.
        return response.status().into_response();
    }
    let mut response = response;
    secure_headers(response.headers_mut());
    response
}

pub async fn provider_page(
    State(state): State<AppState>,
    Extension(api): Extension<ConsoleApi>,
    headers: HeaderMap,
) -> Response {
    let session = match session_of(&state, &headers).await {
        SessionState::Valid(session) => session,
        other => return to_sign_in(other, &headers, "/console/provider"),
    };
    if session.caller.clearance() < crate::auth::CLEARANCE_PROVIDER {
        return error_page(
            &session,
            StatusCode::FORBIDDEN,
            "Providers only",
            "This page is for providers: your account is not one.",
        );
    }
    let nodes =
        match api_get::<gp4u_proto::ProviderNodeList>(&api, &session, paths::PROVIDERS).await {
            ApiAnswer::Ok(list) => list.nodes,
            ApiAnswer::Refused(status, message) => {
                return error_page(&session, status, "Nodes unavailable", &message);
            }
        };
    let balance = answer_value(api_get(&api, &session, paths::BALANCE).await);
    html_response(
        StatusCode::OK,
        html::page(
            "Provider",
            Some(&session.nav()),
            &pages::provider(&nodes, &balance),
        ),
    )
}

pub async fn admin_page(
    State(state): State<AppState>,
    Extension(api): Extension<ConsoleApi>,
    headers: HeaderMap,
) -> Response {
    let session = match session_of(&state, &headers).await {
        SessionState::Valid(session) => session,
        other => return to_sign_in(other, &headers, "/console/admin"),
    };
    if !session.caller.is_admin() {
        return error_page(
            &session,
            StatusCode::FORBIDDEN,
            "Admins only",
            "This page is for operators: your account is not an admin.",
        );
    }
    let (users, chambers) = tokio::join!(
        api_get::<gp4u_proto::UserList>(&api, &session, paths::ADMIN_USERS),
        api_get::<gp4u_proto::ChambersView>(&api, &session, paths::ADMIN_CHAMBERS),
    );
    let users = match users {
        ApiAnswer::Ok(list) => Ok(list.users),
        ApiAnswer::Refused(_, message) => Err(message),
    };
    let chambers = match chambers {
        ApiAnswer::Ok(view) => Ok(view),
        ApiAnswer::Refused(_, message) => Err(message),
    };
    html_response(
        StatusCode::OK,
        html::page(
            "Admin",
            Some(&session.nav()),
            &pages::admin(&users, &chambers),
        ),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        assert_eq!(csrf_token("a.b").len(), 32);
        assert_ne!(csrf_token("a.b"), csrf_token("a.c"));
        assert!(same_secret(&csrf_token("a.b"), &csrf_token("a.b")));
        assert!(!same_secret(&csrf_token("a.b"), &csrf_token("a.c")));
        assert!(!same_secret("abc", "abcd"));
    }

    #[test]
    fn origin_checks() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(from_this_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(from_this_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!from_this_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!from_this_origin(&headers));
        // Behind a proxy that passes the public host on.
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://gp4u.example"),
        );
        assert!(!from_this_origin(&headers));
        headers.insert("x-forwarded-host", HeaderValue::from_static("gp4u.example"));
        assert!(from_this_origin(&headers));
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!from_this_origin(&headers));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; gp4u_session=tok.en ; b=2"),
        );
        assert_eq!(cookie_value(&headers, SESSION_COOKIE), Some("tok.en"));
        assert_eq!(cookie_value(&headers, "c"), None);
    }
}
