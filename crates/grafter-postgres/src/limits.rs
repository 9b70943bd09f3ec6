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
use grafter_core::{time, LeasedJob, QueueLimits, Timestamp};
use grafter_store::admission::{Admission, Offer};
use grafter_store::{JobsFetch, LimitUsage, LimitUsageQuery, Limited, Result};
use tokio_postgres::types::{Json, ToSql};
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::error::{pg_error, pool_error};
use crate::leasing::lease_picked;
use crate::leasing::{
    lease_set, leased_from_rows, Budget, MAX_TIMEOUT_MS, RUNNING_LIMIT_LOCK_CLASS,
};
use crate::row::{args_size, job_columns, limit};

/// How often each node re-reads which queues are limited, besides when a
/// fetch comes back short.
const REREAD_EVERY: Duration = Duration::from_secs(1);

/// A job's partition in SQL: `$2` says which kind (0 the queue, 1 the
/// `partition` column, 2 the args path `$3`), computed as
/// `grafter_core::limits::partition_key` does in Rust.
macro_rules! partition_key {
    () => {
        "CASE $2::int WHEN 1 THEN coalesce(jobs.partition, '')
                      WHEN 2 THEN coalesce(jobs.args #>> $3::text[], '')
                      ELSE '' END"
    };
}

/// `$2` and `$3` of [`partition_key!`].
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

/// Whether `limits` are a queue-wide concurrency alone (no rate, no
/// partitions): the shape the one-statement admission handles.
fn concurrency_only(limits: &QueueLimits) -> bool {
    limits.concurrency.is_some() && limits.rate.is_none() && limits.partition_by.is_none()
}

impl Db {
    /// Records the shape of `queue`'s limits as last read.
    pub(crate) fn seen(&self, queue: &str, limits: Option<&QueueLimits>) {
        let mut known = self
            .concurrency_only
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if limits.is_some_and(concurrency_only) {
            known.insert(queue.to_owned());
        } else {
            known.remove(queue);
        }
    }

    fn seen_concurrency_only(&self, queue: &str) -> bool {
        self.concurrency_only
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(queue)
    }

    /// Leases jobs of one limited queue within its limits, in a transaction
    /// holding the queue's lock; `None` when it turns out to have none.
    ///
    /// A queue-wide concurrency alone (the common "at most N at once") is
    /// admitted by one statement after the lock, as a push queue's running
    /// limit is: four round trips, the count of running jobs a subquery.
    /// That statement reads the limits itself (after the lock, so fresh) and
    /// leases nothing unless they still have that shape; then, or for any
    /// other shape, the general admission below runs in the same transaction.
    pub(crate) async fn admit(
        &self,
        params: &JobsFetch,
        queue: &str,
        budget: &Budget,
    ) -> Result<Option<Vec<LeasedJob>>> {
        // $1 queue, $2 now, $3 max, $4 lease end, $5 worker, $6 timeout
        // clamp, $7 byte budget, $8 a push queue's running limit.
        const CONCURRENCY_ONLY: &str = concat!(
            "WITH lim AS (
                SELECT (limits ->> 'concurrency')::bigint AS n FROM queues
                WHERE name = $1 AND NOT paused AND limits ? 'concurrency'
                  AND NOT limits ? 'rate' AND NOT limits ? 'partition_by'
            ), candidates AS (
                SELECT id, priority, run_at, ",
            args_size!(),
            " AS size FROM jobs
                WHERE state = 'available'
                  AND queue = $1
                  AND (expires_at IS NULL OR expires_at > $2)
                ORDER BY priority, run_at, id
                LIMIT least($3, greatest(least(coalesce((SELECT n FROM lim), 0), $8::bigint)
                                         - (SELECT count(*) FROM jobs
                                            WHERE state = 'running' AND queue = $1), 0))
                FOR UPDATE SKIP LOCKED
            ) ",
            lease_picked!()
        );
        const LOOK: &str = concat!(
            "SELECT id, ",
            partition_key!(),
            ", ",
            args_size!(),
            " FROM jobs
            WHERE state = 'available' AND queue = $1 AND (expires_at IS NULL OR expires_at > $4)
              AND ",
            partition_key!(),
            " <> ALL($5::text[]) AND id <> ALL($6::bigint[])
            ORDER BY priority, run_at, id
            LIMIT $7
            FOR UPDATE SKIP LOCKED"
        );
        const LEASE: &str = concat!(
            "UPDATE jobs SET ",
            lease_set!("$2", "$3", "$4", "$5"),
            " WHERE jobs.id = ANY($1) AND jobs.state = 'available'
            RETURNING ",
            job_columns!(),
            ", jobs.lease"
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
        let lock_args: [&(dyn ToSql + Sync); 2] = [&RUNNING_LIMIT_LOCK_CLASS, &key];
        if budget.first_free && self.seen_concurrency_only(queue) {
            // The lock and the statement are sent together (pipelined): the
            // server runs them in order, so the statement's snapshot is
            // taken after the lock is held, and the lock is held for one
            // round trip (the commit's) rather than three.
            let stmt = tx
                .prepare_cached(CONCURRENCY_ONLY)
                .await
                .map_err(pg_error)?;
            let lease_until = time::after(params.now, params.lease_duration);
            let cap = params.running_limit.map_or(i64::MAX, limit);
            let (max, bytes) = (limit(budget.max), limit(budget.bytes));
            let args: [&(dyn ToSql + Sync); 8] = [
                &queue,
                &params.now,
                &max,
                &lease_until,
                &params.worker_id,
                &MAX_TIMEOUT_MS,
                &bytes,
                &cap,
            ];
            let (locked, rows) =
                tokio::join!(tx.execute(&lock, &lock_args), tx.query(&stmt, &args));
            locked.map_err(pg_error)?;
            let rows = rows.map_err(pg_error)?;
            if !rows.is_empty() {
                let leased = leased_from_rows(&rows)?;
                tx.commit().await.map_err(pg_error)?;
                return Ok(Some(leased));
            }
            // Full, paused, or no longer that shape: the general admission
            // tells which.
        } else {
            tx.execute(&lock, &lock_args).await.map_err(pg_error)?;
        }
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
            tx.execute(&stmt, &[&queue, &cut]).await.map_err(pg_error)?;
            for (partition, (n, _)) in started(&tx, queue, cut, rate.count).await? {
                started_now.insert(partition, n);
            }
            let stmt = tx
                .prepare_cached("SELECT min(started_at) FROM queue_starts WHERE queue = $1")
                .await
                .map_err(pg_error)?;
            oldest_start = tx
                .query_one(&stmt, &[&queue])
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
                limits: None,
                partitions: Vec::new(),
            });
        };
        let running = running(&client, &params.queue, &limits.partition_by()).await?;
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
        Ok(LimitUsage::of(paused, limits, running, started))
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
