//! `grafter bench`: how many jobs this machine moves, measured the way users
//! run Grafter. Default durability (printed, never lowered), the real worker
//! runtime of the `grafter` library running no-op jobs, either in process on
//! the store or against a real `grafter serve` over loopback HTTP. The
//! benchmark works in a database of its own (a new SQLite file, or a fresh
//! PostgreSQL schema) and removes it afterwards.

mod cpu;
mod events;
mod report;
mod schedules;
mod target;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use grafter::{
    Client, Hooks, Job, JobContext, JobError, JobId, JobInfo, JobOutcome, NewJob, Worker,
};
use grafter_core::QueueLimits;
use grafter_store::QueueLimitsSet;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::Failure;
use report::{Progress, Report};
use target::{Server, Target};

/// The queue benchmark jobs go to.
const QUEUE: &str = "bench";
/// Longest time without a single job finishing before the benchmark gives up.
const STALL: Duration = Duration::from_secs(60);

/// Options of `grafter bench`.
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// sqlite://PATH (a new file, deleted afterwards) or postgres://… (a fresh
    /// schema, dropped afterwards) [default: a SQLite file in a temporary directory]
    #[arg(long)]
    database: Option<String>,
    /// Jobs to run (latency: samples) [default: burndown 100000, latency 2000,
    /// continuous: as many as fit in --duration]
    #[arg(long)]
    jobs: Option<u64>,
    /// Jobs the worker runs at once (River's benchmark runs 2,000 workers too).
    #[arg(long, default_value_t = 2000)]
    concurrency: usize,
    /// Workers on the store in this process, or through a `grafter serve`
    /// child process over loopback HTTP.
    #[arg(long, value_enum, default_value_t = Mode::Inprocess)]
    mode: Mode,
    /// burndown: insert, then work all down; continuous: enqueue while working;
    /// latency: one job at a time on an idle queue.
    #[arg(long, value_enum, default_value_t = Workload::Burndown)]
    workload: Workload,
    /// Jobs per enqueue call (burndown, continuous).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent enqueuers (burndown, continuous).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// How long producers enqueue (continuous).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Total enqueue rate in jobs/s, spread over the producers (continuous)
    /// [default: as fast as they can]
    #[arg(long)]
    rate: Option<u64>,
    /// Limit the queue to this many running jobs at once, on every node
    /// (docs/limits.md) [default: no limit]
    #[arg(long)]
    limit_concurrency: Option<i64>,
    /// Spread the jobs over this many partitions, round robin (each job's
    /// `partition`) [default: none]
    #[arg(long)]
    partitions: Option<u64>,
    /// Limit each partition to this many running jobs at once
    /// (`partition_by: "partition"`); needs --partitions
    #[arg(long, requires = "partitions")]
    partition_limit: Option<i64>,
    /// Put all the jobs in one batch (docs/batches.md), sealed once all are
    /// in, and check its counts at the end (burndown).
    #[arg(long)]
    in_batch: bool,
}

impl BenchArgs {
    /// The queue's limits the options ask for, if any.
    fn limits(&self) -> Option<QueueLimits> {
        match (self.partition_limit, self.limit_concurrency) {
            (Some(n), _) => Some(QueueLimits {
                concurrency: Some(n),
                rate: None,
                partition_by: Some("partition".into()),
            }),
            (None, Some(n)) => Some(QueueLimits {
                concurrency: Some(n),
                rate: None,
                partition_by: None,
            }),
            (None, None) => None,
        }
    }

    /// The `n`-th benchmark job: a no-op, in partition `p<n mod partitions>`
    /// with --partitions.
    fn job(&self, n: u64) -> NewJob {
        let mut job = NewJob::new(Noop::KIND, serde_json::json!({}));
        job.queue = QUEUE.to_owned();
        job.partition = self.partitions.map(|p| format!("p{}", n % p.max(1)));
        job
    }
}

/// Where the workers take jobs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// On the store, in this process.
    Inprocess,
    /// Through `grafter serve` over loopback HTTP.
    Http,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Inprocess => "inprocess",
            Mode::Http => "http",
        }
    }
}

/// What load to put on the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Insert N jobs in batches, then work them all down.
    Burndown,
    /// Producers enqueue while the workers run, for a duration.
    Continuous,
    /// One job at a time on an idle queue: enqueue → start.
    Latency,
    /// `--jobs` schedules (default 10,000) due on the same minute: how soon
    /// all their jobs are enqueued, and a firing pass's idle cost.
    Schedules,
    /// `--jobs` idle event streams (default 10,000) on one server: its
    /// memory, its idle CPU, and an event's latency.
    Events,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Burndown => "burndown",
            Workload::Continuous => "continuous",
            Workload::Latency => "latency",
            Workload::Schedules => "schedules",
            Workload::Events => "events",
        }
    }
}

/// The job every benchmark runs: it does nothing.
#[derive(Serialize, Deserialize)]
struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "bench_noop";
    const QUEUE: &'static str = QUEUE;
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// What the worker's hooks saw.
#[derive(Default)]
struct Tally {
    /// Jobs whose outcome was recorded as completed.
    completed: AtomicU64,
    /// Jobs that ended any other way (none are expected).
    other: AtomicU64,
    /// When each job started, when starts are tracked (continuous, latency).
    starts: Option<Mutex<Vec<(JobId, Instant)>>>,
    /// Bumped on every finished job, to wait on.
    finished: Option<watch::Sender<u64>>,
}

impl Tally {
    fn tracking_starts() -> Self {
        Tally {
            starts: Some(Mutex::new(Vec::new())),
            ..Tally::default()
        }
    }

    fn done(&self) -> u64 {
        self.completed.load(Ordering::Relaxed) + self.other.load(Ordering::Relaxed)
    }
}

struct Counting(Arc<Tally>);

impl Hooks for Counting {
    fn before_job(&self, job: &JobInfo) {
        if let Some(starts) = &self.0.starts {
            starts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((job.id, Instant::now()));
        }
    }

    fn after_job(&self, _job: &JobInfo, outcome: &JobOutcome) {
        if *outcome == JobOutcome::Completed {
            self.0.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.0.other.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(finished) = &self.0.finished {
            finished.send_modify(|n| *n += 1);
        }
    }
}

/// The longest `--duration`: a benchmark, not a service.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs `grafter bench`.
pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    if args.batch == 0 || args.producers == 0 || args.concurrency == 0 || args.rate == Some(0) {
        return Err(Failure::Message(
            "--batch, --producers, --concurrency and --rate must be at least 1".into(),
        ));
    }
    if args.duration > MAX_DURATION {
        return Err(Failure::Message(format!(
            "--duration must be at most {}",
            humantime::format_duration(MAX_DURATION)
        )));
    }
    // Only warnings: the summary is the output.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    let target = Target::prepare(args.database.as_deref()).await?;
    if !target.durability_is_default() {
        eprintln!(
            "warning: the database is not at Grafter's default durability ({}); \
             these figures are not comparable",
            target.durability
        );
    }
    if matches!(args.workload, Workload::Schedules | Workload::Events) {
        let own_module = async {
            match args.workload {
                Workload::Events => events::run(&args, &target).await,
                _ => schedules::run(&args, &target).await,
            }
        };
        let outcome = tokio::select! {
            outcome = own_module => outcome,
            _ = tokio::signal::ctrl_c() => Err(Failure::Message("interrupted".into())),
        };
        target.remove().await;
        return outcome;
    }
    let load_before = report::load_average();
    let outcome = tokio::select! {
        outcome = run_on(&args, &target) => outcome,
        _ = tokio::signal::ctrl_c() => Err(Failure::Message("interrupted".into())),
    };
    let durability = target.durability.clone();
    let (kind, place) = (target.kind(), target.place());
    target.remove().await;
    let mut report = outcome?;
    report.database = kind;
    report.durability = durability;
    report.place = place;
    report.load_before = load_before;
    report.load_after = report::load_average();
    report.print()
}

/// The workers' side: a client over the chosen transport, and the server
/// process in HTTP mode.
struct Setup {
    client: Client,
    server: Option<Server>,
}

impl Setup {
    fn cpu(&self) -> cpu::Sample {
        cpu::Sample::now(self.server.as_ref().and_then(Server::pid))
    }

    fn rss(&self) -> Option<u64> {
        match &self.server {
            Some(server) => server.rss(),
            None => target::rss_of("/proc/self/status"),
        }
    }

    fn worker(&self, args: &BenchArgs, tally: &Arc<Tally>) -> Result<Worker, Failure> {
        Ok(Worker::builder(&self.client)
            .register::<Noop>()
            .queue(QUEUE, args.concurrency)
            .poll_wait(Duration::from_secs(1))
            .hooks(Counting(tally.clone()))
            .build()?)
    }
}

async fn run_on(args: &BenchArgs, target: &Target) -> Result<Report, Failure> {
    let mut report = Report::new(args.mode.name(), args.workload.name());
    if let Some(limits) = args.limits() {
        limits
            .validate()
            .map_err(|e| Failure::Message(format!("{}: {}", e.field, e.message)))?;
        // Set on the store before any server opens it: a SQLite server reads
        // which queues are limited when it opens the file.
        let store = target.open_store().await?;
        store
            .queue_set_limits(QueueLimitsSet {
                queue: QUEUE.to_owned(),
                limits: Some(limits.clone()),
                now: chrono::Utc::now(),
            })
            .await
            .map_err(|e| Failure::Message(format!("setting the queue's limits: {e}")))?;
        report.note(format!(
            "limits      {}",
            serde_json::to_string(&limits).unwrap_or_default()
        ));
    }
    let setup = match args.mode {
        Mode::Inprocess => Setup {
            client: Client::from_store(target.open_store().await?),
            server: None,
        },
        Mode::Http => {
            let server = target.serve().await?;
            Setup {
                client: Client::http(&server.url)?,
                server: Some(server),
            }
        }
    };
    let outcome = match args.workload {
        Workload::Burndown => burndown(args, &setup, &mut report).await,
        Workload::Continuous => continuous(args, &setup, &mut report).await,
        Workload::Latency => latency(args, &setup, &mut report).await,
        Workload::Schedules | Workload::Events => {
            unreachable!("run() hands this workload to its own module")
        }
    };
    if let Some(server) = setup.server {
        server.stop().await;
    }
    outcome.map(|()| report)
}

/// Enqueues `total` jobs with `producers` concurrent callers of `batch` jobs
/// each, counting them in `progress`.
async fn enqueue_all(
    client: &Client,
    args: &BenchArgs,
    total: u64,
    progress: Arc<AtomicU64>,
    batch_id: Option<grafter::BatchId>,
) -> Result<(), Failure> {
    let batch = args.batch;
    let claimed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let (client, claimed, progress) = (client.clone(), claimed.clone(), progress.clone());
        let args = args.clone();
        tasks.spawn(async move {
            loop {
                let start = claimed.fetch_add(batch as u64, Ordering::Relaxed);
                if start >= total {
                    return Ok::<_, Failure>(());
                }
                let n = (total - start).min(batch as u64);
                let jobs = (start..start + n).map(|i| args.job(i)).collect();
                match batch_id {
                    Some(id) => drop(client.add_to_batch(id, jobs).await?),
                    None => drop(client.enqueue_raw(jobs).await?),
                }
                progress.fetch_add(n, Ordering::Relaxed);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Failure::Message(format!("an enqueuer failed: {e}")))??;
    }
    Ok(())
}

/// Waits until the tally reaches `total` finished jobs, failing if none finish
/// for [`STALL`].
async fn wait_finished(tally: &Tally, total: u64) -> Result<(), Failure> {
    let (mut last, mut since) = (tally.done(), Instant::now());
    loop {
        let done = tally.done();
        if done >= total {
            return Ok(());
        }
        if done != last {
            (last, since) = (done, Instant::now());
        } else if since.elapsed() > STALL {
            return Err(Failure::Message(format!(
                "stalled: {done} of {total} jobs finished, none in {} s",
                STALL.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn take<T>(log: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()))
}

async fn burndown(args: &BenchArgs, setup: &Setup, report: &mut Report) -> Result<(), Failure> {
    let total = args.jobs.unwrap_or(100_000);
    report.jobs = total;
    let progress = Progress::start("enqueue", total);
    let cpu = setup.cpu();
    let started = Instant::now();
    let batch_id = if args.in_batch {
        let (batch, _) = setup
            .client
            .create_batch(Vec::new(), true, Default::default())
            .await?;
        Some(batch.id)
    } else {
        None
    };
    let enqueued = tokio::select! {
        enqueued = enqueue_all(&setup.client, args, total, progress.counter(), batch_id) => enqueued,
        () = progress.follow(None, None) => Ok(()),
    };
    let enqueue_time = started.elapsed();
    let enqueue_cpu = cpu.describe(&setup.cpu(), total, enqueue_time);
    progress.finish();
    enqueued?;
    report.enqueue_per_s = Some(total as f64 / enqueue_time.as_secs_f64());
    report.note(format!(
        "enqueue     {} jobs in {:.2} s ({} producer(s), {} per call)",
        report::thousands(total),
        enqueue_time.as_secs_f64(),
        args.producers,
        args.batch
    ));
    report.note(format!("  cpu       {enqueue_cpu}"));
    if let Some(id) = batch_id {
        setup.client.seal_batch(id).await?;
    }

    let tally = Arc::new(Tally::default());
    let worker = setup.worker(args, &tally)?;
    let rss = || setup.rss();
    let progress = Progress::start("work", total);
    let cpu = setup.cpu();
    let started = Instant::now();
    let running = worker.start();
    let finished = tokio::select! {
        finished = wait_finished(&tally, total) => finished,
        () = progress.follow(Some(&tally.completed), Some(&rss)) => Ok(()),
    };
    let work_time = started.elapsed();
    let work_cpu = cpu.describe(&setup.cpu(), total, work_time);
    report.rss_marks = progress.finish();
    report
        .rss_marks
        .extend(setup.rss().map(|bytes| (total, bytes)));
    running.shutdown_within(Duration::from_secs(5)).await;
    finished?;
    report.jobs_per_s = Some(total as f64 / work_time.as_secs_f64());
    report.failures = tally.other.load(Ordering::Relaxed);
    report.note(format!(
        "work        {} jobs in {:.2} s (concurrency {})",
        report::thousands(total),
        work_time.as_secs_f64(),
        args.concurrency
    ));
    report.note(format!("  cpu       {work_cpu}"));
    if let Some(id) = batch_id {
        // The last completion settles the batch in its own transaction.
        let batch = setup.client.batch(id).await?;
        if batch.counts.completed != total as i64 || batch.state != grafter::BatchState::Succeeded {
            return Err(Failure::Message(format!(
                "batch {id} is {} with {} of {total} jobs counted completed",
                batch.state, batch.counts.completed
            )));
        }
        report.note(format!(
            "batch       {id}: {}, {} completed",
            batch.state,
            report::thousands(total)
        ));
    }
    Ok(())
}

async fn continuous(args: &BenchArgs, setup: &Setup, report: &mut Report) -> Result<(), Failure> {
    let tally = Arc::new(Tally::tracking_starts());
    let worker = setup.worker(args, &tally)?;
    let running = worker.start();
    let enqueues: Arc<Mutex<Vec<(JobId, Instant)>>> = Arc::default();
    let progress = Progress::timed("run", args.duration);
    let enqueued = progress.counter();
    let deadline = tokio::time::Instant::now() + args.duration;
    let per_producer = args.rate.map(|rate| rate as f64 / args.producers as f64);
    let cpu = setup.cpu();
    let started = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let (client, enqueues, enqueued, batch) = (
            setup.client.clone(),
            enqueues.clone(),
            enqueued.clone(),
            args.batch,
        );
        let args = args.clone();
        producers.spawn(async move {
            let mut next = tokio::time::Instant::now();
            while tokio::time::Instant::now() < deadline {
                let at = Instant::now();
                let jobs = client
                    .enqueue_raw((0..batch as u64).map(|i| args.job(i)).collect())
                    .await?;
                enqueued.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                enqueues
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(jobs.iter().map(|j| (j.id, at)));
                if let Some(rate) = per_producer {
                    next += Duration::from_secs_f64(batch as f64 / rate);
                    tokio::time::sleep_until(next.min(deadline)).await;
                }
            }
            Ok::<_, Failure>(())
        });
    }
    tokio::select! {
        () = progress.follow(Some(&tally.completed), None) => {}
        () = tokio::time::sleep_until(deadline) => {}
    }
    let completed = tally.completed.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    let run_cpu = cpu.describe(&setup.cpu(), completed, elapsed);
    let mut outcome = Ok(());
    while let Some(joined) = producers.join_next().await {
        if let Err(e) = joined
            .map_err(|e| Failure::Message(e.to_string()))
            .and_then(|r| r)
        {
            outcome = Err(e);
        }
    }
    progress.finish();
    running.shutdown_within(Duration::from_secs(5)).await;
    outcome?;
    let enqueued = enqueued.load(Ordering::Relaxed);
    report.jobs = completed;
    report.jobs_per_s = Some(completed as f64 / elapsed.as_secs_f64());
    report.enqueue_per_s = Some(enqueued as f64 / elapsed.as_secs_f64());
    report.failures = tally.other.load(Ordering::Relaxed);
    let starts = tally.starts.as_ref().map(take).unwrap_or_default();
    report.set_latencies(report::latencies(&take(&enqueues), &starts));
    report.note(format!(
        "ran         {:.2} s: {} jobs enqueued ({} producer(s), {} per call{}), {} completed",
        elapsed.as_secs_f64(),
        report::thousands(enqueued),
        args.producers,
        args.batch,
        args.rate
            .map(|r| format!(", paced to {r}/s"))
            .unwrap_or_default(),
        report::thousands(completed),
    ));
    report.note(format!("  cpu       {run_cpu} (per job completed)"));
    Ok(())
}

async fn latency(args: &BenchArgs, setup: &Setup, report: &mut Report) -> Result<(), Failure> {
    /// Samples taken and thrown away first: connections, caches, statements.
    const WARM_UP: u64 = 20;
    let samples = args.jobs.unwrap_or(2_000);
    let (finished, mut finished_seen) = watch::channel(0u64);
    let tally = Arc::new(Tally {
        finished: Some(finished),
        ..Tally::tracking_starts()
    });
    let worker = setup.worker(args, &tally)?;
    let running = worker.start();
    let progress = Progress::start("sample", samples);
    let counter = progress.counter();
    let mut enqueues = Vec::new();
    let (mut enqueue_time, mut cycle_time) = (Duration::ZERO, Duration::ZERO);
    let sampling = async {
        for i in 0..WARM_UP + samples {
            let at = Instant::now();
            let job = setup
                .client
                .enqueue_raw(vec![args.job(0)])
                .await?
                .pop()
                .ok_or_else(|| Failure::Message("the enqueue answered no job".into()))?;
            let enqueued = at.elapsed();
            // Wait until it ran, so the next sample finds the queue idle again.
            match tokio::time::timeout(STALL, finished_seen.wait_for(|n| *n > i)).await {
                Ok(Ok(_)) => {}
                _ => {
                    return Err(Failure::Message(format!(
                        "job {} did not run within {} s",
                        job.id,
                        STALL.as_secs()
                    )))
                }
            }
            if i >= WARM_UP {
                enqueue_time += enqueued;
                cycle_time += at.elapsed();
                enqueues.push((job.id, at));
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok::<_, Failure>(())
    };
    let outcome = tokio::select! {
        outcome = sampling => outcome,
        () = progress.follow(None, None) => Ok(()),
    };
    progress.finish();
    running.shutdown_within(Duration::from_secs(5)).await;
    outcome?;
    let starts = tally.starts.as_ref().map(take).unwrap_or_default();
    report.jobs = samples;
    report.jobs_per_s = Some(samples as f64 / cycle_time.as_secs_f64());
    report.enqueue_per_s = Some(samples as f64 / enqueue_time.as_secs_f64());
    report.failures = tally.other.load(Ordering::Relaxed);
    report.set_latencies(report::latencies(&enqueues, &starts));
    report.note(format!(
        "sampled     {} jobs one at a time (after {WARM_UP} thrown away), concurrency {}",
        report::thousands(samples),
        args.concurrency
    ));
    Ok(())
}
