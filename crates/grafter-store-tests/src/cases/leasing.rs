//! Leasing: what the fetch hands out and in which order, and what a lease lets
//! its worker do (complete, batch ack, fail, heartbeat, release), fenced by the
//! lease token.

use std::collections::HashSet;

use grafter_core::{Backoff, Job, JobId, JobState, LeasedJob, NewJob, Progress};
use grafter_store::preview::json_len;
use grafter_store::transitions::TIMED_OUT;
use grafter_store::{
    AckOutcome, JobCancel, JobRelease, JobsCompleteMany, JobsFetch, JobsRescue, MaintenanceBatch,
    QueuePause, StoreError,
};
use serde_json::json;

use super::{
    complete_params, fail_params, fetch, fetch_params, get, heartbeat_params, insert, insert_one,
    ms, no_jitter, t0, S,
};

fn assert_lease_mismatch(result: Result<Job, StoreError>, id: JobId) {
    match result {
        Err(StoreError::LeaseMismatch { id: got, .. }) => assert_eq!(got, id),
        other => panic!("expected LeaseMismatch for job {id}, got {other:?}"),
    }
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
    assert_eq!(store.jobs_schedule(batch).await.unwrap().moved, 1);
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
    let back = store.job_release(release(&leased[0], now)).await.unwrap();
    assert_eq!(back.state, JobState::Available);
    assert_eq!(back.attempt, 0);
    assert!(back.lease_expires_at.is_none());
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
    let running = AckOutcome::LeaseMismatch {
        state: JobState::Running,
        attempt: 1,
    };
    assert_eq!(
        done,
        [
            AckOutcome::Completed,
            running,
            AckOutcome::Completed,
            AckOutcome::Completed,
            AckOutcome::Completed,
            AckOutcome::NotFound
        ],
        "each item says what it came to, and why not"
    );
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
/// that holds the lease completes it (with its result), the rest find the
/// job completed. Results of every JSON shape come back as they were sent.
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
    let completed = AckOutcome::LeaseMismatch {
        state: JobState::Completed,
        attempt: 1,
    };
    use AckOutcome::Completed as Done;
    assert_eq!(
        done,
        [Done, completed, completed, Done, Done, Done, Done, Done, completed]
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
        [completed]
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

/// A fetch stops before the job whose args would take it past its byte
/// budget, in hand-out order, and always leases one job however large: a
/// fetch of a thousand large jobs must not answer gigabytes.
pub async fn fetch_stops_at_the_byte_budget(store: S) {
    let now = t0();
    let big = || NewJob::new("big", json!({"blob": "x".repeat(100_000)}));
    let size = json_len(&big().args);
    let mut small = NewJob::new("small", json!({}));
    small.priority = 1;
    let jobs = vec![big(), big(), big(), big(), big(), small];
    insert(&store, jobs, now).await;
    let within = |max_bytes: usize| JobsFetch {
        max_bytes,
        ..fetch_params("default", 1000, now)
    };
    let kinds = |leased: Vec<LeasedJob>| leased.into_iter().map(|l| l.job.kind).collect::<Vec<_>>();

    let three = store.jobs_fetch(within(size * 7 / 2)).await.unwrap();
    assert_eq!(
        kinds(three),
        ["big", "big", "big"],
        "the fourth would pass the budget"
    );
    let one = store.jobs_fetch(within(1)).await.unwrap();
    assert_eq!(kinds(one), ["big"], "one job whatever its size");
    let exact = size + json_len(&json!({}));
    let last = store.jobs_fetch(within(exact)).await.unwrap();
    assert_eq!(
        kinds(last),
        ["big", "small"],
        "a budget met exactly holds both"
    );

    // The fetches of several queues and with a running limit keep it too.
    let on = |queue: &str| NewJob {
        queue: queue.into(),
        ..big()
    };
    insert(&store, vec![on("a"), on("a"), on("b"), on("b")], now).await;
    let several = JobsFetch {
        queues: vec!["a".into(), "b".into()],
        ..within(size * 3 / 2)
    };
    assert_eq!(store.jobs_fetch(several).await.unwrap().len(), 1);
    let limited = JobsFetch {
        queues: vec!["b".into()],
        running_limit: Some(10),
        ..within(size * 3 / 2)
    };
    assert_eq!(store.jobs_fetch(limited).await.unwrap().len(), 1);
}
