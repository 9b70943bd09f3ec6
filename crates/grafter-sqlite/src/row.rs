//! Mapping between `jobs` rows and [`Job`], and between values and their
//! columns: times and durations as integer microseconds, JSON as text.

use grafter_core::{BatchId, Job, JobId, JobState, ScheduleRef, Timestamp};
use grafter_store::preview::{Preview, Read, PREVIEW_BYTES, PREVIEW_READ_CHARS};
use grafter_store::StoreError;
use rusqlite::Row;
use serde::de::DeserializeOwned;

/// The columns every job query selects, in the order [`job_from_row`] reads them.
pub const JOB_COLUMNS: &str = "id, queue, kind, args, priority, state, run_at, attempt, \
    max_attempts, errors, progress, result, tags, unique_key, timeout_ms, expires_at, backoff, \
    cancel_requested, worker_id, lease_expires_at, created_at, attempted_at, finished_at, \
    schedule_id, schedule_slot, partition, traceparent, tracestate, batch_id";

/// Index of the first column after [`JOB_COLUMNS`].
pub const AFTER_JOB_COLUMNS: usize = 29;

/// What a job list selects, in the order [`job_preview_from_row`] reads it:
/// [`JOB_COLUMNS`] with args, errors and result as much as a list shows of
/// them (see `grafter_store::preview`), then whether the args and the result
/// were read whole, and how many errors there are. `octet_length` of a column
/// is read from the row's header, without loading the value.
pub fn list_columns() -> String {
    let whole = |column: &str| format!("octet_length({column}) <= {PREVIEW_BYTES}");
    let read = |column: &str| {
        format!(
            "CASE WHEN {} THEN {column} ELSE substr({column}, 1, {PREVIEW_READ_CHARS}) END",
            whole(column)
        )
    };
    format!(
        "id, queue, kind, {args}, priority, state, run_at, attempt, max_attempts, \
         json_replace(errors -> '$[#-1]', '$.error', \
                      substr(errors ->> '$[#-1].error', 1, {PREVIEW_READ_CHARS})), \
         progress, {result}, tags, unique_key, timeout_ms, expires_at, backoff, cancel_requested, \
         worker_id, lease_expires_at, created_at, attempted_at, finished_at, \
         schedule_id, schedule_slot, partition, traceparent, tracestate, batch_id, {args_whole}, {result_whole}, json_array_length(errors)",
        args = read("args"),
        result = read("result"),
        args_whole = whole("args"),
        result_whole = whole("result"),
    )
}

pub fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

pub fn duration_micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A stored instant; one past chrono's range (a lease or leader expiry
/// computed from a huge setting) reads as the latest instant, not 1970.
pub fn timestamp(micros: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or(if micros < 0 {
        chrono::DateTime::<chrono::Utc>::MIN_UTC
    } else {
        chrono::DateTime::<chrono::Utc>::MAX_UTC
    })
}

pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}

fn json<T: DeserializeOwned>(column: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub fn opt_json<T: DeserializeOwned>(
    column: usize,
    text: Option<String>,
) -> rusqlite::Result<Option<T>> {
    text.map(|t| json(column, &t)).transpose()
}

/// A job from a row that starts with [`JOB_COLUMNS`].
pub fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let whole = Preview {
        args: json(3, &row.get::<_, String>(3)?)?,
        result: opt_json(11, row.get(11)?)?,
        errors: json(9, &row.get::<_, String>(9)?)?,
        cut: Vec::new(),
    };
    job_with(row, whole)
}

/// A listed job from a row of [`list_columns`].
pub fn job_preview_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let args: String = row.get(3)?;
    let result: Option<String> = row.get(11)?;
    let result_whole: Option<bool> = row.get(AFTER_JOB_COLUMNS + 1)?;
    let error_count: i64 = row.get(AFTER_JOB_COLUMNS + 2)?;
    let preview = Preview::new(
        Read {
            text: &args,
            whole: row.get(AFTER_JOB_COLUMNS)?,
        },
        result.as_deref().map(|text| Read {
            text,
            whole: result_whole.unwrap_or(false),
        }),
        usize::try_from(error_count).unwrap_or(0),
        opt_json(9, row.get(9)?)?,
    )
    .map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    job_with(row, preview)
}

/// A job from its row, with its args, result and errors as given.
fn job_with(row: &Row<'_>, large: Preview) -> rusqlite::Result<Job> {
    let state: String = row.get(5)?;
    let state: JobState = state.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let schedule = match row.get::<_, Option<String>>(23)? {
        Some(id) => Some(ScheduleRef {
            id,
            slot: row.get::<_, Option<i64>>(24)?.map(timestamp),
        }),
        None => None,
    };
    Ok(Job {
        id: JobId(row.get(0)?),
        queue: row.get(1)?,
        kind: row.get(2)?,
        args: large.args,
        priority: row.get(4)?,
        state,
        run_at: timestamp(row.get(6)?),
        attempt: row.get(7)?,
        max_attempts: row.get(8)?,
        errors: large.errors,
        progress: opt_json(10, row.get(10)?)?,
        result: large.result,
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
        partition: row.get(25)?,
        cut: large.cut,
        schedule,
        traceparent: row.get(26)?,
        tracestate: row.get(27)?,
        batch_id: row.get::<_, Option<i64>>(28)?.map(BatchId),
    })
}
