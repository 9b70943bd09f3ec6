//! The outcome contract: what the application's answer to a push means for
//! the job. The table in docs/push.md is this module, in prose.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::Value;

use grafter_engine::push::RETRY_HEADER;

/// Most bytes of a 2xx body kept as the job's result; a larger body is not stored.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Most bytes of a failed response's body kept as the attempt's error.
pub const MAX_ERROR_BODY_BYTES: usize = 4 * 1024;
/// Longest `Retry-After` honoured; a later one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What one push came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// 2xx (but 202): the job is done; a JSON body is its result.
    Completed(Option<Value>),
    /// 202: the application took the job and finishes it later through the
    /// API, with the lease it was sent.
    Accepted,
    /// 429 or 503 with `Retry-After`: the application did not run the job;
    /// run it again at this time, not counting the attempt.
    Later {
        /// When to push again.
        at: DateTime<Utc>,
        /// The answer, for the log.
        answer: String,
    },
    /// `Grafter-Retry: false` on a failed answer: dead now.
    Dead(String),
    /// Any other failure: a failed attempt, retried by the job's backoff or at
    /// the answer's `Retry-After`.
    Failed {
        /// The attempt's error.
        error: String,
        /// From a `Retry-After` header, instead of backoff.
        retry_at: Option<DateTime<Utc>>,
    },
}

impl Outcome {
    /// Whether this says the target is failing or overloaded (for backing off
    /// the whole queue), as opposed to answering as designed.
    pub fn target_failed(&self) -> bool {
        matches!(self, Outcome::Later { .. } | Outcome::Failed { .. })
    }

    /// The `error.type` of the push's span: none when the application took
    /// the job (done, or to finish later), else what the answer made of it.
    pub fn error_type(&self) -> Option<&'static str> {
        match self {
            Outcome::Completed(_) | Outcome::Accepted => None,
            Outcome::Later { .. } => Some("later"),
            Outcome::Dead(_) => Some("dead"),
            Outcome::Failed { .. } => Some("failed"),
        }
    }

    /// Reads an answer, taking at most what the contract keeps of its body.
    pub async fn from_response(mut response: reqwest::Response, now: DateTime<Utc>) -> Outcome {
        let status = response.status();
        if status == StatusCode::ACCEPTED {
            return Outcome::Accepted;
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let no_retry = header(RETRY_HEADER).is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
        let retry_after =
            header(reqwest::header::RETRY_AFTER.as_str()).and_then(|v| retry_after(&v, now));
        if status.is_success() {
            let (body, end) = read_prefix(&mut response, MAX_RESULT_BYTES).await;
            return Outcome::Completed(result(status, &body, end));
        }
        let (body, _) = read_prefix(&mut response, MAX_ERROR_BODY_BYTES).await;
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        let error = if text.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {text}")
        };
        match retry_after {
            _ if no_retry => Outcome::Dead(error),
            Some(at)
                if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) =>
            {
                Outcome::Later { at, answer: error }
            }
            retry_at => Outcome::Failed { error, retry_at },
        }
    }
}

/// How reading a body ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BodyEnd {
    /// All of it arrived.
    Complete,
    /// It was longer than the limit.
    TooLarge,
    /// It broke off or timed out.
    BrokeOff,
}

/// A success's body as the job's result: JSON within the size cap, or nothing.
fn result(status: StatusCode, body: &[u8], end: BodyEnd) -> Option<Value> {
    match end {
        BodyEnd::Complete => {}
        BodyEnd::TooLarge => {
            tracing::warn!(%status, "push answer is larger than {MAX_RESULT_BYTES} bytes: not kept as the result");
            return None;
        }
        // The status said success; only the result is lost.
        BodyEnd::BrokeOff => return None,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    // A body that is not JSON ("OK") is a plain success without a result.
    serde_json::from_slice(body).ok()
}

/// Up to `limit` bytes of the body, and how reading it ended.
async fn read_prefix(response: &mut reqwest::Response, limit: usize) -> (Vec<u8>, BodyEnd) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, BodyEnd::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body, BodyEnd::Complete),
            Err(error) => {
                tracing::debug!(%error, "push answer's body broke off");
                return (body, BodyEnd::BrokeOff);
            }
        }
    }
}

/// `Retry-After` as a time: seconds from now, or an HTTP date in any of the
/// three forms RFC 9110 has a recipient accept; never in the past, never
/// further than [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    let latest = now + chrono::Duration::from_std(MAX_RETRY_AFTER).expect("a day fits");
    let is_seconds = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let at = if is_seconds {
        // Digits too many for any integer still say "later than the cap".
        value
            .parse::<i64>()
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(latest)
    } else {
        DateTime::<Utc>::from(httpdate::parse_http_date(value).ok()?)
    };
    Some(at.clamp(now, latest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date_within_bounds() {
        let now = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            retry_after("120", now),
            Some(now + chrono::Duration::seconds(120))
        );
        assert_eq!(retry_after(" 0 ", now), Some(now));
        assert_eq!(
            retry_after("Tue, 01 Jan 2030 00:05:00 GMT", now),
            Some(now + chrono::Duration::minutes(5))
        );
        assert_eq!(
            retry_after("Mon, 01 Jan 2029 00:00:00 GMT", now),
            Some(now),
            "past dates mean now"
        );
        // RFC 850's and asctime's forms, which a recipient must accept too.
        assert_eq!(
            retry_after("Tuesday, 01-Jan-30 00:05:00 GMT", now),
            Some(now + chrono::Duration::minutes(5))
        );
        assert_eq!(
            retry_after("Tue Jan  1 00:05:00 2030", now),
            Some(now + chrono::Duration::minutes(5))
        );
        assert_eq!(
            retry_after("18446744073709551615", now),
            Some(now + chrono::Duration::days(1))
        );
        assert_eq!(
            retry_after("86401", now),
            Some(now + chrono::Duration::days(1))
        );
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(now + chrono::Duration::days(1)),
            "more seconds than 64 bits hold is capped, not refused"
        );
        assert_eq!(
            retry_after("+5", now),
            None,
            "delay-seconds are digits only"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn a_result_is_json_within_the_cap() {
        let json = br#"{"sent": true}"#;
        assert_eq!(
            result(StatusCode::OK, json, BodyEnd::Complete),
            Some(serde_json::json!({"sent": true}))
        );
        assert_eq!(result(StatusCode::OK, json, BodyEnd::TooLarge), None);
        assert_eq!(result(StatusCode::OK, json, BodyEnd::BrokeOff), None);
        assert_eq!(result(StatusCode::OK, b"OK", BodyEnd::Complete), None);
        assert_eq!(result(StatusCode::NO_CONTENT, b"", BodyEnd::Complete), None);
        assert_eq!(result(StatusCode::OK, b" \n", BodyEnd::Complete), None);
    }
}
