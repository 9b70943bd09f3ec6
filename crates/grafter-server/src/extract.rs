//! Request extractors that answer with our JSON errors instead of axum's text,
//! and the checks of a declared body size and encoding that run before any
//! of them.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use grafter_core::JobId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body. Any content type is accepted (curl's default form type
/// included); syntax errors answer 400 `invalid_json`, a body that cannot be
/// read (a malformed chunked encoding) 400 `invalid_body`, one that does not
/// arrive in time 408 (`connections`), missing or mistyped fields 422 naming
/// the field, bodies over the limit 413, and encoded bodies (gzip…) 415
/// before they are read (`refuse_encoded_bodies`). Every body is an object: serde
/// would also read a struct from an array of its fields in order, which the
/// API does not offer, so any other JSON value answers 422.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        let body = parse_json(&bytes)?;
        if !starts_an_object(&bytes) {
            return Err(ApiError::invalid_field("body", "must be a JSON object"));
        }
        Ok(ApiJson(body))
    }
}

/// Answers 413 at once when a request declares a `Content-Length` over
/// `body_limit_bytes`, before its body is read: the limit on reading would
/// otherwise wait for bytes a client may never send. JSON under `/v1`, the
/// error page elsewhere (`api::error_at`).
pub async fn refuse_declared_oversize_bodies(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = u64::try_from(state.config().body_limit_bytes).unwrap_or(u64::MAX);
    if declared.is_some_and(|length| length > limit) {
        return crate::api::error_at(
            request.uri().path(),
            ApiError::payload_too_large(),
            "The request's body is larger than this server takes (setting body_limit_bytes).",
        );
    }
    next.run(request).await
}

/// Answers 415 at once when a request's body has a `Content-Encoding` other
/// than `identity`: the server does not decompress, and would otherwise read
/// a gzip body as (bad) JSON or a form, or take a body that says it is
/// compressed as if it were not. A request without a body is let through:
/// there is nothing encoded to read. JSON under `/v1`, the error page
/// elsewhere (`api::error_at`).
pub async fn refuse_encoded_bodies(request: Request, next: Next) -> Response {
    use hyper::body::Body as _;
    if !request.body().is_end_stream() {
        if let Some(encoding) = unsupported_encoding(request.headers()) {
            let mut response = crate::api::error_at(
                request.uri().path(),
                ApiError::unsupported_encoding(&encoding),
                &format!(
                    "The request's body is encoded ('{encoding}'): this server reads only \
                     bodies sent as they are."
                ),
            );
            response
                .headers_mut()
                .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            return response;
        }
    }
    next.run(request).await
}

/// The first content coding of `headers` that is not `identity`, as sent
/// (cut to 64 characters), if any.
fn unsupported_encoding(headers: &axum::http::HeaderMap) -> Option<String> {
    for value in headers.get_all(CONTENT_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Some("(not text)".to_owned());
        };
        let coding = text
            .split(',')
            .map(str::trim)
            .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
        if let Some(coding) = coding {
            return Some(coding.chars().take(64).collect());
        }
    }
    None
}

/// Whether JSON text that parsed is an object: its first non-blank byte.
fn starts_an_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// What a body that could not be read answers: 413 over the limit,
/// otherwise 400 `invalid_body`: the bytes never all arrived, so nothing is
/// known of their JSON. (A body late past its deadline is answered 408 by
/// the connection, whatever this says: `connections`.)
fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large()
    } else {
        ApiError::invalid_body(format!("could not read the request body: {rejection}"))
    }
}

/// Parses JSON, naming the path of a bad field (`jobs[3].kind`). A syntax
/// error anywhere in the body, trailing garbage included, is a 400 even when
/// the start of the body is also missing a field. A good body is parsed once;
/// only a bad one is read again to tell the two kinds of error apart.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let outcome = serde_path_to_error::deserialize(&mut deserializer);
    let end = deserializer.end();
    match (outcome, end) {
        (Ok(value), Ok(())) => Ok(value),
        (outcome, end) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(syntax_error)?;
            match outcome {
                Err(e) => {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let field = field_name(&path, &inner.to_string(), "body");
                    // Valid JSON whose string could not be read as text: serde
                    // words a lone surrogate by its parser's state ("unexpected
                    // end of hex escape"); name the escape instead.
                    let lone = (inner.classify() == serde_json::error::Category::Syntax)
                        .then(|| lone_surrogate(read_before(bytes, &inner)))
                        .flatten();
                    match lone {
                        Some(escape) => Err(ApiError::invalid_field(
                            field,
                            format!(
                                "invalid \\u escape: {escape} is a lone UTF-16 surrogate, \
                                 which is not text (a character beyond U+FFFF is written \
                                 as a pair of them, such as \\ud83d\\ude00)"
                            ),
                        )),
                        None => Err(ApiError::invalid_field(field, inner)),
                    }
                }
                // The value parsed and the body is valid JSON: what follows it was not.
                Ok(_) => {
                    Err(syntax_error(end.err().unwrap_or_else(|| {
                        serde::de::Error::custom("trailing data")
                    })))
                }
            }
        }
    }
}

/// What the parser had read of `json` when it failed with `error`: the text
/// up to its line and column (counted in bytes).
fn read_before<'a>(json: &'a [u8], error: &serde_json::Error) -> &'a [u8] {
    // Line n starts after the (n-1)th newline.
    let line_start = match error.line().checked_sub(2) {
        None => 0,
        Some(newlines_before) => json
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(newlines_before)
            .map_or(json.len(), |(at, _)| at + 1),
    };
    &json[..line_start.saturating_add(error.column()).min(json.len())]
}

/// The first `\u` escape in JSON text (that parsed) of a UTF-16 surrogate
/// without its other half, as written (`\ud800`). Every backslash of valid
/// JSON text is in a string and starts an escape.
fn lone_surrogate(json: &[u8]) -> Option<String> {
    let escape = |at: usize| String::from_utf8_lossy(&json[at..at + 6]).into_owned();
    // A leading surrogate's escape, waiting for its trailing one right after it.
    let mut leading: Option<usize> = None;
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            if let Some(at) = leading {
                return Some(escape(at));
            }
            i += 1;
            continue;
        }
        let unit = (json.get(i + 1) == Some(&b'u'))
            .then(|| json.get(i + 2..i + 6))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok());
        match (unit, leading.take()) {
            (Some(0xDC00..=0xDFFF), Some(_)) => {}
            (Some(0xDC00..=0xDFFF), None) => return Some(escape(i)),
            (_, Some(at)) => return Some(escape(at)),
            (Some(0xD800..=0xDBFF), None) => leading = Some(i),
            _ => {}
        }
        i += if unit.is_some() { 6 } else { 2 };
    }
    leading.map(escape)
}

fn syntax_error(e: serde_json::Error) -> ApiError {
    ApiError::invalid_json(format!("request body is not valid JSON: {e}"))
}

/// The dotted name of the field an error is about (`whole` for an error
/// about the whole of the input). serde reports a missing field at its
/// parent's path, with the name only in the message.
fn field_name(path: &str, message: &str, whole: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => whole.to_owned(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// Path parameters, a segment that cannot be read (not UTF-8 once
/// percent-decoded) answering our JSON 404: it names nothing there is, as a
/// job id that is not a number does.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| ApiPath(path.0))
            .map_err(|e| ApiError::not_found(e.body_text()))
    }
}

/// The `{id}` path segment as a job id; anything else is a 404.
pub struct PathJobId(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for PathJobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(PathJobId(JobId(path_id(parts, state, "job").await?)))
    }
}

/// The `{id}` path segment as a batch id; anything else is a 404.
pub struct PathBatchId(pub grafter_core::BatchId);

impl<S: Send + Sync> FromRequestParts<S> for PathBatchId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(PathBatchId(grafter_core::BatchId(
            path_id(parts, state, "batch").await?,
        )))
    }
}

/// The `{id}` path segment as an integer id of a `what`: a segment that is
/// none names nothing there is, so it is a 404.
async fn path_id<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    what: &str,
) -> Result<i64, ApiError> {
    let ApiPath(raw) = ApiPath::<String>::from_request_parts(parts, state).await?;
    raw.parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("no {what} with id '{raw}': ids are integers")))
}

/// Query-string extractor answering 422 with our JSON.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection| query_error(&rejection))
    }
}

/// The 422 of a query string that could not be read, naming the parameter
/// (`limit`) when the error is about one, `query` otherwise. axum reads the
/// query through `serde_path_to_error`, whose error, with the parameter's
/// path, is in the rejection's chain of sources.
fn query_error(rejection: &QueryRejection) -> ApiError {
    type PathError = serde_path_to_error::Error<serde::de::value::Error>;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if let Some(error) = error.downcast_ref::<PathError>() {
            let message = error.inner().to_string();
            let field = field_name(&error.path().to_string(), &message, "query");
            return ApiError::invalid_field(field, message);
        }
        source = error.source();
    }
    ApiError::invalid_field("query", rejection.body_text())
}

/// The W3C trace context headers of an enqueue (docs/traces.md), kept only
/// if valid: a malformed one is logged at debug and ignored, never refused.
/// Two `traceparent` headers are malformed; several `tracestate` headers are
/// one list, as HTTP combines them.
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct TraceHeaders {
    /// W3C Trace Context `traceparent`, given to every job of the request
    /// that has no `traceparent` field. A malformed value is ignored.
    #[param(value_type = String, required = false)]
    traceparent: Option<String>,
    /// W3C Trace Context `tracestate`, kept beside a valid `traceparent`
    /// within 32 members and 512 characters; otherwise ignored.
    #[param(value_type = String, required = false)]
    tracestate: Option<String>,
}

impl TraceHeaders {
    /// Gives `job` this request's trace context unless it has a
    /// `traceparent` of its own (its fields win, `tracestate` included).
    pub fn apply(&self, job: &mut grafter_core::NewJob) {
        if job.traceparent.is_none() {
            job.traceparent.clone_from(&self.traceparent);
            job.tracestate.clone_from(&self.tracestate);
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TraceHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        use grafter_core::trace::{keep_valid, TRACEPARENT, TRACESTATE};
        // `None` inside: a value that is not visible ASCII, malformed as a whole.
        let values = |name: &str| -> Option<Vec<&str>> {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().ok())
                .collect()
        };
        let (Some(parents), Some(states)) = (values(TRACEPARENT), values(TRACESTATE)) else {
            tracing::debug!("ignoring trace context headers that are not text");
            return Ok(TraceHeaders::default());
        };
        let traceparent = match parents[..] {
            [] => None,
            [one] => Some(one),
            _ => {
                tracing::debug!("ignoring more than one traceparent header");
                return Ok(TraceHeaders::default());
            }
        };
        let tracestate = (!states.is_empty()).then(|| states.join(","));
        let (traceparent, tracestate, dropped) = keep_valid(traceparent, tracestate.as_deref());
        for dropped in dropped {
            tracing::debug!(%dropped, "ignoring a malformed trace context header");
        }
        Ok(TraceHeaders {
            traceparent,
            tracestate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        kind: String,
    }

    fn code(body: &str) -> (StatusCode, String) {
        match parse_json::<Body>(body.as_bytes()) {
            Ok(body) => (StatusCode::OK, body.kind),
            Err(e) => {
                let status = e.status();
                let detail = e.into_detail();
                (status, detail.field.unwrap_or_default())
            }
        }
    }

    fn message(body: &str) -> (StatusCode, String, String) {
        let e = parse_json::<Body>(body.as_bytes()).unwrap_err();
        let status = e.status();
        let detail = e.into_detail();
        (status, detail.field.unwrap_or_default(), detail.message)
    }

    #[test]
    fn a_lone_surrogate_escape_is_named_not_worded_by_the_parsers_state() {
        for (body, escape) in [
            (r#"{"kind": "\ud800"}"#, r"\ud800"),
            (r#"{"kind": "a\uD83Db"}"#, r"\uD83D"),
            (r#"{"kind": "\udc00"}"#, r"\udc00"),
            (r#"{"kind": "\ud800\u0041"}"#, r"\ud800"),
            (r#"{"kind": "\ud83d\ude00\ud800\n"}"#, r"\ud800"),
            (r#"{"kind": "\\ud800 \ude00"}"#, r"\ude00"),
            ("{\n  \"kind\":\n  \"\\ud800\"\n}", r"\ud800"),
        ] {
            let (status, field, message) = message(body);
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(field, "kind", "{body}");
            assert!(
                message.contains(&format!("{escape} is a lone UTF-16 surrogate")),
                "{body}: {message}"
            );
        }
        // A pair is one character; an escaped backslash starts no escape.
        assert_eq!(
            code(r#"{"kind": "\ud83d\ude00"}"#),
            (StatusCode::OK, "😀".into())
        );
        assert_eq!(
            code(r#"{"kind": "\\ud800"}"#),
            (StatusCode::OK, r"\ud800".into())
        );
        // Other errors keep their words, even beside a lone surrogate later on.
        let (_, _, message) = message(r#"{"kind": 1, "x": "\ud800"}"#);
        assert!(!message.contains("surrogate"), "{message}");
    }

    #[test]
    fn syntax_errors_win_over_field_errors_wherever_they_are() {
        assert_eq!(code(r#"{"kind": "a"}"#), (StatusCode::OK, "a".into()));
        assert_eq!(code(r#"{"kind": "a"} trailing"#).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            code(r#"{"kind": "a"}{"kind": "b"}"#).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(code(r#"{"kind": 1} trailing"#).0, StatusCode::BAD_REQUEST);
        assert_eq!(code(r#"{} ["#).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            code("{}"),
            (StatusCode::UNPROCESSABLE_ENTITY, "kind".into())
        );
        assert_eq!(
            code(r#"{"kind": "a", "knd": 1}"#).0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            code(r#"{"kind": 1}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, "kind".into())
        );
    }
}
