//! Short-lived read-only tokens for event streams (docs/events.md). A
//! browser's `EventSource` cannot send an `Authorization` header, so the app
//! mints a token scoped to some jobs and batches (`POST /v1/stream-tokens`,
//! with its own token) and the page passes it as `?access_token=`.
//!
//! A token is `gst1.<expires, unix ms>.<job ids>.<batch ids>.<minter>.<mac>`:
//! ids comma-separated, `minter` the id of the stored token that minted it
//! (empty for the server's token), the MAC an HMAC-SHA256 (hex) of
//! everything before it, under a key derived from the server's token. So
//! every node that shares the server's token verifies it without storing
//! anything, and changing the server's token revokes them all. A token a
//! stored token minted expires no later than that token, and works only
//! while it does: [`minter_works`] looks it up through the token cache, so
//! its revocation ends its stream tokens within
//! [`crate::token_cache::CACHE_TTL`], as it ends the token itself. Without a
//! server token the streams are open anyway; tokens are then signed with a
//! key of this process alone.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use grafter_core::JobId;
use grafter_store::ApiToken;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::access::{stored_token, unusable_because, TokenKey};
use crate::api::auth::secrets_match;
use crate::error::ApiError;
use crate::state::AppState;

const PREFIX: &str = "gst1";
/// Most jobs and batches one token names.
pub const MAX_IDS: usize = 100;
/// Longest life of a token.
pub const MAX_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// A token's life when the request does not say.
pub const DEFAULT_TTL_MS: i64 = 15 * 60 * 1000;

/// What a token gives access to, until when, on whose authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamGrant {
    /// Jobs whose streams it opens.
    pub jobs: Vec<JobId>,
    /// Batches whose streams it opens.
    pub batches: Vec<i64>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// The id of the stored token that minted it, which it works only while
    /// that token does; `None` for the server's token (and an open server).
    pub minted_by: Option<String>,
}

/// Why a presented token opens nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token, or not signed with this server's key: 401.
    Invalid,
    /// Past its expiry: 401.
    Expired,
    /// Signed by this server in the older format without the minter (one
    /// field fewer), so it cannot be told whether a stored token that is
    /// now revoked minted it: 401, not a guess.
    Outdated,
}

/// The key tokens are signed with, derived from the server's token (or
/// random for this process when there is none).
fn key(server_token: Option<&str>) -> Vec<u8> {
    match server_token {
        Some(token) => mac(token.as_bytes(), b"grafter stream tokens v1"),
        None => {
            static PROCESS_KEY: OnceLock<[u8; 32]> = OnceLock::new();
            PROCESS_KEY.get_or_init(rand::random).to_vec()
        }
    }
}

fn mac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn join(ids: impl Iterator<Item = i64>) -> String {
    ids.map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

fn split(ids: &str) -> Option<Vec<i64>> {
    if ids.is_empty() {
        return Some(Vec::new());
    }
    ids.split(',').map(|id| id.parse().ok()).collect()
}

impl StreamGrant {
    /// A grant of `jobs` and `batches` until `expires_at`, minted by
    /// `minter` (the stored token of the request; `None` for the server's
    /// token or an open server): it names that token and ends no later than
    /// it does.
    pub fn new(
        minter: Option<&ApiToken>,
        jobs: Vec<JobId>,
        batches: Vec<i64>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        let expires_at = match minter.and_then(|token| token.expires_at) {
            Some(end) => expires_at.min(end),
            None => expires_at,
        };
        StreamGrant {
            jobs,
            batches,
            expires_at,
            minted_by: minter.map(|token| token.id.clone()),
        }
    }

    /// The token for this grant.
    pub fn sign(&self, server_token: Option<&str>) -> String {
        let body = format!(
            "{PREFIX}.{}.{}.{}.{}",
            self.expires_at.timestamp_millis(),
            join(self.jobs.iter().map(|id| id.0)),
            join(self.batches.iter().copied()),
            self.minted_by.as_deref().unwrap_or_default(),
        );
        let mac = hex::encode(mac(&key(server_token), body.as_bytes()));
        format!("{body}.{mac}")
    }

    /// The grant of a presented token, if this server signed it and it has
    /// not expired by `now`. Whether its minter still works is
    /// [`minter_works`]'s to tell.
    pub fn verify(
        token: &str,
        server_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, Refusal> {
        let (body, presented) = token.rsplit_once('.').ok_or(Refusal::Invalid)?;
        let expected = hex::encode(mac(&key(server_token), body.as_bytes()));
        if !secrets_match(presented.as_bytes(), expected.as_bytes()) {
            return Err(Refusal::Invalid);
        }
        let parts: Vec<&str> = body.split('.').collect();
        let [PREFIX, expires, jobs, batches, minter] = parts[..] else {
            return Err(match parts[..] {
                [PREFIX, _, _, _] => Refusal::Outdated,
                _ => Refusal::Invalid,
            });
        };
        let expires_at = expires
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or(Refusal::Invalid)?;
        let grant = StreamGrant {
            jobs: split(jobs)
                .ok_or(Refusal::Invalid)?
                .into_iter()
                .map(JobId)
                .collect(),
            batches: split(batches).ok_or(Refusal::Invalid)?,
            expires_at,
            minted_by: (!minter.is_empty()).then(|| minter.to_owned()),
        };
        if grant.expires_at <= now {
            return Err(Refusal::Expired);
        }
        Ok(grant)
    }
}

/// Whether the stored token `minted_by` names (a stream token's minter, or
/// the token a stream was opened with) still works: read through the token
/// cache, as every request's token is, so a revocation or an expiry reaches
/// this node within [`crate::token_cache::CACHE_TTL`]. `Ok` for `None` (the
/// server's token, which cannot be revoked); 401 for a token revoked,
/// expired or gone.
pub async fn minter_works(state: &AppState, minted_by: Option<&str>) -> Result<(), ApiError> {
    let Some(id) = minted_by else {
        return Ok(());
    };
    let why = match stored_token(state, TokenKey::Id(id)).await? {
        None => "no longer exists",
        Some(token) => match unusable_because(&token, state.engine().now()) {
            None => return Ok(()),
            Some(why) => why,
        },
    };
    Err(ApiError::unauthorized_because(format!(
        "the token that minted this stream token {why}: mint a new one with a token that works"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> StreamGrant {
        StreamGrant {
            jobs: vec![JobId(7), JobId(42)],
            batches: vec![3],
            expires_at: DateTime::from_timestamp_millis(2_000_000_000_000).unwrap(),
            minted_by: None,
        }
    }

    fn stored(expires_at: Option<DateTime<Utc>>) -> ApiToken {
        ApiToken {
            id: "tok_0123456789abcdef".into(),
            name: "app".into(),
            scopes: vec![grafter_store::Scope::Read],
            queues: Vec::new(),
            expires_at,
            created_at: DateTime::from_timestamp_millis(0).unwrap(),
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_token_verifies_under_its_key_until_it_expires() {
        let token = grant().sign(Some("server-token-0123456789"));
        assert!(token.starts_with("gst1.2000000000000.7,42.3.."), "{token}");
        let before = DateTime::from_timestamp_millis(1_999_999_999_999).unwrap();
        assert_eq!(
            StreamGrant::verify(&token, Some("server-token-0123456789"), before),
            Ok(grant())
        );
        assert_eq!(
            StreamGrant::verify(&token, Some("server-token-0123456789"), grant().expires_at),
            Err(Refusal::Expired)
        );
        assert_eq!(
            StreamGrant::verify(&token, Some("another-token-0123456789"), before),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn a_stored_tokens_grant_names_it_and_ends_no_later_than_it() {
        let (jobs, batches) = (grant().jobs, grant().batches);
        let later = grant().expires_at + chrono::Duration::hours(1);
        let minted = StreamGrant::new(Some(&stored(None)), jobs.clone(), batches.clone(), later);
        assert_eq!(minted.expires_at, later);
        let token = minted.sign(None);
        assert!(token.contains(".3.tok_0123456789abcdef."), "{token}");
        let now = DateTime::from_timestamp_millis(0).unwrap();
        let verified = StreamGrant::verify(&token, None, now).unwrap();
        assert_eq!(verified.minted_by.as_deref(), Some("tok_0123456789abcdef"));
        // The minter is signed: a token cannot be passed off as the server's.
        let unnamed = token.replacen(".tok_0123456789abcdef.", "..", 1);
        assert_eq!(
            StreamGrant::verify(&unnamed, None, now),
            Err(Refusal::Invalid)
        );

        let ends = grant().expires_at;
        let capped = StreamGrant::new(Some(&stored(Some(ends))), jobs.clone(), batches, later);
        assert_eq!(capped.expires_at, ends, "capped at the minter's expiry");
        let server = StreamGrant::new(None, jobs, Vec::new(), later);
        assert_eq!((server.expires_at, server.minted_by), (later, None));
    }

    #[test]
    fn a_token_of_the_old_format_is_outdated() {
        let body = "gst1.2000000000000.7.";
        let token = format!("{body}.{}", hex::encode(mac(&key(None), body.as_bytes())));
        let now = DateTime::from_timestamp_millis(0).unwrap();
        assert_eq!(
            StreamGrant::verify(&token, None, now),
            Err(Refusal::Outdated)
        );
    }

    #[test]
    fn a_changed_or_malformed_token_is_invalid() {
        let token = grant().sign(None);
        let now = DateTime::from_timestamp_millis(0).unwrap();
        assert!(StreamGrant::verify(&token, None, now).is_ok());
        let widened = token.replacen(".7,42.", ".7,43.", 1);
        for bad in [
            widened.as_str(),
            "",
            ".",
            "gst1",
            "gst1.x.1.2..00",
            "\u{0}.\u{200b}",
        ] {
            assert_eq!(
                StreamGrant::verify(bad, None, now),
                Err(Refusal::Invalid),
                "{bad:?}"
            );
        }
    }
}
