//! Wake-ups for long-polling fetches: the `job_availability` counter.
//!
//! With `listen` on, one task holds a dedicated connection (outside the pool,
//! since a pooled connection is shared and `LISTEN` is per session) that listens
//! on the schema's channel and bumps the counter on every notification. When
//! that connection drops it reconnects with backoff, and bumps the counter once
//! it is back, since notifications sent meanwhile were lost.
//!
//! With `listen` off (PgBouncer in transaction mode, where a session is not
//! kept and `LISTEN` does not work), a task bumps the counter every
//! `poll_interval` instead, so waiting fetches look again that often.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::quote_ident;

/// First wait before reconnecting the listener; doubles up to [`MAX_RECONNECT_DELAY`].
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);
/// How often an idle listener connection is checked: a connection whose peer
/// vanished without a FIN would otherwise look healthy (and silent) for hours.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(30);
/// How long the health check may take before the connection counts as dead.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Tells every node listening on the channel that jobs may have become
/// available, after the change committed and outside its transaction.
///
/// A transaction that sends `NOTIFY` holds a database-wide lock from its
/// commit until that commit is on disk, so enqueues that each notified waited
/// for each other's disk flushes one by one (a few thousand per second, however
/// many clients). Announcing after the commit takes that lock out of the
/// enqueue's path. Announcements are coalesced: one notification covers every
/// announcement made before it was sent, so a burst costs one or two. The
/// notifying transaction changes no data and commits with
/// `synchronous_commit` off, which only means the notification itself is not
/// waited onto disk; notifications are never kept across a restart anyway.
/// Rounds are at least [`NOTIFY_SPACING`] apart, so a steady stream of small
/// enqueues costs a few hundred notifying transactions a second, not one per
/// enqueue; the first announcement after a quiet spell goes out at once.
pub(crate) struct Announcer {
    wanted: Arc<Notify>,
}

impl Announcer {
    /// Starts the sending task on `pool`; it ends when `cancel` fires.
    pub(crate) fn spawn(pool: Pool, channel: &str, cancel: CancellationToken) -> Self {
        let wanted = Arc::new(Notify::new());
        let sql = format!(
            "BEGIN; SET LOCAL synchronous_commit TO off; SELECT pg_notify({}, ''); COMMIT",
            quote_literal(channel)
        );
        tokio::spawn(announce_loop(pool, sql, wanted.clone(), cancel));
        Announcer { wanted }
    }

    /// Asks for a notification; returns at once.
    pub(crate) fn announce(&self) {
        self.wanted.notify_one();
    }
}

/// `'a''b'` for `a'b`.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Least time between two notifications: the most another node's waiting
/// fetch can be delayed by the coalescing (this node's own wake at once).
const NOTIFY_SPACING: Duration = Duration::from_millis(2);

async fn announce_loop(pool: Pool, sql: String, wanted: Arc<Notify>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wanted.notified() => {}
        }
        // Whatever is announced from here on waits for the next round.
        let pause = match send(&pool, &sql).await {
            Ok(()) => NOTIFY_SPACING,
            Err(error) => {
                tracing::warn!(%error, "could not notify the other nodes; their waiting fetches look again when their wait ends");
                MIN_RECONNECT_DELAY
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn send(pool: &Pool, sql: &str) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    if let Err(e) = client.batch_execute(sql).await {
        // It may be left inside the failed transaction: never hand it out again.
        drop(Object::take(client));
        return Err(e.to_string());
    }
    Ok(())
}

/// Bumps the counter: jobs may have become available.
pub(crate) fn bump(availability: &watch::Sender<u64>) {
    availability.send_modify(|n| *n = n.wrapping_add(1));
}

/// Starts the listener task; it ends when `cancel` fires.
pub(crate) fn spawn_listener(
    config: tokio_postgres::Config,
    channel: String,
    availability: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut delay = MIN_RECONNECT_DELAY;
        loop {
            match listen(&config, &channel, &availability, &cancel).await {
                Ended::Cancelled => return,
                Ended::Lost { was_up, error } => {
                    if was_up {
                        delay = MIN_RECONNECT_DELAY;
                    }
                    tracing::warn!(%error, channel, retry_in = ?delay, "PostgreSQL listener lost its connection");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    });
}

/// Starts the polling fallback; it ends when `cancel` fires.
pub(crate) fn spawn_poller(
    every: Duration,
    availability: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let every = every.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => bump(&availability),
            }
        }
    });
}

enum Ended {
    Cancelled,
    Lost { was_up: bool, error: String },
}

/// One listening session, until the connection is lost or the store closes.
async fn listen(
    config: &tokio_postgres::Config,
    channel: &str,
    availability: &watch::Sender<u64>,
    cancel: &CancellationToken,
) -> Ended {
    let lost = |was_up, error: String| Ended::Lost { was_up, error };
    let connecting = tokio::select! {
        _ = cancel.cancelled() => return Ended::Cancelled,
        c = config.connect(NoTls) => c,
    };
    let (client, mut connection) = match connecting {
        Ok(pair) => pair,
        Err(e) => return lost(false, e.to_string()),
    };
    // Notifications arrive as messages on the connection, which must be polled
    // for the client's queries to make progress too.
    let driver_availability = availability.clone();
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => bump(&driver_availability),
                Some(Ok(_)) => {} // notices
                Some(Err(e)) => return e.to_string(),
                None => return "connection closed".to_owned(),
            }
        }
    });
    let outcome = async {
        if let Err(e) = client.batch_execute(&format!("LISTEN {}", quote_ident(channel))).await {
            return lost(false, e.to_string());
        }
        tracing::debug!(channel, "PostgreSQL listener up");
        // Anything announced while we were not listening was lost: look again.
        bump(availability);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                ended = &mut driver => {
                    return lost(true, ended.unwrap_or_else(|e| e.to_string()));
                }
                _ = tokio::time::sleep(HEALTH_CHECK_EVERY) => {
                    match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return lost(true, e.to_string()),
                        Err(_) => return lost(true, "health check timed out".to_owned()),
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    outcome
}
