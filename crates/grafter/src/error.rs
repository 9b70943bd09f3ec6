//! The library's error type.

use grafter_core::{JobId, ValidationError};
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
    /// The call was refused: a field is out of range (`code`
    /// `invalid_field`, `field` names it), or the job's state does not allow
    /// it (`invalid_state`), or the server said so with another code.
    #[error("rejected ({code}): {message}")]
    Rejected {
        /// The API's error code, e.g. `invalid_field`.
        code: String,
        /// For people.
        message: String,
        /// The offending field, when one is to blame.
        field: Option<String>,
        /// The HTTP status, when the answer came over HTTP.
        status: Option<u16>,
    },
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

    /// A refusal with the API's `code` and no field.
    pub(crate) fn rejected(code: &str, message: impl Into<String>) -> Self {
        Error::Rejected {
            code: code.to_owned(),
            message: message.into(),
            field: None,
            status: None,
        }
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::Rejected {
            code: "invalid_field".to_owned(),
            message: e.to_string(),
            field: Some(e.field),
            status: None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Error::NotFound(id),
            StoreError::LeaseMismatch { .. } => Error::LeaseLost(e.to_string()),
            StoreError::InvalidState { .. } => Error::rejected("invalid_state", e.to_string()),
            StoreError::Invalid(_)
            | StoreError::UnknownDependency { .. }
            | StoreError::RefusedDependency { .. } => {
                Error::rejected("invalid_field", e.to_string())
            }
            StoreError::BatchNotFound(_) => Error::rejected("not_found", e.to_string()),
            StoreError::BatchClosed { .. } => Error::rejected("batch_closed", e.to_string()),
            StoreError::Unavailable(_) | StoreError::Closed => Error::Unavailable(e.to_string()),
            other => Error::Other(other.to_string()),
        }
    }
}

impl From<grafter_engine::Error> for Error {
    fn from(e: grafter_engine::Error) -> Self {
        match e {
            grafter_engine::Error::Invalid(e) => e.into(),
            grafter_engine::Error::NotFound(message) => Error::rejected("not_found", message),
            grafter_engine::Error::Store(e) => e.into(),
        }
    }
}

/// Shorthand for library results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
