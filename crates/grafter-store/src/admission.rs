//! Admission to a limited queue, the same on every store: from the jobs of
//! each partition running now and started within the rate window, which of
//! the queue's available jobs (offered in hand-out order) a fetch may lease.
//!
//! A store holds the queue's lock (PostgreSQL: an advisory lock; SQLite: its
//! one writer) from counting until its leases commit, so the counts are
//! exact: a slot is a running job, read from the jobs table, never a counter.
//!
//! Fairness: the store asks for candidates outside the partitions already
//! full ([`Admission::full`]); when a partition fills up in the middle of a
//! batch of candidates, the rest of that partition are refused and the store
//! looks again without it. So a partition at its limit never hides another's
//! jobs behind its own, and each look fills at least one more partition.

use std::collections::{BTreeSet, HashMap};

use grafter_core::limits::PartitionBy;
use grafter_core::QueueLimits;

/// How long past its rate window a start is kept before a fetch deletes it.
/// A fetch reads its clock before it waits (for a connection, for the
/// queue's lock), so one that waited admits with an earlier `now` than one
/// that went ahead of it: it must still find every start of its own window,
/// which the other's window had already left. Those waits are bounded well
/// under this (the pool's and the lock's timeouts).
pub const STARTS_KEPT_PAST_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`Admission::offer`] did with a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Lease it.
    Taken,
    /// Its partition is full now; look again without it.
    PartitionFull,
    /// The fetch has all it may lease (its `max`, its byte budget, or the
    /// queue-wide running limit).
    Done,
}

/// One fetch's admission to one limited queue.
#[derive(Debug)]
pub struct Admission {
    limits: QueueLimits,
    room: HashMap<String, u64>,
    fresh_room: Option<u64>,
    full: BTreeSet<String>,
    left: usize,
    bytes_left: u64,
    first_free: bool,
    taken: Vec<(i64, String)>,
    refused: bool,
    started: HashMap<String, u64>,
}

impl Admission {
    /// Starts an admission: `running` and `started` are, per partition (the
    /// empty string for an unpartitioned queue), the jobs running now and
    /// those started within the rate window. `running_limit` caps the
    /// queue's running jobs on top (a push queue's concurrency). The fetch
    /// may lease `max` jobs whose args take `max_bytes`, the first whatever
    /// its size if `first_free` (nothing leased from another queue yet).
    pub fn new(
        limits: QueueLimits,
        running: &HashMap<String, u64>,
        started: &HashMap<String, u64>,
        (max, max_bytes, first_free): (usize, usize, bool),
        running_limit: Option<usize>,
    ) -> Self {
        let total_running: u64 = running.values().sum();
        let mut left = max;
        if let Some(cap) = running_limit {
            left = left.min((cap as u64).saturating_sub(total_running) as usize);
        }
        let mut room = HashMap::new();
        let mut full = BTreeSet::new();
        for partition in running.keys().chain(started.keys()) {
            let r = limits
                .room(
                    running.get(partition).copied().unwrap_or(0),
                    started.get(partition).copied().unwrap_or(0),
                )
                .unwrap_or(u64::MAX);
            if r == 0 {
                full.insert(partition.clone());
            }
            room.insert(partition.clone(), r);
        }
        let fresh_room = limits.room(0, 0);
        Admission {
            limits,
            room,
            fresh_room,
            full,
            left,
            bytes_left: max_bytes as u64,
            first_free,
            taken: Vec::new(),
            refused: false,
            started: started.clone(),
        }
    }

    /// The limits admitted against.
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// How many more jobs this fetch may lease (0: done, ask no more).
    pub fn wanted(&self) -> usize {
        if self.limits.partition_by() == PartitionBy::Queue && !self.full.is_empty() {
            return 0;
        }
        self.left
    }

    /// Partitions with no room: the next look for candidates leaves them out.
    pub fn full(&self) -> Vec<String> {
        self.full.iter().cloned().collect()
    }

    /// Ids already taken: the next look leaves them out too.
    pub fn taken_ids(&self) -> Vec<i64> {
        self.taken.iter().map(|(id, _)| *id).collect()
    }

    /// Offers the next candidate in hand-out order: job `id` of `partition`,
    /// whose args take `size` bytes. The first job taken is taken whatever
    /// its size; later ones only within the byte budget.
    pub fn offer(&mut self, id: i64, partition: &str, size: u64) -> Offer {
        if self.left == 0 {
            return Offer::Done;
        }
        if (!self.first_free || !self.taken.is_empty()) && size > self.bytes_left {
            self.left = 0;
            return Offer::Done;
        }
        let room = self
            .room
            .entry(partition.to_owned())
            .or_insert(self.fresh_room.unwrap_or(u64::MAX));
        if *room == 0 {
            self.full.insert(partition.to_owned());
            self.refused = true;
            return Offer::PartitionFull;
        }
        *room -= 1;
        if *room == 0 {
            self.full.insert(partition.to_owned());
        }
        self.bytes_left = self.bytes_left.saturating_sub(size);
        self.left -= 1;
        self.taken.push((id, partition.to_owned()));
        Offer::Taken
    }

    /// After a look that returned `got` candidates for `asked`: whether to
    /// look again. Only when a candidate was refused because its partition
    /// filled up meanwhile (so the next look, without that partition, can
    /// find others) and the look did not run out of candidates.
    pub fn look_again(&mut self, got: usize, asked: usize) -> bool {
        let refused = std::mem::take(&mut self.refused);
        refused && got == asked && self.left > 0
    }

    /// The jobs to lease, each with its partition, in the order taken.
    pub fn taken(&self) -> &[(i64, String)] {
        &self.taken
    }

    /// Whether, with the jobs taken, some partition's rate window is full:
    /// a fetch waiting on the queue should look again when it frees.
    pub fn rate_full(&self) -> bool {
        let Some(rate) = self.limits.rate else {
            return false;
        };
        let mut started = self.started.clone();
        for (_, partition) in &self.taken {
            *started.entry(partition.clone()).or_default() += 1;
        }
        started.values().any(|&n| n >= rate.count.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits(value: serde_json::Value) -> QueueLimits {
        serde_json::from_value(value).unwrap()
    }

    fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect()
    }

    #[test]
    fn a_full_partition_is_left_out_and_others_are_taken() {
        let l = limits(json!({"concurrency": 2, "partition_by": "partition"}));
        let mut a = Admission::new(
            l,
            &counts(&[("a", 2)]),
            &counts(&[]),
            (10, 1 << 20, true),
            None,
        );
        assert_eq!(a.full(), ["a"]);
        // A look without "a": b's three jobs, c's one.
        assert_eq!(a.offer(1, "b", 1), Offer::Taken);
        assert_eq!(a.offer(2, "b", 1), Offer::Taken);
        assert_eq!(a.offer(3, "b", 1), Offer::PartitionFull);
        assert_eq!(a.offer(4, "c", 1), Offer::Taken);
        assert!(a.look_again(4, 4));
        assert_eq!(a.full(), ["a", "b"]);
        assert_eq!(a.offer(5, "c", 1), Offer::Taken);
        assert!(!a.look_again(1, 6));
        assert_eq!(a.taken_ids(), [1, 2, 4, 5]);
    }

    #[test]
    fn the_queue_wide_cap_the_max_and_the_byte_budget_stop_a_fetch() {
        let l = limits(json!({"rate": {"count": 100, "period_ms": 1000}}));
        let mut a = Admission::new(
            l.clone(),
            &counts(&[("", 3)]),
            &counts(&[("", 99)]),
            (5, 100, true),
            None,
        );
        assert_eq!(a.offer(1, "", 500), Offer::Taken);
        assert_eq!(a.wanted(), 0);
        let mut a = Admission::new(
            l.clone(),
            &counts(&[("", 3)]),
            &counts(&[]),
            (5, 100, true),
            Some(4),
        );
        assert_eq!(a.wanted(), 1);
        assert_eq!(a.offer(1, "", 500), Offer::Taken);
        assert_eq!(a.offer(2, "", 1), Offer::Done);
        let mut a = Admission::new(l.clone(), &counts(&[]), &counts(&[]), (5, 100, true), None);
        assert_eq!(a.offer(1, "", 60), Offer::Taken);
        assert_eq!(a.offer(2, "", 60), Offer::Done);
        assert_eq!(a.wanted(), 0);
        assert!(!a.rate_full());
        let started = counts(&[("", 99)]);
        let mut a = Admission::new(l.clone(), &counts(&[]), &started, (5, 100, false), None);
        assert_eq!(a.offer(1, "", 101), Offer::Done);
        let mut a = Admission::new(l, &counts(&[]), &started, (5, 100, false), None);
        assert!(!a.rate_full());
        assert_eq!(a.offer(1, "", 100), Offer::Taken);
        assert!(a.rate_full());
    }

    #[test]
    fn a_limit_lowered_below_what_runs_admits_nothing() {
        let l = limits(json!({"concurrency": 1}));
        let a = Admission::new(l, &counts(&[("", 3)]), &counts(&[]), (5, 100, true), None);
        assert_eq!(a.full(), [""]);
        assert_eq!(a.wanted(), 0);
    }
}
