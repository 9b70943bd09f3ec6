//! Batches: counts kept in each job move's transaction, settling and
//! callbacks once, cancel, and pruning with their jobs.

use grafter_core::{Batch, BatchCallbacks, BatchId, BatchState, JobState, NewJob};
use grafter_store::{
    AckOutcome, BatchAdd, BatchChange, BatchCreate, BatchWithJobs, BatchesList, BatchesPrune,
    JobCancel, JobRetry, JobsCompleteMany, JobsList, JobsPrune, Order, StoreError,
};
use serde_json::json;

use super::*;

fn callbacks(queue: &str) -> BatchCallbacks {
    let job = |kind: &str| NewJob {
        queue: queue.into(),
        ..NewJob::new(kind, json!({"callback": kind}))
    };
    BatchCallbacks {
        on_success: Some(job("on_success")),
        on_complete: Some(job("on_complete")),
        on_failure: Some(job("on_failure")),
    }
}

pub(super) fn jobs(n: usize, queue: &str) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob {
            queue: queue.into(),
            ..NewJob::new("part", json!({ "i": i }))
        })
        .collect()
}

pub(super) async fn create(
    store: &S,
    jobs: Vec<NewJob>,
    open: bool,
    now: DateTime<Utc>,
) -> BatchWithJobs {
    store
        .batch_create(BatchCreate {
            jobs,
            open,
            callbacks: callbacks("callbacks"),
            now,
        })
        .await
        .expect("create batch")
}

async fn batch(store: &S, id: BatchId) -> Batch {
    store.batch_get(id).await.unwrap().expect("batch exists")
}

/// The callback jobs enqueued so far, by kind.
async fn callback_kinds(store: &S) -> Vec<String> {
    let page = store
        .jobs_list(JobsList {
            queue: Some("callbacks".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut kinds: Vec<String> = page.jobs.into_iter().map(|j| j.kind).collect();
    kinds.sort();
    kinds
}

async fn complete_all(store: &S, queue: &str, now: DateTime<Utc>) {
    loop {
        let leased = fetch(store, queue, 500, now).await;
        if leased.is_empty() {
            return;
        }
        store
            .jobs_complete_many(JobsCompleteMany {
                items: leased
                    .iter()
                    .map(|l| (l.job.id, l.lease.clone(), None))
                    .collect(),
                now,
            })
            .await
            .unwrap();
    }
}

pub async fn a_sealed_batch_without_jobs_succeeds_at_once(store: S) {
    let now = t0();
    let created = create(&store, Vec::new(), false, now).await;
    assert!(created.jobs.is_empty());
    let b = created.batch;
    assert_eq!(b.state, BatchState::Succeeded);
    assert!(!b.open);
    assert!(b.finished_at.is_some());
    assert_eq!(b.progress, 1.0);
    assert_eq!(b.callbacks_enqueued, ["on_success", "on_complete"]);
    assert_eq!(callback_kinds(&store).await, ["on_complete", "on_success"]);

    // Open, it waits for its seal; sealing settles it.
    let open = create(&store, Vec::new(), true, now).await.batch;
    assert_eq!(open.state, BatchState::Running);
    assert_eq!(callback_kinds(&store).await.len(), 2);
    let sealed = store
        .batch_seal(BatchChange { id: open.id, now })
        .await
        .unwrap();
    assert_eq!(sealed.state, BatchState::Succeeded);
    assert_eq!(callback_kinds(&store).await.len(), 4);
}

pub async fn batch_counts_follow_each_move_and_settle_once(store: S) {
    let now = t0();
    let created = create(&store, jobs(4, "parts"), false, now).await;
    let id = created.batch.id;
    assert_eq!(created.jobs.len(), 4);
    assert!(created.jobs.iter().all(|j| j.batch_id == Some(id)));
    assert_eq!(get(&store, created.jobs[0].id).await.batch_id, Some(id));
    let b = created.batch;
    assert_eq!((b.counts.total, b.counts.pending), (4, 4));
    assert_eq!(b.progress, 0.0);

    let leased = fetch(&store, "parts", 4, now).await;
    // Progress of a running job counts toward the batch's.
    store
        .job_heartbeat(JobHeartbeat {
            progress: Some(grafter_core::Progress {
                fraction: 0.5,
                message: None,
            }),
            ..heartbeat_params(&leased[0], now)
        })
        .await
        .unwrap();
    assert_eq!(batch(&store, id).await.progress, 0.125);
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    let b = batch(&store, id).await;
    assert_eq!((b.counts.completed, b.counts.pending), (1, 3));
    assert_eq!(b.progress, 0.25);

    // The first dead job enqueues on_failure, once.
    let fail = |l: &LeasedJob| JobFail {
        retry: false,
        ..fail_params(l, "boom", now)
    };
    store.job_fail(fail(&leased[1])).await.unwrap();
    store.job_fail(fail(&leased[2])).await.unwrap();
    assert_eq!(callback_kinds(&store).await, ["on_failure"]);
    let b = batch(&store, id).await;
    assert_eq!((b.counts.dead, b.state), (2, BatchState::Running));

    store
        .job_complete(complete_params(&leased[3], now))
        .await
        .unwrap();
    let b = batch(&store, id).await;
    assert_eq!(b.state, BatchState::CompletedWithFailures);
    assert_eq!(
        (b.counts.completed, b.counts.dead, b.counts.pending),
        (2, 2, 0)
    );
    assert_eq!(b.progress, 1.0);
    assert_eq!(callback_kinds(&store).await, ["on_complete", "on_failure"]);

    // The dead jobs retried by hand and then completed: on_success once,
    // on_complete not again.
    for job in [&leased[1], &leased[2]] {
        store
            .job_retry(JobRetry {
                id: job.job.id,
                args: None,
                now,
            })
            .await
            .unwrap();
    }
    let b = batch(&store, id).await;
    assert_eq!((b.state, b.finished_at), (BatchState::Running, None));
    complete_all(&store, "parts", now).await;
    let b = batch(&store, id).await;
    assert_eq!(b.state, BatchState::Succeeded);
    assert_eq!(b.counts.completed, 4);
    assert_eq!(
        callback_kinds(&store).await,
        ["on_complete", "on_failure", "on_success"]
    );
}

pub async fn a_job_adding_to_its_open_batch_and_finishing_first_fires_nothing_early(store: S) {
    let now = t0();
    let created = create(&store, jobs(1, "parts"), true, now).await;
    let id = created.batch.id;
    let leased = fetch(&store, "parts", 1, now).await;
    // The job adds two more jobs to its own batch, then finishes first.
    let added = store
        .batch_add(BatchAdd {
            id,
            jobs: jobs(2, "parts"),
            now,
        })
        .await
        .unwrap();
    assert_eq!(added.batch.counts.total, 3);
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    complete_all(&store, "parts", now).await;
    // Every job done, but the batch is open: nothing settles.
    let b = batch(&store, id).await;
    assert_eq!((b.state, b.counts.completed), (BatchState::Running, 3));
    assert!(callback_kinds(&store).await.is_empty());
    let sealed = store.batch_seal(BatchChange { id, now }).await.unwrap();
    assert_eq!(sealed.state, BatchState::Succeeded);
    assert_eq!(callback_kinds(&store).await, ["on_complete", "on_success"]);
    // Sealed: no more jobs, and sealing again changes nothing.
    let refused = store
        .batch_add(BatchAdd {
            id,
            jobs: jobs(1, "parts"),
            now,
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::BatchClosed { .. })),
        "{refused:?}"
    );
    store.batch_seal(BatchChange { id, now }).await.unwrap();
    assert_eq!(callback_kinds(&store).await.len(), 2);
    assert!(matches!(
        store.batch_get(BatchId(id.0 + 1000)).await,
        Ok(None)
    ));
}

pub async fn concurrent_last_completions_enqueue_one_callback(store: S) {
    let now = t0();
    for _ in 0..5 {
        let created = create(&store, jobs(2, "pair"), false, now).await;
        let leased = fetch(&store, "pair", 2, now).await;
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
        assert_eq!(
            batch(&store, created.batch.id).await.state,
            BatchState::Succeeded
        );
    }
    let kinds = callback_kinds(&store).await;
    assert_eq!(kinds.iter().filter(|k| *k == "on_success").count(), 5);
    assert_eq!(kinds.iter().filter(|k| *k == "on_complete").count(), 5);
}

/// A batch ack counts its jobs into each of their batches (once per batch,
/// with each job's progress before its ack), leaves jobs outside batches
/// alone, and two racing batch acks of a batch's last jobs settle it once.
pub async fn a_batch_ack_counts_each_batch_it_spans(store: S) {
    let now = t0();
    let a = create(&store, jobs(3, "span"), false, now).await.batch.id;
    let b = create(&store, jobs(2, "span"), false, now).await.batch.id;
    let outside = insert_one(
        &store,
        NewJob {
            queue: "span".into(),
            ..NewJob::new("outside", json!({}))
        },
        now,
    )
    .await;
    let leased = fetch(&store, "span", 10, now).await;
    assert_eq!(leased.len(), 6);
    let of = |batch: BatchId| -> Vec<&LeasedJob> {
        leased
            .iter()
            .filter(|l| l.job.batch_id == Some(batch))
            .collect()
    };
    let (in_a, in_b) = (of(a), of(b));
    for (l, fraction) in [(in_a[0], 0.5), (in_a[2], 0.25)] {
        store
            .job_heartbeat(JobHeartbeat {
                progress: Some(grafter_core::Progress {
                    fraction,
                    message: None,
                }),
                ..heartbeat_params(l, now)
            })
            .await
            .unwrap();
    }
    assert_eq!(batch(&store, a).await.progress, 0.25);
    let ack = |ls: &[&LeasedJob]| JobsCompleteMany {
        items: ls
            .iter()
            .map(|l| (l.job.id, l.lease.clone(), None))
            .collect(),
        now,
    };
    let outside_lease = leased.iter().find(|l| l.job.id == outside.id).unwrap();
    let outcomes = store
        .jobs_complete_many(ack(&[in_b[1], in_a[0], outside_lease, in_b[0], in_a[1]]))
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| *o == AckOutcome::Completed));
    let after_a = batch(&store, a).await;
    assert_eq!((after_a.counts.completed, after_a.counts.pending), (2, 1));
    assert_eq!(after_a.progress, 0.75);
    assert_eq!(after_a.state, BatchState::Running);
    let after_b = batch(&store, b).await;
    assert_eq!(
        (after_b.state, after_b.counts.completed, after_b.progress),
        (BatchState::Succeeded, 2, 1.0)
    );
    assert_eq!(get(&store, outside.id).await.state, JobState::Completed);
    assert_eq!(callback_kinds(&store).await, ["on_complete", "on_success"]);

    // The last jobs of five two-job batches, acked by two batch acks at once.
    let mut lasts = Vec::new();
    for _ in 0..5 {
        create(&store, jobs(2, "race"), false, now).await;
    }
    lasts.extend(fetch(&store, "race", 10, now).await);
    let (first, second): (Vec<_>, Vec<_>) = lasts.iter().partition(|l| l.job.id.0 % 2 == 0);
    let acks = [ack(&first), ack(&second)].map(|params| {
        let store = store.clone();
        tokio::spawn(async move { store.jobs_complete_many(params).await })
    });
    for task in acks {
        task.await.unwrap().unwrap();
    }
    let kinds = callback_kinds(&store).await;
    assert_eq!(kinds.iter().filter(|k| *k == "on_success").count(), 6);
    assert_eq!(kinds.iter().filter(|k| *k == "on_complete").count(), 6);
    // The third job of `a`, acked alone, settles it.
    store.jobs_complete_many(ack(&[in_a[2]])).await.unwrap();
    let after_a = batch(&store, a).await;
    assert_eq!(
        (after_a.state, after_a.progress),
        (BatchState::Succeeded, 1.0)
    );
    assert_eq!(callback_kinds(&store).await.len(), 14);
}

pub async fn cancelling_a_batch_cancels_waiting_jobs_and_asks_running_ones(store: S) {
    let now = t0();
    let created = create(&store, jobs(3, "parts"), true, now).await;
    let id = created.batch.id;
    let leased = fetch(&store, "parts", 1, now).await;
    let b = store.batch_cancel(BatchChange { id, now }).await.unwrap();
    assert_eq!((b.state, b.open), (BatchState::Cancelled, false));
    assert_eq!((b.counts.cancelled, b.counts.pending), (2, 1));
    // Counted once each, progress with them.
    assert_eq!(b.progress, 2.0 / 3.0);
    let running = get(&store, leased[0].job.id).await;
    assert_eq!(running.state, JobState::Running);
    assert!(running.cancel_requested);
    assert!(callback_kinds(&store).await.is_empty());
    // The running one finishes: the batch settles, still cancelled, with on_complete.
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    let b = batch(&store, id).await;
    assert_eq!(b.state, BatchState::Cancelled);
    assert_eq!(
        (b.counts.cancelled, b.counts.completed, b.progress),
        (2, 1, 1.0)
    );
    assert!(b.finished_at.is_some());
    assert_eq!(callback_kinds(&store).await, ["on_complete"]);
    let again = store.batch_cancel(BatchChange { id, now }).await;
    assert!(
        matches!(again, Err(StoreError::BatchClosed { .. })),
        "{again:?}"
    );
    assert!(matches!(
        store
            .batch_cancel(BatchChange {
                id: BatchId(id.0 + 1000),
                now
            })
            .await,
        Err(StoreError::BatchNotFound(_))
    ));
    // A job cancelled alone counts too.
    let other = create(&store, jobs(1, "other"), false, now).await;
    store
        .job_cancel(JobCancel {
            id: other.jobs[0].id,
            now,
        })
        .await
        .unwrap();
    let b = batch(&store, other.batch.id).await;
    assert_eq!(
        (b.state, b.counts.cancelled),
        (BatchState::CompletedWithFailures, 1)
    );
}

/// Cancelling a batch while eight workers report progress on and ack its
/// running jobs: nothing deadlocks (the cancel takes the jobs before the
/// batch's row, as an ack and a heartbeat do), every call lands, and the
/// batch ends cancelled with every job completed, enqueueing on_complete
/// and not on_success.
pub async fn cancelling_a_batch_while_its_jobs_ack_and_beat_deadlocks_nothing(store: S) {
    let now = t0();
    for _ in 0..3 {
        let id = create(&store, jobs(240, "busy"), false, now).await.batch.id;
        let leased = fetch(&store, "busy", 240, now).await;
        let workers: Vec<_> = leased
            .chunks(30)
            .map(|chunk| {
                let (store, chunk) = (store.clone(), chunk.to_vec());
                tokio::spawn(async move {
                    for l in &chunk {
                        let progress = grafter_core::Progress {
                            fraction: 0.5,
                            message: None,
                        };
                        store
                            .job_heartbeat(JobHeartbeat {
                                progress: Some(progress),
                                ..heartbeat_params(l, now)
                            })
                            .await?;
                        store.job_complete(complete_params(l, now)).await?;
                    }
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cancelled = store.batch_cancel(BatchChange { id, now }).await;
        assert!(cancelled.is_ok(), "{cancelled:?}");
        for worker in workers {
            worker
                .await
                .unwrap()
                .expect("every heartbeat and ack lands");
        }
        let b = batch(&store, id).await;
        assert_eq!((b.state, b.counts.completed), (BatchState::Cancelled, 240));
    }
    // Cancelled, it did not succeed, though every job it had completed; nor
    // does an open batch cancelled empty.
    let empty = create(&store, Vec::new(), true, now).await.batch.id;
    let b = store
        .batch_cancel(BatchChange { id: empty, now })
        .await
        .unwrap();
    assert_eq!(b.state, BatchState::Cancelled);
    assert_eq!(callback_kinds(&store).await, ["on_complete"; 4]);
}

pub async fn a_ten_thousand_job_fan_in_counts_exactly(store: S) {
    let now = t0();
    let created = create(&store, jobs(10_000, "fan"), false, now).await;
    let id = created.batch.id;
    assert_eq!(created.batch.counts.total, 10_000);
    // Several completers at once, as many workers would.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { complete_all(&store, "fan", now).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let b = batch(&store, id).await;
    assert_eq!(b.counts.completed, 10_000);
    assert_eq!(b.counts.pending, 0);
    assert_eq!(b.state, BatchState::Succeeded);
    assert_eq!(b.progress, 1.0);
    assert_eq!(callback_kinds(&store).await, ["on_complete", "on_success"]);
    let listed = store
        .jobs_list(JobsList {
            batch: Some(id),
            limit: 20_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.jobs.len(), 10_000);
}

/// A batch's jobs are listed in pages in id order, both ways, whatever state
/// each is in, with other filters checked row by row; a job deleted by hand
/// leaves the list and the total.
pub async fn a_batch_lists_its_jobs_in_pages_whatever_their_state(store: S) {
    let now = t0();
    let created = create(&store, jobs(7, "listed"), false, now).await;
    let id = created.batch.id;
    create(&store, jobs(3, "listed"), false, now).await;
    let leased = fetch(&store, "listed", 3, now).await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    let mut ids: Vec<JobId> = created.jobs.iter().map(|j| j.id).collect();
    store.job_delete(ids[3]).await.unwrap();
    ids.remove(3);
    assert_eq!(batch(&store, id).await.counts.total, 6);

    for order in [Order::Asc, Order::Desc] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .jobs_list(JobsList {
                    batch: Some(id),
                    limit: 4,
                    after,
                    order,
                    ..Default::default()
                })
                .await
                .unwrap();
            seen.extend(page.jobs.iter().map(|j| j.id));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut expected = ids.clone();
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order:?}");
    }
    let running = store
        .jobs_list(JobsList {
            batch: Some(id),
            state: Some(JobState::Running),
            limit: 10,
            order: Order::Asc,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        running.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [leased[1].job.id, leased[2].job.id]
    );
}

pub async fn pruning_keeps_unfinished_batches_and_takes_finished_ones_whole(store: S) {
    let now = t0();
    let later = now + ms(60_000);
    let unfinished = create(&store, jobs(2, "a"), false, now).await;
    let leased = fetch(&store, "a", 1, now).await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    let finished = create(&store, jobs(2, "b"), false, now).await;
    complete_all(&store, "b", now).await;
    let outside = insert_one(&store, NewJob::new("alone", json!({})), now).await;
    let leased = fetch(&store, "default", 1, now).await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();

    // The job pruner leaves jobs in batches alone.
    let pruned = store
        .jobs_prune(JobsPrune {
            states: vec![JobState::Completed],
            finished_before: later,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert!(store.job_get(outside.id).await.unwrap().is_none());
    // Batches whose settling was stamped by the database's clock: prune
    // with a cutoff well after it.
    let far = Utc::now() + ms(3_600_000);
    let pruned = store
        .batches_prune(BatchesPrune {
            finished_before: far,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert!(store.batch_get(finished.batch.id).await.unwrap().is_none());
    assert!(store.job_get(finished.jobs[0].id).await.unwrap().is_none());
    let kept = batch(&store, unfinished.batch.id).await;
    assert_eq!((kept.counts.total, kept.counts.completed), (2, 1));
    assert!(store
        .job_get(unfinished.jobs[0].id)
        .await
        .unwrap()
        .is_some());
    let listed = store
        .batches_list(BatchesList {
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|b| b.id).collect::<Vec<_>>(),
        [unfinished.batch.id]
    );
}

pub async fn a_worker_lost_mid_batch_still_finishes_it_right(store: S) {
    let now = t0();
    let once = |i: i64| NewJob {
        queue: "lost".into(),
        max_attempts: if i == 0 { 1 } else { 2 },
        ..NewJob::new("part", json!({ "i": i }))
    };
    let created = create(&store, (0..2).map(once).collect(), false, now).await;
    let id = created.batch.id;
    // The worker holding both dies: their leases run out and are rescued,
    // one retried (a second attempt), one out of attempts (dead).
    fetch(&store, "lost", 2, now).await;
    let later = now + ms(60_000);
    let rescued = store
        .jobs_rescue_expired(grafter_store::JobsRescue {
            now: later,
            limit: 100,
            backoff: no_jitter(),
        })
        .await
        .unwrap();
    assert_eq!(rescued, 2);
    let b = batch(&store, id).await;
    assert_eq!(
        (b.counts.dead, b.counts.pending, b.state),
        (1, 1, BatchState::Running)
    );
    assert_eq!(callback_kinds(&store).await, ["on_failure"]);
    // The retry runs to completion on another worker: the batch settles once.
    store
        .jobs_schedule(grafter_store::MaintenanceBatch {
            now: later + ms(3_600_000),
            limit: 100,
        })
        .await
        .unwrap();
    complete_all(&store, "lost", later + ms(3_600_000)).await;
    let b = batch(&store, id).await;
    assert_eq!(b.state, BatchState::CompletedWithFailures);
    assert_eq!(
        (b.counts.completed, b.counts.dead, b.counts.pending),
        (1, 1, 0)
    );
    assert_eq!(callback_kinds(&store).await, ["on_complete", "on_failure"]);
}
