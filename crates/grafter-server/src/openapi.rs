//! The OpenAPI document, generated from the handlers' annotations and made
//! exact for the server's configuration at start (`document`).
//!
//! The document is checked against a live server by schemathesis with every
//! check (crates/grafter-cli/tests/openapi.rs), so it must say exactly what
//! the server does. Conventions for every route:
//!
//! - A handler's `#[utoipa::path]` lists its success answers and the errors
//!   of its own logic: 404 for a missing thing it looks up, 409 for a state
//!   conflict or a stale lease, 422 for a value it validates itself.
//! - It does not list the answers of the machinery around it: `document`
//!   adds them to every operation from shared responses
//!   (`#/components/responses/…`), by what the operation has:
//!   a request body (`ApiJson`): 400 not JSON or not readable, 408 not
//!   arrived within `body_read_timeout_ms`, 413 too large, 415 encoded
//!   (`Content-Encoding`), 422 bad field;
//!   query parameters (`ApiQuery`): 422; an integer `{id}` (`PathJobId`):
//!   404 for a segment that is not one; under the token (a server with
//!   one): 401, 403 (a stored token without the route's scope or queue,
//!   docs/access.md) and 429 (wrong tokens are throttled); every operation 500 (a
//!   panic or a store error), and every one but `/livez` 503 (storage
//!   unavailable or shutting down).
//! - Every constraint the server enforces is in the schema, so a client
//!   generated from it sends nothing the server refuses: names carry
//!   `NAME_PATTERN` and their lengths, numbers their ranges, request structs
//!   `#[serde(deny_unknown_fields)]` (`additionalProperties: false`). What
//!   JSON Schema cannot say is in the description, and in the schemathesis
//!   config of the test with the reason.
//! - Security is the server's: none on an open server; `bearer` on one with
//!   a token, except the public routes (health, and `/metrics` with
//!   `metrics_public`); job and batch event streams also open with a stream token
//!   (and answer 403 for one that does not name the job or batch).
//! - A new route goes into `ApiDoc`'s `paths` and, if public, `PUBLIC`.

use std::collections::BTreeMap;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use bytes::Bytes;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, SchemaType};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    Components, ContentBuilder, HeaderBuilder, KnownFormat, ObjectBuilder, OpenApi as Document,
    Ref, RefOr, ResponseBuilder, Schema, SchemaFormat, Type,
};
use utoipa::OpenApi;

use crate::api;
use crate::config::ServerConfig;
use crate::error::ErrorBody;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Grafter", description = "Durable background jobs over HTTP."),
    paths(
        api::jobs::enqueue,
        api::jobs::enqueue_batch,
        api::jobs::list,
        api::jobs::show,
        api::jobs::dependencies,
        api::jobs::retry,
        api::jobs::cancel,
        api::jobs::reschedule,
        api::jobs::delete,
        api::worker::fetch,
        api::worker::ack,
        api::worker::ack_many,
        api::worker::fail,
        api::worker::heartbeat,
        api::worker::release,
        api::worker::worker_heartbeat,
        api::worker::worker_remove,
        api::worker::workers_list,
        api::queues::list,
        api::queues::update,
        api::queues::pause,
        api::queues::resume,
        api::schedules::put,
        api::schedules::list,
        api::schedules::show,
        api::schedules::delete,
        api::schedules::pause,
        api::schedules::resume,
        api::schedules::trigger,
        api::schedules::preview,
        api::batches::create,
        api::batches::add,
        api::batches::seal,
        api::batches::cancel,
        api::batches::show,
        api::batches::list,
        api::events::job_events,
        api::events::batch_events,
        api::events::mint_stream_token,
        api::ops::info,
        api::ops::cleanup,
        api::tokens::create,
        api::tokens::list,
        api::tokens::revoke,
        api::audit::list,
        api::health::livez,
        api::health::readyz,
        api::health::metrics,
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// Routes no token guards.
const PUBLIC: [&str; 2] = ["/livez", "/readyz"];
/// The routes that also open with a stream token.
const STREAMS: [&str; 2] = ["/v1/jobs/{id}/events", "/v1/batches/{id}/events"];
/// The security scheme of the server's token.
const BEARER: &str = "bearer";
/// The security scheme of stream tokens.
const STREAM_TOKEN: &str = "streamToken";

/// The shared error answers: status, component name, description.
const SHARED: [(&str, &str, &str); 11] = [
    ("400", "InvalidJson", "The body is not JSON (`invalid_json`), or could not be read, as a malformed chunked encoding (`invalid_body`)."),
    ("401", "Unauthorized", "Missing or wrong token (`unauthorized`)."),
    ("403", "Forbidden", "The credentials are good, but not for this (`forbidden`)."),
    ("404", "NotFound", "No such thing, or an id that is not one (`not_found`)."),
    ("408", "RequestTimeout", "The body did not all arrive within `body_read_timeout_ms` of the headers (`request_timeout`); the connection is closed."),
    ("413", "PayloadTooLarge", "The body is over `body_limit_bytes` (`payload_too_large`)."),
    ("415", "UnsupportedEncoding", "The body has a `Content-Encoding` other than `identity` (`unsupported_encoding`): the server reads only bodies sent as they are."),
    ("422", "InvalidField", "A field or query parameter is missing or not acceptable (`invalid_field`, naming it in `field`)."),
    ("429", "TooManyRequests", "Too many wrong tokens from this address; try again after `Retry-After` seconds (`too_many_requests`)."),
    ("500", "Internal", "A server error; the server's log has the details (`internal`)."),
    ("503", "Unavailable", "The database is unavailable or the server is shutting down (`unavailable`); nothing was changed."),
];

/// The document for a server with `config`: its security and its limits.
pub fn document(config: &ServerConfig) -> Document {
    let mut doc = ApiDoc::openapi();
    let secured = config.token.is_some();
    let components = doc.components.get_or_insert_with(Default::default);
    for (status, name, description) in SHARED {
        if !secured && matches!(status, "401" | "403" | "429") {
            continue;
        }
        let mut response = ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        );
        if status == "415" {
            response = response.header(
                "Accept-Encoding",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("`identity`: the only coding the server reads"))
                    .build(),
            );
        }
        if status == "429" {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                            .minimum(Some(1)),
                    )
                    .description(Some("Seconds to wait"))
                    .build(),
            );
        }
        components
            .responses
            .insert(name.to_owned(), RefOr::T(response.build()));
    }
    set_maximum(components, "FetchRequest", "wait_ms", config.max_wait_ms);
    batch_job_schemas(components);
    open_flattened_requests(components);
    if secured {
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's token, or a stored token (`gft_…`, POST /v1/tokens) with \
                         the scope the route needs: enqueue, read, work, manage, queues, admin \
                         or metrics (docs/access.md). Outside its scopes or queue patterns, \
                         or a stored token setting a queue's push target: 403.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            STREAM_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "A stream token (POST /v1/stream-tokens) naming the job or batch",
            ))),
        );
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let guarded = secured
            && !(PUBLIC.contains(&path.as_str()) || (path == "/metrics" && config.metrics_public));
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            name_path_parameters(operation);
            add_shared_answers(operation, path, guarded);
            operation.security = match (secured, guarded) {
                // Nothing to authenticate: no operation names a scheme.
                (false, _) => None,
                // The empty requirement: no credentials needed.
                (true, false) => Some(vec![SecurityRequirement::default()]),
                (true, true) if STREAMS.contains(&path.as_str()) => {
                    // A stream token that does not name the job or batch.
                    add_shared(operation, "403");
                    Some(vec![requirement(BEARER), requirement(STREAM_TOKEN)])
                }
                (true, true) => Some(vec![requirement(BEARER)]),
            };
        }
    }
    if secured {
        doc.security = Some(vec![requirement(BEARER)]);
    }
    doc
}

/// Gives a text path parameter the schema of a path name: every one is a
/// queue name, schedule id or worker id, which the server checks as such.
fn name_path_parameters(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        let is_text = matches!(&parameter.schema, Some(RefOr::T(Schema::Object(o)))
            if o.schema_type == SchemaType::Type(Type::String));
        if parameter.parameter_in == ParameterIn::Path && is_text {
            parameter.schema = Some(RefOr::T(grafter_core::openapi::path_name()));
        }
    }
}

/// A batch's jobs and callbacks are jobs with fewer fields
/// (grafter_core::batch): a job in a batch has no `unique_key` (a duplicate
/// would stand for a job outside it), and a callback, enqueued when the batch
/// settles, no `run_at`, `expires_at`, `unique_key` or dependencies
/// (`depends_on`, `depends_on_batches`, `ref`, `on_dependency_failure`)
/// either. Each gets a copy
/// of `NewJob` without them, which the batch requests name instead.
fn batch_job_schemas(components: &mut Components) {
    let Some(RefOr::T(Schema::Object(new_job))) = components.schemas.get("NewJob").cloned() else {
        return;
    };
    let without = |fields: &[&str], description: &str| {
        let mut job = new_job.clone();
        for field in fields {
            job.properties.remove(*field);
        }
        job.required.retain(|r| !fields.contains(&r.as_str()));
        job.description = Some(description.to_owned());
        Schema::Object(job)
    };
    components.schemas.insert(
        "BatchJob".to_owned(),
        RefOr::T(without(
            &["unique_key"],
            "A job of a batch: the fields of POST /v1/jobs but `unique_key`.",
        )),
    );
    components.schemas.insert(
        "BatchCallback".to_owned(),
        RefOr::T(without(
            &[
                "run_at",
                "expires_at",
                "unique_key",
                "depends_on",
                "depends_on_batches",
                "ref",
                "on_dependency_failure",
            ],
            "A batch callback: the fields of POST /v1/jobs but `run_at`, `expires_at`, \
             `unique_key`, `depends_on`, `depends_on_batches`, `ref` and \
             `on_dependency_failure`.",
        )),
    );
    let new_job_ref = "#/components/schemas/NewJob";
    for (request, target) in [
        ("CreateBatchRequest", "#/components/schemas/BatchJob"),
        ("AddJobsRequest", "#/components/schemas/BatchJob"),
    ] {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(request) {
            if let Some(RefOr::T(Schema::Array(jobs))) = object.properties.get_mut("jobs") {
                if let utoipa::openapi::schema::ArrayItems::RefOrSchema(items) = &mut jobs.items {
                    if matches!(items.as_ref(), RefOr::Ref(r) if r.ref_location == new_job_ref) {
                        **items = RefOr::Ref(Ref::new(target));
                    }
                }
            }
        }
    }
    if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut("CreateBatchRequest")
    {
        for callback in ["on_success", "on_complete", "on_failure"] {
            if let Some(RefOr::T(Schema::OneOf(one_of))) = object.properties.get_mut(callback) {
                for item in &mut one_of.items {
                    if let RefOr::Ref(reference) = item {
                        if reference.ref_location == new_job_ref {
                            // Keeps the reference's description.
                            reference.ref_location = "#/components/schemas/BatchCallback".into();
                        }
                    }
                }
            }
        }
    }
}

/// A request body refuses unknown fields (`additionalProperties: false`),
/// but an answer that flattens it (a worker is its registration and more)
/// has more: where a composition (`allOf`) names a closed schema, it gets a
/// copy that is open.
fn open_flattened_requests(components: &mut Components) {
    let closed: BTreeMap<String, Schema> = components
        .schemas
        .iter()
        .filter_map(|(name, schema)| match schema {
            RefOr::T(Schema::Object(object))
                if matches!(
                    object.additional_properties.as_deref(),
                    Some(AdditionalProperties::FreeForm(false))
                ) =>
            {
                let mut open = object.clone();
                open.additional_properties = None;
                Some((format!("#/components/schemas/{name}"), Schema::Object(open)))
            }
            _ => None,
        })
        .collect();
    for schema in components.schemas.values_mut() {
        let RefOr::T(Schema::AllOf(all_of)) = schema else {
            continue;
        };
        for item in &mut all_of.items {
            if let RefOr::Ref(reference) = item {
                if let Some(open) = closed.get(&reference.ref_location) {
                    *item = RefOr::T(open.clone());
                }
            }
        }
    }
}

/// Sets the `maximum` of a schema's integer property to a configured limit.
fn set_maximum(components: &mut Components, schema: &str, property: &str, maximum: u64) {
    if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) {
        if let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(property) {
            property.maximum = Some(utoipa::Number::UInt(maximum as usize));
        }
    }
}

/// Adds to `operation` the answers of the machinery around its handler
/// (see the module's conventions); answers the handler lists stay its own.
fn add_shared_answers(operation: &mut Operation, path: &str, guarded: bool) {
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let has_query = parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Query);
    let has_job_id = parameters.iter().any(|p| {
        p.parameter_in == ParameterIn::Path
            && matches!(&p.schema, Some(RefOr::T(Schema::Object(o)))
                if o.schema_type == SchemaType::Type(Type::Integer))
    });
    let has_body = operation.request_body.is_some();
    let mut statuses = vec!["500"];
    if path != "/livez" {
        statuses.push("503");
    }
    if has_body {
        statuses.extend(["400", "408", "413", "415", "422"]);
    }
    if has_query {
        statuses.push("422");
    }
    if has_job_id {
        statuses.push("404");
    }
    if guarded {
        // 403: a stored token without the route's scope or queue.
        statuses.extend(["401", "403", "429"]);
    }
    for status in statuses {
        add_shared(operation, status);
    }
}

/// Adds the shared answer for `status` to `operation`, unless it lists its own.
fn add_shared(operation: &mut Operation, status: &str) {
    let Some((_, name, _)) = SHARED.iter().find(|(s, _, _)| *s == status) else {
        return;
    };
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))));
}

fn requirement(scheme: &str) -> SecurityRequirement {
    SecurityRequirement::new(scheme, Vec::<String>::new())
}

/// The document as JSON text, for `grafter openapi`.
pub fn openapi_json(config: &ServerConfig) -> String {
    document(config)
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

/// The `/openapi.json` route: the document of this server, made once.
pub fn route(config: &ServerConfig) -> MethodRouter<AppState> {
    let body = Bytes::from(openapi_json(config));
    get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
    })
}
