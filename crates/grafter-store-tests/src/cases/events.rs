//! Live events (docs/events.md): a watched job's changes are logged in the
//! transaction that makes them, in order, and wake its watchers; other jobs
//! log nothing.

use std::time::Duration;

use grafter_core::{JobState, NewJob, Progress};
use grafter_store::{
    job_watch_key, JobEvent, JobEventKind, JobEventsList, JobRetry, JobsPrune, JobsRescue,
};
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
