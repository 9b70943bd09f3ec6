//! The single writer thread and its group commit.
//!
//! Callers send operations; the thread takes every operation that has queued
//! up (up to [`MAX_GROUP`]), runs them all in one transaction, commits once, and
//! only then answers each caller. A caller therefore never sees `Ok` for a
//! change that is not on disk, and one failing operation does not undo the
//! others.
//!
//! Isolating each operation in a savepoint would make SQLite copy every page an
//! operation touches into the savepoint journal first, several pages per job,
//! which cost more than the operations themselves. So a group first runs
//! without savepoints. An operation that fails after writing something (rare:
//! fenced updates fail before they write) makes the thread roll the group back
//! and run it again, this time each operation in its own savepoint; that is why
//! operations are `Fn`, run at most twice.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use grafter_store::{Result, StoreError};
use rusqlite::Connection;
use tokio::sync::{oneshot, Notify};

use crate::migrations;

/// Most operations committed together.
const MAX_GROUP: usize = 512;

/// An operation as the writer thread holds it.
trait Op: Send {
    /// Runs the operation in the open transaction and keeps its outcome; in its
    /// own savepoint when `isolated`. Answers whether the transaction can go on
    /// without rolling back: true unless it failed after writing something.
    fn attempt(&mut self, conn: &Connection, isolated: bool) -> bool;

    /// Answers the caller once the commit's fate is known: the kept outcome, or
    /// `error` when the transaction did not begin or did not commit.
    fn answer(self: Box<Self>, error: Option<&StoreError>);
}

/// A caller's closure, its outcome once run, and where the answer goes.
struct Pending<T, F> {
    f: F,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Op for Pending<T, F>
where
    T: Send,
    F: Fn(&Connection) -> Result<T> + Send,
{
    fn attempt(&mut self, conn: &Connection, isolated: bool) -> bool {
        let outcome = if isolated {
            in_savepoint(conn, &self.f)
        } else {
            let changes = conn.total_changes();
            let outcome = catch_panic(|| (self.f)(conn));
            // A failure that wrote nothing (total_changes counts every row any
            // statement, trigger included, inserted, updated or deleted) left
            // nothing to undo: the group goes on.
            if outcome.is_err() && conn.total_changes() != changes {
                self.outcome = Some(outcome);
                return false;
            }
            outcome
        };
        self.outcome = Some(outcome);
        true
    }

    fn answer(self: Box<Self>, error: Option<&StoreError>) {
        let answer = match (error, self.outcome) {
            (Some(error), _) => Err(error.clone()),
            (None, Some(outcome)) => outcome,
            (None, None) => Err(StoreError::Backend("store operation was not run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

/// Handle to the writer thread. Dropping the last handle stops the thread after
/// it has committed what it was given.
pub struct Writer {
    ops: mpsc::Sender<Box<dyn Op>>,
}

impl Writer {
    /// Opens the write connection, migrates, and starts the thread, which
    /// signals `committed` after each commit.
    pub fn start(path: &Path, committed: Arc<Notify>) -> Result<Self> {
        let mut conn = open(path).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        })?;
        migrations::apply(&mut conn)
            .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", path.display())))?;
        let (ops, queue) = mpsc::channel::<Box<dyn Op>>();
        std::thread::Builder::new()
            .name("grafter-sqlite-writer".into())
            .spawn(move || run(conn, queue, &committed))
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        Ok(Writer { ops })
    }

    /// Runs `f` in the next group commit and answers once that commit is
    /// durable. `f` may run twice (see the module docs); only the outcome of
    /// its last run counts, and only its last run's writes are committed.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Box<dyn Op> = Box::new(Pending {
            f,
            outcome: None,
            reply,
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
    // Statement and savepoint journals only ever undo work inside the open
    // transaction; in memory they cost a copy instead of a temporary file's
    // writes. Durability is the WAL's business and does not change.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Runs `f`, turning a panic into an error so that one bad operation cannot
/// take the writer thread down.
fn catch_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(StoreError::Backend(
            "internal error in a store operation".into(),
        ))
    })
}

/// Runs a statement of transaction control, prepared once per connection.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    control(conn, "SAVEPOINT op").map_err(backend)?;
    let outcome = catch_panic(|| f(conn));
    if outcome.is_err() {
        control(conn, "ROLLBACK TO op").map_err(backend)?;
    }
    control(conn, "RELEASE op").map_err(backend)?;
    outcome
}

fn run(conn: Connection, queue: mpsc::Receiver<Box<dyn Op>>, committed: &Notify) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let error = commit_group(&conn, &mut group);
        if error.is_none() {
            committed.notify_one();
        }
        for op in group {
            op.answer(error.as_ref());
        }
    }
    tracing::debug!("SQLite writer stopped");
}

/// Runs a group in one transaction and commits it. Returns the error that sank
/// the whole group, if any.
fn commit_group(conn: &Connection, group: &mut [Box<dyn Op>]) -> Option<StoreError> {
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        let error = unavailable(e);
        tracing::error!(%error, "SQLite could not begin a transaction");
        return Some(error);
    }
    if !group.iter_mut().all(|op| op.attempt(conn, false)) {
        // Something failed half-way: start over with every operation isolated.
        let restarted = control(conn, "ROLLBACK").and_then(|()| control(conn, "BEGIN IMMEDIATE"));
        if let Err(e) = restarted {
            let _ = control(conn, "ROLLBACK");
            return Some(unavailable(e));
        }
        for op in group.iter_mut() {
            op.attempt(conn, true);
        }
    }
    match control(conn, "COMMIT") {
        Ok(()) => None,
        Err(e) => {
            let _ = control(conn, "ROLLBACK");
            tracing::error!(error = %e, "SQLite commit failed");
            Some(unavailable(e))
        }
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER UNIQUE)")
            .unwrap();
        (dir, conn)
    }

    /// An operation and where its answer arrives.
    type Queued<T> = (Box<dyn Op>, oneshot::Receiver<Result<T>>);

    fn op<T: Send + 'static>(f: impl Fn(&Connection) -> Result<T> + Send + 'static) -> Queued<T> {
        let (reply, answer) = oneshot::channel();
        (
            Box::new(Pending {
                f,
                outcome: None,
                reply,
            }),
            answer,
        )
    }

    fn insert(v: i64) -> impl Fn(&Connection) -> Result<()> + Send + 'static {
        move |conn: &Connection| {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [v])
                .map(drop)
                .map_err(backend)
        }
    }

    fn values(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Commits ops as one group and returns their answers.
    fn group<T>(conn: &Connection, ops: Vec<Queued<T>>) -> Vec<Result<T>> {
        let (mut group, mut answers): (Vec<_>, Vec<_>) = ops.into_iter().unzip();
        let error = commit_group(conn, &mut group);
        for op in group {
            op.answer(error.as_ref());
        }
        answers
            .iter_mut()
            .map(|a| a.try_recv().expect("answered"))
            .collect()
    }

    #[test]
    fn a_failure_after_writing_is_undone_alone() {
        let (_dir, conn) = db();
        let half_done = |conn: &Connection| -> Result<()> {
            insert(10)(conn)?;
            Err(StoreError::Invalid("changed my mind".into()))
        };
        let answers = group(&conn, vec![op(insert(1)), op(half_done), op(insert(2))]);
        assert!(answers[0].is_ok() && answers[2].is_ok());
        assert!(matches!(answers[1], Err(StoreError::Invalid(_))));
        assert_eq!(values(&conn), [1, 2]);
    }

    #[test]
    fn failures_that_wrote_nothing_and_panics_leave_the_rest_alone() {
        let (_dir, conn) = db();
        insert(5)(&conn).unwrap();
        let answers = group(
            &conn,
            vec![
                op(insert(1)),
                op(insert(5)), // a unique violation: the statement wrote nothing
                op(|_: &Connection| -> Result<()> { panic!("bug") }),
                op(insert(2)),
            ],
        );
        assert!(answers[0].is_ok() && answers[3].is_ok());
        assert!(answers[1].is_err() && answers[2].is_err());
        assert_eq!(values(&conn), [1, 2, 5]);
    }
}
