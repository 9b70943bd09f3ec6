//! Leasing: the fetch, which leases available jobs to a worker, and what a
//! worker does with a lease it holds (complete one job or a batch, fail,
//! heartbeat, release), fenced by the lease token (`lease_fence!`).

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use grafter_core::{time, Job, JobId, JobState, LeasedJob};
use grafter_store::preview::json_len;
use grafter_store::transitions::{self, Failure};
use grafter_store::{
    AckOutcome, JobComplete, JobFail, JobHeartbeat, JobRelease, JobsCompleteMany, JobsFetch,
    Result, StoreError,
};
use tokio_postgres::types::{Json, ToSql};

use crate::db::Db;
use crate::error::{is_deadlock, pg_error};
use crate::jobs::{job_get_on, job_lock};
use crate::row::{args_size, job_columns, job_from_row, limit, AFTER_JOB_COLUMNS};

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

/// The `SET` of every fetch, given the parameters holding now, the lease's
/// end, the worker, the timeout clamp and the fetch's lease seed
/// ([`lease_seed`]).
///
/// Each job's lease token is the first 128 bits of SHA-256 over the seed and
/// the job's id, as 32 hex digits. One seed per statement instead of
/// `gen_random_uuid()` per row: the random draw was a sixth of the fetch's
/// CPU (docs/benchmarks.md, "PostgreSQL cost per job"). The tokens stay
/// unguessable: the seed is 128 bits from a CSPRNG, drawn anew for every
/// fetch and never stored or sent, so knowing the tokens of one's own jobs
/// (even all of one fetch) means finding a SHA-256 preimage to learn the seed
/// behind another job's token; truncation also leaves no length extension.
/// `sha256` is built in (no pgcrypto) and, unlike `md5`, allowed in FIPS mode.
macro_rules! lease_set {
    ($now:literal, $until:literal, $worker:literal, $clamp:literal, $seed:literal) => {
        concat!(
            "state = 'running',
                attempt = attempt + 1,
                lease = left(encode(sha256(",
            $seed,
            "::bytea || int8send(id)), 'hex'), 32),
                lease_expires_at = CASE WHEN timeout_ms IS NULL THEN ",
            $until,
            "::timestamptz
                    ELSE least(",
            $until,
            "::timestamptz, ",
            $now,
            "::timestamptz + greatest(least(timeout_ms, ",
            $clamp,
            "), 0) * interval '1 millisecond') END,
                worker_id = ",
            $worker,
            ",
                attempted_at = ",
            $now,
            ",
                progress = NULL"
        )
    };
}
pub(crate) use lease_set;

/// A fresh seed for one fetch's lease tokens (see `lease_set!`): 128 bits
/// from `rand`'s thread generator, a CSPRNG seeded from the operating system.
pub(crate) fn lease_seed() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

/// The second half of every fetch statement, as CTEs: of the rows CTE
/// `$from` chose and locked (`id, priority, run_at, size`: the first `max` in
/// hand-out order), picks those whose args, added up in that order, stay
/// within the byte budget $7 (and the first whatever its size when
/// `$first_free` holds: its running total is its own size), leases them as
/// `leased` and counts them (`count_moves!`). Candidates past the budget stay
/// locked, not leased, until the statement ends; other fetches skip them
/// meanwhile. The lease token is derived from the seed `$seed`
/// (`lease_set!`). The lease never outlives the job's own timeout, so a job
/// that overruns it is rescued as "timed out" even if its worker keeps
/// heartbeating. Other parameters: $2 now, $4 lease end, $5 worker, $6 the
/// timeout clamp.
///
/// The picked ids go in as an array so that each row is reached through the
/// primary key. Joined as a table instead, they led the planner to hash the
/// whole jobs table on every fetch (it cannot tell how few rows `picked` holds),
/// a cost that grows with the table.
macro_rules! lease_picked {
    ($from:literal, $first_free:literal, $seed:literal) => {
        concat!(
            "picked AS (
                SELECT id FROM (
                    SELECT id, size, sum(size) OVER (ORDER BY priority, run_at, id
                                                     ROWS UNBOUNDED PRECEDING) AS upto
                    FROM ",
            $from,
            "
                ) AS c
                WHERE upto <= $7 OR (",
            $first_free,
            " AND upto = size)
            ), leased AS (
                UPDATE jobs SET ",
            lease_set!("$2", "$4", "$5", "$6", $seed),
            " WHERE jobs.id = ANY(ARRAY(SELECT id FROM picked))
                RETURNING ",
            job_columns!(),
            ", jobs.lease
            ), ",
            count_moves!("leased", "available", "running")
        )
    };
}
pub(crate) use lease_picked;

/// A CTE of a statement that moves jobs from state `$from` to `$to` (the
/// rows of CTE `$moved`, with their `queue`): counts the moves into the
/// queue counts' deltas, one pair of rows per queue. Only the fetches and the
/// completions make these two moves, and migration 22's row trigger leaves
/// them to the statements, so every statement making them counts them so.
macro_rules! count_moves {
    ($moved:literal, $from:literal, $to:literal) => {
        concat!(
            "counted_moves AS (
                INSERT INTO job_count_deltas (queue, state, n)
                SELECT c.queue, m.state, m.n
                FROM (SELECT queue, count(*) AS n FROM ",
            $moved,
            " GROUP BY queue) AS c
                CROSS JOIN LATERAL (VALUES ('",
            $from,
            "', -c.n), ('",
            $to,
            "', c.n)) AS m(state, n)
            )"
        )
    };
}
pub(crate) use count_moves;

/// CTEs of a statement that completes the running jobs of CTE `$moved` at
/// `$now`: their moves (`count_moves!`) and the attempts they end in that
/// minute's throughput, as migration 4's trigger counted them.
macro_rules! count_completions {
    ($moved:literal, $now:literal) => {
        concat!(
            count_moves!($moved, "running", "completed"),
            ", counted_throughput AS (
                INSERT INTO job_throughput_deltas (minute, completed, failed)
                SELECT date_trunc('minute', ",
            $now,
            "::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*), 0
                FROM ",
            $moved,
            " HAVING count(*) > 0
            )"
        )
    };
}

/// A job's own timeout is clamped to 0 to this (100 years) before it is added
/// to a timestamp, so no stored `timeout_ms` can push a lease out of range.
pub(crate) const MAX_TIMEOUT_MS: i64 = time::MAX_DURATION_MS as i64;

/// First key of the advisory lock that serializes fetches with a running limit
/// on one queue (the second is a hash of the schema and queue). Apart from the
/// migration lock's class. The bytes spell "grfl".
pub(crate) const RUNNING_LIMIT_LOCK_CLASS: i32 = 0x6772_666c;

/// Runs of a batch ack that PostgreSQL may roll back as a deadlock victim
/// before the error is returned (see `jobs_complete_many`).
const DEADLOCK_ATTEMPTS: u32 = 3;

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

/// What a fetch may still lease after the queues it has leased from.
#[derive(Clone)]
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

/// Leased jobs from rows of `job_columns!(), jobs.lease`.
pub(crate) fn leased_from_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<LeasedJob>> {
    rows.iter()
        .map(|row| {
            Ok(LeasedJob {
                job: job_from_row(row)?,
                lease: row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?,
            })
        })
        .collect()
}

impl Db {
    /// Leases jobs: from the fetch's queues without limits with one
    /// statement (which refuses a queue whose row has limits, whatever this
    /// node believes), then from each limited queue under its limits
    /// (`Db::admit`) with what is left of `max` and the byte budget. A fetch
    /// that comes back short asks whether one of its plain queues has
    /// become limited through another node, and admits from those at once.
    pub(crate) async fn jobs_fetch(&self, params: &JobsFetch) -> Result<Vec<LeasedJob>> {
        let mut queues: Vec<&str> = params.queues.iter().map(String::as_str).collect();
        queues.sort_unstable();
        queues.dedup();
        let (mut limited, plain): (Vec<&str>, Vec<&str>) =
            queues.into_iter().partition(|q| self.limited.contains(q));
        let mut leased = if plain.is_empty() {
            Vec::new()
        } else {
            self.plain_fetch(params, &plain).await?
        };
        if leased.len() < params.max && !plain.is_empty() {
            let found = self.limited_among(&plain).await?;
            limited.extend(plain.iter().filter(|q| found.iter().any(|f| f == *q)));
        }
        let mut budget = Budget {
            max: params.max,
            bytes: params.max_bytes,
            first_free: true,
        };
        budget.spend(&leased);
        for queue in limited {
            if budget.max == 0 {
                break;
            }
            let got = match self.admit(params, queue, &budget).await? {
                Some(got) => got,
                // Its limits are gone: an ordinary queue again.
                None => {
                    let rest = JobsFetch {
                        max: budget.max,
                        ..params.clone()
                    };
                    self.plain_fetch(&rest, &[queue]).await?
                }
            };
            budget.spend(&got);
            leased.extend(got);
        }
        // RETURNING gives no order; hand jobs out in the order they were chosen.
        leased.sort_by_key(|l| (l.job.priority, l.job.run_at, l.job.id));
        Ok(leased)
    }

    /// The fetch of queues without limits: one statement (see `jobs_fetch`).
    async fn plain_fetch(&self, params: &JobsFetch, queues: &[&str]) -> Result<Vec<LeasedJob>> {
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
            "WITH candidates AS (
                SELECT id, priority, run_at, ",
            args_size!(),
            " AS size FROM jobs
                WHERE state = 'available'
                  AND queue = $1
                  AND (expires_at IS NULL OR expires_at > $2)
                  AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND (paused OR limits IS NOT NULL))
                ORDER BY priority, run_at, id
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            ), ",
            lease_picked!("candidates", "true", "$8"),
            " SELECT * FROM leased"
        );
        const MANY_QUEUES: &str = concat!(
            "WITH candidates AS (
                SELECT j.* FROM unnest($1::text[]) AS q(name)
                CROSS JOIN LATERAL (
                    SELECT id, priority, run_at, ",
            args_size!(),
            " AS size FROM jobs
                    WHERE state = 'available'
                      AND queue = q.name
                      AND (expires_at IS NULL OR expires_at > $2)
                    ORDER BY priority, run_at, id
                    LIMIT $3
                    FOR UPDATE SKIP LOCKED
                ) AS j
                WHERE NOT EXISTS (SELECT 1 FROM queues WHERE name = q.name AND (paused OR limits IS NOT NULL))
                ORDER BY j.priority, j.run_at, j.id
                LIMIT $3
            ), ",
            lease_picked!("candidates", "true", "$8"),
            " SELECT * FROM leased"
        );
        // With a running limit: the same, leasing no more than keeps the queue's
        // running jobs (on every node) at or under $9. The count is exact because
        // every limited fetch of the queue holds the queue's advisory lock from
        // before this statement (and so before its snapshot) until it commits.
        const ONE_QUEUE_LIMITED: &str = concat!(
            "WITH candidates AS (
                SELECT id, priority, run_at, ",
            args_size!(),
            " AS size FROM jobs
                WHERE state = 'available'
                  AND queue = $1
                  AND (expires_at IS NULL OR expires_at > $2)
                  AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND (paused OR limits IS NOT NULL))
                ORDER BY priority, run_at, id
                LIMIT least($3, greatest($9::bigint - (SELECT count(*) FROM jobs
                                                       WHERE state = 'running' AND queue = $1), 0))
                FOR UPDATE SKIP LOCKED
            ), ",
            lease_picked!("candidates", "true", "$8"),
            " SELECT * FROM leased"
        );
        // A queue named twice would be read twice, and its jobs picked twice:
        // `queues` is deduplicated.
        let mut client = self.client().await?;
        let lease_until = time::after(params.now, params.lease_duration);
        let max = limit(params.max);
        let max_bytes = limit(params.max_bytes);
        let seed = lease_seed();
        let rest: [&(dyn ToSql + Sync); 7] = [
            &params.now,
            &max,
            &lease_until,
            &params.worker_id,
            &MAX_TIMEOUT_MS,
            &max_bytes,
            &seed,
        ];
        let rows = if let (Some(running_limit), [queue]) = (params.running_limit, queues) {
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
        } else if let [queue] = queues {
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
        leased_from_rows(&rows)
    }

    pub(crate) async fn job_complete(&self, params: &JobComplete) -> Result<Job> {
        const SQL: &str = concat!(
            "WITH completed AS (
                UPDATE jobs SET state = 'completed', result = $3, finished_at = $4,
                       lease = NULL, lease_expires_at = NULL
                WHERE ",
            lease_fence!(),
            "
                RETURNING ",
            job_columns!(),
            "), ",
            count_completions!("completed", "$4"),
            " SELECT * FROM completed"
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
    /// fenced as in `lease_fence!`. It counts its moves into the queue counts
    /// and the throughput (`count_completions!`). The statement counts its jobs' moves into
    /// their batches itself, one write of each batch's row (`counted`), with
    /// `grafter.batch_counted` set before any row moves so the per-job row
    /// trigger stands aside (migration 20). A job's share before its ack is
    /// its progress, which the ack leaves as it was, so `RETURNING` reads it.
    /// The setting lasts to the end of the transaction, which is this
    /// statement's own: never run this inside a wider transaction. `DISTINCT ON` keeps the first of repeated
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
    pub(crate) async fn jobs_complete_many(
        &self,
        params: &JobsCompleteMany,
    ) -> Result<Vec<AckOutcome>> {
        const SQL: &str = concat!(
            "WITH input AS (
                SELECT DISTINCT ON (id, lease) id, lease, result, ord
                FROM unnest($1::bigint[], $2::text[], $3::jsonb[]) WITH ORDINALITY
                     AS t(id, lease, result, ord)
                WHERE (SELECT set_config('grafter.batch_counted', 'on', true)) = 'on'
                ORDER BY id, lease, ord
            ), moved AS (
                UPDATE jobs SET state = 'completed', result = input.result, finished_at = $4,
                       lease = NULL, lease_expires_at = NULL
                FROM input
                WHERE jobs.id = ANY($1) AND jobs.id = input.id
                  AND CASE WHEN jobs.state = 'running' THEN jobs.lease END = input.lease
                RETURNING input.ord, jobs.queue, jobs.batch_id,
                          CASE WHEN jobs.batch_id IS NOT NULL
                               THEN grafter_batch_share('running', jobs.progress) END AS share
            ), counted AS (
                UPDATE batches SET completed = completed + moves.jobs,
                                   progress = progress + moves.gain
                FROM (SELECT batch_id, count(*) AS jobs, sum(1000000 - share)::bigint AS gain
                      FROM moved WHERE batch_id IS NOT NULL
                      GROUP BY batch_id ORDER BY batch_id) AS moves
                WHERE batches.id = moves.batch_id
            ), ",
            count_completions!("moved", "$4"),
            " SELECT ord FROM moved"
        );
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
        // Why the others did not apply: rare, so looked up only now. After
        // the commit, so it reads what a caller asking next would see.
        let missed: Vec<i64> = ids
            .iter()
            .zip(&done)
            .filter(|(_, &done)| !done)
            .map(|(&id, _)| id)
            .collect();
        let mut now = HashMap::with_capacity(missed.len());
        if !missed.is_empty() {
            let stmt = client
                .prepare_cached("SELECT id, state, attempt FROM jobs WHERE id = ANY($1)")
                .await
                .map_err(pg_error)?;
            for row in client.query(&stmt, &[&missed]).await.map_err(pg_error)? {
                let id: i64 = row.try_get(0).map_err(pg_error)?;
                let state: String = row.try_get(1).map_err(pg_error)?;
                let state = state
                    .parse::<JobState>()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                now.insert(id, (state, row.try_get(2).map_err(pg_error)?));
            }
        }
        Ok(ids
            .iter()
            .zip(done)
            .map(|(id, done)| {
                if done {
                    AckOutcome::Completed
                } else {
                    AckOutcome::not_completed(now.get(id).copied())
                }
            })
            .collect())
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
                               attempted_at + greatest(least(timeout_ms, $5), 0) * interval '1 millisecond') END,
                progress = coalesce($4::jsonb, progress)
             WHERE ",
            lease_fence!(),
            "
             RETURNING ",
            job_columns!()
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let until = time::after(params.now, params.lease_duration);
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
