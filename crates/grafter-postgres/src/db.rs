//! [`Db`]: the connection pool and what else every operation needs. The
//! operations are its methods, one module per concern (`leasing.rs`,
//! `inserts.rs`, `jobs.rs`, `maintenance.rs`, `queues.rs`, `leadership.rs`,
//! `workers.rs`, `browse.rs`). Here: handing out connections, `ping`, and the
//! entry of inserts, which hands small inserts to `group_insert.rs`; that
//! module runs the statements of `inserts.rs`, so the entry is kept out of
//! `inserts.rs`, or the two would import each other.
//!
//! Every statement takes "now" as a parameter instead of reading the database
//! clock, so callers (and the conformance suite) control time. Read-modify-write
//! operations run in a transaction that locks the job row first (`FOR UPDATE`);
//! batch maintenance uses `FOR UPDATE SKIP LOCKED` so two nodes never wait on
//! each other's rows.

use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use grafter_store::{Inserted, JobsInsert, Limited, Result, StoreError};

use crate::error::{pg_error, pool_error};
use crate::group_insert::{GroupInsert, GROUPED_BELOW};
use crate::inserts::{created, insert_jobs};

/// The connection pool and the notification channel: everything an operation needs.
pub(crate) struct Db {
    pub(crate) pool: Pool,
    /// The `LISTEN`/`NOTIFY` channel of this store's schema.
    pub(crate) channel: String,
    /// The store's schema name (empty for the default search path), which
    /// scopes advisory locks so stores in different schemas never contend.
    pub(crate) lock_scope: String,
    /// Where small inserts go to share a statement and a commit.
    pub(crate) group_insert: GroupInsert,
    /// The queues with limits, as this node last read them (`limits.rs`).
    pub(crate) limited: Arc<Limited>,
    /// The queues whose limits this node last saw as a concurrency without
    /// a rate, with those limits: their fetch tries the one-trip admission
    /// first (`limits.rs`).
    pub(crate) one_trip_shapes:
        std::sync::Mutex<std::collections::HashMap<String, grafter_core::QueueLimits>>,
}

impl Db {
    pub(crate) async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Inserts in one transaction (see [`insert_jobs`]); a few jobs without
    /// unique keys share their statement with other callers' (see
    /// [`crate::group_insert`]).
    pub(crate) async fn jobs_insert_many(&self, params: JobsInsert) -> Result<Vec<Inserted>> {
        // Linking dependencies takes more statements than the insert.
        let unkeyed = params.jobs.iter().all(|job| {
            job.unique_key.is_none()
                && job.depends_on.is_empty()
                && job.depends_on_batches.is_empty()
        });
        if unkeyed && params.jobs.len() < GROUPED_BELOW {
            let jobs = self.group_insert.insert(params.jobs, params.now).await?;
            return Ok(jobs.into_iter().map(created).collect());
        }
        let mut client = self.client().await?;
        if unkeyed {
            // One statement, atomic on its own: no BEGIN and COMMIT round trips.
            return insert_jobs(&client, &params.jobs, params.now).await;
        }
        let tx = client.transaction().await.map_err(pg_error)?;
        let inserted = insert_jobs(&tx, &params.jobs, params.now).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(inserted)
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| match pg_error(e) {
                StoreError::Backend(m) => StoreError::Unavailable(m),
                other => other,
            })?;
        Ok(())
    }
}
