//! Throttling of wrong tokens per client address, so the server's token
//! cannot be guessed at network speed: after [`FAILURES_ALLOWED`] wrong
//! tokens (a bearer header or the dashboard's login form) within
//! [`WINDOW`], an address is refused with 429 until that window ends, right
//! token or not (else guessing would simply go on).
//!
//! Kept in memory, per node, and bounded: at most [`TRACKED_CLIENTS`]
//! addresses are remembered; when full, addresses whose window has ended go
//! first, then the one whose window started longest ago. IPv6 addresses count
//! per /64, the block one host is usually given. A request without a peer
//! address (the router driven without `serve`, as tests do) counts as one
//! shared client. Behind a reverse proxy every client shares the proxy's
//! address: one guesser then throttles all of them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::Extensions;

/// Wrong tokens an address may send within [`WINDOW`].
pub const FAILURES_ALLOWED: u32 = 10;
/// How long wrong tokens are counted from the first of them.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses remembered at once.
pub const TRACKED_CLIENTS: usize = 10_000;

/// Who sent a request, as far as throttling is concerned.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Client {
    /// An IPv4 address, or an IPv6 address cut to its /64.
    Address(IpAddr),
    /// No peer address is known.
    Unknown,
}

impl Client {
    /// The client of a request, from the peer address `serve` attaches.
    pub fn of(extensions: &Extensions) -> Client {
        match extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => Client::Address(match peer.ip() {
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => {
                        let [a, b, c, d, ..] = v6.segments();
                        IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
                    }
                },
                v4 => v4,
            }),
            None => Client::Unknown,
        }
    }
}

/// One address's wrong tokens in its current window.
struct Failures {
    since: Instant,
    count: u32,
}

/// Wrong tokens per client (see the module doc).
pub struct AuthFailures {
    clients: Mutex<HashMap<Client, Failures>>,
    capacity: usize,
}

impl AuthFailures {
    /// Remembers at most `capacity` clients.
    pub fn new(capacity: usize) -> Self {
        AuthFailures {
            clients: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// How long `client` must wait before it may present a token again, if
    /// it sent too many wrong ones.
    pub fn throttled(&self, client: Client) -> Option<Duration> {
        let now = Instant::now();
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let failures = clients.get(&client)?;
        let ends = failures.since + WINDOW;
        (failures.count >= FAILURES_ALLOWED && ends > now).then(|| ends - now)
    }

    /// Counts a wrong token from `client`.
    pub fn record(&self, client: Client) {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if !clients.contains_key(&client) && clients.len() >= self.capacity {
            clients.retain(|_, failures| failures.since + WINDOW > now);
            if clients.len() >= self.capacity {
                let oldest = clients
                    .iter()
                    .min_by_key(|(_, failures)| failures.since)
                    .map(|(client, _)| *client);
                if let Some(oldest) = oldest {
                    clients.remove(&oldest);
                }
            }
        }
        let failures = clients.entry(client).or_insert(Failures {
            since: now,
            count: 0,
        });
        if failures.since + WINDOW <= now {
            *failures = Failures {
                since: now,
                count: 0,
            };
        }
        failures.count += 1;
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients.lock().unwrap().len()
    }
}

/// Seconds to put in `Retry-After`: whole, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8) -> Client {
        Client::Address(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn an_address_is_throttled_after_too_many_wrong_tokens_and_only_that_one() {
        let failures = AuthFailures::new(TRACKED_CLIENTS);
        for _ in 0..FAILURES_ALLOWED - 1 {
            failures.record(client(1));
        }
        assert_eq!(
            failures.throttled(client(1)),
            None,
            "still within the allowance"
        );
        failures.record(client(1));
        let wait = failures.throttled(client(1)).expect("throttled");
        assert!(
            wait <= WINDOW && wait > WINDOW - Duration::from_secs(5),
            "{wait:?}"
        );
        assert_eq!(failures.throttled(client(2)), None);
        assert_eq!(retry_after_secs(Duration::from_millis(59_001)), 60);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }

    #[test]
    fn memory_stays_bounded_however_many_addresses_guess() {
        let failures = AuthFailures::new(100);
        for _ in 0..FAILURES_ALLOWED {
            failures.record(client(0));
        }
        for n in 1..=250 {
            failures.record(client(n));
        }
        assert_eq!(failures.tracked(), 100);
        assert_eq!(
            failures.throttled(client(0)),
            None,
            "the longest-known address made room"
        );
    }

    #[test]
    fn ipv6_addresses_count_per_64_block() {
        let mut extensions = Extensions::new();
        let peer: SocketAddr = "[2001:db8:1:2:aaaa::1]:4000".parse().unwrap();
        extensions.insert(ConnectInfo(peer));
        let neighbour: SocketAddr = "[2001:db8:1:2:bbbb::7]:5000".parse().unwrap();
        let mut other = Extensions::new();
        other.insert(ConnectInfo(neighbour));
        assert_eq!(Client::of(&extensions), Client::of(&other));
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:80".parse().unwrap();
        let mut v4 = Extensions::new();
        v4.insert(ConnectInfo(mapped));
        assert_eq!(Client::of(&v4), client(9));
        assert_eq!(Client::of(&Extensions::new()), Client::Unknown);
    }
}
