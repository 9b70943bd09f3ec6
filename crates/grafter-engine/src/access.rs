//! API tokens and the audit log (docs/access.md). A token's secret is
//! `gft_` and 43 characters of base64url: 256 random bits. Only its SHA-256
//! is stored: a fast hash is enough for a secret no one can guess (a slow
//! one would only protect guessable passwords), and lets every node check
//! each request's token with one indexed read.

use grafter_core::{validate_name, Timestamp, ValidationError};
use grafter_store::{
    ApiToken, AuditEntry, AuditList, AuditRecord, Scope, TokenInsert, TokenRevoke, TokenTouch,
};
use sha2::{Digest, Sha256};

use crate::{Engine, Result};

/// How every token's secret begins, so it is recognizable in a leak scan.
pub const TOKEN_PREFIX: &str = "gft_";
/// Most queue patterns one token names.
pub const MAX_TOKEN_QUEUES: usize = 100;
/// The longest page of the audit log.
pub const MAX_AUDIT_PAGE: usize = 1_000;

/// Presets for the usual roles, accepted wherever scopes are, and stored as
/// the scopes they stand for.
pub const PRESETS: [(&str, &[Scope]); 3] = [
    ("producer", &[Scope::Enqueue, Scope::Read]),
    ("worker", &[Scope::Work]),
    ("operator", &[Scope::Read, Scope::Manage, Scope::Queues]),
];

/// A token to make.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// What it is for.
    pub name: String,
    /// Scope or preset names.
    pub scopes: Vec<String>,
    /// Queue patterns (`*` matches any run of characters); empty: all queues.
    pub queues: Vec<String>,
    /// When it stops working (in the future), if ever.
    pub expires_at: Option<Timestamp>,
}

/// A new token and its secret, which is nowhere else.
#[derive(Clone, Debug)]
pub struct CreatedToken {
    /// The token as stored.
    pub token: ApiToken,
    /// Its secret, to show once.
    pub secret: String,
}

/// Whether `queue` matches `pattern`, where `*` matches any run of
/// characters (none included) and everything else only itself.
pub fn queue_matches(pattern: &str, queue: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = queue.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The scopes that scope and preset names stand for, each once, in order.
pub fn expand_scopes(names: &[String]) -> Result<Vec<Scope>, ValidationError> {
    if names.is_empty() {
        return Err(ValidationError::new("scopes", "name at least one scope"));
    }
    let mut scopes = Vec::new();
    for name in names {
        match PRESETS.iter().find(|(preset, _)| preset == name) {
            Some((_, named)) => scopes.extend_from_slice(named),
            None => scopes.push(Scope::from_name(name).ok_or_else(|| {
                ValidationError::new(
                    "scopes",
                    format!(
                        "'{name}' is no scope: use enqueue, read, work, manage, queues, admin, \
                         metrics or a preset (producer, worker, operator)"
                    ),
                )
            })?),
        }
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// The SHA-256 of a secret, as hex: what a token is looked up by.
fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Engine {
    /// Makes a token; its secret is in the answer and nowhere else.
    pub async fn token_create(&self, spec: TokenSpec) -> Result<CreatedToken> {
        let now = self.now();
        // A name and queue patterns are names as queues' are (a `*` is one
        // more character): no control or invisible characters, no spaces at
        // either end, at most 255 bytes.
        validate_name("name", &spec.name)?;
        let scopes = expand_scopes(&spec.scopes)?;
        if spec.queues.len() > MAX_TOKEN_QUEUES {
            return Err(ValidationError::new(
                "queues",
                format!("at most {MAX_TOKEN_QUEUES} patterns"),
            )
            .into());
        }
        for pattern in &spec.queues {
            validate_name("queues", pattern)?;
        }
        if spec.expires_at.is_some_and(|at| at <= now) {
            return Err(ValidationError::new("expires_at", "must be in the future").into());
        }
        let secret = format!(
            "{TOKEN_PREFIX}{}",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                rand::random::<[u8; 32]>()
            )
        );
        let token = ApiToken {
            id: format!("tok_{}", hex::encode(rand::random::<[u8; 8]>())),
            name: spec.name,
            scopes,
            queues: spec.queues,
            expires_at: spec.expires_at,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        self.store()
            .token_insert(TokenInsert {
                token: token.clone(),
                secret_sha256: secret_sha256(&secret),
            })
            .await?;
        Ok(CreatedToken { token, secret })
    }

    /// The stored token a secret belongs to, whatever its state (revoked,
    /// expired): the caller decides what that state allows.
    pub async fn token_of_secret(&self, secret: &str) -> Result<Option<ApiToken>> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        Ok(self.store().token_by_secret(secret_sha256(secret)).await?)
    }

    /// The token with this id, whatever its state.
    pub async fn token_get(&self, id: &str) -> Result<Option<ApiToken>> {
        Ok(self.store().token_get(id.to_owned()).await?)
    }

    /// Every token, oldest first.
    pub async fn tokens_list(&self) -> Result<Vec<ApiToken>> {
        Ok(self.store().tokens_list().await?)
    }

    /// Revokes a token; `None` when there is no such token.
    pub async fn token_revoke(&self, id: &str) -> Result<Option<ApiToken>> {
        let now = self.now();
        Ok(self
            .store()
            .token_revoke(TokenRevoke {
                id: id.to_owned(),
                now,
            })
            .await?)
    }

    /// Records that a token was used now.
    pub async fn token_touch(&self, id: &str) -> Result<()> {
        let now = self.now();
        Ok(self
            .store()
            .token_touch(TokenTouch {
                id: id.to_owned(),
                now,
            })
            .await?)
    }

    /// Writes a change to the audit log, stamped now.
    pub async fn audit_record(
        &self,
        token_id: Option<String>,
        actor: String,
        action: &str,
        target: String,
        details: Option<serde_json::Value>,
    ) -> Result<AuditRecord> {
        let entry = AuditEntry {
            at: self.now(),
            token_id,
            actor,
            action: action.to_owned(),
            target,
            details,
        };
        Ok(self.store().audit_append(entry).await?)
    }

    /// A page of the audit log, newest first.
    pub async fn audit_list(&self, before: Option<i64>, limit: usize) -> Result<Vec<AuditRecord>> {
        let limit = limit.clamp(1, MAX_AUDIT_PAGE);
        Ok(self.store().audit_list(AuditList { before, limit }).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_with_stars_anywhere() {
        for (pattern, queue, matches) in [
            ("emails*", "emails", true),
            ("emails*", "emails-eu", true),
            ("emails*", "billing", false),
            ("emails*", "my-emails", false),
            ("emails", "emails", true),
            ("emails", "emails2", false),
            ("*", "", true),
            ("*", "anything", true),
            ("*-eu", "mail-eu", true),
            ("*-eu", "mail-us", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("ab*ba", "aba", false),
            ("ab*ba", "abba", true),
        ] {
            assert_eq!(
                queue_matches(pattern, queue),
                matches,
                "{pattern} ~ {queue}"
            );
        }
    }

    #[test]
    fn presets_expand_and_unknown_names_are_refused() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            expand_scopes(&names(&["operator", "read"])).unwrap(),
            vec![Scope::Read, Scope::Manage, Scope::Queues]
        );
        assert_eq!(
            expand_scopes(&names(&["producer"])).unwrap(),
            vec![Scope::Enqueue, Scope::Read]
        );
        assert_eq!(
            expand_scopes(&names(&["worker"])).unwrap(),
            vec![Scope::Work]
        );
        assert_eq!(
            expand_scopes(&names(&["root"])).unwrap_err().field,
            "scopes"
        );
        assert_eq!(expand_scopes(&[]).unwrap_err().field, "scopes");
    }
}
