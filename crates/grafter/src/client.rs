//! Enqueue typed jobs and follow them, over HTTP or in process.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use grafter_core::{
    time, Backoff, Batch, BatchCallbacks, BatchId, DependencyFailure, Job as JobRecord, JobId,
    NewJob, Upstream,
};
use grafter_engine::{Engine, EngineConfig, NewBatch};
use grafter_store::{Dependencies, Store};

use crate::error::{Error, Result};
use crate::job::Job;
use crate::transport::{EngineTransport, HttpTransport, Transport};

/// Per-enqueue settings; anything left `None` takes the job type's default.
#[derive(Clone, Debug, Default)]
pub struct EnqueueOptions {
    /// Queue (default [`Job::QUEUE`]).
    pub queue: Option<String>,
    /// Priority, lower first (default [`Job::PRIORITY`]).
    pub priority: Option<i16>,
    /// Run at this time.
    pub run_at: Option<DateTime<Utc>>,
    /// Or run after this delay.
    pub delay: Option<Duration>,
    /// Attempts before dead (default [`Job::MAX_ATTEMPTS`]).
    pub max_attempts: Option<i32>,
    /// While an unfinished job holds this key, enqueueing again returns it.
    pub unique_key: Option<String>,
    /// Longest an attempt may run (default [`Job::TIMEOUT`]).
    pub timeout: Option<Duration>,
    /// Do not start after this time.
    pub expires_at: Option<DateTime<Utc>>,
    /// Labels for searching.
    pub tags: Vec<String>,
    /// Retry backoff for this job.
    pub backoff: Option<Backoff>,
    /// The W3C `traceparent` of the trace the job continues (for example
    /// the current request's), handed to its worker with the lease and sent
    /// with its pushes; a malformed one is dropped (docs/traces.md).
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with `traceparent`.
    pub tracestate: Option<String>,
    /// Jobs this one waits for: it is `pending` until they have all
    /// finished (docs/dependencies.md).
    pub depends_on: Vec<JobId>,
    /// Sealed batches this one waits for: it is `pending` until they have
    /// all finished.
    pub depends_on_batches: Vec<BatchId>,
    /// What to do when one of them ends dead, cancelled or expired, or a
    /// batch other than succeeded (default: cancel this job too).
    pub on_dependency_failure: Option<DependencyFailure>,
}

impl EnqueueOptions {
    /// Builds the stored form of `job` with these options over its type's defaults.
    pub fn to_new_job<J: Job>(&self, job: &J) -> Result<NewJob> {
        let mut new = NewJob::new(J::KIND, serde_json::to_value(job)?);
        new.queue = self.queue.clone().unwrap_or_else(|| J::QUEUE.to_owned());
        new.priority = self.priority.unwrap_or(J::PRIORITY);
        new.run_at = match (self.run_at, self.delay) {
            (Some(at), _) => Some(at),
            (None, Some(delay)) => Some(time::after(Utc::now(), delay)),
            (None, None) => None,
        };
        new.max_attempts = self.max_attempts.unwrap_or(J::MAX_ATTEMPTS);
        new.unique_key = self.unique_key.clone();
        new.timeout_ms = self
            .timeout
            .or(J::TIMEOUT)
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        new.expires_at = self.expires_at;
        new.tags = self.tags.clone();
        new.backoff = self.backoff;
        new.traceparent = self.traceparent.clone();
        new.tracestate = self.tracestate.clone();
        new.depends_on = self.depends_on.iter().copied().map(Upstream::Job).collect();
        new.depends_on_batches = self.depends_on_batches.clone();
        new.on_dependency_failure = self.on_dependency_failure;
        new.validate()?;
        Ok(new)
    }
}

/// An enqueued job.
#[derive(Clone, Debug)]
pub struct Enqueued {
    /// The job as stored.
    pub job: JobRecord,
    /// False when an unfinished job with the same `unique_key` was returned instead.
    pub created: bool,
}

/// Enqueues jobs and reads their state. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> grafter::Result<()> {
/// // Over HTTP to a running `grafter serve`:
/// let client = grafter::Client::http("http://127.0.0.1:7380")?;
/// // Or in process, on a SQLite file:
/// let client = grafter::Client::open("sqlite://jobs.db").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) transport: Arc<dyn Transport>,
    /// For an in-process client: the engine its calls (and its workers'
    /// maintenance) run on.
    pub(crate) engine: Option<Engine>,
}

impl Client {
    /// A client of the server at `url`, e.g. `http://127.0.0.1:7380`.
    pub fn http(url: &str) -> Result<Client> {
        Self::http_with_token(url, None)
    }

    /// A client of the server at `url` that sends a bearer token.
    pub fn http_with_token(url: &str, token: Option<String>) -> Result<Client> {
        Ok(Client {
            transport: Arc::new(HttpTransport::new(url, token)?),
            engine: None,
        })
    }

    /// A client from the environment: `GRAFTER_URL` (default
    /// `http://127.0.0.1:7380`) and `GRAFTER_TOKEN`.
    pub fn from_env() -> Result<Client> {
        let url =
            std::env::var("GRAFTER_URL").unwrap_or_else(|_| "http://127.0.0.1:7380".to_owned());
        Self::http_with_token(&url, std::env::var("GRAFTER_TOKEN").ok())
    }

    /// An in-process client straight on `store`; failed jobs back off by `Backoff::default()`.
    pub fn from_store(store: Arc<dyn Store>) -> Client {
        Self::from_store_with_backoff(store, Backoff::default())
    }

    /// An in-process client on `store` with the default retry backoff given.
    pub fn from_store_with_backoff(store: Arc<dyn Store>, backoff: Backoff) -> Client {
        let config = EngineConfig {
            retry: backoff,
            ..EngineConfig::default()
        };
        Self::from_engine(Engine::new(store, config))
    }

    /// An in-process client on `engine` (for instance the one a `grafter
    /// serve` in this process runs on, so both count the same jobs).
    pub fn from_engine(engine: Engine) -> Client {
        Client {
            transport: Arc::new(EngineTransport::new(engine.clone())),
            engine: Some(engine),
        }
    }

    /// Opens the database a URL names (`sqlite://PATH` with the `sqlite`
    /// feature, `postgres://…` with `postgres`) in this process and returns a
    /// client on it.
    pub async fn open(database_url: &str) -> Result<Client> {
        let store = grafter_engine::open(database_url, &Default::default())
            .await
            .map_err(|e| match e {
                grafter_engine::OpenError::Store(e) => Error::from(e),
                other => Error::Other(other.to_string()),
            })?;
        Ok(Self::from_store(store))
    }

    /// The store, for an in-process client.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.engine.as_ref().map(Engine::store)
    }

    /// Enqueues `job` with its type's defaults.
    pub async fn enqueue<J: Job>(&self, job: J) -> Result<Enqueued> {
        self.enqueue_with(job, EnqueueOptions::default()).await
    }

    /// Enqueues `job` with options.
    pub async fn enqueue_with<J: Job>(&self, job: J, options: EnqueueOptions) -> Result<Enqueued> {
        let new = options.to_new_job(&job)?;
        let (job, created) = self
            .transport
            .enqueue(vec![new])
            .await?
            .pop()
            .ok_or_else(|| Error::Other("the server returned no job".into()))?;
        Ok(Enqueued { job, created })
    }

    /// Enqueues many jobs in one transaction: all are stored, or none.
    pub async fn enqueue_many<J: Job>(
        &self,
        jobs: impl IntoIterator<Item = J>,
    ) -> Result<Vec<JobRecord>> {
        let options = EnqueueOptions::default();
        let new = jobs
            .into_iter()
            .map(|j| options.to_new_job(&j))
            .collect::<Result<Vec<_>>>()?;
        self.enqueue_raw(new).await
    }

    /// Enqueues untyped jobs (any kind, JSON args) in one transaction.
    pub async fn enqueue_raw(&self, jobs: Vec<NewJob>) -> Result<Vec<JobRecord>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .transport
            .enqueue(jobs)
            .await?
            .into_iter()
            .map(|(job, _)| job)
            .collect())
    }

    /// Creates a batch with its jobs in one transaction (all or none):
    /// the batch and its jobs (docs/batches.md). Typed jobs become
    /// [`NewJob`]s with [`EnqueueOptions::to_new_job`].
    pub async fn create_batch(
        &self,
        jobs: Vec<NewJob>,
        open: bool,
        callbacks: BatchCallbacks,
    ) -> Result<(Batch, Vec<JobRecord>)> {
        self.transport
            .batch_create(NewBatch {
                jobs,
                open,
                callbacks,
            })
            .await
    }

    /// Adds jobs to an open batch (a job of the batch may, while it runs).
    pub async fn add_to_batch(
        &self,
        id: BatchId,
        jobs: Vec<NewJob>,
    ) -> Result<(Batch, Vec<JobRecord>)> {
        self.transport.batch_add(id, jobs).await
    }

    /// Seals a batch: no more jobs; it settles once they have all finished.
    pub async fn seal_batch(&self, id: BatchId) -> Result<Batch> {
        self.transport.batch_seal(id).await
    }

    /// Cancels a batch's waiting jobs and asks its running ones to stop.
    pub async fn cancel_batch(&self, id: BatchId) -> Result<Batch> {
        self.transport.batch_cancel(id).await
    }

    /// A batch's state, counts and progress.
    pub async fn batch(&self, id: BatchId) -> Result<Batch> {
        self.transport.batch_get(id).await
    }

    /// A job's current state.
    pub async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.transport.get(id).await
    }

    /// What `id` waits for: the jobs it depends on, with their states and
    /// results (what a dependent reads of the work before it), and the
    /// batches.
    pub async fn dependencies(&self, id: JobId) -> Result<Dependencies> {
        self.transport.dependencies(id).await
    }

    /// Cancels a job; a running one is asked to stop.
    pub async fn cancel(&self, id: JobId) -> Result<JobRecord> {
        self.transport.cancel(id).await
    }

    /// Waits until the job is finished (completed, dead, cancelled or expired)
    /// and returns it; `Err(WaitTimeout)` after `timeout`.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<JobRecord> {
        self.wait_with_progress(id, timeout, |_| {}).await
    }

    /// Like [`Client::wait`], calling `on_change` whenever the job's state,
    /// attempt or progress changes. Each wait is the server's (or the
    /// engine's) long-poll of the job's next change: nothing polls.
    pub async fn wait_with_progress(
        &self,
        id: JobId,
        timeout: Duration,
        mut on_change: impl FnMut(&JobRecord),
    ) -> Result<JobRecord> {
        // A timeout past what an instant can hold (`Duration::MAX`) waits
        // as long as a century: for ever, in practice.
        let start = tokio::time::Instant::now();
        let deadline = start
            .checked_add(timeout)
            .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600));
        let (mut job, mut after) = self.transport.job_change(id, None, Duration::ZERO).await?;
        on_change(&job);
        let mut seen = (job.state, job.attempt, job.progress.clone());
        loop {
            if job.state.is_finished() {
                return Ok(job);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Error::WaitTimeout(id));
            }
            (job, after) = self.transport.job_change(id, Some(after), left).await?;
            let now = (job.state, job.attempt, job.progress.clone());
            if now != seen {
                on_change(&job);
                seen = now;
            }
        }
    }
}
