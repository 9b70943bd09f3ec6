//! Push queues: a queue with a push target has its jobs POSTed, signed, to the
//! application's endpoint, and the answer decides each job's outcome
//! (docs/push.md has the contract as a table).
//!
//! - [`signature`]: the `Grafter-Signature` scheme, both sides of it;
//! - `dispatcher`: on every node, leases due jobs of push queues (never more
//!   running, cluster-wide, than a queue's `concurrency`) and pushes them;
//! - `outcome`: what an answer means for the job.

mod dispatcher;
mod outcome;
pub mod signature;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use grafter_core::{Job, JobId};
use grafter_store::{QueuePush, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ConfigError, ServerConfig};

pub(crate) use dispatcher::run as run_dispatcher;
pub use outcome::{MAX_ERROR_BODY_BYTES, MAX_RESULT_BYTES};
pub use signature::HEADER as SIGNATURE_HEADER;

/// Request header: the job's id.
pub const JOB_ID_HEADER: &str = "Grafter-Job-Id";
/// Request header: this attempt's number (1-based).
pub const ATTEMPT_HEADER: &str = "Grafter-Attempt";
/// Request header: the lease, for finishing a job later (after a 202) through
/// `/v1/jobs/{id}/heartbeat`, `/ack` or `/fail`.
pub const LEASE_HEADER: &str = "Grafter-Lease";
/// Response header: `false` makes a failed answer final (the job is dead).
pub const RETRY_HEADER: &str = "Grafter-Retry";

/// The JSON body of every push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The job's id.
    pub id: JobId,
    /// What to run.
    pub kind: String,
    /// The queue it came from.
    pub queue: String,
    /// Its arguments.
    pub args: Value,
    /// This attempt's number (1-based).
    pub attempt: i32,
    /// The attempt after which a failure is final.
    pub max_attempts: i32,
    /// When the job was enqueued.
    pub enqueued_at: DateTime<Utc>,
}

impl From<&Job> for PushRequest {
    fn from(job: &Job) -> Self {
        PushRequest {
            id: job.id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            args: job.args.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            enqueued_at: job.created_at,
        }
    }
}

/// Why the configured push targets could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A target in the file is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store refused or could not be reached.
    #[error("cannot store the push target of queue '{queue}': {source}")]
    Store {
        /// The queue.
        queue: String,
        /// Why.
        source: grafter_store::StoreError,
    },
}

/// Stores the push targets of the config file's `[queues.NAME.push]` tables,
/// replacing what the API set for those queues (the file wins at start).
/// Queues the file does not name keep their settings.
pub async fn apply_configured_targets(
    store: &Arc<dyn Store>,
    config: &ServerConfig,
) -> Result<usize, ApplyError> {
    let targets = config.push_targets()?;
    let count = targets.len();
    for (queue, target) in targets {
        store
            .queue_set_push(QueuePush {
                queue: queue.clone(),
                push: Some(target),
                now: Utc::now(),
            })
            .await
            .map_err(|source| ApplyError::Store { queue, source })?;
    }
    Ok(count)
}
