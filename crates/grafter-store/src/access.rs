//! Parameter and result types of the access methods of [`crate::Store`]:
//! API tokens (stored by the hash of their secret) and the audit log.

use grafter_core::Timestamp;
use serde::{Deserialize, Serialize};

/// What a token may do. `Admin` may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Enqueue jobs (`POST /v1/jobs`, `/v1/jobs/batch`).
    Enqueue,
    /// Read everything (every `GET`, stream tokens).
    Read,
    /// Fetch jobs and report on the leases it holds.
    Work,
    /// Retry, cancel, delete and reschedule jobs; change schedules.
    Manage,
    /// Pause, resume and configure queues.
    Queues,
    /// Tokens, the audit log, cleanup; and everything else.
    Admin,
    /// `GET /metrics`.
    Metrics,
}

impl Scope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Scope; 7] = [
        Scope::Enqueue,
        Scope::Read,
        Scope::Work,
        Scope::Manage,
        Scope::Queues,
        Scope::Admin,
        Scope::Metrics,
    ];

    /// The scope's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Enqueue => "enqueue",
            Scope::Read => "read",
            Scope::Work => "work",
            Scope::Manage => "manage",
            Scope::Queues => "queues",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    /// The scope with this name.
    pub fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A stored token, as listed: never its secret, nor the secret's hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Its id (`tok_…`), public: used to list and revoke it.
    pub id: String,
    /// What it is for, for people.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Queue patterns (`*` matches any run of characters) its enqueues,
    /// fetches and changes are limited to; empty: every queue.
    pub queues: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was last seen, to within a minute or so (not every use writes).
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked; a revoked token is refused.
    pub revoked_at: Option<Timestamp>,
}

/// Store a new token.
#[derive(Clone, Debug)]
pub struct TokenInsert {
    /// The token (`revoked_at` and `last_used_at` are ignored: a new token has neither).
    pub token: ApiToken,
    /// The SHA-256 of its secret, as hex: what a request's secret is looked up by.
    pub secret_sha256: String,
}

/// Revoke a token.
#[derive(Clone, Debug)]
pub struct TokenRevoke {
    /// Which.
    pub id: String,
    /// When; a token revoked before keeps its first `revoked_at`.
    pub now: Timestamp,
}

/// Record that a token was used.
#[derive(Clone, Debug)]
pub struct TokenTouch {
    /// Which.
    pub id: String,
    /// When; `last_used_at` never goes back.
    pub now: Timestamp,
}

/// A change to record in the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it was made.
    pub at: Timestamp,
    /// Who made it: the token's id, when a stored token did.
    pub token_id: Option<String>,
    /// Who made it, for people: the token's name, `server token` or `open`
    /// (a server without a token).
    pub actor: String,
    /// What was done, `resource.verb` (`job.retry`, `queue.pause`, `token.create`…).
    pub action: String,
    /// What it was done to (`job:42`, `queue:emails`, `token:tok_…`).
    pub target: String,
    /// Anything else worth keeping (a bulk's filter, a cleanup's counts).
    pub details: Option<serde_json::Value>,
}

/// An entry of the audit log, with its place in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Ids grow with each entry written.
    pub id: i64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// A page of the audit log, newest first.
#[derive(Clone, Debug)]
pub struct AuditList {
    /// Only entries with an id below this one (the last id of the previous page).
    pub before: Option<i64>,
    /// Most entries in the answer.
    pub limit: usize,
}

/// Forget old audit entries.
#[derive(Clone, Debug)]
pub struct AuditPrune {
    /// Entries made before this time go.
    pub before: Timestamp,
    /// Most entries deleted by one call.
    pub limit: usize,
}
