//! Grafter's server: the HTTP API (`/v1`), the worker protocol, the dashboard,
//! health and metrics endpoints, and the push dispatcher, all thin callers of
//! one [`grafter_engine::Engine`].
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`], so tests drive
//! it without a socket; [`serve`] runs it on a listener together with the
//! engine's maintenance services and the push dispatcher until shut down.

mod access;
mod api;
pub mod config;
mod connections;
pub mod dashboard;
mod error;
mod extract;
mod filters;
mod metrics;
mod openapi;
mod origin;
mod otlp;
pub mod push;
mod state;
mod stream_tokens;
mod throttle;
mod token_cache;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use grafter_engine::maintenance::Maintenance;
use grafter_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;

pub use config::{HttpSettings, OtlpSettings, ServerConfig};
pub use error::ApiError;
pub use openapi::openapi_json;
pub use state::AppState;

/// The whole HTTP surface: `/v1/…`, `/livez`, `/readyz`, `/metrics`, `/openapi.json`
/// (the last two under the token unless `metrics_public`/`openapi_public`).
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/jobs", post(api::jobs::enqueue).get(api::jobs::list))
        .route("/jobs/batch", post(api::jobs::enqueue_batch))
        .route("/jobs/{id}", get(api::jobs::show).delete(api::jobs::delete))
        .route("/jobs/{id}/dependencies", get(api::jobs::dependencies))
        .route("/jobs/{id}/retry", post(api::jobs::retry))
        .route("/jobs/{id}/cancel", post(api::jobs::cancel))
        .route("/jobs/{id}/reschedule", post(api::jobs::reschedule))
        .route("/jobs/ack", post(api::worker::ack_many))
        .route("/jobs/{id}/ack", post(api::worker::ack))
        .route("/jobs/{id}/fail", post(api::worker::fail))
        .route("/jobs/{id}/heartbeat", post(api::worker::heartbeat))
        .route("/jobs/{id}/release", post(api::worker::release))
        .route("/fetch", post(api::worker::fetch))
        .route("/workers", get(api::worker::workers_list))
        .route("/info", get(api::ops::info))
        .route("/cleanup", post(api::ops::cleanup))
        .route(
            "/workers/{id}",
            axum::routing::put(api::worker::worker_heartbeat).delete(api::worker::worker_remove),
        )
        .route("/queues", get(api::queues::list))
        .route("/queues/{name}", axum::routing::put(api::queues::update))
        .route("/queues/{name}/pause", post(api::queues::pause))
        .route("/queues/{name}/resume", post(api::queues::resume))
        .route("/schedules", get(api::schedules::list))
        .route(
            "/schedules/{id}",
            get(api::schedules::show)
                .put(api::schedules::put)
                .delete(api::schedules::delete),
        )
        .route("/schedules/{id}/pause", post(api::schedules::pause))
        .route("/schedules/{id}/resume", post(api::schedules::resume))
        .route("/schedules/{id}/trigger", post(api::schedules::trigger))
        .route("/schedules/{id}/preview", get(api::schedules::preview))
        .route(
            "/batches",
            post(api::batches::create).get(api::batches::list),
        )
        .route("/batches/{id}", get(api::batches::show))
        .route("/batches/{id}/jobs", post(api::batches::add))
        .route("/batches/{id}/seal", post(api::batches::seal))
        .route("/batches/{id}/cancel", post(api::batches::cancel))
        .route("/stream-tokens", post(api::events::mint_stream_token))
        .route("/tokens", post(api::tokens::create).get(api::tokens::list))
        .route("/tokens/{id}", axum::routing::delete(api::tokens::revoke))
        .route("/audit", get(api::audit::list))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::auth::require_token,
        ))
        // Streams check the server's token or a stream token themselves.
        .route("/jobs/{id}/events", get(api::events::job_events))
        .route("/batches/{id}/events", get(api::events::batch_events));
    let body_limit = state.config().body_limit_bytes;
    let metrics = Router::new().route("/metrics", get(api::health::metrics));
    let openapi = Router::new().route("/openapi.json", openapi::route(state.config()));
    Router::new()
        .nest("/v1", v1)
        .merge(dashboard::routes(state.clone()))
        .route("/livez", get(api::health::livez))
        .route("/readyz", get(api::health::readyz))
        .merge(token_unless(state.config().metrics_public, metrics, &state))
        .merge(token_unless(state.config().openapi_public, openapi, &state))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(extract::refuse_encoded_bodies))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::refuse_declared_oversize_bodies,
        ))
        .layer(axum::middleware::from_fn(origin::refuse_cross_origin))
        .layer(CatchPanicLayer::custom(api::panic_response))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .with_state(state)
}

/// `routes` behind the server's token (when it has one), unless `public`.
fn token_unless(public: bool, routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    if public {
        return routes;
    }
    routes.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        api::auth::require_token,
    ))
}

/// How a failed response is logged. A 503 says the database is unavailable:
/// during an outage every request and readiness probe says so until it ends,
/// and the store reports the cause itself, so it is a warning. Any other
/// server error is an error.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &tracing::Span) {
    let latency_ms = latency.as_millis();
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::warn!(classification = %class, latency_ms, "response failed")
        }
        _ => tracing::error!(classification = %class, latency_ms, "response failed"),
    }
}

/// Stores the limits of the config file's `[queues.NAME.limits]` tables,
/// replacing what the API set for those queues (the file wins at start).
async fn apply_configured_limits(state: &AppState) -> std::io::Result<()> {
    let limits = state
        .config()
        .queue_limits()
        .map_err(std::io::Error::other)?;
    for (queue, limits) in limits {
        state
            .engine()
            .queue_set_limits(&queue, Some(limits))
            .await
            .map_err(|e| {
                std::io::Error::other(format!("cannot store the limits of queue '{queue}': {e}"))
            })?;
    }
    Ok(())
}

/// Serves the API on `listener` and runs the maintenance services and the
/// push dispatcher until `shutdown` is cancelled; then stops taking requests,
/// lets in-flight ones finish (long-polls answer at once), and stops the
/// services. Connections slow to send a request, or idle too long between
/// requests, are closed (`ServerConfig::http`). Served open on loopback, it
/// answers only requests for a loopback name (`origin`). The config file's push
/// targets and queue limits are stored first, and its schedules reconciled
/// (when it has a `[schedules]` table). With `[otlp]` set, the server's
/// spans are exported until the end, and those still queued are sent last.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let (tracer, exporter) = otlp::Exporter::start(&config.otlp, metrics.otlp_spans_dropped())
        .map_err(std::io::Error::other)?;
    let state = AppState::assemble(store, config, shutdown.clone(), metrics, tracer);
    push::apply_configured_targets(state.engine(), state.config())
        .await
        .map_err(std::io::Error::other)?;
    if let Some(schedules) = &state.config().schedules {
        let report = state
            .engine()
            .schedules_reconcile(schedules)
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!(
            created = ?report.created,
            updated = ?report.updated,
            deleted = ?report.deleted,
            "schedules of the config file reconciled"
        );
    }
    apply_configured_limits(&state).await?;
    let maintenance = Maintenance::start(
        state.engine(),
        &state.config().maintenance,
        &state.config().retention,
        state.maintenance_health().clone(),
        shutdown.child_token(),
    );
    let dispatcher = tokio::spawn(push::run_dispatcher(state.clone(), shutdown.child_token()));
    let http = state.config().http.clone();
    let open = state.config().token.is_none();
    let app = origin::only_loopback_hosts_when_open(router(state), open, listener.local_addr()?);
    connections::serve_connections(listener, app, http, shutdown.clone()).await;
    maintenance.stop().await;
    if let Err(error) = dispatcher.await {
        tracing::error!(%error, "the push dispatcher failed");
    }
    if let Some(exporter) = exporter {
        exporter.finish().await;
    }
    Ok(())
}
