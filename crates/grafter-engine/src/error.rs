//! The engine's error: input it refuses, or what the store answered.

use grafter_core::ValidationError;
use grafter_store::StoreError;

/// Why an engine call did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A field of the call is out of range or malformed; nothing was done.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such thing (a schedule; a missing job is the store's `NotFound`).
    #[error("{0}")]
    NotFound(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Shorthand for engine results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
