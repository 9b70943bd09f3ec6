//! Operations: what this server and its store are (`GET /v1/info`), and
//! deleting old finished jobs by hand (`POST /v1/cleanup`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use grafter_core::{JobState, Worker};
use grafter_engine::{Cleaned, Cleanup, FINISHED_STATES};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::api::auth::AuditDetails;
use crate::api::worker::millis;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// A queue in `GET /v1/info`.
#[derive(Serialize, ToSchema)]
pub struct QueueSummary {
    /// Its name.
    pub name: String,
    /// Jobs per state.
    pub counts: BTreeMap<String, u64>,
    /// How long the longest-waiting available job has been due, in ms
    /// (`null` with none available).
    pub oldest_available_age_ms: Option<i64>,
}

/// A leadership in `GET /v1/info`.
#[derive(Serialize, ToSchema)]
pub struct LeaderView {
    /// What is led (`maintenance`).
    pub name: String,
    /// The node holding it.
    pub node: String,
    /// When it lapses unless renewed (past: nobody leads it now).
    pub expires_at: DateTime<Utc>,
}

/// A maintenance service's record on the node that answered.
#[derive(Serialize, ToSchema)]
pub struct ServiceView {
    /// When a pass last worked.
    pub last_pass_at: Option<DateTime<Utc>>,
    /// Whether the latest pass failed.
    pub failing: bool,
    /// Failed passes since this node started.
    pub failures_total: u64,
    /// The latest failure's error.
    pub last_error: Option<String>,
}

/// What this server and its store are.
#[derive(Serialize, ToSchema)]
pub struct InfoBody {
    /// Grafter's version.
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// The newest migration applied to the store.
    pub schema_version: i64,
    /// Every queue with jobs or settings.
    pub queues: Vec<QueueSummary>,
    /// Registered workers.
    pub workers: Vec<Worker>,
    /// Who holds each leadership (the `maintenance` one runs the rescuer,
    /// scheduler, expirer, pruner and schedules).
    pub leaders: Vec<LeaderView>,
    /// Each maintenance service's record on the node that answered (only
    /// the leader's run passes).
    pub maintenance: BTreeMap<String, ServiceView>,
}

/// Version, store, schema, queues with counts and oldest available age,
/// workers, leader and maintenance health.
#[utoipa::path(get, path = "/v1/info", tag = "operations",
    responses((status = 200, body = InfoBody)))]
pub async fn info(State(state): State<AppState>) -> Result<Json<InfoBody>, ApiError> {
    let store = state.store().store_info().await?;
    let now = state.engine().now();
    let queues = state
        .store()
        .queues_list()
        .await?
        .into_iter()
        .map(|queue| QueueSummary {
            oldest_available_age_ms: queue
                .oldest_available_at
                .map(|at| (now - at).num_milliseconds().max(0)),
            counts: queue
                .counts
                .into_iter()
                .map(|(state, n)| (state.to_string(), n))
                .collect(),
            name: queue.name,
        })
        .collect();
    let maintenance = state
        .maintenance_health()
        .snapshot()
        .into_iter()
        .map(|(name, health)| {
            let view = ServiceView {
                failing: health.failing(),
                last_pass_at: health.last_pass_at,
                failures_total: health.failures_total,
                last_error: health.last_error,
            };
            (name.to_owned(), view)
        })
        .collect();
    Ok(Json(InfoBody {
        version: env!("CARGO_PKG_VERSION"),
        store: store.kind,
        schema_version: store.schema_version,
        queues,
        workers: state.store().workers_list().await?,
        leaders: store
            .leaders
            .into_iter()
            .map(|l| LeaderView {
                name: l.name,
                node: l.node,
                expires_at: l.expires_at,
            })
            .collect(),
        maintenance,
    }))
}

/// What `POST /v1/cleanup` deletes.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupRequest {
    /// Only jobs that finished at least this many ms ago (at most 100 years).
    #[schema(minimum = 0, maximum = 3153600000000_u64)]
    pub older_than_ms: u64,
    /// Only jobs in these finished states (default: completed, dead,
    /// cancelled and expired).
    #[serde(default)]
    #[schema(schema_with = finished_states)]
    pub states: Vec<JobState>,
    /// Count only; delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A list of finished states: a cleanup refuses the others.
fn finished_states() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(FINISHED_STATES.map(|s| s.to_string()))),
        )
        .into()
}

/// What a cleanup deleted (or would delete).
#[derive(Serialize, ToSchema)]
pub struct CleanupBody {
    /// Whether nothing was deleted, only counted.
    pub dry_run: bool,
    /// Jobs that finished before this were taken.
    pub finished_before: DateTime<Utc>,
    /// Per state, jobs deleted (or that a run would delete).
    pub jobs: BTreeMap<String, u64>,
    /// All of them.
    pub total: u64,
}

/// Deletes finished jobs older than an age, per state, in bounded batches
/// (each its own transaction); `dry_run` answers the counts instead.
#[utoipa::path(post, path = "/v1/cleanup", tag = "operations",
    request_body = CleanupRequest,
    responses((status = 200, body = CleanupBody), (status = 400, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn cleanup(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CleanupRequest>,
) -> Result<Response, ApiError> {
    let Cleaned {
        dry_run,
        finished_before,
        jobs,
        total,
    } = state
        .engine()
        .cleanup(Cleanup {
            older_than: millis("older_than_ms", request.older_than_ms, 0)?,
            states: request.states,
            dry_run: request.dry_run,
        })
        .await?;
    let details =
        json!({"dry_run": dry_run, "older_than_ms": request.older_than_ms, "total": total});
    let mut response = Json(CleanupBody {
        dry_run,
        finished_before,
        jobs,
        total,
    })
    .into_response();
    response.extensions_mut().insert(AuditDetails(details));
    Ok(response)
}
