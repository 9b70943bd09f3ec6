//! The job operations every caller shares: enqueue, fetch, record an
//! attempt's outcome, heartbeat, and the operator's changes. Each checks its
//! input, takes "now" from the engine's clock and turns relative times into
//! absolute ones with saturating arithmetic, then makes one store call.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use grafter_core::{
    storable, time, validate_name, validate_path_name, Held, HeldReason, Job, JobId, JobState,
    LeasedJob, NewJob, Progress, PushTarget, QueueLimits, Timestamp, ValidationError,
    WorkerRegistration,
};
use grafter_store::{
    AckOutcome, BulkAction, BulkOutcome, Dependencies, Inserted, JobCancel, JobComplete, JobFail,
    JobHeartbeat, JobRelease, JobReschedule, JobRetry, JobsBulk, JobsCompleteMany, JobsFetch,
    JobsInsert, LimitUsage, LimitUsageQuery, MaintenanceBatch, QueueInfo, QueueLimitsSet,
    QueuePause, QueuePush, Store, StoreError, WorkerBeat,
};
use serde_json::Value;

use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::error::Result;
use crate::observer::{Observer, Unobserved};
use crate::outcome::{Ack, Outcome, Retry, When};

/// Most jobs one fetch may lease, and most acks in one batch.
pub const MAX_FETCH: usize = 1_000;
/// Most queues one fetch may name.
pub const MAX_FETCH_QUEUES: usize = 1_000;
/// Most jobs in one batch enqueue.
pub const MAX_BATCH: usize = 10_000;
/// Shortest and longest lease a worker may ask for, in milliseconds.
pub const LEASE_RANGE_MS: RangeInclusive<u64> = 1_000..=86_400_000;
/// Longest progress message kept, in bytes; longer ones are cut.
const MAX_PROGRESS_MESSAGE: usize = 1_024;

/// Moves jobs through their states on one store. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    config: EngineConfig,
    clock: Clock,
    observer: Arc<dyn Observer>,
}

/// A worker asking for jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchRequest {
    /// Queues to take jobs from.
    pub queues: Vec<String>,
    /// Most jobs to lease.
    pub max: usize,
    /// How long to wait for a job when none is available.
    pub wait: Duration,
    /// Lease length (default the engine's).
    pub lease: Option<Duration>,
    /// Who is asking; recorded on the job and its errors.
    pub worker_id: Option<String>,
    /// With one queue: lease only as many as keep its running jobs (on every
    /// node) at or under this number.
    pub running_limit: Option<usize>,
}

impl Engine {
    /// An engine on `store` with the system clock.
    pub fn new(store: Arc<dyn Store>, config: EngineConfig) -> Self {
        Engine {
            inner: Arc::new(Inner {
                store,
                config,
                clock: Clock::system(),
                observer: Arc::new(Unobserved),
            }),
        }
    }

    /// This engine reading the time from `clock`.
    pub fn with_clock(self, clock: Clock) -> Self {
        self.rebuilt(|inner| inner.clock = clock)
    }

    /// This engine telling `observer` of every change.
    pub fn with_observer(self, observer: Arc<dyn Observer>) -> Self {
        self.rebuilt(|inner| inner.observer = observer)
    }

    fn rebuilt(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            store: self.inner.store.clone(),
            config: self.inner.config.clone(),
            clock: self.inner.clock.clone(),
            observer: self.inner.observer.clone(),
        };
        change(&mut inner);
        Engine {
            inner: Arc::new(inner),
        }
    }

    /// The store, for reads (job pages, queue counts, workers).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Who hears of each change.
    pub(crate) fn observer(&self) -> &dyn Observer {
        self.inner.observer.as_ref()
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The current time by the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// `when` as a time, from `now`.
    fn resolve(when: When, now: Timestamp) -> Timestamp {
        match when {
            When::Now => now,
            When::After(delay) => time::after(now, delay),
            When::At(at) => time::clamp(at),
        }
    }

    /// Enqueues one job; a duplicate by `unique_key` answers the existing job.
    pub async fn enqueue(&self, mut job: NewJob) -> Result<Inserted> {
        job.validate()?;
        // One job: its refs can name no other job, its field no index.
        grafter_core::dependency::plan(std::slice::from_ref(&job)).map_err(|e| {
            let field = e.field.strip_prefix("jobs[0].").unwrap_or(&e.field);
            ValidationError::new(field, e.message.clone())
        })?;
        keep_valid_trace(&mut job);
        let inserted = match self.insert(vec![job]).await {
            Err(crate::Error::Store(StoreError::UnknownDependency { field, id })) => {
                let field = field.strip_prefix("jobs[0].").unwrap_or(&field).to_owned();
                return Err(StoreError::UnknownDependency { field, id }.into());
            }
            Err(crate::Error::Store(StoreError::RefusedDependency { field, message })) => {
                let field = field.strip_prefix("jobs[0].").unwrap_or(&field).to_owned();
                return Err(StoreError::RefusedDependency { field, message }.into());
            }
            inserted => inserted?.pop(),
        };
        inserted.ok_or_else(|| StoreError::Backend("the store returned no job".into()).into())
    }

    /// Enqueues 1 to [`MAX_BATCH`] jobs in one transaction: all or none. An
    /// error names the job as `jobs[i].field`.
    pub async fn enqueue_many(&self, mut jobs: Vec<NewJob>) -> Result<Vec<Inserted>> {
        if jobs.is_empty() || jobs.len() > MAX_BATCH {
            return Err(ValidationError::new(
                "jobs",
                format!("must hold 1 to {MAX_BATCH} jobs, got {}", jobs.len()),
            )
            .into());
        }
        for (i, job) in jobs.iter_mut().enumerate() {
            job.validate()
                .map_err(|e| ValidationError::new(format!("jobs[{i}].{}", e.field), e.message))?;
            keep_valid_trace(job);
        }
        grafter_core::dependency::plan(&jobs)?;
        self.insert(jobs).await
    }

    async fn insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>> {
        let inserted = self
            .inner
            .store
            .jobs_insert_many(JobsInsert {
                jobs,
                now: self.now(),
            })
            .await?;
        let created = inserted.iter().filter(|i| i.created).map(|i| &i.job);
        self.announce_available(created.clone());
        for job in created {
            self.inner.observer.enqueued(job);
        }
        Ok(inserted)
    }

    /// The jobs `id` depends on, with their states and results, and the
    /// batches it waits for.
    pub async fn job_dependencies(&self, id: JobId) -> Result<Dependencies> {
        self.inner
            .store
            .job_dependencies(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id).into())
    }

    /// The rule for waking waiting fetches, in one place: after a change
    /// commits, the queues of the jobs it made `available` are announced.
    pub(crate) fn announce_available<'j>(&self, jobs: impl IntoIterator<Item = &'j Job>) {
        let mut queues: Vec<&str> = jobs
            .into_iter()
            .filter(|job| job.state == JobState::Available)
            .map(|job| job.queue.as_str())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        self.inner.store.announce(&queues);
    }

    /// Leases available jobs; with a `wait`, waits until some are available
    /// or the time is up (a new job wakes the wait at once). Answers what it
    /// has, possibly nothing, when `stop` completes.
    pub async fn fetch(
        &self,
        request: FetchRequest,
        stop: impl Future<Output = ()>,
    ) -> Result<Vec<LeasedJob>> {
        let lease_duration = self.lease_duration(request.lease)?;
        if request.queues.is_empty() || request.queues.len() > MAX_FETCH_QUEUES {
            return Err(ValidationError::new(
                "queues",
                format!(
                    "name 1 to {MAX_FETCH_QUEUES} queues, got {}",
                    request.queues.len()
                ),
            )
            .into());
        }
        for queue in &request.queues {
            validate_name("queues", queue)?;
        }
        if !(1..=MAX_FETCH).contains(&request.max) {
            return Err(ValidationError::new(
                "max",
                format!("must be between 1 and {MAX_FETCH}, got {}", request.max),
            )
            .into());
        }
        let max_wait = self.inner.config.max_wait;
        if request.wait > max_wait {
            return Err(ValidationError::new(
                "wait_ms",
                format!(
                    "must be at most {}, got {}",
                    max_wait.as_millis(),
                    request.wait.as_millis()
                ),
            )
            .into());
        }
        if let Some(worker) = &request.worker_id {
            validate_name("worker_id", worker)?;
        }
        let params = || JobsFetch {
            queues: request.queues.clone(),
            max: request.max,
            lease_duration,
            worker_id: request.worker_id.clone(),
            running_limit: request.running_limit,
            max_bytes: self.inner.config.fetch_max_bytes,
            now: self.now(),
        };
        let leased =
            crate::wait::jobs_fetch_waiting(self.store().as_ref(), params, request.wait, stop)
                .await?;
        for leased in &leased {
            self.inner.observer.started(&leased.job);
        }
        Ok(leased)
    }

    /// A lease length asked for, or the default; out of range is refused.
    fn lease_duration(&self, asked: Option<Duration>) -> Result<Duration> {
        let Some(lease) = asked else {
            return Ok(self.inner.config.default_lease);
        };
        let ms = lease.as_millis();
        if !(u128::from(*LEASE_RANGE_MS.start())..=u128::from(*LEASE_RANGE_MS.end())).contains(&ms)
        {
            return Err(ValidationError::new(
                "lease_ms",
                format!(
                    "must be between {} and {}, got {ms}",
                    LEASE_RANGE_MS.start(),
                    LEASE_RANGE_MS.end()
                ),
            )
            .into());
        }
        Ok(lease)
    }

    /// Records how an attempt ended, fenced by its lease: the one path every
    /// worker's and push target's outcome takes. A NUL in the result or the
    /// error is replaced (see [`grafter_core::storable`]): the outcome of work
    /// that is done is never refused for its text. A result nested deeper
    /// than [`storable::MAX_JSON_DEPTH`] is refused (field `result`) and the
    /// job left as it is: no store could read it back.
    pub async fn record(&self, id: JobId, lease: &str, outcome: Outcome) -> Result<Job> {
        if let Outcome::Completed {
            result: Some(result),
        } = &outcome
        {
            storable::validate_json_depth("result", result)?;
        }
        let store = &self.inner.store;
        let now = self.now();
        let lease = storable::text(lease.to_owned());
        let observer = &self.inner.observer;
        let job = match outcome {
            Outcome::Completed { result } => {
                let job = store
                    .job_complete(JobComplete {
                        id,
                        lease,
                        result: result.map(storable::json),
                        now,
                    })
                    .await?;
                observer.completed(&job);
                job
            }
            Outcome::Failed { error, retry } => {
                let (retry, retry_at) = match retry {
                    Retry::Backoff => (true, None),
                    Retry::At(when) => (true, Some(Self::resolve(when, now))),
                    Retry::Never => (false, None),
                };
                let job = store
                    .job_fail(JobFail {
                        id,
                        lease,
                        error: storable::text(error),
                        retry,
                        retry_at,
                        backoff: self.inner.config.retry,
                        now,
                    })
                    .await?;
                observer.failed(&job);
                job
            }
            Outcome::Released { run_at } => {
                let job = store
                    .job_release(JobRelease {
                        id,
                        lease,
                        run_at: Self::resolve(run_at, now),
                        now,
                    })
                    .await?;
                self.announce_available([&job]);
                job
            }
        };
        self.announce_freed(Some(&job.queue));
        self.batch_job_finished(&job).await;
        Ok(job)
    }

    /// A running job ended (or may have), freeing its slot: wakes the
    /// fetches waiting on its queue if the queue is limited, since they may
    /// have been held back for want of that slot. `None`: jobs of queues not
    /// told ended (a batch ack, a rescue pass), so every limited queue's
    /// waiters look once. Unlimited queues are never woken for this.
    pub(crate) fn announce_freed(&self, queue: Option<&str>) {
        let limited = self.inner.store.limited();
        match queue {
            Some(queue) if limited.contains(queue) => self.inner.store.announce(&[queue]),
            Some(_) => {}
            None if limited.is_empty() => {}
            None => {
                let names = limited.names();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                self.inner.store.announce(&names);
            }
        }
    }

    /// Completes 1 to [`MAX_FETCH`] jobs in one transaction, each fenced by
    /// its own lease; answers per ack, in order, what it came to. A result
    /// nested too deep (see [`Engine::record`]) refuses the whole batch,
    /// naming it (`acks[i].result`), as the API refuses a body it cannot
    /// parse; the caller acks the others alone.
    pub async fn complete_many(&self, acks: Vec<Ack>) -> Result<Vec<AckOutcome>> {
        if acks.is_empty() || acks.len() > MAX_FETCH {
            return Err(ValidationError::new(
                "acks",
                format!("must hold 1 to {MAX_FETCH} acks, got {}", acks.len()),
            )
            .into());
        }
        for (i, ack) in acks.iter().enumerate() {
            if let Some(result) = &ack.result {
                storable::validate_json_depth(&format!("acks[{i}].result"), result)?;
            }
        }
        let ids: Vec<JobId> = acks.iter().map(|a| a.id).collect();
        let items = acks
            .into_iter()
            .map(|a| {
                let result = a.result.map(storable::json);
                (a.id, storable::text(a.lease), result)
            })
            .collect();
        let outcomes = self
            .inner
            .store
            .jobs_complete_many(JobsCompleteMany {
                items,
                now: self.now(),
            })
            .await?;
        let completed: Vec<JobId> = ids
            .into_iter()
            .zip(&outcomes)
            .filter(|(_, &o)| o == AckOutcome::Completed)
            .map(|(id, _)| id)
            .collect();
        self.inner.observer.batch_completed(&completed);
        if !completed.is_empty() {
            self.announce_freed(None);
        }
        Ok(outcomes)
    }

    /// Extends a running job's lease (by `lease`, or the default) and stores
    /// its progress; the answer's `cancel_requested` tells the worker to stop.
    pub async fn heartbeat(
        &self,
        id: JobId,
        lease: &str,
        progress: Option<Progress>,
        extend: Option<Duration>,
    ) -> Result<Job> {
        let lease_duration = self.lease_duration(extend)?;
        let progress = progress.map(cut_message).transpose()?;
        Ok(self
            .inner
            .store
            .job_heartbeat(JobHeartbeat {
                id,
                lease: storable::text(lease.to_owned()),
                progress,
                lease_duration,
                now: self.now(),
            })
            .await?)
    }

    /// Cancels a job: at once if it is waiting, by request if it is running.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        let now = self.now();
        Ok(self.inner.store.job_cancel(JobCancel { id, now }).await?)
    }

    /// Makes a not-running job available now, with new args if given.
    pub async fn retry(&self, id: JobId, args: Option<Value>) -> Result<Job> {
        if let Some(args) = &args {
            storable::validate_json("args", args)?;
        }
        let now = self.now();
        let job = self
            .inner
            .store
            .job_retry(JobRetry { id, args, now })
            .await?;
        self.announce_available([&job]);
        Ok(job)
    }

    /// Moves a not-running job's run time. A time outside years 1 to 9999 is
    /// refused (field `run_at`).
    pub async fn reschedule(&self, id: JobId, when: When) -> Result<Job> {
        if let When::At(at) = when {
            time::validate_time("run_at", at)?;
        }
        let now = self.now();
        let run_at = Self::resolve(when, now);
        let job = self
            .inner
            .store
            .job_reschedule(JobReschedule { id, run_at, now })
            .await?;
        self.announce_available([&job]);
        Ok(job)
    }

    /// Deletes a job in any state.
    pub async fn delete(&self, id: JobId) -> Result<()> {
        self.inner.store.job_delete(id).await?;
        // A running job deleted frees its slot.
        self.announce_freed(None);
        Ok(())
    }

    /// Retries, cancels or deletes up to [`JobsBulk::MAX_IDS`] jobs in one
    /// transaction, skipping those the one-job rules refuse.
    pub async fn bulk(
        &self,
        ids: Vec<JobId>,
        action: BulkAction,
        only_state: Option<JobState>,
    ) -> Result<BulkOutcome> {
        if ids.len() > JobsBulk::MAX_IDS {
            return Err(ValidationError::new(
                "ids",
                format!("at most {} jobs at once", JobsBulk::MAX_IDS),
            )
            .into());
        }
        let outcome = self
            .inner
            .store
            .jobs_bulk(JobsBulk {
                ids,
                action,
                only_state,
                now: self.now(),
            })
            .await?;
        if action == BulkAction::Retry && outcome.changed > 0 {
            // Which queues the retried jobs are on is not told: a rare,
            // operator's action, so every waiting fetch looks once.
            self.inner.store.announce_all();
        }
        if action == BulkAction::Delete && outcome.changed > 0 {
            self.announce_freed(None);
        }
        Ok(outcome)
    }

    /// Pauses or resumes a queue.
    pub async fn queue_pause(&self, queue: &str, paused: bool) -> Result<QueueInfo> {
        validate_path_name("name", queue)?;
        let info = self
            .inner
            .store
            .queue_set_paused(QueuePause {
                queue: queue.to_owned(),
                paused,
                now: self.now(),
            })
            .await?;
        if !paused {
            self.inner.store.announce(&[queue]);
        }
        Ok(info)
    }

    /// Makes up to `limit` due `scheduled` and `retryable` jobs `available`
    /// (the scheduler's pass) and wakes the fetches waiting on their queues;
    /// answers how many moved.
    pub async fn schedule_due(&self, limit: usize) -> Result<u64> {
        let scheduled = self
            .inner
            .store
            .jobs_schedule(MaintenanceBatch {
                now: self.now(),
                limit,
            })
            .await?;
        let queues: Vec<&str> = scheduled.queues.iter().map(String::as_str).collect();
        self.inner.store.announce(&queues);
        Ok(scheduled.moved)
    }

    /// Sets (after checking it) or removes a queue's push target.
    pub async fn queue_set_push(&self, queue: &str, push: Option<PushTarget>) -> Result<QueueInfo> {
        validate_path_name("name", queue)?;
        if let Some(target) = &push {
            target.validate()?;
        }
        Ok(self
            .inner
            .store
            .queue_set_push(QueuePush {
                queue: queue.to_owned(),
                push,
                now: self.now(),
            })
            .await?)
    }

    /// Sets (after checking them) or removes a queue's limits. Takes effect
    /// at the commit on every node: jobs running go on, and fetches admit
    /// by the new limits. Wakes the queue's waiting fetches, which a higher
    /// limit (or none) may now let through.
    pub async fn queue_set_limits(
        &self,
        queue: &str,
        limits: Option<QueueLimits>,
    ) -> Result<QueueInfo> {
        validate_path_name("name", queue)?;
        if let Some(limits) = &limits {
            limits.validate()?;
        }
        let info = self
            .inner
            .store
            .queue_set_limits(QueueLimitsSet {
                queue: queue.to_owned(),
                limits,
                now: self.now(),
            })
            .await?;
        self.inner.store.announce(&[queue]);
        Ok(info)
    }

    /// What holds an available job back, if anything: its queue paused, or
    /// its queue's (partition's) concurrency all in use, or its rate window
    /// full. Other jobs and states: `None`. Reads the queue's usage now (a
    /// look at its running jobs and window of starts).
    pub async fn held(&self, job: &Job) -> Result<Option<Held>> {
        if job.state != JobState::Available {
            return Ok(None);
        }
        let usage = self
            .inner
            .store
            .queue_limit_usage(LimitUsageQuery {
                queue: job.queue.clone(),
                job: Some(job.id),
                now: self.now(),
            })
            .await?;
        Ok(held_by(job, &usage))
    }

    /// Registers a worker or records its heartbeat.
    pub async fn worker_beat(&self, worker: WorkerRegistration) -> Result<()> {
        worker.validate()?;
        let now = self.now();
        Ok(self
            .inner
            .store
            .worker_heartbeat(WorkerBeat { worker, now })
            .await?)
    }

    /// Forgets a worker (on its orderly shutdown).
    pub async fn worker_remove(&self, id: &str) -> Result<()> {
        Ok(self.inner.store.worker_remove(id.to_owned()).await?)
    }
}

/// What of `usage` holds `job` back (see [`Engine::held`]). The job's
/// partition is the one its store computed from its row
/// ([`LimitUsage::job_partition`]), by the expression the store's admission
/// counts by: computed in Rust, a value of the args the store writes
/// otherwise (PostgreSQL: `{"a": 1}`, `1e23` in full) would name no
/// partition's usage. No partition: the job has left the queue.
fn held_by(job: &Job, usage: &LimitUsage) -> Option<Held> {
    if usage.paused {
        return Some(Held {
            reason: HeldReason::Paused,
            message: format!("queue {:?} is paused", job.queue),
        });
    }
    let limits = usage.limits.as_ref()?;
    let partition = usage.job_partition.as_deref()?;
    let used = usage
        .partitions
        .iter()
        .find(|p| p.partition == partition)
        .cloned()
        .unwrap_or_default();
    let of = if limits.partition_by.is_some() {
        format!("partition {partition:?} of queue {:?}", job.queue)
    } else {
        format!("queue {:?}", job.queue)
    };
    if let Some(n) = limits.concurrency {
        if used.running >= n.max(0) as u64 {
            return Some(Held {
                reason: HeldReason::Concurrency,
                message: format!("concurrency {} of {n} in use for {of}", used.running),
            });
        }
    }
    if let (Some(rate), Some(until)) = (limits.rate, used.rate_full_until) {
        return Some(Held {
            reason: HeldReason::Rate,
            message: format!(
                "rate {} per {} ms reached for {of} ({} started in the window); full until {}",
                rate.count,
                rate.period_ms,
                used.started,
                until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        });
    }
    None
}

/// Checks a progress report and cuts its message to [`MAX_PROGRESS_MESSAGE`],
/// any NUL in it replaced.
fn cut_message(mut progress: Progress) -> Result<Progress, ValidationError> {
    progress.validate()?;
    progress.message = progress.message.map(|message| {
        let cut = grafter_store::transitions::truncate(&message, MAX_PROGRESS_MESSAGE).len();
        storable::text(message[..cut].to_owned())
    });
    Ok(progress)
}

/// Drops a malformed `traceparent` or `tracestate` from a job to enqueue:
/// tracing is advice, so a bad header never costs the job (docs/traces.md).
pub(crate) fn keep_valid_trace(job: &mut NewJob) {
    for dropped in job.keep_valid_trace() {
        tracing::debug!(kind = %job.kind, %dropped, "ignoring a malformed trace context");
    }
}
