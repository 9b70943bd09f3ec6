//! The worker runtime, end to end, over both transports: straight on a SQLite
//! store in process, and over real HTTP to a `grafter serve` on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use grafter::server::ServerConfig;
use grafter::{
    Client, Hooks, Job, JobContext, JobError, JobInfo, JobOutcome, JobState, Worker, WorkerHandle,
};
use grafter_core::Backoff;
use grafter_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn fast_backoff() -> Backoff {
    Backoff {
        base_ms: 100,
        factor: 2.0,
        max_ms: 400,
        jitter: 0.0,
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    InProcess,
    Http,
}

struct Env {
    client: Client,
    _shutdown: Option<tokio_util::sync::DropGuard>,
    _dir: tempfile::TempDir,
}

async fn env(mode: Mode) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap(),
    );
    match mode {
        Mode::InProcess => Env {
            client: Client::from_store_with_backoff(store, fast_backoff()),
            _shutdown: None,
            _dir: dir,
        },
        Mode::Http => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let mut config = ServerConfig {
                retry: fast_backoff(),
                ..Default::default()
            };
            config.maintenance.schedule_interval_ms = 50;
            config.maintenance.rescue_interval_ms = 100;
            let shutdown = CancellationToken::new();
            tokio::spawn(grafter::server::serve(
                listener,
                store,
                config,
                shutdown.clone(),
            ));
            Env {
                client: Client::http(&url).unwrap(),
                _shutdown: Some(shutdown.drop_guard()),
                _dir: dir,
            }
        }
    }
}

fn worker(client: &Client) -> grafter::WorkerBuilder {
    Worker::builder(client)
        .queue("default", 4)
        .lease(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(200))
        .poll_wait(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(5))
}

#[derive(Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

impl Job for Add {
    const KIND: &'static str = "add";
    type Output = serde_json::Value;

    async fn perform(self, ctx: JobContext) -> Result<serde_json::Value, JobError> {
        Ok(json!({"sum": self.a + self.b, "attempt": ctx.attempt()}))
    }
}

/// Fails its first attempt with an I/O error (retryable through `?`).
#[derive(Serialize, Deserialize)]
struct FlakyOnce;

impl Job for FlakyOnce {
    const KIND: &'static str = "flaky_once";
    type Output = i32;

    async fn perform(self, ctx: JobContext) -> Result<i32, JobError> {
        if ctx.attempt() == 1 {
            Err(std::io::Error::other("connection reset"))?;
        }
        Ok(ctx.attempt())
    }
}

#[derive(Serialize, Deserialize)]
struct BadInput;

impl Job for BadInput {
    const KIND: &'static str = "bad_input";
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        Err(JobError::fail("invalid address"))
    }
}

#[derive(Serialize, Deserialize)]
struct Panics;

impl Job for Panics {
    const KIND: &'static str = "panics";
    const MAX_ATTEMPTS: i32 = 1;
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        panic!("index out of bounds: the len is 3 but the index is 7");
    }
}

#[derive(Serialize, Deserialize)]
struct Slow;

impl Job for Slow {
    const KIND: &'static str = "slow";
    const MAX_ATTEMPTS: i32 = 1;
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(300));
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

/// Reports progress, then works until cancelled.
#[derive(Serialize, Deserialize)]
struct UntilCancelled;

impl Job for UntilCancelled {
    const KIND: &'static str = "until_cancelled";
    type Output = ();

    async fn perform(self, ctx: JobContext) -> Result<(), JobError> {
        ctx.progress(0.25, "a quarter").await;
        tokio::select! {
            _ = ctx.cancelled() => Err(JobError::cancel("stopped on request")),
            _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
        }
    }
}

/// Snoozes on its first run.
#[derive(Serialize, Deserialize)]
struct Snoozer;

static SNOOZER_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Job for Snoozer {
    const KIND: &'static str = "snoozer";
    type Output = usize;

    async fn perform(self, _ctx: JobContext) -> Result<usize, JobError> {
        let run = SNOOZER_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
        if run == 1 {
            return Err(JobError::snooze(Duration::from_millis(200)));
        }
        Ok(run)
    }
}

/// Runs longer than its lease, heartbeating all the while.
#[derive(Serialize, Deserialize)]
struct Marathon;

static MARATHON_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Job for Marathon {
    const KIND: &'static str = "marathon";
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        MARATHON_RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        Ok(())
    }
}

#[derive(Default)]
struct Recorder {
    failures: Mutex<Vec<String>>,
    outcomes: Mutex<Vec<JobOutcome>>,
}

/// Larger than the server's default body limit (1 MiB).
const OVER_THE_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Returns a string of `bytes` bytes.
#[derive(Serialize, Deserialize)]
struct Sized {
    bytes: usize,
}

impl Job for Sized {
    const KIND: &'static str = "sized";
    type Output = String;

    async fn perform(self, _: JobContext) -> Result<String, JobError> {
        Ok("r".repeat(self.bytes))
    }
}

/// Reports a progress message over the body limit, then outlives its lease
/// (heartbeats must go on renewing it), then succeeds.
#[derive(Serialize, Deserialize)]
struct HugeProgress;

impl Job for HugeProgress {
    const KIND: &'static str = "huge_progress";
    type Output = ();

    async fn perform(self, ctx: JobContext) -> Result<(), JobError> {
        ctx.progress(0.5, "p".repeat(OVER_THE_BODY_LIMIT)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(())
    }
}

/// Fails for good with an error message over the body limit.
#[derive(Serialize, Deserialize)]
struct HugeError;

impl Job for HugeError {
    const KIND: &'static str = "huge_error";
    type Output = ();

    async fn perform(self, _: JobContext) -> Result<(), JobError> {
        Err(JobError::fail("e".repeat(OVER_THE_BODY_LIMIT)))
    }
}

/// Hooks that panic.
struct PanickingHooks;

impl Hooks for PanickingHooks {
    fn on_failure(&self, _job: &JobInfo, _error: &str) {
        panic!("a hook's bug");
    }
    fn after_job(&self, _job: &JobInfo, _outcome: &JobOutcome) {
        panic!("another hook's bug");
    }
}

#[derive(Clone, Default)]
struct SharedRecorder(Arc<Recorder>);

impl Hooks for SharedRecorder {
    fn on_failure(&self, _job: &JobInfo, error: &str) {
        self.0.failures.lock().unwrap().push(error.to_owned());
    }
    fn after_job(&self, _job: &JobInfo, outcome: &JobOutcome) {
        self.0.outcomes.lock().unwrap().push(outcome.clone());
    }
}

fn start(builder: grafter::WorkerBuilder) -> WorkerHandle {
    builder.build().unwrap().start()
}

macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Mode::InProcess).await; })*
        }
        mod http {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Mode::Http).await; })*
        }
    };
}

both_modes!(
    success_stores_the_result,
    retry_after_backoff_then_success,
    fail_for_good_is_dead,
    a_panic_is_a_failed_attempt_and_the_worker_survives,
    timeout_records_timed_out,
    cancel_reaches_a_running_job_and_progress_shows,
    snooze_runs_again_without_counting_the_attempt,
    a_job_longer_than_its_lease_runs_once,
    unknown_kinds_are_not_lost,
    graceful_shutdown_hands_unfinished_jobs_back,
    duplicate_unique_keys_return_the_first_job,
    many_jobs_finishing_together_are_acked_in_batches,
    more_slots_than_one_fetch_may_ask_for,
    a_batch_runs_its_jobs_then_its_callback,
    a_dependent_runs_after_its_upstream_and_reads_its_result,
    a_job_waiting_for_a_batch_runs_after_it_succeeds,
    results_that_together_outgrow_one_request_are_all_recorded,
    a_result_over_the_body_limit_is_dropped_and_the_job_completes,
    progress_over_the_body_limit_is_dropped_and_the_lease_still_renewed,
    an_error_over_the_body_limit_is_cut_and_recorded,
    a_panicking_hook_does_not_lose_the_outcome,
);

/// 300 successes of 4 KiB each finish together: more than one request of
/// the server's body limit holds, and all are recorded at their first attempt.
async fn results_that_together_outgrow_one_request_are_all_recorded(mode: Mode) {
    let env = env(mode).await;
    let jobs = env
        .client
        .enqueue_many((0..300).map(|_| Sized { bytes: 4096 }))
        .await
        .unwrap();
    let running = start(
        worker(&env.client)
            .queue("default", 300)
            .register::<Sized>(),
    );
    for job in &jobs {
        let done = env.client.wait(job.id, WAIT).await.unwrap();
        assert_eq!((done.state, done.attempt), (JobState::Completed, 1));
        assert_eq!(done.result.unwrap().as_str().unwrap().len(), 4096);
    }
    running.shutdown().await;
}

/// Over HTTP a result over the server's body limit cannot be sent: the job
/// ran, so it completes without it, and does not run again.
async fn a_result_over_the_body_limit_is_dropped_and_the_job_completes(mode: Mode) {
    let env = env(mode).await;
    let running = start(worker(&env.client).register::<Sized>());
    let job = env
        .client
        .enqueue(Sized {
            bytes: OVER_THE_BODY_LIMIT,
        })
        .await
        .unwrap()
        .job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!((done.state, done.attempt), (JobState::Completed, 1));
    match mode {
        Mode::InProcess => assert!(done.result.is_some(), "no body limit in process"),
        Mode::Http => assert_eq!(done.result, None),
    }
}

async fn progress_over_the_body_limit_is_dropped_and_the_lease_still_renewed(mode: Mode) {
    let env = env(mode).await;
    let running = start(worker(&env.client).register::<HugeProgress>());
    let job = env.client.enqueue(HugeProgress).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(
        (done.state, done.attempt),
        (JobState::Completed, 1),
        "{:?}",
        done.errors
    );
}

async fn an_error_over_the_body_limit_is_cut_and_recorded(mode: Mode) {
    let env = env(mode).await;
    let running = start(worker(&env.client).register::<HugeError>());
    let job = env.client.enqueue(HugeError).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!((done.state, done.attempt), (JobState::Dead, 1));
    let error = &done.errors[0].error;
    assert!(
        error.starts_with("eeee") && error.len() <= 16 * 1024,
        "{}",
        error.len()
    );
}

async fn a_panicking_hook_does_not_lose_the_outcome(mode: Mode) {
    let env = env(mode).await;
    let running = start(
        worker(&env.client)
            .register::<BadInput>()
            .hooks(PanickingHooks),
    );
    let job = env.client.enqueue(BadInput).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!((done.state, done.attempt), (JobState::Dead, 1));
    assert_eq!(done.errors[0].error, "invalid address");
}

#[tokio::test]
async fn settings_a_worker_could_never_work_with_are_refused_when_built() {
    let env = env(Mode::InProcess).await;
    let refusal = |builder: grafter::WorkerBuilder| match builder.register::<Add>().build() {
        Ok(_) => panic!("built"),
        Err(e) => e.to_string(),
    };
    let zero = refusal(Worker::builder(&env.client).queue("default", 0));
    assert!(zero.contains("concurrency must be 1 to"), "{zero}");
    let huge = refusal(Worker::builder(&env.client).queue("default", usize::MAX));
    assert!(huge.contains("concurrency must be 1 to"), "{huge}");
    let name = refusal(Worker::builder(&env.client).queue("bad name ", 1));
    assert!(name.contains("\"bad name \""), "{name}");
    let beat = refusal(
        Worker::builder(&env.client)
            .lease(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_secs(5)),
    );
    assert!(beat.contains("must be shorter than the lease"), "{beat}");
    let lease = refusal(Worker::builder(&env.client).lease(Duration::from_secs(48 * 3600)));
    assert!(
        lease.contains("the lease must be 1000 to 86400000 ms"),
        "{lease}"
    );
}

/// Sleeps a second.
#[derive(Serialize, Deserialize)]
struct Sleeps;

impl Job for Sleeps {
    const KIND: &'static str = "sleeps";
    type Output = ();

    async fn perform(self, _: JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }
}

/// With the server gone, a shutdown's deadline still holds: the job it
/// stops cannot be handed back, and is not retried for the whole lease (it
/// runs again once its lease expires, as after a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_its_deadline_when_the_server_is_gone() {
    let mut env = env(Mode::Http).await;
    let running = start(
        Worker::builder(&env.client)
            .register::<Sleeps>()
            .lease(Duration::from_secs(60))
            .poll_wait(Duration::from_millis(200)),
    );
    let job = env.client.enqueue(Sleeps).await.unwrap().job;
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.client.get(job.id).await.unwrap().state != JobState::Running {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env._shutdown = None;
    let stopping = std::time::Instant::now();
    running.shutdown_within(Duration::from_millis(100)).await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "shutdown took {took:?}, not its 100 ms plus a failed call"
    );
}

/// A poll wait longer than the engine allows is a shorter poll in process,
/// as over HTTP, not a fetch refused for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_wait_past_the_engines_longest_still_fetches() {
    let env = env(Mode::InProcess).await;
    let running = start(
        Worker::builder(&env.client)
            .register::<Add>()
            .poll_wait(Duration::from_secs(45)),
    );
    let job = env.client.enqueue(Add { a: 1, b: 1 }).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_ever_is_a_long_wait_not_a_panic() {
    let env = env(Mode::InProcess).await;
    let running = start(worker(&env.client).register::<Add>());
    let job = env.client.enqueue(Add { a: 1, b: 2 }).await.unwrap().job;
    let done = env.client.wait(job.id, Duration::MAX).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Completed);
}

async fn a_job_waiting_for_a_batch_runs_after_it_succeeds(mode: Mode) {
    let env = env(mode).await;
    let options = grafter::EnqueueOptions::default();
    let jobs = (0..2)
        .map(|a| options.to_new_job(&Add { a, b: 1 }).unwrap())
        .collect();
    let (batch, _) = env
        .client
        .create_batch(jobs, false, Default::default())
        .await
        .unwrap();
    let waiting = grafter::EnqueueOptions {
        depends_on_batches: vec![batch.id],
        ..Default::default()
    };
    let dependent = env
        .client
        .enqueue_with(Add { a: 1, b: 1 }, waiting)
        .await
        .unwrap()
        .job;
    assert_eq!(dependent.state, grafter::JobState::Pending);
    let running = start(worker(&env.client).register::<Add>());
    let done = env.client.wait(dependent.id, WAIT).await.unwrap();
    assert_eq!(done.state, grafter::JobState::Completed);
    let waited = env.client.dependencies(dependent.id).await.unwrap();
    assert!(waited.jobs.is_empty());
    assert_eq!(waited.batches.len(), 1);
    assert_eq!(waited.batches[0].state, grafter::BatchState::Succeeded);
    // Not `<= done.attempted_at`: a fetch records the time its request
    // arrived, and one that arrived just before the batch's last ack can be
    // run by the store just after it and take the released dependent. The
    // dependent's ack arrives after it ran, so after the batch finished.
    assert!(waited.batches[0].finished_at <= done.finished_at);
    running.shutdown().await;
}

async fn a_dependent_runs_after_its_upstream_and_reads_its_result(mode: Mode) {
    let env = env(mode).await;
    let upstream = env.client.enqueue(Add { a: 20, b: 22 }).await.unwrap().job;
    let options = grafter::EnqueueOptions {
        depends_on: vec![upstream.id],
        ..Default::default()
    };
    let dependent = env
        .client
        .enqueue_with(Add { a: 1, b: 1 }, options)
        .await
        .unwrap()
        .job;
    assert_eq!(dependent.state, grafter::JobState::Pending);
    let running = start(worker(&env.client).register::<Add>());
    let done = env.client.wait(dependent.id, WAIT).await.unwrap();
    assert_eq!(done.state, grafter::JobState::Completed);
    let upstreams = env.client.dependencies(dependent.id).await.unwrap().jobs;
    assert_eq!(upstreams.len(), 1);
    assert_eq!(upstreams[0].id, upstream.id);
    assert_eq!(upstreams[0].result.as_ref().unwrap()["sum"], 42);
    // As for a batch (above): compared with the dependent's finish.
    assert!(upstreams[0].finished_at <= done.finished_at);
    running.shutdown().await;
}

async fn a_batch_runs_its_jobs_then_its_callback(mode: Mode) {
    let env = env(mode).await;
    let hooks = SharedRecorder::default();
    let options = grafter::EnqueueOptions::default();
    let jobs = (0..3)
        .map(|a| options.to_new_job(&Add { a, b: 1 }).unwrap())
        .collect();
    let callback = options.to_new_job(&Add { a: 100, b: 0 }).unwrap();
    let (batch, jobs) = env
        .client
        .create_batch(
            jobs,
            true,
            grafter::BatchCallbacks {
                on_success: Some(callback),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.batch_id == Some(batch.id)));
    let (batch, added) = env
        .client
        .add_to_batch(
            batch.id,
            vec![options.to_new_job(&Add { a: 7, b: 1 }).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!((batch.counts.total, added.len()), (4, 1));
    let running = start(worker(&env.client).register::<Add>().hooks(hooks.clone()));
    for job in jobs.iter().chain(&added) {
        env.client.wait(job.id, WAIT).await.unwrap();
    }
    // Open: all done, but nothing settles until sealed.
    let open = env.client.batch(batch.id).await.unwrap();
    assert_eq!(
        (open.state, open.counts.completed),
        (grafter::BatchState::Running, 4)
    );
    let sealed = env.client.seal_batch(batch.id).await.unwrap();
    assert_eq!(sealed.state, grafter::BatchState::Succeeded);
    assert_eq!(sealed.callbacks_enqueued, ["on_success"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while hooks.0.outcomes.lock().unwrap().len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the callback never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
    let refused = env.client.cancel_batch(batch.id).await;
    assert!(
        matches!(&refused, Err(grafter::Error::Rejected { code, .. }) if code == "batch_closed"),
        "{refused:?}"
    );
}

async fn success_stores_the_result(mode: Mode) {
    let env = env(mode).await;
    let hooks = SharedRecorder::default();
    let running = start(worker(&env.client).register::<Add>().hooks(hooks.clone()));
    let enqueued = env.client.enqueue(Add { a: 2, b: 3 }).await.unwrap();
    assert!(enqueued.created);
    assert_eq!(enqueued.job.kind, "add");
    let done = env.client.wait(enqueued.job.id, WAIT).await.unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result, Some(json!({"sum": 5, "attempt": 1})));
    running.shutdown().await;
    assert_eq!(*hooks.0.outcomes.lock().unwrap(), [JobOutcome::Completed]);
}

async fn retry_after_backoff_then_success(mode: Mode) {
    let env = env(mode).await;
    let hooks = SharedRecorder::default();
    let running = start(
        worker(&env.client)
            .register::<FlakyOnce>()
            .hooks(hooks.clone()),
    );
    let job = env.client.enqueue(FlakyOnce).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.attempt, 2);
    assert_eq!(done.result, Some(json!(2)));
    assert_eq!(done.errors.len(), 1);
    assert_eq!(done.errors[0].error, "connection reset");
    // The retry came after the backoff, not at once.
    assert!(done.attempted_at.unwrap() - done.errors[0].at >= chrono::Duration::milliseconds(100));
    assert_eq!(*hooks.0.failures.lock().unwrap(), ["connection reset"]);
}

async fn fail_for_good_is_dead(mode: Mode) {
    let env = env(mode).await;
    let running = start(worker(&env.client).register::<BadInput>());
    let job = env.client.enqueue(BadInput).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Dead);
    assert_eq!(done.attempt, 1, "no retries for a failure for good");
    assert_eq!(done.errors[0].error, "invalid address");
}

async fn a_panic_is_a_failed_attempt_and_the_worker_survives(mode: Mode) {
    let env = env(mode).await;
    let running = start(worker(&env.client).register::<Panics>().register::<Add>());
    let panicked = env.client.enqueue(Panics).await.unwrap().job;
    let done = env.client.wait(panicked.id, WAIT).await.unwrap();
    assert_eq!(done.state, JobState::Dead);
    assert!(
        done.errors[0]
            .error
            .contains("panicked: index out of bounds"),
        "{:?}",
        done.errors
    );
    // The same worker goes on running jobs.
    let next = env.client.enqueue(Add { a: 1, b: 1 }).await.unwrap().job;
    assert_eq!(
        env.client.wait(next.id, WAIT).await.unwrap().state,
        JobState::Completed
    );
    running.shutdown().await;
}

async fn timeout_records_timed_out(mode: Mode) {
    let env = env(mode).await;
    let running = start(worker(&env.client).register::<Slow>());
    let job = env.client.enqueue(Slow).await.unwrap().job;
    assert_eq!(job.timeout_ms, Some(300));
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Dead);
    assert_eq!(done.errors[0].error, "timed out");
}

async fn cancel_reaches_a_running_job_and_progress_shows(mode: Mode) {
    let env = env(mode).await;
    let hooks = SharedRecorder::default();
    let running = start(
        worker(&env.client)
            .register::<UntilCancelled>()
            .hooks(hooks.clone()),
    );
    let job = env.client.enqueue(UntilCancelled).await.unwrap().job;
    // Progress is visible through the client (and so the API) while it runs.
    let mut seen = None;
    for _ in 0..200 {
        let now = env.client.get(job.id).await.unwrap();
        if let Some(progress) = now.progress.filter(|_| now.state == JobState::Running) {
            seen = Some(progress);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let progress = seen.expect("progress shows while running");
    assert_eq!(progress.fraction, 0.25);
    assert_eq!(progress.message.as_deref(), Some("a quarter"));

    let requested = env.client.cancel(job.id).await.unwrap();
    assert!(requested.cancel_requested);
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Cancelled);
    assert_eq!(*hooks.0.outcomes.lock().unwrap(), [JobOutcome::Cancelled]);
}

async fn snooze_runs_again_without_counting_the_attempt(mode: Mode) {
    let env = env(mode).await;
    SNOOZER_RUNS.store(0, Ordering::SeqCst);
    let running = start(worker(&env.client).register::<Snoozer>());
    let job = env.client.enqueue(Snoozer).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.attempt, 1, "a snooze is not an attempt");
    assert!(done.errors.is_empty());
    assert_eq!(done.result, Some(json!(2)));
}

async fn a_job_longer_than_its_lease_runs_once(mode: Mode) {
    let env = env(mode).await;
    MARATHON_RUNS.store(0, Ordering::SeqCst);
    // A 2 s lease and a 4.5 s job: heartbeats must keep the lease alive.
    let running = start(worker(&env.client).register::<Marathon>());
    let job = env.client.enqueue(Marathon).await.unwrap().job;
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.attempt, 1);
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    assert_eq!(MARATHON_RUNS.load(Ordering::SeqCst), 1);
}

async fn unknown_kinds_are_not_lost(mode: Mode) {
    let env = env(mode).await;
    let running = start(worker(&env.client).register::<Add>());
    let mut stranger = grafter::NewJob::new("stranger", json!({}));
    stranger.max_attempts = 1;
    let job = env
        .client
        .enqueue_raw(vec![stranger])
        .await
        .unwrap()
        .remove(0);
    let done = env.client.wait(job.id, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(done.state, JobState::Dead);
    assert!(
        done.errors[0]
            .error
            .contains("no handler for kind 'stranger'"),
        "{:?}",
        done.errors
    );
}

async fn graceful_shutdown_hands_unfinished_jobs_back(mode: Mode) {
    let env = env(mode).await;
    let running = worker(&env.client)
        .register::<UntilCancelled>()
        .build()
        .unwrap()
        .start();
    let job = env.client.enqueue(UntilCancelled).await.unwrap().job;
    for _ in 0..200 {
        if env.client.get(job.id).await.unwrap().state == JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    running.shutdown_within(Duration::from_millis(100)).await;
    let back = env.client.get(job.id).await.unwrap();
    assert_eq!(
        back.state,
        JobState::Available,
        "handed back, ready at once"
    );
    assert_eq!(back.attempt, 0, "not counted as an attempt");
    assert!(back.errors.is_empty());
}

async fn duplicate_unique_keys_return_the_first_job(mode: Mode) {
    let env = env(mode).await;
    let options = grafter::EnqueueOptions {
        unique_key: Some("sum:1".into()),
        ..Default::default()
    };
    let first = env
        .client
        .enqueue_with(Add { a: 1, b: 0 }, options.clone())
        .await
        .unwrap();
    let second = env
        .client
        .enqueue_with(Add { a: 1, b: 0 }, options)
        .await
        .unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.job.id, second.job.id);
    let many = env
        .client
        .enqueue_many((0..3).map(|i| Add { a: i, b: i }))
        .await
        .unwrap();
    assert_eq!(many.len(), 3);
    assert!(many.iter().all(|j| j.state == JobState::Available));
}

async fn many_jobs_finishing_together_are_acked_in_batches(mode: Mode) {
    let env = env(mode).await;
    let hooks = SharedRecorder::default();
    let jobs = env
        .client
        .enqueue_many((0..300).map(|i| Add { a: i, b: 1 }))
        .await
        .unwrap();
    let running = start(
        worker(&env.client)
            .queue("default", 64)
            .register::<Add>()
            .hooks(hooks.clone()),
    );
    for job in &jobs {
        let done = env.client.wait(job.id, WAIT).await.unwrap();
        assert_eq!(done.state, JobState::Completed);
        let a = job.args["a"].as_i64().unwrap();
        assert_eq!(done.result, Some(json!({"sum": a + 1, "attempt": 1})));
    }
    running.shutdown().await;
    let outcomes = hooks.0.outcomes.lock().unwrap();
    assert_eq!(outcomes.len(), 300);
    assert!(
        outcomes.iter().all(|o| *o == JobOutcome::Completed),
        "{outcomes:?}"
    );
}

/// A job deleted while it runs: its ack, batched or not, is refused.
#[derive(Serialize, Deserialize)]
struct DeletedWhileRunning {
    url: String,
}

impl Job for DeletedWhileRunning {
    const KIND: &'static str = "deleted_while_running";
    type Output = ();

    async fn perform(self, ctx: JobContext) -> Result<(), JobError> {
        let url = format!("{}/v1/jobs/{}", self.url, ctx.id());
        reqwest::Client::new()
            .delete(url)
            .send()
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        Ok(())
    }
}

/// A `grafter serve` on loopback; with `old`, it answers batch acks as a
/// server from before them did (405: the path reads as a job id).
async fn served(old: bool) -> (String, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let state = grafter::server::AppState::new(store, ServerConfig::default(), shutdown.clone());
    let app = grafter::server::router(state).layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| async move {
        if old && request.uri().path() == "/v1/jobs/ack" {
            let body = json!({"error": {"code": "method_not_allowed", "message": "POST is not allowed here"}});
            return (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
        }
        next.run(request).await
    }));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (url, shutdown, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_batch_acks_gets_acks_one_by_one() {
    let (url, shutdown, _dir) = served(true).await;
    let client = Client::http(&url).unwrap();
    let hooks = SharedRecorder::default();
    let jobs = client
        .enqueue_many((0..20).map(|i| Add { a: i, b: 2 }))
        .await
        .unwrap();
    let running = start(
        worker(&client)
            .queue("default", 8)
            .register::<Add>()
            .hooks(hooks.clone()),
    );
    for job in &jobs {
        assert_eq!(
            client.wait(job.id, WAIT).await.unwrap().state,
            JobState::Completed
        );
    }
    running.shutdown().await;
    assert!(hooks
        .0
        .outcomes
        .lock()
        .unwrap()
        .iter()
        .all(|o| *o == JobOutcome::Completed));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_a_job_gone_meanwhile_is_a_lost_lease() {
    for old in [false, true] {
        let (url, shutdown, _dir) = served(old).await;
        let client = Client::http(&url).unwrap();
        let hooks = SharedRecorder::default();
        let running = start(
            worker(&client)
                .register::<DeletedWhileRunning>()
                .hooks(hooks.clone()),
        );
        client
            .enqueue(DeletedWhileRunning { url: url.clone() })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while hooks.0.outcomes.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job never finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.shutdown().await;
        assert_eq!(
            *hooks.0.outcomes.lock().unwrap(),
            [JobOutcome::LeaseLost],
            "old server: {old}"
        );
        shutdown.cancel();
    }
}

/// A queue with more slots than the server hands out per fetch still runs.
async fn more_slots_than_one_fetch_may_ask_for(mode: Mode) {
    let env = env(mode).await;
    let jobs = env
        .client
        .enqueue_many((0..1500).map(|i| Add { a: i, b: 0 }))
        .await
        .unwrap();
    let builder = Worker::builder(&env.client)
        .queue("default", 1500)
        .poll_wait(Duration::from_millis(500));
    let running = start(builder.register::<Add>());
    for job in &jobs {
        assert_eq!(
            env.client.wait(job.id, WAIT).await.unwrap().state,
            JobState::Completed
        );
    }
    running.shutdown().await;
}
