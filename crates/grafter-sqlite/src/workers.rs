//! The worker registry: heartbeats register and refresh workers, the list
//! (on a read connection) counts the jobs each runs, and pruning forgets
//! silent workers and ends their leases.

use grafter_core::{Worker, WorkerRegistration};
use grafter_store::{Result, WorkerBeat, WorkersPrune};
use rusqlite::{params, Connection};

use crate::error::backend;
use crate::row::{duration_micros, micros, timestamp, to_json};

pub fn worker_heartbeat(conn: &Connection, params: &WorkerBeat) -> Result<()> {
    let w = &params.worker;
    conn.prepare_cached(
        "INSERT INTO workers (id, host, pid, queues, concurrency, kinds, started_at, last_seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (id) DO UPDATE SET
            host = excluded.host, pid = excluded.pid, queues = excluded.queues,
            concurrency = excluded.concurrency, kinds = excluded.kinds,
            last_seen_at = excluded.last_seen_at",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            w.id,
            w.host,
            w.pid,
            to_json(&w.queues).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            w.concurrency,
            to_json(&w.kinds).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            micros(params.now),
        ])
    })
    .map_err(backend)?;
    Ok(())
}

pub fn worker_remove(conn: &Connection, id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM workers WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id]))
        .map_err(backend)?;
    Ok(())
}

pub fn workers_list(conn: &Connection) -> Result<Vec<Worker>> {
    conn.prepare_cached(
        "SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.kinds, w.started_at, w.last_seen_at,
                coalesce(r.n, 0)
         FROM workers w
         LEFT JOIN (SELECT worker_id, count(*) AS n FROM jobs INDEXED BY jobs_leases
                    WHERE state = 'running' GROUP BY worker_id) AS r ON r.worker_id = w.id
         ORDER BY w.started_at, w.id",
    )
    .and_then(|mut stmt| {
        stmt.query_map([], |row| {
            let json_list = |i: usize| -> rusqlite::Result<Vec<String>> {
                serde_json::from_str(&row.get::<_, String>(i)?).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
                })
            };
            Ok(Worker {
                registration: WorkerRegistration {
                    id: row.get(0)?,
                    host: row.get(1)?,
                    pid: row.get(2)?,
                    queues: json_list(3)?,
                    concurrency: row.get(4)?,
                    kinds: json_list(5)?,
                },
                started_at: timestamp(row.get(6)?),
                last_seen_at: timestamp(row.get(7)?),
                running: row.get::<_, i64>(8)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(backend)
}

pub fn workers_prune(conn: &Connection, params: &WorkersPrune) -> Result<u64> {
    let now = micros(params.now);
    let cutoff = now.saturating_sub(duration_micros(params.stale_after));
    let stale: Vec<String> = conn
        .prepare_cached("SELECT id FROM workers WHERE last_seen_at < ?1")
        .and_then(|mut stmt| stmt.query_map([cutoff], |row| row.get(0))?.collect())
        .map_err(backend)?;
    for id in &stale {
        // End the dead worker's leases now; the rescuer records them as failed attempts.
        conn.prepare_cached(
            "UPDATE jobs INDEXED BY jobs_leases SET lease_expires_at = ?2
             WHERE state = 'running' AND worker_id = ?1 AND lease_expires_at > ?2",
        )
        .and_then(|mut stmt| stmt.execute(params![id, now]))
        .map_err(backend)?;
        worker_remove(conn, id)?;
    }
    Ok(stale.len() as u64)
}
