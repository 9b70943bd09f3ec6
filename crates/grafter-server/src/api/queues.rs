//! Queues: counts per state, pause and resume, push targets.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use grafter_core::{PushTarget, QueueLimits};
use grafter_store::QueueInfo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::access::Access;
use crate::api::auth::AuditDetails;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

/// A queue and its jobs per state.
#[derive(Serialize, ToSchema)]
pub struct QueueBody {
    /// The queue's name.
    pub name: String,
    /// Paused queues are not fetched from.
    pub paused: bool,
    /// Where jobs are pushed, for a push queue (its secrets are never shown).
    pub push: Option<PushView>,
    /// Its concurrency and rate limits (docs/limits.md), if any.
    pub limits: Option<QueueLimits>,
    /// Jobs per state (every state present).
    pub counts: BTreeMap<String, u64>,
    /// `run_at` of the longest-waiting available job.
    pub oldest_available_at: Option<chrono::DateTime<Utc>>,
}

/// A push target as the API shows it: no secrets, header names only.
#[derive(Serialize, ToSchema)]
pub struct PushView {
    /// The application's endpoint, with any credentials and query values
    /// shown as `***`.
    pub url: String,
    /// Request timeout in ms.
    pub timeout_ms: u64,
    /// Most requests in flight across the cluster.
    pub concurrency: u32,
    /// Names of the extra headers sent.
    pub headers: Vec<String>,
    /// How many secrets sign each request (more than one while rotating).
    pub secrets: usize,
    /// Which signature headers each request carries.
    pub signing: grafter_core::Signing,
}

impl From<&PushTarget> for PushView {
    fn from(target: &PushTarget) -> Self {
        PushView {
            url: target.redacted_url(),
            timeout_ms: target.timeout_ms,
            concurrency: target.concurrency,
            headers: target.headers.keys().cloned().collect(),
            secrets: 1 + target.old_secrets.len(),
            signing: target.signing,
        }
    }
}

impl From<QueueInfo> for QueueBody {
    fn from(info: QueueInfo) -> Self {
        QueueBody {
            name: info.name,
            paused: info.paused,
            push: info.push.as_ref().map(PushView::from),
            limits: info.limits,
            counts: info
                .counts
                .into_iter()
                .map(|(s, n)| (s.to_string(), n))
                .collect(),
            oldest_available_at: info.oldest_available_at,
        }
    }
}

/// Every queue.
#[derive(Serialize, ToSchema)]
pub struct QueuesBody {
    /// Sorted by name.
    pub queues: Vec<QueueBody>,
}

/// Every queue with its job counts per state.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", responses((status = 200, body = QueuesBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<QueuesBody>, ApiError> {
    let queues = state.store().queues_list().await?;
    Ok(Json(QueuesBody {
        queues: queues.into_iter().map(QueueBody::from).collect(),
    }))
}

async fn set_paused(
    state: AppState,
    name: String,
    paused: bool,
) -> Result<Json<QueueBody>, ApiError> {
    let info = state.engine().queue_pause(&name, paused).await?;
    Ok(Json(info.into()))
}

/// Stop handing out this queue's jobs (running ones go on).
#[utoipa::path(post, path = "/v1/queues/{name}/pause", tag = "queues", params(("name" = String, Path)),
    responses((status = 200, body = QueueBody), (status = 422, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<QueueBody>, ApiError> {
    access.require_queue(&name)?;
    set_paused(state, name, true).await
}

/// Hand out this queue's jobs again.
#[utoipa::path(post, path = "/v1/queues/{name}/resume", tag = "queues", params(("name" = String, Path)),
    responses((status = 200, body = QueueBody), (status = 422, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<QueueBody>, ApiError> {
    access.require_queue(&name)?;
    set_paused(state, name, false).await
}

/// A queue's settings. Only the keys given change; `null` removes one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Makes it a push queue: Grafter POSTs each due job to `url`, signed with
    /// `secret` (and each of `old_secrets` while rotating). `null`: a pull
    /// queue again, whose jobs workers fetch. Absent: left as it is.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<PushTarget>)]
    pub push: Option<Option<PushTarget>>,
    /// Limits how many of its jobs run at once and start per period, for the
    /// queue or each partition (docs/limits.md). `null`: no limits. Absent:
    /// left as they are.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<QueueLimits>)]
    pub limits: Option<Option<QueueLimits>>,
}

/// A key that is present: `Some(None)` for `null`, `Some(value)` otherwise
/// (an absent key stays `None` by `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Set a queue's settings: its push target and its limits, each only if
/// given (`null` removes it). Everything is checked before anything is
/// stored; then the limits are stored, then the push target, so a target
/// never goes live without the limits sent with it (should storing the
/// target fail, the limits stay set: send the request again). The answer
/// never shows secrets. A push target decides where jobs, arguments and
/// all, are sent, so only the server's token sets, changes or removes one
/// (403 for a stored token, even an admin one).
#[utoipa::path(put, path = "/v1/queues/{name}", tag = "queues", params(("name" = String, Path)),
    request_body = QueueSettings,
    responses((status = 200, body = QueueBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiPath(name): ApiPath<String>,
    ApiJson(mut settings): ApiJson<QueueSettings>,
) -> Result<Response, ApiError> {
    access.require_queue(&name)?;
    if settings.push.is_some() {
        access.require_server_token("set, change or remove a push target")?;
    }
    // The engine checks the name at each write; here it is checked before the
    // first, so neither write can fail on it.
    grafter_core::validate_path_name("name", &name)?;
    if let Some(Some(target)) = &mut settings.push {
        use crate::push::address_guard::{admit_target, TargetRefusal};
        match admit_target(target, state.config().push.allow_private) {
            Ok(()) => {}
            Err(TargetRefusal::Invalid(e)) => return Err(e.into()),
            Err(TargetRefusal::Guarded(why)) => return Err(ApiError::push_target_refused(why)),
        }
    }
    if let Some(Some(limits)) = &settings.limits {
        limits.validate()?;
    }
    let details = changed(&settings);
    let engine = state.engine();
    let mut info = None;
    // The limits first: a target never goes live without those sent with it.
    if let Some(limits) = settings.limits {
        info = Some(engine.queue_set_limits(&name, limits).await?);
    }
    if let Some(push) = settings.push {
        info = Some(engine.queue_set_push(&name, push).await?);
        state.push_targets_changed().notify_one();
    }
    let info = match info {
        Some(info) => info,
        // Nothing to change: the queue as it is.
        None => state
            .store()
            .queues_list()
            .await?
            .into_iter()
            .find(|q| q.name == name)
            .unwrap_or_else(|| QueueInfo::empty(name, false)),
    };
    let mut response = Json(QueueBody::from(info)).into_response();
    response.extensions_mut().insert(AuditDetails(details));
    Ok(response)
}

/// What a queue update changes, for its audit log entry: each setting given,
/// a push target as the API shows it (no secrets, header names only).
fn changed(settings: &QueueSettings) -> serde_json::Value {
    let mut details = serde_json::Map::new();
    if let Some(push) = &settings.push {
        details.insert("push".into(), json!(push.as_ref().map(PushView::from)));
    }
    if let Some(limits) = &settings.limits {
        details.insert("limits".into(), json!(limits));
    }
    serde_json::Value::Object(details)
}
