use std::sync::Arc;

use grafter_engine::maintenance::MaintenanceHealth;
use grafter_engine::Engine;
use grafter_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::otlp::Tracer;
use crate::throttle::{AuthFailures, TRACKED_CLIENTS};
use crate::token_cache::TokenCache;

/// What every handler shares: the engine, the settings, the counters, the
/// maintenance services' health, the wrong-token throttle, the verified tokens, and the shutdown
/// signal that ends long-polls.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    config: ServerConfig,
    metrics: Arc<Metrics>,
    /// The server's spans, exported over OTLP when configured.
    tracer: Tracer,
    maintenance_health: MaintenanceHealth,
    shutdown: CancellationToken,
    /// Wakes this node's push dispatcher when the API changed a push target.
    push_targets_changed: Notify,
    /// Wrong tokens per client, to throttle guessing.
    auth_failures: AuthFailures,
    /// Stored tokens verified lately (`token_cache::CACHE_TTL`).
    token_cache: TokenCache,
    /// Signs the dashboard's CSRF tokens when the server has no token of its
    /// own: random, so only this process issues forms it accepts.
    process_key: [u8; 32],
}

impl AppState {
    /// State for a router over `store`, with an engine the metrics observe
    /// and no span export (`serve` starts it when configured).
    pub fn new(store: Arc<dyn Store>, config: ServerConfig, shutdown: CancellationToken) -> Self {
        let metrics = Arc::new(Metrics::new());
        Self::assemble(store, config, shutdown, metrics, Tracer::default())
    }

    /// State with these metrics and this tracer.
    pub(crate) fn assemble(
        store: Arc<dyn Store>,
        config: ServerConfig,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        tracer: Tracer,
    ) -> Self {
        let engine = Engine::new(store, config.engine()).with_observer(metrics.clone());
        AppState {
            inner: Arc::new(Inner {
                engine,
                config,
                metrics,
                tracer,
                maintenance_health: MaintenanceHealth::default(),
                shutdown,
                push_targets_changed: Notify::new(),
                auth_failures: AuthFailures::new(TRACKED_CLIENTS),
                token_cache: TokenCache::default(),
                process_key: rand::random(),
            }),
        }
    }

    /// The engine every change goes through.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The store, for reads.
    pub fn store(&self) -> &dyn Store {
        self.inner.engine.store().as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Where the server's spans go (nowhere unless OTLP export is on).
    pub(crate) fn tracer(&self) -> &Tracer {
        &self.inner.tracer
    }

    /// How this node's maintenance services are doing (empty when `serve`
    /// does not run them).
    pub fn maintenance_health(&self) -> &MaintenanceHealth {
        &self.inner.maintenance_health
    }

    pub(crate) fn auth_failures(&self) -> &AuthFailures {
        &self.inner.auth_failures
    }

    pub(crate) fn token_cache(&self) -> &TokenCache {
        &self.inner.token_cache
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
