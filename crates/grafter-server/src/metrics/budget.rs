//! Bounded label cardinality: queue and kind names come from applications,
//! so each family keyed by them takes at most a fixed number of distinct
//! values; later ones are counted under [`OTHER`] instead of growing every
//! scrape (and Prometheus) without bound.

use std::collections::HashSet;
use std::sync::Mutex;

/// The label value of whatever is past a budget (and, for a batch-acked
/// job this node did not lease, of its unknown queue and kind).
pub const OTHER: &str = "_other";

/// Most distinct queues in the per-queue families.
pub const MAX_QUEUES: usize = 1_000;
/// Most distinct (queue, kind) pairs in the per-kind families.
pub const MAX_QUEUE_KINDS: usize = 2_000;

/// The values a family has taken, up to a maximum.
pub struct Budget<T> {
    seen: Mutex<HashSet<T>>,
    max: usize,
}

impl<T: std::hash::Hash + Eq + Clone> Budget<T> {
    pub fn new(max: usize) -> Self {
        Budget {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// Whether `value` may be a label: seen before, or room for it.
    pub fn admits(&self, value: &T) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return true;
        }
        if seen.len() >= self.max {
            return false;
        }
        seen.insert(value.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_admits_what_it_has_seen_and_no_more_new_values() {
        let budget = Budget::new(2);
        assert!(budget.admits(&"a") && budget.admits(&"b"));
        assert!(!budget.admits(&"c"), "over the budget");
        assert!(budget.admits(&"a"), "seen before");
    }
}
