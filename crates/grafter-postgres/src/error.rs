//! Translation of driver and pool errors into [`StoreError`], at the edge, so
//! nothing above the store sees a `tokio_postgres` type.

use std::error::Error as _;

use deadpool_postgres::PoolError;
use grafter_store::StoreError;
use tokio_postgres::error::SqlState;

/// A driver error as a [`StoreError`]: connection trouble (and the errors a
/// retry may cure: serialization failures, deadlocks, a server shutting down or
/// out of connections) is `Unavailable`; everything else is `Backend`.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.code().map(SqlState::code) == Some(DEPENDENCY_TOO_DEEP) {
        return StoreError::too_deep("depends_on".into());
    }
    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        return StoreError::Unavailable(format!(
            "waited over {} s for a lock another transaction holds (an open transaction \
             that enqueued a dependent of this job or batch holds it until it ends): {}",
            crate::LOCK_TIMEOUT.as_secs(),
            describe(&e)
        ));
    }
    let message = describe(&e);
    if is_transient(&e) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Backend(message)
    }
}

/// The SQLSTATE of an edge that would make a chain of dependencies too deep
/// (migrations/0023_dependency_depth.sql).
const DEPENDENCY_TOO_DEEP: &str = "GRD01";

/// [`pg_error`] with what the store was doing in front of the message.
pub(crate) fn pg_error_in(doing: &str, e: tokio_postgres::Error) -> StoreError {
    match pg_error(e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{doing}: {m}")),
        StoreError::Backend(m) => StoreError::Backend(format!("{doing}: {m}")),
        other => other,
    }
}

/// A pool error as a [`StoreError`]. Not getting a connection in time is
/// `Unavailable`: the database is down, unreachable or saturated.
pub(crate) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error_in("connecting to PostgreSQL", e),
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "timed out waiting for a PostgreSQL connection ({kind:?})"
        )),
        PoolError::Closed => StoreError::Closed,
        PoolError::PostCreateHook(e) => {
            StoreError::Unavailable(format!("preparing a new PostgreSQL connection: {e}"))
        }
        PoolError::NoRuntimeSpecified => {
            StoreError::Backend("the connection pool has no runtime for its timeouts".into())
        }
    }
}

/// True when the error is a unique violation (another unfinished job holds the
/// `unique_key`).
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// True when PostgreSQL rolled the statement back to break a deadlock.
pub(crate) fn is_deadlock(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        // 08: connection exception; 53: insufficient resources (too many
        // connections, disk full); 57P0x: the server is shutting down or
        // starting; 40001/40P01: serialization failure or deadlock, which
        // a retry cures; 25006: read-only transaction (a failover in progress);
        // 28: authentication; 3D000: no such database.
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P0")
            || code.starts_with("28")
            || matches!(code, "40001" | "40P01" | "25006" | "3D000");
    }
    // No server answer at all: a socket, TLS or connect failure.
    e.source().is_some_and(|s| s.is::<std::io::Error>())
}

/// The message with the server's own words, which the driver's `Display` leaves out.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut message = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            message.push_str(": ");
            message.push_str(detail);
        }
        return message;
    }
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}
