//! Durable background jobs for Rust applications.
//!
//! Define a job type with [`Job`], enqueue it with a [`Client`], and run it with
//! a [`Worker`]. The client and worker reach jobs either over HTTP (a `grafter
//! serve` anywhere) or straight on a store in the same process (SQLite or
//! PostgreSQL), with the same API.
//!
//! With default features this crate is the typed client and worker over HTTP
//! (and in process on a store you bring): no database driver, no HTTP server.
//! Features add the rest:
//!
//! | feature | adds |
//! | --- | --- |
//! | `sqlite` | [`Client::open`] on `sqlite://…` (SQLite in this process) |
//! | `postgres` | [`Client::open`] on `postgres://…`, and [`postgres`]: enqueue inside your own transaction |
//! | `server` | [`server`]: Grafter's HTTP API and dashboard in this process |
//! | `axum` | [`push::PushEndpoint`]: run pushed jobs inside an axum app |
//!
//! ```no_run
//! use std::time::Duration;
//! use grafter::{Client, Job, JobContext, JobError, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Export {
//!     account: u64,
//! }
//!
//! impl Job for Export {
//!     const KIND: &'static str = "export";
//!     const TIMEOUT: Option<Duration> = Some(Duration::from_secs(600));
//!     type Output = String;
//!
//!     async fn perform(self, ctx: JobContext) -> Result<String, JobError> {
//!         for page in 0..10 {
//!             if ctx.is_cancelled() {
//!                 return Err(JobError::cancel("stopped by request"));
//!             }
//!             ctx.progress(page as f64 / 10.0, format!("page {page}")).await;
//!         }
//!         Ok(format!("/exports/{}.csv", self.account))
//!     }
//! }
//!
//! # #[cfg(feature = "sqlite")]
//! # async fn demo() -> grafter::Result<()> {
//! let client = Client::open("sqlite://jobs.db").await?;
//! let job = client.enqueue(Export { account: 42 }).await?.job;
//! let worker = Worker::builder(&client).register::<Export>().queue("default", 4).build()?;
//! let running = worker.start();
//! let done = client.wait(job.id, Duration::from_secs(60)).await?;
//! assert_eq!(done.result, Some(serde_json::json!("/exports/42.csv")));
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! To serve the HTTP API (and its dashboard) from the same process, see
//! [`server`]. To enqueue inside your own PostgreSQL transaction, committed or
//! rolled back with it, see [`postgres`]. To run jobs inside HTTP requests
//! that Grafter pushes to your web app (no worker process), see [`push`].

mod client;
mod error;
mod hooks;
mod job;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod push;
mod transport;
mod worker;

pub use client::{Client, EnqueueOptions, Enqueued};
pub use error::{Error, Result};
pub use grafter_core::{
    Batch, BatchCallbacks, BatchCounts, BatchId, BatchState, DependencyFailure, Job as JobRecord,
    JobId, JobState, NewJob, Progress, Upstream,
};
pub use grafter_engine::Engine;
pub use grafter_store::Dependencies;
pub use hooks::{Hooks, JobInfo, JobOutcome};
pub use job::{Job, JobContext, JobError};
pub use worker::{wait_for_signal, Worker, WorkerBuilder, WorkerHandle, MAX_CONCURRENCY};

/// Running Grafter's HTTP API in this process, on the same store as an
/// in-process client (feature `server`):
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = grafter::Client::open("sqlite://jobs.db").await?;
/// let store = client.store().unwrap().clone();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:7380").await?;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// tokio::spawn(grafter::server::serve(listener, store, Default::default(), shutdown.clone()));
/// # Ok(()) }
/// ```
#[cfg(feature = "server")]
pub mod server {
    pub use grafter_server::{router, serve, AppState, ServerConfig};
}
