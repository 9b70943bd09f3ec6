//! Leadership: a named role (the server's maintenance runs under one) that one
//! node at a time holds, until it expires or is released.

use grafter_core::time;
use grafter_store::{Leader, LeaderAcquire, LeaderRelease, Result};

use crate::db::Db;
use crate::error::pg_error;

impl Db {
    /// One upsert: it inserts a free leadership, or takes over a row that is
    /// expired or already `node`'s, and returns a row only then. Racing nodes
    /// are serialized by the primary key (and the row lock `ON CONFLICT` takes),
    /// the later one judging the row the earlier one left.
    pub(crate) async fn leader_acquire(&self, params: &LeaderAcquire) -> Result<bool> {
        const SQL: &str = "
            INSERT INTO leaders (name, node, expires_at) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE
                SET node = excluded.node, expires_at = excluded.expires_at
                WHERE leaders.node = excluded.node OR leaders.expires_at <= $4
            RETURNING true";
        let expires_at = time::after(params.now, params.ttl);
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let row = client
            .query_opt(
                &stmt,
                &[&params.name, &params.node, &expires_at, &params.now],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.is_some())
    }

    pub(crate) async fn leader_release(&self, params: &LeaderRelease) -> Result<()> {
        const SQL: &str = "DELETE FROM leaders WHERE name = $1 AND node = $2";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        client
            .execute(&stmt, &[&params.name, &params.node])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn leaders_list(&self) -> Result<Vec<Leader>> {
        const SQL: &str = "SELECT name, node, expires_at FROM leaders ORDER BY name";
        let client = self.client().await?;
        let stmt = client.prepare_cached(SQL).await.map_err(pg_error)?;
        let rows = client.query(&stmt, &[]).await.map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|row| Leader {
                name: row.get(0),
                node: row.get(1),
                expires_at: row.get(2),
            })
            .collect())
    }

    /// The newest migration applied.
    pub(crate) async fn schema_version(&self) -> Result<i64> {
        const SQL: &str = "SELECT coalesce(max(version), 0)::bigint FROM grafter_migrations";
        let client = self.client().await?;
        let row = client.query_one(SQL, &[]).await.map_err(pg_error)?;
        Ok(row.get(0))
    }
}
