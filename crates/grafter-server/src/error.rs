//! Every error the API answers, mapped to JSON `{"error": {"code", "message"}}`
//! and a status in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use grafter_core::ValidationError;
use grafter_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds for a `Retry-After` header.
    retry_after_secs: Option<u64>,
}

/// The JSON body of every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_json`, `invalid_body`,
    /// `invalid_field`, `push_target_refused`, `payload_too_large`,
    /// `request_timeout`, `unsupported_encoding`,
    /// `not_found`, `method_not_allowed`, `lease_mismatch`, `invalid_state`,
    /// `unauthorized`, `forbidden`, `cross_origin`, `host_not_allowed`,
    /// `too_many_requests`, `unavailable`, `internal`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The offending field, for `invalid_field`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    /// The body is not JSON.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// The body could not be read (a malformed chunked encoding, a
    /// connection cut mid-body): nothing can be said of its JSON.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    /// The body did not all arrive within `timeout` of the headers.
    pub fn request_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms of its headers \
                 (setting body_read_timeout_ms)",
                timeout.as_millis()
            ),
        )
    }

    /// The body has a `Content-Encoding` (`encoding`, as sent) the server
    /// does not decode: it reads only bodies sent as they are.
    pub fn unsupported_encoding(encoding: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "the request body has Content-Encoding '{encoding}': the server reads only \
                 bodies without a Content-Encoding (or 'identity'); send it uncompressed"
            ),
        )
    }

    /// A field is missing or not acceptable.
    pub fn invalid_field(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("{field}: {message}"),
        );
        error.field = Some(field);
        error
    }

    /// A push target whose address is inside the server's network.
    pub fn push_target_refused(message: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "push_target_refused",
            message,
        );
        error.field = Some("push.url".into());
        error
    }

    /// The body is over the limit.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is larger than the server's limit (setting body_limit_bytes)",
        )
    }

    /// No such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The route exists, but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take this method",
        )
    }

    /// The status and the message for people.
    pub fn status_and_message(&self) -> (StatusCode, &str) {
        (self.status, &self.message)
    }

    /// Missing or wrong token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong token: send 'Authorization: Bearer <GRAFTER_TOKEN>'",
        )
    }

    /// Missing or wrong credentials, with why.
    pub fn unauthorized_because(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// The credentials are good, but not for this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// A browser sent this request for a page of another origin (CSRF).
    pub fn cross_origin(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "cross_origin", message)
    }

    /// The request names a host an open loopback server does not answer
    /// to (DNS rebinding).
    pub fn host_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "host_not_allowed", message)
    }

    /// Too many wrong tokens from this client; it may try again after `wait`.
    pub fn too_many_requests(wait: std::time::Duration) -> Self {
        let secs = crate::throttle::retry_after_secs(wait);
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("too many wrong tokens from this address: try again in {secs} s"),
        );
        error.retry_after_secs = Some(secs);
        error
    }

    /// The server is shutting down or its storage is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The code and message, for an answer that reports errors per item.
    pub(crate) fn into_detail(self) -> ErrorDetail {
        ErrorDetail {
            code: self.code,
            message: self.message,
            field: self.field,
        }
    }

    /// What the answer says, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer's `code`, e.g. `lease_mismatch`.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid_field(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    /// What the database said stays in the log: its text can name tables,
    /// process ids and transactions, which are no business of a client.
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound(_) | StoreError::BatchNotFound(_) => ApiError::not_found(message),
            StoreError::BatchClosed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "batch_closed", message)
            }
            StoreError::LeaseMismatch { .. } => {
                ApiError::new(StatusCode::CONFLICT, "lease_mismatch", message)
            }
            StoreError::InvalidState { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_state", message)
            }
            StoreError::UnknownDependency { field, id } => {
                ApiError::invalid_field(field, format!("job {id} does not exist"))
            }
            StoreError::RefusedDependency { field, message } => {
                ApiError::invalid_field(field, message.clone())
            }
            StoreError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            }
            StoreError::Closed => ApiError::unavailable("the server is shutting down"),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %message, "store unavailable");
                ApiError::unavailable(
                    "the database is unavailable or did not commit; nothing was changed, try again",
                )
            }
            _ => {
                tracing::error!(error = %message, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error (the server's log has the details)",
                )
            }
        }
    }
}

impl From<grafter_engine::Error> for ApiError {
    fn from(e: grafter_engine::Error) -> Self {
        match e {
            grafter_engine::Error::Invalid(e) => e.into(),
            grafter_engine::Error::NotFound(message) => ApiError::not_found(message),
            grafter_engine::Error::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
