//! One job by id, changed by hand: cancel, retry (with new args), reschedule,
//! delete.

use grafter_core::{Job, JobId, JobState, NewJob};
use grafter_store::{
    ArgsMatch, JobCancel, JobComplete, JobReschedule, JobRetry, JobsList, MaintenanceBatch,
    StoreError,
};
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

/// A completed job's result stands (and a batch it is in may have fired
/// `on_success`): a reschedule refuses it as a retry does, and changes
/// nothing. A dead or cancelled one is final only until run again by hand.
pub async fn completed_jobs_are_neither_retried_nor_rescheduled(store: S) {
    let now = t0();
    let jobs = insert(
        &store,
        vec![
            NewJob::new("done", json!({})),
            NewJob::new("off", json!({})),
        ],
        now,
    )
    .await;
    let leased = fetch(&store, "default", 1, now).await.remove(0);
    store
        .job_complete(JobComplete {
            result: Some(json!({"sent": true})),
            ..complete_params(&leased, now)
        })
        .await
        .unwrap();
    let completed = get(&store, leased.job.id).await;
    let refused = |result: Result<Job, StoreError>| {
        assert!(
            matches!(
                result,
                Err(StoreError::InvalidState {
                    state: JobState::Completed,
                    ..
                })
            ),
            "expected InvalidState, got {result:?}"
        );
    };
    for run_at in [now, now + ms(60_000)] {
        refused(
            store
                .job_reschedule(JobReschedule {
                    id: completed.id,
                    run_at,
                    now,
                })
                .await,
        );
    }
    refused(
        store
            .job_retry(JobRetry {
                id: completed.id,
                args: None,
                now,
            })
            .await,
    );
    assert_eq!(get(&store, completed.id).await, completed, "unchanged");

    store
        .job_cancel(JobCancel {
            id: jobs[1].id,
            now,
        })
        .await
        .unwrap();
    let rescheduled = store
        .job_reschedule(JobReschedule {
            id: jobs[1].id,
            run_at: now + ms(60_000),
            now,
        })
        .await
        .unwrap();
    assert_eq!(rescheduled.state, JobState::Scheduled);
    assert!(rescheduled.finished_at.is_none());
}

/// A job run again by hand is not held to a deadline it has passed: a retry
/// or reschedule of an expired job, or of one whose `expires_at` came while
/// it was cancelled, drops it, so the expirer leaves the job to be fetched. A
/// deadline still ahead of the new run stays.
pub async fn retry_or_reschedule_runs_an_expired_job_again(store: S) {
    let now = t0();
    let expiring = |kind: &str, expires_in_ms: i64| NewJob {
        expires_at: Some(now + ms(expires_in_ms)),
        ..NewJob::new(kind, json!({}))
    };
    let jobs = insert(
        &store,
        vec![
            expiring("retried", 1_000),
            expiring("rescheduled", 1_000),
            expiring("cancelled", 1_000),
            expiring("still_ahead", 60_000),
        ],
        now,
    )
    .await;
    for job in [&jobs[2], &jobs[3]] {
        store
            .job_cancel(JobCancel { id: job.id, now })
            .await
            .unwrap();
    }
    let pass = |at| MaintenanceBatch {
        now: at,
        limit: 100,
    };
    assert_eq!(store.jobs_expire(pass(now + ms(2_000))).await.unwrap(), 2);
    assert_eq!(get(&store, jobs[0].id).await.state, JobState::Expired);

    let later = now + ms(3_000);
    let retried = store
        .job_retry(JobRetry {
            id: jobs[0].id,
            args: None,
            now: later,
        })
        .await
        .unwrap();
    let rescheduled = store
        .job_reschedule(JobReschedule {
            id: jobs[1].id,
            run_at: later + ms(1_000),
            now: later,
        })
        .await
        .unwrap();
    let revived = store
        .job_reschedule(JobReschedule {
            id: jobs[2].id,
            run_at: later,
            now: later,
        })
        .await
        .unwrap();
    let kept = store
        .job_retry(JobRetry {
            id: jobs[3].id,
            args: None,
            now: later,
        })
        .await
        .unwrap();
    assert_eq!(retried.state, JobState::Available);
    assert_eq!(rescheduled.state, JobState::Scheduled);
    assert_eq!(revived.state, JobState::Available);
    for job in [&retried, &rescheduled, &revived] {
        assert_eq!(job.expires_at, None, "{}", job.kind);
    }
    assert_eq!(kept.expires_at, jobs[3].expires_at);

    let after = later + ms(2_000);
    assert_eq!(store.jobs_expire(pass(after)).await.unwrap(), 0);
    store.jobs_schedule(pass(after)).await.unwrap();
    let mut leased: Vec<JobId> = fetch(&store, "default", 10, after)
        .await
        .iter()
        .map(|l| l.job.id)
        .collect();
    leased.sort_unstable();
    assert_eq!(leased, jobs.iter().map(|j| j.id).collect::<Vec<_>>());
}
