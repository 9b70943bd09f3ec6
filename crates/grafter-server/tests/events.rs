//! Live events over real HTTP on loopback (docs/events.md): a job's
//! Server-Sent Events stream on SQLite and PostgreSQL, resumed after a cut
//! without losing a state change, reaching a stream on another node, the
//! stream tokens that open only their jobs, and the long-poll.
//!
//! Deadlines are generous upper bounds for a loaded machine; nothing asserts
//! on speed.

#[path = "../../grafter-postgres/tests/common/mod.rs"]
mod postgres;

use std::sync::Arc;
use std::time::Duration;

use grafter_server::{serve, ServerConfig};
use grafter_sqlite::SqliteStore;
use grafter_store::Store;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);
const TOKEN: &str = "events-test-token-0123456789";

/// A running server; stopped on drop.
struct Grafter {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    shutdown: CancellationToken,
    _served: JoinHandle<std::io::Result<()>>,
}

impl Drop for Grafter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(store: Arc<dyn Store>, token: Option<&str>) -> Grafter {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = ServerConfig {
        token: token.map(str::to_owned),
        ..Default::default()
    };
    let served = tokio::spawn(serve(listener, store, config, shutdown.clone()));
    Grafter {
        base: format!("http://{address}"),
        token: token.map(str::to_owned),
        http: reqwest::Client::new(),
        shutdown,
        _served: served,
    }
}

async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    (Arc::new(store), dir)
}

impl Grafter {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn enqueue(&self, queue: &str) -> i64 {
        let (status, job) = self
            .post("/v1/jobs", json!({"kind": "export", "queue": queue}))
            .await;
        assert_eq!(status, 201, "{job}");
        job["id"].as_i64().unwrap()
    }

    /// Leases the queue's next job: (id, lease).
    async fn fetch(&self, queue: &str) -> (i64, String) {
        let (status, body) = self
            .post("/v1/fetch", json!({"queues": [queue], "max": 1}))
            .await;
        assert_eq!(status, 200, "{body}");
        let job = &body["jobs"][0];
        (
            job["id"].as_i64().expect("a job"),
            job["lease"].as_str().unwrap().to_owned(),
        )
    }

    async fn progress(&self, id: i64, lease: &str, fraction: f64) {
        let (status, body) = self
            .post(
                &format!("/v1/jobs/{id}/heartbeat"),
                json!({"lease": lease, "progress": {"fraction": fraction, "message": "rows"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Opens a job's stream with these headers and query.
    async fn stream(&self, id: i64, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = self.request(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}/events{query}"),
        );
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        request.send().await.unwrap()
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

/// Reads events off a stream as they come.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream closed.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse {
                    event: String::new(),
                    id: String::new(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        event.id = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim());
                    }
                }
                if event.event.is_empty() {
                    continue; // a heartbeat comment or a retry line alone
                }
                event.data = serde_json::from_str(&data).unwrap();
                return Some(event);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an event within the patience")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until the stream closes.
    async fn rest(mut self) -> Vec<Sse> {
        let mut all = Vec::new();
        while let Some(event) = self.next().await {
            all.push(event);
        }
        all
    }
}

/// The states that `state` events announce, in order.
fn states(events: &[Sse]) -> Vec<(String, i64)> {
    events
        .iter()
        .filter(|e| e.event == "state")
        .map(|e| {
            (
                e.data["state"].as_str().unwrap().to_owned(),
                e.data["attempt"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_finished_job_streams_its_snapshot_and_its_end_at_once() {
    let (store, _dir) = sqlite().await;
    let grafter = start(store, None).await;
    let id = grafter.enqueue("q").await;
    let (_, lease) = grafter.fetch("q").await;
    let (status, _) = grafter
        .post(
            &format!("/v1/jobs/{id}/ack"),
            json!({"lease": lease, "result": {"rows": 3}}),
        )
        .await;
    assert_eq!(status, 200);
    let events = Events::new(grafter.stream(id, "", None).await).rest().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["snapshot", "end"], "{events:?}");
    assert_eq!(events[0].data["state"], "completed");
    assert_eq!(events[1].data["job"]["result"], json!({"rows": 3}));
    assert_eq!(events[1].data["deleted"], false);

    let missing = grafter.stream(id + 1000, "", None).await;
    assert_eq!(missing.status(), 404);
    // A server without a token serves streams to anyone: a stale token is no bar.
    let open = grafter.stream(id, "?access_token=gst1.0.1..00", None).await;
    assert_eq!(open.status(), 200);
}

/// Opens a stream, reads its snapshot and one progress event, cuts it, makes
/// the job go through a failed attempt, a retry and a success while no one
/// listens, and resumes with the last id seen: every state change arrives,
/// in order, then the end.
async fn resume_misses_no_state_change(store: Arc<dyn Store>) {
    let grafter = start(store, None).await;
    let id = grafter.enqueue("q").await;
    let (_, lease) = grafter.fetch("q").await;
    let mut first = Events::new(grafter.stream(id, "", None).await);
    let snapshot = first.next().await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.data["state"], "running");
    grafter.progress(id, &lease, 0.25).await;
    let progress = first.next().await.unwrap();
    assert_eq!(progress.event, "progress", "{progress:?}");
    assert_eq!(progress.data["progress"]["fraction"], 0.25);
    drop(first); // the cut

    grafter.progress(id, &lease, 0.5).await;
    let (status, body) = grafter
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease": lease, "error": "boom"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = grafter
        .post(&format!("/v1/jobs/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, lease) = grafter.fetch("q").await;
    let (status, _) = grafter
        .post(&format!("/v1/jobs/{id}/ack"), json!({"lease": lease}))
        .await;
    assert_eq!(status, 200);

    let events = Events::new(grafter.stream(id, "", Some(&progress.id)).await)
        .rest()
        .await;
    assert_ne!(
        events[0].event, "snapshot",
        "a resumed stream replays: {events:?}"
    );
    assert_eq!(
        states(&events),
        [
            ("retryable".to_owned(), 1),
            ("available".to_owned(), 1),
            ("running".to_owned(), 2),
            ("completed".to_owned(), 2),
        ],
        "{events:?}"
    );
    let end = events.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["job"]["state"], "completed");
    let ids: Vec<i64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] <= w[1]),
        "ids in order: {ids:?}"
    );

    // Resumed from its end, a stream ends at once.
    let again = Events::new(grafter.stream(id, "", Some(&end.id)).await)
        .rest()
        .await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].event, "end");
}

#[tokio::test]
async fn a_stream_cut_and_resumed_misses_no_state_change_on_sqlite() {
    let (store, _dir) = sqlite().await;
    resume_misses_no_state_change(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_and_resumed_misses_no_state_change_on_postgres() {
    let Some(harness) = postgres::postgres().await else {
        return;
    };
    resume_misses_no_state_change(harness.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_on_one_node_reaches_a_stream_on_another() {
    let Some(url) = postgres::database().await else {
        return;
    };
    let (config, _guard) = postgres::fresh_config(&url);
    let one = grafter_postgres::PostgresStore::connect(config.clone())
        .await
        .unwrap();
    let two = grafter_postgres::PostgresStore::connect(config)
        .await
        .unwrap();
    let (node_one, node_two) = (
        start(Arc::new(one), None).await,
        start(Arc::new(two), None).await,
    );
    let id = node_one.enqueue("q").await;
    let mut events = Events::new(node_two.stream(id, "", None).await);
    assert_eq!(events.next().await.unwrap().data["state"], "available");
    let (_, lease) = node_one.fetch("q").await;
    let running = events.next().await.unwrap();
    assert_eq!(
        (running.event.as_str(), &running.data["state"]),
        ("state", &json!("running"))
    );
    node_one.progress(id, &lease, 0.75).await;
    assert_eq!(
        events.next().await.unwrap().data["progress"]["fraction"],
        0.75
    );
    let (status, _) = node_one
        .post(&format!("/v1/jobs/{id}/ack"), json!({"lease": lease}))
        .await;
    assert_eq!(status, 200);
    let rest = events.rest().await;
    assert_eq!(states(&rest), [("completed".to_owned(), 1)], "{rest:?}");
    assert_eq!(rest.last().unwrap().event, "end");
}

#[tokio::test]
async fn a_stream_token_opens_only_its_jobs_until_it_expires() {
    let (store, _dir) = sqlite().await;
    let grafter = start(store, Some(TOKEN)).await;
    let (x, y) = (grafter.enqueue("q").await, grafter.enqueue("q").await);
    let (status, minted) = grafter
        .post("/v1/stream-tokens", json!({"jobs": [x], "ttl_ms": 60_000}))
        .await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap();
    assert!(minted["expires_at"].is_string());

    let anonymous = reqwest::Client::new();
    let open = |id: i64, query: String| {
        let request = anonymous.get(format!("{}/v1/jobs/{id}/events{query}", grafter.base));
        async move { request.send().await.unwrap() }
    };
    let mut x_events = Events::new(open(x, format!("?access_token={token}")).await);
    assert_eq!(x_events.next().await.unwrap().event, "snapshot");
    let on_y = open(y, format!("?access_token={token}")).await;
    assert_eq!(on_y.status(), 403);
    let body: Value = on_y.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(open(x, String::new()).await.status(), 401, "no credentials");
    let with_bearer = grafter
        .stream(y, &format!("?access_token={token}"), None)
        .await;
    assert_eq!(
        with_bearer.status(),
        200,
        "the server's token opens any stream"
    );
    let forged = token.replacen(&format!(".{x}."), &format!(".{y}."), 1);
    assert_eq!(
        open(y, format!("?access_token={forged}")).await.status(),
        401
    );
    // The token opens streams only: not the rest of the API.
    let show = anonymous
        .get(format!("{}/v1/jobs/{x}?access_token={token}", grafter.base))
        .send()
        .await
        .unwrap();
    assert_eq!(show.status(), 401);

    let (status, short) = grafter
        .post("/v1/stream-tokens", json!({"jobs": [x], "ttl_ms": 1}))
        .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired = open(
        x,
        format!("?access_token={}", short["token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(expired.status(), 401);
    let body: Value = expired.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    for bad in [
        json!({}),
        json!({"jobs": [x], "ttl_ms": 0}),
        json!({"jobs": [x], "ttl_ms": 86_400_001}),
        json!({"jobs": [0]}),
        json!({"jobs": (1..=101).collect::<Vec<i64>>()}),
        json!({"jobs": [x], "scopes": ["admin"]}),
    ] {
        let (status, body) = grafter.post("/v1/stream-tokens", bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let unauthenticated = anonymous
        .post(format!("{}/v1/stream-tokens", grafter.base))
        .json(&json!({"jobs": [x]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn a_long_poll_answers_at_the_next_change() {
    let (store, _dir) = sqlite().await;
    let grafter = Arc::new(start(store, None).await);
    let id = grafter.enqueue("q").await;
    let (_, lease) = grafter.fetch("q").await;
    let poll = |query: String| {
        let request = grafter.request(reqwest::Method::GET, &format!("/v1/jobs/{id}{query}"));
        async move { request.send().await.unwrap() }
    };
    let waiting = tokio::spawn({
        let request = grafter.request(reqwest::Method::GET, &format!("/v1/jobs/{id}?wait=30000"));
        async move { request.send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "it waits for a change");
    grafter.progress(id, &lease, 0.5).await;
    let answered = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answered.status(), 200);
    let event_id = answered.headers()["grafter-event-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let job: Value = answered.json().await.unwrap();
    assert_eq!(job["progress"]["fraction"], 0.5);

    // A change made since that answer answers at once.
    grafter.progress(id, &lease, 0.75).await;
    let at_once = tokio::time::timeout(PATIENCE, poll(format!("?wait=30000&after={event_id}")))
        .await
        .unwrap();
    let job: Value = at_once.json().await.unwrap();
    assert_eq!(job["progress"]["fraction"], 0.75);

    // Nothing changes: the wait ends with the job as it is.
    let quiet = poll("?wait=200".to_owned()).await;
    assert_eq!(quiet.status(), 200);

    for bad in ["?wait=60001", "?after=3", "?wait=-1", "?wait=x"] {
        let refused = poll(bad.to_owned()).await;
        assert!(
            refused.status().is_client_error(),
            "{bad}: {}",
            refused.status()
        );
    }
}

impl Grafter {
    /// Creates a batch of `jobs` jobs on `queue`: its id.
    async fn batch(&self, queue: &str, jobs: usize, open: bool) -> i64 {
        let jobs: Vec<Value> = (0..jobs)
            .map(|_| json!({"kind": "part", "queue": queue}))
            .collect();
        let (status, body) = self
            .post("/v1/batches", json!({"jobs": jobs, "open": open}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["batch"]["id"].as_i64().unwrap()
    }

    async fn ack(&self, id: i64, lease: &str) {
        let (status, body) = self
            .post(&format!("/v1/jobs/{id}/ack"), json!({"lease": lease}))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Opens a batch's stream.
    async fn batch_stream(
        &self,
        id: i64,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.request(
            reqwest::Method::GET,
            &format!("/v1/batches/{id}/events{query}"),
        );
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        request.send().await.unwrap()
    }
}

/// The batch states that `state` events announce, in order: (state, open,
/// finished).
fn batch_states(events: &[Sse]) -> Vec<(String, bool, bool)> {
    events
        .iter()
        .filter(|e| e.event == "state")
        .map(|e| {
            (
                e.data["state"].as_str().unwrap().to_owned(),
                e.data["open"].as_bool().unwrap(),
                e.data["finished"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_finished_batch_streams_its_snapshot_and_its_end_at_once() {
    let (store, _dir) = sqlite().await;
    let grafter = start(store, None).await;
    let id = grafter.batch("b", 1, false).await;
    let (job, lease) = grafter.fetch("b").await;
    grafter.ack(job, &lease).await;
    let events = Events::new(grafter.batch_stream(id, "", None).await)
        .rest()
        .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["snapshot", "end"], "{events:?}");
    assert_eq!(events[0].data["id"], id);
    assert_eq!(events[0].data["state"], "succeeded");
    assert_eq!(events[1].data["batch"]["state"], "succeeded");
    assert_eq!(events[1].data["batch"]["counts"]["completed"], 1);
    assert_eq!(events[1].data["batch"]["progress"], 1.0);

    assert_eq!(
        grafter.batch_stream(id + 1000, "", None).await.status(),
        404
    );
    assert_eq!(grafter.batch_stream(0, "", None).await.status(), 404);
}

/// Opens a batch's stream, reads its snapshot and one progress event, cuts
/// it; while no one listens the batch is sealed and its jobs finish; resumed
/// with the last id seen, the stream replays both state changes in order,
/// then the end.
async fn batch_resume_misses_no_state_change(store: Arc<dyn Store>) {
    let grafter = start(store, None).await;
    let id = grafter.batch("b", 2, true).await;
    let (one, lease_one) = grafter.fetch("b").await;
    let mut first = Events::new(grafter.batch_stream(id, "", None).await);
    let snapshot = first.next().await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.data["state"], "running");
    assert_eq!(snapshot.data["open"], true);
    grafter.progress(one, &lease_one, 0.5).await;
    let progress = first.next().await.unwrap();
    assert_eq!(progress.event, "progress", "{progress:?}");
    assert_eq!(progress.data["progress"], 0.25);
    assert_eq!(progress.data["counts"]["pending"], 2);
    drop(first); // the cut

    let (status, body) = grafter
        .post(&format!("/v1/batches/{id}/seal"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    grafter.ack(one, &lease_one).await;
    let (two, lease_two) = grafter.fetch("b").await;
    grafter.ack(two, &lease_two).await;

    let events = Events::new(grafter.batch_stream(id, "", Some(&progress.id)).await)
        .rest()
        .await;
    assert_ne!(
        events[0].event, "snapshot",
        "a resumed stream replays: {events:?}"
    );
    assert_eq!(
        batch_states(&events),
        [
            ("running".to_owned(), false, false),
            ("succeeded".to_owned(), false, true),
        ],
        "{events:?}"
    );
    let end = events.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["batch"]["state"], "succeeded");
    assert_eq!(end.data["batch"]["counts"]["completed"], 2);
    let ids: Vec<i64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] <= w[1]),
        "ids in order: {ids:?}"
    );

    // Resumed from its end, a stream ends at once.
    let again = Events::new(grafter.batch_stream(id, "", Some(&end.id)).await)
        .rest()
        .await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].event, "end");
}

#[tokio::test]
async fn a_batch_stream_cut_and_resumed_misses_no_state_change_on_sqlite() {
    let (store, _dir) = sqlite().await;
    batch_resume_misses_no_state_change(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_stream_cut_and_resumed_misses_no_state_change_on_postgres() {
    let Some(harness) = postgres::postgres().await else {
        return;
    };
    batch_resume_misses_no_state_change(harness.store.clone()).await;
}

#[tokio::test]
async fn a_stream_token_for_a_batch_opens_only_that_batch() {
    let (store, _dir) = sqlite().await;
    let grafter = start(store, Some(TOKEN)).await;
    let (x, y) = (
        grafter.batch("b", 1, true).await,
        grafter.batch("b", 1, true).await,
    );
    let (status, minted) = grafter
        .post("/v1/stream-tokens", json!({"batches": [x]}))
        .await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap();
    let anonymous = reqwest::Client::new();
    let open = |id: i64| {
        let request = anonymous.get(format!(
            "{}/v1/batches/{id}/events?access_token={token}",
            grafter.base
        ));
        async move { request.send().await.unwrap() }
    };
    let mut x_events = Events::new(open(x).await);
    let snapshot = x_events.next().await.unwrap();
    assert_eq!(
        (snapshot.event.as_str(), &snapshot.data["id"]),
        ("snapshot", &json!(x))
    );
    let on_y = open(y).await;
    assert_eq!(on_y.status(), 403);
    let body: Value = on_y.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    // A batch's token opens no job of it, and a job's no batch.
    let job = grafter.enqueue("q").await;
    let on_job = anonymous
        .get(format!(
            "{}/v1/jobs/{job}/events?access_token={token}",
            grafter.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(on_job.status(), 403);

    for (bad, field) in [
        (json!({"batches": [y + 1000]}), "batches"),
        (json!({"batches": [x, 0]}), "batches"),
        (json!({"jobs": [job + 1000], "batches": [x]}), "jobs"),
    ] {
        let (status, body) = grafter.post("/v1/stream-tokens", bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["field"], field, "{bad}: {body}");
    }
}
