//! Group commit for small inserts, as the SQLite store's writer thread does it.
//!
//! An enqueue of one job is one statement and one commit, and on PostgreSQL
//! the statement (its trigger, its commit record, the round trips) costs far
//! more than the row. Concurrent small inserts without unique keys are
//! therefore gathered: whatever requests are waiting when a statement slot
//! frees up go to the database as one multi-row `INSERT`, a single atomic
//! statement, and each caller gets back its own jobs once that statement has
//! committed. Nothing is acknowledged before it is durable, and an idle system
//! pays only a channel hop: the first request finds a free slot at once.
//!
//! If the combined statement fails, each request is tried again on its own, so
//! one request the database refuses never fails the others with it.

use std::sync::Arc;

use deadpool_postgres::Pool;
use grafter_core::{Job, NewJob, Timestamp};
use grafter_store::{Result, StoreError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::pool_error;
use crate::ops::insert_unkeyed;

/// Requests with at least this many jobs are a batch already: they go straight
/// to the database rather than through the group.
pub(crate) const GROUPED_BELOW: usize = 64;
/// A group stops taking requests once it holds this many jobs.
const MAX_GROUP_JOBS: usize = 1000;
/// Group statements running at once. Two, so one group gathers while the
/// other waits on its commit; more made groups smaller and cost more database
/// CPU per job (64 clients over HTTP: 1 or 2 in flight ≈ 7.5 s per 100,000
/// enqueues, 4: 8.5 s, 8: 11 s).
const GROUPS_IN_FLIGHT: usize = 2;

/// The entry to the group: cheap to call from any number of tasks.
pub(crate) struct GroupInsert {
    requests: mpsc::UnboundedSender<Request>,
}

/// One caller's jobs, the time of its call and where its answer goes.
struct Request {
    jobs: Vec<NewJob>,
    now: Timestamp,
    reply: oneshot::Sender<Result<Vec<Job>>>,
}

impl GroupInsert {
    /// Starts the task that forms groups; it ends when this is dropped.
    pub(crate) fn spawn(pool: Pool) -> Self {
        let (requests, incoming) = mpsc::unbounded_channel();
        tokio::spawn(form_groups(pool, incoming));
        GroupInsert { requests }
    }

    /// Inserts `jobs` (none with a unique key) in order, created at `now`,
    /// together with whatever other requests are waiting. Returns them as
    /// stored, once committed.
    pub(crate) async fn insert(&self, jobs: Vec<NewJob>, now: Timestamp) -> Result<Vec<Job>> {
        debug_assert!(jobs.iter().all(|job| job.unique_key.is_none()));
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { jobs, now, reply })
            .map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the insert group stopped before answering".into()))?
    }
}

/// Waits for a request and a free slot, then takes every request waiting (up
/// to [`MAX_GROUP_JOBS`]) into one group and runs it in the background.
async fn form_groups(pool: Pool, mut incoming: mpsc::UnboundedReceiver<Request>) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    while let Some(first) = incoming.recv().await {
        // The slot is taken before the group is gathered: while every slot is
        // busy, requests pile up and the next group takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = first.jobs.len();
        let mut group = vec![first];
        while jobs < MAX_GROUP_JOBS {
            let Ok(request) = incoming.try_recv() else {
                break;
            };
            jobs += request.jobs.len();
            group.push(request);
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            run_group(&pool, group).await;
            drop(slot);
        });
    }
}

/// Inserts a group's jobs in one statement and answers each request; if that
/// fails, inserts each request on its own.
async fn run_group(pool: &Pool, group: Vec<Request>) {
    let mut jobs = Vec::with_capacity(group.iter().map(|r| r.jobs.len()).sum());
    let mut nows = Vec::with_capacity(jobs.capacity());
    let mut answers = Vec::with_capacity(group.len());
    for request in group {
        nows.extend(std::iter::repeat_n(request.now, request.jobs.len()));
        answers.push((request.jobs.len(), request.reply));
        jobs.extend(request.jobs);
    }
    if answers.len() > 1 {
        if let Ok(inserted) = insert(pool, &jobs, &nows).await {
            let mut inserted = inserted.into_iter();
            for (count, reply) in answers {
                let _ = reply.send(Ok(inserted.by_ref().take(count).collect()));
            }
            return;
        }
    }
    let mut start = 0;
    for (count, reply) in answers {
        let range = start..start + count;
        start += count;
        let _ = reply.send(insert(pool, &jobs[range.clone()], &nows[range]).await);
    }
}

async fn insert(pool: &Pool, jobs: &[NewJob], nows: &[Timestamp]) -> Result<Vec<Job>> {
    let client = pool.get().await.map_err(pool_error)?;
    insert_unkeyed(&client, jobs, nows).await
}
