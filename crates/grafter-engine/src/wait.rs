//! Long-polling on top of [`Store::jobs_fetch`], for [`crate::Engine::fetch`].

use std::future::Future;
use std::time::Duration;

use grafter_core::LeasedJob;
use grafter_store::{JobsFetch, Result, Store};

/// Fetches jobs, waiting up to `wait` for some to become available. Wakes
/// when work is announced on one of its queues rather than polling; returns
/// what it has (possibly nothing) when `wait` ends or `stop` completes.
pub(crate) async fn jobs_fetch_waiting(
    store: &dyn Store,
    params: impl Fn() -> JobsFetch,
    wait: Duration,
    stop: impl Future<Output = ()>,
) -> Result<Vec<LeasedJob>> {
    let deadline = tokio::time::Instant::now() + wait;
    let first = params();
    if wait.is_zero() {
        return store.jobs_fetch(first).await;
    }
    // Registered before the first look, so work announced between a look and
    // the wait after it still wakes this fetch.
    let waiter = store.wakeups().waiter(&first.queues);
    let queues = first.queues.clone();
    tokio::pin!(stop);
    let mut fetch = first;
    loop {
        let now = fetch.now;
        let jobs = store.jobs_fetch(fetch).await?;
        if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(jobs);
        }
        // A rate window that frees a start announces nothing: look again
        // then, as the store's admission said.
        let reopens = store
            .limited()
            .reopens_at(&queues)
            .and_then(|at| (at - now).to_std().ok())
            .map_or(deadline, |after| {
                deadline.min(tokio::time::Instant::now() + after)
            });
        tokio::select! {
            _ = waiter.woken() => {}
            _ = tokio::time::sleep_until(reopens) => {}
            _ = &mut stop => return Ok(Vec::new()),
        }
        fetch = params();
    }
}
