//! The worker registry: heartbeats register and refresh workers, the list
//! counts the jobs each runs, and pruning forgets silent workers and ends their
//! leases.

use chrono::{DateTime, Utc};
use grafter_core::{Timestamp, Worker, WorkerRegistration};
use grafter_store::{Result, StoreError, WorkerBeat, WorkersPrune};
use tokio_postgres::Row;

use crate::db::Db;
use crate::error::pg_error;

/// PostgreSQL's earliest timestamp, 4714-11-24 00:00:00 BC UTC, in Unix seconds.
const PG_EARLIEST_SECS: i64 = -210_866_803_200;

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

impl Db {
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
