//! Where the engine reads the time. Every job operation and maintenance pass
//! takes "now" from one [`Clock`], so tests can hold time still or move it,
//! and the stores never read a clock of their own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use grafter_core::{time, Timestamp};

/// The engine's source of "now": the system clock, or a manual one for tests.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<Timestamp>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// A clock that stands at `at` until [`Clock::set`] or [`Clock::advance`]
    /// moves it. Clones share the time.
    pub fn manual(at: Timestamp) -> Self {
        Clock {
            manual: Some(Arc::new(Mutex::new(at))),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match &self.manual {
            Some(at) => *at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            None => Utc::now(),
        }
    }

    /// Moves a manual clock to `at`; the system clock cannot be set.
    pub fn set(&self, at: Timestamp) {
        if let Some(manual) = &self.manual {
            *manual
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = at;
        }
    }

    /// Moves a manual clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.set(time::after(self.now(), by));
    }

    /// `delay` from now, saturating at the latest storable time.
    pub fn after(&self, delay: Duration) -> Timestamp {
        time::after(self.now(), delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = Timestamp::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = Clock::manual(start);
        let shared = clock.clone();
        assert_eq!(clock.now(), start);
        shared.advance(Duration::from_secs(5));
        assert_eq!(clock.now().timestamp(), 1_700_000_005);
        assert_eq!(clock.after(Duration::MAX), time::latest());
        let system = Clock::system();
        system.set(start);
        assert!(system.now() > start, "the system clock cannot be set");
    }
}
