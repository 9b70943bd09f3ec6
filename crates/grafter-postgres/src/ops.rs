//! The store's operations as SQL, one method per [`grafter_store::Store`] method.
//!
//! Every statement takes "now" as a parameter instead of reading the database
//! clock, so callers (and the conformance suite) control time. Read-modify-write
//! operations run in a transaction that locks the job row first (`FOR UPDATE`);
//! batch maintenance uses `FOR UPDATE SKIP LOCKED` so two nodes never wait on
//! each other's rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Object, Pool};
use grafter_core::{
    Job, JobId, JobState, LeasedJob, NewJob, PushTarget, Timestamp, Worker, WorkerRegistration,
};
use grafter_store::transitions::{self, Failure};
use grafter_store::{
    Inserted, JobCancel, JobComplete, JobFail, JobHeartbeat, JobRelease, JobReschedule, JobRetry,
    JobsCompleteMany, JobsFetch, JobsInsert, JobsPrune, JobsRescue, LeaderAcquire, LeaderRelease,
    MaintenanceBatch, QueueInfo, QueuePause, QueuePush, Result, StoreError, WorkerBeat,
    WorkersPrune,
};
use serde_json::Value;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;

use crate::conn::Conn;
use crate::error::{is_deadlock, is_unique_violation, pg_error, pool_error};
use crate::group_insert::{GroupInsert, GROUPED_BELOW};
use crate::row::{job_columns, job_from_row, jobs_from_rows, AFTER_JOB_COLUMNS};

/// The lease fence of a statement on one leased job: the row with id `$1`, if
/// it is running under lease `$2`. Written so that it does not say
/// `state = 'running'` on its own: that would let the planner reach the row
/// through `jobs_leases` (whose predicate it is) instead of the primary key,
/// and after an ANALYZE that saw few running jobs it does, so that every ack,
/// heartbeat and release reads every running job (with 40,000 running, an
/// ack of 1,000 took 3.5 s instead of 10 ms).
macro_rules! lease_fence {
    () => {
        "id = $1 AND CASE WHEN state = 'running' THEN lease END = $2"
    };
}

/// The second half of both fetch statements: leases the rows a `picked` CTE
/// chose. The lease token is a random UUID (122 random bits) as 32 hex digits.
/// The lease never outlives the job's own timeout, so a job that overruns it is
/// rescued as "timed out" even if its worker keeps heartbeating.
/// Parameters: $2 now, $4 lease end, $5 worker, $6 the timeout clamp.
///
/// The picked ids go in as an array so that each row is reached through the
/// primary key. Joined as a table instead, they led the planner to hash the
/// whole jobs table on every fetch (it cannot tell how few rows `picked` holds),
/// a cost that grows with the table.
macro_rules! lease_picked {
    () => {
        concat!(
            "UPDATE jobs SET
                state = 'running',
                attempt = attempt + 1,
                lease = replace(gen_random_uuid()::text, '-', ''),
                lease_expires_at = CASE WHEN timeout_ms IS NULL THEN $4::timestamptz
                    ELSE least($4::timestamptz,
                               $2 + least(timeout_ms, $6) * interval '1 millisecond') END,
                worker_id = $5,
                attempted_at = $2,
                progress = NULL
            WHERE jobs.id = ANY(ARRAY(SELECT id FROM picked))
            RETURNING ",
            job_columns!(),
            ", jobs.lease"
        )
    };
}

/// A job's own timeout is clamped to this (100 years) before it is added to a
/// timestamp, so an absurd `timeout_ms` cannot push a lease out of range.
const MAX_TIMEOUT_MS: i64 = 100 * 365 * 24 * 3_600_000;

/// PostgreSQL's earliest timestamp, 4714-11-24 00:00:00 BC UTC, in Unix seconds.
const PG_EARLIEST_SECS: i64 = -210_866_803_200;

/// How often an insert of a keyed job is retried when a concurrent transaction
/// inserted the same key and committed between our snapshot and our insert.
const UNIQUE_RACE_RETRIES: usize = 5;

/// First key of the advisory lock that serializes fetches with a running limit
/// on one queue (the second is a hash of the schema and queue). Apart from the
/// migration lock's class. The bytes spell "grfl".
const RUNNING_LIMIT_LOCK_CLASS: i32 = 0x6772_666c;

/// The finished states, the only ones pruning deletes.
const FINISHED: [JobState; 4] = [
    JobState::Completed,
    JobState::Dead,
    JobState::Cancelled,
    JobState::Expired,
];

/// The connection pool and the notification channel: everything an operation needs.
pub(crate) struct Db {
    pub(crate) pool: Pool,
    /// The `LISTEN`/`NOTIFY` channel of this store's schema.
    pub(crate) channel: String,
    /// The store's schema name (empty for the default search path), which
    /// scopes advisory locks so stores in different schemas never contend.
    pub(crate) lock_scope: String,
    /// Where small inserts go to share a statement and a commit.
    pub(crate) group_insert: GroupInsert,
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `now + d`, saturating at the latest time chrono (and so PostgreSQL) can hold.
fn later(now: Timestamp, d: std::time::Duration) -> Timestamp {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `now - d`, saturating at the earliest time PostgreSQL can hold (4714 BC),
/// which no stored timestamp is before.
fn earlier(now: Timestamp, d: std::time::Duration) -> Timestamp {
    let earliest =
        DateTime::<Utc>::from_timestamp(PG_EARLIEST_SECS, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .map_or(earliest, |t| t.max(earliest))
}

pub(crate) fn invalid(job: &Job, message: &str) -> StoreError {
    StoreError::InvalidState {
        id: job.id,
        state: job.state,
        message: message.to_owned(),
    }
}

/// Queues a wake-up for every listening node inside the caller's transaction:
/// PostgreSQL delivers it at commit (never for a rolled-back change) and folds
/// repeats within one transaction. Only for an application's transaction
/// ([`crate::enqueue_in`]), whose commit the store does not see; the store's
/// own changes are announced after they commit (`notifier::Announcer`), since
/// a transaction that notifies holds a lock shared by every such transaction
/// of the database from its commit until it is on disk, so their flushes to
/// disk queue one by one instead of being shared.
pub(crate) async fn notify(client: &impl Conn, channel: &str) -> Result<()> {
    let stmt = client.statement("SELECT pg_notify($1, '')").await?;
    client.rows(&stmt, &[&channel]).await?;
    Ok(())
}

async fn job_get_on(client: &impl GenericClient, id: JobId) -> Result<Option<Job>> {
    const SQL: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let row = client.query_opt(&stmt, &[&id.0]).await.map_err(pg_error)?;
    row.as_ref().map(job_from_row).transpose()
}

/// Locks a job row for a read-modify-write and returns it with its lease.
pub(crate) async fn job_lock(
    client: &impl GenericClient,
    id: JobId,
) -> Result<(Job, Option<String>)> {
    const SQL: &str = concat!(
        "SELECT ",
        job_columns!(),
        ", jobs.lease FROM jobs WHERE id = $1 FOR UPDATE"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let row = client
        .query_opt(&stmt, &[&id.0])
        .await
        .map_err(pg_error)?
        .ok_or(StoreError::NotFound(id))?;
    let lease = row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?;
    Ok((job_from_row(&row)?, lease))
}

/// Explains why a fenced update matched no row.
async fn fence_error(client: &impl GenericClient, id: JobId) -> StoreError {
    match job_get_on(client, id).await {
        Ok(Some(job)) => StoreError::LeaseMismatch {
            id,
            state: job.state,
            attempt: job.attempt,
        },
        Ok(None) => StoreError::NotFound(id),
        Err(e) => e,
    }
}

/// The state a new or requeued job starts in.
fn waiting_state(run_at: Timestamp, now: Timestamp) -> JobState {
    if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Available
    }
}

impl Db {
    pub(crate) async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    pub(crate) async fn job_get(&self, id: JobId) -> Result<Option<Job>> {
        job_get_on(&self.client().await?, id).await
    }

    /// Inserts in one transaction (see [`insert_jobs`]); a few jobs without
    /// unique keys share their statement with other callers' (see
    /// [`crate::group_insert`]). Returns the outcomes and whether any job
    /// became available (so the caller knows whether to announce it).
    pub(crate) async fn jobs_insert_many(
        &self,
        params: JobsInsert,
    ) -> Result<(Vec<Inserted>, bool)> {
        let unkeyed = params.jobs.iter().all(|job| job.unique_key.is_none());
        if unkeyed && params.jobs.len() < GROUPED_BELOW {
            let jobs = self.group_insert.insert(params.jobs, params.now).await?;
            return Ok(with_availability(jobs.into_iter().map(created).collect()));
        }
        let mut client = self.client().await?;
        if unkeyed {
            // One statement, atomic on its own: no BEGIN and COMMIT round trips.
            return insert_jobs(&client, &params.jobs, params.now).await;
        }
        let tx = client.transaction().await.map_err(pg_error)?;
        let inserted = insert_jobs(&tx, &params.jobs, params.now).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(inserted)
    }

    pub(crate) async fn jobs_fetch(&self, params: &JobsFetch) -> Result<Vec<LeasedJob>> {
        // `picked` chooses the first `max` available jobs in hand-out order and
        // locks them, skipping rows another fetch holds, so concurrent fetchers
        // never wait for each other nor lease a job twice.
        //
        // One queue (the common case) reads the fetch index in order and stops
        // after `max` rows. Several queues get one such ordered read each, merged:
        // a plain `queue = ANY($1)` would make PostgreSQL sort every available job
        // of those queues on each fetch. The price is that up to `max` rows per
        // extra queue stay locked (not leased) for the statement's few
        // milliseconds, during which other fetches skip them.
        const ONE_QUEUE: &str = concat!(
            "WITH picked AS (
                SELECT id FROM jobs
                WHERE state = 'available'
                  AND queue = $1
                  AND (expires_at IS NULL OR expires_at > $2)
                  AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused)
                ORDER BY priority, run_at, id
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            ) ",
            lease_picked!()
        );
        const MANY_QUEUES: &str = concat!(
            "WITH picked AS (
                SELECT j.id FROM unnest($1::text[]) AS q(name)
                CROSS JOIN LATERAL (
                    SELECT id, priority, run_at FROM jobs
                    WHERE state = 'available'
                      AND queue = q.name
                      AND (expires_at IS NULL OR expires_at > $2)
                    ORDER BY priority, run_at, id
                    LIMIT $3
                    FOR UPDATE SKIP LOCKED
                ) AS j
                WHERE NOT EXISTS (SELECT 1 FROM queues WHERE name = q.name AND paused)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT $3
            ) ",
            lease_picked!()
        );
        // With a running limit: the same, leasing no more than keeps the queue's
        // running jobs (on every node) at or under $7. The count is exact because
        // every limited fetch of the queue holds the queue's advisory lock from
        // before this statement (and so before its snapshot) until it commits.
        const ONE_QUEUE_LIMITED: &str = concat!(
            "WITH picked AS (
                SELECT id FROM jobs
                WHERE state = 'available'
                  AND queue = $1
                  AND (expires_at IS NULL OR expires_at > $2)
                  AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused)
                ORDER BY priority, run_at, id
                LIMIT least($3, greatest($7::bigint - (SELECT count(*) FROM jobs
                                                       WHERE state = 'running' AND queue = $1), 0))
                FOR UPDATE SKIP LOCKED
            ) ",
            lease_picked!()
        );
        // A queue named twice would be read twice, and its jobs picked twice.
        let mut queues: Vec<&str> = params.queues.iter().map(String::as_str).collect();
        queues.sort_unstable();
        queues.dedup();
        let mut client = self.client().await?;
        let lease_until = later(params.now, params.lease_duration);
        let max = limit(params.max);
        let rest: [&(dyn ToSql + Sync); 5] = [
            &params.now,
            &max,
            &lease_until,
            &params.worker_id,
            &MAX_TIMEOUT_MS,
        ];
        let rows = if let (Some(running_limit), [queue]) = (params.running_limit, &queues[..]) {
            // Serialized per queue: two nodes counting at once would both see
            // room for the same slots.
            let running_limit = limit(running_limit);
            let key = format!("{}\n{queue}", self.lock_scope);
            let tx = client.transaction().await.map_err(pg_error)?;
            let lock = tx
                .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .await
                .map_err(pg_error)?;
            tx.execute(&lock, &[&RUNNING_LIMIT_LOCK_CLASS, &key])
                .await
                .map_err(pg_error)?;
            let stmt = tx
                .prepare_cached(ONE_QUEUE_LIMITED)
                .await
                .map_err(pg_error)?;
            let args: Vec<&(dyn ToSql + Sync)> = std::iter::once(queue as _)
                .chain(rest)
                .chain(std::iter::once(&running_limit as _))
                .collect();
            let rows = tx.query(&stmt, &args).await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(rows)
        } else if let [queue] = queues[..] {
            let stmt = client.prepare_cached(ONE_QUEUE).await.map_err(pg_error)?;
            let args: Vec<&(dyn ToSql + Sync)> = std::iter::once(&queue as _).chain(rest).collect();
            client.query(&stmt, &args).await
        } else {
            let stmt = client.prepare_cached(MANY_QUEUES).await.map_err(pg_error)?;
            let args: Vec<&(dyn ToSql + Sync)> =
                std::iter::once(&queues as _).chain(rest).collect();
            client.query(&stmt, &args).await
        }
        .map_err(pg_error)?;
        let mut leased = rows
            .iter()
            .map(|row| {
                Ok(LeasedJob {
                    job: job_from_row(row)?,
                    lease: row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // RETURNING gives no order; hand jobs out in the order they were chosen.
        leased.sort_by_key(|l| (l.job.priority, l.job.run_at, l.job.id));
        Ok(leased)
    }

    pub(crate) async fn job_complete(&self, params: &JobComplete) -> Result<Job> {
        const SQL: &str = concat!(
            "UPDATE jobs SET state = 'completed', result = $3, finished_at = $4,
                    lease = NULL, lease_expires_at = NULL
             WHERE ",
            lease_fence!(),
            "
             RETURNING ",
            job_columns!()
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = client
            .query_opt(
                &stmt,
                &[&params.id.0, &params.lease, &params.result, &params.now],
            )
            .await
            .map_err(pg_error)?;
        match row {
            Some(row) => job_from_row(&row),
            None => Err(fence_error(&client, params.id).await),
        }
    }

    /// One statement for the whole batch: the items joined to their rows,
    /// fenced as in `lease_fence!`. `DISTINCT ON` keeps the first of repeated
    /// (job, lease) items, so a job acked twice in one batch answers `true`
    /// once, as it would acked one at a time.
    ///
    /// `jobs.id = ANY($1)` reaches the rows through the primary key in one
    /// ordered index scan, whatever the planner guesses of the items (joined on
    /// the items alone, it hashed the whole table). Both sides of the join come
    /// in id order (`input` is sorted by id), so rows are locked in id order and
    /// batches racing over the same jobs (a retried ack, worker pruning) wait
    /// for each other instead of deadlocking; the second finds the row no
    /// longer running under that lease and leaves it. That order is the plan's,
    /// though: on a small table the planner may read `jobs` sequentially, in
    /// the order rows were last written, and two such batches can deadlock.
    /// PostgreSQL then rolls one statement back whole, and it is run again: a
    /// rerun answers as if it had run after the other.
    pub(crate) async fn jobs_complete_many(&self, params: &JobsCompleteMany) -> Result<Vec<bool>> {
        const SQL: &str = "
            WITH input AS (
                SELECT DISTINCT ON (id, lease) id, lease, result, ord
                FROM unnest($1::bigint[], $2::text[], $3::jsonb[]) WITH ORDINALITY
                     AS t(id, lease, result, ord)
                ORDER BY id, lease, ord
            )
            UPDATE jobs SET state = 'completed', result = input.result, finished_at = $4,
                   lease = NULL, lease_expires_at = NULL
            FROM input
            WHERE jobs.id = ANY($1) AND jobs.id = input.id
              AND CASE WHEN jobs.state = 'running' THEN jobs.lease END = input.lease
            RETURNING input.ord";
        let n = params.items.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(n);
        let mut leases = Vec::with_capacity(n);
        let mut results = Vec::with_capacity(n);
        for (id, lease, result) in &params.items {
            ids.push(id.0);
            leases.push(lease.as_str());
            results.push(result.as_ref());
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let mut attempt = 1;
        let rows = loop {
            match client
                .query(&stmt, &[&ids, &leases, &results, &params.now])
                .await
            {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_ATTEMPTS => attempt += 1,
                answer => break answer.map_err(pg_error)?,
            }
        };
        let mut done = vec![false; n];
        for row in rows {
            let ord: i64 = row.try_get(0).map_err(pg_error)?;
            // Ordinality counts from 1.
            match usize::try_from(ord)
                .ok()
                .and_then(|i| done.get_mut(i.wrapping_sub(1)))
            {
                Some(slot) => *slot = true,
                None => {
                    return Err(StoreError::Backend(format!(
                        "batch ack answered for item {ord} of {n}"
                    )))
                }
            }
        }
        Ok(done)
    }

    pub(crate) async fn job_fail(&self, params: &JobFail) -> Result<Job> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (job, lease) = job_lock(&tx, params.id).await?;
        if job.state != JobState::Running || lease.as_deref() != Some(params.lease.as_str()) {
            return Err(StoreError::LeaseMismatch {
                id: job.id,
                state: job.state,
                attempt: job.attempt,
            });
        }
        let failure = Failure {
            error: &params.error,
            retry: params.retry,
            retry_at: params.retry_at,
            default_backoff: &params.backoff,
            now: params.now,
        };
        let job = record_failure(&tx, &job, failure).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    pub(crate) async fn job_heartbeat(&self, params: &JobHeartbeat) -> Result<Job> {
        const SQL: &str = concat!(
            "UPDATE jobs SET
                lease_expires_at = CASE WHEN timeout_ms IS NULL THEN $3::timestamptz
                    ELSE least($3::timestamptz,
                               attempted_at + least(timeout_ms, $5) * interval '1 millisecond') END,
                progress = coalesce($4::jsonb, progress)
             WHERE ",
            lease_fence!(),
            "
             RETURNING ",
            job_columns!()
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let until = later(params.now, params.lease_duration);
        let progress = params.progress.as_ref().map(Json);
        let row = client
            .query_opt(
                &stmt,
                &[
                    &params.id.0,
                    &params.lease,
                    &until,
                    &progress,
                    &MAX_TIMEOUT_MS,
                ],
            )
            .await
            .map_err(pg_error)?;
        match row {
            Some(row) => job_from_row(&row),
            None => Err(fence_error(&client, params.id).await),
        }
    }

    pub(crate) async fn job_cancel(&self, params: &JobCancel) -> Result<Job> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (job, _) = job_lock(&tx, params.id).await?;
        let job = cancel_locked(&tx, &job, params.now).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    /// A manual retry: the job is available now.
    pub(crate) async fn job_retry(&self, params: &JobRetry) -> Result<Job> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (job, _) = job_lock(&tx, params.id).await?;
        if job.state == JobState::Completed {
            return Err(invalid(
                &job,
                "completed jobs are not retried; enqueue a new job",
            ));
        }
        let job = requeue(&tx, &job, params.now, params.now, params.args.as_ref()).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    pub(crate) async fn job_reschedule(&self, params: &JobReschedule) -> Result<Job> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let (job, _) = job_lock(&tx, params.id).await?;
        let job = requeue(&tx, &job, params.run_at, params.now, None).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    pub(crate) async fn job_delete(&self, id: JobId) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM jobs WHERE id = $1")
            .await
            .map_err(pg_error)?;
        let deleted = client.execute(&stmt, &[&id.0]).await.map_err(pg_error)?;
        if deleted == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    pub(crate) async fn jobs_schedule(&self, params: &MaintenanceBatch) -> Result<u64> {
        const SQL: &str = "
            UPDATE jobs SET state = 'available'
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('scheduled', 'retryable') AND run_at <= $1
                         ORDER BY run_at
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(SQL).await.map_err(pg_error)?;
        let moved = tx
            .execute(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(moved)
    }

    pub(crate) async fn jobs_expire(&self, params: &MaintenanceBatch) -> Result<u64> {
        const SQL: &str = "
            UPDATE jobs SET state = 'expired', finished_at = $1
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('scheduled', 'available', 'retryable')
                           AND expires_at <= $1
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)
    }

    pub(crate) async fn jobs_rescue_expired(&self, params: &JobsRescue) -> Result<u64> {
        const EXPIRED: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs
             WHERE state = 'running' AND lease_expires_at <= $1
             ORDER BY lease_expires_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED"
        );
        // One statement writes every rescued job's outcome, computed in Rust by the
        // shared failure rules.
        const RECORD: &str = "
            UPDATE jobs SET state = u.state, run_at = u.run_at, errors = u.errors,
                   finished_at = u.finished_at, lease = NULL, lease_expires_at = NULL
            FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::jsonb[], $5::timestamptz[])
                 AS u(id, state, run_at, errors, finished_at)
            WHERE jobs.id = u.id";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(EXPIRED).await.map_err(pg_error)?;
        let rows = tx
            .query(&stmt, &[&params.now, &limit(params.limit)])
            .await
            .map_err(pg_error)?;
        let expired = jobs_from_rows(&rows)?;
        if expired.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(expired.len());
        let mut states = Vec::with_capacity(expired.len());
        let mut run_ats = Vec::with_capacity(expired.len());
        let mut errors = Vec::with_capacity(expired.len());
        let mut finished = Vec::with_capacity(expired.len());
        for job in &expired {
            let next = transitions::after_failure(
                job,
                Failure {
                    error: transitions::rescue_reason(job, params.now),
                    retry: true,
                    retry_at: None,
                    default_backoff: &params.backoff,
                    now: params.now,
                },
            );
            ids.push(job.id.0);
            states.push(next.state.as_str());
            run_ats.push(next.run_at);
            errors.push(to_json(&next.errors)?);
            finished.push(next.finished_at);
        }
        let stmt = tx.prepare_cached(RECORD).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&ids, &states, &run_ats, &errors, &finished])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(expired.len() as u64)
    }

    pub(crate) async fn queues_list(&self) -> Result<Vec<QueueInfo>> {
        queue_infos(&self.client().await?, None).await
    }

    pub(crate) async fn queue_set_paused(&self, params: &QueuePause) -> Result<QueueInfo> {
        const UPSERT: &str = "
            INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET paused = excluded.paused, updated_at = excluded.updated_at";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(UPSERT).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&params.queue, &params.paused, &params.now])
            .await
            .map_err(pg_error)?;
        let info = queue_info(&tx, &params.queue).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(info)
    }

    /// Sets or clears the push target, keeping the queue's other settings.
    pub(crate) async fn queue_set_push(&self, params: &QueuePush) -> Result<QueueInfo> {
        const UPSERT: &str = "
            INSERT INTO queues (name, paused, push, updated_at) VALUES ($1, false, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET push = excluded.push, updated_at = excluded.updated_at";
        let push = params.push.as_ref().map(Json);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(UPSERT).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&params.queue, &push, &params.now])
            .await
            .map_err(pg_error)?;
        let info = queue_info(&tx, &params.queue).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(info)
    }

    /// Deletes up to `limit` jobs in the named finished states, oldest finish
    /// first, from the `jobs_finished` index (the literal state list is its
    /// predicate, which is what lets the planner use it). Rows another
    /// transaction holds are skipped, so two pruners never wait on each other.
    pub(crate) async fn jobs_prune(&self, params: &JobsPrune) -> Result<u64> {
        const SQL: &str = "
            DELETE FROM jobs
            WHERE id IN (SELECT id FROM jobs
                         WHERE state IN ('completed', 'dead', 'cancelled', 'expired')
                           AND state = ANY($1::text[])
                           AND finished_at < $2
                         ORDER BY finished_at
                         LIMIT $3
                         FOR UPDATE SKIP LOCKED)";
        let states: Vec<&str> = FINISHED
            .into_iter()
            .filter(|s| params.states.contains(s))
            .map(JobState::as_str)
            .collect();
        if states.is_empty() || params.limit == 0 {
            return Ok(0);
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(
                &stmt,
                &[&states, &params.finished_before, &limit(params.limit)],
            )
            .await
            .map_err(pg_error)
    }

    /// One upsert: it inserts a free leadership, or takes over a row that is
    /// expired or already `node`'s, and returns a row only then. Racing nodes
    /// are serialized by the primary key (and the row lock `ON CONFLICT` takes),
    /// the later one judging the row the earlier one left.
    pub(crate) async fn leader_acquire(&self, params: &LeaderAcquire) -> Result<bool> {
        const SQL: &str = "
            INSERT INTO leaders (name, node, expires_at) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET node = excluded.node, expires_at = excluded.expires_at
                WHERE leaders.node = excluded.node OR leaders.expires_at <= $4
            RETURNING true";
        let expires_at = later(params.now, params.ttl);
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = client
            .query_opt(
                &stmt,
                &[&params.name, &params.node, &expires_at, &params.now],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.is_some())
    }

    pub(crate) async fn leader_release(&self, params: &LeaderRelease) -> Result<()> {
        const SQL: &str = "DELETE FROM leaders WHERE name = $1 AND node = $2";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(&stmt, &[&params.name, &params.node])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    /// Hands a leased job back in one fenced statement: the state follows from
    /// the row's own `cancel_requested` and the requested `run_at`. Returns the
    /// job as it now is; the caller announces it when it is `available`.
    pub(crate) async fn job_release(&self, params: &JobRelease) -> Result<Job> {
        const SQL: &str = concat!(
            "UPDATE jobs SET
                state = CASE WHEN cancel_requested THEN 'cancelled'
                             WHEN $3::timestamptz > $4::timestamptz THEN 'scheduled'
                             ELSE 'available' END,
                run_at = $3,
                finished_at = CASE WHEN cancel_requested THEN $4::timestamptz END,
                attempt = greatest(attempt - 1, 0),
                lease = NULL, lease_expires_at = NULL
             WHERE ",
            lease_fence!(),
            "
             RETURNING ",
            job_columns!()
        );
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                &stmt,
                &[&params.id.0, &params.lease, &params.run_at, &params.now],
            )
            .await
            .map_err(pg_error)?;
        let job = match row {
            Some(row) => job_from_row(&row)?,
            None => return Err(fence_error(&tx, params.id).await),
        };
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    /// Registers a worker, or refreshes everything but its start time.
    pub(crate) async fn worker_heartbeat(&self, params: &WorkerBeat) -> Result<()> {
        const SQL: &str = "
            INSERT INTO workers (id, host, pid, queues, concurrency, kinds, started_at, last_seen_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
            ON CONFLICT (id) DO UPDATE SET
                host = excluded.host, pid = excluded.pid, queues = excluded.queues,
                concurrency = excluded.concurrency, kinds = excluded.kinds,
                last_seen_at = excluded.last_seen_at";
        let w = &params.worker;
        // u32 has no SQL integer of its own in the driver (it means `oid`).
        let (pid, concurrency) = (i64::from(w.pid), i64::from(w.concurrency));
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(
                &stmt,
                &[
                    &w.id,
                    &w.host,
                    &pid,
                    &w.queues,
                    &concurrency,
                    &w.kinds,
                    &params.now,
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn worker_remove(&self, id: &str) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM workers WHERE id = $1")
            .await
            .map_err(pg_error)?;
        client.execute(&stmt, &[&id]).await.map_err(pg_error)?;
        Ok(())
    }

    /// Oldest first; ids break ties bytewise (`COLLATE "C"`), as in SQLite,
    /// whatever the database's collation. Running counts come from one pass
    /// over the running jobs (the `jobs_leases` index), counted per worker.
    pub(crate) async fn workers_list(&self) -> Result<Vec<Worker>> {
        const SQL: &str = r#"
            SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.kinds, w.started_at, w.last_seen_at,
                   coalesce(r.n, 0)
            FROM workers w
            LEFT JOIN (SELECT worker_id, count(*) AS n FROM jobs WHERE state = 'running'
                       GROUP BY worker_id) AS r ON r.worker_id = w.id
            ORDER BY w.started_at, w.id COLLATE "C""#;
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client.query(&stmt, &[]).await.map_err(pg_error)?;
        rows.iter().map(worker_from_row).collect()
    }

    /// One statement: deletes the stale workers and, for the running jobs they
    /// held, brings `lease_expires_at` forward to now so the rescuer takes them
    /// on its next pass. Two nodes pruning at once each count only the workers
    /// they deleted.
    pub(crate) async fn workers_prune(&self, params: &WorkersPrune) -> Result<u64> {
        const SQL: &str = "
            WITH stale AS (
                DELETE FROM workers WHERE last_seen_at < $1 RETURNING id
            ), ended AS (
                UPDATE jobs SET lease_expires_at = $2
                WHERE state = 'running' AND lease_expires_at > $2
                  AND worker_id IN (SELECT id FROM stale)
            )
            SELECT count(*) FROM stale";
        let cutoff = earlier(params.now, params.stale_after);
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = client
            .query_one(&stmt, &[&cutoff, &params.now])
            .await
            .map_err(pg_error)?;
        let pruned: i64 = row.try_get(0).map_err(pg_error)?;
        Ok(pruned.max(0) as u64)
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| match pg_error(e) {
                StoreError::Backend(m) => StoreError::Unavailable(m),
                other => other,
            })?;
        Ok(())
    }
}

/// Every queue with settings or jobs (or only `only`): settings, job counts per
/// state, and the `run_at` of the longest-waiting available job. Separate
/// statements for one queue, so that each can use the queue's indexes.
async fn queue_infos(client: &impl GenericClient, only: Option<&str>) -> Result<Vec<QueueInfo>> {
    const SETTINGS_ALL: &str = "SELECT name, paused, push FROM queues";
    const SETTINGS_ONE: &str = "SELECT name, paused, push FROM queues WHERE name = $1";
    // Kept by triggers (migration 0004): the totals plus the deltas not yet
    // rolled into them, so the jobs table is never counted.
    const COUNTS_ALL: &str = "
        SELECT queue, state, sum(n)::bigint FROM (
            SELECT queue, state, n FROM job_counts
            UNION ALL SELECT queue, state, n FROM job_count_deltas) AS c
        GROUP BY queue, state HAVING sum(n) > 0";
    const COUNTS_ONE: &str = "
        SELECT queue, state, sum(n)::bigint FROM (
            SELECT queue, state, n FROM job_counts WHERE queue = $1
            UNION ALL SELECT queue, state, n FROM job_count_deltas WHERE queue = $1) AS c
        GROUP BY queue, state HAVING sum(n) > 0";
    // The fetch index is (queue, priority, run_at): the oldest available job is
    // the oldest of each priority's first entry. Skipping from one priority to
    // the next reads a few index entries, however many jobs wait.
    const OLDEST: &str = "
        WITH RECURSIVE p(priority) AS (
            SELECT min(priority) FROM jobs WHERE state = 'available' AND queue = $1
            UNION ALL
            SELECT (SELECT min(priority) FROM jobs
                    WHERE state = 'available' AND queue = $1 AND priority > p.priority)
            FROM p WHERE p.priority IS NOT NULL)
        SELECT min((SELECT min(run_at) FROM jobs
                    WHERE state = 'available' AND queue = $1 AND priority = p.priority))
        FROM p WHERE p.priority IS NOT NULL";
    let query = |all: &'static str, one: &'static str| async move {
        let rows = match only {
            None => {
                let stmt = client.prepare_cached(all).await.map_err(pg_error)?;
                client.query(&stmt, &[]).await
            }
            Some(queue) => {
                let stmt = client.prepare_cached(one).await.map_err(pg_error)?;
                client.query(&stmt, &[&queue]).await
            }
        };
        rows.map_err(pg_error)
    };
    let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
    for row in query(SETTINGS_ALL, SETTINGS_ONE).await? {
        let name: String = row.try_get(0).map_err(pg_error)?;
        let mut info = QueueInfo::empty(name.clone(), row.try_get(1).map_err(pg_error)?);
        let push: Option<Json<PushTarget>> = row.try_get(2).map_err(pg_error)?;
        info.push = push.map(|Json(p)| p);
        queues.insert(name, info);
    }
    for row in query(COUNTS_ALL, COUNTS_ONE).await? {
        let queue: String = row.try_get(0).map_err(pg_error)?;
        let state: String = row.try_get(1).map_err(pg_error)?;
        let count: i64 = row.try_get(2).map_err(pg_error)?;
        let Ok(state) = state.parse::<JobState>() else {
            continue;
        };
        queues
            .entry(queue.clone())
            .or_insert_with(|| QueueInfo::empty(queue, false))
            .counts
            .insert(state, count.max(0) as u64);
    }
    let stmt = client.prepare_cached(OLDEST).await.map_err(pg_error)?;
    for info in queues
        .values_mut()
        .filter(|q| q.counts[&JobState::Available] > 0)
    {
        let row = client
            .query_one(&stmt, &[&info.name])
            .await
            .map_err(pg_error)?;
        info.oldest_available_at = row.try_get(0).map_err(pg_error)?;
    }
    Ok(queues.into_values().collect())
}

/// One queue's [`QueueInfo`]; an unknown queue is empty and not paused.
async fn queue_info(client: &impl GenericClient, name: &str) -> Result<QueueInfo> {
    Ok(queue_infos(client, Some(name))
        .await?
        .pop()
        .unwrap_or_else(|| QueueInfo::empty(name.to_owned(), false)))
}

/// Reads a row of [`Db::workers_list`].
fn worker_from_row(row: &Row) -> Result<Worker> {
    let u32_at = |i: usize| -> Result<u32> {
        let n: i64 = row.try_get(i).map_err(pg_error)?;
        u32::try_from(n)
            .map_err(|_| StoreError::Backend(format!("reading a worker row: {n} is not a u32")))
    };
    let running: i64 = row.try_get(8).map_err(pg_error)?;
    Ok(Worker {
        registration: WorkerRegistration {
            id: row.try_get(0).map_err(pg_error)?,
            host: row.try_get(1).map_err(pg_error)?,
            pid: u32_at(2)?,
            queues: row.try_get(3).map_err(pg_error)?,
            concurrency: u32_at(4)?,
            kinds: row.try_get(5).map_err(pg_error)?,
        },
        started_at: row.try_get(6).map_err(pg_error)?,
        last_seen_at: row.try_get(7).map_err(pg_error)?,
        running: running.max(0) as u64,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}

/// Inserts jobs inside the caller's transaction: the store's own, or an
/// application's ([`crate::enqueue_in`]). Consecutive jobs without a
/// `unique_key` go in one multi-row statement; keyed jobs go one at a time
/// because each may turn out to be a duplicate. Returns the outcomes and
/// whether any job became available (for the caller to announce).
pub(crate) async fn insert_jobs(
    client: &impl Conn,
    jobs: &[NewJob],
    now: Timestamp,
) -> Result<(Vec<Inserted>, bool)> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut rest = jobs;
    while let Some(first) = rest.first() {
        if first.unique_key.is_some() {
            out.push(insert_keyed(client, first, now).await?);
            rest = &rest[1..];
        } else {
            let run = rest.iter().take_while(|j| j.unique_key.is_none()).count();
            let jobs = insert_unkeyed(client, &rest[..run], &vec![now; run]).await?;
            out.extend(jobs.into_iter().map(created));
            rest = &rest[run..];
        }
    }
    Ok(with_availability(out))
}

/// A job this call inserted (not one already holding its unique key).
fn created(job: Job) -> Inserted {
    Inserted { job, created: true }
}

/// Insert outcomes, and whether any of them made a job available (for the
/// caller to announce).
fn with_availability(out: Vec<Inserted>) -> (Vec<Inserted>, bool) {
    let available = out
        .iter()
        .any(|i| i.created && i.job.state == JobState::Available);
    (out, available)
}

/// Inserts jobs without a `unique_key` with one statement, each created at its
/// own entry in `nows` (jobs of several callers can share a statement, see
/// [`crate::group_insert`]). `unnest … WITH ORDINALITY` keeps their order, and
/// `ORDER BY ord` makes ids follow it, so the returned rows sorted by id line
/// up with `jobs`. Tags travel as one JSON array per job because PostgreSQL has
/// no arrays of arrays of varying length.
pub(crate) async fn insert_unkeyed(
    client: &impl Conn,
    jobs: &[NewJob],
    nows: &[Timestamp],
) -> Result<Vec<Job>> {
    const SQL: &str = concat!(
        "WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::smallint[],
                                 $5::text[], $6::timestamptz[], $7::integer[], $8::jsonb[],
                                 $9::bigint[], $10::timestamptz[], $11::jsonb[],
                                 $12::timestamptz[])
                WITH ORDINALITY
                AS i(queue, kind, args, priority, state, run_at, max_attempts, tags,
                     timeout_ms, expires_at, backoff, created_at, ord)
        )
        INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                          timeout_ms, expires_at, backoff, created_at)
        SELECT queue, kind, args, priority, state, run_at, max_attempts,
               ARRAY(SELECT t FROM jsonb_array_elements_text(tags) WITH ORDINALITY AS e(t, n)
                     ORDER BY n),
               timeout_ms, expires_at, backoff, created_at
        FROM input
        ORDER BY ord
        RETURNING ",
        job_columns!()
    );
    let n = jobs.len();
    if nows.len() != n {
        return Err(StoreError::Backend(format!(
            "inserting {n} jobs with {} creation times",
            nows.len()
        )));
    }
    let mut queues = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    let mut timeouts = Vec::with_capacity(n);
    let mut expires = Vec::with_capacity(n);
    let mut backoffs = Vec::with_capacity(n);
    for (job, &now) in jobs.iter().zip(nows) {
        let run_at = job.run_at.unwrap_or(now);
        queues.push(job.queue.as_str());
        kinds.push(job.kind.as_str());
        args.push(&job.args);
        priorities.push(job.priority);
        states.push(waiting_state(run_at, now).as_str());
        run_ats.push(run_at);
        max_attempts.push(job.max_attempts);
        tags.push(to_json(&job.tags)?);
        timeouts.push(job.timeout_ms);
        expires.push(job.expires_at);
        backoffs.push(job.backoff.as_ref().map(to_json).transpose()?);
    }
    let stmt = client.statement(SQL).await?;
    let rows = client
        .rows(
            &stmt,
            &[
                &queues,
                &kinds,
                &args,
                &priorities,
                &states,
                &run_ats,
                &max_attempts,
                &tags,
                &timeouts,
                &expires,
                &backoffs,
                &nows,
            ],
        )
        .await?;
    let mut inserted = jobs_from_rows(&rows)?;
    if inserted.len() != n {
        return Err(StoreError::Backend(format!(
            "inserting {n} jobs returned {} rows",
            inserted.len()
        )));
    }
    inserted.sort_by_key(|j| j.id);
    Ok(inserted)
}

/// Inserts one job with a `unique_key`, or returns the unfinished job that holds
/// the key. `ON CONFLICT … DO NOTHING` names the partial unique index, so a
/// concurrent insert of the same key waits for the other transaction instead of
/// failing; the second branch finds the holder (including one inserted earlier
/// in this same transaction).
async fn insert_keyed(client: &impl Conn, job: &NewJob, now: Timestamp) -> Result<Inserted> {
    const SQL: &str = concat!(
        "WITH inserted AS (
            INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                              unique_key, timeout_ms, expires_at, backoff, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT (unique_key)
                WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
                DO NOTHING
            RETURNING *
        )
        SELECT ",
        job_columns!(),
        ", true FROM inserted AS jobs
        UNION ALL
        SELECT ",
        job_columns!(),
        ", false FROM jobs
        WHERE unique_key = $9
          AND state IN ('scheduled', 'available', 'running', 'retryable')
          AND NOT EXISTS (SELECT 1 FROM inserted)"
    );
    let run_at = job.run_at.unwrap_or(now);
    let state = waiting_state(run_at, now).as_str();
    let backoff = job.backoff.as_ref().map(Json);
    let stmt = client.statement(SQL).await?;
    for _ in 0..UNIQUE_RACE_RETRIES {
        let row = client
            .row_opt(
                &stmt,
                &[
                    &job.queue,
                    &job.kind,
                    &job.args,
                    &job.priority,
                    &state,
                    &run_at,
                    &job.max_attempts,
                    &job.tags,
                    &job.unique_key,
                    &job.timeout_ms,
                    &job.expires_at,
                    &backoff,
                    &now,
                ],
            )
            .await?;
        // No row: another transaction committed a job with this key after this
        // statement's snapshot was taken, so neither branch saw it. Again, with a
        // fresh snapshot.
        if let Some(row) = row {
            let created: bool = row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?;
            return Ok(Inserted {
                job: job_from_row(&row)?,
                created,
            });
        }
    }
    Err(StoreError::Unavailable(format!(
        "unique_key {:?} kept changing hands; try again",
        job.unique_key.as_deref().unwrap_or_default()
    )))
}

/// Writes the outcome of a failed attempt of a locked, running `job`.
async fn record_failure(
    client: &impl GenericClient,
    job: &Job,
    failure: Failure<'_>,
) -> Result<Job> {
    const SQL: &str = concat!(
        "UPDATE jobs SET state = $2, run_at = $3, errors = $4, finished_at = $5,
                lease = NULL, lease_expires_at = NULL
         WHERE id = $1
         RETURNING ",
        job_columns!()
    );
    let next = transitions::after_failure(job, failure);
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let row = client
        .query_one(
            &stmt,
            &[
                &job.id.0,
                &next.state.as_str(),
                &next.run_at,
                &Json(&next.errors),
                &next.finished_at,
            ],
        )
        .await
        .map_err(pg_error)?;
    job_from_row(&row)
}

/// Puts a locked, not-running job back in line at `run_at`, giving it one more
/// attempt if it has none left, with new `args` if given.
pub(crate) async fn requeue(
    client: &impl GenericClient,
    job: &Job,
    run_at: Timestamp,
    now: Timestamp,
    args: Option<&Value>,
) -> Result<Job> {
    const SQL: &str = concat!(
        "UPDATE jobs SET state = $2, run_at = $3, finished_at = NULL, cancel_requested = false,
                max_attempts = greatest(max_attempts, attempt + 1), args = coalesce($4, args)
         WHERE id = $1
         RETURNING ",
        job_columns!()
    );
    if job.state == JobState::Running {
        return Err(invalid(
            job,
            "a running job cannot be retried or rescheduled; cancel it first",
        ));
    }
    let state = waiting_state(run_at, now);
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let row = client
        .query_one(&stmt, &[&job.id.0, &state.as_str(), &run_at, &args])
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                invalid(job, "another unfinished job holds its unique_key")
            } else {
                pg_error(e)
            }
        })?;
    job_from_row(&row)
}

/// Cancels a locked job: at once if it is waiting, by request if it is running
/// (its worker learns of it from its next heartbeat or ack answer and stops).
pub(crate) async fn cancel_locked(
    client: &impl GenericClient,
    job: &Job,
    now: Timestamp,
) -> Result<Job> {
    const REQUEST: &str = concat!(
        "UPDATE jobs SET cancel_requested = true WHERE id = $1 RETURNING ",
        job_columns!()
    );
    const CANCEL: &str = concat!(
        "UPDATE jobs SET state = 'cancelled', finished_at = $2 WHERE id = $1 RETURNING ",
        job_columns!()
    );
    if job.state.is_finished() {
        return Err(invalid(job, "only unfinished jobs can be cancelled"));
    }
    let row = if job.state == JobState::Running {
        let stmt = client.prepare_cached(REQUEST).await.map_err(pg_error)?;
        client.query_one(&stmt, &[&job.id.0]).await
    } else {
        let stmt = client.prepare_cached(CANCEL).await.map_err(pg_error)?;
        client.query_one(&stmt, &[&job.id.0, &now]).await
    }
    .map_err(pg_error)?;
    job_from_row(&row)
}

/// Runs of a batch ack that PostgreSQL may roll back as a deadlock victim
/// before the error is returned (see `jobs_complete_many`).
const DEADLOCK_ATTEMPTS: u32 = 3;
