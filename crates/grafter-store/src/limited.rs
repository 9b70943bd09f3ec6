//! Which queues have limits, as this process last learned: the fetch takes
//! the admission path (a lock and counts) only for these, so unlimited queues
//! pay nothing for the feature. A store keeps it exact for its own changes;
//! a shared store (PostgreSQL) also re-reads it when a fetch comes back short
//! and at least every second, and its plain fetch statement refuses a queue
//! that has limits, so a stale entry can delay a queue's jobs, never let one
//! past its limit.
//!
//! Each entry also keeps when the queue's rate window next lets a job start,
//! if a fetch found it full: a fetch waiting on the queue looks again then,
//! since nothing else announces the passing of time.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use grafter_core::Timestamp;

/// Limited queues, each with when its full rate window next frees a start.
#[derive(Debug, Default)]
pub struct Limited {
    queues: Mutex<HashMap<String, Option<Timestamp>>>,
}

impl Limited {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, Option<Timestamp>>> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `queue` has limits, as far as this process knows.
    pub fn contains(&self, queue: &str) -> bool {
        self.queues().contains_key(queue)
    }

    /// Whether any queue has limits.
    pub fn is_empty(&self) -> bool {
        self.queues().is_empty()
    }

    /// Every limited queue, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.queues().keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Records whether `queue` has limits.
    pub fn set(&self, queue: &str, limited: bool) {
        let mut queues = self.queues();
        if limited {
            queues.entry(queue.to_owned()).or_insert(None);
        } else {
            queues.remove(queue);
        }
    }

    /// Replaces the whole set with `names` (read from the store).
    pub fn replace(&self, names: impl IntoIterator<Item = String>) {
        let mut queues = self.queues();
        let mut next: HashMap<String, Option<Timestamp>> = HashMap::new();
        for name in names {
            let reopens = queues.get(&name).copied().flatten();
            next.insert(name, reopens);
        }
        *queues = next;
    }

    /// Records when `queue`'s full rate window next frees a start (`None`:
    /// it is not full).
    pub fn set_reopens_at(&self, queue: &str, at: Option<Timestamp>) {
        if let Some(entry) = self.queues().get_mut(queue) {
            *entry = at;
        }
    }

    /// The earliest time one of `queues` has a rate window freeing a start.
    pub fn reopens_at(&self, queues: &[String]) -> Option<Timestamp> {
        let known = self.queues();
        queues
            .iter()
            .filter_map(|q| known.get(q).copied().flatten())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn entries_keep_their_reopening_across_a_reread() {
        let limited = Limited::default();
        assert!(limited.is_empty());
        limited.set("a", true);
        limited.set("b", true);
        let t = Utc.timestamp_opt(1_000, 0).unwrap();
        limited.set_reopens_at("a", Some(t));
        limited.set_reopens_at("zzz", Some(t));
        assert_eq!(limited.reopens_at(&["a".into(), "b".into()]), Some(t));
        limited.replace(["a".to_owned(), "c".to_owned()]);
        assert_eq!(limited.names(), ["a", "c"]);
        assert_eq!(limited.reopens_at(&["a".into()]), Some(t));
        limited.set("a", false);
        assert!(!limited.contains("a"));
        assert_eq!(limited.reopens_at(&["a".into(), "c".into()]), None);
    }
}
