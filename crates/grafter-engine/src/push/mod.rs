//! The wire format of push deliveries, shared by the server that sends them
//! and the receivers that check and run them (docs/push.md): the request's
//! JSON body, its headers, and the signatures: [`signature`], the
//! `Grafter-Signature` scheme (and the receivers' `Verifier` of both), and
//! [`standard_webhooks`].

pub mod signature;
pub mod standard_webhooks;

use std::time::Duration;

use chrono::{DateTime, Utc};
use grafter_core::{Job, JobId, PushTarget};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use signature::HEADER as SIGNATURE_HEADER;

/// Request header: the job's id.
pub const JOB_ID_HEADER: &str = "Grafter-Job-Id";
/// Request header: this attempt's number (1-based).
pub const ATTEMPT_HEADER: &str = "Grafter-Attempt";
/// Request header: the lease, for finishing a job later (after a 202) through
/// `/v1/jobs/{id}/heartbeat`, `/ack` or `/fail`.
pub const LEASE_HEADER: &str = "Grafter-Lease";
/// Response header: `false` makes a failed answer final (the job is dead).
pub const RETRY_HEADER: &str = "Grafter-Retry";

/// The JSON body of every push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The job's id.
    pub id: JobId,
    /// What to run.
    pub kind: String,
    /// The queue it came from.
    pub queue: String,
    /// Its arguments.
    pub args: Value,
    /// This attempt's number (1-based).
    pub attempt: i32,
    /// The attempt after which a failure is final.
    pub max_attempts: i32,
    /// When the job was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// How long Grafter waits for the answer, in milliseconds (the target's
    /// timeout, or the job's own if shorter): a receiver that cannot tell
    /// when Grafter hangs up stops the job then. Absent from the pushes of
    /// servers before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl PushRequest {
    /// The push of `job`, whose answer is awaited for `timeout`.
    pub fn new(job: &Job, timeout: Duration) -> Self {
        PushRequest {
            id: job.id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            args: job.args.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            enqueued_at: job.created_at,
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// The job's W3C trace context as request headers (`traceparent`, and
/// `tracestate` beside it), so the receiver's work joins the enqueuer's
/// trace (docs/traces.md). Both were checked at enqueue; none without a
/// `traceparent`.
pub fn trace_headers(job: &Job) -> Vec<(&'static str, &str)> {
    let Some(traceparent) = job.traceparent.as_deref() else {
        return Vec::new();
    };
    let mut headers = vec![(grafter_core::trace::TRACEPARENT, traceparent)];
    if let Some(tracestate) = job.tracestate.as_deref() {
        headers.push((grafter_core::trace::TRACESTATE, tracestate));
    }
    headers
}

/// The signature headers of a push of `job`'s `body` at `timestamp` (unix
/// seconds): those of the schemes the target's `signing` names, each with
/// one signature per secret (the current one first).
pub fn signature_headers(
    target: &PushTarget,
    job: JobId,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let secrets: Vec<&str> = std::iter::once(target.secret.as_str())
        .chain(target.old_secrets.iter().map(String::as_str))
        .collect();
    let mut headers = Vec::new();
    if target.signing.grafter() {
        headers.push((SIGNATURE_HEADER, signature::sign(&secrets, timestamp, body)));
    }
    if target.signing.standard_webhooks() {
        // Validation refused a `whsec_` secret that is not base64 already.
        let keys: Vec<Vec<u8>> = secrets
            .iter()
            .map(|s| {
                grafter_core::standard_webhooks_key(s).unwrap_or_else(|_| s.as_bytes().to_vec())
            })
            .collect();
        let id = standard_webhooks::message_id(job);
        let signature = standard_webhooks::sign(&keys, &id, timestamp, body);
        headers.push((standard_webhooks::ID_HEADER, id));
        headers.push((standard_webhooks::TIMESTAMP_HEADER, timestamp.to_string()));
        headers.push((standard_webhooks::SIGNATURE_HEADER, signature));
    }
    headers
}
