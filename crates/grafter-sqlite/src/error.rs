//! SQLite errors as [`StoreError`], for the modules of the store's operations.

use grafter_store::StoreError;

pub fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
