//! The cases. Each takes a fresh store. Time is passed in explicitly (`now`), so
//! no case sleeps to make time pass.

#![allow(missing_docs)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use grafter_core::{
    Backoff, Job, JobId, JobState, LeasedJob, NewJob, Progress, PushTarget, WorkerRegistration,
};
use grafter_store::transitions::{LEASE_EXPIRED, TIMED_OUT};
use grafter_store::{
    ArgsMatch, BulkAction, BulkOutcome, JobCancel, JobComplete, JobFail, JobHeartbeat, JobRelease,
    JobReschedule, JobRetry, JobsBulk, JobsCompleteMany, JobsFetch, JobsInsert, JobsList,
    JobsPrune, JobsRescue, LeaderAcquire, LeaderRelease, MaintenanceBatch, MinuteThroughput, Order,
    QueuePause, QueuePush, Store, StoreError, ThroughputRange, WorkerBeat, WorkersPrune,
};
use serde_json::json;

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

fn assert_lease_mismatch(result: Result<Job, StoreError>, id: JobId) {
    match result {
        Err(StoreError::LeaseMismatch { id: got, .. }) => assert_eq!(got, id),
        other => panic!("expected LeaseMismatch for job {id}, got {other:?}"),
    }
}

fn assert_invalid_state(result: Result<Job, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::InvalidState { .. })),
        "expected InvalidState, got {result:?}"
    );
}

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
        0
    );
    assert_eq!(get(&store, job.id).await.state, JobState::Scheduled);
    assert_eq!(
        store.jobs_schedule(batch(now + ms(10_000))).await.unwrap(),
        1
    );
    assert_eq!(get(&store, job.id).await.state, JobState::Available);
    assert_eq!(
        fetch(&store, "default", 10, now + ms(10_000)).await.len(),
        1
    );
}

pub async fn fetch_leases_and_counts_the_attempt(store: S) {
    let now = t0();
    let job = insert_one(&store, NewJob::new("k", json!({})), now).await;
    let leased = fetch(&store, "default", 10, now).await;
    assert_eq!(leased.len(), 1);
    let leased = &leased[0];
    assert_eq!(leased.job.id, job.id);
    assert_eq!(leased.job.state, JobState::Running);
    assert_eq!(leased.job.attempt, 1);
    assert!(
        leased.lease.len() >= 16,
        "lease token too short: {:?}",
        leased.lease
    );
    assert_eq!(leased.job.worker_id.as_deref(), Some("worker-1"));
    assert_eq!(leased.job.attempted_at, Some(now));
    assert_eq!(leased.job.lease_expires_at, Some(now + ms(30_000)));
    assert_eq!(get(&store, job.id).await, leased.job);
    assert!(
        fetch(&store, "default", 10, now).await.is_empty(),
        "a running job is not fetched again"
    );
}

pub async fn fetch_orders_by_priority_then_run_at_then_id(store: S) {
    let now = t0();
    let mk = |name: &str, priority: i16, back_ms: i64| {
        let mut j = NewJob::new(name, json!({}));
        j.priority = priority;
        j.run_at = Some(now - ms(back_ms));
        j
    };
    insert(
        &store,
        vec![
            mk("p5", 5, 100),
            mk("p0-late", 0, 10),
            mk("p0-early", 0, 50),
            mk("neg", -1, 0),
            mk("p0-early-2", 0, 50),
        ],
        now,
    )
    .await;
    let first = fetch(&store, "default", 2, now).await;
    let rest = fetch(&store, "default", 10, now).await;
    let kinds: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|l| l.job.kind.as_str())
        .collect();
    assert_eq!(kinds, ["neg", "p0-early", "p0-early-2", "p0-late", "p5"]);
}

pub async fn fetch_takes_only_named_queues_up_to_max(store: S) {
    let now = t0();
    let on = |queue: &str| {
        let mut j = NewJob::new("k", json!({}));
        j.queue = queue.into();
        j
    };
    insert(
        &store,
        vec![on("a"), on("a"), on("a"), on("b"), on("c")],
        now,
    )
    .await;
    assert_eq!(fetch(&store, "a", 2, now).await.len(), 2);
    let mut both = fetch_params("a", 10, now);
    both.queues.push("b".into());
    let leased = store.jobs_fetch(both).await.unwrap();
    let queues: HashSet<_> = leased.iter().map(|l| l.job.queue.as_str()).collect();
    assert_eq!(leased.len(), 2);
    assert_eq!(queues, HashSet::from(["a", "b"]));
    assert!(fetch(&store, "nope", 10, now).await.is_empty());
    let mut none = fetch_params("c", 0, now);
    none.max = 0;
    assert!(store.jobs_fetch(none).await.unwrap().is_empty());
    assert_eq!(fetch(&store, "c", 10, now).await.len(), 1);
}

pub async fn fetch_skips_paused_queues(store: S) {
    let now = t0();
    let mut job = NewJob::new("k", json!({}));
    job.queue = "q".into();
    insert_one(&store, job, now).await;
    let info = store
        .queue_set_paused(QueuePause {
            queue: "q".into(),
            paused: true,
            now,
        })
        .await
        .unwrap();
    assert!(info.paused);
    assert_eq!(info.counts[&JobState::Available], 1);
    assert!(fetch(&store, "q", 10, now).await.is_empty());
    let listed = store.queues_list().await.unwrap();
    assert!(listed.iter().any(|q| q.name == "q" && q.paused));
    store
        .queue_set_paused(QueuePause {
            queue: "q".into(),
            paused: false,
            now,
        })
        .await
        .unwrap();
    assert_eq!(fetch(&store, "q", 10, now).await.len(), 1);
}

pub async fn fetch_never_leases_a_job_twice_under_concurrency(store: S) {
    let now = t0();
    let jobs: Vec<_> = (0..300).map(|i| NewJob::new("k", json!(i))).collect();
    insert(&store, jobs, now).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = fetch(&store, "default", 7, now).await;
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|l| l.job.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for task in tasks {
        for id in task.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "job {id} leased twice");
        }
    }
    assert_eq!(total, 300);
}

pub async fn complete_stores_the_result(store: S) {
    let now = t0();
    insert_one(&store, NewJob::new("k", json!({})), now).await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    let mut params = complete_params(&leased, now + ms(5));
    params.result = Some(json!({"rows": 12}));
    let done = store.job_complete(params).await.unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result, Some(json!({"rows": 12})));
    assert_eq!(done.finished_at, Some(now + ms(5)));
    assert_eq!(done.attempt, 1);
    assert_eq!(get(&store, done.id).await, done);
    // Acking twice is a stale lease: the job is no longer running.
    assert_lease_mismatch(
        store.job_complete(complete_params(&leased, now)).await,
        done.id,
    );
}

pub async fn fail_makes_retryable_after_backoff_then_runs_again(store: S) {
    let now = t0();
    insert_one(&store, NewJob::new("k", json!({})), now).await;
    let first = fetch(&store, "default", 1, now).await.remove(0);
    let failed = store
        .job_fail(fail_params(&first, "boom", now))
        .await
        .unwrap();
    assert_eq!(failed.state, JobState::Retryable);
    assert_eq!(
        failed.run_at,
        now + ms(1_000),
        "base backoff without jitter"
    );
    assert_eq!(failed.errors.len(), 1);
    assert_eq!(failed.errors[0].attempt, 1);
    assert_eq!(failed.errors[0].error, "boom");
    assert_eq!(failed.errors[0].at, now);
    assert_eq!(failed.errors[0].worker_id.as_deref(), Some("worker-1"));
    assert!(failed.finished_at.is_none());

    assert!(fetch(&store, "default", 1, now + ms(999)).await.is_empty());
    let batch = MaintenanceBatch {
        now: now + ms(1_000),
        limit: 10,
    };
    assert_eq!(store.jobs_schedule(batch).await.unwrap(), 1);
    let second = fetch(&store, "default", 1, now + ms(1_000)).await.remove(0);
    assert_eq!(second.job.attempt, 2);
    assert_ne!(second.lease, first.lease);
    let again = store
        .job_fail(fail_params(&second, "boom again", now + ms(1_000)))
        .await
        .unwrap();
    assert_eq!(
        again.run_at,
        now + ms(1_000) + ms(2_000),
        "the wait doubles"
    );
    assert_eq!(again.errors.len(), 2);

    // A job's own backoff wins over the default.
    let mut own = NewJob::new("own", json!({}));
    own.queue = "own".into();
    own.backoff = Some(Backoff {
        base_ms: 50,
        factor: 2.0,
        max_ms: 50,
        jitter: 0.0,
    });
    insert_one(&store, own, now).await;
    let leased = fetch(&store, "own", 1, now).await.remove(0);
    let failed = store
        .job_fail(fail_params(&leased, "x", now))
        .await
        .unwrap();
    assert_eq!(failed.run_at, now + ms(50));
}

pub async fn fail_on_last_attempt_or_without_retry_is_dead(store: S) {
    let now = t0();
    let mut once = NewJob::new("once", json!({}));
    once.max_attempts = 1;
    insert(&store, vec![once, NewJob::new("no_retry", json!({}))], now).await;
    let leased = fetch(&store, "default", 2, now).await;
    let dead = store
        .job_fail(fail_params(&leased[0], "last", now))
        .await
        .unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.finished_at, Some(now));
    assert_eq!(dead.errors.len(), 1);
    let mut no_retry = fail_params(&leased[1], "bad input", now);
    no_retry.retry = false;
    let dead = store.job_fail(no_retry).await.unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.attempt, 1);
    assert_eq!(dead.max_attempts, 25);
}

pub async fn fail_with_retry_at_uses_that_time(store: S) {
    let now = t0();
    insert_one(&store, NewJob::new("k", json!({})), now).await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    let mut params = fail_params(&leased, "rate limited", now);
    params.retry_at = Some(now + ms(42_000));
    let job = store.job_fail(params).await.unwrap();
    assert_eq!(job.state, JobState::Retryable);
    assert_eq!(job.run_at, now + ms(42_000));
}

pub async fn stale_or_foreign_leases_are_refused_and_change_nothing(store: S) {
    let now = t0();
    insert(
        &store,
        vec![NewJob::new("a", json!({})), NewJob::new("b", json!({}))],
        now,
    )
    .await;
    let leased = fetch(&store, "default", 2, now).await;
    let (a, b) = (&leased[0], &leased[1]);
    let before = get(&store, a.job.id).await;

    // b's lease on a's job.
    let mut foreign = a.clone();
    foreign.lease = b.lease.clone();
    assert_lease_mismatch(
        store.job_complete(complete_params(&foreign, now)).await,
        a.job.id,
    );
    assert_lease_mismatch(
        store.job_fail(fail_params(&foreign, "x", now)).await,
        a.job.id,
    );
    assert_lease_mismatch(
        store.job_heartbeat(heartbeat_params(&foreign, now)).await,
        a.job.id,
    );
    assert_eq!(get(&store, a.job.id).await, before);

    // After the lease expires and the job is leased again, the first lease is stale.
    let later = now + ms(31_000);
    let rescue = JobsRescue {
        now: later,
        limit: 10,
        backoff: no_jitter(),
    };
    assert_eq!(store.jobs_rescue_expired(rescue).await.unwrap(), 2);
    store
        .jobs_schedule(MaintenanceBatch {
            now: later + ms(2_000),
            limit: 10,
        })
        .await
        .unwrap();
    let again = fetch(&store, "default", 2, later + ms(2_000)).await;
    assert_eq!(again.len(), 2);
    let new_a = again.iter().find(|l| l.job.id == a.job.id).unwrap();
    let before = get(&store, a.job.id).await;
    assert_lease_mismatch(
        store.job_complete(complete_params(a, later)).await,
        a.job.id,
    );
    assert_lease_mismatch(
        store.job_heartbeat(heartbeat_params(a, later)).await,
        a.job.id,
    );
    assert_lease_mismatch(
        store.job_fail(fail_params(a, "late", later)).await,
        a.job.id,
    );
    assert_eq!(get(&store, a.job.id).await, before);
    store
        .job_complete(complete_params(new_a, later))
        .await
        .expect("the current lease works");

    // Unknown jobs are not found.
    let mut ghost = a.clone();
    ghost.job.id = JobId(i64::MAX);
    assert!(matches!(
        store.job_complete(complete_params(&ghost, now)).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn heartbeat_extends_the_lease_and_stores_progress(store: S) {
    let now = t0();
    insert_one(&store, NewJob::new("k", json!({})), now).await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    let mut beat = heartbeat_params(&leased, now + ms(20_000));
    beat.progress = Some(Progress {
        fraction: 0.25,
        message: Some("page 1 of 4".into()),
    });
    let job = store.job_heartbeat(beat).await.unwrap();
    assert_eq!(job.lease_expires_at, Some(now + ms(50_000)));
    assert_eq!(job.progress.as_ref().unwrap().fraction, 0.25);
    assert_eq!(
        job.progress.as_ref().unwrap().message.as_deref(),
        Some("page 1 of 4")
    );
    assert!(!job.cancel_requested);

    // A heartbeat without progress keeps the last progress.
    let job = store
        .job_heartbeat(heartbeat_params(&leased, now + ms(40_000)))
        .await
        .unwrap();
    assert_eq!(job.progress.as_ref().unwrap().fraction, 0.25);
    // The extended lease is not rescued at its original expiry.
    let rescue = JobsRescue {
        now: now + ms(31_000),
        limit: 10,
        backoff: no_jitter(),
    };
    assert_eq!(store.jobs_rescue_expired(rescue).await.unwrap(), 0);
    store
        .job_complete(complete_params(&leased, now + ms(60_000)))
        .await
        .unwrap();
}

pub async fn rescue_ends_expired_leases_as_failed_attempts(store: S) {
    let now = t0();
    let mut last = NewJob::new("last", json!({}));
    last.max_attempts = 1;
    insert(&store, vec![NewJob::new("k", json!({})), last], now).await;
    let leased = fetch(&store, "default", 2, now).await;
    let rescue = |now| JobsRescue {
        now,
        limit: 10,
        backoff: no_jitter(),
    };
    assert_eq!(
        store
            .jobs_rescue_expired(rescue(now + ms(29_999)))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .jobs_rescue_expired(rescue(now + ms(30_000)))
            .await
            .unwrap(),
        2
    );

    let retried = get(&store, leased[0].job.id).await;
    assert_eq!(retried.state, JobState::Retryable);
    assert_eq!(retried.errors.len(), 1);
    assert_eq!(retried.errors[0].error, LEASE_EXPIRED);
    assert_eq!(retried.errors[0].worker_id.as_deref(), Some("worker-1"));
    assert_eq!(retried.run_at, now + ms(30_000) + ms(1_000));
    let dead = get(&store, leased[1].job.id).await;
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.errors[0].error, LEASE_EXPIRED);
    assert_eq!(
        store
            .jobs_rescue_expired(rescue(now + ms(60_000)))
            .await
            .unwrap(),
        0
    );
}

pub async fn timeout_caps_the_lease_and_is_recorded(store: S) {
    let now = t0();
    let mut job = NewJob::new("slow", json!({}));
    job.timeout_ms = Some(5_000);
    insert_one(&store, job, now).await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    assert_eq!(
        leased.job.lease_expires_at,
        Some(now + ms(5_000)),
        "the lease stops at the timeout"
    );
    let beat = store
        .job_heartbeat(heartbeat_params(&leased, now + ms(4_000)))
        .await
        .unwrap();
    assert_eq!(
        beat.lease_expires_at,
        Some(now + ms(5_000)),
        "heartbeats cannot outrun the timeout"
    );
    let rescue = JobsRescue {
        now: now + ms(5_000),
        limit: 10,
        backoff: no_jitter(),
    };
    assert_eq!(store.jobs_rescue_expired(rescue).await.unwrap(), 1);
    let job = get(&store, leased.job.id).await;
    assert_eq!(job.state, JobState::Retryable);
    assert_eq!(job.errors[0].error, TIMED_OUT);
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

pub async fn expires_at_expires_unstarted_jobs(store: S) {
    let now = t0();
    let mut soon = NewJob::new("soon", json!({}));
    soon.expires_at = Some(now + ms(1_000));
    let mut later = NewJob::new("later", json!({}));
    later.expires_at = Some(now + ms(60_000));
    let jobs = insert(&store, vec![soon, later], now).await;
    // Past its deadline a job is not handed out, even before the expirer runs.
    let leased = fetch(&store, "default", 10, now + ms(1_000)).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.kind, "later");
    let batch = MaintenanceBatch {
        now: now + ms(1_000),
        limit: 10,
    };
    assert_eq!(store.jobs_expire(batch).await.unwrap(), 1);
    let expired = get(&store, jobs[0].id).await;
    assert_eq!(expired.state, JobState::Expired);
    assert_eq!(expired.finished_at, Some(now + ms(1_000)));
    // A running job is not expired: it has started.
    let batch = MaintenanceBatch {
        now: now + ms(120_000),
        limit: 10,
    };
    assert_eq!(store.jobs_expire(batch).await.unwrap(), 0);
}

pub async fn cancel_by_state(store: S) {
    let now = t0();
    let jobs = insert(
        &store,
        vec![NewJob::new("a", json!({})), NewJob::new("b", json!({}))],
        now,
    )
    .await;
    let running = fetch(&store, "default", 1, now).await.remove(0);
    assert_eq!(running.job.id, jobs[0].id);

    let waiting = store
        .job_cancel(JobCancel {
            id: jobs[1].id,
            now,
        })
        .await
        .unwrap();
    assert_eq!(waiting.state, JobState::Cancelled);
    assert_eq!(waiting.finished_at, Some(now));
    assert_invalid_state(
        store
            .job_cancel(JobCancel {
                id: jobs[1].id,
                now,
            })
            .await,
    );

    // A running job only gets a request; its worker sees it and stops.
    let requested = store
        .job_cancel(JobCancel {
            id: running.job.id,
            now,
        })
        .await
        .unwrap();
    assert_eq!(requested.state, JobState::Running);
    assert!(requested.cancel_requested);
    let beat = store
        .job_heartbeat(heartbeat_params(&running, now))
        .await
        .unwrap();
    assert!(beat.cancel_requested);
    let stopped = store
        .job_fail(fail_params(&running, "cancelled by request", now))
        .await
        .unwrap();
    assert_eq!(stopped.state, JobState::Cancelled);
    assert!(matches!(
        store
            .job_cancel(JobCancel {
                id: JobId(i64::MAX),
                now
            })
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn retry_revives_finished_jobs(store: S) {
    let now = t0();
    let mut once = NewJob::new("once", json!({}));
    once.max_attempts = 1;
    let job = insert_one(&store, once, now).await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    assert_invalid_state(
        store
            .job_retry(JobRetry {
                id: job.id,
                args: None,
                now,
            })
            .await,
    );
    store
        .job_fail(fail_params(&leased, "x", now))
        .await
        .unwrap();

    let revived = store
        .job_retry(JobRetry {
            id: job.id,
            args: None,
            now: now + ms(10),
        })
        .await
        .unwrap();
    assert_eq!(revived.state, JobState::Available);
    assert_eq!(revived.run_at, now + ms(10));
    assert_eq!(
        revived.max_attempts, 2,
        "a job out of attempts gets one more"
    );
    assert!(revived.finished_at.is_none());
    let leased = fetch(&store, "default", 1, now + ms(10)).await.remove(0);
    assert_eq!(leased.job.attempt, 2);
    store
        .job_complete(complete_params(&leased, now))
        .await
        .unwrap();
    assert_invalid_state(
        store
            .job_retry(JobRetry {
                id: job.id,
                args: None,
                now,
            })
            .await,
    );

    // Scheduled and cancelled jobs run now.
    let mut later = NewJob::new("later", json!({}));
    later.run_at = Some(now + ms(60_000));
    let later = insert_one(&store, later, now).await;
    assert_eq!(
        store
            .job_retry(JobRetry {
                id: later.id,
                args: None,
                now
            })
            .await
            .unwrap()
            .state,
        JobState::Available
    );
    store
        .job_cancel(JobCancel { id: later.id, now })
        .await
        .unwrap();
    assert_eq!(
        store
            .job_retry(JobRetry {
                id: later.id,
                args: None,
                now
            })
            .await
            .unwrap()
            .state,
        JobState::Available
    );
}

pub async fn reschedule_moves_run_at(store: S) {
    let now = t0();
    let job = insert_one(&store, NewJob::new("k", json!({})), now).await;
    let moved = store
        .job_reschedule(JobReschedule {
            id: job.id,
            run_at: now + ms(5_000),
            now,
        })
        .await
        .unwrap();
    assert_eq!(moved.state, JobState::Scheduled);
    assert_eq!(moved.run_at, now + ms(5_000));
    let back = store
        .job_reschedule(JobReschedule {
            id: job.id,
            run_at: now - ms(5_000),
            now,
        })
        .await
        .unwrap();
    assert_eq!(back.state, JobState::Available);
    fetch(&store, "default", 1, now).await;
    assert_invalid_state(
        store
            .job_reschedule(JobReschedule {
                id: job.id,
                run_at: now,
                now,
            })
            .await,
    );
}

pub async fn delete_removes_the_job(store: S) {
    let now = t0();
    insert_one(&store, NewJob::new("k", json!({})), now).await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    store.job_delete(leased.job.id).await.unwrap();
    assert!(store.job_get(leased.job.id).await.unwrap().is_none());
    assert!(matches!(
        store.job_delete(leased.job.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.job_complete(complete_params(&leased, now)).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn list_filters_and_pages_by_keyset(store: S) {
    let now = t0();
    let mut jobs = Vec::new();
    for i in 0..10 {
        let mut j = NewJob::new(if i % 2 == 0 { "even" } else { "odd" }, json!(i));
        j.queue = if i < 5 { "low".into() } else { "high".into() };
        jobs.push(j);
    }
    let inserted = insert(&store, jobs, now).await;
    let ids: Vec<_> = inserted.iter().map(|j| j.id).collect();

    let mut params = JobsList {
        limit: 4,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = store.jobs_list(params.clone()).await.unwrap();
        assert!(page.jobs.len() <= 4);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(next) => params.after = Some(next),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let asc = store
        .jobs_list(JobsList {
            limit: 3,
            order: Order::Asc,
            after: Some(ids[2]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(asc.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ids[3..6]);

    let odd_high = store
        .jobs_list(JobsList {
            limit: 100,
            kind: Some("odd".into()),
            queue: Some("high".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(odd_high.jobs.len(), 3);
    assert!(odd_high.next.is_none());
    fetch(&store, "high", 2, now).await;
    let running = store
        .jobs_list(JobsList {
            limit: 100,
            state: Some(JobState::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.jobs.len(), 2);
    assert!(running.jobs.iter().all(|j| j.state == JobState::Running));
}

pub async fn queues_list_counts_per_state(store: S) {
    let now = t0();
    assert!(store.queues_list().await.unwrap().is_empty());
    let mut mail = NewJob::new("m", json!({}));
    mail.queue = "mail".into();
    insert(
        &store,
        vec![mail.clone(), mail, NewJob::new("d", json!({}))],
        now,
    )
    .await;
    fetch(&store, "mail", 1, now).await;
    let queues = store.queues_list().await.unwrap();
    let mail = queues.iter().find(|q| q.name == "mail").unwrap();
    assert_eq!(mail.counts[&JobState::Available], 1);
    assert_eq!(mail.counts[&JobState::Running], 1);
    assert_eq!(mail.counts[&JobState::Dead], 0);
    assert_eq!(mail.counts.len(), JobState::ALL.len());
    let default = queues.iter().find(|q| q.name == "default").unwrap();
    assert_eq!(default.counts[&JobState::Available], 1);
    assert!(!default.paused);
}

pub async fn availability_signal_fires_on_new_work(store: S) {
    let now = t0();
    let mut signal = store.job_availability();
    signal.borrow_and_update();
    insert_one(&store, NewJob::new("k", json!({})), now).await;
    tokio::time::timeout(Duration::from_secs(5), signal.changed())
        .await
        .expect("an insert must signal availability")
        .unwrap();

    let mut later = NewJob::new("later", json!({}));
    later.run_at = Some(now + ms(1_000));
    insert_one(&store, later, now).await;
    signal.borrow_and_update();
    store
        .jobs_schedule(MaintenanceBatch {
            now: now + ms(1_000),
            limit: 10,
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), signal.changed())
        .await
        .expect("a scheduled job coming due must signal availability")
        .unwrap();
}

pub async fn release_hands_the_job_back_without_counting_the_attempt(store: S) {
    let now = t0();
    let jobs = insert(
        &store,
        vec![NewJob::new("a", json!({})), NewJob::new("b", json!({}))],
        now,
    )
    .await;
    let leased = fetch(&store, "default", 2, now).await;
    let release = |l: &LeasedJob, run_at| JobRelease {
        id: l.job.id,
        lease: l.lease.clone(),
        run_at,
        now,
    };

    // Now: available again at once, the attempt not counted.
    let mut signal = store.job_availability();
    signal.borrow_and_update();
    let back = store.job_release(release(&leased[0], now)).await.unwrap();
    assert_eq!(back.state, JobState::Available);
    assert_eq!(back.attempt, 0);
    assert!(back.lease_expires_at.is_none());
    tokio::time::timeout(Duration::from_secs(5), signal.changed())
        .await
        .expect("a released job must signal availability")
        .unwrap();
    let again = fetch(&store, "default", 1, now).await.remove(0);
    assert_eq!(again.job.id, jobs[0].id);
    assert_eq!(again.job.attempt, 1);
    // The old lease is stale.
    assert_lease_mismatch(
        store.job_release(release(&leased[0], now)).await,
        jobs[0].id,
    );

    // Later (a snooze): scheduled until then.
    let snoozed = store
        .job_release(release(&leased[1], now + ms(5_000)))
        .await
        .unwrap();
    assert_eq!(snoozed.state, JobState::Scheduled);
    assert_eq!(snoozed.run_at, now + ms(5_000));
    assert_eq!(snoozed.attempt, 0);

    // A cancel requested meanwhile wins.
    store
        .job_cancel(JobCancel {
            id: again.job.id,
            now,
        })
        .await
        .unwrap();
    let cancelled = store.job_release(release(&again, now)).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.finished_at.is_some());
}

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

pub async fn complete_many_acks_a_batch_fenced_per_item(store: S) {
    let now = t0();
    let jobs: Vec<_> = (0..5).map(|i| NewJob::new("k", json!(i))).collect();
    insert(&store, jobs, now).await;
    let leased = fetch(&store, "default", 5, now).await;
    let mut items: Vec<_> = leased
        .iter()
        .map(|l| (l.job.id, l.lease.clone(), Some(json!({"n": l.job.args}))))
        .collect();
    items[1].1 = "not-the-lease".into();
    items.push((JobId(i64::MAX), "x".into(), None));
    let done = store
        .jobs_complete_many(JobsCompleteMany {
            items,
            now: now + ms(1),
        })
        .await
        .unwrap();
    assert_eq!(done, [true, false, true, true, true, false]);
    let first = get(&store, leased[0].job.id).await;
    assert_eq!(first.state, JobState::Completed);
    assert_eq!(first.result, Some(json!({"n": leased[0].job.args})));
    assert_eq!(first.finished_at, Some(now + ms(1)));
    assert_eq!(
        get(&store, leased[1].job.id).await.state,
        JobState::Running,
        "a wrong lease changes nothing"
    );
    assert!(store
        .jobs_complete_many(JobsCompleteMany { items: vec![], now })
        .await
        .unwrap()
        .is_empty());
}

/// Items naming a job twice answer as they would one at a time: the first
/// that holds the lease completes it (with its result), the rest answer false.
/// Results of every JSON shape come back as they were sent.
pub async fn complete_many_repeats_and_results_answer_as_one_at_a_time(store: S) {
    let now = t0();
    let jobs: Vec<_> = (0..6).map(|i| NewJob::new("k", json!(i))).collect();
    insert(&store, jobs, now).await;
    let leased = fetch(&store, "default", 6, now).await;
    let item =
        |l: &LeasedJob, result: Option<serde_json::Value>| (l.job.id, l.lease.clone(), result);
    let results = [
        json!("text"),
        json!(12.5),
        json!(null),
        json!([1, {"b": [true]}]),
        json!({"z": 1, "a": 2}),
    ];
    let items = vec![
        item(&leased[0], Some(json!("first"))),
        item(&leased[0], Some(json!("second"))),
        (leased[1].job.id, "stale".into(), Some(json!("wrong"))),
        item(&leased[1], Some(results[0].clone())),
        item(&leased[2], Some(results[1].clone())),
        item(&leased[3], Some(results[2].clone())),
        item(&leased[4], Some(results[3].clone())),
        item(&leased[5], Some(results[4].clone())),
        item(&leased[5], None),
    ];
    let done = store
        .jobs_complete_many(JobsCompleteMany {
            items,
            now: now + ms(1),
        })
        .await
        .unwrap();
    assert_eq!(
        done,
        [true, false, false, true, true, true, true, true, false]
    );
    assert_eq!(
        get(&store, leased[0].job.id).await.result,
        Some(json!("first"))
    );
    for (l, result) in leased[1..].iter().zip(&results) {
        let job = get(&store, l.job.id).await;
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.result.as_ref(), Some(result), "job {}", l.job.id);
    }
    let again = vec![item(&leased[1], None)];
    assert_eq!(
        store
            .jobs_complete_many(JobsCompleteMany { items: again, now })
            .await
            .unwrap(),
        [false]
    );
}

pub async fn running_limit_caps_a_queue_across_fetches(store: S) {
    let now = t0();
    let jobs: Vec<_> = (0..10).map(|i| NewJob::new("k", json!(i))).collect();
    insert(&store, jobs, now).await;
    let limited = |max| {
        let mut params = fetch_params("default", max, now);
        params.running_limit = Some(3);
        params
    };
    assert_eq!(store.jobs_fetch(limited(2)).await.unwrap().len(), 2);
    let more = store.jobs_fetch(limited(10)).await.unwrap();
    assert_eq!(more.len(), 1, "3 running at most");
    assert!(store.jobs_fetch(limited(10)).await.unwrap().is_empty());
    store
        .job_complete(complete_params(&more[0], now))
        .await
        .unwrap();
    assert_eq!(
        store.jobs_fetch(limited(10)).await.unwrap().len(),
        1,
        "a finished job frees a slot"
    );
    assert_eq!(
        fetch(&store, "default", 10, now).await.len(),
        6,
        "without a limit, the rest"
    );
}

pub async fn prune_deletes_old_finished_jobs_only(store: S) {
    let now = t0();
    let mut once = NewJob::new("once", json!({}));
    once.max_attempts = 1;
    let jobs = insert(
        &store,
        vec![
            NewJob::new("done", json!({})),
            once,
            NewJob::new("waiting", json!({})),
        ],
        now,
    )
    .await;
    let leased = fetch(&store, "default", 2, now).await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    store
        .job_fail(fail_params(&leased[1], "x", now + ms(10_000)))
        .await
        .unwrap();
    let prune = |states: Vec<JobState>, before| JobsPrune {
        states,
        finished_before: before,
        limit: 100,
    };
    let finished = vec![
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Expired,
    ];
    assert_eq!(
        store
            .jobs_prune(prune(finished.clone(), now))
            .await
            .unwrap(),
        0,
        "nothing finished before now"
    );
    assert_eq!(
        store
            .jobs_prune(prune(vec![JobState::Completed], now + ms(20_000)))
            .await
            .unwrap(),
        1
    );
    assert!(store.job_get(jobs[0].id).await.unwrap().is_none());
    assert!(
        store.job_get(jobs[1].id).await.unwrap().is_some(),
        "dead jobs were not named"
    );
    // Unfinished states are never pruned, even when named.
    assert_eq!(
        store
            .jobs_prune(prune(vec![JobState::Available], now + ms(20_000)))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .jobs_prune(prune(finished, now + ms(20_000)))
            .await
            .unwrap(),
        1
    );
    assert!(store.job_get(jobs[2].id).await.unwrap().is_some());
}

pub async fn push_target_is_kept_and_removed(store: S) {
    let now = t0();
    let target = PushTarget {
        url: "http://127.0.0.1:9/jobs".into(),
        secret: "0123456789abcdef".into(),
        old_secrets: vec!["fedcba9876543210".into()],
        timeout_ms: 5_000,
        concurrency: 3,
        headers: [("X-App".to_owned(), "demo".to_owned())].into(),
    };
    let info = store
        .queue_set_push(QueuePush {
            queue: "hooks".into(),
            push: Some(target.clone()),
            now,
        })
        .await
        .unwrap();
    assert_eq!(info.push.as_ref(), Some(&target));
    assert!(!info.paused);
    // Pausing keeps the target; the list shows it.
    store
        .queue_set_paused(QueuePause {
            queue: "hooks".into(),
            paused: true,
            now,
        })
        .await
        .unwrap();
    let listed = store.queues_list().await.unwrap();
    let hooks = listed.iter().find(|q| q.name == "hooks").unwrap();
    assert_eq!(hooks.push.as_ref(), Some(&target));
    assert!(hooks.paused);
    let info = store
        .queue_set_push(QueuePush {
            queue: "hooks".into(),
            push: None,
            now,
        })
        .await
        .unwrap();
    assert!(info.push.is_none());
    assert!(info.paused, "removing the target keeps other settings");
}

pub async fn leadership_is_exclusive_until_it_expires_or_is_released(store: S) {
    let now = t0();
    let acquire = |node: &str, now| LeaderAcquire {
        name: "maintenance".into(),
        node: node.into(),
        ttl: Duration::from_secs(10),
        now,
    };
    assert!(store.leader_acquire(acquire("a", now)).await.unwrap());
    assert!(!store
        .leader_acquire(acquire("b", now + ms(1)))
        .await
        .unwrap());
    assert!(
        store
            .leader_acquire(acquire("a", now + ms(5_000)))
            .await
            .unwrap(),
        "renewal"
    );
    assert!(
        !store
            .leader_acquire(acquire("b", now + ms(14_000)))
            .await
            .unwrap(),
        "renewed until 15 s"
    );
    assert!(
        store
            .leader_acquire(acquire("b", now + ms(15_000)))
            .await
            .unwrap(),
        "expired: b takes over"
    );
    assert!(!store
        .leader_acquire(acquire("a", now + ms(15_001)))
        .await
        .unwrap());
    // Another name is another leadership.
    let mut other = acquire("a", now + ms(15_001));
    other.name = "cron".into();
    assert!(store.leader_acquire(other).await.unwrap());
    // Releasing hands over at once; releasing what one does not hold does nothing.
    store
        .leader_release(LeaderRelease {
            name: "maintenance".into(),
            node: "a".into(),
        })
        .await
        .unwrap();
    assert!(!store
        .leader_acquire(acquire("a", now + ms(15_002)))
        .await
        .unwrap());
    store
        .leader_release(LeaderRelease {
            name: "maintenance".into(),
            node: "b".into(),
        })
        .await
        .unwrap();
    assert!(store
        .leader_acquire(acquire("a", now + ms(15_003)))
        .await
        .unwrap());
}

pub async fn queues_list_shows_the_oldest_available_job(store: S) {
    let now = t0();
    let at = |back_ms: i64| {
        let mut j = NewJob::new("k", json!({}));
        j.run_at = Some(now - ms(back_ms));
        j
    };
    insert(&store, vec![at(5_000), at(60_000), at(1_000)], now).await;
    let queues = store.queues_list().await.unwrap();
    assert_eq!(queues[0].oldest_available_at, Some(now - ms(60_000)));
    fetch(&store, "default", 3, now).await;
    assert_eq!(
        store.queues_list().await.unwrap()[0].oldest_available_at,
        None,
        "none available"
    );
}

pub async fn ping_answers(store: S) {
    store.ping().await.unwrap();
}

/// Every page of a list, following `next` until the end.
async fn list_all(store: &S, mut params: JobsList) -> Vec<JobId> {
    let mut seen = Vec::new();
    for _ in 0..1_000 {
        let page = store.jobs_list(params.clone()).await.expect("list");
        assert!(page.jobs.len() <= params.limit);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(next) => params.after = Some(next),
            None => return seen,
        }
    }
    panic!("the list never ended");
}

pub async fn list_filters_by_tag_args_and_any_combination(store: S) {
    let now = t0();
    let mut new = Vec::new();
    for i in 0..24i64 {
        let mut j = NewJob::new(
            if i % 3 == 0 { "mail" } else { "sync" },
            json!({
                "user": {"id": i % 4, "name": format!("u{}", i % 4)},
                "flag": if i == 9 { json!(1) } else { json!(i % 2 == 0) },
                "ratio": if i == 5 { json!(1.0) } else { json!(i) },
                "text": match i { 7 => json!("1"), 8 => json!(1), _ => json!(null) },
            }),
        );
        j.queue = if i % 2 == 0 {
            "even".into()
        } else {
            "odd".into()
        };
        if i % 5 == 0 {
            j.tags = vec!["vip".into(), format!("t{i}")];
        }
        new.push(j);
    }
    let jobs = insert(&store, new, now).await;
    // Some of each state, so per-state index ranges are merged.
    let leased = fetch(&store, "even", 4, now).await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    store
        .job_fail(JobFail {
            retry: false,
            ..fail_params(&leased[1], "boom", now)
        })
        .await
        .unwrap();
    store
        .job_cancel(JobCancel {
            id: jobs[23].id,
            now,
        })
        .await
        .unwrap();
    let all: Vec<Job> = {
        let mut all = Vec::new();
        for job in &jobs {
            all.push(get(&store, job.id).await);
        }
        all
    };

    let args = |path: &[&str], value: serde_json::Value| {
        Some(ArgsMatch {
            path: path.iter().map(|s| s.to_string()).collect(),
            value,
        })
    };
    type Case = (&'static str, JobsList, Box<dyn Fn(&Job) -> bool>);
    let filters: Vec<Case> = vec![
        (
            "tag",
            JobsList {
                tag: Some("vip".into()),
                ..Default::default()
            },
            Box::new(|j| j.tags.contains(&"vip".into())),
        ),
        (
            "tag+state",
            JobsList {
                tag: Some("vip".into()),
                state: Some(JobState::Available),
                ..Default::default()
            },
            Box::new(|j| j.tags.contains(&"vip".into()) && j.state == JobState::Available),
        ),
        (
            "queue",
            JobsList {
                queue: Some("even".into()),
                ..Default::default()
            },
            Box::new(|j| j.queue == "even"),
        ),
        (
            "kind",
            JobsList {
                kind: Some("mail".into()),
                ..Default::default()
            },
            Box::new(|j| j.kind == "mail"),
        ),
        (
            "queue+kind",
            JobsList {
                queue: Some("even".into()),
                kind: Some("mail".into()),
                ..Default::default()
            },
            Box::new(|j| j.queue == "even" && j.kind == "mail"),
        ),
        (
            "kind+state",
            JobsList {
                kind: Some("sync".into()),
                state: Some(JobState::Running),
                ..Default::default()
            },
            Box::new(|j| j.kind == "sync" && j.state == JobState::Running),
        ),
        (
            "state",
            JobsList {
                state: Some(JobState::Available),
                ..Default::default()
            },
            Box::new(|j| j.state == JobState::Available),
        ),
        (
            "running",
            JobsList {
                state: Some(JobState::Running),
                ..Default::default()
            },
            Box::new(|j| j.state == JobState::Running),
        ),
        (
            "queue+running",
            JobsList {
                queue: Some("even".into()),
                state: Some(JobState::Running),
                ..Default::default()
            },
            Box::new(|j| j.queue == "even" && j.state == JobState::Running),
        ),
        (
            "state+args",
            JobsList {
                state: Some(JobState::Available),
                args: args(&["user", "id"], json!(1)),
                ..Default::default()
            },
            Box::new(|j| j.state == JobState::Available && j.args["user"]["id"] == json!(1)),
        ),
        (
            "nested args",
            JobsList {
                args: args(&["user", "id"], json!(2)),
                ..Default::default()
            },
            Box::new(|j| j.args["user"]["id"] == json!(2)),
        ),
        (
            "string args",
            JobsList {
                args: args(&["user", "name"], json!("u3")),
                ..Default::default()
            },
            Box::new(|j| j.args["user"]["name"] == json!("u3")),
        ),
        (
            "numbers by value",
            JobsList {
                args: args(&["ratio"], json!(1)),
                ..Default::default()
            },
            Box::new(|j| j.args["ratio"].as_f64() == Some(1.0)),
        ),
        (
            "booleans are not numbers",
            JobsList {
                args: args(&["flag"], json!(true)),
                ..Default::default()
            },
            Box::new(|j| j.args["flag"] == json!(true)),
        ),
        (
            "strings are not numbers",
            JobsList {
                args: args(&["text"], json!("1")),
                ..Default::default()
            },
            Box::new(|j| j.args["text"] == json!("1")),
        ),
        (
            "null",
            JobsList {
                args: args(&["text"], json!(null)),
                ..Default::default()
            },
            Box::new(|j| j.args["text"].is_null()),
        ),
        (
            "args+queue+state",
            JobsList {
                args: args(&["user", "id"], json!(0)),
                queue: Some("even".into()),
                state: Some(JobState::Available),
                ..Default::default()
            },
            Box::new(|j| {
                j.args["user"]["id"] == json!(0)
                    && j.queue == "even"
                    && j.state == JobState::Available
            }),
        ),
    ];
    for (name, filter, matches) in filters {
        let expected: Vec<JobId> = all
            .iter()
            .rev()
            .filter(|j| matches(j))
            .map(|j| j.id)
            .collect();
        assert!(
            !expected.is_empty(),
            "{name}: the fixture matches something"
        );
        for (limit, scan_limit) in [(100, None), (2, None), (3, Some(4)), (1, Some(1))] {
            let params = JobsList {
                limit,
                scan_limit,
                ..filter.clone()
            };
            assert_eq!(
                list_all(&store, params.clone()).await,
                expected,
                "{name}, limit {limit}, scan {scan_limit:?}"
            );
            let asc = JobsList {
                order: Order::Asc,
                ..params
            };
            let mut oldest_first = expected.clone();
            oldest_first.reverse();
            assert_eq!(
                list_all(&store, asc).await,
                oldest_first,
                "{name} oldest first, limit {limit}"
            );
        }
    }
    // A scan limit bounds each page: short pages say where to go on.
    let page = store
        .jobs_list(JobsList {
            limit: 10,
            scan_limit: Some(3),
            args: args(&["user", "id"], json!(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.jobs.len() <= 3);
    assert_eq!(
        page.next,
        Some(jobs[21].id),
        "the scan stopped at the third newest job"
    );
    assert!(store
        .jobs_list(JobsList {
            limit: 5,
            tag: Some("nobody".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs
        .is_empty());
    let bad = JobsList {
        limit: 5,
        args: args(&[], json!(1)),
        ..Default::default()
    };
    assert!(matches!(
        store.jobs_list(bad).await,
        Err(StoreError::Invalid(_))
    ));
    let bad = JobsList {
        limit: 5,
        args: args(&["a"], json!({"b": 1})),
        ..Default::default()
    };
    assert!(matches!(
        store.jobs_list(bad).await,
        Err(StoreError::Invalid(_))
    ));
}

/// Counts per queue and state, the slow way.
async fn counted(store: &S) -> std::collections::BTreeMap<(String, JobState), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for id in list_all(
        store,
        JobsList {
            limit: 1_000,
            ..Default::default()
        },
    )
    .await
    {
        let job = get(store, id).await;
        *counts.entry((job.queue, job.state)).or_default() += 1;
    }
    counts
}

async fn assert_counts_exact(store: &S, when: &str) {
    let expected = counted(store).await;
    let mut kept = std::collections::BTreeMap::new();
    for queue in store.queues_list().await.unwrap() {
        for (state, n) in queue.counts {
            if n > 0 {
                kept.insert((queue.name.clone(), state), n);
            }
        }
    }
    assert_eq!(kept, expected, "counts after {when}");
}

pub async fn queue_counts_follow_every_change(store: S) {
    let now = t0();
    let mut jobs = Vec::new();
    for i in 0..12 {
        let mut j = NewJob::new("k", json!({}));
        j.queue = ["a", "b", "c"][i % 3].into();
        j.max_attempts = 1;
        if i == 11 {
            j.run_at = Some(now + ms(1_000));
        }
        jobs.push(j);
    }
    let jobs = insert(&store, jobs, now).await;
    assert_counts_exact(&store, "insert").await;
    let leased = fetch(&store, "a", 4, now).await;
    assert_counts_exact(&store, "fetch").await;
    let from_c = fetch(&store, "c", 2, now).await;
    let ack = |job: &LeasedJob, lease: &str| (job.job.id, lease.to_owned(), None);
    store
        .jobs_complete_many(JobsCompleteMany {
            items: vec![
                ack(&leased[3], &leased[3].lease),
                ack(&from_c[0], &from_c[0].lease),
            ],
            now,
        })
        .await
        .unwrap();
    assert_counts_exact(&store, "a batch ack over two queues").await;
    // One job under two leases: the batch goes item by item.
    store
        .jobs_complete_many(JobsCompleteMany {
            items: vec![
                ack(&from_c[1], &from_c[1].lease),
                ack(&from_c[1], "not its lease"),
            ],
            now,
        })
        .await
        .unwrap();
    assert_counts_exact(&store, "a batch ack item by item").await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    store
        .job_fail(fail_params(&leased[1], "x", now))
        .await
        .unwrap();
    store
        .job_heartbeat(heartbeat_params(&leased[2], now))
        .await
        .unwrap();
    store
        .jobs_rescue_expired(JobsRescue {
            now: now + ms(60_000),
            limit: 10,
            backoff: no_jitter(),
        })
        .await
        .unwrap();
    assert_counts_exact(&store, "ack, fail, heartbeat and rescue").await;
    store
        .jobs_schedule(MaintenanceBatch {
            now: now + ms(1_000),
            limit: 10,
        })
        .await
        .unwrap();
    store
        .job_cancel(JobCancel {
            id: jobs[1].id,
            now,
        })
        .await
        .unwrap();
    store.job_delete(jobs[2].id).await.unwrap();
    store
        .job_retry(JobRetry {
            id: leased[1].job.id,
            args: None,
            now,
        })
        .await
        .unwrap();
    assert_counts_exact(&store, "schedule, cancel, delete and retry").await;
    let finished = vec![
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Expired,
    ];
    store
        .jobs_prune(JobsPrune {
            states: finished,
            finished_before: now + ms(120_000),
            limit: 100,
        })
        .await
        .unwrap();
    assert_counts_exact(&store, "prune").await;
    // A queue whose jobs are all gone is no longer listed.
    for id in list_all(
        &store,
        JobsList {
            limit: 100,
            queue: Some("b".into()),
            ..Default::default()
        },
    )
    .await
    {
        store.job_delete(id).await.unwrap();
    }
    assert!(store
        .queues_list()
        .await
        .unwrap()
        .iter()
        .all(|q| q.name != "b"));
    assert_counts_exact(&store, "emptying a queue").await;
}

pub async fn throughput_counts_attempts_per_minute(store: S) {
    let minute = |t: DateTime<Utc>| {
        DateTime::from_timestamp(t.timestamp() - t.timestamp().rem_euclid(60), 0).unwrap()
    };
    let now = minute(t0()) + ms(10_000);
    let mut once = NewJob::new("k", json!({}));
    once.max_attempts = 1;
    insert(
        &store,
        vec![NewJob::new("k", json!({})); 4]
            .into_iter()
            .chain([once])
            .collect(),
        now,
    )
    .await;
    let leased = fetch(&store, "default", 5, now).await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    store
        .jobs_complete_many(JobsCompleteMany {
            items: vec![(leased[1].job.id, leased[1].lease.clone(), None)],
            now: now + ms(1_000),
        })
        .await
        .unwrap();
    store
        .job_fail(fail_params(&leased[2], "x", now + ms(60_000)))
        .await
        .unwrap();
    store
        .job_fail(fail_params(&leased[4], "last", now + ms(61_000)))
        .await
        .unwrap();
    // A heartbeat and a hand-back are not attempts that ended.
    store
        .job_heartbeat(heartbeat_params(&leased[3], now))
        .await
        .unwrap();
    store
        .job_release(JobRelease {
            id: leased[3].job.id,
            lease: leased[3].lease.clone(),
            run_at: now,
            now,
        })
        .await
        .unwrap();
    // An expired lease is a failed attempt, in the minute it was rescued.
    let again = fetch(&store, "default", 1, now + ms(120_000)).await;
    assert_eq!(again.len(), 1);
    store
        .jobs_rescue_expired(JobsRescue {
            now: now + ms(180_000),
            limit: 10,
            backoff: no_jitter(),
        })
        .await
        .unwrap();

    let range = ThroughputRange {
        since: now - ms(3_600_000),
        until: now + ms(3_600_000),
    };
    let got = store.throughput_list(range).await.unwrap();
    let m = minute(now);
    assert_eq!(
        got,
        vec![
            MinuteThroughput {
                minute: m,
                completed: 2,
                failed: 0
            },
            MinuteThroughput {
                minute: m + ms(60_000),
                completed: 0,
                failed: 2
            },
            MinuteThroughput {
                minute: m + ms(180_000),
                completed: 0,
                failed: 1
            },
        ]
    );
    let narrow = ThroughputRange {
        since: now + ms(60_000),
        until: now + ms(120_000),
    };
    assert_eq!(
        store.throughput_list(narrow).await.unwrap().len(),
        1,
        "since counts its whole minute"
    );
}

pub async fn bulk_changes_follow_the_one_job_rules(store: S) {
    let now = t0();
    let mut once = NewJob::new("once", json!({}));
    once.max_attempts = 1;
    let jobs = insert(
        &store,
        vec![
            once.clone(),
            once.clone(),
            once,
            NewJob::new("waiting", json!({})),
        ],
        now,
    )
    .await;
    let leased = fetch(&store, "default", 3, now).await;
    store
        .job_fail(fail_params(&leased[0], "x", now))
        .await
        .unwrap();
    store
        .job_fail(fail_params(&leased[1], "x", now))
        .await
        .unwrap();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).chain([JobId(i64::MAX)]).collect();

    // Only the dead ones: the running, the waiting and the missing are skipped.
    let bulk = |action, only_state| JobsBulk {
        ids: ids.clone(),
        action,
        only_state,
        now,
    };
    let retried = store
        .jobs_bulk(bulk(BulkAction::Retry, Some(JobState::Dead)))
        .await
        .unwrap();
    assert_eq!(
        retried,
        BulkOutcome {
            changed: 2,
            skipped: 3
        }
    );
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Available);
    assert_eq!(get(&store, jobs[2].id).await.state, JobState::Running);

    // Cancel: waiting jobs at once, the running one by request, the missing one skipped.
    let cancelled = store
        .jobs_bulk(bulk(BulkAction::Cancel, None))
        .await
        .unwrap();
    assert_eq!(
        cancelled,
        BulkOutcome {
            changed: 4,
            skipped: 1
        }
    );
    assert!(get(&store, jobs[2].id).await.cancel_requested);
    assert_eq!(get(&store, jobs[3].id).await.state, JobState::Cancelled);

    let deleted = store
        .jobs_bulk(bulk(BulkAction::Delete, Some(JobState::Cancelled)))
        .await
        .unwrap();
    assert_eq!(
        deleted,
        BulkOutcome {
            changed: 3,
            skipped: 2
        }
    );
    assert!(store.job_get(jobs[3].id).await.unwrap().is_none());
    assert!(
        store.job_get(jobs[2].id).await.unwrap().is_some(),
        "still running"
    );
    assert_counts_exact(&store, "bulk changes").await;
    let too_many = JobsBulk {
        ids: vec![JobId(1); JobsBulk::MAX_IDS + 1],
        action: BulkAction::Delete,
        only_state: None,
        now,
    };
    assert!(matches!(
        store.jobs_bulk(too_many).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn retry_can_replace_the_args(store: S) {
    let now = t0();
    let mut once = NewJob::new("once", json!({"to": "typo@exmaple.com"}));
    once.max_attempts = 1;
    let job = insert_one(&store, once, now).await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    store
        .job_fail(fail_params(&leased, "bad address", now))
        .await
        .unwrap();
    let fixed = json!({"to": "ada@example.com", "n": [1, 2.5, null]});
    let retried = store
        .job_retry(JobRetry {
            id: job.id,
            args: Some(fixed.clone()),
            now,
        })
        .await
        .unwrap();
    assert_eq!(retried.args, fixed);
    assert_eq!(retried.state, JobState::Available);
    assert_eq!(get(&store, job.id).await.args, fixed);
    assert_eq!(retried.errors.len(), 1, "the history stays");
    let found = store
        .jobs_list(JobsList {
            limit: 10,
            args: Some(ArgsMatch {
                path: vec!["to".into()],
                value: json!("ada@example.com"),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.jobs.len(), 1);
}
