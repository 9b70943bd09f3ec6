//! What a worker (or a push target) reports about an attempt, in the terms
//! the engine records: how it ended and when the job runs next.

use std::time::Duration;

use grafter_core::{JobId, Timestamp};
use serde_json::Value;

/// When something should happen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum When {
    /// At once.
    Now,
    /// This long from now (saturating at the latest storable time).
    After(Duration),
    /// At this time (moved into the storable range).
    At(Timestamp),
}

/// When a failed attempt is tried again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Retry {
    /// After the job's backoff (or the engine's).
    Backoff,
    /// At a chosen time instead of the backoff.
    At(When),
    /// Never: the job is dead now, whatever attempts remain.
    Never,
}

/// How an attempt ended, as its worker (or push target) reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It succeeded; `result` is kept as the job's result.
    Completed {
        /// What the job produced.
        result: Option<Value>,
    },
    /// It failed: a failed attempt, retried by the rules unless `retry` says
    /// never (a requested cancel wins and makes the job `cancelled`).
    Failed {
        /// The attempt's error.
        error: String,
        /// When to try again.
        retry: Retry,
    },
    /// It was handed back without counting the attempt: on a worker's
    /// shutdown (`When::Now`) or as a snooze.
    Released {
        /// When the job runs next.
        run_at: When,
    },
}

/// One success in a batch ack.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    /// The job.
    pub id: JobId,
    /// The lease received with it.
    pub lease: String,
    /// What it produced.
    pub result: Option<Value>,
}
