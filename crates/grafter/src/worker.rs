//! The worker runtime: fetch jobs in batches, run them with heartbeats, record
//! outcomes, and shut down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use grafter_core::trace::JobTrace;
use grafter_core::{Job as JobRecord, JobId, LeasedJob, Progress, WorkerRegistration};
use grafter_engine::maintenance::{
    Maintenance, MaintenanceConfig, MaintenanceHealth, RetentionConfig,
};
use grafter_engine::{Ack, AckOutcome, Engine, FetchRequest, Outcome, Retry, When};
use grafter_store::transitions::{truncate, MAX_ERROR_LEN};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::hooks::{Hooks, JobInfo, JobOutcome};
use crate::job::{ErrorAction, Job, JobContext, JobError};
use crate::transport::Transport;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs one registered kind from JSON args (for workers and push endpoints).
pub(crate) trait Handler: Send + Sync {
    fn run(&self, args: Value, ctx: JobContext) -> BoxFuture<Result<Option<Value>, JobError>>;
}

pub(crate) struct Typed<J>(pub(crate) PhantomData<fn() -> J>);

impl<J: Job> Handler for Typed<J> {
    fn run(&self, args: Value, ctx: JobContext) -> BoxFuture<Result<Option<Value>, JobError>> {
        Box::pin(async move {
            // Arguments that do not decode will not decode next time either.
            let job: J = serde_json::from_value(args)
                .map_err(|e| JobError::fail(format!("cannot decode args of {}: {e}", J::KIND)))?;
            let output = job.perform(ctx).await?;
            let value = serde_json::to_value(output)
                .map_err(|e| JobError::fail(format!("cannot encode result of {}: {e}", J::KIND)))?;
            Ok(Some(value).filter(|v| !v.is_null()))
        })
    }
}

/// Most jobs one queue of a worker may run at once.
pub const MAX_CONCURRENCY: usize = 1_000_000;

/// Configures a [`Worker`].
pub struct WorkerBuilder {
    client: Client,
    handlers: HashMap<String, Arc<dyn Handler>>,
    queues: Vec<(String, usize)>,
    lease: Duration,
    poll_wait: Duration,
    shutdown_timeout: Duration,
    heartbeat_interval: Option<Duration>,
    registry_interval: Duration,
    hooks: Vec<Arc<dyn Hooks>>,
    maintenance: bool,
}

impl WorkerBuilder {
    /// Runs jobs of type `J`.
    pub fn register<J: Job>(mut self) -> Self {
        self.handlers
            .insert(J::KIND.to_owned(), Arc::new(Typed::<J>(PhantomData)));
        self
    }

    /// Takes jobs from `queue`, running at most `concurrency` at once (1 to
    /// [`MAX_CONCURRENCY`]; [`WorkerBuilder::build`] refuses others).
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push((queue.into(), concurrency));
        self
    }

    /// Lease length per fetch (default 30 s; at least 1 s, and
    /// [`WorkerBuilder::build`] refuses more than 24 h). Heartbeats renew it
    /// every third of it, so a job may run far longer; a dead worker's jobs
    /// come back after it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// How often a running job's lease is renewed (default a third of the
    /// lease; [`WorkerBuilder::build`] refuses one not shorter than the lease).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval.max(Duration::from_millis(50)));
        self
    }

    /// How long one fetch waits for jobs on an idle queue (default 10 s; past
    /// the server's or engine's `max_wait_ms`, 30 s by default, it waits that
    /// long). New jobs wake it at once; this only bounds each wait.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    /// On shutdown, how long running jobs may take to finish before they are
    /// stopped and handed back (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Adds hooks around every job.
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks.push(Arc::new(hooks));
        self
    }

    /// For an in-process client: whether this worker also runs the maintenance
    /// services (scheduler, rescuer, expirer, pruner, under the cluster's
    /// leader election) on its store. Default true; turn it off when a
    /// `grafter serve` in the same process already runs them.
    pub fn maintenance(mut self, enabled: bool) -> Self {
        self.maintenance = enabled;
        self
    }

    /// Builds the worker. Fails if no kind is registered.
    pub fn build(self) -> Result<Worker> {
        if self.handlers.is_empty() {
            return Err(Error::Other(
                "register at least one job kind with .register::<J>()".into(),
            ));
        }
        let mut queues = self.queues;
        if queues.is_empty() {
            queues.push((grafter_core::DEFAULT_QUEUE.to_owned(), 10));
        }
        for (queue, concurrency) in &queues {
            grafter_core::validate_path_name("queue", queue)
                .map_err(|e| Error::Other(format!("queue {queue:?}: {}", e.message)))?;
            if !(1..=MAX_CONCURRENCY).contains(concurrency) {
                return Err(Error::Other(format!(
                    "queue {queue:?}: concurrency must be 1 to {MAX_CONCURRENCY}, got {concurrency}"
                )));
            }
        }
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        if !grafter_engine::LEASE_RANGE_MS.contains(&lease_ms) {
            return Err(Error::Other(format!(
                "the lease must be {} to {} ms, got {lease_ms}",
                grafter_engine::LEASE_RANGE_MS.start(),
                grafter_engine::LEASE_RANGE_MS.end()
            )));
        }
        let heartbeat_interval = self.heartbeat_interval.unwrap_or(self.lease / 3);
        if heartbeat_interval >= self.lease {
            return Err(Error::Other(format!(
                "the heartbeat interval ({heartbeat_interval:?}) must be shorter than the lease \
                 ({:?}), which it renews",
                self.lease
            )));
        }
        let host = hostname();
        let pid = std::process::id();
        let registration = WorkerRegistration {
            id: format!("{host}-{pid}-{:08x}", rand::random::<u32>()),
            host,
            pid,
            queues: queues.iter().map(|(q, _)| q.clone()).collect(),
            concurrency: queues.iter().fold(0u32, |sum, (_, c)| {
                sum.saturating_add(u32::try_from(*c).unwrap_or(u32::MAX))
            }),
            kinds: {
                let mut kinds: Vec<_> = self.handlers.keys().cloned().collect();
                kinds.sort();
                kinds
            },
        };
        Ok(Worker {
            inner: Arc::new(Inner {
                transport: self.client.transport.clone(),
                engine: self.client.engine.clone(),
                handlers: self.handlers,
                queues,
                lease: self.lease,
                poll_wait: self.poll_wait,
                shutdown_timeout: self.shutdown_timeout,
                heartbeat_interval,
                registry_interval: self.registry_interval,
                hooks: self.hooks,
                maintenance: self.maintenance,
                registration,
            }),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Runs registered jobs from its queues. Build with [`Worker::builder`].
///
/// ```no_run
/// # use grafter::{Client, Job, JobContext, JobError, Worker};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct SendEmail;
/// # impl Job for SendEmail { const KIND: &'static str = "send_email"; type Output = ();
/// #   async fn perform(self, _: JobContext) -> Result<(), JobError> { Ok(()) } }
/// # async fn demo() -> grafter::Result<()> {
/// let client = Client::http("http://127.0.0.1:7380")?;
/// let worker = Worker::builder(&client)
///     .register::<SendEmail>()
///     .queue("default", 10)
///     .build()?;
/// worker.run_until_signal().await; // SIGINT/SIGTERM: finish running jobs, hand back the rest
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    /// For an in-process client: the engine its maintenance runs on.
    engine: Option<Engine>,
    handlers: HashMap<String, Arc<dyn Handler>>,
    queues: Vec<(String, usize)>,
    lease: Duration,
    poll_wait: Duration,
    shutdown_timeout: Duration,
    heartbeat_interval: Duration,
    registry_interval: Duration,
    hooks: Vec<Arc<dyn Hooks>>,
    maintenance: bool,
    registration: WorkerRegistration,
}

/// A started worker; [`WorkerHandle::shutdown`] stops it gracefully.
pub struct WorkerHandle {
    inner: Arc<Inner>,
    /// Stops fetching.
    stop_fetching: CancellationToken,
    /// Stops running jobs; they are handed back.
    stop_jobs: CancellationToken,
    /// Stops the registry heartbeat and in-process maintenance.
    stop_background: CancellationToken,
    fetchers: TaskTracker,
    jobs: TaskTracker,
    background: TaskTracker,
}

impl Worker {
    /// Starts configuring a worker on `client`'s transport.
    pub fn builder(client: &Client) -> WorkerBuilder {
        WorkerBuilder {
            client: client.clone(),
            handlers: HashMap::new(),
            queues: Vec::new(),
            lease: Duration::from_secs(30),
            poll_wait: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            heartbeat_interval: None,
            registry_interval: Duration::from_secs(5),
            hooks: Vec::new(),
            maintenance: true,
        }
    }

    /// This worker's identity, unique per start.
    pub fn id(&self) -> &str {
        &self.inner.registration.id
    }

    /// Starts fetching and running jobs in the background, until
    /// [`WorkerHandle::shutdown`] (dropping the handle does not stop it).
    #[must_use = "the worker runs until WorkerHandle::shutdown; keep the handle to stop it"]
    pub fn start(&self) -> WorkerHandle {
        let handle = WorkerHandle {
            inner: self.inner.clone(),
            stop_fetching: CancellationToken::new(),
            stop_jobs: CancellationToken::new(),
            stop_background: CancellationToken::new(),
            fetchers: TaskTracker::new(),
            jobs: TaskTracker::new(),
            background: TaskTracker::new(),
        };
        handle.background.spawn(registry_loop(
            self.inner.clone(),
            handle.stop_background.clone(),
        ));
        if let (true, Some(engine)) = (self.inner.maintenance, &self.inner.engine) {
            let services = Maintenance::start(
                engine,
                &MaintenanceConfig::default(),
                &RetentionConfig::default(),
                MaintenanceHealth::default(),
                handle.stop_background.child_token(),
            );
            let stop = handle.stop_background.clone();
            handle.background.spawn(async move {
                stop.cancelled().await;
                services.stop().await;
            });
        }
        // Stops with the background tasks, after every job has finished and had its answer.
        let acks = Acks::start(
            self.inner.transport.clone(),
            &handle.background,
            handle.stop_background.clone(),
        );
        for (queue, concurrency) in &self.inner.queues {
            handle.fetchers.spawn(fetch_loop(
                self.inner.clone(),
                queue.clone(),
                Arc::new(Semaphore::new(*concurrency)),
                handle.jobs.clone(),
                Ctl {
                    acks: acks.clone(),
                    stop_fetching: handle.stop_fetching.clone(),
                    stop_jobs: handle.stop_jobs.clone(),
                },
            ));
        }
        tracing::info!(worker = %self.inner.registration.id, queues = ?self.inner.registration.queues, "worker started");
        handle
    }

    /// Starts, runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(&self) {
        let handle = self.start();
        wait_for_signal().await;
        tracing::info!("signal received: finishing running jobs");
        handle.shutdown().await;
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

impl WorkerHandle {
    /// Stops fetching, lets running jobs finish within the shutdown timeout, then
    /// stops the rest and hands their leases back so they run again at once
    /// elsewhere (not counted as failed attempts).
    pub async fn shutdown(self) {
        let timeout = self.inner.shutdown_timeout;
        self.shutdown_within(timeout).await
    }

    /// [`WorkerHandle::shutdown`] with an explicit time for running jobs to finish.
    pub async fn shutdown_within(self, timeout: Duration) {
        self.stop_fetching.cancel();
        self.fetchers.close();
        self.fetchers.wait().await;
        self.jobs.close();
        if tokio::time::timeout(timeout, self.jobs.wait())
            .await
            .is_err()
        {
            tracing::info!("shutdown timeout reached: handing unfinished jobs back");
            self.stop_jobs.cancel();
            self.jobs.wait().await;
        }
        self.stop_background.cancel();
        self.background.close();
        self.background.wait().await;
        if let Err(e) = self
            .inner
            .transport
            .worker_gone(&self.inner.registration.id)
            .await
        {
            tracing::warn!(error = %e, "could not deregister the worker");
        }
        tracing::info!(worker = %self.inner.registration.id, "worker stopped");
    }
}

async fn registry_loop(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        if let Err(e) = inner.transport.worker_beat(&inner.registration).await {
            tracing::warn!(error = %e, "worker heartbeat failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(inner.registry_interval) => {}
        }
    }
}

/// What a fetch loop hands each job: where its ack goes, and the signals to stop.
struct Ctl {
    acks: Acks,
    stop_fetching: CancellationToken,
    stop_jobs: CancellationToken,
}

async fn fetch_loop(
    inner: Arc<Inner>,
    queue: String,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    ctl: Ctl,
) {
    let Ctl {
        acks,
        stop_fetching,
        stop_jobs,
    } = ctl;
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop_fetching.cancelled() => return,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_FETCH {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            permits.push(permit);
        }
        let fetch = FetchRequest {
            queues: vec![queue.clone()],
            max: permits.len(),
            wait: inner.poll_wait,
            lease: Some(inner.lease),
            worker_id: Some(inner.registration.id.clone()),
            running_limit: None,
        };
        match inner.transport.fetch(fetch, &stop_fetching).await {
            Ok(leased) if stop_fetching.is_cancelled() => {
                // Leased as we were stopping: hand them straight back.
                for job in leased {
                    let release = Outcome::Released { run_at: When::Now };
                    if let Err(e) = inner
                        .transport
                        .record(job.job.id, &job.lease, &release)
                        .await
                    {
                        tracing::warn!(job = %job.job.id, error = %e, "could not hand back a job leased while stopping");
                    }
                }
                return;
            }
            Ok(leased) => {
                failures = 0;
                for job in leased {
                    let Some(permit) = permits.pop() else { break };
                    jobs.spawn(execute(
                        inner.clone(),
                        job,
                        permit,
                        acks.clone(),
                        stop_jobs.clone(),
                    ));
                }
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(queue = %queue, error = %e, ?pause, "fetch failed; retrying");
                tokio::select! {
                    _ = stop_fetching.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// What the run produced, before it is recorded.
enum RunEnd {
    Done(Result<Option<Value>, JobError>),
    Panicked(String),
    TimedOut,
    CancelledByRequest,
    ShuttingDown,
    LeaseLost,
}

async fn execute(
    inner: Arc<Inner>,
    leased: LeasedJob,
    slot: OwnedSemaphorePermit,
    acks: Acks,
    stop_jobs: CancellationToken,
) {
    let LeasedJob { job, lease } = leased;
    let info = JobInfo {
        id: job.id,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
    };
    // The run's place in the trace the job was enqueued in (docs/traces.md):
    // a child of the enqueuer's span on a first attempt that ran when due,
    // else a new trace whose `link.*` fields name the stored context.
    let trace = JobTrace::for_run(&job);
    let span = tracing::info_span!(
        "grafter.job",
        id = %job.id,
        kind = %job.kind,
        queue = %job.queue,
        attempt = job.attempt,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
        parent_id = trace.parent_id.as_deref(),
        link.trace_id = trace.link.as_ref().map(|l| l.trace_id.as_str()),
        link.span_id = trace.link.as_ref().map(|l| l.parent_id.as_str()),
    );
    let traceparent = trace.traceparent();
    // Boxed: the job's whole life is a large future, and the task would
    // otherwise copy it each time it is moved on its way to being spawned.
    Box::pin(async move {
        for hook in &inner.hooks {
            call_hook("before_job", || hook.before_job(&info));
        }
        let end = run(&inner, &job, &lease, traceparent, &stop_jobs).await;
        let (to_record, outcome) = decide(&inner, &job, &info, end).await;
        let outcome = match to_record {
            Some(to_record) => {
                match record(&inner, &acks, slot, &job, &lease, &to_record, &stop_jobs).await {
                    Ok(recorded) => refine(outcome, recorded.as_ref()),
                    Err(_) => JobOutcome::LeaseLost,
                }
            }
            None => outcome,
        };
        tracing::debug!(?outcome, "job finished");
        for hook in &inner.hooks {
            call_hook("after_job", || hook.after_job(&info, &outcome));
        }
    })
    .instrument(span)
    .await
}

/// Runs the job with its heartbeat, timeout, cancellation and shutdown.
async fn run(
    inner: &Arc<Inner>,
    job: &JobRecord,
    lease: &str,
    traceparent: String,
    stop_jobs: &CancellationToken,
) -> RunEnd {
    let Some(handler) = inner.handlers.get(&job.kind).cloned() else {
        return RunEnd::Done(Err(JobError::retry(format!(
            "no handler for kind '{}' in worker {} (it runs: {})",
            job.kind,
            inner.registration.id,
            inner.registration.kinds.join(", ")
        ))));
    };
    let (progress, progress_seen) = watch::channel(None);
    let cancel_requested = CancellationToken::new();
    let lease_lost = CancellationToken::new();
    let ctx = JobContext {
        id: job.id,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        queue: job.queue.clone(),
        progress,
        cancel: cancel_requested.clone(),
        traceparent: Some(traceparent),
    };
    // Polled alongside the job rather than spawned: it only waits on timers
    // and the progress channel, and the job runs in a task of its own anyway.
    // It acts through the tokens; once it ends (lease lost), it stays pending.
    let heartbeat = async {
        heartbeat_loop(
            inner,
            job.id,
            lease,
            progress_seen,
            &cancel_requested,
            &lease_lost,
        )
        .await;
        std::future::pending::<std::convert::Infallible>().await
    };
    // Its own task, so a panic is caught and a timeout can abort it.
    let mut task = tokio::spawn(handler.run(job.args.clone(), ctx).in_current_span());
    let timeout = job
        .timeout_ms
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    let timed_out = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    // A job asked to cancel gets a moment to stop by itself before it is aborted.
    let cancel_grace = async {
        cancel_requested.cancelled().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let end = tokio::select! {
        joined = &mut task => match joined {
            Ok(result) if cancel_requested.is_cancelled() && result.is_err() => RunEnd::CancelledByRequest,
            Ok(result) => RunEnd::Done(result),
            Err(e) if e.is_panic() => RunEnd::Panicked(panic_message(e.into_panic())),
            Err(_) => RunEnd::ShuttingDown,
        },
        _ = timed_out => { task.abort(); RunEnd::TimedOut }
        _ = cancel_grace => { task.abort(); RunEnd::CancelledByRequest }
        _ = stop_jobs.cancelled() => { task.abort(); RunEnd::ShuttingDown }
        _ = lease_lost.cancelled() => { task.abort(); RunEnd::LeaseLost }
        never = heartbeat => match never {},
    };
    end
}

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let detail = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("panicked: {detail}")
}

async fn heartbeat_loop(
    inner: &Inner,
    id: grafter_core::JobId,
    lease: &str,
    mut progress: watch::Receiver<Option<Progress>>,
    cancel_requested: &CancellationToken,
    lease_lost: &CancellationToken,
) {
    let mut progress_open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.heartbeat_interval) => {}
            changed = progress.changed(), if progress_open => {
                if changed.is_err() {
                    progress_open = false;
                    continue;
                }
                // Let a burst of updates settle into one heartbeat.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut current = progress.borrow_and_update().clone();
        let answer = loop {
            let answer = inner
                .transport
                .heartbeat(id, lease, current.clone(), inner.lease)
                .await;
            match answer {
                // Progress the server refuses (over its body limit, say) would
                // be refused again at every beat, and the lease would run out.
                Err(ref e @ Error::Rejected { .. }) if current.is_some() => {
                    tracing::warn!(error = %e, "progress refused and dropped; renewing the lease without it");
                    current = None;
                }
                answer => break answer,
            }
        };
        match answer {
            Ok(job) if job.cancel_requested => cancel_requested.cancel(),
            Ok(_) => {}
            Err(Error::LeaseLost(reason)) => {
                tracing::warn!(%reason, "lease lost; stopping the job");
                lease_lost.cancel();
                return;
            }
            Err(Error::NotFound(_)) => {
                tracing::warn!("job deleted while running; stopping it");
                lease_lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
        }
    }
}

/// Calls one hook; a hook that panics is logged, and the job's outcome is
/// recorded all the same.
fn call_hook(name: &str, hook: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)) {
        tracing::error!(hook = name, panic = %panic_message(payload), "a hook panicked");
    }
}

/// Turns how the run ended into what to record, and tells the failure hooks.
async fn decide(
    inner: &Arc<Inner>,
    job: &JobRecord,
    info: &JobInfo,
    end: RunEnd,
) -> (Option<Outcome>, JobOutcome) {
    let retry_left = job.attempt < job.max_attempts;
    let failed = |error: String, retry: Retry| {
        for hook in &inner.hooks {
            call_hook("on_failure", || hook.on_failure(info, &error));
        }
        let outcome = JobOutcome::Failed {
            error: error.clone(),
            will_retry: retry != Retry::Never && retry_left,
        };
        (Some(Outcome::Failed { error, retry }), outcome)
    };
    let release = |run_at| Some(Outcome::Released { run_at });
    match end {
        RunEnd::Done(Ok(result)) => (Some(Outcome::Completed { result }), JobOutcome::Completed),
        RunEnd::Done(Err(error)) => match error.action {
            ErrorAction::Retry(None) => failed(error.message, Retry::Backoff),
            ErrorAction::Retry(Some(after)) => failed(error.message, Retry::At(When::After(after))),
            ErrorAction::Fail => failed(error.message, Retry::Never),
            ErrorAction::Cancel => {
                // Ask for the cancel first, so the failure below lands as `cancelled`.
                if let Err(e) = inner.transport.cancel(job.id).await {
                    tracing::warn!(error = %e, "could not request the cancel");
                }
                let failed = Outcome::Failed {
                    error: error.message,
                    retry: Retry::Never,
                };
                (Some(failed), JobOutcome::Cancelled)
            }
            ErrorAction::Snooze(delay) => (release(When::After(delay)), JobOutcome::Snoozed),
        },
        RunEnd::Panicked(message) => failed(message, Retry::Backoff),
        RunEnd::TimedOut => failed(
            grafter_store::transitions::TIMED_OUT.to_owned(),
            Retry::Backoff,
        ),
        RunEnd::CancelledByRequest => {
            let failed = Outcome::Failed {
                error: "cancelled on request".into(),
                retry: Retry::Never,
            };
            (Some(failed), JobOutcome::Cancelled)
        }
        RunEnd::ShuttingDown => (release(When::Now), JobOutcome::Released),
        RunEnd::LeaseLost => (None, JobOutcome::LeaseLost),
    }
}

/// The recorded state may differ from the plan (a cancel requested meanwhile).
/// A batch ack answers no job record: completed is completed.
fn refine(outcome: JobOutcome, recorded: Option<&JobRecord>) -> JobOutcome {
    let Some(recorded) = recorded else {
        return outcome;
    };
    match (&outcome, recorded.state) {
        // A success whose result could not be recorded was recorded as a failure.
        (JobOutcome::Completed, state) if state != grafter_core::JobState::Completed => {
            JobOutcome::Failed {
                error: recorded
                    .errors
                    .last()
                    .map(|e| e.error.clone())
                    .unwrap_or_default(),
                will_retry: state == grafter_core::JobState::Retryable,
            }
        }
        (JobOutcome::Failed { .. }, grafter_core::JobState::Cancelled) => JobOutcome::Cancelled,
        (JobOutcome::Failed { error, .. }, state) => JobOutcome::Failed {
            error: error.clone(),
            will_retry: state == grafter_core::JobState::Retryable,
        },
        _ => outcome,
    }
}

/// Records the outcome, retrying while the server or database is unreachable so
/// that a finished job's result is not lost to a blip. Gives up once the lease
/// has surely expired, or the worker's shutdown stops its jobs: the job will
/// run again elsewhere.
/// Successes go through `acks`, batched with other jobs' (no record comes back).
/// The job's `slot` is held until the outcome is recorded, except for a
/// success: its slot goes to the next job as soon as it has a place in the ack
/// backlog, so a worker keeps running `concurrency` jobs while their
/// predecessors' acks commit.
///
/// An outcome the server or store refuses is not given up on: a success
/// whose result is over the server's body limit is recorded without it (the
/// job ran; only its result is lost), one whose result cannot be stored
/// otherwise becomes a failure saying so, with no retry (running it again
/// would make the same result), and an error message is cut to what the
/// store keeps before it is sent.
async fn record(
    inner: &Arc<Inner>,
    acks: &Acks,
    slot: OwnedSemaphorePermit,
    job: &JobRecord,
    lease: &str,
    outcome: &Outcome,
    stop_jobs: &CancellationToken,
) -> Result<Option<JobRecord>> {
    let _held = match outcome {
        Outcome::Completed { .. } => acks.hand_over(slot).await,
        _ => slot,
    };
    let mut outcome = match outcome {
        Outcome::Failed { error, retry } => Outcome::Failed {
            error: truncate(error, MAX_ERROR_LEN).to_owned(),
            retry: *retry,
        },
        other => other.clone(),
    };
    let give_up = tokio::time::Instant::now() + inner.lease;
    let mut pause = Duration::from_millis(50);
    loop {
        let recorded = match &outcome {
            Outcome::Completed { result } => match acks.send(job.id, lease, result.clone()).await {
                Ok(AckOutcome::Completed) => Ok(None),
                Ok(AckOutcome::NotFound) => Err(Error::NotFound(job.id)),
                Ok(AckOutcome::LeaseMismatch { state, attempt }) => Err(Error::LeaseLost(format!(
                    "job {}: lease is not current (the job is {state}, attempt {attempt})",
                    job.id
                ))),
                Err(e) => Err(e),
            },
            other => inner.transport.record(job.id, lease, other).await.map(Some),
        };
        match recorded {
            Ok(recorded) => return Ok(recorded),
            Err(e @ Error::Rejected { .. })
                if matches!(outcome, Outcome::Completed { result: Some(_) }) =>
            {
                outcome = if is_too_large(&e) {
                    tracing::warn!(error = %e, "the job completed; its result is too large to keep and is dropped");
                    Outcome::Completed { result: None }
                } else {
                    Outcome::Failed {
                        error: format!(
                            "the job finished but its result could not be recorded: {e}"
                        ),
                        retry: Retry::Never,
                    }
                };
            }
            Err(e)
                if e.is_transient()
                    && tokio::time::Instant::now() + pause < give_up
                    && !stop_jobs.is_cancelled() =>
            {
                tracing::warn!(error = %e, ?pause, "could not record the outcome; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop_jobs.cancelled() => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::warn!(error = %e, "outcome not recorded; the job will run again after its lease");
                return Err(e);
            }
        }
    }
}

/// Whether a refusal says the request was over the server's body limit.
fn is_too_large(e: &Error) -> bool {
    matches!(e, Error::Rejected { code, status, .. }
        if code == "payload_too_large" || *status == Some(413))
}

/// Most jobs asked for in one fetch: the server's limit.
const MAX_FETCH: usize = 1_000;
/// Most acks sent in one batch: the server's limit.
const MAX_ACKS: usize = 1_000;
/// Batches on their way at once. Two keep a PostgreSQL store's work on two
/// connections (and cores) and an HTTP worker's link busy while an answer
/// travels back; more would only make each batch smaller.
const ACKS_IN_FLIGHT: usize = 2;
/// Successes whose job has handed its slot on and that wait for their batch to
/// commit: the batches in flight and the one gathering. Past this, finished
/// jobs keep their slots, so a slow store slows fetching instead of piling up
/// acks.
const ACK_BACKLOG: usize = MAX_ACKS * (ACKS_IN_FLIGHT + 1);

/// A job's success on its way, and where its answer goes.
struct PendingAck {
    ack: Ack,
    reply: oneshot::Sender<Result<AckOutcome>>,
}

/// Sends the successes of jobs that finish close together in one call, like a
/// group commit: while batches are on their way, the next one gathers. A job
/// finishing alone is sent at once, so a quiet worker adds no delay.
#[derive(Clone)]
struct Acks {
    pending: mpsc::UnboundedSender<PendingAck>,
    /// Places for successes waiting without a slot (`ACK_BACKLOG`).
    backlog: Arc<Semaphore>,
}

impl Acks {
    /// Starts the sending task on `tasks`; it ends when `stop` fires.
    fn start(transport: Arc<dyn Transport>, tasks: &TaskTracker, stop: CancellationToken) -> Acks {
        let (sender, pending) = mpsc::unbounded_channel();
        tasks.spawn(ack_loop(transport, pending, stop));
        Acks {
            pending: sender,
            backlog: Arc::new(Semaphore::new(ACK_BACKLOG)),
        }
    }

    /// Trades a finished job's slot for a place in the backlog, waiting for
    /// one if the backlog is full; the place is held until the job's success
    /// is recorded.
    async fn hand_over(&self, slot: OwnedSemaphorePermit) -> OwnedSemaphorePermit {
        match self.backlog.clone().acquire_owned().await {
            Ok(place) => place,
            // Never closed; should it be, the job simply keeps its slot.
            Err(_) => slot,
        }
    }

    /// Completes one job, fenced by its lease, and answers what that came to.
    async fn send(&self, id: JobId, lease: &str, result: Option<Value>) -> Result<AckOutcome> {
        let (reply, answer) = oneshot::channel();
        let ack = Ack {
            id,
            lease: lease.to_owned(),
            result,
        };
        self.pending
            .send(PendingAck { ack, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::Unavailable("the worker's ack sender has stopped".into())
}

async fn ack_loop(
    transport: Arc<dyn Transport>,
    mut pending: mpsc::UnboundedReceiver<PendingAck>,
    stop: CancellationToken,
) {
    let sending = Arc::new(Semaphore::new(ACKS_IN_FLIGHT));
    loop {
        let Ok(slot) = sending.clone().acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            first = pending.recv() => match first {
                Some(first) => first,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_ACKS {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let transport = transport.clone();
        tokio::spawn(async move {
            send_acks(transport.as_ref(), batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch and answers each of its jobs.
async fn send_acks(transport: &dyn Transport, batch: Vec<PendingAck>) {
    let (acks, replies): (Vec<Ack>, Vec<_>) = batch.into_iter().map(|p| (p.ack, p.reply)).unzip();
    let n = acks.len();
    match transport.complete_many(acks.clone()).await {
        Ok(done) if done.len() == n => {
            for (reply, outcome) in replies.into_iter().zip(done) {
                let _ = reply.send(Ok(outcome));
            }
        }
        // One ack the server refuses (a result over its body limit, or one
        // it cannot store) refuses its batch: each is sent alone, so that
        // only it is refused, and that job's answer is the refusal itself.
        Err(e @ Error::Rejected { .. }) => {
            if n == 1 {
                let _ = replies.into_iter().next().map(|reply| reply.send(Err(e)));
                return;
            }
            tracing::debug!(error = %e, "a batch ack of {n} was refused; acking one by one");
            for (ack, reply) in acks.into_iter().zip(replies) {
                let outcome = transport.complete_many(vec![ack]).await.and_then(|done| {
                    done.into_iter()
                        .next()
                        .ok_or_else(|| Error::Other("an ack answered no result".into()))
                });
                let _ = reply.send(outcome);
            }
        }
        outcome => {
            // Each job retries on its own (or gives up) by the usual rules.
            let (transient, message) = match outcome {
                Ok(done) => (false, format!("a batch ack of {n} answered {}", done.len())),
                Err(e) => (e.is_transient(), e.to_string()),
            };
            for reply in replies {
                let error = if transient {
                    Error::Unavailable(message.clone())
                } else {
                    Error::Other(message.clone())
                };
                let _ = reply.send(Err(error));
            }
        }
    }
}
