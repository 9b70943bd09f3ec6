//! How big a job's JSON is, and how a job list shows the large parts of a job.
//!
//! A job's args and result can each be as large as a request body, and its
//! errors grow with every attempt. A list page of a thousand such jobs cost
//! the server gigabytes, so a list never carries them whole: stores read at
//! most [`PREVIEW_READ_CHARS`] characters of each, and [`Preview`] turns what
//! they read into the fields of a listed job and says which it cut
//! ([`grafter_core::Job::cut`]). Both stores call it, so both cut alike.
//!
//! The size a store counts (what a fetch's byte budget adds up, and what
//! decides whether a list cuts args) is [`json_len`]: the length of a value's
//! compact JSON text, which is what SQLite keeps and what PostgreSQL records
//! beside its jsonb.

use std::io;

use grafter_core::{AttemptError, CutField, Job};
use serde_json::Value;

use crate::transitions::truncate;
use crate::StoreError;

/// Longest args or result a list shows whole, and how much of a longer one it
/// shows, as compact JSON text; also the longest error message it shows.
pub const PREVIEW_BYTES: usize = 1024;

/// How many characters of a value (or of a message) a store reads for a list.
/// A store that cannot tell a value's compact length without reading it all
/// (PostgreSQL prints jsonb with a space after each `:` and `,`, at most half
/// again as long) reads this many, and [`Preview`] counts the value as whole
/// when it got fewer: if it got them all, the compact text is still longer
/// than [`PREVIEW_BYTES`].
pub const PREVIEW_READ_CHARS: usize = 2 * PREVIEW_BYTES + 1;

/// The length in bytes of `value`'s compact JSON text, counted without
/// writing it out.
pub fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` fails only when the writer does, and this one never does.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// What a store read of a JSON value (args or a result) for a list.
#[derive(Clone, Copy, Debug)]
pub struct Read<'a> {
    /// All of its JSON text, or the start of it.
    pub text: &'a str,
    /// Whether `text` is all of it.
    pub whole: bool,
}

/// The large fields of a listed job, and which of them were cut.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    /// The args, or the start of their compact JSON text as a string.
    pub args: Value,
    /// The result, or the start of its compact JSON text as a string.
    pub result: Option<Value>,
    /// The last attempt's error, its message cut to [`PREVIEW_BYTES`].
    pub errors: Vec<AttemptError>,
    /// What was cut.
    pub cut: Vec<CutField>,
}

impl Preview {
    /// The fields of a listed job from what its store read: its args and
    /// result, how many errors it has and the last one (its message at most
    /// [`PREVIEW_READ_CHARS`] characters).
    pub fn new(
        args: Read<'_>,
        result: Option<Read<'_>>,
        error_count: usize,
        last_error: Option<AttemptError>,
    ) -> Result<Preview, StoreError> {
        let mut cut = Vec::new();
        let (args, args_cut) = json(args)?;
        if args_cut {
            cut.push(CutField::Args);
        }
        let result = match result.map(json).transpose()? {
            Some((result, result_cut)) => {
                if result_cut {
                    cut.push(CutField::Result);
                }
                Some(result)
            }
            None => None,
        };
        let (errors, errors_cut) = last_error_alone(last_error, error_count);
        if errors_cut {
            cut.push(CutField::Errors);
        }
        Ok(Preview {
            args,
            result,
            errors,
            cut,
        })
    }
}

/// The last of `count` errors alone, its message cut to [`PREVIEW_BYTES`],
/// and whether anything was left out.
fn last_error_alone(last: Option<AttemptError>, count: usize) -> (Vec<AttemptError>, bool) {
    let mut errors: Vec<AttemptError> = last.into_iter().collect();
    let mut cut = count > errors.len();
    for error in &mut errors {
        if error.error.len() > PREVIEW_BYTES {
            error.error = truncate(&error.error, PREVIEW_BYTES).to_owned();
            cut = true;
        }
    }
    (errors, cut)
}

/// Shortens a whole job's errors as a list shows them (the last attempt's
/// error alone, its message cut), naming `errors` in its `cut` if anything
/// was left out: for answers that carry many jobs otherwise whole (a fetch's),
/// whose size must not grow with each job's history of failures.
pub fn shorten_errors(job: &mut Job) {
    let count = job.errors.len();
    let (errors, cut) = last_error_alone(job.errors.pop(), count);
    job.errors = errors;
    if cut && !job.cut.contains(&CutField::Errors) {
        job.cut.push(CutField::Errors);
    }
}

/// A JSON value as a list shows it, and whether it was cut. Whole, and at
/// most [`PREVIEW_BYTES`] as compact text: itself. Otherwise the start of its
/// compact text, as a string; a value read in part is shown as read, less the
/// spaces PostgreSQL puts between tokens (PostgreSQL also orders an object's
/// keys shortest first, where SQLite keeps them sorted).
fn json(read: Read<'_>) -> Result<(Value, bool), StoreError> {
    let cut = |text: &str| Value::String(truncate(text, PREVIEW_BYTES).to_owned());
    if !read.whole {
        return Ok((cut(&without_spaces(read.text)), true));
    }
    let value: Value = serde_json::from_str(read.text)
        .map_err(|e| StoreError::Backend(format!("reading stored JSON: {e}")))?;
    if json_len(&value) <= PREVIEW_BYTES {
        return Ok((value, false));
    }
    Ok((cut(&value.to_string()), true))
}

/// JSON text without white space between tokens (inside strings it stays).
fn without_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii_whitespace() {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn whole(text: &str) -> Read<'_> {
        Read { text, whole: true }
    }

    #[test]
    fn json_len_is_the_compact_text_length() {
        for value in [
            json!({}),
            json!({"b": [1, 2.5, null], "a": "é\n"}),
            json!("x"),
        ] {
            assert_eq!(json_len(&value), value.to_string().len());
        }
    }

    #[test]
    fn small_values_stay_whole_and_large_ones_are_cut_alike_from_any_text() {
        let small = json!({"k": "x".repeat(PREVIEW_BYTES - 8)});
        assert_eq!(json_len(&small), PREVIEW_BYTES);
        // PostgreSQL's text of it is longer than the limit; the value is not.
        let spaced = serde_json::to_string_pretty(&small).unwrap();
        assert!(spaced.len() > PREVIEW_BYTES);
        let shown = Preview::new(whole(&spaced), None, 0, None).unwrap();
        assert_eq!((shown.args, shown.cut), (small, vec![]));

        let large = json!({"k": "x".repeat(PREVIEW_BYTES - 7)});
        let compact = large.to_string();
        let from_compact = Preview::new(whole(&compact), None, 0, None).unwrap();
        let from_spaced = Preview::new(
            whole(&serde_json::to_string_pretty(&large).unwrap()),
            None,
            0,
            None,
        )
        .unwrap();
        let from_start = Preview::new(
            Read {
                text: "{\"k\": \"xxxx",
                whole: false,
            },
            None,
            0,
            None,
        )
        .unwrap();
        assert_eq!(from_compact.cut, [CutField::Args]);
        assert_eq!(from_compact, from_spaced);
        assert_eq!(from_compact.args, json!(&compact[..PREVIEW_BYTES]));
        assert_eq!(from_start.args, json!("{\"k\":\"xxxx"));
    }

    #[test]
    fn only_the_last_error_is_shown_with_its_message_cut_on_a_character() {
        let error = |message: String| AttemptError {
            attempt: 3,
            at: chrono::DateTime::UNIX_EPOCH,
            error: message,
            worker_id: None,
        };
        let one = Preview::new(whole("{}"), Some(whole("1")), 1, Some(error("x".into()))).unwrap();
        assert_eq!(one.errors, [error("x".into())]);
        assert_eq!(one.result, Some(json!(1)));
        assert!(one.cut.is_empty());

        let long = "é".repeat(PREVIEW_BYTES);
        let last = Preview::new(whole("{}"), None, 1, Some(error(long.clone()))).unwrap();
        assert_eq!(last.cut, [CutField::Errors]);
        assert_eq!(last.errors[0].error, "é".repeat(PREVIEW_BYTES / 2));
        let of_three = Preview::new(whole("{}"), None, 3, Some(error("x".into()))).unwrap();
        assert_eq!(of_three.cut, [CutField::Errors]);
        assert_eq!(of_three.errors.len(), 1);
    }

    #[test]
    fn spaces_go_only_between_tokens() {
        assert_eq!(
            without_spaces(r#"{"a b": [1, "c\" d"], "e": {}}"#),
            r#"{"a b":[1,"c\" d"],"e":{}}"#
        );
    }
}
