//! Grafter's job engine: what every caller of a store shares, written once.
//!
//! The HTTP API, the push dispatcher and the library's in-process workers all
//! move jobs through an [`Engine`]: it validates what enters, owns the clock
//! and the time arithmetic (which saturates, so no input can make a later
//! step overflow), records every outcome of an attempt through one path
//! ([`Engine::record`]), and long-polls fetches. [`maintenance`] runs the
//! services that keep job states true as time passes (scheduler, rescuer,
//! expirer, pruner) on one elected node, supervised so that none can silently
//! stop. [`open`] opens a store by URL (SQLite and PostgreSQL behind the
//! `sqlite` and `postgres` features), and [`push`] is the wire format of push
//! deliveries, shared by the sender and receivers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use grafter_engine::{Engine, EngineConfig};
//!
//! let store = grafter_engine::open("sqlite://jobs.db", &Default::default()).await?;
//! let engine = Engine::new(store, EngineConfig::default());
//! let job = engine.enqueue(grafter_core::NewJob::new("send_email", serde_json::json!({}))).await?;
//! # Ok(()) }
//! ```

mod access;
mod batch_events;
mod batches;
mod cleanup;
mod clock;
mod config;
mod error;
mod events;
mod jobs;
pub mod maintenance;
mod observer;
mod open;
mod outcome;
pub mod push;
mod schedules;
mod wait;

pub use access::{
    expand_scopes, queue_matches, CreatedToken, TokenSpec, MAX_AUDIT_PAGE, MAX_TOKEN_QUEUES,
    PRESETS, TOKEN_PREFIX,
};
pub use batch_events::{BatchEventStream, BatchStreamEvent};
pub use batches::{NewBatch, MAX_BATCH_LIST};
pub use cleanup::{Cleaned, Cleanup, CLEANUP_BATCH, FINISHED_STATES};
pub use clock::Clock;
pub use config::{EngineConfig, DEFAULT_FETCH_MAX_BYTES};
pub use error::{Error, Result};
pub use events::{JobEventStream, JobStreamEvent, PROGRESS_EVERY};
pub use grafter_store::AckOutcome;
pub use jobs::{Engine, FetchRequest, LEASE_RANGE_MS, MAX_BATCH, MAX_FETCH, MAX_FETCH_QUEUES};
pub use observer::Observer;
pub use open::{migrate, open, redact_url, OpenError, PostgresSettings};
pub use outcome::{Ack, Outcome, Retry, When};
pub use schedules::{Reconciled, MAX_LIST, MAX_PREVIEW};
