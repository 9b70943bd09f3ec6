//! Push queues end to end: a real server (`serve` on a loopback socket, a real
//! SQLite file) pushes jobs to a real HTTP receiver on loopback, scripted per
//! test, and the jobs end as the outcome contract says.
//!
//! Maintenance and retry backoff are configured fast; every wait is a poll
//! with a generous deadline; time is only ever asserted as a lower bound
//! (a job pushed again no earlier than it was told).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use grafter_engine::push::signature::Verifier;
use grafter_server::{serve, ServerConfig};
use grafter_sqlite::SqliteStore;
use grafter_store::Store;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);
const SECRET: &str = "push-secret-0123456789";

/// Fast maintenance and a fast, deterministic retry backoff.
fn fast_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.retry.base_ms = 100;
    config.retry.max_ms = 200;
    config.retry.jitter = 0.0;
    config.maintenance.schedule_interval_ms = 50;
    config.maintenance.rescue_interval_ms = 50;
    config.maintenance.expire_interval_ms = 50;
    config.push.refresh_interval_ms = 100;
    // The receivers of these tests listen on loopback.
    config.push.allow_private = true;
    config
}

/// A running server on a temp SQLite file; stopped on drop.
struct Grafter {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Grafter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_node(store: Arc<dyn Store>, config: ServerConfig) -> Grafter {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, store, config, shutdown.clone()));
    Grafter {
        base,
        http: reqwest::Client::new(),
        shutdown,
        _dir: None,
    }
}

async fn grafter() -> Grafter {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    let mut node = start_node(Arc::new(store), fast_config()).await;
    node._dir = Some(dir);
    node
}

impl Grafter {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request to grafter");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }

    async fn scrape(&self) -> String {
        let url = format!("{}/metrics", self.base);
        let response = self.http.get(url).send().await.unwrap();
        response.text().await.unwrap()
    }

    async fn put_push(&self, queue: &str, push: Value) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/queues/{queue}"),
            Some(json!({"push": push})),
        )
        .await
    }

    /// Makes `queue` push to `url` with the test secret, plus `extra` fields.
    async fn push_to(&self, queue: &str, url: &str, extra: Value) {
        let mut push = json!({"url": url, "secret": SECRET});
        push.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let (status, body) = self.put_push(queue, push).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn enqueue(&self, job: Value) -> i64 {
        let (status, body) = self
            .call(reqwest::Method::POST, "/v1/jobs", Some(job))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    async fn job(&self, id: i64) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the job until `done` holds for it.
    async fn wait_job(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never became {what}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_state(&self, id: i64, state: &str) -> Value {
        self.wait_job(id, state, |job| job["state"] == state).await
    }
}

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn json(status: u16, body: Value) -> Self {
        Reply::new(status, body.to_string()).header("content-type", "application/json")
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request as the receiver saw it.
#[derive(Clone)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A real HTTP server on loopback that answers with scripted replies (then
/// `fallback`) and records every request.
#[derive(Clone)]
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Arc<Mutex<Reply>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(script: Vec<Reply>, fallback: Reply) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            url: format!("http://{}/jobs", listener.local_addr().unwrap()),
            seen: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
            fallback: Arc::new(Mutex::new(fallback)),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/jobs",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let receiver = state.clone();
                async move { receiver.answer(headers, body).await }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    async fn answer(&self, headers: HeaderMap, body: Bytes) -> Response {
        self.seen.lock().unwrap().push(Seen {
            headers,
            body,
            at: Instant::now(),
        });
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.fallback.lock().unwrap().clone());
        tokio::time::sleep(reply.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut response =
            (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
        for (name, value) in reply.headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn answer_from_now_on(&self, reply: Reply) {
        *self.fallback.lock().unwrap() = reply;
    }
}

fn error_messages(job: &Value) -> Vec<String> {
    job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["error"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_failed_push_is_retried_and_completes_as_attempt_2_with_the_first_error() {
    let receiver = Receiver::start(
        vec![Reply::new(500, "boom: database is down")],
        Reply::json(200, json!({"sent": true})),
    )
    .await;
    let grafter = grafter().await;
    grafter
        .push_to("mail", &receiver.url, json!({"headers": {"X-App": "demo"}}))
        .await;
    let id = grafter
        .enqueue(json!({"kind": "send_email", "queue": "mail", "args": {"to": "ada@example.com"}}))
        .await;

    let job = grafter.wait_state(id, "completed").await;
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(job["result"], json!({"sent": true}));
    assert_eq!(
        error_messages(&job),
        ["500 Internal Server Error: boom: database is down"]
    );
    assert_eq!(job["errors"][0]["attempt"], 1);
    assert!(
        job["errors"][0]["worker_id"]
            .as_str()
            .unwrap()
            .starts_with("push:"),
        "{job}"
    );

    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    let verifier = Verifier::new(SECRET);
    for (n, request) in seen.iter().enumerate() {
        let attempt = n as i64 + 1;
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(request.header("grafter-job-id"), id.to_string());
        assert_eq!(request.header("grafter-attempt"), attempt.to_string());
        assert!(!request.header("grafter-lease").is_empty());
        assert_eq!(request.header("x-app"), "demo");
        assert!(request.header("user-agent").starts_with("grafter/"));
        verifier
            .verify(request.header("grafter-signature"), &request.body)
            .expect("Grafter's signature verifies");
        let body = request.json();
        let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "args",
                "attempt",
                "enqueued_at",
                "id",
                "kind",
                "max_attempts",
                "queue",
                "timeout_ms"
            ]
        );
        assert_eq!(body["id"], id);
        assert_eq!(body["kind"], "send_email");
        assert_eq!(body["queue"], "mail");
        assert_eq!(body["args"], json!({"to": "ada@example.com"}));
        assert_eq!(body["attempt"], attempt);
        assert_eq!(body["max_attempts"], 25);
        assert_eq!(body["enqueued_at"], job["created_at"]);
        assert_eq!(body["timeout_ms"], 30_000, "the target's timeout");
    }
    assert_ne!(
        seen[0].header("grafter-lease"),
        seen[1].header("grafter-lease"),
        "each attempt has its own lease"
    );
    let scrape = grafter.scrape().await;
    for class in ["5xx", "2xx"] {
        let line = format!("grafter_push_deliveries_total{{queue=\"mail\",status=\"{class}\"}} 1");
        assert!(scrape.lines().any(|l| l == line), "no {line} in\n{scrape}");
    }
}

#[tokio::test]
async fn a_push_that_times_out_is_a_failed_attempt() {
    let receiver = Receiver::start(
        vec![Reply::new(200, "too late").after(Duration::from_secs(10))],
        Reply::json(200, json!({"ok": true})),
    )
    .await;
    let grafter = grafter().await;
    grafter
        .push_to("slow", &receiver.url, json!({"timeout_ms": 300}))
        .await;
    let id = grafter
        .enqueue(json!({"kind": "export", "queue": "slow"}))
        .await;

    let job = grafter.wait_state(id, "completed").await;
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(error_messages(&job), ["timed out: no answer within 300 ms"]);
    assert_eq!(job["result"], json!({"ok": true}));
    let told = receiver.seen()[0].json();
    assert_eq!(
        told["timeout_ms"], 300,
        "the request says how long it is awaited"
    );
}

#[tokio::test]
async fn a_jobs_own_shorter_timeout_is_the_requests() {
    let receiver = Receiver::start(Vec::new(), Reply::json(200, json!({"ok": true}))).await;
    let grafter = grafter().await;
    grafter.push_to("mail", &receiver.url, json!({})).await;
    let id = grafter
        .enqueue(json!({"kind": "send_email", "queue": "mail", "timeout_ms": 1_500}))
        .await;
    grafter.wait_state(id, "completed").await;
    assert_eq!(receiver.seen()[0].json()["timeout_ms"], 1_500);
}

#[tokio::test]
async fn a_202_keeps_the_job_running_until_the_app_acks_it_through_the_api() {
    let receiver = Receiver::start(vec![], Reply::new(202, "")).await;
    let grafter = grafter().await;
    grafter
        .push_to("long", &receiver.url, json!({"timeout_ms": 1000}))
        .await;
    let id = grafter
        .enqueue(json!({"kind": "render_video", "queue": "long"}))
        .await;

    // The 202 gives the app a full lease (default 30 s) from then, rather than
    // what is left of the request's.
    let job = grafter
        .wait_job(id, "running under a renewed lease", |job| {
            job["state"] == "running"
                && job["lease_expires_at"].as_str().is_some_and(|at| {
                    let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
                    at > chrono::Utc::now() + chrono::Duration::seconds(20)
                })
        })
        .await;
    assert_eq!(job["attempt"], 1);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "pushed once");
    let lease = seen[0].header("grafter-lease").to_owned();

    // The app reports progress, then finishes.
    let (status, body) = grafter
        .call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{id}/heartbeat"),
            Some(json!({"lease": lease, "progress": {"fraction": 0.5, "message": "half way"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = grafter
        .call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{id}/ack"),
            Some(json!({"lease": lease, "result": {"url": "/v/1.mp4"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = grafter.job(id).await;
    assert_eq!(job["state"], "completed");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["result"], json!({"url": "/v/1.mp4"}));
    assert_eq!(
        receiver.count(),
        1,
        "a job finished through the API is not pushed again"
    );
}

#[tokio::test]
async fn retry_after_on_503_pushes_again_then_without_counting_the_attempt() {
    let receiver = Receiver::start(
        vec![Reply::new(503, "down for maintenance").header("retry-after", "1")],
        Reply::json(200, json!({"ok": true})),
    )
    .await;
    let grafter = grafter().await;
    grafter.push_to("hooks", &receiver.url, json!({})).await;
    let id = grafter
        .enqueue(json!({"kind": "sync", "queue": "hooks"}))
        .await;

    let job = grafter.wait_state(id, "completed").await;
    assert_eq!(
        job["attempt"], 1,
        "the app did not run it the first time: {job}"
    );
    assert!(error_messages(&job).is_empty(), "{job}");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("grafter-attempt"), "1");
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "pushed again before Retry-After"
    );
}

#[tokio::test]
async fn retry_after_on_another_failure_sets_when_the_counted_retry_runs() {
    let receiver = Receiver::start(
        vec![Reply::new(500, "rate limited upstream").header("retry-after", "1")],
        Reply::json(200, json!({"ok": true})),
    )
    .await;
    let grafter = grafter().await;
    grafter.push_to("hooks", &receiver.url, json!({})).await;
    let id = grafter
        .enqueue(json!({"kind": "sync", "queue": "hooks"}))
        .await;

    let job = grafter.wait_state(id, "completed").await;
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(
        error_messages(&job),
        ["500 Internal Server Error: rate limited upstream"]
    );
    let seen = receiver.seen();
    // The queue's backoff is 100 ms; Retry-After asked for a second.
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "pushed again before Retry-After"
    );
}

/// A queue may push up to 10,000 jobs at once, more than one fetch leases:
/// its jobs are delivered all the same.
#[tokio::test]
async fn a_queue_allowed_more_than_one_fetch_leases_delivers_its_jobs() {
    let receiver = Receiver::start(vec![], Reply::json(200, json!({"ok": true}))).await;
    let grafter = grafter().await;
    grafter
        .push_to("wide", &receiver.url, json!({"concurrency": 10_000}))
        .await;
    let id = grafter.enqueue(json!({"kind": "k", "queue": "wide"})).await;
    let job = grafter.wait_state(id, "completed").await;
    assert_eq!(job["attempt"], 1, "{job}");
}

#[tokio::test]
async fn grafter_retry_false_makes_the_job_dead_at_once() {
    let receiver = Receiver::start(
        vec![],
        Reply::new(422, "no such user\n").header("grafter-retry", "false"),
    )
    .await;
    let grafter = grafter().await;
    grafter.push_to("mail", &receiver.url, json!({})).await;
    let id = grafter
        .enqueue(json!({"kind": "send_email", "queue": "mail"}))
        .await;

    let job = grafter.wait_state(id, "dead").await;
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["max_attempts"], 25);
    assert_eq!(
        error_messages(&job),
        ["422 Unprocessable Entity: no such user"]
    );
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn only_the_first_4_kib_of_a_failed_answer_is_kept() {
    let long = "x".repeat(10_000);
    let receiver = Receiver::start(
        vec![],
        Reply::new(500, long).header("grafter-retry", "false"),
    )
    .await;
    let grafter = grafter().await;
    grafter.push_to("mail", &receiver.url, json!({})).await;
    let id = grafter
        .enqueue(json!({"kind": "send_email", "queue": "mail"}))
        .await;

    let job = grafter.wait_state(id, "dead").await;
    let error = &error_messages(&job)[0];
    assert_eq!(
        error,
        &format!("500 Internal Server Error: {}", "x".repeat(4096))
    );
}

#[tokio::test]
async fn an_unreachable_target_is_a_failed_attempt() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let grafter = grafter().await;
    grafter
        .push_to("mail", &format!("http://127.0.0.1:{port}/jobs"), json!({}))
        .await;
    let id = grafter
        .enqueue(json!({"kind": "send_email", "queue": "mail", "max_attempts": 1}))
        .await;

    let job = grafter.wait_state(id, "dead").await;
    let error = &error_messages(&job)[0];
    assert!(
        error.starts_with("could not reach the push target"),
        "{error}"
    );
    assert!(
        !error.contains(&port.to_string()),
        "the URL stays out of errors: {error}"
    );
}

/// A loopback target that reads each request whole, then writes `answer`
/// as raw bytes and closes: answers no HTTP server would send.
async fn raw_target(answer: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jobs", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            // Reading it all, so closing sends no reset ahead of the answer.
            while !request_read(&request) {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = socket.write_all(&answer).await;
            let _ = socket.shutdown().await;
        }
    });
    url
}

/// Whether `request` holds a head and the body its Content-Length announces.
fn request_read(request: &[u8]) -> bool {
    let text = String::from_utf8_lossy(request);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_failed_attempt_that_says_so() {
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(2 * 1024 * 1024 + 1));
    let answers = [
        (
            "status-1000",
            "HTTP/1.1 1000 Big\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ),
        (
            "status-099",
            "HTTP/1.1 099 Small\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ),
        ("not-http", "SSH-2.0-OpenSSH_9.6\r\n\r\n".to_owned()),
        (
            "two-lengths",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_owned(),
        ),
        (
            "negative-length",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_owned(),
        ),
        (
            "huge-head",
            format!("HTTP/1.1 200 OK\r\n{huge_header}Content-Length: 0\r\n\r\n"),
        ),
    ];
    let grafter = grafter().await;
    let mut jobs = Vec::new();
    for (queue, answer) in answers {
        let url = raw_target(answer.into_bytes()).await;
        grafter.push_to(queue, &url, json!({})).await;
        let id = grafter
            .enqueue(json!({"kind": "export", "queue": queue, "max_attempts": 2}))
            .await;
        jobs.push((queue, id));
    }
    for (queue, id) in jobs {
        // Retried like any failed attempt, then dead when out of attempts.
        let job = grafter.wait_state(id, "dead").await;
        let errors = error_messages(&job);
        assert_eq!(errors.len(), 2, "{queue}: {job}");
        for error in errors {
            assert!(
                error.starts_with("the push target's answer is not valid HTTP: "),
                "{queue}: {error}"
            );
        }
    }
}

#[tokio::test]
async fn a_push_queue_keeps_to_its_concurrency_across_nodes() {
    let receiver = Receiver::start(
        vec![],
        Reply::json(200, json!({})).after(Duration::from_millis(150)),
    )
    .await;
    // Two nodes on one store, as two servers on one PostgreSQL database.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap(),
    );
    let first = start_node(store.clone(), fast_config()).await;
    let second = start_node(store, fast_config()).await;
    first
        .push_to("exports", &receiver.url, json!({"concurrency": 2}))
        .await;
    // The second node learns of the target from the store (refreshed every 100 ms here).
    let mut ids = Vec::new();
    for n in 0..10 {
        let node = if n % 2 == 0 { &first } else { &second };
        ids.push(
            node.enqueue(json!({"kind": "export", "queue": "exports", "args": {"n": n}}))
                .await,
        );
    }
    for id in ids {
        first.wait_state(id, "completed").await;
    }
    assert_eq!(receiver.count(), 10);
    let most = receiver.most_in_flight.load(Ordering::SeqCst);
    assert_eq!(most, 2, "requests in flight at once; the limit is 2");
}

#[tokio::test]
async fn a_target_that_keeps_failing_is_backed_off_then_recovers() {
    let receiver = Receiver::start(vec![], Reply::new(500, "down")).await;
    let grafter = grafter().await;
    grafter
        .push_to("flaky", &receiver.url, json!({"concurrency": 3}))
        .await;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            grafter
                .enqueue(
                    json!({"kind": "sync", "queue": "flaky", "args": {"n": n}, "max_attempts": 1}),
                )
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Without backing off, all 30 would have been pushed (and died) by now.
    // With it: three at once fail, then one probe after 0.5 s, one after 1 s more.
    let pushed = receiver.count();
    assert!(
        (3..=8).contains(&pushed),
        "{pushed} pushes to a failing target in 1.5 s"
    );

    // The target comes back: the next probe succeeds and the rest go through.
    receiver.answer_from_now_on(Reply::json(200, json!({})));
    for id in &ids {
        grafter
            .wait_job(*id, "finished", |job| {
                job["state"] == "completed" || job["state"] == "dead"
            })
            .await;
    }
    let mut completed = 0;
    for id in &ids {
        completed += usize::from(grafter.job(*id).await["state"] == "completed");
    }
    assert!(
        completed >= 30 - 8,
        "{completed} of 30 completed after recovery"
    );
}

#[tokio::test]
async fn push_targets_are_validated_never_echo_secrets_and_can_be_removed() {
    let receiver = Receiver::start(vec![], Reply::json(200, json!({}))).await;
    let grafter = grafter().await;
    for (push, field) in [
        (
            json!({"url": "ftp://example.com/x", "secret": SECRET}),
            "push.url",
        ),
        (
            json!({"url": receiver.url, "secret": "short"}),
            "push.secret",
        ),
        (
            json!({"url": receiver.url, "secret": SECRET, "timeout_ms": 10}),
            "push.timeout_ms",
        ),
        (
            json!({"url": receiver.url, "secret": SECRET, "concurrency": 0}),
            "push.concurrency",
        ),
        (
            json!({"url": receiver.url, "secret": SECRET, "headers": {"Grafter-Job-Id": "1"}}),
            "push.headers",
        ),
        (
            json!({"url": receiver.url, "secret": SECRET, "headers": {"X-Token": "a\nb"}}),
            "push.headers",
        ),
        (
            json!({"url": receiver.url, "secret": SECRET, "sekret": "typo"}),
            "push",
        ),
        (
            json!({"url": format!("{}\nINFO forged line", receiver.url), "secret": SECRET}),
            "push.url",
        ),
        (
            // An IPv6 zone id: no URL the push client can send to.
            json!({"url": "http://[fe80::1%25eth0]:7425/", "secret": SECRET}),
            "push.url",
        ),
        (
            json!({"url": receiver.url, "secret": SECRET, "old_secrets": vec![SECRET; 5]}),
            "push.old_secrets",
        ),
        (
            json!({"url": receiver.url, "secret": "whsec_not base64 at all", "signing": "both"}),
            "push.secret",
        ),
        (
            json!({"url": receiver.url, "secret": SECRET, "signing": "svix"}),
            "push",
        ),
    ] {
        let (status, body) = grafter.put_push("mail", push.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{push} → {body}");
        assert!(
            body["error"]["field"].as_str().unwrap().starts_with(field),
            "{push} → {body}"
        );
    }

    let old = "the-old-secret-0123456789";
    let push = json!({"url": receiver.url, "secret": SECRET, "old_secrets": [old], "headers": {"Authorization": "Bearer app-token"}});
    let (status, body) = grafter.put_push("mail", push).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["push"],
        json!({"url": receiver.url, "timeout_ms": 30000, "concurrency": 10, "headers": ["Authorization"], "secrets": 2, "signing": "grafter"})
    );
    let (_, queues) = grafter.call(reqwest::Method::GET, "/v1/queues", None).await;
    for text in [body.to_string(), queues.to_string()] {
        for secret in [SECRET, old, "app-token"] {
            assert!(!text.contains(secret), "the API showed a secret: {text}");
        }
    }

    // Credentials and query values in the URL itself are not shown either.
    let with_credentials = receiver.url.replace("http://", "http://app:hunter2@") + "?tok=t0ken";
    let push = json!({"url": with_credentials, "secret": SECRET});
    let (status, body) = grafter.put_push("mail", push).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown = receiver.url.replace("http://", "http://***@") + "?tok=***";
    assert_eq!(body["push"]["url"], shown.as_str(), "{body}");
    let (_, queues) = grafter.call(reqwest::Method::GET, "/v1/queues", None).await;
    assert!(
        !queues.to_string().contains("hunter2") && !queues.to_string().contains("t0ken"),
        "{queues}"
    );

    // Removing the target makes it a pull queue: a worker fetches its jobs.
    let (status, body) = grafter.put_push("mail", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["push"], Value::Null);
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let id = grafter
        .enqueue(json!({"kind": "send_email", "queue": "mail", "run_at": run_at}))
        .await;
    let (status, body) = grafter
        .call(
            reqwest::Method::POST,
            "/v1/fetch",
            Some(json!({"queues": ["mail"], "wait_ms": 15000, "worker_id": "w"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"][0]["id"], id, "{body}");
    assert_eq!(body["jobs"][0]["worker_id"], "w");
    assert_eq!(receiver.count(), 0, "nothing was pushed");
}

#[tokio::test]
async fn pushes_never_reach_the_inside_network_unless_allowed() {
    let receiver = Receiver::start(vec![], Reply::json(200, json!({}))).await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    // A target in the config file is refused at start, as the API refuses
    // it when set.
    let mut config = fast_config();
    config.push.allow_private = false;
    let mut refused = config.clone();
    let from_file: grafter_core::PushTarget =
        serde_json::from_value(json!({"url": receiver.url, "secret": SECRET})).unwrap();
    refused.queues.insert(
        "literal".into(),
        grafter_server::config::QueueConfig {
            push: Some(from_file.clone()),
            limits: None,
        },
    );
    let error = refused.validate().unwrap_err().to_string();
    assert!(error.contains("queues.literal.push.url"), "{error}");
    // One stored before (while the server allowed it) is refused at each
    // delivery.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    store
        .queue_set_push(grafter_store::QueuePush {
            queue: "literal".into(),
            push: Some(from_file),
            now: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let mut grafter = start_node(Arc::new(store), config).await;
    grafter._dir = Some(dir);

    for url in [
        receiver.url.clone(),
        format!("http://10.1.2.3:{port}/jobs"),
        format!("http://[::ffff:127.0.0.1]:{port}/jobs"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://2130706433/jobs".to_owned(),
    ] {
        let (status, body) = grafter
            .put_push("mail", json!({"url": url, "secret": SECRET}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["code"], "push_target_refused", "{url}");
        assert_eq!(body["error"]["field"], "push.url");
    }

    // A name is checked where it resolves: accepted when set, refused at
    // each delivery, since `localhost` resolves only to loopback.
    let by_name = format!("http://localhost:{port}/jobs");
    grafter.push_to("named", &by_name, json!({})).await;
    let mut failed = Vec::new();
    for queue in ["named", "literal"] {
        let id = grafter
            .enqueue(json!({"kind": "k", "queue": queue, "max_attempts": 1}))
            .await;
        failed.push(grafter.wait_state(id, "dead").await);
    }
    let named = &error_messages(&failed[0])[0];
    assert!(
        named.contains("localhost resolves to") && named.contains("loopback"),
        "{named}"
    );
    let literal = &error_messages(&failed[1])[0];
    assert!(
        literal.starts_with("push target refused: 127.0.0.1 is a loopback"),
        "{literal}"
    );
    assert!(receiver.seen.lock().unwrap().is_empty(), "nothing arrived");
    let scrape = grafter.scrape().await;
    for queue in ["named", "literal"] {
        let line = format!("grafter_push_deliveries_total{{queue=\"{queue}\",status=\"error\"}} 1");
        assert!(scrape.lines().any(|l| l == line), "no {line} in\n{scrape}");
    }
}

/// The job's W3C trace context, given as headers of the enqueue, goes with
/// every push of it (the retry's too); a job enqueued without one is pushed
/// without `traceparent`.
#[tokio::test]
async fn pushes_carry_the_trace_context_the_job_was_enqueued_in() {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const STATE: &str = "rojo=00f067aa0ba902b7";
    let receiver = Receiver::start(
        vec![Reply::new(500, "not yet")],
        Reply::json(200, json!({})),
    )
    .await;
    let grafter = grafter().await;
    grafter.push_to("traced", &receiver.url, json!({})).await;
    let response = grafter
        .http
        .post(format!("{}/v1/jobs", grafter.base))
        .header("traceparent", PARENT)
        .header("tracestate", STATE)
        .json(&json!({"kind": "k", "queue": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let traced: Value = response.json().await.unwrap();
    let traced = traced["id"].as_i64().unwrap();
    let job = grafter.wait_state(traced, "completed").await;
    assert_eq!(job["attempt"], 2, "{job}");
    let plain = grafter
        .enqueue(json!({"kind": "k", "queue": "traced"}))
        .await;
    grafter.wait_state(plain, "completed").await;

    let seen = receiver.seen();
    let of = |id: i64| -> Vec<&Seen> {
        seen.iter()
            .filter(|s| s.json()["id"] == json!(id))
            .collect()
    };
    assert_eq!(of(traced).len(), 2, "the failed push and the retry");
    for push in of(traced) {
        assert_eq!(push.header("traceparent"), PARENT);
        assert_eq!(push.header("tracestate"), STATE);
    }
    let plain = of(plain);
    assert_eq!(plain.len(), 1);
    assert!(plain[0].headers.get("traceparent").is_none());
    assert!(plain[0].headers.get("tracestate").is_none());
}

/// A push queue with a rate pushes as often as its rate allows, not once per
/// idle poll (a second): an empty look at a full window sleeps until the
/// window frees a start.
#[tokio::test]
async fn a_rate_limited_push_queue_pushes_as_its_window_frees() {
    let receiver = Receiver::start(Vec::new(), Reply::json(200, json!({"ok": true}))).await;
    let grafter = grafter().await;
    grafter.push_to("metered", &receiver.url, json!({})).await;
    let (status, body) = grafter
        .call(
            reqwest::Method::PUT,
            "/v1/queues/metered",
            Some(json!({"limits": {"rate": {"count": 1, "period_ms": 250}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            grafter
                .enqueue(json!({"kind": "metered", "queue": "metered"}))
                .await,
        );
    }
    for id in ids {
        grafter.wait_state(id, "completed").await;
    }
    let seen = receiver.seen();
    let mut gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    gaps.sort();
    // The idle poll is a second: a dispatcher that waited for it would
    // space every push a second apart or more.
    assert!(
        gaps[gaps.len() / 2] < Duration::from_millis(900),
        "pushed once per idle poll, not as the window freed: {gaps:?}"
    );
}

/// A target that takes the request and closes without answering was
/// reached (the job may have run): the attempt's error says so, not that
/// the target could not be reached.
#[tokio::test]
async fn a_target_closing_without_an_answer_is_not_called_unreachable() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jobs", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0; 4096];
            let _ = socket.read(&mut request).await;
            // Dropped: closed without a word.
        }
    });
    let grafter = grafter().await;
    grafter.push_to("mute", &url, json!({})).await;
    let id = grafter
        .enqueue(json!({"kind": "export", "queue": "mute", "max_attempts": 1}))
        .await;
    let job = grafter.wait_state(id, "dead").await;
    assert_eq!(
        error_messages(&job),
        ["the push target closed the connection without answering (the job may have run)"]
    );
}
