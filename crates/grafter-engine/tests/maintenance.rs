//! The maintenance services against a real SQLite store: they move jobs along
//! as time passes, and only the node holding the leadership acts.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_core::{JobState, NewJob};
use grafter_server::{services, ServerConfig};
use grafter_sqlite::SqliteStore;
use grafter_store::{JobComplete, JobsFetch, JobsInsert, LeaderAcquire, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn fast_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.maintenance.schedule_interval_ms = 20;
    config.maintenance.rescue_interval_ms = 20;
    config.maintenance.expire_interval_ms = 20;
    config.maintenance.leader_ttl_ms = 400;
    config.retention.interval_ms = 20;
    // Long enough to see a job expired before it is pruned, short enough to wait for.
    config.retention.finished_ms = 1_500;
    config.retry.base_ms = 10;
    config.retry.max_ms = 10;
    config
}

async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("g.db")).await.unwrap();
    (Arc::new(store), dir)
}

/// Polls until `check` holds, for up to ten seconds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

async fn state_of(store: &Arc<dyn Store>, id: grafter_core::JobId) -> Option<JobState> {
    store.job_get(id).await.unwrap().map(|j| j.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_move_jobs_along_as_time_passes() {
    let (store, _dir) = store().await;
    let now = Utc::now();
    let mut later = NewJob::new("later", json!({}));
    later.run_at = Some(now + chrono::Duration::milliseconds(200));
    let mut deadline = NewJob::new("deadline", json!({}));
    deadline.queue = "slow".into();
    deadline.expires_at = Some(now + chrono::Duration::milliseconds(100));
    let mut leased = NewJob::new("leased", json!({}));
    leased.queue = "leased".into();
    let jobs: Vec<_> = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![later, deadline, leased, NewJob::new("done", json!({}))],
            now,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.job)
        .collect();
    let fetch = |queue: &str, lease_ms: u64| JobsFetch {
        queues: vec![queue.into()],
        max: 10,
        lease_duration: Duration::from_millis(lease_ms),
        worker_id: Some("w".into()),
        running_limit: None,
        now: Utc::now(),
    };
    // "done" completes now; "leased" is leased briefly and abandoned.
    let done = store
        .jobs_fetch(fetch("default", 30_000))
        .await
        .unwrap()
        .remove(0);
    store
        .job_complete(JobComplete {
            id: done.job.id,
            lease: done.lease,
            result: None,
            now: Utc::now(),
        })
        .await
        .unwrap();
    store.jobs_fetch(fetch("leased", 1)).await.unwrap();

    let cancel = CancellationToken::new();
    let maintenance = services::start(store.clone(), &fast_config(), cancel.clone());
    eventually("the scheduler makes the due job available", async || {
        state_of(&store, jobs[0].id).await == Some(JobState::Available)
    })
    .await;
    eventually("the expirer expires the unstarted job", async || {
        state_of(&store, jobs[1].id).await == Some(JobState::Expired)
    })
    .await;
    eventually("the rescuer retries the abandoned lease", async || {
        let job = store.job_get(jobs[2].id).await.unwrap().unwrap();
        job.errors
            .first()
            .is_some_and(|e| e.error == "lease expired")
    })
    .await;
    eventually("the pruner deletes the finished job", async || {
        state_of(&store, jobs[3].id).await.is_none()
    })
    .await;
    maintenance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_node_leads_and_a_stopping_leader_hands_over() {
    let (store, _dir) = store().await;
    let config = fast_config();
    // A probe with no TTL: it wins only a free leadership, and holds it for no time.
    let outsider = |now| LeaderAcquire {
        name: services::leader::MAINTENANCE.into(),
        node: "outsider".into(),
        ttl: Duration::ZERO,
        now,
    };
    let first = services::start(store.clone(), &config, CancellationToken::new());
    let second = services::start(store.clone(), &config, CancellationToken::new());
    eventually("someone leads", async || {
        !store.leader_acquire(outsider(Utc::now())).await.unwrap()
    })
    .await;
    // While either runs, an outsider never gets the leadership.
    for _ in 0..10 {
        assert!(!store.leader_acquire(outsider(Utc::now())).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;
    second.stop().await;
    // Both released on the way out: free at once, without waiting for the TTL.
    assert!(store.leader_acquire(outsider(Utc::now())).await.unwrap());
}
