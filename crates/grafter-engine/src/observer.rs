//! What the engine tells whoever counts (the server's metrics) as jobs move.

use grafter_core::{Job, JobId, SkipReason};

/// Told of each change the engine makes, after it is durable. Called inline,
/// so implementations must be quick and must not block.
pub trait Observer: Send + Sync + 'static {
    /// A job was created (not a duplicate by `unique_key`).
    fn enqueued(&self, _job: &Job) {}
    /// A fetch leased `job` (running, its `attempted_at` the start).
    fn started(&self, _job: &Job) {}
    /// An attempt succeeded: `job` is completed.
    fn completed(&self, _job: &Job) {}
    /// These jobs were completed by one batch ack.
    fn batch_completed(&self, _ids: &[JobId]) {}
    /// An attempt failed: `job` is retryable, dead, or cancelled.
    fn failed(&self, _job: &Job) {}
    /// A rescue pass found `count` leases expired (each a failed attempt).
    fn leases_expired(&self, _count: u64) {}
    /// A schedule skipped `count` slots, for `reason`.
    fn slots_skipped(&self, _reason: SkipReason, _count: u64) {}
}

/// The observer of an engine nobody watches.
pub(crate) struct Unobserved;

impl Observer for Unobserved {}
