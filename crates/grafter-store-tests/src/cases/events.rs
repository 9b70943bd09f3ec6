//! Live events (docs/events.md): a watched job's (or batch's) changes are
//! logged in the transaction that makes them, in order, and wake its
//! watchers; other jobs and batches log nothing.

use std::time::Duration;

use grafter_core::{BatchId, BatchState, JobState, NewJob, Progress};
use grafter_store::{
    batch_watch_key, job_watch_key, BatchChange, BatchEvent, BatchEventKind, BatchEventsList,
    BatchesPrune, JobEvent, JobEventKind, JobEventsList, JobRetry, JobsPrune, JobsRescue,
};

use super::batches::{create, jobs};
use serde_json::json;

use super::*;

async fn events(store: &S, id: JobId, after: i64) -> Vec<JobEvent> {
    store
        .job_events_list(JobEventsList {
            job_id: id,
            after,
            limit: 100,
        })
        .await
        .unwrap()
}

fn described(events: &[JobEvent]) -> Vec<(JobEventKind, Option<JobState>, Option<i32>)> {
    events
        .iter()
        .map(|e| (e.kind, e.state, e.attempt))
        .collect()
}

pub async fn a_watched_job_logs_each_change_in_order_and_others_log_nothing(store: S) {
    let now = t0();
    let watched = insert_one(&store, NewJob::new("k", json!({})), now).await;
    let other = insert_one(&store, NewJob::new("k", json!({})), now).await;
    let start = store.job_watch(watched.id).await.unwrap().unwrap();
    assert_eq!(start.job.state, JobState::Available);
    assert_eq!(start.last_event, 0, "nothing logged before the watch");
    assert!(store
        .job_watch(JobId(watched.id.0 + 1_000))
        .await
        .unwrap()
        .is_none());

    let leased = fetch(&store, "default", 2, now).await;
    let (mine, theirs) = if leased[0].job.id == watched.id {
        (&leased[0], &leased[1])
    } else {
        (&leased[1], &leased[0])
    };
    for lease in [mine, theirs] {
        let mut beat = heartbeat_params(lease, now);
        beat.progress = Some(Progress {
            fraction: 0.5,
            message: Some("half".into()),
        });
        store.job_heartbeat(beat).await.unwrap();
        // A heartbeat that changes no progress logs nothing.
        store
            .job_heartbeat(heartbeat_params(lease, now))
            .await
            .unwrap();
        store
            .job_fail(fail_params(lease, "boom", now))
            .await
            .unwrap();
    }
    store
        .job_retry(JobRetry {
            id: watched.id,
            args: None,
            now,
        })
        .await
        .unwrap();
    let again = fetch(&store, "default", 1, now).await.remove(0);
    assert_eq!(again.job.id, watched.id);
    store
        .job_complete(complete_params(&again, now))
        .await
        .unwrap();

    let logged = events(&store, watched.id, 0).await;
    assert_eq!(
        described(&logged),
        [
            (JobEventKind::State, Some(JobState::Running), Some(1)),
            (JobEventKind::Progress, Some(JobState::Running), Some(1)),
            (JobEventKind::State, Some(JobState::Retryable), Some(1)),
            (JobEventKind::State, Some(JobState::Available), Some(1)),
            (JobEventKind::State, Some(JobState::Running), Some(2)),
            (JobEventKind::State, Some(JobState::Completed), Some(2)),
        ]
    );
    assert_eq!(logged[1].progress.as_ref().unwrap().fraction, 0.5);
    assert!(logged.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(logged.iter().all(|e| e.job_id == watched.id));
    let after_second = events(&store, watched.id, logged[1].seq).await;
    assert_eq!(after_second.len(), 4, "only the events after the id");
    assert!(events(&store, other.id, 0).await.is_empty(), "not watched");

    // Watching again changes nothing; a finished job is answered, not watched.
    let finished = store.job_watch(watched.id).await.unwrap().unwrap();
    assert_eq!(finished.job.state, JobState::Completed);
    assert_eq!(finished.last_event, logged.last().unwrap().seq);
    let other_now = store.job_watch(other.id).await.unwrap().unwrap();
    assert_eq!(other_now.last_event, 0);
}

pub async fn a_rescue_and_a_deletion_of_a_watched_job_are_logged(store: S) {
    let now = t0();
    let job = insert_one(&store, NewJob::new("k", json!({})), now).await;
    fetch(&store, "default", 1, now).await;
    store.job_watch(job.id).await.unwrap().unwrap();
    let rescued = store
        .jobs_rescue_expired(JobsRescue {
            now: now + ms(60_000),
            limit: 10,
            backoff: no_jitter(),
        })
        .await
        .unwrap();
    assert_eq!(rescued, 1);
    let logged = events(&store, job.id, 0).await;
    assert_eq!(
        described(&logged),
        [(JobEventKind::State, Some(JobState::Retryable), Some(1))]
    );
    store.job_delete(job.id).await.unwrap();
    let after_delete = events(&store, job.id, 0).await;
    assert_eq!(
        described(&after_delete),
        [(JobEventKind::Deleted, None, None)],
        "the log goes with the job, but for the deletion"
    );
    assert!(after_delete[0].seq > logged[0].seq);
    // The deletion goes with the finished jobs of its time.
    store
        .jobs_prune(JobsPrune {
            states: vec![JobState::Completed],
            finished_before: now + ms(86_400_000),
            limit: 100,
        })
        .await
        .unwrap();
    assert!(events(&store, job.id, 0).await.is_empty());
}

pub async fn a_change_wakes_the_watchers_of_its_job_only(store: S) {
    let now = t0();
    let job = insert_one(&store, NewJob::new("k", json!({})), now).await;
    let other = insert_one(&store, NewJob::new("k", json!({})), now).await;
    let mine = store.watchers().waiter(&[job_watch_key(job.id)]);
    let theirs = store.watchers().waiter(&[job_watch_key(other.id)]);
    store.job_watch(job.id).await.unwrap();
    store.job_watch(other.id).await.unwrap();
    store
        .job_cancel(grafter_store::JobCancel { id: job.id, now })
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), mine.woken()).await;
    assert!(woken.is_ok(), "the change woke its job's watcher");
    let not_woken = tokio::time::timeout(Duration::from_millis(300), theirs.woken()).await;
    assert!(not_woken.is_err(), "another job's watcher slept on");
}

async fn batch_events(store: &S, id: BatchId, after: i64) -> Vec<BatchEvent> {
    store
        .batch_events_list(BatchEventsList {
            batch_id: id,
            after,
            limit: 100,
        })
        .await
        .unwrap()
}

/// A batch's state events as (state, open, finished).
fn state_changes(events: &[BatchEvent]) -> Vec<(BatchState, bool, bool)> {
    events
        .iter()
        .filter(|e| e.kind == BatchEventKind::State)
        .map(|e| (e.state, e.open, e.finished))
        .collect()
}

pub async fn a_watched_batch_logs_each_change_in_order_until_it_finishes(store: S) {
    let now = t0();
    let batch = create(&store, jobs(2, "parts"), true, now).await.batch;
    let other = create(&store, jobs(1, "others"), false, now).await.batch;
    let start = store.batch_watch(batch.id).await.unwrap().unwrap();
    assert_eq!(start.batch.state, BatchState::Running);
    assert_eq!(start.last_event, 0, "nothing logged before the watch");
    assert!(store
        .batch_watch(BatchId(other.id.0 + 1_000))
        .await
        .unwrap()
        .is_none());

    store
        .batch_add(grafter_store::BatchAdd {
            id: batch.id,
            jobs: jobs(1, "parts"),
            now,
        })
        .await
        .unwrap();
    store
        .batch_seal(BatchChange { id: batch.id, now })
        .await
        .unwrap();
    let leased = fetch(&store, "parts", 2, now).await;
    let mut beat = heartbeat_params(&leased[0], now);
    beat.progress = Some(Progress {
        fraction: 0.5,
        message: None,
    });
    store.job_heartbeat(beat).await.unwrap();
    // A heartbeat that changes no progress logs nothing.
    store
        .job_heartbeat(heartbeat_params(&leased[0], now))
        .await
        .unwrap();
    for lease in &leased {
        store
            .job_complete(complete_params(lease, now))
            .await
            .unwrap();
    }
    complete_all_of(&store, "others", now).await;
    // The last job fails for good, which finishes the batch.
    let last = fetch(&store, "parts", 1, now).await.remove(0);
    let mut fail = fail_params(&last, "boom", now);
    fail.retry = false;
    store.job_fail(fail).await.unwrap();

    let logged = batch_events(&store, batch.id, 0).await;
    assert!(logged.windows(2).all(|w| w[0].seq < w[1].seq), "{logged:?}");
    assert!(logged.iter().all(|e| e.batch_id == batch.id));
    assert_eq!(
        state_changes(&logged),
        [
            (BatchState::Running, false, false),
            (BatchState::CompletedWithFailures, false, true),
        ],
        "sealed, then finished: {logged:?}"
    );
    let progress: Vec<(i64, i64, f64)> = logged
        .iter()
        .filter(|e| e.kind == BatchEventKind::Progress)
        .map(|e| (e.counts.total, e.counts.completed, e.progress))
        .collect();
    assert_eq!(
        &progress[..4],
        [
            (3, 0, 0.0),
            (3, 0, 0.5 / 3.0),
            (3, 1, 1.0 / 3.0),
            (3, 2, 2.0 / 3.0)
        ],
        "added, progress, two completions: {logged:?}"
    );
    let last = logged.last().unwrap();
    assert!(last.finished);
    assert_eq!(last.state, BatchState::CompletedWithFailures);
    assert_eq!(last.counts.completed, 2);
    assert_eq!(last.counts.dead, 1);
    assert_eq!(last.counts.pending, 0);
    assert_eq!(last.progress, 1.0);
    assert_eq!(
        batch_events(&store, batch.id, logged[1].seq).await.len(),
        logged.len() - 2,
        "reading after an event starts after it"
    );
    assert!(
        batch_events(&store, other.id, 0).await.is_empty(),
        "an unwatched batch logs nothing"
    );

    // A finished batch is not watched again; pruned, its log goes with it.
    let watched = store.batch_watch(other.id).await.unwrap().unwrap();
    assert_eq!(watched.last_event, 0);
    assert!(watched.batch.finished_at.is_some());
    store
        .batches_prune(BatchesPrune {
            finished_before: now + ms(60 * 60 * 1000),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(store.batch_watch(batch.id).await.unwrap().is_none());
    assert!(batch_events(&store, batch.id, 0).await.is_empty());
}

pub async fn a_cancelled_batch_ends_when_its_running_jobs_stop(store: S) {
    let now = t0();
    let batch = create(&store, jobs(3, "parts"), false, now).await.batch;
    let running = fetch(&store, "parts", 1, now).await.remove(0);
    store.batch_watch(batch.id).await.unwrap().unwrap();
    store
        .batch_cancel(BatchChange { id: batch.id, now })
        .await
        .unwrap();
    let logged = batch_events(&store, batch.id, 0).await;
    assert_eq!(
        state_changes(&logged),
        [(BatchState::Cancelled, false, false)],
        "cancelled at once, not finished while a job runs: {logged:?}"
    );
    assert_eq!(logged.last().unwrap().counts.cancelled, 2, "{logged:?}");

    store
        .job_complete(complete_params(&running, now))
        .await
        .unwrap();
    let logged = batch_events(&store, batch.id, 0).await;
    let last = logged.last().unwrap();
    assert_eq!(last.kind, BatchEventKind::State, "{logged:?}");
    assert_eq!((last.state, last.finished), (BatchState::Cancelled, true));
    assert_eq!(last.counts.completed, 1);
    assert_eq!(last.counts.pending, 0);
}

pub async fn a_batch_change_wakes_the_watchers_of_its_batch_only(store: S) {
    let now = t0();
    let batch = create(&store, jobs(1, "parts"), true, now).await.batch;
    let other = create(&store, jobs(1, "others"), true, now).await.batch;
    let mine = store.watchers().waiter(&[batch_watch_key(batch.id)]);
    let theirs = store.watchers().waiter(&[batch_watch_key(other.id)]);
    store.batch_watch(batch.id).await.unwrap();
    store.batch_watch(other.id).await.unwrap();
    store
        .batch_seal(BatchChange { id: batch.id, now })
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), mine.woken()).await;
    assert!(woken.is_ok(), "the change woke its batch's watcher");
    let not_woken = tokio::time::timeout(Duration::from_millis(300), theirs.woken()).await;
    assert!(not_woken.is_err(), "another batch's watcher slept on");
}

async fn complete_all_of(store: &S, queue: &str, now: DateTime<Utc>) {
    for lease in fetch(store, queue, 100, now).await {
        store
            .job_complete(complete_params(&lease, now))
            .await
            .unwrap();
    }
}
