//! Helpers shared by the process tests: the real `grafter` binary started on a
//! free port with a config file, its log, HTTP calls to it; PostgreSQL for the
//! tests that need it (the shared test database with a fresh schema per test,
//! or a private cluster a test may stop and start), with the skip-or-fail rule
//! when PostgreSQL is absent.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio_postgres::NoTls;

pub const GRAFTER: &str = env!("CARGO_BIN_EXE_grafter");

/// Server settings for process tests: fast maintenance, a fast deterministic
/// retry backoff, and a one-second leadership so a restarted or surviving
/// server takes over maintenance soon after a `kill -9`. Ends inside
/// `[maintenance]`'s table, so callers append further tables only.
pub const FAST_CONFIG: &str = r#"
[retry]
base_ms = 100
max_ms = 200
jitter = 0.0

[maintenance]
schedule_interval_ms = 100
rescue_interval_ms = 100
expire_interval_ms = 100
leader_ttl_ms = 1000
"#;

/// How long any poll may take before the test gives up. Generous: the machine
/// may be loaded; a passing test never comes close.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Every `GRAFTER_*` and OpenTelemetry variable the binary reads, removed so
/// the caller's environment cannot change what a test runs against.
const ENVIRONMENT: [&str; 11] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_SERVICE_NAME",
    "GRAFTER_DATABASE_URL",
    "GRAFTER_LISTEN",
    "GRAFTER_CONFIG",
    "GRAFTER_URL",
    "GRAFTER_TOKEN",
    "GRAFTER_INSECURE",
];

/// A `grafter` command with a clean environment.
pub fn grafter() -> std::process::Command {
    let mut command = std::process::Command::new(GRAFTER);
    for name in ENVIRONMENT {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A free port below the kernel's ephemeral range, for a server that is
/// killed and started again on the same address: no outgoing connection (of
/// this test or any other) can take it while the server is down.
pub fn steady_port() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_from <= 11_000 {
        return free_port(); // no room below the range: the best there is
    }
    for _ in 0..100 {
        let port = rand::random_range(10_000..ephemeral_from);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {ephemeral_from} in 100 tries");
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("grafter-process-")
        .tempdir()
        .expect("temp dir")
}

pub fn id_of(job: &Value) -> i64 {
    job["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("job without an integer id: {job}"))
}

/// Numbers the server logs, so a restart never overwrites an earlier log.
static STARTS: AtomicUsize = AtomicUsize::new(0);

/// A running `grafter serve`, killed with SIGKILL on drop. If the test is
/// panicking, the server's log is printed first.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    log: PathBuf,
    pub http: reqwest::Client,
}

impl Server {
    /// Starts `grafter serve --database <database> --config <config>` on a free
    /// port, logging to a new file in `dir`, and waits until `/livez` answers.
    pub async fn start(dir: &Path, database: &str, config: &Path) -> Server {
        // A port picked free may be taken by someone else before we bind it:
        // then try another.
        for _ in 0..5 {
            if let Some(server) = Server::try_start(dir, database, config, free_port()).await {
                return server;
            }
        }
        panic!("could not start grafter serve on a free port in 5 tries");
    }

    /// Starts it on `port` (from [`steady_port`]), e.g. again after a
    /// `kill -9`, at the address its workers know. Waits while the port is
    /// still taken.
    pub async fn start_on(dir: &Path, database: &str, config: &Path, port: u16) -> Server {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(server) = Server::try_start(dir, database, config, port).await {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "port {port} was still taken after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts it on `port` and waits until `/livez` answers; `None` if the
    /// port was taken.
    async fn try_start(dir: &Path, database: &str, config: &Path, port: u16) -> Option<Server> {
        let http = http_client();
        let log = dir.join(format!(
            "server-{}.log",
            STARTS.fetch_add(1, Ordering::SeqCst)
        ));
        let child = grafter()
            .args([
                "serve",
                "--database",
                database,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create log file"))
            .spawn()
            .expect("spawn grafter serve");
        let mut server = Server {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: http.clone(),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = server.child_mut().try_wait().expect("try_wait") {
                server.child = None;
                let log = server.log_text();
                if log.contains("cannot listen") {
                    return None;
                }
                panic!("grafter serve exited ({status}) before it was ready; its log:\n{log}");
            }
            if let Ok(response) = http.get(server.url("/livez")).send().await {
                if response.status().is_success() {
                    return Some(server);
                }
            }
            assert!(
                Instant::now() < deadline,
                "grafter serve did not answer /livez within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server is running")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// Whether this node's log says it holds the maintenance leadership now
    /// (its last leadership change was to leading).
    pub fn leads_maintenance(&self) -> bool {
        let log = self.log_text();
        log.lines()
            .rev()
            .find(|line| line.contains("maintenance leadership changed"))
            .is_some_and(|line| line.contains("leads=true"))
    }

    /// SIGKILL, as a crash or an OOM killer would: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 grafter serve");
            child.wait().expect("reap grafter serve");
        }
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
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

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request to grafter");
        let status = response.status();
        let text = response.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"))
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    /// Enqueues one job, which must be created.
    pub async fn enqueue(&self, job: Value) -> Value {
        let (status, body) = self.post("/v1/jobs", job).await;
        assert_eq!(status, StatusCode::CREATED, "enqueue: {body}");
        body
    }

    pub async fn job(&self, id: i64) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET job {id}: {body}");
        body
    }

    /// One fetch of at most one job from `queue`.
    pub async fn fetch(&self, queue: &str, lease_ms: u64, wait_ms: u64) -> Option<Value> {
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
    pub async fn fetch_until(&self, queue: &str, lease_ms: u64) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(job) = self.fetch(queue, lease_ms, 500).await {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "no job came back on queue {queue} within {PATIENCE:?}"
            );
        }
    }

    /// Every job on `queue`, whole, following `next_cursor` page by page. A
    /// list shortens large parts of a job (`cut`: a long error history comes
    /// as its last error alone); such a job is read again on its own.
    pub async fn all_jobs(&self, queue: &str, page: usize) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/jobs?queue={queue}&limit={page}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, body) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "list: {body}");
            jobs.extend(
                body["jobs"]
                    .as_array()
                    .expect("a page has jobs")
                    .iter()
                    .cloned(),
            );
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
            assert!(jobs.len() <= 100_000, "pagination does not end");
        }
        for job in &mut jobs {
            if job.get("cut").is_some() {
                let (status, whole) = self.get(&format!("/v1/jobs/{}", job["id"])).await;
                assert_eq!(status, StatusCode::OK, "get: {whole}");
                *job = whole;
            }
        }
        jobs
    }

    /// The counts per state of one queue from `GET /v1/queues`.
    pub async fn queue_counts(&self, queue: &str) -> BTreeMap<String, u64> {
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
            eprintln!(
                "---- log of grafter serve at {} ({}) ----\n{}",
                self.base,
                self.log.display(),
                self.log_text()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a long-poll on `node` for `queue`, waits until it is surely waiting,
/// enqueues on `other` (the same server or another node), and checks the poll
/// was woken with that job, leased, before its own timeout.
pub async fn enqueue_wakes_long_poll(node: &Server, other: &Server, queue: &str) {
    let wait = Duration::from_secs(20);
    let request = node.http.post(node.url("/v1/fetch")).json(&json!({
        "queues": [queue], "max": 1, "wait_ms": wait.as_millis() as u64, "lease_ms": 30_000, "worker_id": "sleeper"
    }));
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let response = request.send().await.expect("long-poll fetch");
        let status = response.status();
        (status, response.json::<Value>().await.expect("fetch JSON"))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the fetch on an empty queue answered before any job was enqueued"
    );

    let id = id_of(&other.enqueue(json!({"kind": "ping", "queue": queue})).await);
    // The poll answers by `wait` in any case; this only keeps a hang from
    // stalling the suite.
    let (status, body) = tokio::time::timeout(wait + Duration::from_secs(10), poll)
        .await
        .expect("the long-poll never answered")
        .expect("the long-poll task panicked");
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let jobs = body["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "the long-poll ended without the job: {body}");
    assert_eq!(id_of(&jobs[0]), id);
    assert_eq!(jobs[0]["state"], "running");
    assert!(jobs[0]["lease"].is_string());
    // Not a speed check: anywhere near `wait` would mean the poll timed out and
    // found the job by looking again, not that the enqueue woke it.
    assert!(
        elapsed < wait / 2,
        "the long-poll was not woken by the enqueue on the other node (took {elapsed:?})"
    );
}

/// Runs a CLI command (not `serve`) to completion.
pub async fn run_cli(args: &[&str], cwd: &Path) -> std::process::Output {
    let mut command = tokio::process::Command::from(grafter());
    command.args(args).current_dir(cwd).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("grafter {args:?} did not finish within 60 s"))
        .expect("run grafter")
}

/// A command's stdout and stderr together, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reports that a test cannot run here (no PostgreSQL, no interpreter for a
/// snippet, …): under CI (`CI` set) that fails the test; elsewhere it says so
/// loudly and the test returns early.
pub fn skip_or_fail(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}; CI is set, so this test fails instead of skipping"
    );
    // Straight to the process's stderr: libtest hides `eprintln!` of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "\n********************************************************************\n\
         SKIPPING: {why}.\n\
         This test returns early and passes vacuously (.ci/run installs what it needs).\n\
         ********************************************************************\n"
    );
}

// ---- PostgreSQL ----

/// Writes `dir/grafter.toml` for servers on PostgreSQL: [`FAST_CONFIG`], a
/// pool of 8, and the tables in `schema` (`None`: the connection's default).
pub fn write_postgres_config(dir: &Path, schema: Option<&str>) -> PathBuf {
    let mut text = format!("{FAST_CONFIG}\n[postgres]\npool_size = 8\n");
    if let Some(schema) = schema {
        text.push_str(&format!("schema = \"{schema}\"\n"));
    }
    let path = dir.join("grafter.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Connects to `url`, with the driver's connection running in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let connecting =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, NoTls));
    match connecting.await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            Ok(client)
        }
        Ok(Err(e)) => Err(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )),
        Err(_) => Err("timed out after 5 s".to_owned()),
    }
}

/// The shared test database (`GRAFTER_TEST_POSTGRES_URL`, default the local
/// server's `test` database), or `None` after [`skip_or_fail`] when it does not answer.
pub async fn shared_postgres() -> Option<String> {
    let url = std::env::var("GRAFTER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    match connect(&url).await {
        Ok(_) => Some(url),
        Err(why) => {
            skip_or_fail(&format!(
                "PostgreSQL not reachable at {url} ({why}); start it or set GRAFTER_TEST_POSTGRES_URL"
            ));
            None
        }
    }
}

/// What a test on the shared test database needs: its URL, a fresh schema, a
/// directory for the servers' logs, and their config for that schema. Dropping
/// it drops the schema: get it before the servers start, so that they are
/// gone first.
pub struct SchemaSetup {
    pub url: String,
    pub schema: Schema,
    pub dir: TempDir,
    pub config: PathBuf,
}

/// A [`SchemaSetup`], or `None` after [`skip_or_fail`] when PostgreSQL does
/// not answer.
pub async fn schema_setup() -> Option<SchemaSetup> {
    let url = shared_postgres().await?;
    let schema = Schema::fresh(&url);
    let dir = temp_dir();
    let config = write_postgres_config(dir.path(), Some(&schema.name));
    Some(SchemaSetup {
        url,
        schema,
        dir,
        config,
    })
}

/// A schema name no other test, run or process uses, dropped (with whatever
/// the test's servers created in it) when this is dropped, pass or fail.
pub struct Schema {
    url: String,
    pub name: String,
}

impl Schema {
    pub fn fresh(url: &str) -> Schema {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "grafter_cluster_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        Schema {
            url: url.to_owned(),
            name,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Its own thread and runtime: `Drop` cannot await, and this may run
        // inside (or after) the test's runtime.
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                connect(&url)
                    .await?
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test schema {}: {e}", self.name);
        }
    }
}

/// A PostgreSQL cluster of the test's own, in a temp directory, on a free
/// port, that the test may stop and start (the machine's shared server must
/// never be restarted by a test). Stopped and removed on drop.
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    pub port: u16,
    /// As root, PostgreSQL refuses to run: its commands run as `postgres`.
    as_postgres: bool,
    _dir: TempDir,
}

impl PrivateCluster {
    /// Creates and starts a cluster, or returns `None` after [`skip_or_fail`]
    /// when PostgreSQL's server programs are not installed.
    pub fn start() -> Option<PrivateCluster> {
        let Some(bin) = postgres_bin() else {
            skip_or_fail("PostgreSQL's server programs (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin");
            return None;
        };
        let as_postgres = is_root();
        let mut dir = tempfile::Builder::new();
        dir.prefix("grafter-pg-");
        // `postgres` must reach the directory: /tmp is open to all, while
        // root's own $TMPDIR may not be.
        let dir = if as_postgres {
            dir.tempdir_in("/tmp")
        } else {
            dir.tempdir()
        }
        .expect("temp dir");
        if as_postgres {
            // initdb and the server run as `postgres`, which must own the directory.
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "chown postgres {} failed",
                dir.path().display()
            );
        }
        let mut cluster = PrivateCluster {
            data: dir.path().join("data"),
            socket_dir: dir.path().to_owned(),
            log: dir.path().join("postgres.log"),
            bin,
            port: 0,
            as_postgres,
            _dir: dir,
        };
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&cluster.data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A port picked free may be taken before the server binds it: try another.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.try_start() {
                return Some(cluster);
            }
        }
        panic!(
            "could not start a private PostgreSQL on a free port; its log:\n{}",
            cluster.log_text()
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the stopped cluster again, on the same port.
    pub fn restart(&self) {
        assert!(
            self.try_start(),
            "the private PostgreSQL did not start again; its log:\n{}",
            self.log_text()
        );
    }

    /// Stops it at once, as a crash would (`pg_ctl stop -m immediate`): every
    /// connection is cut and the next start recovers from the log.
    pub fn stop(&self) {
        let out = self
            .pg_ctl(&["stop", "-m", "immediate"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn try_start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.socket_dir.display()
        );
        let mut start = self.pg_ctl(&["start"]);
        start.arg("-l").arg(&self.log).arg("-o").arg(options);
        start.output().expect("run pg_ctl start").status.success()
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30"])
            .args(args);
        command
    }

    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            std::process::Command::new(path)
        };
        command
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .env_remove("PGPORT");
        command
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- log of the private PostgreSQL ----\n{}",
                self.log_text()
            );
        }
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]).output();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `pg_ctl`.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The command that runs this test binary again as a worker process: only
/// the ignored test `name` (which does nothing outside such a process), its
/// stdin piped so the process sees the test that started it end (see
/// [`run_worker_process`]). Callers add its environment and outputs.
pub fn worker_process_command(name: &str) -> std::process::Command {
    let mut command =
        std::process::Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([name, "--exact", "--ignored", "--nocapture"])
        .stdin(Stdio::piped());
    command
}

/// The body of a worker process started with [`worker_process_command`]:
/// runs the worker `build` makes on a client of `url` until the process is
/// killed or the test that started it is gone (its stdin closes), then exits.
pub fn run_worker_process(url: &str, build: impl FnOnce(&grafter::Client) -> grafter::Worker) -> ! {
    use std::io::Read;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = grafter::Client::http(url).expect("HTTP client");
        let _running = build(&client).start();
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0; 1])).await;
    });
    std::process::exit(0);
}
