//! Maintenance services: small loops of one shape that keep job states true as
//! time passes. Each does a bounded batch per pass, goes again at once while
//! batches come back full, and otherwise sleeps its interval; all stop with
//! the cancellation token.
//!
//! - [`scheduler`]: due `scheduled`/`retryable` jobs become `available`;
//! - [`rescuer`]: silent workers are forgotten and expired leases become
//!   failed attempts;
//! - [`expirer`]: jobs past `expires_at` become `expired`;
//! - [`pruner`]: finished jobs past their retention are deleted;
//! - [`periodic`]: due schedules fire (each slot enqueued once).
//!
//! They act only on the node that holds the `maintenance` leadership
//! ([`leader`]), so a cluster does each job's maintenance once; when the leader
//! dies another node takes over within the leadership's TTL.
//!
//! Every service runs supervised: a pass that fails is logged and tried again
//! next interval, and a service that panics is logged and restarted (an
//! elector that panics first stops this node from acting as leader).
//! [`MaintenanceHealth`] shows each service's state, so one that keeps
//! failing is visible (`/readyz`, `/metrics`) rather than silently gone.

mod config;
mod expirer;
mod health;
pub mod leader;
mod periodic;
mod pruner;
mod rescuer;
mod scheduler;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Engine;

pub use config::{MaintenanceConfig, RetentionConfig};
pub use health::{MaintenanceHealth, ServiceHealth};

/// One bounded pass of a service; answers how many jobs it touched.
type PassFuture = Pin<Box<dyn Future<Output = crate::Result<u64>> + Send>>;

/// One maintenance service: its name (in logs, health and metrics), how long
/// it sleeps after a pass that was not full, the most jobs a pass touches (a
/// full pass runs again at once), and its pass.
struct Service {
    name: &'static str,
    interval: Duration,
    batch_size: usize,
    pass: Box<dyn Fn() -> PassFuture + Send + Sync>,
}

/// How long a panicked service waits before it is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The running services.
pub struct Maintenance {
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl Maintenance {
    /// Starts the elector and every service on `engine`'s store, reporting
    /// to `health`.
    pub fn start(
        engine: &Engine,
        config: &MaintenanceConfig,
        retention: &RetentionConfig,
        health: MaintenanceHealth,
        cancel: CancellationToken,
    ) -> Maintenance {
        let mut tasks = JoinSet::new();
        let (elector, leading) = leader::Elector::new(engine.clone(), config.leader_ttl());
        tasks.spawn(leader::supervise(elector, health.clone(), cancel.clone()));
        let batch_size = config.batch_size;
        let stale_after = config.worker_stale_after();
        let services = [
            Service {
                name: "scheduler",
                interval: config.schedule_interval(),
                batch_size,
                pass: with(engine, move |engine| scheduler::pass(engine, batch_size)),
            },
            Service {
                name: "rescuer",
                interval: config.rescue_interval(),
                batch_size,
                pass: with(engine, move |engine| {
                    rescuer::pass(engine, batch_size, stale_after)
                }),
            },
            Service {
                name: "expirer",
                interval: config.expire_interval(),
                batch_size,
                pass: with(engine, move |engine| expirer::pass(engine, batch_size)),
            },
            Service {
                name: "periodic",
                interval: config.periodic_interval(),
                batch_size,
                pass: with(engine, move |engine| periodic::pass(engine, batch_size)),
            },
            Service {
                name: "pruner",
                interval: Duration::from_millis(retention.interval_ms),
                batch_size,
                pass: with(engine, {
                    let retention = retention.clone();
                    move |engine| pruner::pass(engine, retention.clone(), batch_size)
                }),
            },
        ];
        for service in services {
            let service = Arc::new(service);
            let (leading, health, cancel) = (leading.clone(), health.clone(), cancel.clone());
            tasks.spawn(supervised(
                service.name,
                health.clone(),
                cancel.clone(),
                move || {
                    run_periodically(
                        service.clone(),
                        leading.clone(),
                        health.clone(),
                        cancel.clone(),
                    )
                },
                || {},
            ));
        }
        Maintenance { tasks, cancel }
    }

    /// Stops every service and waits for them to finish their pass.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A service's pass: `pass` on a clone of `engine` each time.
fn with<Fut>(
    engine: &Engine,
    pass: impl Fn(Engine) -> Fut + Send + Sync + 'static,
) -> Box<dyn Fn() -> PassFuture + Send + Sync>
where
    Fut: Future<Output = crate::Result<u64>> + Send + 'static,
{
    let engine = engine.clone();
    Box::new(move || Box::pin(pass(engine.clone())))
}

/// Runs the task `start` makes until it ends (on cancellation), making and
/// running a new one whenever it panics; `on_panic` runs first.
async fn supervised<Fut>(
    name: &'static str,
    health: MaintenanceHealth,
    cancel: CancellationToken,
    start: impl Fn() -> Fut,
    on_panic: impl Fn(),
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(error) => {
                on_panic();
                let message = panic_message(error);
                tracing::error!(service = name, panic = %message, "maintenance service panicked; restarting it");
                health.failed(name, &format!("panicked: {message}"));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RESTART_DELAY) => {}
        }
    }
}

/// What a task's join error says, for the log.
fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    let payload = error.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// The loop every service runs while this node leads.
async fn run_periodically(
    service: Arc<Service>,
    mut leading: watch::Receiver<bool>,
    health: MaintenanceHealth,
    cancel: CancellationToken,
) {
    let (name, interval) = (service.name, service.interval);
    tracing::debug!(service = name, ?interval, "maintenance service started");
    loop {
        if !*leading.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = leading.changed() => continue,
            }
        }
        let wait = match (service.pass)().await {
            Ok(touched) => {
                health.passed(name);
                if touched as usize >= service.batch_size {
                    Duration::ZERO
                } else {
                    if touched > 0 {
                        tracing::debug!(service = name, touched, "maintenance pass");
                    }
                    interval
                }
            }
            Err(error) => {
                tracing::warn!(service = name, %error, "maintenance pass failed; will retry");
                health.failed(name, &error.to_string());
                interval
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!(service = name, "maintenance service stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_service_that_panics_is_restarted_and_shown_failing() {
        let health = MaintenanceHealth::default();
        let cancel = CancellationToken::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let panics_seen = Arc::new(AtomicUsize::new(0));
        let start = {
            let (starts, cancel) = (starts.clone(), cancel.clone());
            move || {
                let (starts, cancel) = (starts.clone(), cancel.clone());
                async move {
                    if starts.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("a stored value the service could not handle");
                    }
                    cancel.cancelled().await;
                }
            }
        };
        let on_panic = {
            let panics_seen = panics_seen.clone();
            move || {
                panics_seen.fetch_add(1, Ordering::SeqCst);
            }
        };
        let supervisor = tokio::spawn(supervised(
            "rescuer",
            health.clone(),
            cancel.clone(),
            start,
            on_panic,
        ));
        while starts.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            panics_seen.load(Ordering::SeqCst),
            2,
            "on_panic runs per panic"
        );
        let rescuer = health.snapshot()["rescuer"].clone();
        assert_eq!(rescuer.failures_in_a_row, 2);
        assert!(rescuer.failing());
        assert!(
            rescuer
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("could not handle")),
            "{rescuer:?}"
        );
        cancel.cancel();
        supervisor.await.unwrap();
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "not started again once stopped"
        );
    }
}
