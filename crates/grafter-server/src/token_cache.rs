//! Stored tokens verified lately, kept in memory for [`CACHE_TTL`]: the
//! bound on how late a revocation (or expiry) reaches a node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grafter_store::ApiToken;

/// How long a verified token is trusted without reading it again: the bound
/// on how late a revocation (or expiry) reaches a node.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Most tokens kept at once (a full cache is emptied, not grown).
const CACHE_MAX: usize = 10_000;

/// Verified stored tokens by the SHA-256 of their secret or by their id,
/// each with when it was read.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Instant, Arc<ApiToken>)>>,
}

impl TokenCache {
    pub(crate) fn get(&self, key: &str) -> Option<Arc<ApiToken>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(read, _)| read.elapsed() < CACHE_TTL)
            .map(|(_, token)| token.clone())
    }

    pub(crate) fn put(&self, key: String, token: Arc<ApiToken>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), token));
    }
}
