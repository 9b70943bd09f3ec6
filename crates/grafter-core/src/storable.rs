//! Text every backend can store. PostgreSQL keeps neither the NUL character
//! in `text` nor `\u0000` in `jsonb`, where SQLite keeps both; so that the
//! same input has the same outcome on every backend, what a client sends is
//! checked here: input that would be stored as given (a job's args) is
//! refused with NUL in it, and what reports a finished attempt (a result, an
//! error, a progress message) has each NUL replaced by U+FFFD, so the outcome
//! of work already done is never lost to a character.

use serde_json::Value;

use crate::ValidationError;

/// What a NUL becomes in reports of finished work.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// Checks no string or key inside `value` holds a NUL; the error names `field`.
pub fn validate_json(field: &str, value: &Value) -> Result<(), ValidationError> {
    if holds_nul(value) {
        return Err(ValidationError::new(
            field,
            "must not contain the NUL character (\\u0000)",
        ));
    }
    Ok(())
}

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
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
}
