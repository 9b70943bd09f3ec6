use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{validate_name, ValidationError};

/// A worker process announcing itself. Sent on start and then as a heartbeat,
/// so the server can list live workers and rescue the jobs of dead ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistration {
    /// Unique per start of a worker process.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// Queues it takes jobs from.
    pub queues: Vec<String>,
    /// Most jobs it runs at once.
    pub concurrency: u32,
    /// Job kinds it can run.
    #[serde(default)]
    pub kinds: Vec<String>,
}

impl WorkerRegistration {
    /// Checks the names are usable.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("id", &self.id)?;
        validate_name("host", &self.host)?;
        for queue in &self.queues {
            validate_name("queues", queue)?;
        }
        for kind in &self.kinds {
            validate_name("kinds", kind)?;
        }
        Ok(())
    }
}

/// A live worker as the server knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Worker {
    /// What the worker said about itself.
    #[serde(flatten)]
    pub registration: WorkerRegistration,
    /// When it first registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_seen_at: DateTime<Utc>,
    /// Jobs it holds leases on now.
    pub running: u64,
}
