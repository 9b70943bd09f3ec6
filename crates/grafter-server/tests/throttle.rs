//! Wrong tokens are throttled per client address, over real sockets on
//! loopback (each client on its own 127.0.0.x address) and a real SQLite
//! file: after ten wrong tokens, through the API's bearer header or the
//! dashboard's login form, an address gets 429 with `Retry-After`, even with
//! the right token, while other addresses and health checks are served.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use grafter_server::{serve, ServerConfig};
use grafter_sqlite::SqliteStore;
use reqwest::{header, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "the-right-token-0123456789";
/// Wrong tokens allowed within the window (`throttle::FAILURES_ALLOWED`).
const ALLOWED: usize = 10;

/// A running server with [`TOKEN`]; stopped on drop.
struct Grafter {
    base: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Grafter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Grafter {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = ServerConfig {
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    tokio::spawn(serve(listener, Arc::new(store), config, shutdown.clone()));
    Grafter {
        base,
        shutdown,
        _dir: dir,
    }
}

/// An HTTP client whose connections come from 127.0.0.`last`; it follows no
/// redirects, so the dashboard's answers can be read as sent.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Grafter {
    async fn queues_with(&self, client: &reqwest::Client, token: &str) -> reqwest::Response {
        client
            .get(format!("{}/v1/queues", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Posts the dashboard's login form with `token`, the way a browser
    /// would: the CSRF cookie and form field from the login page first.
    async fn log_in(&self, client: &reqwest::Client, token: &str) -> reqwest::Response {
        let page = client
            .get(format!("{}/login", self.base))
            .send()
            .await
            .unwrap();
        let cookies: Vec<String> = page
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        let html = page.text().await.unwrap();
        let csrf = html
            .split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a CSRF field on the login page");
        client
            .post(format!("{}/login", self.base))
            .header(header::COOKIE, cookies.join("; "))
            .form(&[("csrf", csrf), ("token", token), ("next", "/")])
            .send()
            .await
            .unwrap()
    }
}

/// Asserts a throttled answer: 429 with a `Retry-After` within the window.
fn assert_throttled(answer: &reqwest::Response) {
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = answer.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn wrong_bearer_tokens_throttle_their_address_only() {
    let grafter = start().await;
    let guesser = client_from(1);
    for n in 0..ALLOWED {
        let answer = grafter.queues_with(&guesser, &format!("guess-{n}")).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "guess {n}");
    }
    let throttled = grafter.queues_with(&guesser, TOKEN).await;
    assert_throttled(&throttled);
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    assert_throttled(&grafter.log_in(&guesser, TOKEN).await);
    let health = guesser
        .get(format!("{}/livez", grafter.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "health is never throttled");

    let neighbour = client_from(2);
    assert_eq!(
        grafter.queues_with(&neighbour, TOKEN).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        grafter.queues_with(&neighbour, "a-guess").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn wrong_dashboard_logins_throttle_their_address() {
    let grafter = start().await;
    let guesser = client_from(3);
    for n in 0..ALLOWED {
        let answer = grafter.log_in(&guesser, &format!("guess-{n}")).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "guess {n}");
        let to = answer.headers()[header::LOCATION].to_str().unwrap();
        assert!(to.starts_with("/login"), "{to}");
    }
    let throttled = grafter.log_in(&guesser, TOKEN).await;
    assert_throttled(&throttled);
    assert!(throttled
        .text()
        .await
        .unwrap()
        .contains("Too many wrong tokens"));
    assert_throttled(&grafter.queues_with(&guesser, TOKEN).await);

    let logged_in = grafter.log_in(&client_from(4), TOKEN).await;
    assert_eq!(logged_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(logged_in.headers()[header::LOCATION], "/");
}
