//! Job ids across restarts: the largest id ever used is kept in the file, so a
//! store opened again never hands out the id of a job deleted or pruned before.

use chrono::Utc;
use grafter_core::{JobId, JobState, NewJob};
use grafter_sqlite::SqliteStore;
use grafter_store::{JobCancel, JobsInsert, JobsPrune, Store};
use serde_json::json;

async fn enqueue(store: &SqliteStore, n: usize) -> Vec<JobId> {
    store
        .jobs_insert_many(JobsInsert {
            jobs: (0..n).map(|i| NewJob::new("k", json!(i))).collect(),
            now: Utc::now(),
        })
        .await
        .unwrap()
        .into_iter()
        .map(|inserted| inserted.job.id)
        .collect()
}

#[tokio::test]
async fn ids_are_not_reused_after_the_store_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grafter.db");

    let store = SqliteStore::open(&path).await.unwrap();
    let first = enqueue(&store, 3).await;
    let newest = first[2];
    store.job_delete(newest).await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    let after_delete = enqueue(&store, 1).await[0];
    assert!(
        after_delete > newest,
        "reopened, job {after_delete} got an id at or below the deleted {newest}"
    );
    let now = Utc::now();
    for id in [first[0], first[1], after_delete] {
        store.job_cancel(JobCancel { id, now }).await.unwrap();
    }
    let pruned = store
        .jobs_prune(JobsPrune {
            states: vec![JobState::Cancelled],
            finished_before: now + chrono::Duration::seconds(1),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 3, "the table is empty");
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    let after_prune = enqueue(&store, 1).await[0];
    assert!(
        after_prune > after_delete,
        "reopened after pruning every job, job {after_prune} got an id at or below {after_delete}"
    );
}
