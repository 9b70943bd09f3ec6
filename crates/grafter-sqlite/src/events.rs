//! Live events (docs/events.md): watching a job (on the writer thread), its
//! logged events (on a read connection), and the task that wakes this
//! process's streams when events are logged.
//!
//! The log is written by triggers (migration 12) in the transaction of each
//! change. One process owns the file, so a committed event's `seq` is greater
//! than every earlier commit's: reading `seq > last seen` after each commit
//! misses none.

use std::sync::Arc;
use std::time::Duration;

use grafter_core::{JobId, JobState};
use grafter_store::{
    job_watch_key, JobEvent, JobEventKind, JobEventsList, Result, Wakeups, WatchedJob,
};
use rusqlite::{params, Connection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::backend;
use crate::jobs::job_get;
use crate::readers::Readers;
use crate::row::{opt_json, timestamp};

/// Longest time between two reads of the log while a stream is open (it is
/// read after each commit; this is a backstop).
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How often it is read while no stream is open, only to keep its place.
const IDLE_POLL_EVERY: Duration = Duration::from_millis(500);
/// Most events read per poll; more wait for the next one.
const POLL_BATCH: usize = 10_000;

/// Marks an unfinished job watched (the triggers log its changes from the
/// commit on) and reads it with its latest event, in the writer's
/// transaction, so both are of the same moment.
pub fn job_watch(conn: &Connection, id: JobId) -> Result<Option<WatchedJob>> {
    conn.prepare_cached(
        "UPDATE jobs SET watched = 1 WHERE id = ?1 AND NOT watched \
         AND state NOT IN ('completed', 'dead', 'cancelled', 'expired')",
    )
    .and_then(|mut stmt| stmt.execute([id.0]))
    .map_err(backend)?;
    let Some(job) = job_get(conn, id)? else {
        return Ok(None);
    };
    let last_event = conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM job_events WHERE job_id = ?1")
        .and_then(|mut stmt| stmt.query_row([id.0], |row| row.get(0)))
        .map_err(backend)?;
    Ok(Some(WatchedJob { job, last_event }))
}

pub fn job_events_list(conn: &Connection, params: &JobEventsList) -> Result<Vec<JobEvent>> {
    let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, job_id, at, kind, state, attempt, progress FROM job_events \
             WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![params.job_id.0, params.after, limit], |row| {
            let kind: String = row.get(3)?;
            let state: Option<String> = row.get(4)?;
            Ok(JobEvent {
                seq: row.get(0)?,
                job_id: JobId(row.get(1)?),
                at: timestamp(row.get(2)?),
                kind: JobEventKind::parse(&kind).unwrap_or(JobEventKind::State),
                state: state.and_then(|s| s.parse::<JobState>().ok()),
                attempt: row.get(5)?,
                progress: opt_json(6, row.get(6)?)?,
            })
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}

/// The newest event's id (0: none).
pub fn last_logged(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM job_events")
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .map_err(backend)
}

/// The events logged after `after`: (id, job id), oldest first.
fn logged_after(conn: &Connection, after: i64) -> Result<Vec<(i64, i64)>> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, job_id FROM job_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![after, POLL_BATCH as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}

/// What the log's reader needs.
pub struct Poller {
    pub readers: Readers,
    pub watchers: Wakeups,
    /// Signalled by the writer after each commit.
    pub committed: Arc<Notify>,
    /// The newest event when the store opened.
    pub last: i64,
}

/// Reads the log's new events after each commit while a stream is open (at
/// least every [`POLL_EVERY`]) and wakes the streams of their jobs, until
/// `cancel` fires. It keeps its place even with no stream open (reading
/// every [`IDLE_POLL_EVERY`]), so a stream is woken for every event logged
/// after its own first read.
pub fn spawn_poller(poller: Poller, cancel: CancellationToken) {
    let Poller {
        readers,
        watchers,
        committed,
        mut last,
    } = poller;
    tokio::spawn(async move {
        loop {
            if watchers.is_idle() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(IDLE_POLL_EVERY) => {}
                }
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = committed.notified() => {}
                    _ = tokio::time::sleep(POLL_EVERY) => {}
                }
            }
            match readers.run(move |conn| logged_after(conn, last)).await {
                Ok(events) => {
                    if let Some(&(seq, _)) = events.last() {
                        last = seq;
                    }
                    let keys: Vec<String> = events
                        .iter()
                        .map(|&(_, job)| job_watch_key(JobId(job)))
                        .collect();
                    watchers.wake(keys.iter().map(String::as_str));
                }
                Err(error) => tracing::warn!(%error, "reading the event log"),
            }
        }
    });
}
