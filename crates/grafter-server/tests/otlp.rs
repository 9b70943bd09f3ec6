//! OTLP export of the server's own spans, end to end: a real server
//! (`serve` on a loopback socket, a real SQLite file) exports to a small
//! collector on loopback that takes `POST /v1/traces` and decodes each body
//! with the official OTLP types (opentelemetry-proto), so a wrong field
//! number or wire type fails here. Every wait is a poll with a deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use grafter_server::{serve, ServerConfig};
use grafter_sqlite::SqliteStore;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
/// A value in the jobs' args that must never reach a span.
const SECRET_ARG: &str = "s3cret-argument-value";

fn traceparent(trace_id: &str, parent_id: &str, flags: &str) -> String {
    format!("00-{trace_id}-{parent_id}-{flags}")
}

/// What the collector received.
#[derive(Default)]
struct Received {
    /// Of the requests it answered 200.
    spans: Vec<Span>,
    service_names: Vec<String>,
    content_types: Vec<String>,
    /// Every request's body, whatever it was answered.
    bodies: Vec<Bytes>,
}

/// A collector on loopback that keeps every span posted to it.
struct Collector {
    url: String,
    received: Arc<Mutex<Received>>,
}

/// How the collector answers a request: a status and a `Retry-After`.
type Answer = (StatusCode, Option<&'static str>);

impl Collector {
    async fn start() -> Collector {
        Collector::answering(Vec::new()).await
    }

    /// A collector whose first requests get `answers`, in order, and the
    /// rest 200.
    async fn answering(answers: Vec<Answer>) -> Collector {
        let received = Arc::new(Mutex::new(Received::default()));
        let kept = received.clone();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let kept = kept.clone();
                let answer = answers.lock().unwrap().next();
                async move {
                    let request = ExportTraceServiceRequest::decode(body.clone())
                        .expect("an OTLP ExportTraceServiceRequest");
                    let mut kept = kept.lock().unwrap();
                    kept.bodies.push(body);
                    if let Some((status, retry_after)) = answer {
                        let mut headers = HeaderMap::new();
                        if let Some(seconds) = retry_after {
                            headers.insert("retry-after", seconds.parse().unwrap());
                        }
                        return (status, headers);
                    }
                    let content_type = headers.get("content-type").map(|v| v.to_str().unwrap());
                    kept.content_types
                        .push(content_type.unwrap_or_default().to_owned());
                    for resource_spans in request.resource_spans {
                        let resource = resource_spans.resource.unwrap_or_default();
                        for attribute in resource.attributes {
                            if attribute.key == "service.name" {
                                kept.service_names.push(string(attribute.value));
                            }
                        }
                        for scope in resource_spans.scope_spans {
                            kept.spans.extend(scope.spans);
                        }
                    }
                    (StatusCode::OK, HeaderMap::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Collector { url, received }
    }

    fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    /// The spans about job `id`, once `count` of them arrived.
    async fn spans_of(&self, id: i64, count: usize) -> Vec<Span> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let spans: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|span| attribute(span, "messaging.message.id") == Some(id.to_string()))
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: {} of {count} spans arrived: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn string(value: Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value) {
        Some(AnyValue::StringValue(s)) => s,
        Some(AnyValue::IntValue(i)) => i.to_string(),
        other => panic!("not a string or integer: {other:?}"),
    }
}

/// A span's attribute as text (integers too), if it has it.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| string(a.value.clone()))
}

/// The one span of `spans` named `name`.
fn named<'s>(spans: &'s [Span], name: &str) -> &'s Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} in {spans:#?}");
    found[0]
}

/// A running server on a temp SQLite file.
struct Grafter {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Grafter {
    async fn start(otlp_endpoint: &str) -> Grafter {
        let mut config = ServerConfig::default();
        config.otlp.endpoint = Some(otlp_endpoint.to_owned());
        config.otlp.service_name = "grafter-under-test".into();
        config.push.refresh_interval_ms = 100;
        config.push.allow_private = true;
        Grafter::start_with(config).await
    }

    async fn start_with(config: ServerConfig) -> Grafter {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(listener, Arc::new(store), config, shutdown.clone()));
        Grafter {
            base,
            http: reqwest::Client::new(),
            shutdown,
            served,
            _dir: dir,
        }
    }

    /// Stops the server, answering how long `serve` took to return.
    async fn stop(self) -> Duration {
        let asked = Instant::now();
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        asked.elapsed()
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request to grafter");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn enqueue(&self, headers: &[(&str, &str)], job: Value) -> i64 {
        let (status, body) = self.post("/v1/jobs", headers, job).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// Leases up to `max` jobs of `queue`: (id, lease) each.
    async fn fetch(&self, queue: &str, max: usize) -> Vec<(i64, String)> {
        let (status, body) = self
            .post("/v1/fetch", &[], json!({"queues": [queue], "max": max}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| {
                let lease = job["lease"].as_str().unwrap().to_owned();
                (job["id"].as_i64().unwrap(), lease)
            })
            .collect()
    }

    async fn ack(&self, id: i64, lease: &str) -> u16 {
        let path = format!("/v1/jobs/{id}/ack");
        self.post(&path, &[], json!({"lease": lease})).await.0
    }

    async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until this node counts at least `count` spans dropped.
    async fn wait_dropped(&self, count: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let metrics = self.metrics().await;
            let dropped = metrics
                .lines()
                .find_map(|l| l.strip_prefix("grafter_otlp_spans_dropped_total "))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap());
            if dropped >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} dropped spans never counted: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn job_state(&self, id: i64) -> String {
        let url = format!("{}/v1/jobs/{id}", self.base);
        let job: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        job["state"].as_str().unwrap().to_owned()
    }
}

/// Asserts `span` is the server's span of `operation` on job `id` of `queue`,
/// a child of the enqueuer's span in its trace.
fn assert_in_trace(
    span: &Span,
    kind: SpanKind,
    op_type: &str,
    op_name: &str,
    id: i64,
    queue: &str,
) {
    assert_eq!(span.name, format!("{op_name} {queue}"));
    assert_eq!(span.kind, kind as i32, "{}: kind", span.name);
    assert_eq!(
        hex::encode(&span.trace_id),
        TRACE_ID,
        "{}: the job's trace",
        span.name
    );
    assert_eq!(
        hex::encode(&span.parent_span_id),
        PARENT_ID,
        "{}: a child of the enqueuer's span",
        span.name
    );
    assert_eq!(span.span_id.len(), 8);
    assert_ne!(hex::encode(&span.span_id), PARENT_ID);
    assert_eq!(span.flags & 0x3ff, 0x301, "sampled, with a remote parent");
    assert!(span.start_time_unix_nano > 0);
    assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
    for (key, value) in [
        ("messaging.system", "grafter"),
        ("messaging.operation.type", op_type),
        ("messaging.operation.name", op_name),
        ("messaging.destination.name", queue),
        ("messaging.message.id", &id.to_string()),
        ("messaging.grafter.job.kind", "send_email"),
    ] {
        assert_eq!(
            attribute(span, key).as_deref(),
            Some(value),
            "{}: {key}",
            span.name
        );
    }
    for attribute in &span.attributes {
        let value = format!("{:?}", attribute.value);
        assert!(
            !value.contains(SECRET_ARG),
            "args leaked into {attribute:?}"
        );
    }
}

#[tokio::test]
async fn the_servers_spans_of_a_job_sit_in_the_jobs_trace() {
    let collector = Collector::start().await;
    let grafter = Grafter::start(&collector.url).await;
    let parent = traceparent(TRACE_ID, PARENT_ID, "01");
    let args = json!({"to": SECRET_ARG});

    // Enqueued with the header, fetched, acked.
    let acked = grafter
        .enqueue(
            &[("traceparent", &parent), ("tracestate", "rojo=1")],
            json!({"kind": "send_email", "queue": "mail", "args": args}),
        )
        .await;
    let [(id, lease)] = &grafter.fetch("mail", 1).await[..] else {
        panic!("one job leased")
    };
    assert_eq!(*id, acked);
    assert_eq!(grafter.ack(acked, lease).await, 200);
    // A second ack with the spent lease is refused: its span says why.
    assert_eq!(grafter.ack(acked, lease).await, 409);

    let spans = collector.spans_of(acked, 4).await;
    let send = named(&spans, "send mail");
    assert_in_trace(send, SpanKind::Producer, "send", "send", acked, "mail");
    assert_eq!(
        send.trace_state, "rojo=1",
        "the job's tracestate goes with its trace"
    );
    assert_eq!(attribute(send, "messaging.batch.message_count"), None);
    let receive = named(&spans, "receive mail");
    assert_in_trace(
        receive,
        SpanKind::Client,
        "receive",
        "receive",
        acked,
        "mail",
    );
    assert_eq!(
        attribute(receive, "messaging.grafter.job.attempt").as_deref(),
        Some("1")
    );
    let ack = named(&spans, "ack mail");
    assert_in_trace(ack, SpanKind::Client, "settle", "ack", acked, "mail");
    assert_eq!(attribute(ack, "error.type"), None);
    assert_ne!(
        ack.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
    // The refused ack: this node had settled the job's lease, and a refusal
    // reads nothing more, so its span knows the job by id alone (a root).
    let refused = named(&spans, "ack");
    assert_eq!(
        attribute(refused, "error.type").as_deref(),
        Some("lease_mismatch")
    );
    assert_eq!(
        attribute(refused, "messaging.operation.type").as_deref(),
        Some("settle")
    );
    assert_eq!(attribute(refused, "messaging.destination.name"), None);
    assert!(refused.parent_span_id.is_empty());
    assert_eq!(
        refused.status.as_ref().unwrap().code,
        SpanStatus::Error as i32
    );

    // The trace as a job field, and a fail.
    let failed = grafter
        .enqueue(
            &[],
            json!({"kind": "send_email", "queue": "flaky", "args": args, "traceparent": parent}),
        )
        .await;
    let [(_, lease)] = &grafter.fetch("flaky", 1).await[..] else {
        panic!("one job leased")
    };
    let (status, body) = grafter
        .post(
            &format!("/v1/jobs/{failed}/fail"),
            &[],
            json!({"lease": lease, "error": "smtp down", "retry": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let spans = collector.spans_of(failed, 3).await;
    assert_in_trace(
        named(&spans, "send flaky"),
        SpanKind::Producer,
        "send",
        "send",
        failed,
        "flaky",
    );
    let fail = named(&spans, "fail flaky");
    assert_in_trace(fail, SpanKind::Client, "settle", "fail", failed, "flaky");
    assert_eq!(
        attribute(fail, "error.type"),
        None,
        "the fail itself succeeded"
    );

    // A batch: enqueued together, leased together, acked together.
    let (status, body) = grafter
        .post(
            "/v1/jobs/batch",
            &[("traceparent", &parent)],
            json!({"jobs": [
                {"kind": "send_email", "queue": "bulk", "args": args},
                {"kind": "send_email", "queue": "bulk", "args": args},
            ]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let leased = grafter.fetch("bulk", 10).await;
    assert_eq!(leased.len(), 2);
    let acks: Vec<Value> = leased
        .iter()
        .map(|(id, lease)| json!({"id": id, "lease": lease}))
        .collect();
    let (status, body) = grafter
        .post("/v1/jobs/ack", &[], json!({"acks": acks}))
        .await;
    assert_eq!(status, 200, "{body}");
    for (id, _) in &leased {
        let spans = collector.spans_of(*id, 3).await;
        for (name, kind, op_type, op_name) in [
            ("send bulk", SpanKind::Producer, "send", "send"),
            ("receive bulk", SpanKind::Client, "receive", "receive"),
            ("ack bulk", SpanKind::Client, "settle", "ack"),
        ] {
            let span = named(&spans, name);
            assert_in_trace(span, kind, op_type, op_name, *id, "bulk");
            assert_eq!(
                attribute(span, "messaging.batch.message_count").as_deref(),
                Some("2"),
                "{name}"
            );
        }
    }

    // A push: the dispatcher's delivery is a `process` span.
    let app = axum::Router::new().route("/jobs", axum::routing::post(|| async { StatusCode::OK }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/jobs", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let answer = http
        .put(format!("{}/v1/queues/hooks", grafter.base))
        .json(&json!({"push": {"url": target, "secret": "push-secret-0123456789"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let pushed = grafter
        .enqueue(
            &[("traceparent", &parent)],
            json!({"kind": "send_email", "queue": "hooks", "args": args}),
        )
        .await;
    let spans = collector.spans_of(pushed, 2).await;
    let process = named(&spans, "process hooks");
    assert_in_trace(
        process,
        SpanKind::Consumer,
        "process",
        "process",
        pushed,
        "hooks",
    );
    assert_eq!(attribute(process, "error.type"), None);
    assert_eq!(grafter.job_state(pushed).await, "completed");

    grafter.stop().await;
    let received = collector.received.lock().unwrap();
    assert!(!received.service_names.is_empty());
    assert!(received
        .service_names
        .iter()
        .all(|n| n == "grafter-under-test"));
    assert!(received
        .content_types
        .iter()
        .all(|t| t == "application/x-protobuf"));
}

#[tokio::test]
async fn without_a_valid_context_the_spans_are_roots_and_an_unsampled_trace_is_not_recorded() {
    let collector = Collector::start().await;
    let grafter = Grafter::start(&collector.url).await;
    let malformed = traceparent(&TRACE_ID.to_uppercase(), PARENT_ID, "01");
    let id = grafter
        .enqueue(
            &[("traceparent", &malformed)],
            json!({"kind": "send_email", "queue": "q"}),
        )
        .await;
    let [(_, lease)] = &grafter.fetch("q", 1).await[..] else {
        panic!("one job leased")
    };
    assert_eq!(grafter.ack(id, lease).await, 200);
    let spans = collector.spans_of(id, 3).await;
    let mut traces = Vec::new();
    for span in &spans {
        assert!(span.parent_span_id.is_empty(), "{}: a root span", span.name);
        assert_eq!(span.trace_id.len(), 16);
        assert!(span.trace_id.iter().any(|&b| b != 0));
        assert_ne!(hex::encode(&span.trace_id), TRACE_ID.to_lowercase());
        assert_eq!(span.flags & 0x3ff, 0x101, "sampled, no remote parent");
        traces.push(span.trace_id.clone());
    }
    assert_eq!(
        attribute(named(&spans, "send q"), "messaging.system").as_deref(),
        Some("grafter")
    );

    // A caller that did not sample its trace gets no spans of it.
    let unsampled = grafter
        .enqueue(
            &[("traceparent", &traceparent(TRACE_ID, PARENT_ID, "00"))],
            json!({"kind": "send_email", "queue": "quiet"}),
        )
        .await;
    let [(_, lease)] = &grafter.fetch("quiet", 1).await[..] else {
        panic!("one job leased")
    };
    assert_eq!(grafter.ack(unsampled, lease).await, 200);
    // A sampled job after it: once its spans are in, the unsampled job's
    // would have been too (one exporting queue, in order).
    let marker = grafter
        .enqueue(
            &[("traceparent", &traceparent(TRACE_ID, PARENT_ID, "01"))],
            json!({"kind": "send_email", "queue": "quiet"}),
        )
        .await;
    collector.spans_of(marker, 1).await;
    let of_unsampled = collector
        .spans()
        .into_iter()
        .filter(|s| attribute(s, "messaging.message.id") == Some(unsampled.to_string()))
        .count();
    assert_eq!(of_unsampled, 0);
    grafter.stop().await;
}

#[tokio::test]
async fn spans_still_queued_at_shutdown_are_sent() {
    let collector = Collector::start().await;
    let grafter = Grafter::start(&collector.url).await;
    let id = grafter
        .enqueue(
            &[("traceparent", &traceparent(TRACE_ID, PARENT_ID, "01"))],
            json!({"kind": "send_email", "queue": "last"}),
        )
        .await;
    // At once, well within the exporter's one-second batching.
    grafter.stop().await;
    let spans = collector.spans_of(id, 1).await;
    assert_eq!(spans[0].name, "send last");
}

#[tokio::test]
async fn an_export_the_collector_asks_to_retry_is_sent_again_and_a_refused_one_is_not() {
    // 503 with Retry-After: 0 is retried at once; 429 without one after the
    // first backoff step; then 200.
    let busy = Collector::answering(vec![
        (StatusCode::SERVICE_UNAVAILABLE, Some("0")),
        (StatusCode::TOO_MANY_REQUESTS, None),
    ])
    .await;
    let grafter = Grafter::start(&busy.url).await;
    let parent = traceparent(TRACE_ID, PARENT_ID, "01");
    let id = grafter
        .enqueue(
            &[("traceparent", &parent)],
            json!({"kind": "k", "queue": "busy"}),
        )
        .await;
    let spans = busy.spans_of(id, 1).await;
    assert_eq!(spans[0].name, "send busy");
    let bodies = busy.received.lock().unwrap().bodies.clone();
    assert_eq!(bodies.len(), 3, "two refusals, then the export taken");
    assert!(
        bodies.iter().all(|body| *body == bodies[0]),
        "each try sends the same spans"
    );
    assert!(grafter
        .metrics()
        .await
        .contains("grafter_otlp_spans_dropped_total 0"));
    grafter.stop().await;

    // A refusal the collector does not ask to retry drops the batch at once.
    let refusing = Collector::answering(vec![(StatusCode::BAD_REQUEST, None)]).await;
    let grafter = Grafter::start(&refusing.url).await;
    grafter
        .enqueue(
            &[("traceparent", &parent)],
            json!({"kind": "k", "queue": "refused"}),
        )
        .await;
    grafter.wait_dropped(1).await;
    let later = grafter
        .enqueue(
            &[("traceparent", &parent)],
            json!({"kind": "k", "queue": "later"}),
        )
        .await;
    refusing.spans_of(later, 1).await;
    let sent = refusing.received.lock().unwrap().bodies.len();
    assert_eq!(sent, 2, "the refused export was not sent again");
    assert!(refusing.spans().iter().all(|s| s.name == "send later"));
    grafter.stop().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_credentials_stay_home() {
    let elsewhere = Collector::start().await;
    let target = format!("{}/v1/traces", elsewhere.url);
    let asked = Arc::new(Mutex::new(0));
    let counted = asked.clone();
    let redirecting = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move || {
            *counted.lock().unwrap() += 1;
            let to = target.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirecting).await.unwrap() });
    let mut config = ServerConfig::default();
    config.otlp.endpoint = Some(endpoint);
    config
        .otlp
        .headers
        .insert("x-api-key".into(), "collector-key".into());
    let grafter = Grafter::start_with(config).await;
    let parent = traceparent(TRACE_ID, PARENT_ID, "01");
    grafter
        .enqueue(&[("traceparent", &parent)], json!({"kind": "k"}))
        .await;
    // A failed export, dropped and counted like any other.
    grafter.wait_dropped(1).await;
    assert!(*asked.lock().unwrap() >= 1);
    assert!(
        elsewhere.received.lock().unwrap().bodies.is_empty(),
        "the export followed the redirect"
    );
    grafter.stop().await;
}

#[tokio::test]
async fn a_collector_that_is_down_or_silent_costs_the_job_path_nothing() {
    // Down: nothing listens on the port.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    // Silent: takes connections, never answers.
    let silent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("http://{}", silent_listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent_listener.accept().await {
            holding.lock().unwrap().push(socket);
        }
    });

    // The refused one's drops are counted as its exports fail (after their
    // retries, about 8 s); the silent one's only when the shutdown deadline
    // gives up on them, which an export under way does not hold up.
    for (collector, drops_counted) in [(down, true), (silent, false)] {
        let mut config = ServerConfig::default();
        config.otlp.endpoint = Some(collector.clone());
        // Longer than the shutdown's deadline, which must bound it anyway.
        config.otlp.timeout_ms = 60_000;
        let grafter = Grafter::start_with(config).await;
        let parent = traceparent(TRACE_ID, PARENT_ID, "01");
        let mut ids = Vec::new();
        for _ in 0..20 {
            let job = json!({"kind": "k", "queue": "q"});
            ids.push(grafter.enqueue(&[("traceparent", &parent)], job).await);
        }
        let leased = grafter.fetch("q", 20).await;
        assert_eq!(leased.len(), 20, "{collector}");
        for (id, lease) in &leased {
            assert_eq!(grafter.ack(*id, lease).await, 200, "{collector}");
        }
        for id in ids {
            assert_eq!(grafter.job_state(id).await, "completed", "{collector}");
        }
        if drops_counted {
            grafter.wait_dropped(1).await;
        } else {
            // An export under way, which the silent collector never answers:
            // shutdown must not wait for it.
            let deadline = Instant::now() + PATIENCE;
            while held.lock().unwrap().is_empty() {
                assert!(Instant::now() < deadline, "no export reached {collector}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let took = grafter.stop().await;
        // The shutdown deadline is 3 s; allow for a slow machine.
        assert!(
            took < Duration::from_secs(10),
            "{collector}: shutdown took {took:?}"
        );
    }
}
