//! Schedules: periodic jobs (docs/schedules.md). Each change is one engine
//! call; the answers are the schedule as stored.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use grafter_core::{Job, JobState, Schedule, ScheduleSource, ScheduleSpec, SkippedSlots};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// Fire times a schedule's answer lists.
const UPCOMING: usize = 5;
/// Skip records a schedule's answer lists.
const RECENT_SKIPS: usize = 20;
/// Page size when a list names none.
const DEFAULT_PAGE: usize = 100;

/// A schedule with what is known around it.
#[derive(Serialize, ToSchema)]
pub struct ScheduleView {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Its next fire times (at most 5; `preview` lists more).
    pub upcoming: Vec<DateTime<Utc>>,
    /// The state of its last run's job, while that job is stored.
    pub last_job_state: Option<JobState>,
    /// Its latest skipped slots, newest first (at most 20).
    pub skipped: Vec<SkippedSlots>,
}

async fn view(state: &AppState, schedule: Schedule) -> Result<ScheduleView, ApiError> {
    let engine = state.engine();
    let upcoming = if schedule.next_run_at.is_some() {
        engine.schedule_preview(&schedule.id, UPCOMING).await?
    } else {
        Vec::new()
    };
    let last_job_state = match schedule.last_job_id {
        Some(id) => state.store().job_get(id).await?.map(|job| job.state),
        None => None,
    };
    let skipped = engine.schedule_skips(&schedule.id, RECENT_SKIPS).await?;
    Ok(ScheduleView {
        schedule,
        upcoming,
        last_job_state,
        skipped,
    })
}

/// Create or replace a schedule. Changing its timing applies from now on;
/// a slot already run is never run again. Made through the API, it is
/// kept until deleted (the config file's own are managed by the file).
#[utoipa::path(put, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = String, Path)),
    request_body = ScheduleSpec,
    responses((status = 201, description = "Created", body = ScheduleView),
        (status = 200, description = "Updated (or unchanged)", body = ScheduleView),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let (schedule, created) = state
        .engine()
        .schedule_put(&id, spec, ScheduleSource::Api)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&state, schedule).await?)))
}

/// One schedule, its next fire times, last run and latest skips.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = String, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule = state.engine().schedule_get(&id).await?;
    Ok(Json(view(&state, schedule).await?))
}

/// Where a list of schedules starts and how long it is.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Continue after this id (the previous page's `next`).
    #[param(pattern = "^[^\\u0000]*$")]
    pub after: Option<String>,
}

/// A page of schedules.
#[derive(Serialize, ToSchema)]
pub struct SchedulesBody {
    /// By id.
    pub schedules: Vec<Schedule>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next: Option<String>,
}

/// Schedules, by id, a page at a time.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", params(ListQuery),
    responses((status = 200, body = SchedulesBody), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SchedulesBody>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    let schedules = state.engine().schedules_list(query.after, limit).await?;
    let next = (schedules.len() == limit)
        .then(|| schedules.last().map(|s| s.id.clone()))
        .flatten();
    Ok(Json(SchedulesBody { schedules, next }))
}

/// Delete a schedule. Its jobs stay; the slots they ran stay taken.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.engine().schedule_delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop firing: no slot runs while paused.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", tag = "schedules", params(("id" = String, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule = state.engine().schedule_pause(&id, true).await?;
    Ok(Json(view(&state, schedule).await?))
}

/// Fire again from now on; the slots that came while paused are skipped
/// (recorded with reason `paused`).
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", tag = "schedules", params(("id" = String, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule = state.engine().schedule_pause(&id, false).await?;
    Ok(Json(view(&state, schedule).await?))
}

/// Enqueue the schedule's job now, outside its slots: the job's
/// `schedule.slot` is `null`. Paused or not; overlap does not apply.
#[utoipa::path(post, path = "/v1/schedules/{id}/trigger", tag = "schedules", params(("id" = String, Path)),
    responses((status = 201, body = Job), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = state.engine().schedule_trigger(&id).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// How many fire times to list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// 1 to 1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    pub count: Option<usize>,
}

/// A schedule's next fire times.
#[derive(Serialize, ToSchema)]
pub struct PreviewBody {
    /// The next slots, from now on, in UTC.
    pub slots: Vec<DateTime<Utc>>,
}

/// The next `count` fire times of a schedule, by its definition.
#[utoipa::path(get, path = "/v1/schedules/{id}/preview", tag = "schedules",
    params(("id" = String, Path), PreviewQuery),
    responses((status = 200, body = PreviewBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn preview(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PreviewQuery>,
) -> Result<Json<PreviewBody>, ApiError> {
    let slots = state
        .engine()
        .schedule_preview(&id, query.count.unwrap_or(10))
        .await?;
    Ok(Json(PreviewBody { slots }))
}
