//! Flow control: admission to a limited queue (called by the fetch in
//! `leasing.rs`), the node's view of which queues are limited, and what a
//! queue's limits are using.
//!
//! Admission runs in one transaction that first takes the queue's advisory
//! lock (the same one a push queue's running limit takes), so every limited
//! fetch of a queue, on every node, counts and leases in turn: the count of
//! running jobs it reads (a fresh snapshot per statement, after the lock) is
//! exact, and so are the starts in the rate window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use grafter_core::limits::PartitionBy;
use grafter_core::{time, JobId, LeasedJob, QueueLimits, Timestamp};
use grafter_store::admission::{Admission, Offer, STARTS_KEPT_PAST_WINDOW};
use grafter_store::{JobsFetch, LimitUsage, LimitUsageQuery, Limited, Result, StoreError};
use tokio_postgres::types::{Json, ToSql};
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::error::{pg_error, pool_error};
use crate::leasing::{
    count_moves, lease_picked, lease_seed, lease_set, leased_from_rows, Budget, MAX_TIMEOUT_MS,
    RUNNING_LIMIT_LOCK_CLASS,
};
use crate::row::{args_size, job_columns, limit, AFTER_JOB_COLUMNS};

/// How often each node re-reads which queues are limited, besides when a
/// fetch comes back short.
const REREAD_EVERY: Duration = Duration::from_secs(1);

/// A job's partition in SQL: parameter `$kind` says which kind (0 the
/// queue, 1 the `partition` column, 2 the args path `$path`: the string
/// there, other values as PostgreSQL prints their JSON, nothing or null
/// the empty partition), to its first 255 characters
/// (`MAX_PARTITION_CHARS`; `left` counts characters).
macro_rules! partition_key {
    () => {
        partition_key!("$2", "$3")
    };
    ($kind:literal, $path:literal) => {
        concat!(
            "left(CASE ",
            $kind,
            "::int WHEN 1 THEN coalesce(jobs.partition, '')
                      WHEN 2 THEN coalesce(jobs.args #>> ",
            $path,
            "::text[], '')
                      ELSE '' END, 255)"
        )
    };
}

/// The kind and path parameters of [`partition_key!`].
fn partition_params(by: &PartitionBy) -> (i32, Vec<String>) {
    match by {
        PartitionBy::Queue => (0, Vec::new()),
        PartitionBy::Field => (1, Vec::new()),
        PartitionBy::Args(path) => (2, path.clone()),
    }
}

async fn settings(client: &impl GenericClient, queue: &str) -> Result<(bool, Option<QueueLimits>)> {
    let stmt = client
        .prepare_cached("SELECT paused, limits FROM queues WHERE name = $1")
        .await
        .map_err(pg_error)?;
    let Some(row) = client.query_opt(&stmt, &[&queue]).await.map_err(pg_error)? else {
        return Ok((false, None));
    };
    let limits: Option<Json<QueueLimits>> = row.try_get(1).map_err(pg_error)?;
    Ok((row.try_get(0).map_err(pg_error)?, limits.map(|Json(l)| l)))
}

/// Running jobs of `queue` per partition (through `jobs_leases`: only
/// running jobs are in it, as many as the workers hold).
async fn running(
    client: &impl GenericClient,
    queue: &str,
    by: &PartitionBy,
) -> Result<HashMap<String, u64>> {
    const SQL: &str = concat!(
        "SELECT ",
        partition_key!(),
        ", count(*) FROM jobs WHERE state = 'running' AND queue = $1 GROUP BY 1"
    );
    let (kind, path) = partition_params(by);
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let rows = client
        .query(&stmt, &[&queue, &kind, &path])
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let n: i64 = row.try_get(1).map_err(pg_error)?;
            Ok((row.try_get(0).map_err(pg_error)?, n.max(0) as u64))
        })
        .collect()
}

/// The partition of job `id` of `queue` by the expression admission counts
/// by ([`partition_key!`] on its row); `None` if no such job is on `queue`.
async fn partition_of_job(
    client: &impl GenericClient,
    queue: &str,
    id: JobId,
    by: &PartitionBy,
) -> Result<Option<String>> {
    const SQL: &str = concat!(
        "SELECT ",
        partition_key!(),
        " FROM jobs WHERE id = $1 AND queue = $4"
    );
    let (kind, path) = partition_params(by);
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    client
        .query_opt(&stmt, &[&id.0, &kind, &path, &queue])
        .await
        .map_err(pg_error)?
        .map(|row| row.try_get(0).map_err(pg_error))
        .transpose()
}

/// Starts of `queue` per partition after `cut`: (count, the N-th newest
/// start where N is the rate's count).
async fn started(
    client: &impl GenericClient,
    queue: &str,
    cut: Timestamp,
    count: i64,
) -> Result<HashMap<String, (u64, Option<Timestamp>)>> {
    const SQL: &str = "
        SELECT partition, count(*),
               (SELECT s2.started_at FROM queue_starts AS s2
                WHERE s2.queue = $1 AND s2.partition = s.partition AND s2.started_at > $2
                ORDER BY s2.started_at DESC LIMIT 1 OFFSET $3::bigint - 1)
        FROM queue_starts AS s WHERE queue = $1 AND started_at > $2 GROUP BY partition";
    let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
    let rows = client
        .query(&stmt, &[&queue, &cut, &count])
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let n: i64 = row.try_get(1).map_err(pg_error)?;
            Ok((
                row.try_get(0).map_err(pg_error)?,
                (n.max(0) as u64, row.try_get(2).map_err(pg_error)?),
            ))
        })
        .collect()
}

/// Whether `limits` are a concurrency without a rate (for the queue or per
/// partition): the shape the one-trip admission handles.
fn one_trip_shape(limits: &QueueLimits) -> bool {
    limits.concurrency.is_some() && limits.rate.is_none()
}

/// What one trip of [`Db::admit_in_one_trip`] did.
enum Trip {
    /// The queue's limits are no longer the shape it was sent for (or the
    /// queue is paused): nothing leased, the general admission decides.
    Reshaped,
    /// Leased these; `more` when a partition filled up in the middle of the
    /// look, so another look without it may find more.
    Leased { jobs: Vec<LeasedJob>, more: bool },
}

impl Db {
    /// Records the shape of `queue`'s limits as last read.
    pub(crate) fn seen(&self, queue: &str, limits: Option<&QueueLimits>) {
        let mut known = self
            .one_trip_shapes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match limits.filter(|l| one_trip_shape(l)) {
            Some(limits) => known.insert(queue.to_owned(), limits.clone()),
            None => known.remove(queue),
        };
    }

    fn seen_one_trip_shape(&self, queue: &str) -> Option<QueueLimits> {
        self.one_trip_shapes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(queue)
            .cloned()
    }

    /// Leases jobs of one limited queue within its limits; `None` when it
    /// turns out to have none.
    ///
    /// A concurrency without a rate (for the queue or per partition: the
    /// common "at most N at once") is admitted in one round trip
    /// ([`Db::admit_in_one_trip`]), again while a partition filled up in
    /// the middle of a look; any other shape, or limits changed since this
    /// node saw them, by the general admission ([`Db::admit_generally`]).
    pub(crate) async fn admit(
        &self,
        params: &JobsFetch,
        queue: &str,
        budget: &Budget,
    ) -> Result<Option<Vec<LeasedJob>>> {
        if let Some(seen) = self.seen_one_trip_shape(queue) {
            let mut budget = budget.clone();
            let mut leased = Vec::new();
            // Each trip that says `more` filled at least one more partition,
            // so this ends; usually after one trip.
            loop {
                match self
                    .admit_in_one_trip(params, queue, &budget, &seen)
                    .await?
                {
                    Trip::Reshaped if leased.is_empty() => break,
                    Trip::Reshaped => return Ok(Some(leased)),
                    Trip::Leased { jobs, more } => {
                        budget.spend(&jobs);
                        leased.extend(jobs);
                        if !more || budget.max == 0 {
                            return Ok(Some(leased));
                        }
                    }
                }
            }
        }
        self.admit_generally(params, queue, budget).await
    }

    /// The admission of a concurrency without a rate, in one round trip:
    /// `BEGIN`, the queue's lock, one statement and `COMMIT`, sent together
    /// (pipelined). The server runs them in order, so the statement's
    /// snapshot is taken after the lock is granted (it sees every lease the
    /// previous holder committed), and the lock is held only while the
    /// server runs the statement and the commit, never across a round trip.
    ///
    /// The statement does what [`Admission`] does for this shape, in SQL: it
    /// reads the limits (after the lock, so fresh; leasing nothing unless
    /// they still have the shape and `partition_by` of `seen`), counts the running
    /// jobs per partition, looks at the first available jobs in hand-out
    /// order outside the full partitions, admits each while its partition
    /// has room, then the byte budget, and leases them. Its last columns
    /// tell whether the shape held and whether to look again (a partition
    /// filled up in the middle of a look that found all it asked for).
    ///
    /// A limit on the whole queue has a statement of its own: one count of
    /// the running jobs and a look that stops at the room left, with nothing
    /// to rank, so each job looked at costs what it costs an unlimited fetch.
    ///
    /// Nothing in the partitioned one compares each row looked at with each
    /// partition: the look leaves out the full partitions with `NOT IN` over a subquery,
    /// which PostgreSQL checks through a hash table (`<> ALL` over an array
    /// compares each row with every full partition: with 950 of 1,000
    /// partitions full, a look took 450 ms instead of 55), and a candidate's
    /// running count is read from one JSON object of them all (joined to the
    /// running counts instead, the plan chosen in the benchmark was a nested
    /// loop: 300 candidates × 1,000 partitions, 50 ms).
    async fn admit_in_one_trip(
        &self,
        params: &JobsFetch,
        queue: &str,
        budget: &Budget,
        seen: &QueueLimits,
    ) -> Result<Trip> {
        // $1 queue, $2 now, $3 max, $4 lease end, $5 worker, $6 timeout
        // clamp, $7 byte budget, $8 a push queue's running limit, $9 the
        // `partition_by` expected, $10 and $11 its partition_key! kind and
        // path, $12 whether the first job is leased whatever its size, $13
        // the lease seed.
        const SQL: &str = concat!(
            "WITH lim AS (
                SELECT (limits ->> 'concurrency')::bigint AS n FROM queues
                WHERE name = $1 AND NOT paused AND limits ? 'concurrency' AND NOT limits ? 'rate'
                  AND (limits ->> 'partition_by') IS NOT DISTINCT FROM $9::text
            ), running AS (
                SELECT ",
            partition_key!("$10", "$11"),
            " AS partition, count(*) AS n
                FROM jobs WHERE state = 'running' AND queue = $1 GROUP BY 1
            ), busy AS (
                SELECT coalesce(jsonb_object_agg(partition, n), '{}') AS per,
                       coalesce(sum(n), 0)::bigint AS total
                FROM running
            ), room AS (
                SELECT n AS each,
                       least($3::bigint, greatest($8::bigint - (SELECT total FROM busy), 0)) AS most
                FROM lim
            ), look AS (
                SELECT id, priority, run_at, ",
            args_size!(),
            " AS size, ",
            partition_key!("$10", "$11"),
            " AS partition
                FROM jobs
                WHERE state = 'available' AND queue = $1 AND (expires_at IS NULL OR expires_at > $2)
                  AND ",
            partition_key!("$10", "$11"),
            " NOT IN (SELECT r.partition FROM running AS r, room WHERE r.n >= room.each)
                ORDER BY priority, run_at, id
                LIMIT coalesce((SELECT most FROM room), 0)
                FOR UPDATE SKIP LOCKED
            ), ranked AS (
                SELECT id, priority, run_at, size,
                       coalesce(((SELECT per FROM busy) ->> partition)::bigint, 0)
                       + row_number() OVER (PARTITION BY partition ORDER BY priority, run_at, id) AS nth
                FROM look
            ), admitted AS (
                SELECT id, priority, run_at, size FROM ranked WHERE nth <= (SELECT each FROM room)
            ), ",
            lease_picked!("admitted", "$12", "$13"),
            "
            SELECT leased.*, summary.* FROM (
                SELECT EXISTS (SELECT 1 FROM room) AS shaped,
                       coalesce((SELECT count(*) FROM look) = (SELECT most FROM room)
                                AND EXISTS (SELECT 1 FROM ranked WHERE nth > (SELECT each FROM room))
                                AND (SELECT count(*) FROM picked) = (SELECT count(*) FROM admitted),
                                false) AS more
            ) AS summary LEFT JOIN leased ON true"
        );
        // The same admission for a limit on the whole queue (no partitions):
        // the running jobs are only counted, the look stops at the room left,
        // and nothing is ranked, so a job looked at costs what it costs an
        // unlimited fetch. $1 to $8 as above, $9 whether the first job is
        // leased whatever its size, $10 the lease seed.
        const QUEUE_WIDE_SQL: &str = concat!(
            "WITH room AS (
                SELECT least($3::bigint,
                             greatest(least($8::bigint, (limits ->> 'concurrency')::bigint)
                                      - (SELECT count(*) FROM jobs WHERE state = 'running' AND queue = $1),
                                      0)) AS most
                FROM queues
                WHERE name = $1 AND NOT paused AND limits ? 'concurrency' AND NOT limits ? 'rate'
                  AND (limits ->> 'partition_by') IS NULL
            ), look AS (
                SELECT id, priority, run_at, ",
            args_size!(),
            " AS size
                FROM jobs
                WHERE state = 'available' AND queue = $1 AND (expires_at IS NULL OR expires_at > $2)
                ORDER BY priority, run_at, id
                LIMIT coalesce((SELECT most FROM room), 0)
                FOR UPDATE SKIP LOCKED
            ), ",
            lease_picked!("look", "$9", "$10"),
            "
            SELECT leased.*, summary.* FROM (
                SELECT EXISTS (SELECT 1 FROM room) AS shaped, false AS more
            ) AS summary LEFT JOIN leased ON true"
        );
        let client = self.client().await?;
        let lock = client
            .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .await
            .map_err(pg_error)?;
        let key = format!("{}\n{queue}", self.lock_scope);
        let lock_args: [&(dyn ToSql + Sync); 2] = [&RUNNING_LIMIT_LOCK_CLASS, &key];
        let by = seen.partition_by();
        let (kind, path) = partition_params(&by);
        let lease_until = time::after(params.now, params.lease_duration);
        let cap = params.running_limit.map_or(i64::MAX, limit);
        let (max, bytes) = (limit(budget.max), limit(budget.bytes));
        let seed = lease_seed();
        let common: [&(dyn ToSql + Sync); 8] = [
            &queue,
            &params.now,
            &max,
            &lease_until,
            &params.worker_id,
            &MAX_TIMEOUT_MS,
            &bytes,
            &cap,
        ];
        let (stmt, args): (_, Vec<&(dyn ToSql + Sync)>) = if by == PartitionBy::Queue {
            let stmt = client.prepare_cached(QUEUE_WIDE_SQL).await;
            (stmt, [&common[..], &[&budget.first_free, &seed]].concat())
        } else {
            let stmt = client.prepare_cached(SQL).await;
            let rest: [&(dyn ToSql + Sync); 5] =
                [&seen.partition_by, &kind, &path, &budget.first_free, &seed];
            (stmt, [&common[..], &rest].concat())
        };
        let stmt = stmt.map_err(pg_error)?;
        // Sent in this order on the first poll (join! polls in order); a
        // failed lock or statement turns the COMMIT into a rollback, and the
        // connection goes back to the pool outside a transaction either way.
        let (began, locked, rows, committed) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.execute(&lock, &lock_args),
            client.query(&stmt, &args[..]),
            client.batch_execute("COMMIT"),
        );
        began.map_err(pg_error)?;
        locked.map_err(pg_error)?;
        let rows = rows.map_err(pg_error)?;
        committed.map_err(pg_error)?;
        let Some(summary) = rows.first() else {
            return Err(StoreError::Backend(
                "the admission answered no summary row".into(),
            ));
        };
        if !summary
            .try_get::<_, bool>(AFTER_JOB_COLUMNS + 1)
            .map_err(pg_error)?
        {
            return Ok(Trip::Reshaped);
        }
        let more = summary
            .try_get::<_, bool>(AFTER_JOB_COLUMNS + 2)
            .map_err(pg_error)?;
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|row| matches!(row.try_get::<_, Option<i64>>(0), Ok(Some(_))))
            .collect();
        Ok(Trip::Leased {
            jobs: leased_from_rows(&rows)?,
            more,
        })
    }

    /// Leases jobs of one limited queue within limits of any shape, in a
    /// transaction holding the queue's lock: reads the limits, counts the
    /// running jobs and the rate window's starts per partition, then looks
    /// at candidates with [`Admission`] and leases what it admits.
    async fn admit_generally(
        &self,
        params: &JobsFetch,
        queue: &str,
        budget: &Budget,
    ) -> Result<Option<Vec<LeasedJob>>> {
        // The partitions and ids left out are checked through a hash table
        // (`NOT IN` over a subquery), not compared one by one (`<> ALL`):
        // see `admit_in_one_trip`.
        const LOOK: &str = concat!(
            "SELECT id, ",
            partition_key!(),
            ", ",
            args_size!(),
            " FROM jobs
            WHERE state = 'available' AND queue = $1 AND (expires_at IS NULL OR expires_at > $4)
              AND ",
            partition_key!(),
            " NOT IN (SELECT unnest($5::text[])) AND id NOT IN (SELECT unnest($6::bigint[]))
            ORDER BY priority, run_at, id
            LIMIT $7
            FOR UPDATE SKIP LOCKED"
        );
        const LEASE: &str = concat!(
            "WITH leased AS (
                UPDATE jobs SET ",
            lease_set!("$2", "$3", "$4", "$5", "$6"),
            " WHERE jobs.id = ANY($1) AND jobs.state = 'available'
                RETURNING ",
            job_columns!(),
            ", jobs.lease
            ), ",
            count_moves!("leased", "available", "running"),
            " SELECT * FROM leased"
        );
        const LOG: &str = "INSERT INTO queue_starts (queue, partition, started_at)
                           SELECT $1, p, $2 FROM unnest($3::text[]) AS p";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let key = format!("{}\n{queue}", self.lock_scope);
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .await
            .map_err(pg_error)?;
        tx.execute(&lock, &[&RUNNING_LIMIT_LOCK_CLASS, &key])
            .await
            .map_err(pg_error)?;
        let (paused, limits) = settings(&tx, queue).await?;
        self.seen(queue, limits.as_ref());
        let Some(limits) = limits else {
            self.limited.set(queue, false);
            return Ok(None);
        };
        if paused {
            return Ok(Some(Vec::new()));
        }
        let by = limits.partition_by();
        let (kind, path) = partition_params(&by);
        let running = running(&tx, queue, &by).await?;
        let mut started_now = HashMap::new();
        let mut oldest_start = None;
        if let Some(rate) = limits.rate {
            let cut = time::before(
                params.now,
                Duration::from_millis(rate.period_ms.max(0) as u64),
            );
            let stmt = tx
                .prepare_cached("DELETE FROM queue_starts WHERE queue = $1 AND started_at <= $2")
                .await
                .map_err(pg_error)?;
            let gone = time::before(cut, STARTS_KEPT_PAST_WINDOW);
            tx.execute(&stmt, &[&queue, &gone])
                .await
                .map_err(pg_error)?;
            for (partition, (n, _)) in started(&tx, queue, cut, rate.count).await? {
                started_now.insert(partition, n);
            }
            let stmt = tx
                .prepare_cached(
                    "SELECT min(started_at) FROM queue_starts WHERE queue = $1 AND started_at > $2",
                )
                .await
                .map_err(pg_error)?;
            oldest_start = tx
                .query_one(&stmt, &[&queue, &cut])
                .await
                .map_err(pg_error)?
                .try_get::<_, Option<Timestamp>>(0)
                .map_err(pg_error)?;
        }
        let mut admission = Admission::new(
            limits.clone(),
            &running,
            &started_now,
            (budget.max, budget.bytes, budget.first_free),
            params.running_limit,
        );
        let look = tx.prepare_cached(LOOK).await.map_err(pg_error)?;
        loop {
            let asked = admission.wanted();
            if asked == 0 {
                break;
            }
            let rows = tx
                .query(
                    &look,
                    &[
                        &queue,
                        &kind,
                        &path,
                        &params.now,
                        &admission.full(),
                        &admission.taken_ids(),
                        &limit(asked),
                    ],
                )
                .await
                .map_err(pg_error)?;
            let got = rows.len();
            for row in rows {
                let id: i64 = row.try_get(0).map_err(pg_error)?;
                let partition: String = row.try_get(1).map_err(pg_error)?;
                let size: i32 = row.try_get(2).map_err(pg_error)?;
                if admission.offer(id, &partition, size.max(0) as u64) == Offer::Done {
                    break;
                }
            }
            if !admission.look_again(got, asked) {
                break;
            }
        }
        let ids = admission.taken_ids();
        let mut leased = Vec::new();
        if !ids.is_empty() {
            let lease_until = time::after(params.now, params.lease_duration);
            let stmt = tx.prepare_cached(LEASE).await.map_err(pg_error)?;
            let rows = tx
                .query(
                    &stmt,
                    &[
                        &ids,
                        &params.now,
                        &lease_until,
                        &params.worker_id,
                        &MAX_TIMEOUT_MS,
                        &lease_seed(),
                    ],
                )
                .await
                .map_err(pg_error)?;
            leased = leased_from_rows(&rows)?;
        }
        if let Some(rate) = limits.rate {
            if !ids.is_empty() {
                let partitions: Vec<&str> =
                    admission.taken().iter().map(|(_, p)| p.as_str()).collect();
                let stmt = tx.prepare_cached(LOG).await.map_err(pg_error)?;
                tx.execute(&stmt, &[&queue, &params.now, &partitions])
                    .await
                    .map_err(pg_error)?;
            }
            let reopens = admission.rate_full().then(|| {
                let oldest = oldest_start.unwrap_or(params.now).min(params.now);
                time::after_ms(oldest, rate.period_ms)
            });
            self.limited.set_reopens_at(queue, reopens);
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(Some(leased))
    }

    /// Which of `queues` have limits, read now; recorded in [`Db::limited`].
    pub(crate) async fn limited_among(&self, queues: &[&str]) -> Result<Vec<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT name FROM queues WHERE limits IS NOT NULL AND name = ANY($1)")
            .await
            .map_err(pg_error)?;
        let rows = client.query(&stmt, &[&queues]).await.map_err(pg_error)?;
        let names = rows
            .iter()
            .map(|row| row.try_get::<_, String>(0).map_err(pg_error))
            .collect::<Result<Vec<_>>>()?;
        for name in &names {
            self.limited.set(name, true);
        }
        Ok(names)
    }

    pub(crate) async fn queue_limit_usage(&self, params: &LimitUsageQuery) -> Result<LimitUsage> {
        let client = self.client().await?;
        let (paused, limits) = settings(&client, &params.queue).await?;
        let Some(limits) = limits else {
            return Ok(LimitUsage {
                paused,
                ..LimitUsage::default()
            });
        };
        let by = limits.partition_by();
        let job_partition = match params.job {
            Some(id) => partition_of_job(&client, &params.queue, id, &by).await?,
            None => None,
        };
        let running = running(&client, &params.queue, &by).await?;
        let started = match limits.rate {
            Some(rate) => {
                let cut = time::before(
                    params.now,
                    Duration::from_millis(rate.period_ms.max(0) as u64),
                );
                started(&client, &params.queue, cut, rate.count).await?
            }
            None => HashMap::new(),
        };
        Ok(LimitUsage {
            job_partition,
            ..LimitUsage::of(paused, limits, running, started)
        })
    }
}

/// Re-reads every second which queues are limited, so a limit set through
/// another node reaches this one's fetches and wake-ups.
pub(crate) fn spawn_reread(pool: Pool, limited: Arc<Limited>, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REREAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match reread(&pool).await {
                Ok(names) => limited.replace(names),
                Err(error) => tracing::debug!(%error, "re-reading limited queues failed"),
            }
        }
    });
}

/// The names of every queue with limits.
pub(crate) async fn reread(pool: &Pool) -> Result<Vec<String>> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client
        .prepare_cached("SELECT name FROM queues WHERE limits IS NOT NULL")
        .await
        .map_err(pg_error)?;
    client
        .query(&stmt, &[])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| row.try_get(0).map_err(pg_error))
        .collect()
}
