//! The engine on each store: the same input has the same outcome on every
//! backend (NUL, times out of range), no stored value can stop the rescue of
//! expired leases, and new work wakes only the fetches of its queue. Time is
//! the engine's manual clock, moved by hand.

use std::time::Duration;

use grafter_core::{time, JobState, NewJob, Progress, Timestamp};
use grafter_engine::{
    Ack, AckOutcome, Clock, Engine, EngineConfig, Error, FetchRequest, Outcome, Retry, When,
};
use grafter_store::{JobsRescue, StoreError, Waiter};
use serde_json::json;

use super::{get, insert, no_jitter, t0, S};

pub(super) fn engine(store: &S, now: Timestamp) -> (Engine, Clock) {
    let clock = Clock::manual(now);
    let config = EngineConfig {
        retry: no_jitter(),
        ..EngineConfig::default()
    };
    (
        Engine::new(store.clone(), config).with_clock(clock.clone()),
        clock,
    )
}

pub(super) fn fetch(queue: &str, max: usize, lease_ms: u64) -> FetchRequest {
    FetchRequest {
        queues: vec![queue.into()],
        max,
        wait: Duration::ZERO,
        lease: Some(Duration::from_millis(lease_ms)),
        worker_id: Some("w".into()),
        running_limit: None,
    }
}

pub(super) fn refused(result: Result<impl std::fmt::Debug, Error>, field: &str) {
    match result {
        Err(Error::Invalid(e)) => assert_eq!(e.field, field, "{e}"),
        other => panic!("expected {field} to be refused, got {other:?}"),
    }
}

async fn woken(waiter: &Waiter) -> bool {
    tokio::time::timeout(Duration::from_millis(200), waiter.woken())
        .await
        .is_ok()
}

/// A waiter on `queue` that has stayed asleep for a moment: a PostgreSQL
/// listener wakes every waiter once it is up, and the harness sees it up (in
/// `pg_stat_activity`) a little before that wake, so a waiter taken at once
/// could be woken by it and fail an assertion that nothing woke it.
async fn settled_waiter(store: &S, queue: &str) -> Waiter {
    loop {
        let waiter = store.wakeups().waiter(&[queue.to_owned()]);
        if !woken(&waiter).await {
            return waiter;
        }
    }
}

/// A job with a timeout, a run time and a deadline at the ends of what is
/// accepted, and rows stored before the ranges were checked (written straight
/// to the store): none of them stops an ordinary job's expired lease from
/// being rescued in the same pass, and the values out of range are refused
/// with the field named.
pub async fn extreme_values_cannot_stop_recovery(store: S) {
    let now = t0();
    let (engine, clock) = engine(&store, now);
    let mut longest = NewJob::new("longest", json!({}));
    longest.timeout_ms = Some(time::MAX_DURATION_MS as i64);
    longest.expires_at = Some(time::latest());
    engine.enqueue(longest).await.unwrap();
    let mut shortest = NewJob::new("shortest", json!({}));
    shortest.timeout_ms = Some(1);
    engine.enqueue(shortest).await.unwrap();
    let mut far = NewJob::new("far", json!({}));
    far.run_at = Some(time::latest());
    assert_eq!(
        engine.enqueue(far).await.unwrap().job.state,
        JobState::Scheduled
    );
    let mut early = NewJob::new("early", json!({}));
    early.run_at = Some(time::earliest());
    engine.enqueue(early).await.unwrap();

    for (field, job) in [
        (
            "timeout_ms",
            NewJob {
                timeout_ms: Some(i64::MAX),
                ..NewJob::new("x", json!({}))
            },
        ),
        (
            "timeout_ms",
            NewJob {
                timeout_ms: Some(0),
                ..NewJob::new("x", json!({}))
            },
        ),
        (
            "run_at",
            NewJob {
                run_at: Some(Timestamp::MIN_UTC),
                ..NewJob::new("x", json!({}))
            },
        ),
        (
            "expires_at",
            NewJob {
                expires_at: Some(Timestamp::MAX_UTC),
                ..NewJob::new("x", json!({}))
            },
        ),
    ] {
        refused(engine.enqueue(job).await, field);
    }
    let delay = engine
        .reschedule(grafter_core::JobId(1), When::At(Timestamp::MIN_UTC))
        .await;
    refused(delay, "run_at");

    // Rows from before the checks: stored as they came.
    let mut legacy = NewJob::new("legacy", json!({}));
    legacy.timeout_ms = Some(i64::MAX);
    let mut legacy_late = NewJob::new("legacy_late", json!({}));
    legacy_late.expires_at = Some(Timestamp::MAX_UTC);
    legacy_late.timeout_ms = Some(i64::MIN);
    insert(&store, vec![legacy, legacy_late], now).await;
    engine
        .enqueue(NewJob::new("ordinary", json!({})))
        .await
        .unwrap();

    let leased = engine
        .fetch(fetch("default", 100, 1_000), async {})
        .await
        .unwrap();
    assert_eq!(
        leased.len(),
        6,
        "every due job is leased, whatever its values"
    );
    for l in &leased {
        let expires = l.job.lease_expires_at.expect("a lease");
        assert!(
            expires >= now && expires <= time::after(now, Duration::from_secs(1)),
            "{:?}",
            l.job
        );
    }

    clock.advance(Duration::from_secs(2));
    let rescued = store
        .jobs_rescue_expired(JobsRescue {
            now: engine.now(),
            limit: 100,
            backoff: no_jitter(),
        })
        .await
        .expect("a rescue pass over these rows succeeds");
    assert_eq!(rescued, 6);
    let ordinary = leased.iter().find(|l| l.job.kind == "ordinary").unwrap();
    let job = get(&store, ordinary.job.id).await;
    assert_eq!(job.state, JobState::Retryable);
    assert_eq!(job.errors[0].error, "lease expired");
    let shortest = leased.iter().find(|l| l.job.kind == "shortest").unwrap();
    assert_eq!(
        get(&store, shortest.job.id).await.errors[0].error,
        "timed out"
    );
}

/// NUL, which PostgreSQL cannot store, and times it cannot hold: refused the
/// same way on every store when they would be stored as given, and replaced
/// in the reports of finished work, which are never lost for their text.
pub async fn the_same_input_has_the_same_outcome_on_every_store(store: S) {
    let now = t0();
    let (engine, _clock) = engine(&store, now);
    refused(
        engine
            .enqueue(NewJob::new("k", json!({"to": "a\u{0}b"})))
            .await,
        "args",
    );
    refused(
        engine
            .enqueue_many(vec![
                NewJob::new("k", json!({})),
                NewJob::new("k", json!(["\u{0}"])),
            ])
            .await,
        "jobs[1].args",
    );
    refused(
        engine.enqueue(NewJob::new("k\u{0}", json!({}))).await,
        "kind",
    );
    let mut ancient = NewJob::new("k", json!({}));
    ancient.run_at = Some(Timestamp::MIN_UTC);
    refused(engine.enqueue(ancient).await, "run_at");
    let mut bad_worker = fetch("default", 1, 30_000);
    bad_worker.worker_id = Some("w\u{0}".into());
    refused(engine.fetch(bad_worker, async {}).await, "worker_id");
    let mut nul_queue = fetch("default", 1, 30_000);
    nul_queue.queues = vec!["\u{0}".into()];
    refused(engine.fetch(nul_queue, async {}).await, "queues");

    for i in 0..4 {
        engine
            .enqueue(NewJob::new("k", json!({"n": i})))
            .await
            .unwrap();
    }
    let leased = engine
        .fetch(fetch("default", 4, 30_000), async {})
        .await
        .unwrap();
    assert_eq!(leased.len(), 4);

    let progress = Progress {
        fraction: 0.5,
        message: Some("half\u{0}way".into()),
    };
    let beat = engine
        .heartbeat(leased[0].job.id, &leased[0].lease, Some(progress), None)
        .await
        .unwrap();
    assert_eq!(
        beat.progress.unwrap().message.as_deref(),
        Some("half\u{FFFD}way")
    );
    let result = json!({"r": "a\u{0}b", "k\u{0}": [1, "\u{0}"]});
    let done = engine
        .record(
            leased[0].job.id,
            &leased[0].lease,
            Outcome::Completed {
                result: Some(result),
            },
        )
        .await
        .expect("a finished job's outcome is recorded whatever its text");
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(
        done.result,
        Some(json!({"r": "a\u{FFFD}b", "k\u{FFFD}": [1, "\u{FFFD}"]}))
    );

    let failed = engine
        .record(
            leased[1].job.id,
            &leased[1].lease,
            Outcome::Failed {
                error: "bad \u{0} byte".into(),
                retry: Retry::Never,
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.state, JobState::Dead);
    assert_eq!(failed.errors[0].error, "bad \u{FFFD} byte");

    let acks = vec![
        Ack {
            id: leased[2].job.id,
            lease: leased[2].lease.clone(),
            result: Some(json!("x\u{0}")),
        },
        Ack {
            id: leased[3].job.id,
            lease: "\u{0}".into(),
            result: None,
        },
    ];
    let outcomes = engine.complete_many(acks).await.unwrap();
    assert_eq!(outcomes[0], AckOutcome::Completed);
    assert_eq!(
        outcomes[1],
        AckOutcome::LeaseMismatch {
            state: JobState::Running,
            attempt: 1
        },
        "a lease holding NUL is simply not the job's"
    );
    assert_eq!(
        get(&store, leased[2].job.id).await.result,
        Some(json!("x\u{FFFD}"))
    );
    match engine
        .record(
            leased[3].job.id,
            "\u{0}",
            Outcome::Completed { result: None },
        )
        .await
    {
        Err(Error::Store(StoreError::LeaseMismatch { .. })) => {}
        other => panic!("a NUL lease answers a lease mismatch, got {other:?}"),
    }
}

/// A batch's jobs and callbacks drop a malformed trace context as a job
/// enqueued alone does (tracing is advice): PostgreSQL answered a NUL in one
/// with an error, SQLite stored it.
pub async fn a_batch_drops_a_malformed_trace_context_as_an_enqueue_does(store: S) {
    let now = t0();
    let (engine, _clock) = engine(&store, now);
    let traced = |kind: &str, parent: &str, state: &str| NewJob {
        traceparent: Some(parent.into()),
        tracestate: Some(state.into()),
        ..NewJob::new(kind, json!({}))
    };
    let created = engine
        .batch_create(grafter_engine::NewBatch {
            jobs: vec![traced("a", "garbage", "zz"), traced("b", "\u{0}", "\u{0}x")],
            open: true,
            callbacks: grafter_core::BatchCallbacks {
                on_complete: Some(traced("c", "\u{0}", "x")),
                ..Default::default()
            },
        })
        .await
        .expect("created, the trace contexts dropped");
    let added = engine
        .batch_add(created.batch.id, vec![traced("d", "junk", "\u{0}")])
        .await
        .expect("added, the trace context dropped");
    for job in created.jobs.iter().chain(&added.jobs) {
        let job = get(&store, job.id).await;
        assert_eq!(
            (job.traceparent, job.tracestate),
            (None, None),
            "{}",
            job.kind
        );
    }
}

/// New work wakes the fetches waiting on its queue and no others: an
/// enqueue, a release, a retry, a scheduled job coming due, a resumed queue.
pub async fn work_wakes_only_the_fetches_of_its_queue(store: S) {
    let now = t0();
    let (engine, clock) = engine(&store, now);
    let mail = settled_waiter(&store, "mail").await;
    let reports = settled_waiter(&store, "reports").await;
    let on = |queue: &str| NewJob {
        queue: queue.into(),
        ..NewJob::new("k", json!({}))
    };

    let job = engine.enqueue(on("mail")).await.unwrap().job;
    assert!(woken(&mail).await, "an enqueue wakes its queue's fetches");
    assert!(!woken(&reports).await, "and no other queue's");

    let leased = engine
        .fetch(fetch("mail", 1, 30_000), async {})
        .await
        .unwrap()
        .remove(0);
    engine
        .record(
            job.id,
            &leased.lease,
            Outcome::Released { run_at: When::Now },
        )
        .await
        .unwrap();
    assert!(woken(&mail).await, "a job handed back wakes its queue");

    let mut later = on("reports");
    later.run_at = Some(time::after(now, Duration::from_secs(10)));
    engine.enqueue(later).await.unwrap();
    assert!(!woken(&reports).await, "a job for later wakes nobody yet");
    clock.advance(Duration::from_secs(10));
    assert_eq!(engine.schedule_due(100).await.unwrap(), 1);
    assert!(woken(&reports).await, "coming due wakes its queue");
    assert!(!woken(&mail).await);

    engine.queue_pause("mail", true).await.unwrap();
    engine.queue_pause("mail", false).await.unwrap();
    assert!(woken(&mail).await, "a resumed queue wakes its fetches");
    assert!(!woken(&reports).await);

    let waiting_fetch = || {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut request = fetch("reports", 10, 30_000);
            request.wait = Duration::from_secs(20);
            engine.fetch(request, std::future::pending()).await
        })
    };
    // The scheduled job is there already: the fetch takes it at once.
    assert_eq!(waiting_fetch().await.unwrap().unwrap().len(), 1);
    let waiting_fetch = waiting_fetch();
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.enqueue(on("reports")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting_fetch)
        .await
        .expect("a waiting fetch wakes for its queue's new job")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
}
