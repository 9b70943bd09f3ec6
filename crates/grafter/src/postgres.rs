//! Enqueueing inside your application's own PostgreSQL transaction, so that a
//! job exists if and only if the change it belongs to committed: no welcome
//! e-mail for a sign-up that rolled back, no sign-up without its e-mail.
//!
//! The job goes straight into Grafter's tables in the same database (the ones
//! `grafter serve --database postgres://…` or `grafter migrate` created), with
//! the same rules as any other enqueue (`unique_key` included). Waiting workers
//! on every node are woken when the transaction commits.
//!
//! ```no_run
//! use grafter::postgres::{enqueue_in, tokio_postgres};
//! use grafter::{Job, JobContext, JobError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Welcome {
//!     email: String,
//! }
//!
//! impl Job for Welcome {
//!     const KIND: &'static str = "welcome";
//!     type Output = ();
//!
//!     async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
//!         Ok(()) // send the e-mail
//!     }
//! }
//!
//! # async fn sign_up(db: &mut tokio_postgres::Client, email: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let tx = db.transaction().await?;
//! tx.execute("INSERT INTO users (email) VALUES ($1)", &[&email]).await?;
//! enqueue_in(&tx, Welcome { email: email.to_owned() }).await?;
//! tx.commit().await?; // the user and the job, or neither
//! # Ok(()) }
//! ```
//!
//! A pooled `deadpool_postgres` transaction works as it is: it dereferences to
//! a [`tokio_postgres::Transaction`].

/// The PostgreSQL driver whose transactions these functions take: use this
/// one (or the same version) in your application.
pub use grafter_postgres::tokio_postgres;

use tokio_postgres::Transaction;

use crate::client::{EnqueueOptions, Enqueued};
use crate::error::Result;
use crate::job::Job;

/// Enqueues `job` with its type's defaults inside `tx`, for Grafter nodes
/// configured without a `[postgres] schema` (their tables are found through
/// `tx`'s `search_path`). See the [module docs](self).
///
/// # Errors
///
/// [`Error::Rejected`](crate::Error::Rejected) for an invalid job,
/// [`Error::Unavailable`](crate::Error::Unavailable) when the database is
/// unreachable, [`Error::Other`](crate::Error::Other) for other database
/// errors (e.g. no Grafter tables there). On error nothing of this job remains
/// in `tx`, and `tx` can go on.
pub async fn enqueue_in<J: Job>(tx: &Transaction<'_>, job: J) -> Result<Enqueued> {
    enqueue_in_with(tx, None, job, EnqueueOptions::default()).await
}

/// Enqueues `job` with `options` inside `tx`, for Grafter nodes configured
/// with `[postgres] schema = "<schema>"` (`None`: without one). The schema
/// names both the tables and the channel the nodes listen on, so it must be
/// theirs; the `search_path` the rest of `tx` sees is left as it was.
///
/// An unfinished job already holding `options.unique_key` (committed, or
/// enqueued earlier in `tx`) is returned with `created: false` instead.
///
/// # Errors
///
/// As [`enqueue_in`].
pub async fn enqueue_in_with<J: Job>(
    tx: &Transaction<'_>,
    schema: Option<&str>,
    job: J,
    options: EnqueueOptions,
) -> Result<Enqueued> {
    let new = options.to_new_job(&job)?;
    let inserted = grafter_postgres::enqueue_in(tx, schema, vec![new])
        .await?
        .pop()
        .ok_or_else(|| crate::Error::Other("the insert returned no job".into()))?;
    Ok(Enqueued {
        job: inserted.job,
        created: inserted.created,
    })
}
