//! Mapping between `batches` rows and [`Batch`]: read by the batch
//! statements, the batch event stream and a job's dependencies alike.

use grafter_core::{Batch, BatchCallbacks, BatchCounts, BatchId, BatchState, NewJob};
use grafter_store::{Result, StoreError};
use serde_json::Value;
use tokio_postgres::Row;

use crate::error::pg_error;
use crate::row::opt_json;

/// The columns every batch query selects, in the order [`batch_from_row`]
/// reads them; a macro so statements can be `concat!`ed.
macro_rules! batch_columns {
    () => {
        "id, state, open, total, completed, dead, cancelled_jobs, expired, progress, \
         on_success, on_complete, on_failure, success_enqueued, complete_enqueued, \
         failure_enqueued, created_at, finished_at"
    };
}
pub(crate) use batch_columns;

/// The index of the first column after [`batch_columns`].
pub(crate) const AFTER_BATCH_COLUMNS: usize = 17;

pub(crate) fn batch_from_row(row: &Row) -> Result<Batch> {
    let get_i64 = |i: usize| row.try_get::<_, i64>(i).map_err(pg_error);
    let state: String = row.try_get(1).map_err(pg_error)?;
    let state: BatchState = state
        .parse()
        .map_err(|e| StoreError::Backend(format!("reading a batch row: {e}")))?;
    let total = get_i64(3)?;
    let counts =
        BatchCounts::with_finished(total, get_i64(4)?, get_i64(5)?, get_i64(6)?, get_i64(7)?);
    // The stored callbacks carry their args_bytes for the trigger's insert.
    let callback = |i: usize| -> Result<Option<NewJob>> {
        let value: Option<Value> = opt_json(row, i)?;
        value
            .map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("args_bytes");
                }
                serde_json::from_value(v)
                    .map_err(|e| StoreError::Backend(format!("reading a batch callback: {e}")))
            })
            .transpose()
    };
    let enqueued = [
        ("on_success", row.try_get::<_, bool>(12).map_err(pg_error)?),
        ("on_complete", row.try_get::<_, bool>(13).map_err(pg_error)?),
        ("on_failure", row.try_get::<_, bool>(14).map_err(pg_error)?),
    ];
    Ok(Batch {
        id: BatchId(get_i64(0)?),
        state,
        open: row.try_get(2).map_err(pg_error)?,
        counts,
        progress: grafter_core::batch::progress(get_i64(8)?, total),
        callbacks: BatchCallbacks {
            on_success: callback(9)?,
            on_complete: callback(10)?,
            on_failure: callback(11)?,
        },
        callbacks_enqueued: enqueued
            .iter()
            .filter(|(_, done)| *done)
            .map(|(name, _)| (*name).to_owned())
            .collect(),
        created_at: row.try_get(15).map_err(pg_error)?,
        finished_at: row.try_get(16).map_err(pg_error)?,
    })
}
