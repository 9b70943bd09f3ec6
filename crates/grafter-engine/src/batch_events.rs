//! A batch's live events (docs/events.md), as a job's (`events.rs`): first a
//! snapshot of the batch (or, for a client that reconnects, the events it
//! missed), then each change of its state (sealing and finishing included)
//! and, coalesced as a job's, of its counts and progress, then its end when
//! it finishes: succeeded, completed with failures, or cancelled once its
//! last running job has stopped (a cancel changes its state at once, and its
//! counts still move until then).

use grafter_core::{Batch, BatchId};
use grafter_store::{batch_watch_key, BatchEvent, BatchEventKind, BatchEventsList, Waiter};
use tokio::time::Instant;

use crate::events::{stream_start, woken, Pending, READ_BATCH};
use crate::{Engine, Result};

/// What a batch's stream says next.
#[derive(Clone, Debug)]
pub enum BatchStreamEvent {
    /// The batch as the stream starts; `id` is its latest event's.
    Snapshot {
        /// The batch.
        batch: Batch,
        /// Resume after this.
        id: i64,
    },
    /// Its state changed, it was sealed, or it finished.
    State(BatchEvent),
    /// Its counts or progress changed.
    Progress(BatchEvent),
    /// It finished (`batch` as it ended; `None` if pruned meanwhile);
    /// nothing follows.
    End {
        /// The batch as it ended.
        batch: Option<Batch>,
        /// Resume after this (a stream resumed here ends at once).
        id: i64,
    },
}

/// One batch's events, in order, until its end.
pub struct BatchEventStream {
    engine: Engine,
    id: BatchId,
    waiter: Waiter,
    snapshot: Option<(Batch, i64)>,
    pending: Pending<BatchEvent>,
    /// The next call ends the stream: the batch finished.
    ending: bool,
    ended: bool,
}

impl Engine {
    /// Opens a batch's event stream, watching the batch from now on; `None`
    /// if there is no such batch. With `resume_after` (a client's
    /// Last-Event-ID), the stream replays the events after it instead of
    /// starting with a snapshot; an id the batch never had gets a snapshot.
    pub async fn batch_events(
        &self,
        id: BatchId,
        resume_after: Option<i64>,
    ) -> Result<Option<BatchEventStream>> {
        // Registered before the watch's read, so no change falls between.
        let waiter = self
            .store()
            .watchers()
            .waiter(std::slice::from_ref(&batch_watch_key(id)));
        let Some(watched) = self.store().batch_watch(id).await? else {
            return Ok(None);
        };
        let (after, snapshot) = stream_start(resume_after, watched.last_event);
        let snapshot = snapshot.then(|| (watched.batch.clone(), watched.last_event));
        // A batch finished before its watch logs nothing more: it ends once
        // what is logged is out.
        let finished = watched.batch.finished_at.is_some();
        Ok(Some(BatchEventStream {
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

impl BatchEventStream {
    /// The batch's id.
    pub fn batch_id(&self) -> BatchId {
        self.id
    }

    /// The next event, waiting for it; `None` after the end.
    pub async fn next(&mut self) -> Result<Option<BatchStreamEvent>> {
        if self.ended {
            return Ok(None);
        }
        if let Some((batch, id)) = self.snapshot.take() {
            return Ok(Some(BatchStreamEvent::Snapshot { batch, id }));
        }
        loop {
            if self.ending {
                self.ended = true;
                let batch = self.engine.store().batch_get(self.id).await?;
                return Ok(Some(BatchStreamEvent::End {
                    batch,
                    id: self.pending.after(),
                }));
            }
            if let Some(event) = self.pending.next() {
                let finished = event.finished;
                let event = match event.kind {
                    BatchEventKind::State => BatchStreamEvent::State(event),
                    BatchEventKind::Progress => match self.pending.progress_due(event) {
                        Ok(event) => BatchStreamEvent::Progress(event),
                        Err(until) => {
                            self.wait(Some(until)).await?;
                            continue;
                        }
                    },
                };
                self.ending = finished;
                return Ok(Some(event));
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
            .batch_events_list(BatchEventsList {
                batch_id: self.id,
                after: self.pending.after(),
                limit: READ_BATCH,
            })
            .await?;
        Ok(self.pending.extend(events))
    }

    /// Waits for the batch's next logged change, or until `until`; a change
    /// logged meanwhile is read into `pending`.
    async fn wait(&mut self, until: Option<Instant>) -> Result<()> {
        if woken(&self.waiter, until).await {
            self.read().await?;
        }
        Ok(())
    }
}
