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
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("concurrency", &self.concurrency)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PushTarget {
    /// Checks the target is usable.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(ValidationError::new(
                "push.url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.secret.len() < 16 {
            return Err(ValidationError::new(
                "push.secret",
                "must be at least 16 characters",
            ));
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
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
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
                || lower == "content-type"
                || lower == "content-length"
                || lower == "host"
            {
                return Err(ValidationError::new(
                    "push.headers",
                    format!("'{name}' is set by Grafter"),
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
}
