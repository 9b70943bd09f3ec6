//! Long-polling on top of [`Store::jobs_fetch`], for [`crate::Engine::fetch`].

use std::future::Future;
use std::time::Duration;

use grafter_core::LeasedJob;
use grafter_store::{JobsFetch, Result, Store};

/// Fetches jobs, waiting up to `wait` for some to become available. Wakes on
/// the store's availability signal rather than polling; returns what it has
/// (possibly nothing) when `wait` ends or `stop` completes.
pub(crate) async fn jobs_fetch_waiting(
    store: &dyn Store,
    params: impl Fn() -> JobsFetch,
    wait: Duration,
    stop: impl Future<Output = ()>,
) -> Result<Vec<LeasedJob>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut availability = store.job_availability();
    tokio::pin!(stop);
    loop {
        // Mark the current value seen before looking, so a job that becomes
        // available between the look and the wait still wakes us.
        availability.borrow_and_update();
        let jobs = store.jobs_fetch(params()).await?;
        if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(jobs);
        }
        tokio::select! {
            changed = availability.changed() => {
                if changed.is_err() {
                    return Ok(Vec::new());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = &mut stop => return Ok(Vec::new()),
        }
    }
}
