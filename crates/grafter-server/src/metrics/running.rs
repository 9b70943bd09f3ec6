//! Jobs this node leased and has not yet seen finish: a batch ack names
//! only ids, so this is where their queue, kind and start are found for the
//! finished counter and the run-time histogram.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use grafter_core::{Job, JobId};

/// Most jobs remembered: a node with more running has the rest of its
/// batch acks counted under `_other`.
const MAX_TRACKED: usize = 100_000;
/// Entries this old go when the map is full: no lease is longer than a day,
/// so their jobs finished elsewhere (another node's ack, a rescue, a cancel).
const FORGET_AFTER: TimeDelta = TimeDelta::days(1);

/// What a finished job is counted by.
#[derive(Clone, Debug, PartialEq)]
pub struct Started {
    pub queue: String,
    pub kind: String,
    pub at: DateTime<Utc>,
}

#[derive(Default)]
pub struct Running {
    jobs: Mutex<HashMap<JobId, Started>>,
}

impl Running {
    pub fn start(&self, job: &Job) {
        let at = job.attempted_at.unwrap_or_else(Utc::now);
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= MAX_TRACKED {
            jobs.retain(|_, started| at - started.at < FORGET_AFTER);
            if jobs.len() >= MAX_TRACKED {
                return;
            }
        }
        jobs.insert(
            job.id,
            Started {
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                at,
            },
        );
    }

    /// Forgets `id`, answering what it was, if this node leased it.
    pub fn finish(&self, id: JobId) -> Option<Started> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }
}
