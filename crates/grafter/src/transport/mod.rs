//! The two ways the client and worker reach jobs: over HTTP to a `grafter
//! serve`, or straight on an engine in the same process. Both take the
//! engine's own request and outcome types, so everything above is written
//! once and an in-process outcome is recorded exactly as the server records
//! one that arrives over HTTP.

mod engine;
mod http;

use async_trait::async_trait;
use grafter_core::{
    Batch, BatchId, Job as JobRecord, JobId, LeasedJob, NewJob, Progress, WorkerRegistration,
};
use grafter_engine::NewBatch;
use grafter_engine::{Ack, AckOutcome, FetchRequest, Outcome};
use grafter_store::Dependencies;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

pub use engine::EngineTransport;
pub use http::HttpTransport;

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<(JobRecord, bool)>>;
    async fn get(&self, id: JobId) -> Result<JobRecord>;
    /// The jobs `id` depends on, with their states and results, and the
    /// batches it waits for.
    async fn dependencies(&self, id: JobId) -> Result<Dependencies>;
    /// Waits up to `wait` for the job's next change after the event id
    /// `after` (`None`: the next from now), then answers the job with its
    /// latest event id; a finished job answers at once.
    async fn job_change(
        &self,
        id: JobId,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<(JobRecord, i64)>;
    async fn cancel(&self, id: JobId) -> Result<JobRecord>;
    /// Leases jobs, waiting up to `fetch.wait` for one; returns early (empty)
    /// when `stop` fires.
    async fn fetch(&self, fetch: FetchRequest, stop: &CancellationToken) -> Result<Vec<LeasedJob>>;
    async fn heartbeat(
        &self,
        id: JobId,
        lease: &str,
        progress: Option<Progress>,
        extend: Duration,
    ) -> Result<JobRecord>;
    /// Records how an attempt ended.
    async fn record(&self, id: JobId, lease: &str, outcome: &Outcome) -> Result<JobRecord>;
    /// Completes many jobs in one round trip; per ack, in order, what it came to.
    async fn complete_many(&self, acks: Vec<Ack>) -> Result<Vec<AckOutcome>>;
    async fn worker_beat(&self, worker: &WorkerRegistration) -> Result<()>;
    async fn worker_gone(&self, worker_id: &str) -> Result<()>;
    /// Creates a batch with its jobs: the batch and its jobs.
    async fn batch_create(&self, batch: NewBatch) -> Result<(Batch, Vec<JobRecord>)>;
    /// Adds jobs to an open batch: the batch and the jobs added.
    async fn batch_add(&self, id: BatchId, jobs: Vec<NewJob>) -> Result<(Batch, Vec<JobRecord>)>;
    async fn batch_seal(&self, id: BatchId) -> Result<Batch>;
    async fn batch_cancel(&self, id: BatchId) -> Result<Batch>;
    async fn batch_get(&self, id: BatchId) -> Result<Batch>;
}
