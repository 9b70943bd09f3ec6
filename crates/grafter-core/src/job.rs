use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use chrono::{DateTime, Utc};

use crate::{storable, time, Backoff, JobState, ScheduleRef};

/// The queue a job goes to when none is named.
pub const DEFAULT_QUEUE: &str = "default";
/// How many attempts a job gets when none is named.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 25;
pub use crate::bounds::{MAX_NAME_LEN, MAX_TAGS};

/// A job's id: assigned by the store, increasing in insertion order, and never
/// given to another job, even after this one is deleted or pruned
/// (applications keep ids: push receivers for idempotency, status URLs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How far a running job has got, as its worker last reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// From 0.0 (nothing done) to 1.0 (all done).
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub fraction: f64,
    /// What the worker is doing now, for people to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A number as an error message shows it: 1e308 in exponent form, not its
/// 309 digits.
fn short(n: f64) -> String {
    if n.abs() < 1e9 {
        n.to_string()
    } else {
        format!("{n:e}")
    }
}

impl Progress {
    /// Checks `fraction` is within 0.0–1.0.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(ValidationError::new(
                "progress.fraction",
                format!("must be between 0.0 and 1.0, got {}", short(self.fraction)),
            ));
        }
        Ok(())
    }
}

/// One failed attempt, kept in the job's `errors` for good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptError {
    /// Which attempt failed (1-based).
    pub attempt: i32,
    /// When the failure was recorded.
    pub at: DateTime<Utc>,
    /// What went wrong: the worker's message, "lease expired", or "timed out".
    pub error: String,
    /// The worker that held the attempt, when it said who it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

/// A job as stored: everything Grafter knows about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Assigned on insert.
    pub id: JobId,
    /// The queue it was enqueued on.
    pub queue: String,
    /// The job's name, e.g. `send_email`; workers dispatch on it.
    pub kind: String,
    /// The job's arguments, any JSON value.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::any))]
    pub args: Value,
    /// Lower runs first.
    pub priority: i16,
    /// Where the job is in its life.
    pub state: JobState,
    /// When the job is (or was) due to run next.
    pub run_at: DateTime<Utc>,
    /// How many attempts have started (0 before the first fetch).
    pub attempt: i32,
    /// The attempt count after which a failure makes the job `dead`.
    pub max_attempts: i32,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// The running attempt's last reported progress.
    pub progress: Option<Progress>,
    /// What the worker returned on success.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::any))]
    pub result: Option<Value>,
    /// Free-form labels for searching.
    pub tags: Vec<String>,
    /// While a job with this key is not finished, enqueueing another with the same
    /// key returns the existing job instead.
    pub unique_key: Option<String>,
    /// Longest an attempt may run, in milliseconds.
    pub timeout_ms: Option<i64>,
    /// A job not started by then becomes `expired`.
    pub expires_at: Option<DateTime<Utc>>,
    /// This job's own retry backoff, overriding the server's.
    pub backoff: Option<Backoff>,
    /// Someone asked to cancel this job while it was running; its worker should stop.
    pub cancel_requested: bool,
    /// The worker holding (or that last held) the lease.
    pub worker_id: Option<String>,
    /// When the current lease ends unless heartbeated.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When the job was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When the job reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The partition given at enqueue: a queue limited `partition_by:
    /// "partition"` limits each partition apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// In a job list and a fetch's answer only: the fields shortened to keep
    /// them small. `args` and `result` (in a list) then hold a string, the
    /// start of their JSON text; `errors` (in both) holds the last attempt's
    /// error alone, its message cut. The job itself (`GET /v1/jobs/{id}`)
    /// has them whole. Empty, and left out of the JSON, everywhere else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<CutField>,
    /// The schedule and slot this job was made for; absent for jobs
    /// enqueued otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleRef>,
    /// The W3C trace context the job was enqueued in (docs/traces.md), in
    /// version-00 form; absent when none came or it was malformed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Vendors' trace state that came with `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The batch this job belongs to; absent for jobs outside batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<crate::BatchId>,
}

/// A field of a [`Job`] that a job list may shorten (see [`Job::cut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CutField {
    /// `args`.
    Args,
    /// `result`.
    Result,
    /// `errors`.
    Errors,
}

/// A job handed to a worker, with the lease that fences its acknowledgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeasedJob {
    /// The job, in state `running`.
    #[serde(flatten)]
    pub job: Job,
    /// Proof of this attempt: ack, fail and heartbeat must present it.
    pub lease: String,
}

/// A job to enqueue, as an application describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// The job's name; workers dispatch on it.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::name))]
    pub kind: String,
    /// Arguments, any JSON value without NUL characters (default `{}`).
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JsonValue))]
    pub args: Value,
    /// Queue name (default `default`).
    #[serde(default = "default_queue")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::path_name))]
    pub queue: String,
    /// Lower runs first (default 0).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = -32768, maximum = 32767))]
    pub priority: i16,
    /// Run no earlier than this (default: now).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts before the job is `dead` (default 25).
    #[serde(default = "default_max_attempts")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2147483647))]
    pub max_attempts: i32,
    /// Labels for searching (at most 64).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tags))]
    pub tags: Vec<String>,
    /// Deduplication key among unfinished jobs.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::name_or_null))]
    pub unique_key: Option<String>,
    /// Longest an attempt may run, in milliseconds (1 to 100 years).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::timeout_ms))]
    pub timeout_ms: Option<i64>,
    /// Do not start after this time.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Retry backoff for this job only.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// The schedule and slot it is made for: set by the engine when a
    /// schedule fires, never by a request.
    #[serde(skip)]
    pub schedule: Option<ScheduleRef>,
    /// The job's partition, for a queue limited per partition
    /// (`partition_by: "partition"`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::name_or_null))]
    pub partition: Option<String>,
    /// The W3C `traceparent` of the trace this job continues (default: the
    /// request's `traceparent` header). A malformed one is dropped, never
    /// refused (docs/traces.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with `traceparent`; kept only beside
    /// a valid `traceparent` and within 32 members and 512 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// A name other jobs of the same request use in their `depends_on`
    /// (docs/dependencies.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::name_or_null))]
    pub r#ref: Option<String>,
    /// Jobs this one waits for: ids of existing jobs, or refs of jobs of the
    /// same request. It is `pending` until they have all finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 100))]
    pub depends_on: Vec<crate::Upstream>,
    /// Batches this one waits for, by id: it is `pending` until each has
    /// finished; one that ends other than `succeeded` counts as a failed
    /// upstream. Each must be sealed (an open batch could yet take a job
    /// that waits for this one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 100))]
    pub depends_on_batches: Vec<crate::BatchId>,
    /// What to do when an upstream ends `dead`, `cancelled` or `expired`,
    /// or a batch it waits for ends other than `succeeded` (default `cancel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_dependency_failure: Option<crate::DependencyFailure>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

fn default_max_attempts() -> i32 {
    DEFAULT_MAX_ATTEMPTS
}

impl NewJob {
    /// A job of `kind` with `args` and every other field at its default.
    pub fn new(kind: impl Into<String>, args: Value) -> Self {
        NewJob {
            kind: kind.into(),
            args,
            queue: default_queue(),
            priority: 0,
            run_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            tags: Vec::new(),
            unique_key: None,
            timeout_ms: None,
            expires_at: None,
            backoff: None,
            schedule: None,
            partition: None,
            traceparent: None,
            tracestate: None,
            r#ref: None,
            depends_on: Vec::new(),
            depends_on_batches: Vec::new(),
            on_dependency_failure: None,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("kind", &self.kind)?;
        validate_path_name("queue", &self.queue)?;
        storable::validate_json("args", &self.args)?;
        if self.max_attempts < 1 {
            return Err(ValidationError::new(
                "max_attempts",
                format!("must be at least 1, got {}", self.max_attempts),
            ));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ValidationError::new(
                "tags",
                format!("at most {MAX_TAGS} tags, got {}", self.tags.len()),
            ));
        }
        for tag in &self.tags {
            validate_name("tags", tag)?;
        }
        if let Some(key) = &self.unique_key {
            validate_name("unique_key", key)?;
        }
        if let Some(partition) = &self.partition {
            validate_name("partition", partition)?;
        }
        if let Some(timeout) = self.timeout_ms {
            time::validate_ms("timeout_ms", i128::from(timeout), 1)?;
        }
        if let Some(run_at) = self.run_at {
            time::validate_time("run_at", run_at)?;
        }
        if let Some(expires_at) = self.expires_at {
            time::validate_time("expires_at", expires_at)?;
        }
        if let Some(backoff) = &self.backoff {
            backoff
                .validate()
                .map_err(|message| ValidationError::new("backoff", message))?;
        }
        Ok(())
    }
}

/// Checks a queue name, kind, tag or key: not empty, not too long, no control
/// or invisible characters, no space at either end. Two names that look the
/// same on a dashboard or in a log must be the same name.
pub fn validate_name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_NAME_LEN} bytes, got {}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|&c| c.is_control() || is_invisible(c)) {
        return Err(ValidationError::new(
            field,
            format!(
                "must not contain control or invisible characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(ValidationError::new(
            field,
            "must not start or end with a space",
        ));
    }
    Ok(())
}

/// Checks a name that is also a segment of URLs (a queue, a schedule, a
/// worker): a name's rules, and not `.` or `..`, which browsers and URL
/// libraries resolve away as dot segments, however they are escaped, so
/// nothing could address it.
pub fn validate_path_name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    validate_name(field, value)?;
    if value == "." || value == ".." {
        return Err(ValidationError::new(
            field,
            "must not be . or .. (no URL can name it)",
        ));
    }
    Ok(())
}

/// Characters that show nothing (or reorder what follows) where a name is
/// displayed: zero-width and format characters, bidirectional controls,
/// variation selectors, fillers and tags.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// A field of a request that is present but not acceptable.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field's name as it appears in JSON.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_from_minimal_json() {
        let job: NewJob = serde_json::from_value(json!({"kind": "send_email"})).unwrap();
        assert_eq!(job.queue, "default");
        assert_eq!(job.max_attempts, 25);
        assert_eq!(job.args, json!({}));
        assert_eq!(job.priority, 0);
        job.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_value::<NewJob>(json!({"kind": "x", "priorty": 1})).unwrap_err();
        assert!(err.to_string().contains("priorty"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (json!({"kind": ""}), "kind"),
            (json!({"kind": "a", "queue": " "}), "queue"),
            (json!({"kind": "a", "max_attempts": 0}), "max_attempts"),
            (json!({"kind": "a", "timeout_ms": -5}), "timeout_ms"),
            (json!({"kind": "a", "tags": ["ok", ""]}), "tags"),
            (
                json!({"kind": "a", "tags": vec!["t"; MAX_TAGS + 1]}),
                "tags",
            ),
            (json!({"kind": "a\u{0007}"}), "kind"),
            (json!({"kind": "a", "backoff": {"factor": 0.1}}), "backoff"),
            (json!({"kind": "x".repeat(256)}), "kind"),
            (json!({"kind": "\u{200b}"}), "kind"),
            (json!({"kind": "send\u{200b}email"}), "kind"),
            (json!({"kind": "a", "queue": " sp "}), "queue"),
            (json!({"kind": "a", "queue": ".."}), "queue"),
            (json!({"kind": "a", "queue": "."}), "queue"),
            (json!({"kind": "a\u{202e}b"}), "kind"),
            (json!({"kind": "a", "timeout_ms": 0}), "timeout_ms"),
            (json!({"kind": "a", "timeout_ms": i64::MAX}), "timeout_ms"),
            (
                json!({"kind": "a", "run_at": "0000-12-31T00:00:00Z"}),
                "run_at",
            ),
            (
                json!({"kind": "a", "expires_at": "+10000-01-01T00:00:00Z"}),
                "expires_at",
            ),
        ];
        for (input, field) in cases {
            let job: NewJob = serde_json::from_value(input.clone()).unwrap();
            assert_eq!(job.validate().unwrap_err().field, field, "{input}");
        }
    }

    #[test]
    fn a_huge_progress_is_told_short() {
        let error = Progress {
            fraction: 1e308,
            message: None,
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.message, "must be between 0.0 and 1.0, got 1e308");
    }

    #[test]
    fn progress_bounds() {
        assert!(Progress {
            fraction: 0.5,
            message: None
        }
        .validate()
        .is_ok());
        assert!(Progress {
            fraction: 1.5,
            message: None
        }
        .validate()
        .is_err());
        assert!(Progress {
            fraction: f64::NAN,
            message: None
        }
        .validate()
        .is_err());
    }
}
