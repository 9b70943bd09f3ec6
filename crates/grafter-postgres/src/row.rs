//! Mapping between `jobs` rows and [`Job`], and the values statements bind:
//! JSON and counts.

use grafter_core::{AttemptError, BatchId, Job, JobId, JobState, ScheduleRef};
use grafter_store::preview::{json_len, Preview, Read, PREVIEW_BYTES, PREVIEW_READ_CHARS};
use grafter_store::{Result, StoreError};
use serde_json::Value;
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use crate::error::pg_error;

/// The columns every job query selects, in the order [`job_from_row`] reads them.
/// Qualified with `jobs.` because some statements join other relations. A macro,
/// so statements can be `concat!`ed into `&'static str` (the per-connection
/// statement cache is keyed by the SQL text).
macro_rules! job_columns {
    () => {
        "jobs.id, jobs.queue, jobs.kind, jobs.args, jobs.priority, jobs.state, jobs.run_at, \
         jobs.attempt, jobs.max_attempts, jobs.errors, jobs.progress, jobs.result, jobs.tags, \
         jobs.unique_key, jobs.timeout_ms, jobs.expires_at, jobs.backoff, jobs.cancel_requested, \
         jobs.worker_id, jobs.lease_expires_at, jobs.created_at, jobs.attempted_at, jobs.finished_at, \
         jobs.schedule_id, jobs.schedule_slot, jobs.partition, jobs.traceparent, jobs.tracestate, \
         jobs.batch_id"
    };
}
pub(crate) use job_columns;

/// Index of the first column after [`job_columns!`].
pub(crate) const AFTER_JOB_COLUMNS: usize = 29;

/// The length of a job's args as compact JSON text, as `args_bytes` keeps it
/// (migration 9): what a fetch's byte budget and a list's cut count.
pub(crate) fn args_bytes(args: &Value) -> i32 {
    i32::try_from(json_len(args)).unwrap_or(i32::MAX)
}

/// A job's `args_bytes`, measured for jobs enqueued before migration 9.
macro_rules! args_size {
    () => {
        "coalesce(jobs.args_bytes, octet_length(jobs.args::text))"
    };
}
pub(crate) use args_size;

/// What a job list selects, in the order [`job_preview_from_row`] reads it:
/// [`job_columns!`] with args, errors and result as much as a list shows of
/// them (see `grafter_store::preview`), then whether the args were read whole
/// and how many errors there are. A result's size is not kept, so its text is
/// read up to [`PREVIEW_READ_CHARS`] and judged from that.
pub(crate) fn list_columns() -> String {
    let args_whole = format!("{} <= {PREVIEW_BYTES}", args_size!());
    format!(
        "jobs.id, jobs.queue, jobs.kind, \
         CASE WHEN {args_whole} THEN jobs.args::text \
              ELSE left(jobs.args::text, {PREVIEW_READ_CHARS}) END, \
         jobs.priority, jobs.state, jobs.run_at, jobs.attempt, jobs.max_attempts, \
         jsonb_set(jobs.errors -> -1, '{{error}}', \
                   to_jsonb(left(jobs.errors -> -1 ->> 'error', {PREVIEW_READ_CHARS}))), \
         jobs.progress, left(jobs.result::text, {PREVIEW_READ_CHARS}), jobs.tags, \
         jobs.unique_key, jobs.timeout_ms, jobs.expires_at, jobs.backoff, \
         jobs.cancel_requested, jobs.worker_id, jobs.lease_expires_at, jobs.created_at, \
         jobs.attempted_at, jobs.finished_at, jobs.schedule_id, jobs.schedule_slot, \
         jobs.partition, jobs.traceparent, jobs.tracestate, jobs.batch_id, \
         {args_whole}, jsonb_array_length(jobs.errors)"
    )
}

/// Reads a job from a row that starts with [`job_columns!`]. A row that does not
/// decode (a column of the wrong type, JSON that is not a job's) is a `Backend`
/// error, never a panic.
pub(crate) fn job_from_row(row: &Row) -> Result<Job> {
    let Json(errors) = row.try_get(9).map_err(pg_error)?;
    let whole = Preview {
        args: row.try_get(3).map_err(pg_error)?,
        result: row.try_get(11).map_err(pg_error)?,
        errors,
        cut: Vec::new(),
    };
    job_with(row, whole)
}

/// Reads a listed job from a row of [`list_columns`].
pub(crate) fn job_preview_from_row(row: &Row) -> Result<Job> {
    let args: String = row.try_get(3).map_err(pg_error)?;
    let result: Option<String> = row.try_get(11).map_err(pg_error)?;
    let last_error: Option<Json<AttemptError>> = row.try_get(9).map_err(pg_error)?;
    let error_count: i32 = row.try_get(AFTER_JOB_COLUMNS + 1).map_err(pg_error)?;
    let preview = Preview::new(
        Read {
            text: &args,
            whole: row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?,
        },
        result.as_deref().map(|text| Read {
            text,
            whole: text.chars().count() < PREVIEW_READ_CHARS,
        }),
        usize::try_from(error_count).unwrap_or(0),
        last_error.map(|Json(e)| e),
    )?;
    job_with(row, preview)
}

/// A job from its row, with its args, result and errors as given.
fn job_with(row: &Row, large: Preview) -> Result<Job> {
    let state: String = row.try_get(5).map_err(pg_error)?;
    let state: JobState = state
        .parse()
        .map_err(|e| StoreError::Backend(format!("reading a job row: {e}")))?;
    let schedule = match row.try_get::<_, Option<String>>(23).map_err(pg_error)? {
        Some(id) => Some(ScheduleRef {
            id,
            slot: row.try_get(24).map_err(pg_error)?,
        }),
        None => None,
    };
    Ok(Job {
        id: JobId(row.try_get(0).map_err(pg_error)?),
        queue: row.try_get(1).map_err(pg_error)?,
        kind: row.try_get(2).map_err(pg_error)?,
        args: large.args,
        priority: row.try_get(4).map_err(pg_error)?,
        state,
        run_at: row.try_get(6).map_err(pg_error)?,
        attempt: row.try_get(7).map_err(pg_error)?,
        max_attempts: row.try_get(8).map_err(pg_error)?,
        errors: large.errors,
        progress: opt_json(row, 10)?,
        result: large.result,
        tags: row.try_get(12).map_err(pg_error)?,
        unique_key: row.try_get(13).map_err(pg_error)?,
        timeout_ms: row.try_get(14).map_err(pg_error)?,
        expires_at: row.try_get(15).map_err(pg_error)?,
        backoff: opt_json(row, 16)?,
        cancel_requested: row.try_get(17).map_err(pg_error)?,
        worker_id: row.try_get(18).map_err(pg_error)?,
        lease_expires_at: row.try_get(19).map_err(pg_error)?,
        created_at: row.try_get(20).map_err(pg_error)?,
        attempted_at: row.try_get(21).map_err(pg_error)?,
        finished_at: row.try_get(22).map_err(pg_error)?,
        partition: row.try_get(25).map_err(pg_error)?,
        cut: large.cut,
        schedule,
        traceparent: row.try_get(26).map_err(pg_error)?,
        tracestate: row.try_get(27).map_err(pg_error)?,
        batch_id: row
            .try_get::<_, Option<i64>>(28)
            .map_err(pg_error)?
            .map(BatchId),
    })
}

pub(crate) fn opt_json<T: serde::de::DeserializeOwned>(
    row: &Row,
    column: usize,
) -> Result<Option<T>> {
    let value: Option<Json<T>> = row.try_get(column).map_err(pg_error)?;
    Ok(value.map(|Json(v)| v))
}

/// All job rows of a query answer.
pub(crate) fn jobs_from_rows(rows: &[Row]) -> Result<Vec<Job>> {
    rows.iter().map(job_from_row).collect()
}

pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}
