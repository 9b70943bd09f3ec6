//! Fires due schedules: each due slot's job is enqueued once, or the slot
//! is recorded as skipped, by the schedule's catch-up and overlap policies
//! (see `crate::schedules`). Reads only the schedules that are due.

use crate::{Engine, Result};

/// One pass: up to `batch_size` schedules.
pub(super) async fn pass(engine: Engine, batch_size: usize) -> Result<u64> {
    engine.schedules_fire_due(batch_size).await
}
