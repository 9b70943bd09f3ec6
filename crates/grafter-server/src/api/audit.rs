//! The audit log (docs/access.md): every change made through the API or
//! the dashboard, newest first.

use axum::extract::State;
use axum::Json;
use grafter_engine::MAX_AUDIT_PAGE;
use grafter_store::AuditRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// A page of the audit log.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries older than this id: the `next` of the previous page.
    pub before: Option<i64>,
    /// Most entries (1 to 1,000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// One change.
#[derive(Serialize, ToSchema)]
pub struct AuditEntryView {
    /// Grows with each entry.
    pub id: i64,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The stored token that made it, if one did.
    pub token_id: Option<String>,
    /// Who: the token's name, `server token`, or `open` (a server without a token).
    pub actor: String,
    /// What, `resource.verb`: `job.retry`, `queue.pause`, `token.create`, …
    pub action: String,
    /// What it was done to: the request's path (API) or the dashboard's form target.
    pub target: String,
    /// More, for some actions (a new token's name and scopes, a cleanup's counts).
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl From<AuditRecord> for AuditEntryView {
    fn from(r: AuditRecord) -> Self {
        AuditEntryView {
            id: r.id,
            at: r.entry.at,
            token_id: r.entry.token_id,
            actor: r.entry.actor,
            action: r.entry.action,
            target: r.entry.target,
            details: r.entry.details,
        }
    }
}

/// A page of entries.
#[derive(Serialize, ToSchema)]
pub struct AuditBody {
    /// Newest first.
    pub entries: Vec<AuditEntryView>,
    /// `before` for the next page, when the page was full.
    pub next: Option<i64>,
}

/// The audit log, newest first (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "tokens", params(AuditQuery),
    responses((status = 200, body = AuditBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditBody>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be 1 to {MAX_AUDIT_PAGE}"),
        ));
    }
    let entries = state.engine().audit_list(query.before, limit).await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditBody {
        entries: entries.into_iter().map(AuditEntryView::from).collect(),
        next,
    }))
}
