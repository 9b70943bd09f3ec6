//! Enqueueing, reading and managing jobs.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use grafter_core::{Batch, Held, Job, JobId, JobState, NewJob};
use grafter_engine::When;
use grafter_store::{JobsList, Order};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::access::Access;
use crate::api::events::{wait_for_change, EVENT_ID_HEADER, MAX_WAIT_MS};
use crate::api::worker::millis;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, PathJobId, TraceHeaders};
use crate::filters::{id_filter, name_filter, parse_args, SCAN_LIMIT};
use crate::otlp::{JobRef, JobSpan, Operation, SpanStart};
use crate::state::AppState;

/// Page size when a list names none.
pub const DEFAULT_PAGE: usize = 50;
/// Largest page.
pub const MAX_PAGE: usize = 1_000;

/// Enqueue one job. A `unique_key` held by an unfinished job answers 200 with that job.
/// A `traceparent`/`tracestate` (headers, or fields that win over them) is
/// stored with the job; a malformed one is ignored.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = NewJob, params(TraceHeaders),
    responses(
        (status = 201, description = "Created", body = Job),
        (status = 200, description = "An unfinished job already holds the unique_key", body = Job),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn enqueue(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    trace: TraceHeaders,
    ApiJson(mut job): ApiJson<NewJob>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    access.require_queue(&job.queue)?;
    trace.apply(&mut job);
    let start = SpanStart::now();
    let inserted = state.engine().enqueue(job).await?;
    if inserted.created {
        state.tracer().record(JobSpan {
            operation: Operation::Send,
            start,
            job: JobRef::from(&inserted.job),
            batch_size: None,
            error: None,
        });
    }
    let status = if inserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(inserted.job)))
}

/// Many jobs to enqueue in one transaction.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The jobs, inserted in this order (1 to 10,000).
    #[schema(min_items = 1, max_items = 10000)]
    pub jobs: Vec<NewJob>,
}

/// Jobs, in request order.
#[derive(Serialize, ToSchema)]
pub struct JobsBody {
    /// The jobs (for a batch, duplicates by `unique_key` are the existing jobs).
    pub jobs: Vec<Job>,
}

/// Enqueue many jobs in one transaction: all are stored, or none. The
/// `traceparent`/`tracestate` headers go to every job without a
/// `traceparent` field.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchRequest,
    params(TraceHeaders),
    responses((status = 201, body = JobsBody), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn enqueue_batch(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    trace: TraceHeaders,
    ApiJson(mut batch): ApiJson<BatchRequest>,
) -> Result<(StatusCode, Json<JobsBody>), ApiError> {
    for job in &mut batch.jobs {
        access.require_queue(&job.queue)?;
        trace.apply(job);
    }
    let start = SpanStart::now();
    let inserted = state.engine().enqueue_many(batch.jobs).await?;
    for created in inserted.iter().filter(|i| i.created) {
        state.tracer().record(JobSpan {
            operation: Operation::Send,
            start,
            job: JobRef::from(&created.job),
            batch_size: Some(inserted.len()),
            error: None,
        });
    }
    let jobs = inserted.into_iter().map(|i| i.job).collect();
    Ok((StatusCode::CREATED, Json(JobsBody { jobs })))
}

/// One job, and for an available job what holds it back.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// For an available job that its queue's pause or limits hold back:
    /// why (`paused`, `concurrency` or `rate`) and, for people, how much of
    /// which limit is in use and until when. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

/// A long-poll of one job, for clients without Server-Sent Events.
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// Wait up to this many milliseconds (at most 60,000) for the job's next
    /// change before answering; a finished job answers at once.
    #[param(maximum = 60_000)]
    pub wait: Option<u64>,
    /// With `wait`: the change to wait for is the next after this event id
    /// (the `Grafter-Event-Id` header of an earlier answer), so a change
    /// made between two polls answers at once.
    pub after: Option<i64>,
}

/// One job. With `wait`, answers once the job changes (or the wait ends),
/// with the id of its latest event in the `Grafter-Event-Id` header.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path), ShowQuery),
    responses((status = 200, body = JobView,
            headers(("Grafter-Event-Id" = String, description = "With wait: the job's latest event id"))),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    ApiQuery(query): ApiQuery<ShowQuery>,
) -> Result<Response, ApiError> {
    let Some(wait) = query.wait else {
        if query.after.is_some() {
            return Err(ApiError::invalid_field("after", "only goes with wait"));
        }
        let job = state
            .store()
            .job_get(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?;
        let held = state.engine().held(&job).await?;
        return Ok(Json(JobView { job, held }).into_response());
    };
    if wait > MAX_WAIT_MS {
        return Err(ApiError::invalid_field(
            "wait",
            format!("must be at most {MAX_WAIT_MS} ms"),
        ));
    }
    let (job, latest) =
        wait_for_change(&state, id, Duration::from_millis(wait), query.after).await?;
    let held = state.engine().held(&job).await?;
    Ok((
        [(EVENT_ID_HEADER, latest.to_string())],
        Json(JobView { job, held }),
    )
        .into_response())
}

/// Filters for listing jobs.
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state (empty: any).
    #[param(
        pattern = "^(|pending|scheduled|available|running|retryable|completed|dead|cancelled|expired)$"
    )]
    pub state: Option<String>,
    /// Only jobs on this queue.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub queue: Option<String>,
    /// Only jobs of this kind.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub kind: Option<String>,
    /// Only jobs carrying this tag.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub tag: Option<String>,
    /// Only jobs made by this schedule (by its slots or triggered by hand).
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub schedule: Option<String>,
    /// Only jobs in this batch (its id).
    #[param(pattern = "^(|-?[0-9]{1,18})$")]
    pub batch: Option<String>,
    /// Only the jobs that depend on this job (its id): its dependents.
    #[param(pattern = "^(|-?[0-9]{1,18})$")]
    pub depends_on: Option<String>,
    /// Only jobs whose args hold a value, as `path=value`: `user.id=42`,
    /// `to=ada@example.com` (a JSON scalar is read as JSON, anything else as
    /// text).
    #[param(
        pattern = r#"^(|[^.="\u0000-\u001F\u007F-\u009F]*[^.="\s\u0000-\u001F\u007F-\u009F][^.="\u0000-\u001F\u007F-\u009F]*(?:\.[^.="\u0000-\u001F\u007F-\u009F]*[^.="\s\u0000-\u001F\u007F-\u009F][^.="\u0000-\u001F\u007F-\u009F]*){0,15}=[^\u0000]*)$"#
    )]
    pub args: Option<String>,
    /// Page size (default 50, at most 1000). A page may hold fewer jobs, even
    /// none, while `next_cursor` is set: when filters are checked job by job
    /// (args, a tag or schedule with anything else, a queue with a kind), one page looks
    /// at no more than 10,000 jobs.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^(|-?[0-9]{1,18})$")]
    pub cursor: Option<String>,
    /// `desc` (newest first, default) or `asc`.
    #[param(pattern = "^(|asc|desc)$")]
    pub order: Option<String>,
}

/// A page of jobs.
#[derive(Serialize, ToSchema)]
pub struct JobPageBody {
    /// The jobs, each with args and result over 1 KiB of JSON cut to the start
    /// of their text and its last error alone (its `cut` says which).
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Jobs matching a filter, newest first, a page at a time (keyset pagination).
/// Large args, results and error histories come cut (each job's `cut` says
/// which); `GET /v1/jobs/{id}` has the whole job.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobPageBody), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<JobPageBody>, ApiError> {
    let job_state = query
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|e| ApiError::invalid_field("state", e))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let id = |field: &str, value: Option<&str>, message: &str| {
        id_filter(value.unwrap_or_default()).map_err(|_| ApiError::invalid_field(field, message))
    };
    let after = id(
        "cursor",
        query.cursor.as_deref(),
        "not a cursor from a previous page",
    )?
    .map(JobId);
    let order = match query.order.as_deref() {
        None | Some("") | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "order",
                format!("must be asc or desc, got '{other}'"),
            ))
        }
    };
    let name = |field: &str, value: Option<String>| {
        name_filter(field, value.as_deref().unwrap_or_default()).map_err(ApiError::from)
    };
    let args = Some(query.args.unwrap_or_default())
        .filter(|a| !a.is_empty())
        .map(|a| parse_args(&a).map_err(|e| ApiError::invalid_field("args", e)))
        .transpose()?;
    let batch = id(
        "batch",
        query.batch.as_deref(),
        "must be a batch id (an integer)",
    )?
    .map(grafter_core::BatchId);
    let depends_on = id(
        "depends_on",
        query.depends_on.as_deref(),
        "must be a job id (an integer)",
    )?
    .map(JobId);
    let page = state
        .store()
        .jobs_list(JobsList {
            state: job_state,
            queue: name("queue", query.queue)?,
            kind: name("kind", query.kind)?,
            tag: name("tag", query.tag)?,
            schedule: name("schedule", query.schedule)?,
            batch,
            depends_on,
            args,
            limit,
            after,
            order,
            scan_limit: Some(SCAN_LIMIT),
        })
        .await?;
    Ok(Json(JobPageBody {
        jobs: page.jobs,
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// What a job waits for (docs/dependencies.md).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DependenciesBody {
    /// The upstream jobs by id, whole: state, result and errors.
    pub jobs: Vec<Job>,
    /// The batches it waits for (`depends_on_batches`) by id, as `GET
    /// /v1/batches/{id}` shows them.
    pub batches: Vec<Batch>,
}

/// The jobs this job depends on, with their states and results: what a
/// dependent reads of the work before it; and the batches it waits for.
/// Both empty for a job without dependencies; an upstream deleted by hand
/// is no longer listed, nor a batch pruned after the job finished.
#[utoipa::path(get, path = "/v1/jobs/{id}/dependencies", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = DependenciesBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn dependencies(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
) -> Result<Json<DependenciesBody>, ApiError> {
    let dependencies = state.engine().job_dependencies(id).await?;
    Ok(Json(DependenciesBody {
        jobs: dependencies.jobs,
        batches: dependencies.batches,
    }))
}

/// Make a dead, cancelled, expired, scheduled or retryable job available now.
/// A job with dependencies waits again (`pending`) for those unfinished now.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    PathJobId(id): PathJobId,
) -> Result<Json<Job>, ApiError> {
    require_job_queue(&state, &access, id).await?;
    Ok(Json(state.engine().retry(id, None).await?))
}

/// Cancel a job. A running job gets `cancel_requested`, which its worker sees in
/// its next heartbeat or ack answer.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    PathJobId(id): PathJobId,
) -> Result<Json<Job>, ApiError> {
    require_job_queue(&state, &access, id).await?;
    Ok(Json(state.engine().cancel(id).await?))
}

/// When to run a job: a time, or a delay from now (exactly one of them).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescheduleRequest {
    /// Run at this time.
    pub run_at: Option<chrono::DateTime<Utc>>,
    /// Or run this many milliseconds from now.
    pub delay_ms: Option<u64>,
}

/// Written by hand: a derived schema cannot say "exactly one of".
impl utoipa::PartialSchema for RescheduleRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let null = || ObjectBuilder::new().schema_type(Type::Null);
        let run_at = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                )))
                .description(Some("Run at this time."))
        };
        let delay_ms =
            || grafter_core::openapi::millis(0, grafter_core::time::MAX_DURATION_MS, false);
        let one = |given: &str| {
            let object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .required(given)
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ));
            if given == "run_at" {
                object
                    .property("run_at", run_at())
                    .property("delay_ms", null())
            } else {
                object
                    .property("delay_ms", delay_ms())
                    .property("run_at", null())
            }
        };
        OneOfBuilder::new()
            .item(one("run_at"))
            .item(one("delay_ms"))
            .description(Some(
                "When to run the job: `run_at`, a time, or `delay_ms`, milliseconds from now.",
            ))
            .into()
    }
}

impl ToSchema for RescheduleRequest {}

/// Move a not-running job's run time.
#[utoipa::path(post, path = "/v1/jobs/{id}/reschedule", tag = "jobs", params(("id" = i64, Path)),
    request_body = RescheduleRequest,
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn reschedule(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    PathJobId(id): PathJobId,
    ApiJson(request): ApiJson<RescheduleRequest>,
) -> Result<Json<Job>, ApiError> {
    require_job_queue(&state, &access, id).await?;
    let when = match (request.run_at, request.delay_ms) {
        (Some(at), None) => When::At(at),
        (None, Some(delay)) => When::After(millis("delay_ms", delay, 0)?),
        _ => {
            return Err(ApiError::invalid_field(
                "run_at",
                "give exactly one of run_at or delay_ms",
            ))
        }
    };
    Ok(Json(state.engine().reschedule(id, when).await?))
}

/// Delete a job in any state.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    PathJobId(id): PathJobId,
) -> Result<StatusCode, ApiError> {
    require_job_queue(&state, &access, id).await?;
    state.engine().delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 403 when a queue-limited token names a job outside its queues. A job
/// that does not exist passes, for the operation to answer 404; one moved
/// between this read and the change cannot be: a job's queue never changes.
async fn require_job_queue(state: &AppState, access: &Access, id: JobId) -> Result<(), ApiError> {
    if !access.is_queue_limited() {
        return Ok(());
    }
    match state.store().job_get(id).await? {
        Some(job) => access.require_queue(&job.queue),
        None => Ok(()),
    }
}
