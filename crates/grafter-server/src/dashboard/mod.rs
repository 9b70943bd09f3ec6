//! The web dashboard: server-rendered HTML (maud) with a little vanilla JS and
//! CSS compiled into the binary, served at `/` beside the API.
//!
//! Every page reads only what is kept for it (counters, keyset pages, one job),
//! so a page costs the same at ten jobs or ten million. Every change is a POST
//! carrying a CSRF token the server derived from the browser's cookies (its
//! random `grafter_csrf` nonce and its session, both `SameSite=Strict` and
//! `HttpOnly`) with a key only the server holds, and answers with a redirect
//! and a visible message. Everything from jobs is escaped by the templates, and a
//! strict Content-Security-Policy allows only our own script and style.
//!
//! When the server has a token, the dashboard asks for it once (`/login`) and
//! keeps a signed, expiring `HttpOnly` session cookie; `Authorization: Bearer`
//! works too.

mod auth;
mod batches;
mod chart;
mod job;
mod job_dependencies;
mod jobs;
mod layout;
mod overview;
mod queues;
mod schedules;
mod workers;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, KeyInit, Mac};
use maud::Markup;
use serde::de::DeserializeOwned;
use sha2::Sha256;

use grafter_core::JobId;
use grafter_store::ApiToken;

use crate::api::auth::secrets_match;
use crate::state::AppState;
use crate::stream_tokens::StreamGrant;

pub use auth::SESSION_COOKIE;

/// The policy every dashboard answer carries: our own script, style and
/// images only, no framing, forms post only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, to merge into the main router.
pub fn routes(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(overview::page))
        .route("/overview/live", get(overview::live))
        .route("/jobs", get(jobs::page))
        .route("/jobs/bulk", post(jobs::bulk))
        .route("/jobs/{id}", get(job::page))
        .route("/jobs/{id}/live", get(job::live))
        .route("/jobs/{id}/{action}", post(job::act))
        .route("/queues", get(queues::page))
        .route("/queues/{name}/{action}", post(queues::act))
        .route("/schedules", get(schedules::page))
        .route("/schedules/{id}", get(schedules::show))
        .route("/schedules/{id}/{action}", post(schedules::act))
        .route("/workers", get(workers::page))
        .route("/batches", get(batches::page))
        .route("/batches/{id}", get(batches::show))
        .route("/batches/{id}/live", get(batches::live))
        .route("/logout", post(auth::logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_login,
        ));
    Router::new()
        .merge(pages)
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/favicon.ico", get(favicon))
        .layer(middleware::from_fn_with_state(state, context))
}

/// What every page needs from the request: the CSRF token to put in forms and
/// the message left by the last action.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The token this browser's forms carry ([`csrf_token`]).
    pub csrf: String,
    /// The message the last action left, shown once.
    pub flash: Option<Flash>,
    /// Whether a login is in force, so pages offer to log out.
    pub logged_in: bool,
    /// Whether the caller may change jobs and schedules (else their forms
    /// are not shown).
    pub can_manage: bool,
    /// Whether the caller may pause and resume queues.
    pub can_change_queues: bool,
    /// The caller's stored token, if it is one: the stream tokens of its
    /// pages are minted by it (ending when it does).
    pub token: Option<Arc<ApiToken>>,
}

/// Marks the answer of a change that was made, for the audit log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Succeeded;

/// A message shown once at the top of the next page.
#[derive(Clone, Debug, PartialEq)]
pub struct Flash {
    /// Whether it reports success.
    pub ok: bool,
    /// What to say.
    pub text: String,
}

const CSRF_COOKIE: &str = "grafter_csrf";
const FLASH_COOKIE: &str = "grafter_flash";

/// A cookie's value from the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// HMAC-SHA256 of `parts` in order under `key`, as hex.
fn signed_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The browser's `grafter_csrf` nonce, when it has a well-formed one.
fn csrf_nonce(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, CSRF_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The CSRF token of a browser with this nonce and session cookie (empty
/// without one): signed with the server's token, so every node holding it
/// accepts the forms of any other, or without a token with this process's
/// random key. A double submit that only compared cookie and field would
/// accept any pair planted by a sibling site, which may set cookies for this
/// host; a pair the server never signed is refused here, and a session's
/// forms are bound to that session.
fn csrf_token(state: &AppState, nonce: &str, session: &str) -> String {
    let key = match &state.config().token {
        Some(token) => token.as_bytes(),
        None => state.process_key(),
    };
    signed_hex(
        key,
        &[
            b"grafter-dashboard-csrf:",
            nonce.as_bytes(),
            b".",
            session.as_bytes(),
        ],
    )
}

/// Sets up [`Ctx`] for every dashboard request: creates the CSRF nonce
/// cookie when missing, takes the flash message (clearing it, except for the
/// background refreshes, which must not eat it), and adds the security
/// headers.
async fn context(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let existing = csrf_nonce(headers).map(str::to_owned);
    let is_live = request.uri().path().ends_with("/live");
    let flash = if is_live {
        None
    } else {
        cookie(headers, FLASH_COOKIE).and_then(decode_flash)
    };
    let nonce = existing
        .clone()
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()));
    let session = cookie(headers, SESSION_COOKIE);
    let ctx = Ctx {
        csrf: csrf_token(&state, &nonce, session.unwrap_or_default()),
        flash: flash.clone(),
        logged_in: session.is_some(),
        // Set by `auth::require_login` from the caller's scopes.
        can_manage: false,
        can_change_queues: false,
        token: None,
    };
    request.extensions_mut().insert(ctx.clone());
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    if existing.is_none() {
        let value = format!("{CSRF_COOKIE}={nonce}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(header::SET_COOKIE, v);
        }
    }
    if flash.is_some() && !h.contains_key(header::LOCATION) {
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "grafter_flash=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
            ),
        );
    }
    add_security_headers(h);
    response
}

/// The headers every dashboard answer carries (docs/dashboard.md).
fn add_security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

fn decode_flash(value: &str) -> Option<Flash> {
    let decoded: String = form_urlencoded::parse(format!("f={value}").as_bytes())
        .next()?
        .1
        .into_owned();
    let (kind, text) = decoded.split_once('|')?;
    Some(Flash {
        ok: kind == "ok",
        text: text.chars().take(500).collect(),
    })
}

/// A redirect to `to` that shows `text` there once.
fn redirect_with(to: &str, ok: bool, text: &str) -> Response {
    let encoded: String = form_urlencoded::byte_serialize(
        format!("{}|{text}", if ok { "ok" } else { "error" }).as_bytes(),
    )
    .collect();
    let mut response = Redirect::to(to).into_response();
    if ok {
        response.extensions_mut().insert(Succeeded);
    }
    let value = format!("{FLASH_COOKIE}={encoded}; Path=/; Max-Age=60; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// A form body: every field in order, repeated names kept.
pub struct FormData(Vec<(String, String)>);

impl FormData {
    fn parse(body: &Bytes) -> Self {
        FormData(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of a field.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a field.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a state-changing form and checks its CSRF token against the one
/// the server derives from the request's cookies ([`csrf_token`]). A
/// mismatch is refused with 403 (the boxed answer) and changes nothing.
fn checked_form(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<FormData, Box<Response>> {
    let form = FormData::parse(body);
    let sent = form.get("csrf").unwrap_or_default();
    let expected = csrf_nonce(headers).map(|nonce| {
        csrf_token(
            state,
            nonce,
            cookie(headers, SESSION_COOKIE).unwrap_or_default(),
        )
    });
    if !expected.is_some_and(|expected| secrets_match(sent.as_bytes(), expected.as_bytes())) {
        return Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this dashboard (CSRF check failed). Reload the page and try again.",
        )));
    }
    Ok(form)
}

/// Path parameters, a segment that cannot be read (not UTF-8 once
/// percent-decoded) answering the HTML 404: it names nothing there is.
pub struct PagePath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PagePath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| PagePath(path.0))
            .map_err(|e| error_page(StatusCode::NOT_FOUND, &e.body_text()))
    }
}

/// A form's body, one that cannot be read (a malformed chunked encoding, a
/// connection cut short, one over the size limit) answering the HTML error
/// page with its status. (One that does not arrive in time is answered 408
/// by the connection, whatever answers here.)
pub struct PageBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for PageBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(PageBody)
            .map_err(|e| error_page(e.status(), &e.body_text()))
    }
}

/// A query string, one it cannot read (a field given twice, say) answering
/// an HTML 400.
pub struct PageQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for PageQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| PageQuery(query.0))
            .map_err(|e| error_page(StatusCode::BAD_REQUEST, &e.body_text()))
    }
}

/// How long a page's stream token works; a page left open longer polls.
const STREAM_TOKEN_TTL: chrono::Duration = chrono::Duration::hours(1);

/// An event stream's URL (`path`) with a token for these jobs and batches,
/// minted by the caller's token: the browser's `EventSource` sends no
/// `Authorization` header.
fn stream_url(
    state: &AppState,
    ctx: &Ctx,
    path: &str,
    jobs: Vec<JobId>,
    batches: Vec<i64>,
) -> String {
    let grant = StreamGrant::new(
        ctx.token.as_deref(),
        jobs,
        batches,
        chrono::Utc::now() + STREAM_TOKEN_TTL,
    );
    let token = grant.sign(state.config().token.as_deref());
    format!("{path}?access_token={token}")
}

/// An HTML answer with security headers added by [`context`].
fn html(markup: Markup) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        markup.into_string(),
    )
        .into_response()
}

/// A page explaining what went wrong, with the security headers itself: it
/// is also answered outside the dashboard's routes (an unknown path, a
/// request refused before any route).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = layout::bare(
        status.canonical_reason().unwrap_or("Error"),
        maud::html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.flash.error { (message) }
            p { a href="/" { "Back to the overview" } }
        },
    );
    let mut response = (status, html(body)).into_response();
    add_security_headers(response.headers_mut());
    response
}

/// A store failure on a page load: 404 for a missing job, 503 when storage is
/// unreachable, else 500, each with the store's explanation.
fn store_error(e: impl Into<crate::error::ApiError>) -> Response {
    let api = e.into();
    error_page(api.status(), api.message())
}

/// Why a change was refused, as the API would say it (never the database's
/// own text).
fn explain(e: impl Into<crate::error::ApiError>) -> String {
    e.into().message().to_owned()
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("assets/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("assets/app.js"),
    )
}

/// Browsers ask for `/favicon.ico` on every page whether or not a page names
/// it; answering spares each console a 404.
async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/x-icon"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_bytes!("assets/favicon.ico").as_slice(),
    )
}
