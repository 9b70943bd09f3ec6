//! Wake-ups for long-polling fetches on every node: this node's waiters
//! ([`Wakeups`]) are woken by the notifications the other nodes send.
//!
//! A notification's payload is lines: the sending node's id (empty when an
//! application's transaction sent it), then the queues that may have work
//! (queue names hold no control characters). No queue lines mean any queue,
//! which is also what a payload that is not in this form means. A node skips
//! its own notifications: it woke its waiters when it announced.
//!
//! With `listen` on, one task holds a dedicated connection (outside the pool,
//! since a pooled connection is shared and `LISTEN` is per session) that
//! listens on the schema's channel and wakes the waiters of the queues each
//! notification names. When that connection drops it reconnects with
//! backoff, and wakes every waiter once it is back, since notifications sent
//! meanwhile were lost.
//!
//! The same connection listens on the events channel, where the trigger of
//! migration 14 sends `job:<id>` for each change of a watched job, and wakes
//! this node's event streams of that job ([`Store::watchers`]).
//!
//! With `listen` off (PgBouncer in transaction mode, where a session is not
//! kept and `LISTEN` does not work), a task wakes every waiter and every
//! event stream each `poll_interval` instead, so they look again that often.
//!
//! [`Store::watchers`]: grafter_store::Store::watchers

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use grafter_store::Wakeups;
use tokio::sync::Notify;
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
    pending: Arc<Pending>,
}

/// What the next notification is to name, and the signal to send it.
#[derive(Default)]
struct Pending {
    announced: Mutex<Announced>,
    /// Wakes the sending task.
    wanted: Notify,
}

/// Announced since the last notification went out.
#[derive(Default)]
struct Announced {
    queues: BTreeSet<String>,
    /// Every queue.
    all: bool,
}

impl Pending {
    fn announced(&self) -> MutexGuard<'_, Announced> {
        self.announced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes what is pending: the payload for `node`, or `None` if nothing is.
    fn take(&self, node: &str) -> Option<String> {
        let Announced { queues, all } = std::mem::take(&mut *self.announced());
        if all {
            return Some(payload(node, []));
        }
        (!queues.is_empty()).then(|| payload(node, queues.iter().map(String::as_str)))
    }
}

impl Announcer {
    /// Starts the sending task for `node` on `pool`; it ends when `cancel` fires.
    pub(crate) fn spawn(pool: Pool, channel: &str, node: &str, cancel: CancellationToken) -> Self {
        let pending = Arc::new(Pending::default());
        let sending = Sending {
            pool,
            channel: channel.to_owned(),
            node: node.to_owned(),
        };
        tokio::spawn(announce_loop(sending, pending.clone(), cancel));
        Announcer { pending }
    }

    /// Asks for a notification naming `queues`; returns at once.
    pub(crate) fn announce(&self, queues: &[&str]) {
        let mut announced = self.pending.announced();
        announced
            .queues
            .extend(queues.iter().map(|&q| q.to_owned()));
        drop(announced);
        self.pending.wanted.notify_one();
    }

    /// Asks for a notification naming every queue; returns at once.
    pub(crate) fn announce_all(&self) {
        self.pending.announced().all = true;
        self.pending.wanted.notify_one();
    }
}

/// Where the sending task sends, and as whom.
struct Sending {
    pool: Pool,
    channel: String,
    node: String,
}

/// Least time between two notifications: the most another node's waiting
/// fetch can be delayed by the coalescing (this node's own wake at once).
const NOTIFY_SPACING: Duration = Duration::from_millis(2);

async fn announce_loop(sending: Sending, pending: Arc<Pending>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = pending.wanted.notified() => {}
        }
        // Whatever is announced from here on waits for the next round.
        let Some(payload) = pending.take(&sending.node) else {
            continue;
        };
        let pause = match send(&sending, &payload).await {
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

/// Sends one notification, in one round trip.
async fn send(sending: &Sending, payload: &str) -> Result<(), String> {
    let client = sending.pool.get().await.map_err(|e| e.to_string())?;
    let sql = format!(
        "BEGIN; SET LOCAL synchronous_commit TO off; SELECT pg_notify({}, {}); COMMIT",
        quote_literal(&sending.channel),
        quote_literal(payload)
    );
    if let Err(e) = client.batch_execute(&sql).await {
        // It may be left inside the failed transaction: never hand it out again.
        drop(Object::take(client));
        return Err(e.to_string());
    }
    Ok(())
}

/// What the listener listens to, and whom it wakes.
pub(crate) struct Listening {
    /// The channel of new work.
    pub channel: String,
    /// The channel of live events.
    pub events_channel: String,
    /// This node, whose own notifications of new work it skips.
    pub node: String,
    /// The waiting fetches.
    pub wakeups: Wakeups,
    /// The event streams.
    pub watchers: Wakeups,
}

/// Starts the listener task; it ends when `cancel` fires.
pub(crate) fn spawn_listener(
    config: tokio_postgres::Config,
    listening: Listening,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut delay = MIN_RECONNECT_DELAY;
        loop {
            match listen(&config, &listening, &cancel).await {
                Ended::Cancelled => return,
                Ended::Lost { was_up, error } => {
                    if was_up {
                        delay = MIN_RECONNECT_DELAY;
                    }
                    tracing::warn!(%error, channel = listening.channel, retry_in = ?delay, "PostgreSQL listener lost its connection");
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

/// Starts the polling fallback, which wakes every waiter of each of
/// `wakeups`; it ends when `cancel` fires.
pub(crate) fn spawn_poller<const N: usize>(
    every: Duration,
    wakeups: [Wakeups; N],
    cancel: CancellationToken,
) {
    let every = every.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => wakeups.iter().for_each(Wakeups::wake_all),
            }
        }
    });
}

/// Longest payload sent: PostgreSQL takes up to 8000 bytes. Queues that
/// would not fit are announced as "any queue" instead.
const MAX_PAYLOAD: usize = 7_900;

/// The payload from `node` naming `queues` (none: any queue).
pub(crate) fn payload<'q>(node: &str, queues: impl IntoIterator<Item = &'q str>) -> String {
    let mut payload = node.to_owned();
    for queue in queues {
        payload.push('\n');
        payload.push_str(queue);
        if payload.len() > MAX_PAYLOAD {
            return node.to_owned();
        }
    }
    payload
}

/// Wakes this node's waiters of the queues a payload names (every waiter for
/// one that names none), unless `node` itself sent it.
fn wake(wakeups: &Wakeups, node: &str, payload: &str) {
    let mut lines = payload.split('\n');
    let sender = lines.next().unwrap_or_default();
    if !node.is_empty() && sender == node {
        return;
    }
    let mut queues = lines.peekable();
    if queues.peek().is_none() {
        wakeups.wake_all();
    } else {
        wakeups.wake(queues);
    }
}

/// `E'a''b\\c'` for `a'b\c`: an escape string, so a backslash means the same
/// whatever the server's `standard_conforming_strings`.
fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

enum Ended {
    Cancelled,
    Lost { was_up: bool, error: String },
}

/// One listening session, until the connection is lost or the store closes.
async fn listen(
    config: &tokio_postgres::Config,
    listening: &Listening,
    cancel: &CancellationToken,
) -> Ended {
    let Listening {
        channel,
        events_channel,
        node,
        wakeups,
        watchers,
    } = listening;
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
    let (driver_wakeups, driver_watchers) = (wakeups.clone(), watchers.clone());
    let (node, events) = (node.clone(), events_channel.clone());
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == events => {
                    driver_watchers.wake([n.payload()])
                }
                Some(Ok(AsyncMessage::Notification(n))) => {
                    wake(&driver_wakeups, &node, n.payload())
                }
                Some(Ok(_)) => {} // notices
                Some(Err(e)) => return e.to_string(),
                None => return "connection closed".to_owned(),
            }
        }
    });
    let outcome = async {
        let sql = format!(
            "LISTEN {}; LISTEN {}",
            quote_ident(channel),
            quote_ident(events_channel)
        );
        if let Err(e) = client.batch_execute(&sql).await {
            return lost(false, e.to_string());
        }
        tracing::debug!(channel, events_channel, "PostgreSQL listener up");
        // Anything announced while we were not listening was lost: look again.
        wakeups.wake_all();
        watchers.wake_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_the_sender_then_a_queue_a_line() {
        assert_eq!(payload("n1", ["mail", "reports"]), "n1\nmail\nreports");
        assert_eq!(payload("n1", []), "n1", "any queue");
        let many: Vec<String> = (0..1_000).map(|i| format!("queue-{i}")).collect();
        assert_eq!(
            payload("n1", many.iter().map(String::as_str)),
            "n1",
            "too long: any"
        );
        assert_eq!(quote_literal("a'b\\c"), "E'a''b\\\\c'");
    }

    #[tokio::test]
    async fn a_payload_wakes_the_waiters_of_its_queues_on_other_nodes() {
        let wakeups = Wakeups::default();
        let mail = wakeups.waiter(&["mail".to_owned()]);
        let other = wakeups.waiter(&["other".to_owned()]);
        let soon = Duration::from_millis(50);
        wake(&wakeups, "me", "n2\nreports\nmail");
        assert!(tokio::time::timeout(soon, mail.woken()).await.is_ok());
        assert!(tokio::time::timeout(soon, other.woken()).await.is_err());
        wake(&wakeups, "me", "me\nmail");
        assert!(
            tokio::time::timeout(soon, mail.woken()).await.is_err(),
            "its own notification does not wake a node twice"
        );
        // Another node's "any queue", an old node's empty payload, and an
        // application's transaction naming the queue.
        for payload in ["n2", "", "\nmail\nother"] {
            wake(&wakeups, "me", payload);
            assert!(
                tokio::time::timeout(soon, other.woken()).await.is_ok(),
                "{payload:?}"
            );
        }
    }
}
