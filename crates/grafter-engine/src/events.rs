//! A job's live events (docs/events.md), as every stream shows them: first a
//! snapshot of the job (or, for a client that reconnects, the events it
//! missed), then each change of its state and its progress as the store logs
//! them, then its end.
//!
//! The store does the hard part: once a job is watched, it logs every change
//! in the transaction that makes it and wakes this process's watchers of the
//! job ([`Store::watchers`]), whichever node made the change. A stream
//! registers its wait before its first read of the log, so no change falls
//! between a read and the wait. Progress is coalesced: a progress event
//! superseded by a later event already logged is skipped, and progress goes
//! out at most once per [`PROGRESS_EVERY`]; state changes always go out, at
//! once and in order.
//!
//! [`Store::watchers`]: grafter_store::Store::watchers

use std::collections::VecDeque;
use std::time::Duration;

use grafter_core::{Job, JobId};
use grafter_store::{
    job_watch_key, BatchEvent, BatchEventKind, JobEvent, JobEventKind, JobEventsList, Waiter,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Engine, Result};

/// Least time between two progress events of one stream.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Most logged events read at a time.
pub(crate) const READ_BATCH: usize = 500;

/// A logged event, as coalescing sees it.
pub(crate) trait Logged {
    /// Whether it says only that progress changed (a later event supersedes it).
    fn is_progress(&self) -> bool;
    /// Its place in the log.
    fn seq(&self) -> i64;
}

impl Logged for JobEvent {
    fn is_progress(&self) -> bool {
        self.kind == JobEventKind::Progress
    }

    fn seq(&self) -> i64 {
        self.seq
    }
}

impl Logged for BatchEvent {
    fn is_progress(&self) -> bool {
        self.kind == BatchEventKind::Progress
    }

    fn seq(&self) -> i64 {
        self.seq
    }
}

/// What the streams of jobs and of batches share: the latest event read
/// from the log, the events read and not yet handed out, and when progress
/// last went out.
pub(crate) struct Pending<E> {
    after: i64,
    events: VecDeque<E>,
    progress_sent: Option<Instant>,
}

/// Where a stream starts in a log whose latest event is `last_event`: after
/// a client's `resume_after` when the log had it, and whether it then starts
/// with a snapshot (an id the log never had gets one).
pub(crate) fn stream_start(resume_after: Option<i64>, last_event: i64) -> (i64, bool) {
    match resume_after.filter(|&after| after >= 0 && after <= last_event) {
        Some(after) => (after, false),
        None => (last_event, true),
    }
}

/// Waits for `waiter`'s next wake-up, or until `until`: whether it came.
pub(crate) async fn woken(waiter: &Waiter, until: Option<Instant>) -> bool {
    match until {
        None => {
            waiter.woken().await;
            true
        }
        Some(until) => tokio::time::timeout_at(until, waiter.woken()).await.is_ok(),
    }
}

impl<E: Logged> Pending<E> {
    pub(crate) fn new(after: i64) -> Self {
        Pending {
            after,
            events: VecDeque::new(),
            progress_sent: None,
        }
    }

    /// The latest event read from the log.
    pub(crate) fn after(&self) -> i64 {
        self.after
    }

    /// Takes events read after [`Pending::after`]; whether there were any.
    pub(crate) fn extend(&mut self, events: Vec<E>) -> bool {
        let Some(last) = events.last() else {
            return false;
        };
        self.after = last.seq();
        self.events.extend(events);
        true
    }

    /// The next event worth handing out: a progress event followed by any
    /// later event is superseded and skipped.
    pub(crate) fn next(&mut self) -> Option<E> {
        while let Some(event) = self.events.pop_front() {
            if event.is_progress() && !self.events.is_empty() {
                continue;
            }
            return Some(event);
        }
        None
    }

    /// A progress event may go out now (and is counted as gone), or must
    /// wait until the answer (put back first).
    pub(crate) fn progress_due(&mut self, event: E) -> std::result::Result<E, Instant> {
        if let Some(until) = self.progress_sent.map(|sent| sent + PROGRESS_EVERY) {
            if Instant::now() < until {
                self.events.push_front(event);
                return Err(until);
            }
        }
        self.progress_sent = Some(Instant::now());
        Ok(event)
    }
}

/// What a job's stream says next.
#[derive(Clone, Debug)]
pub enum JobStreamEvent {
    /// The job as the stream starts; `id` is its latest event's.
    Snapshot {
        /// The job.
        job: Job,
        /// Resume after this.
        id: i64,
    },
    /// Its state or attempt changed.
    State(JobEvent),
    /// Its progress changed.
    Progress(JobEvent),
    /// It finished (`job` as it ended) or was deleted (`None`); nothing follows.
    End {
        /// The job as it ended, if it still exists.
        job: Option<Job>,
        /// Resume after this (a stream resumed here ends at once).
        id: i64,
    },
}

/// One job's events, in order, until its end. See the module docs.
pub struct JobEventStream {
    engine: Engine,
    id: JobId,
    waiter: Waiter,
    snapshot: Option<(Job, i64)>,
    pending: Pending<JobEvent>,
    /// The next call ends the stream: the job finished or was deleted.
    ending: bool,
    ended: bool,
}

impl Engine {
    /// Opens a job's event stream, watching the job from now on; `None` if
    /// there is no such job. With `resume_after` (a client's Last-Event-ID),
    /// the stream replays the events after it instead of starting with a
    /// snapshot; an id the job never had (from the future) gets a snapshot.
    pub async fn job_events(
        &self,
        id: JobId,
        resume_after: Option<i64>,
    ) -> Result<Option<JobEventStream>> {
        let waiter = self
            .store()
            .watchers()
            .waiter(std::slice::from_ref(&job_watch_key(id)));
        let Some(watched) = self.store().job_watch(id).await? else {
            return Ok(None);
        };
        let (after, snapshot) = stream_start(resume_after, watched.last_event);
        let snapshot = snapshot.then(|| (watched.job.clone(), watched.last_event));
        // A job finished before its watch logs nothing more: it ends once
        // what is logged is out.
        let finished = watched.job.state.is_finished();
        Ok(Some(JobEventStream {
            engine: self.clone(),
            id,
            waiter,
            snapshot,
            pending: Pending::new(after),
            ending: finished && after == watched.last_event,
            ended: false,
        }))
    }
}

impl Engine {
    /// Waits up to `wait` (or until `stop`) for the job's next change after
    /// the event id `after` (without it, the next change from now), then
    /// answers the job as it is with its latest event id; `None` if there is
    /// no such job. A finished job answers at once. The long-poll of clients
    /// without event streams.
    pub async fn job_change(
        &self,
        id: JobId,
        after: Option<i64>,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<(Job, i64)>> {
        let Some(mut events) = self.job_events(id, after).await? else {
            return Ok(None);
        };
        let deadline = Instant::now() + wait;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = tokio::time::timeout_at(deadline, events.next()) => next,
            };
            let Ok(next) = next else { break };
            match next? {
                Some(JobStreamEvent::Snapshot { job, id }) if job.state.is_finished() => {
                    return Ok(Some((job, id)));
                }
                Some(JobStreamEvent::Snapshot { .. }) => {}
                Some(JobStreamEvent::State(_) | JobStreamEvent::Progress(_)) => break,
                Some(JobStreamEvent::End { job: Some(job), id }) => return Ok(Some((job, id))),
                Some(JobStreamEvent::End { job: None, .. }) | None => return Ok(None),
            }
        }
        // Read after every event read so far: the job includes them all.
        let job = self.store().job_get(id).await?;
        Ok(job.map(|job| (job, events.pending.after())))
    }
}

impl JobEventStream {
    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.id
    }

    /// The next event, waiting for it; `None` after the end.
    pub async fn next(&mut self) -> Result<Option<JobStreamEvent>> {
        if self.ended {
            return Ok(None);
        }
        if let Some((job, id)) = self.snapshot.take() {
            return Ok(Some(JobStreamEvent::Snapshot { job, id }));
        }
        loop {
            if self.ending {
                self.ended = true;
                let job = self.engine.store().job_get(self.id).await?;
                let job = job.filter(|job| job.state.is_finished());
                return Ok(Some(JobStreamEvent::End {
                    job,
                    id: self.pending.after(),
                }));
            }
            if let Some(event) = self.pending.next() {
                match event.kind {
                    JobEventKind::Deleted => {
                        self.ended = true;
                        return Ok(Some(JobStreamEvent::End {
                            job: None,
                            id: event.seq,
                        }));
                    }
                    JobEventKind::State => {
                        self.ending = event.state.is_some_and(|s| s.is_finished());
                        return Ok(Some(JobStreamEvent::State(event)));
                    }
                    JobEventKind::Progress => match self.pending.progress_due(event) {
                        Ok(event) => return Ok(Some(JobStreamEvent::Progress(event))),
                        Err(until) => {
                            self.wait(Some(until)).await?;
                            continue;
                        }
                    },
                }
            }
            if !self.read().await? {
                self.wait(None).await?;
            }
        }
    }

    /// Reads what the log has after the last event read; whether it had any.
    async fn read(&mut self) -> Result<bool> {
        let events = self
            .engine
            .store()
            .job_events_list(JobEventsList {
                job_id: self.id,
                after: self.pending.after(),
                limit: READ_BATCH,
            })
            .await?;
        Ok(self.pending.extend(events))
    }

    /// Waits for the job's next logged change, or until `until`; a change
    /// logged meanwhile is read into `pending` (a held progress event is then
    /// superseded by it).
    async fn wait(&mut self, until: Option<Instant>) -> Result<()> {
        if woken(&self.waiter, until).await {
            self.read().await?;
        }
        Ok(())
    }
}
