use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{validate_name, validate_path_name, ValidationError};

/// A worker process announcing itself. Sent on start and then as a heartbeat,
/// so the server can list live workers and rescue the jobs of dead ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistration {
    /// Unique per start of a worker process (the path's `{id}`).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::path_name))]
    pub id: String,
    /// Host name.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::name))]
    pub host: String,
    /// Process id on that host.
    #[cfg_attr(feature = "openapi", schema(value_type = i64, minimum = 0, maximum = 4294967295_u64))]
    pub pid: u32,
    /// Queues it takes jobs from (at most 1,000).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::worker_names))]
    pub queues: Vec<String>,
    /// Most jobs it runs at once.
    #[cfg_attr(feature = "openapi", schema(value_type = i64, minimum = 0, maximum = 4294967295_u64))]
    pub concurrency: u32,
    /// Job kinds it can run (at most 1,000).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::worker_names))]
    pub kinds: Vec<String>,
}

impl WorkerRegistration {
    /// Most queues a worker may name (as many as one fetch may).
    pub const MAX_QUEUES: usize = 1_000;
    /// Most kinds a worker may name.
    pub const MAX_KINDS: usize = 1_000;

    /// Checks the names are usable, and that the lists are bounded: they are
    /// stored, rewritten on every heartbeat and listed with every worker.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_path_name("id", &self.id)?;
        validate_name("host", &self.host)?;
        for (field, names, max) in [
            ("queues", &self.queues, Self::MAX_QUEUES),
            ("kinds", &self.kinds, Self::MAX_KINDS),
        ] {
            if names.len() > max {
                return Err(ValidationError::new(
                    field,
                    format!("name at most {max}, got {}", names.len()),
                ));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_and_kind_lists_are_bounded() {
        let names = |n: usize| (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>();
        let worker = |queues: usize, kinds: usize| WorkerRegistration {
            id: "w".into(),
            host: "h".into(),
            pid: 1,
            queues: names(queues),
            concurrency: 1,
            kinds: names(kinds),
        };
        let max = (
            WorkerRegistration::MAX_QUEUES,
            WorkerRegistration::MAX_KINDS,
        );
        assert!(worker(max.0, max.1).validate().is_ok());
        assert_eq!(worker(max.0 + 1, 0).validate().unwrap_err().field, "queues");
        assert_eq!(worker(1, max.1 + 1).validate().unwrap_err().field, "kinds");
    }
}
