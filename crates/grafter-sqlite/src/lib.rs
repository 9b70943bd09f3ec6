//! Grafter's SQLite store.
//!
//! One file, WAL mode, `synchronous=FULL`: a job change acknowledged to a caller
//! is on disk and survives power loss. All writes go through one writer thread
//! that commits whatever has queued up together (group commit), so many
//! concurrent callers share one fsync, and "database is locked" never reaches a
//! caller. Reads use their own connections and are never blocked by the writer.

mod access;
mod batch_row;
mod batches;
mod browse;
mod dependencies;
mod error;
mod events;
mod fetch;
mod inserts;
mod jobs;
mod leadership;
mod leasing;
mod limits;
mod maintenance;
mod migrations;
mod queues;
mod readers;
mod row;
mod schedules;
mod serve_lock;
mod workers;
mod writer;

pub use serve_lock::ServeLock;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use grafter_core::{Batch, BatchId, Job, JobId, LeasedJob, Schedule, SkippedSlots, Worker};
use grafter_store::{
    AckOutcome, BulkOutcome, Dependencies, DueSchedule, Fired, Inserted, JobCancel, JobComplete,
    JobFail, JobHeartbeat, JobPage, JobRelease, JobReschedule, JobRetry, JobsBulk,
    JobsCompleteMany, JobsFetch, JobsInsert, JobsList, JobsPrune, JobsRescue, LeaderAcquire,
    LeaderRelease, LimitUsage, LimitUsageQuery, Limited, MaintenanceBatch, MinuteThroughput,
    QueueInfo, QueueLimitsSet, QueuePause, QueuePush, Result, ScheduleSkipsList, ScheduleWrite,
    Scheduled, SchedulesDue, SchedulesFire, SchedulesList, Store, StoreError, StoreInfo,
    ThroughputRange, Wakeups, WorkerBeat, WorkersPrune,
};
use grafter_store::{
    ApiToken, AuditEntry, AuditList, AuditPrune, AuditRecord, BatchAdd, BatchChange, BatchCreate,
    BatchEvent, BatchEventsList, BatchWithJobs, BatchesList, BatchesPrune, JobEvent, JobEventsList,
    TokenInsert, TokenRevoke, TokenTouch, WatchedBatch, WatchedJob,
};
use rusqlite::Connection;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use error::backend;
use readers::Readers;
use writer::Writer;

/// A [`Store`] on one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    readers: Readers,
    wakeups: Wakeups,
    watchers: Wakeups,
    /// Exact: this process's writer makes every change to the file.
    limited: Arc<Limited>,
    /// Stops the event log's poller (`events.rs`) with the store.
    _background: DropGuard,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    ///
    /// Fails with `Invalid` when the file records a migration this build does
    /// not know: a later release's (upgrade first), or a version no release has.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let writer_path = path.clone();
        let committed = Arc::new(Notify::new());
        let writer_committed = committed.clone();
        let wakeups = Wakeups::default();
        let writer_wakeups = wakeups.clone();
        let writer = tokio::task::spawn_blocking(move || {
            Writer::start(&writer_path, writer_committed, writer_wakeups)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("opening the writer: {e}")))??;
        let limited = Arc::new(Limited::default());
        limited.replace(writer.run(limits::limited_names).await?);
        let readers = Readers::new(path.clone());
        let watchers = Wakeups::default();
        let cancel = CancellationToken::new();
        let last_event = writer.run(events::last_logged).await?;
        events::spawn_poller(
            events::Poller {
                readers: readers.clone(),
                watchers: watchers.clone(),
                committed,
                last: last_event,
            },
            cancel.clone(),
        );
        Ok(SqliteStore {
            readers,
            path,
            writer,
            wakeups,
            watchers,
            limited,
            _background: cancel.drop_guard(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The write connection's durability settings as SQLite reports them, e.g.
    /// `journal_mode=wal, synchronous=FULL`, for benchmarks and diagnostics to print.
    pub async fn durability(&self) -> Result<String> {
        self.writer.run(durability).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn jobs_insert_many(&self, params: JobsInsert) -> Result<Vec<Inserted>> {
        self.writer
            .run(move |conn| inserts::jobs_insert_many(conn, &params))
            .await
    }

    async fn jobs_fetch(&self, params: JobsFetch) -> Result<Vec<LeasedJob>> {
        if params.max == 0 || params.queues.is_empty() {
            return Ok(Vec::new());
        }
        let limited = self.limited.clone();
        self.writer
            .run(move |conn| fetch::jobs_fetch(conn, &params, &limited))
            .await
    }

    async fn job_complete(&self, params: JobComplete) -> Result<Job> {
        self.writer
            .run(move |conn| leasing::job_complete(conn, &params))
            .await
    }

    async fn jobs_complete_many(&self, params: JobsCompleteMany) -> Result<Vec<AckOutcome>> {
        let batch = leasing::ack_batch(&params)?;
        self.writer
            .run(move |conn| leasing::jobs_complete_many(conn, &params, batch.as_deref()))
            .await
    }

    async fn job_fail(&self, params: JobFail) -> Result<Job> {
        self.writer
            .run(move |conn| leasing::job_fail(conn, &params))
            .await
    }

    async fn job_heartbeat(&self, params: JobHeartbeat) -> Result<Job> {
        self.writer
            .run(move |conn| leasing::job_heartbeat(conn, &params))
            .await
    }

    async fn job_release(&self, params: JobRelease) -> Result<Job> {
        self.writer
            .run(move |conn| leasing::job_release(conn, &params))
            .await
    }

    async fn job_get(&self, id: JobId) -> Result<Option<Job>> {
        self.readers.run(move |conn| jobs::job_get(conn, id)).await
    }

    async fn job_dependencies(&self, id: JobId) -> Result<Option<Dependencies>> {
        self.readers
            .run(move |conn| dependencies::dependencies_of(conn, id))
            .await
    }

    async fn jobs_list(&self, params: JobsList) -> Result<JobPage> {
        self.readers
            .run(move |conn| browse::jobs_list(conn, &params))
            .await
    }

    async fn jobs_bulk(&self, params: JobsBulk) -> Result<BulkOutcome> {
        if params.ids.len() > JobsBulk::MAX_IDS {
            return Err(StoreError::Invalid(format!(
                "at most {} jobs per bulk change",
                JobsBulk::MAX_IDS
            )));
        }
        self.writer
            .run(move |conn| browse::jobs_bulk(conn, &params))
            .await
    }

    async fn throughput_list(&self, params: ThroughputRange) -> Result<Vec<MinuteThroughput>> {
        self.readers
            .run(move |conn| browse::throughput_list(conn, &params))
            .await
    }

    async fn job_cancel(&self, params: JobCancel) -> Result<Job> {
        self.writer
            .run(move |conn| jobs::job_cancel(conn, &params))
            .await
    }

    async fn job_retry(&self, params: JobRetry) -> Result<Job> {
        self.writer
            .run(move |conn| jobs::job_retry(conn, &params))
            .await
    }

    async fn job_reschedule(&self, params: JobReschedule) -> Result<Job> {
        self.writer
            .run(move |conn| jobs::job_reschedule(conn, &params))
            .await
    }

    async fn job_delete(&self, id: JobId) -> Result<()> {
        self.writer
            .run(move |conn| jobs::job_delete(conn, id))
            .await
    }

    async fn jobs_schedule(&self, params: MaintenanceBatch) -> Result<Scheduled> {
        self.writer
            .run(move |conn| maintenance::jobs_schedule(conn, &params))
            .await
    }

    async fn jobs_rescue_expired(&self, params: JobsRescue) -> Result<u64> {
        self.writer
            .run(move |conn| maintenance::jobs_rescue_expired(conn, &params))
            .await
    }

    async fn jobs_expire(&self, params: MaintenanceBatch) -> Result<u64> {
        self.writer
            .run(move |conn| maintenance::jobs_expire(conn, &params))
            .await
    }

    async fn jobs_prune(&self, params: JobsPrune) -> Result<u64> {
        self.writer
            .run(move |conn| maintenance::jobs_prune(conn, &params))
            .await
    }

    async fn queue_set_push(&self, params: QueuePush) -> Result<QueueInfo> {
        self.writer
            .run(move |conn| queues::queue_set_push(conn, &params))
            .await
    }

    async fn queue_set_limits(&self, params: QueueLimitsSet) -> Result<QueueInfo> {
        let queue = params.queue.clone();
        let limited = params.limits.is_some();
        let info = self
            .writer
            .run(move |conn| limits::queue_set_limits(conn, &params))
            .await?;
        self.limited.set(&queue, limited);
        Ok(info)
    }

    async fn queue_limit_usage(&self, params: LimitUsageQuery) -> Result<LimitUsage> {
        self.readers
            .run(move |conn| limits::queue_limit_usage(conn, &params))
            .await
    }

    async fn leader_acquire(&self, params: LeaderAcquire) -> Result<bool> {
        self.writer
            .run(move |conn| leadership::leader_acquire(conn, &params))
            .await
    }

    async fn leader_release(&self, params: LeaderRelease) -> Result<()> {
        self.writer
            .run(move |conn| leadership::leader_release(conn, &params))
            .await
    }

    async fn queues_list(&self) -> Result<Vec<QueueInfo>> {
        self.readers.run(queues::queues_list).await
    }

    async fn queue_set_paused(&self, params: QueuePause) -> Result<QueueInfo> {
        self.writer
            .run(move |conn| queues::queue_set_paused(conn, &params))
            .await
    }

    async fn worker_heartbeat(&self, params: WorkerBeat) -> Result<()> {
        self.writer
            .run(move |conn| workers::worker_heartbeat(conn, &params))
            .await
    }

    async fn worker_remove(&self, id: String) -> Result<()> {
        self.writer
            .run(move |conn| workers::worker_remove(conn, &id))
            .await
    }

    async fn workers_list(&self) -> Result<Vec<Worker>> {
        self.readers.run(workers::workers_list).await
    }

    async fn workers_prune(&self, params: WorkersPrune) -> Result<u64> {
        self.writer
            .run(move |conn| workers::workers_prune(conn, &params))
            .await
    }

    async fn schedule_write(&self, params: ScheduleWrite) -> Result<bool> {
        self.writer
            .run(move |conn| schedules::schedule_write(conn, &params))
            .await
    }

    async fn schedule_get(&self, id: String) -> Result<Option<Schedule>> {
        self.readers
            .run(move |conn| schedules::schedule_get(conn, &id))
            .await
    }

    async fn schedules_list(&self, params: SchedulesList) -> Result<Vec<Schedule>> {
        self.readers
            .run(move |conn| schedules::schedules_list(conn, &params))
            .await
    }

    async fn schedule_delete(&self, id: String) -> Result<bool> {
        self.writer
            .run(move |conn| schedules::schedule_delete(conn, &id))
            .await
    }

    async fn schedules_due(&self, params: SchedulesDue) -> Result<Vec<DueSchedule>> {
        self.readers
            .run(move |conn| schedules::schedules_due(conn, &params))
            .await
    }

    async fn schedules_fire(&self, params: SchedulesFire) -> Result<Vec<Fired>> {
        self.writer
            .run(move |conn| schedules::schedules_fire(conn, &params))
            .await
    }

    async fn schedule_skips_list(&self, params: ScheduleSkipsList) -> Result<Vec<SkippedSlots>> {
        self.readers
            .run(move |conn| schedules::schedule_skips_list(conn, &params))
            .await
    }

    async fn job_watch(&self, id: JobId) -> Result<Option<WatchedJob>> {
        self.writer
            .run(move |conn| events::job_watch(conn, id))
            .await
    }

    async fn job_events_list(&self, params: JobEventsList) -> Result<Vec<JobEvent>> {
        self.readers
            .run(move |conn| events::job_events_list(conn, &params))
            .await
    }

    async fn batch_watch(&self, id: BatchId) -> Result<Option<WatchedBatch>> {
        self.writer
            .run(move |conn| events::batch_watch(conn, id))
            .await
    }

    async fn batch_events_list(&self, params: BatchEventsList) -> Result<Vec<BatchEvent>> {
        self.readers
            .run(move |conn| events::batch_events_list(conn, &params))
            .await
    }

    async fn batch_create(&self, params: BatchCreate) -> Result<BatchWithJobs> {
        self.writer
            .run(move |conn| batches::batch_create(conn, &params))
            .await
    }

    async fn batch_add(&self, params: BatchAdd) -> Result<BatchWithJobs> {
        self.writer
            .run(move |conn| batches::batch_add(conn, &params))
            .await
    }

    async fn batch_seal(&self, params: BatchChange) -> Result<Batch> {
        self.writer
            .run(move |conn| batches::batch_seal(conn, &params))
            .await
    }

    async fn batch_cancel(&self, params: BatchChange) -> Result<Batch> {
        self.writer
            .run(move |conn| batches::batch_cancel(conn, &params))
            .await
    }

    async fn batch_get(&self, id: BatchId) -> Result<Option<Batch>> {
        self.readers
            .run(move |conn| batches::batch_get(conn, id))
            .await
    }

    async fn batches_list(&self, params: BatchesList) -> Result<Vec<Batch>> {
        self.readers
            .run(move |conn| batches::batches_list(conn, &params))
            .await
    }

    async fn batches_prune(&self, params: BatchesPrune) -> Result<u64> {
        self.writer
            .run(move |conn| batches::batches_prune(conn, &params))
            .await
    }

    async fn jobs_prunable_count(&self, params: JobsPrune) -> Result<u64> {
        self.readers
            .run(move |conn| maintenance::jobs_prunable_count(conn, &params))
            .await
    }

    async fn store_info(&self) -> Result<StoreInfo> {
        self.readers
            .run(|conn| {
                Ok(StoreInfo {
                    kind: "sqlite",
                    schema_version: migrations::schema_version(conn)?,
                    leaders: leadership::leaders_list(conn)?,
                })
            })
            .await
    }

    async fn token_insert(&self, params: TokenInsert) -> Result<()> {
        self.writer
            .run(move |conn| access::token_insert(conn, &params))
            .await
    }

    async fn token_by_secret(&self, secret_sha256: String) -> Result<Option<ApiToken>> {
        self.readers
            .run(move |conn| access::token_by_secret(conn, &secret_sha256))
            .await
    }

    async fn token_get(&self, id: String) -> Result<Option<ApiToken>> {
        self.readers
            .run(move |conn| access::token_get(conn, &id))
            .await
    }

    async fn tokens_list(&self) -> Result<Vec<ApiToken>> {
        self.readers.run(access::tokens_list).await
    }

    async fn token_revoke(&self, params: TokenRevoke) -> Result<Option<ApiToken>> {
        self.writer
            .run(move |conn| access::token_revoke(conn, &params))
            .await
    }

    async fn token_touch(&self, params: TokenTouch) -> Result<()> {
        self.writer
            .run(move |conn| access::token_touch(conn, &params))
            .await
    }

    async fn audit_append(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.writer
            .run(move |conn| access::audit_append(conn, &entry))
            .await
    }

    async fn audit_list(&self, params: AuditList) -> Result<Vec<AuditRecord>> {
        self.readers
            .run(move |conn| access::audit_list(conn, &params))
            .await
    }

    async fn audit_prune(&self, params: AuditPrune) -> Result<u64> {
        self.writer
            .run(move |conn| access::audit_prune(conn, &params))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.readers.run(ping).await?;
        self.writer.run(|_| Ok(())).await
    }

    fn limited(&self) -> &Limited {
        &self.limited
    }

    fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    fn watchers(&self) -> &Wakeups {
        &self.watchers
    }

    /// One process owns the file (the writer holds it), so the waiters of
    /// this process are all there are.
    fn announce(&self, queues: &[&str]) {
        self.wakeups.wake(queues.iter().copied());
    }

    fn announce_all(&self) {
        self.wakeups.wake_all();
    }
}

fn durability(conn: &Connection) -> Result<String> {
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

fn ping(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}
