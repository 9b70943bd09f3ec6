//! Login for a server with a token: a form that checks the token once and
//! sets a session cookie, `<expiry>.<HMAC-SHA256(token, expiry)>`. Any node
//! holding the same token verifies it, with no session store; changing the
//! token ends every session.

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Extensions, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::html;
use serde::Deserialize;

use super::{checked_form, cookie, error_page, html, layout, redirect_with, signed_hex, Ctx};
use crate::api::auth::{bearer_token, secrets_match};
use crate::state::AppState;
use crate::throttle::{retry_after_secs, Client};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "grafter_session";
/// How long a login lasts.
const SESSION_SECS: i64 = 12 * 3600;

fn signature(token: &str, expires: i64) -> String {
    signed_hex(
        token.as_bytes(),
        &[format!("grafter-dashboard-session:{expires}").as_bytes()],
    )
}

/// A session cookie value valid until `expires` (Unix seconds).
fn session_value(token: &str, expires: i64) -> String {
    format!("{expires}.{}", signature(token, expires))
}

/// Whether a session cookie value is genuine and unexpired.
fn session_valid(token: &str, value: &str) -> bool {
    let Some((expires, sig)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return false;
    };
    expires > chrono::Utc::now().timestamp()
        && secrets_match(sig.as_bytes(), signature(token, expires).as_bytes())
}

/// Lets a request through when the server has no token, or it carries a valid
/// session cookie or the token as a bearer header. Otherwise pages redirect to
/// the login form and changes are refused. A wrong bearer token counts
/// towards the client's throttle, like the API's.
pub(super) async fn require_login(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.config().token else {
        return next.run(request).await;
    };
    let headers = request.headers();
    if cookie(headers, SESSION_COOKIE).is_some_and(|v| session_valid(token, v)) {
        return next.run(request).await;
    }
    if let Some(presented) = bearer_token(headers) {
        let client = Client::of(request.extensions());
        if let Some(wait) = state.auth_failures().throttled(client) {
            return too_many_wrong_tokens(wait);
        }
        if secrets_match(presented.as_bytes(), token.as_bytes()) {
            return next.run(request).await;
        }
        state.auth_failures().record(client);
    }
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
    Query(query): Query<LoginQuery>,
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
    body: Bytes,
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
    if !secrets_match(given.as_bytes(), token.as_bytes()) {
        state.auth_failures().record(client);
        let to: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
        return redirect_with(
            &format!("/login?next={to}"),
            false,
            "That token is not this server's token.",
        );
    }
    let expires = chrono::Utc::now().timestamp() + SESSION_SECS;
    let value = format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict",
        session_value(token, expires)
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
    body: Bytes,
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
        assert!(session_valid("secret", &session_value("secret", later)));
        assert!(
            !session_valid("other", &session_value("secret", later)),
            "another token's session"
        );
        assert!(
            !session_valid("secret", &session_value("secret", later - 120)),
            "expired"
        );
        assert!(
            !session_valid(
                "secret",
                &format!("{}.{}", later + 999, signature("secret", later))
            ),
            "moved expiry"
        );
        assert!(!session_valid("secret", "garbage"));
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
