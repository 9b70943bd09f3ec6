//! Maintenance on a row the store cannot read, or cannot move at all: set
//! aside or put out of the way, and the rest go on.

use std::sync::Arc;

use grafter_sqlite::SqliteStore;
use grafter_store_tests::cases::{
    a_job_that_cannot_even_be_set_aside_stops_no_rescue,
    an_unreadable_row_is_set_aside_and_the_others_are_rescued,
};

#[tokio::test]
async fn a_row_that_cannot_be_read_is_set_aside_and_the_others_are_rescued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    an_unreadable_row_is_set_aside_and_the_others_are_rescued(store, async |id| {
        // Written behind the store's back, as a bad upgrade or a hand edit might.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute(
            "UPDATE jobs SET errors = '\"not a list\"' WHERE id = ?1",
            [id.0],
        )
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_job_that_cannot_even_be_set_aside_stops_no_rescue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    a_job_that_cannot_even_be_set_aside_stops_no_rescue(store, async |id| {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(&format!(
            "CREATE TRIGGER immovable BEFORE UPDATE OF state ON jobs WHEN OLD.id = {}
             BEGIN SELECT RAISE(ABORT, 'this job cannot move'); END;",
            id.0
        ))
        .unwrap();
    })
    .await;
}
