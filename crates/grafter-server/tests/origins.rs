//! Requests from other sites' pages over real HTTP on loopback
//! (docs/access.md, "Browsers and other sites"): a browser's cross-origin
//! request is refused on the API and the dashboard alike, programs that send
//! no `Origin` are served as before, and an open loopback server answers only
//! to loopback names (DNS rebinding) while one with a token answers to any.

use std::sync::Arc;

use grafter_server::{serve, ServerConfig};
use grafter_sqlite::SqliteStore;
use reqwest::header::{CONTENT_TYPE, HOST, ORIGIN};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "origins-test-token-0123456789";

/// A running server on loopback; stopped on drop.
struct Grafter {
    address: std::net::SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Grafter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(token: Option<&str>) -> Grafter {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = ServerConfig {
        token: token.map(str::to_owned),
        ..Default::default()
    };
    tokio::spawn(serve(listener, Arc::new(store), config, shutdown.clone()));
    Grafter {
        address,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        shutdown,
        _dir: dir,
    }
}

/// What an answer was: its status, its content type and its body.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

impl Answer {
    fn code(&self) -> Value {
        let body: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        body["error"]["code"].clone()
    }
}

impl Grafter {
    /// Sends `method path` with these headers (and a form body for a POST,
    /// as curl's `-d` and a page's form send it).
    async fn send(&self, method: Method, path: &str, headers: &[(&str, String)]) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("http://{}{path}", self.address));
        if method == Method::POST {
            request = request
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(r#"{"kind": "export"}"#);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status(),
            content_type: response
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            body: response.text().await.unwrap(),
        }
    }

    fn own_origin(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn jobs(&self) -> usize {
        let answer = self.send(Method::GET, "/v1/jobs", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        body["jobs"].as_array().unwrap().len()
    }
}

fn assert_refused_json(answer: &Answer, code: &str) {
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(answer.code(), code, "{}", answer.body);
}

fn assert_refused_page(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/html"),
        "{}",
        answer.content_type
    );
}

#[tokio::test]
async fn another_sites_page_cannot_drive_the_api_or_the_dashboard() {
    let grafter = start(None).await;
    let evil = || ("origin", "http://evil.example".to_owned());
    let cross_site = || ("sec-fetch-site", "cross-site".to_owned());
    let same_site = || ("sec-fetch-site", "same-site".to_owned());
    for headers in [vec![evil()], vec![cross_site()], vec![same_site()]] {
        let refused = grafter.send(Method::POST, "/v1/jobs", &headers).await;
        assert_refused_json(&refused, "cross_origin");
        let page = grafter
            .send(Method::POST, "/queues/default/pause", &headers)
            .await;
        assert_refused_page(&page);
    }
    // A page's fetch of the API is refused too, its reads included.
    let fetched = grafter
        .send(
            Method::GET,
            "/v1/jobs",
            &[cross_site(), ("sec-fetch-mode", "cors".into())],
        )
        .await;
    assert_refused_json(&fetched, "cross_origin");
    assert_eq!(grafter.jobs().await, 0, "nothing was enqueued");

    // A link followed from elsewhere opens the page: the browser shows it
    // to its user, never to the page that linked it.
    let link = grafter
        .send(
            Method::GET,
            "/queues",
            &[cross_site(), ("sec-fetch-mode", "navigate".into())],
        )
        .await;
    assert_eq!(link.status, StatusCode::OK, "{}", link.body);

    // curl (no Origin, curl's form type), the server's own pages, and an
    // older browser on the server's own origin are served.
    let own = grafter.own_origin();
    for headers in [
        vec![],
        vec![
            ("sec-fetch-site", "same-origin".into()),
            ("origin", own.clone()),
        ],
        vec![("origin", own)],
    ] {
        let created = grafter.send(Method::POST, "/v1/jobs", &headers).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    assert_eq!(grafter.jobs().await, 3);
}

#[tokio::test]
async fn an_open_loopback_server_answers_only_to_loopback_names() {
    let grafter = start(None).await;
    let port = grafter.address.port();
    let rebound = [(HOST.as_str(), format!("rebound.example:{port}"))];
    let read = grafter.send(Method::GET, "/v1/jobs", &rebound).await;
    assert_refused_json(&read, "host_not_allowed");
    let enqueue = grafter.send(Method::POST, "/v1/jobs", &rebound).await;
    assert_refused_json(&enqueue, "host_not_allowed");
    assert_refused_page(&grafter.send(Method::GET, "/jobs", &rebound).await);
    for host in [
        format!("localhost:{port}"),
        format!("grafter.localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let answer = grafter
            .send(Method::GET, "/v1/jobs", &[(HOST.as_str(), host.clone())])
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{host}: {}", answer.body);
    }
}

#[tokio::test]
async fn a_server_with_a_token_answers_to_any_name() {
    let grafter = start(Some(TOKEN)).await;
    let answer = grafter
        .send(
            Method::GET,
            "/v1/jobs",
            &[
                (HOST.as_str(), "grafter.internal:7380".into()),
                ("authorization", format!("Bearer {TOKEN}")),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // Its dashboard refuses other sites' forms before asking for a login.
    let page = grafter
        .send(
            Method::POST,
            "/login",
            &[(ORIGIN.as_str(), "http://evil.example".into())],
        )
        .await;
    assert_refused_page(&page);
}
