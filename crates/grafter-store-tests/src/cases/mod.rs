//! The cases. Each takes a fresh store. Time is passed in explicitly (`now`), so
//! no case sleeps to make time pass.
//!
//! One module per concern, under the names of the stores' own modules
//! (`access`, `leasing`, `inserts`, `jobs`, `maintenance`, `queues`, `workers`,
//! `leadership`, `browse`, `schedules`, `events`, `batches`, `dependencies`, `batch_dependencies`), and `engine`: what the engine's rules (validation,
//! wake-ups, the one outcome path) come to on each store. Here: the helpers they share, the one case about
//! the store as a whole (`ping_answers`), and every case re-exported, which is
//! the path `conformance_suite!` names.

#![allow(missing_docs)]

mod access;
mod batch_dependencies;
mod batches;
mod browse;
mod dependencies;
mod engine;
mod events;
mod inserts;
mod jobs;
mod json_depth;
mod leadership;
mod leasing;
mod limits;
mod maintenance;
mod queues;
mod schedules;
mod workers;

pub use access::*;
pub use batch_dependencies::*;
pub use batches::*;
pub use browse::*;
pub use dependencies::*;
pub use engine::*;
pub use events::*;
pub use inserts::*;
pub use jobs::*;
pub use json_depth::*;
pub use leadership::*;
pub use leasing::*;
pub use limits::*;
pub use maintenance::*;
pub use queues::*;
pub use schedules::*;
pub use workers::*;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use grafter_core::{Backoff, Job, JobId, LeasedJob, NewJob};
use grafter_store::{JobComplete, JobFail, JobHeartbeat, JobsFetch, JobsInsert, Store};

type S = Arc<dyn Store>;

/// A fixed "now" with microsecond precision, as every backend stores it.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

fn no_jitter() -> Backoff {
    Backoff {
        base_ms: 1_000,
        factor: 2.0,
        max_ms: 3_600_000,
        jitter: 0.0,
    }
}

async fn insert(store: &S, jobs: Vec<NewJob>, now: DateTime<Utc>) -> Vec<Job> {
    store
        .jobs_insert_many(JobsInsert { jobs, now })
        .await
        .expect("insert")
        .into_iter()
        .map(|i| i.job)
        .collect()
}

async fn insert_one(store: &S, job: NewJob, now: DateTime<Utc>) -> Job {
    insert(store, vec![job], now).await.remove(0)
}

fn fetch_params(queue: &str, max: usize, now: DateTime<Utc>) -> JobsFetch {
    JobsFetch {
        running_limit: None,
        max_bytes: usize::MAX,
        queues: vec![queue.to_owned()],
        max,
        lease_duration: Duration::from_secs(30),
        worker_id: Some("worker-1".into()),
        now,
    }
}

async fn fetch(store: &S, queue: &str, max: usize, now: DateTime<Utc>) -> Vec<LeasedJob> {
    store
        .jobs_fetch(fetch_params(queue, max, now))
        .await
        .expect("fetch")
}

async fn get(store: &S, id: JobId) -> Job {
    store.job_get(id).await.expect("get").expect("job exists")
}

fn fail_params(leased: &LeasedJob, error: &str, now: DateTime<Utc>) -> JobFail {
    JobFail {
        id: leased.job.id,
        lease: leased.lease.clone(),
        error: error.into(),
        retry: true,
        retry_at: None,
        backoff: no_jitter(),
        now,
    }
}

fn complete_params(leased: &LeasedJob, now: DateTime<Utc>) -> JobComplete {
    JobComplete {
        id: leased.job.id,
        lease: leased.lease.clone(),
        result: None,
        now,
    }
}

fn heartbeat_params(leased: &LeasedJob, now: DateTime<Utc>) -> JobHeartbeat {
    JobHeartbeat {
        id: leased.job.id,
        lease: leased.lease.clone(),
        progress: None,
        lease_duration: Duration::from_secs(30),
        now,
    }
}

pub async fn ping_answers(store: S) {
    store.ping().await.unwrap();
}
