//! The maintenance passes: rescuing expired leases, expiring jobs past their
//! deadline, pruning old finished jobs. (Scheduling due jobs is in `inserts.rs`,
//! with the jobs inserted for later.)

use std::time::Duration;

use grafter_core::{JobId, JobState, NewJob, Timestamp};
use grafter_store::transitions::{LEASE_EXPIRED, SET_ASIDE, SET_ASIDE_AGAIN_AFTER};
use grafter_store::{JobsPrune, JobsRescue, MaintenanceBatch};
use serde_json::json;

use super::{complete_params, fail_params, fetch, fetch_params, get, insert, ms, no_jitter, t0, S};

/// Past `lease_expires_at` a lease is still current until the rescuer takes
/// the job back: an outcome arriving in between is recorded (docs/protocol.md).
pub async fn rescue_ends_expired_leases_as_failed_attempts(store: S) {
    let now = t0();
    let mut last = NewJob::new("last", json!({}));
    last.max_attempts = 1;
    let late = NewJob::new("late", json!({}));
    insert(&store, vec![NewJob::new("k", json!({})), last, late], now).await;
    let leased = fetch(&store, "default", 3, now).await;
    let rescue = |now| JobsRescue {
        now,
        limit: 10,
        backoff: no_jitter(),
    };
    assert_eq!(
        store
            .jobs_rescue_expired(rescue(now + ms(29_999)))
            .await
            .unwrap(),
        0
    );
    let acked = store
        .job_complete(complete_params(&leased[2], now + ms(30_500)))
        .await
        .expect("an outcome after the lease's end, before the rescue, is recorded");
    assert_eq!(acked.state, JobState::Completed);
    assert_eq!(
        store
            .jobs_rescue_expired(rescue(now + ms(30_000)))
            .await
            .unwrap(),
        2
    );

    let retried = get(&store, leased[0].job.id).await;
    assert_eq!(retried.state, JobState::Retryable);
    assert_eq!(retried.errors.len(), 1);
    assert_eq!(retried.errors[0].error, LEASE_EXPIRED);
    assert_eq!(retried.errors[0].worker_id.as_deref(), Some("worker-1"));
    assert_eq!(retried.run_at, now + ms(30_000) + ms(1_000));
    let dead = get(&store, leased[1].job.id).await;
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.errors[0].error, LEASE_EXPIRED);
    assert_eq!(
        store
            .jobs_rescue_expired(rescue(now + ms(60_000)))
            .await
            .unwrap(),
        0
    );
}

pub async fn expires_at_expires_unstarted_jobs(store: S) {
    let now = t0();
    let mut soon = NewJob::new("soon", json!({}));
    soon.expires_at = Some(now + ms(1_000));
    let mut later = NewJob::new("later", json!({}));
    later.expires_at = Some(now + ms(60_000));
    let jobs = insert(&store, vec![soon, later], now).await;
    // Past its deadline a job is not handed out, even before the expirer runs.
    let leased = fetch(&store, "default", 10, now + ms(1_000)).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.kind, "later");
    let batch = MaintenanceBatch {
        now: now + ms(1_000),
        limit: 10,
    };
    assert_eq!(store.jobs_expire(batch).await.unwrap(), 1);
    let expired = get(&store, jobs[0].id).await;
    assert_eq!(expired.state, JobState::Expired);
    assert_eq!(expired.finished_at, Some(now + ms(1_000)));
    // A running job is not expired: it has started.
    let batch = MaintenanceBatch {
        now: now + ms(120_000),
        limit: 10,
    };
    assert_eq!(store.jobs_expire(batch).await.unwrap(), 0);
}

pub async fn prune_deletes_old_finished_jobs_only(store: S) {
    let now = t0();
    let mut once = NewJob::new("once", json!({}));
    once.max_attempts = 1;
    let jobs = insert(
        &store,
        vec![
            NewJob::new("done", json!({})),
            once,
            NewJob::new("waiting", json!({})),
        ],
        now,
    )
    .await;
    let leased = fetch(&store, "default", 2, now).await;
    store
        .job_complete(complete_params(&leased[0], now))
        .await
        .unwrap();
    store
        .job_fail(fail_params(&leased[1], "x", now + ms(10_000)))
        .await
        .unwrap();
    let prune = |states: Vec<JobState>, before| JobsPrune {
        states,
        finished_before: before,
        limit: 100,
    };
    let finished = vec![
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Expired,
    ];
    // A dry run counts what the prune then deletes.
    let count = |states: Vec<JobState>, before| store.jobs_prunable_count(prune(states, before));
    assert_eq!(count(finished.clone(), now).await.unwrap(), 0);
    assert_eq!(
        store
            .jobs_prune(prune(finished.clone(), now))
            .await
            .unwrap(),
        0,
        "nothing finished before now"
    );
    assert_eq!(
        count(vec![JobState::Completed], now + ms(20_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        count(finished.clone(), now + ms(20_000)).await.unwrap(),
        2,
        "the count ignores the limit and names every finished state asked for"
    );
    assert_eq!(
        store
            .jobs_prune(prune(vec![JobState::Completed], now + ms(20_000)))
            .await
            .unwrap(),
        1
    );
    assert!(store.job_get(jobs[0].id).await.unwrap().is_none());
    assert!(
        store.job_get(jobs[1].id).await.unwrap().is_some(),
        "dead jobs were not named"
    );
    // Unfinished states are never pruned, even when named.
    assert_eq!(
        count(vec![JobState::Available], now + ms(20_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .jobs_prune(prune(vec![JobState::Available], now + ms(20_000)))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .jobs_prune(prune(finished, now + ms(20_000)))
            .await
            .unwrap(),
        1
    );
    assert!(store.job_get(jobs[2].id).await.unwrap().is_some());
}

/// Two jobs leased at `now` for a second, by id.
async fn two_running_for_a_second(store: &S, now: Timestamp) -> (JobId, JobId) {
    let jobs = vec![NewJob::new("a", json!({})), NewJob::new("b", json!({}))];
    let inserted = insert(store, jobs, now).await;
    let mut params = fetch_params("default", 2, now);
    params.lease_duration = Duration::from_secs(1);
    assert_eq!(store.jobs_fetch(params).await.unwrap().len(), 2);
    (inserted[0].id, inserted[1].id)
}

/// Not in the suite's list, since only a backend's own test can break a row
/// behind the store's back: `make_unreadable` does that to one of two jobs
/// whose leases expired. The rescue pass sets that one aside (dead, with why
/// in its errors) and rescues the other.
pub async fn an_unreadable_row_is_set_aside_and_the_others_are_rescued(
    store: S,
    make_unreadable: impl AsyncFnOnce(JobId),
) {
    let now = t0();
    let (broken, fine) = two_running_for_a_second(&store, now).await;
    make_unreadable(broken).await;
    assert!(
        store.job_get(broken).await.is_err(),
        "the row no longer reads"
    );

    let rescued = store
        .jobs_rescue_expired(JobsRescue {
            now: now + ms(2_000),
            limit: 10,
            backoff: no_jitter(),
        })
        .await
        .expect("one unreadable row does not fail the pass");
    assert_eq!(rescued, 2);
    let fine = get(&store, fine).await;
    assert_eq!(fine.state, JobState::Retryable);
    assert_eq!(fine.errors[0].error, LEASE_EXPIRED);
    let broken = get(&store, broken).await;
    assert_eq!(broken.state, JobState::Dead);
    let last = broken.errors.last().unwrap();
    assert!(last.error.starts_with(SET_ASIDE), "{:?}", broken.errors);
    assert_eq!(last.attempt, 1);
}

/// Not in the suite's list, as the case above: `make_immovable` makes one of
/// two jobs whose leases expired refuse every change of state (a trigger
/// behind the store's back, as a cascade the database cannot run would).
/// The rescue pass can neither rescue it nor set it aside: it leaves it
/// running, out of the way until [`SET_ASIDE_AGAIN_AFTER`], and rescues the
/// other; the next pass is not stopped by it either.
pub async fn a_job_that_cannot_even_be_set_aside_stops_no_rescue(
    store: S,
    make_immovable: impl AsyncFnOnce(JobId),
) {
    let now = t0();
    let (stuck, fine) = two_running_for_a_second(&store, now).await;
    make_immovable(stuck).await;

    let pass = |at_ms: i64| {
        store.jobs_rescue_expired(JobsRescue {
            now: now + ms(at_ms),
            limit: 10,
            backoff: no_jitter(),
        })
    };
    pass(2_000)
        .await
        .expect("the job that cannot move fails no pass");
    assert_eq!(get(&store, fine).await.state, JobState::Retryable);
    let stuck_job = get(&store, stuck).await;
    assert_eq!(stuck_job.state, JobState::Running);
    let again = now + ms(2_000) + chrono::Duration::from_std(SET_ASIDE_AGAIN_AFTER).unwrap();
    assert_eq!(stuck_job.lease_expires_at, Some(again));
    assert_eq!(pass(3_000).await.expect("nor the next"), 0);
}
