//! Text every backend can store. PostgreSQL keeps neither the NUL character
//! in `text` nor `\u0000` in `jsonb`, where SQLite keeps both; so that the
//! same input has the same outcome on every backend, what a client sends is
//! checked here: input that would be stored as given (a job's args) is
//! refused with NUL in it, and what reports a finished attempt (a result, an
//! error, a progress message) has each NUL replaced by U+FFFD, so the outcome
//! of work already done is never lost to a character.
//!
//! JSON is also read back with serde_json, whose parser stops at a nesting
//! limit; what is nested deeper than [`MAX_JSON_DEPTH`] would be stored and
//! then fail every read of its row, so it is refused before it is stored.

use serde_json::Value;

use crate::ValidationError;

/// What a NUL becomes in reports of finished work.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// Most arrays and objects nested one inside another in a caller's JSON
/// value (a job's args, a result): `[]` and `{"a": 1}` are 1, `[[1]]` is 2.
///
/// Whatever is stored must be read back, by every store and every client:
/// serde_json (the stores, the Rust library, the server) refuses a document
/// nested more than 127 deep, and a value travels down to three levels deep
/// in the documents that carry it (a fetch's answer `{"jobs": [{"args":
/// …}]}`; a schedule's stored spec and a batch callback stored as a whole
/// job, fewer). The Ruby gem raises its parser's limit to match.
pub const MAX_JSON_DEPTH: usize = 124;

/// Checks no string or key inside `value` holds a NUL and it nests at most
/// [`MAX_JSON_DEPTH`] deep; the error names `field`.
pub fn validate_json(field: &str, value: &Value) -> Result<(), ValidationError> {
    match flaw(value, MAX_JSON_DEPTH, true) {
        None => Ok(()),
        Some(flaw) => Err(flaw.error(field)),
    }
}

/// Checks `value` nests at most [`MAX_JSON_DEPTH`] deep, whatever its text
/// (for reports of finished work, whose NULs are replaced instead); the
/// error names `field`.
pub fn validate_json_depth(field: &str, value: &Value) -> Result<(), ValidationError> {
    match flaw(value, MAX_JSON_DEPTH, false) {
        None => Ok(()),
        Some(flaw) => Err(flaw.error(field)),
    }
}

/// Why a JSON value cannot be stored as given.
enum Flaw {
    Nul,
    TooDeep,
}

impl Flaw {
    fn error(self, field: &str) -> ValidationError {
        match self {
            Flaw::Nul => {
                ValidationError::new(field, "must not contain the NUL character (\\u0000)")
            }
            Flaw::TooDeep => ValidationError::new(
                field,
                format!(
                    "must not nest arrays and objects more than {MAX_JSON_DEPTH} deep \
                     (it could not be read back)"
                ),
            ),
        }
    }
}

/// The first flaw found in `value`, walking at most `levels` arrays and
/// objects deep (so the walk itself is bounded); NUL only if `nul`.
fn flaw(value: &Value, levels: usize, nul: bool) -> Option<Flaw> {
    let inside = || levels.checked_sub(1).ok_or(Flaw::TooDeep);
    match value {
        Value::String(s) => (nul && s.contains('\0')).then_some(Flaw::Nul),
        Value::Array(items) => match inside() {
            Err(too_deep) => Some(too_deep),
            Ok(levels) => items.iter().find_map(|v| flaw(v, levels, nul)),
        },
        Value::Object(map) => match inside() {
            Err(too_deep) => Some(too_deep),
            Ok(levels) => map.iter().find_map(|(k, v)| {
                if nul && k.contains('\0') {
                    Some(Flaw::Nul)
                } else {
                    flaw(v, levels, nul)
                }
            }),
        },
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Whether a string or key inside `value` holds a NUL, however deep.
fn holds_nul(value: &Value) -> bool {
    flaw(value, usize::MAX, true).is_some()
}

/// `text` with each NUL replaced by [`NUL_REPLACEMENT`].
pub fn text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', &NUL_REPLACEMENT.to_string())
    } else {
        text
    }
}

/// `value` with each NUL in its strings and keys replaced by
/// [`NUL_REPLACEMENT`]. A key that then equals another key of the same
/// object replaces it, as a repeated key in JSON text would.
pub fn json(value: Value) -> Value {
    if !holds_nul(&value) {
        return value;
    }
    match value {
        Value::String(s) => Value::String(text(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (text(k), json(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_found_anywhere_and_replaced_everywhere() {
        let clean = json!({"a": [1, "b", {"c": null}]});
        assert!(validate_json("args", &clean).is_ok());
        assert_eq!(json(clean.clone()), clean);
        for dirty in [
            json!("a\u{0}b"),
            json!({"k\u{0}": 1}),
            json!([{"deep": ["x\u{0}"]}]),
        ] {
            let error = validate_json("args", &dirty).unwrap_err();
            assert_eq!(error.field, "args");
            let cleaned = json(dirty);
            assert!(validate_json("result", &cleaned).is_ok(), "{cleaned}");
        }
        assert_eq!(json(json!({"r": "a\u{0}b"})), json!({"r": "a\u{FFFD}b"}));
        assert_eq!(text("x\u{0}".into()), "x\u{FFFD}");
    }

    /// `levels` arrays, one inside the other, around `inner`.
    fn nested(levels: usize, inner: Value) -> Value {
        (0..levels).fold(inner, |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn depth_is_limited_to_what_reads_back() {
        let deepest = nested(MAX_JSON_DEPTH, json!(1));
        let too_deep = nested(MAX_JSON_DEPTH + 1, json!(1));
        assert!(validate_json("args", &deepest).is_ok());
        assert!(validate_json_depth("result", &deepest).is_ok());
        assert!(validate_json("args", &nested(MAX_JSON_DEPTH - 2, json!({"a": []}))).is_ok());
        for refused in [
            too_deep.clone(),
            nested(MAX_JSON_DEPTH, json!([])),
            nested(MAX_JSON_DEPTH - 1, json!({"a": {}})),
            nested(10_000, json!(1)),
        ] {
            assert_eq!(validate_json("args", &refused).unwrap_err().field, "args");
            let error = validate_json_depth("result", &refused).unwrap_err();
            assert_eq!(error.field, "result");
            assert!(
                error.message.contains(&MAX_JSON_DEPTH.to_string()),
                "{}",
                error.message
            );
        }
        // A result may hold NUL (it is replaced), not depth.
        assert!(validate_json_depth("result", &json!(["a\u{0}"])).is_ok());
        assert_eq!(
            validate_json("args", &nested(3, json!("a\u{0}")))
                .unwrap_err()
                .message,
            "must not contain the NUL character (\\u0000)"
        );

        // What is accepted reads back with serde_json inside the deepest
        // document that carries it (a fetch's answer); one more level does not.
        let read = |v: &Value| serde_json::from_str::<Value>(&v.to_string()).is_ok();
        assert!(read(&json!({ "jobs": [{ "args": deepest }] })));
        assert!(!read(&json!({ "jobs": [{ "args": too_deep }] })));
    }
}
