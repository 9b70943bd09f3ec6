//! API tokens, looked up by the SHA-256 of their secret, and the audit log.

use grafter_store::{
    ApiToken, AuditEntry, AuditList, AuditPrune, AuditRecord, Result, Scope, StoreError,
    TokenInsert, TokenRevoke, TokenTouch,
};
use tokio_postgres::Row;

use crate::db::Db;
use crate::error::pg_error;

const TOKEN_COLUMNS: &str =
    "id, name, scopes, queues, expires_at, created_at, last_used_at, revoked_at";

fn token_from_row(row: &Row) -> Result<ApiToken> {
    let names: Vec<String> = row.try_get(2).map_err(pg_error)?;
    let scopes = names
        .iter()
        .map(|name| {
            Scope::from_name(name).ok_or_else(|| {
                StoreError::Backend(format!("reading a token row: no scope '{name}'"))
            })
        })
        .collect::<Result<_>>()?;
    Ok(ApiToken {
        id: row.try_get(0).map_err(pg_error)?,
        name: row.try_get(1).map_err(pg_error)?,
        scopes,
        queues: row.try_get(3).map_err(pg_error)?,
        expires_at: row.try_get(4).map_err(pg_error)?,
        created_at: row.try_get(5).map_err(pg_error)?,
        last_used_at: row.try_get(6).map_err(pg_error)?,
        revoked_at: row.try_get(7).map_err(pg_error)?,
    })
}

fn audit_from_row(row: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: row.try_get(0).map_err(pg_error)?,
        entry: AuditEntry {
            at: row.try_get(1).map_err(pg_error)?,
            token_id: row.try_get(2).map_err(pg_error)?,
            actor: row.try_get(3).map_err(pg_error)?,
            action: row.try_get(4).map_err(pg_error)?,
            target: row.try_get(5).map_err(pg_error)?,
            details: row.try_get(6).map_err(pg_error)?,
        },
    })
}

impl Db {
    pub(crate) async fn token_insert(&self, params: &TokenInsert) -> Result<()> {
        const SQL: &str = "
            INSERT INTO api_tokens (id, secret_sha256, name, scopes, queues, expires_at, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let t = &params.token;
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.name()).collect();
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(
                &stmt,
                &[
                    &t.id,
                    &params.secret_sha256,
                    &t.name,
                    &scopes,
                    &t.queues,
                    &t.expires_at,
                    &t.created_at,
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn token_where(&self, column: &str, value: &str) -> Result<Option<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE {column} = $1");
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let row = client.query_opt(&stmt, &[&value]).await.map_err(pg_error)?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub(crate) async fn token_by_secret(&self, secret_sha256: &str) -> Result<Option<ApiToken>> {
        self.token_where("secret_sha256", secret_sha256).await
    }

    pub(crate) async fn token_get(&self, id: &str) -> Result<Option<ApiToken>> {
        self.token_where("id", id).await
    }

    /// Oldest first; ids break ties bytewise, as in SQLite.
    pub(crate) async fn tokens_list(&self) -> Result<Vec<ApiToken>> {
        let sql = format!(
            r#"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id COLLATE "C""#
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client.query(&stmt, &[]).await.map_err(pg_error)?;
        rows.iter().map(token_from_row).collect()
    }

    pub(crate) async fn token_revoke(&self, params: &TokenRevoke) -> Result<Option<ApiToken>> {
        let sql = format!(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1
             RETURNING {TOKEN_COLUMNS}"
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let row = client
            .query_opt(&stmt, &[&params.id, &params.now])
            .await
            .map_err(pg_error)?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub(crate) async fn token_touch(&self, params: &TokenTouch) -> Result<()> {
        const SQL: &str = "
            UPDATE api_tokens SET last_used_at = $2
            WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(&stmt, &[&params.id, &params.now])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn audit_append(&self, entry: &AuditEntry) -> Result<AuditRecord> {
        const SQL: &str = "
            INSERT INTO audit_log (at, token_id, actor, action, target, details)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &entry.at,
                    &entry.token_id,
                    &entry.actor,
                    &entry.action,
                    &entry.target,
                    &entry.details,
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(AuditRecord {
            id: row.try_get(0).map_err(pg_error)?,
            entry: entry.clone(),
        })
    }

    pub(crate) async fn audit_list(&self, params: &AuditList) -> Result<Vec<AuditRecord>> {
        const SQL: &str = "
            SELECT id, at, token_id, actor, action, target, details FROM audit_log
            WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2";
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&params.before, &limit])
            .await
            .map_err(pg_error)?;
        rows.iter().map(audit_from_row).collect()
    }

    pub(crate) async fn audit_prune(&self, params: &AuditPrune) -> Result<u64> {
        const SQL: &str = "
            DELETE FROM audit_log WHERE id IN
                (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)";
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let deleted = client
            .execute(&stmt, &[&params.before, &limit])
            .await
            .map_err(pg_error)?;
        Ok(deleted)
    }
}
