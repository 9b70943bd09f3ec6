//! Queues: the list, with each queue's settings, job counts and oldest
//! available job (on a read connection), and the settings, pause and push
//! target (on the writer thread).

use std::collections::BTreeMap;

use grafter_core::JobState;
use grafter_store::{QueueInfo, QueuePause, QueuePush, Result};
use rusqlite::{params, Connection};

use crate::error::backend;
use crate::row::{micros, timestamp, to_json};

fn push_target(
    column: usize,
    text: Option<String>,
) -> rusqlite::Result<Option<grafter_core::PushTarget>> {
    json_column(column, text)
}

fn json_column<T: serde::de::DeserializeOwned>(
    column: usize,
    text: Option<String>,
) -> rusqlite::Result<Option<T>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                column,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })
    })
    .transpose()
}

/// Every queue, or only `only`, with settings, counts and oldest available job.
fn queue_infos(conn: &Connection, only: Option<&str>) -> Result<Vec<QueueInfo>> {
    let mut queues: BTreeMap<String, QueueInfo> = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, paused, push, limits FROM queues WHERE ?1 IS NULL OR name = ?1",
        )
        .map_err(backend)?;
    let settings = stmt
        .query_map([only], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, bool>(1)?,
                push_target(2, row.get(2)?)?,
                json_column::<grafter_core::QueueLimits>(3, row.get(3)?)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    for (name, paused, push, limits) in settings {
        let mut info = QueueInfo::empty(name.clone(), paused);
        info.push = push;
        info.limits = limits;
        queues.insert(name, info);
    }
    // Kept by triggers (migration 0004), so the jobs table is never counted.
    let mut stmt = conn
        .prepare_cached(
            "SELECT queue, state, n FROM job_counts WHERE (?1 IS NULL OR queue = ?1) AND n > 0",
        )
        .map_err(backend)?;
    let counts = stmt
        .query_map([only], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    for (queue, state, count) in counts {
        let Ok(state) = state.parse::<JobState>() else {
            continue;
        };
        queues
            .entry(queue.clone())
            .or_insert_with(|| QueueInfo::empty(queue, false))
            .counts
            .insert(state, count as u64);
    }
    // The fetch index is (queue, priority, run_at): the oldest available job is
    // the oldest of each priority's first entry. Skipping from one priority to
    // the next reads a few index entries, however many jobs wait.
    let mut stmt = conn
        .prepare_cached(
            "WITH RECURSIVE p(priority) AS (
                SELECT min(priority) FROM jobs WHERE state = 'available' AND queue = ?1
                UNION ALL
                SELECT (SELECT min(priority) FROM jobs
                        WHERE state = 'available' AND queue = ?1 AND priority > p.priority)
                FROM p WHERE p.priority IS NOT NULL)
             SELECT min((SELECT min(run_at) FROM jobs
                         WHERE state = 'available' AND queue = ?1 AND priority = p.priority))
             FROM p WHERE p.priority IS NOT NULL",
        )
        .map_err(backend)?;
    for info in queues
        .values_mut()
        .filter(|q| q.counts[&JobState::Available] > 0)
    {
        let oldest: Option<i64> = stmt
            .query_row([&info.name], |row| row.get(0))
            .map_err(backend)?;
        info.oldest_available_at = oldest.map(timestamp);
    }
    Ok(queues.into_values().collect())
}

pub fn queues_list(conn: &Connection) -> Result<Vec<QueueInfo>> {
    queue_infos(conn, None)
}

pub(crate) fn queue_info(conn: &Connection, name: &str) -> Result<QueueInfo> {
    Ok(queue_infos(conn, Some(name))?
        .pop()
        .unwrap_or_else(|| QueueInfo::empty(name.to_owned(), false)))
}

pub fn queue_set_paused(conn: &Connection, params: &QueuePause) -> Result<QueueInfo> {
    conn.prepare_cached(
        "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
    )
    .and_then(|mut stmt| stmt.execute(params![params.queue, params.paused, micros(params.now)]))
    .map_err(backend)?;
    queue_info(conn, &params.queue)
}

pub fn queue_set_push(conn: &Connection, params: &QueuePush) -> Result<QueueInfo> {
    let push = params.push.as_ref().map(to_json).transpose()?;
    conn.prepare_cached(
        "INSERT INTO queues (name, paused, push, updated_at) VALUES (?1, 0, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET push = excluded.push, updated_at = excluded.updated_at",
    )
    .and_then(|mut stmt| stmt.execute(params![params.queue, push, micros(params.now)]))
    .map_err(backend)?;
    queue_info(conn, &params.queue)
}
