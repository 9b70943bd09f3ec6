//! The bearer-token check of `/v1` (and of `/metrics` and `/openapi.json`
//! unless public) when the server has a token: who the caller is
//! (`access`), whether the route allows it, and the audit log entry of a
//! change it made. Wrong tokens are throttled per client (`throttle`).

use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{Extensions, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use grafter_store::Scope;
use sha2::{Digest, Sha256};

use crate::access::{self, stored_token, usable, Access, TokenKey};
use crate::error::ApiError;
use crate::state::AppState;
use crate::throttle::Client;

/// What a handler adds to its answer for the audit log entry of its change.
#[derive(Clone, Debug)]
pub struct AuditDetails(pub serde_json::Value);

/// Lets a request through if its caller has the scope its route needs
/// (`access::route_needs`; a queue-limited token makes only the changes
/// that keep to its queues, `access::stays_within_queues`), with its
/// [`Access`] in the request's extensions for the handler's queue checks;
/// records a change it made in the audit log.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let access = authenticate(&state, request.extensions(), request.headers()).await?;
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let route = matched.strip_prefix("/v1").unwrap_or(&matched);
    let (scope, action) = match route {
        "/metrics" => (Scope::Metrics, None),
        _ => access::route_needs(request.method(), route),
    };
    access.require(scope)?;
    // Any change, audited or not (sealing a batch is not).
    if !access::only_reads(request.method())
        && access.is_queue_limited()
        && !access::stays_within_queues(route)
    {
        return Err(ApiError::forbidden(format!(
            "a token limited to some queues cannot {} /v1{route}: it reaches beyond its queues",
            request.method()
        )));
    }
    // The whole path: under `nest`, the request's own URI has lost `/v1`.
    let target = request
        .extensions()
        .get::<OriginalUri>()
        .map_or(request.uri().path(), |uri| uri.0.path())
        .to_owned();
    request.extensions_mut().insert(access.clone());
    let mut response = next.run(request).await;
    if let Some(action) = action.filter(|_| response.status().is_success()) {
        let details = response.extensions_mut().remove::<AuditDetails>();
        access::audit(&state, &access, action, target, details.map(|d| d.0)).await;
    }
    Ok(response)
}

/// Who sent a request: anyone when the server has no token; the server's
/// token; or a stored token, unrevoked and unexpired. Wrong tokens are
/// throttled per client; a revoked or expired one is no guess and is not.
pub(crate) async fn authenticate(
    state: &AppState,
    extensions: &Extensions,
    headers: &HeaderMap,
) -> Result<Access, ApiError> {
    if state.config().token.is_none() {
        return Ok(Access::Open);
    }
    let client = Client::of(extensions);
    if let Some(wait) = state.auth_failures().throttled(client) {
        return Err(ApiError::too_many_requests(wait));
    }
    match bearer_token(headers) {
        Some(presented) => match token_access(state, presented).await? {
            Some(access) => Ok(access),
            None => {
                state.auth_failures().record(client);
                Err(ApiError::unauthorized())
            }
        },
        // No token at all is a client not set up, not a guess.
        None => Err(ApiError::unauthorized()),
    }
}

/// The caller a presented secret makes (on a server with a token): the
/// server's token, a usable stored token (401 for a revoked or expired
/// one), or `None` for a secret that is neither.
pub(crate) async fn token_access(
    state: &AppState,
    presented: &str,
) -> Result<Option<Access>, ApiError> {
    if let Some(token) = &state.config().token {
        if secrets_match(presented.as_bytes(), token.as_bytes()) {
            return Ok(Some(Access::ServerToken));
        }
    }
    match stored_token(state, TokenKey::Secret(presented)).await? {
        Some(token) => usable(state, token).map(Some),
        None => Ok(None),
    }
}

/// The token of an `Authorization: Bearer` header. The scheme is matched
/// in any case, as RFC 7235 has it (`bearer`, `BEARER`), then spaces.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Whether a presented secret (a token, a signature) is the expected one,
/// in a time that tells neither its length nor where it differs: both are
/// hashed to 32-byte digests, and every byte of those is compared.
pub(crate) fn secrets_match(presented: &[u8], expected: &[u8]) -> bool {
    let (presented, expected) = (Sha256::digest(presented), Sha256::digest(expected));
    let differences = presented
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Kept opaque so the compiler cannot turn the fold into an early exit.
    std::hint::black_box(differences) == 0
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, secrets_match};
    use axum::http::{header::AUTHORIZATION, HeaderMap, HeaderValue};

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let token = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            bearer_token(&headers).map(str::to_owned)
        };
        for value in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR  t0k"] {
            assert_eq!(token(value).as_deref(), Some("t0k"), "{value}");
        }
        for value in ["Basic dDBr", "Bearert0k", "Bearer", "Bearers t0k", "t0k"] {
            assert_eq!(token(value), None, "{value}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn secrets_match_only_themselves_whatever_their_length() {
        let token = b"s3cret-token-0123456789";
        assert!(secrets_match(token, token));
        for other in [
            &b""[..],
            b"s",
            b"s3cret-token-012345678",
            b"s3cret-token-01234567890",
            b"s3cret-token-0123456788",
            b"S3cret-token-0123456789",
        ] {
            assert!(!secrets_match(other, token), "{other:?}");
        }
    }
}
