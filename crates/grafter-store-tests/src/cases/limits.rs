//! Flow control: a queue's concurrency and rate limits, for the queue or per
//! partition, hold under racing fetches, free a slot only when a fenced
//! transition ends the running job, count starts in an exact sliding window,
//! never let one partition block another, and say what holds a job back.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use grafter_core::limits::MAX_PARTITION_CHARS;
use grafter_core::{HeldReason, JobState, NewJob, QueueLimits, Timestamp};
use grafter_engine::{Clock, Engine, EngineConfig, FetchRequest, Outcome, Retry};
use grafter_store::{
    JobCancel, JobRelease, JobsFetch, JobsRescue, LimitUsageQuery, QueueLimitsSet, QueuePush,
    StoreError,
};
use serde_json::{json, Value};

use super::{complete_params, fail_params, fetch, fetch_params, get, insert, ms, no_jitter, t0, S};

fn limits(value: Value) -> QueueLimits {
    let limits: QueueLimits = serde_json::from_value(value).unwrap();
    limits.validate().unwrap();
    limits
}

async fn set_limits(store: &S, queue: &str, value: Option<Value>, now: Timestamp) {
    store
        .queue_set_limits(QueueLimitsSet {
            queue: queue.into(),
            limits: value.map(limits),
            now,
        })
        .await
        .unwrap();
}

/// The running jobs of each of `queue`'s partitions, by name.
async fn running_per_partition(store: &S, queue: &str, now: Timestamp) -> HashMap<String, u64> {
    let usage = store.queue_limit_usage(LimitUsageQuery {
        queue: queue.into(),
        job: None,
        now,
    });
    let partitions = usage.await.unwrap().partitions;
    partitions
        .into_iter()
        .map(|p| (p.partition, p.running))
        .collect()
}

async fn running(store: &S, queue: &str, now: Timestamp) -> u64 {
    running_per_partition(store, queue, now)
        .await
        .values()
        .sum()
}

fn jobs_on(queue: &str, n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|i| {
            let mut job = NewJob::new("k", json!({"i": i}));
            job.queue = queue.into();
            job
        })
        .collect()
}

fn engine(store: &S, now: Timestamp) -> (Engine, Clock) {
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

/// What eight fetches of up to 2 jobs of queue "q", started at once, leased.
async fn eight_racing_fetches_of_two(store: &S, now: Timestamp) -> Vec<grafter_core::LeasedJob> {
    let racing: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.jobs_fetch(fetch_params("q", 2, now)).await })
        })
        .collect();
    let mut leased = Vec::new();
    for task in racing {
        leased.extend(task.await.unwrap().unwrap());
    }
    leased
}

/// Eight fetches at once, again and again as jobs finish, on a queue limited
/// to 3: never more than 3 running, and each round fills the free slots.
pub async fn concurrency_is_never_exceeded_by_racing_fetches(store: S) {
    let now = t0();
    set_limits(&store, "q", Some(json!({"concurrency": 3})), now).await;
    insert(&store, jobs_on("q", 60), now).await;
    let mut done = 0;
    while done < 60 {
        // Spawned all before any is awaited, so the fetches really race.
        let racing: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.jobs_fetch(fetch_params("q", 2, now)).await })
            })
            .collect();
        let mut leased = Vec::new();
        for task in racing {
            leased.extend(task.await.unwrap().unwrap());
        }
        let before = running(&store, "q", now).await;
        assert_eq!(
            leased.len(),
            3.min(60 - done),
            "each round fills the free slots"
        );
        assert_eq!(before as usize, leased.len());
        // One ends by failing for good, the others complete: both free a slot.
        for (i, l) in leased.iter().enumerate() {
            if i == 0 {
                let mut dead = fail_params(l, "no", now);
                dead.retry = false;
                store.job_fail(dead).await.unwrap();
            } else {
                store.job_complete(complete_params(l, now)).await.unwrap();
            }
            done += 1;
        }
        assert_eq!(running(&store, "q", now).await, 0);
    }
}

/// Racing fetches on a queue limited per partition: no partition ever runs
/// more than its limit, each round fills every partition's free slots, and a
/// fetch whose look meets a partition filling up looks again past it.
pub async fn partition_concurrency_is_never_exceeded_by_racing_fetches(store: S) {
    let now = t0();
    let per = json!({"concurrency": 2, "partition_by": "partition"});
    set_limits(&store, "q", Some(per), now).await;
    let job = |partition: &str| {
        let mut job = NewJob::new("k", json!({}));
        job.queue = "q".into();
        job.partition = Some(partition.into());
        job
    };
    // In hand-out order: five of a, then b and c taking turns.
    let mut jobs: Vec<NewJob> = (0..5).map(|_| job("a")).collect();
    jobs.extend((0..20).map(|i| job(if i % 2 == 0 { "b" } else { "c" })));
    insert(&store, jobs, now).await;
    let got = fetch(&store, "q", 3, now).await;
    let partitions: Vec<_> = got.iter().filter_map(|l| l.job.partition.clone()).collect();
    assert_eq!(partitions, ["a", "a", "b"], "past a's third job to b's");
    for l in &got {
        store.job_complete(complete_params(l, now)).await.unwrap();
    }
    let mut waiting: HashMap<String, usize> =
        [("a".into(), 3), ("b".into(), 9), ("c".into(), 10)].into();
    while waiting.values().any(|&n| n > 0) {
        let leased = eight_racing_fetches_of_two(&store, now).await;
        let mut per_partition: HashMap<String, usize> = HashMap::new();
        for l in &leased {
            *per_partition
                .entry(l.job.partition.clone().unwrap_or_default())
                .or_default() += 1;
        }
        let running = running_per_partition(&store, "q", now).await;
        for (partition, left) in &mut waiting {
            let took = per_partition.get(partition).copied().unwrap_or(0);
            assert_eq!(took, 2.min(*left), "partition {partition} fills its slots");
            assert_eq!(running.get(partition).copied().unwrap_or(0) as usize, took);
            *left -= took;
        }
        for l in &leased {
            store.job_complete(complete_params(l, now)).await.unwrap();
        }
    }
}

/// A worker whose lease was rescued acks late: the ack is refused, the slot
/// its job held was freed once (by the rescue), and the count of running jobs
/// is neither above the limit nor below zero.
pub async fn a_zombie_ack_after_rescue_changes_no_count(store: S) {
    let now = t0();
    set_limits(&store, "q", Some(json!({"concurrency": 1})), now).await;
    insert(&store, jobs_on("q", 3), now).await;
    let mut short = fetch_params("q", 5, now);
    short.lease_duration = Duration::from_secs(1);
    let zombie = store.jobs_fetch(short).await.unwrap();
    assert_eq!(zombie.len(), 1);
    assert!(
        fetch(&store, "q", 5, now).await.is_empty(),
        "the slot is held"
    );
    let later = now + ms(2_000);
    assert!(
        fetch(&store, "q", 5, later).await.is_empty(),
        "an expired lease still holds its slot until it is rescued"
    );
    let rescued = store
        .jobs_rescue_expired(JobsRescue {
            now: later,
            limit: 10,
            backoff: no_jitter(),
        })
        .await
        .unwrap();
    assert_eq!(rescued, 1);
    let next = fetch(&store, "q", 5, later).await;
    assert_eq!(next.len(), 1, "the rescue freed the slot");
    let late = store.job_complete(complete_params(&zombie[0], later)).await;
    assert!(
        matches!(late, Err(StoreError::LeaseMismatch { .. })),
        "{late:?}"
    );
    let late = store
        .jobs_complete_many(grafter_store::JobsCompleteMany {
            items: vec![(zombie[0].job.id, zombie[0].lease.clone(), None)],
            now: later,
        })
        .await
        .unwrap();
    assert!(late[0] != grafter_store::AckOutcome::Completed);
    assert_eq!(running(&store, "q", later).await, 1);
    assert!(
        fetch(&store, "q", 5, later).await.is_empty(),
        "still 1 of 1"
    );
    store
        .job_complete(complete_params(&next[0], later))
        .await
        .unwrap();
    assert_eq!(running(&store, "q", later).await, 0);
    assert_eq!(fetch(&store, "q", 5, later).await.len(), 1, "not two");
}

/// 10 starts per second, a sliding window: at most 10 in any window of one
/// second wherever it falls, including across the edges of the windows the
/// fetches happened to look at. A start counts once it happened, even if its
/// job failed and started again (the log is not the jobs' `attempted_at`).
pub async fn rate_window_is_exact_across_edges(store: S) {
    let now = t0();
    let rate = json!({"rate": {"count": 10, "period_ms": 1000}});
    set_limits(&store, "q", Some(rate), now).await;
    insert(&store, jobs_on("q", 100), now).await;
    let mut starts: Vec<DateTime<Utc>> = Vec::new();
    let take = |at_ms: i64, max: usize, expect: usize| {
        let store = store.clone();
        async move {
            let at = now + ms(at_ms);
            let got = fetch(&store, "q", max, at).await;
            assert_eq!(got.len(), expect, "at +{at_ms} ms");
            (at, got)
        }
    };
    let (at, first) = take(0, 4, 4).await;
    starts.extend(std::iter::repeat_n(at, 4));
    // One of them fails and is retried at once: its second start counts too.
    store.job_fail(JobFailAt::now(&first[0], at)).await.unwrap();
    let due = grafter_store::MaintenanceBatch { now: at, limit: 10 };
    assert_eq!(store.jobs_schedule(due).await.unwrap().moved, 1);
    let (at, got) = take(300, 10, 6).await;
    assert!(got.iter().any(|l| l.job.id == first[0].job.id), "retried");
    starts.extend(std::iter::repeat_n(at, 6));
    take(999, 10, 0).await;
    // At +1000 the starts at +0 have left the window (it is (t - 1 s, t]).
    let (at, got) = take(1000, 10, 4).await;
    starts.extend(std::iter::repeat_n(at, got.len()));
    take(1299, 10, 0).await;
    let (at, got) = take(1300, 10, 6).await;
    starts.extend(std::iter::repeat_n(at, got.len()));
    let (at, got) = take(5000, 3, 3).await;
    starts.extend(std::iter::repeat_n(at, got.len()));
    let (at, got) = take(5001, 20, 7).await;
    starts.extend(std::iter::repeat_n(at, got.len()));
    // Every window of one second, starting at any start (the worst place).
    for &from in &starts {
        let within = starts
            .iter()
            .filter(|&&s| s >= from && s < from + ms(1000))
            .count();
        assert!(within <= 10, "{within} starts in the second from {from}");
    }
}

/// A fetch whose clock was read before another fetch went ahead of it (it
/// waited for a connection or for the queue's lock) still counts the starts
/// of its own window, though the other's window had left them behind.
pub async fn a_fetch_with_an_earlier_clock_still_counts_its_window(store: S) {
    let now = t0();
    let rate = json!({"rate": {"count": 10, "period_ms": 1000}});
    set_limits(&store, "q", Some(rate), now).await;
    insert(&store, jobs_on("q", 10), now).await;
    assert_eq!(fetch(&store, "q", 10, now + ms(1000)).await.len(), 10);
    // Nothing to lease at +2000, where the starts at +1000 are out of the window.
    assert!(fetch(&store, "q", 10, now + ms(2000)).await.is_empty());
    insert(&store, jobs_on("q", 10), now).await;
    let late = fetch(&store, "q", 10, now + ms(1500)).await;
    assert!(
        late.is_empty(),
        "the window (+500, +1500] already holds 10 starts, yet {} more started",
        late.len()
    );
}

/// A failed attempt retried at once, as a worker's `retry_at` does.
struct JobFailAt;

impl JobFailAt {
    fn now(leased: &grafter_core::LeasedJob, at: Timestamp) -> grafter_store::JobFail {
        let mut fail = fail_params(leased, "again", at);
        fail.retry_at = Some(at);
        fail
    }
}

/// A partition at its limit with many jobs waiting ahead does not keep the
/// other partitions' jobs from starting at once; within a partition,
/// priority then age.
pub async fn a_full_partition_never_blocks_another(store: S) {
    let now = t0();
    let by_customer = json!({"concurrency": 2, "partition_by": "args.customer.id"});
    set_limits(&store, "q", Some(by_customer), now).await;
    let customer = |id: Value, priority: i16| {
        let mut job = NewJob::new("k", json!({"customer": {"id": id}}));
        job.queue = "q".into();
        job.priority = priority;
        job
    };
    let mut jobs: Vec<NewJob> = (0..500).map(|_| customer(json!("a"), 0)).collect();
    jobs.push(customer(json!("a"), -1));
    jobs.push(customer(json!("b"), 5));
    jobs.push(customer(json!(7), 5));
    let inserted = insert(&store, jobs, now).await;
    let first_a = inserted[0].id;
    let urgent_a = inserted[500].id;
    let got = fetch(&store, "q", 10, now).await;
    let ids: HashSet<_> = got.iter().map(|l| l.job.id).collect();
    assert_eq!(got.len(), 4, "two of a, one of b, one of 7");
    assert!(
        ids.contains(&urgent_a) && ids.contains(&first_a),
        "priority, then age"
    );
    assert!(ids.contains(&inserted[501].id) && ids.contains(&inserted[502].id));
    assert!(fetch(&store, "q", 10, now).await.is_empty());
    // A new customer's job starts at once, behind 499 waiting for a.
    let c = insert(&store, vec![customer(json!("c"), 9)], now).await;
    let got = fetch(&store, "q", 10, now).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, c[0].id);
    let usage = store
        .queue_limit_usage(LimitUsageQuery {
            queue: "q".into(),
            job: None,
            now,
        })
        .await
        .unwrap();
    let per: Vec<(&str, u64)> = usage
        .partitions
        .iter()
        .map(|p| (p.partition.as_str(), p.running))
        .collect();
    assert_eq!(per, [("7", 1), ("a", 2), ("b", 1), ("c", 1)]);
}

/// A partition value longer than [`MAX_PARTITION_CHARS`] counts by its
/// first characters, under a rate (whose starts the store keeps in an
/// index) as under a concurrency: two values alike that far share one
/// partition, and a fetch naming the queue with another leases from both.
pub async fn a_long_partition_value_counts_by_its_first_characters(store: S) {
    let now = t0();
    let one_each = [
        (
            "rated",
            json!({"rate": {"count": 1, "period_ms": 60_000}, "partition_by": "args.c"}),
        ),
        (
            "capped",
            json!({"concurrency": 1, "partition_by": "args.c"}),
        ),
    ];
    let head = "é".repeat(MAX_PARTITION_CHARS);
    for (queue, limit) in one_each {
        set_limits(&store, queue, Some(limit), now).await;
        let jobs: Vec<NewJob> = [
            format!("{head}{}", "x".repeat(3000)),
            format!("{head}y"),
            "z".into(),
        ]
        .into_iter()
        .map(|c| {
            let mut job = NewJob::new("k", json!({ "c": c }));
            job.queue = queue.into();
            job
        })
        .collect();
        insert(&store, jobs, now).await;
    }
    insert(&store, jobs_on("plain", 1), now).await;
    let mut params = fetch_params("plain", 10, now);
    params.queues = vec!["plain".into(), "rated".into(), "capped".into()];
    let got = store.jobs_fetch(params).await.unwrap();
    let per_queue = |queue: &str| got.iter().filter(|l| l.job.queue == queue).count();
    assert_eq!(
        (per_queue("plain"), per_queue("rated"), per_queue("capped")),
        (1, 2, 2),
        "one of the two long values and z, in each limited queue"
    );
    for queue in ["rated", "capped"] {
        let running = running_per_partition(&store, queue, now).await;
        assert_eq!(running.get(&head), Some(&1), "{queue}: {running:?}");
        assert_eq!(running.get("z"), Some(&1), "{queue}: {running:?}");
    }
}

/// Numbers are partitions by their JSON text, on every store: 0.3 and
/// 0.30000000000000004 are two (SQLite's REAL printed with 15 digits made
/// them one), and a second 0.3 waits behind the first.
pub async fn number_partitions_are_told_apart_by_their_json_text(store: S) {
    let now = t0();
    let by_c = json!({"concurrency": 1, "partition_by": "args.c"});
    set_limits(&store, "n", Some(by_c), now).await;
    let jobs: Vec<NewJob> = [json!(0.3), json!(0.30000000000000004), json!(0.3)]
        .into_iter()
        .map(|c| {
            let mut job = NewJob::new("k", json!({ "c": c }));
            job.queue = "n".into();
            job
        })
        .collect();
    let inserted = insert(&store, jobs, now).await;
    let got = fetch(&store, "n", 10, now).await;
    let ids: HashSet<_> = got.iter().map(|l| l.job.id).collect();
    assert_eq!(ids, HashSet::from([inserted[0].id, inserted[1].id]));
    let running = running_per_partition(&store, "n", now).await;
    assert_eq!(running.get("0.3"), Some(&1), "{running:?}");
    assert_eq!(running.get("0.30000000000000004"), Some(&1), "{running:?}");
}

/// `partition_by: "partition"` limits each job's own `partition` apart; jobs
/// without one share the unnamed partition. Rates are per partition too.
pub async fn partition_field_limits_each_partition(store: S) {
    let now = t0();
    let per = json!({"rate": {"count": 2, "period_ms": 60000}, "partition_by": "partition"});
    set_limits(&store, "q", Some(per), now).await;
    let job = |partition: Option<&str>| {
        let mut job = NewJob::new("k", json!({}));
        job.queue = "q".into();
        job.partition = partition.map(str::to_owned);
        job
    };
    let jobs = [Some("x"), Some("x"), Some("x"), Some("y"), None, None, None]
        .into_iter()
        .map(job)
        .collect();
    let inserted = insert(&store, jobs, now).await;
    assert_eq!(inserted[0].partition.as_deref(), Some("x"));
    assert_eq!(get(&store, inserted[4].id).await.partition, None);
    let got = fetch(&store, "q", 10, now).await;
    let mut partitions: Vec<Option<String>> = got.iter().map(|l| l.job.partition.clone()).collect();
    partitions.sort();
    assert_eq!(
        partitions,
        [
            None,
            None,
            Some("x".into()),
            Some("x".into()),
            Some("y".into())
        ]
    );
    assert!(fetch(&store, "q", 10, now + ms(59_999)).await.is_empty());
    assert_eq!(fetch(&store, "q", 10, now + ms(60_000)).await.len(), 2);
}

/// A running job's slot frees only when its worker's fenced report ends it:
/// a cancel request alone does not (the job still runs), the worker's
/// answer to it does; a release and a delete free it too.
pub async fn cancel_release_and_delete_free_a_slot(store: S) {
    let now = t0();
    set_limits(&store, "q", Some(json!({"concurrency": 1})), now).await;
    insert(&store, jobs_on("q", 4), now).await;
    let a = fetch(&store, "q", 5, now).await;
    assert_eq!(a.len(), 1);
    let asked = store
        .job_cancel(JobCancel {
            id: a[0].job.id,
            now,
        })
        .await
        .unwrap();
    assert!(asked.cancel_requested);
    assert!(fetch(&store, "q", 5, now).await.is_empty(), "still running");
    let cancelled = store
        .job_release(JobRelease {
            id: a[0].job.id,
            lease: a[0].lease.clone(),
            run_at: now,
            now,
        })
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let b = fetch(&store, "q", 5, now).await;
    assert_eq!(b.len(), 1, "the cancel freed the slot");
    store
        .job_release(JobRelease {
            id: b[0].job.id,
            lease: b[0].lease.clone(),
            run_at: now,
            now,
        })
        .await
        .unwrap();
    let c = fetch(&store, "q", 5, now).await;
    assert_eq!(c.len(), 1, "the release freed the slot");
    store.job_delete(c[0].job.id).await.unwrap();
    assert_eq!(
        fetch(&store, "q", 5, now).await.len(),
        1,
        "so did the delete"
    );
}

/// Lowering a limit below what runs stops nothing (the running jobs
/// heartbeat and complete) and admits no more until below it; removing it
/// makes the queue an ordinary one again.
pub async fn lowering_a_limit_stops_nothing(store: S) {
    let now = t0();
    set_limits(&store, "q", Some(json!({"concurrency": 5})), now).await;
    insert(&store, jobs_on("q", 20), now).await;
    let five = fetch(&store, "q", 10, now).await;
    assert_eq!(five.len(), 5);
    set_limits(&store, "q", Some(json!({"concurrency": 2})), now).await;
    assert!(fetch(&store, "q", 10, now).await.is_empty());
    for l in &five[..3] {
        store
            .job_heartbeat(super::heartbeat_params(l, now))
            .await
            .unwrap();
        store.job_complete(complete_params(l, now)).await.unwrap();
    }
    assert!(fetch(&store, "q", 10, now).await.is_empty(), "2 of 2");
    store
        .job_complete(complete_params(&five[3], now))
        .await
        .unwrap();
    assert_eq!(fetch(&store, "q", 10, now).await.len(), 1);
    set_limits(&store, "q", None, now).await;
    assert!(!store.limited().contains("q"));
    assert_eq!(fetch(&store, "q", 100, now).await.len(), 14);
}

/// Limits are kept with the queue, listed, and removed by `None`, leaving
/// its other settings; the store's view of limited queues follows.
pub async fn limits_are_kept_listed_and_removed(store: S) {
    let now = t0();
    let target = grafter_core::PushTarget {
        url: "https://app.example.com/jobs".into(),
        secret: "s".repeat(16),
        old_secrets: Vec::new(),
        timeout_ms: 1_000,
        concurrency: 3,
        headers: Default::default(),
        signing: Default::default(),
    };
    store
        .queue_set_push(QueuePush {
            queue: "q".into(),
            push: Some(target.clone()),
            now,
        })
        .await
        .unwrap();
    let set = json!({"concurrency": 4, "rate": {"count": 9, "period_ms": 100}});
    let info = store
        .queue_set_limits(QueueLimitsSet {
            queue: "q".into(),
            limits: Some(limits(set.clone())),
            now,
        })
        .await
        .unwrap();
    assert_eq!(info.limits, Some(limits(set.clone())));
    assert_eq!(info.push, Some(target.clone()));
    assert!(store.limited().contains("q"));
    let listed = store.queues_list().await.unwrap();
    let q = listed.iter().find(|q| q.name == "q").unwrap();
    assert_eq!(q.limits, Some(limits(set)));
    set_limits(&store, "q", None, now).await;
    let listed = store.queues_list().await.unwrap();
    let q = listed.iter().find(|q| q.name == "q").unwrap();
    assert_eq!((q.limits.clone(), q.push.clone()), (None, Some(target)));
    assert!(!store.limited().contains("q"));
}

/// A push queue's running limit and the queue's own limits both hold, in
/// one admission: the tighter wins. A fetch naming an unlimited queue with
/// a limited one takes from the unlimited one first, then admits.
pub async fn push_concurrency_and_limits_both_hold(store: S) {
    let now = t0();
    insert(&store, jobs_on("q", 20), now).await;
    insert(&store, jobs_on("free", 3), now).await;
    set_limits(&store, "q", Some(json!({"concurrency": 2})), now).await;
    let limited = |cap| JobsFetch {
        running_limit: Some(cap),
        ..fetch_params("q", 10, now)
    };
    assert_eq!(store.jobs_fetch(limited(5)).await.unwrap().len(), 2);
    set_limits(&store, "q", Some(json!({"concurrency": 10})), now).await;
    assert_eq!(store.jobs_fetch(limited(3)).await.unwrap().len(), 1);
    assert!(store.jobs_fetch(limited(3)).await.unwrap().is_empty());
    let both = JobsFetch {
        queues: vec!["q".into(), "free".into()],
        ..fetch_params("q", 6, now)
    };
    let got = store.jobs_fetch(both).await.unwrap();
    let on = |queue: &str| got.iter().filter(|l| l.job.queue == queue).count();
    assert_eq!((on("free"), on("q")), (3, 3));
    assert_eq!(running(&store, "q", now).await, 6);
}

/// What holds an available job back, as `GET /v1/jobs/{id}` shows it: a
/// pause, a concurrency limit in use (naming the partition), a full rate
/// window (until when); nothing for a job that would start, or is running.
pub async fn held_says_what_holds_a_job_back(store: S) {
    let now = t0();
    let (engine, clock) = engine(&store, now);
    let per = json!({"concurrency": 1, "partition_by": "partition"});
    engine
        .queue_set_limits("q", Some(limits(per)))
        .await
        .unwrap();
    let job = |partition: &str| {
        let mut job = NewJob::new("k", json!({}));
        job.queue = "q".into();
        job.partition = Some(partition.into());
        job
    };
    let a1 = engine.enqueue(job("acme")).await.unwrap().job;
    let a2 = engine.enqueue(job("acme")).await.unwrap().job;
    let b = engine.enqueue(job("beta")).await.unwrap().job;
    assert_eq!(engine.held(&a1).await.unwrap(), None);
    let request = FetchRequest {
        queues: vec!["q".into()],
        max: 1,
        wait: Duration::ZERO,
        lease: None,
        worker_id: Some("w".into()),
        running_limit: None,
    };
    let running = engine
        .fetch(request.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(running[0].job.id, a1.id);
    assert_eq!(engine.held(&running[0].job).await.unwrap(), None);
    let held = engine
        .held(&get(&store, a2.id).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.reason, HeldReason::Concurrency);
    assert!(
        held.message.contains("1 of 1") && held.message.contains("\"acme\""),
        "{}",
        held.message
    );
    assert_eq!(engine.held(&b).await.unwrap(), None, "another partition");
    engine.queue_pause("q", true).await.unwrap();
    let held = engine.held(&b).await.unwrap().unwrap();
    assert_eq!(held.reason, HeldReason::Paused);
    engine.queue_pause("q", false).await.unwrap();

    let rate = json!({"rate": {"count": 2, "period_ms": 10000}});
    engine
        .queue_set_limits("r", Some(limits(rate)))
        .await
        .unwrap();
    let on_r = || {
        let mut job = NewJob::new("k", json!({}));
        job.queue = "r".into();
        job
    };
    for _ in 0..3 {
        engine.enqueue(on_r()).await.unwrap();
    }
    let first = engine
        .fetch(
            FetchRequest {
                queues: vec!["r".into()],
                ..request.clone()
            },
            std::future::pending(),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_millis(400));
    let second = engine
        .fetch(
            FetchRequest {
                queues: vec!["r".into()],
                ..request.clone()
            },
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));
    // Both finish: the rate still holds the third back.
    for l in first.iter().chain(&second) {
        engine
            .record(
                l.job.id,
                &l.lease,
                Outcome::Failed {
                    error: "x".into(),
                    retry: Retry::Never,
                },
            )
            .await
            .unwrap();
    }
    let page = store
        .jobs_list(grafter_store::JobsList {
            queue: Some("r".into()),
            state: Some(JobState::Available),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let third = get(&store, page.jobs[0].id).await;
    let held = engine.held(&third).await.unwrap().unwrap();
    assert_eq!(held.reason, HeldReason::Rate);
    let until = (first[0].job.attempted_at.unwrap() + ms(10_000))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert!(
        held.message.contains(&until),
        "{} names {until}",
        held.message
    );
    clock.advance(Duration::from_millis(9_600));
    assert_eq!(
        engine.held(&third).await.unwrap(),
        None,
        "the window moved on"
    );
}

/// An `args.` partition whose value is an object, an array or a number in
/// exponent notation is held back by its partition's usage as the store
/// counts it: the store reports the job's partition from its row with the
/// expression its admission uses (PostgreSQL writes `{"a": 1}` and `1e23`
/// as `100000000000000000000000`, where Rust writes `{"a":1}` and `1e23`),
/// and `held` names that partition; a job of a free partition is not held.
pub async fn held_names_the_partition_its_store_counts(store: S) {
    let now = t0();
    let (engine, _clock) = engine(&store, now);
    let per = json!({"concurrency": 1, "partition_by": "args.p"});
    engine
        .queue_set_limits("objp", Some(limits(per)))
        .await
        .unwrap();
    let job = |p: Value| {
        let mut job = NewJob::new("k", json!({ "p": p }));
        job.queue = "objp".into();
        job
    };
    let values = [
        json!({"a": 1, "b": [true, null]}),
        json!([1, "x", {"c": 2}]),
        json!(1e23),
    ];
    let mut second = Vec::new();
    for value in &values {
        engine.enqueue(job(value.clone())).await.unwrap();
        second.push(engine.enqueue(job(value.clone())).await.unwrap().job);
    }
    let request = FetchRequest {
        queues: vec!["objp".into()],
        max: 10,
        wait: Duration::ZERO,
        lease: None,
        worker_id: Some("w".into()),
        running_limit: None,
    };
    let running = engine
        .fetch(request.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(running.len(), values.len(), "one per partition");
    assert!(engine
        .fetch(request, std::future::pending())
        .await
        .unwrap()
        .is_empty());
    for (value, waiting) in values.iter().zip(&second) {
        let usage = store
            .queue_limit_usage(LimitUsageQuery {
                queue: "objp".into(),
                job: Some(waiting.id),
                now,
            })
            .await
            .unwrap();
        let partition = usage.job_partition.clone().expect("the job's partition");
        let counted = usage.partitions.iter().find(|p| p.partition == partition);
        assert_eq!(
            counted.map(|p| p.running),
            Some(1),
            "{value}: {partition:?} among {:?}",
            usage.partitions
        );
        let held = engine
            .held(&get(&store, waiting.id).await)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{value} ({partition:?}) is held"));
        assert_eq!(held.reason, HeldReason::Concurrency, "{value}");
        assert_eq!(
            held.message,
            format!("concurrency 1 of 1 in use for partition {partition:?} of queue \"objp\""),
            "{value}"
        );
    }
    for value in [json!({"a": 2}), json!([2]), json!(2e23)] {
        let free = engine.enqueue(job(value.clone())).await.unwrap().job;
        assert_eq!(engine.held(&free).await.unwrap(), None, "{value}");
    }
    // Without a job asked about, no partition is reported.
    let usage = store
        .queue_limit_usage(LimitUsageQuery {
            queue: "objp".into(),
            job: None,
            now,
        })
        .await
        .unwrap();
    assert_eq!(usage.job_partition, None);
    assert_eq!(usage.partitions.len(), values.len());
}

/// A fetch waiting on a limited queue held back by its concurrency wakes
/// when the running job ends, not when its wait is up.
pub async fn a_freed_slot_wakes_a_waiting_fetch(store: S) {
    let now = t0();
    let (engine, _clock) = engine(&store, now);
    engine
        .queue_set_limits("q", Some(limits(json!({"concurrency": 1}))))
        .await
        .unwrap();
    for job in jobs_on("q", 2) {
        engine.enqueue(job).await.unwrap();
    }
    let request = FetchRequest {
        queues: vec!["q".into()],
        max: 1,
        wait: Duration::from_secs(20),
        lease: None,
        worker_id: Some("w".into()),
        running_limit: None,
    };
    let first = engine
        .fetch(request.clone(), std::future::pending())
        .await
        .unwrap();
    let waiting = {
        let engine = engine.clone();
        let request = request.clone();
        tokio::spawn(async move { engine.fetch(request, std::future::pending()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "held back");
    let started = std::time::Instant::now();
    engine
        .complete_many(vec![grafter_engine::Ack {
            id: first[0].job.id,
            lease: first[0].lease.clone(),
            result: None,
        }])
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the freed slot")
        .unwrap()
        .unwrap();
    assert_eq!(second.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A fetch waiting on a queue whose rate window is full looks again when
/// the window frees a start (nothing announces the passing of time), not
/// when its wait is up. On the system clock: the window is 400 ms.
pub async fn a_full_rate_window_wakes_its_waiting_fetch_when_it_frees(store: S) {
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            retry: no_jitter(),
            ..EngineConfig::default()
        },
    );
    let rate = json!({"rate": {"count": 2, "period_ms": 400}});
    engine
        .queue_set_limits("q", Some(limits(rate)))
        .await
        .unwrap();
    for job in jobs_on("q", 3) {
        engine.enqueue(job).await.unwrap();
    }
    let request = FetchRequest {
        queues: vec!["q".into()],
        max: 5,
        wait: Duration::from_secs(20),
        lease: None,
        worker_id: Some("w".into()),
        running_limit: None,
    };
    let first = engine
        .fetch(request.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let started = std::time::Instant::now();
    let third = tokio::time::timeout(
        Duration::from_secs(10),
        engine.fetch(request, std::future::pending()),
    )
    .await
    .expect("woken when the window freed a start")
    .unwrap();
    assert_eq!(third.len(), 1);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}
