use grafter_core::{BatchId, BatchState, JobId, JobState};

/// What can go wrong in a store call. Backends translate their own errors into
/// these at the edge; nothing above sees a driver error type.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No job with that id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The lease presented is not the job's current lease (stale, foreign or the
    /// job is no longer running). Nothing was changed.
    #[error("job {id}: lease is not current (the job is {state}, attempt {attempt})")]
    LeaseMismatch {
        /// The job.
        id: JobId,
        /// Its state now.
        state: JobState,
        /// Its attempt now.
        attempt: i32,
    },
    /// The operation does not apply to a job in this state.
    #[error("job {id} is {state}: {message}")]
    InvalidState {
        /// The job.
        id: JobId,
        /// Its state now.
        state: JobState,
        /// Why the operation does not apply.
        message: String,
    },
    /// No batch with that id.
    #[error("batch {0} not found")]
    BatchNotFound(BatchId),
    /// The batch is sealed, cancelled or finished: it takes no more jobs, or
    /// the change does not apply to it.
    #[error("batch {id} is {state}: {message}")]
    BatchClosed {
        /// The batch.
        id: BatchId,
        /// Its state now.
        state: BatchState,
        /// Why the operation does not apply.
        message: String,
    },
    /// Input the store cannot accept.
    #[error("{0}")]
    Invalid(String),
    /// A job names an upstream (`depends_on`) that does not exist.
    #[error("{field}: job {id} does not exist")]
    UnknownDependency {
        /// Where the request names it: `jobs[i].depends_on[k]`.
        field: String,
        /// The id it names.
        id: JobId,
    },
    /// A job names an upstream it cannot wait for: a job inserted by the
    /// same request (by id, which could make a cycle), or a batch
    /// (`depends_on_batches`) that does not exist, is still open, or is the
    /// job's own.
    #[error("{field}: {message}")]
    RefusedDependency {
        /// Where the request names it: `jobs[i].depends_on[k]` or
        /// `jobs[i].depends_on_batches[k]`.
        field: String,
        /// Why it is refused.
        message: String,
    },
    /// The backend cannot be reached or failed to commit; retrying may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// Anything else from the backend.
    #[error("storage error: {0}")]
    Backend(String),
}

impl StoreError {
    /// `field` names, by id, a job inserted by the same request: only a
    /// job that existed before may be named by id, so no id makes a cycle.
    pub fn same_request_job(field: String, id: JobId) -> Self {
        StoreError::RefusedDependency {
            field,
            message: format!(
                "job {id} is inserted by this same request: name it by its ref \
                 (an id must name a job that exists already)"
            ),
        }
    }

    /// `field` names an upstream at the end of a chain already
    /// [`MAX_DEPTH`](grafter_core::dependency::MAX_DEPTH) deep.
    pub fn too_deep(field: String) -> Self {
        StoreError::RefusedDependency {
            field,
            message: format!(
                "the job would wait at the end of a chain of dependencies deeper than {}",
                grafter_core::dependency::MAX_DEPTH
            ),
        }
    }

    /// `field` names a batch that does not exist.
    pub fn unknown_batch(field: String, id: BatchId) -> Self {
        StoreError::RefusedDependency {
            field,
            message: format!("batch {id} does not exist"),
        }
    }

    /// `field` names a batch still open: it could yet take a job that waits
    /// for the dependent, and neither could ever finish.
    pub fn open_batch(field: String, id: BatchId) -> Self {
        StoreError::RefusedDependency {
            field,
            message: format!(
                "batch {id} is open: seal it first (an open batch could yet take a job \
                 that waits for this one)"
            ),
        }
    }

    /// `field` names the dependent's own batch, which finishes only after it.
    pub fn own_batch(field: String, id: BatchId) -> Self {
        StoreError::RefusedDependency {
            field,
            message: format!(
                "batch {id} is this job's own batch: it finishes only after the job, \
                 so the job could never run"
            ),
        }
    }
}
