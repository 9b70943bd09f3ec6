//! Bearer-token check for `/v1` when the server has a token, with wrong
//! tokens throttled per client (`throttle`).

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{Extensions, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;
use crate::throttle::Client;

/// Refuses `/v1` requests without the server's token, when it has one; a
/// client that sent too many wrong tokens is refused with 429 until its
/// window ends (`throttle`).
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_bearer(&state, request.extensions(), request.headers())?;
    Ok(next.run(request).await)
}

/// Whether a request may pass: the server has no token, or the request's
/// `Authorization: Bearer` is it. Wrong tokens are throttled per client.
pub(crate) fn check_bearer(
    state: &AppState,
    extensions: &Extensions,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(token) = &state.config().token else {
        return Ok(());
    };
    let client = Client::of(extensions);
    if let Some(wait) = state.auth_failures().throttled(client) {
        return Err(ApiError::too_many_requests(wait));
    }
    match bearer_token(headers) {
        Some(presented) if secrets_match(presented.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => {
            state.auth_failures().record(client);
            Err(ApiError::unauthorized())
        }
        // No token at all is a client not set up, not a guess.
        None => Err(ApiError::unauthorized()),
    }
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
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
    use super::secrets_match;

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
