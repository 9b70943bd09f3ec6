//! A queue limited to `concurrency = 1` across three `grafter serve` nodes on
//! one PostgreSQL schema, worked by several worker processes at once (the
//! library's HTTP worker, four slots each, spread over the nodes), some of
//! them `kill -9`ed at random while they hold the one slot: the number of the
//! queue's running jobs, sampled from the database all along, is never above
//! 1, and every job completes. A killed worker's slot frees only when the
//! rescuer ends its expired lease.
//!
//! The limit is set with the CLI (`grafter queues set-limits`). The workers
//! are this test binary started again to run the ignored test
//! `limits_worker`, as in `chaos.rs`; each exits by itself when its stdin
//! (a pipe from the test) closes.

mod common;

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grafter::{Job, JobContext, JobError, Worker};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use common::{connect, run_cli, run_worker_process, schema_setup, worker_process_command, Server};

const QUEUE: &str = "limited";
const JOBS: usize = 1_000;
const WORKERS: usize = 4;
const WORKER_SLOTS: usize = 4;
/// The shortest lease there is, so a killed worker's slot comes back soon.
const LEASE: Duration = Duration::from_secs(1);
/// How long workers are killed at random, one every 1 to 3 s.
const KILLING: Duration = Duration::from_secs(10);
/// Longest the whole run may take before the test gives up.
const DRAIN: Duration = Duration::from_secs(90);
const WORKER_URL: &str = "GRAFTER_LIMITS_WORKER_URL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_holds_across_three_nodes_and_killed_workers() {
    let Some(pg) = schema_setup().await else {
        return;
    };
    let database = pg.url.clone();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Server::start(pg.dir.path(), &database, &pg.config).await);
    }
    let set = run_cli(
        &[
            "queues",
            "set-limits",
            QUEUE,
            "--concurrency",
            "1",
            "--url",
            &nodes[1].base,
        ],
        pg.dir.path(),
    )
    .await;
    assert!(set.status.success(), "{set:?}");
    assert!(String::from_utf8_lossy(&set.stdout).contains("1 at once"));
    let jobs: Vec<Value> = (0..JOBS)
        .map(|n| json!({"kind": "limited", "queue": QUEUE, "args": {"n": n}, "max_attempts": 100}))
        .collect();
    let (status, body) = nodes[0]
        .post("/v1/jobs/batch", json!({ "jobs": jobs }))
        .await;
    assert_eq!(status.as_u16(), 201, "{body}");

    // The sampler: the queue's running jobs, straight from the database.
    let sampler_db = connect(&pg.url).await.expect("connect the sampler");
    let running_sql = format!(
        "SELECT count(*) FROM \"{}\".jobs WHERE state = 'running' AND queue = $1",
        pg.schema.name
    );
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, most, samples) = (stop.clone(), most.clone(), samples.clone());
        tokio::spawn(async move {
            let statement = sampler_db.prepare(&running_sql).await.expect("prepare");
            while !stop.load(Ordering::Relaxed) {
                let row = sampler_db
                    .query_one(&statement, &[&QUEUE])
                    .await
                    .expect("sample");
                let n: i64 = row.get(0);
                most.fetch_max(n as u64, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let started = Instant::now();
    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|i| start_worker(&nodes[i % nodes.len()].base))
        .collect();
    let mut kills = 0;
    let mut next = 0;
    while started.elapsed() < KILLING {
        let pause = rand::rng().random_range(1_000..=3_000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let victim = rand::rng().random_range(0..workers.len());
        workers[victim].kill().expect("kill -9 a worker");
        workers[victim].wait().expect("reap it");
        kills += 1;
        next += 1;
        workers[victim] = start_worker(&nodes[next % nodes.len()].base);
    }
    let completed = loop {
        let counts = nodes[2].queue_counts(QUEUE).await;
        let completed = counts.get("completed").copied().unwrap_or(0);
        if completed as usize == JOBS || started.elapsed() > DRAIN {
            break completed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("the sampler");
    for mut worker in workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    let (most, samples) = (
        most.load(Ordering::Relaxed),
        samples.load(Ordering::Relaxed),
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "{JOBS} jobs through concurrency 1 on 3 nodes in {:.1} s, {kills} workers killed; \
             {samples} samples of the running count, at most {most}\n",
            started.elapsed().as_secs_f64()
        )
        .as_bytes(),
    );
    assert!(most <= 1, "{most} jobs of the queue ran at once");
    assert!(samples > 1_000, "only {samples} samples");
    assert_eq!(completed as usize, JOBS, "every job completes");
}

fn start_worker(base: &str) -> Child {
    worker_process_command("limits_worker")
        .env(WORKER_URL, base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker process")
}

/// Not a test: the worker process the test above starts (this binary, run
/// again with `--ignored --exact limits_worker` and `GRAFTER_LIMITS_WORKER_URL`).
/// Without that variable it does nothing.
#[test]
#[ignore = "a worker process the limits test starts; does nothing on its own"]
fn limits_worker() {
    let Ok(url) = std::env::var(WORKER_URL) else {
        return;
    };
    run_worker_process(&url, |client| {
        Worker::builder(client)
            .register::<Limited>()
            .queue(QUEUE, WORKER_SLOTS)
            .lease(LEASE)
            .poll_wait(Duration::from_secs(5))
            .build()
            .expect("build the worker")
    })
}

/// A job that takes a moment.
#[derive(Serialize, Deserialize)]
struct Limited {
    n: u64,
}

impl Job for Limited {
    const KIND: &'static str = "limited";
    const QUEUE: &'static str = QUEUE;
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}
