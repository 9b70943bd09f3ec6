//! Deletes finished jobs past their retention, so the jobs table stays the
//! size of the work in flight plus a window of history. Jobs in batches go
//! with their batch, once it has finished, kept as long as the longer of the
//! two retentions; a batch with an unfinished job is never pruned. Audit log
//! entries go past their own retention.

use std::time::Duration;

use grafter_core::{time, JobState};
use grafter_store::{AuditPrune, BatchesPrune, JobsPrune};

use super::RetentionConfig;
use crate::{Engine, Result};

/// One pass: up to `batch_size` completed, cancelled and expired jobs, and as
/// many dead ones, and as many audit entries, each kept as long as
/// `retention` says; and one finished batch with all its jobs (a batch's jobs
/// are deleted in one transaction, so a pass takes one batch however large).
pub(super) async fn pass(
    engine: Engine,
    retention: RetentionConfig,
    batch_size: usize,
) -> Result<u64> {
    let store = engine.store();
    let now = engine.now();
    let before = |ms: u64| time::before(now, Duration::from_millis(ms));
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
    let batches = BatchesPrune {
        finished_before: before(retention.finished_ms.max(retention.dead_ms)),
        limit: 1,
    };
    pruned += store.batches_prune(batches).await?;
    let audit = AuditPrune {
        before: before(retention.audit_ms),
        limit: batch_size,
    };
    pruned += store.audit_prune(audit).await?;
    Ok(pruned)
}
