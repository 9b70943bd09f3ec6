//! Batches: their rows, and the jobs inserted into them. The counts, progress
//! and settling are kept by the triggers of migrations 15 and 20 (and by the
//! batch ack, `leasing.rs`); this module only creates, adds to, seals,
//! cancels, reads and prunes. Each
//! change locks the batch's row first, as every counted job move does.

use deadpool_postgres::GenericClient;
use grafter_core::{Batch, BatchId, Job, NewJob, Timestamp};
use grafter_store::{
    BatchAdd, BatchChange, BatchCreate, BatchWithJobs, BatchesList, BatchesPrune, Inserted, Result,
    StoreError,
};
use serde_json::Value;

use crate::batch_row::{batch_columns, batch_from_row};
use crate::db::Db;
use crate::dependencies;
use crate::error::pg_error;
use crate::inserts::{created, insert_unkeyed};
use crate::row::{args_bytes, limit, to_json};

/// A callback as stored: its job JSON with the args_bytes the trigger writes.
fn stored_callback(job: Option<&NewJob>) -> Result<Option<Value>> {
    job.map(|job| {
        let mut value = to_json(job)?;
        if let Some(o) = value.as_object_mut() {
            o.insert("args_bytes".into(), args_bytes(&job.args).into());
        }
        Ok(value)
    })
    .transpose()
}

async fn batch_get_on(client: &impl GenericClient, id: BatchId, lock: bool) -> Result<Batch> {
    const GET: &str = concat!("SELECT ", batch_columns!(), " FROM batches WHERE id = $1");
    const LOCK: &str = concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches WHERE id = $1 FOR UPDATE"
    );
    let stmt = client
        .prepare_cached(if lock { LOCK } else { GET })
        .await
        .map_err(pg_error)?;
    let row = client
        .query_opt(&stmt, &[&id.0])
        .await
        .map_err(pg_error)?
        .ok_or(StoreError::BatchNotFound(id))?;
    batch_from_row(&row)
}

fn closed(batch: &Batch, message: &str) -> StoreError {
    StoreError::BatchClosed {
        id: batch.id,
        state: batch.state,
        message: message.to_owned(),
    }
}

/// Inserts `jobs` into the batch (its row locked by this transaction), lists
/// them in `batch_jobs` (the way to a batch's jobs, migration 20) and adds
/// them to its total, sealing it too unless `open`; the batch's trigger
/// settles it if that makes it finished (migration 20).
async fn insert_into(
    tx: &deadpool_postgres::Transaction<'_>,
    id: BatchId,
    jobs: &[NewJob],
    now: Timestamp,
    open: bool,
) -> Result<Vec<Job>> {
    const SQL: &str = "UPDATE batches SET total = total + $2, open = $3 WHERE id = $1";
    const MEMBERS: &str =
        "INSERT INTO batch_jobs (batch_id, job_id) SELECT $1, unnest($2::bigint[])";
    let jobs = if jobs.is_empty() {
        Vec::new()
    } else {
        let mut inserted: Vec<Inserted> =
            insert_unkeyed(tx, jobs, &vec![now; jobs.len()], Some(id))
                .await?
                .into_iter()
                .map(created)
                .collect();
        let ids: Vec<i64> = inserted.iter().map(|i| i.job.id.0).collect();
        let stmt = tx.prepare_cached(MEMBERS).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&id.0, &ids]).await.map_err(pg_error)?;
        dependencies::link(tx, jobs, &mut inserted, now).await?;
        inserted.into_iter().map(|i| i.job).collect()
    };
    let stmt = tx.prepare_cached(SQL).await.map_err(pg_error)?;
    tx.execute(&stmt, &[&id.0, &(jobs.len() as i64), &open])
        .await
        .map_err(pg_error)?;
    Ok(jobs)
}

impl Db {
    pub(crate) async fn batch_create(&self, params: &BatchCreate) -> Result<BatchWithJobs> {
        const SQL: &str =
            "INSERT INTO batches (open, on_success, on_complete, on_failure, created_at)
            VALUES (true, $1, $2, $3, $4) RETURNING id";
        let callbacks = &params.callbacks;
        let on_success = stored_callback(callbacks.on_success.as_ref())?;
        let on_complete = stored_callback(callbacks.on_complete.as_ref())?;
        let on_failure = stored_callback(callbacks.on_failure.as_ref())?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = tx
            .query_one(
                &stmt,
                &[&on_success, &on_complete, &on_failure, &params.now],
            )
            .await
            .map_err(pg_error)?;
        let id = BatchId(row.get(0));
        let jobs = insert_into(&tx, id, &params.jobs, params.now, params.open).await?;
        let batch = batch_get_on(&tx, id, false).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(BatchWithJobs { batch, jobs })
    }

    pub(crate) async fn batch_add(&self, params: &BatchAdd) -> Result<BatchWithJobs> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let batch = batch_get_on(&tx, params.id, true).await?;
        if !batch.open {
            return Err(closed(&batch, "a sealed batch takes no more jobs"));
        }
        let jobs = insert_into(&tx, batch.id, &params.jobs, params.now, true).await?;
        let batch = batch_get_on(&tx, batch.id, false).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(BatchWithJobs { batch, jobs })
    }

    pub(crate) async fn batch_seal(&self, params: &BatchChange) -> Result<Batch> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let batch = batch_get_on(&tx, params.id, true).await?;
        if batch.open {
            insert_into(&tx, batch.id, &[], params.now, false).await?;
        }
        let batch = batch_get_on(&tx, batch.id, false).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(batch)
    }

    pub(crate) async fn batch_cancel(&self, params: &BatchChange) -> Result<Batch> {
        // The waiting jobs are cancelled as job_cancel (jobs.rs) does, all at
        // once and counted by the statement itself in one write of the
        // batch's row (the trigger stands aside: see grafter.batch_counted in
        // migration 15). The batch is flagged cancelled first, so that its
        // trigger, settling it when that closes it or the cancel counts its
        // last jobs, names it so (migration 20).
        const FLAG: &str =
            "UPDATE batches SET cancelled = true, open = false, state = 'cancelled' WHERE id = $1";
        const COUNTED: &str = "SET LOCAL grafter.batch_counted = 'on'";
        const WAITING: &str = "
            WITH waiting AS (
                SELECT id, grafter_batch_share(state, progress) AS share FROM jobs
                WHERE id IN (SELECT job_id FROM batch_jobs WHERE batch_id = $1)
                  AND state IN ('pending', 'scheduled', 'available', 'retryable')
                FOR UPDATE
            ), moved AS (
                UPDATE jobs SET state = 'cancelled', finished_at = $2
                FROM waiting WHERE jobs.id = waiting.id
                RETURNING waiting.share
            )
            UPDATE batches SET
                cancelled_jobs = cancelled_jobs + (SELECT count(*) FROM moved),
                progress = progress + (SELECT coalesce(sum(1000000 - share), 0) FROM moved)::bigint
            WHERE id = $1";
        const UNCOUNTED: &str = "SET LOCAL grafter.batch_counted = 'off'";
        const RUNNING: &str = "UPDATE jobs SET cancel_requested = true
            WHERE id IN (SELECT job_id FROM batch_jobs WHERE batch_id = $1)
              AND state = 'running'";
        // The jobs it changes are locked before the batch's row, in id
        // order, as an ack or a heartbeat locks its job and then (by its
        // trigger) the batch, and a batch ack its jobs by id: taking the
        // batch first deadlocked with the acks of its running jobs.
        const LOCK_JOBS: &str = "
            SELECT id FROM jobs
            WHERE id IN (SELECT job_id FROM batch_jobs WHERE batch_id = $1)
              AND state IN ('pending', 'scheduled', 'available', 'retryable', 'running')
            ORDER BY id FOR UPDATE";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(LOCK_JOBS).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&params.id.0]).await.map_err(pg_error)?;
        let batch = batch_get_on(&tx, params.id, true).await?;
        if batch.finished_at.is_some() {
            return Err(closed(&batch, "a finished batch cannot be cancelled"));
        }
        let stmt = tx.prepare_cached(FLAG).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&batch.id.0]).await.map_err(pg_error)?;
        tx.batch_execute(COUNTED).await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(WAITING).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&batch.id.0, &params.now])
            .await
            .map_err(pg_error)?;
        tx.batch_execute(UNCOUNTED).await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(RUNNING).await.map_err(pg_error)?;
        tx.execute(&stmt, &[&batch.id.0]).await.map_err(pg_error)?;
        let batch = batch_get_on(&tx, batch.id, false).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(batch)
    }

    pub(crate) async fn batch_get(&self, id: BatchId) -> Result<Option<Batch>> {
        match batch_get_on(&self.client().await?, id, false).await {
            Ok(batch) => Ok(Some(batch)),
            Err(StoreError::BatchNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn batches_list(&self, params: &BatchesList) -> Result<Vec<Batch>> {
        const SQL: &str = concat!(
            "SELECT ",
            batch_columns!(),
            " FROM batches WHERE id < $1 ORDER BY id DESC LIMIT $2"
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &params.before.map_or(i64::MAX, |b| b.0),
                    &limit(params.limit),
                ],
            )
            .await
            .map_err(pg_error)?;
        rows.iter().map(batch_from_row).collect()
    }

    pub(crate) async fn batches_prune(&self, params: &BatchesPrune) -> Result<u64> {
        // The batches first, so their jobs' delete trigger has no row to
        // update; rows another pruner holds are skipped.
        const SQL: &str = "
            WITH gone AS (
                DELETE FROM batches
                WHERE id IN (SELECT id FROM batches
                             WHERE finished_at IS NOT NULL AND finished_at < $1
                               AND NOT (has_dependents AND EXISTS (
                                   SELECT 1 FROM batch_dependencies AS d
                                   JOIN jobs AS w ON w.id = d.job_id
                                   WHERE d.batch_id = batches.id
                                     AND w.state NOT IN ('completed', 'dead', 'cancelled',
                                                         'expired')))
                             ORDER BY finished_at
                             LIMIT $2
                             FOR UPDATE SKIP LOCKED)
                RETURNING id
            )
            SELECT id FROM gone";
        const JOBS: &str = "
            WITH members AS (
                DELETE FROM batch_jobs WHERE batch_id = ANY($1::bigint[]) RETURNING job_id
            )
            DELETE FROM jobs WHERE id IN (SELECT job_id FROM members)";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let stmt = tx.prepare_cached(SQL).await.map_err(pg_error)?;
        let ids: Vec<i64> = tx
            .query(&stmt, &[&params.finished_before, &limit(params.limit)])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let stmt = tx.prepare_cached(JOBS).await.map_err(pg_error)?;
        let pruned = tx.execute(&stmt, &[&ids]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(pruned)
    }
}
