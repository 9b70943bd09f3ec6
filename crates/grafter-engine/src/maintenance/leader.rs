//! Leader election for maintenance: every node tries to take or renew the
//! `maintenance` leadership each second; the holder's services run, the
//! others wait. A dead leader's leadership expires after its TTL and another
//! node takes over; a leader that stops releases it at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_store::{LeaderAcquire, LeaderRelease, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The leadership name maintenance services share.
pub const MAINTENANCE: &str = "maintenance";

/// The elector service.
pub struct Elector {
    store: Arc<dyn Store>,
    node: String,
    ttl: Duration,
    leading: watch::Sender<bool>,
}

impl Elector {
    /// An elector for a new node id, and the signal of whether this node leads.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> (Self, watch::Receiver<bool>) {
        let (leading, receiver) = watch::channel(false);
        let node = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        (
            Elector {
                store,
                node,
                ttl,
                leading,
            },
            receiver,
        )
    }

    /// Runs until cancelled; then gives the leadership up if held.
    pub async fn run(self, cancel: CancellationToken) {
        // Renew well within the TTL, so one slow round trip does not lose it.
        let renew = (self.ttl / 4).max(Duration::from_millis(100));
        loop {
            let acquire = LeaderAcquire {
                name: MAINTENANCE.into(),
                node: self.node.clone(),
                ttl: self.ttl,
                now: Utc::now(),
            };
            let leads = match self.store.leader_acquire(acquire).await {
                Ok(leads) => leads,
                Err(error) => {
                    // Unsure of renewal: stop acting rather than risk two leaders.
                    tracing::warn!(%error, "leader election failed; pausing maintenance");
                    false
                }
            };
            if leads != *self.leading.borrow() {
                tracing::info!(node = %self.node, leads, "maintenance leadership changed");
                self.leading.send_replace(leads);
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(renew) => {}
            }
        }
        if *self.leading.borrow() {
            self.leading.send_replace(false);
            let release = LeaderRelease {
                name: MAINTENANCE.into(),
                node: self.node.clone(),
            };
            if let Err(error) = self.store.leader_release(release).await {
                tracing::warn!(%error, "could not release the maintenance leadership");
            }
        }
    }
}
