//! Group commit for small inserts, as the SQLite store's writer thread does it.
//!
//! An enqueue of one job is one statement and one commit, and on PostgreSQL
//! the statement (its trigger, its commit record, the round trips) costs far
//! more than the row. Concurrent small inserts without unique keys are
//! therefore gathered: one group statement runs at a time, and whatever
//! requests arrived while it ran go to the database next, as one multi-row
//! `INSERT`, a single atomic statement. Each caller gets back its own jobs once
//! that statement has committed. Nothing is acknowledged before it is durable,
//! and an idle system pays only a channel hop: the first request goes at once.
//!
//! One statement at a time, not two (one gathering while the other commits):
//! on 2 cores, 64 clients over HTTP enqueued 100,000 single jobs in 4.5–5.0 s
//! with one and 5.1–5.3 s with two (four interleaved pairs; five more agreed).
//! Groups twice the size cost PostgreSQL less CPU per job than a second
//! statement saves in waiting; with more in flight, groups only got smaller
//! (4: 13 % slower than 2, 8: 45 %).
//!
//! If the combined statement fails, each request is tried again on its own, so
//! one request the database refuses never fails the others with it.

use deadpool_postgres::Pool;
use grafter_core::{Job, NewJob, Timestamp};
use grafter_store::{Result, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::error::pool_error;
use crate::inserts::insert_unkeyed;

/// Requests with at least this many jobs are a batch already: they go straight
/// to the database rather than through the group.
pub(crate) const GROUPED_BELOW: usize = 64;
/// A group stops taking requests once it holds this many jobs.
const MAX_GROUP_JOBS: usize = 1000;

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

/// Waits for a request, takes it and every request waiting behind it (up to
/// [`MAX_GROUP_JOBS`]) into one group, and runs that group to the end before
/// gathering the next: requests arriving meanwhile pile up for it.
async fn form_groups(pool: Pool, mut incoming: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = incoming.recv().await {
        let mut jobs = first.jobs.len();
        let mut group = vec![first];
        while jobs < MAX_GROUP_JOBS {
            let Ok(request) = incoming.try_recv() else {
                break;
            };
            jobs += request.jobs.len();
            group.push(request);
        }
        run_group(&pool, group).await;
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
    insert_unkeyed(&client, jobs, nows, None).await
}
