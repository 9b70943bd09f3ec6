//! Who is waiting for work on which queues, and the wake-ups when some may
//! have arrived. A long-polling fetch registers a [`Waiter`] for its queues;
//! news of work on a queue wakes only the waiters of that queue, so 500
//! fetches waiting on an idle queue cost nothing when jobs arrive elsewhere.
//!
//! A wake-up is kept until its waiter looks (a stored permit), so work that
//! arrives between a waiter's look at the store and its wait still wakes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The waiters of one store in this process. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Wakeups {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    /// Per queue, its waiters by id.
    queues: HashMap<String, HashMap<u64, Arc<Notify>>>,
}

/// One registered wait on some queues; unregisters when dropped.
#[derive(Debug)]
pub struct Waiter {
    id: u64,
    queues: Vec<String>,
    notify: Arc<Notify>,
    wakeups: Wakeups,
}

impl Wakeups {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a wait for work on any of `queues`.
    pub fn waiter(&self, queues: &[String]) -> Waiter {
        let notify = Arc::new(Notify::new());
        let mut registry = self.registry();
        let id = registry.next_id;
        registry.next_id += 1;
        for queue in queues {
            registry
                .queues
                .entry(queue.clone())
                .or_default()
                .insert(id, notify.clone());
        }
        Waiter {
            id,
            queues: queues.to_vec(),
            notify,
            wakeups: self.clone(),
        }
    }

    /// Wakes the waiters of these queues.
    pub fn wake<'q>(&self, queues: impl IntoIterator<Item = &'q str>) {
        let registry = self.registry();
        for queue in queues {
            if let Some(waiters) = registry.queues.get(queue) {
                waiters.values().for_each(|notify| notify.notify_one());
            }
        }
    }

    /// Wakes every waiter: after news that may have been missed (a listener
    /// that reconnected), or that names no queue (a polling fallback).
    pub fn wake_all(&self) {
        let registry = self.registry();
        for waiters in registry.queues.values() {
            waiters.values().for_each(|notify| notify.notify_one());
        }
    }

    /// Whether no wait is registered at all.
    pub fn is_idle(&self) -> bool {
        self.registry().queues.is_empty()
    }

    /// How many waits are registered on `queue`, for tests and diagnostics.
    pub fn waiting_on(&self, queue: &str) -> usize {
        self.registry().queues.get(queue).map_or(0, HashMap::len)
    }
}

impl Waiter {
    /// Completes once work may have arrived on one of the queues since this
    /// waiter was registered or last woken.
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut registry = self.wakeups.registry();
        for queue in &self.queues {
            if let Some(waiters) = registry.queues.get_mut(queue) {
                waiters.remove(&self.id);
                if waiters.is_empty() {
                    registry.queues.remove(queue);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn queues(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    async fn woken_soon(waiter: &Waiter) -> bool {
        tokio::time::timeout(Duration::from_millis(50), waiter.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_waiters_of_a_queue_wake() {
        let wakeups = Wakeups::default();
        let mail = wakeups.waiter(&queues(&["mail"]));
        let both = wakeups.waiter(&queues(&["mail", "reports"]));
        let reports = wakeups.waiter(&queues(&["reports"]));
        wakeups.wake(["mail"]);
        assert!(woken_soon(&mail).await);
        assert!(woken_soon(&both).await);
        assert!(
            !woken_soon(&reports).await,
            "news of mail woke a reports waiter"
        );
        wakeups.wake(["elsewhere"]);
        assert!(!woken_soon(&mail).await);
        wakeups.wake_all();
        assert!(woken_soon(&reports).await);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_a_dropped_waiter_leaves() {
        let wakeups = Wakeups::default();
        let waiter = wakeups.waiter(&queues(&["mail"]));
        wakeups.wake(["mail", "mail"]);
        assert!(woken_soon(&waiter).await, "woken before it waited");
        assert!(!woken_soon(&waiter).await, "two wakes are one permit");
        assert_eq!(wakeups.waiting_on("mail"), 1);
        drop(waiter);
        assert_eq!(wakeups.waiting_on("mail"), 0);
    }
}
