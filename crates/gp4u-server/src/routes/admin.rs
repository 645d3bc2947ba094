//! Operator routes under `/api/admin` (token clearance ≥ 3, checked before the database).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gp4u_core::chambers::{Aetherion, Chamber, Energy, Mnemo, Outerim};
use gp4u_core::ids::UserId;
use gp4u_core::manifest::{validate_credit_amount, validate_new_user};
use gp4u_proto::{ChamberView, ChambersView, ErrorCode, UserList, UserView};
use gp4u_store::{NewUser, StoreError, SubscriberState};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::views::{rfc3339, user_view};

/// Create a user.
#[utoipa::path(
    post, path = "/api/admin/users", tag = "admin", request_body = gp4u_proto::NewUserBody,
    responses((status = 201, body = UserView), (status = 400, body = gp4u_proto::ErrorBody), (status = 403, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let new_user = validate_new_user(&body.value)?;
    let initial_credit = match body.value.get("credit") {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => {
            let amount = validate_credit_amount(&serde_json::json!({"amount": value}))?;
            if amount.micros() < 0 {
                return Err(gp4u_core::manifest::FieldError::new(
                    gp4u_core::manifest::ValidationCode::InvalidAmount,
                    "credit",
                    "`credit` (opening credit) cannot be negative".to_owned(),
                )
                .into());
            }
            Some(amount)
        }
    };
    let user = NewUser {
        id: UserId::from_random(state.random_id_bytes()),
        name: new_user.name,
        role: new_user.role,
        university: new_user.university,
        region: new_user.region,
    };
    let record = state
        .store
        .create_user(&user, state.now_ms())
        .await
        .map_err(|error| match error {
            StoreError::Conflict(message) => ApiError::new(ErrorCode::UserExists, message),
            other => other.into(),
        })?;
    // Optional opening credit, as a top-up transfer like `POST …/credits`.
    let record = match initial_credit {
        Some(amount) if amount.micros() > 0 => state
            .store
            .add_credit(
                &record.id,
                amount,
                &format!("top_up:{}", state.random_reference()),
                state.now_ms(),
            )
            .await
            .map_err(user_not_found)?,
        _ => record,
    };
    tracing::info!(user_id = %record.id, role = record.role.as_str(), by = %caller.id(), "user created");
    Ok((StatusCode::CREATED, Json(user_view(&record))))
}

fn user_id(id: &str) -> ApiResult<UserId> {
    UserId::parse(id).map_err(|_| ApiError::new(ErrorCode::UserNotFound, format!("no user {id}")))
}

fn user_not_found(error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound(what) => {
            ApiError::new(ErrorCode::UserNotFound, format!("{what} not found"))
        }
        StoreError::Conflict(message) => ApiError::new(ErrorCode::CreditBelowZero, message),
        other => other.into(),
    }
}

/// Token lifetimes an admin may give: a minute to a year (default 30 days).
pub const MIN_TOKEN_TTL_S: i64 = 60;
pub const MAX_TOKEN_TTL_S: i64 = 365 * 24 * 3600;
pub const DEFAULT_TOKEN_TTL_S: i64 = 30 * 24 * 3600;
/// The trust score written into tokens the platform issues (SPEC §2's `trs`; nothing on the
/// platform reads it from tokens: a provider's trust is its node's, in the database).
const ISSUED_TRUST_SCORE: f64 = 50.0;

/// Issue a bearer token for a user, signed with the platform's current secret, at the user's
/// stored clearance: an admin gives a customer or provider access without shell access to the
/// server. `{"ttl_s": 2592000}` (optional; 60 s to a year, default 30 days).
#[utoipa::path(
    post, path = "/api/admin/users/{id}/tokens", tag = "admin", params(("id" = String, Path)),
    request_body = gp4u_proto::TokenRequest,
    responses((status = 201, body = gp4u_proto::IssuedToken), (status = 400, body = gp4u_proto::ErrorBody),
        (status = 403, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn issue_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<gp4u_proto::IssuedToken>)> {
    // The body is optional: none (or `{}`) gives the default lifetime.
    let body: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body must be JSON like {{\"ttl_s\": 2592000}}: {error}"),
            )
        })?
    };
    let ttl_s = match body.get("ttl_s") {
        None | Some(serde_json::Value::Null) => DEFAULT_TOKEN_TTL_S,
        Some(value) => value
            .as_i64()
            .filter(|ttl| (MIN_TOKEN_TTL_S..=MAX_TOKEN_TTL_S).contains(ttl))
            .ok_or_else(|| {
                ApiError::from(gp4u_core::manifest::FieldError::new(
                    gp4u_core::manifest::ValidationCode::InvalidType,
                    "ttl_s",
                    format!(
                        "`ttl_s` must be a whole number of seconds from {MIN_TOKEN_TTL_S} to {MAX_TOKEN_TTL_S} (a year), got {value}"
                    ),
                ))
            })?,
    };
    let id = user_id(&id)?;
    let user = state
        .store
        .get_user(&id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UserNotFound, format!("no user {id}")))?;
    if !user.active {
        return Err(ApiError::new(
            ErrorCode::UserSuspended,
            format!(
                "user {id} is suspended: activate them first (POST /api/admin/users/{id}/activate)"
            ),
        ));
    }
    let exp = state.now_ms() / 1000 + ttl_s;
    let claims = gp4u_core::token::Claims {
        sub: user.id.to_string(),
        clr: user.clearance,
        trs: ISSUED_TRUST_SCORE,
        exp,
    };
    let token = gp4u_core::token::mint(&claims, &state.keys.current);
    // The token itself is never logged.
    tracing::info!(user_id = %user.id, clearance = user.clearance, ttl_s, by = %caller.id(), "token issued");
    Ok((
        StatusCode::CREATED,
        Json(gp4u_proto::IssuedToken {
            token,
            expires_at: rfc3339(exp * 1000),
        }),
    ))
}

/// Suspend a user: their next request is refused, whatever their token says.
#[utoipa::path(
    post, path = "/api/admin/users/{id}/suspend", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn suspend_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    set_active(&state, &caller, &id, false).await
}

/// Lift a suspension.
#[utoipa::path(
    post, path = "/api/admin/users/{id}/activate", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn activate_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    set_active(&state, &caller, &id, true).await
}

async fn set_active(
    state: &AppState,
    caller: &Caller,
    id: &str,
    active: bool,
) -> ApiResult<Json<UserView>> {
    let id = user_id(id)?;
    let record = state
        .store
        .set_user_active(&id, active)
        .await
        .map_err(user_not_found)?;
    state.tutela.forget_user(&record.id);
    tracing::warn!(user_id = %record.id, active, by = %caller.id(), "user activation changed");
    Ok(Json(user_view(&record)))
}

/// Add credit to a user (negative amounts correct it, never below zero).
#[utoipa::path(
    post, path = "/api/admin/users/{id}/credits", tag = "admin", params(("id" = String, Path)),
    request_body = gp4u_proto::CreditsBody,
    responses((status = 200, body = UserView), (status = 400, body = gp4u_proto::ErrorBody), (status = 404, body = gp4u_proto::ErrorBody), (status = 409, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn add_credits(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<UserView>> {
    let id = user_id(&id)?;
    let amount = validate_credit_amount(&body.value)?;
    let record = state
        .store
        .add_credit(
            &id,
            amount,
            &format!("top_up:{}", state.random_reference()),
            state.now_ms(),
        )
        .await
        .map_err(user_not_found)?;
    tracing::info!(user_id = %record.id, amount_micros = amount.micros(), by = %caller.id(), "credit changed");
    Ok(Json(user_view(&record)))
}

/// Users the platform lists at most in one answer.
pub const MAX_USERS_LISTED: i64 = 1000;

/// Every user (oldest first, at most 1000), for the operator's console page.
#[utoipa::path(
    get, path = "/api/admin/users", tag = "admin",
    responses((status = 200, body = UserList), (status = 403, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_users(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<UserList>> {
    let users = state.store.list_users(MAX_USERS_LISTED).await?;
    Ok(Json(UserList {
        users: users.iter().map(user_view).collect(),
    }))
}

/// Each chamber's cursor, lag and a summary of its read model.
#[utoipa::path(
    get, path = "/api/admin/chambers", tag = "admin",
    responses((status = 200, body = ChambersView), (status = 403, body = gp4u_proto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn chambers(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<ChambersView>> {
    let head = state.store.outbox_head().await?;
    let unsequenced = state.store.outbox_unsequenced().await?;
    let stored = state.store.list_subscribers().await?;
    let chambers = [
        chamber_view::<Mnemo>(&stored, head),
        chamber_view::<Aetherion>(&stored, head),
        chamber_view::<Outerim>(&stored, head),
        chamber_view::<Energy>(&stored, head),
    ];
    Ok(Json(ChambersView {
        bus: state.bus.kind().to_string(),
        head,
        unsequenced,
        chambers: chambers.into(),
    }))
}

fn chamber_view<C: Chamber>(stored: &[SubscriberState], head: i64) -> ChamberView {
    let state = stored.iter().find(|state| state.name == C::NAME);
    let position = state.map_or(0, |state| state.position);
    let summary = match state {
        Some(state) => match serde_json::from_value::<C>(state.model.clone()) {
            Ok(model) => model.summary(),
            Err(error) => {
                serde_json::json!({"error": format!("stored model does not load: {error}")})
            }
        },
        None => C::default().summary(),
    };
    ChamberView {
        name: C::NAME.to_string(),
        cursor: position,
        lag: (head - position).max(0),
        updated_at: state.map(|state| rfc3339(state.updated_at_ms)),
        summary,
    }
}
