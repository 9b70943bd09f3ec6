//! Mapping between `jobs` rows and [`Job`], and between values and their
//! columns: times and durations as integer microseconds, JSON as text.

use grafter_core::{Job, JobId, JobState, Timestamp};
use grafter_store::StoreError;
use rusqlite::Row;
use serde::de::DeserializeOwned;

/// The columns every job query selects, in the order [`job_from_row`] reads them.
pub const JOB_COLUMNS: &str = "id, queue, kind, args, priority, state, run_at, attempt, \
    max_attempts, errors, progress, result, tags, unique_key, timeout_ms, expires_at, backoff, \
    cancel_requested, worker_id, lease_expires_at, created_at, attempted_at, finished_at";

/// Index of the first column after [`JOB_COLUMNS`].
pub const AFTER_JOB_COLUMNS: usize = 23;

pub fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

pub fn duration_micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub fn timestamp(micros: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}

fn json<T: DeserializeOwned>(column: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn opt_json<T: DeserializeOwned>(
    column: usize,
    text: Option<String>,
) -> rusqlite::Result<Option<T>> {
    text.map(|t| json(column, &t)).transpose()
}

pub fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(5)?;
    let state: JobState = state.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Job {
        id: JobId(row.get(0)?),
        queue: row.get(1)?,
        kind: row.get(2)?,
        args: json(3, &row.get::<_, String>(3)?)?,
        priority: row.get(4)?,
        state,
        run_at: timestamp(row.get(6)?),
        attempt: row.get(7)?,
        max_attempts: row.get(8)?,
        errors: json(9, &row.get::<_, String>(9)?)?,
        progress: opt_json(10, row.get(10)?)?,
        result: opt_json(11, row.get(11)?)?,
        tags: json(12, &row.get::<_, String>(12)?)?,
        unique_key: row.get(13)?,
        timeout_ms: row.get(14)?,
        expires_at: row.get::<_, Option<i64>>(15)?.map(timestamp),
        backoff: opt_json(16, row.get(16)?)?,
        cancel_requested: row.get(17)?,
        worker_id: row.get(18)?,
        lease_expires_at: row.get::<_, Option<i64>>(19)?.map(timestamp),
        created_at: timestamp(row.get(20)?),
        attempted_at: row.get::<_, Option<i64>>(21)?.map(timestamp),
        finished_at: row.get::<_, Option<i64>>(22)?.map(timestamp),
    })
}
