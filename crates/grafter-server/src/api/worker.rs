//! The worker protocol: fetch (long-poll), heartbeat, ack, fail.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use grafter_core::{Job, JobId, LeasedJob, Progress, Worker, WorkerRegistration};
use grafter_store::{
    JobComplete, JobFail, JobHeartbeat, JobRelease, JobsCompleteMany, JobsFetch, StoreError,
    WorkerBeat,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::jobs::queue_name;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::extract::{ApiJson, PathJobId};
use crate::state::AppState;

/// Most jobs one fetch may lease.
pub const MAX_FETCH: usize = 1_000;
/// Shortest and longest lease a worker may ask for.
const LEASE_RANGE_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;

/// A worker asking for jobs.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// Queues to take jobs from (default `["default"]`).
    #[serde(default = "default_queues")]
    pub queues: Vec<String>,
    /// Most jobs to lease (default 1, at most 1000).
    #[serde(default = "one")]
    pub max: usize,
    /// How long to wait for a job when none is available, in ms (default 0, at most 30000).
    #[serde(default)]
    pub wait_ms: u64,
    /// Who is asking; recorded on the job and its errors.
    pub worker_id: Option<String>,
    /// Lease length in ms (default the server's, 30000).
    pub lease_ms: Option<u64>,
}

fn default_queues() -> Vec<String> {
    vec![grafter_core::DEFAULT_QUEUE.to_owned()]
}

fn one() -> usize {
    1
}

/// Leased jobs.
#[derive(Serialize, ToSchema)]
pub struct FetchResponse {
    /// Possibly none, after `wait_ms`.
    pub jobs: Vec<LeasedJob>,
}

fn lease_duration(state: &AppState, lease_ms: Option<u64>) -> Result<Duration, ApiError> {
    match lease_ms {
        None => Ok(state.config().default_lease()),
        Some(ms) if LEASE_RANGE_MS.contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(ApiError::invalid_field(
            "lease_ms",
            format!(
                "must be between {} and {}, got {ms}",
                LEASE_RANGE_MS.start(),
                LEASE_RANGE_MS.end()
            ),
        )),
    }
}

/// Lease available jobs. With `wait_ms`, waits until a job is available or the
/// time is up; a new job wakes the wait at once.
#[utoipa::path(post, path = "/v1/fetch", tag = "worker", request_body = FetchRequest,
    responses((status = 200, body = FetchResponse), (status = 422, body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<FetchRequest>,
) -> Result<Json<FetchResponse>, ApiError> {
    if request.queues.is_empty() {
        return Err(ApiError::invalid_field("queues", "name at least one queue"));
    }
    for queue in &request.queues {
        queue_name("queues", queue)?;
    }
    if !(1..=MAX_FETCH).contains(&request.max) {
        return Err(ApiError::invalid_field(
            "max",
            format!("must be between 1 and {MAX_FETCH}"),
        ));
    }
    let max_wait = state.config().max_wait_ms;
    if request.wait_ms > max_wait {
        return Err(ApiError::invalid_field(
            "wait_ms",
            format!("must be at most {max_wait}"),
        ));
    }
    let lease_duration = lease_duration(&state, request.lease_ms)?;
    let params = || JobsFetch {
        running_limit: None,
        queues: request.queues.clone(),
        max: request.max,
        lease_duration,
        worker_id: request.worker_id.clone(),
        now: Utc::now(),
    };
    let wait = Duration::from_millis(request.wait_ms);
    let jobs = grafter_store::jobs_fetch_waiting(
        state.store(),
        params,
        wait,
        state.shutdown().cancelled(),
    )
    .await?;
    Ok(Json(FetchResponse { jobs }))
}

/// Success, with an optional result.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The lease received with the job.
    pub lease: String,
    /// What the job produced, any JSON.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// Mark a leased job completed.
#[utoipa::path(post, path = "/v1/jobs/{id}/ack", tag = "worker", params(("id" = i64, Path)),
    request_body = AckRequest,
    responses((status = 200, body = Job), (status = 404, body = ErrorBody),
        (status = 409, description = "Stale or foreign lease; nothing changed", body = ErrorBody)))]
pub async fn ack(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    ApiJson(request): ApiJson<AckRequest>,
) -> Result<Json<Job>, ApiError> {
    let job = state
        .store()
        .job_complete(JobComplete {
            id,
            lease: request.lease,
            result: request.result,
            now: Utc::now(),
        })
        .await?;
    state.metrics().completed(&job.queue);
    Ok(Json(job))
}

/// Many successes at once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckManyRequest {
    /// One to 1000 acks; each is fenced by its own lease.
    pub acks: Vec<AckItem>,
}

/// One success in a batch ack.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckItem {
    /// The job.
    #[schema(value_type = i64)]
    pub id: JobId,
    /// The lease received with the job.
    pub lease: String,
    /// What the job produced, any JSON.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// What became of each ack, in request order.
#[derive(Serialize, ToSchema)]
pub struct AckManyResponse {
    /// One per ack.
    pub results: Vec<AckOutcome>,
}

/// What became of one ack.
#[derive(Serialize, ToSchema)]
pub struct AckOutcome {
    /// The job.
    #[schema(value_type = i64)]
    pub id: JobId,
    /// True when this ack completed the job.
    pub ok: bool,
    /// Why not: `lease_mismatch` (nothing changed) or `not_found`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// Mark many leased jobs completed in one transaction: what a worker sends
/// when several jobs finish close together. Each ack is fenced by its own
/// lease and answered on its own; a stale lease fails only its item.
#[utoipa::path(post, path = "/v1/jobs/ack", tag = "worker", request_body = AckManyRequest,
    responses((status = 200, body = AckManyResponse), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn ack_many(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AckManyRequest>,
) -> Result<Json<AckManyResponse>, ApiError> {
    if !(1..=MAX_FETCH).contains(&request.acks.len()) {
        return Err(ApiError::invalid_field(
            "acks",
            format!("must hold between 1 and {MAX_FETCH} acks"),
        ));
    }
    let ids: Vec<JobId> = request.acks.iter().map(|a| a.id).collect();
    let items = request
        .acks
        .into_iter()
        .map(|a| (a.id, a.lease, a.result))
        .collect();
    let done = state
        .store()
        .jobs_complete_many(JobsCompleteMany {
            items,
            now: Utc::now(),
        })
        .await?;
    state
        .metrics()
        .batch_acked(done.iter().filter(|&&ok| ok).count());
    let mut results = Vec::with_capacity(ids.len());
    for (id, ok) in ids.into_iter().zip(done) {
        let error = if ok {
            None
        } else {
            // Rare, so the reason is looked up only now.
            let why = match state.store().job_get(id).await? {
                Some(job) => StoreError::LeaseMismatch {
                    id,
                    state: job.state,
                    attempt: job.attempt,
                },
                None => StoreError::NotFound(id),
            };
            Some(ApiError::from(why).into_detail())
        };
        results.push(AckOutcome { id, ok, error });
    }
    Ok(Json(AckManyResponse { results }))
}

/// A failed attempt.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// The lease received with the job.
    pub lease: String,
    /// What went wrong, kept in the job's `errors`.
    pub error: String,
    /// `false` to fail for good (`dead`) now (default true).
    #[serde(default = "yes")]
    pub retry: bool,
    /// Retry after this many ms instead of the backoff.
    pub retry_in_ms: Option<u64>,
}

fn later(now: chrono::DateTime<Utc>, ms: u64) -> chrono::DateTime<Utc> {
    chrono::Duration::try_milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
}

fn yes() -> bool {
    true
}

/// Record a failed attempt: `retryable` after backoff, or `dead`.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "worker", params(("id" = i64, Path)),
    request_body = FailRequest,
    responses((status = 200, body = Job), (status = 404, body = ErrorBody),
        (status = 409, description = "Stale or foreign lease; nothing changed", body = ErrorBody)))]
pub async fn fail(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    ApiJson(request): ApiJson<FailRequest>,
) -> Result<Json<Job>, ApiError> {
    let now = Utc::now();
    let retry_at = request.retry_in_ms.map(|ms| later(now, ms));
    let job = state
        .store()
        .job_fail(JobFail {
            id,
            lease: request.lease,
            error: request.error,
            retry: request.retry,
            retry_at,
            backoff: state.config().retry,
            now,
        })
        .await?;
    state.metrics().failed(&job.queue);
    Ok(Json(job))
}

/// Progress as a bare fraction or with a message.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ProgressInput {
    /// `0.5`
    Fraction(f64),
    /// `{"fraction": 0.5, "message": "…"}`
    Full(Progress),
}

/// Still working.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The lease received with the job.
    pub lease: String,
    /// Progress so far.
    pub progress: Option<ProgressInput>,
    /// New lease length from now in ms (default the server's).
    pub lease_ms: Option<u64>,
}

/// Extend a lease and report progress. The answer's `cancel_requested` tells
/// the worker to stop.
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "worker", params(("id" = i64, Path)),
    request_body = HeartbeatRequest,
    responses((status = 200, body = Job), (status = 404, body = ErrorBody),
        (status = 409, description = "Stale or foreign lease; nothing changed", body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Json<Job>, ApiError> {
    let progress = request.progress.map(|p| match p {
        ProgressInput::Fraction(fraction) => Progress {
            fraction,
            message: None,
        },
        ProgressInput::Full(progress) => progress,
    });
    if let Some(progress) = &progress {
        progress.validate()?;
    }
    let lease_duration = lease_duration(&state, request.lease_ms)?;
    let job = state
        .store()
        .job_heartbeat(JobHeartbeat {
            id,
            lease: request.lease,
            progress,
            lease_duration,
            now: Utc::now(),
        })
        .await?;
    Ok(Json(job))
}

/// Hand a job back unfinished.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The lease received with the job.
    pub lease: String,
    /// Run again after this many ms (a snooze); default at once.
    pub delay_ms: Option<u64>,
}

/// Hand a leased job back without counting the attempt: at once (a worker
/// shutting down) or after `delay_ms` (a snooze).
#[utoipa::path(post, path = "/v1/jobs/{id}/release", tag = "worker", params(("id" = i64, Path)),
    request_body = ReleaseRequest,
    responses((status = 200, body = Job), (status = 404, body = ErrorBody),
        (status = 409, description = "Stale or foreign lease; nothing changed", body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    ApiJson(request): ApiJson<ReleaseRequest>,
) -> Result<Json<Job>, ApiError> {
    let now = Utc::now();
    let run_at = request.delay_ms.map_or(now, |ms| later(now, ms));
    let job = state
        .store()
        .job_release(JobRelease {
            id,
            lease: request.lease,
            run_at,
            now,
        })
        .await?;
    Ok(Json(job))
}

/// Register a worker or record its heartbeat (every few seconds). A worker not
/// heard from for `maintenance.worker_stale_ms` is forgotten and its running
/// jobs are retried at once.
#[utoipa::path(put, path = "/v1/workers/{id}", tag = "worker", params(("id" = String, Path)),
    request_body = WorkerRegistration,
    responses((status = 204, description = "Recorded"), (status = 422, body = ErrorBody)))]
pub async fn worker_heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(worker): ApiJson<WorkerRegistration>,
) -> Result<StatusCode, ApiError> {
    worker.validate()?;
    if worker.id != id {
        return Err(ApiError::invalid_field(
            "id",
            format!("'{}' does not match the path's '{id}'", worker.id),
        ));
    }
    state
        .store()
        .worker_heartbeat(WorkerBeat {
            worker,
            now: Utc::now(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deregister a worker (on its orderly shutdown).
#[utoipa::path(delete, path = "/v1/workers/{id}", tag = "worker", params(("id" = String, Path)),
    responses((status = 204, description = "Gone")))]
pub async fn worker_remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store().worker_remove(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Live workers.
#[derive(Serialize, ToSchema)]
pub struct WorkersBody {
    /// Oldest first.
    pub workers: Vec<Worker>,
}

/// Registered workers with their running job counts.
#[utoipa::path(get, path = "/v1/workers", tag = "worker", responses((status = 200, body = WorkersBody)))]
pub async fn workers_list(State(state): State<AppState>) -> Result<Json<WorkersBody>, ApiError> {
    Ok(Json(WorkersBody {
        workers: state.store().workers_list().await?,
    }))
}
