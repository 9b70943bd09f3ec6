//! A batch worked by a real worker process that is `kill -9`ed mid-batch:
//! the real `grafter serve` (SQLite, and PostgreSQL), a batch of 200 jobs
//! with an `on_success` callback, worked by this test binary started again as
//! a worker process (the library's `Worker` over HTTP, as in chaos.rs). The
//! first worker is killed while it holds leases; the jobs it held come back
//! when their short leases run out (the rescuer records the lost attempt), a
//! second worker finishes them, and the batch still ends `succeeded` with
//! exact counts and its callback enqueued exactly once.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use grafter::{Job, JobContext, JobError, Worker};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use common::{
    run_worker_process, schema_setup, temp_dir, worker_process_command, Server, FAST_CONFIG,
};

const QUEUE: &str = "pages";
const CALLBACKS: &str = "batch-callbacks";
const JOBS: usize = 200;
/// A worker's slots, each job taking `WORK`: a worker holds many leases at
/// any moment, so a kill mid-batch always catches some.
const CONCURRENCY: usize = 8;
const WORK: Duration = Duration::from_millis(100);
/// Short, so the killed worker's jobs come back soon.
const LEASE: Duration = Duration::from_secs(1);
/// Generous: a passing run takes a few seconds.
const PATIENCE: Duration = Duration::from_secs(60);

/// The environment that makes `batch_worker` a worker.
const WORKER_URL: &str = "GRAFTER_BATCH_WORKER_URL";

/// The worker process the tests below start (this test binary, run again
/// with `--ignored --exact batch_worker`); does nothing without its
/// environment.
#[test]
#[ignore = "a worker process the batch tests start; does nothing on its own"]
fn batch_worker() {
    let Ok(url) = std::env::var(WORKER_URL) else {
        return;
    };
    run_worker_process(&url, |client| {
        Worker::builder(client)
            .register::<Page>()
            .queue(QUEUE, CONCURRENCY)
            .lease(LEASE)
            .poll_wait(Duration::from_secs(1))
            .build()
            .expect("build the worker")
    })
}

#[derive(Serialize, Deserialize)]
struct Page {
    n: usize,
}

impl Job for Page {
    const KIND: &'static str = "page";
    const QUEUE: &'static str = QUEUE;
    type Output = Value;

    async fn perform(self, _ctx: JobContext) -> Result<Value, JobError> {
        tokio::time::sleep(WORK).await;
        Ok(json!({"page": self.n}))
    }
}

/// A worker process, killed on drop.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn start(server: &Server) -> WorkerProcess {
        let child = worker_process_command("batch_worker")
            .env(WORKER_URL, &server.base)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process");
        WorkerProcess(child)
    }

    fn kill9(&mut self) {
        self.0.kill().expect("kill -9 the worker");
        self.0.wait().expect("reap the worker");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls the batch until `done` says so, failing after [`PATIENCE`].
async fn batch_until(server: &Server, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, batch) = server.get(&format!("/v1/batches/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        if done(&batch) {
            return batch;
        }
        assert!(Instant::now() < deadline, "{what}: never happened; {batch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_worker_killed_mid_batch(server: &Server) {
    let jobs: Vec<Value> = (0..JOBS)
        .map(|n| json!({"kind": "page", "queue": QUEUE, "args": {"n": n}}))
        .collect();
    let (status, created) = server
        .post(
            "/v1/batches",
            json!({"jobs": jobs, "on_success": {"kind": "zip", "queue": CALLBACKS}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["batch"]["id"].as_i64().expect("batch id");

    let mut first = WorkerProcess::start(server);
    batch_until(server, id, "a quarter of the batch completed", |b| {
        b["counts"]["completed"].as_u64() >= Some(JOBS as u64 / 4)
    })
    .await;
    let running = server.queue_counts(QUEUE).await["running"];
    assert!(running > 0, "the worker holds leases when it is killed");
    first.kill9();
    let at_kill = batch_until(server, id, "read", |_| true).await;
    assert_eq!(at_kill["state"], "running", "{at_kill}");

    let second = WorkerProcess::start(server);
    let batch = batch_until(server, id, "the batch settled", |b| b["state"] != "running").await;
    drop(second);
    assert_eq!(batch["state"], "succeeded", "{batch}");
    assert_eq!(
        batch["counts"],
        json!({"total": JOBS, "pending": 0, "completed": JOBS, "dead": 0,
               "cancelled": 0, "expired": 0}),
    );
    assert_eq!(batch["progress"], 1.0);
    assert_eq!(batch["callbacks_enqueued"], json!(["on_success"]));

    // Every job completed, some of them on a second attempt: the leases the
    // killed worker held, rescued (or finished but never acknowledged).
    let pages = server.all_jobs(QUEUE, 100).await;
    assert_eq!(pages.len(), JOBS);
    assert!(pages.iter().all(|job| job["state"] == "completed"));
    let rescued = pages
        .iter()
        .filter(|job| job["attempt"].as_i64() > Some(1))
        .count();
    assert!(rescued > 0, "no job was rescued from the killed worker");
    // The callback, once: now, and after a lease more of maintenance.
    for _ in 0..2 {
        let callbacks = server.all_jobs(CALLBACKS, 100).await;
        assert_eq!(callbacks.len(), 1, "{callbacks:?}");
        assert_eq!(callbacks[0]["kind"], "zip");
        tokio::time::sleep(LEASE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_its_worker_killed_on_sqlite() {
    let dir = temp_dir();
    let config = dir.path().join("grafter.toml");
    std::fs::write(&config, FAST_CONFIG).expect("write config");
    let database = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let server = Server::start(dir.path(), &database, &config).await;
    a_worker_killed_mid_batch(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_its_worker_killed_on_postgres() {
    let Some(pg) = schema_setup().await else {
        return;
    };
    let server = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    a_worker_killed_mid_batch(&server).await;
}
