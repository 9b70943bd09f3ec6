//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// A health answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready`, or `unavailable`.
    pub status: &'static str,
    /// Why not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The process is up and answering.
#[utoipa::path(get, path = "/livez", tag = "health", responses((status = 200, body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health {
        status: "ok",
        error: None,
    })
}

/// The process can serve jobs: its store answers and it is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.shutdown().is_cancelled() {
        let health = Health {
            status: "unavailable",
            error: Some("shutting down".into()),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(health));
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store().ping()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(Health {
                status: "ready",
                error: None,
            }),
        ),
        Ok(Err(e)) => {
            let health = Health {
                status: "unavailable",
                error: Some(e.to_string()),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(health))
        }
        Err(_) => {
            let health = Health {
                status: "unavailable",
                error: Some("store did not answer within 2 s".into()),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(health))
        }
    }
}

/// Prometheus (OpenMetrics) text.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let queues = state.store().queues_list().await?;
    let text = state.metrics().render(&queues);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
