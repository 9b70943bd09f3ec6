//! Live events (docs/events.md): watching a job or a batch and reading its
//! logged events. The logs are written by triggers (migrations 14 and 19) in
//! the transaction of each change, which also notify the events channel with
//! `job:<id>` or `batch:<id>`; the listener (`notifier.rs`) wakes this node's
//! streams of that job or batch.

use grafter_core::{batch, BatchCounts, BatchId, BatchState, JobId, JobState};
use grafter_store::{
    BatchEvent, BatchEventKind, BatchEventsList, JobEvent, JobEventKind, JobEventsList, Result,
    StoreError, WatchedBatch, WatchedJob,
};

use crate::batch_row::{batch_columns, batch_from_row, AFTER_BATCH_COLUMNS};
use crate::db::Db;
use crate::error::pg_error;
use crate::row::{job_columns, job_from_row, opt_json, AFTER_JOB_COLUMNS};

impl Db {
    /// Marks an unfinished job watched (committed before anything is read),
    /// then reads it and its latest event in one statement, so both are of
    /// the same snapshot.
    ///
    /// Marking it writes its row, and a fetch that looks meanwhile skips the
    /// row (`FOR UPDATE SKIP LOCKED`). Watching follows enqueueing at once
    /// (enqueue, then wait for the result), just as the enqueue's wake-up
    /// sends the waiting fetches of its queue to look: they would skip the
    /// new job, find nothing and wait again, for as long as their wait.
    /// So marking an `available` job also notifies its queue, as an
    /// application's enqueue does (no sending node: every node's fetches,
    /// this one's included, look again), delivered when the mark commits
    /// and the row is free. A job marked already, or in any other state, is
    /// not written again or not fetchable, and sends nothing.
    pub(crate) async fn job_watch(&self, id: JobId) -> Result<Option<WatchedJob>> {
        const WATCH: &str = "WITH marked AS ( \
                 UPDATE jobs SET watched = true WHERE id = $1 AND NOT watched \
                 AND state NOT IN ('completed', 'dead', 'cancelled', 'expired') \
                 RETURNING queue, state) \
             SELECT pg_notify($2, E'\\n' || queue) FROM marked WHERE state = 'available'";
        const READ: &str = concat!(
            "SELECT ",
            job_columns!(),
            ", (SELECT coalesce(max(seq), 0) FROM job_events WHERE job_id = $1) \
             FROM jobs WHERE id = $1"
        );
        let client = self.client().await?;
        let watch = client.prepare_cached(WATCH).await.map_err(pg_error)?;
        client
            .execute(&watch, &[&id.0, &self.channel])
            .await
            .map_err(pg_error)?;
        let read = client.prepare_cached(READ).await.map_err(pg_error)?;
        let Some(row) = client.query_opt(&read, &[&id.0]).await.map_err(pg_error)? else {
            return Ok(None);
        };
        Ok(Some(WatchedJob {
            job: job_from_row(&row)?,
            last_event: row.try_get(AFTER_JOB_COLUMNS).map_err(pg_error)?,
        }))
    }

    pub(crate) async fn job_events_list(&self, params: &JobEventsList) -> Result<Vec<JobEvent>> {
        const SQL: &str = "SELECT seq, job_id, at, kind, state, attempt, progress \
             FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&stmt, &[&params.job_id.0, &params.after, &limit])
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get(3).map_err(pg_error)?;
                let state: Option<String> = row.try_get(4).map_err(pg_error)?;
                Ok(JobEvent {
                    seq: row.try_get(0).map_err(pg_error)?,
                    job_id: JobId(row.try_get(1).map_err(pg_error)?),
                    at: row.try_get(2).map_err(pg_error)?,
                    kind: JobEventKind::parse(&kind).unwrap_or(JobEventKind::State),
                    state: state.and_then(|s| s.parse::<JobState>().ok()),
                    attempt: row.try_get(5).map_err(pg_error)?,
                    progress: opt_json(row, 6)?,
                })
            })
            .collect()
    }

    /// Marks an unfinished batch watched (committed before anything is
    /// read), then reads it and its latest event in one statement, so both
    /// are of the same snapshot.
    pub(crate) async fn batch_watch(&self, id: BatchId) -> Result<Option<WatchedBatch>> {
        const WATCH: &str = "UPDATE batches SET watched = true WHERE id = $1 AND NOT watched \
             AND finished_at IS NULL";
        const READ: &str = concat!(
            "SELECT ",
            batch_columns!(),
            ", (SELECT coalesce(max(seq), 0) FROM batch_events WHERE batch_id = $1) \
             FROM batches WHERE id = $1"
        );
        let client = self.client().await?;
        let watch = client.prepare_cached(WATCH).await.map_err(pg_error)?;
        client.execute(&watch, &[&id.0]).await.map_err(pg_error)?;
        let read = client.prepare_cached(READ).await.map_err(pg_error)?;
        let Some(row) = client.query_opt(&read, &[&id.0]).await.map_err(pg_error)? else {
            return Ok(None);
        };
        Ok(Some(WatchedBatch {
            batch: batch_from_row(&row)?,
            last_event: row.try_get(AFTER_BATCH_COLUMNS).map_err(pg_error)?,
        }))
    }

    pub(crate) async fn batch_events_list(
        &self,
        params: &BatchEventsList,
    ) -> Result<Vec<BatchEvent>> {
        const SQL: &str = "SELECT seq, batch_id, at, kind, state, open, finished, total, \
             completed, dead, cancelled_jobs, expired, progress FROM batch_events \
             WHERE batch_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&stmt, &[&params.batch_id.0, &params.after, &limit])
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let get_i64 = |i: usize| row.try_get::<_, i64>(i).map_err(pg_error);
                let kind: String = row.try_get(3).map_err(pg_error)?;
                let state: String = row.try_get(4).map_err(pg_error)?;
                let state: BatchState = state
                    .parse()
                    .map_err(|e| StoreError::Backend(format!("reading a batch event: {e}")))?;
                let total = get_i64(7)?;
                let counts = BatchCounts::with_finished(
                    total,
                    get_i64(8)?,
                    get_i64(9)?,
                    get_i64(10)?,
                    get_i64(11)?,
                );
                Ok(BatchEvent {
                    seq: get_i64(0)?,
                    batch_id: BatchId(get_i64(1)?),
                    at: row.try_get(2).map_err(pg_error)?,
                    kind: BatchEventKind::parse(&kind).unwrap_or(BatchEventKind::State),
                    state,
                    open: row.try_get(5).map_err(pg_error)?,
                    finished: row.try_get(6).map_err(pg_error)?,
                    counts,
                    progress: batch::progress(get_i64(12)?, total),
                })
            })
            .collect()
    }
}
