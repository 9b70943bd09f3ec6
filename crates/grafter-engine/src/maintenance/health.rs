//! How each maintenance service is doing on this node, for `/readyz` and
//! `/metrics` to show.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use grafter_core::Timestamp;
use serde::Serialize;

/// One service's recent record.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceHealth {
    /// Passes (or runs, for a panic) that failed since the last one that worked.
    pub failures_in_a_row: u64,
    /// Failed passes and panics since this node started.
    pub failures_total: u64,
    /// The latest failure's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the current run of failures began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Timestamp>,
    /// When a pass last worked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pass_at: Option<Timestamp>,
}

impl ServiceHealth {
    /// Whether the latest pass (or run) failed.
    pub fn failing(&self) -> bool {
        self.failures_in_a_row > 0
    }
}

/// The services' records, shared by the services and whoever reports them.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct MaintenanceHealth {
    services: Arc<Mutex<BTreeMap<&'static str, ServiceHealth>>>,
}

impl MaintenanceHealth {
    fn update(&self, service: &'static str, change: impl FnOnce(&mut ServiceHealth)) {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(services.entry(service).or_default());
    }

    /// A pass of `service` worked.
    pub fn passed(&self, service: &'static str) {
        self.update(service, |health| {
            health.failures_in_a_row = 0;
            health.failing_since = None;
            health.last_pass_at = Some(Utc::now());
        });
    }

    /// A pass of `service` failed, or it panicked.
    pub fn failed(&self, service: &'static str, error: &str) {
        self.update(service, |health| {
            if health.failures_in_a_row == 0 {
                health.failing_since = Some(Utc::now());
            }
            health.failures_in_a_row += 1;
            health.failures_total += 1;
            health.last_error = Some(error.to_owned());
        });
    }

    /// Every service that has reported, by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, ServiceHealth> {
        self.services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
