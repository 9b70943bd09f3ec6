//! Who a request comes from and what it may do (docs/access.md): the
//! server's `--token` (every power), a stored token (its scopes and queue
//! patterns), or nobody on a server without a token (open: every power).
//! Verified stored tokens are kept in memory for
//! [`crate::token_cache::CACHE_TTL`], so a token
//! revoked on any node is refused by every node within that bound.

use std::sync::Arc;

use axum::http::Method;
use grafter_engine::queue_matches;
use grafter_store::{ApiToken, Scope};

use crate::error::ApiError;
use crate::state::AppState;

/// `last_used_at` is written only when it is older than this, so a busy
/// token costs one write a minute, not one per request.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// The caller of a request.
#[derive(Clone, Debug)]
pub enum Access {
    /// The server has no token: every request may do anything.
    Open,
    /// The server's own `--token`: an admin.
    ServerToken,
    /// A stored token.
    Token(Arc<ApiToken>),
}

impl Access {
    /// Whether the caller has `scope` (admin has every scope).
    pub fn allows(&self, scope: Scope) -> bool {
        match self {
            Access::Open | Access::ServerToken => true,
            Access::Token(token) => token
                .scopes
                .iter()
                .any(|&s| s == scope || s == Scope::Admin),
        }
    }

    /// 403 unless the caller has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.allows(scope) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "this token does not have the '{}' scope",
            scope.name()
        )))
    }

    /// Whether the caller is limited to some queues.
    pub fn is_queue_limited(&self) -> bool {
        matches!(self, Access::Token(token) if !token.queues.is_empty())
    }

    /// 403 unless the caller may act on `queue`.
    pub fn require_queue(&self, queue: &str) -> Result<(), ApiError> {
        let Access::Token(token) = self else {
            return Ok(());
        };
        if token.queues.is_empty() || token.queues.iter().any(|p| queue_matches(p, queue)) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "this token is limited to the queues {:?}, not '{queue}'",
            token.queues
        )))
    }

    /// 403 unless the caller holds the server's own token (or the server has
    /// none): only its holder decides where a queue's jobs are pushed
    /// (docs/push.md), so no stored token may, not even an `admin` one, whose
    /// scopes and queue patterns say nothing about where jobs may go.
    pub fn require_server_token(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Access::Open | Access::ServerToken => Ok(()),
            Access::Token(_) => Err(ApiError::forbidden(format!(
                "only the server's token can {what}, not a stored token"
            ))),
        }
    }

    /// The caller's stored token, if it is one.
    pub fn stored(&self) -> Option<&Arc<ApiToken>> {
        match self {
            Access::Token(token) => Some(token),
            Access::Open | Access::ServerToken => None,
        }
    }

    /// Who the caller is, for the audit log: the token's id, and a name.
    pub fn actor(&self) -> (Option<String>, String) {
        match self {
            Access::Open => (None, "open".into()),
            Access::ServerToken => (None, "server token".into()),
            Access::Token(token) => (Some(token.id.clone()), token.name.clone()),
        }
    }
}

/// How a token is looked up.
pub enum TokenKey<'a> {
    /// By its secret (a bearer header, the login form).
    Secret(&'a str),
    /// By its id (a dashboard session).
    Id(&'a str),
}

/// The stored token for a key, from the cache or the store; `None` when
/// there is none. Reading it from the store also records its use, at most
/// once a minute.
pub async fn stored_token(
    state: &AppState,
    key: TokenKey<'_>,
) -> Result<Option<Arc<ApiToken>>, ApiError> {
    let cache_key = match key {
        TokenKey::Secret(secret) => format!("secret:{}", sha256_hex(secret)),
        TokenKey::Id(id) => format!("id:{id}"),
    };
    if let Some(token) = state.token_cache().get(&cache_key) {
        return Ok(Some(token));
    }
    let engine = state.engine();
    let found = match key {
        TokenKey::Secret(secret) => engine.token_of_secret(secret).await?,
        TokenKey::Id(id) => engine.token_get(id).await?,
    };
    let Some(token) = found else {
        return Ok(None);
    };
    let now = engine.now();
    if token.revoked_at.is_none() && token.last_used_at.is_none_or(|at| at + TOUCH_EVERY <= now) {
        let (engine, id) = (engine.clone(), token.id.clone());
        // A lost touch only makes last_used_at older; the request goes on.
        tokio::spawn(async move {
            if let Err(error) = engine.token_touch(&id).await {
                tracing::warn!(%error, token = id, "could not record a token's use");
            }
        });
    }
    let token = Arc::new(token);
    state.token_cache().put(cache_key, token.clone());
    Ok(Some(token))
}

/// 401 for a stored token that is revoked or past its expiry.
pub fn usable(state: &AppState, token: Arc<ApiToken>) -> Result<Access, ApiError> {
    match unusable_because(&token, state.engine().now()) {
        Some(why) => Err(ApiError::unauthorized_because(format!("this token {why}"))),
        None => Ok(Access::Token(token)),
    }
}

/// Why a stored token no longer works at `now` ("has been revoked", "has
/// expired"), or `None` while it does.
pub fn unusable_because(
    token: &ApiToken,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<&'static str> {
    if token.revoked_at.is_some() {
        Some("has been revoked")
    } else if token.expires_at.is_some_and(|at| at <= now) {
        Some("has expired")
    } else {
        None
    }
}

/// What a `/v1` route needs, by method and route pattern (without `/v1`),
/// and the audit action of a change worth recording (`None`: not audited:
/// reads, and the high-volume enqueues and worker reports). A route not
/// named here needs `admin`, so a route added without a thought is closed.
pub fn route_needs(method: &Method, route: &str) -> (Scope, Option<&'static str>) {
    use Scope::*;
    // HEAD is a GET without its body: it reads what GET reads.
    let m = if only_reads(method) {
        "GET"
    } else {
        method.as_str()
    };
    match (m, route) {
        ("GET", "/tokens") | ("GET", "/audit") => (Admin, None),
        ("POST", "/tokens") => (Admin, Some("token.create")),
        ("DELETE", "/tokens/{id}") => (Admin, Some("token.revoke")),
        ("POST", "/cleanup") => (Admin, Some("jobs.cleanup")),
        ("GET", _) => (Read, None),
        ("POST", "/stream-tokens") => (Read, None),
        (
            "POST",
            "/jobs" | "/jobs/batch" | "/batches" | "/batches/{id}/jobs" | "/batches/{id}/seal",
        ) => (Enqueue, None),
        (
            "POST",
            "/fetch"
            | "/jobs/ack"
            | "/jobs/{id}/ack"
            | "/jobs/{id}/fail"
            | "/jobs/{id}/heartbeat"
            | "/jobs/{id}/release",
        )
        | ("PUT" | "DELETE", "/workers/{id}") => (Work, None),
        ("POST", "/jobs/{id}/retry") => (Manage, Some("job.retry")),
        ("POST", "/jobs/{id}/cancel") => (Manage, Some("job.cancel")),
        ("POST", "/jobs/{id}/reschedule") => (Manage, Some("job.reschedule")),
        ("DELETE", "/jobs/{id}") => (Manage, Some("job.delete")),
        ("POST", "/batches/{id}/cancel") => (Manage, Some("batch.cancel")),
        ("PUT", "/schedules/{id}") => (Manage, Some("schedule.put")),
        ("DELETE", "/schedules/{id}") => (Manage, Some("schedule.delete")),
        ("POST", "/schedules/{id}/pause") => (Manage, Some("schedule.pause")),
        ("POST", "/schedules/{id}/resume") => (Manage, Some("schedule.resume")),
        ("POST", "/schedules/{id}/trigger") => (Manage, Some("schedule.trigger")),
        ("PUT", "/queues/{name}") => (Queues, Some("queue.update")),
        ("POST", "/queues/{name}/pause") => (Queues, Some("queue.pause")),
        ("POST", "/queues/{name}/resume") => (Queues, Some("queue.resume")),
        _ => (Admin, Some("admin")),
    }
}

/// Whether a change on `route` keeps to the queues its handler holds a
/// queue-limited token to: each job's queue (enqueues, a batch's creation
/// and added jobs, a job's retry, cancel, reschedule and delete), the queues
/// named (fetches, queue changes, a worker's registration), or a lease
/// (acks, fails, heartbeats and releases touch only the job it was given
/// for). Minting a stream token only reads. Every other change reaches
/// beyond any token's queues: tokens (a new one could have every queue),
/// cleanups, schedules (one may enqueue into any queue), a batch's seal and
/// cancel (its jobs may span queues), and any route added later until it is
/// named here.
pub fn stays_within_queues(route: &str) -> bool {
    matches!(
        route,
        "/jobs"
            | "/jobs/batch"
            | "/batches"
            | "/batches/{id}/jobs"
            | "/jobs/{id}"
            | "/jobs/{id}/retry"
            | "/jobs/{id}/cancel"
            | "/jobs/{id}/reschedule"
            | "/fetch"
            | "/jobs/ack"
            | "/jobs/{id}/ack"
            | "/jobs/{id}/fail"
            | "/jobs/{id}/heartbeat"
            | "/jobs/{id}/release"
            | "/workers/{id}"
            | "/queues/{name}"
            | "/queues/{name}/pause"
            | "/queues/{name}/resume"
            | "/stream-tokens"
    )
}

/// Whether a request with this method only reads (GET, HEAD): every other
/// method is routed only to changes.
pub fn only_reads(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Writes a change to the audit log. The change is already durable, so a
/// failure here cannot undo it; it is logged as an error instead of turning
/// a done change into an error answer the client would retry.
pub async fn audit(
    state: &AppState,
    access: &Access,
    action: &str,
    target: String,
    details: Option<serde_json::Value>,
) {
    let (token_id, actor) = access.actor();
    if let Err(error) = state
        .engine()
        .audit_record(token_id, actor, action, target.clone(), details)
        .await
    {
        tracing::error!(%error, action, target, "could not write the audit log");
    }
}

/// The SHA-256 of a secret, as hex: what a token is cached by, so no
/// secret sits in memory longer than its request.
fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the API document, as (method, route without `/v1`).
    fn operations() -> Vec<(Method, String)> {
        let document: serde_json::Value =
            serde_json::from_str(&crate::openapi::openapi_json(&Default::default())).unwrap();
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            let Some(route) = path.strip_prefix("/v1") else {
                continue;
            };
            for method in item.as_object().unwrap().keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                operations.push((method, route.to_owned()));
            }
        }
        operations
    }

    #[test]
    fn every_api_route_is_given_a_scope() {
        let operations = operations();
        assert!(operations.len() > 30, "{operations:?}");
        for (method, route) in operations {
            let (scope, action) = route_needs(&method, &route);
            assert_ne!(action, Some("admin"), "{method} {route} is not mapped");
            if method == Method::GET && !["/tokens", "/audit"].contains(&route.as_str()) {
                assert_eq!(scope, Scope::Read, "{method} {route}");
                assert_eq!(action, None, "reads are not audited: {method} {route}");
            }
        }
    }

    #[test]
    fn only_the_changes_whose_handlers_check_queues_are_open_to_queue_limited_tokens() {
        let changes: Vec<String> = operations()
            .into_iter()
            .filter(|(method, _)| !only_reads(method))
            .map(|(method, route)| format!("{method} {route}"))
            .collect();
        let beyond: Vec<&String> = changes
            .iter()
            .filter(|change| !stays_within_queues(change.split_once(' ').unwrap().1))
            .collect();
        assert_eq!(
            beyond,
            [
                "POST /batches/{id}/cancel",
                "POST /batches/{id}/seal",
                "POST /cleanup",
                "DELETE /schedules/{id}",
                "PUT /schedules/{id}",
                "POST /schedules/{id}/pause",
                "POST /schedules/{id}/resume",
                "POST /schedules/{id}/trigger",
                "POST /tokens",
                "DELETE /tokens/{id}",
            ],
            "every change: {changes:?}"
        );
    }

    #[test]
    fn workers_and_producers_are_not_audited_but_changes_are() {
        for (method, route) in [
            (Method::POST, "/jobs"),
            (Method::POST, "/jobs/batch"),
            (Method::POST, "/fetch"),
            (Method::POST, "/jobs/{id}/ack"),
            (Method::POST, "/jobs/ack"),
        ] {
            assert_eq!(route_needs(&method, route).1, None, "{method} {route}");
        }
        assert_eq!(
            route_needs(&Method::POST, "/jobs/{id}/retry"),
            (Scope::Manage, Some("job.retry"))
        );
        assert_eq!(
            route_needs(&Method::HEAD, "/jobs/{id}"),
            (Scope::Read, None),
            "HEAD reads as GET does"
        );
        assert_eq!(route_needs(&Method::HEAD, "/audit"), (Scope::Admin, None));
        assert_eq!(
            route_needs(&Method::PATCH, "/jobs/{id}"),
            (Scope::Admin, Some("admin")),
            "an unknown route needs admin"
        );
    }
}
