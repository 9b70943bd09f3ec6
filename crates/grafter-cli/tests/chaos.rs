//! Chaos: thousands of jobs, pull workers in child processes, and for a
//! minute random `kill -9` of the server and of workers, on SQLite (one node)
//! and on PostgreSQL (two nodes on one schema). Afterwards no job may be lost
//! and none completed twice.
//!
//! A backlog is enqueued, the workers start, and while servers and workers are
//! killed at random (every 0.5–3 s; a killed server is started again on the
//! same port and database, at once or, one time in four, after 1–5 s, longer
//! than a lease; a killed worker is replaced at once) the test keeps
//! enqueueing a trickle of single and batch enqueues through the API, so that
//! enqueues are cut by kills too. Then the kills stop, the servers and workers
//! left run until every job is completed (a bounded wait), and the test judges
//! by the server's own record, not by the workers' view: an ack committed just
//! before a kill is never answered, so the workers undercount.
//!
//! - Nothing lost: every job that exists is `completed`, and every enqueue
//!   answered 201 made its jobs. An enqueue that got no answer may or may not
//!   have made its jobs; if it did they must be completed too, and no enqueue
//!   made a job twice.
//! - None completed twice: the store's own count of completed attempts equals
//!   the number of jobs (and its count of failed attempts equals the errors the
//!   jobs carry). The JSON API does not show that count; the dashboard's
//!   overview does (`Store::throughput_list`, in its day chart's label), so it
//!   is read there rather than from the database's tables. Also, among the acks
//!   the workers saw answered, no job appears twice.
//! - The queue's counts per state (the counters `GET /v1/queues` and the
//!   dashboard show) agree with its jobs, and no server or worker panicked.
//! - Per job: the result names the worker and the attempt that completed it,
//!   that attempt is the job's last, and each earlier attempt ended as "lease
//!   expired" (the only way an attempt ends here without an ack); no lease (job
//!   and attempt) was handed to two workers.
//!
//! A job may *run* more than once (its worker killed after the work, before the
//! ack committed; or its lease run out while its node was down): delivery is
//! at-least-once. That is counted and reported, never failed.
//!
//! The workers are this test binary started again (`current_exe`) to run only
//! the ignored test `chaos_worker`, which, with the environment the chaos test
//! gives it, runs the library's own worker (`grafter::Worker` over
//! `Client::http`: batch fetch, heartbeats, batch acks, outcomes retried across
//! a restart). So the real HTTP worker runtime is what gets killed, with no
//! binary shipped to users for it (a `[[bin]]` would be installed with
//! `grafter`), no hidden subcommand, and no other interpreter needed (a Python
//! worker would have tested the wire protocol alone, which this runtime speaks
//! too, and not the runtime applications actually run). Each
//! worker appends what it saw (leases, finished runs, acks answered) to a report
//! file, one `write` per line, and exits by itself when its stdin, a pipe from
//! the test, closes, so none outlives the test.
//!
//! The kills follow a seeded RNG: the seed is printed first, and
//! `GRAFTER_CHAOS_SEED=<seed>` replays the same choices and pauses (how they
//! interleave with the processes is up to the machine). `GRAFTER_CHAOS_SECS`
//! changes the minute of kills. A summary goes to stderr, also in CI. On a
//! failure, the servers' and workers' logs and the workers' reports are kept and
//! their directory named. Every wait is bounded and generous, and nothing
//! asserts on time: the assertions are the invariants above.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use grafter::{Hooks, Job, JobContext, JobError, JobId, JobInfo, JobOutcome, Worker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tempfile::TempDir;

use common::{
    id_of, run_worker_process, schema_setup, steady_port, temp_dir, worker_process_command, Server,
    FAST_CONFIG,
};

const QUEUE: &str = "chaos";
/// Jobs enqueued before the workers start.
const BACKLOG: u64 = 3_000;
/// Worker processes alive at any time, and the jobs each runs at once.
const WORKERS: usize = 4;
const WORKER_CONCURRENCY: usize = 4;
/// Short, so a killed worker's jobs come back soon (heartbeats every third).
const LEASE: Duration = Duration::from_secs(3);
/// Far more than any job needs here: running out of attempts would be a
/// finding, not the test's design.
const MAX_ATTEMPTS: u64 = 100;
/// How long the kills go on unless `GRAFTER_CHAOS_SECS` says otherwise.
const CHAOS: Duration = Duration::from_secs(60);
/// The pause before each kill, in milliseconds.
const PAUSE_MS: std::ops::RangeInclusive<u64> = 500..=3_000;
/// The share of kills that hit a server rather than a worker.
const SERVER_KILLS: f64 = 1.0 / 3.0;
/// The share of killed servers that stay down a while before they are
/// started again (the others are started again at once), and how long, in
/// milliseconds: up to more than a lease.
const LONG_DOWN: f64 = 0.25;
const DOWN_MS: std::ops::RangeInclusive<u64> = 1_000..=5_000;
/// How long the jobs left after the chaos may take to complete.
const DRAIN: Duration = Duration::from_secs(120);

/// The environment that makes `chaos_worker` a worker.
const WORKER_URL: &str = "GRAFTER_CHAOS_WORKER_URL";
const WORKER_NAME: &str = "GRAFTER_CHAOS_WORKER_NAME";
const WORKER_REPORT: &str = "GRAFTER_CHAOS_WORKER_REPORT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_sqlite_loses_no_job_and_completes_none_twice() {
    let dir = temp_dir();
    let config = dir.path().join("grafter.toml");
    std::fs::write(&config, FAST_CONFIG).expect("write config");
    let database = format!("sqlite://{}", dir.path().join("jobs.db").display());
    chaos("SQLite", dir, &database, &config, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres_with_two_nodes_loses_no_job_and_completes_none_twice() {
    let Some(pg) = schema_setup().await else {
        return;
    };
    chaos("PostgreSQL", pg.dir, &pg.url, &pg.config, 2).await;
}

// ---- the worker process ----

/// Not a test: the worker process that the chaos tests start (this binary,
/// run again with `--ignored --exact chaos_worker` and the `GRAFTER_CHAOS_WORKER_*`
/// environment). Without that environment it does nothing.
#[test]
#[ignore = "a worker process the chaos tests start; does nothing on its own"]
fn chaos_worker() {
    let Ok(url) = std::env::var(WORKER_URL) else {
        return;
    };
    let worker = std::env::var(WORKER_NAME).expect("worker name");
    let report = std::env::var(WORKER_REPORT).expect("report path");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&report)
        .expect("open the report");
    assert!(REPORT.set(Report { worker, file }).is_ok());
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    run_worker_process(&url, |client| {
        Worker::builder(client)
            .register::<Work>()
            .queue(QUEUE, WORKER_CONCURRENCY)
            .lease(LEASE)
            .poll_wait(Duration::from_secs(1))
            .hooks(Reporting)
            .build()
            .expect("build the worker")
    })
}

/// The chaos jobs: a little work, then a result naming the worker and attempt.
#[derive(Serialize, Deserialize)]
struct Work {
    n: u64,
}

impl Job for Work {
    const KIND: &'static str = "chaos";
    const QUEUE: &'static str = QUEUE;
    type Output = Value;

    async fn perform(self, ctx: JobContext) -> Result<Value, JobError> {
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..=20))).await;
        let report = Report::get();
        report.line("ran", ctx.id(), ctx.attempt());
        Ok(json!({"worker": report.worker, "attempt": ctx.attempt()}))
    }
}

/// What this worker process saw, appended to its report file.
struct Report {
    worker: String,
    file: File,
}

static REPORT: OnceLock<Report> = OnceLock::new();

impl Report {
    fn get() -> &'static Report {
        REPORT.get().expect("the report is open")
    }

    /// One `write` per line: a `kill -9` leaves whole lines (or cuts the last).
    fn line(&self, what: &str, id: JobId, attempt: i32) {
        let line = format!("{what} {id} {attempt}\n");
        (&self.file)
            .write_all(line.as_bytes())
            .expect("write the report");
    }
}

/// Reports each lease as its job starts, each ack answered as a success, and
/// each outcome refused or given up on because the lease was lost.
struct Reporting;

impl Hooks for Reporting {
    fn before_job(&self, job: &JobInfo) {
        Report::get().line("leased", job.id, job.attempt);
    }

    fn after_job(&self, job: &JobInfo, outcome: &JobOutcome) {
        match outcome {
            JobOutcome::Completed => Report::get().line("acked", job.id, job.attempt),
            JobOutcome::LeaseLost => Report::get().line("lost", job.id, job.attempt),
            _ => {}
        }
    }
}

// ---- the chaos test ----

/// Writes straight to the process's stderr: libtest hides `eprintln!` of a
/// passing test, and CI's log should show what happened.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn chaos_seed() -> u64 {
    match std::env::var("GRAFTER_CHAOS_SEED") {
        Ok(seed) => seed
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GRAFTER_CHAOS_SEED is not a number: {seed}")),
        Err(_) => rand::random(),
    }
}

fn chaos_duration() -> Duration {
    match std::env::var("GRAFTER_CHAOS_SECS") {
        Ok(secs) => Duration::from_secs(
            secs.trim()
                .parse()
                .unwrap_or_else(|_| panic!("GRAFTER_CHAOS_SECS is not a number: {secs}")),
        ),
        Err(_) => CHAOS,
    }
}

/// The test's directory, kept (and named) if the test fails, for its logs.
struct KeepOnPanic(Option<TempDir>);

impl KeepOnPanic {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("the directory").path()
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!(
                    "the servers' and workers' logs and the workers' reports are kept in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// A worker process, killed on drop.
struct WorkerProcess {
    name: String,
    node: usize,
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    fn start(dir: &Path, name: String, node: usize, base: &str) -> WorkerProcess {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create the worker's log");
        let err = out.try_clone().expect("clone the log file");
        let child = worker_process_command("chaos_worker")
            .env(WORKER_URL, base)
            .env(WORKER_NAME, &name)
            .env(WORKER_REPORT, dir.join(format!("{name}.report")))
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start a worker process");
        WorkerProcess {
            name,
            node,
            child,
            log,
        }
    }

    fn kill9(&mut self) {
        self.child.kill().expect("kill -9 a worker");
        self.child.wait().expect("reap a worker");
    }

    /// Fails the test if the worker exited by itself.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "worker {} exited by itself ({status}); its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers (each always restarted on its own port) and the workers.
struct Cluster<'a> {
    dir: &'a Path,
    database: &'a str,
    config: &'a Path,
    ports: Vec<u16>,
    nodes: Vec<Server>,
    workers: Vec<WorkerProcess>,
    workers_started: usize,
    server_kills: usize,
    /// Server kills after which the node stayed down a while.
    long_downs: usize,
    worker_kills: usize,
    /// Each kill, with when it happened, for a failure's message.
    timeline: Vec<String>,
}

impl<'a> Cluster<'a> {
    async fn start(dir: &'a Path, database: &'a str, config: &'a Path, nodes: usize) -> Self {
        let mut cluster = Cluster {
            dir,
            database,
            config,
            ports: Vec::new(),
            nodes: Vec::new(),
            workers: Vec::new(),
            workers_started: 0,
            server_kills: 0,
            long_downs: 0,
            worker_kills: 0,
            timeline: Vec::new(),
        };
        for _ in 0..nodes {
            let port = steady_port();
            cluster.ports.push(port);
            cluster
                .nodes
                .push(Server::start_on(dir, database, config, port).await);
        }
        cluster
    }

    fn bases(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.base.clone()).collect()
    }

    fn start_worker(&mut self, node: usize) -> WorkerProcess {
        let name = format!("w{}", self.workers_started);
        self.workers_started += 1;
        WorkerProcess::start(self.dir, name, node, &self.nodes[node].base)
    }

    fn start_workers(&mut self) {
        for slot in 0..WORKERS {
            let worker = self.start_worker(slot % self.nodes.len());
            self.workers.push(worker);
        }
    }

    fn note(&mut self, what: String) {
        self.timeline.push(format!(
            "{} {what}",
            chrono::Utc::now().format("%H:%M:%S%.3f")
        ));
    }

    /// Kills a server or a worker every 0.5–3 s for `duration`.
    async fn kill_at_random(&mut self, rng: &mut StdRng, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(rng.random_range(PAUSE_MS))).await;
            self.check_alive();
            if rng.random_bool(SERVER_KILLS) {
                let node = rng.random_range(0..self.nodes.len());
                // Now and then a node stays down longer than a lease: its
                // workers' leases run out (rescued on restart, or meanwhile by
                // the other node) while the workers still hold the jobs.
                let down = if rng.random_bool(LONG_DOWN) {
                    Duration::from_millis(rng.random_range(DOWN_MS))
                } else {
                    Duration::ZERO
                };
                self.nodes[node].kill9();
                self.note(format!("kill -9 node {node}, down for {down:?}"));
                self.long_downs += usize::from(!down.is_zero());
                tokio::time::sleep(down).await;
                self.nodes[node] =
                    Server::start_on(self.dir, self.database, self.config, self.ports[node]).await;
                self.note(format!("node {node} up again"));
                self.server_kills += 1;
            } else {
                let slot = rng.random_range(0..self.workers.len());
                self.workers[slot].kill9();
                let node = self.workers[slot].node;
                let replacement = self.start_worker(node);
                let killed = std::mem::replace(&mut self.workers[slot], replacement);
                self.note(format!(
                    "kill -9 worker {}, replaced by {}",
                    killed.name, self.workers[slot].name
                ));
                self.worker_kills += 1;
            }
        }
    }

    /// Fails the test if a server or a worker exited without being killed.
    fn check_alive(&mut self) {
        for node in &mut self.nodes {
            assert!(
                node.is_running(),
                "a server exited by itself; its log:\n{}",
                node.log_text()
            );
        }
        for worker in &mut self.workers {
            worker.check_alive();
        }
    }
}

/// An HTTP client for the test's own calls: a call cut by a kill fails at
/// once; the timeout only keeps a hang from stalling the suite.
fn chaos_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// What the test's enqueues came to.
#[derive(Default)]
struct Enqueued {
    /// Each job's `n` (its args, unique per job) and the id answered with 201.
    created: BTreeMap<u64, i64>,
    /// `n`s sent in enqueues that got no answer (cut by a kill, or 503).
    unanswered: BTreeSet<u64>,
    /// Answers that are neither: never right for these requests.
    refused: Vec<String>,
    requests: usize,
}

impl Enqueued {
    /// Enqueues the jobs `ns` on `base`: one alone with `POST /v1/jobs`, more
    /// with `POST /v1/jobs/batch`.
    async fn enqueue(&mut self, http: &reqwest::Client, base: &str, ns: Range<u64>) {
        let jobs: Vec<Value> = ns
            .clone()
            .map(|n| json!({"kind": "chaos", "queue": QUEUE, "args": {"n": n}, "max_attempts": MAX_ATTEMPTS}))
            .collect();
        let request = match &jobs[..] {
            [job] => http.post(format!("{base}/v1/jobs")).json(job),
            _ => http
                .post(format!("{base}/v1/jobs/batch"))
                .json(&json!({ "jobs": jobs })),
        };
        self.requests += 1;
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.text().await.map(|text| (status, text))
            }
            Err(e) => Err(e),
        };
        let (status, text) = match answer {
            Ok(answer) => answer,
            Err(_) => {
                self.unanswered.extend(ns);
                return;
            }
        };
        match status {
            StatusCode::CREATED => {
                let body: Value = serde_json::from_str(&text).expect("a 201's JSON");
                let made = match body.get("jobs") {
                    Some(jobs) => jobs.as_array().expect("jobs").clone(),
                    None => vec![body],
                };
                let answered: Vec<u64> = made
                    .iter()
                    .map(|job| job["args"]["n"].as_u64().expect("args.n"))
                    .collect();
                assert_eq!(
                    answered,
                    ns.collect::<Vec<_>>(),
                    "a 201 answered other jobs than were sent"
                );
                for (n, job) in answered.into_iter().zip(&made) {
                    self.created.insert(n, id_of(job));
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => self.unanswered.extend(ns),
            other => {
                self.refused
                    .push(format!("enqueue of {ns:?} answered {other}: {text}"));
                self.unanswered.extend(ns);
            }
        }
    }
}

/// Enqueues until `stop`, in turn on each node: single jobs and batches of up
/// to 20, 10–50 ms apart.
async fn trickle(bases: Vec<String>, first: u64, seed: u64, stop: Arc<AtomicBool>) -> Enqueued {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let http = chaos_http();
    let mut enqueued = Enqueued::default();
    let mut next = first;
    for turn in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let size = if rng.random_bool(0.5) {
            1
        } else {
            rng.random_range(2..=20)
        };
        let base = &bases[turn % bases.len()];
        enqueued.enqueue(&http, base, next..next + size).await;
        next += size;
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..=50))).await;
    }
    enqueued
}

/// Waits until no job of the queue is available, running, scheduled or
/// retryable (asked of the job lists: the counters are judged, not trusted),
/// or `DRAIN` has passed (the judge then names what is left).
async fn wait_until_finished(node: &Server) {
    let deadline = Instant::now() + DRAIN;
    loop {
        let mut unfinished = Vec::new();
        for state in ["available", "running", "scheduled", "retryable"] {
            let (status, page) = node
                .get(&format!("/v1/jobs?queue={QUEUE}&state={state}&limit=1"))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            if page["jobs"].as_array().is_none_or(|jobs| !jobs.is_empty())
                || !page["next_cursor"].is_null()
            {
                unfinished.push(state);
            }
        }
        if unfinished.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            say(&format!("jobs still {unfinished:?} after {DRAIN:?}"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The store's own count of completed and failed attempts over the last day,
/// as the dashboard's overview shows it (the label of its day chart).
async fn store_throughput(node: &Server) -> (u64, u64) {
    let page = node
        .http
        .get(node.url("/"))
        .send()
        .await
        .expect("the dashboard")
        .text()
        .await
        .expect("the dashboard's page");
    const LABEL: &str = "aria-label=\"Last day, per hour: ";
    let start = page
        .find(LABEL)
        .unwrap_or_else(|| panic!("no day chart on the overview:\n{page}"))
        + LABEL.len();
    let label = &page[start..start + page[start..].find('"').expect("the label ends")];
    let numbers: Vec<u64> = label
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().expect("a count"))
        .collect();
    match (
        &numbers[..],
        label.contains("completed"),
        label.contains("failed"),
    ) {
        (&[completed, failed], true, true) => (completed, failed),
        _ => panic!("the day chart's label is not \"N completed, M failed\": {label}"),
    }
}

/// What the workers reported, over all worker processes.
#[derive(Default)]
struct Seen {
    /// Who was handed each lease (job, attempt).
    leased: HashMap<(i64, i64), Vec<String>>,
    /// Runs that finished their work, per job: (attempt, worker).
    ran: HashMap<i64, Vec<(i64, String)>>,
    /// Acks answered as a success, per job: (attempt, worker).
    acked: HashMap<i64, Vec<(i64, String)>>,
    /// Runs whose lease was lost before their outcome was recorded.
    lost: usize,
    /// Lines cut short by a `kill -9` mid-write.
    cut: usize,
}

impl Seen {
    fn read(dir: &Path, workers: usize) -> Seen {
        let mut seen = Seen::default();
        for w in 0..workers {
            let worker = format!("w{w}");
            // A worker killed before its first job wrote no report.
            let text =
                std::fs::read_to_string(dir.join(format!("{worker}.report"))).unwrap_or_default();
            for line in text.lines() {
                let parts: Vec<&str> = line.split(' ').collect();
                let (what, id, attempt) = match parts[..] {
                    [what, id, attempt] => match (id.parse(), attempt.parse()) {
                        (Ok(id), Ok(attempt)) => (what, id, attempt),
                        _ => {
                            seen.cut += 1;
                            continue;
                        }
                    },
                    _ => {
                        seen.cut += 1;
                        continue;
                    }
                };
                let by = worker.clone();
                match what {
                    "leased" => seen.leased.entry((id, attempt)).or_default().push(by),
                    "ran" => seen.ran.entry(id).or_default().push((attempt, by)),
                    "acked" => seen.acked.entry(id).or_default().push((attempt, by)),
                    "lost" => seen.lost += 1,
                    _ => seen.cut += 1,
                }
            }
        }
        seen
    }
}

/// Checks every invariant against the server's record; answers what is
/// wrong (empty when all is well) and the summary.
fn judge(
    jobs: &[Value],
    counts: &BTreeMap<String, u64>,
    enqueued: &Enqueued,
    seen: &Seen,
    (completions, failures): (u64, u64),
) -> (Vec<String>, String) {
    let mut wrong = enqueued.refused.clone();
    let listed = jobs.iter().fold(BTreeMap::new(), |mut listed, job| {
        let state = job["state"].as_str().unwrap_or("?").to_owned();
        *listed.entry(state).or_insert(0u64) += 1;
        listed
    });
    let counted: BTreeMap<String, u64> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| (state.clone(), *n))
        .collect();
    if counted != listed {
        wrong.push(format!(
            "the queue's counts per state {counted:?} are not its jobs' {listed:?}"
        ));
    }
    let mut by_n: BTreeMap<u64, &Value> = BTreeMap::new();
    let (mut attempts, mut errors, mut max_attempt, mut ran_again) = (0, 0, 0, 0);
    for job in jobs {
        let id = id_of(job);
        let Some(n) = job["args"]["n"].as_u64() else {
            wrong.push(format!("job {id} is not one this test enqueued: {job}"));
            continue;
        };
        if let Some(other) = by_n.insert(n, job) {
            wrong.push(format!("one enqueue made two jobs: {other} and {job}"));
        }
        match enqueued.created.get(&n) {
            Some(&created) if created != id => wrong.push(format!(
                "the enqueue of n={n} was answered with job {created}, yet job {id} has it: {job}"
            )),
            None if !enqueued.unanswered.contains(&n) => {
                wrong.push(format!("job {id} was never enqueued: {job}"))
            }
            _ => {}
        }
        if job["state"] != "completed" {
            wrong.push(format!("job {id} is not completed: {job}"));
            continue;
        }
        let attempt = job["attempt"].as_i64().unwrap_or(0);
        attempts += attempt;
        max_attempt = max_attempt.max(attempt);
        if attempt > 1 {
            ran_again += 1;
        }
        if attempt < 1 {
            wrong.push(format!("job {id} completed without an attempt: {job}"));
        }
        let result = &job["result"];
        if !result["worker"].is_string() || result["attempt"].as_i64() != Some(attempt) {
            wrong.push(format!(
                "job {id}'s result is not from its last attempt's worker: {job}"
            ));
        }
        let list = job["errors"].as_array().cloned().unwrap_or_default();
        errors += list.len() as u64;
        let expected = (1..attempt).all(|a| {
            list.get(a as usize - 1)
                .is_some_and(|e| e["attempt"].as_i64() == Some(a) && e["error"] == "lease expired")
        });
        if !expected || list.len() as i64 != attempt - 1 {
            wrong.push(format!(
                "job {id}'s earlier attempts did not each end as \"lease expired\": {job}"
            ));
        }
        if let Some(acks) = seen.acked.get(&id) {
            let by = result["worker"].as_str().unwrap_or("");
            if acks.len() > 1 {
                wrong.push(format!(
                    "job {id} was acked successfully more than once: {acks:?}: {job}"
                ));
            } else if acks[0] != (attempt, by.to_owned()) {
                wrong.push(format!(
                    "job {id}'s answered ack ({:?}) is not its completion: {job}",
                    acks[0]
                ));
            }
        }
    }
    for (n, id) in &enqueued.created {
        if !by_n.contains_key(n) {
            wrong.push(format!(
                "lost: job {id} (n={n}) was enqueued with a 201 and is gone"
            ));
        }
    }
    for (lease, workers) in &seen.leased {
        if workers.len() > 1 {
            wrong.push(format!(
                "job {} attempt {} was leased to several workers: {workers:?}",
                lease.0, lease.1
            ));
        }
    }
    if completions != jobs.len() as u64 {
        wrong.push(format!(
            "the store counted {completions} completions for {} jobs",
            jobs.len()
        ));
    }
    if failures != errors {
        wrong.push(format!(
            "the store counted {failures} failed attempts; the jobs carry {errors} errors"
        ));
    }
    let answered_unanswered = by_n
        .keys()
        .filter(|n| enqueued.unanswered.contains(n))
        .count();
    let ran = seen.ran.values().map(Vec::len).sum::<usize>();
    let finished_twice = seen
        .ran
        .values()
        .filter(|runs| runs.iter().map(|r| r.0).collect::<BTreeSet<_>>().len() > 1)
        .count();
    let summary = format!(
        "{} jobs ({} answered 201 in {} requests, {} sent without an answer of which {} made a job); \
         {attempts} attempts (most {max_attempt}), {ran_again} jobs ran more than once, \
         {finished_twice} finished their work more than once ({ran} runs finished); \
         the store: {completions} completed, {failures} failed attempts; \
         acks answered: {} ({} completions went unanswered), {} runs lost their lease; \
         report lines cut by kills: {}",
        jobs.len(),
        enqueued.created.len(),
        enqueued.requests,
        enqueued.unanswered.len(),
        answered_unanswered,
        seen.acked.len(),
        jobs.len().saturating_sub(seen.acked.len()),
        seen.lost,
        seen.cut,
    );
    (wrong, summary)
}

/// Every line of a server's or worker's log in `dir` that tells of a panic.
fn panics_in_logs(dir: &Path) -> Vec<String> {
    let mut panics = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the test's directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            panics.extend(
                text.lines()
                    .filter(|line| line.contains("panicked"))
                    .map(|line| format!("{}: {line}", path.display())),
            );
        }
    }
    panics
}

/// The whole scenario on one backend.
async fn chaos(backend: &str, dir: TempDir, database: &str, config: &Path, nodes: usize) {
    let seed = chaos_seed();
    let duration = chaos_duration();
    say(&format!(
        "chaos on {backend}: seed {seed} (replay with GRAFTER_CHAOS_SEED={seed}), \
         {duration:?} of kill -9 on {nodes} node(s) and {WORKERS} workers"
    ));
    let started = Instant::now();
    let dir = KeepOnPanic(Some(dir));
    let mut cluster = Cluster::start(dir.path(), database, config, nodes).await;
    let http = chaos_http();

    let mut backlog = Enqueued::default();
    for first in (0..BACKLOG).step_by(500) {
        let base = &cluster.nodes[0].base;
        backlog
            .enqueue(&http, base, first..(first + 500).min(BACKLOG))
            .await;
    }
    assert_eq!(
        backlog.created.len() as u64,
        BACKLOG,
        "the backlog was not enqueued (no kill yet): {:?}",
        backlog.refused
    );

    cluster.start_workers();
    let stop = Arc::new(AtomicBool::new(false));
    let trickling = tokio::spawn(trickle(cluster.bases(), BACKLOG, seed, stop.clone()));
    let mut rng = StdRng::seed_from_u64(seed);
    let chaos_started = Instant::now();
    cluster.kill_at_random(&mut rng, duration).await;
    stop.store(true, Ordering::SeqCst);
    let trickled = trickling.await.expect("the enqueue trickle panicked");
    let chaos_took = chaos_started.elapsed();
    cluster.check_alive();

    let draining = Instant::now();
    wait_until_finished(&cluster.nodes[0]).await;
    let drain_took = draining.elapsed();
    cluster.check_alive();
    // Nothing is left to run; the workers go, so their reports are final.
    for worker in &mut cluster.workers {
        worker.kill9();
    }
    let judge_node = &cluster.nodes[0];
    let jobs = judge_node.all_jobs(QUEUE, 1_000).await;
    let counts = judge_node.queue_counts(QUEUE).await;
    let throughput = store_throughput(judge_node).await;
    let seen = Seen::read(dir.path(), cluster.workers_started);

    let mut enqueued = backlog;
    enqueued.created.extend(trickled.created);
    enqueued.unanswered.extend(trickled.unanswered);
    enqueued.refused.extend(trickled.refused);
    enqueued.requests += trickled.requests;
    let (mut wrong, summary) = judge(&jobs, &counts, &enqueued, &seen, throughput);
    wrong.extend(panics_in_logs(dir.path()));
    let summary = format!(
        "chaos on {backend} (seed {seed}): {summary}; kills: {} of a server ({} of them down 1-5 s), \
         {} of a worker ({} worker processes); {:.1?} of chaos, {:.1?} to drain, {:.1?} in all",
        cluster.server_kills,
        cluster.long_downs,
        cluster.worker_kills,
        cluster.workers_started,
        chaos_took,
        drain_took,
        started.elapsed(),
    );
    say(&summary);
    assert!(
        wrong.is_empty(),
        "{} invariant(s) broken; the first 20:\n{}\n\n{summary}\n\nkills:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        cluster.timeline.join("\n"),
    );
}
