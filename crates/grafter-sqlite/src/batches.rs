//! Batches: their rows, and the jobs inserted into them (on the writer
//! thread, see `writer.rs`). The counts, progress and settling are kept by
//! the triggers of migrations 13 and 18 (and by the batch ack, `leasing.rs`);
//! this module only creates, adds to, seals, cancels, reads and prunes.

use grafter_core::{Batch, BatchId, Job, NewJob, Timestamp};
use grafter_store::{
    BatchAdd, BatchChange, BatchCreate, BatchWithJobs, BatchesList, BatchesPrune, Result,
    StoreError,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::batch_row::{batch_from_row, BATCH_COLUMNS};
use crate::error::backend;
use crate::inserts::insert_jobs;
use crate::row::{micros, to_json};

pub fn batch_get(conn: &Connection, id: BatchId) -> Result<Option<Batch>> {
    conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([id.0], batch_from_row).optional())
    .map_err(backend)
}

fn batch_require(conn: &Connection, id: BatchId) -> Result<Batch> {
    batch_get(conn, id)?.ok_or(StoreError::BatchNotFound(id))
}

fn callback_json(job: Option<&NewJob>) -> Result<Option<String>> {
    job.map(to_json).transpose()
}

/// Inserts `jobs` into the batch and adds them to its total, sealing it too
/// unless `open`; the triggers settle it if that makes it finished.
fn insert_into(
    conn: &Connection,
    id: BatchId,
    jobs: &[NewJob],
    now: Timestamp,
    open: bool,
) -> Result<Vec<Job>> {
    let jobs: Vec<Job> = insert_jobs(conn, jobs, now, Some(id))?
        .into_iter()
        .map(|inserted| inserted.job)
        .collect();
    conn.prepare_cached("UPDATE batches SET total = total + ?2, open = ?3 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id.0, jobs.len() as i64, open]))
        .map_err(backend)?;
    Ok(jobs)
}

pub fn batch_create(conn: &Connection, params: &BatchCreate) -> Result<BatchWithJobs> {
    let callbacks = &params.callbacks;
    let on_success = callback_json(callbacks.on_success.as_ref())?;
    let on_complete = callback_json(callbacks.on_complete.as_ref())?;
    let on_failure = callback_json(callbacks.on_failure.as_ref())?;
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO batches (open, on_success, on_complete, on_failure, created_at)
             VALUES (1, ?1, ?2, ?3, ?4) RETURNING id",
        )
        .and_then(|mut stmt| {
            stmt.query_row(
                params![on_success, on_complete, on_failure, micros(params.now)],
                |row| row.get(0),
            )
        })
        .map_err(backend)?;
    let id = BatchId(id);
    let jobs = insert_into(conn, id, &params.jobs, params.now, params.open)?;
    Ok(BatchWithJobs {
        batch: batch_require(conn, id)?,
        jobs,
    })
}

fn closed(batch: &Batch, message: &str) -> StoreError {
    StoreError::BatchClosed {
        id: batch.id,
        state: batch.state,
        message: message.to_owned(),
    }
}

pub fn batch_add(conn: &Connection, params: &BatchAdd) -> Result<BatchWithJobs> {
    let batch = batch_require(conn, params.id)?;
    if !batch.open {
        return Err(closed(&batch, "a sealed batch takes no more jobs"));
    }
    let jobs = insert_into(conn, batch.id, &params.jobs, params.now, true)?;
    Ok(BatchWithJobs {
        batch: batch_require(conn, batch.id)?,
        jobs,
    })
}

pub fn batch_seal(conn: &Connection, params: &BatchChange) -> Result<Batch> {
    let batch = batch_require(conn, params.id)?;
    if batch.open {
        conn.prepare_cached("UPDATE batches SET open = 0 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute([batch.id.0]))
            .map_err(backend)?;
    }
    batch_require(conn, batch.id)
}

pub fn batch_cancel(conn: &Connection, params: &BatchChange) -> Result<Batch> {
    let batch = batch_require(conn, params.id)?;
    if batch.finished_at.is_some() {
        return Err(closed(&batch, "a finished batch cannot be cancelled"));
    }
    // Flag first, so the settling that the last cancelled job may cause
    // names the batch cancelled.
    conn.prepare_cached(
        "UPDATE batches SET cancelled = 1, open = 0, state = 'cancelled' WHERE id = ?1",
    )
    .and_then(|mut stmt| stmt.execute([batch.id.0]))
    .map_err(backend)?;
    // As job_cancel (jobs.rs), for all of the batch's jobs at once.
    conn.prepare_cached(
        "UPDATE jobs INDEXED BY jobs_of_batch SET state = 'cancelled', finished_at = ?2
         WHERE batch_id = ?1 AND state IN ('pending', 'scheduled', 'available', 'retryable')",
    )
    .and_then(|mut stmt| stmt.execute(params![batch.id.0, micros(params.now)]))
    .map_err(backend)?;
    conn.prepare_cached(
        "UPDATE jobs INDEXED BY jobs_of_batch SET cancel_requested = 1
         WHERE batch_id = ?1 AND state = 'running'",
    )
    .and_then(|mut stmt| stmt.execute([batch.id.0]))
    .map_err(backend)?;
    batch_require(conn, batch.id)
}

pub fn batches_list(conn: &Connection, params: &BatchesList) -> Result<Vec<Batch>> {
    conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
    ))
    .and_then(|mut stmt| {
        stmt.query_map(
            params![
                params.before.map_or(i64::MAX, |b| b.0),
                i64::try_from(params.limit).unwrap_or(i64::MAX)
            ],
            batch_from_row,
        )?
        .collect()
    })
    .map_err(backend)
}

pub fn batches_prune(conn: &Connection, params: &BatchesPrune) -> Result<u64> {
    let ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM batches INDEXED BY batches_finished
             WHERE finished_at IS NOT NULL AND finished_at < ?1
               AND NOT (has_dependents AND EXISTS (
                   SELECT 1 FROM batch_dependencies AS d JOIN jobs AS w ON w.id = d.job_id
                   WHERE d.batch_id = batches.id
                     AND w.state NOT IN ('completed', 'dead', 'cancelled', 'expired')))
             ORDER BY finished_at LIMIT ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_map(
                params![
                    micros(params.finished_before),
                    i64::try_from(params.limit).unwrap_or(i64::MAX)
                ],
                |row| row.get(0),
            )?
            .collect()
        })
        .map_err(backend)?;
    let mut pruned = 0;
    for id in ids {
        // The batch first, so its jobs' delete trigger has no row to update.
        conn.prepare_cached("DELETE FROM batches WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(backend)?;
        pruned += conn
            .prepare_cached("DELETE FROM jobs INDEXED BY jobs_of_batch WHERE batch_id = ?1")
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(backend)? as u64;
    }
    Ok(pruned)
}
