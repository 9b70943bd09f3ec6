//! One span of the server's work on a job, by OpenTelemetry's semantic
//! conventions for messaging spans (v1.44): its name, kind and attributes,
//! and where it sits in the job's trace.

use std::time::{SystemTime, UNIX_EPOCH};

use grafter_core::trace::TraceParent;
use grafter_core::JobId;

use super::proto::{self, KeyValue, SpanKind, StatusCode};

/// The `messaging.system` of every span.
pub const MESSAGING_SYSTEM: &str = "grafter";

/// Span flags: bit 8 says bit 9 (the parent is remote) is known.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
/// Span flags: the parent is remote (the enqueuer's span).
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// What the server did with a job, as a messaging operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// An enqueue: the job was stored (`send`).
    Send,
    /// A fetch leased the job to a worker (`receive`).
    Receive,
    /// The push dispatcher delivered the job to its target and read the
    /// answer (`process`).
    Process,
    /// A worker's ack (`settle`).
    Ack,
    /// A worker's fail (`settle`).
    Fail,
    /// A worker handed the job back unfinished (`settle`).
    Release,
}

impl Operation {
    /// `messaging.operation.type`.
    fn operation_type(self) -> &'static str {
        match self {
            Operation::Send => "send",
            Operation::Receive => "receive",
            Operation::Process => "process",
            Operation::Ack | Operation::Fail | Operation::Release => "settle",
        }
    }

    /// `messaging.operation.name`: the system's own name for it, which
    /// also begins the span's name.
    fn operation_name(self) -> &'static str {
        match self {
            Operation::Send => "send",
            Operation::Receive => "receive",
            Operation::Process => "process",
            Operation::Ack => "ack",
            Operation::Fail => "fail",
            Operation::Release => "release",
        }
    }

    /// The kind the conventions' table gives the operation type.
    fn kind(self) -> SpanKind {
        match self {
            Operation::Send => SpanKind::Producer,
            Operation::Process => SpanKind::Consumer,
            Operation::Receive | Operation::Ack | Operation::Fail | Operation::Release => {
                SpanKind::Client
            }
        }
    }
}

/// When a span began, in nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
pub struct SpanStart(u64);

impl SpanStart {
    /// Now.
    pub fn now() -> SpanStart {
        SpanStart(unix_nanos())
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The job a span is about: what is known of it. Never its args or result.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobRef<'a> {
    /// `messaging.message.id`, when the job exists.
    pub id: Option<JobId>,
    /// `messaging.destination.name`.
    pub queue: Option<&'a str>,
    /// `messaging.grafter.job.kind`.
    pub kind: Option<&'a str>,
    /// `messaging.grafter.job.attempt`.
    pub attempt: Option<i32>,
    /// The job's stored context: the span's parent when it parses.
    pub traceparent: Option<&'a str>,
    /// Its `tracestate`, carried into the span's context.
    pub tracestate: Option<&'a str>,
}

impl<'a> From<&'a grafter_core::Job> for JobRef<'a> {
    fn from(job: &'a grafter_core::Job) -> Self {
        JobRef {
            id: Some(job.id),
            queue: Some(&job.queue),
            kind: Some(&job.kind),
            attempt: Some(job.attempt),
            traceparent: job.traceparent.as_deref(),
            tracestate: job.tracestate.as_deref(),
        }
    }
}

/// A finished operation on one job, to be made a span.
#[derive(Clone, Copy, Debug)]
pub struct JobSpan<'a> {
    /// What was done.
    pub operation: Operation,
    /// When it began.
    pub start: SpanStart,
    /// On which job.
    pub job: JobRef<'a>,
    /// `messaging.batch.message_count`: how many jobs the request handled
    /// together, for the operations that take many at once.
    pub batch_size: Option<usize>,
    /// `error.type`, when the operation failed: a low-cardinality code.
    pub error: Option<&'a str>,
}

impl JobSpan<'_> {
    /// The span, ended now: a child of the job's stored `traceparent` (in
    /// its trace), or a root span when it has none or a malformed one.
    /// `None` when that parent was not sampled: its trace is not recorded.
    pub fn finish(self) -> Option<proto::Span> {
        let parent = self
            .job
            .traceparent
            .and_then(|value| TraceParent::parse(value).ok());
        let (trace_id, parent_span_id, trace_flags, flags) = match &parent {
            Some(parent) if !parent.sampled() => return None,
            Some(parent) => (
                hex::decode(&parent.trace_id).ok()?,
                hex::decode(&parent.parent_id).ok()?,
                parent.flags,
                CONTEXT_HAS_IS_REMOTE | CONTEXT_IS_REMOTE,
            ),
            None => (
                nonzero_id::<16>().to_vec(),
                Vec::new(),
                1,
                CONTEXT_HAS_IS_REMOTE,
            ),
        };
        let op = self.operation;
        let name = match self.job.queue {
            Some(queue) => format!("{} {queue}", op.operation_name()),
            None => op.operation_name().to_owned(),
        };
        let mut attributes = vec![
            KeyValue::string("messaging.system", MESSAGING_SYSTEM),
            KeyValue::string("messaging.operation.type", op.operation_type()),
            KeyValue::string("messaging.operation.name", op.operation_name()),
        ];
        if let Some(queue) = self.job.queue {
            attributes.push(KeyValue::string("messaging.destination.name", queue));
        }
        if let Some(id) = self.job.id {
            attributes.push(KeyValue::string("messaging.message.id", id.0.to_string()));
        }
        if let Some(count) = self.batch_size {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            attributes.push(KeyValue::int("messaging.batch.message_count", count));
        }
        if let Some(kind) = self.job.kind {
            attributes.push(KeyValue::string("messaging.grafter.job.kind", kind));
        }
        if let Some(attempt) = self.job.attempt {
            attributes.push(KeyValue::int(
                "messaging.grafter.job.attempt",
                i64::from(attempt),
            ));
        }
        let status = self.error.map(|error| {
            attributes.push(KeyValue::string("error.type", error));
            proto::Status {
                message: String::new(),
                code: StatusCode::Error as i32,
            }
        });
        let trace_state = match (&parent, self.job.tracestate) {
            (Some(_), Some(state)) => state.to_owned(),
            _ => String::new(),
        };
        Some(proto::Span {
            trace_id,
            span_id: nonzero_id::<8>().to_vec(),
            trace_state,
            parent_span_id,
            name,
            kind: op.kind() as i32,
            start_time_unix_nano: self.start.0,
            end_time_unix_nano: unix_nanos().max(self.start.0),
            attributes,
            status,
            flags: u32::from(trace_flags) | flags,
        })
    }
}

/// A random id, not all zero (an all-zero trace or span id is invalid).
fn nonzero_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}
