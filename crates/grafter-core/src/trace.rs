//! W3C Trace Context, level 1 (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` and `tracestate` an enqueue carries, checked here so every
//! way in (HTTP header or field, the Rust library, an application's
//! transaction) keeps the same values, and the trace a worker continues.
//!
//! A malformed value is dropped, never refused: tracing is advice, and a job
//! must not fail to enqueue because a proxy mangled a header. The caller
//! logs what was dropped ([`Dropped`]).

use std::fmt;

use rand::Rng;

use crate::{Job, NewJob};

/// The header (and job field) carrying the trace a job belongs to.
pub const TRACEPARENT: &str = "traceparent";
/// The header (and job field) carrying vendors' trace state.
pub const TRACESTATE: &str = "tracestate";

/// Most list members a `tracestate` may have (the spec's limit).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` kept, in characters: the length the spec asks every
/// vendor to propagate; longer ones are dropped whole rather than cut,
/// because which members to cut is the vendors' choice.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// Length of a version-00 `traceparent`; a later version is at least this long.
const TRACEPARENT_LEN: usize = 55;

/// A parsed `traceparent`: which trace, which span is the parent, and the
/// flags. Ids are kept as their lowercase hex, as they travel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span: 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Why a `traceparent` or `tracestate` was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{header} dropped: {reason}")]
pub struct Dropped {
    /// `traceparent` or `tracestate`.
    pub header: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn bad_parent(reason: &'static str) -> Dropped {
    Dropped {
        header: TRACEPARENT,
        reason,
    }
}

fn bad_state(reason: &'static str) -> Dropped {
    Dropped {
        header: TRACESTATE,
        reason,
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TraceParent {
    /// Parses a `traceparent` by the spec's rules: version 00 is exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase; `ff` is no version; a later
    /// version is read as far as version 00 goes (its first 55 characters,
    /// then end or a dash), so newer senders still join the trace. An
    /// all-zero trace-id or parent-id is invalid.
    pub fn parse(value: &str) -> Result<TraceParent, Dropped> {
        let bytes = value.as_bytes();
        let version = value
            .get(..2)
            .filter(|v| is_lower_hex(v))
            .ok_or(bad_parent("the version is not two lowercase hex digits"))?;
        if version == "ff" {
            return Err(bad_parent("version ff is invalid"));
        }
        if version == "00" && bytes.len() != TRACEPARENT_LEN {
            return Err(bad_parent("a version 00 value is 55 characters long"));
        }
        if bytes.len() < TRACEPARENT_LEN {
            return Err(bad_parent("shorter than 55 characters"));
        }
        if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' {
            return Err(bad_parent(
                "a later version's fields after the flags must follow a dash",
            ));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(bad_parent("fields are not separated by dashes"));
        }
        // The dashes checked are ASCII, so these slices fall on char boundaries.
        let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
        if !is_lower_hex(trace_id) || !is_lower_hex(parent_id) || !is_lower_hex(flags) {
            return Err(bad_parent("ids and flags must be lowercase hex"));
        }
        if trace_id.bytes().all(|b| b == b'0') {
            return Err(bad_parent("the trace-id is all zeros"));
        }
        if parent_id.bytes().all(|b| b == b'0') {
            return Err(bad_parent("the parent-id is all zeros"));
        }
        let flags = u8::from_str_radix(flags, 16).map_err(|_| bad_parent("bad flags"))?;
        Ok(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags,
        })
    }

    /// Whether the caller sampled this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The header form, always version 00: what a level-1 participant sends on,
/// whatever version it received.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Checks a `tracestate`: a comma-separated list of `key=value` members
/// (empty members and spaces or tabs around commas allowed), keys unique,
/// at most [`MAX_TRACESTATE_MEMBERS`] members and [`MAX_TRACESTATE_LEN`]
/// characters.
pub fn check_tracestate(value: &str) -> Result<(), Dropped> {
    if value.len() > MAX_TRACESTATE_LEN {
        return Err(bad_state("longer than 512 characters"));
    }
    let mut keys: Vec<&str> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, val) = member
            .split_once('=')
            .ok_or(bad_state("a member is not key=value"))?;
        if !valid_key(key) {
            return Err(bad_state("a member's key is malformed"));
        }
        if !valid_value(val) {
            return Err(bad_state("a member's value is malformed"));
        }
        if keys.contains(&key) {
            return Err(bad_state("a key appears twice"));
        }
        keys.push(key);
        if keys.len() > MAX_TRACESTATE_MEMBERS {
            return Err(bad_state("more than 32 members"));
        }
    }
    Ok(())
}

/// `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &str) -> bool {
    let rest_ok = |s: &str| {
        s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/'))
    };
    match key.split_once('@') {
        None => {
            key.len() <= 256
                && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && rest_ok(key)
        }
        Some((tenant, system)) => {
            tenant.len() <= 241
                && tenant
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && rest_ok(tenant)
                && system.len() <= 14
                && system
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase())
                && rest_ok(system)
        }
    }
}

/// Up to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// What is kept of a `traceparent` and `tracestate` received together: the
/// `traceparent` in version-00 form if it parses, the `tracestate` as given
/// only beside a kept `traceparent` and within the spec's limits. A
/// `tracestate` with no member (empty, or only commas and spaces) is none.
pub fn keep_valid(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> (Option<String>, Option<String>, Vec<Dropped>) {
    let tracestate = tracestate.filter(|state| {
        state
            .split(',')
            .any(|m| !m.trim_matches([' ', '\t']).is_empty())
    });
    let mut dropped = Vec::new();
    let Some(traceparent) = traceparent else {
        if tracestate.is_some() {
            dropped.push(bad_state("given without a traceparent"));
        }
        return (None, None, dropped);
    };
    let parent = match TraceParent::parse(traceparent) {
        Ok(parent) => parent,
        Err(e) => {
            dropped.push(e);
            if tracestate.is_some() {
                dropped.push(bad_state("its traceparent was dropped"));
            }
            return (None, None, dropped);
        }
    };
    let state = tracestate.and_then(|state| match check_tracestate(state) {
        Ok(()) => Some(state.to_owned()),
        Err(e) => {
            dropped.push(e);
            None
        }
    });
    (Some(parent.to_string()), state, dropped)
}

impl NewJob {
    /// Drops a malformed `traceparent` (with its `tracestate`) or a
    /// `tracestate` out of bounds, and writes a kept `traceparent` in
    /// version-00 form; answers what was dropped, for the caller to log.
    pub fn keep_valid_trace(&mut self) -> Vec<Dropped> {
        if self.traceparent.is_none() && self.tracestate.is_none() {
            return Vec::new();
        }
        let (traceparent, tracestate, dropped) =
            keep_valid(self.traceparent.as_deref(), self.tracestate.as_deref());
        self.traceparent = traceparent;
        self.tracestate = tracestate;
        dropped
    }
}

/// The trace a worker's run of a job belongs to, for its span's fields and
/// for the job's own outgoing calls ([`JobTrace::traceparent`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTrace {
    /// The run's trace.
    pub trace_id: String,
    /// The run's own span id (16 hex digits, new for each run).
    pub span_id: String,
    /// The span the run is a child of: the enqueuer's, on a first attempt
    /// that ran when it was due at enqueue.
    pub parent_id: Option<String>,
    /// The enqueuer's context, on a run that starts a new trace linked to it
    /// (a retry, or a job scheduled for later): it is not part of the
    /// enqueuer's request, which has long finished.
    pub link: Option<TraceParent>,
    /// Trace flags passed on (the enqueuer's, or sampled for a new trace).
    pub flags: u8,
}

impl JobTrace {
    /// The trace of a run of `job`: a child of its stored `traceparent` on a
    /// first attempt whose `run_at` is not later than its enqueue; a new
    /// trace linked to the stored one on a retry (attempt > 1) or a
    /// scheduled run; a new trace without a link when the job has none.
    pub fn for_run(job: &Job) -> JobTrace {
        let stored = job
            .traceparent
            .as_deref()
            .and_then(|t| TraceParent::parse(t).ok());
        let mut rng = rand::rng();
        let span_id = nonzero_hex(&mut rng, 8);
        match stored {
            Some(parent) if job.attempt <= 1 && job.run_at <= job.created_at => JobTrace {
                trace_id: parent.trace_id.clone(),
                span_id,
                parent_id: Some(parent.parent_id.clone()),
                flags: parent.flags,
                link: None,
            },
            link => JobTrace {
                trace_id: nonzero_hex(&mut rng, 16),
                span_id,
                parent_id: None,
                flags: link.as_ref().map_or(1, |l| l.flags),
                link,
            },
        }
    }

    /// This run as a `traceparent`: the context a job sends with its own
    /// requests so that what they do joins the run's trace.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// `bytes` random bytes as lowercase hex, not all zero (an all-zero id is invalid).
fn nonzero_hex(rng: &mut impl Rng, bytes: usize) -> String {
    loop {
        let raw: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
        if raw.iter().any(|&b| b != 0) {
            return raw.iter().map(|b| format!("{b:02x}")).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_value_parses() {
        let parent = TraceParent::parse(VALID).unwrap();
        assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id, "00f067aa0ba902b7");
        assert_eq!(parent.flags, 1);
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), VALID);
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn malformed_values_are_refused() {
        let cases = [
            ("", "empty"),
            ("00", "version alone"),
            (&VALID.to_uppercase(), "uppercase"),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "uppercase trace-id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                "uppercase parent-id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
                "uppercase flags",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\0",
                "trailing NUL",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0\0e0e4736-00f067aa0ba902b7-01",
                "NUL inside",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "short trace-id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
                "long trace-id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
                "short parent-id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                "short flags",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "version 00 with more",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all-zero trace-id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all-zero parent-id",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version not hex",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "wrong separators",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
                "non-ASCII",
            ),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "leading space",
            ),
        ];
        for (value, why) in cases {
            assert!(
                TraceParent::parse(value).is_err(),
                "{why}: {value:?} should be refused"
            );
        }
    }

    #[test]
    fn later_versions_are_read_as_far_as_version_00_goes() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let parent = TraceParent::parse(later).unwrap();
        assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.to_string(), VALID, "sent on as version 00");
        assert!(TraceParent::parse(&later[..55]).is_ok(), "exactly 55");
        // After 55 characters a later version must go on with a dash.
        assert!(TraceParent::parse(&format!("{}x", &later[..55])).is_err());
        assert!(TraceParent::parse(&later[..54]).is_err(), "too short");
    }

    #[test]
    fn tracestate_within_the_limits_is_kept() {
        for ok in [
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7 ,\t, congo=t61rcWkgMzE",
            "tenant1@vendor=x",
            "",
            "a=b c",
        ] {
            check_tracestate(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        check_tracestate(&members.join(",")).unwrap();
    }

    #[test]
    fn tracestate_beyond_the_limits_is_refused() {
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE_LEN));
        for bad in [
            too_many.join(","),
            long,
            "Rojo=1".to_owned(),
            "rojo".to_owned(),
            "rojo=1,rojo=2".to_owned(),
            "rojo=a\0b".to_owned(),
            "rojo=a=b".to_owned(),
            "rojo=".to_owned(),
            "rojo=a\tb".to_owned(),
            "@vendor=x".to_owned(),
            "tenant@Vendor=x".to_owned(),
            "tenant@toolongsystemid=x".to_owned(),
        ] {
            assert!(check_tracestate(&bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_new_job_keeps_only_a_valid_pair() {
        let mut job = NewJob::new("k", serde_json::json!({}));
        job.traceparent = Some(VALID.to_owned());
        job.tracestate = Some("rojo=1".to_owned());
        assert!(job.keep_valid_trace().is_empty());
        assert_eq!(job.traceparent.as_deref(), Some(VALID));
        assert_eq!(job.tracestate.as_deref(), Some("rojo=1"));

        // A bad tracestate goes alone.
        job.tracestate = Some("Rojo=1".to_owned());
        assert_eq!(job.keep_valid_trace().len(), 1);
        assert_eq!(job.traceparent.as_deref(), Some(VALID));
        assert_eq!(job.tracestate, None);

        // One without members is none.
        job.tracestate = Some(" , ".to_owned());
        assert!(job.keep_valid_trace().is_empty());
        assert_eq!(job.tracestate, None);

        // A bad traceparent takes its tracestate with it.
        job.traceparent = Some(VALID.to_uppercase());
        job.tracestate = Some("rojo=1".to_owned());
        let dropped = job.keep_valid_trace();
        assert_eq!(dropped.len(), 2);
        assert_eq!(dropped[0].header, TRACEPARENT);
        assert_eq!((job.traceparent, job.tracestate), (None, None));

        // A tracestate alone means nothing.
        let mut lone = NewJob::new("k", serde_json::json!({}));
        lone.tracestate = Some("rojo=1".to_owned());
        assert_eq!(lone.keep_valid_trace().len(), 1);
        assert_eq!(lone.tracestate, None);
    }

    fn job(traceparent: Option<&str>, attempt: i32, scheduled_later: bool) -> Job {
        let now = chrono::Utc::now();
        let json = serde_json::json!({
            "id": 1, "queue": "q", "kind": "k", "args": {}, "priority": 0,
            "state": "running", "attempt": attempt, "max_attempts": 25,
            "run_at": if scheduled_later { now + chrono::Duration::seconds(60) } else { now },
            "created_at": now, "errors": [], "progress": null, "result": null, "tags": [],
            "unique_key": null, "timeout_ms": null, "expires_at": null, "backoff": null,
            "cancel_requested": false, "worker_id": null, "lease_expires_at": null,
            "attempted_at": null, "finished_at": null, "traceparent": traceparent,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_first_attempt_continues_the_stored_trace() {
        let run = JobTrace::for_run(&job(Some(VALID), 1, false));
        assert_eq!(run.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(run.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(run.link, None);
        assert_ne!(run.span_id, "00f067aa0ba902b7");
        let own = TraceParent::parse(&run.traceparent()).unwrap();
        assert_eq!(own.trace_id, run.trace_id);
        assert_eq!(own.parent_id, run.span_id);
        assert_eq!(own.flags, 1);
    }

    #[test]
    fn a_retry_or_a_scheduled_run_starts_a_linked_trace() {
        for (attempt, later) in [(2, false), (1, true)] {
            let run = JobTrace::for_run(&job(Some(VALID), attempt, later));
            assert_ne!(run.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(run.parent_id, None);
            assert_eq!(run.link, Some(TraceParent::parse(VALID).unwrap()));
            TraceParent::parse(&run.traceparent()).unwrap();
        }
        let untraced = JobTrace::for_run(&job(None, 1, false));
        assert_eq!((untraced.parent_id, untraced.link), (None, None));
        assert_eq!(untraced.trace_id.len(), 32);
    }
}
