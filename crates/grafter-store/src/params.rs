//! Parameter and result structs of [`crate::Store`] methods.

use std::collections::BTreeMap;
use std::time::Duration;

use grafter_core::{
    Backoff, Job, JobId, JobState, NewJob, Progress, PushTarget, QueueLimits, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Jobs to insert in one transaction.
#[derive(Clone, Debug)]
pub struct JobsInsert {
    /// Already validated jobs.
    pub jobs: Vec<NewJob>,
    /// Used for `created_at`, and for `run_at` where the job names none.
    pub now: Timestamp,
}

/// The outcome of inserting one job.
#[derive(Clone, Debug)]
pub struct Inserted {
    /// The new job, or the unfinished job that already held its `unique_key`.
    pub job: Job,
    /// False when `job` is the pre-existing duplicate.
    pub created: bool,
}

/// A worker asking for jobs.
#[derive(Clone, Debug)]
pub struct JobsFetch {
    /// Queues to take jobs from.
    pub queues: Vec<String>,
    /// Most jobs to lease.
    pub max: usize,
    /// How long each lease lasts before it must be heartbeated.
    pub lease_duration: Duration,
    /// Who is asking, recorded on the job and in any error.
    pub worker_id: Option<String>,
    /// With one queue: lease only as many as keep that queue's running jobs
    /// (on every node) at or under this number. A push queue's concurrency.
    pub running_limit: Option<usize>,
    /// Lease no more jobs than the first whose args, added up in hand-out
    /// order, stay within this many bytes ([`crate::preview::json_len`]);
    /// the first job is leased whatever its size. Keeps one answer's size
    /// bounded when jobs are large.
    pub max_bytes: usize,
    /// Current time.
    pub now: Timestamp,
}

/// A worker reporting success.
#[derive(Clone, Debug)]
pub struct JobComplete {
    /// The job.
    pub id: JobId,
    /// The lease received with the job.
    pub lease: String,
    /// What the job produced.
    pub result: Option<Value>,
    /// Current time.
    pub now: Timestamp,
}

/// Many workers' successes, recorded together.
#[derive(Clone, Debug)]
pub struct JobsCompleteMany {
    /// (job, lease, result) per completed job.
    pub items: Vec<(JobId, String, Option<Value>)>,
    /// Current time.
    pub now: Timestamp,
}

/// What one item of a batch ack came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// This ack completed the job.
    Completed,
    /// The lease is not the job's current one; nothing changed.
    LeaseMismatch {
        /// The job's state now.
        state: JobState,
        /// The job's attempt now.
        attempt: i32,
    },
    /// There is no such job (any more).
    NotFound,
}

impl AckOutcome {
    /// The error the same ack would have met alone, if it did not apply.
    pub fn error(&self, id: JobId) -> Option<crate::StoreError> {
        match *self {
            AckOutcome::Completed => None,
            AckOutcome::LeaseMismatch { state, attempt } => {
                Some(crate::StoreError::LeaseMismatch { id, state, attempt })
            }
            AckOutcome::NotFound => Some(crate::StoreError::NotFound(id)),
        }
    }

    /// The answer for an item that did not complete, from the job's state
    /// and attempt now (`None`: it is gone).
    pub fn not_completed(now: Option<(JobState, i32)>) -> Self {
        match now {
            Some((state, attempt)) => AckOutcome::LeaseMismatch { state, attempt },
            None => AckOutcome::NotFound,
        }
    }
}

/// What a scheduling pass moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scheduled {
    /// Jobs made `available`.
    pub moved: u64,
    /// Their queues, each once, in order.
    pub queues: Vec<String>,
}

impl Scheduled {
    /// The pass that moved one job per entry of `queues` (a queue per job).
    pub fn of(mut queues: Vec<String>) -> Self {
        let moved = queues.len() as u64;
        queues.sort_unstable();
        queues.dedup();
        Scheduled { moved, queues }
    }
}

/// A worker reporting failure.
#[derive(Clone, Debug)]
pub struct JobFail {
    /// The job.
    pub id: JobId,
    /// The lease received with the job.
    pub lease: String,
    /// What went wrong.
    pub error: String,
    /// `false`: fail for good (`dead`) whatever attempts remain.
    pub retry: bool,
    /// Retry at this time instead of after backoff (still counts as an attempt).
    pub retry_at: Option<Timestamp>,
    /// Backoff for jobs without their own.
    pub backoff: Backoff,
    /// Current time.
    pub now: Timestamp,
}

/// A worker saying it is still at it.
#[derive(Clone, Debug)]
pub struct JobHeartbeat {
    /// The job.
    pub id: JobId,
    /// The lease received with the job.
    pub lease: String,
    /// Progress so far, if reported.
    pub progress: Option<Progress>,
    /// New lease length from now (never past the job's own timeout).
    pub lease_duration: Duration,
    /// Current time.
    pub now: Timestamp,
}

/// Which way a job list runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Newest (highest id) first.
    #[default]
    Desc,
    /// Oldest first.
    Asc,
}

/// A filter and page position for listing jobs.
#[derive(Clone, Debug, Default)]
pub struct JobsList {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs on this queue.
    pub queue: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs carrying this tag.
    pub tag: Option<String>,
    /// Only jobs made by this schedule (its slots' and its triggered runs).
    pub schedule: Option<String>,
    /// Only jobs in this batch.
    pub batch: Option<grafter_core::BatchId>,
    /// Only the jobs that depend on this one (its dependents, docs/dependencies.md).
    pub depends_on: Option<JobId>,
    /// Only jobs whose args hold this value at this path.
    pub args: Option<ArgsMatch>,
    /// Page size.
    pub limit: usize,
    /// Continue after this id (exclusive), in `order`.
    pub after: Option<JobId>,
    /// Direction.
    pub order: Order,
    /// When some filters are checked row by row (combinations no single index
    /// answers, and `args`), look at no more than this many jobs for one page,
    /// so a page costs the same however rare the matches are. The page may then
    /// hold fewer than `limit` jobs while `next` says where to go on. `None`
    /// looks as far as it takes to fill the page.
    pub scan_limit: Option<usize>,
}

/// A value inside a job's `args`: matches when following `path` (object keys,
/// from the top) reaches a value equal to `value`, a JSON string, number,
/// boolean or null. Numbers compare by value (`1` matches `1.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct ArgsMatch {
    /// Object keys from the top of `args`, e.g. `["user", "id"]`.
    pub path: Vec<String>,
    /// The value to find there.
    pub value: Value,
}

impl ArgsMatch {
    /// Checks the path is usable by every backend: 1 to 16 keys, none empty,
    /// none with a double quote or control character; and the value is a
    /// scalar, without NUL if a string.
    pub fn validate(&self) -> Result<(), crate::StoreError> {
        let invalid = |m: &str| Err(crate::StoreError::Invalid(format!("args filter: {m}")));
        if self.path.is_empty() || self.path.len() > 16 {
            return invalid("give a path of 1 to 16 keys, e.g. user.id=42");
        }
        if self
            .path
            .iter()
            .any(|k| k.is_empty() || k.contains('"') || k.chars().any(char::is_control))
        {
            return invalid("keys must not be empty or hold a double quote or control character");
        }
        if self.value.is_object() || self.value.is_array() {
            return invalid("the value must be a string, number, boolean or null");
        }
        if self.value.as_str().is_some_and(|v| v.contains('\0')) {
            return invalid("the value must not contain the NUL character");
        }
        Ok(())
    }

    /// The smallest JSON document holding `value` at `path`, e.g.
    /// `{"user": {"id": 42}}`: what JSON containment looks for.
    pub fn document(&self) -> Value {
        self.path
            .iter()
            .rev()
            .fold(self.value.clone(), |inner, key| {
                Value::Object([(key.clone(), inner)].into_iter().collect())
            })
    }
}

/// Which of a list's filters both backends answer from an index walk (their
/// list indexes are the same); the others are checked row by row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedFilters {
    /// The state filter.
    pub state: bool,
    /// The queue filter.
    pub queue: bool,
    /// The kind filter.
    pub kind: bool,
    /// The schedule filter.
    pub schedule: bool,
    /// The batch filter.
    pub batch: bool,
    /// The dependents filter.
    pub depends_on: bool,
}

impl JobsList {
    /// What the index walk for these filters answers: a tag walks the tag index
    /// alone, else a schedule its jobs' index (schedule, id) alone, else a
    /// batch its jobs' index (batch, id) alone, else an upstream its
    /// dependents' (the dependency links' key, upstream then dependent);
    /// otherwise state and queue are indexed, and kind too when no queue is
    /// named.
    pub fn indexed_filters(&self) -> IndexedFilters {
        let (tag, schedule, batch) = (
            self.tag.is_some(),
            self.schedule.is_some(),
            self.batch.is_some(),
        );
        if tag || schedule || batch || self.depends_on.is_some() {
            return IndexedFilters {
                state: false,
                queue: false,
                kind: false,
                schedule: !tag,
                batch: !tag && !schedule,
                depends_on: !tag && !schedule && !batch,
            };
        }
        IndexedFilters {
            state: true,
            queue: true,
            kind: self.queue.is_none(),
            schedule: false,
            batch: false,
            depends_on: false,
        }
    }
}

/// One page of jobs.
#[derive(Clone, Debug)]
pub struct JobPage {
    /// The jobs, in the requested order.
    pub jobs: Vec<Job>,
    /// Pass as `after` to get the next page; `None` when nothing is left. With
    /// a `scan_limit`, it may be set on a page shorter than the limit, even an
    /// empty one.
    pub next: Option<JobId>,
}

/// What a bulk change does to each job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    /// As [`crate::Store::job_retry`].
    Retry,
    /// As [`crate::Store::job_cancel`].
    Cancel,
    /// As [`crate::Store::job_delete`].
    Delete,
}

/// The same change to many jobs, in one transaction.
#[derive(Clone, Debug)]
pub struct JobsBulk {
    /// The jobs (at most [`JobsBulk::MAX_IDS`]).
    pub ids: Vec<JobId>,
    /// What to do to each.
    pub action: BulkAction,
    /// Skip jobs not in this state (checked under the same lock as the change),
    /// so "retry every dead job" never touches a job that moved meanwhile.
    pub only_state: Option<JobState>,
    /// Current time.
    pub now: Timestamp,
}

impl JobsBulk {
    /// Most jobs in one bulk change.
    pub const MAX_IDS: usize = 1_000;
}

/// What a bulk change did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Jobs changed.
    pub changed: u64,
    /// Jobs left alone: gone, or in a state the action does not apply to.
    pub skipped: u64,
}

/// A time range of throughput to read.
#[derive(Clone, Debug)]
pub struct ThroughputRange {
    /// From this time (inclusive; its minute counts whole).
    pub since: Timestamp,
    /// Until this time (exclusive).
    pub until: Timestamp,
}

/// Attempts that ended in one minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteThroughput {
    /// The minute's start (UTC).
    pub minute: Timestamp,
    /// Attempts that completed their job.
    pub completed: u64,
    /// Attempts that failed (the job became `retryable` or `dead`), including
    /// expired leases and timeouts.
    pub failed: u64,
}

impl JobPage {
    /// A page from up to `limit + 1` rows: backends fetch one extra row to learn
    /// whether another page follows without counting.
    pub fn from_rows(mut jobs: Vec<Job>, limit: usize) -> JobPage {
        let next = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| j.id)
        } else {
            None
        };
        JobPage { jobs, next }
    }
}

/// Cancel a job.
#[derive(Clone, Debug)]
pub struct JobCancel {
    /// The job.
    pub id: JobId,
    /// Current time.
    pub now: Timestamp,
}

/// Retry (or run now) a job.
#[derive(Clone, Debug)]
pub struct JobRetry {
    /// The job.
    pub id: JobId,
    /// Replace the job's args as it is requeued (a fix before another try).
    pub args: Option<Value>,
    /// Current time.
    pub now: Timestamp,
}

/// Move a job's run time.
#[derive(Clone, Debug)]
pub struct JobReschedule {
    /// The job.
    pub id: JobId,
    /// The new time to run.
    pub run_at: Timestamp,
    /// Current time.
    pub now: Timestamp,
}

/// A bounded batch of maintenance work.
#[derive(Clone, Debug)]
pub struct MaintenanceBatch {
    /// Current time.
    pub now: Timestamp,
    /// Most jobs to touch in this call.
    pub limit: usize,
}

/// A bounded batch of lease rescues.
#[derive(Clone, Debug)]
pub struct JobsRescue {
    /// Current time.
    pub now: Timestamp,
    /// Most jobs to touch in this call.
    pub limit: usize,
    /// Backoff for jobs without their own.
    pub backoff: Backoff,
}

/// Pause or resume a queue.
#[derive(Clone, Debug)]
pub struct QueuePause {
    /// The queue.
    pub queue: String,
    /// True to pause, false to resume.
    pub paused: bool,
    /// Current time.
    pub now: Timestamp,
}

/// Set or remove a queue's push target.
#[derive(Clone, Debug)]
pub struct QueuePush {
    /// The queue.
    pub queue: String,
    /// The target, or `None` to make it a pull queue again.
    pub push: Option<PushTarget>,
    /// Current time.
    pub now: Timestamp,
}

/// Set or remove a queue's limits.
#[derive(Clone, Debug)]
pub struct QueueLimitsSet {
    /// The queue.
    pub queue: String,
    /// Validated limits, or `None` to remove them.
    pub limits: Option<QueueLimits>,
    /// Current time.
    pub now: Timestamp,
}

/// Ask what a queue's limits are using.
#[derive(Clone, Debug)]
pub struct LimitUsageQuery {
    /// The queue.
    pub queue: String,
    /// A job of the queue whose partition to report in
    /// [`LimitUsage::job_partition`] (what holds it back is read from its
    /// partition's usage), or `None` (the queue's usage alone, as for
    /// metrics).
    pub job: Option<JobId>,
    /// Current time (the rate window ends here).
    pub now: Timestamp,
}

/// What a queue's limits are using now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitUsage {
    /// Whether the queue is paused.
    pub paused: bool,
    /// Its limits (`None`: it has none, and `partitions` is empty).
    pub limits: Option<QueueLimits>,
    /// Each partition with jobs running or started within the rate window,
    /// by name (the empty name: the whole queue, or jobs with no partition).
    pub partitions: Vec<PartitionUsage>,
    /// The partition of the job asked about ([`LimitUsageQuery::job`]),
    /// computed by the store from the job's row with the very expression its
    /// admission counts by, so it names an entry of `partitions` whenever
    /// that partition has jobs running or started (a value of the job's args
    /// may be written otherwise than in Rust: PostgreSQL prints
    /// `{"a": 1}` and `1e23` as `100000000000000000000000`). `None` when no
    /// job was asked about, the queue has no limits, or the job is not on
    /// the queue.
    pub job_partition: Option<String>,
}

impl LimitUsage {
    /// A limited queue's usage from what its store counted, per partition:
    /// the jobs running, and the starts within the rate window with the
    /// start that fills the window (the `count`-th newest, if there are that
    /// many), whose leaving the window lets the next one start.
    pub fn of(
        paused: bool,
        limits: QueueLimits,
        running: impl IntoIterator<Item = (String, u64)>,
        started: impl IntoIterator<Item = (String, (u64, Option<Timestamp>))>,
    ) -> LimitUsage {
        let mut usage: BTreeMap<String, PartitionUsage> = BTreeMap::new();
        for (partition, n) in running {
            usage.entry(partition).or_default().running = n;
        }
        if let Some(rate) = limits.rate {
            for (partition, (n, nth)) in started {
                let entry = usage.entry(partition).or_default();
                entry.started = n;
                entry.rate_full_until = nth
                    .filter(|_| n >= rate.count as u64)
                    .map(|at| grafter_core::time::after_ms(at, rate.period_ms));
            }
        }
        LimitUsage {
            paused,
            limits: Some(limits),
            partitions: usage
                .into_iter()
                .map(|(partition, u)| PartitionUsage { partition, ..u })
                .collect(),
            job_partition: None,
        }
    }
}

/// One partition's use of its limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionUsage {
    /// The partition.
    pub partition: String,
    /// Its jobs running now.
    pub running: u64,
    /// Its jobs started within the rate window (0 without a rate).
    pub started: u64,
    /// With the rate window full: when it next lets one start.
    pub rate_full_until: Option<Timestamp>,
}

/// Delete finished jobs.
#[derive(Clone, Debug)]
pub struct JobsPrune {
    /// Only jobs in these states (finished ones).
    pub states: Vec<JobState>,
    /// Only jobs whose `finished_at` is before this.
    pub finished_before: Timestamp,
    /// Most jobs to delete in this call.
    pub limit: usize,
}

/// Take or renew a leadership.
#[derive(Clone, Debug)]
pub struct LeaderAcquire {
    /// What is being led, e.g. `maintenance`.
    pub name: String,
    /// The node asking.
    pub node: String,
    /// How long the leadership lasts unless renewed.
    pub ttl: Duration,
    /// Current time.
    pub now: Timestamp,
}

/// Give up a leadership.
#[derive(Clone, Debug)]
pub struct LeaderRelease {
    /// What was led.
    pub name: String,
    /// The node giving it up.
    pub node: String,
}

/// A queue, its settings and its job counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Paused queues are not fetched from.
    pub paused: bool,
    /// Where its jobs are pushed, for a push queue.
    pub push: Option<PushTarget>,
    /// Its concurrency and rate limits, if any.
    pub limits: Option<QueueLimits>,
    /// Jobs per state; every state is present, zero or not.
    pub counts: BTreeMap<JobState, u64>,
    /// `run_at` of its longest-waiting available job.
    pub oldest_available_at: Option<Timestamp>,
}

impl QueueInfo {
    /// A queue with no jobs.
    pub fn empty(name: String, paused: bool) -> Self {
        QueueInfo {
            name,
            paused,
            push: None,
            limits: None,
            counts: JobState::ALL.into_iter().map(|s| (s, 0)).collect(),
            oldest_available_at: None,
        }
    }
}

/// Hand a leased job back without counting the attempt: on worker shutdown
/// (run again now, elsewhere) or when a job snoozes (run again later).
#[derive(Clone, Debug)]
pub struct JobRelease {
    /// The job.
    pub id: JobId,
    /// The lease received with the job.
    pub lease: String,
    /// When to run it next (now or later).
    pub run_at: Timestamp,
    /// Current time.
    pub now: Timestamp,
}

/// A worker's registration or heartbeat.
#[derive(Clone, Debug)]
pub struct WorkerBeat {
    /// Who it is.
    pub worker: grafter_core::WorkerRegistration,
    /// Current time.
    pub now: Timestamp,
}

/// Forget workers silent for too long and end the leases they held.
#[derive(Clone, Debug)]
pub struct WorkersPrune {
    /// Current time.
    pub now: Timestamp,
    /// A worker not heard from for this long is dead.
    pub stale_after: Duration,
}

/// What a store says of itself (`GET /v1/info`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreInfo {
    /// `sqlite` or `postgres`.
    pub kind: &'static str,
    /// The newest migration applied.
    pub schema_version: i64,
    /// Who holds each leadership (expired ones included, with their expiry).
    pub leaders: Vec<Leader>,
}

/// A leadership's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Leader {
    /// What is led, e.g. `maintenance`.
    pub name: String,
    /// The node holding it.
    pub node: String,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// Create a batch with its first jobs, in one transaction.
#[derive(Clone, Debug)]
pub struct BatchCreate {
    /// Already validated jobs without unique keys (0 or more).
    pub jobs: Vec<NewJob>,
    /// Whether more jobs may be added until it is sealed.
    pub open: bool,
    /// Already validated callbacks.
    pub callbacks: grafter_core::BatchCallbacks,
    /// Used for `created_at`, and as for [`JobsInsert::now`].
    pub now: Timestamp,
}

/// Add jobs to an open batch, in one transaction.
#[derive(Clone, Debug)]
pub struct BatchAdd {
    /// The batch.
    pub id: grafter_core::BatchId,
    /// Already validated jobs without unique keys (1 or more).
    pub jobs: Vec<NewJob>,
    /// As for [`JobsInsert::now`].
    pub now: Timestamp,
}

/// Seal or cancel a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchChange {
    /// The batch.
    pub id: grafter_core::BatchId,
    /// Current time.
    pub now: Timestamp,
}

/// A batch and the jobs a call inserted into it.
#[derive(Clone, Debug)]
pub struct BatchWithJobs {
    /// The batch after the call.
    pub batch: grafter_core::Batch,
    /// The jobs inserted, in request order.
    pub jobs: Vec<Job>,
}

/// What a job waits for (docs/dependencies.md).
#[derive(Clone, Debug, Default)]
pub struct Dependencies {
    /// Its upstream jobs, by id, whole.
    pub jobs: Vec<Job>,
    /// The batches it waits for (`depends_on_batches`), by id.
    pub batches: Vec<grafter_core::Batch>,
}

/// A page of batches, newest first.
#[derive(Clone, Copy, Debug)]
pub struct BatchesList {
    /// Continue below this id (exclusive).
    pub before: Option<grafter_core::BatchId>,
    /// Page size.
    pub limit: usize,
}

/// Delete finished batches with their jobs.
#[derive(Clone, Copy, Debug)]
pub struct BatchesPrune {
    /// Only batches whose `finished_at` is before this.
    pub finished_before: Timestamp,
    /// Most batches to delete in this call (each with all its jobs).
    pub limit: usize,
}
