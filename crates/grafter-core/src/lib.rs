//! Grafter's job model, with no I/O: what a job is, the states it moves through,
//! how a new job is validated, how long a failed job waits before its next try,
//! and when a schedule fires.
//!
//! Everything above this crate (stores, server, library, CLI) speaks these types.

mod backoff;
pub mod batch;
mod bounds;
pub mod dependency;
mod display;
mod job;
pub mod limits;
#[cfg(feature = "openapi")]
pub mod openapi;
mod push;
pub mod schedule;
mod state;
pub mod storable;
pub mod time;
pub mod trace;
mod worker;

pub use backoff::Backoff;
pub use batch::{Batch, BatchCallbacks, BatchCounts, BatchId, BatchState};
pub use dependency::{DependencyFailure, Upstream};
pub use display::group_thousands;
pub use job::{
    validate_name, validate_path_name, AttemptError, CutField, Job, JobId, LeasedJob, NewJob,
    Progress, ValidationError, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, MAX_NAME_LEN, MAX_TAGS,
};
pub use limits::{Held, HeldReason, QueueLimits, RateLimit};
pub use push::{standard_webhooks_key, PushTarget, Signing};
pub use schedule::{
    validate_schedule_id, CatchUp, Overlap, Schedule, ScheduleRef, ScheduleSource, ScheduleSpec,
    SkipReason, SkippedSlots, Timing,
};
pub use state::{JobState, UnknownState};
pub use worker::{Worker, WorkerRegistration};

/// Timestamps everywhere in Grafter are UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
