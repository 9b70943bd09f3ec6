//! HTTP handlers, one module per resource.

pub mod audit;
pub mod auth;
pub mod batches;
pub mod events;
pub mod health;
pub mod jobs;
pub mod ops;
pub mod queues;
pub mod schedules;
pub mod tokens;
pub mod worker;

use std::any::Any;

use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Any path that is not a route.
pub async fn not_found(uri: Uri) -> Response {
    error_at(
        uri.path(),
        ApiError::not_found(format!("no route for {}", uri.path())),
        &format!("There is no page at {}.", uri.path()),
    )
}

/// An error answered before any route's handler: JSON under `/v1`, where
/// clients are programs; an HTML page saying `page_message` elsewhere, where
/// they are people with browsers.
pub fn error_at(path: &str, error: ApiError, page_message: &str) -> Response {
    if path == "/v1" || path.starts_with("/v1/") {
        return error.into_response();
    }
    crate::dashboard::error_page(error.status(), page_message)
}

/// A route that exists, with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_at(
        uri.path(),
        ApiError::method_not_allowed(),
        &format!("{} does not take a {method} request.", uri.path()),
    )
}

/// A handler panicked: answer 500 JSON rather than dropping the connection.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    let body =
        serde_json::json!({"error": {"code": "internal", "message": "internal server error"}});
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}
