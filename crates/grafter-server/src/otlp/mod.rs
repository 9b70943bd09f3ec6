//! Optional export of the server's own spans over OTLP/HTTP (protobuf):
//! enqueues, fetches, pushes, acks and fails, each a span in the job's
//! trace (docs/traces.md). Off unless `[otlp]` names an endpoint; then the
//! handlers hand finished spans to [`Tracer::record`], which never waits:
//! a bounded queue feeds one exporting task, and a span that finds the
//! queue full is dropped and counted (`grafter_otlp_spans_dropped_total`).

mod exporter;
mod leases;
mod proto;
mod span;

use std::sync::Arc;

use grafter_core::{Job, JobId};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

pub use exporter::Exporter;
pub use span::{JobRef, JobSpan, Operation, SpanStart};

use leases::Leases;

/// Hands the server's spans to the exporter; does nothing when export is off.
#[derive(Clone, Default)]
pub struct Tracer {
    on: Option<Arc<On>>,
}

struct On {
    spans: mpsc::Sender<proto::Span>,
    dropped: Counter,
    /// The jobs this node leased, for their spans when a batch ack names
    /// only their ids.
    leases: Leases,
}

impl Tracer {
    /// Whether spans are exported: the callers skip their work otherwise.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Queues the span of a finished operation for export, unless its trace
    /// is not sampled; drops it (counted) when the queue is full. Never waits.
    pub fn record(&self, span: JobSpan<'_>) {
        let Some(on) = &self.on else {
            return;
        };
        let Some(span) = span.finish() else {
            return;
        };
        if on.spans.try_send(span).is_err() {
            on.dropped.inc();
        }
    }

    /// Remembers a job this node leased, for the spans of a batch ack.
    pub fn leased(&self, job: &Job) {
        if let Some(on) = &self.on {
            on.leases.insert(job);
        }
    }

    /// Forgets a job whose lease ended here, answering what was remembered
    /// of it (an owned [`JobRef`]'s parts).
    pub fn settled(&self, id: JobId) -> Option<leases::Leased> {
        self.on.as_ref()?.leases.remove(id)
    }
}
