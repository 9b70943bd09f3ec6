//! Batches (docs/batches.md): create with jobs, add, seal, cancel, read. The
//! store keeps the counts and settles a batch in the transaction of the job
//! move that finishes it; the engine checks input and wakes fetches.

use grafter_core::batch::{validate_batch_jobs, MAX_BATCH_REQUEST_JOBS};
use grafter_core::{Batch, BatchCallbacks, BatchId, Job, NewJob};
use grafter_store::{BatchAdd, BatchChange, BatchCreate, BatchWithJobs, BatchesList, StoreError};

use crate::error::Result;
use crate::jobs::{keep_valid_trace, Engine};

/// Most batches one page lists.
pub const MAX_BATCH_LIST: usize = 1_000;

/// A batch to create, as an application describes it.
#[derive(Clone, Debug, Default)]
pub struct NewBatch {
    /// Its first jobs (0 to [`MAX_BATCH_REQUEST_JOBS`]).
    pub jobs: Vec<NewJob>,
    /// Whether more jobs may be added until it is sealed.
    pub open: bool,
    /// What to enqueue when it settles.
    pub callbacks: BatchCallbacks,
}

impl Engine {
    /// Creates a batch with its jobs in one transaction (all or none).
    pub async fn batch_create(&self, mut batch: NewBatch) -> Result<BatchWithJobs> {
        validate_batch_jobs(&batch.jobs, true)?;
        batch.callbacks.validate()?;
        let callbacks = &mut batch.callbacks;
        let callbacks = [
            &mut callbacks.on_success,
            &mut callbacks.on_complete,
            &mut callbacks.on_failure,
        ];
        batch
            .jobs
            .iter_mut()
            .chain(callbacks.into_iter().flatten())
            .for_each(keep_valid_trace);
        let created = self
            .store()
            .batch_create(BatchCreate {
                jobs: batch.jobs,
                open: batch.open,
                callbacks: batch.callbacks,
                now: self.now(),
            })
            .await?;
        self.enqueued_into_batch(&created);
        Ok(created)
    }

    /// Adds 1 to [`MAX_BATCH_REQUEST_JOBS`] jobs to an open batch in one
    /// transaction (a job of the batch may add to it while it runs).
    pub async fn batch_add(&self, id: BatchId, mut jobs: Vec<NewJob>) -> Result<BatchWithJobs> {
        validate_batch_jobs(&jobs, false)?;
        jobs.iter_mut().for_each(keep_valid_trace);
        let added = self
            .store()
            .batch_add(BatchAdd {
                id,
                jobs,
                now: self.now(),
            })
            .await?;
        self.enqueued_into_batch(&added);
        Ok(added)
    }

    /// Seals a batch; it settles once its jobs have all finished (at once if
    /// they have).
    pub async fn batch_seal(&self, id: BatchId) -> Result<Batch> {
        let batch = self
            .store()
            .batch_seal(BatchChange {
                id,
                now: self.now(),
            })
            .await?;
        self.announce_callbacks(&batch);
        Ok(batch)
    }

    /// Cancels a batch: its waiting jobs are cancelled, its running ones
    /// asked to stop.
    pub async fn batch_cancel(&self, id: BatchId) -> Result<Batch> {
        let batch = self
            .store()
            .batch_cancel(BatchChange {
                id,
                now: self.now(),
            })
            .await?;
        self.announce_callbacks(&batch);
        Ok(batch)
    }

    /// One batch; `BatchNotFound` if there is none.
    pub async fn batch_get(&self, id: BatchId) -> Result<Batch> {
        Ok(self
            .store()
            .batch_get(id)
            .await?
            .ok_or(StoreError::BatchNotFound(id))?)
    }

    /// Batches newest first, `limit` (1 to [`MAX_BATCH_LIST`]) below `before`.
    pub async fn batches_list(&self, before: Option<BatchId>, limit: usize) -> Result<Vec<Batch>> {
        Ok(self
            .store()
            .batches_list(BatchesList {
                before,
                limit: limit.clamp(1, MAX_BATCH_LIST),
            })
            .await?)
    }

    fn enqueued_into_batch(&self, done: &BatchWithJobs) {
        self.announce_available(&done.jobs);
        for job in &done.jobs {
            self.observer().enqueued(job);
        }
        self.announce_callbacks(&done.batch);
    }

    /// A job of a batch finished by [`Engine::record`]: if that enqueued a
    /// callback (the store did, in the same transaction), wakes the fetches
    /// of its queue. PostgreSQL's trigger notifies every node itself; this
    /// covers this process on every store. A read of the batch, paid only by
    /// jobs in batches as they finish; a batch ack does not look (its
    /// worker's next fetch finds the callback).
    pub(crate) async fn batch_job_finished(&self, job: &Job) {
        let Some(id) = job.batch_id else { return };
        if !job.state.is_finished() {
            return;
        }
        match self.store().batch_get(id).await {
            Ok(Some(batch)) => self.announce_callbacks(&batch),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, batch = %id, "reading a batch to wake its callbacks' queues")
            }
        }
    }

    /// Wakes the queues of the callbacks a batch has enqueued, if it has
    /// settled or one ended dead (a wake with nothing to find costs a look).
    fn announce_callbacks(&self, batch: &Batch) {
        let callbacks = &batch.callbacks;
        let mut queues: Vec<&str> = [
            ("on_success", &callbacks.on_success),
            ("on_complete", &callbacks.on_complete),
            ("on_failure", &callbacks.on_failure),
        ]
        .into_iter()
        .filter(|(name, _)| batch.callbacks_enqueued.iter().any(|e| e == name))
        .filter_map(|(_, job)| job.as_ref().map(|j| j.queue.as_str()))
        .collect();
        queues.sort_unstable();
        queues.dedup();
        if !queues.is_empty() {
            self.store().announce(&queues);
        }
    }
}

/// Keeps [`MAX_BATCH_REQUEST_JOBS`] and the engine's own batch limit one
/// number.
const _: () = assert!(MAX_BATCH_REQUEST_JOBS == crate::jobs::MAX_BATCH);
