//! The maintenance passes, each a bounded batch on the writer thread:
//! scheduling due jobs, expiring jobs past their deadline, rescuing expired
//! leases as failed attempts, and pruning old finished jobs.

use grafter_core::Timestamp;
use grafter_store::transitions::{self, Failure, SET_ASIDE};
use grafter_store::{JobsPrune, JobsRescue, MaintenanceBatch, Result, Scheduled, StoreError};
use rusqlite::{params, params_from_iter, Connection};

use crate::error::backend;
use crate::leasing::record_failure;
use crate::row::{job_from_row, micros, JOB_COLUMNS};

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub fn jobs_schedule(conn: &Connection, params: &MaintenanceBatch) -> Result<Scheduled> {
    let queues: Vec<String> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'available'
             WHERE id IN (SELECT id FROM jobs
                          WHERE state IN ('scheduled', 'retryable') AND run_at <= ?1
                          ORDER BY run_at LIMIT ?2)
             RETURNING queue",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![micros(params.now), limit(params.limit)], |row| {
                row.get(0)
            })?
            .collect()
        })
        .map_err(backend)?;
    Ok(Scheduled::of(queues))
}

pub fn jobs_expire(conn: &Connection, params: &MaintenanceBatch) -> Result<u64> {
    let now = micros(params.now);
    conn.prepare_cached(
        // Named, or the planner walks every waiting job by state instead of the
        // few with a deadline, every second.
        "UPDATE jobs SET state = 'expired', finished_at = ?1
         WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_expiry
                      WHERE state IN ('scheduled', 'available', 'retryable') AND expires_at <= ?1
                      LIMIT ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![now, limit(params.limit)]))
    .map(|n| n as u64)
    .map_err(backend)
}

/// Ends expired leases as failed attempts. Each job is rescued on its own
/// savepoint: a job whose row cannot be read or written is set aside (made
/// `dead` with the reason in its errors) and the others are rescued, so no
/// stored value can stop the rescue of the rest.
pub fn jobs_rescue_expired(conn: &Connection, params: &JobsRescue) -> Result<u64> {
    let expired = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_leases
             WHERE state = 'running' AND lease_expires_at <= ?1
             ORDER BY lease_expires_at LIMIT ?2"
        ))
        .and_then(|mut stmt| {
            stmt.query_map(params![micros(params.now), limit(params.limit)], |row| {
                Ok((row.get::<_, i64>(0)?, job_from_row(row).map_err(backend)))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    for (id, job) in &expired {
        conn.execute_batch("SAVEPOINT rescue").map_err(backend)?;
        let rescued = job.as_ref().map_err(Clone::clone).and_then(|job| {
            let failure = Failure {
                error: transitions::rescue_reason(job, params.now),
                retry: true,
                retry_at: None,
                default_backoff: &params.backoff,
                now: params.now,
            };
            record_failure(conn, job, failure)
        });
        match rescued {
            Ok(_) => conn.execute_batch("RELEASE rescue").map_err(backend)?,
            Err(error) => {
                conn.execute_batch("ROLLBACK TO rescue; RELEASE rescue")
                    .map_err(backend)?;
                tracing::error!(job = id, %error, "cannot rescue a job; setting it aside as dead");
                conn.execute_batch("SAVEPOINT aside").map_err(backend)?;
                match set_aside(conn, *id, params.now, &error) {
                    Ok(()) => conn.execute_batch("RELEASE aside").map_err(backend)?,
                    Err(error) => {
                        conn.execute_batch("ROLLBACK TO aside; RELEASE aside")
                            .map_err(backend)?;
                        tracing::error!(job = id, %error, "cannot set a job aside either; it is looked at again in an hour");
                        postpone(conn, *id, params.now)?;
                    }
                }
            }
        }
    }
    Ok(expired.len() as u64)
}

/// Moves the lease end of a job that could be neither rescued nor set
/// aside out of the rescue's way (see [`transitions::looked_at_again`]):
/// left as it was, it would come first in every pass.
fn postpone(conn: &Connection, id: i64, now: Timestamp) -> Result<()> {
    conn.prepare_cached("UPDATE jobs SET lease_expires_at = ?2 WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id, micros(transitions::looked_at_again(now))]))
        .map_err(backend)?;
    Ok(())
}

/// Makes a job that maintenance cannot process `dead`, with why appended to
/// its errors (or as its only error, if its errors cannot be read).
fn set_aside(conn: &Connection, id: i64, now: Timestamp, error: &StoreError) -> Result<()> {
    let entry = serde_json::json!({
        "at": now,
        "error": format!("{SET_ASIDE}: {error}"),
    });
    conn.prepare_cached(
        "UPDATE jobs SET state = 'dead', finished_at = ?2, lease = NULL, lease_expires_at = NULL,
                errors = CASE WHEN json_valid(errors) AND json_type(errors) = 'array'
                              THEN json_insert(errors, '$[#]', json_set(json(?3), '$.attempt', attempt))
                              ELSE json_array(json_set(json(?3), '$.attempt', attempt)) END
         WHERE id = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![id, micros(now), entry.to_string()]))
    .map_err(backend)?;
    Ok(())
}

/// Finished jobs in `params.states` whose `finished_at` is before
/// `params.finished_before`, outside batches (they go with their batch,
/// `batches.rs`): the `WHERE` of a prune and its values from `?first` on.
/// Finished jobs outside batches, except an upstream of an unfinished job
/// (its dependent reads its result, and a pruned upstream would cancel it).
fn prunable(params: &JobsPrune, first: usize) -> Option<(String, Vec<rusqlite::types::Value>)> {
    let states: Vec<&str> = params
        .states
        .iter()
        .filter(|s| s.is_finished())
        .map(|s| s.as_str())
        .collect();
    if states.is_empty() {
        return None;
    }
    let placeholders = (0..states.len())
        .map(|i| format!("?{}", first + 1 + i))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = format!(
        "state IN ('completed', 'dead', 'cancelled', 'expired') AND finished_at < ?{first}
         AND state IN ({placeholders}) AND batch_id IS NULL
         AND NOT (has_dependents AND EXISTS (
             SELECT 1 FROM job_dependencies AS d JOIN jobs AS w ON w.id = d.job_id
             WHERE d.depends_on = jobs.id
               AND w.state NOT IN ('completed', 'dead', 'cancelled', 'expired')))"
    );
    let mut values: Vec<rusqlite::types::Value> = vec![micros(params.finished_before).into()];
    values.extend(states.iter().map(|s| (*s).to_owned().into()));
    Some((filter, values))
}

pub fn jobs_prune(conn: &Connection, params: &JobsPrune) -> Result<u64> {
    let Some((filter, values)) = prunable(params, 2) else {
        return Ok(0);
    };
    let sql = format!("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {filter} LIMIT ?1)");
    let values = std::iter::once(limit(params.limit).into()).chain(values);
    let pruned = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(params_from_iter(values)))
        .map_err(backend)?;
    // The deletions logged for event streams (`events.rs`) outlive their
    // jobs only as long as finished jobs do.
    conn.prepare_cached(
        "DELETE FROM job_events WHERE seq IN (
            SELECT seq FROM job_events WHERE kind = 'deleted' AND at < ?1 LIMIT ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![micros(params.finished_before), limit(params.limit)]))
    .map_err(backend)?;
    Ok(pruned as u64)
}

pub fn jobs_prunable_count(conn: &Connection, params: &JobsPrune) -> Result<u64> {
    let Some((filter, values)) = prunable(params, 1) else {
        return Ok(0);
    };
    let sql = format!("SELECT count(*) FROM jobs WHERE {filter}");
    conn.prepare_cached(&sql)
        .and_then(|mut stmt| stmt.query_row(params_from_iter(values), |row| row.get::<_, i64>(0)))
        .map(|n| n as u64)
        .map_err(backend)
}
