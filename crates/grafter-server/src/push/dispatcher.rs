//! The dispatcher. Every node runs it (it is not leader-gated: the store's
//! `running_limit` keeps each push queue at its `concurrency` across the
//! cluster). One loop re-reads the queues' push targets and keeps one queue
//! loop per target; a queue loop leases due jobs into free slots and pushes
//! each in its own task, which records the outcome under the job's lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grafter_core::{Job, LeasedJob, PushTarget};
use grafter_engine::push::signature::unix_now;
use grafter_engine::push::{
    signature_headers, trace_headers, PushRequest, ATTEMPT_HEADER, JOB_ID_HEADER, LEASE_HEADER,
};
use grafter_engine::{FetchRequest, Retry, When, MAX_FETCH};
use grafter_store::{QueueInfo, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::address_guard::{refused_url, GuardedResolver};
use super::outcome::Outcome;
use crate::otlp::{JobRef, JobSpan, Operation, SpanStart};
use crate::state::AppState;

/// Added to the request timeout for a push's lease: time to record the
/// outcome before the rescuer would count the attempt as lost.
const LEASE_GRACE: Duration = Duration::from_secs(2);
/// How long an idle queue loop waits without a wake-up before looking again:
/// slots freed on other nodes, or by a 202 job finished through the API, are
/// not announced.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Pause after the store failed to lease or record.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// Failed pushes in a row after which a queue backs off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
/// The first back-off pause; it doubles with every further failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest back-off pause.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// On shutdown, how long pushes in flight may take to finish and be recorded;
/// the rest are left to their leases.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every queue loop and push shares.
struct Shared {
    state: AppState,
    http: reqwest::Client,
    /// Recorded as the `worker_id` of pushed jobs (and so in their errors).
    worker_id: String,
    /// Every push task, so shutdown can wait for them.
    in_flight: TaskTracker,
    /// Fired when shutdown stops waiting: pushes drop their requests.
    abort: CancellationToken,
}

/// One push queue as its loop sees it.
struct Queue {
    name: String,
    target: PushTarget,
    health: Health,
}

/// A queue loop that is running.
struct Running {
    target: PushTarget,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Runs the dispatcher until `cancel` fires, then stops leasing and lets
/// pushes in flight finish for a while.
pub(crate) async fn run(state: AppState, cancel: CancellationToken) {
    let guarded = !state.config().push.allow_private;
    let mut http = reqwest::Client::builder()
        // A redirect is an answer like any other (a failed attempt): following
        // it would send the signed job somewhere nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("grafter/", env!("CARGO_PKG_VERSION")));
    if guarded {
        http = http.dns_resolver(Arc::new(GuardedResolver));
    }
    let http = http.build();
    let http = match http {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot build the push HTTP client; push queues will not run");
            return;
        }
    };
    let shared = Arc::new(Shared {
        state,
        http,
        worker_id: format!("push:{}-{:08x}", std::process::id(), rand::random::<u32>()),
        in_flight: TaskTracker::new(),
        abort: CancellationToken::new(),
    });
    let refresh = shared.state.config().push.refresh_interval();
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        match shared.state.store().queues_list().await {
            Ok(queues) => reconcile(&shared, &mut running, queues, &cancel),
            Err(error) => tracing::warn!(%error, "cannot read push targets; will retry"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(refresh) => {}
            _ = shared.state.push_targets_changed().notified() => {}
        }
    }
    for (_, queue) in running.drain() {
        queue.stop.cancel();
        let _ = queue.task.await;
    }
    shared.in_flight.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, shared.in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!("pushes still in flight at shutdown are left to their leases");
        shared.abort.cancel();
        shared.in_flight.wait().await;
    }
}

/// Starts a loop for each new push target, restarts those whose target
/// changed, and stops those whose target is gone. A stopped loop leases no
/// more; its pushes in flight finish.
fn reconcile(
    shared: &Arc<Shared>,
    running: &mut HashMap<String, Running>,
    queues: Vec<QueueInfo>,
    cancel: &CancellationToken,
) {
    let wanted: HashMap<String, PushTarget> = queues
        .into_iter()
        .filter_map(|q| q.push.map(|push| (q.name, push)))
        .collect();
    running.retain(|name, queue| {
        let keep = wanted.get(name) == Some(&queue.target);
        if !keep {
            tracing::info!(queue = %name, "push target changed or removed");
            queue.stop.cancel();
        }
        keep
    });
    for (name, target) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        tracing::info!(queue = %name, url = %target.redacted_url(), concurrency = target.concurrency, "pushing jobs");
        let stop = cancel.child_token();
        let queue = Arc::new(Queue {
            name: name.clone(),
            target: target.clone(),
            health: Health::default(),
        });
        let task = tokio::spawn(run_queue(shared.clone(), queue, stop.clone()));
        running.insert(name, Running { target, stop, task });
    }
}

/// Leases due jobs of one queue into free slots and pushes each.
async fn run_queue(shared: Arc<Shared>, queue: Arc<Queue>, stop: CancellationToken) {
    let concurrency = queue.target.concurrency as usize;
    let slots = Arc::new(Semaphore::new(concurrency));
    let engine = shared.state.engine();
    // Registered for the loop's life, so work announced between a look and
    // the wait after it still wakes the loop.
    let waiter = engine
        .store()
        .wakeups()
        .waiter(std::slice::from_ref(&queue.name));
    let lease_duration = Duration::from_millis(queue.target.timeout_ms) + LEASE_GRACE;
    loop {
        // A slot frees when a push has been recorded, so its outcome is known
        // to `health` by the time the slot is taken again.
        let Some(mut first) = acquire(&slots, &stop).await else {
            return;
        };
        // One fetch leases at most MAX_FETCH; a queue allowed more at once
        // fills the rest of its slots on the next turns.
        let mut want = concurrency.min(MAX_FETCH);
        if let Some(pause) = queue.health.pause() {
            // A failing target: wait, then probe it with one push at a time
            // (none other in flight) until one gets through.
            drop(first);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                all = slots.clone().acquire_many_owned(queue.target.concurrency) => drop(all),
            }
            let Some(permit) = acquire(&slots, &stop).await else {
                return;
            };
            first = permit;
            want = 1;
        }
        let mut permits = vec![first];
        while permits.len() < want {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let fetch = FetchRequest {
            queues: vec![queue.name.clone()],
            max: permits.len(),
            wait: Duration::ZERO,
            lease: Some(lease_duration),
            worker_id: Some(shared.worker_id.clone()),
            running_limit: Some(concurrency),
        };
        let asked_at = engine.now();
        match engine.fetch(fetch, std::future::pending()).await {
            Ok(jobs) if jobs.is_empty() => {
                drop(permits);
                // A rate window that frees a start announces nothing: look
                // again then, as the store's admission said (as a waiting
                // fetch does).
                let reopens = engine
                    .store()
                    .limited()
                    .reopens_at(std::slice::from_ref(&queue.name))
                    .and_then(|at| (at - asked_at).to_std().ok())
                    .map_or(IDLE_POLL, |after| after.min(IDLE_POLL));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = waiter.woken() => {}
                    _ = tokio::time::sleep(reopens) => {}
                }
            }
            Ok(jobs) => {
                // Permits beyond the jobs leased go back as the iterator ends.
                for (leased, permit) in jobs.into_iter().zip(permits) {
                    shared
                        .in_flight
                        .spawn(deliver(shared.clone(), queue.clone(), leased, permit));
                }
            }
            Err(error) => {
                tracing::warn!(queue = %queue.name, %error, "cannot lease jobs to push; will retry");
                drop(permits);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
        }
    }
}

/// A free slot, or `None` once the loop is told to stop.
async fn acquire(slots: &Arc<Semaphore>, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        _ = stop.cancelled() => None,
        permit = slots.clone().acquire_owned() => permit.ok(),
    }
}

/// Pushes one leased job and records the outcome. Holds its slot until done.
async fn deliver(
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    leased: LeasedJob,
    _slot: OwnedSemaphorePermit,
) {
    let timeout = request_timeout(&queue.target, &leased.job);
    let start = SpanStart::now();
    let outcome = tokio::select! {
        outcome = push(&shared.http, &queue.target, &leased, timeout, &shared.state) => outcome,
        // Shutting down and out of time: the lease will end this attempt.
        _ = shared.abort.cancelled() => return,
    };
    tracing::debug!(queue = %queue.name, job = %leased.job.id.0, attempt = leased.job.attempt, ?outcome, "pushed");
    if queue.health.record(outcome.target_failed()) {
        tracing::warn!(queue = %queue.name, url = %queue.target.redacted_url(), "push target keeps failing; backing off");
    }
    record(&shared.state, &leased, &outcome).await;
    shared.state.tracer().record(JobSpan {
        operation: Operation::Process,
        start,
        job: JobRef::from(&leased.job),
        batch_size: None,
        error: outcome.error_type(),
    });
}

/// The request's time limit: the target's, or the job's own timeout if shorter.
fn request_timeout(target: &PushTarget, job: &Job) -> Duration {
    let target = Duration::from_millis(target.timeout_ms);
    match job.timeout_ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => target.min(Duration::from_millis(ms)),
        None => target,
    }
}

/// One signed POST of a job, and what its answer means.
async fn push(
    http: &reqwest::Client,
    target: &PushTarget,
    leased: &LeasedJob,
    timeout: Duration,
    state: &AppState,
) -> Outcome {
    // A host name is checked as it resolves (GuardedResolver); a literal
    // address never reaches the resolver, so it is checked here.
    if !state.config().push.allow_private {
        if let Some(why) = refused_url(&target.url) {
            state.metrics().push_delivered(&leased.job.queue, None);
            return Outcome::Failed {
                error: format!("push target refused: {why}"),
                retry_at: None,
            };
        }
    }
    let body = match serde_json::to_vec(&PushRequest::new(&leased.job, timeout)) {
        Ok(body) => body,
        Err(error) => {
            return Outcome::Failed {
                error: format!("cannot encode the job: {error}"),
                retry_at: None,
            }
        }
    };
    let mut request = http
        .post(&target.url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(JOB_ID_HEADER, leased.job.id.0.to_string())
        .header(ATTEMPT_HEADER, leased.job.attempt.to_string())
        .header(LEASE_HEADER, &leased.lease);
    for (name, value) in signature_headers(target, leased.job.id, unix_now(), &body) {
        request = request.header(name, value);
    }
    for (name, value) in trace_headers(&leased.job) {
        request = request.header(name, value);
    }
    for (name, value) in &target.headers {
        request = request.header(name, value);
    }
    match request.body(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            state
                .metrics()
                .push_delivered(&leased.job.queue, Some(status));
            Outcome::from_response(response, state.engine().clock().now()).await
        }
        Err(error) => {
            state.metrics().push_delivered(&leased.job.queue, None);
            Outcome::Failed {
                error: request_error(error, timeout),
                retry_at: None,
            }
        }
    }
}

/// A failed request as the attempt's error. The URL is left out: it may hold
/// a token, and the queue names the target anyway.
fn request_error(error: reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out: no answer within {} ms", timeout.as_millis());
    }
    if let Some(parse) = unreadable_answer(&error) {
        return format!("the push target's answer is not valid HTTP: {parse}");
    }
    if closed_without_answer(&error) {
        // Reached, and perhaps ran the job: "could not reach" would mislead.
        return "the push target closed the connection without answering (the job may have run)"
            .to_owned();
    }
    let error = error.without_url();
    let mut message = format!("could not reach the push target: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Why an answer that arrived could not be read as HTTP (a status of 1000,
/// differing Content-Lengths, a head too large), if that is what failed:
/// hyper's parse error, somewhere in the chain of causes of reqwest's "error
/// sending request". The target was reached then, so "could not reach" would
/// mislead.
fn unreadable_answer(error: &reqwest::Error) -> Option<&hyper::Error> {
    std::iter::successors(std::error::Error::source(error), |cause| cause.source())
        .find_map(|cause| cause.downcast_ref::<hyper::Error>())
        .filter(|hyper| hyper.is_parse())
}

/// Whether the target closed the connection before any answer came (hyper's
/// "incomplete message"), rather than not being reachable at all.
fn closed_without_answer(error: &reqwest::Error) -> bool {
    std::iter::successors(std::error::Error::source(error), |cause| cause.source())
        .filter_map(|cause| cause.downcast_ref::<hyper::Error>())
        .any(hyper::Error::is_incomplete_message)
}

/// Records an outcome under the job's lease, retrying while the store is
/// unavailable and the lease lasts. A lease that is no longer current means
/// the job moved on meanwhile (the application finished it through the API,
/// or someone deleted it): there is nothing to record then.
async fn record(state: &AppState, leased: &LeasedJob, outcome: &Outcome) {
    let engine = state.engine();
    let (id, lease) = (leased.job.id, leased.lease.as_str());
    let give_up_at = leased.job.lease_expires_at.unwrap_or_else(|| engine.now());
    loop {
        let result = match outcome {
            // The application finishes it later: give it a full lease from now.
            Outcome::Accepted => engine.heartbeat(id, lease, None, None).await,
            Outcome::Completed(result) => {
                let completed = grafter_engine::Outcome::Completed {
                    result: result.clone(),
                };
                engine.record(id, lease, completed).await
            }
            Outcome::Later { at, .. } => {
                let released = grafter_engine::Outcome::Released {
                    run_at: When::At(*at),
                };
                engine.record(id, lease, released).await
            }
            Outcome::Dead(error) => {
                let failed = grafter_engine::Outcome::Failed {
                    error: error.clone(),
                    retry: Retry::Never,
                };
                engine.record(id, lease, failed).await
            }
            Outcome::Failed { error, retry_at } => {
                let failed = grafter_engine::Outcome::Failed {
                    error: error.clone(),
                    retry: retry_at.map_or(Retry::Backoff, |at| Retry::At(When::At(at))),
                };
                engine.record(id, lease, failed).await
            }
        };
        match result {
            Ok(_) => return,
            Err(grafter_engine::Error::Store(
                StoreError::LeaseMismatch { .. } | StoreError::NotFound(_),
            )) => {
                tracing::debug!(job = %id.0, "pushed job moved on meanwhile; nothing to record");
                return;
            }
            Err(grafter_engine::Error::Store(StoreError::Unavailable(error)))
                if engine.now() < give_up_at =>
            {
                tracing::warn!(job = %id.0, %error, "cannot record push outcome yet; retrying");
                tokio::time::sleep(STORE_RETRY).await;
            }
            Err(error) => {
                tracing::warn!(job = %id.0, %error, "cannot record push outcome; the lease will end the attempt");
                return;
            }
        }
    }
}

/// How a queue's target has been doing on this node: failed pushes in a row.
#[derive(Default)]
struct Health {
    failures: AtomicU32,
}

impl Health {
    /// Counts a push; answers true when this failure starts a back-off.
    fn record(&self, failed: bool) -> bool {
        if failed {
            let before = self.failures.fetch_add(1, Ordering::Relaxed);
            before + 1 == FAILURES_BEFORE_BACKOFF
        } else {
            self.failures.store(0, Ordering::Relaxed);
            false
        }
    }

    /// How long to wait before the next push, when backing off.
    fn pause(&self) -> Option<Duration> {
        backoff(self.failures.load(Ordering::Relaxed))
    }
}

/// The pause after `failures` failed pushes in a row: none for the first few,
/// then doubling from [`BACKOFF_BASE`] up to [`BACKOFF_MAX`].
fn backoff(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FAILURES_BEFORE_BACKOFF)?;
    Some(
        BACKOFF_BASE
            .saturating_mul(2u32.saturating_pow(over))
            .min(BACKOFF_MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_target_backs_off_doubling_up_to_a_minute() {
        assert_eq!(backoff(0), None);
        assert_eq!(backoff(FAILURES_BEFORE_BACKOFF - 1), None);
        assert_eq!(backoff(FAILURES_BEFORE_BACKOFF), Some(BACKOFF_BASE));
        assert_eq!(backoff(FAILURES_BEFORE_BACKOFF + 1), Some(BACKOFF_BASE * 2));
        assert_eq!(backoff(FAILURES_BEFORE_BACKOFF + 3), Some(BACKOFF_BASE * 8));
        assert_eq!(backoff(FAILURES_BEFORE_BACKOFF + 20), Some(BACKOFF_MAX));
        assert_eq!(backoff(u32::MAX), Some(BACKOFF_MAX));
    }

    #[test]
    fn one_success_ends_the_back_off() {
        let health = Health::default();
        assert!(!health.record(true));
        assert!(!health.record(true));
        assert!(health.record(true), "the third failure in a row starts it");
        assert!(!health.record(true));
        assert!(health.pause().is_some());
        assert!(!health.record(false));
        assert_eq!(health.pause(), None);
    }
}
