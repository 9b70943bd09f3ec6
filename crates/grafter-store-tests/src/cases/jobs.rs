//! One job by id, changed by hand: cancel, retry (with new args), reschedule,
//! delete.

use grafter_core::{Job, JobId, JobState, NewJob};
use grafter_store::{ArgsMatch, JobCancel, JobReschedule, JobRetry, JobsList, StoreError};
use serde_json::json;

use super::{
    complete_params, fail_params, fetch, get, heartbeat_params, insert, insert_one, ms, t0, S,
};

fn assert_invalid_state(result: Result<Job, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::InvalidState { .. })),
        "expected InvalidState, got {result:?}"
    );
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
