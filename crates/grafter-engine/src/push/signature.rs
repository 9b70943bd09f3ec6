//! The `Grafter-Signature` header, signed by the dispatcher and checked by
//! receivers:
//!
//! ```text
//! Grafter-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>[,v1=…]
//! ```
//!
//! One `v1=` per secret while a secret is being rotated (the current secret
//! first), so a receiver holding either secret accepts the request. The
//! timestamp is signed too, so an old request cannot be replayed with a fresh
//! `t`; receivers refuse timestamps further than a tolerance (5 minutes by
//! default) from their clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "Grafter-Signature";

/// How far a signature's timestamp may be from the receiver's clock, either
/// way, unless the receiver says otherwise.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Most `v1=` values a receiver looks at; more than a rotation needs, few
/// enough that a hostile header cannot make verification expensive.
const MAX_SIGNATURES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// The MAC state after `"<t>.<body>"`, ready to finalize or compare.
fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (unix seconds), with one
/// `v1=` per secret, in the order given.
pub fn sign<S: AsRef<[u8]>>(secrets: &[S], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&hex::encode(
            mac(secret.as_ref(), timestamp, body)
                .finalize()
                .into_bytes(),
        ));
    }
    header
}

/// The current time in unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Why a request's signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The request has no signature header.
    #[error("missing signature header (Grafter-Signature or webhook-signature)")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>[,v1=<hex>…]` (or, for
    /// Standard Webhooks, the timestamp is no number or no `v1,` is there).
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    /// The timestamp is too far from this clock: a replay, or a clock that is off.
    #[error("signature timestamp is {skew_secs} s from this clock (tolerance {tolerance_secs} s)")]
    Stale {
        /// How far, in seconds.
        skew_secs: u64,
        /// How far it may be.
        tolerance_secs: u64,
    },
    /// No `v1=` value matches: the secret differs, or the body was changed.
    #[error("signature does not match (wrong secret, or the body was changed)")]
    Mismatch,
}

/// Checks a push's signature on the receiving side: `Grafter-Signature`
/// ([`Verifier::verify`]) or the Standard Webhooks headers
/// ([`Verifier::verify_standard_webhooks`]), with the same secrets.
///
/// ```
/// use grafter_engine::push::signature::{sign, unix_now, SignatureError, Verifier};
///
/// let body = br#"{"id":1,"kind":"send_email"}"#;
/// let header = sign(&["a secret of 16+ chars"], unix_now(), body);
/// let verifier = Verifier::new("a secret of 16+ chars");
/// assert_eq!(verifier.verify(&header, body), Ok(()));
/// assert_eq!(verifier.verify(&header, b"{}"), Err(SignatureError::Mismatch));
/// ```
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<Vec<u8>>,
    /// The secrets' Standard Webhooks keys (a `whsec_` secret's base64 decoded).
    pub(super) standard_keys: Vec<Vec<u8>>,
    pub(super) tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        f.debug_struct("Verifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// A verifier accepting signatures made with `secret`, within
    /// [`DEFAULT_TOLERANCE`] of this clock.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Verifier {
            secrets: Vec::new(),
            standard_keys: Vec::new(),
            tolerance: DEFAULT_TOLERANCE,
        }
        .also_accept(secret)
    }

    /// Also accepts signatures made with `secret`: for rotating on the
    /// receiving side first (accept old and new, then switch Grafter over).
    pub fn also_accept(mut self, secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        // A secret that is not text, or a `whsec_` one that is not base64,
        // was never accepted as a Standard Webhooks secret by Grafter: its
        // own bytes are as good a key as any.
        let standard_key = std::str::from_utf8(secret)
            .ok()
            .and_then(|text| grafter_core::standard_webhooks_key(text).ok())
            .unwrap_or_else(|| secret.to_vec());
        self.secrets.push(secret.to_vec());
        self.standard_keys.push(standard_key);
        self
    }

    /// How far a timestamp may be from this clock, either way.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Checks `header` (the `Grafter-Signature` value) against the raw request
    /// body, exactly as received, and this clock.
    pub fn verify(&self, header: &str, body: &[u8]) -> Result<(), SignatureError> {
        self.verify_at(header, body, unix_now())
    }

    /// As [`Verifier::verify`], with the clock given (unix seconds).
    pub fn verify_at(&self, header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let (timestamp, signatures) = parse(header)?;
        let skew_secs = now.abs_diff(timestamp);
        if skew_secs > self.tolerance.as_secs() {
            return Err(SignatureError::Stale {
                skew_secs,
                tolerance_secs: self.tolerance.as_secs(),
            });
        }
        let candidates: Vec<Vec<u8>> = signatures
            .iter()
            .filter_map(|s| hex::decode(s).ok())
            .collect();
        for secret in &self.secrets {
            let expected = mac(secret, timestamp, body);
            // verify_slice compares in constant time.
            if candidates
                .iter()
                .any(|candidate| expected.clone().verify_slice(candidate).is_ok())
            {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Splits a header into its timestamp and its `v1=` values. Unknown keys are
/// skipped, so a later scheme (`v2=`) can be added beside `v1=`.
fn parse(header: &str) -> Result<(i64, Vec<&str>), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed(
                "expected comma-separated key=value pairs",
            ))?;
        match key {
            "t" if timestamp.is_some() => {
                return Err(SignatureError::Malformed("more than one t="))
            }
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t= is not unix seconds"))?,
                )
            }
            "v1" if signatures.len() < MAX_SIGNATURES => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t="))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1="));
    }
    Ok((timestamp, signatures))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-secret";
    const BODY: &[u8] = br#"{"id":7,"kind":"send_email","args":{"to":"ada@example.com"}}"#;

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // Computed with: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(&["key"], 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }

    #[test]
    fn accepts_its_own_signature_and_refuses_changes() {
        let now = 1_700_000_000;
        let header = sign(&[SECRET], now, BODY);
        let verifier = Verifier::new(SECRET);
        assert_eq!(verifier.verify_at(&header, BODY, now), Ok(()));
        assert_eq!(
            verifier.verify_at(&header, BODY, now + 300),
            Ok(()),
            "at the edge of the tolerance"
        );
        assert_eq!(
            Verifier::new("another secret!!").verify_at(&header, BODY, now),
            Err(SignatureError::Mismatch)
        );
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert_eq!(
            verifier.verify_at(&header, &changed, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.verify_at(&header, BODY, now + 301),
            Err(SignatureError::Stale {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert!(matches!(
            verifier.verify_at(&header, BODY, now - 301),
            Err(SignatureError::Stale { .. })
        ));
        // A fresh t on an old signature does not pass: t is signed.
        let replayed = header.replacen(&format!("t={now}"), &format!("t={}", now + 400), 1);
        assert_eq!(
            verifier.verify_at(&replayed, BODY, now + 400),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_secrets_matches_during_rotation() {
        let now = 1_700_000_000;
        let header = sign(&["the new secret..", "the old secret.."], now, BODY);
        assert_eq!(header.matches(",v1=").count(), 2);
        assert_eq!(
            Verifier::new("the old secret..").verify_at(&header, BODY, now),
            Ok(())
        );
        assert_eq!(
            Verifier::new("the new secret..").verify_at(&header, BODY, now),
            Ok(())
        );
        let old_only = sign(&["the old secret.."], now, BODY);
        let both = Verifier::new("the new secret..").also_accept("the old secret..");
        assert_eq!(both.verify_at(&old_only, BODY, now), Ok(()));
    }

    #[test]
    fn malformed_headers_are_named() {
        let verifier = Verifier::new(SECRET);
        for header in [
            "",
            "garbage",
            "t=abc,v1=00",
            "v1=00",
            "t=1",
            "t=1,t=2,v1=00",
        ] {
            assert!(
                matches!(
                    verifier.verify_at(header, BODY, 1),
                    Err(SignatureError::Malformed(_))
                ),
                "{header:?}"
            );
        }
        // Not hex, or unknown versions only among valid ones: a mismatch, not a crash.
        assert_eq!(
            verifier.verify_at("t=1,v1=zz,v2=abc", BODY, 1),
            Err(SignatureError::Mismatch)
        );
    }
}
