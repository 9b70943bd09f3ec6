//! Measures the dashboard's server time per page on a big database, for
//! `docs/dashboard.md`. Not a test: speed is measured, never asserted.
//!
//! ```sh
//! cargo run --release -p grafter-server --example dashboard_timing -- sqlite:///tmp/big.db 1000000
//! cargo run --release -p grafter-server --example dashboard_timing -- postgres://postgres@127.0.0.1/test 1000000
//! ```
//!
//! Fills the database up to the given number of jobs (once; a later run
//! reuses them) with a realistic mix: most completed, some dead, a backlog of
//! available and scheduled jobs, a tenth tagged, five queues, four kinds. Then
//! calls each page through `router()` (no network) and prints the median and
//! worst of several calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use chrono::Utc;
use grafter_core::{JobState, NewJob, WorkerRegistration};
use grafter_server::{router, AppState, ServerConfig};
use grafter_store::{
    JobFail, JobsCompleteMany, JobsFetch, JobsInsert, JobsList, Store, WorkerBeat,
};
use http_body_util::BodyExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const QUEUES: [&str; 5] = ["default", "mail", "reports", "webhooks", "billing"];
const KINDS: [&str; 4] = ["send_email", "export", "sync", "charge"];

fn job(i: u64) -> NewJob {
    let mut j = NewJob::new(
        KINDS[(i % 4) as usize],
        json!({"user": {"id": i % 50_000}, "to": format!("user{i}@example.com")}),
    );
    j.queue = QUEUES[(i % 5) as usize].into();
    if i.is_multiple_of(10) {
        j.tags = vec!["vip".into(), format!("cohort-{}", i % 100)];
    }
    j
}

async fn total(store: &dyn Store) -> u64 {
    store
        .queues_list()
        .await
        .unwrap()
        .iter()
        .flat_map(|q| q.counts.values())
        .sum()
}

/// Inserts up to `want` jobs, then runs most of them: 90% completed, 2% dead,
/// the rest left waiting (with 1% scheduled for later).
async fn fill(store: &dyn Store, want: u64) {
    let have = total(store).await;
    if have >= want {
        println!("reusing {have} jobs");
        return;
    }
    let started = Instant::now();
    let mut i = have;
    while i < want {
        let n = (want - i).min(10_000);
        let jobs: Vec<NewJob> = (i..i + n)
            .map(|k| {
                let mut j = job(k);
                if k % 100 == 1 {
                    j.run_at = Some(Utc::now() + chrono::Duration::days(1));
                }
                j
            })
            .collect();
        store
            .jobs_insert_many(JobsInsert {
                jobs,
                now: Utc::now(),
            })
            .await
            .unwrap();
        i += n;
    }
    println!("inserted {} jobs in {:.1?}", want - have, started.elapsed());
    let started = Instant::now();
    let to_run = (want - have) * 92 / 100;
    let mut ran = 0u64;
    'outer: for queue in QUEUES {
        loop {
            if ran >= to_run {
                break 'outer;
            }
            let fetch = JobsFetch {
                queues: vec![queue.into()],
                max: 1_000,
                lease_duration: Duration::from_secs(600),
                worker_id: Some("bench-worker".into()),
                running_limit: None,
                max_bytes: usize::MAX,
                now: Utc::now(),
            };
            let leased = store.jobs_fetch(fetch).await.unwrap();
            if leased.is_empty() {
                break;
            }
            let (fail, ok): (Vec<_>, Vec<_>) =
                leased.into_iter().partition(|l| l.job.id.0 % 50 == 0);
            let items = ok
                .into_iter()
                .map(|l| (l.job.id, l.lease, Some(json!({"ok": true}))))
                .collect();
            store
                .jobs_complete_many(JobsCompleteMany {
                    items,
                    now: Utc::now(),
                })
                .await
                .unwrap();
            for l in fail {
                let error = format!("SMTP 550: mailbox unavailable for job {}", l.job.id);
                let params = JobFail {
                    id: l.job.id,
                    lease: l.lease,
                    error,
                    retry: false,
                    retry_at: None,
                    backoff: Default::default(),
                    now: Utc::now(),
                };
                store.job_fail(params).await.unwrap();
            }
            ran += 1_000;
        }
    }
    println!("ran {ran} jobs in {:.1?}", started.elapsed());
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "sqlite:///tmp/grafter-dashboard-timing.db".into());
    let want: u64 = args
        .next()
        .map(|n| n.parse().expect("a number of jobs"))
        .unwrap_or(1_000_000);
    let store: Arc<dyn Store> = grafter_engine::open(&url, &Default::default())
        .await
        .expect("open the store");
    fill(store.as_ref(), want).await;
    for i in 0..8 {
        let worker = WorkerRegistration {
            id: format!("worker-{i}"),
            host: format!("host-{}", i % 3),
            pid: 1000 + i,
            queues: QUEUES.iter().map(|q| q.to_string()).collect(),
            concurrency: 10,
            kinds: vec![],
        };
        store
            .worker_heartbeat(WorkerBeat {
                worker,
                now: Utc::now(),
            })
            .await
            .unwrap();
    }
    let some = store
        .jobs_list(JobsList {
            limit: 1,
            state: Some(JobState::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    let dead_id = some.jobs[0].id;
    let middle = dead_id.0 / 2;
    println!("jobs: {}", total(store.as_ref()).await);

    let app = router(AppState::new(
        store.clone(),
        ServerConfig::default(),
        CancellationToken::new(),
    ));
    let pages = [
        "/".to_owned(),
        "/overview/live".into(),
        "/jobs".into(),
        format!("/jobs?cursor={middle}"),
        "/jobs?state=dead".into(),
        "/jobs?state=completed&order=asc".into(),
        "/jobs?queue=reports".into(),
        "/jobs?queue=billing&state=dead".into(),
        "/jobs?kind=charge".into(),
        "/jobs?queue=mail&kind=send_email".into(),
        "/jobs?tag=cohort-40".into(),
        "/jobs?tag=vip&state=dead".into(),
        "/jobs?args=user.id%3D4242".into(),
        "/jobs?args=user.id%3D4242&state=dead".into(),
        format!("/jobs/{dead_id}"),
        "/queues".into(),
        "/workers".into(),
    ];
    println!(
        "{:<42} {:>10} {:>10} {:>8}",
        "page", "median ms", "max ms", "bytes"
    );
    for page in pages {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..11 {
            let started = Instant::now();
            let response = app
                .clone()
                .oneshot(Request::get(&page).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{page}: {}",
                response.status()
            );
            bytes = response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .len();
            times.push(started.elapsed());
        }
        times.remove(0); // warm-up
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{page:<42} {:>10.1} {:>10.1} {bytes:>8}",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
}
