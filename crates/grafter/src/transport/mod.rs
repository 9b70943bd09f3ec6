//! The two ways the client and worker reach jobs: over HTTP to a `grafter
//! serve`, or straight on a store in the same process. Both offer the same
//! calls, so everything above is written once.

mod http;
mod store;

use std::time::Duration;

use async_trait::async_trait;
use grafter_core::{Job as JobRecord, JobId, LeasedJob, NewJob, Progress, WorkerRegistration};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

pub use http::HttpTransport;
pub use store::StoreTransport;

/// One call to lease jobs.
pub struct Fetch<'a> {
    pub queues: &'a [String],
    pub max: usize,
    pub wait: Duration,
    pub lease: Duration,
    pub worker_id: &'a str,
}

/// How a run ended, as sent to the server.
pub enum Finish {
    Complete(Option<Value>),
    Fail {
        error: String,
        retry: bool,
        retry_in: Option<Duration>,
    },
    /// Hand the job back without counting the attempt, to run at once or after a delay.
    Release {
        after: Option<Duration>,
    },
}

/// One success in a batch ack.
pub struct Ack {
    pub id: JobId,
    pub lease: String,
    pub result: Option<Value>,
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<(JobRecord, bool)>>;
    async fn get(&self, id: JobId) -> Result<JobRecord>;
    async fn cancel(&self, id: JobId) -> Result<JobRecord>;
    /// Leases jobs, waiting up to `wait` for one; returns early (empty) when `stop` fires.
    async fn fetch(&self, fetch: Fetch<'_>, stop: &CancellationToken) -> Result<Vec<LeasedJob>>;
    async fn heartbeat(
        &self,
        id: JobId,
        lease: &str,
        progress: Option<Progress>,
        extend: Duration,
    ) -> Result<JobRecord>;
    async fn finish(&self, id: JobId, lease: &str, finish: &Finish) -> Result<JobRecord>;
    /// Completes many jobs in one round trip; per item, in order, whether it
    /// completed the job (`false`: the lease is not current, or the job is gone).
    async fn complete_many(&self, acks: Vec<Ack>) -> Result<Vec<bool>>;
    async fn worker_beat(&self, worker: &WorkerRegistration) -> Result<()>;
    async fn worker_gone(&self, worker_id: &str) -> Result<()>;
}
