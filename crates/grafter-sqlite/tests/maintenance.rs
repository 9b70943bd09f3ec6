//! Maintenance on rows the store cannot read: set aside, and the rest go on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_core::{JobState, NewJob};
use grafter_sqlite::SqliteStore;
use grafter_store::transitions::SET_ASIDE;
use grafter_store::{JobsFetch, JobsInsert, JobsRescue, Store};
use serde_json::json;

#[tokio::test]
async fn a_row_that_cannot_be_read_is_set_aside_and_the_others_are_rescued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let now = Utc::now();
    let jobs = vec![NewJob::new("a", json!({})), NewJob::new("b", json!({}))];
    let inserted = store
        .jobs_insert_many(JobsInsert { jobs, now })
        .await
        .unwrap();
    let fetch = JobsFetch {
        queues: vec!["default".into()],
        max: 2,
        lease_duration: Duration::from_secs(1),
        worker_id: None,
        running_limit: None,
        now,
    };
    assert_eq!(store.jobs_fetch(fetch).await.unwrap().len(), 2);
    let (broken, fine) = (inserted[0].job.id, inserted[1].job.id);
    // Written behind the store's back, as a bad upgrade or a hand edit might.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE jobs SET errors = '\"not a list\"' WHERE id = ?1",
        [broken.0],
    )
    .unwrap();
    drop(raw);
    assert!(
        store.job_get(broken).await.is_err(),
        "the row no longer reads"
    );

    let rescued = store
        .jobs_rescue_expired(JobsRescue {
            now: now + chrono::Duration::seconds(2),
            limit: 10,
            backoff: Default::default(),
        })
        .await
        .expect("one unreadable row does not fail the pass");
    assert_eq!(rescued, 2);
    let fine = store.job_get(fine).await.unwrap().unwrap();
    assert_eq!(fine.state, JobState::Retryable);
    assert_eq!(fine.errors[0].error, "lease expired");
    let broken = store.job_get(broken).await.unwrap().unwrap();
    assert_eq!(broken.state, JobState::Dead);
    assert!(
        broken.errors.last().unwrap().error.starts_with(SET_ASIDE),
        "{:?}",
        broken.errors
    );
    assert_eq!(broken.errors.last().unwrap().attempt, 1);
}
