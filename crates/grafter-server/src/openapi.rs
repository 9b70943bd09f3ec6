//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(title = "Grafter", description = "Durable background jobs over HTTP."),
    paths(
        api::jobs::enqueue, api::jobs::enqueue_batch, api::jobs::list, api::jobs::show,
        api::jobs::dependencies,
        api::jobs::retry, api::jobs::cancel, api::jobs::reschedule, api::jobs::delete,
        api::worker::fetch, api::worker::ack, api::worker::ack_many, api::worker::fail, api::worker::heartbeat,
        api::worker::release, api::worker::worker_heartbeat, api::worker::worker_remove,
        api::worker::workers_list,
        api::queues::list, api::queues::update, api::queues::pause, api::queues::resume,
        api::schedules::put, api::schedules::list, api::schedules::show, api::schedules::delete,
        api::schedules::pause, api::schedules::resume, api::schedules::trigger,
        api::schedules::preview,
        api::batches::create, api::batches::add, api::batches::seal, api::batches::cancel,
        api::batches::show, api::batches::list,
        api::events::job_events, api::events::mint_stream_token,
        api::ops::info, api::ops::cleanup,
        api::health::livez, api::health::readyz, api::health::metrics,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as JSON text.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

pub async fn serve_openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
