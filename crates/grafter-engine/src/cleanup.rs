//! Deleting finished jobs by hand (`grafter cleanup`, `POST /v1/cleanup`),
//! beside the pruner's retention: per state, in bounded batches, or only
//! counted (a dry run).

use std::collections::BTreeMap;
use std::time::Duration;

use grafter_core::{time, JobState, Timestamp, ValidationError};
use grafter_store::JobsPrune;
use serde::Serialize;

use crate::{Engine, Result};

/// Jobs deleted per statement: each batch is its own short transaction, so a
/// cleanup of millions never holds the writer (or row locks) for long.
pub const CLEANUP_BATCH: usize = 1_000;

/// The states a job can finish in: the only ones a cleanup deletes.
pub const FINISHED_STATES: [JobState; 4] = [
    JobState::Completed,
    JobState::Dead,
    JobState::Cancelled,
    JobState::Expired,
];

/// What to clean up.
#[derive(Clone, Debug)]
pub struct Cleanup {
    /// Only jobs that finished at least this long ago.
    pub older_than: Duration,
    /// Only jobs in these states (finished ones; empty: all finished states).
    pub states: Vec<JobState>,
    /// Count, delete nothing.
    pub dry_run: bool,
}

/// What a cleanup did (or, dry, would do).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cleaned {
    /// Whether nothing was deleted, only counted.
    pub dry_run: bool,
    /// Jobs that finished before this were taken.
    pub finished_before: Timestamp,
    /// Per state, jobs deleted (or that a run would delete).
    pub jobs: BTreeMap<String, u64>,
    /// All of them.
    pub total: u64,
}

impl Engine {
    /// Deletes (or counts) finished jobs older than `cleanup.older_than`, one
    /// state at a time, [`CLEANUP_BATCH`] per statement. An unfinished state
    /// is refused: its jobs still have work ahead.
    pub async fn cleanup(&self, cleanup: Cleanup) -> Result<Cleaned> {
        if let Some(state) = cleanup.states.iter().find(|s| !s.is_finished()) {
            return Err(ValidationError::new(
                "states",
                format!(
                    "'{state}' is not a finished state: a cleanup deletes only completed, dead, \
                     cancelled or expired jobs"
                ),
            )
            .into());
        }
        let states = if cleanup.states.is_empty() {
            FINISHED_STATES.to_vec()
        } else {
            cleanup.states
        };
        let finished_before = time::before(self.now(), cleanup.older_than);
        let mut jobs = BTreeMap::new();
        for state in states {
            let prune = JobsPrune {
                states: vec![state],
                finished_before,
                limit: CLEANUP_BATCH,
            };
            let count = if cleanup.dry_run {
                self.store().jobs_prunable_count(prune).await?
            } else {
                let mut deleted = 0;
                loop {
                    let batch = self.store().jobs_prune(prune.clone()).await?;
                    deleted += batch;
                    if batch < CLEANUP_BATCH as u64 {
                        break deleted;
                    }
                }
            };
            jobs.insert(state.to_string(), count);
        }
        Ok(Cleaned {
            dry_run: cleanup.dry_run,
            finished_before,
            total: jobs.values().sum(),
            jobs,
        })
    }
}
