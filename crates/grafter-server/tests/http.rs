//! Every endpoint and every error answer, through `router()` without a socket,
//! on a real SQLite file; where the stores could answer differently, on
//! PostgreSQL too.

#[path = "../../grafter-postgres/tests/common/mod.rs"]
mod postgres;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use grafter_server::{router, AppState, ServerConfig};
use grafter_sqlite::SqliteStore;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Api {
    app: Router,
    /// The SQLite file's directory, or the PostgreSQL schema's guard.
    _keep: Box<dyn Any + Send + Sync>,
}

async fn api_with(config: ServerConfig) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    let state = AppState::new(Arc::new(store), config, CancellationToken::new());
    Api {
        app: router(state),
        _keep: Box::new(dir),
    }
}

async fn api() -> Api {
    api_with(ServerConfig::default()).await
}

/// The API on a fresh PostgreSQL schema (the PostgreSQL store's own test
/// fixture), or `None` when PostgreSQL is not there and CI is not set. Tests
/// on it run multi-threaded: dropping it blocks its thread until the schema is
/// dropped, which waits for the store's tasks to let go.
async fn postgres_api() -> Option<Api> {
    let harness = postgres::postgres().await?;
    let state = AppState::new(
        harness.store.clone(),
        ServerConfig::default(),
        CancellationToken::new(),
    );
    Some(Api {
        app: router(state),
        _keep: Box::new(harness),
    })
}

impl Api {
    async fn raw(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, body, _) = self.raw_sized(request).await;
        (status, body)
    }

    /// The answer, and its body's size in bytes.
    async fn raw_sized(&self, request: Request<Body>) -> (StatusCode, Value, usize) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, body, bytes.len())
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, body, _) = self.call_sized(method, uri, body).await;
        (status, body)
    }

    /// [`Api::call`], with the answer's size in bytes.
    async fn call_sized(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, usize) {
        let request = Request::builder().method(method).uri(uri);
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.raw_sized(request.unwrap()).await
    }

    async fn text(&self, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
        self.raw(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(body)).await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }

    async fn enqueue(&self, job: Value) -> Value {
        let (status, body) = self.post("/v1/jobs", job).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn fetch_one(&self, queue: &str) -> Value {
        let (status, body) = self
            .post("/v1/fetch", json!({"queues": [queue], "worker_id": "w1"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
        body["jobs"][0].clone()
    }
}

fn assert_error(response: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["error"]["code"], code, "{}", response.1);
    assert!(
        response.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        response.1
    );
}

#[tokio::test]
async fn enqueue_answers_the_job_with_every_contract_field() {
    let api = api().await;
    let job = api
        .enqueue(json!({"kind": "send_email", "args": {"to": "a@example.com"}, "tags": ["t"]}))
        .await;
    for field in [
        "id",
        "queue",
        "kind",
        "args",
        "state",
        "attempt",
        "max_attempts",
        "priority",
        "run_at",
        "progress",
        "result",
        "errors",
    ] {
        assert!(job.get(field).is_some(), "missing {field} in {job}");
    }
    assert_eq!(job["state"], "available");
    assert_eq!(job["queue"], "default");
    assert_eq!(job["max_attempts"], 25);
    assert_eq!(job["args"]["to"], "a@example.com");
    let (status, shown) = api.get(&format!("/v1/jobs/{}", job["id"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, job);

    let later = api
        .enqueue(json!({"kind": "k", "run_at": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(later["state"], "scheduled");
}

#[tokio::test]
async fn duplicate_unique_key_answers_200_with_the_existing_job() {
    let api = api().await;
    let first = api
        .enqueue(json!({"kind": "sync", "unique_key": "user:1"}))
        .await;
    let (status, again) = api
        .post("/v1/jobs", json!({"kind": "sync", "unique_key": "user:1"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
}

#[tokio::test]
async fn bad_enqueue_input_gets_json_errors_naming_the_field() {
    let api = api().await;
    assert_error(
        &api.text(Method::POST, "/v1/jobs", "{not json").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    assert_error(
        &api.text(Method::POST, "/v1/jobs", "").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    assert_error(
        &api.text(Method::POST, "/v1/jobs", "{} trailing").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );

    let missing = api.post("/v1/jobs", json!({"args": {}})).await;
    assert_error(&missing, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(missing.1["error"]["field"], "kind");
    let not_object = api.post("/v1/jobs", json!([1, 2])).await;
    assert_error(
        &not_object,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );

    let wrong_type = api
        .post("/v1/jobs", json!({"kind": "k", "priority": "high"}))
        .await;
    assert_error(
        &wrong_type,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(wrong_type.1["error"]["field"], "priority");

    let unknown = api
        .post("/v1/jobs", json!({"kind": "k", "priorty": 1}))
        .await;
    assert_error(&unknown, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(unknown.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("priorty"));

    for (body, field) in [
        (json!({"kind": ""}), "kind"),
        (json!({"kind": "k", "max_attempts": 0}), "max_attempts"),
        (json!({"kind": "k", "queue": ""}), "queue"),
        (json!({"kind": "k", "timeout_ms": 0}), "timeout_ms"),
        (json!({"kind": "k", "run_at": "tomorrow"}), "run_at"),
        (json!({"kind": "k", "priority": 70000}), "priority"),
    ] {
        let response = api.post("/v1/jobs", body.clone()).await;
        assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(
            response.1["error"]["field"], field,
            "{body} → {}",
            response.1
        );
    }
    let (_, page) = api.get("/v1/jobs").await;
    assert!(
        page["jobs"].as_array().unwrap().is_empty(),
        "no bad input was stored"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let api = api_with(ServerConfig {
        body_limit_bytes: 2048,
        ..Default::default()
    })
    .await;
    let big = json!({"kind": "k", "args": {"blob": "x".repeat(4096)}});
    assert_error(
        &api.post("/v1/jobs", big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    api.enqueue(json!({"kind": "k", "args": {"blob": "x".repeat(100)}}))
        .await;
}

#[tokio::test]
async fn batch_enqueue_is_one_transaction() {
    let api = api().await;
    let jobs: Vec<Value> = (0..50)
        .map(|i| json!({"kind": "k", "args": {"i": i}}))
        .collect();
    let (status, body) = api.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ids: Vec<i64> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 50);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in request order");

    let bad = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "ok"}, {"kind": ""}]}),
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(bad.1["error"]["field"], "jobs[1].kind");
    let typo = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "ok"}, {"kind": 5}]}),
        )
        .await;
    assert_error(&typo, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(typo.1["error"]["field"], "jobs[1].kind");
    let missing = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "ok"}, {"args": {}}]}),
        )
        .await;
    assert_eq!(missing.1["error"]["field"], "jobs[1].kind", "{}", missing.1);
    assert_error(
        &api.post("/v1/jobs/batch", json!({"jobs": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    let (_, page) = api.get("/v1/jobs?limit=1000").await;
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        50,
        "the bad batches stored nothing"
    );
}

#[tokio::test]
async fn unknown_jobs_and_routes_are_404_json() {
    let api = api().await;
    assert_error(
        &api.get("/v1/jobs/12345").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.get("/v1/jobs/abc").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.post("/v1/jobs/12345/retry", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call(Method::DELETE, "/v1/jobs/12345", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.post("/v1/jobs/12345/ack", json!({"lease": "x"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.get("/v1/nothing").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call(Method::PUT, "/v1/jobs", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn path_segments_that_are_not_utf8_are_404_json() {
    let api = api().await;
    for (method, uri) in [
        (Method::PUT, "/v1/queues/%FF"),
        (Method::POST, "/v1/queues/%FF/pause"),
        (Method::GET, "/v1/schedules/%FF"),
        (Method::PUT, "/v1/schedules/%FF"),
        (Method::POST, "/v1/schedules/%FF/trigger"),
        (Method::DELETE, "/v1/tokens/%FF"),
        (Method::PUT, "/v1/workers/%FF"),
        (Method::DELETE, "/v1/workers/%FF"),
        (Method::GET, "/v1/jobs/%FF"),
    ] {
        let answer = api.call(method.clone(), uri, Some(json!({}))).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
        assert!(
            answer.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("UTF-8"),
            "{method} {uri}: {}",
            answer.1
        );
    }
}

#[tokio::test]
async fn fetch_then_ack_completes_with_the_result() {
    let api = api().await;
    let job = api.enqueue(json!({"kind": "export"})).await;
    let leased = api.fetch_one("default").await;
    assert_eq!(leased["id"], job["id"]);
    assert_eq!(leased["state"], "running");
    assert_eq!(leased["attempt"], 1);
    assert_eq!(leased["worker_id"], "w1");
    let lease = leased["lease"].as_str().unwrap().to_owned();

    let uri = format!("/v1/jobs/{}/ack", job["id"]);
    let (status, done) = api
        .post(
            &uri,
            json!({"lease": lease, "result": {"url": "/exports/1.csv"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"]["url"], "/exports/1.csv");
    // The same lease again is stale now.
    assert_error(
        &api.post(&uri, json!({"lease": lease})).await,
        StatusCode::CONFLICT,
        "lease_mismatch",
    );
}

#[tokio::test]
async fn batch_ack_completes_each_job_fenced_by_its_own_lease() {
    let api = api().await;
    for kind in ["a", "b", "c"] {
        api.enqueue(json!({"kind": kind})).await;
    }
    let (_, fetched) = api
        .post(
            "/v1/fetch",
            json!({"queues": ["default"], "max": 3, "worker_id": "w1"}),
        )
        .await;
    let jobs = fetched["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 3);
    let ack = |job: &Value, lease: &Value| json!({"id": job["id"], "lease": lease, "result": {"kind": job["kind"]}});
    let acks = json!({"acks": [
        ack(&jobs[0], &jobs[0]["lease"]),
        ack(&jobs[1], &jobs[2]["lease"]), // a foreign lease
        {"id": jobs[2]["id"], "lease": jobs[2]["lease"]},
        {"id": 987_654, "lease": "x"},
        ack(&jobs[0], &jobs[0]["lease"]), // the same ack twice: the first one counts
    ]});
    let (status, answer) = api.post("/v1/jobs/ack", acks).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let oks: Vec<bool> = results.iter().map(|r| r["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, [true, false, true, false, false]);
    let ids: Vec<&Value> = results.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        [
            &jobs[0]["id"],
            &jobs[1]["id"],
            &jobs[2]["id"],
            &json!(987_654),
            &jobs[0]["id"]
        ]
    );
    assert!(results[0].get("error").is_none());
    assert_eq!(results[1]["error"]["code"], "lease_mismatch");
    assert_eq!(results[3]["error"]["code"], "not_found");
    assert_eq!(results[4]["error"]["code"], "lease_mismatch");

    let (_, first) = api.get(&format!("/v1/jobs/{}", jobs[0]["id"])).await;
    assert_eq!(first["state"], "completed");
    assert_eq!(first["result"], json!({"kind": "a"}));
    let (_, second) = api.get(&format!("/v1/jobs/{}", jobs[1]["id"])).await;
    assert_eq!(
        second["state"], "running",
        "a foreign lease changes nothing"
    );
    let (_, third) = api.get(&format!("/v1/jobs/{}", jobs[2]["id"])).await;
    assert_eq!(third["state"], "completed");
    assert_eq!(third["result"], Value::Null);

    let (_, metrics) = api.text(Method::GET, "/metrics", "").await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("grafter_jobs_batch_acked_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn batch_ack_validates_its_request() {
    let api = api().await;
    assert_error(
        &api.post("/v1/jobs/ack", json!({"acks": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    let too_many: Vec<Value> = (0..1001).map(|i| json!({"id": i, "lease": "x"})).collect();
    assert_error(
        &api.post("/v1/jobs/ack", json!({"acks": too_many})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    let missing = api.post("/v1/jobs/ack", json!({"acks": [{"id": 1}]})).await;
    assert_error(&missing, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(missing.1["error"]["field"], "acks[0].lease");
    let unknown = api
        .post(
            "/v1/jobs/ack",
            json!({"acks": [{"id": 1, "lease": "x", "reslt": 1}]}),
        )
        .await;
    assert_error(&unknown, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_error(
        &api.text(Method::POST, "/v1/jobs/ack", "{\"acks\": [").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
}

#[tokio::test]
async fn stale_or_foreign_leases_answer_409_and_change_nothing() {
    let api = api().await;
    let a = api.enqueue(json!({"kind": "a"})).await;
    api.enqueue(json!({"kind": "b"})).await;
    let leased_a = api.fetch_one("default").await;
    let leased_b = api.fetch_one("default").await;
    let foreign = leased_b["lease"].clone();
    for action in ["ack", "fail", "heartbeat"] {
        let body = json!({"lease": foreign, "error": "x"});
        let body = if action == "fail" {
            body
        } else {
            json!({"lease": foreign})
        };
        let response = api
            .post(&format!("/v1/jobs/{}/{action}", a["id"]), body)
            .await;
        assert_error(&response, StatusCode::CONFLICT, "lease_mismatch");
    }
    let (_, now) = api.get(&format!("/v1/jobs/{}", a["id"])).await;
    let mut expected = leased_a.clone();
    expected.as_object_mut().unwrap().remove("lease");
    assert_eq!(now, expected);
    assert_error(
        &api.post(&format!("/v1/jobs/{}/ack", a["id"]), json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
}

#[tokio::test]
async fn fail_retries_then_dies() {
    let api = api().await;
    let job = api
        .enqueue(json!({"kind": "flaky", "max_attempts": 2}))
        .await;
    let leased = api.fetch_one("default").await;
    let uri = format!("/v1/jobs/{}/fail", job["id"]);
    let (status, failed) = api
        .post(&uri, json!({"lease": leased["lease"], "error": "boom"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["state"], "retryable");
    assert_eq!(failed["errors"][0]["error"], "boom");
    assert_eq!(failed["errors"][0]["attempt"], 1);
    assert_eq!(failed["errors"][0]["worker_id"], "w1");

    // Run it now rather than wait for the backoff, then fail the last attempt.
    api.post(&format!("/v1/jobs/{}/retry", job["id"]), json!({}))
        .await;
    let leased = api.fetch_one("default").await;
    assert_eq!(leased["attempt"], 2);
    let (_, dead) = api
        .post(
            &uri,
            json!({"lease": leased["lease"], "error": "boom again"}),
        )
        .await;
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["errors"].as_array().unwrap().len(), 2);

    let other = api.enqueue(json!({"kind": "bad_input"})).await;
    let leased = api.fetch_one("default").await;
    let (_, dead) = api
        .post(
            &format!("/v1/jobs/{}/fail", other["id"]),
            json!({"lease": leased["lease"], "error": "invalid", "retry": false}),
        )
        .await;
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["attempt"], 1);

    let third = api.enqueue(json!({"kind": "rate_limited"})).await;
    let leased = api.fetch_one("default").await;
    let (_, later) = api
        .post(
            &format!("/v1/jobs/{}/fail", third["id"]),
            json!({"lease": leased["lease"], "error": "429", "retry_in_ms": 60000}),
        )
        .await;
    assert_eq!(later["state"], "retryable");
    let run_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(later["run_at"].clone()).unwrap();
    assert!(run_at > chrono::Utc::now() + chrono::Duration::seconds(50));
}

#[tokio::test]
async fn heartbeat_stores_progress_and_carries_cancel_requests() {
    let api = api().await;
    let job = api.enqueue(json!({"kind": "long"})).await;
    let leased = api.fetch_one("default").await;
    let uri = format!("/v1/jobs/{}/heartbeat", job["id"]);
    let (status, beat) = api
        .post(&uri, json!({"lease": leased["lease"], "progress": 0.5}))
        .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert_eq!(beat["progress"]["fraction"], 0.5);
    assert_eq!(beat["cancel_requested"], false);
    let (_, beat) = api
        .post(
            &uri,
            json!({"lease": leased["lease"], "progress": {"fraction": 0.75, "message": "3 of 4"}}),
        )
        .await;
    assert_eq!(beat["progress"]["message"], "3 of 4");
    let (_, seen) = api.get(&format!("/v1/jobs/{}", job["id"])).await;
    assert_eq!(
        seen["progress"]["fraction"], 0.75,
        "progress is visible while running"
    );

    let bad = api
        .post(&uri, json!({"lease": leased["lease"], "progress": 1.5}))
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(bad.1["error"]["field"], "progress.fraction");
    for lease_ms in [5, i64::MAX] {
        let bad = api
            .post(
                &uri,
                json!({"lease": leased["lease"], "lease_ms": lease_ms}),
            )
            .await;
        assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        let message = bad.1["error"]["message"].as_str().unwrap();
        assert!(message.contains("between 1000 and 86400000"), "{message}");
    }

    let (status, cancelled) = api
        .post(&format!("/v1/jobs/{}/cancel", job["id"]), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["state"], "running");
    assert_eq!(cancelled["cancel_requested"], true);
    let (_, beat) = api.post(&uri, json!({"lease": leased["lease"]})).await;
    assert_eq!(beat["cancel_requested"], true);
    let (_, stopped) = api
        .post(
            &format!("/v1/jobs/{}/fail", job["id"]),
            json!({"lease": leased["lease"], "error": "stopped on request"}),
        )
        .await;
    assert_eq!(stopped["state"], "cancelled");
}

#[tokio::test]
async fn fetch_validates_its_request() {
    let api = api().await;
    for (body, field) in [
        (json!({"max": 0}), "max"),
        (json!({"max": 5000}), "max"),
        (json!({"wait_ms": 40000}), "wait_ms"),
        (json!({"queues": []}), "queues"),
        (json!({"queues": [""]}), "queues"),
        (json!({"lease_ms": 10}), "lease_ms"),
        (json!({"max": "two"}), "max"),
    ] {
        let response = api.post("/v1/fetch", body.clone()).await;
        assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(response.1["error"]["field"], field, "{body}");
    }
    let (status, empty) = api.post("/v1/fetch", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["jobs"], json!([]));
}

#[tokio::test]
async fn fetch_hands_out_by_priority_and_batches() {
    let api = api().await;
    for (kind, priority) in [("low", 10), ("high", -5), ("mid", 0), ("mid2", 0)] {
        api.enqueue(json!({"kind": kind, "priority": priority}))
            .await;
    }
    let (_, body) = api.post("/v1/fetch", json!({"max": 3})).await;
    let kinds: Vec<_> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["high", "mid", "mid2"]);
    let leases: std::collections::HashSet<_> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["lease"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(leases.len(), 3, "every job has its own lease");
}

#[tokio::test]
async fn a_waiting_fetch_wakes_when_a_job_is_enqueued() {
    let api = Arc::new(api().await);
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let response = api
                .post("/v1/fetch", json!({"queues": ["mail"], "wait_ms": 20000}))
                .await;
            (response, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = api.enqueue(json!({"kind": "send", "queue": "mail"})).await;
    let ((status, body), waited) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["jobs"][0]["id"], job["id"]);
    assert!(
        waited < Duration::from_secs(20),
        "woken by the enqueue, not by its own timeout"
    );

    // With nothing to take, the wait ends empty at wait_ms.
    let (status, body) = api
        .post("/v1/fetch", json!({"queues": ["mail"], "wait_ms": 100}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["jobs"], json!([]));
}

#[tokio::test]
async fn list_filters_by_tag_and_args_with_a_bounded_scan() {
    let api = api().await;
    let ids = |page: &Value| -> Vec<i64> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    // The one job with user.id 1 is the oldest; 10,500 newer ones lie
    // between it and the first page.
    let (_, first) = api
        .post(
            "/v1/jobs",
            json!({"kind": "k", "args": {"user": {"id": 1}}, "tags": ["vip"]}),
        )
        .await;
    let first = first["id"].as_i64().unwrap();
    for batch in 0..11 {
        let jobs: Vec<Value> = (0..1000)
            .filter(|i| batch * 1000 + i < 10_500)
            .map(|i| json!({"kind": "k", "args": {"user": {"id": 2 + i}}}))
            .collect();
        let (status, body) = api.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    let (status, tagged) = api.get("/v1/jobs?tag=vip").await;
    assert_eq!(status, StatusCode::OK, "{tagged}");
    assert_eq!(ids(&tagged), [first]);
    assert_eq!(tagged["next_cursor"], Value::Null);

    // Args are checked job by job: the first page looks at 10,000 jobs, finds
    // none, and says where to go on; the next one finds the match.
    let (status, page) = api.get("/v1/jobs?args=user.id%3D1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), Vec::<i64>::new());
    let cursor = page["next_cursor"].as_str().expect("a cursor to go on");
    let (_, page) = api
        .get(&format!("/v1/jobs?args=user.id%3D1&cursor={cursor}"))
        .await;
    assert_eq!(ids(&page), [first]);
    assert_eq!(page["next_cursor"], Value::Null);

    let (_, both) = api.get("/v1/jobs?args=user.id%3D1&tag=vip").await;
    assert_eq!(ids(&both), [first]);
    let (_, text) = api.get("/v1/jobs?args=user.id%3D%221%22&tag=vip").await;
    assert_eq!(
        ids(&text),
        Vec::<i64>::new(),
        "\"1\" is text, not the number"
    );

    let (status, body) = api.get("/v1/jobs?args=user.id").await;
    assert_error(
        &(status, body.clone()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(body["error"]["field"], "args", "{body}");
}

#[tokio::test]
async fn list_filters_and_pages() {
    let api = api().await;
    for i in 0..7 {
        api.enqueue(json!({"kind": if i % 2 == 0 { "even" } else { "odd" }, "queue": "q"}))
            .await;
    }
    let mut ids = Vec::new();
    let mut uri = "/v1/jobs?limit=3".to_owned();
    loop {
        let (status, page) = api.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        ids.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/jobs?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 7);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let (_, asc) = api.get("/v1/jobs?order=asc&limit=2").await;
    assert!(asc["jobs"][0]["id"].as_i64() < asc["jobs"][1]["id"].as_i64());
    let (_, odd) = api.get("/v1/jobs?kind=odd&queue=q&state=available").await;
    assert_eq!(odd["jobs"].as_array().unwrap().len(), 3);
    let (_, none) = api.get("/v1/jobs?state=dead").await;
    assert_eq!(none["jobs"], json!([]));

    assert_error(
        &api.get("/v1/jobs?state=done").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_error(
        &api.get("/v1/jobs?limit=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_error(
        &api.get("/v1/jobs?limit=lots").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_error(
        &api.get("/v1/jobs?cursor=zzz").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_error(
        &api.get("/v1/jobs?order=up").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_error(
        &api.get("/v1/jobs?colour=red").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
}

#[tokio::test]
async fn retry_cancel_reschedule_delete() {
    let api = api().await;
    let job = api.enqueue(json!({"kind": "k"})).await;
    let id = job["id"].clone();
    let (status, later) = api
        .post(
            &format!("/v1/jobs/{id}/reschedule"),
            json!({"delay_ms": 60000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{later}");
    assert_eq!(later["state"], "scheduled");
    let (_, at) = api
        .post(
            &format!("/v1/jobs/{id}/reschedule"),
            json!({"run_at": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(at["state"], "available");
    assert_error(
        &api.post(&format!("/v1/jobs/{id}/reschedule"), json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    let (_, cancelled) = api.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_error(
        &api.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await,
        StatusCode::CONFLICT,
        "invalid_state",
    );
    let (_, retried) = api.post(&format!("/v1/jobs/{id}/retry"), json!({})).await;
    assert_eq!(retried["state"], "available");
    // Retry and cancel need no body at all.
    let (status, _) = api
        .call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let leased_job = api.enqueue(json!({"kind": "busy"})).await;
    let leased = api.fetch_one("default").await;
    assert_eq!(leased["id"], leased_job["id"]);
    assert_error(
        &api.post(&format!("/v1/jobs/{}/retry", leased_job["id"]), json!({}))
            .await,
        StatusCode::CONFLICT,
        "invalid_state",
    );

    let (status, _) = api
        .call(Method::DELETE, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        &api.get(&format!("/v1/jobs/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn queues_count_and_pause() {
    let api = api().await;
    api.enqueue(json!({"kind": "k", "queue": "mail"})).await;
    api.enqueue(json!({"kind": "k", "queue": "mail"})).await;
    api.enqueue(json!({"kind": "k"})).await;
    let (status, paused) = api.post("/v1/queues/mail/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    let (_, fetched) = api.post("/v1/fetch", json!({"queues": ["mail"]})).await;
    assert_eq!(fetched["jobs"], json!([]), "paused queues are skipped");
    let (_, queues) = api.get("/v1/queues").await;
    let mail = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "mail")
        .unwrap()
        .clone();
    assert_eq!(mail["paused"], true);
    assert_eq!(mail["counts"]["available"], 2);
    assert_eq!(mail["counts"]["dead"], 0);
    let (_, resumed) = api.post("/v1/queues/mail/resume", json!({})).await;
    assert_eq!(resumed["paused"], false);
    api.fetch_one("mail").await;
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let api = api().await;
    assert_eq!(
        api.get("/livez").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        api.get("/readyz").await,
        (StatusCode::OK, json!({"status": "ready"}))
    );

    api.enqueue(json!({"kind": "k", "queue": "mail"})).await;
    let response = api
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("grafter_jobs_enqueued_total{queue=\"mail\",kind=\"k\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("grafter_jobs{queue=\"mail\",state=\"available\"} 1"),
        "{text}"
    );

    let (status, spec) = api.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/jobs",
        "/v1/jobs/batch",
        "/v1/fetch",
        "/v1/jobs/{id}/ack",
        "/v1/jobs/ack",
        "/v1/queues",
        "/readyz",
    ] {
        assert!(spec["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(spec["components"]["schemas"].get("Job").is_some());
    // The list's `state` filter takes every state, as the route does.
    let state = spec["paths"]["/v1/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "state")
        .expect("a state parameter");
    let pattern = state["schema"]["pattern"].as_str().unwrap();
    for s in grafter_core::JobState::ALL {
        assert!(pattern.contains(&format!("|{s}")), "{pattern} lacks {s}");
    }
}

#[tokio::test]
async fn metrics_honour_the_q_values_of_accept() {
    let api = api().await;
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    for (accept, format) in [
        (None, OPENMETRICS),
        (Some("*/*"), OPENMETRICS),
        (Some("text/plain"), TEXT),
        (
            Some("text/plain, application/openmetrics-text"),
            OPENMETRICS,
        ),
        // q=0 is "not acceptable".
        (Some("application/openmetrics-text;q=0, text/plain"), TEXT),
        (Some("application/openmetrics-text;q=0"), TEXT),
        (Some("text/plain;q=0, */*"), OPENMETRICS),
        // The higher q-value wins.
        (
            Some("application/openmetrics-text;q=0.3, text/plain;q=0.8"),
            TEXT,
        ),
        (
            Some("application/openmetrics-text;q=0.8, text/plain;q=0.3"),
            OPENMETRICS,
        ),
    ] {
        let mut request = Request::get("/metrics");
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = api
            .app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            format,
            "{accept:?}"
        );
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert_eq!(
            text.ends_with("# EOF\n"),
            format == OPENMETRICS,
            "{accept:?}"
        );
    }
}

#[tokio::test]
async fn a_lone_surrogate_escape_is_named_in_the_error() {
    let api = api().await;
    let response = api
        .text(Method::POST, "/v1/jobs", r#"{"kind":"\ud800"}"#)
        .await;
    assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(response.1["error"]["field"], "kind");
    let message = response.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(r"invalid \u escape: \ud800 is a lone UTF-16 surrogate"),
        "{message}"
    );
    // A pair is one character.
    let job = api.enqueue(json!({"kind": "\u{1f600}"})).await;
    assert_eq!(job["kind"], "\u{1f600}");
}

#[tokio::test]
async fn job_gauges_of_a_queue_whose_jobs_are_all_gone_disappear() {
    let api = api().await;
    let gone = api.enqueue(json!({"kind": "k", "queue": "gone"})).await;
    api.enqueue(json!({"kind": "k", "queue": "kept"})).await;
    let gauges_of = |scrape: &str, queue: &str| -> Vec<String> {
        let prefix = format!("grafter_jobs{{queue=\"{queue}\"");
        scrape
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    };
    let before = api.text(Method::GET, "/metrics", "").await.1;
    let before = before.as_str().unwrap();
    assert!(
        gauges_of(before, "gone")
            .contains(&"grafter_jobs{queue=\"gone\",state=\"available\"} 1".to_owned()),
        "{before}"
    );

    let deleted = api
        .call(Method::DELETE, &format!("/v1/jobs/{}", gone["id"]), None)
        .await;
    assert_eq!(deleted.0, StatusCode::NO_CONTENT);
    let after = api.text(Method::GET, "/metrics", "").await.1;
    let after = after.as_str().unwrap();
    assert_eq!(gauges_of(after, "gone"), Vec::<String>::new(), "{after}");
    assert!(!gauges_of(after, "kept").is_empty(), "{after}");
    // The counter says what this server did, and stays.
    assert!(
        after.contains("grafter_jobs_enqueued_total{queue=\"gone\",kind=\"k\"} 1"),
        "{after}"
    );
}

#[tokio::test]
async fn metrics_count_finished_attempts_by_kind_and_outcome_and_time_them() {
    let api = api().await;
    for kind in ["ok", "ok", "bad", "batched"] {
        api.enqueue(json!({"kind": kind, "queue": "m", "max_attempts": 1}))
            .await;
    }
    api.enqueue(json!({"kind": "later", "queue": "waiting"}))
        .await;
    let (_, fetched) = api
        .post("/v1/fetch", json!({"queues": ["m"], "max": 4}))
        .await;
    for job in fetched["jobs"].as_array().unwrap() {
        let (id, lease) = (&job["id"], &job["lease"]);
        let (status, _) = match job["kind"].as_str().unwrap() {
            "ok" => {
                api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease": lease}))
                    .await
            }
            "bad" => {
                let fail = json!({"lease": lease, "error": "no"});
                api.post(&format!("/v1/jobs/{id}/fail"), fail).await
            }
            _ => {
                let acks = json!({"acks": [{"id": id, "lease": lease}]});
                api.post("/v1/jobs/ack", acks).await
            }
        };
        assert_eq!(status, StatusCode::OK);
    }
    let scrape = api.text(Method::GET, "/metrics", "").await.1;
    let scrape = scrape.as_str().unwrap();
    for line in [
        "grafter_jobs_finished_total{queue=\"m\",kind=\"ok\",outcome=\"completed\"} 2",
        "grafter_jobs_finished_total{queue=\"m\",kind=\"bad\",outcome=\"dead\"} 1",
        "grafter_jobs_finished_total{queue=\"m\",kind=\"batched\",outcome=\"completed\"} 1",
        "grafter_job_queue_wait_seconds_count{queue=\"m\"} 4",
        "grafter_job_run_time_seconds_count{queue=\"m\"} 4",
        "# UNIT grafter_job_run_time_seconds seconds",
    ] {
        assert!(
            scrape.lines().any(|l| l == line),
            "no {line:?} in:\n{scrape}"
        );
    }
    let oldest = scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix("grafter_queue_oldest_available_age_seconds{queue=\"waiting\"} ")
        })
        .unwrap_or_else(|| panic!("no oldest available age of 'waiting':\n{scrape}"));
    assert!(oldest.parse::<f64>().unwrap() >= 0.0);
    assert!(
        !scrape.contains("grafter_queue_oldest_available_age_seconds{queue=\"m\"}"),
        "a queue with no available job has no age"
    );
    assert!(!scrape.contains("id=\""), "no job id is a label");
}

/// Asks `/readyz` of a server that is shutting down, and answers the status.
async fn readyz_while_shutting_down() -> StatusCode {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("g.db")).await.unwrap();
    let shutdown = CancellationToken::new();
    let app = router(AppState::new(
        Arc::new(store),
        ServerConfig::default(),
        shutdown.clone(),
    ));
    shutdown.cancel();
    app.oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn readyz_is_not_ready_while_shutting_down() {
    assert_eq!(
        readyz_while_shutting_down().await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// What a test's own thread logs, as text.
#[derive(Clone, Default)]
struct Logged(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unavailable_answer_is_logged_as_a_warning_and_not_an_error() {
    let logged = Logged::default();
    let writer = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    assert_eq!(
        readyz_while_shutting_down().await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let text = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("response failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(
        failed[0].contains("WARN") && failed[0].contains("503"),
        "{text}"
    );
}

const TOKEN: &str = "s3cret-0123456789";

/// A GET of `uri`, with the server's token when `with_token`.
fn get_request(uri: &str, with_token: bool) -> Request<Body> {
    let request = Request::get(uri);
    let request = if with_token {
        request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
    } else {
        request
    };
    request.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn a_token_guards_the_api_metrics_and_openapi_but_not_health() {
    let api = api_with(ServerConfig {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    let wrong = Request::get("/v1/queues")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_error(
        &api.raw(wrong).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    for uri in ["/v1/queues", "/metrics", "/openapi.json"] {
        assert_error(
            &api.raw(get_request(uri, false)).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_eq!(
            api.raw(get_request(uri, true)).await.0,
            StatusCode::OK,
            "{uri}"
        );
    }
    for uri in ["/livez", "/readyz"] {
        assert_eq!(
            api.raw(get_request(uri, false)).await.0,
            StatusCode::OK,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn metrics_and_openapi_can_be_made_public_beside_a_token() {
    let api = api_with(ServerConfig {
        token: Some(TOKEN.into()),
        metrics_public: true,
        openapi_public: true,
        ..Default::default()
    })
    .await;
    for uri in ["/metrics", "/openapi.json"] {
        assert_eq!(
            api.raw(get_request(uri, false)).await.0,
            StatusCode::OK,
            "{uri}"
        );
    }
    assert_eq!(
        api.raw(get_request("/v1/queues", false)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let only_metrics = api_with(ServerConfig {
        token: Some(TOKEN.into()),
        metrics_public: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        only_metrics.raw(get_request("/metrics", false)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        only_metrics
            .raw(get_request("/openapi.json", false))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn release_hands_a_job_back_uncounted() {
    let api = api().await;
    let job = api.enqueue(json!({"kind": "k"})).await;
    let leased = api.fetch_one("default").await;
    let uri = format!("/v1/jobs/{}/release", job["id"]);
    let (status, back) = api.post(&uri, json!({"lease": leased["lease"]})).await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["state"], "available");
    assert_eq!(back["attempt"], 0);
    assert_error(
        &api.post(&uri, json!({"lease": leased["lease"]})).await,
        StatusCode::CONFLICT,
        "lease_mismatch",
    );
    let leased = api.fetch_one("default").await;
    let (_, snoozed) = api
        .post(&uri, json!({"lease": leased["lease"], "delay_ms": 60000}))
        .await;
    assert_eq!(snoozed["state"], "scheduled");
}

/// A fetch names at most 1,000 queues, checked before the store: SQLite binds
/// each queue as a parameter, and past its 32,766 a fetch answered 500 there.
async fn fetch_names_at_most_1000_queues(api: Api) {
    let queues = |n: usize| (0..n).map(|i| format!("q{i}")).collect::<Vec<_>>();
    api.enqueue(json!({"kind": "k", "queue": "q999"})).await;
    let (status, body) = api
        .post("/v1/fetch", json!({"queues": queues(1000), "max": 5}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"][0]["queue"], "q999", "{body}");
    for n in [1001, 40_000] {
        let refused = api.post("/v1/fetch", json!({"queues": queues(n)})).await;
        assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(refused.1["error"]["field"], "queues", "{}", refused.1);
    }
}

/// A hundred jobs of 1 MB args: a list page of them answers a few hundred KB
/// (the args cut to their start), and a fetch of up to 1,000 leases only as
/// many as fit in the byte budget, instead of answering 100 MB and more.
async fn large_jobs_are_listed_cut_and_fetched_within_the_byte_budget(api: Api) {
    let args = json!({"blob": "x".repeat(1_000_000)});
    let size = args.to_string().len();
    for _ in 0..100 {
        api.enqueue(json!({"kind": "big", "args": args})).await;
    }
    let (status, page, bytes) = api
        .call_sized(Method::GET, "/v1/jobs?limit=100", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 100);
    assert!(
        bytes < 256 * 1024,
        "a list page of 100 answered {bytes} bytes"
    );
    let first = &page["jobs"][0];
    assert_eq!(first["cut"], json!(["args"]), "{}", first["cut"]);
    let (_, whole) = api.get(&format!("/v1/jobs/{}", first["id"])).await;
    assert_eq!(whole["args"], args);
    assert!(whole.get("cut").is_none(), "a job alone is whole");

    let budget = grafter_engine::DEFAULT_FETCH_MAX_BYTES;
    let (status, fetched, bytes) = api
        .call_sized(Method::POST, "/v1/fetch", Some(json!({"max": 1000})))
        .await;
    assert_eq!(status, StatusCode::OK, "{}", fetched["error"]);
    let leased = fetched["jobs"].as_array().unwrap();
    assert_eq!(
        leased.len(),
        budget / size,
        "as many as fit in {budget} bytes"
    );
    assert_eq!(leased[0]["args"], args, "a fetch carries whole args");
    assert!(
        bytes <= budget + 64 * 1024,
        "a fetch answered {bytes} bytes"
    );
}

/// `GET /v1/info` describes the store and its queues; `POST /v1/cleanup`
/// counts (dry run) then deletes old finished jobs per state, never
/// unfinished ones.
async fn info_describes_the_store_and_cleanup_deletes_old_finished_jobs(api: Api) {
    for _ in 0..3 {
        api.enqueue(json!({"kind": "k", "queue": "ops", "max_attempts": 1}))
            .await;
    }
    let (_, fetched) = api
        .post("/v1/fetch", json!({"queues": ["ops"], "max": 2}))
        .await;
    let jobs = fetched["jobs"].as_array().unwrap().clone();
    let (id0, id1) = (&jobs[0]["id"], &jobs[1]["id"]);
    let acked = api
        .post(
            &format!("/v1/jobs/{id0}/ack"),
            json!({"lease": jobs[0]["lease"]}),
        )
        .await;
    assert_eq!(acked.0, StatusCode::OK);
    let failed = api
        .post(
            &format!("/v1/jobs/{id1}/fail"),
            json!({"lease": jobs[1]["lease"], "error": "no"}),
        )
        .await;
    assert_eq!(failed.1["state"], "dead");

    let (status, info) = api.get("/v1/info").await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert!(["sqlite", "postgres"].contains(&info["store"].as_str().unwrap()));
    assert!(info["schema_version"].as_i64().unwrap() >= 1, "{info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let queue = info["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "ops")
        .unwrap_or_else(|| panic!("no queue ops in {info}"));
    assert_eq!(
        (
            &queue["counts"]["completed"],
            &queue["counts"]["dead"],
            &queue["counts"]["available"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{queue}"
    );
    assert!(
        queue["oldest_available_age_ms"].as_i64().unwrap() >= 0,
        "{queue}"
    );
    assert!(info["workers"].is_array() && info["leaders"].is_array());

    let cleanup = |body: Value| api.post("/v1/cleanup", body);
    let (status, dry) = cleanup(json!({"older_than_ms": 0, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(
        (&dry["dry_run"], &dry["total"], &dry["jobs"]),
        (
            &json!(true),
            &json!(2),
            &json!({"completed": 1, "dead": 1, "cancelled": 0, "expired": 0})
        ),
        "{dry}"
    );
    assert_eq!(
        api.get(&format!("/v1/jobs/{id0}")).await.0,
        StatusCode::OK,
        "a dry run deletes nothing"
    );
    let (_, young) = cleanup(json!({"older_than_ms": 3_600_000})).await;
    assert_eq!(young["total"], 0, "nothing finished an hour ago: {young}");
    let (_, done) = cleanup(json!({"older_than_ms": 0, "states": ["completed"]})).await;
    assert_eq!(
        (&done["total"], &done["jobs"]),
        (&json!(1), &json!({"completed": 1})),
        "{done}"
    );
    assert_eq!(
        api.get(&format!("/v1/jobs/{id0}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/v1/jobs/{id1}")).await.0,
        StatusCode::OK,
        "dead was not named"
    );

    let refused = cleanup(json!({"older_than_ms": 0, "states": ["available"]})).await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(refused.1["error"]["field"], "states");
    let (status, _) = cleanup(json!({"older_than_ms": -1})).await;
    assert!(status.is_client_error(), "{status}");
    let (status, _) = cleanup(json!({"states": ["completed"]})).await;
    assert!(
        status.is_client_error(),
        "older_than_ms is required: {status}"
    );
}

/// Each case as two tests, `<case>::sqlite` and `<case>::postgres`: where the
/// stores could answer differently. On PostgreSQL multi-threaded, as its
/// fixture needs (see [`postgres_api`]).
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn sqlite() {
                    super::$case(super::api().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(api) = super::postgres_api().await {
                        super::$case(api).await;
                    }
                }
            }
        )*
    };
}

on_both_stores!(
    fetch_names_at_most_1000_queues,
    info_describes_the_store_and_cleanup_deletes_old_finished_jobs,
    large_jobs_are_listed_cut_and_fetched_within_the_byte_budget,
);

#[tokio::test]
async fn workers_register_and_list() {
    let api = api().await;
    let worker = json!({"id": "w1", "host": "box", "pid": 7, "queues": ["default"], "concurrency": 4, "kinds": ["k"]});
    let (status, _) = api
        .call(Method::PUT, "/v1/workers/w1", Some(worker.clone()))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    api.enqueue(json!({"kind": "k"})).await;
    api.post("/v1/fetch", json!({"worker_id": "w1"})).await;
    let (_, listed) = api.get("/v1/workers").await;
    assert_eq!(listed["workers"][0]["id"], "w1");
    assert_eq!(listed["workers"][0]["host"], "box");
    assert_eq!(listed["workers"][0]["running"], 1);
    assert!(listed["workers"][0]["last_seen_at"].is_string());
    let mismatch = api
        .call(Method::PUT, "/v1/workers/other", Some(worker.clone()))
        .await;
    assert_error(&mismatch, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let (status, _) = api.call(Method::DELETE, "/v1/workers/w1", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, listed) = api.get("/v1/workers").await;
    assert_eq!(listed["workers"], json!([]));

    // The queue and kind lists are bounded: they are kept and listed.
    let names: Vec<String> = (0..1001).map(|i| format!("n{i}")).collect();
    for field in ["queues", "kinds"] {
        let mut long = worker.clone();
        long[field] = json!(names);
        let refused = api
            .call(Method::PUT, "/v1/workers/w1", Some(long.clone()))
            .await;
        assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(refused.1["error"]["field"], field, "{}", refused.1);
        long[field] = json!(names[..1000]);
        let (status, body) = api
            .call(Method::PUT, "/v1/workers/w1", Some(long.clone()))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
}

/// Schedules over HTTP: 201 then 200 with `next_run_at` and the next fire
/// times, list, show, pause, resume, trigger (a job carrying `schedule`),
/// preview, delete; bad input names its field; on SQLite and PostgreSQL.
async fn schedules_round_trip(api: Api) {
    let body = json!({
        "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin",
        "job": {"kind": "report", "args": {"full": true}, "queue": "reports"},
        "catch_up": "latest", "overlap": "skip"
    });
    let (status, created) = api
        .call(
            Method::PUT,
            "/v1/schedules/weekday-report",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "weekday-report");
    assert_eq!(created["source"], "api");
    assert_eq!(created["paused"], false);
    assert!(created["next_run_at"].is_string(), "{created}");
    assert_eq!(created["upcoming"].as_array().unwrap().len(), 5);
    assert_eq!(created["next_run_at"], created["upcoming"][0]);
    let (status, same) = api
        .call(Method::PUT, "/v1/schedules/weekday-report", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        same["version"], created["version"],
        "unchanged: not written"
    );

    let (status, paused) = api
        .post("/v1/schedules/weekday-report/pause", json!({}))
        .await;
    assert_eq!((status, &paused["paused"]), (StatusCode::OK, &json!(true)));
    let (status, job) = api
        .post("/v1/schedules/weekday-report/trigger", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["kind"], "report");
    assert_eq!(job["queue"], "reports");
    assert_eq!(
        job["schedule"],
        json!({"id": "weekday-report", "slot": null})
    );
    let (status, resumed) = api
        .post("/v1/schedules/weekday-report/resume", json!({}))
        .await;
    assert_eq!(
        (status, &resumed["paused"]),
        (StatusCode::OK, &json!(false))
    );
    assert_eq!(resumed["last_job_id"], job["id"]);
    assert_eq!(resumed["last_job_state"], "available");
    // The schedule's jobs, by the job list's `schedule` filter.
    api.post("/v1/jobs", json!({"kind": "report", "queue": "reports"}))
        .await;
    let (status, page) = api.get("/v1/jobs?schedule=weekday-report").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<&Value> = page["jobs"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "only the schedule's job: {page}");
    assert_eq!(listed[0]["id"], job["id"]);
    let (status, page) = api.get("/v1/jobs?schedule=another").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["jobs"], json!([]));

    let (status, preview) = api
        .get("/v1/schedules/weekday-report/preview?count=12")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(preview["slots"].as_array().unwrap().len(), 12);
    let (status, list) = api.get("/v1/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["schedules"][0]["id"], "weekday-report");
    assert_eq!(list["next"], Value::Null);

    for (body, field) in [
        (json!({"cron": "0 0 31 2 *", "job": {"kind": "k"}}), "cron"),
        (json!({"cron": "nope", "job": {"kind": "k"}}), "cron"),
        (
            json!({"cron": "@daily", "timezone": "Mars/Base", "job": {"kind": "k"}}),
            "timezone",
        ),
        (
            json!({"cron": "@daily", "catch_up": "sometimes", "job": {"kind": "k"}}),
            "catch_up",
        ),
        (
            json!({"cron": "@daily", "overlap": "queue", "job": {"kind": "k"}}),
            "overlap",
        ),
        (json!({"every_ms": 10, "job": {"kind": "k"}}), "every_ms"),
        (json!({"every_ms": 1000, "job": {"kind": ""}}), "job.kind"),
        (
            json!({"every_ms": 1000, "catch_up_max": 0, "job": {"kind": "k"}}),
            "catch_up_max",
        ),
        (json!({"cron": "@daily"}), "job"),
    ] {
        let (status, error) = api
            .call(Method::PUT, "/v1/schedules/bad", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error"]["code"], "invalid_field");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let (status, _) = api.get("/v1/schedules/bad").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An id no schedule can have (PostgreSQL cannot even compare a NUL) is
    // refused on every route, as a queue name is.
    for (method, path) in [
        (Method::GET, "/v1/schedules/a%00b"),
        (Method::DELETE, "/v1/schedules/a%00b"),
        (Method::POST, "/v1/schedules/a%00b/pause"),
        (Method::POST, "/v1/schedules/a%00b/resume"),
        (Method::POST, "/v1/schedules/a%00b/trigger"),
        (Method::GET, "/v1/schedules/a%00b/preview"),
        (Method::GET, "/v1/schedules?after=%00"),
    ] {
        let answer = api.call(method.clone(), path, None).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        let field = if path.contains("after") {
            "after"
        } else {
            "id"
        };
        assert_eq!(answer.1["error"]["field"], field, "{method} {path}");
    }
    let (status, _) = api
        .get("/v1/schedules/weekday-report/preview?count=0")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, _) = api
        .call(Method::DELETE, "/v1/schedules/weekday-report", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) = api
        .post("/v1/schedules/weekday-report/trigger", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    let (_, job) = api.get(&format!("/v1/jobs/{}", job["id"])).await;
    assert_eq!(job["schedule"]["id"], "weekday-report", "its jobs stay");
}

#[tokio::test]
async fn schedules_over_http_on_sqlite() {
    schedules_round_trip(api().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_over_http_on_postgres() {
    let Some(api) = postgres_api().await else {
        return;
    };
    schedules_round_trip(api).await;
}

/// `PUT /v1/queues/{name}` changes only the keys it is given and `null`
/// removes one; bad limits answer 422 naming the field; an available job
/// held back says why in `GET /v1/jobs/{id}`.
#[tokio::test]
async fn a_push_url_hides_a_bare_query_parameter_and_takes_its_scheme_in_any_case() {
    let api = api().await;
    let secret = "the-push-secret-0123456789";
    let push = json!({"url": "HTTP://app.example.com/jobs?secretkey", "secret": secret});
    let (status, body) = api
        .call(Method::PUT, "/v1/queues/q", Some(json!({ "push": push })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["push"]["url"], "http://app.example.com/jobs?***");
    let (_, listed) = api.get("/v1/queues").await;
    assert_eq!(listed["queues"][0]["push"]["url"], body["push"]["url"]);
    // The audit log shows the change as the API does.
    let (_, audit) = api.get("/v1/audit").await;
    let entry = &audit["entries"][0];
    assert_eq!(entry["action"], "queue.update", "{audit}");
    assert_eq!(entry["details"]["push"], body["push"], "{audit}");
    for shown in [body.to_string(), listed.to_string(), audit.to_string()] {
        assert!(
            !shown.contains("secretkey") && !shown.contains(secret),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_query_value_names_its_parameter() {
    let api = api().await;
    for (uri, field) in [
        ("/v1/jobs?limit=abc", "limit"),
        ("/v1/jobs?limit=-1", "limit"),
        ("/v1/audit?before=abc", "before"),
        ("/v1/jobs/1?wait=soon", "wait"),
        ("/v1/schedules?limit=x", "limit"),
        ("/v1/audit?nope=1", "nope"),
    ] {
        let answer = api.get(uri).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(answer.1["error"]["field"], field, "{uri}: {}", answer.1);
        let message = answer.1["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
    }
}

#[tokio::test]
async fn queue_limits_change_only_given_keys_and_say_what_holds_a_job() {
    let api = api().await;
    let put = |body: Value| {
        let api = &api;
        async move { api.call(Method::PUT, "/v1/queues/q", Some(body)).await }
    };
    for (limits, field) in [
        (json!({"concurrency": 0}), "limits.concurrency"),
        (json!({"concurrency": -2}), "limits.concurrency"),
        (
            json!({"rate": {"count": 5, "period_ms": 0}}),
            "limits.rate.period_ms",
        ),
        (
            json!({"rate": {"count": 0, "period_ms": 10}}),
            "limits.rate.count",
        ),
        (
            json!({"concurrency": 1, "partition_by": "args.a..b"}),
            "limits.partition_by",
        ),
        (
            json!({"concurrency": 1, "partition_by": "tenant"}),
            "limits.partition_by",
        ),
        (json!({}), "limits"),
    ] {
        let answer = put(json!({ "limits": limits })).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(answer.1["error"]["field"], field, "{limits}");
    }
    // No job can be on a queue named `.` or `..`: nor can settings be.
    for uri in [
        "/v1/queues/%2e",
        "/v1/queues/%2E%2e",
        "/v1/queues/%2e%2e/pause",
    ] {
        let (method, body) = match uri.ends_with("/pause") {
            true => (Method::POST, json!({})),
            false => (Method::PUT, json!({"limits": {"concurrency": 1}})),
        };
        let answer = api.call(method, uri, Some(body)).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(answer.1["error"]["field"], "name", "{uri}");
    }
    let push = json!({"url": "https://app.example.com/jobs", "secret": "s".repeat(16)});
    let (status, body) = put(json!({ "push": push })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let limits = json!({"concurrency": 1, "partition_by": "partition"});
    let (_, body) = put(json!({ "limits": limits })).await;
    assert_eq!(body["limits"], limits);
    assert!(body["push"].is_object(), "the push target was left: {body}");
    let (_, body) = put(json!({})).await;
    assert_eq!(
        (body["limits"].clone(), body["push"].is_object()),
        (limits.clone(), true)
    );
    let (_, body) = put(json!({"push": null})).await;
    assert_eq!(
        (body["limits"].clone(), body["push"].clone()),
        (limits, Value::Null)
    );

    let bad = api
        .post("/v1/jobs", json!({"kind": "k", "partition": " acme"}))
        .await;
    assert_eq!(bad.1["error"]["field"], "partition", "{}", bad.1);
    let job = || json!({"kind": "k", "queue": "q", "partition": "acme"});
    let first = api.enqueue(job()).await;
    let second = api.enqueue(job()).await;
    assert_eq!(first["partition"], "acme");
    let running = api.fetch_one("q").await;
    assert_eq!(running["id"], first["id"]);
    let (_, shown) = api.get(&format!("/v1/jobs/{}", first["id"])).await;
    assert!(
        shown.get("held").is_none(),
        "a running job is not held: {shown}"
    );
    let (_, shown) = api.get(&format!("/v1/jobs/{}", second["id"])).await;
    assert_eq!(shown["held"]["reason"], "concurrency", "{shown}");
    let message = shown["held"]["message"].as_str().unwrap();
    assert!(
        message.contains("1 of 1") && message.contains("acme"),
        "{message}"
    );
    let (status, _) = api.post("/v1/queues/q/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = api.get(&format!("/v1/jobs/{}", second["id"])).await;
    assert_eq!(shown["held"]["reason"], "paused", "{shown}");
    let (_, body) = put(json!({"limits": null})).await;
    assert_eq!(body["limits"], Value::Null);
    assert_eq!(body["paused"], true, "the pause was left");
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

/// POST `body` to `uri` with `headers`.
async fn post_with_headers(
    api: &Api,
    uri: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    api.raw(request.body(Body::from(body.to_string())).unwrap())
        .await
}

/// `traceparent` and `tracestate` of a job's JSON, `None` where absent.
fn trace_of(job: &Value) -> (Option<&str>, Option<&str>) {
    (
        job.get("traceparent").map(|v| v.as_str().unwrap()),
        job.get("tracestate").map(|v| v.as_str().unwrap()),
    )
}

#[tokio::test]
async fn trace_context_from_header_or_field_round_trips_to_the_lease() {
    let api = api().await;
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let (status, from_header) = post_with_headers(
        &api,
        "/v1/jobs",
        &[("traceparent", PARENT), ("tracestate", state)],
        json!({"kind": "k", "queue": "header"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{from_header}");
    assert_eq!(trace_of(&from_header), (Some(PARENT), Some(state)));
    let leased = api.fetch_one("header").await;
    assert_eq!(leased["id"], from_header["id"]);
    assert_eq!(trace_of(&leased), (Some(PARENT), Some(state)));
    let (_, shown) = api.get(&format!("/v1/jobs/{}", from_header["id"])).await;
    assert_eq!(trace_of(&shown), (Some(PARENT), Some(state)));

    // The job's fields win over the headers, tracestate included.
    let (status, from_field) = post_with_headers(
        &api,
        "/v1/jobs",
        &[("traceparent", PARENT), ("tracestate", state)],
        json!({"kind": "k", "queue": "field", "traceparent": OTHER_PARENT}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{from_field}");
    assert_eq!(trace_of(&from_field), (Some(OTHER_PARENT), None));
    assert_eq!(
        trace_of(&api.fetch_one("field").await),
        (Some(OTHER_PARENT), None)
    );

    // A later version is read as version 00 goes, and stored as version 00.
    let later = format!("{}-more", PARENT.replacen("00", "cc", 1));
    let (_, job) = post_with_headers(
        &api,
        "/v1/jobs",
        &[("traceparent", &later)],
        json!({"kind": "k"}),
    )
    .await;
    assert_eq!(trace_of(&job), (Some(PARENT), None));

    // Without any, the job's JSON has neither field.
    let plain = api.enqueue(json!({"kind": "k", "queue": "plain"})).await;
    assert_eq!(trace_of(&plain), (None, None), "{plain}");
    assert_eq!(trace_of(&api.fetch_one("plain").await), (None, None));
}

#[tokio::test]
async fn batch_enqueue_gives_the_headers_to_jobs_without_their_own() {
    let api = api().await;
    let (status, body) = post_with_headers(
        &api,
        "/v1/jobs/batch",
        &[("traceparent", PARENT), ("tracestate", "a=1")],
        json!({"jobs": [
            {"kind": "k"},
            {"kind": "k", "traceparent": OTHER_PARENT, "tracestate": "b=2"},
            {"kind": "k", "traceparent": "00-bad"},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(trace_of(&jobs[0]), (Some(PARENT), Some("a=1")));
    assert_eq!(trace_of(&jobs[1]), (Some(OTHER_PARENT), Some("b=2")));
    // A malformed field wins over the header too, and is then dropped.
    assert_eq!(trace_of(&jobs[2]), (None, None));
}

#[tokio::test]
async fn a_malformed_trace_context_is_ignored_never_refused() {
    let api = api().await;
    let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let too_many = too_many.join(",");
    let uppercase = PARENT.to_uppercase();
    let version_ff = PARENT.replacen("00", "ff", 1);
    // Headers, body, and what is kept of the trace context.
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Value,
        (Option<&'a str>, Option<&'a str>),
    );
    let cases: Vec<Case> = vec![
        (
            vec![("traceparent", &uppercase)],
            json!({"kind": "k"}),
            (None, None),
        ),
        (
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            json!({"kind": "k"}),
            (None, None),
        ),
        (
            vec![("traceparent", &version_ff)],
            json!({"kind": "k"}),
            (None, None),
        ),
        (
            vec![("traceparent", PARENT), ("traceparent", OTHER_PARENT)],
            json!({"kind": "k"}),
            (None, None),
        ),
        (
            vec![("tracestate", "a=1")],
            json!({"kind": "k"}),
            (None, None),
        ),
        (
            vec![("traceparent", PARENT), ("tracestate", &too_many)],
            json!({"kind": "k"}),
            (Some(PARENT), None),
        ),
        (
            vec![],
            json!({"kind": "k", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{0}"}),
            (None, None),
        ),
        (
            vec![],
            json!({"kind": "k", "traceparent": PARENT, "tracestate": "Bad=1"}),
            (Some(PARENT), None),
        ),
    ];
    for (headers, body, kept) in cases {
        let (status, job) = post_with_headers(&api, "/v1/jobs", &headers, body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{headers:?} {body}: {job}");
        assert_eq!(trace_of(&job), kept, "{headers:?} {body}");
    }
    // Several tracestate headers are one list, as HTTP combines them.
    let (_, job) = post_with_headers(
        &api,
        "/v1/jobs",
        &[
            ("traceparent", PARENT),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ],
        json!({"kind": "k"}),
    )
    .await;
    assert_eq!(trace_of(&job), (Some(PARENT), Some("a=1,b=2")));
    // A schedule's runs start traces of their own: its job takes none.
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/schedules/traced",
            Some(json!({"every_ms": 60_000, "job": {"kind": "k", "traceparent": PARENT}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "job.traceparent", "{body}");
}

/// A batch's whole life through the API: create with callbacks, its jobs
/// listed by batch and carrying `batch_id`, progress and counts as they run,
/// the callbacks enqueued once when it settles.
async fn a_batch_runs_to_success_and_enqueues_its_callbacks(api: &Api) {
    let (status, created) = api
        .post(
            "/v1/batches",
            json!({
                "jobs": [{"kind": "part", "queue": "parts", "args": {"i": 1}},
                         {"kind": "part", "queue": "parts", "args": {"i": 2}}],
                "on_success": {"kind": "all_done", "queue": "callbacks"},
                "on_complete": {"kind": "finished", "queue": "callbacks"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let batch = &created["batch"];
    let id = batch["id"].as_i64().unwrap();
    assert_eq!(batch["state"], "running");
    assert_eq!(batch["open"], false);
    assert_eq!(batch["counts"]["total"], 2);
    assert_eq!(batch["counts"]["pending"], 2);
    assert_eq!(batch["progress"], 0.0);
    assert_eq!(batch["on_success"]["kind"], "all_done");
    assert_eq!(created["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(created["jobs"][0]["batch_id"], id);
    let (_, listed) = api.get(&format!("/v1/jobs?batch={id}")).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");

    for _ in 0..2 {
        let leased = api.fetch_one("parts").await;
        assert_eq!(leased["batch_id"], id);
        let (status, body) = api
            .post(
                &format!("/v1/jobs/{}/ack", leased["id"]),
                json!({"lease": leased["lease"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, shown) = api.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["state"], "succeeded");
    assert_eq!(shown["counts"]["completed"], 2);
    assert_eq!(shown["progress"], 1.0);
    assert_eq!(
        shown["callbacks_enqueued"],
        json!(["on_success", "on_complete"])
    );
    let (_, callbacks) = api.get("/v1/jobs?queue=callbacks&order=asc").await;
    let kinds: Vec<&str> = callbacks["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["all_done", "finished"]);
    let (_, page) = api.get("/v1/batches").await;
    assert_eq!(page["batches"][0]["id"], id, "{page}");
}

#[tokio::test]
async fn a_batch_runs_to_success_on_sqlite() {
    a_batch_runs_to_success_and_enqueues_its_callbacks(&api().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_to_success_on_postgres() {
    let Some(api) = postgres_api().await else {
        return;
    };
    a_batch_runs_to_success_and_enqueues_its_callbacks(&api).await;
}

#[tokio::test]
async fn open_batches_take_jobs_until_sealed_and_cancel_stops_them() {
    let api = api().await;
    let (status, created) = api
        .post("/v1/batches", json!({"jobs": [], "open": true}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["batch"]["id"].as_i64().unwrap();
    assert_eq!(created["batch"]["state"], "running");
    let (status, added) = api
        .post(
            &format!("/v1/batches/{id}/jobs"),
            json!({"jobs": [{"kind": "a"}, {"kind": "b"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["batch"]["counts"]["total"], 2);
    assert_eq!(added["jobs"][1]["batch_id"], id);
    let running = api.fetch_one("default").await;

    let (status, cancelled) = api
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["open"], false);
    assert_eq!(cancelled["counts"]["cancelled"], 1);
    let (_, job) = api.get(&format!("/v1/jobs/{}", running["id"])).await;
    assert_eq!(job["cancel_requested"], true);
    assert_error(
        &api.post(
            &format!("/v1/batches/{id}/jobs"),
            json!({"jobs": [{"kind": "c"}]}),
        )
        .await,
        StatusCode::CONFLICT,
        "batch_closed",
    );
    // Sealing again is harmless; the running job's end settles it.
    let (status, _) = api.post(&format!("/v1/batches/{id}/seal"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .post(
            &format!("/v1/jobs/{}/fail", running["id"]),
            json!({"lease": running["lease"], "error": "stopped"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = api.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(shown["state"], "cancelled");
    assert!(shown["finished_at"].is_string(), "{shown}");
    assert_error(
        &api.post(&format!("/v1/batches/{id}/cancel"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "batch_closed",
    );
}

#[tokio::test]
async fn bad_batch_requests_get_json_errors() {
    let api = api().await;
    for (body, field) in [
        (json!({"jobs": [{"kind": ""}]}), "jobs[0].kind"),
        (
            json!({"jobs": [{"kind": "a", "unique_key": "k"}]}),
            "jobs[0].unique_key",
        ),
        (
            json!({"on_success": {"kind": "a", "run_at": "2030-01-01T00:00:00Z"}}),
            "on_success.run_at",
        ),
        (
            json!({"on_failure": {"kind": "a", "unique_key": "k"}}),
            "on_failure.unique_key",
        ),
        (
            json!({"on_complete": {"kind": "a", "queue": " q"}}),
            "on_complete.queue",
        ),
    ] {
        let answer = api.post("/v1/batches", body.clone()).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert!(
            answer.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "{body}: {}",
            answer.1
        );
    }
    let unknown = api.post("/v1/batches", json!({"jobz": []})).await;
    assert!(unknown.0.is_client_error(), "{}", unknown.1);
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"kind": "a"})).collect();
    assert_error(
        &api.post("/v1/batches", json!({"jobs": too_many})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_error(
        &api.post("/v1/batches/1/jobs", json!({"jobs": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    for uri in ["/v1/batches/99", "/v1/batches/nope"] {
        assert_error(&api.get(uri).await, StatusCode::NOT_FOUND, "not_found");
    }
    for uri in ["/v1/batches/99/seal", "/v1/batches/99/cancel"] {
        assert_error(
            &api.post(uri, json!({})).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_error(
        &api.post("/v1/batches/99/jobs", json!({"jobs": [{"kind": "a"}]}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.get("/v1/jobs?batch=x").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_error(
        &api.get("/v1/batches?limit=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
}

/// A graph through the API: refs within a request, ids across requests, the
/// dependent pending until its upstream completes, then reading its result;
/// refused graphs answer 422 naming the field and insert nothing.
async fn a_graph_runs_in_order_and_bad_graphs_are_refused(api: &Api) {
    let (status, body) = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [
                {"kind": "extract", "queue": "etl", "ref": "extract"},
                {"kind": "load", "queue": "etl", "depends_on": ["extract"]},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let extract = body["jobs"][0]["id"].as_i64().unwrap();
    let load = body["jobs"][1]["id"].as_i64().unwrap();
    assert_eq!(body["jobs"][0]["state"], "available");
    assert_eq!(body["jobs"][1]["state"], "pending");
    let (status, deps) = api.get(&format!("/v1/jobs/{load}/dependencies")).await;
    assert_eq!(status, StatusCode::OK, "{deps}");
    assert_eq!(deps["jobs"][0]["id"], extract);
    assert_eq!(deps["jobs"][0]["state"], "available");

    let leased = api.fetch_one("etl").await;
    assert_eq!(leased["id"], extract);
    let (status, body) = api
        .post(
            &format!("/v1/jobs/{extract}/ack"),
            json!({"lease": leased["lease"], "result": {"rows": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, shown) = api.get(&format!("/v1/jobs/{load}")).await;
    assert_eq!(shown["state"], "available", "{shown}");
    let (_, deps) = api.get(&format!("/v1/jobs/{load}/dependencies")).await;
    assert_eq!(deps["jobs"][0]["state"], "completed");
    assert_eq!(deps["jobs"][0]["result"], json!({"rows": 2}));
    let (_, none) = api.get(&format!("/v1/jobs/{extract}/dependencies")).await;
    assert_eq!(none["jobs"], json!([]));
    assert_error(
        &api.get("/v1/jobs/999999/dependencies").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // An id already completed: available at once.
    let after = api
        .enqueue(
            json!({"kind": "report", "queue": "etl", "depends_on": [extract],
                        "on_dependency_failure": "run"}),
        )
        .await;
    assert_eq!(after["state"], "available");
    // The jobs that depend on one: its dependents, newest first.
    let (status, dependents) = api.get(&format!("/v1/jobs?depends_on={extract}")).await;
    assert_eq!(status, StatusCode::OK, "{dependents}");
    let ids: Vec<&Value> = dependents["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["id"])
        .collect();
    assert_eq!(ids, [&after["id"], &json!(load)]);
    let (_, pending) = api
        .get(&format!("/v1/jobs?depends_on={extract}&state=pending"))
        .await;
    assert_eq!(pending["jobs"], json!([]));
    let (_, none) = api.get(&format!("/v1/jobs?depends_on={load}")).await;
    assert_eq!(none["jobs"], json!([]));
    assert_error(
        &api.get("/v1/jobs?depends_on=x").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );

    let cycle = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [
                {"kind": "a", "queue": "refused", "ref": "a", "depends_on": ["b"]},
                {"kind": "b", "queue": "refused", "ref": "b", "depends_on": ["a"]},
            ]}),
        )
        .await;
    assert_error(&cycle, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(
        cycle.1["error"]["field"]
            .as_str()
            .unwrap()
            .ends_with("].depends_on"),
        "{}",
        cycle.1
    );
    let unknown_ref = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "a", "queue": "refused"},
                            {"kind": "b", "queue": "refused", "depends_on": ["nope"]}]}),
        )
        .await;
    assert_error(
        &unknown_ref,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(unknown_ref.1["error"]["field"], "jobs[1].depends_on[0]");
    let unknown_id = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "a", "queue": "refused"},
                            {"kind": "b", "queue": "refused", "depends_on": [999999]}]}),
        )
        .await;
    assert_error(
        &unknown_id,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(unknown_id.1["error"]["field"], "jobs[1].depends_on[0]");
    let unknown_one = api
        .post(
            "/v1/jobs",
            json!({"kind": "b", "queue": "refused", "depends_on": [999999]}),
        )
        .await;
    assert_error(
        &unknown_one,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(unknown_one.1["error"]["field"], "depends_on[0]");
    let keyed = api
        .post(
            "/v1/jobs",
            json!({"kind": "k", "queue": "refused", "unique_key": "u", "depends_on": [extract]}),
        )
        .await;
    assert_error(&keyed, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(keyed.1["error"]["field"], "unique_key");
    let policy = api
        .post(
            "/v1/jobs",
            json!({"kind": "k", "queue": "refused", "on_dependency_failure": "maybe"}),
        )
        .await;
    assert_error(&policy, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let (_, refused) = api.get("/v1/jobs?queue=refused").await;
    assert_eq!(refused["jobs"], json!([]), "nothing inserted");

    // A graph in a batch.
    let (status, created) = api
        .post(
            "/v1/batches",
            json!({"jobs": [{"kind": "a", "queue": "batched", "ref": "a"},
                            {"kind": "b", "queue": "batched", "depends_on": ["a", extract]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["jobs"][1]["state"], "pending");
    assert_eq!(created["batch"]["counts"]["pending"], 2);
}

#[tokio::test]
async fn a_graph_runs_in_order_on_sqlite() {
    a_graph_runs_in_order_and_bad_graphs_are_refused(&api().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_runs_in_order_on_postgres() {
    let Some(api) = postgres_api().await else {
        return;
    };
    a_graph_runs_in_order_and_bad_graphs_are_refused(&api).await;
}

/// A job waiting for a batch through the API: pending until the batch
/// succeeds, the batch shown with its dependencies; a batch it cannot wait
/// for answers 422 naming the field, and nothing is inserted.
async fn a_job_waits_for_a_batch_and_bad_batches_are_refused(api: &Api) {
    let (status, created) = api
        .post(
            "/v1/batches",
            json!({"jobs": [{"kind": "page", "queue": "pages"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let batch = created["batch"]["id"].as_i64().unwrap();
    let zip = api
        .enqueue(json!({"kind": "zip", "queue": "zips", "depends_on_batches": [batch]}))
        .await;
    assert_eq!(zip["state"], "pending", "{zip}");
    assert_eq!(
        zip["depends_on_batches"],
        Value::Null,
        "not part of a job's answer"
    );
    let zip = zip["id"].as_i64().unwrap();
    let (status, deps) = api.get(&format!("/v1/jobs/{zip}/dependencies")).await;
    assert_eq!(status, StatusCode::OK, "{deps}");
    assert_eq!(deps["jobs"], json!([]));
    assert_eq!(deps["batches"][0]["id"], batch);
    assert_eq!(deps["batches"][0]["state"], "running");
    let leased = api.fetch_one("pages").await;
    let (status, body) = api
        .post(
            &format!("/v1/jobs/{}/ack", leased["id"]),
            json!({"lease": leased["lease"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, shown) = api.get(&format!("/v1/jobs/{zip}")).await;
    assert_eq!(shown["state"], "available", "{shown}");
    let (_, deps) = api.get(&format!("/v1/jobs/{zip}/dependencies")).await;
    assert_eq!(deps["batches"][0]["state"], "succeeded");

    let refused = |answer: &(StatusCode, Value), field: &str| {
        assert_error(answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(answer.1["error"]["field"], field, "{}", answer.1);
    };
    let unknown = api
        .post(
            "/v1/jobs",
            json!({"kind": "k", "queue": "refused", "depends_on_batches": [999999]}),
        )
        .await;
    refused(&unknown, "depends_on_batches[0]");
    let (_, open) = api
        .post("/v1/batches", json!({"jobs": [], "open": true}))
        .await;
    let open = open["batch"]["id"].as_i64().unwrap();
    let waits_for_open = api
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "a", "queue": "refused"},
                            {"kind": "b", "queue": "refused", "depends_on_batches": [batch, open]}]}),
        )
        .await;
    refused(&waits_for_open, "jobs[1].depends_on_batches[1]");
    let own = api
        .post(
            &format!("/v1/batches/{open}/jobs"),
            json!({"jobs": [{"kind": "b", "queue": "refused", "depends_on_batches": [open]}]}),
        )
        .await;
    refused(&own, "jobs[0].depends_on_batches[0]");
    let callback = api
        .post(
            "/v1/batches",
            json!({"jobs": [], "on_success": {"kind": "cb", "depends_on_batches": [batch]}}),
        )
        .await;
    refused(&callback, "on_success.depends_on_batches");
    let not_an_id = api
        .post(
            "/v1/jobs",
            json!({"kind": "k", "queue": "refused", "depends_on_batches": ["pages"]}),
        )
        .await;
    assert_eq!(
        not_an_id.0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        not_an_id.1
    );
    let (_, refused) = api.get("/v1/jobs?queue=refused").await;
    assert_eq!(refused["jobs"], json!([]), "nothing inserted");
}

#[tokio::test]
async fn a_job_waits_for_a_batch_on_sqlite() {
    a_job_waits_for_a_batch_and_bad_batches_are_refused(&api().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_a_batch_on_postgres() {
    let Some(api) = postgres_api().await else {
        return;
    };
    a_job_waits_for_a_batch_and_bad_batches_are_refused(&api).await;
}

#[tokio::test]
async fn the_openapi_document_follows_the_servers_config() {
    let open = api_with(ServerConfig {
        max_wait_ms: 1_234,
        ..Default::default()
    })
    .await;
    let (status, spec) = open.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    // An open server asks for no credentials and never answers 401 or 429.
    assert!(spec.get("security").is_none(), "{}", spec["security"]);
    assert!(spec["components"].get("securitySchemes").is_none());
    let queues = &spec["paths"]["/v1/queues"]["get"]["responses"];
    assert!(queues.get("401").is_none() && queues.get("429").is_none());
    assert!(queues.get("503").is_some() && queues.get("500").is_some());
    // The extractors' answers, on every operation with a body.
    let enqueue = &spec["paths"]["/v1/jobs"]["post"]["responses"];
    for status in ["400", "408", "413", "415", "422"] {
        assert!(
            enqueue.get(status).is_some(),
            "POST /v1/jobs lacks {status}"
        );
    }
    assert!(queues.get("415").is_none(), "a GET reads no body");
    // The configured long-poll cap, and a kind that cannot be empty.
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["FetchRequest"]["properties"]["wait_ms"]["maximum"],
        1_234
    );
    assert_eq!(schemas["NewJob"]["properties"]["kind"]["minLength"], 1);

    let secured = api_with(ServerConfig {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    let (status, spec) = secured.raw(get_request("/openapi.json", true)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["security"], json!([{"bearer": []}]));
    let queues = &spec["paths"]["/v1/queues"]["get"]["responses"];
    assert!(queues.get("401").is_some() && queues.get("429").is_some());
    // Health stays open; a job's stream also opens with a stream token.
    assert_eq!(spec["paths"]["/livez"]["get"]["security"], json!([{}]));
    assert_eq!(
        spec["paths"]["/v1/jobs/{id}/events"]["get"]["security"],
        json!([{"bearer": []}, {"streamToken": []}])
    );
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_refused() {
    let api = api().await;
    // serde reads a struct from an array of its fields; the API does not.
    for (method, uri, body) in [
        (Method::PUT, "/v1/queues/q", "[null, null]"),
        (Method::POST, "/v1/jobs", r#"["k"]"#),
        (Method::POST, "/v1/fetch", "  [] "),
    ] {
        let response = api.text(method, uri, body).await;
        assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(response.1["error"]["field"], "body", "{uri}");
    }
    let (_, queues) = api.get("/v1/queues").await;
    assert_eq!(queues["queues"], json!([]), "nothing was changed");
}

#[tokio::test]
async fn removing_a_worker_whose_id_is_no_name_is_refused() {
    let api = api().await;
    let response = api.call(Method::DELETE, "/v1/workers/%20w", None).await;
    assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(
        api.call(Method::DELETE, "/v1/workers/w", None).await.0,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_cleanup_older_than_a_century_is_refused() {
    let api = api().await;
    let response = api
        .post(
            "/v1/cleanup",
            json!({"older_than_ms": 9_223_372_036_854_775_808_u64}),
        )
        .await;
    assert_error(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(response.1["error"]["field"], "older_than_ms");
}

/// A fetch's answer carries each job's errors as a list does (the last one,
/// its message cut to 1 KiB, and `cut` says so): its size does not grow with
/// how often the jobs failed. The job itself still has them all.
#[tokio::test]
async fn a_fetched_job_carries_its_last_error_alone() {
    let api = api().await;
    let id = api
        .enqueue(json!({"kind": "flaky", "max_attempts": 10}))
        .await["id"]
        .clone();
    for attempt in 1..=3 {
        let leased = api.fetch_one("default").await;
        let error = format!("attempt {attempt}: {}", "x".repeat(3_000));
        let (status, body) = api
            .post(
                &format!("/v1/jobs/{id}/fail"),
                json!({"lease": leased["lease"], "error": error, "retry_in_ms": 0}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = api.post(&format!("/v1/jobs/{id}/retry"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let leased = api.fetch_one("default").await;
    let errors = leased["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{leased}");
    assert_eq!(errors[0]["attempt"], 3);
    assert!(errors[0]["error"].as_str().unwrap().len() <= 1_024);
    assert_eq!(leased["cut"], json!(["errors"]));
    let (_, job) = api.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(
        job["errors"].as_array().unwrap().len(),
        3,
        "the job has them all"
    );
}
