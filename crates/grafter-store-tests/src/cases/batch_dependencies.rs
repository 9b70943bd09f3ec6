//! Jobs waiting for batches (`depends_on_batches`): pending until the batch
//! finishes, released when it succeeded, cancelled or run by their policy
//! when it did not, in the transaction of the batch's own finishing; a
//! batch that cannot be waited for refused with nothing inserted; waited-for
//! batches kept from the pruner.

use grafter_core::{BatchId, BatchState, DependencyFailure, JobState, Upstream};
use grafter_store::{
    BatchAdd, BatchChange, BatchCreate, BatchWithJobs, BatchesPrune, JobRetry, StoreError,
};
use serde_json::json;

use super::*;

fn job(queue: &str, kind: &str) -> NewJob {
    NewJob {
        queue: queue.into(),
        max_attempts: 1,
        ..NewJob::new(kind, json!({}))
    }
}

fn waiting(queue: &str, kind: &str, batches: &[BatchId]) -> NewJob {
    NewJob {
        depends_on_batches: batches.to_vec(),
        ..job(queue, kind)
    }
}

async fn batch(store: &S, jobs: Vec<NewJob>, open: bool, now: DateTime<Utc>) -> BatchWithJobs {
    store
        .batch_create(BatchCreate {
            jobs,
            open,
            callbacks: Default::default(),
            now,
        })
        .await
        .expect("batch_create")
}

/// Fetches the one job of `queue` and completes it (or fails it, dead).
async fn finish_one(store: &S, queue: &str, dead: bool, now: DateTime<Utc>) {
    let leased = fetch(store, queue, 1, now).await;
    assert_eq!(leased.len(), 1, "one job to finish in {queue}");
    if dead {
        let failed = store
            .job_fail(fail_params(&leased[0], "boom", now))
            .await
            .unwrap();
        assert_eq!(failed.state, JobState::Dead);
    } else {
        store
            .job_complete(complete_params(&leased[0], now))
            .await
            .unwrap();
    }
}

async fn batch_state(store: &S, id: BatchId) -> BatchState {
    store.batch_get(id).await.unwrap().unwrap().state
}

pub async fn a_job_waiting_for_a_batch_is_released_when_it_succeeds(store: S) {
    let now = t0();
    let upstream = batch(&store, vec![job("work", "a"), job("work", "b")], false, now).await;
    let id = upstream.batch.id;
    let dependent = insert_one(&store, waiting("after", "gather", &[id]), now).await;
    assert_eq!(dependent.state, JobState::Pending);
    let later = insert_one(
        &store,
        NewJob {
            run_at: Some(now + ms(3_600_000)),
            ..waiting("after", "later", &[id])
        },
        now,
    )
    .await;
    finish_one(&store, "work", false, now).await;
    assert_eq!(get(&store, dependent.id).await.state, JobState::Pending);
    assert!(fetch(&store, "after", 10, now).await.is_empty());
    finish_one(&store, "work", false, now).await;
    assert_eq!(batch_state(&store, id).await, BatchState::Succeeded);
    assert_eq!(get(&store, dependent.id).await.state, JobState::Available);
    assert_eq!(get(&store, later.id).await.state, JobState::Scheduled);
    let leased = fetch(&store, "after", 10, now).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.id, dependent.id);
    // The dependent reads the batch it waited for.
    let deps = store.job_dependencies(dependent.id).await.unwrap().unwrap();
    assert!(deps.jobs.is_empty());
    assert_eq!(deps.batches.len(), 1);
    assert_eq!(deps.batches[0].id, id);
    assert_eq!(deps.batches[0].state, BatchState::Succeeded);
}

pub async fn a_batch_with_failures_cancels_or_runs_its_dependents_by_policy(store: S) {
    let now = t0();
    let upstream = batch(
        &store,
        vec![job("mixed", "a"), job("mixed", "b")],
        false,
        now,
    )
    .await;
    let id = upstream.batch.id;
    let jobs = insert(
        &store,
        vec![
            NewJob {
                r#ref: Some("cancelled".into()),
                ..waiting("after", "cancelled", &[id])
            },
            NewJob {
                on_dependency_failure: Some(DependencyFailure::Run),
                ..waiting("after", "anyway", &[id])
            },
            NewJob {
                depends_on: vec![Upstream::Ref("cancelled".into())],
                ..job("after", "grandchild")
            },
        ],
        now,
    )
    .await;
    // A dependent in another batch is counted by its batch when cancelled.
    let downstream = batch(
        &store,
        vec![waiting("after", "in-batch", &[id])],
        false,
        now,
    )
    .await;
    finish_one(&store, "mixed", true, now).await;
    // The batch has not finished yet: its dependents wait, whatever failed.
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Pending);
    finish_one(&store, "mixed", false, now).await;
    assert_eq!(
        batch_state(&store, id).await,
        BatchState::CompletedWithFailures
    );
    let cancelled = get(&store, jobs[0].id).await;
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(get(&store, jobs[1].id).await.state, JobState::Available);
    assert_eq!(get(&store, jobs[2].id).await.state, JobState::Cancelled);
    let other = store.batch_get(downstream.batch.id).await.unwrap().unwrap();
    assert_eq!((other.counts.cancelled, other.counts.pending), (1, 0));
    assert_eq!(other.state, BatchState::CompletedWithFailures);
}

pub async fn a_cancelled_batch_fails_its_dependents_once_it_has_finished(store: S) {
    let now = t0();
    // Cancelled with nothing running: it finishes in the cancel's transaction.
    let idle = batch(&store, vec![job("idle", "a")], false, now).await;
    let dependent = insert_one(&store, waiting("after", "d", &[idle.batch.id]), now).await;
    store
        .batch_cancel(BatchChange {
            id: idle.batch.id,
            now,
        })
        .await
        .unwrap();
    assert_eq!(get(&store, dependent.id).await.state, JobState::Cancelled);
    // Cancelled with a job running: its dependents wait for that job.
    let busy = batch(&store, vec![job("busy", "a"), job("busy", "b")], false, now).await;
    let jobs = insert(
        &store,
        vec![
            waiting("after", "d", &[busy.batch.id]),
            NewJob {
                on_dependency_failure: Some(DependencyFailure::Run),
                ..waiting("after", "anyway", &[busy.batch.id])
            },
        ],
        now,
    )
    .await;
    let running = fetch(&store, "busy", 1, now).await;
    store
        .batch_cancel(BatchChange {
            id: busy.batch.id,
            now,
        })
        .await
        .unwrap();
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Pending);
    store
        .job_complete(complete_params(&running[0], now))
        .await
        .unwrap();
    assert_eq!(
        batch_state(&store, busy.batch.id).await,
        BatchState::Cancelled
    );
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Cancelled);
    assert_eq!(get(&store, jobs[1].id).await.state, JobState::Available);
}

pub async fn a_batch_finished_at_insert_is_applied_at_insert(store: S) {
    let now = t0();
    let empty = batch(&store, vec![], false, now).await;
    assert_eq!(empty.batch.state, BatchState::Succeeded);
    let failed = batch(&store, vec![job("before", "a")], false, now).await;
    finish_one(&store, "before", true, now).await;
    let jobs = insert(
        &store,
        vec![
            waiting("after", "ready", &[empty.batch.id]),
            waiting("after", "doomed", &[empty.batch.id, failed.batch.id]),
            NewJob {
                on_dependency_failure: Some(DependencyFailure::Run),
                ..waiting("after", "anyway", &[failed.batch.id])
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
            JobState::Available
        ]
    );
}

pub async fn waiting_for_an_unknown_open_or_own_batch_is_refused_and_nothing_inserted(store: S) {
    let now = t0();
    let refused = |err: Option<StoreError>, field: &str, says: &str| {
        let err = err.expect("refused");
        assert!(
            matches!(&err, StoreError::RefusedDependency { field: f, message }
                if f == field && message.contains(says)),
            "{err}"
        );
    };
    let unknown = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![
                job("refused", "a"),
                waiting("refused", "b", &[BatchId(i64::MAX)]),
            ],
            now,
        })
        .await;
    refused(
        unknown.err(),
        "jobs[1].depends_on_batches[0]",
        "does not exist",
    );
    // An open batch could yet take a job waiting for the dependent.
    let open = batch(&store, vec![], true, now).await;
    let result = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![waiting("refused", "b", &[open.batch.id])],
            now,
        })
        .await;
    refused(result.err(), "jobs[0].depends_on_batches[0]", "is open");
    // A job in the batch it waits for could never run.
    let result = store
        .batch_add(BatchAdd {
            id: open.batch.id,
            jobs: vec![
                job("refused", "a"),
                waiting("refused", "b", &[open.batch.id]),
            ],
            now,
        })
        .await;
    refused(result.err(), "jobs[1].depends_on_batches[0]", "own batch");
    // The same in a new batch whose id a job guessed.
    let next = BatchId(open.batch.id.0 + 1);
    let result = store
        .batch_create(BatchCreate {
            jobs: vec![waiting("refused", "b", &[next])],
            open: false,
            callbacks: Default::default(),
            now,
        })
        .await;
    refused(result.err(), "jobs[0].depends_on_batches[0]", "own batch");
    assert_eq!(
        store.batch_get(next).await.unwrap().map(|b| b.id),
        None,
        "the refused batch was rolled back"
    );
    assert!(fetch(&store, "refused", 10, now).await.is_empty());
    let open = store.batch_get(open.batch.id).await.unwrap().unwrap();
    assert_eq!(open.counts.total, 0);
}

pub async fn a_released_dependent_stays_released_when_its_batch_reopens(store: S) {
    let now = t0();
    let upstream = batch(&store, vec![job("flaky", "a")], false, now).await;
    let id = upstream.batch.id;
    let slow = insert_one(&store, job("slow", "slow"), now).await;
    let jobs = insert(
        &store,
        vec![
            NewJob {
                on_dependency_failure: Some(DependencyFailure::Run),
                ..waiting("after", "released", &[id])
            },
            NewJob {
                on_dependency_failure: Some(DependencyFailure::Run),
                depends_on: vec![Upstream::Job(slow.id)],
                ..waiting("after", "still-waiting", &[id])
            },
            waiting("cancelled", "cancelled", &[id]),
        ],
        now,
    )
    .await;
    finish_one(&store, "flaky", true, now).await;
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Available);
    assert_eq!(get(&store, jobs[2].id).await.state, JobState::Cancelled);
    // The dead job retried by hand reopens the batch.
    store
        .job_retry(JobRetry {
            id: upstream.jobs[0].id,
            args: None,
            now,
        })
        .await
        .unwrap();
    assert_eq!(batch_state(&store, id).await, BatchState::Running);
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Available);
    // A dependent still pending waits for the batch again.
    finish_one(&store, "slow", false, now).await;
    assert_eq!(get(&store, jobs[1].id).await.state, JobState::Pending);
    // A cancelled dependent retried by hand waits for the unfinished batch.
    let retried = store
        .job_retry(JobRetry {
            id: jobs[2].id,
            args: None,
            now,
        })
        .await
        .unwrap();
    assert_eq!(retried.state, JobState::Pending);
    finish_one(&store, "flaky", false, now).await;
    assert_eq!(batch_state(&store, id).await, BatchState::Succeeded);
    assert_eq!(get(&store, jobs[1].id).await.state, JobState::Available);
    assert_eq!(get(&store, jobs[2].id).await.state, JobState::Available);
}

pub async fn pruning_keeps_a_batch_an_unfinished_job_waits_for(store: S) {
    let now = t0();
    let upstream = batch(&store, vec![job("pruned", "a")], false, now).await;
    let slow = insert_one(&store, job("prune-slow", "slow"), now).await;
    let dependent = insert_one(
        &store,
        NewJob {
            depends_on: vec![Upstream::Job(slow.id)],
            ..waiting("prune-after", "d", &[upstream.batch.id])
        },
        now,
    )
    .await;
    finish_one(&store, "pruned", false, now).await;
    let prune = || BatchesPrune {
        finished_before: now + ms(3_600_000),
        limit: 100,
    };
    assert_eq!(store.batches_prune(prune()).await.unwrap(), 0);
    assert!(store.batch_get(upstream.batch.id).await.unwrap().is_some());
    finish_one(&store, "prune-slow", false, now).await;
    // Released, but not finished: still kept.
    assert_eq!(store.batches_prune(prune()).await.unwrap(), 0);
    finish_one(&store, "prune-after", false, now).await;
    assert_eq!(store.batches_prune(prune()).await.unwrap(), 1);
    assert!(store.batch_get(upstream.batch.id).await.unwrap().is_none());
    let deps = store.job_dependencies(dependent.id).await.unwrap().unwrap();
    assert!(deps.batches.is_empty());
    assert_eq!(deps.jobs.len(), 1);
}
