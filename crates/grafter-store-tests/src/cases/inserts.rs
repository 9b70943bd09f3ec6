//! Inserting jobs: what is stored, ids, jobs due later, and unique keys.

use grafter_core::{Backoff, JobId, JobState, NewJob};
use grafter_store::{
    JobCancel, JobFail, JobRetry, JobsInsert, JobsList, JobsPrune, MaintenanceBatch, Scheduled,
};
use serde_json::json;

use super::{complete_params, fail_params, fetch, get, insert, insert_one, ms, t0, S};

pub async fn insert_stores_every_field(store: S) {
    let now = t0();
    let mut new = NewJob::new("send_email", json!({"to": "a@example.com", "n": [1, 2]}));
    new.queue = "mail".into();
    new.priority = -3;
    new.max_attempts = 7;
    new.tags = vec!["welcome".into(), "user:42".into()];
    new.timeout_ms = Some(5_000);
    new.expires_at = Some(now + ms(60_000));
    new.backoff = Some(Backoff {
        base_ms: 10,
        factor: 3.0,
        max_ms: 1_000,
        jitter: 0.0,
    });
    let job = insert_one(&store, new.clone(), now).await;

    assert_eq!(job.state, JobState::Available);
    assert_eq!(job.kind, "send_email");
    assert_eq!(job.queue, "mail");
    assert_eq!(job.args, new.args);
    assert_eq!(job.priority, -3);
    assert_eq!(job.max_attempts, 7);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.tags, new.tags);
    assert_eq!(job.timeout_ms, Some(5_000));
    assert_eq!(job.expires_at, new.expires_at);
    assert_eq!(job.backoff, new.backoff);
    assert_eq!(job.run_at, now);
    assert_eq!(job.created_at, now);
    assert!(job.errors.is_empty() && job.progress.is_none() && job.result.is_none());
    assert!(!job.cancel_requested && job.finished_at.is_none());
    assert_eq!(get(&store, job.id).await, job);

    // Ids increase in insertion order within one batch.
    let batch = insert(
        &store,
        (0..3).map(|i| NewJob::new("k", json!(i))).collect(),
        now,
    )
    .await;
    assert!(batch.windows(2).all(|w| w[0].id < w[1].id));
    assert!(batch[0].id > job.id);
    assert!(store.job_get(JobId(i64::MAX)).await.unwrap().is_none());
}

/// Args come back as they went in, whatever numbers they hold: PostgreSQL's
/// jsonb keeps a float as an exact decimal (`1.7976931348623157e308` as 309
/// digits), which must read back as the same `f64`, not as "out of range" or
/// off by one in the last place. A job that could be stored but not read would
/// be lost to every fetch and list.
pub async fn args_numbers_read_back_exactly(store: S) {
    let now = t0();
    let args = json!({
        "largest": f64::MAX,
        "smallest": f64::MIN_POSITIVE,
        "subnormal": 5e-324,
        "negative": -1.2345e200,
        "tenth": 0.1,
        "big_int": u64::MAX,
        "small_int": i64::MIN,
        "ratio": 1.0 / 3.0,
    });
    let job = insert_one(&store, NewJob::new("numbers", args.clone()), now).await;
    assert_eq!(job.args, args);
    assert_eq!(get(&store, job.id).await.args, args);
    let leased = fetch(&store, "default", 1, now).await;
    assert_eq!(leased[0].job.args, args);
}

/// An id names one job for good: applications keep ids (push's
/// `Grafter-Job-Id` for idempotency, status URLs), so a new job must never get
/// an id another job had, whichever way that job went.
pub async fn ids_are_never_reused(store: S) {
    let now = t0();
    let first = insert(
        &store,
        (0..3).map(|i| NewJob::new("k", json!(i))).collect(),
        now,
    )
    .await;
    let newest = first[2].id;
    store.job_delete(newest).await.unwrap();
    let after_delete = insert_one(&store, NewJob::new("k", json!(3)), now).await;
    assert!(
        after_delete.id > newest,
        "job {} got an id at or below the deleted newest job's {newest}",
        after_delete.id
    );

    // Every job finished and pruned: the table is empty, and ids go on.
    for id in [first[0].id, first[1].id, after_delete.id] {
        store.job_cancel(JobCancel { id, now }).await.unwrap();
    }
    let pruned = store
        .jobs_prune(JobsPrune {
            states: vec![JobState::Cancelled],
            finished_before: now + ms(1),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    let left = store
        .jobs_list(JobsList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(left.jobs.is_empty(), "{:?}", left.jobs);
    let mut keyed = NewJob::new("k", json!(4));
    keyed.unique_key = Some("after-prune".into());
    let after_prune = insert(&store, vec![NewJob::new("k", json!(5)), keyed], now).await;
    assert!(
        after_prune.iter().all(|job| job.id > after_delete.id),
        "ids after pruning every job: {:?}, the largest before: {}",
        after_prune.iter().map(|job| job.id).collect::<Vec<_>>(),
        after_delete.id
    );
}

pub async fn insert_in_the_future_is_scheduled_until_due(store: S) {
    let now = t0();
    let mut new = NewJob::new("later", json!({}));
    new.run_at = Some(now + ms(10_000));
    let job = insert_one(&store, new, now).await;
    assert_eq!(job.state, JobState::Scheduled);
    assert!(
        fetch(&store, "default", 10, now + ms(20_000))
            .await
            .is_empty(),
        "scheduled jobs wait for the scheduler"
    );

    let batch = |now| MaintenanceBatch { now, limit: 100 };
    assert_eq!(
        store.jobs_schedule(batch(now + ms(9_999))).await.unwrap(),
        Scheduled::default()
    );
    assert_eq!(get(&store, job.id).await.state, JobState::Scheduled);
    assert_eq!(
        store.jobs_schedule(batch(now + ms(10_000))).await.unwrap(),
        Scheduled {
            moved: 1,
            queues: vec!["default".into()]
        },
        "the pass says which queues got work, for the engine to announce"
    );
    assert_eq!(get(&store, job.id).await.state, JobState::Available);
    assert_eq!(
        fetch(&store, "default", 10, now + ms(10_000)).await.len(),
        1
    );
}

pub async fn unique_key_dedupes_unfinished_jobs(store: S) {
    let now = t0();
    let keyed = |key: &str| {
        let mut j = NewJob::new("sync", json!({}));
        j.unique_key = Some(key.into());
        j
    };
    let inserted = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![keyed("user:1"), keyed("user:1"), keyed("user:2")],
            now,
        })
        .await
        .unwrap();
    assert!(inserted[0].created && !inserted[1].created && inserted[2].created);
    assert_eq!(inserted[0].job.id, inserted[1].job.id);
    let again = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![keyed("user:1")],
            now,
        })
        .await
        .unwrap();
    assert!(!again[0].created);
    assert_eq!(again[0].job.id, inserted[0].job.id);

    // Still unique while running; free again once finished.
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    assert_eq!(leased.job.id, inserted[0].job.id);
    let while_running = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![keyed("user:1")],
            now,
        })
        .await
        .unwrap();
    assert!(!while_running[0].created);
    store
        .job_complete(complete_params(&leased, now))
        .await
        .unwrap();
    let after = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![keyed("user:1")],
            now,
        })
        .await
        .unwrap();
    assert!(after[0].created);
    assert_ne!(after[0].job.id, inserted[0].job.id);
}

/// Batches naming the same unique keys in different orders, at once: every
/// batch is stored (none fails as a deadlock victim), every key is held by one
/// job, and every batch is answered with that job, in its own order.
pub async fn batches_with_the_same_keys_in_any_order_all_succeed(store: S) {
    const TASKS: usize = 6;
    const ROUNDS: usize = 20;
    const KEYS: usize = 10;
    let now = t0();
    for round in 0..ROUNDS {
        let batches = (0..TASKS).map(|task| {
            let store = store.clone();
            // Each task its own order: rotated, every other one reversed, so
            // every pair of tasks holds some keys in opposite orders.
            let mut order: Vec<usize> = (0..KEYS).collect();
            order.rotate_left((task * 3 + round) % KEYS);
            if task % 2 == 1 {
                order.reverse();
            }
            tokio::spawn(async move {
                let jobs = order
                    .iter()
                    .map(|k| {
                        let mut job = NewJob::new("sync", json!({"task": task}));
                        job.unique_key = Some(format!("round{round}-key{k}"));
                        job
                    })
                    .collect();
                let inserted = store.jobs_insert_many(JobsInsert { jobs, now }).await;
                (order, inserted)
            })
        });
        let mut holder: Vec<Option<JobId>> = vec![None; KEYS];
        let mut created = 0;
        for batch in batches.collect::<Vec<_>>() {
            let (order, inserted) = batch.await.unwrap();
            let inserted =
                inserted.unwrap_or_else(|e| panic!("round {round}: a batch failed: {e}"));
            assert_eq!(inserted.len(), KEYS);
            for (k, one) in order.into_iter().zip(inserted) {
                let key = format!("round{round}-key{k}");
                assert_eq!(
                    one.job.unique_key.as_deref(),
                    Some(key.as_str()),
                    "answered in request order"
                );
                let id = *holder[k].get_or_insert(one.job.id);
                assert_eq!(one.job.id, id, "{key} is held by two jobs");
                created += usize::from(one.created);
            }
        }
        assert_eq!(created, KEYS, "round {round}: one job created per key");
    }
    let counts = store.queues_list().await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(
        counts[0].counts[&JobState::Available],
        (ROUNDS * KEYS) as u64
    );
}

/// A job's W3C trace context is stored as given (the engine checked it),
/// read back by get, list and lease, kept by a failed attempt's retry and by
/// a retry by hand, on jobs inserted in a batch and alone with a unique key
/// (PostgreSQL's two insert statements), and absent where none was given.
pub async fn trace_context_is_stored_and_handed_out_with_the_lease(store: S) {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const STATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let now = t0();
    let traced = |n: i64| {
        let mut job = NewJob::new("traced", json!(n));
        job.traceparent = Some(PARENT.into());
        job.tracestate = Some(STATE.into());
        job
    };
    let mut keyed = traced(2);
    keyed.unique_key = Some("traced".into());
    keyed.tracestate = None;
    let jobs = insert(
        &store,
        vec![traced(1), NewJob::new("plain", json!(0)), keyed],
        now,
    )
    .await;
    let trace = |job: &grafter_core::Job| (job.traceparent.clone(), job.tracestate.clone());
    let both = (Some(PARENT.to_owned()), Some(STATE.to_owned()));
    assert_eq!(trace(&jobs[0]), both);
    assert_eq!(trace(&jobs[1]), (None, None));
    assert_eq!(trace(&jobs[2]), (Some(PARENT.to_owned()), None));
    assert_eq!(trace(&get(&store, jobs[0].id).await), both);
    let listed = store
        .jobs_list(JobsList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<_> = listed.jobs.iter().map(trace).collect();
    assert!(listed.contains(&both), "{listed:?}");

    let leased = fetch(&store, "default", 3, now).await;
    assert_eq!(leased.len(), 3);
    for lease in &leased {
        let stored = jobs.iter().find(|j| j.id == lease.job.id).unwrap();
        assert_eq!(trace(&lease.job), trace(stored), "job {}", stored.kind);
    }

    // A retry (automatic, after a failed attempt, then by hand) keeps it.
    let first = leased.iter().find(|l| l.job.id == jobs[0].id).unwrap();
    store
        .job_fail(fail_params(first, "boom", now))
        .await
        .unwrap();
    let batch = MaintenanceBatch {
        now: now + ms(60_000),
        limit: 10,
    };
    assert_eq!(store.jobs_schedule(batch).await.unwrap().moved, 1);
    let again = fetch(&store, "default", 1, now + ms(60_000)).await;
    assert_eq!(again[0].job.id, jobs[0].id);
    assert_eq!(again[0].job.attempt, 2);
    assert_eq!(trace(&again[0].job), both);
    let dead = JobFail {
        retry: false,
        ..fail_params(&again[0], "for good", now + ms(60_000))
    };
    store.job_fail(dead).await.unwrap();
    store
        .job_retry(JobRetry {
            id: jobs[0].id,
            args: None,
            now: now + ms(61_000),
        })
        .await
        .unwrap();
    assert_eq!(trace(&get(&store, jobs[0].id).await), both);
}
