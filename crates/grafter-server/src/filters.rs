//! List filters that the API and the dashboard read the same way.

use grafter_core::ValidationError;
use grafter_store::ArgsMatch;
use serde_json::Value;

/// How many jobs one page of a filtered list looks at when some filter is
/// checked row by row; keeps every page fast however rare the matches.
pub(crate) const SCAN_LIMIT: usize = 10_000;

/// A job or batch id to filter by (a page's cursor is one too): `None` when
/// empty; refused when it is not an integer.
pub(crate) fn id_filter(value: &str) -> Result<Option<i64>, std::num::ParseIntError> {
    Some(value)
        .filter(|v| !v.is_empty())
        .map(str::parse)
        .transpose()
}

/// A queue, kind or tag to filter by: `None` when empty; refused when it holds
/// a control character, which no name can (and PostgreSQL cannot compare).
pub(crate) fn name_filter(field: &str, value: &str) -> Result<Option<String>, ValidationError> {
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(Some(value.to_owned()).filter(|v| !v.is_empty()))
}

/// `user.id=42` → path `["user", "id"]`, value `42`. The value is read as
/// JSON when it is a JSON scalar (`42`, `true`, `null`, `"42"`), else as text.
pub(crate) fn parse_args(input: &str) -> Result<ArgsMatch, String> {
    let (path, value) = input.split_once('=').ok_or_else(|| {
        "search args as path=value, e.g. user.id=42 or to=ada@example.com".to_owned()
    })?;
    let value = match serde_json::from_str::<Value>(value.trim()) {
        Ok(v) if !v.is_object() && !v.is_array() => v,
        _ => Value::String(value.trim().to_owned()),
    };
    let args = ArgsMatch {
        path: path
            .trim()
            .split('.')
            .map(|k| k.trim().to_owned())
            .collect(),
        value,
    };
    args.validate().map_err(|e| e.to_string())?;
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_search_reads_path_and_value() {
        let a = parse_args("user.id=42").unwrap();
        assert_eq!(a.path, ["user", "id"]);
        assert_eq!(a.value, json!(42));
        assert_eq!(
            parse_args("to = ada@example.com").unwrap().value,
            json!("ada@example.com")
        );
        assert_eq!(parse_args("code=\"42\"").unwrap().value, json!("42"));
        assert_eq!(parse_args("ok=true").unwrap().value, json!(true));
        assert_eq!(
            parse_args("x=[1]").unwrap().value,
            json!("[1]"),
            "not a scalar: text"
        );
        assert!(parse_args("no equals sign").is_err());
        assert!(parse_args("a..b=1").is_err(), "empty key");
        assert!(parse_args("a=b\u{0}c").is_err(), "NUL in the value");
        assert!(parse_args("a\u{0}=1").is_err(), "NUL in a key");
    }

    #[test]
    fn name_filters_refuse_control_characters() {
        assert_eq!(
            name_filter("queue", "mail").unwrap().as_deref(),
            Some("mail")
        );
        assert_eq!(name_filter("queue", "").unwrap(), None);
        assert_eq!(name_filter("queue", "a\u{0}").unwrap_err().field, "queue");
    }
}
