//! Flow control: how many of a queue's jobs may run at once and how many may
//! start per period, for the whole queue or for each partition of it.

use serde::{Deserialize, Serialize};

use crate::job::{ValidationError, MAX_NAME_LEN};

/// Most jobs a concurrency limit may allow at once.
pub const MAX_CONCURRENCY: i64 = 100_000;
/// Most starts a rate limit may allow per period.
pub const MAX_RATE_COUNT: i64 = 100_000;
/// Longest rate period: one day, in ms.
pub const MAX_RATE_PERIOD_MS: i64 = 86_400_000;
/// Most keys in an `args.` partition path.
pub const MAX_PATH_KEYS: usize = 16;

/// A queue's limits (`"limits"` of `PUT /v1/queues/{name}`). With
/// `partition_by`, each partition has its own `concurrency` and `rate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// At most this many jobs running at once (1 to 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub concurrency: Option<i64>,
    /// At most `count` jobs started in any `period_ms` (a sliding window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
    /// `"partition"` (the job's own `partition`) or `"args.<path>"` (the
    /// value at that path of the job's args, keys separated by dots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r#"^(?:partition|args\.[^."\\\u0000-\u001F\u007F-\u009F]+(?:\.[^."\\\u0000-\u001F\u007F-\u009F]+){0,15})$"#
        )
    )]
    pub partition_by: Option<String>,
}

/// At most `count` starts in any window of `period_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Starts allowed per window (1 to 100,000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub count: i64,
    /// The window, in ms (1 to 86,400,000: one day).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400000))]
    pub period_ms: i64,
}

/// What a job's partition is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionBy {
    /// The whole queue is one partition.
    Queue,
    /// The job's `partition` field.
    Field,
    /// The value at this path (object keys from the top) of the job's args.
    Args(Vec<String>),
}

impl QueueLimits {
    /// Checks the limits; the error names the field, under `limits.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.concurrency.is_none() && self.rate.is_none() {
            return Err(ValidationError::new(
                "limits",
                "give concurrency, rate or both (null removes the limits)",
            ));
        }
        if let Some(n) = self.concurrency {
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                return Err(ValidationError::new(
                    "limits.concurrency",
                    format!("must be between 1 and {MAX_CONCURRENCY}, got {n}"),
                ));
            }
        }
        if let Some(rate) = self.rate {
            if !(1..=MAX_RATE_COUNT).contains(&rate.count) {
                return Err(ValidationError::new(
                    "limits.rate.count",
                    format!("must be between 1 and {MAX_RATE_COUNT}, got {}", rate.count),
                ));
            }
            if !(1..=MAX_RATE_PERIOD_MS).contains(&rate.period_ms) {
                return Err(ValidationError::new(
                    "limits.rate.period_ms",
                    format!(
                        "must be between 1 and {MAX_RATE_PERIOD_MS} (one day), got {}",
                        rate.period_ms
                    ),
                ));
            }
        }
        parse_partition_by(self.partition_by.as_deref())?;
        Ok(())
    }

    /// What partitions the queue; limits that passed [`QueueLimits::validate`]
    /// always have one (a stored value that does not parse counts as the
    /// whole queue).
    pub fn partition_by(&self) -> PartitionBy {
        parse_partition_by(self.partition_by.as_deref()).unwrap_or(PartitionBy::Queue)
    }

    /// How many more jobs of a partition may start now, with `running` of
    /// its jobs running and `started` started within the rate window; `None`
    /// when neither limit is set.
    pub fn room(&self, running: u64, started: u64) -> Option<u64> {
        let by_concurrency = self
            .concurrency
            .map(|n| (n.max(0) as u64).saturating_sub(running));
        let by_rate = self
            .rate
            .map(|r| (r.count.max(0) as u64).saturating_sub(started));
        match (by_concurrency, by_rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn parse_partition_by(text: Option<&str>) -> Result<PartitionBy, ValidationError> {
    let Some(text) = text else {
        return Ok(PartitionBy::Queue);
    };
    if text == "partition" {
        return Ok(PartitionBy::Field);
    }
    let invalid = |m: &str| {
        Err(ValidationError::new(
            "limits.partition_by",
            format!("{m}, e.g. \"partition\" or \"args.customer_id\""),
        ))
    };
    let Some(path) = text.strip_prefix("args.") else {
        return invalid("must be \"partition\" or \"args.\" and a path");
    };
    if text.len() > MAX_NAME_LEN {
        return invalid(&format!("must be at most {MAX_NAME_LEN} bytes"));
    }
    let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
    if keys.len() > MAX_PATH_KEYS {
        return invalid(&format!("a path has at most {MAX_PATH_KEYS} keys"));
    }
    if keys.iter().any(|k| {
        k.is_empty() || k.contains('"') || k.contains('\\') || k.chars().any(char::is_control)
    }) {
        return invalid(
            "path keys must not be empty or hold a quote, backslash or control character",
        );
    }
    Ok(PartitionBy::Args(keys))
}

/// The characters of a partition value that count: a longer value at an
/// `args.` path is cut to them, so a partition is never longer than a
/// `partition` field may be (and fits any index of the stores').
pub const MAX_PARTITION_CHARS: usize = 255;

/// Why an available job is not being started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HeldReason {
    /// Its queue is paused.
    Paused,
    /// Its queue's (or partition's) concurrency is all in use.
    Concurrency,
    /// Its queue's (or partition's) rate window is full.
    Rate,
}

impl HeldReason {
    /// The name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldReason::Paused => "paused",
            HeldReason::Concurrency => "concurrency",
            HeldReason::Rate => "rate",
        }
    }
}

/// What holds an available job back (`"held"` in `GET /v1/jobs/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Held {
    /// The kind of hold.
    pub reason: HeldReason,
    /// For people: which limit, how much of it is used, and until when.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn limits(value: Value) -> QueueLimits {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn bad_limits_name_their_field() {
        for (value, field) in [
            (json!({}), "limits"),
            (json!({"partition_by": "partition"}), "limits"),
            (json!({"concurrency": 0}), "limits.concurrency"),
            (json!({"concurrency": -3}), "limits.concurrency"),
            (json!({"concurrency": 100_001}), "limits.concurrency"),
            (
                json!({"rate": {"count": 0, "period_ms": 10}}),
                "limits.rate.count",
            ),
            (
                json!({"rate": {"count": 1, "period_ms": 0}}),
                "limits.rate.period_ms",
            ),
            (
                json!({"rate": {"count": 1, "period_ms": 86_400_001}}),
                "limits.rate.period_ms",
            ),
            (
                json!({"concurrency": 1, "partition_by": "customer"}),
                "limits.partition_by",
            ),
            (
                json!({"concurrency": 1, "partition_by": "args."}),
                "limits.partition_by",
            ),
            (
                json!({"concurrency": 1, "partition_by": "args.a..b"}),
                "limits.partition_by",
            ),
            (
                json!({"concurrency": 1, "partition_by": "args.a\"b"}),
                "limits.partition_by",
            ),
        ] {
            let error = limits(value.clone()).validate().unwrap_err();
            assert_eq!(error.field, field, "{value}");
        }
        let deep = format!("args.{}", vec!["k"; MAX_PATH_KEYS + 1].join("."));
        let long = format!("args.{}", "k".repeat(MAX_NAME_LEN));
        for path in [deep, long] {
            let error = limits(json!({"concurrency": 1, "partition_by": path}))
                .validate()
                .unwrap_err();
            assert_eq!(error.field, "limits.partition_by");
        }
    }

    #[test]
    fn partitions_come_from_the_field_or_a_path() {
        let ok = limits(json!({"concurrency": 2, "partition_by": "args.customer.id"}));
        ok.validate().unwrap();
        assert_eq!(
            ok.partition_by(),
            PartitionBy::Args(vec!["customer".into(), "id".into()])
        );
        let field =
            limits(json!({"rate": {"count": 1, "period_ms": 1000}, "partition_by": "partition"}));
        field.validate().unwrap();
        assert_eq!(field.partition_by(), PartitionBy::Field);
    }

    #[test]
    fn room_is_the_tighter_of_the_two_limits() {
        let both = limits(json!({"concurrency": 5, "rate": {"count": 3, "period_ms": 1000}}));
        assert_eq!(both.room(0, 0), Some(3));
        assert_eq!(both.room(4, 0), Some(1));
        assert_eq!(both.room(7, 1), Some(0));
        assert_eq!(both.room(0, 5), Some(0));
        let none = QueueLimits {
            concurrency: None,
            rate: None,
            partition_by: None,
        };
        assert_eq!(none.room(3, 3), None);
    }
}
