//! Maintenance services: small loops of one shape that keep job states true as
//! time passes. Each does a bounded batch per pass, goes again at once while
//! batches come back full, and otherwise sleeps its interval; all stop with
//! the cancellation token.
//!
//! - [`scheduler`]: due `scheduled`/`retryable` jobs become `available`;
//! - [`rescuer`]: expired leases become failed attempts;
//! - [`expirer`]: jobs past `expires_at` become `expired`;
//! - [`pruner`]: finished jobs past their retention are deleted.
//!
//! They run only on the node that holds the `maintenance` leadership
//! ([`leader`]), so a cluster does each job's maintenance once; when the leader
//! dies another node takes over within the leadership's TTL.

pub mod expirer;
pub mod leader;
pub mod pruner;
pub mod rescuer;
pub mod scheduler;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use grafter_store::{Result, Store};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;

/// The running services.
pub struct Maintenance {
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

/// Starts every service on `store`.
pub fn start(
    store: Arc<dyn Store>,
    config: &ServerConfig,
    cancel: CancellationToken,
) -> Maintenance {
    let mut tasks = JoinSet::new();
    let m = &config.maintenance;
    let (elector, leading) = leader::Elector::new(store.clone(), m.leader_ttl());
    tasks.spawn(elector.run(cancel.clone()));
    tasks.spawn(
        scheduler::Scheduler::new(store.clone(), m.schedule_interval(), m.batch_size)
            .run(leading.clone(), cancel.clone()),
    );
    tasks.spawn(
        rescuer::Rescuer::new(
            store.clone(),
            m.rescue_interval(),
            m.batch_size,
            config.retry,
            m.worker_stale_after(),
        )
        .run(leading.clone(), cancel.clone()),
    );
    tasks.spawn(
        expirer::Expirer::new(store.clone(), m.expire_interval(), m.batch_size)
            .run(leading.clone(), cancel.clone()),
    );
    tasks.spawn(
        pruner::Pruner::new(store, &config.retention, m.batch_size).run(leading, cancel.clone()),
    );
    Maintenance { tasks, cancel }
}

impl Maintenance {
    /// Stops every service and waits for them to finish their pass.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The loop every service runs: `pass` returns how many jobs it touched.
async fn run_periodically<F, Fut>(
    name: &'static str,
    interval: Duration,
    batch_size: usize,
    mut leading: watch::Receiver<bool>,
    cancel: CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    tracing::debug!(service = name, ?interval, "maintenance service started");
    loop {
        if !*leading.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = leading.changed() => continue,
            }
        }
        let wait = match pass().await {
            Ok(touched) if touched as usize >= batch_size => Duration::ZERO,
            Ok(touched) => {
                if touched > 0 {
                    tracing::debug!(service = name, touched, "maintenance pass");
                }
                interval
            }
            Err(error) => {
                tracing::warn!(service = name, %error, "maintenance pass failed; will retry");
                interval
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!(service = name, "maintenance service stopped");
}
