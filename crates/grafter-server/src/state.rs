use std::sync::Arc;

use grafter_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::throttle::{AuthFailures, TRACKED_CLIENTS};

/// What every handler shares: the store, the settings, the counters, the
/// wrong-token throttle, and the shutdown signal that ends long-polls.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    config: ServerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// Wakes this node's push dispatcher when the API changed a push target.
    push_targets_changed: Notify,
    /// Wrong tokens per client, to throttle guessing.
    auth_failures: AuthFailures,
    /// Signs the dashboard's CSRF tokens when the server has no token of its
    /// own: random, so only this process issues forms it accepts.
    process_key: [u8; 32],
}

impl AppState {
    /// State for a router over `store`.
    pub fn new(store: Arc<dyn Store>, config: ServerConfig, shutdown: CancellationToken) -> Self {
        AppState {
            inner: Arc::new(Inner {
                store,
                config,
                metrics: Metrics::new(),
                shutdown,
                push_targets_changed: Notify::new(),
                auth_failures: AuthFailures::new(TRACKED_CLIENTS),
                process_key: rand::random(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn auth_failures(&self) -> &AuthFailures {
        &self.inner.auth_failures
    }

    pub(crate) fn process_key(&self) -> &[u8] {
        &self.inner.process_key
    }

    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Notified (with a stored permit, so no change is missed) when a push
    /// target was set or removed through this node.
    pub(crate) fn push_targets_changed(&self) -> &Notify {
        &self.inner.push_targets_changed
    }
}
