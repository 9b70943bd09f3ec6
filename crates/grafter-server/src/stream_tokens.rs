//! Short-lived read-only tokens for event streams (docs/events.md). A
//! browser's `EventSource` cannot send an `Authorization` header, so the app
//! mints a token scoped to some jobs and batches (`POST /v1/stream-tokens`,
//! with its own token) and the page passes it as `?access_token=`.
//!
//! A token is `gst1.<expires, unix ms>.<job ids>.<batch ids>.<mac>`: ids
//! comma-separated, the MAC an HMAC-SHA256 (hex) of everything before it, under
//! a key derived from the server's token. So every node that shares the
//! server's token verifies it without storing anything, and changing the
//! server's token revokes them all. Without a server token the streams are
//! open anyway; tokens are then signed with a key of this process alone.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use grafter_core::JobId;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::api::auth::secrets_match;

const PREFIX: &str = "gst1";
/// Most jobs and batches one token names.
pub const MAX_IDS: usize = 100;
/// Longest life of a token.
pub const MAX_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// A token's life when the request does not say.
pub const DEFAULT_TTL_MS: i64 = 15 * 60 * 1000;

/// What a token gives access to, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamGrant {
    /// Jobs whose streams it opens.
    pub jobs: Vec<JobId>,
    /// Batches whose streams it opens.
    pub batches: Vec<i64>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Why a presented token opens nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token, or not signed with this server's key: 401.
    Invalid,
    /// Past its expiry: 401.
    Expired,
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
    /// The token for this grant.
    pub fn sign(&self, server_token: Option<&str>) -> String {
        let body = format!(
            "{PREFIX}.{}.{}.{}",
            self.expires_at.timestamp_millis(),
            join(self.jobs.iter().map(|id| id.0)),
            join(self.batches.iter().copied()),
        );
        let mac = hex::encode(mac(&key(server_token), body.as_bytes()));
        format!("{body}.{mac}")
    }

    /// The grant of a presented token, if this server signed it and it has
    /// not expired by `now`.
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
        let mut parts = body.split('.');
        let (Some(PREFIX), Some(expires), Some(jobs), Some(batches), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Invalid);
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
        };
        if grant.expires_at <= now {
            return Err(Refusal::Expired);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> StreamGrant {
        StreamGrant {
            jobs: vec![JobId(7), JobId(42)],
            batches: vec![3],
            expires_at: DateTime::from_timestamp_millis(2_000_000_000_000).unwrap(),
        }
    }

    #[test]
    fn a_token_verifies_under_its_key_until_it_expires() {
        let token = grant().sign(Some("server-token-0123456789"));
        assert!(token.starts_with("gst1.2000000000000.7,42.3."), "{token}");
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
            "gst1.x.1.2.00",
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
