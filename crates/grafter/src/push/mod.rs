//! The receiving side of push queues: run typed jobs inside the HTTP requests
//! Grafter sends, with no worker process.
//!
//! A queue with a push target (`PUT /v1/queues/{name}` with `{"push": {"url",
//! "secret"}}`, or `[queues.NAME.push]` in the server's config file) has each
//! due job POSTed to `url`, signed with `secret`. [`PushEndpoint`] turns
//! [`Job`] types into such an endpoint for an axum app (feature `axum`): it checks the
//! signature over the raw body, runs the job named by `kind`, and answers so
//! that Grafter records the right outcome (docs/push.md has the contract).
//!
//! ```no_run
//! # #[cfg(feature = "axum")] {
//! use axum::Router;
//! use grafter::push::{PushEndpoint, Verifier};
//! use grafter::{Job, JobContext, JobError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail {
//!     to: String,
//! }
//!
//! impl Job for SendEmail {
//!     const KIND: &'static str = "send_email";
//!     type Output = String;
//!
//!     async fn perform(self, _ctx: JobContext) -> Result<String, JobError> {
//!         Ok(format!("sent to {}", self.to)) // the job's result
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = std::env::var("GRAFTER_PUSH_SECRET")?;
//! let jobs = PushEndpoint::new(Verifier::new(secret)).register::<SendEmail>();
//! let app = Router::new().route("/grafter/jobs", jobs.into_route());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! # }
//! ```
//!
//! How a run's end is answered:
//!
//! | `perform` returns | answer | Grafter makes the job |
//! | --- | --- | --- |
//! | `Ok(output)` | 200 with the output as JSON (204 for `()`) | `completed`, output as result |
//! | [`JobError::retry`] (or `?`) | 500 with the message | a failed attempt, retried by backoff |
//! | [`JobError::retry_after`] | 500 with the message and `Retry-After` | a failed attempt, retried then |
//! | [`JobError::fail`] | 422 with `Grafter-Retry: false` | `dead` |
//! | [`JobError::cancel`] | 422 with `Grafter-Retry: false` | `dead` (a push cannot cancel; the message says "cancelled") |
//! | [`JobError::snooze`] | 503 with `Retry-After` | run again then, the attempt not counted |
//! | a panic | 500 `panicked: …` | a failed attempt |
//!
//! Within a pushed job, [`JobContext::progress`] goes nowhere (the request is
//! the job's whole life) and [`JobContext::cancelled`] fires when Grafter
//! hangs up (its timeout), which also drops the job's future.
//!
//! Without axum, check requests yourself with [`Verifier`] over the raw body
//! and answer by the same table.

#[cfg(feature = "axum")]
mod endpoint;

#[cfg(feature = "axum")]
pub use endpoint::PushEndpoint;
// `sign` makes `Grafter-Signature` values, for testing your own endpoint.
pub use grafter_engine::push::signature::{
    sign, unix_now, SignatureError, Verifier, DEFAULT_TOLERANCE,
};
// The Standard Webhooks headers' names, `sign` and `message_id`.
pub use grafter_engine::push::standard_webhooks;
pub use grafter_engine::push::{
    PushRequest, ATTEMPT_HEADER, JOB_ID_HEADER, LEASE_HEADER, RETRY_HEADER, SIGNATURE_HEADER,
};
