//! The maintenance services against a real SQLite store: they move jobs along
//! as time passes, only the node holding the leadership acts, and each
//! reports its health.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_core::{Backoff, JobState, NewJob};
use grafter_engine::maintenance::{
    leader, Maintenance, MaintenanceConfig, MaintenanceHealth, RetentionConfig,
};
use grafter_engine::{Engine, EngineConfig};
use grafter_sqlite::SqliteStore;
use grafter_store::{JobComplete, JobsFetch, JobsInsert, LeaderAcquire, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Maintenance on `store` with every service passing every 20 ms and a
/// leadership of `leader_ttl_ms`.
fn start(
    store: &Arc<dyn Store>,
    leader_ttl_ms: u64,
    cancel: CancellationToken,
) -> (Maintenance, MaintenanceHealth) {
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            retry: Backoff {
                base_ms: 10,
                max_ms: 10,
                ..Backoff::default()
            },
            ..EngineConfig::default()
        },
    );
    let config = MaintenanceConfig {
        schedule_interval_ms: 20,
        rescue_interval_ms: 20,
        expire_interval_ms: 20,
        leader_ttl_ms,
        ..MaintenanceConfig::default()
    };
    let retention = RetentionConfig {
        interval_ms: 20,
        // Long enough to see a job expired before it is pruned, short enough to wait for.
        finished_ms: 1_500,
        ..RetentionConfig::default()
    };
    let health = MaintenanceHealth::default();
    let maintenance = Maintenance::start(&engine, &config, &retention, health.clone(), cancel);
    (maintenance, health)
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
        max_bytes: usize::MAX,
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

    let (maintenance, health) = start(&store, 400, CancellationToken::new());
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
    let services = health.snapshot();
    for name in ["elector", "scheduler", "rescuer", "expirer", "pruner"] {
        let service = &services[name];
        assert!(
            service.last_pass_at.is_some() && !service.failing(),
            "{name}: {service:?}"
        );
    }
    maintenance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_node_leads_and_a_stopping_leader_hands_over() {
    let (store, _dir) = store().await;
    // A probe with no TTL: it wins only a free leadership, and holds it for no time.
    let outsider = |now| LeaderAcquire {
        name: leader::MAINTENANCE.into(),
        node: "outsider".into(),
        ttl: Duration::ZERO,
        now,
    };
    // A leadership long enough that a loaded machine delaying a renewal
    // cannot let it lapse: this is about exclusivity and release, not failover.
    let (first, _) = start(&store, 30_000, CancellationToken::new());
    let (second, _) = start(&store, 30_000, CancellationToken::new());
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
