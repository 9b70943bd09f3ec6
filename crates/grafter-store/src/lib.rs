//! The one storage boundary of Grafter.
//!
//! [`Store`] is implemented once per backend (`grafter-sqlite`,
//! `grafter-postgres`) and every backend must pass the same conformance suite
//! (`grafter-store-tests`). Nothing above this trait touches a connection or
//! writes SQL; the engine (`grafter-engine`) is its one caller.
//!
//! Methods are named noun-verb and take a params struct, so a new option never
//! changes a signature. Every method that changes job state commits durably before
//! it returns `Ok`.

mod access;
pub mod admission;
mod error;
mod events;
mod limited;
mod params;
pub mod preview;
mod schedules;
pub mod schema;
pub mod transitions;
mod wakeups;

use async_trait::async_trait;
use grafter_core::{Batch, BatchId, Job, JobId, LeasedJob, Schedule, SkippedSlots, Worker};

pub use access::*;
pub use error::StoreError;
pub use events::*;
pub use limited::Limited;
pub use params::*;
pub use schedules::*;
pub use wakeups::{Waiter, Wakeups};

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable storage of jobs and queues.
///
/// Object-safe: the server holds an `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts jobs in one transaction, in order. A job whose `unique_key` matches an
    /// unfinished job is not inserted; the existing job is returned instead.
    async fn jobs_insert_many(&self, params: JobsInsert) -> Result<Vec<Inserted>>;

    /// Leases up to `max` available jobs of the given queues (paused queues skipped,
    /// expired jobs skipped), lowest `priority` first, then `run_at`, then id,
    /// stopping before the job whose args would take the total past
    /// `max_bytes` (never before the first). Each leased job is `running` with
    /// `attempt + 1` and a fresh lease token.
    ///
    /// A queue with limits admits jobs by [`admission`] under a lock of the
    /// queue, so no fetch anywhere leases past a limit; its jobs are leased
    /// before those of unlimited queues named with it. A rate-limited queue
    /// records each start.
    async fn jobs_fetch(&self, params: JobsFetch) -> Result<Vec<LeasedJob>>;

    /// Marks a running job `completed` with its result. Fenced by the lease.
    async fn job_complete(&self, params: JobComplete) -> Result<Job>;

    /// Completes many running jobs in one transaction (batch ack). Each item is
    /// fenced by its lease; the answer says, per item in order, what it came
    /// to. An item repeating an earlier one answers as it would alone after
    /// it: the lease is no longer current.
    async fn jobs_complete_many(&self, params: JobsCompleteMany) -> Result<Vec<AckOutcome>>;

    /// Records a failed attempt: `retryable` after backoff, or `dead` when out of
    /// attempts or told not to retry, or `cancelled` if a cancel was requested.
    /// Fenced by the lease.
    async fn job_fail(&self, params: JobFail) -> Result<Job>;

    /// Extends a running job's lease and stores its progress. Fenced by the lease.
    /// The answer carries `cancel_requested` so the worker learns of a cancel.
    async fn job_heartbeat(&self, params: JobHeartbeat) -> Result<Job>;

    /// Hands a leased job back without counting the attempt (`attempt - 1`): it
    /// becomes `available` at once, or `scheduled` for a later `run_at` (a snooze).
    /// A pending cancel request makes it `cancelled` instead. Fenced by the lease.
    async fn job_release(&self, params: JobRelease) -> Result<Job>;

    /// One job by id, or `None`.
    async fn job_get(&self, id: JobId) -> Result<Option<Job>>;

    /// What `id` waits for (docs/dependencies.md): its upstream jobs, by id,
    /// whole (their results are what a dependent reads), and the batches it
    /// waits for, by id; `None` if there is no job `id`.
    async fn job_dependencies(&self, id: JobId) -> Result<Option<Dependencies>>;

    /// A page of jobs matching a filter, by id (keyset pagination). Every
    /// filter is answered from an index or within `scan_limit` rows. Jobs
    /// come as [`preview::Preview`] shows them: args and results longer than
    /// [`preview::PREVIEW_BYTES`] cut, the last error only; no store reads
    /// more than [`preview::PREVIEW_READ_CHARS`] of them into the answer.
    async fn jobs_list(&self, params: JobsList) -> Result<JobPage>;

    /// Retries, cancels or deletes many jobs in one transaction, each by the
    /// rules of the one-job method; jobs those rules refuse are skipped.
    async fn jobs_bulk(&self, params: JobsBulk) -> Result<BulkOutcome>;

    /// Completed and failed attempts per minute in a range, oldest first;
    /// minutes with neither are left out. Kept as jobs change, never counted
    /// from the jobs table, and kept for at least two days.
    async fn throughput_list(&self, params: ThroughputRange) -> Result<Vec<MinuteThroughput>>;

    /// Cancels a job: at once if it is not running, else by setting
    /// `cancel_requested` for its worker to see. Finished jobs are left as they are
    /// (`InvalidState`).
    async fn job_cancel(&self, params: JobCancel) -> Result<Job>;

    /// Makes a not-running job `available` now (a manual retry or "run now"),
    /// with new args if given. A job with no attempts left gets one more.
    async fn job_retry(&self, params: JobRetry) -> Result<Job>;

    /// Moves a job's `run_at`, making it `scheduled` or `available` (or
    /// `pending` again while an upstream is unfinished); refuses a running,
    /// pending or completed job as `job_retry` does.
    async fn job_reschedule(&self, params: JobReschedule) -> Result<Job>;

    /// Deletes a job in any state; a worker holding its lease gets `NotFound` later.
    async fn job_delete(&self, id: JobId) -> Result<()>;

    /// Makes `scheduled` and `retryable` jobs whose `run_at` has come `available`.
    /// Answers how many moved, and on which queues.
    async fn jobs_schedule(&self, params: MaintenanceBatch) -> Result<Scheduled>;

    /// Ends expired leases: each counts as a failed attempt ("lease expired", or
    /// "timed out" when the job's own timeout is what ran out).
    async fn jobs_rescue_expired(&self, params: JobsRescue) -> Result<u64>;

    /// Moves jobs not started by their `expires_at` to `expired`.
    async fn jobs_expire(&self, params: MaintenanceBatch) -> Result<u64>;

    /// Deletes jobs in the given (finished) states that finished before a time,
    /// except jobs in a batch (they go with their batch,
    /// [`Store::batches_prune`]). Returns how many went.
    async fn jobs_prune(&self, params: JobsPrune) -> Result<u64>;

    /// How many jobs [`Store::jobs_prune`] with `params` would delete, its
    /// `limit` aside: what a dry run of a cleanup answers.
    async fn jobs_prunable_count(&self, params: JobsPrune) -> Result<u64>;

    /// The store's kind, schema version and leaderships.
    async fn store_info(&self) -> Result<StoreInfo>;

    /// Every queue that has jobs or settings, with its job counts per state.
    /// Counts are kept as jobs change, so this never counts the jobs table.
    async fn queues_list(&self) -> Result<Vec<QueueInfo>>;

    /// Pauses or resumes a queue: a paused queue's jobs are not fetched.
    async fn queue_set_paused(&self, params: QueuePause) -> Result<QueueInfo>;

    /// Sets or removes a queue's push target (removing turns it back into a pull queue).
    async fn queue_set_push(&self, params: QueuePush) -> Result<QueueInfo>;

    /// Sets or removes a queue's limits. From the commit on, every fetch of
    /// the queue (on every node) admits jobs by the new limits; jobs already
    /// running go on. Keeps [`Store::limited`] up to date in this process.
    async fn queue_set_limits(&self, params: QueueLimitsSet) -> Result<QueueInfo>;

    /// What a queue's limits are using now: per partition with jobs running
    /// or started within the rate window, how many. Read, not kept: costs a
    /// look at the running jobs and at the starts within the window.
    async fn queue_limit_usage(&self, params: LimitUsageQuery) -> Result<LimitUsage>;

    /// Takes or renews the named leadership for `node` if it is free, expired,
    /// or already `node`'s; answers whether `node` leads now. Maintenance that
    /// must run once per cluster runs only on the leader.
    async fn leader_acquire(&self, params: LeaderAcquire) -> Result<bool>;

    /// Gives up the named leadership if `node` holds it, so another node can
    /// take over at once.
    async fn leader_release(&self, params: LeaderRelease) -> Result<()>;

    /// Registers a worker or records its heartbeat.
    async fn worker_heartbeat(&self, params: WorkerBeat) -> Result<()>;

    /// Forgets a worker (on its orderly shutdown). Unknown ids are fine.
    async fn worker_remove(&self, id: String) -> Result<()>;

    /// Registered workers, oldest first, with how many jobs each is running.
    async fn workers_list(&self) -> Result<Vec<Worker>>;

    /// Forgets workers not heard from within `stale_after` and ends the leases
    /// of their running jobs now, so the rescuer retries them at once rather
    /// than when the leases would have run out. Returns how many were forgotten.
    async fn workers_prune(&self, params: WorkersPrune) -> Result<u64>;

    /// Writes a schedule whole if its version is still `expected_version`
    /// (absent for a new one); answers whether it was written.
    async fn schedule_write(&self, params: ScheduleWrite) -> Result<bool>;

    /// One schedule by id, or `None`.
    async fn schedule_get(&self, id: String) -> Result<Option<Schedule>>;

    /// Schedules by id, a page at a time.
    async fn schedules_list(&self, params: SchedulesList) -> Result<Vec<Schedule>>;

    /// Deletes a schedule and its skip records (its jobs stay, and so does
    /// what makes their slots taken); answers whether it existed.
    async fn schedule_delete(&self, id: String) -> Result<bool>;

    /// Unpaused schedules whose `next_run_at` has come, earliest first, read
    /// from an index on `next_run_at` so schedules not due cost nothing.
    async fn schedules_due(&self, params: SchedulesDue) -> Result<Vec<DueSchedule>>;

    /// Applies firings in one transaction: each whose schedule is still at
    /// its expected version moves the schedule on and inserts its jobs; a
    /// slot is taken at most once (a unique index on the jobs' schedule id
    /// and slot), so no race, failover or restart enqueues it twice, and a
    /// slot's job and the schedule's move commit together or not at all.
    async fn schedules_fire(&self, params: SchedulesFire) -> Result<Vec<Fired>>;

    /// A schedule's latest skip records, newest first (at most
    /// [`SKIPS_KEPT`] are kept).
    async fn schedule_skips_list(&self, params: ScheduleSkipsList) -> Result<Vec<SkippedSlots>>;

    /// Starts logging a job's changes for live event streams, unless it is
    /// finished (no change is to come but a retry by hand, and its stream
    /// ends at once), and answers it with the id of its latest logged event,
    /// read together; `None` if there is no such job. From the commit on,
    /// every change of its state, attempt or progress, and its deletion, is
    /// logged in the transaction that makes it ([`Store::job_events_list`])
    /// and wakes its watchers in every process ([`Store::watchers`]).
    async fn job_watch(&self, id: JobId) -> Result<Option<WatchedJob>>;

    /// A watched job's logged events after a point, oldest first.
    async fn job_events_list(&self, params: JobEventsList) -> Result<Vec<JobEvent>>;

    /// Starts logging a batch's changes for live event streams, unless it
    /// has finished, and answers it with the id of its latest logged event,
    /// read together; `None` if there is no such batch. From the commit on,
    /// every change of its state, sealing, finishing, counts or progress is
    /// logged in the transaction that makes it ([`Store::batch_events_list`])
    /// and wakes its watchers ([`batch_watch_key`]) in every process.
    async fn batch_watch(&self, id: BatchId) -> Result<Option<WatchedBatch>>;

    /// A watched batch's logged events after a point, oldest first.
    async fn batch_events_list(&self, params: BatchEventsList) -> Result<Vec<BatchEvent>>;

    /// Creates a batch with its jobs in one transaction (all or none). A
    /// sealed batch without jobs settles at once (succeeded, callbacks
    /// enqueued) in that transaction.
    ///
    /// From then on the batch's counts and progress change in the
    /// transaction of each move of its jobs (a trigger whose `WHEN` is false
    /// for jobs outside batches), and the move that settles it (the last job
    /// finishing in a sealed batch, the first ending dead) sets its state and
    /// enqueues its callbacks in the same transaction, each at most once: the
    /// batch's row is written by every such move, so two finishing at once on
    /// two nodes go one after the other.
    async fn batch_create(&self, params: BatchCreate) -> Result<BatchWithJobs>;

    /// Adds jobs to an open batch in one transaction; `BatchClosed` if it is
    /// sealed or cancelled.
    async fn batch_add(&self, params: BatchAdd) -> Result<BatchWithJobs>;

    /// Seals a batch: no more jobs; if all of them have finished it settles
    /// now. Sealing a sealed batch changes nothing.
    async fn batch_seal(&self, params: BatchChange) -> Result<Batch>;

    /// Cancels a batch: seals it, cancels its jobs waiting to run and asks
    /// its running ones to stop (as [`Store::job_cancel`]), in one
    /// transaction. `BatchClosed` if it has already settled.
    async fn batch_cancel(&self, params: BatchChange) -> Result<Batch>;

    /// One batch by id, or `None`.
    async fn batch_get(&self, id: BatchId) -> Result<Option<Batch>>;

    /// Batches newest first, a page at a time.
    async fn batches_list(&self, params: BatchesList) -> Result<Vec<Batch>>;

    /// Deletes finished batches that finished before a time, each with its
    /// jobs (all finished), oldest first. A batch with an unfinished job has
    /// no `finished_at` and is never deleted. Returns how many jobs went.
    async fn batches_prune(&self, params: BatchesPrune) -> Result<u64>;
    /// Stores a new token, durably. Its id and its secret's hash are fresh
    /// random values (a repeat of either is refused).
    async fn token_insert(&self, params: TokenInsert) -> Result<()>;

    /// The token whose secret has this SHA-256 (hex), revoked or not.
    async fn token_by_secret(&self, secret_sha256: String) -> Result<Option<ApiToken>>;

    /// The token with this id, revoked or not.
    async fn token_get(&self, id: String) -> Result<Option<ApiToken>>;

    /// Every token, revoked ones too, oldest first.
    async fn tokens_list(&self) -> Result<Vec<ApiToken>>;

    /// Revokes a token (keeping the first time it was revoked); the token as
    /// it now is, or `None` if there is no such token.
    async fn token_revoke(&self, params: TokenRevoke) -> Result<Option<ApiToken>>;

    /// Sets a token's `last_used_at` to `now` unless it is later already.
    async fn token_touch(&self, params: TokenTouch) -> Result<()>;

    /// Appends an entry to the audit log, durably.
    async fn audit_append(&self, entry: AuditEntry) -> Result<AuditRecord>;

    /// A page of the audit log, newest first.
    async fn audit_list(&self, params: AuditList) -> Result<Vec<AuditRecord>>;

    /// Deletes up to `limit` of the oldest entries made before `before`; how many.
    async fn audit_prune(&self, params: AuditPrune) -> Result<u64>;

    /// Checks the backend answers; `/readyz` calls it.
    async fn ping(&self) -> Result<()>;

    /// The queues with limits, as this process knows them (see [`Limited`]).
    fn limited(&self) -> &Limited;

    /// The waits for work registered in this process, so a long-polling fetch
    /// waits without polling and wakes only for its queues.
    fn wakeups(&self) -> &Wakeups;

    /// The waits of this process's event streams, keyed by
    /// [`job_watch_key`] and [`batch_watch_key`]: woken when an event is
    /// logged for their job or batch, by a change made by any process.
    fn watchers(&self) -> &Wakeups;

    /// Jobs may have become available on `queues` (a change that committed):
    /// wakes this process's waiters of those queues and, where the store is
    /// shared by many processes, the others'. Which changes call for it is
    /// the caller's rule (the engine's), not the store's.
    fn announce(&self, queues: &[&str]);

    /// As [`Store::announce`] for every queue: for changes whose queues are
    /// not known (a bulk retry).
    fn announce_all(&self);
}
