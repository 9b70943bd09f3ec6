//! Login for a server with a token: a form that checks a token once (the
//! server's, or a stored one) and sets a session cookie,
//! `<expiry>.<who>.<HMAC-SHA256(server token, expiry and who)>`, where who is
//! `server` or the stored token's id. Any node holding the same server token
//! verifies it, with no session store; changing the server token ends every
//! session, and a stored token's session ends when the token is revoked or
//! expires (read again at most every `token_cache::CACHE_TTL`). The session has
//! its token's powers: pages hide what it may not do, and a change it may
//! not make is refused with 403.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Extensions, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use grafter_store::Scope;
use maud::html;
use serde::Deserialize;

use super::{
    checked_form, cookie, error_page, html, layout, redirect_with, signed_hex, Ctx, PageBody,
    PageQuery,
};
use crate::access::{self, stored_token, usable, Access, TokenKey};
use crate::api::auth::{bearer_token, secrets_match, token_access};
use crate::error::ApiError;
use crate::state::AppState;
use crate::throttle::{retry_after_secs, Client};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "grafter_session";
/// How long a login lasts.
const SESSION_SECS: i64 = 12 * 3600;

fn signature(token: &str, expires: i64, who: &str) -> String {
    signed_hex(
        token.as_bytes(),
        &[format!("grafter-dashboard-session:{expires}:{who}").as_bytes()],
    )
}

/// Who a session is: the server's token, or a stored token's id.
const SERVER: &str = "server";

/// A session cookie value for `who` valid until `expires` (Unix seconds).
fn session_value(token: &str, expires: i64, who: &str) -> String {
    format!("{expires}.{who}.{}", signature(token, expires, who))
}

/// Who a session cookie value is (`server` or a token id), if it is
/// genuine and unexpired.
fn session_who<'a>(token: &str, value: &'a str) -> Option<&'a str> {
    let (expires, rest) = value.split_once('.')?;
    let (who, sig) = rest.rsplit_once('.')?;
    let expires = expires.parse::<i64>().ok()?;
    (expires > chrono::Utc::now().timestamp()
        && secrets_match(sig.as_bytes(), signature(token, expires, who).as_bytes()))
    .then_some(who)
}

/// The caller of a session: the server's token, or a stored token still
/// usable; `None` for no session, or one that no longer stands.
async fn session_access(state: &AppState, token: &str, value: &str) -> Option<Access> {
    match session_who(token, value)? {
        SERVER => Some(Access::ServerToken),
        id => match stored_token(state, TokenKey::Id(id)).await {
            Ok(Some(stored)) => usable(state, stored).ok(),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(?error, "could not read a session's token");
                None
            }
        },
    }
}

/// What a dashboard change needs, and its audit action, from its route and
/// the action in its path; `None` for what is no change (pages, logout).
fn change_needs(route: &str, path: &str) -> Option<(Scope, String)> {
    let verb = path.rsplit('/').next().unwrap_or_default();
    match route {
        "/jobs/bulk" => Some((Scope::Manage, "jobs.bulk".into())),
        "/jobs/{id}/{action}" => Some((Scope::Manage, format!("job.{verb}"))),
        "/queues/{name}/{action}" => Some((Scope::Queues, format!("queue.{verb}"))),
        "/schedules/{id}/{action}" => Some((Scope::Manage, format!("schedule.{verb}"))),
        _ => None,
    }
}

/// Lets a request through when the server has no token, or it carries a
/// valid session cookie or a token as a bearer header, with the powers of
/// that token: pages need `read`, changes their scope (a queue-limited token
/// makes none here), and a change made is written to the audit log. Pages
/// without a login redirect to the login form and changes are refused. A
/// wrong bearer token counts towards the client's throttle, like the API's.
pub(super) async fn require_login(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = match login_access(&state, request.headers(), request.extensions()).await {
        Ok(Some(access)) => access,
        Ok(None) => return to_login(&request),
        Err(refused) => return refused,
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let path = request.uri().path().to_owned();
    let change = change_needs(&route, &path);
    let needs = change.as_ref().map_or(Scope::Read, |(scope, _)| *scope);
    if route != "/logout" && !access.allows(needs) {
        return error_page(
            StatusCode::FORBIDDEN,
            &format!("Your token does not have the '{}' scope.", needs.name()),
        );
    }
    if change.is_some() && access.is_queue_limited() {
        return error_page(
            StatusCode::FORBIDDEN,
            "A token limited to some queues makes no changes in the dashboard; use the API.",
        );
    }
    if let Some(ctx) = request.extensions_mut().get_mut::<Ctx>() {
        ctx.can_manage = access.allows(Scope::Manage) && !access.is_queue_limited();
        ctx.can_change_queues = access.allows(Scope::Queues) && !access.is_queue_limited();
        ctx.token = access.stored().cloned();
    }
    let response = next.run(request).await;
    if let Some((_, action)) = change {
        if response.extensions().get::<super::Succeeded>().is_some() {
            access::audit(&state, &access, &action, path, None).await;
        }
    }
    response
}

/// The caller of a dashboard request: `Open` without a server token, the
/// session's or the bearer token's; `None` to log in; `Err` with the answer
/// for a throttled client or an unusable bearer token.
async fn login_access(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<Option<Access>, Response> {
    let Some(token) = &state.config().token else {
        return Ok(Some(Access::Open));
    };
    if let Some(value) = cookie(headers, SESSION_COOKIE) {
        if let Some(access) = session_access(state, token, value).await {
            return Ok(Some(access));
        }
    }
    let Some(presented) = bearer_token(headers) else {
        return Ok(None);
    };
    let client = Client::of(extensions);
    if let Some(wait) = state.auth_failures().throttled(client) {
        return Err(too_many_wrong_tokens(wait));
    }
    match token_access(state, presented).await {
        Ok(Some(access)) => Ok(Some(access)),
        Ok(None) => {
            state.auth_failures().record(client);
            Ok(None)
        }
        Err(error) => Err(refused(error)),
    }
}

/// A refusal of the API's kind as a page.
fn refused(error: ApiError) -> Response {
    let (status, message) = error.status_and_message();
    error_page(status, message)
}

/// Pages go to the login form; changes are refused.
fn to_login(request: &Request) -> Response {
    if request.method() == Method::GET {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let next: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
        return Redirect::to(&format!("/login?next={next}")).into_response();
    }
    error_page(
        StatusCode::UNAUTHORIZED,
        "Log in first: this server has a token.",
    )
}

/// The answer to a client throttled for wrong tokens.
fn too_many_wrong_tokens(wait: std::time::Duration) -> Response {
    let secs = retry_after_secs(wait);
    let mut response = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too many wrong tokens from this address. Try again in {secs} seconds."),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// Where to go after logging in.
#[derive(Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// Only paths on this site, so a crafted link cannot send a user elsewhere;
/// anything else is `/`. Checked as a browser will read it: browsers drop
/// tabs and newlines from a URL and treat `\\` as `/`, so `/\t/evil.example`
/// is `//evil.example`, another host. A path must start with one `/` and hold
/// no backslash, whitespace or control character at all (which also keeps
/// CR/LF out of the `Location` header).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path
                    .chars()
                    .any(|c| c == '\\' || c.is_whitespace() || c.is_control()) =>
        {
            path
        }
        _ => "/",
    }
}

pub(super) async fn login_page(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    PageQuery(query): PageQuery<LoginQuery>,
) -> Response {
    if state.config().token.is_none() {
        return Redirect::to("/").into_response();
    }
    let next = local_path(query.next.as_deref()).to_owned();
    html(layout::bare(
        "Log in",
        html! {
            @if let Some(flash) = &ctx.flash { (layout::flash(flash)) }
            form.login method="post" action="/login" {
                h1 { "Grafter" }
                p { "This server has a token. Enter it to open the dashboard." }
                (layout::csrf_field(&ctx))
                input type="hidden" name="next" value=(next);
                label { "Token " input type="password" name="token" autocomplete="current-password" required autofocus; }
                button type="submit" { "Log in" }
            }
        },
    ))
}

pub(super) async fn login(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> Response {
    let form = match checked_form(&state, &headers, &body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    let Some(token) = &state.config().token else {
        return Redirect::to("/").into_response();
    };
    let client = Client::of(&extensions);
    if let Some(wait) = state.auth_failures().throttled(client) {
        return too_many_wrong_tokens(wait);
    }
    let next = local_path(form.get("next")).to_owned();
    let given = form.get("token").unwrap_or_default();
    let again = |message: &str| {
        let to: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
        redirect_with(&format!("/login?next={to}"), false, message)
    };
    let now = chrono::Utc::now().timestamp();
    let (who, expires) = match token_access(&state, given).await {
        Ok(Some(Access::Token(stored))) => {
            // A session lasts no longer than its token.
            let ends = stored.expires_at.map_or(i64::MAX, |at| at.timestamp());
            (stored.id.clone(), (now + SESSION_SECS).min(ends))
        }
        Ok(Some(_)) => (SERVER.to_owned(), now + SESSION_SECS),
        Ok(None) => {
            state.auth_failures().record(client);
            return again("That token is not a token of this server.");
        }
        Err(error) => return again(error.status_and_message().1),
    };
    let max_age = expires - now;
    let value = format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict",
        session_value(token, expires, &who)
    );
    let mut response = redirect_with(&next, true, "Logged in.");
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

pub(super) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> Response {
    if let Err(refused) = checked_form(&state, &headers, &body) {
        return *refused;
    }
    let mut response = redirect_with("/login", true, "Logged out.");
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("grafter_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let later = chrono::Utc::now().timestamp() + 60;
        let value = session_value("secret", later, "tok_1");
        assert_eq!(session_who("secret", &value), Some("tok_1"));
        assert_eq!(
            session_who("other", &value),
            None,
            "another server token's session"
        );
        assert_eq!(
            session_who("secret", &session_value("secret", later - 120, SERVER)),
            None,
            "expired"
        );
        assert_eq!(
            session_who(
                "secret",
                &format!(
                    "{}.tok_1.{}",
                    later + 999,
                    signature("secret", later, "tok_1")
                )
            ),
            None,
            "moved expiry"
        );
        assert_eq!(
            session_who(
                "secret",
                &format!("{later}.server.{}", signature("secret", later, "tok_1"))
            ),
            None,
            "another caller"
        );
        assert_eq!(session_who("secret", "garbage"), None);
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(local_path(Some("/jobs?state=dead")), "/jobs?state=dead");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
        for hostile in [
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "/./\\evil.example",
            "\\\\evil.example",
            " //evil.example",
            "/jobs\r\nSet-Cookie: grafter_session=x",
            "/\u{0}",
            "/\u{7f}",
            "/\u{a0}/evil.example",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(local_path(Some(hostile)), "/", "{hostile:?}");
        }
        assert_eq!(local_path(Some("/jobs/1?x=%2F#top")), "/jobs/1?x=%2F#top");
        assert_eq!(local_path(Some("/jobs?q=Grüße")), "/jobs?q=Grüße");
    }
}
