//! Micro-benchmarks of the functions every job passes through, so a change to
//! one shows up as a number before it shows up in `grafter bench`
//! (docs/benchmarks.md). Run with `cargo bench -p grafter-server`.
//!
//! The store cycle runs on a SQLite file in `/dev/shm` (memory), so it
//! measures the CPU of the statements and row decoding, not the disk's flush:
//! `grafter bench` measures the real thing, fsync included.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use divan::{black_box, Bencher};
use grafter_core::{Backoff, Job, JobState, LeasedJob, NewJob};
use grafter_sqlite::SqliteStore;
use grafter_store::transitions::{self, Failure};
use grafter_store::{JobsCompleteMany, JobsFetch, JobsInsert, Store};
use serde_json::json;

fn main() {
    divan::main();
}

/// A job as a worker receives it, with typical small arguments.
fn leased_job() -> LeasedJob {
    let now = Utc::now();
    LeasedJob {
        job: Job {
            id: grafter_core::JobId(123_456),
            queue: "default".into(),
            kind: "send_email".into(),
            args: json!({"to": "ada@example.com", "template": "welcome", "user_id": 42}),
            priority: 0,
            state: JobState::Running,
            run_at: now,
            attempt: 1,
            max_attempts: 25,
            errors: Vec::new(),
            progress: None,
            result: None,
            tags: vec!["signup".into()],
            unique_key: None,
            timeout_ms: None,
            expires_at: None,
            backoff: None,
            cancel_requested: false,
            worker_id: Some("web-1-12345-0a1b2c3d".into()),
            lease_expires_at: Some(now),
            created_at: now,
            attempted_at: Some(now),
            finished_at: None,
            partition: None,
            cut: Vec::new(),
            schedule: None,
            traceparent: None,
            tracestate: None,
            batch_id: None,
        },
        lease: "5f0c2d9e8a7b6c5d4e3f2a1b0c9d8e7f".into(),
    }
}

#[divan::bench(args = [1, 5, 25])]
fn backoff_delay(attempt: u32) -> Duration {
    Backoff::default().delay(black_box(attempt))
}

#[divan::bench]
fn new_job_validate(bencher: Bencher) {
    let mut job = NewJob::new("send_email", json!({"to": "ada@example.com"}));
    job.tags = vec!["signup".into(), "mail".into()];
    bencher.bench(|| black_box(&job).validate());
}

/// Decides what a failed attempt turns the job into (retry time, errors list).
#[divan::bench]
fn failure_transition(bencher: Bencher) {
    let job = leased_job().job;
    let backoff = Backoff::default();
    let now = Utc::now();
    bencher.bench(|| {
        transitions::after_failure(
            black_box(&job),
            Failure {
                error: "SMTP timeout",
                retry: true,
                retry_at: None,
                default_backoff: &backoff,
                now,
            },
        )
    });
}

/// What `POST /v1/fetch` writes per job.
#[divan::bench]
fn leased_job_encode(bencher: Bencher) {
    let job = leased_job();
    bencher.bench(|| serde_json::to_vec(black_box(&job)).map(|v| v.len()));
}

/// What an HTTP worker parses per job.
#[divan::bench]
fn leased_job_decode(bencher: Bencher) {
    let bytes = serde_json::to_vec(&leased_job()).unwrap_or_default();
    bencher.bench(|| serde_json::from_slice::<LeasedJob>(black_box(&bytes)).map(|j| j.job.id));
}

/// The `Grafter-Signature` header of a push request.
#[divan::bench]
fn push_signature(bencher: Bencher) {
    let body = serde_json::to_vec(&leased_job()).unwrap_or_default();
    let secrets = ["whsec_0123456789abcdef"];
    bencher
        .bench(|| grafter_engine::push::signature::sign(&secrets, 1_700_000_000, black_box(&body)));
}

/// Insert, fetch and batch-ack `n` jobs on a SQLite store: the statements and
/// the row encoding and decoding of a whole job life, per batch.
#[divan::bench(args = [1, 100], sample_count = 30)]
fn sqlite_job_life(bencher: Bencher, n: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build();
    let Ok(runtime) = runtime else { return };
    let dir = tempfile::Builder::new()
        .prefix("grafter-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir());
    let Ok(dir) = dir else { return };
    let Ok(store) = runtime.block_on(SqliteStore::open(dir.path().join("bench.db"))) else {
        return;
    };
    let store = Arc::new(store);
    bencher.bench(|| {
        runtime.block_on(async {
            let now = Utc::now();
            let jobs = (0..n).map(|_| NewJob::new("noop", json!({}))).collect();
            store
                .jobs_insert_many(JobsInsert { jobs, now })
                .await
                .map(drop)
                .ok();
            let fetch = JobsFetch {
                queues: vec!["default".into()],
                max: n,
                lease_duration: Duration::from_secs(30),
                worker_id: Some("bench".into()),
                running_limit: None,
                max_bytes: usize::MAX,
                now,
            };
            let leased = store.jobs_fetch(fetch).await.unwrap_or_default();
            let items = leased
                .into_iter()
                .map(|l| (l.job.id, l.lease, None))
                .collect();
            store
                .jobs_complete_many(JobsCompleteMany { items, now })
                .await
                .map(|done| done.len())
                .ok()
        })
    });
}
