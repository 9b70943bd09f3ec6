//! Leadership: a named role (the server's maintenance runs under one) that one
//! node at a time holds, until it expires or is released. Runs on the writer
//! thread.

use grafter_store::{Leader, LeaderAcquire, LeaderRelease, Result};
use rusqlite::{params, Connection};

use crate::error::backend;
use crate::row::{duration_micros, micros, timestamp};

pub fn leader_acquire(conn: &Connection, params: &LeaderAcquire) -> Result<bool> {
    let now = micros(params.now);
    let expires = now.saturating_add(duration_micros(params.ttl));
    conn.prepare_cached(
        "INSERT INTO leaders (name, node, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at
         WHERE leaders.node = excluded.node OR leaders.expires_at <= ?4",
    )
    .and_then(|mut stmt| stmt.execute(params![params.name, params.node, expires, now]))
    .map_err(backend)?;
    conn.prepare_cached("SELECT node = ?2 FROM leaders WHERE name = ?1")
        .and_then(|mut stmt| stmt.query_row(params![params.name, params.node], |row| row.get(0)))
        .map_err(backend)
}

pub fn leader_release(conn: &Connection, params: &LeaderRelease) -> Result<()> {
    conn.prepare_cached("DELETE FROM leaders WHERE name = ?1 AND node = ?2")
        .and_then(|mut stmt| stmt.execute(params![params.name, params.node]))
        .map_err(backend)?;
    Ok(())
}

pub fn leaders_list(conn: &Connection) -> Result<Vec<Leader>> {
    let mut stmt = conn
        .prepare_cached("SELECT name, node, expires_at FROM leaders ORDER BY name")
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |row| {
            Ok(Leader {
                name: row.get(0)?,
                node: row.get(1)?,
                expires_at: timestamp(row.get(2)?),
            })
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<_>>().map_err(backend)
}
