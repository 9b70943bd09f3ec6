//! The worker protocol: fetch (long-poll), heartbeat, ack, fail.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use grafter_core::{time, Job, JobId, JobState, LeasedJob, Progress, Worker, WorkerRegistration};
use grafter_engine::{
    Ack, AckOutcome as EngineAckOutcome, FetchRequest as EngineFetch, Outcome, Retry, When,
};
use grafter_store::preview::shorten_errors;
use grafter_store::{JobsList, Order};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::access::Access;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::extract::{ApiJson, ApiPath, PathJobId};
use crate::otlp::{JobRef, JobSpan, Operation, SpanStart};
use crate::state::AppState;

/// A worker asking for jobs.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// Queues to take jobs from (default `["default"]`, at most 1000).
    #[serde(default = "default_queues")]
    #[schema(schema_with = fetch_queues)]
    pub queues: Vec<String>,
    /// Most jobs to lease (default 1, at most 1000).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: usize,
    /// How long to wait for a job when none is available, in ms (default 0,
    /// at most the server's `max_wait_ms`).
    #[serde(default)]
    pub wait_ms: u64,
    /// Who is asking; recorded on the job and its errors.
    #[schema(schema_with = grafter_core::openapi::name_or_null)]
    pub worker_id: Option<String>,
    /// Lease length in ms (1000 to 86,400,000; default the server's).
    #[schema(schema_with = lease_ms)]
    pub lease_ms: Option<u64>,
}

fn default_queues() -> Vec<String> {
    vec![grafter_core::DEFAULT_QUEUE.to_owned()]
}

fn one() -> usize {
    1
}

fn fetch_queues() -> utoipa::openapi::Schema {
    grafter_core::openapi::names(1, grafter_engine::MAX_FETCH_QUEUES)
}

/// A lease length: what the engine accepts.
fn lease_ms() -> utoipa::openapi::Schema {
    grafter_core::openapi::millis(1_000, 86_400_000, true)
}

/// A delay: none to 100 years.
fn delay_ms() -> utoipa::openapi::Schema {
    grafter_core::openapi::millis(0, time::MAX_DURATION_MS, true)
}

/// Leased jobs.
#[derive(Serialize, ToSchema)]
pub struct FetchResponse {
    /// Possibly none, after `wait_ms`.
    pub jobs: Vec<LeasedJob>,
}

/// A count of milliseconds from a request as a duration, within `min` and
/// 100 years (the field names the range otherwise).
pub(crate) fn millis(field: &str, ms: u64, min: u64) -> Result<Duration, ApiError> {
    Ok(time::validate_ms(field, i128::from(ms), min)?)
}

/// Lease available jobs. With `wait_ms`, waits until a job is available or the
/// time is up; a new job wakes the wait at once.
#[utoipa::path(post, path = "/v1/fetch", tag = "worker", request_body = FetchRequest,
    responses((status = 200, body = FetchResponse), (status = 422, body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiJson(request): ApiJson<FetchRequest>,
) -> Result<Json<FetchResponse>, ApiError> {
    for queue in &request.queues {
        access.require_queue(queue)?;
    }
    let batch_size = request.max > 1;
    let fetch = EngineFetch {
        queues: request.queues,
        max: request.max,
        wait: millis("wait_ms", request.wait_ms, 0)?,
        lease: request
            .lease_ms
            // The engine checks the range and names it.
            .map(Duration::from_millis),
        worker_id: request.worker_id,
        running_limit: None,
    };
    let start = SpanStart::now();
    let mut jobs = state
        .engine()
        .fetch(fetch, state.shutdown().cancelled())
        .await?;
    // The byte budget counts args; a job's errors grow with every attempt
    // (16 KiB each) and are sent as a list shows them, so a fetch of 1,000
    // jobs stays small whatever their history.
    for leased in &mut jobs {
        shorten_errors(&mut leased.job);
    }
    let tracer = state.tracer();
    for leased in &jobs {
        tracer.leased(&leased.job);
        tracer.record(JobSpan {
            operation: Operation::Receive,
            start,
            job: JobRef::from(&leased.job),
            batch_size: batch_size.then_some(jobs.len()),
            error: None,
        });
    }
    Ok(Json(FetchResponse { jobs }))
}

/// Success, with an optional result.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The lease received with the job.
    pub lease: String,
    /// What the job produced, any JSON.
    #[schema(schema_with = grafter_core::openapi::any)]
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
    let outcome = Outcome::Completed {
        result: request.result,
    };
    let start = SpanStart::now();
    let answer = state.engine().record(id, &request.lease, outcome).await;
    Ok(Json(settled(&state, Operation::Ack, start, id, answer)?))
}

/// Records the span of a worker's ack, fail or release of job `id` and passes its
/// answer on. The span names the job as the answer has it, or, when the
/// settlement was refused, as this node leased it; `error.type` is the
/// refusal's code.
fn settled(
    state: &AppState,
    operation: Operation,
    start: SpanStart,
    id: JobId,
    answer: grafter_engine::Result<Job>,
) -> Result<Job, ApiError> {
    let answer = answer.map_err(ApiError::from);
    let tracer = state.tracer();
    if tracer.is_on() {
        let leased = tracer.settled(id);
        let job = match (&answer, &leased) {
            (Ok(job), _) => JobRef::from(job),
            (Err(_), Some(leased)) => leased.job(),
            (Err(_), None) => JobRef {
                id: Some(id),
                ..JobRef::default()
            },
        };
        tracer.record(JobSpan {
            operation,
            start,
            job,
            batch_size: None,
            error: answer.as_ref().err().map(ApiError::code),
        });
    }
    answer
}

/// Many successes at once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckManyRequest {
    /// One to 1000 acks; each is fenced by its own lease.
    #[schema(min_items = 1, max_items = 1000)]
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
    #[schema(schema_with = grafter_core::openapi::any)]
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
    /// For `lease_mismatch`: the job's state now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// For `lease_mismatch`: the job's attempt now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
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
    let acks: Vec<Ack> = request
        .acks
        .into_iter()
        .map(|a| Ack {
            id: a.id,
            lease: a.lease,
            result: a.result,
        })
        .collect();
    let ids: Vec<JobId> = acks.iter().map(|a| a.id).collect();
    let start = SpanStart::now();
    let outcomes = state.engine().complete_many(acks).await?;
    let tracer = state.tracer();
    if tracer.is_on() {
        for (&id, outcome) in ids.iter().zip(&outcomes) {
            let leased = tracer.settled(id);
            let error = outcome.error(id).map(|e| ApiError::from(e).code());
            tracer.record(JobSpan {
                operation: Operation::Ack,
                start,
                job: leased.as_ref().map_or(
                    JobRef {
                        id: Some(id),
                        ..JobRef::default()
                    },
                    |leased| leased.job(),
                ),
                batch_size: Some(ids.len()),
                error,
            });
        }
    }
    let results = ids
        .into_iter()
        .zip(outcomes)
        .map(|(id, outcome)| {
            let (state, attempt) = match outcome {
                EngineAckOutcome::LeaseMismatch { state, attempt } => (Some(state), Some(attempt)),
                _ => (None, None),
            };
            let error = outcome.error(id).map(|e| ApiError::from(e).into_detail());
            AckOutcome {
                id,
                ok: error.is_none(),
                error,
                state,
                attempt,
            }
        })
        .collect();
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
    #[schema(schema_with = delay_ms)]
    pub retry_in_ms: Option<u64>,
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
    let retry = match (request.retry, request.retry_in_ms) {
        (false, _) => Retry::Never,
        (true, None) => Retry::Backoff,
        (true, Some(ms)) => Retry::At(When::After(millis("retry_in_ms", ms, 0)?)),
    };
    let outcome = Outcome::Failed {
        error: request.error,
        retry,
    };
    let start = SpanStart::now();
    let answer = state.engine().record(id, &request.lease, outcome).await;
    Ok(Json(settled(&state, Operation::Fail, start, id, answer)?))
}

/// Progress as a bare fraction or with a message.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ProgressInput {
    /// `0.5`
    Fraction(f64),
    /// `{"fraction": 0.5, "message": "…"}`
    Full(Progress),
}

/// The schema of [`ProgressInput`], or `null`.
fn progress_input() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0.0))
                .maximum(Some(1.0)),
        )
        .item(utoipa::openapi::Ref::from_schema_name("Progress"))
        .into()
}

/// Still working.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The lease received with the job.
    pub lease: String,
    /// Progress so far: a fraction from 0.0 to 1.0, or one with a message.
    #[schema(schema_with = progress_input)]
    pub progress: Option<ProgressInput>,
    /// New lease length from now in ms (1000 to 86,400,000; default the server's).
    #[schema(schema_with = lease_ms)]
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
    // The engine checks the range and names it.
    let extend = request.lease_ms.map(Duration::from_millis);
    Ok(Json(
        state
            .engine()
            .heartbeat(id, &request.lease, progress, extend)
            .await?,
    ))
}

/// Hand a job back unfinished.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The lease received with the job.
    pub lease: String,
    /// Run again after this many ms (a snooze); default at once.
    #[schema(schema_with = delay_ms)]
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
    let run_at = match request.delay_ms {
        None => When::Now,
        Some(ms) => When::After(millis("delay_ms", ms, 0)?),
    };
    let outcome = Outcome::Released { run_at };
    let start = SpanStart::now();
    let answer = state.engine().record(id, &request.lease, outcome).await;
    Ok(Json(settled(
        &state,
        Operation::Release,
        start,
        id,
        answer,
    )?))
}

/// Register a worker or record its heartbeat (every few seconds). A worker not
/// heard from for `maintenance.worker_stale_ms` is forgotten and its running
/// jobs are retried at once.
#[utoipa::path(put, path = "/v1/workers/{id}", tag = "worker", params(("id" = String, Path)),
    request_body = WorkerRegistration,
    responses((status = 204, description = "Recorded"), (status = 422, body = ErrorBody)))]
pub async fn worker_heartbeat(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiPath(id): ApiPath<String>,
    ApiJson(worker): ApiJson<WorkerRegistration>,
) -> Result<StatusCode, ApiError> {
    if worker.id != id {
        return Err(ApiError::invalid_field(
            "id",
            format!("'{}' does not match the path's '{id}'", worker.id),
        ));
    }
    require_worker_queues(&access, &worker)?;
    // Nor may it take over the id of another queue's worker, registered or not.
    require_registered_queues(&state, &access, &id).await?;
    require_no_foreign_leases(&state, &access, &id).await?;
    state.engine().worker_beat(worker).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deregister a worker (on its orderly shutdown).
#[utoipa::path(delete, path = "/v1/workers/{id}", tag = "worker", params(("id" = String, Path)),
    responses((status = 204, description = "Gone"), (status = 422, body = ErrorBody)))]
pub async fn worker_remove(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    // No worker can have an id that is not a name.
    grafter_core::validate_name("id", &id)?;
    require_registered_queues(&state, &access, &id).await?;
    state.engine().worker_remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 403 unless the caller may act on every queue of the worker registered as
/// `id`, if there is one. Only a queue-limited token pays for the look-up;
/// an unknown worker answers as it does for anyone.
async fn require_registered_queues(
    state: &AppState,
    access: &Access,
    id: &str,
) -> Result<(), ApiError> {
    if !access.is_queue_limited() {
        return Ok(());
    }
    let workers = state.store().workers_list().await?;
    match workers.iter().find(|w| w.registration.id == id) {
        Some(worker) => require_worker_queues(access, &worker.registration),
        None => Ok(()),
    }
}

/// Running jobs read per page by [`require_no_foreign_leases`].
const RUNNING_PAGE: usize = 1_000;

/// 403 when a queue-limited caller names a worker id under which jobs of
/// queues outside its patterns are running: when a registration goes silent,
/// the rescue of silent workers ends every lease held under its id, whatever
/// the queue, so registering that id would let the caller end (and run
/// twice) another queue's jobs, leased by a worker that never registered.
/// Running jobs are few (at most the workers' concurrency), and only a
/// queue-limited token pays for reading them, at each heartbeat, since jobs
/// may be leased under the id after it registered.
async fn require_no_foreign_leases(
    state: &AppState,
    access: &Access,
    id: &str,
) -> Result<(), ApiError> {
    if !access.is_queue_limited() {
        return Ok(());
    }
    let mut after = None;
    loop {
        let page = state
            .store()
            .jobs_list(JobsList {
                state: Some(JobState::Running),
                limit: RUNNING_PAGE,
                after,
                order: Order::Asc,
                ..JobsList::default()
            })
            .await?;
        let held = page
            .jobs
            .iter()
            .filter(|job| job.worker_id.as_deref() == Some(id));
        for job in held {
            if access.require_queue(&job.queue).is_err() {
                return Err(ApiError::forbidden(format!(
                    "jobs of queue '{}', outside this token's queues, are running under \
                     the worker id '{id}'",
                    job.queue
                )));
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

/// 403 unless the caller may act on every queue the worker takes jobs from:
/// a queue-limited token registers and removes only its own queues' workers.
fn require_worker_queues(access: &Access, worker: &WorkerRegistration) -> Result<(), ApiError> {
    worker
        .queues
        .iter()
        .try_for_each(|queue| access.require_queue(queue))
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
