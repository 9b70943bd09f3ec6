//! Liveness, readiness and metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use grafter_engine::maintenance::ServiceHealth;
use serde::Serialize;
use utoipa::ToSchema;

use grafter_store::LimitUsageQuery;

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
    /// Maintenance services of this node whose latest pass failed, by name
    /// (`scheduler`, `rescuer`, `expirer`, `pruner`, `elector`): the node
    /// still serves, but jobs may not move on time until they recover.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub maintenance_failing: BTreeMap<&'static str, ServiceHealth>,
}

impl Health {
    fn new(status: &'static str, error: Option<String>) -> Self {
        Health {
            status,
            error,
            maintenance_failing: BTreeMap::new(),
        }
    }
}

/// The process is up and answering.
#[utoipa::path(get, path = "/livez", tag = "health", responses((status = 200, body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health::new("ok", None))
}

/// The process can serve jobs: its store answers and it is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let unavailable = |error: &str| Health::new("unavailable", Some(error.to_owned()));
    let (status, mut health) = if state.shutdown().is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            unavailable("shutting down"),
        )
    } else {
        match tokio::time::timeout(Duration::from_secs(2), state.store().ping()).await {
            Ok(Ok(())) => (StatusCode::OK, Health::new("ready", None)),
            Ok(Err(e)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                unavailable(crate::error::ApiError::from(e).message()),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                unavailable("store did not answer within 2 s"),
            ),
        }
    };
    health.maintenance_failing = state
        .maintenance_health()
        .snapshot()
        .into_iter()
        .filter(|(_, service)| service.failing())
        .collect();
    (status, Json(health))
}

/// Prometheus metrics: OpenMetrics text, or the Prometheus text format
/// (0.0.4) for a client whose `Accept` prefers `text/plain` to OpenMetrics
/// by q-value, or refuses OpenMetrics (`q=0`) and not `text/plain` (as
/// `curl -H 'Accept: text/plain' … | promtool check metrics`).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text (or text/plain; version=0.0.4 when Accept prefers it)", content_type = "application/openmetrics-text")))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let queues = state.store().queues_list().await?;
    let mut limits = Vec::new();
    for queue in queues.iter().filter(|q| q.limits.is_some()) {
        let usage = state
            .store()
            .queue_limit_usage(LimitUsageQuery {
                queue: queue.name.clone(),
                job: None,
                now: state.engine().now(),
            })
            .await?;
        limits.push((queue.name.clone(), usage));
    }
    let maintenance = state.maintenance_health().snapshot();
    let now = state.engine().now();
    let text = state.metrics().render(&queues, &limits, &maintenance, now);
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if crate::metrics::wants_prometheus_text(&accept) {
        return Ok((
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::prometheus_text(&text),
        )
            .into_response());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
