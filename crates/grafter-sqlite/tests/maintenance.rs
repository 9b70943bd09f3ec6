//! Maintenance on a row the store cannot read: set aside, and the rest go on.

use std::sync::Arc;

use grafter_sqlite::SqliteStore;
use grafter_store_tests::cases::an_unreadable_row_is_set_aside_and_the_others_are_rescued;

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
