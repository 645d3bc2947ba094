//! Stage 0: identity and authorization (SPEC §2).
//!
//! [`authenticate`] runs on every `/api` route except the OpenAPI document and the public log
//! (SPEC §8). It verifies the bearer token — with no database access, so a flood of bad tokens
//! never reaches the store — strips any client-sent `x-subject-id` and injects the verified
//! subject. The public log's routes run [`authenticate_if_present`] instead: no header is an
//! anonymous reader, a header is verified exactly as everywhere else (a bad token is 401, never
//! quietly anonymous). [`require_admin_token`] gates `/api/admin/**` on the token's clearance,
//! also before the database. Handlers then take a [`Caller`] (the seed's `requireAuth`): the user
//! exists, is active, and the token claims no more clearance than is stored; on the public log,
//! an `Option<Caller>`, `None` for an anonymous reader.

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use gp4u_core::ids::UserId;
use gp4u_core::token::{self, Claims};
use gp4u_proto::ErrorCode;
use gp4u_store::UserRecord;

use crate::error::ApiError;
use crate::state::AppState;

pub const SUBJECT_HEADER: &str = "x-subject-id";
pub const CLEARANCE_CUSTOMER: u8 = 1;
pub const CLEARANCE_PROVIDER: u8 = 2;
pub const CLEARANCE_ADMIN: u8 = 3;

fn bearer_token(request: &Request) -> Result<&str, ApiError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorCode::TokenMissing,
            "no Authorization header; send Authorization: Bearer <token>",
        ));
    };
    let value = value.to_str().map_err(|_| {
        ApiError::new(
            ErrorCode::TokenMalformed,
            "the Authorization header is not ASCII",
        )
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::new(
            ErrorCode::TokenMalformed,
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// Verifies the token and replaces `x-subject-id` with the verified subject.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    verify_bearer(&state, &mut request)?;
    Ok(next.run(request).await)
}

/// For routes anyone may read: without an `Authorization` header the request goes on
/// anonymous (and without any client-sent `x-subject-id`); with one, it is verified exactly as
/// [`authenticate`] does, so a bad or expired token is 401 here too.
pub async fn authenticate_if_present(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.headers().contains_key(header::AUTHORIZATION) {
        verify_bearer(&state, &mut request)?;
    } else {
        request.headers_mut().remove(SUBJECT_HEADER);
    }
    Ok(next.run(request).await)
}

fn verify_bearer(state: &AppState, request: &mut Request) -> Result<(), ApiError> {
    let claims = token::verify(
        bearer_token(request)?,
        &state.keys,
        state.clock.now_unix_seconds(),
    )?;
    let headers = request.headers_mut();
    headers.remove(SUBJECT_HEADER);
    let subject = HeaderValue::from_str(&claims.sub).map_err(|_| {
        ApiError::new(
            ErrorCode::TokenMalformed,
            "the token subject is not a header-safe string",
        )
    })?;
    headers.insert(SUBJECT_HEADER, subject);
    request.extensions_mut().insert(claims);
    Ok(())
}

/// `/api/admin/**` needs a token with clearance ≥ 3, checked before any database access.
pub async fn require_admin_token(request: Request, next: Next) -> Result<Response, ApiError> {
    let clearance = request
        .extensions()
        .get::<Claims>()
        .map(|claims| claims.clr)
        .unwrap_or(0);
    if clearance < CLEARANCE_ADMIN {
        return Err(ApiError::new(
            ErrorCode::AdminRequired,
            format!("admin routes need clearance {CLEARANCE_ADMIN}; this token has {clearance}"),
        ));
    }
    Ok(next.run(request).await)
}

/// The authenticated, active caller (the seed's `requireAuth`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    pub user: UserRecord,
}

impl Caller {
    /// The clearance this request acts with: the token's, which is never above the stored one.
    pub fn clearance(&self) -> u8 {
        self.claims.clr
    }

    pub fn is_admin(&self) -> bool {
        self.clearance() >= CLEARANCE_ADMIN
    }

    pub fn id(&self) -> &UserId {
        &self.user.id
    }

    /// Refuses the request unless the caller acts with at least `needed` clearance.
    pub fn require(&self, needed: u8, code: ErrorCode, role: &str) -> Result<(), ApiError> {
        if self.clearance() >= needed {
            return Ok(());
        }
        Err(ApiError::new(
            code,
            format!(
                "this route needs {role} clearance ({needed}); this token has {}",
                self.clearance()
            ),
        ))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let Some(claims) = parts.extensions.get::<Claims>().cloned() else {
            // Only reachable if a route was mounted outside the auth layer: a server bug.
            return Err(ApiError::internal(
                "auth",
                "Caller used on a route without authenticate",
            ));
        };
        Caller::load(claims, state).await
    }
}

/// `Option<Caller>`: the caller of a route anyone may read ([`authenticate_if_present`]);
/// `None` when the request came without a token. A token is judged as for [`Caller`]: a
/// suspended or unknown user is refused, not served as anonymous.
impl OptionalFromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Caller>, ApiError> {
        match parts.extensions.get::<Claims>().cloned() {
            Some(claims) => Caller::load(claims, state).await.map(Some),
            None => Ok(None),
        }
    }
}

fn unknown_user() -> ApiError {
    ApiError::new(
        ErrorCode::UserUnknown,
        "the token's subject is not a known user; ask an admin to create it",
    )
}

impl Caller {
    /// The caller a raw token names, judged exactly as on the API: signature and expiry
    /// ([`authenticate`]), then the stored user ([`Caller`]). The console uses it for its
    /// session cookie, which carries the token.
    pub async fn from_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
        let claims = token::verify(token, &state.keys, state.clock.now_unix_seconds())?;
        Caller::load(claims, state).await
    }
}

impl Caller {
    async fn load(claims: Claims, state: &AppState) -> Result<Caller, ApiError> {
        let user_id = UserId::parse(&claims.sub).map_err(|_| unknown_user())?;
        let user = state
            .store
            .get_user(&user_id)
            .await?
            .ok_or_else(unknown_user)?;
        Caller::admit(claims, user)
    }

    /// Admits `user` acting with `claims`: refused when suspended or when the token claims
    /// more clearance than the user has.
    fn admit(claims: Claims, user: UserRecord) -> Result<Caller, ApiError> {
        if !user.active {
            return Err(ApiError::new(
                ErrorCode::UserSuspended,
                format!("user {} is suspended", user.id),
            ));
        }
        if claims.clr > user.clearance {
            return Err(ApiError::new(
                ErrorCode::ClearanceExceedsStored,
                format!(
                    "the token claims clearance {} but user {} has {}; mint a token with --clr {} or lower",
                    claims.clr, user.id, user.clearance, user.clearance
                ),
            ));
        }
        Ok(Caller { claims, user })
    }
}

/// The caller of the telemetry hot path: like [`Caller`], but the user record may come from
/// this replica's cache, at most `[tutela] cache_ttl_ms` (5 s) old. A suspension made on this
/// replica applies at once (it clears the cache); one made on another replica within that
/// time. Every other route loads the user on every request.
#[derive(Debug, Clone)]
pub struct HotCaller(pub Caller);

impl FromRequestParts<AppState> for HotCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<HotCaller, ApiError> {
        let Some(claims) = parts.extensions.get::<Claims>().cloned() else {
            return Err(ApiError::internal(
                "auth",
                "HotCaller used on a route without authenticate",
            ));
        };
        let user_id = UserId::parse(&claims.sub).map_err(|_| unknown_user())?;
        let user = state
            .tutela
            .cached_user(&state.store, &user_id, state.now_ms())
            .await?
            .ok_or_else(unknown_user)?;
        Caller::admit(claims, user).map(HotCaller)
    }
}
