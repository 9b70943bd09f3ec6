//! What the dashboard reads and fixes by hand: job lists and their filters,
//! the per-queue counts kept for it, throughput per minute, and bulk changes.

use chrono::{DateTime, Utc};
use grafter_core::{CutField, Job, JobId, JobState, LeasedJob, NewJob};
use grafter_store::preview::{json_len, PREVIEW_BYTES};
use grafter_store::{
    ArgsMatch, BulkAction, BulkOutcome, JobCancel, JobFail, JobRelease, JobRetry, JobsBulk,
    JobsCompleteMany, JobsList, JobsPrune, JobsRescue, MaintenanceBatch, MinuteThroughput, Order,
    StoreError, ThroughputRange,
};
use serde_json::json;

use super::{
    complete_params, fail_params, fetch, get, heartbeat_params, insert, ms, no_jitter, t0, S,
};

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

/// Every page of a list, following `next` until the end.
pub(super) async fn list_all(store: &S, mut params: JobsList) -> Vec<JobId> {
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

/// Lists `filter` whole, page by page, newest and oldest first, for each
/// (page size, scan budget) of `pages`: always exactly `expected` (newest
/// first) in order.
pub(super) async fn assert_lists_both_ways(
    store: &S,
    name: &str,
    filter: &JobsList,
    expected: &[JobId],
    pages: [(usize, Option<usize>); 4],
) {
    let mut oldest_first = expected.to_vec();
    oldest_first.reverse();
    for (limit, scan_limit) in pages {
        let params = JobsList {
            limit,
            scan_limit,
            ..filter.clone()
        };
        assert_eq!(
            list_all(store, params.clone()).await,
            expected,
            "{name}, limit {limit}, scan {scan_limit:?}"
        );
        let asc = JobsList {
            order: Order::Asc,
            ..params
        };
        assert_eq!(
            list_all(store, asc).await,
            oldest_first,
            "{name} oldest first, limit {limit}, scan {scan_limit:?}"
        );
    }
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
        let pages = [(100, None), (2, None), (3, Some(4)), (1, Some(1))];
        assert_lists_both_ways(&store, name, &filter, &expected, pages).await;
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

/// Lists of a queue with several kinds, and of a kind on several queues, in
/// every state, interleaved by id: each list merges ordered ranges (per
/// kind, per queue, per state) and must still give exactly the matching ids
/// in order, in both orders and across pages, also with a filter checked row
/// by row within a scan budget.
pub async fn lists_merge_many_kinds_and_states_in_id_order(store: S) {
    let now = t0();
    const KINDS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];
    let mut new = Vec::new();
    for i in 0..90usize {
        let mut j = NewJob::new(KINDS[(i * 3 + i / 7) % 5], json!({"i": i, "n": i % 3}));
        j.queue = if i % 4 == 3 { "other" } else { "busy" }.into();
        // Hand-out order (priority first) unlike id order, so the jobs
        // fetched below, and the states they end in, are spread over the ids.
        j.priority = ((i * 7) % 4) as i16;
        if i % 9 == 4 {
            j.run_at = Some(now + chrono::Duration::hours(1));
        }
        j.max_attempts = 3;
        new.push(j);
    }
    let jobs = insert(&store, new, now).await;
    for queue in ["busy", "other"] {
        let leased = fetch(&store, queue, 40, now).await;
        for (n, lease) in leased.iter().enumerate() {
            match n % 5 {
                0 | 1 => {
                    store
                        .job_complete(complete_params(lease, now))
                        .await
                        .unwrap();
                }
                2 => {
                    store
                        .job_fail(JobFail {
                            retry: false,
                            ..fail_params(lease, "boom", now)
                        })
                        .await
                        .unwrap();
                }
                3 => {
                    store
                        .job_fail(fail_params(lease, "again", now))
                        .await
                        .unwrap();
                }
                _ => {} // left running
            }
        }
    }
    for job in jobs.iter().filter(|j| j.id.0 % 11 == 0) {
        // Cancels what is not finished (a running job only asks).
        let _ = store.job_cancel(JobCancel { id: job.id, now }).await;
    }
    let mut all = Vec::new();
    for job in &jobs {
        all.push(get(&store, job.id).await);
    }
    let states: std::collections::BTreeSet<JobState> = all
        .iter()
        .filter(|j| j.queue == "busy")
        .map(|j| j.state)
        .collect();
    for state in [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
    ] {
        assert!(states.contains(&state), "the busy queue has {state:?} jobs");
    }

    let mut filters: Vec<(String, JobsList)> = Vec::new();
    let list = |queue: Option<&str>, kind: Option<&str>, state: Option<JobState>| JobsList {
        queue: queue.map(Into::into),
        kind: kind.map(Into::into),
        state,
        ..Default::default()
    };
    for state in std::iter::once(None).chain(states.iter().copied().map(Some)) {
        filters.push((format!("busy, {state:?}"), list(Some("busy"), None, state)));
        filters.push((format!("{state:?}"), list(None, None, state)));
        for kind in ["k0", "k3"] {
            filters.push((format!("{kind}, {state:?}"), list(None, Some(kind), state)));
            filters.push((
                format!("busy, {kind}, {state:?}"),
                list(Some("busy"), Some(kind), state),
            ));
        }
    }
    // The same lists with a filter checked row by row, which reads up to
    // `scan_limit` ids of the merge per page.
    let checked: Vec<(String, JobsList)> = filters
        .iter()
        .map(|(name, filter)| {
            let args = Some(ArgsMatch {
                path: vec!["n".into()],
                value: json!(1),
            });
            (
                format!("{name}, args"),
                JobsList {
                    args,
                    ..filter.clone()
                },
            )
        })
        .collect();
    filters.extend(checked);
    for (name, filter) in filters {
        let expected: Vec<JobId> = all
            .iter()
            .rev()
            .filter(|j| {
                filter.queue.as_ref().is_none_or(|q| &j.queue == q)
                    && filter.kind.as_ref().is_none_or(|k| &j.kind == k)
                    && filter.state.is_none_or(|s| j.state == s)
                    && (filter.args.is_none() || j.args["n"] == json!(1))
            })
            .map(|j| j.id)
            .collect();
        let pages = [(100, None), (3, None), (2, Some(5)), (1, Some(1))];
        assert_lists_both_ways(&store, &name, &filter, &expected, pages).await;
        // A page that starts in the middle: after the 7th match.
        if let Some(&after) = expected.get(6) {
            let page = store
                .jobs_list(JobsList {
                    limit: 4,
                    after: Some(after),
                    ..filter.clone()
                })
                .await
                .unwrap();
            let want: Vec<_> = expected.iter().skip(7).take(4).copied().collect();
            assert_eq!(
                page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
                want,
                "{name} after {after:?}"
            );
        }
    }
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

pub(super) async fn assert_counts_exact(store: &S, when: &str) {
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

/// A list shows args and results up to `PREVIEW_BYTES` of compact JSON whole
/// and longer ones cut to their start, and only the last error: a page of
/// large jobs stays small. Both stores cut at the same size, even where
/// PostgreSQL's own text of a value is longer than its compact text.
pub async fn list_shows_large_fields_cut(store: S) {
    let now = t0();
    let n = PREVIEW_BYTES;
    // `{"a":1,"k":""}` is 14 bytes.
    let sized = |len: usize| json!({"a": 1, "k": "x".repeat(len - 14)});
    assert_eq!(json_len(&sized(n)), n);
    let huge = json!({"blob": "y".repeat(100_000)});
    let mut jobs = vec![
        NewJob::new("small", json!({"to": "ada"})),
        NewJob::new("at_limit", sized(n)),
        NewJob::new("over", sized(n + 1)),
        NewJob::new("huge", huge.clone()),
    ];
    for kind in [
        "result_at_limit",
        "result_over",
        "failed_once",
        "failed_thrice",
    ] {
        let mut job = NewJob::new(kind, json!({}));
        job.queue = "work".into();
        jobs.push(job);
    }
    let inserted = insert(&store, jobs, now).await;

    let leased = fetch(&store, "work", 4, now).await;
    for (leased, result) in leased[..2].iter().zip([sized(n), sized(n + 1)]) {
        let mut done = complete_params(leased, now);
        done.result = Some(result);
        store.job_complete(done).await.unwrap();
    }
    store
        .job_fail(fail_params(&leased[2], "boom", now))
        .await
        .unwrap();
    let long = "é".repeat(n);
    let mut thrice = leased[3].clone();
    for attempt in 1..=3 {
        store
            .job_fail(fail_params(&thrice, &format!("{attempt}{long}"), now))
            .await
            .unwrap();
        if attempt < 3 {
            let retry = JobRetry {
                id: thrice.job.id,
                args: None,
                now,
            };
            store.job_retry(retry).await.unwrap();
            thrice = fetch(&store, "work", 1, now).await.remove(0);
        }
    }

    let page = store
        .jobs_list(JobsList {
            limit: 100,
            order: Order::Asc,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = |kind: &str| page.jobs.iter().find(|j| j.kind == kind).unwrap().clone();
    let cut_text = |value: &serde_json::Value| json!(value.to_string()[..n]);

    assert_eq!(listed("small").args, json!({"to": "ada"}));
    assert_eq!(listed("at_limit").args, sized(n));
    assert_eq!(listed("over").args, cut_text(&sized(n + 1)));
    assert_eq!(listed("huge").args, cut_text(&huge));
    assert_eq!(listed("result_at_limit").result, Some(sized(n)));
    assert_eq!(listed("result_over").result, Some(cut_text(&sized(n + 1))));
    assert_eq!(listed("failed_once").errors[0].error, "boom");
    let failed = listed("failed_thrice");
    assert_eq!(failed.errors.len(), 1, "the last error only");
    assert_eq!(failed.errors[0].attempt, 3);
    assert_eq!(
        failed.errors[0].error,
        format!("3{}", "é".repeat(n / 2 - 1))
    );
    for job in &page.jobs {
        let expected: &[CutField] = match job.kind.as_str() {
            "over" | "huge" => &[CutField::Args],
            "result_over" => &[CutField::Result],
            "failed_thrice" => &[CutField::Errors],
            _ => &[],
        };
        assert_eq!(job.cut, expected, "{}", job.kind);
    }
    let answer = serde_json::to_string(&page.jobs).unwrap();
    assert!(answer.len() < 16 * 1024, "{} bytes", answer.len());

    // The job itself is whole.
    let huge_job = get(&store, inserted[3].id).await;
    assert_eq!((huge_job.args, huge_job.cut), (huge, vec![]));
    assert_eq!(get(&store, failed.id).await.errors.len(), 3);
}
