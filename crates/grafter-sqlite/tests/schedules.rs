//! A firing that fails between a slot's job and the schedule's record of
//! the slot leaves neither (the failure injected by a trigger written
//! behind the store's back).

use std::sync::Arc;

use grafter_sqlite::SqliteStore;
use grafter_store_tests::cases::a_firing_that_fails_half_way_leaves_nothing;

#[tokio::test]
async fn a_firing_that_fails_half_way_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let raw = || rusqlite::Connection::open(&path).unwrap();
    a_firing_that_fails_half_way_leaves_nothing(
        store,
        async || {
            // Fires after the job is inserted, when the schedule records it.
            raw()
                .execute_batch(
                    "CREATE TRIGGER fail_to_record BEFORE UPDATE OF last_job_id ON schedules
                     BEGIN SELECT RAISE(ABORT, 'injected: the slot is not recorded'); END",
                )
                .unwrap();
        },
        async || {
            raw().execute_batch("DROP TRIGGER fail_to_record").unwrap();
        },
    )
    .await;
}
