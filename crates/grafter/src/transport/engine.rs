//! The transport straight on a store in the same process: no HTTP hop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use grafter_core::{
    Backoff, Job as JobRecord, JobId, LeasedJob, NewJob, Progress, WorkerRegistration,
};
use grafter_store::{
    JobCancel, JobComplete, JobFail, JobHeartbeat, JobRelease, JobsCompleteMany, JobsFetch,
    JobsInsert, Store, WorkerBeat,
};
use tokio_util::sync::CancellationToken;

use super::{Ack, Fetch, Finish, Transport};
use crate::error::{Error, Result};

/// Works on an `Arc<dyn Store>` directly.
pub struct StoreTransport {
    store: Arc<dyn Store>,
    backoff: Backoff,
}

impl StoreTransport {
    /// A transport on `store`, retrying failed jobs with `backoff` unless they have their own.
    pub fn new(store: Arc<dyn Store>, backoff: Backoff) -> Self {
        StoreTransport { store, backoff }
    }
}

fn later(delay: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

#[async_trait]
impl Transport for StoreTransport {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<(JobRecord, bool)>> {
        for job in &jobs {
            job.validate().map_err(|e| Error::Rejected(e.to_string()))?;
        }
        let inserted = self
            .store
            .jobs_insert_many(JobsInsert {
                jobs,
                now: Utc::now(),
            })
            .await?;
        Ok(inserted.into_iter().map(|i| (i.job, i.created)).collect())
    }

    async fn get(&self, id: JobId) -> Result<JobRecord> {
        self.store.job_get(id).await?.ok_or(Error::NotFound(id))
    }

    async fn cancel(&self, id: JobId) -> Result<JobRecord> {
        Ok(self
            .store
            .job_cancel(JobCancel {
                id,
                now: Utc::now(),
            })
            .await?)
    }

    async fn fetch(&self, fetch: Fetch<'_>, stop: &CancellationToken) -> Result<Vec<LeasedJob>> {
        let params = || JobsFetch {
            running_limit: None,
            queues: fetch.queues.to_vec(),
            max: fetch.max,
            lease_duration: fetch.lease,
            worker_id: Some(fetch.worker_id.to_owned()),
            now: Utc::now(),
        };
        Ok(grafter_store::jobs_fetch_waiting(
            self.store.as_ref(),
            params,
            fetch.wait,
            stop.cancelled(),
        )
        .await?)
    }

    async fn heartbeat(
        &self,
        id: JobId,
        lease: &str,
        progress: Option<Progress>,
        extend: Duration,
    ) -> Result<JobRecord> {
        let beat = JobHeartbeat {
            id,
            lease: lease.to_owned(),
            progress,
            lease_duration: extend,
            now: Utc::now(),
        };
        Ok(self.store.job_heartbeat(beat).await?)
    }

    async fn finish(&self, id: JobId, lease: &str, finish: &Finish) -> Result<JobRecord> {
        let lease = lease.to_owned();
        let now = Utc::now();
        let job = match finish {
            Finish::Complete(result) => {
                self.store
                    .job_complete(JobComplete {
                        id,
                        lease,
                        result: result.clone(),
                        now,
                    })
                    .await?
            }
            Finish::Fail {
                error,
                retry,
                retry_in,
            } => {
                let fail = JobFail {
                    id,
                    lease,
                    error: error.clone(),
                    retry: *retry,
                    retry_at: retry_in.map(later),
                    backoff: self.backoff,
                    now,
                };
                self.store.job_fail(fail).await?
            }
            Finish::Release { after } => {
                let run_at = after.map(later).unwrap_or(now);
                self.store
                    .job_release(JobRelease {
                        id,
                        lease,
                        run_at,
                        now,
                    })
                    .await?
            }
        };
        Ok(job)
    }

    async fn complete_many(&self, acks: Vec<Ack>) -> Result<Vec<bool>> {
        let items = acks
            .into_iter()
            .map(|a| (a.id, a.lease, a.result))
            .collect();
        Ok(self
            .store
            .jobs_complete_many(JobsCompleteMany {
                items,
                now: Utc::now(),
            })
            .await?)
    }

    async fn worker_beat(&self, worker: &WorkerRegistration) -> Result<()> {
        Ok(self
            .store
            .worker_heartbeat(WorkerBeat {
                worker: worker.clone(),
                now: Utc::now(),
            })
            .await?)
    }

    async fn worker_gone(&self, worker_id: &str) -> Result<()> {
        Ok(self.store.worker_remove(worker_id.to_owned()).await?)
    }
}
