//! The single writer thread and its group commit.
//!
//! Callers send closures; the thread takes every closure that has queued up (up
//! to [`MAX_GROUP`]), runs each inside its own savepoint within one transaction,
//! commits once, and only then answers each caller. A caller therefore never sees
//! `Ok` for a change that is not on disk, and one failing closure does not undo
//! the others.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use grafter_store::{Result, StoreError};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::migrations;

/// Most closures committed together.
const MAX_GROUP: usize = 512;

type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// An operation: given the open transaction (or why there is none), it does its
/// work and returns how to answer its caller once the commit's fate is known.
type Op = Box<dyn FnOnce(std::result::Result<&Connection, &StoreError>) -> Finish + Send>;

/// Handle to the writer thread. Dropping the last handle stops the thread after
/// it has committed what it was given.
pub struct Writer {
    ops: mpsc::Sender<Op>,
}

impl Writer {
    /// Opens the write connection, migrates, and starts the thread.
    pub fn start(path: &Path) -> Result<Self> {
        let mut conn = open(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot open SQLite database {}: {e}", path.display()))
        })?;
        migrations::apply(&mut conn)
            .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", path.display())))?;
        let (ops, queue) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("grafter-sqlite-writer".into())
            .spawn(move || run(conn, queue))
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        Ok(Writer { ops })
    }

    /// Runs `f` in the next group commit and answers once that commit is durable.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Op = Box::new(move |conn| {
            let outcome = match conn {
                Ok(conn) => in_savepoint(conn, f),
                Err(error) => Err(error.clone()),
            };
            Box::new(move |commit_error| {
                let _ = reply.send(match commit_error {
                    Some(error) => Err(error.clone()),
                    None => outcome,
                });
            })
        });
        self.ops.send(op).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL lets readers run beside the writer; FULL syncs the WAL on every commit,
    // which is what makes an acknowledged change survive power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT op").map_err(backend)?;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
        .unwrap_or_else(|_| Err(StoreError::Backend("internal error in a store operation".into())));
    let end = if outcome.is_ok() {
        "RELEASE op"
    } else {
        "ROLLBACK TO op; RELEASE op"
    };
    conn.execute_batch(end).map_err(backend)?;
    outcome
}

fn run(conn: Connection, queue: mpsc::Receiver<Op>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let (finishes, group_error) = commit_group(&conn, group);
        for finish in finishes {
            finish(group_error.as_ref());
        }
    }
    tracing::debug!("SQLite writer stopped");
}

/// Runs a group in one transaction. Returns each op's finisher, plus the error
/// that sank the whole group, if any.
fn commit_group(conn: &Connection, group: Vec<Op>) -> (Vec<Finish>, Option<StoreError>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let error = unavailable(e);
        tracing::error!(%error, "SQLite could not begin a transaction");
        let finishes = group.into_iter().map(|op| op(Err(&error))).collect();
        return (finishes, None);
    }
    let finishes: Vec<_> = group.into_iter().map(|op| op(Ok(conn))).collect();
    match conn.execute_batch("COMMIT") {
        Ok(()) => (finishes, None),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = %e, "SQLite commit failed");
            (finishes, Some(unavailable(e)))
        }
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}
