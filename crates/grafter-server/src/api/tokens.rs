//! API tokens (docs/access.md): made, listed and revoked by an admin. A
//! token's secret is in the answer that makes it and nowhere else.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use grafter_engine::{TokenSpec, MAX_TOKEN_QUEUES, PRESETS};
use grafter_store::{ApiToken, Scope};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::api::auth::AuditDetails;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

/// A token to make.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What it is for (a name, as a queue's).
    #[schema(schema_with = grafter_core::openapi::name)]
    pub name: String,
    /// Scopes (`enqueue`, `read`, `work`, `manage`, `queues`, `admin`,
    /// `metrics`) or presets (`producer` = enqueue + read, `worker` = work,
    /// `operator` = read + manage + queues); at least one.
    #[schema(schema_with = scope_names)]
    pub scopes: Vec<String>,
    /// Queue patterns (`*` matches any run of characters) its enqueues,
    /// fetches and changes are limited to, at most 100, each a name as a
    /// queue's; absent or empty: every queue.
    #[serde(default)]
    #[schema(schema_with = queue_patterns)]
    pub queues: Vec<String>,
    /// When it stops working (in the future); absent: never.
    pub expires_at: Option<DateTime<Utc>>,
}

fn scope_names() -> utoipa::openapi::Schema {
    let names = Scope::ALL
        .iter()
        .map(|scope| scope.name())
        .chain(PRESETS.iter().map(|(preset, _)| *preset));
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(names)),
        )
        .min_items(Some(1))
        .into()
}

fn queue_patterns() -> utoipa::openapi::Schema {
    grafter_core::openapi::names(0, MAX_TOKEN_QUEUES)
}

/// A stored token, never with its secret.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    /// Its id (`tok_…`).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    #[schema(value_type = Vec<String>)]
    pub scopes: Vec<grafter_store::Scope>,
    /// The queue patterns it is limited to; empty: every queue.
    pub queues: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last used, to within a minute or so.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            scopes: t.scopes,
            queues: t.queues,
            expires_at: t.expires_at,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// A new token, with its secret.
#[derive(Serialize, ToSchema)]
pub struct CreatedTokenBody {
    /// The token.
    #[serde(flatten)]
    pub token: TokenView,
    /// The secret (`gft_…`), to send as `Authorization: Bearer`. Shown
    /// only here: it is not stored, only its hash.
    #[serde(rename = "token")]
    pub secret: String,
}

/// Tokens, oldest first.
#[derive(Serialize, ToSchema)]
pub struct TokensBody {
    /// Every token, revoked ones too.
    pub tokens: Vec<TokenView>,
}

/// Make a token (admin). The answer holds its secret, shown this once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenRequest,
    responses((status = 201, body = CreatedTokenBody), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    let created = state
        .engine()
        .token_create(TokenSpec {
            name: request.name,
            scopes: request.scopes,
            queues: request.queues,
            expires_at: request.expires_at,
        })
        .await?;
    let details = json!({
        "id": created.token.id,
        "name": created.token.name,
        "scopes": created.token.scopes,
        "queues": created.token.queues,
    });
    let body = CreatedTokenBody {
        token: created.token.into(),
        secret: created.secret,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.extensions_mut().insert(AuditDetails(details));
    Ok(response)
}

/// Every token, without secrets (admin).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokensBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<TokensBody>, ApiError> {
    let tokens = state.engine().tokens_list().await?;
    Ok(Json(TokensBody {
        tokens: tokens.into_iter().map(TokenView::from).collect(),
    }))
}

/// Revoke a token (admin): every node refuses it within two seconds.
/// Revoking a revoked token changes nothing and answers it again.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TokenView>, ApiError> {
    let token = state
        .engine()
        .token_revoke(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token '{id}'")))?;
    Ok(Json(token.into()))
}
