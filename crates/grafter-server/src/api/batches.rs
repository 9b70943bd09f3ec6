//! Batches (docs/batches.md): many jobs with one state, counts, progress and
//! callbacks. Each change is one engine call.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use grafter_core::{Batch, BatchCallbacks, BatchId, Job, NewJob};
use grafter_engine::{NewBatch, MAX_BATCH_LIST};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::access::Access;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, PathBatchId};
use crate::filters::id_filter;
use crate::state::AppState;

/// Page size when a list names none.
const DEFAULT_PAGE: usize = 50;

/// A batch to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatchRequest {
    /// Its first jobs (0 to 10,000; the fields of `POST /v1/jobs`, without
    /// `unique_key`).
    #[serde(default)]
    #[schema(max_items = 10_000)]
    pub jobs: Vec<NewJob>,
    /// Keep it open for more jobs (`POST /v1/batches/{id}/jobs`) until
    /// sealed; an open batch never settles. Default false.
    #[serde(default)]
    pub open: bool,
    /// Enqueued once when it is sealed and every job completed.
    pub on_success: Option<NewJob>,
    /// Enqueued once when it is sealed and every job finished.
    pub on_complete: Option<NewJob>,
    /// Enqueued once when its first job ends dead.
    pub on_failure: Option<NewJob>,
}

/// Jobs to add to an open batch.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddJobsRequest {
    /// 1 to 10,000 jobs.
    #[schema(min_items = 1, max_items = 10_000)]
    pub jobs: Vec<NewJob>,
}

/// A batch and the jobs a request put in it.
#[derive(Serialize, ToSchema)]
pub struct BatchBody {
    /// The batch after the request.
    pub batch: Batch,
    /// The jobs inserted, in request order.
    pub jobs: Vec<Job>,
}

/// Create a batch with its jobs in one transaction: all or none. A sealed
/// batch without jobs succeeds at once.
#[utoipa::path(post, path = "/v1/batches", tag = "batches", request_body = CreateBatchRequest,
    responses((status = 201, body = BatchBody), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiJson(request): ApiJson<CreateBatchRequest>,
) -> Result<(StatusCode, Json<BatchBody>), ApiError> {
    let callbacks = [
        &request.on_success,
        &request.on_complete,
        &request.on_failure,
    ];
    for job in request.jobs.iter().chain(callbacks.into_iter().flatten()) {
        access.require_queue(&job.queue)?;
    }
    let created = state
        .engine()
        .batch_create(NewBatch {
            jobs: request.jobs,
            open: request.open,
            callbacks: BatchCallbacks {
                on_success: request.on_success,
                on_complete: request.on_complete,
                on_failure: request.on_failure,
            },
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(BatchBody {
            batch: created.batch,
            jobs: created.jobs,
        }),
    ))
}

/// Add jobs to an open batch, in one transaction (a job of the batch may do
/// it while it runs).
#[utoipa::path(post, path = "/v1/batches/{id}/jobs", tag = "batches",
    params(("id" = i64, Path)), request_body = AddJobsRequest,
    responses((status = 201, body = BatchBody), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Sealed, cancelled or finished", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    PathBatchId(id): PathBatchId,
    ApiJson(request): ApiJson<AddJobsRequest>,
) -> Result<(StatusCode, Json<BatchBody>), ApiError> {
    for job in &request.jobs {
        access.require_queue(&job.queue)?;
    }
    let added = state.engine().batch_add(id, request.jobs).await?;
    Ok((
        StatusCode::CREATED,
        Json(BatchBody {
            batch: added.batch,
            jobs: added.jobs,
        }),
    ))
}

/// Seal a batch: no more jobs; it settles when they have all finished (at
/// once if they have). Sealing a sealed batch changes nothing.
#[utoipa::path(post, path = "/v1/batches/{id}/seal", tag = "batches", params(("id" = i64, Path)),
    responses((status = 200, body = Batch), (status = 404, body = ErrorBody)))]
pub async fn seal(
    State(state): State<AppState>,
    PathBatchId(id): PathBatchId,
) -> Result<Json<Batch>, ApiError> {
    Ok(Json(state.engine().batch_seal(id).await?))
}

/// Cancel a batch: seals it, cancels its waiting jobs and asks its running
/// ones to stop.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches", params(("id" = i64, Path)),
    responses((status = 200, body = Batch), (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    PathBatchId(id): PathBatchId,
) -> Result<Json<Batch>, ApiError> {
    Ok(Json(state.engine().batch_cancel(id).await?))
}

/// One batch: state, counts, progress, callbacks.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", params(("id" = i64, Path)),
    responses((status = 200, body = Batch), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    PathBatchId(id): PathBatchId,
) -> Result<Json<Batch>, ApiError> {
    Ok(Json(state.engine().batch_get(id).await?))
}

/// Where a list of batches starts and how long it is.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 50, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^(|-?[0-9]{1,18})$")]
    pub cursor: Option<String>,
}

/// A page of batches.
#[derive(Serialize, ToSchema)]
pub struct BatchPageBody {
    /// Newest first.
    pub batches: Vec<Batch>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Batches, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/batches", tag = "batches", params(ListQuery),
    responses((status = 200, body = BatchPageBody), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<BatchPageBody>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_BATCH_LIST).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {MAX_BATCH_LIST}"),
        ));
    }
    let before = id_filter(query.cursor.as_deref().unwrap_or_default())
        .map_err(|_| ApiError::invalid_field("cursor", "not a cursor from a previous page"))?
        .map(BatchId);
    let batches = state.engine().batches_list(before, limit).await?;
    let next_cursor = (batches.len() == limit)
        .then(|| batches.last().map(|b| b.id.to_string()))
        .flatten();
    Ok(Json(BatchPageBody {
        batches,
        next_cursor,
    }))
}
