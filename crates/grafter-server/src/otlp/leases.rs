//! The jobs this node leased and has not seen settled: a batch ack names
//! only ids, so this is where each job's queue and trace are found for its
//! `ack` span. Kept only while export is on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use grafter_core::{Job, JobId};

use super::JobRef;

/// Most jobs remembered: past it, a batch ack's spans of the jobs left out
/// are root spans without a queue.
const MAX_REMEMBERED: usize = 100_000;
/// Entries this old go when the map is full: no lease is longer than a day,
/// so their jobs were settled elsewhere (another node, a rescue, a cancel).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What a span needs of a leased job.
#[derive(Clone, Debug, PartialEq)]
pub struct Leased {
    id: JobId,
    queue: String,
    kind: String,
    attempt: i32,
    traceparent: Option<String>,
    tracestate: Option<String>,
    at: Instant,
}

impl Leased {
    /// The job, for its span.
    pub fn job(&self) -> JobRef<'_> {
        JobRef {
            id: Some(self.id),
            queue: Some(&self.queue),
            kind: Some(&self.kind),
            attempt: Some(self.attempt),
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        }
    }
}

#[derive(Default)]
pub struct Leases {
    jobs: Mutex<HashMap<JobId, Leased>>,
}

impl Leases {
    pub fn insert(&self, job: &Job) {
        let now = Instant::now();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= MAX_REMEMBERED {
            jobs.retain(|_, leased| now.duration_since(leased.at) < FORGET_AFTER);
            if jobs.len() >= MAX_REMEMBERED {
                return;
            }
        }
        jobs.insert(
            job.id,
            Leased {
                id: job.id,
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                attempt: job.attempt,
                traceparent: job.traceparent.clone(),
                tracestate: job.tracestate.clone(),
                at: now,
            },
        );
    }

    pub fn remove(&self, id: JobId) -> Option<Leased> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }
}
