//! The library's error type.

use grafter_core::JobId;
use grafter_store::StoreError;

/// What went wrong talking to Grafter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job with that id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The lease is no longer this worker's (expired and taken, or the job was
    /// finished or deleted meanwhile).
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The request was refused as invalid (a field, or the job's state).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The server or database could not be reached or did not commit; the call
    /// may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Waiting for a job ran out of time.
    #[error("timed out waiting for job {0}")]
    WaitTimeout(JobId),
    /// A job's arguments or result could not be (de)serialized.
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// True for errors a retry may cure.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Error::NotFound(id),
            StoreError::LeaseMismatch { .. } => Error::LeaseLost(e.to_string()),
            StoreError::InvalidState { .. } | StoreError::Invalid(_) => {
                Error::Rejected(e.to_string())
            }
            StoreError::Unavailable(_) | StoreError::Closed => Error::Unavailable(e.to_string()),
            other => Error::Other(other.to_string()),
        }
    }
}

/// Shorthand for library results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
