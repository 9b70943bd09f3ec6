//! Mapping between `batches` rows and [`Batch`]: read by the batch
//! statements, the batch event stream and a job's dependencies alike.

use grafter_core::{Batch, BatchCallbacks, BatchCounts, BatchId, BatchState};
use rusqlite::Row;

use crate::row::{opt_json, timestamp};

/// The columns every batch query selects, in the order [`batch_from_row`]
/// reads them.
pub(crate) const BATCH_COLUMNS: &str =
    "id, state, open, total, completed, dead, cancelled_jobs, expired, \
    progress, on_success, on_complete, on_failure, success_enqueued, complete_enqueued, \
    failure_enqueued, created_at, finished_at";

pub(crate) fn batch_from_row(row: &Row<'_>) -> rusqlite::Result<Batch> {
    let state: String = row.get(1)?;
    let state: BatchState = state.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let total: i64 = row.get(3)?;
    let counts =
        BatchCounts::with_finished(total, row.get(4)?, row.get(5)?, row.get(6)?, row.get(7)?);
    let enqueued = [
        ("on_success", row.get::<_, bool>(12)?),
        ("on_complete", row.get::<_, bool>(13)?),
        ("on_failure", row.get::<_, bool>(14)?),
    ];
    Ok(Batch {
        id: BatchId(row.get(0)?),
        state,
        open: row.get(2)?,
        counts,
        progress: grafter_core::batch::progress(row.get(8)?, total),
        callbacks: BatchCallbacks {
            on_success: opt_json(9, row.get(9)?)?,
            on_complete: opt_json(10, row.get(10)?)?,
            on_failure: opt_json(11, row.get(11)?)?,
        },
        callbacks_enqueued: enqueued
            .iter()
            .filter(|(_, done)| *done)
            .map(|(name, _)| (*name).to_owned())
            .collect(),
        created_at: timestamp(row.get(15)?),
        finished_at: row.get::<_, Option<i64>>(16)?.map(timestamp),
    })
}
