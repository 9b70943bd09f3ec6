//! Requests a browser was made to send by a page of another site
//! (docs/access.md, "Browsers and other sites"). A browser sends a page's
//! requests to any server it names, cookies included, and a form or a
//! `text/plain` fetch needs no preflight; so an open server on loopback, or
//! a logged-in dashboard, would take changes from any page its user visits.
//! Programs (curl, the CLI, the clients) send neither `Origin` nor
//! `Sec-Fetch-Site`, and are let through.
//!
//! A page of another site can also reach an open loopback server by a name
//! that resolves to 127.0.0.1 only after the page loaded (DNS rebinding):
//! the browser then takes the server for that site and lets the page read
//! its answers. Such a request names that site in its `Host`, so an open
//! server listening on loopback answers only to loopback names.

use std::net::{IpAddr, SocketAddr};

use axum::extract::Request;
use axum::http::header::{HOST, ORIGIN};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::api::error_at;
use crate::error::ApiError;

/// Refuses, with 403 `cross_origin`, a request a browser sent for a page of
/// another origin, unless it is a plain navigation (a link followed to a
/// page), whose answer the browser shows to its user and never to the page.
pub async fn refuse_cross_origin(request: Request, next: Next) -> Response {
    if is_navigation(request.method(), request.headers()) {
        return next.run(request).await;
    }
    if let Some(why) = cross_origin(request.headers()) {
        return error_at(
            request.uri().path(),
            ApiError::cross_origin(why),
            "This request came from a page of another site, so it was refused. \
             Open the dashboard itself and try again.",
        );
    }
    next.run(request).await
}

/// A GET or HEAD the browser makes to show the answer as a page.
fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && header(headers, "sec-fetch-mode") == Some("navigate")
}

/// Why a request comes from another origin, if it does. A browser that
/// sends `Sec-Fetch-Site` has compared the origins itself, behind any proxy
/// that rewrites `Host` (`same-site` is refused too: every port of
/// `localhost` is the same site); an older one sends `Origin` on every
/// request that could change something, compared here with `Host`.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = header(headers, "sec-fetch-site") {
        return (!matches!(site, "same-origin" | "none"))
            .then(|| format!("Sec-Fetch-Site is '{site}': a page of another origin sent it"));
    }
    let origin = header(headers, ORIGIN.as_str())?;
    let host = header(headers, HOST.as_str()).unwrap_or_default();
    (!same_authority(origin, host))
        .then(|| format!("the request comes from a page of {origin}, not of {host}"))
}

/// Whether an `Origin` (`scheme://host[:port]`) names the `Host` header's
/// host and port, a port left out being its scheme's default.
fn same_authority(origin: &str, host: &str) -> bool {
    let Ok(origin) = origin.parse::<Uri>() else {
        return false; // `null`: a sandboxed page, a file, a redirect across origins
    };
    let (Some(scheme), Some(from), Ok(host)) = (
        origin.scheme_str(),
        origin.authority(),
        host.parse::<Authority>(),
    ) else {
        return false;
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    from.host().eq_ignore_ascii_case(host.host())
        && from.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `app`, answering only requests for a loopback name when it serves with
/// no token on loopback (`listening`); as it was otherwise: with a token,
/// a rebound page has none to send, and an open server elsewhere is the
/// operator's choice (`--insecure`) to be reached by any name.
pub fn only_loopback_hosts_when_open(app: Router, open: bool, listening: SocketAddr) -> Router {
    if !open || !listening.ip().to_canonical().is_loopback() {
        return app;
    }
    app.layer(axum::middleware::from_fn(refuse_other_hosts))
}

/// Refuses, with 403 `host_not_allowed`, a request whose `Host` is not a
/// loopback name or address. One without `Host` (HTTP/1.0) came from no
/// browser and goes on.
async fn refuse_other_hosts(request: Request, next: Next) -> Response {
    let host = header(request.headers(), HOST.as_str());
    if let Some(host) = host.filter(|host| !is_loopback_host(host)) {
        return error_at(
            request.uri().path(),
            ApiError::host_not_allowed(format!(
                "this server runs without a token on loopback and answers only to \
                 localhost or a loopback address, not '{host}'"
            )),
            "This server runs without a token on loopback: open it as localhost or 127.0.0.1.",
        );
    }
    next.run(request).await
}

/// `localhost`, a name under `.localhost` (which resolve only to loopback,
/// RFC 6761), or a loopback address, with any port.
fn is_loopback_host(host: &str) -> bool {
    let Ok(authority) = host.parse::<Authority>() else {
        return false;
    };
    let name = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let address = name.trim_start_matches('[').trim_end_matches(']');
    address
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_matches_its_own_host_and_port_only() {
        for (origin, host) in [
            ("http://127.0.0.1:7380", "127.0.0.1:7380"),
            ("http://LOCALHOST:7380", "localhost:7380"),
            ("https://grafter.example.com", "grafter.example.com"),
            ("https://grafter.example.com", "grafter.example.com:443"),
            ("http://[::1]:7380", "[::1]:7380"),
        ] {
            assert!(same_authority(origin, host), "{origin} {host}");
        }
        for (origin, host) in [
            ("http://evil.example", "127.0.0.1:7380"),
            ("http://localhost:3000", "localhost:7380"),
            ("https://grafter.example.com", "grafter.example.com:80"),
            ("null", "127.0.0.1:7380"),
            ("http://127.0.0.1:7380", ""),
        ] {
            assert!(!same_authority(origin, host), "{origin} {host}");
        }
    }

    #[test]
    fn only_loopback_names_and_addresses_are_loopback_hosts() {
        for host in [
            "localhost",
            "localhost:7380",
            "LocalHost.:7380",
            "grafter.localhost:7380",
            "127.0.0.1:7380",
            "127.1.2.3",
            "[::1]:7380",
            "[::ffff:127.0.0.1]:7380",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "rebound.example:7380",
            "localhost.example.com",
            "10.0.0.1:7380",
            "[::2]:7380",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
