//! Periodic jobs: what a schedule is, how it is checked, and when it fires.
//!
//! A schedule fires at *slots*: nominal UTC instants given by a cron
//! expression read in an IANA time zone (the zone database is compiled in,
//! from `chrono-tz`, so the host's does not matter), or by an interval
//! (`every_ms`) counted in absolute time. A slot is what makes a run unique:
//! each job a schedule makes carries `schedule: {id, slot}`.
//!
//! Daylight saving time, in the zone's wall time:
//! - a wall time that a spring-forward gap skips fires once, at the first
//!   instant after the gap (several skipped times fire once together);
//! - a wall time that a fall-back repeats fires once, at its first
//!   occurrence (so `0 * * * *` has no second 01:00 on that night);
//! - interval schedules follow absolute time and never see DST.
//!
//! The cron expression is parsed by `croner` (5 fields, or 6 with seconds
//! first; `@hourly`-style macros; day of month and day of week are ORed as in
//! Vixie cron), but walked here over wall times, so these rules are ours and
//! hold in every zone, including a skipped day (Pacific/Apia, 2011-12-30).

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::{time, validate_path_name, JobId, NewJob, Timestamp, ValidationError};

/// The schedule and slot a job was made for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleRef {
    /// The schedule's id.
    pub id: String,
    /// The nominal UTC instant the job was made for; `null` for a run
    /// triggered by hand (`POST /v1/schedules/{id}/trigger`).
    pub slot: Option<DateTime<Utc>>,
}

/// What to do with slots that came due while nothing fired them (the server
/// was down, the leader was changing): "missed" slots, as against the latest
/// slot when it is at most [`ON_TIME_MS`] late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run none of them: wait for the next slot (the latest slot still runs
    /// if it is on time).
    #[default]
    Skip,
    /// Run only the latest due slot, however late.
    Latest,
    /// Run every due slot within `catch_up_window_ms`, at most the latest
    /// `catch_up_max` of them.
    All,
}

/// What to do at a slot when the schedule's previous run is not finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Enqueue anyway.
    #[default]
    Allow,
    /// Enqueue nothing for this slot (recorded as skipped, reason `overlap`).
    Skip,
    /// Cancel the previous run (at once if waiting, by request if running),
    /// then enqueue.
    CancelPrevious,
}

/// Who manages a schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSource {
    /// The API, the CLI or the dashboard: kept until deleted.
    #[default]
    Api,
    /// The config file's `[schedules.ID]`: updated to the file at each start,
    /// deleted when the file no longer has it.
    Config,
}

impl ScheduleSource {
    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleSource::Api => "api",
            ScheduleSource::Config => "config",
        }
    }
}

impl FromStr for ScheduleSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "api" => Ok(ScheduleSource::Api),
            "config" => Ok(ScheduleSource::Config),
            other => Err(format!("unknown schedule source {other:?}")),
        }
    }
}

/// Why slots were not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Late, and the catch-up policy (`skip`, or `latest` for all but the
    /// latest) does not run late slots.
    Missed,
    /// Late by more than `catch_up_window_ms` (policy `all`).
    OutsideWindow,
    /// Within the window but beyond the latest `catch_up_max` (policy `all`).
    OverMax,
    /// The previous run was unfinished (overlap `skip`).
    Overlap,
    /// The schedule was paused.
    Paused,
}

impl SkipReason {
    /// Every reason.
    pub const ALL: [SkipReason; 5] = [
        SkipReason::Missed,
        SkipReason::OutsideWindow,
        SkipReason::OverMax,
        SkipReason::Overlap,
        SkipReason::Paused,
    ];

    /// The name as stored, shown and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Missed => "missed",
            SkipReason::OutsideWindow => "outside_window",
            SkipReason::OverMax => "over_max",
            SkipReason::Overlap => "overlap",
            SkipReason::Paused => "paused",
        }
    }
}

impl FromStr for SkipReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SkipReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown skip reason {s:?}"))
    }
}

/// Slots not run, recorded together: a run of consecutive slots skipped
/// for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkippedSlots {
    /// The first slot skipped.
    pub first_slot: DateTime<Utc>,
    /// The last slot skipped (the first, for one slot).
    pub last_slot: DateTime<Utc>,
    /// How many slots, from the first to the last.
    pub count: u64,
    /// Why.
    pub reason: SkipReason,
    /// When the skip was decided.
    pub recorded_at: DateTime<Utc>,
}

/// A slot is on time, not missed, while it is at most this late: the pass
/// that fires slots runs every half second, and a leader change takes a few.
pub const ON_TIME_MS: u64 = 60_000;
/// Default of [`ScheduleSpec::catch_up_window_ms`]: one day.
pub const DEFAULT_CATCH_UP_WINDOW_MS: u64 = 86_400_000;
/// Default of [`ScheduleSpec::catch_up_max`].
pub const DEFAULT_CATCH_UP_MAX: u32 = 100;
/// Largest [`ScheduleSpec::catch_up_max`].
pub const MAX_CATCH_UP_MAX: u32 = 1_000;
pub use crate::bounds::MIN_EVERY_MS;

fn utc() -> String {
    "UTC".to_owned()
}

fn default_window() -> u64 {
    DEFAULT_CATCH_UP_WINDOW_MS
}

fn default_max() -> u32 {
    DEFAULT_CATCH_UP_MAX
}

/// A schedule's definition: the body of `PUT /v1/schedules/{id}` and of a
/// config file's `[schedules.ID]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron expression: 5 fields (`0 9 * * 1-5`), or 6 with seconds first,
    /// or a macro (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
    /// Give this or `every_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// An interval in ms (at least 1000), in absolute time, counted from
    /// `start_at` or else from the Unix epoch (so `60000` fires on each
    /// whole UTC minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::every_ms))]
    pub every_ms: Option<u64>,
    /// The IANA zone the cron expression is read in (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The job each slot enqueues: the fields of `POST /v1/jobs`, except
    /// `run_at` (the slot is the run time), `expires_at` and `unique_key`.
    pub job: NewJob,
    /// Missed slots: `skip` (default), `latest` or `all`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// With `all`: how late a slot may be and still run, in ms (default a day).
    #[serde(default = "default_window")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3153600000000_u64))]
    pub catch_up_window_ms: u64,
    /// With `all`: most missed slots run at once (default 100, at most 1000).
    #[serde(default = "default_max")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub catch_up_max: u32,
    /// When the previous run is unfinished: `allow` (default), `skip`,
    /// `cancel_previous`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Paused schedules fire nothing; their slots are recorded as skipped
    /// when they resume. Absent on an update: left as it is.
    #[serde(default, skip_serializing)]
    pub paused: Option<bool>,
    /// No slot before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    /// No slot after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<DateTime<Utc>>,
}

impl ScheduleSpec {
    /// A schedule of `job` on a cron expression, everything else default.
    pub fn cron(cron: &str, job: NewJob) -> Self {
        ScheduleSpec {
            cron: Some(cron.to_owned()),
            every_ms: None,
            timezone: utc(),
            job,
            catch_up: CatchUp::default(),
            catch_up_window_ms: DEFAULT_CATCH_UP_WINDOW_MS,
            catch_up_max: DEFAULT_CATCH_UP_MAX,
            overlap: Overlap::default(),
            paused: None,
            start_at: None,
            end_at: None,
        }
    }

    /// A schedule of `job` every `ms` milliseconds, everything else default.
    pub fn every(ms: u64, job: NewJob) -> Self {
        ScheduleSpec {
            cron: None,
            every_ms: Some(ms),
            ..ScheduleSpec::cron("", job)
        }
    }

    /// Checks every field and answers when the schedule fires; the error
    /// names the first bad field (`cron`, `timezone`, `job.kind`, …).
    pub fn validate(&self) -> Result<Timing, ValidationError> {
        let timing = Timing::new(self)?;
        self.job
            .validate()
            .map_err(|e| ValidationError::new(format!("job.{}", e.field), e.message))?;
        for (field, set) in [
            ("job.run_at", self.job.run_at.is_some()),
            ("job.expires_at", self.job.expires_at.is_some()),
            ("job.unique_key", self.job.unique_key.is_some()),
        ] {
            if set {
                return Err(ValidationError::new(
                    field,
                    "not allowed in a schedule's job: the slot sets the run time, and \
                     `overlap` decides what happens while a run is unfinished",
                ));
            }
        }
        for (field, set) in [
            ("job.traceparent", self.job.traceparent.is_some()),
            ("job.tracestate", self.job.tracestate.is_some()),
        ] {
            if set {
                return Err(ValidationError::new(
                    field,
                    "not allowed in a schedule's job: each run starts a trace of its own",
                ));
            }
        }
        for (field, set) in [
            ("job.depends_on", !self.job.depends_on.is_empty()),
            (
                "job.depends_on_batches",
                !self.job.depends_on_batches.is_empty(),
            ),
            ("job.ref", self.job.r#ref.is_some()),
            (
                "job.on_dependency_failure",
                self.job.on_dependency_failure.is_some(),
            ),
        ] {
            if set {
                return Err(ValidationError::new(
                    field,
                    "not allowed in a schedule's job: its runs depend on nothing",
                ));
            }
        }
        time::validate_ms("catch_up_window_ms", i128::from(self.catch_up_window_ms), 1)?;
        if !(1..=MAX_CATCH_UP_MAX).contains(&self.catch_up_max) {
            return Err(ValidationError::new(
                "catch_up_max",
                format!(
                    "must be between 1 and {MAX_CATCH_UP_MAX}, got {}",
                    self.catch_up_max
                ),
            ));
        }
        if let Some(start) = self.start_at {
            time::validate_time("start_at", start)?;
        }
        if let Some(end) = self.end_at {
            time::validate_time("end_at", end)?;
            if self.start_at.is_some_and(|start| start > end) {
                return Err(ValidationError::new(
                    "end_at",
                    "must not be before start_at",
                ));
            }
        }
        // A cron search from far in the future gives up (the cron crate looks
        // only so many years ahead): such a schedule would never fire, so it
        // is refused rather than kept silently idle. Judged from start_at,
        // not now, so a schedule accepted once is accepted every day.
        if let (Some(start), None) = (self.start_at, self.end_at) {
            if timing.next(start, true).is_none() {
                return Err(ValidationError::new(
                    "start_at",
                    "no slot of the schedule on or after it can be computed: \
                     give an earlier start_at",
                ));
            }
        }
        Ok(timing)
    }
}

/// Checks a schedule id: the rules of a queue name.
pub fn validate_schedule_id(id: &str) -> Result<(), ValidationError> {
    validate_path_name("id", id)
}

/// When a schedule fires: its parsed expression or interval, with its
/// bounds. Built by [`ScheduleSpec::validate`].
#[derive(Clone, Debug)]
pub struct Timing {
    rule: Rule,
    start_at: Option<Timestamp>,
    end_at: Option<Timestamp>,
}

#[derive(Clone, Debug)]
enum Rule {
    Cron { cron: Box<Cron>, tz: Tz },
    Every { micros: i64, anchor: i64 },
}

/// How many candidate wall times one search looks at before giving up (a
/// fall-back's repeated hour of a per-second expression is 3,600).
const MAX_CANDIDATES: usize = 10_000;

impl Timing {
    fn new(spec: &ScheduleSpec) -> Result<Self, ValidationError> {
        let rule = match (&spec.cron, spec.every_ms) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "every_ms",
                    "give either cron or every_ms, not both",
                ))
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "cron",
                    "give a cron expression (or every_ms instead)",
                ))
            }
            (Some(expression), None) => {
                let tz: Tz = spec.timezone.parse().map_err(|_| {
                    ValidationError::new(
                        "timezone",
                        format!(
                            "unknown time zone {:?}: use an IANA name such as Europe/Berlin",
                            spec.timezone
                        ),
                    )
                })?;
                Rule::Cron {
                    cron: Box::new(parse_cron(expression)?),
                    tz,
                }
            }
            (None, Some(ms)) => {
                let every = time::validate_ms("every_ms", i128::from(ms), MIN_EVERY_MS)?;
                if spec.timezone.parse::<Tz>().is_err() {
                    return Err(ValidationError::new(
                        "timezone",
                        format!("unknown time zone {:?}", spec.timezone),
                    ));
                }
                Rule::Every {
                    micros: i64::try_from(every.as_micros()).unwrap_or(i64::MAX),
                    anchor: spec.start_at.map_or(0, |s| s.timestamp_micros()),
                }
            }
        };
        Ok(Timing {
            rule,
            start_at: spec.start_at,
            end_at: spec.end_at,
        })
    }

    /// The first slot at or after `at` (`inclusive`) or after it, within
    /// `start_at`..=`end_at`; `None` when there is none.
    pub fn next(&self, at: Timestamp, inclusive: bool) -> Option<Timestamp> {
        let (at, inclusive) = match self.start_at {
            Some(start) if start > at => (start, true),
            _ => (at, inclusive),
        };
        let slot = match &self.rule {
            Rule::Cron { cron, tz } => next_cron(cron, *tz, at, inclusive),
            Rule::Every { micros, anchor } => next_every(*micros, *anchor, at, inclusive),
        }?;
        let within = slot <= time::latest() && self.end_at.is_none_or(|end| slot <= end);
        within.then_some(slot)
    }

    /// Up to `count` slots from `at` on (inclusive).
    pub fn upcoming(&self, at: Timestamp, count: usize) -> Vec<Timestamp> {
        let mut slots = Vec::with_capacity(count.min(1_000));
        let mut next = self.next(at, true);
        while let Some(slot) = next {
            if slots.len() >= count {
                break;
            }
            slots.push(slot);
            next = self.next(slot, false);
        }
        slots
    }
}

fn parse_cron(expression: &str) -> Result<Cron, ValidationError> {
    let fields = expression.split_whitespace().count();
    let invalid = |message: String| ValidationError::new("cron", message);
    if !expression.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(invalid(format!(
            "{expression:?}: give 5 fields (minute hour day-of-month month day-of-week), \
             or 6 with seconds first; got {fields}"
        )));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| {
            invalid(format!(
                "{expression:?} is not a valid cron expression: {e}"
            ))
        })?;
    // An expression is judged once, the same on every day it is sent: does it
    // fire at all, from 2000 on (croner searches some years ahead)?
    let from = chrono::DateTime::from_timestamp(946_684_800, 0).unwrap_or_default();
    if cron.find_next_occurrence(&from, true).is_err() {
        return Err(invalid(format!(
            "{expression:?} never fires (no date matches it, e.g. February 31st)"
        )));
    }
    Ok(cron)
}

fn next_every(micros: i64, anchor: i64, at: Timestamp, inclusive: bool) -> Option<Timestamp> {
    let (at, period, anchor) = (
        i128::from(at.timestamp_micros()),
        i128::from(micros),
        i128::from(anchor),
    );
    let steps = if at < anchor {
        0
    } else {
        let elapsed = at - anchor;
        let whole = elapsed / period;
        if elapsed % period == 0 && inclusive {
            whole
        } else {
            whole + 1
        }
    };
    let slot = i64::try_from(anchor + steps * period).ok()?;
    chrono::DateTime::from_timestamp_micros(slot)
}

/// The next cron slot: wall times from `at`'s on, each resolved to an
/// instant by the DST rules, the first past `at`. Wall times up to `at`'s
/// resolve to instants up to `at`, so the search starts there; in a
/// fall-back's second pass the first candidates resolve to the first pass,
/// before `at`, and are passed over.
fn next_cron(cron: &Cron, tz: Tz, at: Timestamp, inclusive: bool) -> Option<Timestamp> {
    // Slots are whole seconds: from a fraction, search from its second.
    let whole = at.with_nanosecond(0)?;
    let inclusive = inclusive && whole == at;
    let mut cursor = whole.with_timezone(&tz).naive_local().and_utc();
    let mut include = inclusive;
    for _ in 0..MAX_CANDIDATES {
        let wall = cron.find_next_occurrence(&cursor, include).ok()?;
        include = false;
        let slot = resolve(tz, wall.naive_utc())?;
        if slot > at || (inclusive && slot == at) {
            return Some(slot);
        }
        cursor = wall;
    }
    None
}

/// The instant of a wall time: its one instant, the first of two (fall
/// back), or the end of the gap that skips it (spring forward).
fn resolve(tz: Tz, wall: NaiveDateTime) -> Option<Timestamp> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.to_utc()),
        LocalResult::Ambiguous(a, b) => Some(a.to_utc().min(b.to_utc())),
        LocalResult::None => gap_end(tz, wall),
    }
}

/// The first instant after the gap holding `wall`: the wall time just
/// before the gap gives the offset in force; reading `wall` with it gives
/// an instant past the change; the change lies between, found to the second.
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<Timestamp> {
    let step = chrono::Duration::minutes(30);
    let mut before = wall;
    let last_before = (0..200).find_map(|_| {
        before -= step;
        match tz.from_local_datetime(&before) {
            LocalResult::Single(t) => Some(t.to_utc()),
            LocalResult::Ambiguous(a, b) => Some(a.to_utc().max(b.to_utc())),
            LocalResult::None => None,
        }
    })?;
    let offset = |t: Timestamp| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let old = offset(last_before);
    let past = wall.and_utc() - chrono::Duration::seconds(i64::from(old.local_minus_utc()));
    let (mut lo, mut hi) = (last_before.timestamp(), past.timestamp());
    if offset(past) == old {
        return Some(past);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset(chrono::DateTime::from_timestamp(mid, 0)?) == old {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    chrono::DateTime::from_timestamp(hi, 0)
}

/// A schedule as stored: its definition and where it stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Schedule {
    /// Chosen by whoever made it.
    pub id: String,
    /// The definition (its fields appear at the top level in JSON).
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// Paused schedules fire nothing.
    pub paused: bool,
    /// `api` or `config` (made by the config file, which manages it).
    pub source: ScheduleSource,
    /// The next slot to fire; `null` when none is left (past `end_at`).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The latest slot that was fired or skipped.
    pub last_slot: Option<DateTime<Utc>>,
    /// When a job was last enqueued for it (a slot or a trigger).
    pub last_run_at: Option<DateTime<Utc>>,
    /// That job.
    pub last_job_id: Option<JobId>,
    /// Slots before this time came while the schedule was paused: they are
    /// skipped (reason `paused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_before: Option<DateTime<Utc>>,
    /// Bumped by every change, so concurrent changes never overwrite each
    /// other unseen.
    pub version: i64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When its definition or state last changed.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn timing(cron: &str, tz: &str) -> Timing {
        let mut spec = ScheduleSpec::cron(cron, NewJob::new("k", json!({})));
        spec.timezone = tz.into();
        spec.validate().unwrap()
    }

    fn slots(cron: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        timing(cron, tz)
            .upcoming(at(from), n)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn spring_forward_fires_once_after_the_gap_and_fall_back_once() {
        assert_eq!(
            slots("30 2 * * *", "America/New_York", "2025-03-08T12:00:00Z", 2),
            ["2025-03-09T07:00:00+00:00", "2025-03-10T06:30:00+00:00"]
        );
        assert_eq!(
            slots(
                "*/20 2 * * *",
                "America/New_York",
                "2025-03-09T06:00:00Z",
                2
            ),
            ["2025-03-09T07:00:00+00:00", "2025-03-10T06:00:00+00:00"]
        );
        assert_eq!(
            slots("0 * * * *", "America/New_York", "2025-11-02T04:30:00Z", 3),
            [
                "2025-11-02T05:00:00+00:00",
                "2025-11-02T07:00:00+00:00",
                "2025-11-02T08:00:00+00:00"
            ]
        );
        // From inside the second pass of 01:xx, the next is 02:00 EST.
        assert_eq!(
            slots(
                "*/15 1 * * *",
                "America/New_York",
                "2025-11-02T06:10:00Z",
                1
            ),
            ["2025-11-03T06:00:00+00:00"]
        );
    }

    #[test]
    fn a_skipped_day_fires_once_when_it_is_over() {
        assert_eq!(
            slots("0 12 * * *", "Pacific/Apia", "2011-12-28T00:00:00Z", 4),
            [
                "2011-12-28T22:00:00+00:00",
                "2011-12-29T22:00:00+00:00",
                "2011-12-30T10:00:00+00:00",
                "2011-12-30T22:00:00+00:00"
            ]
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let job = NewJob::new("k", json!({}));
        let field = |spec: ScheduleSpec| spec.validate().unwrap_err().field;
        assert_eq!(field(ScheduleSpec::cron("0 0 31 2 *", job.clone())), "cron");
        assert_eq!(field(ScheduleSpec::cron("61 * * * *", job.clone())), "cron");
        // A start beyond what a cron search reaches: it would never fire.
        let mut far = ScheduleSpec::cron("0 0 * * *", job.clone());
        far.start_at = Some(at("9000-06-01T00:00:00Z"));
        assert_eq!(field(far.clone()), "start_at");
        far.start_at = Some(at("2900-06-01T00:00:00Z"));
        far.validate().expect("a start within reach");
        assert_eq!(field(ScheduleSpec::cron("* * * *", job.clone())), "cron");
        assert_eq!(
            field(ScheduleSpec::cron("0 0 1 1 * 2030", job.clone())),
            "cron"
        );
        let mut zone = ScheduleSpec::cron("@hourly", job.clone());
        zone.timezone = "Mars/Olympus".into();
        assert_eq!(field(zone), "timezone");
        assert_eq!(field(ScheduleSpec::every(999, job.clone())), "every_ms");
        let mut both = ScheduleSpec::every(1_000, job.clone());
        both.cron = Some("@daily".into());
        assert_eq!(field(both), "every_ms");
        let mut max = ScheduleSpec::every(1_000, job.clone());
        max.catch_up_max = 0;
        assert_eq!(field(max), "catch_up_max");
        let mut run_at = ScheduleSpec::every(1_000, job.clone());
        run_at.job.run_at = Some(at("2030-01-01T00:00:00Z"));
        assert_eq!(field(run_at), "job.run_at");
        let mut traced = ScheduleSpec::every(1_000, job.clone());
        traced.job.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        assert_eq!(field(traced), "job.traceparent");
        let mut kind = ScheduleSpec::every(1_000, job);
        kind.job.kind = String::new();
        assert_eq!(field(kind), "job.kind");
    }

    #[test]
    fn intervals_count_from_the_epoch_or_the_start() {
        let job = NewJob::new("k", json!({}));
        let every = ScheduleSpec::every(60_000, job.clone()).validate().unwrap();
        assert_eq!(
            every.next(at("2025-01-01T10:00:30.5Z"), true),
            Some(at("2025-01-01T10:01:00Z"))
        );
        assert_eq!(
            every.next(at("2025-01-01T10:01:00Z"), true),
            Some(at("2025-01-01T10:01:00Z"))
        );
        let mut started = ScheduleSpec::every(60_000, job);
        started.start_at = Some(at("2025-01-01T10:00:10Z"));
        started.end_at = Some(at("2025-01-01T10:02:10Z"));
        let started = started.validate().unwrap();
        assert_eq!(
            started.upcoming(at("2020-01-01T00:00:00Z"), 5),
            [
                at("2025-01-01T10:00:10Z"),
                at("2025-01-01T10:01:10Z"),
                at("2025-01-01T10:02:10Z")
            ]
        );
    }
}
