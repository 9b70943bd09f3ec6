//! The store's operations as SQL. Write operations run on the writer thread inside
//! a transaction (see `writer.rs`); read operations on a read connection.

use std::collections::{BTreeMap, HashMap, HashSet};

use grafter_core::{Job, JobId, JobState, LeasedJob, Worker, WorkerRegistration};
use grafter_store::transitions::{self, Failure};
use grafter_store::{
    Inserted, JobCancel, JobComplete, JobFail, JobHeartbeat, JobRelease, JobReschedule, JobRetry,
    JobsCompleteMany, JobsFetch, JobsInsert, JobsPrune, JobsRescue, LeaderAcquire, LeaderRelease,
    MaintenanceBatch, QueueInfo, QueuePause, QueuePush, Result, StoreError, WorkerBeat,
    WorkersPrune,
};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::row::{job_from_row, micros, timestamp, to_json, AFTER_JOB_COLUMNS, JOB_COLUMNS};

const UNFINISHED: &str = "('scheduled', 'available', 'running', 'retryable')";

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn duration_micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Counts the jobs of `moved` (one queue name per job) as gone from state
/// `from` to state `to`. The counter triggers leave the fetch's and the
/// completions' moves to their statements (migration 7), which call this once
/// per statement.
fn count_moved<'q>(
    conn: &Connection,
    moved: impl IntoIterator<Item = &'q str>,
    from: JobState,
    to: JobState,
) -> Result<()> {
    let mut per_queue: BTreeMap<&str, i64> = BTreeMap::new();
    for queue in moved {
        *per_queue.entry(queue).or_default() += 1;
    }
    for (queue, n) in per_queue {
        conn.prepare_cached("UPDATE job_counts SET n = n - ?3 WHERE queue = ?1 AND state = ?2")
            .and_then(|mut stmt| stmt.execute(params![queue, from.as_str(), n]))
            .map_err(backend)?;
        conn.prepare_cached(
            "INSERT INTO job_counts (queue, state, n) VALUES (?1, ?2, ?3)
             ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n",
        )
        .and_then(|mut stmt| stmt.execute(params![queue, to.as_str(), n]))
        .map_err(backend)?;
    }
    Ok(())
}

/// Counts completions (one queue name per completed job): the jobs as gone
/// from running to completed, and the attempts as ended in the minute of
/// `finished_at` (microseconds).
fn count_completed<'q>(
    conn: &Connection,
    queues: impl ExactSizeIterator<Item = &'q str>,
    finished_at: i64,
) -> Result<()> {
    let n = queues.len() as i64;
    if n == 0 {
        return Ok(());
    }
    count_moved(conn, queues, JobState::Running, JobState::Completed)?;
    conn.prepare_cached(
        "INSERT INTO job_throughput (minute, completed) VALUES (?1 - (?1 % 60000000), ?2)
         ON CONFLICT (minute) DO UPDATE SET completed = completed + excluded.completed",
    )
    .and_then(|mut stmt| stmt.execute(params![finished_at, n]))
    .map_err(backend)?;
    Ok(())
}

pub fn job_get(conn: &Connection, id: JobId) -> Result<Option<Job>> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .and_then(|mut stmt| stmt.query_row([id.0], job_from_row).optional())
        .map_err(backend)
}

fn job_require(conn: &Connection, id: JobId) -> Result<Job> {
    job_get(conn, id)?.ok_or(StoreError::NotFound(id))
}

pub fn jobs_insert_many(conn: &Connection, params: &JobsInsert) -> Result<Vec<Inserted>> {
    let now = micros(params.now);
    let mut find_unique = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE unique_key = ?1 AND state IN {UNFINISHED}"
        ))
        .map_err(backend)?;
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                unique_key, timeout_ms, expires_at, backoff, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             RETURNING {JOB_COLUMNS}"
        ))
        .map_err(backend)?;
    let mut out = Vec::with_capacity(params.jobs.len());
    for job in &params.jobs {
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
                ],
                job_from_row,
            )
            .map_err(backend)?;
        out.push(Inserted {
            job: inserted,
            created: true,
        });
    }
    Ok(out)
}

pub fn jobs_fetch(conn: &Connection, params: &JobsFetch) -> Result<Vec<LeasedJob>> {
    let mut max = params.max;
    if let (Some(limit), [queue]) = (params.running_limit, &params.queues[..]) {
        // The one writer makes this count exact: nothing else leases meanwhile,
        // and job_counts moves with every change in the same transaction (by
        // trigger, or for fetches and completions by their own statements).
        let running: i64 = conn
            .prepare_cached(
                "SELECT coalesce(sum(n), 0) FROM job_counts WHERE queue = ?1 AND state = 'running'",
            )
            .and_then(|mut stmt| stmt.query_row([queue], |row| row.get(0)))
            .map_err(backend)?;
        max = max.min(limit.saturating_sub(running as usize));
        if max == 0 {
            return Ok(Vec::new());
        }
    }
    let now = micros(params.now);
    let lease_until = now.saturating_add(duration_micros(params.lease_duration));
    let placeholders = (0..params.queues.len())
        .map(|i| format!("?{}", i + 5))
        .collect::<Vec<_>>()
        .join(", ");
    // The lease never outlives the job's own timeout, so a job that overruns it
    // is rescued as "timed out" even if its worker keeps heartbeating.
    let sql = format!(
        "UPDATE jobs SET
            state = 'running',
            attempt = attempt + 1,
            lease = lower(hex(randomblob(16))),
            lease_expires_at = CASE WHEN timeout_ms IS NULL THEN ?1
                               ELSE min(?1, ?2 + timeout_ms * 1000) END,
            worker_id = ?3,
            attempted_at = ?2,
            progress = NULL
         WHERE id IN (
            SELECT id FROM jobs
            WHERE state = 'available' AND queue IN ({placeholders})
              AND queue NOT IN (SELECT name FROM queues WHERE paused)
              AND (expires_at IS NULL OR expires_at > ?2)
            ORDER BY priority, run_at, id
            LIMIT ?4)
         RETURNING {JOB_COLUMNS}, lease"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut values: Vec<rusqlite::types::Value> = vec![
        lease_until.into(),
        now.into(),
        params.worker_id.clone().into(),
        i64::try_from(max).unwrap_or(i64::MAX).into(),
    ];
    values.extend(params.queues.iter().map(|q| q.clone().into()));
    let mut leased = stmt
        .query_map(params_from_iter(values), |row| {
            Ok(LeasedJob {
                job: job_from_row(row)?,
                lease: row.get(AFTER_JOB_COLUMNS)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    count_moved(
        conn,
        leased.iter().map(|l| l.job.queue.as_str()),
        JobState::Available,
        JobState::Running,
    )?;
    // RETURNING gives no order; hand jobs out in the order they were chosen.
    leased.sort_by_key(|l| (l.job.priority, l.job.run_at, l.job.id));
    Ok(leased)
}

/// Explains why a fenced update matched no row.
fn fence_error(conn: &Connection, id: JobId) -> StoreError {
    match job_get(conn, id) {
        Ok(Some(job)) => StoreError::LeaseMismatch {
            id,
            state: job.state,
            attempt: job.attempt,
        },
        Ok(None) => StoreError::NotFound(id),
        Err(e) => e,
    }
}

pub fn job_complete(conn: &Connection, params: &JobComplete) -> Result<Job> {
    let result = params.result.as_ref().map(to_json).transpose()?;
    let now = micros(params.now);
    let job = conn
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'completed', result = ?3, finished_at = ?4,
                lease = NULL, lease_expires_at = NULL
         WHERE id = ?1 AND state = 'running' AND lease = ?2
         RETURNING {JOB_COLUMNS}"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(
                params![params.id.0, params.lease, result, now],
                job_from_row,
            )
            .optional()
        })
        .map_err(backend)?
        .ok_or_else(|| fence_error(conn, params.id))?;
    count_completed(conn, std::iter::once(job.queue.as_str()), now)?;
    Ok(job)
}

/// A batch ack's items as the one JSON array [`jobs_complete_many`] takes,
/// `[id, lease]` or `[id, lease, result as JSON text]`: built by the caller,
/// away from the writer thread. `None` when the batch must go one item at a
/// time: items naming one job under different leases (rare) would each match
/// the row, and which one answered could then not be told.
pub fn ack_batch(params: &JobsCompleteMany) -> Result<Option<String>> {
    let mut leases: HashMap<JobId, &str> = HashMap::with_capacity(params.items.len());
    for (id, lease, _) in &params.items {
        if *leases.entry(*id).or_insert(lease) != lease.as_str() {
            return Ok(None);
        }
    }
    let encoding = |e: serde_json::Error| StoreError::Backend(format!("encoding JSON: {e}"));
    let mut text = Vec::with_capacity(params.items.len() * 64);
    text.push(b'[');
    let mut seen = HashSet::with_capacity(params.items.len());
    for (id, lease, result) in &params.items {
        // Repeats of an item answer false, as they would one at a time.
        if !seen.insert(*id) {
            continue;
        }
        if text.len() > 1 {
            text.push(b',');
        }
        match result {
            Some(result) => serde_json::to_writer(&mut text, &(id.0, lease, to_json(result)?)),
            None => serde_json::to_writer(&mut text, &(id.0, lease)),
        }
        .map_err(encoding)?;
    }
    text.push(b']');
    String::from_utf8(text)
        .map(Some)
        .map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}

/// One statement for the whole batch (`batch` from [`ack_batch`]): the
/// per-statement work (the statement journal, trigger bookkeeping) is paid
/// once, not once per job.
pub fn jobs_complete_many(
    conn: &Connection,
    params: &JobsCompleteMany,
    batch: Option<&str>,
) -> Result<Vec<bool>> {
    let Some(batch) = batch else {
        return jobs_complete_one_by_one(conn, params);
    };
    // `+jobs.state`: look each job up by its id, never scan the running ones.
    let mut stmt = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'completed', result = acks.result, finished_at = ?2,
                    lease = NULL, lease_expires_at = NULL
             FROM (SELECT CAST(value ->> 0 AS INTEGER) AS id, value ->> 1 AS lease, value ->> 2 AS result
                   FROM json_each(?1)) AS acks
             WHERE jobs.id = acks.id AND +jobs.state = 'running' AND jobs.lease = acks.lease
             RETURNING jobs.id, jobs.queue",
        )
        .map_err(backend)?;
    let now = micros(params.now);
    let rows = stmt
        .query_map(params![batch, now], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    count_completed(conn, rows.iter().map(|(_, queue)| queue.as_str()), now)?;
    let completed: HashSet<i64> = rows.into_iter().map(|(id, _)| id).collect();
    let mut answered = HashSet::with_capacity(completed.len());
    Ok(params
        .items
        .iter()
        .map(|(id, _, _)| completed.contains(&id.0) && answered.insert(id.0))
        .collect())
}

fn jobs_complete_one_by_one(conn: &Connection, params: &JobsCompleteMany) -> Result<Vec<bool>> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'completed', result = ?3, finished_at = ?4,
                    lease = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND state = 'running' AND lease = ?2
             RETURNING queue",
        )
        .map_err(backend)?;
    let now = micros(params.now);
    let mut queues = Vec::new();
    let done = params
        .items
        .iter()
        .map(|(id, lease, result)| {
            let result = result.as_ref().map(to_json).transpose()?;
            let queue: Option<String> = stmt
                .query_row(params![id.0, lease, result, now], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            let done = queue.is_some();
            queues.extend(queue);
            Ok(done)
        })
        .collect::<Result<Vec<_>>>()?;
    count_completed(conn, queues.iter().map(String::as_str), now)?;
    Ok(done)
}

/// Writes the outcome of a failed attempt.
fn record_failure(conn: &Connection, job: &Job, failure: Failure<'_>) -> Result<Job> {
    let next = transitions::after_failure(job, failure);
    conn.prepare_cached(&format!(
        "UPDATE jobs SET state = ?2, run_at = ?3, errors = ?4, finished_at = ?5,
                lease = NULL, lease_expires_at = NULL
         WHERE id = ?1
         RETURNING {JOB_COLUMNS}"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            params![
                job.id.0,
                next.state.as_str(),
                micros(next.run_at),
                to_json(&next.errors)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                next.finished_at.map(micros),
            ],
            job_from_row,
        )
    })
    .map_err(backend)
}

/// The running job holding `lease`, or the fencing error.
fn leased_job(conn: &Connection, id: JobId, lease: &str) -> Result<Job> {
    let holds: Option<bool> = conn
        .prepare_cached("SELECT state = 'running' AND lease = ?2 FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![id.0, lease], |row| row.get(0))
                .optional()
        })
        .map_err(backend)?;
    match holds {
        None => Err(StoreError::NotFound(id)),
        Some(false) => Err(fence_error(conn, id)),
        Some(true) => job_require(conn, id),
    }
}

pub fn job_fail(conn: &Connection, params: &JobFail) -> Result<Job> {
    let job = leased_job(conn, params.id, &params.lease)?;
    record_failure(
        conn,
        &job,
        Failure {
            error: &params.error,
            retry: params.retry,
            retry_at: params.retry_at,
            default_backoff: &params.backoff,
            now: params.now,
        },
    )
}

pub fn job_heartbeat(conn: &Connection, params: &JobHeartbeat) -> Result<Job> {
    let now = micros(params.now);
    let until = now.saturating_add(duration_micros(params.lease_duration));
    let progress = params.progress.as_ref().map(to_json).transpose()?;
    conn.prepare_cached(&format!(
        "UPDATE jobs SET
            lease_expires_at = CASE WHEN timeout_ms IS NULL THEN ?3
                               ELSE min(?3, attempted_at + timeout_ms * 1000) END,
            progress = coalesce(?4, progress)
         WHERE id = ?1 AND state = 'running' AND lease = ?2
         RETURNING {JOB_COLUMNS}"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            params![params.id.0, params.lease, until, progress],
            job_from_row,
        )
        .optional()
    })
    .map_err(backend)?
    .ok_or_else(|| fence_error(conn, params.id))
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

/// Puts a not-running job back in line at `run_at`, giving it one more attempt if
/// it has none left, with new args if given.
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
    let state = if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Available
    };
    let args = args.map(to_json).transpose()?;
    conn.prepare_cached(&format!(
        "UPDATE jobs SET state = ?2, run_at = ?3, finished_at = NULL, cancel_requested = 0,
                max_attempts = max(max_attempts, attempt + 1), args = coalesce(?4, args)
         WHERE id = ?1
         RETURNING {JOB_COLUMNS}"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            params![job.id.0, state.as_str(), run_at, args],
            job_from_row,
        )
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
    })
}

pub fn job_retry(conn: &Connection, params: &JobRetry) -> Result<Job> {
    let job = job_require(conn, params.id)?;
    if job.state == JobState::Completed {
        return Err(invalid(
            &job,
            "completed jobs are not retried; enqueue a new job",
        ));
    }
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

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub fn jobs_schedule(conn: &Connection, params: &MaintenanceBatch) -> Result<u64> {
    conn.prepare_cached(
        "UPDATE jobs SET state = 'available'
         WHERE id IN (SELECT id FROM jobs
                      WHERE state IN ('scheduled', 'retryable') AND run_at <= ?1
                      ORDER BY run_at LIMIT ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![micros(params.now), limit(params.limit)]))
    .map(|n| n as u64)
    .map_err(backend)
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

pub fn jobs_rescue_expired(conn: &Connection, params: &JobsRescue) -> Result<u64> {
    let expired = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_leases
             WHERE state = 'running' AND lease_expires_at <= ?1
             ORDER BY lease_expires_at LIMIT ?2"
        ))
        .and_then(|mut stmt| {
            stmt.query_map(
                params![micros(params.now), limit(params.limit)],
                job_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    for job in &expired {
        record_failure(
            conn,
            job,
            Failure {
                error: transitions::rescue_reason(job, params.now),
                retry: true,
                retry_at: None,
                default_backoff: &params.backoff,
                now: params.now,
            },
        )?;
    }
    Ok(expired.len() as u64)
}

fn push_target(
    column: usize,
    text: Option<String>,
) -> rusqlite::Result<Option<grafter_core::PushTarget>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                column,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })
    })
    .transpose()
}

/// Every queue, or only `only`, with settings, counts and oldest available job.
fn queue_infos(conn: &Connection, only: Option<&str>) -> Result<Vec<QueueInfo>> {
    let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT name, paused, push FROM queues WHERE ?1 IS NULL OR name = ?1")
        .map_err(backend)?;
    let settings = stmt
        .query_map([only], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, bool>(1)?,
                push_target(2, row.get(2)?)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    for (name, paused, push) in settings {
        let mut info = QueueInfo::empty(name.clone(), paused);
        info.push = push;
        queues.insert(name, info);
    }
    // Kept by triggers (migration 0004), so the jobs table is never counted.
    let mut stmt = conn
        .prepare_cached(
            "SELECT queue, state, n FROM job_counts WHERE (?1 IS NULL OR queue = ?1) AND n > 0",
        )
        .map_err(backend)?;
    let counts = stmt
        .query_map([only], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    for (queue, state, count) in counts {
        let Ok(state) = state.parse::<JobState>() else {
            continue;
        };
        queues
            .entry(queue.clone())
            .or_insert_with(|| QueueInfo::empty(queue, false))
            .counts
            .insert(state, count as u64);
    }
    // The fetch index is (queue, priority, run_at): the oldest available job is
    // the oldest of each priority's first entry. Skipping from one priority to
    // the next reads a few index entries, however many jobs wait.
    let mut stmt = conn
        .prepare_cached(
            "WITH RECURSIVE p(priority) AS (
                SELECT min(priority) FROM jobs WHERE state = 'available' AND queue = ?1
                UNION ALL
                SELECT (SELECT min(priority) FROM jobs
                        WHERE state = 'available' AND queue = ?1 AND priority > p.priority)
                FROM p WHERE p.priority IS NOT NULL)
             SELECT min((SELECT min(run_at) FROM jobs
                         WHERE state = 'available' AND queue = ?1 AND priority = p.priority))
             FROM p WHERE p.priority IS NOT NULL",
        )
        .map_err(backend)?;
    for info in queues
        .values_mut()
        .filter(|q| q.counts[&JobState::Available] > 0)
    {
        let oldest: Option<i64> = stmt
            .query_row([&info.name], |row| row.get(0))
            .map_err(backend)?;
        info.oldest_available_at = oldest.map(timestamp);
    }
    Ok(queues.into_values().collect())
}

pub fn queues_list(conn: &Connection) -> Result<Vec<QueueInfo>> {
    queue_infos(conn, None)
}

fn queue_info(conn: &Connection, name: &str) -> Result<QueueInfo> {
    Ok(queue_infos(conn, Some(name))?
        .pop()
        .unwrap_or_else(|| QueueInfo::empty(name.to_owned(), false)))
}

pub fn queue_set_paused(conn: &Connection, params: &QueuePause) -> Result<QueueInfo> {
    conn.prepare_cached(
        "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
    )
    .and_then(|mut stmt| stmt.execute(params![params.queue, params.paused, micros(params.now)]))
    .map_err(backend)?;
    queue_info(conn, &params.queue)
}

pub fn queue_set_push(conn: &Connection, params: &QueuePush) -> Result<QueueInfo> {
    let push = params.push.as_ref().map(to_json).transpose()?;
    conn.prepare_cached(
        "INSERT INTO queues (name, paused, push, updated_at) VALUES (?1, 0, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET push = excluded.push, updated_at = excluded.updated_at",
    )
    .and_then(|mut stmt| stmt.execute(params![params.queue, push, micros(params.now)]))
    .map_err(backend)?;
    queue_info(conn, &params.queue)
}

pub fn jobs_prune(conn: &Connection, params: &JobsPrune) -> Result<u64> {
    let states: Vec<&str> = params
        .states
        .iter()
        .filter(|s| s.is_finished())
        .map(|s| s.as_str())
        .collect();
    if states.is_empty() {
        return Ok(0);
    }
    let placeholders = (0..states.len())
        .map(|i| format!("?{}", i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "DELETE FROM jobs WHERE id IN (
            SELECT id FROM jobs
            WHERE state IN ('completed', 'dead', 'cancelled', 'expired') AND finished_at < ?1
              AND state IN ({placeholders})
            LIMIT ?2)"
    );
    let mut values: Vec<rusqlite::types::Value> = vec![
        micros(params.finished_before).into(),
        limit(params.limit).into(),
    ];
    values.extend(states.iter().map(|s| (*s).to_owned().into()));
    conn.prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(params_from_iter(values)))
        .map(|n| n as u64)
        .map_err(backend)
}

pub fn leader_acquire(conn: &Connection, params: &LeaderAcquire) -> Result<bool> {
    let now = micros(params.now);
    let expires = now.saturating_add(duration_micros(params.ttl));
    conn.prepare_cached(
        "INSERT INTO leaders (name, node, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at
         WHERE leaders.node = excluded.node OR leaders.expires_at <= ?4",
    )
    .and_then(|mut stmt| stmt.execute(params![params.name, params.node, expires, now]))
    .map_err(backend)?;
    conn.prepare_cached("SELECT node = ?2 FROM leaders WHERE name = ?1")
        .and_then(|mut stmt| stmt.query_row(params![params.name, params.node], |row| row.get(0)))
        .map_err(backend)
}

pub fn leader_release(conn: &Connection, params: &LeaderRelease) -> Result<()> {
    conn.prepare_cached("DELETE FROM leaders WHERE name = ?1 AND node = ?2")
        .and_then(|mut stmt| stmt.execute(params![params.name, params.node]))
        .map_err(backend)?;
    Ok(())
}

pub fn durability(conn: &Connection) -> Result<String> {
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(backend)?;
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .map_err(backend)?;
    let synchronous = match synchronous {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "unknown",
    };
    Ok(format!("journal_mode={journal}, synchronous={synchronous}"))
}

pub fn ping(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

pub fn job_release(conn: &Connection, params: &JobRelease) -> Result<Job> {
    let job = leased_job(conn, params.id, &params.lease)?;
    let (now, run_at) = (micros(params.now), micros(params.run_at));
    // A cancel requested meanwhile wins: the job is not handed out again.
    let (state, finished_at) = if job.cancel_requested {
        (JobState::Cancelled, Some(now))
    } else if run_at > now {
        (JobState::Scheduled, None)
    } else {
        (JobState::Available, None)
    };
    conn.prepare_cached(&format!(
        "UPDATE jobs SET state = ?2, run_at = ?3, finished_at = ?4, attempt = max(attempt - 1, 0),
                lease = NULL, lease_expires_at = NULL
         WHERE id = ?1
         RETURNING {JOB_COLUMNS}"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            params![job.id.0, state.as_str(), run_at, finished_at],
            job_from_row,
        )
    })
    .map_err(backend)
}

pub fn worker_heartbeat(conn: &Connection, params: &WorkerBeat) -> Result<()> {
    let w = &params.worker;
    conn.prepare_cached(
        "INSERT INTO workers (id, host, pid, queues, concurrency, kinds, started_at, last_seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (id) DO UPDATE SET
            host = excluded.host, pid = excluded.pid, queues = excluded.queues,
            concurrency = excluded.concurrency, kinds = excluded.kinds,
            last_seen_at = excluded.last_seen_at",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            w.id,
            w.host,
            w.pid,
            to_json(&w.queues).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            w.concurrency,
            to_json(&w.kinds).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            micros(params.now),
        ])
    })
    .map_err(backend)?;
    Ok(())
}

pub fn worker_remove(conn: &Connection, id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM workers WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id]))
        .map_err(backend)?;
    Ok(())
}

pub fn workers_list(conn: &Connection) -> Result<Vec<Worker>> {
    conn.prepare_cached(
        "SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.kinds, w.started_at, w.last_seen_at,
                coalesce(r.n, 0)
         FROM workers w
         LEFT JOIN (SELECT worker_id, count(*) AS n FROM jobs INDEXED BY jobs_leases
                    WHERE state = 'running' GROUP BY worker_id) AS r ON r.worker_id = w.id
         ORDER BY w.started_at, w.id",
    )
    .and_then(|mut stmt| {
        stmt.query_map([], |row| {
            let json_list = |i: usize| -> rusqlite::Result<Vec<String>> {
                serde_json::from_str(&row.get::<_, String>(i)?).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
                })
            };
            Ok(Worker {
                registration: WorkerRegistration {
                    id: row.get(0)?,
                    host: row.get(1)?,
                    pid: row.get(2)?,
                    queues: json_list(3)?,
                    concurrency: row.get(4)?,
                    kinds: json_list(5)?,
                },
                started_at: timestamp(row.get(6)?),
                last_seen_at: timestamp(row.get(7)?),
                running: row.get::<_, i64>(8)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(backend)
}

pub fn workers_prune(conn: &Connection, params: &WorkersPrune) -> Result<u64> {
    let now = micros(params.now);
    let cutoff = now.saturating_sub(duration_micros(params.stale_after));
    let stale: Vec<String> = conn
        .prepare_cached("SELECT id FROM workers WHERE last_seen_at < ?1")
        .and_then(|mut stmt| stmt.query_map([cutoff], |row| row.get(0))?.collect())
        .map_err(backend)?;
    for id in &stale {
        // End the dead worker's leases now; the rescuer records them as failed attempts.
        conn.prepare_cached(
            "UPDATE jobs INDEXED BY jobs_leases SET lease_expires_at = ?2
             WHERE state = 'running' AND worker_id = ?1 AND lease_expires_at > ?2",
        )
        .and_then(|mut stmt| stmt.execute(params![id, now]))
        .map_err(backend)?;
        worker_remove(conn, id)?;
    }
    Ok(stale.len() as u64)
}
