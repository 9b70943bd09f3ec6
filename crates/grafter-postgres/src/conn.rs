//! The connections the insert statements run on.
//!
//! The store runs them on its pooled connections, which cache prepared
//! statements per connection. [`enqueue_in`](crate::enqueue_in) runs the very
//! same statements inside an application's own transaction, on a connection
//! whose statement cache (if any) is not ours, so there they are prepared on
//! each call.

use async_trait::async_trait;
use grafter_store::Result;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::error::pg_error;

/// What a statement shared by the store and the transactional enqueue needs
/// from a connection.
#[async_trait]
pub(crate) trait Conn: Sync {
    /// `sql`, prepared on this connection.
    async fn statement(&self, sql: &str) -> Result<Statement>;
    /// Runs `stmt` and returns its rows.
    async fn rows(&self, stmt: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>;
    /// Runs `stmt` and returns its row, if it returned one.
    async fn row_opt(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>>;
}

/// The store's own pooled connections and transactions.
#[async_trait]
impl<C: deadpool_postgres::GenericClient> Conn for C {
    async fn statement(&self, sql: &str) -> Result<Statement> {
        self.prepare_cached(sql).await.map_err(pg_error)
    }

    async fn rows(&self, stmt: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.query(stmt, params).await.map_err(pg_error)
    }

    async fn row_opt(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        self.query_opt(stmt, params).await.map_err(pg_error)
    }
}

/// An application's transaction, for [`enqueue_in`](crate::enqueue_in).
pub(crate) struct AppTransaction<'a, 'tx>(pub(crate) &'a tokio_postgres::Transaction<'tx>);

#[async_trait]
impl Conn for AppTransaction<'_, '_> {
    async fn statement(&self, sql: &str) -> Result<Statement> {
        self.0.prepare(sql).await.map_err(pg_error)
    }

    async fn rows(&self, stmt: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.0.query(stmt, params).await.map_err(pg_error)
    }

    async fn row_opt(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        self.0.query_opt(stmt, params).await.map_err(pg_error)
    }
}
