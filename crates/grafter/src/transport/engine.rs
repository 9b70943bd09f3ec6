//! The transport straight on an engine in the same process: no HTTP hop.

use std::time::Duration;

use async_trait::async_trait;
use grafter_core::{
    Batch, BatchId, Job as JobRecord, JobId, LeasedJob, NewJob, Progress, WorkerRegistration,
};
use grafter_engine::{Ack, AckOutcome, Engine, FetchRequest, NewBatch, Outcome};
use grafter_store::Dependencies;
use tokio_util::sync::CancellationToken;

use super::Transport;
use crate::error::{Error, Result};

/// Works on an [`Engine`] directly.
pub struct EngineTransport {
    engine: Engine,
}

impl EngineTransport {
    /// A transport on `engine`.
    pub fn new(engine: Engine) -> Self {
        EngineTransport { engine }
    }
}

#[async_trait]
impl Transport for EngineTransport {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<(JobRecord, bool)>> {
        let inserted = match <[NewJob; 1]>::try_from(jobs) {
            Ok([job]) => vec![self.engine.enqueue(job).await?],
            Err(jobs) => self.engine.enqueue_many(jobs).await?,
        };
        Ok(inserted.into_iter().map(|i| (i.job, i.created)).collect())
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.engine
            .store()
            .job_get(id)
            .await?
            .ok_or(Error::NotFound(id))
    }

    async fn dependencies(&self, id: JobId) -> Result<Dependencies> {
        self.engine
            .store()
            .job_dependencies(id)
            .await?
            .ok_or(Error::NotFound(id))
    }

    async fn job_change(
        &self,
        id: JobId,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<(JobRecord, i64)> {
        self.engine
            .job_change(id, after, wait, &CancellationToken::new())
            .await?
            .ok_or(Error::NotFound(id))
    }

    async fn cancel(&self, id: JobId) -> Result<JobRecord> {
        Ok(self.engine.cancel(id).await?)
    }

    async fn fetch(
        &self,
        mut fetch: FetchRequest,
        stop: &CancellationToken,
    ) -> Result<Vec<LeasedJob>> {
        // As the server does: a longer wait is only a longer poll, not an error.
        fetch.wait = fetch.wait.min(self.engine.config().max_wait);
        Ok(self.engine.fetch(fetch, stop.cancelled()).await?)
    }

    async fn heartbeat(
        &self,
        id: JobId,
        lease: &str,
        progress: Option<Progress>,
        extend: Duration,
    ) -> Result<JobRecord> {
        Ok(self
            .engine
            .heartbeat(id, lease, progress, Some(extend))
            .await?)
    }

    async fn record(&self, id: JobId, lease: &str, outcome: &Outcome) -> Result<JobRecord> {
        Ok(self.engine.record(id, lease, outcome.clone()).await?)
    }

    async fn complete_many(&self, acks: Vec<Ack>) -> Result<Vec<AckOutcome>> {
        Ok(self.engine.complete_many(acks).await?)
    }

    async fn worker_beat(&self, worker: &WorkerRegistration) -> Result<()> {
        Ok(self.engine.worker_beat(worker.clone()).await?)
    }

    async fn worker_gone(&self, worker_id: &str) -> Result<()> {
        Ok(self.engine.worker_remove(worker_id).await?)
    }

    async fn batch_create(&self, batch: NewBatch) -> Result<(Batch, Vec<JobRecord>)> {
        let created = self.engine.batch_create(batch).await?;
        Ok((created.batch, created.jobs))
    }

    async fn batch_add(&self, id: BatchId, jobs: Vec<NewJob>) -> Result<(Batch, Vec<JobRecord>)> {
        let added = self.engine.batch_add(id, jobs).await?;
        Ok((added.batch, added.jobs))
    }

    async fn batch_seal(&self, id: BatchId) -> Result<Batch> {
        Ok(self.engine.batch_seal(id).await?)
    }

    async fn batch_cancel(&self, id: BatchId) -> Result<Batch> {
        Ok(self.engine.batch_cancel(id).await?)
    }

    async fn batch_get(&self, id: BatchId) -> Result<Batch> {
        Ok(self.engine.batch_get(id).await?)
    }
}
