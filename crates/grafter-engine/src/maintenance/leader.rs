//! Leader election for maintenance: every node tries to take or renew the
//! `maintenance` leadership four times per TTL (at least every 100 ms); the
//! holder's services run, the others wait. A dead leader's leadership expires
//! after its TTL and another node takes over; a leader that stops releases it
//! at once.

use std::sync::Arc;
use std::time::Duration;

use grafter_store::{LeaderAcquire, LeaderRelease};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::MaintenanceHealth;
use crate::Engine;

/// The leadership name maintenance services share.
pub const MAINTENANCE: &str = "maintenance";

/// The elector's name in logs and health.
const NAME: &str = "elector";

/// The elector service.
pub struct Elector {
    engine: Engine,
    node: String,
    ttl: Duration,
    leading: watch::Sender<bool>,
}

impl Elector {
    /// An elector for a new node id, and the signal of whether this node leads.
    pub fn new(engine: Engine, ttl: Duration) -> (Self, watch::Receiver<bool>) {
        let (leading, receiver) = watch::channel(false);
        let node = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        (
            Elector {
                engine,
                node,
                ttl,
                leading,
            },
            receiver,
        )
    }

    /// Runs until cancelled; then gives the leadership up if held.
    pub async fn run(&self, health: &MaintenanceHealth, cancel: &CancellationToken) {
        // Renew well within the TTL, so one slow round trip does not lose it.
        let renew = (self.ttl / 4).max(Duration::from_millis(100));
        loop {
            let acquire = LeaderAcquire {
                name: MAINTENANCE.into(),
                node: self.node.clone(),
                ttl: self.ttl,
                now: self.engine.now(),
            };
            let leads = match self.engine.store().leader_acquire(acquire).await {
                Ok(leads) => {
                    health.passed(NAME);
                    leads
                }
                Err(error) => {
                    // Unsure of renewal: stop acting rather than risk two leaders.
                    tracing::warn!(%error, "leader election failed; pausing maintenance");
                    health.failed(NAME, &error.to_string());
                    false
                }
            };
            self.set_leading(leads);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(renew) => {}
            }
        }
        if *self.leading.borrow() {
            self.set_leading(false);
            let release = LeaderRelease {
                name: MAINTENANCE.into(),
                node: self.node.clone(),
            };
            if let Err(error) = self.engine.store().leader_release(release).await {
                tracing::warn!(%error, "could not release the maintenance leadership");
            }
        }
    }

    fn set_leading(&self, leads: bool) {
        if leads != *self.leading.borrow() {
            tracing::info!(node = %self.node, leads, "maintenance leadership changed");
            self.leading.send_replace(leads);
        }
    }
}

/// Runs the elector until cancelled. If it panics, this node stops acting as
/// leader at once (its leadership may lapse while it is down) and the elector
/// starts again.
pub(super) async fn supervise(
    elector: Elector,
    health: MaintenanceHealth,
    cancel: CancellationToken,
) {
    let elector = Arc::new(elector);
    let start = || {
        let (elector, health, cancel) = (elector.clone(), health.clone(), cancel.clone());
        async move { elector.run(&health, &cancel).await }
    };
    super::supervised(NAME, health.clone(), cancel.clone(), start, || {
        elector.set_leading(false)
    })
    .await;
}
