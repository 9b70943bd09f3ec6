//! The Standard Webhooks signature (<https://www.standardwebhooks.com>), sent
//! beside or instead of `Grafter-Signature` as a push target's `signing` says:
//!
//! ```text
//! webhook-id: job_<job id>                (the same for every attempt of a job)
//! webhook-timestamp: <unix seconds>
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>[ v1,…]
//! ```
//!
//! One `v1,` per secret while rotating, space-separated. A `whsec_<base64>`
//! secret's key is its decoded base64; any other secret's key is its own bytes
//! ([`grafter_core::standard_webhooks_key`]).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use grafter_core::JobId;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::signature::{unix_now, SignatureError, Verifier};

/// Request header: the message id, stable across a job's attempts (receivers
/// may use it to drop duplicates).
pub const ID_HEADER: &str = "webhook-id";
/// Request header: when this request was signed, unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Request header: the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Most `v1,` values a receiver looks at.
const MAX_SIGNATURES: usize = 8;

/// The `webhook-id` of a job's pushes.
pub fn message_id(job: JobId) -> String {
    format!("job_{}", job.0)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value: one `v1,<base64>` per key, in order.
pub fn sign<K: AsRef<[u8]>>(keys: &[K], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            let tag = mac(key.as_ref(), id, timestamp, body)
                .finalize()
                .into_bytes();
            format!("v1,{}", BASE64.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks the three headers against `keys` (any may match) and the raw body,
/// refusing a timestamp more than `tolerance_secs` from `now`.
pub(crate) fn verify_at(
    keys: &[Vec<u8>],
    tolerance_secs: u64,
    headers: [&str; 3],
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let [id, timestamp, signatures] = headers;
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed("webhook-timestamp is not unix seconds"))?;
    let skew_secs = now.abs_diff(timestamp);
    if skew_secs > tolerance_secs {
        return Err(SignatureError::Stale {
            skew_secs,
            tolerance_secs,
        });
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .take(MAX_SIGNATURES)
        .filter_map(|s| BASE64.decode(s).ok())
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1, signature"));
    }
    for key in keys {
        let expected = mac(key, id, timestamp, body);
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

impl Verifier {
    /// Checks the Standard Webhooks headers (`webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`, in that order) against the
    /// raw request body, exactly as received, and this clock.
    pub fn verify_standard_webhooks(
        &self,
        headers: [&str; 3],
        body: &[u8],
    ) -> Result<(), SignatureError> {
        self.verify_standard_webhooks_at(headers, body, unix_now())
    }

    /// As [`Verifier::verify_standard_webhooks`], with the clock given (unix seconds).
    pub fn verify_standard_webhooks_at(
        &self,
        headers: [&str; 3],
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        verify_at(
            &self.standard_keys,
            self.tolerance.as_secs(),
            headers,
            body,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grafter_core::standard_webhooks_key;

    /// The example published with the spec (and its reference libraries' tests).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key(secret: &str) -> Vec<u8> {
        standard_webhooks_key(secret).unwrap()
    }

    #[test]
    fn matches_the_specs_published_example() {
        let keys = [key(SPEC_SECRET)];
        assert_eq!(
            sign(&keys, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        let headers = [SPEC_ID, "1614265330", SPEC_SIGNATURE];
        assert_eq!(
            verify_at(&keys, 300, headers, SPEC_BODY, SPEC_TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn each_secret_of_a_rotation_verifies_its_own_signature() {
        let (new, old) = (key(SPEC_SECRET), key("an-old-plain-secret"));
        let body = "{\"greeting\":\"Grüße ✓\"}".as_bytes();
        let header = sign(&[&new, &old], "job_7", 1_700_000_000, body);
        assert_eq!(header.split(' ').count(), 2);
        let check = |keys: &[Vec<u8>], body: &[u8], now| {
            verify_at(keys, 300, ["job_7", "1700000000", &header], body, now)
        };
        assert_eq!(
            check(std::slice::from_ref(&new), body, 1_700_000_000),
            Ok(())
        );
        assert_eq!(
            check(std::slice::from_ref(&old), body, 1_700_000_000),
            Ok(())
        );
        assert_eq!(
            check(&[key("a-third-secret-00")], body, 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(std::slice::from_ref(&new), b"{}", 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            check(&[new], body, 1_700_000_301),
            Err(SignatureError::Stale { .. })
        ));
        // The id is signed: the same signature under another job's id fails.
        assert_eq!(
            verify_at(
                &[old],
                300,
                ["job_8", "1700000000", &header],
                body,
                1_700_000_000
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_named_not_crashed_on() {
        let keys = [key(SPEC_SECRET)];
        for (timestamp, signature) in [("x", SPEC_SIGNATURE), ("1", ""), ("1", "v2,abc")] {
            assert!(matches!(
                verify_at(&keys, 300, [SPEC_ID, timestamp, signature], SPEC_BODY, 1),
                Err(SignatureError::Malformed(_))
            ));
        }
        assert_eq!(
            verify_at(&keys, 300, [SPEC_ID, "1", "v1,!!!! v1,AAAA"], SPEC_BODY, 1),
            Err(SignatureError::Mismatch)
        );
    }
}
