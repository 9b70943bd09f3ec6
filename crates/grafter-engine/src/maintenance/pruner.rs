//! Deletes finished jobs past their retention, so the jobs table stays the
//! size of the work in flight plus a window of history.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_core::JobState;
use grafter_store::{JobsPrune, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;

/// The pruner service.
pub struct Pruner {
    store: Arc<dyn Store>,
    retention: RetentionConfig,
    batch_size: usize,
}

impl Pruner {
    /// A pruner keeping finished jobs as long as `retention` says.
    pub fn new(store: Arc<dyn Store>, retention: &RetentionConfig, batch_size: usize) -> Self {
        Pruner {
            store,
            retention: retention.clone(),
            batch_size,
        }
    }

    /// Runs until cancelled, doing passes while this node leads.
    pub async fn run(self, leading: watch::Receiver<bool>, cancel: CancellationToken) {
        let Pruner {
            store,
            retention,
            batch_size,
        } = self;
        let interval = Duration::from_millis(retention.interval_ms);
        super::run_periodically("pruner", interval, batch_size, leading, cancel, || {
            let store = store.clone();
            let retention = retention.clone();
            async move {
                let now = Utc::now();
                let before = |ms: u64| {
                    chrono::Duration::try_milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
                        .and_then(|age| now.checked_sub_signed(age))
                        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
                };
                let finished = JobsPrune {
                    states: vec![JobState::Completed, JobState::Cancelled, JobState::Expired],
                    finished_before: before(retention.finished_ms),
                    limit: batch_size,
                };
                let mut pruned = store.jobs_prune(finished).await?;
                let dead = JobsPrune {
                    states: vec![JobState::Dead],
                    finished_before: before(retention.dead_ms),
                    limit: batch_size,
                };
                pruned += store.jobs_prune(dead).await?;
                Ok(pruned)
            }
        })
        .await;
    }
}
