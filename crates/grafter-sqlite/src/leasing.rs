//! Leasing: the fetch, which leases available jobs to a worker, and what a
//! worker does with a lease it holds (complete one job or a batch, fail,
//! heartbeat, release), fenced by the lease token. All run on the writer thread
//! (see `writer.rs`); the fetch and the completions count the jobs they move
//! themselves (`count_moved`, `count_completed`).

use std::collections::{BTreeMap, HashMap, HashSet};

use grafter_core::{time, Job, JobId, JobState, LeasedJob};
use grafter_store::preview::json_len;
use grafter_store::transitions::{self, Failure};
use grafter_store::{
    AckOutcome, JobComplete, JobFail, JobHeartbeat, JobRelease, JobsCompleteMany, JobsFetch,
    Result, StoreError,
};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::error::backend;
use crate::jobs::{job_get, job_require};
use crate::row::{duration_micros, job_from_row, micros, to_json, AFTER_JOB_COLUMNS, JOB_COLUMNS};

/// Counts the jobs of `moved` (one queue name per job) as gone from state
/// `from` to state `to`. The counter triggers leave the fetch's and the
/// completions' moves to their statements (migration 7), which call this once
/// per statement.
pub(crate) fn count_moved<'q>(
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

/// What a fetch may still lease after the queues it has leased from.
pub(crate) struct Budget {
    /// Most jobs.
    pub max: usize,
    /// Most bytes of args.
    pub bytes: usize,
    /// Nothing leased yet: the next job is leased whatever its size.
    pub first_free: bool,
}

impl Budget {
    pub(crate) fn spend(&mut self, leased: &[LeasedJob]) {
        self.max = self.max.saturating_sub(leased.len());
        for l in leased {
            self.bytes = self.bytes.saturating_sub(json_len(&l.job.args));
            self.first_free = false;
        }
    }
}

/// The `SET` of every fetch: `?1` lease end, `?2` now, `?3` worker. The lease
/// never outlives the job's own timeout, so a job that overruns it is
/// rescued as "timed out" even if its worker keeps heartbeating.
pub(crate) fn lease_set() -> String {
    let timeout = timeout_micros();
    format!(
        "state = 'running',
            attempt = attempt + 1,
            lease = lower(hex(randomblob(16))),
            lease_expires_at = CASE WHEN timeout_ms IS NULL THEN ?1
                               ELSE min(?1, ?2 + {timeout}) END,
            worker_id = ?3,
            attempted_at = ?2,
            progress = NULL"
    )
}

/// Leases from queues without limits. Their statement refuses a queue that
/// has limits (`limits IS NOT NULL`), whatever this process believes.
pub(crate) fn plain_fetch(
    conn: &Connection,
    params: &JobsFetch,
    queues: &[&str],
) -> Result<Vec<LeasedJob>> {
    let mut max = params.max;
    if let (Some(limit), [queue]) = (params.running_limit, queues) {
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
    let placeholders = (0..queues.len())
        .map(|i| format!("?{}", i + 6))
        .collect::<Vec<_>>()
        .join(", ");
    // Of the first `max` jobs in hand-out order, those whose args added up
    // stay within the byte budget ?5 are leased, and always the first (its
    // running total is its own size). `octet_length` reads a value's size
    // from the row's header, not the value.
    let sql = format!(
        "UPDATE jobs SET {set}
         WHERE id IN (
            SELECT id FROM (
                SELECT id, size, sum(size) OVER (ORDER BY priority, run_at, id
                                                 ROWS UNBOUNDED PRECEDING) AS upto
                FROM (SELECT id, priority, run_at, octet_length(args) AS size FROM jobs
                      WHERE state = 'available' AND queue IN ({placeholders})
                        AND queue NOT IN (SELECT name FROM queues
                                          WHERE paused OR limits IS NOT NULL)
                        AND (expires_at IS NULL OR expires_at > ?2)
                      ORDER BY priority, run_at, id
                      LIMIT ?4))
            WHERE upto <= ?5 OR upto = size)
         RETURNING {JOB_COLUMNS}, lease",
        set = lease_set()
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut values: Vec<rusqlite::types::Value> = vec![
        lease_until.into(),
        now.into(),
        params.worker_id.clone().into(),
        i64::try_from(max).unwrap_or(i64::MAX).into(),
        i64::try_from(params.max_bytes).unwrap_or(i64::MAX).into(),
    ];
    values.extend(queues.iter().map(|q| (*q).to_owned().into()));
    let leased = stmt
        .query_map(params_from_iter(values), leased_from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    count_moved(
        conn,
        leased.iter().map(|l| l.job.queue.as_str()),
        JobState::Available,
        JobState::Running,
    )?;
    Ok(leased)
}

/// A leased job from a row of `JOB_COLUMNS, lease`.
pub(crate) fn leased_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LeasedJob> {
    Ok(LeasedJob {
        job: job_from_row(row)?,
        lease: row.get(AFTER_JOB_COLUMNS)?,
    })
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
) -> Result<Vec<AckOutcome>> {
    let done = match batch {
        Some(batch) => complete_batch(conn, params, batch)?,
        None => complete_one_by_one(conn, params)?,
    };
    ack_outcomes(conn, params, &done)
}

/// Each item's outcome from whether it completed its job; for those that did
/// not, why, read in the same transaction (rare, so looked up only then).
fn ack_outcomes(
    conn: &Connection,
    params: &JobsCompleteMany,
    done: &[bool],
) -> Result<Vec<AckOutcome>> {
    let missed: Vec<i64> = params
        .items
        .iter()
        .zip(done)
        .filter(|(_, &done)| !done)
        .map(|((id, _, _), _)| id.0)
        .collect();
    let mut now: HashMap<i64, (JobState, i32)> = HashMap::with_capacity(missed.len());
    if !missed.is_empty() {
        let ids = serde_json::to_string(&missed)
            .map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, state, attempt FROM jobs
                 WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([ids], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i32>(2)?,
                ))
            })
            .map_err(backend)?;
        for row in rows {
            let (id, state, attempt) = row.map_err(backend)?;
            let state = state
                .parse::<JobState>()
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            now.insert(id, (state, attempt));
        }
    }
    Ok(params
        .items
        .iter()
        .zip(done)
        .map(|((id, _, _), &done)| {
            if done {
                AckOutcome::Completed
            } else {
                AckOutcome::not_completed(now.get(&id.0).copied())
            }
        })
        .collect())
}

/// A job the batch ack completed: its id, queue, and its batch with the
/// job's share of the batch's progress before the ack.
struct Acked {
    id: i64,
    queue: String,
    batch: Option<(i64, i64)>,
}

/// Completes the items of `batch` with one statement; per item, whether it
/// completed its job. The statement's jobs are counted into their batches
/// by one write of each batch's row, with a row in `batch_counting` while
/// they move so the per-job trigger stands aside (migration 18). A job's
/// share before its ack is its progress, which the ack leaves as it was, so
/// `RETURNING` reads it.
fn complete_batch(conn: &Connection, params: &JobsCompleteMany, batch: &str) -> Result<Vec<bool>> {
    // `+jobs.state`: look each job up by its id, never scan the running ones.
    let mut stmt = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'completed', result = acks.result, finished_at = ?2,
                    lease = NULL, lease_expires_at = NULL
             FROM (SELECT CAST(value ->> 0 AS INTEGER) AS id, value ->> 1 AS lease, value ->> 2 AS result
                   FROM json_each(?1)) AS acks
             WHERE jobs.id = acks.id AND +jobs.state = 'running' AND jobs.lease = acks.lease
             RETURNING jobs.id, jobs.queue, jobs.batch_id,
                       coalesce(CAST(round(min(max(jobs.progress ->> '$.fraction', 0.0), 1.0)
                                           * 1000000) AS INTEGER), 0)",
        )
        .map_err(backend)?;
    let now = micros(params.now);
    execute(conn, "INSERT INTO batch_counting VALUES (1)")?;
    let rows = stmt
        .query_map(params![batch, now], |row| {
            Ok(Acked {
                id: row.get(0)?,
                queue: row.get(1)?,
                batch: match row.get::<_, Option<i64>>(2)? {
                    Some(batch) => Some((batch, row.get(3)?)),
                    None => None,
                },
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    execute(conn, "DELETE FROM batch_counting")?;
    count_completed(conn, rows.iter().map(|acked| acked.queue.as_str()), now)?;
    count_into_batches(conn, rows.iter().filter_map(|acked| acked.batch))?;
    let completed: HashSet<i64> = rows.into_iter().map(|acked| acked.id).collect();
    let mut answered = HashSet::with_capacity(completed.len());
    Ok(params
        .items
        .iter()
        .map(|(id, _, _)| completed.contains(&id.0) && answered.insert(id.0))
        .collect())
}

/// Runs a statement without parameters, prepared once per connection.
fn execute(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(backend)
}

/// Counts completed jobs, as (batch, share before), into their batches: one
/// write of each batch's row, whose triggers settle it.
fn count_into_batches(conn: &Connection, jobs: impl Iterator<Item = (i64, i64)>) -> Result<()> {
    let mut batches: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (batch, share) in jobs {
        let (completed, gain) = batches.entry(batch).or_default();
        *completed += 1;
        *gain += 1_000_000 - share;
    }
    if batches.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(
            "UPDATE batches SET completed = completed + ?2, progress = progress + ?3
             WHERE id = ?1",
        )
        .map_err(backend)?;
    for (batch, (completed, gain)) in batches {
        stmt.execute(params![batch, completed, gain])
            .map_err(backend)?;
    }
    Ok(())
}

fn complete_one_by_one(conn: &Connection, params: &JobsCompleteMany) -> Result<Vec<bool>> {
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
pub fn record_failure(conn: &Connection, job: &Job, failure: Failure<'_>) -> Result<Job> {
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

/// A job's own timeout in microseconds, as SQL: within 0 and 100 years
/// whatever is stored, so no stored value can overflow the lease's sum (which
/// SQLite would turn into a float).
fn timeout_micros() -> String {
    format!("max(0, min(timeout_ms, {})) * 1000", time::MAX_DURATION_MS)
}

pub fn job_heartbeat(conn: &Connection, params: &JobHeartbeat) -> Result<Job> {
    let now = micros(params.now);
    let until = now.saturating_add(duration_micros(params.lease_duration));
    let progress = params.progress.as_ref().map(to_json).transpose()?;
    let timeout = timeout_micros();
    conn.prepare_cached(&format!(
        "UPDATE jobs SET
            lease_expires_at = CASE WHEN timeout_ms IS NULL THEN ?3
                               ELSE min(?3, attempted_at + {timeout}) END,
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
