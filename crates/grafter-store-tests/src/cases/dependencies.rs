//! Dependencies: a dependent is pending until its upstreams finish, released
//! or cancelled in the transaction of its upstream's last move, a graph
//! inserted whole or not at all, and upstreams kept from the pruner.

use grafter_core::{BatchState, DependencyFailure, JobState, Upstream};
use grafter_engine::{Ack, FetchRequest};
use grafter_store::{
    BatchAdd, BatchChange, BatchCreate, JobCancel, JobReschedule, JobRetry, JobsList, JobsPrune,
    StoreError,
};
use serde_json::json;

use super::*;

fn node(queue: &str, name: &str, deps: &[Upstream]) -> NewJob {
    NewJob {
        queue: queue.into(),
        r#ref: Some(name.into()),
        depends_on: deps.to_vec(),
        max_attempts: 1,
        ..NewJob::new(name, json!({}))
    }
}

fn r(name: &str) -> Upstream {
    Upstream::Ref(name.into())
}

fn on(job: &Job) -> Upstream {
    Upstream::Job(job.id)
}

async fn complete(store: &S, leased: &LeasedJob, now: DateTime<Utc>) {
    store
        .job_complete(complete_params(leased, now))
        .await
        .expect("complete");
}

async fn kinds_fetched(store: &S, queue: &str, now: DateTime<Utc>) -> Vec<LeasedJob> {
    let mut leased = fetch(store, queue, 10, now).await;
    leased.sort_by(|a, b| a.job.kind.cmp(&b.job.kind));
    leased
}

fn kinds(leased: &[LeasedJob]) -> Vec<&str> {
    leased.iter().map(|l| l.job.kind.as_str()).collect()
}

pub async fn a_diamond_graph_runs_in_order(store: S) {
    let now = t0();
    let jobs = insert(
        &store,
        vec![
            node("dag", "d", &[r("b"), r("c")]),
            node("dag", "b", &[r("a")]),
            node("dag", "c", &[r("a")]),
            node("dag", "a", &[]),
        ],
        now,
    )
    .await;
    let states: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        [
            JobState::Pending,
            JobState::Pending,
            JobState::Pending,
            JobState::Available
        ]
    );
    let a = kinds_fetched(&store, "dag", now).await;
    assert_eq!(kinds(&a), ["a"]);
    complete(&store, &a[0], now).await;
    let bc = kinds_fetched(&store, "dag", now).await;
    assert_eq!(kinds(&bc), ["b", "c"]);
    complete(&store, &bc[0], now).await;
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Pending);
    assert!(fetch(&store, "dag", 10, now).await.is_empty());
    complete(&store, &bc[1], now).await;
    let d = kinds_fetched(&store, "dag", now).await;
    assert_eq!(kinds(&d), ["d"]);
    // The dependent reads its upstreams, with their states.
    let upstreams = store
        .job_dependencies(jobs[0].id)
        .await
        .unwrap()
        .unwrap()
        .jobs;
    let ids: Vec<JobId> = upstreams.iter().map(|j| j.id).collect();
    assert_eq!(ids, [jobs[1].id, jobs[2].id]);
    assert!(upstreams.iter().all(|j| j.state == JobState::Completed));
    assert!(store
        .job_dependencies(JobId(i64::MAX))
        .await
        .unwrap()
        .is_none());
}

/// An upstream's dependents list in pages, in id order both ways, from the
/// dependency links' key: with a state checked on each, and beside a tag.
pub async fn an_upstream_lists_its_dependents(store: S) {
    let now = t0();
    let tagged = |mut job: NewJob| {
        job.tags = vec!["t".into()];
        job
    };
    let jobs = insert(
        &store,
        vec![
            node("up", "u", &[]),
            node("up", "v", &[]),
            node("down", "d0", &[r("u")]),
            tagged(node("down", "d1", &[r("u"), r("v")])),
            node("down", "x", &[r("v")]),
            node("down", "d2", &[r("u")]),
            tagged(node("down", "d3", &[r("u")])),
            node("down", "d4", &[r("v"), r("u")]),
        ],
        now,
    )
    .await;
    let id = |kind: &str| jobs.iter().find(|j| j.kind == kind).unwrap().id;
    let of = |upstream: &str, state: Option<JobState>, tag: Option<&str>| JobsList {
        depends_on: Some(id(upstream)),
        state,
        tag: tag.map(Into::into),
        limit: 50,
        ..JobsList::default()
    };
    let newest_first = |kinds: &[&str]| {
        let mut ids: Vec<JobId> = kinds.iter().map(|k| id(k)).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids
    };
    let pages = [(100, None), (2, None), (3, Some(3)), (1, Some(1))];
    let all_of_u = newest_first(&["d0", "d1", "d2", "d3", "d4"]);
    browse::assert_lists_both_ways(&store, "u", &of("u", None, None), &all_of_u, pages).await;
    let all_of_v = newest_first(&["d1", "x", "d4"]);
    browse::assert_lists_both_ways(&store, "v", &of("v", None, None), &all_of_v, pages).await;
    assert!(browse::list_all(&store, of("d0", None, None))
        .await
        .is_empty());

    // u completes: its dependents that waited for it alone are released.
    let leased = fetch(&store, "up", 10, now).await;
    let u = leased.iter().find(|l| l.job.kind == "u").unwrap();
    complete(&store, u, now).await;
    let released = newest_first(&["d0", "d2", "d3"]);
    let available = of("u", Some(JobState::Available), None);
    browse::assert_lists_both_ways(&store, "u, available", &available, &released, pages).await;
    let pending = of("u", Some(JobState::Pending), None);
    let waiting = newest_first(&["d1", "d4"]);
    browse::assert_lists_both_ways(&store, "u, pending", &pending, &waiting, pages).await;
    // A tag walks its own index; the upstream is checked on each job.
    let tagged_of_u = newest_first(&["d1", "d3"]);
    browse::assert_lists_both_ways(
        &store,
        "u, tag",
        &of("u", None, Some("t")),
        &tagged_of_u,
        pages,
    )
    .await;
    assert_eq!(
        browse::list_all(&store, of("v", None, Some("t"))).await,
        newest_first(&["d1"])
    );
}

/// Ends `job` (fetched alone from its queue) dead or cancelled.
async fn end(store: &S, job: &Job, dead: bool, now: DateTime<Utc>) {
    if dead {
        let leased = fetch(store, &job.queue, 1, now).await;
        assert_eq!(leased[0].job.id, job.id);
        let failed = store
            .job_fail(fail_params(&leased[0], "boom", now))
            .await
            .unwrap();
        assert_eq!(failed.state, JobState::Dead);
    } else {
        store
            .job_cancel(JobCancel { id: job.id, now })
            .await
            .unwrap();
    }
}

pub async fn each_dependency_policy_on_a_dead_and_a_cancelled_upstream(store: S) {
    let now = t0();
    for dead in [true, false] {
        for policy in [DependencyFailure::Cancel, DependencyFailure::Run] {
            let queue = format!("policy-{dead}-{}", policy.as_str());
            let up = insert_one(&store, node(&queue, "up", &[]), now).await;
            let other = insert_one(&store, node("elsewhere", "other", &[]), now).await;
            let dependent = NewJob {
                on_dependency_failure: Some(policy),
                ..node(&queue, "dependent", &[on(&up), on(&other)])
            };
            let jobs = insert(
                &store,
                vec![dependent, node(&queue, "grandchild", &[r("dependent")])],
                now,
            )
            .await;
            end(&store, &up, dead, now).await;
            let (dependent, grandchild) =
                (get(&store, jobs[0].id).await, get(&store, jobs[1].id).await);
            match policy {
                DependencyFailure::Cancel => {
                    // Cancelled at once, and its own dependent (policy cancel) with it.
                    assert_eq!(dependent.state, JobState::Cancelled, "{queue}");
                    assert!(dependent.finished_at.is_some());
                    assert_eq!(grandchild.state, JobState::Cancelled, "{queue}");
                }
                DependencyFailure::Run => {
                    // Still waits for the other upstream, then runs.
                    assert_eq!(dependent.state, JobState::Pending, "{queue}");
                    let leased = fetch(&store, "elsewhere", 1, now).await;
                    complete(&store, &leased[0], now).await;
                    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Available);
                    assert_eq!(get(&store, jobs[1].id).await.state, JobState::Pending);
                }
            }
            // Clear the shared queue for the next round.
            for leased in fetch(&store, "elsewhere", 10, now).await {
                complete(&store, &leased, now).await;
            }
        }
    }
}

async fn count(store: &S, queue: &str) -> usize {
    store
        .jobs_list(JobsList {
            queue: Some(queue.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs
        .len()
}

pub async fn a_cycle_or_an_unknown_id_is_refused_and_nothing_inserted(store: S) {
    let now = t0();
    let cycle = vec![
        node("refused", "a", &[r("c")]),
        node("refused", "b", &[r("a")]),
        node("refused", "c", &[r("b")]),
    ];
    let err = store
        .jobs_insert_many(JobsInsert { jobs: cycle, now })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("cycle")),
        "{err}"
    );
    let unknown = vec![
        node("refused", "a", &[]),
        node("refused", "b", &[r("a"), Upstream::Job(JobId(i64::MAX))]),
    ];
    let err = store
        .jobs_insert_many(JobsInsert { jobs: unknown, now })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownDependency { field, id }
            if field == "jobs[1].depends_on[1]" && *id == JobId(i64::MAX)),
        "{err}"
    );
    // An id of a job of this same request (guessed: the next id) could
    // close a cycle: refused. An unknown id is named where it stands.
    let x = insert_one(&store, node("other", "x", &[]), now).await;
    let next = JobId(x.id.0 + 1);
    let guessed = vec![
        node("refused", "a", &[Upstream::Job(JobId(next.0 + 1))]),
        node("refused", "b", &[Upstream::Job(next)]),
    ];
    let err = store
        .jobs_insert_many(JobsInsert { jobs: guessed, now })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::RefusedDependency { field, message }
            if field == "jobs[0].depends_on[0]" && message.contains("this same request")),
        "{err}"
    );
    let repeated = vec![node(
        "refused",
        "a",
        &[on(&x), on(&x), Upstream::Job(JobId(i64::MAX))],
    )];
    let err = store
        .jobs_insert_many(JobsInsert {
            jobs: repeated,
            now,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownDependency { field, .. } if field == "jobs[0].depends_on[2]"),
        "{err}"
    );
    assert_eq!(count(&store, "refused").await, 0);
}

pub async fn a_dependency_finished_at_insert_is_applied_at_insert(store: S) {
    let now = t0();
    let done = insert_one(&store, node("before", "done", &[]), now).await;
    let leased = fetch(&store, "before", 1, now).await;
    complete(&store, &leased[0], now).await;
    let dead = insert_one(&store, node("before", "dead", &[]), now).await;
    end(&store, &dead, true, now).await;
    let jobs = insert(
        &store,
        vec![
            node("after", "ready", &[on(&done)]),
            node("after", "doomed", &[on(&done), on(&dead)]),
            NewJob {
                on_dependency_failure: Some(DependencyFailure::Run),
                ..node("after", "anyway", &[on(&dead)])
            },
            NewJob {
                run_at: Some(now + ms(60_000)),
                ..node("after", "later", &[on(&done)])
            },
        ],
        now,
    )
    .await;
    let states: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        [
            JobState::Available,
            JobState::Cancelled,
            JobState::Available,
            JobState::Scheduled
        ]
    );
}

pub async fn pruning_keeps_an_upstream_of_a_pending_job(store: S) {
    let now = t0();
    let up = insert_one(&store, node("prune", "up", &[]), now).await;
    let slow = insert_one(&store, node("prune-slow", "slow", &[]), now).await;
    let dependent = insert_one(
        &store,
        node("prune", "dependent", &[on(&up), on(&slow)]),
        now,
    )
    .await;
    let leased = fetch(&store, "prune", 1, now).await;
    complete(&store, &leased[0], now).await;
    let prune = || JobsPrune {
        states: vec![JobState::Completed],
        finished_before: now + ms(3_600_000),
        limit: 100,
    };
    assert_eq!(store.jobs_prune(prune()).await.unwrap(), 0);
    assert_eq!(store.jobs_prunable_count(prune()).await.unwrap(), 0);
    assert_eq!(get(&store, up.id).await.state, JobState::Completed);
    // Once the dependent has run, the upstream goes.
    let leased = fetch(&store, "prune-slow", 1, now).await;
    complete(&store, &leased[0], now).await;
    let leased = fetch(&store, "prune", 1, now).await;
    assert_eq!(leased[0].job.id, dependent.id);
    complete(&store, &leased[0], now).await;
    assert_eq!(store.jobs_prune(prune()).await.unwrap(), 3);
}

pub async fn concurrent_completions_of_two_upstreams_release_the_dependent_once(store: S) {
    let now = t0();
    for round in 0..5 {
        let queue = format!("fan-in-{round}");
        let jobs = insert(
            &store,
            vec![
                node(&queue, "left", &[]),
                node(&queue, "right", &[]),
                node(&queue, "joined", &[r("left"), r("right")]),
            ],
            now,
        )
        .await;
        let leased = fetch(&store, &queue, 10, now).await;
        assert_eq!(leased.len(), 2);
        let tasks: Vec<_> = leased
            .iter()
            .map(|l| {
                let store = store.clone();
                let params = complete_params(l, now);
                tokio::spawn(async move { store.job_complete(params).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(get(&store, jobs[2].id).await.state, JobState::Available);
        let leased = fetch(&store, &queue, 10, now).await;
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].job.id, jobs[2].id);
    }
}

pub async fn a_released_dependent_wakes_a_waiting_fetch(store: S) {
    let now = t0();
    let (engine, _clock) = super::engine::engine(&store, now);
    let jobs = engine
        .enqueue_many(vec![
            node("first", "up", &[]),
            node("then", "down", &[r("up")]),
        ])
        .await
        .unwrap();
    assert_eq!(jobs[1].job.state, JobState::Pending);
    let request = |queue: &str| FetchRequest {
        queues: vec![queue.into()],
        max: 1,
        wait: Duration::from_secs(20),
        lease: None,
        worker_id: Some("w".into()),
        running_limit: None,
    };
    let up = engine
        .fetch(request("first"), std::future::pending())
        .await
        .unwrap();
    let waiting = {
        let engine = engine.clone();
        let request = request("then");
        tokio::spawn(async move { engine.fetch(request, std::future::pending()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "nothing to fetch while pending");
    engine
        .complete_many(vec![Ack {
            id: up[0].job.id,
            lease: up[0].lease.clone(),
            result: Some(json!({"rows": 3})),
        }])
        .await
        .unwrap();
    let down = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the release")
        .unwrap()
        .unwrap();
    assert_eq!(down[0].job.id, jobs[1].job.id);
    // The dependent reads what its upstream answered.
    let upstreams = engine.job_dependencies(down[0].job.id).await.unwrap().jobs;
    assert_eq!(upstreams[0].result, Some(json!({"rows": 3})));
}

pub async fn a_cancelled_dependent_retried_by_hand_waits_again_for_unfinished_upstreams(store: S) {
    let now = t0();
    let jobs = insert(
        &store,
        vec![
            node("retry-up", "up", &[]),
            node("retry-down", "down", &[r("up")]),
        ],
        now,
    )
    .await;
    store
        .job_cancel(JobCancel {
            id: jobs[1].id,
            now,
        })
        .await
        .unwrap();
    let retried = store
        .job_retry(JobRetry {
            id: jobs[1].id,
            args: None,
            now,
        })
        .await
        .unwrap();
    assert_eq!(retried.state, JobState::Pending);
    let leased = fetch(&store, "retry-up", 1, now).await;
    complete(&store, &leased[0], now).await;
    assert_eq!(get(&store, jobs[1].id).await.state, JobState::Available);
    // Retried after its upstream failed, it runs: the retry asked for it.
    let up = insert_one(&store, node("retry-up", "up2", &[]), now).await;
    let down = insert_one(&store, node("retry-down", "down2", &[on(&up)]), now).await;
    end(&store, &up, true, now).await;
    assert_eq!(get(&store, down.id).await.state, JobState::Cancelled);
    let retried = store
        .job_retry(JobRetry {
            id: down.id,
            args: None,
            now,
        })
        .await
        .unwrap();
    assert_eq!(retried.state, JobState::Available);
}

pub async fn a_finished_dependent_rescheduled_by_hand_waits_again_and_answers_so(store: S) {
    let now = t0();
    let jobs = insert(
        &store,
        vec![
            node("reschedule-up", "up", &[]),
            node("reschedule-down", "down", &[r("up")]),
        ],
        now,
    )
    .await;
    let down = jobs[1].id;
    for run_at in [now, now + ms(60_000)] {
        store.job_cancel(JobCancel { id: down, now }).await.unwrap();
        let answered = store
            .job_reschedule(JobReschedule {
                id: down,
                run_at,
                now,
            })
            .await
            .unwrap();
        assert_eq!(answered.state, JobState::Pending, "run at {run_at}");
        assert_eq!(answered, get(&store, down).await, "answered as stored");
    }
    let leased = fetch(&store, "reschedule-up", 1, now).await;
    complete(&store, &leased[0], now).await;
    assert_eq!(get(&store, down).await.state, JobState::Scheduled);
}

/// One job of a chain `first` <- `middle` <- `last`, each in a queue of its own.
#[derive(Clone, Copy, Debug)]
enum Link {
    First,
    Middle,
    Last,
}

/// A change to one link of a chain: by hand, or a worker's fetch and ack.
#[derive(Clone, Copy, Debug)]
enum Move {
    Cancel(Link),
    Retry(Link),
    RescheduleNow(Link),
    RescheduleLater(Link),
    FetchAndComplete(Link),
}

/// Cancels, retries and reschedules of upstreams and dependents, in several
/// orders, each on a fresh chain in queues of its own, with its dependents due
/// at insert and a minute ahead: a dependent retried or rescheduled while an
/// upstream is unfinished goes back to pending by way of a state its queue
/// may never have held. After every move the queue counts are what listing
/// the jobs shows, and a retry or reschedule answers the job as stored.
pub async fn queue_counts_follow_dependents_and_upstreams_moved_by_hand(store: S) {
    use Link::{First, Last, Middle};
    use Move::{Cancel, FetchAndComplete, RescheduleLater, RescheduleNow, Retry};
    let scenarios: [&[Move]; 8] = [
        &[Cancel(Middle), Retry(Middle)],
        &[Cancel(Middle), RescheduleLater(Middle)],
        &[
            Cancel(Middle),
            RescheduleNow(Middle),
            FetchAndComplete(First),
            FetchAndComplete(Middle),
        ],
        &[
            Cancel(First),
            Retry(First),
            Retry(Middle),
            Retry(Last),
            FetchAndComplete(First),
            FetchAndComplete(Middle),
            FetchAndComplete(Last),
        ],
        &[Cancel(First), Retry(Middle), Retry(First)],
        &[
            Cancel(First),
            RescheduleLater(First),
            RescheduleLater(Middle),
            RescheduleNow(Last),
            Cancel(First),
            Retry(Middle),
        ],
        &[
            FetchAndComplete(First),
            Cancel(Middle),
            Retry(Middle),
            RescheduleLater(Last),
        ],
        &[
            Cancel(Last),
            Cancel(Middle),
            Retry(Last),
            Retry(Middle),
            Cancel(First),
        ],
    ];
    let now = t0();
    // A store may count a new dependent in the state its run_at gives it
    // before it makes it pending (SQLite does), so its queue may hold a count
    // of that state already: each chain is run with its dependents due and
    // ahead, so that a retry and a reschedule each pass through a state the
    // queue has never held.
    let chains = scenarios.into_iter().enumerate().flat_map(|(i, moves)| {
        [("due", now), ("ahead", now + ms(60_000))]
            .map(|(when, dependents_run_at)| (format!("{i}-{when}"), moves, dependents_run_at))
    });
    for (scenario, moves, dependents_run_at) in chains {
        let queue = |link: Link| format!("counts-{scenario}-{link:?}");
        let dependent = |link: Link, name: &str, upstream: &str| NewJob {
            run_at: Some(dependents_run_at),
            ..node(&queue(link), name, &[r(upstream)])
        };
        let chain = insert(
            &store,
            vec![
                node(&queue(First), "first", &[]),
                dependent(Middle, "middle", "first"),
                dependent(Last, "last", "middle"),
            ],
            now,
        )
        .await;
        let id = |link: Link| chain[link as usize].id;
        for (step, change) in moves.iter().enumerate() {
            let what = format!("scenario {scenario}, move {step}: {change:?}");
            let answered = match *change {
                Cancel(link) => {
                    store
                        .job_cancel(JobCancel { id: id(link), now })
                        .await
                        .expect(&what);
                    None
                }
                Retry(link) => Some(
                    store
                        .job_retry(JobRetry {
                            id: id(link),
                            args: None,
                            now,
                        })
                        .await
                        .expect(&what),
                ),
                RescheduleNow(link) | RescheduleLater(link) => {
                    let later = matches!(change, RescheduleLater(_));
                    Some(
                        store
                            .job_reschedule(JobReschedule {
                                id: id(link),
                                run_at: if later { now + ms(60_000) } else { now },
                                now,
                            })
                            .await
                            .expect(&what),
                    )
                }
                FetchAndComplete(link) => {
                    let leased = fetch(&store, &queue(link), 1, now).await;
                    assert_eq!(leased.len(), 1, "{what}");
                    complete(&store, &leased[0], now).await;
                    None
                }
            };
            if let Some(answered) = answered {
                assert_eq!(answered, get(&store, answered.id).await, "{what}");
            }
            browse::assert_counts_exact(&store, &what).await;
        }
    }
}

pub async fn a_graph_in_a_batch_is_counted_with_it(store: S) {
    let now = t0();
    let created = store
        .batch_create(BatchCreate {
            jobs: vec![node("graph", "a", &[]), node("graph", "b", &[r("a")])],
            open: false,
            callbacks: Default::default(),
            now,
        })
        .await
        .unwrap();
    assert_eq!(created.jobs[1].state, JobState::Pending);
    assert_eq!(created.batch.counts.pending, 2);
    let added = store
        .batch_add(BatchAdd {
            id: created.batch.id,
            jobs: vec![node("graph", "c", &[on(&created.jobs[1])])],
            now,
        })
        .await;
    // A sealed batch takes no more jobs, graph or not.
    assert!(matches!(added, Err(StoreError::BatchClosed { .. })));
    let a = fetch(&store, "graph", 10, now).await;
    assert_eq!(a.len(), 1);
    store
        .job_fail(fail_params(&a[0], "boom", now))
        .await
        .unwrap();
    // b is cancelled with a's death: the batch settles at once.
    let batch = store.batch_get(created.batch.id).await.unwrap().unwrap();
    assert_eq!(batch.state, BatchState::CompletedWithFailures);
    assert_eq!((batch.counts.dead, batch.counts.cancelled), (1, 1));
}

pub async fn a_batch_cancel_cascades_to_a_dependent_in_another_batch_which_counts_it(store: S) {
    let now = t0();
    let create = |jobs: Vec<NewJob>| {
        let store = store.clone();
        async move {
            store
                .batch_create(BatchCreate {
                    jobs,
                    open: false,
                    callbacks: Default::default(),
                    now,
                })
                .await
                .unwrap()
        }
    };
    let upstream = create(vec![node("cascade", "up", &[])]).await;
    let downstream = create(vec![node("cascade", "down", &[on(&upstream.jobs[0])])]).await;
    store
        .batch_cancel(BatchChange {
            id: upstream.batch.id,
            now,
        })
        .await
        .unwrap();
    assert_eq!(
        get(&store, downstream.jobs[0].id).await.state,
        JobState::Cancelled
    );
    let batch = store.batch_get(downstream.batch.id).await.unwrap().unwrap();
    assert_eq!((batch.counts.cancelled, batch.counts.pending), (1, 0));
    assert_eq!(batch.state, BatchState::CompletedWithFailures);
}

/// A chain of dependencies may be [`MAX_DEPTH`] deep, through batches too:
/// one deeper is refused naming the entry, with nothing inserted; a failure
/// at the head of the deepest chain allowed cancels all of it in its own
/// transaction (each level is one nested trigger on both stores).
pub async fn a_chain_deeper_than_the_bound_is_refused_and_the_deepest_cascades(store: S) {
    use grafter_core::dependency::MAX_DEPTH;
    let now = t0();
    let name = |level: usize| format!("level-{level}");
    // Levels 0 (the head) to MAX_DEPTH, each waiting for the one before.
    let chain: Vec<NewJob> = (0..=MAX_DEPTH)
        .map(|level| {
            let deps = if level == 0 {
                vec![]
            } else {
                vec![r(&name(level - 1))]
            };
            node("chain", &name(level), &deps)
        })
        .collect();
    let chain = insert(&store, chain, now).await;
    let deepest = chain.last().unwrap();
    let too_deep = |err: &StoreError, expected: &str| {
        matches!(err, StoreError::RefusedDependency { field, message }
            if field == expected && message.contains("deeper than"))
    };
    let beyond = vec![node("beyond", "beyond", &[on(&chain[3]), on(deepest)])];
    let err = store
        .jobs_insert_many(JobsInsert { jobs: beyond, now })
        .await
        .unwrap_err();
    assert!(too_deep(&err, "jobs[0].depends_on[1]"), "{err}");
    // Through a batch: a batch holding a job at the bound is as deep.
    let at_bound = NewJob {
        depends_on: vec![on(&chain[MAX_DEPTH - 1])],
        ..NewJob::new("in-batch", json!({}))
    };
    let batch = store
        .batch_create(BatchCreate {
            jobs: vec![at_bound],
            open: false,
            callbacks: Default::default(),
            now,
        })
        .await
        .unwrap();
    let after_batch = NewJob {
        depends_on_batches: vec![batch.batch.id],
        ..NewJob::new("after-batch", json!({}))
    };
    let err = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![after_batch],
            now,
        })
        .await
        .unwrap_err();
    assert!(too_deep(&err, "jobs[0].depends_on_batches[0]"), "{err}");
    assert_eq!(count(&store, "beyond").await, 0);

    end(&store, &chain[0], true, now).await;
    for job in &chain[1..] {
        assert_eq!(
            get(&store, job.id).await.state,
            JobState::Cancelled,
            "{}",
            job.kind
        );
    }
}
