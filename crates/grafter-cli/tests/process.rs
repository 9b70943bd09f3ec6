//! Process-level tests: the real `grafter` binary, a real SQLite file in a temp
//! directory, real HTTP on loopback. Servers are stopped with `kill -9`
//! (SIGKILL) to check that whatever Grafter acknowledged survives a crash, and
//! with SIGTERM to check the graceful shutdown.
//!
//! Maintenance and retry backoff are configured fast so the tests take seconds;
//! every wait is a poll with a generous deadline, and nothing asserts on speed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

const GRAFTER: &str = env!("CARGO_BIN_EXE_grafter");

/// How long any poll may take before the test gives up. Generous: the machine
/// may be loaded; a passing test never comes close.
const PATIENCE: Duration = Duration::from_secs(20);

/// Fast maintenance and a fast, deterministic retry backoff.
const CONFIG: &str = r#"
[retry]
base_ms = 100
max_ms = 200
jitter = 0.0

[maintenance]
schedule_interval_ms = 100
rescue_interval_ms = 100
expire_interval_ms = 100
"#;

/// Every `GRAFTER_*` variable the binary reads, removed so the caller's
/// environment cannot change what a test runs against.
const ENVIRONMENT: [&str; 5] =
    ["GRAFTER_DATABASE_URL", "GRAFTER_LISTEN", "GRAFTER_CONFIG", "GRAFTER_URL", "GRAFTER_TOKEN"];

/// A `grafter` command with a clean environment.
fn grafter() -> std::process::Command {
    let mut command = std::process::Command::new(GRAFTER);
    for name in ENVIRONMENT {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

/// Numbers the server logs, so a restart never overwrites an earlier log.
static STARTS: AtomicUsize = AtomicUsize::new(0);

/// A running `grafter serve` on `dir/jobs.db`, killed with SIGKILL on drop. If
/// the test is panicking, the server's log is printed first.
struct Server {
    child: Option<Child>,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Server {
    /// Starts a server on the database in `dir` and waits until `/livez` answers.
    async fn start(dir: &Path) -> Server {
        let config = dir.join("grafter.toml");
        if !config.exists() {
            std::fs::write(&config, CONFIG).expect("write config");
        }
        let database = format!("sqlite://{}", dir.join("jobs.db").display());
        let http = http_client();
        // A port picked free may be taken by someone else before we bind it:
        // then try another.
        for _ in 0..5 {
            let port = free_port();
            let log = dir.join(format!("server-{}.log", STARTS.fetch_add(1, Ordering::SeqCst)));
            let child = grafter()
                .args(["serve", "--database", &database, "--listen", &format!("127.0.0.1:{port}")])
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(File::create(&log).expect("create log file"))
                .spawn()
                .expect("spawn grafter serve");
            let mut server =
                Server { child: Some(child), base: format!("http://127.0.0.1:{port}"), log, http: http.clone() };
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(status) = server.child_mut().try_wait().expect("try_wait") {
                    server.child = None;
                    let log = server.log_text();
                    if log.contains("cannot listen") {
                        break; // the port was taken: next one
                    }
                    panic!("grafter serve exited ({status}) before it was ready; its log:\n{log}");
                }
                if let Ok(response) = http.get(server.url("/livez")).send().await {
                    if response.status().is_success() {
                        return server;
                    }
                }
                assert!(Instant::now() < deadline, "grafter serve did not answer /livez within {PATIENCE:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("could not start grafter serve on a free port in 5 tries");
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server is running")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// SIGKILL, as a crash or an OOM killer would: no chance to clean up.
    fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 grafter serve");
            child.wait().expect("reap grafter serve");
        }
    }

    /// Waits for the process to exit on its own.
    async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request to grafter");
        let status = response.status();
        let text = response.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    /// Enqueues one job, which must be created.
    async fn enqueue(&self, job: Value) -> Value {
        let (status, body) = self.post("/v1/jobs", job).await;
        assert_eq!(status, StatusCode::CREATED, "enqueue: {body}");
        body
    }

    async fn job(&self, id: i64) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET job {id}: {body}");
        body
    }

    /// One fetch of at most one job from `queue`.
    async fn fetch(&self, queue: &str, lease_ms: u64, wait_ms: u64) -> Option<Value> {
        let (status, body) = self
            .post(
                "/v1/fetch",
                json!({"queues": [queue], "max": 1, "wait_ms": wait_ms, "lease_ms": lease_ms, "worker_id": "test-worker"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "fetch: {body}");
        let jobs = body["jobs"].as_array().expect("fetch answers jobs");
        assert!(jobs.len() <= 1, "fetch with max 1 answered {}", jobs.len());
        jobs.first().cloned()
    }

    /// Fetches from `queue` until a job comes, or fails the test after `PATIENCE`.
    async fn fetch_until(&self, queue: &str, lease_ms: u64) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(job) = self.fetch(queue, lease_ms, 500).await {
                return job;
            }
            assert!(Instant::now() < deadline, "no job came back on queue {queue} within {PATIENCE:?}");
        }
    }

    /// Every job on `queue`, following `next_cursor` page by page.
    async fn all_jobs(&self, queue: &str, page: usize) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/jobs?queue={queue}&limit={page}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, body) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "list: {body}");
            jobs.extend(body["jobs"].as_array().expect("a page has jobs").iter().cloned());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return jobs,
            }
            assert!(jobs.len() <= 100_000, "pagination does not end");
        }
    }

    /// The counts per state of one queue from `GET /v1/queues`.
    async fn queue_counts(&self, queue: &str) -> BTreeMap<String, u64> {
        let (status, body) = self.get("/v1/queues").await;
        assert_eq!(status, StatusCode::OK, "queues: {body}");
        let entry = body["queues"]
            .as_array()
            .expect("queues list")
            .iter()
            .find(|q| q["name"] == queue)
            .unwrap_or_else(|| panic!("queue {queue} missing from {body}"));
        serde_json::from_value(entry["counts"].clone()).expect("counts per state")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of grafter serve at {} ({}) ----\n{}", self.base, self.log.display(), self.log_text());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("grafter-process-").tempdir().expect("temp dir")
}

fn id_of(job: &Value) -> i64 {
    job["id"].as_i64().unwrap_or_else(|| panic!("job without an integer id: {job}"))
}

/// Runs a CLI command (not `serve`) to completion.
async fn run_cli(args: &[&str], cwd: &Path) -> std::process::Output {
    let mut command = tokio::process::Command::from(grafter());
    command.args(args).current_dir(cwd).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("grafter {args:?} did not finish within 60 s"))
        .expect("run grafter")
}

#[tokio::test]
async fn kill_9_while_leased_the_job_comes_back_as_attempt_2() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let id = id_of(&server.enqueue(json!({"kind": "sync", "queue": "crash", "args": {"n": 1}})).await);

    let first = server.fetch("crash", 1_000, 0).await.expect("the job is available");
    assert_eq!(id_of(&first), id);
    assert_eq!(first["state"], "running");
    assert_eq!(first["attempt"], 1);
    let old_lease = first["lease"].as_str().expect("a lease").to_owned();

    server.kill9();
    let server = Server::start(dir.path()).await;

    // The lease was acknowledged, so it survived: the attempt count stays 1
    // until the job is fetched again.
    let stored = server.job(id).await;
    assert_eq!(stored["attempt"], 1, "{stored}");

    // Its lease runs out, the rescuer records the lost attempt, and after the
    // backoff the job is handed out again.
    let second = server.fetch_until("crash", 30_000).await;
    assert_eq!(id_of(&second), id);
    assert_eq!(second["state"], "running");
    assert_eq!(second["attempt"], 2, "{second}");
    let errors = second["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{second}");
    assert_eq!(errors[0]["error"], "lease expired");
    assert_eq!(errors[0]["attempt"], 1);
    assert_eq!(errors[0]["worker_id"], "test-worker");
    let new_lease = second["lease"].as_str().expect("a lease").to_owned();
    assert_ne!(new_lease, old_lease);

    // The crashed worker's lease is stale: refused, and nothing changes.
    let (status, body) = server.post(&format!("/v1/jobs/{id}/ack"), json!({"lease": old_lease})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "lease_mismatch", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let unchanged = server.job(id).await;
    assert_eq!(unchanged["state"], "running");
    assert_eq!(unchanged["attempt"], 2);

    let (status, done) =
        server.post(&format!("/v1/jobs/{id}/ack"), json!({"lease": new_lease, "result": {"ok": true}})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "completed");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"], json!({"ok": true}));
    assert_eq!(server.job(id).await["state"], "completed");
}

#[tokio::test]
async fn an_acknowledged_batch_survives_kill_9() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let jobs: Vec<Value> = (0..200).map(|i| json!({"kind": "bulk", "queue": "durable", "args": {"i": i}})).collect();
    let (status, body) = server.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created = body["jobs"].as_array().expect("batch answers jobs");
    assert_eq!(created.len(), 200);
    let expected: BTreeMap<i64, Value> = created.iter().map(|j| (id_of(j), j["args"].clone())).collect();
    assert_eq!(expected.len(), 200, "ids are distinct");

    server.kill9();
    let server = Server::start(dir.path()).await;

    // Small pages, to follow the cursor too.
    let stored = server.all_jobs("durable", 64).await;
    let found: BTreeMap<i64, Value> = stored.iter().map(|j| (id_of(j), j["args"].clone())).collect();
    assert_eq!(found.len(), stored.len(), "a job listed twice across pages");
    assert_eq!(found, expected, "jobs lost or changed by kill -9");
    let (status, one_page) = server.get("/v1/jobs?queue=durable&limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one_page["jobs"].as_array().map(Vec::len), Some(200));

    let counts = server.queue_counts("durable").await;
    assert_eq!(counts.get("available"), Some(&200), "{counts:?}");
}

#[tokio::test]
async fn concurrent_acknowledged_enqueues_survive_kill_9() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8usize {
        let http = server.http.clone();
        let url = server.url("/v1/jobs");
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for n in (task..50).step_by(8) {
                let response = http
                    .post(&url)
                    .json(&json!({"kind": "single", "queue": "concurrent", "args": {"n": n}}))
                    .send()
                    .await
                    .expect("enqueue");
                assert_eq!(response.status(), StatusCode::CREATED);
                let job: Value = response.json().await.expect("job JSON");
                ids.push(id_of(&job));
            }
            ids
        });
    }
    let mut ids = BTreeSet::new();
    while let Some(result) = tasks.join_next().await {
        ids.extend(result.expect("an enqueue task panicked"));
    }
    assert_eq!(ids.len(), 50, "50 distinct ids");

    server.kill9();
    let server = Server::start(dir.path()).await;

    for &id in &ids {
        let job = server.job(id).await;
        assert_eq!(job["queue"], "concurrent");
        assert_eq!(job["state"], "available");
    }
    let listed: BTreeSet<i64> = server.all_jobs("concurrent", 1_000).await.iter().map(id_of).collect();
    assert_eq!(listed, ids);
    assert_eq!(server.queue_counts("concurrent").await.get("available"), Some(&50));
}

#[tokio::test]
async fn a_new_job_wakes_a_long_poll() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let request = server.http.post(server.url("/v1/fetch")).json(&json!({
        "queues": ["wake"], "max": 1, "wait_ms": 20_000, "lease_ms": 30_000, "worker_id": "sleeper"
    }));
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let response = request.send().await.expect("long-poll fetch");
        let status = response.status();
        (status, response.json::<Value>().await.expect("fetch JSON"))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the fetch on an empty queue answered before any job was enqueued");

    let id = id_of(&server.enqueue(json!({"kind": "ping", "queue": "wake"})).await);
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the long-poll never answered")
        .expect("the long-poll task panicked");
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let jobs = body["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(id_of(&jobs[0]), id);
    assert_eq!(jobs[0]["state"], "running");
    assert!(jobs[0]["lease"].is_string());
    // Not a speed check: 20 s would mean it timed out instead of being woken.
    assert!(elapsed < Duration::from_secs(10), "the fetch was not woken by the enqueue (took {elapsed:?})");
}

#[tokio::test]
async fn sigterm_with_a_pending_long_poll_exits_cleanly() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path()).await;
    let request = server
        .http
        .post(server.url("/v1/fetch"))
        .json(&json!({"queues": ["idle"], "wait_ms": 20_000, "worker_id": "sleeper"}));
    let poll = tokio::spawn(async move {
        let response = request.send().await.expect("long-poll fetch");
        let status = response.status();
        (status, response.json::<Value>().await.expect("fetch JSON"))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the fetch on an empty queue answered at once");

    let pid = server.pid().to_string();
    let kill = std::process::Command::new("sh").args(["-c", "kill -TERM \"$0\"", &pid]).status().expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");

    let status = server.wait_exit(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("grafter serve still running 15 s after SIGTERM:\n{}", server.log_text()));
    assert!(status.success(), "grafter serve exited with {status} after SIGTERM:\n{}", server.log_text());

    // The pending long-poll was answered (with no job), not cut off.
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long-poll never answered")
        .expect("the long-poll task panicked");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"], json!([]));
    assert!(server.log_text().contains("Grafter stopped"), "{}", server.log_text());
}

#[tokio::test]
async fn the_cli_enqueues_shows_and_explains_failures() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let cwd = dir.path();

    let out = run_cli(&["enqueue", "send_email", "--args", r#"{"to":"a@b.c"}"#, "--url", &server.base], cwd).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "enqueue failed ({}): {stdout}{stderr}", out.status);
    // "job <id> send_email on queue default (available, run at …)"
    let id: i64 = stdout
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no job id in: {stdout}"));
    assert!(stdout.contains("send_email"), "{stdout}");
    let stored = server.job(id).await;
    assert_eq!(stored["kind"], "send_email");
    assert_eq!(stored["args"], json!({"to": "a@b.c"}));

    let out = run_cli(&["jobs", "show", &id.to_string(), "--url", &server.base], cwd).await;
    assert!(out.status.success(), "jobs show failed: {}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("jobs show printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(id_of(&shown), id);
    assert_eq!(shown["kind"], "send_email");
    assert_eq!(shown["args"]["to"], "a@b.c");

    let out = run_cli(&["enqueue", "x", "--args", "{bad", "--url", &server.base], cwd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad --args was accepted");
    assert!(stderr.contains("not valid JSON"), "{stderr}");

    let out = run_cli(&["jobs", "list", "--url", "http://127.0.0.1:1"], cwd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "jobs list against nothing succeeded");
    assert!(stderr.contains("cannot reach Grafter"), "{stderr}");

    let listen = format!("127.0.0.1:{}", free_port());
    let out = run_cli(&["serve", "--database", "mysql://x", "--listen", &listen], cwd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve accepted a mysql:// URL");
    assert!(stderr.contains("unsupported database URL"), "{stderr}");

    // The failed commands stored nothing: only the one good enqueue is there.
    let (status, page) = server.get("/v1/jobs?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1), "{page}");
}

#[tokio::test]
async fn a_failing_job_is_retried_after_backoff_then_dead() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let id = id_of(&server.enqueue(json!({"kind": "flaky", "queue": "retry", "max_attempts": 2})).await);

    let first = server.fetch("retry", 30_000, 0).await.expect("the job is available");
    assert_eq!(id_of(&first), id);
    assert_eq!(first["attempt"], 1);
    let (status, failed) =
        server.post(&format!("/v1/jobs/{id}/fail"), json!({"lease": first["lease"], "error": "boom"})).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["state"], "retryable", "{failed}");
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["errors"].as_array().map(Vec::len), Some(1), "{failed}");

    // The backoff passes, the scheduler makes it available, a worker takes it.
    let second = server.fetch_until("retry", 30_000).await;
    assert_eq!(id_of(&second), id);
    assert_eq!(second["attempt"], 2);
    let (status, dead) =
        server.post(&format!("/v1/jobs/{id}/fail"), json!({"lease": second["lease"], "error": "boom"})).await;
    assert_eq!(status, StatusCode::OK, "{dead}");
    assert_eq!(dead["state"], "dead", "{dead}");
    assert_eq!(dead["attempt"], 2);
    let errors = dead["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{dead}");
    for (n, error) in errors.iter().enumerate() {
        assert_eq!(error["error"], "boom");
        assert_eq!(error["attempt"], n + 1);
    }

    // Dead is final: the scheduler does not bring it back.
    assert!(server.fetch("retry", 30_000, 1_000).await.is_none(), "a dead job was handed out");
    assert_eq!(server.job(id).await["state"], "dead");
}
