//! The shared conformance suite on SQLite, each case on its own temp file.

use std::sync::Arc;

use grafter_sqlite::SqliteStore;
use grafter_store_tests::{conformance_suite, Harness};

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .expect("open store");
    Harness::new(Arc::new(store), dir)
}

conformance_suite!(sqlite());
