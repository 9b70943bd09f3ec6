//! Deletes finished jobs past their retention, so the jobs table stays the
//! size of the work in flight plus a window of history.

use std::time::Duration;

use grafter_core::{time, JobState};
use grafter_store::JobsPrune;

use super::{PassFuture, RetentionConfig, Service};
use crate::Engine;

/// The pruner service.
pub struct Pruner {
    engine: Engine,
    retention: RetentionConfig,
    batch_size: usize,
}

impl Pruner {
    /// A pruner keeping finished jobs as long as `retention` says.
    pub fn new(engine: Engine, retention: &RetentionConfig, batch_size: usize) -> Self {
        Pruner {
            engine,
            retention: retention.clone(),
            batch_size,
        }
    }
}

impl Service for Pruner {
    fn name(&self) -> &'static str {
        "pruner"
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.retention.interval_ms)
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn pass(&self) -> PassFuture<'_> {
        Box::pin(async move {
            let store = self.engine.store();
            let now = self.engine.now();
            let before = |ms: u64| time::before(now, Duration::from_millis(ms));
            let finished = JobsPrune {
                states: vec![JobState::Completed, JobState::Cancelled, JobState::Expired],
                finished_before: before(self.retention.finished_ms),
                limit: self.batch_size,
            };
            let mut pruned = store.jobs_prune(finished).await?;
            let dead = JobsPrune {
                states: vec![JobState::Dead],
                finished_before: before(self.retention.dead_ms),
                limit: self.batch_size,
            };
            pruned += store.jobs_prune(dead).await?;
            Ok(pruned)
        })
    }
}
