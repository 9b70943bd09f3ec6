//! Live events over Server-Sent Events (docs/events.md): a job's stream and
//! a batch's, the long-poll for clients without SSE, and the stream tokens a
//! browser opens a stream with.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::HeaderName;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use futures_util::stream::{self, Stream};
use grafter_core::{BatchId, Job, JobId};
use grafter_engine::{BatchEventStream, BatchStreamEvent, JobEventStream, JobStreamEvent};
use grafter_store::Scope;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::access::Access;
use crate::api::auth::{authenticate, bearer_token};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, PathBatchId, PathJobId};
use crate::state::AppState;
use crate::stream_tokens::{
    minter_works, Refusal, StreamGrant, DEFAULT_TTL_MS, MAX_IDS, MAX_TTL_MS,
};
use crate::throttle::Client;

/// How often an idle stream sends a comment, so proxies keep it open.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// How often an open stream opened on a stored token's authority looks that
/// token up again (in the token cache), to end once it is revoked or expired.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a browser waits before reconnecting a dropped stream.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Longest `wait` of a long-poll.
pub const MAX_WAIT_MS: u64 = 60_000;
/// The header that carries the id of a job's latest event (for `after`).
pub const EVENT_ID_HEADER: HeaderName = HeaderName::from_static("grafter-event-id");

/// How a stream request may be authorized, besides the server's token.
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// A stream token (`POST /v1/stream-tokens`) naming this job or batch,
    /// for clients that cannot send an `Authorization` header.
    pub access_token: Option<String>,
    /// Resume after this event id, as the `Last-Event-ID` header does (the
    /// header wins).
    pub last_event_id: Option<String>,
}

/// One Server-Sent Event of a job's or a batch's stream, as `sse_event` writes it; its
/// `data` is JSON text (docs/events.md).
pub struct StreamEvent;

impl utoipa::PartialSchema for StreamEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "event",
                string().enum_values(Some(["snapshot", "state", "progress", "end"])),
            )
            .property(
                "id",
                string().description(Some("Send back as Last-Event-ID to resume after it")),
            )
            .property(
                "retry",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .property("data", string().description(Some("The event as JSON text")))
            .required("event")
            .required("id")
            .required("data")
            .into()
    }
}

impl ToSchema for StreamEvent {}

/// A job's events: `snapshot` (the job), then `state` and `progress`
/// (coalesced, at most four a second) as they happen, then `end` (the job as
/// it ended, or `null` if deleted), and the stream closes. Each event's `id`
/// resumes the stream after it when sent back as `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "events",
    params(("id" = i64, Path), StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = StreamEvent),
        (status = 404, body = ErrorBody)))]
pub async fn job_events(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    ApiQuery(query): ApiQuery<StreamQuery>,
    extensions: Extensions,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let opened_by = authorize(
        &state,
        &extensions,
        &headers,
        query.access_token.as_deref(),
        Watched::Job(id),
    )
    .await?;
    let events = state
        .engine()
        .job_events(id, resume_after(&headers, &query))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?;
    Ok(sse_response(
        Events::Job(Box::new(events)),
        state,
        opened_by,
    ))
}

/// A batch's events: `snapshot` (the batch as `GET /v1/batches/{id}` shows
/// it), then `state` (its state changed, it was sealed or it finished) and
/// `progress` (its counts or progress; coalesced, at most four a second),
/// then `end` (the batch as it finished: succeeded, completed with failures,
/// or cancelled once its last running job stopped), and the stream closes.
/// Each event's `id` resumes the stream after it when sent back as
/// `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/batches/{id}/events", tag = "events",
    params(("id" = i64, Path), StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = StreamEvent),
        (status = 404, body = ErrorBody)))]
pub async fn batch_events(
    State(state): State<AppState>,
    PathBatchId(id): PathBatchId,
    ApiQuery(query): ApiQuery<StreamQuery>,
    extensions: Extensions,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let opened_by = authorize(
        &state,
        &extensions,
        &headers,
        query.access_token.as_deref(),
        Watched::Batch(id),
    )
    .await?;
    let events = state
        .engine()
        .batch_events(id, resume_after(&headers, &query))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("batch {id} not found")))?;
    Ok(sse_response(
        Events::Batch(Box::new(events)),
        state,
        opened_by,
    ))
}

/// Where a stream resumes: the `Last-Event-ID` header, else the query's.
fn resume_after(headers: &HeaderMap, query: &StreamQuery) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.last_event_id.as_deref())
        .and_then(|id| id.trim().parse::<i64>().ok())
}

fn sse_response(events: Events, state: AppState, opened_by: Option<String>) -> Response {
    Sse::new(sse_events(events, state, opened_by))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT_EVERY))
        .into_response()
}

/// What a stream watches.
#[derive(Clone, Copy)]
enum Watched {
    Job(JobId),
    Batch(BatchId),
}

impl std::fmt::Display for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Watched::Job(id) => write!(f, "job {id}"),
            Watched::Batch(id) => write!(f, "batch {id}"),
        }
    }
}

/// Lets a stream request in: the server has no token (its streams are
/// open like the rest of its API), the request carries a token with the
/// `read` scope (the server's has every scope), or it carries a stream
/// token that names the job or batch, minted by a token that still works.
/// Answers the id of the stored token the stream is opened on the authority
/// of (the bearer token, or the stream token's minter), which the open
/// stream keeps checking.
async fn authorize(
    state: &AppState,
    extensions: &Extensions,
    headers: &HeaderMap,
    access_token: Option<&str>,
    watched: Watched,
) -> Result<Option<String>, ApiError> {
    let Some(server_token) = state.config().token.as_deref() else {
        return Ok(None);
    };
    let presented = match access_token {
        Some(presented) if bearer_token(headers).is_none() => presented,
        _ => {
            let access = authenticate(state, extensions, headers).await?;
            access.require(Scope::Read)?;
            return Ok(access.stored().map(|token| token.id.clone()));
        }
    };
    match StreamGrant::verify(presented, Some(server_token), Utc::now()) {
        Ok(grant) => {
            minter_works(state, grant.minted_by.as_deref()).await?;
            if !grant.opens(watched) {
                return Err(ApiError::forbidden(format!(
                    "this stream token does not open {watched}'s events"
                )));
            }
            Ok(grant.minted_by)
        }
        Err(Refusal::Expired) => Err(ApiError::unauthorized_because(
            "this stream token has expired: mint a new one (POST /v1/stream-tokens)",
        )),
        Err(Refusal::Outdated) => Err(ApiError::unauthorized_because(
            "this stream token is of an older format: mint a new one (POST /v1/stream-tokens)",
        )),
        Err(Refusal::Invalid) => {
            // A forged token is a guess like a wrong bearer token.
            let client = Client::of(extensions);
            if let Some(wait) = state.auth_failures().throttled(client) {
                return Err(ApiError::too_many_requests(wait));
            }
            state.auth_failures().record(client);
            Err(ApiError::unauthorized_because(
                "this stream token is not valid on this server",
            ))
        }
    }
}

impl StreamGrant {
    fn opens(&self, watched: Watched) -> bool {
        match watched {
            Watched::Job(id) => self.jobs.contains(&id),
            Watched::Batch(id) => self.batches.contains(&id.0),
        }
    }
}

/// A job's or a batch's stream (boxed: each holds a snapshot, a batch's the
/// larger).
enum Events {
    Job(Box<JobEventStream>),
    Batch(Box<BatchEventStream>),
}

impl Events {
    /// The next event as SSE; `None` after the end.
    async fn next(&mut self) -> grafter_engine::Result<Option<Event>> {
        Ok(match self {
            Events::Job(events) => events.next().await?.as_ref().map(job_sse_event),
            Events::Batch(events) => events.next().await?.as_ref().map(batch_sse_event),
        })
    }

    fn watched(&self) -> Watched {
        match self {
            Events::Job(events) => Watched::Job(events.job_id()),
            Events::Batch(events) => Watched::Batch(events.batch_id()),
        }
    }
}

/// The SSE events of a stream, ending with its end or the server's
/// shutdown, or once the stored token it was opened on the authority of
/// (`opened_by`) is revoked or expired: looked up every [`RECHECK_EVERY`]
/// through the token cache, so within about
/// [`crate::token_cache::CACHE_TTL`] and that.
fn sse_events(
    events: Events,
    state: AppState,
    opened_by: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let recheck_at = tokio::time::Instant::now() + RECHECK_EVERY;
    let open = Some((events, state, opened_by, recheck_at));
    stream::unfold(open, |open| async move {
        let (mut events, state, opened_by, mut recheck_at) = open?;
        let next = {
            // Never dropped for a check: the next event is not lost.
            let next = events.next();
            tokio::pin!(next);
            loop {
                tokio::select! {
                    _ = state.shutdown().cancelled() => return None,
                    next = &mut next => break next,
                    _ = tokio::time::sleep_until(recheck_at), if opened_by.is_some() => {
                        if let Err(error) = minter_works(&state, opened_by.as_deref()).await {
                            if error.status_and_message().0 == StatusCode::UNAUTHORIZED {
                                return None;
                            }
                            // The store is unreachable: the stream's own read
                            // tells; the token is looked up again next time.
                        }
                        recheck_at = tokio::time::Instant::now() + RECHECK_EVERY;
                    }
                }
            }
        };
        match next {
            Ok(Some(event)) => Some((Ok(event), Some((events, state, opened_by, recheck_at)))),
            Ok(None) => None,
            Err(error) => {
                // The client reconnects with its Last-Event-ID and misses nothing.
                tracing::warn!(%error, watched = %events.watched(), "an event stream failed");
                None
            }
        }
    })
}

fn job_sse_event(event: &JobStreamEvent) -> Event {
    let (name, id, data) = match event {
        JobStreamEvent::Snapshot { job, id } => ("snapshot", *id, json!(job)),
        JobStreamEvent::State(e) => (
            "state",
            e.seq,
            json!({"job_id": e.job_id, "state": e.state, "attempt": e.attempt, "at": e.at}),
        ),
        JobStreamEvent::Progress(e) => (
            "progress",
            e.seq,
            json!({"job_id": e.job_id, "progress": e.progress, "at": e.at}),
        ),
        JobStreamEvent::End { job, id } => {
            ("end", *id, json!({"deleted": job.is_none(), "job": job}))
        }
    };
    sse_event(name, id, &data)
}

fn batch_sse_event(event: &BatchStreamEvent) -> Event {
    let change = |e: &grafter_store::BatchEvent| {
        json!({"batch_id": e.batch_id, "state": e.state, "open": e.open,
               "finished": e.finished, "counts": e.counts, "progress": e.progress, "at": e.at})
    };
    let (name, id, data) = match event {
        BatchStreamEvent::Snapshot { batch, id } => ("snapshot", *id, json!(batch)),
        BatchStreamEvent::State(e) => ("state", e.seq, change(e)),
        BatchStreamEvent::Progress(e) => ("progress", e.seq, change(e)),
        BatchStreamEvent::End { batch, id } => ("end", *id, json!({"batch": batch})),
    };
    sse_event(name, id, &data)
}

fn sse_event(name: &str, id: i64, data: &serde_json::Value) -> Event {
    Event::default()
        .event(name)
        .id(id.to_string())
        .retry(RECONNECT_AFTER)
        .data(data.to_string())
}

/// The long-poll of `GET /v1/jobs/{id}?wait=`: the job once it changes
/// after `after` (or the wait ends), with its latest event id.
pub async fn wait_for_change(
    state: &AppState,
    id: JobId,
    wait: Duration,
    after: Option<i64>,
) -> Result<(Job, i64), ApiError> {
    state
        .engine()
        .job_change(id, after, wait, state.shutdown())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))
}

/// What a stream token is to open.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamTokenRequest {
    /// Jobs whose event streams it opens (jobs and batches: 1 to 100 ids).
    #[serde(default)]
    #[schema(schema_with = stream_ids)]
    pub jobs: Vec<i64>,
    /// Batches whose event streams it opens.
    #[serde(default)]
    #[schema(schema_with = stream_ids)]
    pub batches: Vec<i64>,
    /// How long it works, in milliseconds (default 15 minutes, at most 24 hours).
    #[schema(schema_with = ttl_ms)]
    pub ttl_ms: Option<i64>,
}

/// Ids a stream token names: positive, at most [`MAX_IDS`].
fn stream_ids() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int64,
                )))
                .minimum(Some(1)),
        )
        .max_items(Some(MAX_IDS))
        .into()
}

fn ttl_ms() -> utoipa::openapi::Schema {
    grafter_core::openapi::millis(1, MAX_TTL_MS as u64, true)
}

/// A minted stream token.
#[derive(Serialize, ToSchema)]
pub struct StreamToken {
    /// Pass it as `?access_token=` to the streams it names.
    pub token: String,
    /// When it stops working: `ttl_ms` from now, or the minting token's
    /// expiry if that is sooner.
    pub expires_at: chrono::DateTime<Utc>,
}

/// Mint a short-lived read-only token for some jobs' and batches' event
/// streams, for a browser's `EventSource` (which cannot send headers). Ids
/// of jobs or batches that do not exist are refused (422). A token minted
/// with a stored token expires no later than it, and stops working when it
/// is revoked.
#[utoipa::path(post, path = "/v1/stream-tokens", tag = "events", request_body = StreamTokenRequest,
    responses((status = 201, body = StreamToken), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn mint_stream_token(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    ApiJson(request): ApiJson<StreamTokenRequest>,
) -> Result<(StatusCode, Json<StreamToken>), ApiError> {
    let ids = request.jobs.len() + request.batches.len();
    if ids == 0 {
        return Err(ApiError::invalid_field(
            "jobs",
            "name at least one job or batch",
        ));
    }
    if ids > MAX_IDS {
        return Err(ApiError::invalid_field(
            "jobs",
            format!("at most {MAX_IDS} jobs and batches per token"),
        ));
    }
    // A token for what does not exist would open only 404s: most likely a
    // mix-up of ids, better told now.
    let store = state.engine().store();
    for &id in &request.jobs {
        if id <= 0 || store.job_get(JobId(id)).await?.is_none() {
            return Err(ApiError::invalid_field(
                "jobs",
                format!("no job has id {id}"),
            ));
        }
    }
    for &id in &request.batches {
        if id <= 0 || store.batch_get(BatchId(id)).await?.is_none() {
            return Err(ApiError::invalid_field(
                "batches",
                format!("no batch has id {id}"),
            ));
        }
    }
    let ttl_ms = request.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(ApiError::invalid_field(
            "ttl_ms",
            format!("must be from 1 to {MAX_TTL_MS} (24 hours)"),
        ));
    }
    let grant = StreamGrant::new(
        access.stored().map(|token| &**token),
        request.jobs.into_iter().map(JobId).collect(),
        request.batches,
        Utc::now() + chrono::Duration::milliseconds(ttl_ms),
    );
    let token = grant.sign(state.config().token.as_deref());
    Ok((
        StatusCode::CREATED,
        Json(StreamToken {
            token,
            expires_at: grant.expires_at,
        }),
    ))
}
