//! Inserting jobs, one statement per job; a job whose `unique_key` an
//! unfinished job holds is answered with that job instead. Runs on the writer
//! thread (see `writer.rs`).

use grafter_core::{BatchId, JobState, NewJob, Timestamp};
use grafter_store::{Inserted, JobsInsert, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::dependencies;
use crate::error::backend;
use crate::row::{job_from_row, micros, to_json, JOB_COLUMNS};

const UNFINISHED: &str = "('scheduled', 'available', 'running', 'retryable')";

pub fn jobs_insert_many(conn: &Connection, params: &JobsInsert) -> Result<Vec<Inserted>> {
    insert_jobs(conn, &params.jobs, params.now, None)
}

/// Inserts `jobs` at `now`, into a batch if one is given (its counts are the
/// caller's to add), linked to the jobs they depend on.
pub fn insert_jobs(
    conn: &Connection,
    jobs: &[NewJob],
    now: Timestamp,
    batch: Option<BatchId>,
) -> Result<Vec<Inserted>> {
    let now_at = now;
    let now = micros(now);
    let mut find_unique = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE unique_key = ?1 AND state IN {UNFINISHED}"
        ))
        .map_err(backend)?;
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                unique_key, timeout_ms, expires_at, backoff, created_at, schedule_id, schedule_slot,
                partition, traceparent, tracestate, batch_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19)
             RETURNING {JOB_COLUMNS}"
        ))
        .map_err(backend)?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(key) = &job.unique_key {
            if let Some(existing) = find_unique
                .query_row([key], job_from_row)
                .optional()
                .map_err(backend)?
            {
                out.push(Inserted {
                    job: existing,
                    created: false,
                });
                continue;
            }
        }
        let run_at = job.run_at.map(micros).unwrap_or(now);
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        let backoff = job.backoff.as_ref().map(to_json).transpose()?;
        let inserted = insert
            .query_row(
                params![
                    job.queue,
                    job.kind,
                    to_json(&job.args)?,
                    job.priority,
                    state.as_str(),
                    run_at,
                    job.max_attempts,
                    to_json(&job.tags)?,
                    job.unique_key,
                    job.timeout_ms,
                    job.expires_at.map(micros),
                    backoff,
                    now,
                    job.schedule.as_ref().map(|s| &s.id),
                    job.schedule.as_ref().and_then(|s| s.slot).map(micros),
                    job.partition,
                    job.traceparent,
                    job.tracestate,
                    batch.map(|b| b.0),
                ],
                job_from_row,
            )
            .map_err(backend)?;
        out.push(Inserted {
            job: inserted,
            created: true,
        });
    }
    dependencies::link(conn, jobs, &mut out, now_at)?;
    Ok(out)
}
