//! API tokens, looked up by the SHA-256 of their secret, and the audit log.

use grafter_store::{
    ApiToken, AuditEntry, AuditList, AuditPrune, AuditRecord, Result, TokenInsert, TokenRevoke,
    TokenTouch,
};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::backend;
use crate::row::{micros, timestamp, to_json};

const TOKEN_COLUMNS: &str =
    "id, name, scopes, queues, expires_at, created_at, last_used_at, revoked_at";

fn json_column<T: serde::de::DeserializeOwned>(row: &Row, i: usize) -> rusqlite::Result<T> {
    serde_json::from_str(&row.get::<_, String>(i)?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

fn token_from_row(row: &Row) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        id: row.get(0)?,
        name: row.get(1)?,
        scopes: json_column(row, 2)?,
        queues: json_column(row, 3)?,
        expires_at: row.get::<_, Option<i64>>(4)?.map(timestamp),
        created_at: timestamp(row.get(5)?),
        last_used_at: row.get::<_, Option<i64>>(6)?.map(timestamp),
        revoked_at: row.get::<_, Option<i64>>(7)?.map(timestamp),
    })
}

pub fn token_insert(conn: &Connection, params: &TokenInsert) -> Result<()> {
    let t = &params.token;
    let (scopes, queues) = (to_json(&t.scopes)?, to_json(&t.queues)?);
    conn.prepare_cached(
        "INSERT INTO api_tokens (id, secret_sha256, name, scopes, queues, expires_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            t.id,
            params.secret_sha256,
            t.name,
            scopes,
            queues,
            t.expires_at.map(micros),
            micros(t.created_at),
        ])
    })
    .map_err(backend)?;
    Ok(())
}

fn token_where(conn: &Connection, condition: &str, value: &str) -> Result<Option<ApiToken>> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE {condition} = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([value], token_from_row).optional())
    .map_err(backend)
}

pub fn token_by_secret(conn: &Connection, secret_sha256: &str) -> Result<Option<ApiToken>> {
    token_where(conn, "secret_sha256", secret_sha256)
}

pub fn token_get(conn: &Connection, id: &str) -> Result<Option<ApiToken>> {
    token_where(conn, "id", id)
}

pub fn tokens_list(conn: &Connection) -> Result<Vec<ApiToken>> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
    ))
    .and_then(|mut stmt| stmt.query_map([], token_from_row)?.collect())
    .map_err(backend)
}

pub fn token_revoke(conn: &Connection, params: &TokenRevoke) -> Result<Option<ApiToken>> {
    conn.prepare_cached(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![params.id, micros(params.now)]))
    .map_err(backend)?;
    token_get(conn, &params.id)
}

pub fn token_touch(conn: &Connection, params: &TokenTouch) -> Result<()> {
    conn.prepare_cached(
        "UPDATE api_tokens SET last_used_at = ?2
         WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
    )
    .and_then(|mut stmt| stmt.execute(params![params.id, micros(params.now)]))
    .map_err(backend)?;
    Ok(())
}

pub fn audit_append(conn: &Connection, entry: &AuditEntry) -> Result<AuditRecord> {
    let details = entry.details.as_ref().map(to_json).transpose()?;
    let id = conn
        .prepare_cached(
            "INSERT INTO audit_log (at, token_id, actor, action, target, details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        )
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    micros(entry.at),
                    entry.token_id,
                    entry.actor,
                    entry.action,
                    entry.target,
                    details,
                ],
                |row| row.get(0),
            )
        })
        .map_err(backend)?;
    Ok(AuditRecord {
        id,
        entry: entry.clone(),
    })
}

pub fn audit_list(conn: &Connection, params: &AuditList) -> Result<Vec<AuditRecord>> {
    let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "SELECT id, at, token_id, actor, action, target, details FROM audit_log
         WHERE ?1 IS NULL OR id < ?1 ORDER BY id DESC LIMIT ?2",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![params.before, limit], |row| {
            let details: Option<String> = row.get(6)?;
            Ok(AuditRecord {
                id: row.get(0)?,
                entry: AuditEntry {
                    at: timestamp(row.get(1)?),
                    token_id: row.get(2)?,
                    actor: row.get(3)?,
                    action: row.get(4)?,
                    target: row.get(5)?,
                    details: details
                        .map(|d| serde_json::from_str(&d))
                        .transpose()
                        .map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(6, Type::Text, Box::new(e))
                        })?,
                },
            })
        })?
        .collect()
    })
    .map_err(backend)
}

pub fn audit_prune(conn: &Connection, params: &AuditPrune) -> Result<u64> {
    let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
    let deleted = conn
        .prepare_cached(
            "DELETE FROM audit_log WHERE id IN
                (SELECT id FROM audit_log WHERE at < ?1 ORDER BY at LIMIT ?2)",
        )
        .and_then(|mut stmt| stmt.execute(params![micros(params.before), limit]))
        .map_err(backend)?;
    Ok(deleted as u64)
}
