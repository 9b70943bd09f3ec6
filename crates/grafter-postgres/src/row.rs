//! Mapping between `jobs` rows and [`Job`], and the values statements bind:
//! JSON and counts.

use grafter_core::{Job, JobId, JobState};
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
         jobs.worker_id, jobs.lease_expires_at, jobs.created_at, jobs.attempted_at, jobs.finished_at"
    };
}
pub(crate) use job_columns;

/// [`job_columns!`] as a constant, for statements built at run time.
pub(crate) const JOB_COLUMNS: &str = job_columns!();

/// Index of the first column after [`JOB_COLUMNS`].
pub(crate) const AFTER_JOB_COLUMNS: usize = 23;

/// Reads a job from a row that starts with [`JOB_COLUMNS`]. A row that does not
/// decode (a column of the wrong type, JSON that is not a job's) is a `Backend`
/// error, never a panic.
pub(crate) fn job_from_row(row: &Row) -> Result<Job> {
    let state: String = row.try_get(5).map_err(pg_error)?;
    let state: JobState = state
        .parse()
        .map_err(|e| StoreError::Backend(format!("reading a job row: {e}")))?;
    let Json(errors) = row.try_get(9).map_err(pg_error)?;
    Ok(Job {
        id: JobId(row.try_get(0).map_err(pg_error)?),
        queue: row.try_get(1).map_err(pg_error)?,
        kind: row.try_get(2).map_err(pg_error)?,
        args: row.try_get(3).map_err(pg_error)?,
        priority: row.try_get(4).map_err(pg_error)?,
        state,
        run_at: row.try_get(6).map_err(pg_error)?,
        attempt: row.try_get(7).map_err(pg_error)?,
        max_attempts: row.try_get(8).map_err(pg_error)?,
        errors,
        progress: opt_json(row, 10)?,
        result: row.try_get(11).map_err(pg_error)?,
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
    })
}

fn opt_json<T: serde::de::DeserializeOwned>(row: &Row, column: usize) -> Result<Option<T>> {
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
