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
use std::time::{Duration, Instant};

use grafter_store::{Result, StoreError, Wakeups};
use rusqlite::functions::FunctionFlags;
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
    pub fn start(path: &Path, committed: Arc<Notify>, wakeups: Wakeups) -> Result<Self> {
        let mut conn = open(path, wakeups).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        })?;
        migrations::apply(&mut conn).map_err(|e| match e {
            StoreError::Invalid(m) => StoreError::Invalid(format!("{}: {m}", path.display())),
            StoreError::Backend(m) => StoreError::Backend(format!("{}: {m}", path.display())),
            other => other,
        })?;
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

fn open(path: &Path, wakeups: Wakeups) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // A dependent that its upstream's trigger makes available wakes the
    // waiters of its queue (migrations/0016_dependencies.sql). Before the
    // commit, but harmlessly: a woken fetch runs on this thread, after it.
    conn.create_scalar_function(
        "grafter_released",
        1,
        FunctionFlags::SQLITE_UTF8,
        move |ctx| {
            let queue: String = ctx.get(0)?;
            wakeups.wake([queue.as_str()]);
            Ok(true)
        },
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL lets readers run beside the writer; FULL syncs the WAL on every commit,
    // which is what makes an acknowledged change survive power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A dependent cancelled by its upstream's trigger cancels its own
    // dependents by the same trigger (migrations/0016_dependencies.sql).
    conn.pragma_update(None, "recursive_triggers", "ON")?;
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
    let mut gathering = Gathering::default();
    // What queued up while the last group committed.
    let mut waiting = Vec::new();
    loop {
        let mut group = std::mem::take(&mut waiting);
        let earlier = group.len();
        if group.is_empty() {
            match queue.recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        gathering.gather(&queue, &mut group, earlier);
        let started = Instant::now();
        let error = commit_group(&conn, &mut group);
        let took = started.elapsed();
        if error.is_none() {
            committed.notify_one();
        }
        let answered = group.len();
        for op in group {
            op.answer(error.as_ref());
        }
        gathering = Gathering::after_answering(answered, took);
        take_queued(&queue, &mut waiting);
    }
    tracing::debug!("SQLite writer stopped");
}

/// Moves what has queued up into `group`, up to [`MAX_GROUP`].
fn take_queued(queue: &mpsc::Receiver<Box<dyn Op>>, group: &mut Vec<Box<dyn Op>>) {
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(op) => group.push(op),
            Err(_) => break,
        }
    }
}

/// How the next group is gathered after a commit answered its callers.
///
/// Callers that wait for their answer before sending again (an app's
/// request threads enqueueing one job each) come back a little after it.
/// Committing at once whatever is there splits them: what arrived during
/// the last commit makes a group of its own, the callers just answered
/// arrive during its commit and wait for the next one, so each caller waits
/// for about two commits and each commit syncs half of them. So the writer
/// waits for as many operations to arrive after an answer as that answer
/// went to, but never longer after it than the commit took (and at most
/// [`MAX_GATHER`]): on a disk whose sync takes milliseconds a caller comes
/// back well within that, and where a commit is quick the wait is as short.
/// A caller on its own never waits for anyone (its next operation is the one
/// expected), nor does the first operation after a quiet spell.
#[derive(Default)]
struct Gathering {
    /// Operations answered by the last commit, so expected back.
    expected: usize,
    /// No waiting for them after this.
    until: Option<Instant>,
}

/// The longest the writer waits for answered callers to come back.
const MAX_GATHER: Duration = Duration::from_millis(2);

impl Gathering {
    fn after_answering(answered: usize, commit_took: Duration) -> Self {
        Gathering {
            expected: answered,
            until: Some(Instant::now() + commit_took.min(MAX_GATHER)),
        }
    }

    /// Adds to `group`, whose first `earlier` operations arrived before the
    /// last answer, what has queued up and, while fewer than expected
    /// arrived since the answer, what arrives before `until`.
    fn gather(
        &self,
        queue: &mpsc::Receiver<Box<dyn Op>>,
        group: &mut Vec<Box<dyn Op>>,
        earlier: usize,
    ) {
        while group.len() < MAX_GROUP {
            let next = match queue.try_recv() {
                Ok(op) => Some(op),
                Err(_) if group.len() - earlier >= self.expected => None,
                Err(_) => self
                    .until
                    .and_then(|until| until.checked_duration_since(Instant::now()))
                    .and_then(|left| queue.recv_timeout(left).ok()),
            };
            match next {
                Some(op) => group.push(op),
                None => break,
            }
        }
    }
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
        let conn = open(&dir.path().join("t.db"), Wakeups::default()).unwrap();
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

    fn noop() -> Box<dyn Op> {
        op(|_: &Connection| Ok(())).0
    }

    #[test]
    fn gathering_waits_for_the_callers_just_answered_and_no_longer() {
        let (send, receive) = mpsc::channel();
        // One operation came during the commit; one caller was answered and
        // comes back 50 ms later: the group waits for it, not for the deadline.
        let gathering = Gathering {
            expected: 1,
            until: Some(Instant::now() + Duration::from_secs(5)),
        };
        let late = send.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            assert!(late.send(noop()).is_ok());
        });
        let started = Instant::now();
        let mut group = vec![noop()];
        gathering.gather(&receive, &mut group, 1);
        assert_eq!(group.len(), 2);
        assert!(started.elapsed() < Duration::from_secs(4));
        sender.join().unwrap();

        // A caller on its own is the one expected: nothing to wait for.
        let started = Instant::now();
        let mut group = vec![noop()];
        gathering.gather(&receive, &mut group, 0);
        assert_eq!(group.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(4));

        // Callers that do not come back are waited for until the deadline only.
        let gathering = Gathering {
            expected: 3,
            until: Some(Instant::now() + Duration::from_millis(100)),
        };
        let started = Instant::now();
        let mut group = vec![noop()];
        gathering.gather(&receive, &mut group, 0);
        assert_eq!(group.len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert!(started.elapsed() < Duration::from_secs(4));
        drop(send);
    }
}
