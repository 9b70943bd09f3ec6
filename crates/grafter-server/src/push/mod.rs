//! Push queues: a queue with a push target has its jobs POSTed, signed, to the
//! application's endpoint, and the answer decides each job's outcome
//! (docs/push.md has the contract as a table). The wire format (body,
//! headers, `Grafter-Signature`) is `grafter_engine::push`, shared with the
//! receivers.
//!
//! - `dispatcher`: on every node, leases due jobs of push queues (never more
//!   running, cluster-wide, than a queue's `concurrency`) and pushes them;
//! - `outcome`: what an answer means for the job;
//! - `address_guard`: which addresses a push may not reach (SSRF).

pub(crate) mod address_guard;
mod dispatcher;
mod outcome;

use grafter_engine::Engine;

use crate::config::{ConfigError, ServerConfig};

pub(crate) use dispatcher::run as run_dispatcher;
pub use outcome::{MAX_ERROR_BODY_BYTES, MAX_RESULT_BYTES};

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
        source: grafter_engine::Error,
    },
}

/// Stores the push targets of the config file's `[queues.NAME.push]` tables,
/// replacing what the API set for those queues (the file wins at start).
/// Queues the file does not name keep their settings.
pub async fn apply_configured_targets(
    engine: &Engine,
    config: &ServerConfig,
) -> Result<usize, ApplyError> {
    let targets = config.push_targets()?;
    let count = targets.len();
    for (queue, target) in targets {
        engine
            .queue_set_push(&queue, Some(target))
            .await
            .map_err(|source| ApplyError::Store { queue, source })?;
    }
    Ok(count)
}
