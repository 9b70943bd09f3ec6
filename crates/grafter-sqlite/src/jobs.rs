//! One job by id: reading it (on a read connection), and the changes made to
//! it by hand: cancel, retry, reschedule, delete (on the writer thread, see
//! `writer.rs`).

use grafter_core::{Job, JobId, JobState};
use grafter_store::{JobCancel, JobReschedule, JobRetry, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::backend;
use crate::row::{job_from_row, micros, to_json, JOB_COLUMNS};

pub fn job_get(conn: &Connection, id: JobId) -> Result<Option<Job>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .and_then(|mut stmt| stmt.query_row([id.0], job_from_row).optional())
        .map_err(backend)
}

pub fn job_require(conn: &Connection, id: JobId) -> Result<Job> {
    job_get(conn, id)?.ok_or(StoreError::NotFound(id))
}

fn invalid(job: &Job, message: &str) -> StoreError {
    StoreError::InvalidState {
        id: job.id,
        state: job.state,
        message: message.to_owned(),
    }
}

pub fn job_cancel(conn: &Connection, params: &JobCancel) -> Result<Job> {
    let job = job_require(conn, params.id)?;
    if job.state.is_finished() {
        return Err(invalid(&job, "only unfinished jobs can be cancelled"));
    }
    let sql = if job.state == JobState::Running {
        // The worker learns of it from its next heartbeat or ack answer.
        format!("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 RETURNING {JOB_COLUMNS}")
    } else {
        format!(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1 RETURNING {JOB_COLUMNS}"
        )
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let result = if job.state == JobState::Running {
        stmt.query_row(params![job.id.0], job_from_row)
    } else {
        stmt.query_row(params![job.id.0, micros(params.now)], job_from_row)
    };
    result.map_err(backend)
}

/// Puts a job back in line at `run_at` (a running, pending or completed one is
/// refused), giving it one more attempt if it has none left, with new args if
/// given, and answers it as stored.
fn requeue(
    conn: &Connection,
    job: &Job,
    run_at: i64,
    now: i64,
    args: Option<&serde_json::Value>,
) -> Result<Job> {
    if job.state == JobState::Running {
        return Err(invalid(
            job,
            "a running job cannot be retried or rescheduled; cancel it first",
        ));
    }
    if job.state == JobState::Pending {
        return Err(invalid(
            job,
            "a pending job runs when its dependencies finish; cancel it first",
        ));
    }
    // Its result stands, and a batch it is in may have fired on_success.
    if job.state == JobState::Completed {
        return Err(invalid(
            job,
            "completed jobs are not retried or rescheduled; enqueue a new job",
        ));
    }
    let state = if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Available
    };
    // The deadline was for the run that did not happen; the expirer would end
    // the one asked for by hand at once.
    let deadline_passed = job.state == JobState::Expired
        || job
            .expires_at
            .is_some_and(|at| micros(at) <= run_at.max(now));
    let args = args.map(to_json).transpose()?;
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, run_at = ?3, finished_at = NULL, cancel_requested = 0,
                max_attempts = max(max_attempts, attempt + 1), args = coalesce(?4, args),
                expires_at = CASE WHEN ?5 THEN NULL ELSE expires_at END
         WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            job.id.0,
            state.as_str(),
            run_at,
            args,
            deadline_passed
        ])
    })
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::InvalidState {
                id: job.id,
                state: job.state,
                message: "another unfinished job holds its unique_key".into(),
            }
        }
        e => backend(e),
    })?;
    // Read again rather than take the row from RETURNING: a dependent may
    // have gone back to pending in a trigger after it.
    job_require(conn, job.id)
}

pub fn job_retry(conn: &Connection, params: &JobRetry) -> Result<Job> {
    let job = job_require(conn, params.id)?;
    let now = micros(params.now);
    requeue(conn, &job, now, now, params.args.as_ref())
}

pub fn job_reschedule(conn: &Connection, params: &JobReschedule) -> Result<Job> {
    let job = job_require(conn, params.id)?;
    requeue(conn, &job, micros(params.run_at), micros(params.now), None)
}

pub fn job_delete(conn: &Connection, id: JobId) -> Result<()> {
    let deleted = conn
        .prepare_cached("DELETE FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id.0]))
        .map_err(backend)?;
    if deleted == 0 {
        return Err(StoreError::NotFound(id));
    }
    Ok(())
}
