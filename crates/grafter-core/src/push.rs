use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::ValidationError;

/// Where a push queue's jobs are sent: Grafter POSTs each job to `url`, signed
/// with `secret`, and treats the answer as the attempt's outcome.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PushTarget {
    /// The application's endpoint (`http://` or `https://`).
    pub url: String,
    /// Signs every request (HMAC-SHA256). Never shown by the API.
    pub secret: String,
    /// Secrets being rotated out: requests carry a signature for each as well,
    /// so receivers still holding an old secret keep accepting them.
    #[serde(default)]
    pub old_secrets: Vec<String>,
    /// Longest a request may take before the attempt fails, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most requests in flight for this queue, across every node.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Which signature headers each request carries.
    #[serde(default)]
    pub signing: Signing,
}

/// The signature schemes a push target's requests carry (docs/push.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Signing {
    /// `Grafter-Signature` only.
    #[default]
    Grafter,
    /// The Standard Webhooks headers only (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`).
    StandardWebhooks,
    /// Both, for receivers moving from one to the other.
    Both,
}

impl Signing {
    /// Whether requests carry `Grafter-Signature`.
    pub fn grafter(self) -> bool {
        matches!(self, Signing::Grafter | Signing::Both)
    }
    /// Whether requests carry the Standard Webhooks headers.
    pub fn standard_webhooks(self) -> bool {
        matches!(self, Signing::StandardWebhooks | Signing::Both)
    }
}

/// The prefix of a Standard Webhooks secret whose rest is its key in base64.
pub const WHSEC_PREFIX: &str = "whsec_";

/// The HMAC key a secret stands for in the Standard Webhooks scheme: a
/// `whsec_<base64>` secret's key is the decoded base64 (as the spec's
/// libraries read it); any other secret's key is its own bytes, as for
/// `Grafter-Signature` (which always uses a secret's own bytes).
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let Some(encoded) = secret.strip_prefix(WHSEC_PREFIX) else {
        return Ok(secret.as_bytes().to_vec());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| format!("a {WHSEC_PREFIX} secret must be followed by base64"))?;
    if key.len() < 16 {
        return Err(format!(
            "a {WHSEC_PREFIX} secret's key must be at least 16 bytes, got {}",
            key.len()
        ));
    }
    Ok(key)
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_concurrency() -> u32 {
    10
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        f.debug_struct("PushTarget")
            .field("url", &self.redacted_url())
            .field("timeout_ms", &self.timeout_ms)
            .field("concurrency", &self.concurrency)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}

/// Most secrets kept for rotation besides the current one.
pub const MAX_OLD_SECRETS: usize = 4;
/// Longest secret, in bytes.
pub const MAX_SECRET_LEN: usize = 512;
/// Longest push URL, in bytes.
pub const MAX_URL_LEN: usize = 2_048;

/// Headers a push target may not set: they govern the connection or the
/// message's framing (RFC 9110 section 7.6.1, and `Expect`).
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

impl PushTarget {
    /// Checks the target is usable.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let url = self.url.as_str();
        // A scheme is case-insensitive (RFC 3986, 3.1): `HTTP://` is `http://`.
        let is_http = ["http://", "https://"].iter().any(|scheme| {
            url.get(..scheme.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
        });
        if !is_http || url.len() < 10 || url.len() > MAX_URL_LEN {
            return Err(ValidationError::new(
                "push.url",
                format!("must be an http:// or https:// URL of at most {MAX_URL_LEN} bytes"),
            ));
        }
        // Spaces and control characters are not part of any URL, and would
        // let a URL written into a log line forge the lines after it.
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ValidationError::new(
                "push.url",
                "must not contain spaces or control characters",
            ));
        }
        if !(16..=MAX_SECRET_LEN).contains(&self.secret.len()) {
            return Err(ValidationError::new(
                "push.secret",
                format!("must be 16 to {MAX_SECRET_LEN} bytes long"),
            ));
        }
        if self
            .old_secrets
            .iter()
            .chain([&self.secret])
            .any(|s| s.chars().any(char::is_control))
        {
            return Err(ValidationError::new(
                "push.secret",
                "secrets must not contain control characters",
            ));
        }
        if self.old_secrets.len() > MAX_OLD_SECRETS {
            return Err(ValidationError::new(
                "push.old_secrets",
                format!(
                    "at most {MAX_OLD_SECRETS} secrets being rotated out, got {}",
                    self.old_secrets.len()
                ),
            ));
        }
        if self
            .old_secrets
            .iter()
            .any(|s| !(16..=MAX_SECRET_LEN).contains(&s.len()))
        {
            return Err(ValidationError::new(
                "push.old_secrets",
                format!("each must be 16 to {MAX_SECRET_LEN} bytes long"),
            ));
        }
        if self.signing.standard_webhooks() {
            for (field, secret) in std::iter::once(("push.secret", &self.secret))
                .chain(self.old_secrets.iter().map(|s| ("push.old_secrets", s)))
            {
                standard_webhooks_key(secret).map_err(|m| ValidationError::new(field, m))?;
            }
        }
        if !(100..=3_600_000).contains(&self.timeout_ms) {
            return Err(ValidationError::new(
                "push.timeout_ms",
                "must be between 100 and 3600000",
            ));
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return Err(ValidationError::new(
                "push.concurrency",
                "must be between 1 and 10000",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if !seen.insert(lower.clone()) {
                return Err(ValidationError::new(
                    "push.headers",
                    format!("'{name}' is given twice (header names ignore case)"),
                ));
            }
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ValidationError::new(
                    "push.headers",
                    format!("'{name}' is not a header name"),
                ));
            }
            if lower.starts_with("grafter-")
                || lower.starts_with("webhook-")
                || lower == "content-type"
                || lower == "content-length"
                || lower == "host"
            {
                return Err(ValidationError::new(
                    "push.headers",
                    format!("'{name}' is set by Grafter"),
                ));
            }
            // They govern the connection or the message's framing, not the
            // app: a proxy would act on them (`Connection` names headers to
            // strip, the signature's included) and the body would go out
            // framed otherwise than Grafter sends it.
            if CONNECTION_HEADERS.contains(&lower.as_str()) {
                return Err(ValidationError::new(
                    "push.headers",
                    format!("'{name}' governs the connection, which Grafter manages"),
                ));
            }
            // HTTP allows visible ASCII and spaces in values; anything else
            // would fail every push rather than this request.
            if !value
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
            {
                return Err(ValidationError::new(
                    "push.headers",
                    format!("the value of '{name}' is not visible ASCII"),
                ));
            }
        }
        Ok(())
    }

    /// Writes the URL's scheme in lower case, as URL parsers (the push
    /// client's too) read it, so a target is stored and shown as it is used.
    pub fn lowercase_scheme(&mut self) {
        if let Some(end) = self.url.find("://") {
            self.url[..end].make_ascii_lowercase();
        }
    }

    /// The URL as it may be shown (API answers, the dashboard, logs): the
    /// credentials of `user:password@`, the values of query parameters and
    /// query parameters without a value (`?s3cr3t`), which often carry
    /// tokens, are replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let mut shown = format!("{scheme}://{host}{path}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}=***"),
                None if pair.is_empty() => String::new(),
                None => "***".to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> PushTarget {
        PushTarget {
            url: url.to_owned(),
            secret: "s".repeat(16),
            old_secrets: Vec::new(),
            timeout_ms: default_timeout_ms(),
            concurrency: default_concurrency(),
            headers: BTreeMap::new(),
            signing: Signing::default(),
        }
    }

    #[test]
    fn a_whsec_secret_is_its_base64_key_any_other_its_own_bytes() {
        assert_eq!(
            standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .len(),
            24
        );
        assert_eq!(
            standard_webhooks_key("a-plain-secret-16").unwrap(),
            b"a-plain-secret-16"
        );
        let mut standard = target("https://app.example.com/ok");
        standard.signing = Signing::StandardWebhooks;
        standard.secret = "whsec_not base64!!!!".into();
        assert_eq!(standard.validate().unwrap_err().field, "push.secret");
        standard.secret = "whsec_MTIzNDU2Nzg5MA==".into(); // ten bytes
        assert!(standard
            .validate()
            .unwrap_err()
            .message
            .contains("16 bytes"));
        standard.secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into();
        standard.old_secrets = vec!["whsec_?".repeat(4)];
        assert_eq!(standard.validate().unwrap_err().field, "push.old_secrets");
        standard.old_secrets = vec!["an-old-plain-secret".into()];
        assert!(standard.validate().is_ok());
        let parsed: PushTarget = serde_json::from_value(serde_json::json!({
            "url": "https://app.example.com/ok", "secret": "s".repeat(16), "signing": "both"
        }))
        .unwrap();
        assert_eq!(parsed.signing, Signing::Both);
        assert!(parsed.signing.grafter() && parsed.signing.standard_webhooks());
    }

    #[test]
    fn credentials_and_query_values_are_not_shown() {
        let shown = |url: &str| target(url).redacted_url();
        assert_eq!(
            shown("https://user:pass@app.example.com:8443/jobs?tok=abc&x=1&flag#f"),
            "https://***@app.example.com:8443/jobs?tok=***&x=***&***#f"
        );
        // A parameter without `=` may be the secret itself.
        assert_eq!(
            shown("https://app.example.com/jobs?secretkey"),
            "https://app.example.com/jobs?***"
        );
        assert_eq!(
            shown("https://app.example.com/jobs?a=1&&s3cr3t&"),
            "https://app.example.com/jobs?a=***&&***&"
        );
        assert_eq!(
            shown("https://app.example.com/grafter/jobs"),
            "https://app.example.com/grafter/jobs"
        );
        assert_eq!(shown("http://a@b@host?"), "http://***@host?");
        let debug = format!("{:?}", target("https://u:p@h.example/x?key=v"));
        assert!(!debug.contains("u:p") && !debug.contains("=v"), "{debug}");
    }

    #[test]
    fn headers_that_grafter_or_the_connection_owns_or_given_twice_are_refused() {
        let with = |pairs: &[(&str, &str)]| {
            let mut t = target("https://app.example.com/jobs");
            t.headers = pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            t.validate().map_err(|e| e.message)
        };
        assert!(with(&[("X-App", "web"), ("User-Agent", "app")]).is_ok());
        for name in [
            "Transfer-Encoding",
            "connection",
            "TE",
            "Upgrade",
            "Expect",
            "Keep-Alive",
        ] {
            let refusal = with(&[(name, "x")]).unwrap_err();
            assert!(
                refusal.contains("governs the connection"),
                "{name}: {refusal}"
            );
        }
        for name in ["webhook-signature", "Webhook-Id", "Grafter-Lease", "Host"] {
            let refusal = with(&[(name, "x")]).unwrap_err();
            assert!(refusal.contains("is set by Grafter"), "{name}: {refusal}");
        }
        let refusal = with(&[("X-App", "a"), ("x-app", "b")]).unwrap_err();
        assert!(refusal.contains("given twice"), "{refusal}");
    }

    #[test]
    fn a_scheme_in_any_case_is_accepted_and_written_in_lower_case() {
        for url in [
            "HTTP://app.example.com/jobs",
            "Https://app.example.com/jobs",
        ] {
            let mut target = target(url);
            assert!(target.validate().is_ok(), "{url}");
            target.lowercase_scheme();
            assert!(target.url.starts_with("http"), "{}", target.url);
            assert!(
                target.url.ends_with("://app.example.com/jobs"),
                "{}",
                target.url
            );
        }
        assert!(target("FTP://app.example.com/jobs").validate().is_err());
        assert!(target("HTTPé://app.example.com/jobs").validate().is_err());
    }

    #[test]
    fn urls_that_could_forge_log_lines_and_oversized_secrets_are_refused() {
        assert!(target("https://app.example.com/ok").validate().is_ok());
        for url in [
            "https://app.example.com/x\nINFO forged",
            "https://app.example.com/ x",
            "https://app.example.com/\u{0}",
        ] {
            let error = target(url).validate().unwrap_err();
            assert_eq!(error.field, "push.url", "{url:?}");
        }
        let long = format!("https://app.example.com/{}", "x".repeat(MAX_URL_LEN));
        assert!(target(&long).validate().is_err());
        let mut rotating = target("https://app.example.com/ok");
        rotating.old_secrets = vec!["o".repeat(16); MAX_OLD_SECRETS + 1];
        assert_eq!(rotating.validate().unwrap_err().field, "push.old_secrets");
        rotating.old_secrets = vec!["o".repeat(MAX_SECRET_LEN + 1)];
        assert_eq!(rotating.validate().unwrap_err().field, "push.old_secrets");
        rotating.old_secrets = vec!["o".repeat(16); MAX_OLD_SECRETS];
        assert!(rotating.validate().is_ok());
        rotating.secret = "s".repeat(MAX_SECRET_LEN + 1);
        assert_eq!(rotating.validate().unwrap_err().field, "push.secret");
    }
}
