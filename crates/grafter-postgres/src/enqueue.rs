//! Transactional enqueue: jobs that commit or roll back with the application's
//! own transaction.

use std::collections::BTreeSet;

use chrono::Utc;
use grafter_core::{JobState, NewJob};
use grafter_store::{Inserted, Result, StoreError};
use tokio_postgres::Transaction;

use crate::conn::{AppTransaction, Conn};
use crate::error::pg_error;
use crate::{inserts, notifier, Schema};

/// Taken on entry and rolled back to on any error, so that a failed enqueue
/// leaves nothing behind and the application's transaction usable.
const SAVEPOINT: &str = "SAVEPOINT grafter_enqueue_in";
const RELEASE: &str = "RELEASE SAVEPOINT grafter_enqueue_in";
const ROLL_BACK: &str =
    "ROLLBACK TO SAVEPOINT grafter_enqueue_in; RELEASE SAVEPOINT grafter_enqueue_in";

/// Enqueues `jobs` inside the application's transaction `tx`: they are stored
/// if and only if `tx` commits, and waiting workers on every node are woken
/// when it does (the `NOTIFY` is part of the transaction).
///
/// The jobs go in with the same statements as the store's own enqueue, so the
/// outcome is the same: one [`Inserted`] per job, in order, with `created`
/// false where an unfinished job (committed, or enqueued earlier in `tx`)
/// already holds the job's `unique_key`. A concurrent transaction enqueueing
/// the same key makes this call wait until that transaction ends.
///
/// `schema` must be the [`PostgresConfig::schema`](crate::PostgresConfig::schema)
/// (`[postgres] schema`) of the Grafter nodes: it names both the schema of the
/// tables and the channel the nodes listen on. The `search_path` is pointed at
/// it for this call only; the rest of `tx` sees its own. `None`, for nodes
/// configured without one, finds the tables through `tx`'s `search_path`. The
/// tables must exist (a Grafter node has started on that schema, or
/// `grafter migrate` has run).
///
/// Any deadpool transaction works too: it dereferences to a
/// [`tokio_postgres::Transaction`]. Await one call before starting the next on
/// the same transaction: each takes its own savepoint.
///
/// # Errors
///
/// `Invalid` for a job that fails [`NewJob::validate`] or a bad schema name
/// (a malformed `traceparent` or `tracestate` is dropped, not refused);
/// `Unavailable` or `Backend` when the database fails. On error nothing this
/// call wrote remains in `tx`, and `tx` can go on (it was rolled back to a
/// savepoint taken on entry), unless its connection was lost.
///
/// ```no_run
/// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use grafter_core::NewJob;
/// use serde_json::json;
///
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO users (email) VALUES ($1)", &[&"ada@example.com"]).await?;
/// let welcome = NewJob::new("send_welcome", json!({"email": "ada@example.com"}));
/// grafter_postgres::enqueue_in(&tx, Some("grafter"), vec![welcome]).await?;
/// tx.commit().await?; // the user and the job, or neither
/// # Ok(()) }
/// ```
pub async fn enqueue_in(
    tx: &Transaction<'_>,
    schema: Option<&str>,
    mut jobs: Vec<NewJob>,
) -> Result<Vec<Inserted>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    for (i, job) in jobs.iter_mut().enumerate() {
        job.validate()
            .map_err(|e| StoreError::Invalid(format!("jobs[{i}]: {e}")))?;
        // As the engine does: a malformed trace context is dropped, never refused.
        for dropped in job.keep_valid_trace() {
            tracing::debug!(job = i, %dropped, "ignoring a malformed trace context");
        }
    }
    let schema = Schema::new(schema.map(str::to_owned))?;
    tx.batch_execute(SAVEPOINT).await.map_err(pg_error)?;
    match insert(tx, &schema, &jobs).await {
        Ok(inserted) => {
            tx.batch_execute(RELEASE).await.map_err(pg_error)?;
            Ok(inserted)
        }
        Err(e) => {
            // If even this fails the connection is gone, and `e` says more.
            let _ = tx.batch_execute(ROLL_BACK).await;
            Err(e)
        }
    }
}

/// The insert, with `search_path` pointed at `schema` for its duration.
async fn insert(tx: &Transaction<'_>, schema: &Schema, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
    const SET_PATH: &str = "SELECT set_config('search_path', $1, true)";
    let previous_path = match schema.quoted() {
        Some(path) => {
            let row = tx
                .query_one("SELECT current_setting('search_path')", &[])
                .await
                .map_err(pg_error)?;
            let previous: String = row.try_get(0).map_err(pg_error)?;
            tx.execute(SET_PATH, &[&path]).await.map_err(pg_error)?;
            Some(previous)
        }
        None => None,
    };
    let inserted = inserts::insert_jobs(&AppTransaction(tx), jobs, Utc::now()).await?;
    let available: BTreeSet<&str> = inserted
        .iter()
        .filter(|i| i.created && i.job.state == JobState::Available)
        .map(|i| i.job.queue.as_str())
        .collect();
    if !available.is_empty() {
        // Delivered when the application commits; nothing if it rolls back.
        // From no node: every node, the application's own included, hears it.
        let payload = notifier::payload("", available);
        notify(&AppTransaction(tx), &schema.channel(), &payload).await?;
    }
    if let Some(previous) = previous_path {
        // Local to `tx`, like the change it undoes: after `tx` ends the
        // session's own setting is back either way.
        tx.execute(SET_PATH, &[&previous]).await.map_err(pg_error)?;
    }
    Ok(inserted)
}

/// Queues a wake-up for every listening node inside the caller's transaction:
/// PostgreSQL delivers it at commit (never for a rolled-back change) and folds
/// repeats within one transaction. Only for an application's transaction
/// ([`crate::enqueue_in`]), whose commit the store does not see; the store's
/// own changes are announced after they commit (`notifier::Announcer`), since
/// a transaction that notifies holds a lock shared by every such transaction
/// of the database from its commit until it is on disk, so their flushes to
/// disk queue one by one instead of being shared.
async fn notify(client: &impl Conn, channel: &str, payload: &str) -> Result<()> {
    let stmt = client.statement("SELECT pg_notify($1, $2)").await?;
    client.rows(&stmt, &[&channel, &payload]).await?;
    Ok(())
}
