//! Scoped tokens over real HTTP on loopback (docs/access.md): each scope
//! and queue pattern enforced, expiry and revocation (across two nodes on
//! one PostgreSQL database, within the cache's bound), secrets never listed,
//! the audit log, `/metrics`' scope, and the dashboard's powers.

#[path = "../../grafter-postgres/tests/common/mod.rs"]
mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use grafter_postgres::PostgresStore;
use grafter_server::{serve, ServerConfig};
use grafter_sqlite::SqliteStore;
use grafter_store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "the-server-token-0123456789";
/// How late a revocation may reach another node: the token cache's life
/// (`token_cache::CACHE_TTL`, 2 s) and room for a loaded machine.
const REVOCATION_BOUND: Duration = Duration::from_secs(4);

/// A running `grafter serve` with the server token [`ADMIN`]; stopped on drop.
struct Node {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(store: Arc<dyn Store>) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = ServerConfig {
        token: Some(ADMIN.into()),
        ..Default::default()
    };
    tokio::spawn(serve(listener, store, config, shutdown.clone()));
    Node {
        base,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl Node {
    /// Status and JSON body (`Null` when empty, a string when not JSON).
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(token, Method::GET, path, None).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(token, Method::POST, path, Some(body)).await
    }

    /// A new token's secret and id, made with the server's token.
    async fn token(&self, spec: Value) -> (String, String) {
        let (status, body) = self.post(ADMIN, "/v1/tokens", spec).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let secret = body["token"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("gft_"), "{secret}");
        (secret, body["id"].as_str().unwrap().to_owned())
    }

    async fn enqueue(&self, token: &str, queue: &str) -> (StatusCode, Value) {
        self.post(
            token,
            "/v1/jobs",
            json!({"kind": "k", "args": {}, "queue": queue}),
        )
        .await
    }
}

fn assert_refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
}

async fn sqlite_node() -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("grafter.db"))
        .await
        .unwrap();
    (start(Arc::new(store)).await, dir)
}

/// `count` nodes on one fresh PostgreSQL schema, and the schema's guard;
/// `None` when PostgreSQL is absent outside CI.
async fn postgres_nodes(count: usize) -> Option<(Vec<Node>, postgres::DropSchema)> {
    let url = postgres::database().await?;
    let (config, guard) = postgres::fresh_config(&url);
    let mut nodes = Vec::new();
    for _ in 0..count {
        let store = PostgresStore::connect(config.clone()).await.unwrap();
        nodes.push(start(Arc::new(store)).await);
    }
    Some((nodes, guard))
}

async fn scopes_and_queue_patterns_hold(node: &Node) {
    let (emails, emails_id) = node
        .token(json!({"name": "mailer", "scopes": ["producer"], "queues": ["emails*"]}))
        .await;
    assert_eq!(
        node.enqueue(&emails, "emails-eu").await.0,
        StatusCode::CREATED
    );
    assert_refused(
        &node.enqueue(&emails, "billing").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let batch =
        json!({"jobs": [{"kind": "k", "queue": "emails"}, {"kind": "k", "queue": "billing"}]});
    assert_refused(
        &node.post(&emails, "/v1/jobs/batch", batch).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // A batch's jobs and callbacks are all held to the patterns.
    for refused in [
        json!({"jobs": [{"kind": "k", "queue": "emails"}, {"kind": "k", "queue": "billing"}]}),
        json!({"jobs": [{"kind": "k", "queue": "emails"}],
               "on_complete": {"kind": "k", "queue": "billing"}}),
    ] {
        assert_refused(
            &node.post(&emails, "/v1/batches", refused).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    let (status, created) = node
        .post(
            &emails,
            "/v1/batches",
            json!({"jobs": [{"kind": "k", "queue": "emails"}], "open": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let batch_id = created["batch"]["id"].as_i64().unwrap();
    assert_refused(
        &node
            .post(
                &emails,
                &format!("/v1/batches/{batch_id}/jobs"),
                json!({"jobs": [{"kind": "k", "queue": "billing"}]}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    let (_, job) = node.enqueue(ADMIN, "default").await;
    let id = job["id"].as_i64().unwrap();
    let (worker, _) = node
        .token(json!({"name": "worker", "scopes": ["worker"]}))
        .await;
    for (method, path) in [
        (Method::POST, format!("/v1/jobs/{id}/retry")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
        (Method::DELETE, format!("/v1/jobs/{id}")),
        (Method::POST, "/v1/queues/default/pause".to_owned()),
        (Method::GET, "/v1/jobs".to_owned()),
        (Method::POST, "/v1/tokens".to_owned()),
    ] {
        let answer = node
            .call(
                &worker,
                method.clone(),
                &path,
                Some(json!({"name": "x", "scopes": ["admin"]})),
            )
            .await;
        assert_refused(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_refused(
        &node.enqueue(&worker, "default").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, fetched) = node
        .post(
            &worker,
            "/v1/fetch",
            json!({"queues": ["default"], "worker_id": "w1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    let leased = &fetched["jobs"][0];
    assert_eq!(leased["id"], id);
    let ack = json!({"lease": leased["lease"]});
    let (status, body) = node.post(&worker, &format!("/v1/jobs/{id}/ack"), ack).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (reader, _) = node
        .token(json!({"name": "dashboards", "scopes": ["read"]}))
        .await;
    assert_refused(
        &node.enqueue(&reader, "default").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        node.get(&reader, &format!("/v1/jobs/{id}")).await.0,
        StatusCode::OK
    );
    assert_eq!(node.get(&reader, "/v1/queues").await.0, StatusCode::OK);
    assert_refused(
        &node.get(&reader, "/v1/tokens").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_refused(
        &node.get(&reader, "/v1/audit").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_refused(
        &node.get(&reader, "/metrics").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (metrics, _) = node
        .token(json!({"name": "prometheus", "scopes": ["metrics"]}))
        .await;
    assert_eq!(node.get(&metrics, "/metrics").await.0, StatusCode::OK);
    assert_eq!(node.get(&reader, "/livez").await.0, StatusCode::OK);

    // An operator limited to emails* changes jobs of those queues only.
    let (operator, operator_id) = node
        .token(json!({"name": "support desk", "scopes": ["operator"], "queues": ["emails*"]}))
        .await;
    let (_, billing_job) = node.enqueue(ADMIN, "billing").await;
    let billing = billing_job["id"].as_i64().unwrap();
    assert_refused(
        &node
            .post(&operator, &format!("/v1/jobs/{billing}/cancel"), json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (_, email_job) = node.enqueue(ADMIN, "emails").await;
    let email = email_job["id"].as_i64().unwrap();
    let (status, body) = node
        .post(&operator, &format!("/v1/jobs/{email}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_refused(
        &node
            .post(&operator, "/v1/queues/billing/pause", json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // A batch's jobs may span queues: not the queue-limited operator's to cancel.
    assert_refused(
        &node
            .post(
                &operator,
                &format!("/v1/batches/{batch_id}/cancel"),
                json!({}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    let unknown = "gft_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_refused(
        &node.get(unknown, "/v1/jobs").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    // Listed, never with a secret; the audit log has the changes, newest first.
    let (status, listed) = node.get(ADMIN, "/v1/tokens").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let text = listed.to_string();
    for secret in [&emails, &worker, &reader, &operator] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret is listed: {text}"
        );
    }
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    assert!(tokens.iter().all(|t| t.get("token").is_none()), "{text}");
    let listed_operator = tokens
        .iter()
        .find(|t| t["id"] == operator_id.as_str())
        .unwrap();
    assert_eq!(
        listed_operator["scopes"],
        json!(["read", "manage", "queues"])
    );
    assert_eq!(listed_operator["queues"], json!(["emails*"]));

    // Its first use is recorded (in the background, so polled for).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, listed) = node.get(ADMIN, "/v1/tokens").await;
        let mailer = listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == emails_id.as_str())
            .cloned()
            .unwrap();
        if mailer["last_used_at"].is_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last_used_at never set: {mailer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, audit) = node.get(ADMIN, "/v1/audit?limit=3").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let newest = &audit["entries"][0];
    assert_eq!(newest["action"], "job.cancel", "{audit}");
    assert_eq!(newest["actor"], "support desk");
    assert_eq!(newest["token_id"], operator_id.as_str());
    assert_eq!(newest["target"], format!("/v1/jobs/{email}/cancel"));
    assert_eq!(audit["entries"][1]["action"], "token.create", "{audit}");
    assert_eq!(audit["entries"][1]["actor"], "server token");
    assert_eq!(audit["entries"][1]["details"]["name"], "support desk");
    assert!(
        audit["next"].is_i64(),
        "a full page says where the next starts: {audit}"
    );
    let (_, all) = node.get(ADMIN, "/v1/audit").await;
    let actions: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        !actions.contains(&"job.enqueue"),
        "enqueues are not audited: {actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "token.create").count(),
        5,
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_head_needs_what_its_get_needs_and_is_not_audited() {
    let (node, _dir) = sqlite_node().await;
    let (reader, _) = node
        .token(json!({"name": "reader", "scopes": ["read"]}))
        .await;
    for (token, path, status) in [
        (reader.as_str(), "/v1/jobs", StatusCode::OK),
        (&reader, "/v1/queues", StatusCode::OK),
        (&reader, "/v1/info", StatusCode::OK),
        (&reader, "/v1/audit", StatusCode::FORBIDDEN),
        (ADMIN, "/v1/jobs", StatusCode::OK),
        (ADMIN, "/v1/audit", StatusCode::OK),
    ] {
        let (answered, _) = node.call(token, Method::HEAD, path, None).await;
        assert_eq!(answered, status, "HEAD {path}");
    }
    let (status, audit) = node.get(ADMIN, "/v1/audit").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["action"])
        .collect();
    assert_eq!(actions, [&json!("token.create")], "reads are not audited");
}

#[tokio::test]
async fn a_queue_limited_token_cannot_seal_a_batch() {
    let (node, _dir) = sqlite_node().await;
    let (emails, _) = node
        .token(json!({"name": "mailer", "scopes": ["producer"], "queues": ["emails*"]}))
        .await;
    let (status, created) = node
        .post(
            ADMIN,
            "/v1/batches",
            json!({"jobs": [{"kind": "k", "queue": "billing"}], "open": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let batch = created["batch"]["id"].as_i64().unwrap();
    let refused = node
        .post(&emails, &format!("/v1/batches/{batch}/seal"), json!({}))
        .await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        refused.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot POST /v1/batches/{id}/seal"),
        "{}",
        refused.1
    );
    let (_, shown) = node.get(ADMIN, &format!("/v1/batches/{batch}")).await;
    assert_eq!(shown["open"], true, "{shown}");
    // A token for every queue seals it.
    let (producer, _) = node
        .token(json!({"name": "app", "scopes": ["producer"]}))
        .await;
    let (status, sealed) = node
        .post(&producer, &format!("/v1/batches/{batch}/seal"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{sealed}");
    assert_eq!(sealed["open"], false, "{sealed}");
}

#[tokio::test]
async fn a_queue_limited_token_registers_and_removes_only_its_queues_workers() {
    let (node, _dir) = sqlite_node().await;
    let (emails, _) = node
        .token(json!({"name": "mail-workers", "scopes": ["worker"], "queues": ["emails*"]}))
        .await;
    let (fleet, _) = node
        .token(json!({"name": "all-workers", "scopes": ["worker"]}))
        .await;
    let register = |token: &str, id: &str, queues: Value| {
        let body = json!({"id": id, "host": "h", "pid": 1, "queues": queues, "concurrency": 1});
        let (token, path) = (token.to_owned(), format!("/v1/workers/{id}"));
        let node = &node;
        async move { node.call(&token, Method::PUT, &path, Some(body)).await }
    };
    let remove = |token: &str, id: &str| {
        let (token, path) = (token.to_owned(), format!("/v1/workers/{id}"));
        let node = &node;
        async move { node.call(&token, Method::DELETE, &path, None).await }
    };
    let listed = || async {
        let (_, body) = node.get(ADMIN, "/v1/workers").await;
        let workers = body["workers"].as_array().unwrap().iter();
        workers
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    let (status, body) = register(&emails, "mail-1", json!(["emails-eu", "emails"])).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let refused = register(&emails, "mixed-1", json!(["emails", "billing"])).await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        refused.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not 'billing'"),
        "{}",
        refused.1
    );
    let (status, body) = register(&fleet, "billing-1", json!(["billing"])).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(listed().await, ["mail-1", "billing-1"]);
    // Nor does it take over another queue's worker by naming its own queues.
    assert_refused(
        &register(&emails, "billing-1", json!(["emails"])).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    assert_refused(
        &remove(&emails, "billing-1").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Its own queues' worker, and one there is not, as for any token.
    for id in ["mail-1", "gone-1"] {
        let (status, body) = remove(&emails, id).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{id}: {body}");
    }
    assert_eq!(listed().await, ["billing-1"]);
    let (status, body) = remove(&fleet, "billing-1").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(listed().await.is_empty());
}

/// A push target decides where a queue's jobs, arguments and all, are sent:
/// only the server's token sets, changes or removes one (docs/push.md).
#[tokio::test]
async fn only_the_server_token_sets_changes_or_removes_a_push_target() {
    let (node, _dir) = sqlite_node().await;
    let put = |token: &str, body: Value| {
        let token = token.to_owned();
        let node = &node;
        async move {
            node.call(&token, Method::PUT, "/v1/queues/mail", Some(body))
                .await
        }
    };
    let secret = "the-push-secret-0123456789";
    let target = |url: &str| json!({"url": url, "secret": secret});
    let (operator, _) = node
        .token(json!({"name": "ops", "scopes": ["operator"]}))
        .await;
    let (admin, _) = node
        .token(json!({"name": "root-ish", "scopes": ["admin"]}))
        .await;
    for token in [&operator, &admin] {
        for body in [
            json!({"push": target("https://attacker.example/collect")}),
            json!({"push": target("https://attacker.example/collect"), "limits": {"concurrency": 1}}),
            json!({"push": null}),
        ] {
            let refused = put(token, body.clone()).await;
            assert_refused(&refused, StatusCode::FORBIDDEN, "forbidden");
            let message = refused.1["error"]["message"].as_str().unwrap();
            assert!(message.contains("server's token"), "{body}: {message}");
        }
    }
    let (_, queues) = node.get(ADMIN, "/v1/queues").await;
    assert_eq!(queues["queues"], json!([]), "nothing was stored: {queues}");

    let limits = json!({"concurrency": 2});
    let (status, body) = put(
        ADMIN,
        json!({"push": target("https://user:pw@app.example.com/jobs?key=k1"), "limits": limits}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The queue's other settings stay the `queues` scope's.
    let (status, body) = put(&operator, json!({"limits": {"concurrency": 3}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["push"]["url"], "https://***@app.example.com/jobs?key=***",
        "{body}"
    );
    for token in [&operator, &admin] {
        let refused = put(token, json!({"push": null})).await;
        assert_refused(&refused, StatusCode::FORBIDDEN, "forbidden");
    }
    let (status, body) = put(ADMIN, json!({"push": null})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["push"], Value::Null);

    // Each update's audit entry says what it changed, never a secret.
    let (_, audit) = node.get(ADMIN, "/v1/audit").await;
    let updates: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "queue.update")
        .map(|e| &e["details"])
        .collect();
    assert_eq!(updates.len(), 3, "refusals are not audited: {audit}");
    assert_eq!(updates[0], &json!({"push": null}));
    assert_eq!(updates[1], &json!({"limits": {"concurrency": 3}}));
    assert_eq!(updates[2]["limits"], limits);
    assert_eq!(
        updates[2]["push"]["url"],
        "https://***@app.example.com/jobs?key=***"
    );
    let text = audit.to_string();
    assert!(
        !text.contains(secret) && !text.contains("pw@") && !text.contains("k1"),
        "{text}"
    );
}

/// A token limited to some queues does nothing whose effect reaches past
/// them: tokens (a new one could have every queue), cleanups of every queue.
#[tokio::test]
async fn a_queue_limited_admin_reaches_no_further_than_its_queues() {
    let (node, _dir) = sqlite_node().await;
    let (limited, limited_id) = node
        .token(json!({"name": "mail admin", "scopes": ["admin"], "queues": ["emails*"]}))
        .await;
    let (_, other_id) = node
        .token(json!({"name": "billing app", "scopes": ["producer"]}))
        .await;
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/tokens".to_owned(),
            Some(json!({"name": "escape", "scopes": ["admin"]})),
        ),
        (
            Method::POST,
            "/v1/tokens".to_owned(),
            Some(json!({"name": "narrower", "scopes": ["read"], "queues": ["emails-eu"]})),
        ),
        (Method::DELETE, format!("/v1/tokens/{other_id}"), None),
        (Method::DELETE, format!("/v1/tokens/{limited_id}"), None),
        (
            Method::POST,
            "/v1/cleanup".to_owned(),
            Some(json!({"older_than_ms": 0})),
        ),
        (
            Method::POST,
            "/v1/cleanup".to_owned(),
            Some(json!({"older_than_ms": 0, "dry_run": true})),
        ),
    ] {
        let refused = node.call(&limited, method.clone(), &path, body).await;
        assert_refused(&refused, StatusCode::FORBIDDEN, "forbidden");
        let message = refused.1["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("limited to some queues"),
            "{method} {path}: {message}"
        );
    }
    let (_, listed) = node.get(ADMIN, "/v1/tokens").await;
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{listed}");
    assert!(tokens.iter().all(|t| t["revoked_at"].is_null()), "{listed}");
    // Its own queues it still runs, and it reads as any admin.
    assert_eq!(
        node.enqueue(&limited, "emails").await.0,
        StatusCode::CREATED
    );
    let (status, body) = node
        .post(&limited, "/v1/queues/emails/pause", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(node.get(&limited, "/v1/tokens").await.0, StatusCode::OK);
    assert_eq!(node.get(&limited, "/v1/audit").await.0, StatusCode::OK);
    // An admin for every queue makes tokens and cleans up.
    let (admin, _) = node
        .token(json!({"name": "admin", "scopes": ["admin"]}))
        .await;
    let (status, body) = node
        .post(
            &admin,
            "/v1/tokens",
            json!({"name": "made", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = node
        .post(
            &admin,
            "/v1/cleanup",
            json!({"older_than_ms": 0, "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// When a worker's registration goes silent, every lease held under its id
/// ends, whatever the queue: a queue-limited token may not register (or
/// heartbeat) an id under which other queues' jobs run.
#[tokio::test]
async fn a_queue_limited_worker_cannot_take_an_id_holding_other_queues_jobs() {
    let (node, _dir) = sqlite_node().await;
    let (emails, _) = node
        .token(json!({"name": "mail-workers", "scopes": ["worker"], "queues": ["emails*"]}))
        .await;
    let register = |id: &str| {
        let body = json!({"id": id, "host": "h", "pid": 1, "queues": ["emails"],
                          "concurrency": 1, "kinds": []});
        let (token, path) = (emails.clone(), format!("/v1/workers/{id}"));
        let node = &node;
        async move { node.call(&token, Method::PUT, &path, Some(body)).await }
    };
    let lease = |queue: &str, worker_id: &str| {
        let node = &node;
        let (queue, worker_id) = (queue.to_owned(), worker_id.to_owned());
        async move {
            assert_eq!(node.enqueue(ADMIN, &queue).await.0, StatusCode::CREATED);
            let (status, fetched) = node
                .post(
                    ADMIN,
                    "/v1/fetch",
                    json!({"queues": [queue], "worker_id": worker_id}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{fetched}");
            assert_eq!(fetched["jobs"].as_array().unwrap().len(), 1, "{fetched}");
        }
    };
    // A worker that never registers holds a billing job.
    lease("billing2", "billing-host-1").await;
    let refused = register("billing-host-1").await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "forbidden");
    let message = refused.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("'billing2'"), "{message}");
    let (_, workers) = node.get(ADMIN, "/v1/workers").await;
    assert_eq!(workers["workers"], json!([]), "{workers}");
    // Its own queues' jobs under the id are its own business.
    lease("emails", "mail-1").await;
    let (status, body) = register("mail-1").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // An id a billing job was leased under after it registered: its next
    // heartbeat is refused.
    lease("billing2", "mail-1").await;
    assert_refused(
        &register("mail-1").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

/// A queue update checks everything, then stores the limits before the push
/// target: when storing the limits fails, no target went live without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_target_never_goes_live_without_the_limits_sent_with_it() {
    let Some((nodes, guard)) = postgres_nodes(1).await else {
        return;
    };
    let node = &nodes[0];
    let schema = &guard.schema;
    postgres::admin(&guard.url)
        .await
        .batch_execute(&format!(
            r#"CREATE FUNCTION "{schema}".refuse_limits() RETURNS trigger LANGUAGE plpgsql
                   AS $$ BEGIN RAISE EXCEPTION 'the test refuses limits'; END $$;
               CREATE TRIGGER refuse_limits BEFORE INSERT OR UPDATE ON "{schema}".queues
                   FOR EACH ROW WHEN (NEW.limits IS NOT NULL)
                   EXECUTE FUNCTION "{schema}".refuse_limits();"#
        ))
        .await
        .unwrap();
    let body = json!({
        "push": {"url": "https://app.example.com/jobs", "secret": "the-push-secret-0123456789"},
        "limits": {"concurrency": 1},
    });
    let (status, answer) = node
        .call(ADMIN, Method::PUT, "/v1/queues/mail", Some(body))
        .await;
    assert!(status.is_server_error(), "{status}: {answer}");
    let (_, queues) = node.get(ADMIN, "/v1/queues").await;
    assert_eq!(queues["queues"], json!([]), "nothing was stored: {queues}");
    // Invalid limits beside a valid target: refused before anything is stored.
    let body = json!({
        "push": {"url": "https://app.example.com/jobs", "secret": "the-push-secret-0123456789"},
        "limits": {"concurrency": 0},
    });
    let refused = node
        .call(ADMIN, Method::PUT, "/v1/queues/mail", Some(body))
        .await;
    assert_refused(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let (_, queues) = node.get(ADMIN, "/v1/queues").await;
    assert_eq!(queues["queues"], json!([]), "nothing was stored: {queues}");
}

#[tokio::test]
async fn scopes_and_queue_patterns_hold_on_sqlite() {
    let (node, _dir) = sqlite_node().await;
    scopes_and_queue_patterns_hold(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_queue_patterns_hold_on_postgres() {
    let Some((nodes, _guard)) = postgres_nodes(1).await else {
        return;
    };
    scopes_and_queue_patterns_hold(&nodes[0]).await;
}

/// Polls `node` with `secret` until it answers 401; how long that took.
async fn until_refused(node: &Node, secret: &str, patience: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let answer = node.get(secret, "/v1/queues").await;
        if answer.0 == StatusCode::UNAUTHORIZED {
            assert_refused(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
            return start.elapsed();
        }
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
        assert!(
            start.elapsed() < patience,
            "still accepted after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_node_is_refused_by_another_within_the_bound() {
    let Some((nodes, _guard)) = postgres_nodes(2).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let (secret, id) = a.token(json!({"name": "ci", "scopes": ["read"]})).await;
    // Node B has verified it and keeps it in its cache.
    assert_eq!(b.get(&secret, "/v1/queues").await.0, StatusCode::OK);
    let (status, revoked) = a
        .call(ADMIN, Method::DELETE, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let took = until_refused(b, &secret, REVOCATION_BOUND).await;
    assert!(took <= REVOCATION_BOUND, "node B refused it after {took:?}");
    assert_refused(
        &a.get(&secret, "/v1/queues").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let (_, audit) = b.get(ADMIN, "/v1/audit?limit=1").await;
    assert_eq!(audit["entries"][0]["action"], "token.revoke", "{audit}");
    assert_eq!(
        a.call(ADMIN, Method::DELETE, "/v1/tokens/tok_none", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_expired_token_gets_401_and_bad_specs_are_refused() {
    let (node, _dir) = sqlite_node().await;
    let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let (secret, _) = node
        .token(json!({"name": "short", "scopes": ["read"], "expires_at": expires_at}))
        .await;
    assert_eq!(node.get(&secret, "/v1/queues").await.0, StatusCode::OK);
    until_refused(
        &node,
        &secret,
        Duration::from_millis(1_500) + REVOCATION_BOUND,
    )
    .await;

    for (spec, field) in [
        (json!({"name": "x", "scopes": ["root"]}), "scopes"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "", "scopes": ["read"]}), "name"),
        (
            json!({"name": "x", "scopes": ["read"], "queues": [""]}),
            "queues",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let answer = node.post(ADMIN, "/v1/tokens", spec).await;
        assert_refused(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(answer.1["error"]["field"], field, "{}", answer.1);
    }
}

#[tokio::test]
async fn the_dashboard_gives_a_token_its_powers() {
    let (node, _dir) = sqlite_node().await;
    let (_, job) = node.enqueue(ADMIN, "default").await;
    let id = job["id"].as_i64().unwrap();
    let page = |token: String| {
        let http = node.http.clone();
        let url = format!("{}/jobs/{id}", node.base);
        async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let (reader, _) = node
        .token(json!({"name": "viewer", "scopes": ["read"]}))
        .await;
    let (status, html) = page(reader.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Args"), "the job page: {html}");
    for action in ["/cancel", "/delete", "/reschedule"] {
        assert!(
            !html.contains(&format!("/jobs/{id}{action}")),
            "a {action} form is shown"
        );
    }
    let (operator, _) = node
        .token(json!({"name": "ops", "scopes": ["operator"]}))
        .await;
    let (_, html) = page(operator).await;
    assert!(html.contains(&format!("/jobs/{id}/delete")), "{html}");

    let (status, html) = {
        let response = node
            .http
            .get(format!("{}/queues", node.base))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("/default/pause"), "{html}");

    let response = node
        .http
        .post(format!("{}/jobs/{id}/delete", node.base))
        .bearer_auth(&reader)
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        node.get(ADMIN, &format!("/v1/jobs/{id}")).await.0,
        StatusCode::OK
    );
}

impl Node {
    /// `GET /v1/jobs/{job}/events` with `access_token` and no other
    /// credentials.
    async fn stream(&self, job: i64, access_token: &str) -> reqwest::Response {
        self.http
            .get(format!(
                "{}/v1/jobs/{job}/events?access_token={access_token}",
                self.base
            ))
            .send()
            .await
            .unwrap()
    }

    /// A stream token for `job`, asked for 24 hours, minted with `token`:
    /// the token and its `expires_at`.
    async fn stream_token(&self, token: &str, job: i64) -> (String, chrono::DateTime<chrono::Utc>) {
        let (status, minted) = self
            .post(
                token,
                "/v1/stream-tokens",
                json!({"jobs": [job], "ttl_ms": 86_400_000}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{minted}");
        let expires_at = minted["expires_at"].as_str().unwrap().parse().unwrap();
        (minted["token"].as_str().unwrap().to_owned(), expires_at)
    }
}

/// Opens `job`'s stream with `access_token` until it is refused: the 401's
/// message.
async fn until_stream_refused(
    node: &Node,
    job: i64,
    access_token: &str,
    patience: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let response = node.stream(job, access_token).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            return body["error"]["message"].as_str().unwrap().to_owned();
        }
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            start.elapsed() < patience,
            "the stream token still opens a stream after {patience:?}"
        );
        drop(response);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads an open event stream until the server closes it; panics if it is
/// still open after `patience`.
async fn until_closed(mut stream: reqwest::Response, patience: Duration) {
    assert_eq!(stream.status(), StatusCode::OK);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => panic!("the stream is still open after {patience:?}"),
        }
    }
}

/// A stream token minted with a stored token on `a`, used on `b`: it works
/// until that token is revoked, then neither opens a stream nor keeps one
/// open (nor does a stream opened with the stored token itself) within the
/// revocation's bound; the server token's stream tokens go on working.
async fn a_stream_token_ends_with_the_token_that_minted_it(a: &Node, b: &Node) {
    let (_, job) = a.enqueue(ADMIN, "default").await;
    let job = job["id"].as_i64().unwrap();
    let (secret, id) = a.token(json!({"name": "victim", "scopes": ["read"]})).await;
    let (stream_token, expires_at) = a.stream_token(&secret, job).await;
    assert!(
        expires_at > chrono::Utc::now() + chrono::Duration::hours(23),
        "a token without expiry mints for the whole ttl: {expires_at}"
    );
    let (server_minted, _) = a.stream_token(ADMIN, job).await;
    let open = b.stream(job, &stream_token).await;
    assert_eq!(open.status(), StatusCode::OK);
    let with_bearer = b
        .http
        .get(format!("{}/v1/jobs/{job}/events", b.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(with_bearer.status(), StatusCode::OK);

    let (status, revoked) = a
        .call(ADMIN, Method::DELETE, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let revoked_at = Instant::now();
    let message = until_stream_refused(b, job, &stream_token, REVOCATION_BOUND).await;
    assert!(message.contains("revoked"), "{message}");
    // Open streams end at their next look at the token (every second).
    let patience = REVOCATION_BOUND + Duration::from_secs(1);
    let left = patience.saturating_sub(revoked_at.elapsed());
    tokio::join!(until_closed(open, left), until_closed(with_bearer, left));
    assert_refused(
        &b.get(&secret, "/v1/queues").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // Not signed by a stored token: revocable only by changing the server's token.
    assert_eq!(b.stream(job, &server_minted).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_stream_token_ends_with_the_token_that_minted_it_on_sqlite() {
    let (node, _dir) = sqlite_node().await;
    a_stream_token_ends_with_the_token_that_minted_it(&node, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_token_ends_with_the_token_that_minted_it_across_postgres_nodes() {
    let Some((nodes, _guard)) = postgres_nodes(2).await else {
        return;
    };
    a_stream_token_ends_with_the_token_that_minted_it(&nodes[0], &nodes[1]).await;
}

#[tokio::test]
async fn a_stream_token_expires_no_later_than_the_token_that_minted_it() {
    let (node, _dir) = sqlite_node().await;
    let (_, job) = node.enqueue(ADMIN, "default").await;
    let job = job["id"].as_i64().unwrap();
    let ends = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (secret, _) = node
        .token(json!({"name": "short", "scopes": ["read"], "expires_at": ends}))
        .await;
    let (stream_token, expires_at) = node.stream_token(&secret, job).await;
    assert_eq!(
        expires_at.timestamp_millis(),
        ends.timestamp_millis(),
        "capped at the minter's expiry"
    );
    let open = node.stream(job, &stream_token).await;
    assert_eq!(open.status(), StatusCode::OK);
    let message = until_stream_refused(
        &node,
        job,
        &stream_token,
        Duration::from_secs(3) + REVOCATION_BOUND,
    )
    .await;
    assert!(message.contains("expired"), "{message}");
    until_closed(open, REVOCATION_BOUND).await;
}

#[tokio::test]
async fn the_dashboards_stream_tokens_end_with_the_token_of_its_caller() {
    let (node, _dir) = sqlite_node().await;
    let (_, job) = node.enqueue(ADMIN, "default").await;
    let job = job["id"].as_i64().unwrap();
    let (secret, id) = node
        .token(json!({"name": "viewer", "scopes": ["read"]}))
        .await;
    let page = node
        .http
        .get(format!("{}/jobs/{job}", node.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let at = html.find("access_token=").expect("the page's stream") + "access_token=".len();
    let stream_token = &html[at..at + html[at..].find('"').unwrap()];
    assert!(stream_token.contains(&id), "{stream_token}");
    assert_eq!(
        node.stream(job, stream_token).await.status(),
        StatusCode::OK
    );
    let (status, _) = node
        .call(ADMIN, Method::DELETE, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    until_stream_refused(&node, job, stream_token, REVOCATION_BOUND).await;
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case_and_is_no_wrong_token() {
    let (node, _dir) = sqlite_node().await;
    let (_, job) = node.enqueue(ADMIN, "default").await;
    let job = job["id"].as_i64().unwrap();
    let (reader, _) = node
        .token(json!({"name": "reader", "scopes": ["read"]}))
        .await;
    let get = |path: String, authorization: String| {
        let request = node
            .http
            .get(format!("{}{path}", node.base))
            .header("authorization", authorization);
        async move { request.send().await.unwrap() }
    };
    // More than the ten wrong tokens a minute that would be throttled.
    for round in 0..4 {
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            for token in [ADMIN, reader.as_str()] {
                let authorization = format!("{scheme} {token}");
                let answer = get("/v1/queues".into(), authorization.clone()).await;
                assert_eq!(answer.status(), StatusCode::OK, "{round}: {authorization}");
                let stream = get(format!("/v1/jobs/{job}/events"), authorization.clone()).await;
                assert_eq!(stream.status(), StatusCode::OK, "{authorization}");
            }
        }
    }
    // The dashboard reads it alike: the page, not the login form.
    let page = get(format!("/jobs/{job}"), format!("bearer {reader}")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Args"));
    let wrong = get("/v1/queues".into(), "bearer gft_wrong".into()).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}
