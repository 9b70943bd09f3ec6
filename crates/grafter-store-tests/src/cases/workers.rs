//! The worker registry: registering, listing with running counts, and pruning
//! silent workers, whose leases end.

use std::time::Duration;

use grafter_core::{JobState, NewJob, WorkerRegistration};
use grafter_store::{JobsRescue, WorkerBeat, WorkersPrune};
use serde_json::json;

use super::{fetch_params, get, insert, ms, no_jitter, t0, S};

pub async fn workers_register_list_and_prune(store: S) {
    let now = t0();
    let worker = |id: &str| WorkerRegistration {
        id: id.into(),
        host: "host-1".into(),
        pid: 42,
        queues: vec!["default".into(), "mail".into()],
        concurrency: 8,
        kinds: vec!["send_email".into()],
    };
    store
        .worker_heartbeat(WorkerBeat {
            worker: worker("w-old"),
            now,
        })
        .await
        .unwrap();
    store
        .worker_heartbeat(WorkerBeat {
            worker: worker("w-new"),
            now: now + ms(1),
        })
        .await
        .unwrap();
    let mut update = worker("w-new");
    update.concurrency = 16;
    store
        .worker_heartbeat(WorkerBeat {
            worker: update,
            now: now + ms(20_000),
        })
        .await
        .unwrap();

    insert(
        &store,
        vec![NewJob::new("k", json!({})), NewJob::new("k", json!({}))],
        now,
    )
    .await;
    let mut params = fetch_params("default", 1, now);
    params.worker_id = Some("w-old".into());
    let held_by_old = store.jobs_fetch(params).await.unwrap().remove(0);
    let mut params = fetch_params("default", 1, now);
    params.worker_id = Some("w-new".into());
    let held_by_new = store.jobs_fetch(params).await.unwrap().remove(0);

    let workers = store.workers_list().await.unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0].registration, worker("w-old"));
    assert_eq!(workers[0].started_at, now);
    assert_eq!(workers[0].running, 1);
    assert_eq!(workers[1].registration.id, "w-new");
    assert_eq!(workers[1].registration.concurrency, 16);
    assert_eq!(
        workers[1].started_at,
        now + ms(1),
        "a heartbeat keeps the start time"
    );
    assert_eq!(workers[1].last_seen_at, now + ms(20_000));

    // w-old is silent past the limit: forgotten, and its lease ends now.
    let prune = WorkersPrune {
        now: now + ms(20_000),
        stale_after: Duration::from_secs(15),
    };
    assert_eq!(store.workers_prune(prune).await.unwrap(), 1);
    let listed: Vec<_> = store
        .workers_list()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.registration.id)
        .collect();
    assert_eq!(listed, ["w-new"]);
    assert_eq!(
        get(&store, held_by_old.job.id).await.lease_expires_at,
        Some(now + ms(20_000))
    );
    assert_eq!(
        get(&store, held_by_new.job.id).await.lease_expires_at,
        Some(now + ms(30_000))
    );
    let rescue = JobsRescue {
        now: now + ms(20_000),
        limit: 10,
        backoff: no_jitter(),
    };
    assert_eq!(store.jobs_rescue_expired(rescue).await.unwrap(), 1);
    let rescued = get(&store, held_by_old.job.id).await;
    assert_eq!(rescued.state, JobState::Retryable);
    assert_eq!(rescued.errors[0].worker_id.as_deref(), Some("w-old"));

    store.worker_remove("w-new".into()).await.unwrap();
    store
        .worker_remove("never-registered".into())
        .await
        .unwrap();
    assert!(store.workers_list().await.unwrap().is_empty());
}
