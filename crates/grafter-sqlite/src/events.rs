//! Live events (docs/events.md): watching a job or a batch (on the writer
//! thread), their logged events (on a read connection), and the task that
//! wakes this process's streams when events are logged.
//!
//! The logs are written by triggers (migrations 12 and 17) in the
//! transaction of each change. One process owns the file, so a committed
//! event's `seq` is greater than every earlier commit's in its log: reading
//! `seq > last seen` of each log after each commit misses none.

use std::sync::Arc;
use std::time::Duration;

use grafter_core::{batch, BatchCounts, BatchId, BatchState, JobId, JobState};
use grafter_store::{
    batch_watch_key, job_watch_key, BatchEvent, BatchEventKind, BatchEventsList, JobEvent,
    JobEventKind, JobEventsList, Result, Wakeups, WatchedBatch, WatchedJob,
};
use rusqlite::{params, Connection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::batches::batch_get;
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

/// Marks an unfinished batch watched (the trigger logs its changes from the
/// commit on) and reads it with its latest event, in the writer's
/// transaction, so both are of the same moment.
pub fn batch_watch(conn: &Connection, id: BatchId) -> Result<Option<WatchedBatch>> {
    conn.prepare_cached(
        "UPDATE batches SET watched = 1 WHERE id = ?1 AND NOT watched AND finished_at IS NULL",
    )
    .and_then(|mut stmt| stmt.execute([id.0]))
    .map_err(backend)?;
    let Some(batch) = batch_get(conn, id)? else {
        return Ok(None);
    };
    let last_event = conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM batch_events WHERE batch_id = ?1")
        .and_then(|mut stmt| stmt.query_row([id.0], |row| row.get(0)))
        .map_err(backend)?;
    Ok(Some(WatchedBatch { batch, last_event }))
}

pub fn batch_events_list(conn: &Connection, params: &BatchEventsList) -> Result<Vec<BatchEvent>> {
    let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, batch_id, at, kind, state, open, finished, total, completed, dead, \
             cancelled_jobs, expired, progress FROM batch_events \
             WHERE batch_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![params.batch_id.0, params.after, limit], |row| {
            let kind: String = row.get(3)?;
            let state: String = row.get(4)?;
            let state: BatchState = state.parse().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    4,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            let total: i64 = row.get(7)?;
            let counts = BatchCounts::with_finished(
                total,
                row.get(8)?,
                row.get(9)?,
                row.get(10)?,
                row.get(11)?,
            );
            Ok(BatchEvent {
                seq: row.get(0)?,
                batch_id: BatchId(row.get(1)?),
                at: timestamp(row.get(2)?),
                kind: BatchEventKind::parse(&kind).unwrap_or(BatchEventKind::State),
                state,
                open: row.get(5)?,
                finished: row.get(6)?,
                counts,
                progress: batch::progress(row.get(12)?, total),
            })
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}

/// Where the poller stands in each log: the newest event's id read (0: none).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogPlace {
    jobs: i64,
    batches: i64,
}

/// The newest events' ids.
pub fn last_logged(conn: &Connection) -> Result<LogPlace> {
    conn.prepare_cached(
        "SELECT (SELECT coalesce(max(seq), 0) FROM job_events), \
                (SELECT coalesce(max(seq), 0) FROM batch_events)",
    )
    .and_then(|mut stmt| {
        stmt.query_row([], |row| {
            Ok(LogPlace {
                jobs: row.get(0)?,
                batches: row.get(1)?,
            })
        })
    })
    .map_err(backend)
}

/// The events of one log logged after `after`: (id, job or batch id),
/// oldest first.
fn logged_after(conn: &Connection, sql: &str, after: i64) -> Result<Vec<(i64, i64)>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params![after, POLL_BATCH as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}

/// The watch keys of the events logged after `place`, and the place after them.
fn keys_after(conn: &Connection, place: LogPlace) -> Result<(Vec<String>, LogPlace)> {
    let jobs = logged_after(
        conn,
        "SELECT seq, job_id FROM job_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        place.jobs,
    )?;
    let batches = logged_after(
        conn,
        "SELECT seq, batch_id FROM batch_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        place.batches,
    )?;
    let next = LogPlace {
        jobs: jobs.last().map_or(place.jobs, |&(seq, _)| seq),
        batches: batches.last().map_or(place.batches, |&(seq, _)| seq),
    };
    let keys = jobs
        .iter()
        .map(|&(_, job)| job_watch_key(JobId(job)))
        .chain(batches.iter().map(|&(_, id)| batch_watch_key(BatchId(id))))
        .collect();
    Ok((keys, next))
}

/// What the log's reader needs.
pub struct Poller {
    pub readers: Readers,
    pub watchers: Wakeups,
    /// Signalled by the writer after each commit.
    pub committed: Arc<Notify>,
    /// The newest events when the store opened.
    pub last: LogPlace,
}

/// Reads the logs' new events after each commit while a stream is open (at
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
            match readers.run(move |conn| keys_after(conn, last)).await {
                Ok((keys, next)) => {
                    last = next;
                    watchers.wake(keys.iter().map(String::as_str));
                }
                Err(error) => tracing::warn!(%error, "reading the event log"),
            }
        }
    });
}
