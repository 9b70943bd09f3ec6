//! The seed scenarios on a real Rails 6.1 app: the fixture in
//! `clients/ruby/test/rails_app` (Debian's Rails, no bundler), served by puma,
//! its jobs run by the gem's `grafter-worker`, each a separate process started
//! from the app's `Procfile` exactly as written there, against a real
//! `grafter serve` on a SQLite file (for 003, on PostgreSQL).
//!
//! - 001: `GET /?name=foo` enqueues a `NameJob` through ActiveJob; the worker
//!   (with a short lease) is killed with SIGKILL while the job runs; when the
//!   lease runs out a new worker finishes it as attempt 2, and the greeting is
//!   logged once.
//! - 002: `POST /exports` starts an export job; `GET /exports/:id` shows its
//!   progress moving, then the job done with its final progress, the export's
//!   path and row count.
//! - 000: no worker process: the queue pushes to the app's mounted
//!   `Grafter::Rack::PushEndpoint`; a job that raises once is retried and
//!   completes, a `discard_on` job completes (never `dead`), and a
//!   `retry_on attempts: 3` job runs three times and is then `dead`.
//! - 003: a second app, `clients/ruby/test/rails_pg_app`, on ActiveRecord and
//!   PostgreSQL, enqueues through `Grafter::SqlEnqueuer` inside its own
//!   transaction, against a `grafter serve` on the same database (a fresh
//!   schema, dropped at the end): a rolled-back signup leaves no job and runs
//!   nothing; a committed one wakes the worker's long-poll and runs.
//!
//! Ruby, Rails, puma (and for 003 ruby-pg and PostgreSQL) come from Debian's
//! packages; without them the tests skip loudly, or fail under `CI`. Every
//! Ruby process is killed when its handle drops, so a failing assertion
//! leaves none behind, and its output is printed then. Every wait is a poll
//! with a generous deadline.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{
    free_port, schema_setup, skip_or_fail, temp_dir, Schema, Server, FAST_CONFIG, PATIENCE,
};

/// The lease the killed worker's job is leased with (`grafter-worker
/// --lease-ms`, here through `GRAFTER_LEASE_MS`): the job comes back when it
/// runs out, the product's normal path after a crash, within seconds rather
/// than the default 30. Heartbeats renew it every third, so the job's 3 s of
/// sleep also prove that a lease shorter than the job is kept alive.
const SHORT_LEASE_MS: &str = "1500";

/// How long `NameJob` sleeps: long enough to kill its worker in the middle.
const NAME_JOB_SECONDS: &str = "3";

/// How long each of `ExportJob`'s five steps takes.
const EXPORT_STEP_SECONDS: &str = "0.6";

const PUSH_SECRET: &str = "rails-seeds-push-secret-0123456789";

/// A fixture app: its directory, and a request that Rails (not only puma)
/// answers with a known status without enqueueing anything.
struct App {
    dir: PathBuf,
    probe: (&'static str, StatusCode),
}

/// The app of seeds 001, 002 and 000 (no database).
fn rails_app() -> App {
    App {
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/ruby/test/rails_app"),
        // No name: a 400, and nothing enqueued.
        probe: ("/", StatusCode::BAD_REQUEST),
    }
}

/// The app of seed 003, on ActiveRecord and PostgreSQL.
fn rails_pg_app() -> App {
    App {
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/ruby/test/rails_pg_app"),
        // Only POST is routed.
        probe: ("/signups", StatusCode::NOT_FOUND),
    }
}

const RAILS: &str = r#"require "rails"; require "action_controller/railtie"; require "active_job/railtie"; require "puma""#;

/// True if Ruby with Debian's Rails and puma (and whatever `also` requires)
/// can run the app; otherwise says why through [`skip_or_fail`].
fn ruby_and_rails_present(also: &str) -> bool {
    let probe = Command::new("ruby")
        .args(["-e", &format!("{RAILS}; {also}")])
        .stdin(Stdio::null())
        .output();
    match probe {
        Err(e) => {
            skip_or_fail(&format!(
                "ruby not found ({e}); install ruby, ruby-rails and puma"
            ));
            false
        }
        Ok(out) if !out.status.success() => {
            skip_or_fail(&format!(
                "Ruby cannot load Rails 6.1 and puma or what the app needs ({}); install ruby-rails, puma and ruby-pg",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            false
        }
        Ok(_) => {
            let puma = Command::new("puma")
                .arg("--version")
                .stdin(Stdio::null())
                .output();
            if puma.is_ok_and(|out| out.status.success()) {
                true
            } else {
                skip_or_fail("the puma command is not installed (Debian package puma)");
                false
            }
        }
    }
}

/// The app's `Procfile`: process type → command.
fn procfile(app: &Path) -> BTreeMap<String, String> {
    let path = app.join("Procfile");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|line| {
            let (name, command) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("a Procfile line without `name:`: {line}"));
            (name.trim().to_owned(), command.trim().to_owned())
        })
        .collect()
}

/// One process of the app (puma or a worker), started as its Procfile line
/// says, in the app's directory. SIGKILLed on drop; its output is printed
/// if the test is failing.
struct AppProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl AppProcess {
    /// `sh -c "exec <command>"`: the shell expands `${PORT:-3000}` as a
    /// Procfile runner would, then becomes the Ruby process, so the pid
    /// killed is Ruby's own.
    fn start(
        app: &Path,
        name: &str,
        command: &str,
        env: &[(&str, String)],
        log: PathBuf,
    ) -> AppProcess {
        let output = File::create(&log).expect("create the process log");
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("exec {command}"))
            .current_dir(app)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log file"))
            .stderr(output);
        // Nothing from the caller's environment may point the app elsewhere.
        for variable in [
            "GRAFTER_URL",
            "GRAFTER_TOKEN",
            "DATABASE_URL",
            "BUNDLE_GEMFILE",
            "RUBYOPT",
        ] {
            sh.env_remove(variable);
        }
        sh.env("RAILS_ENV", "production");
        for (key, value) in env {
            sh.env(key, value);
        }
        let child = sh
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command}): {e}"));
        AppProcess {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// Fails the test, with the process's output, if it has exited.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("the process was started");
        if let Some(status) = child.try_wait().expect("try_wait") {
            self.child = None;
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.output()
            );
        }
    }

    /// SIGKILL, as a crash or an OOM killer would.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- output of {} ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.output()
            );
        }
        self.kill9();
    }
}

/// What every scenario needs: the app, a temp dir, a `grafter serve`, and
/// the environment the app's processes share.
struct Setup {
    app: App,
    server: Server,
    env: Vec<(&'static str, String)>,
    started: usize,
    /// The PostgreSQL database's URL and the schema of Grafter's and the app's tables.
    postgres: Option<(String, String)>,
    /// After the server: a PostgreSQL schema is dropped once it has exited.
    _schema: Option<Schema>,
    /// Last: removed only after the server has printed its log from it.
    dir: tempfile::TempDir,
}

impl Setup {
    /// The database-less app and a server on a SQLite file, which may push
    /// to the app on loopback.
    async fn new() -> Setup {
        let dir = temp_dir();
        let config = dir.path().join("grafter.toml");
        let allow_loopback_pushes = "\n[push]\nallow_private = true\n";
        std::fs::write(&config, format!("{FAST_CONFIG}{allow_loopback_pushes}"))
            .expect("write config");
        let database = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let server = Server::start(dir.path(), &database, &config).await;
        let env = vec![("GRAFTER_URL", server.base.clone())];
        Setup {
            app: rails_app(),
            server,
            env,
            started: 0,
            postgres: None,
            _schema: None,
            dir,
        }
    }

    /// The PostgreSQL app and a server on a fresh schema of the test
    /// database, the app's tables in the same schema; `None` (after
    /// [`skip_or_fail`]) when PostgreSQL does not answer.
    async fn on_postgres() -> Option<Setup> {
        let pg = schema_setup().await?;
        let server = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
        let schema = pg.schema.name.clone();
        common::connect(&pg.url)
            .await
            .expect("connect to PostgreSQL")
            .batch_execute(&format!(
                "CREATE TABLE \"{schema}\".signups (id bigserial PRIMARY KEY, email text NOT NULL)"
            ))
            .await
            .expect("create the app's table");
        let separator = if pg.url.contains('?') { '&' } else { '?' };
        let env = vec![
            ("GRAFTER_URL", server.base.clone()),
            (
                "DATABASE_URL",
                format!("{}{separator}schema_search_path={schema}", pg.url),
            ),
            ("GRAFTER_SCHEMA", schema.clone()),
        ];
        Some(Setup {
            app: rails_pg_app(),
            server,
            env,
            started: 0,
            postgres: Some((pg.url.clone(), schema)),
            _schema: Some(pg.schema),
            dir: pg.dir,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the Procfile's process `kind` with the shared environment and `extra`.
    fn start(&mut self, kind: &str, extra: &[(&'static str, String)]) -> AppProcess {
        let command = procfile(&self.app.dir)
            .remove(kind)
            .unwrap_or_else(|| panic!("the Procfile has no `{kind}` process"));
        self.started += 1;
        let name = format!("{kind}.{}", self.started);
        let mut env = self.env.clone();
        env.extend_from_slice(extra);
        AppProcess::start(
            &self.app.dir,
            &name,
            &command,
            &env,
            self.path(&format!("{name}.log")),
        )
    }

    /// Starts the `web` process on a free port, with `extra` environment, and
    /// waits until Rails answers.
    async fn start_web(&mut self, extra: &[(&'static str, String)]) -> Web {
        let port = free_port();
        let mut env = vec![("PORT", port.to_string())];
        env.extend_from_slice(extra);
        let mut process = self.start("web", &env);
        let base = format!("http://127.0.0.1:{port}");
        let http = common::http_client();
        let (probe, status) = self.app.probe;
        let deadline = Instant::now() + PATIENCE;
        loop {
            process.assert_running();
            if let Ok(response) = http.get(format!("{base}{probe}")).send().await {
                assert_eq!(response.status(), status, "GET {probe}");
                return Web {
                    base,
                    http,
                    _process: process,
                };
            }
            assert!(
                Instant::now() < deadline,
                "puma did not answer within {PATIENCE:?}; its output:\n{}",
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The app served by puma.
struct Web {
    base: String,
    http: reqwest::Client,
    _process: AppProcess,
}

impl Web {
    async fn call(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request to the Rails app");
        let status = response.status();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the app answered {status} with no JSON ({e}): {text}"));
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        self.call(self.http.post(format!("{}{path}", self.base)))
            .await
    }
}

fn is_finished(job: &Value) -> bool {
    ["completed", "dead", "cancelled", "expired"].contains(&job["state"].as_str().unwrap_or(""))
}

/// Polls a job until it is finished.
async fn wait_finished(server: &Server, id: i64, patience: Duration) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let job = server.job(id).await;
        if is_finished(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not finish within {patience:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids the app answered an enqueue with: ActiveJob's own and Grafter's.
fn grafter_id_of(answer: &Value) -> i64 {
    assert!(
        answer["job_id"].as_str().is_some_and(|id| !id.is_empty()),
        "no ActiveJob id in {answer}"
    );
    answer["grafter_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no Grafter id (provider_job_id) in {answer}"))
}

fn errors_of(job: &Value) -> Vec<String> {
    job["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("job without errors: {job}"))
        .iter()
        .map(|error| error.to_string())
        .collect()
}

// ---- 001: kill -9 of the worker mid-job ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_a_job_whose_worker_is_killed_mid_job_completes_as_attempt_2() {
    if !ruby_and_rails_present("") {
        return;
    }
    let mut setup = Setup::new().await;
    let log = setup.path("name_job.log");
    setup.env.push(("NAME_JOB_LOG", log.display().to_string()));
    setup
        .env
        .push(("NAME_JOB_SECONDS", NAME_JOB_SECONDS.to_owned()));
    let web = setup.start_web(&[]).await;

    let (status, answer) = web.get("/?name=foo").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = grafter_id_of(&answer);
    let job = setup.server.job(id).await;
    assert_eq!(job["kind"], "NameJob", "{job}");
    assert_eq!(job["queue"], "default", "{job}");
    assert_eq!(job["state"], "available", "no worker runs yet: {job}");

    let lease = [("GRAFTER_LEASE_MS", SHORT_LEASE_MS.to_owned())];
    let mut first = setup.start("worker", &lease);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    while !read_log().contains("Started foo") {
        first.assert_running();
        assert!(
            Instant::now() < deadline,
            "the worker did not start NameJob within {PATIENCE:?}; its log: {}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running = setup.server.job(id).await;
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(running["attempt"], 1, "{running}");
    first.kill9();

    let _second = setup.start("worker", &lease);
    let job = wait_finished(&setup.server, id, 2 * PATIENCE).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        job["attempt"], 2,
        "the killed attempt counts, the second completes: {job}"
    );
    assert_eq!(errors_of(&job).len(), 1, "one failed attempt: {job}");

    let lines = read_log();
    let greetings: Vec<&str> = lines.lines().filter(|l| l.contains("Hello, foo")).collect();
    assert_eq!(
        greetings.len(),
        1,
        "the greeting is logged once, by the second attempt:\n{lines}"
    );
    assert!(greetings[0].contains("attempt 2"), "{lines}");
    assert!(
        lines.contains("Started foo") && lines.matches("Started foo").count() == 2,
        "both attempts started:\n{lines}"
    );
}

// ---- 002: an export's progress through the app's JSON endpoint ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_the_exports_page_shows_progress_moving_then_the_result() {
    if !ruby_and_rails_present("") {
        return;
    }
    let mut setup = Setup::new().await;
    let exports = setup.path("exports");
    setup
        .env
        .push(("EXPORT_DIR", exports.display().to_string()));
    setup
        .env
        .push(("EXPORT_STEP_SECONDS", EXPORT_STEP_SECONDS.to_owned()));
    let web = setup.start_web(&[]).await;
    let mut worker = setup.start("worker", &[]);

    let (status, answer) = web.post("/exports?rows=500").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no export id in {answer}"));
    assert_eq!(answer["url"], format!("/exports/{id}"));

    // Polled as the seed's page polls, through the app, never Grafter directly.
    let mut fractions: Vec<f64> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let page = loop {
        let (status, page) = web.get(&format!("/exports/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        if page["done"] == true {
            break page;
        }
        if let Some(fraction) = page["progress"]["fraction"].as_f64() {
            assert_eq!(
                page["state"], "running",
                "progress on a job not running: {page}"
            );
            if fractions.last() != Some(&fraction) {
                fractions.push(fraction);
            }
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "the export did not finish within {PATIENCE:?}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        fractions.windows(2).all(|pair| pair[0] < pair[1]),
        "progress only moves forward: {fractions:?}"
    );
    let partial = fractions.iter().filter(|f| **f > 0.0 && **f < 1.0).count();
    assert!(
        partial >= 2,
        "the page showed progress moving (at least two steps short of done): {fractions:?}"
    );

    assert_eq!(page["state"], "completed", "{page}");
    assert_eq!(
        page["progress"],
        json!({"fraction": 1.0, "message": "500 of 500 rows"}),
        "the last progress, reported just before the job returned, is kept: {page}"
    );
    assert_eq!(page["result"]["rows"], 500, "{page}");
    let path = page["result"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no export path in the result: {page}"));
    assert!(
        Path::new(path).starts_with(&exports),
        "the export is where EXPORT_DIR says: {path}"
    );
    let csv = std::fs::read_to_string(path).expect("read the export");
    assert_eq!(csv.lines().count(), 501, "a header and 500 rows");
    assert_eq!(csv.lines().last(), Some("500,250000"));

    let (status, missing) = web.get("/exports/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}

// ---- 000: Hackler mode, no worker process ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_pushed_jobs_retry_discard_and_exhaust_as_rails_documents() {
    if !ruby_and_rails_present("") {
        return;
    }
    let mut setup = Setup::new().await;
    let web = setup
        .start_web(&[("GRAFTER_PUSH_SECRET", PUSH_SECRET.to_owned())])
        .await;

    let (status, queue) = setup
        .server
        .send(
            setup
                .server
                .http
                .put(setup.server.url("/v1/queues/pushed"))
                .json(&json!({
                    "push": {"url": format!("{}/grafter/jobs", web.base), "secret": PUSH_SECRET,
                             "timeout_ms": 10_000, "concurrency": 2}
                })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "make `pushed` a push queue: {queue}"
    );

    let mut ids = BTreeMap::new();
    for job in ["flaky", "discarded", "exhausted"] {
        let (status, answer) = web.post(&format!("/pushed/{job}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}: {answer}");
        ids.insert(job, grafter_id_of(&answer));
    }

    // Raised once, retried by Grafter's backoff, completed.
    let flaky = wait_finished(&setup.server, ids["flaky"], PATIENCE).await;
    assert_eq!(flaky["kind"], "FlakyJob", "{flaky}");
    assert_eq!(flaky["state"], "completed", "{flaky}");
    assert_eq!(flaky["attempt"], 2, "{flaky}");
    let errors = errors_of(&flaky);
    assert_eq!(errors.len(), 1, "{flaky}");
    assert!(
        errors[0].contains("FirstAttemptError") && errors[0].contains("fails on purpose"),
        "the error names the exception and its message: {flaky}"
    );

    // discard_on: done, once, never dead.
    let discarded = wait_finished(&setup.server, ids["discarded"], PATIENCE).await;
    assert_eq!(discarded["state"], "completed", "{discarded}");
    assert_eq!(discarded["attempt"], 1, "{discarded}");
    assert!(
        discarded["result"]
            .to_string()
            .to_lowercase()
            .contains("discard"),
        "the result says the job was discarded: {discarded}"
    );

    // retry_on attempts: 3 — three executions in all, then the error is final.
    let exhausted = wait_finished(&setup.server, ids["exhausted"], PATIENCE).await;
    assert_eq!(exhausted["state"], "dead", "{exhausted}");
    assert_eq!(exhausted["attempt"], 3, "{exhausted}");
    let errors = errors_of(&exhausted);
    assert_eq!(errors.len(), 3, "{exhausted}");
    assert!(
        errors.iter().all(|e| e.contains("StillBrokenError")),
        "{exhausted}"
    );

    // No worker took part: every attempt came through the push endpoint.
    let (status, workers) = setup.server.get("/v1/workers").await;
    assert_eq!(status, StatusCode::OK, "{workers}");
    assert_eq!(
        workers["workers"],
        json!([]),
        "no worker process ran: {workers}"
    );

    // A request not signed with the secret runs nothing.
    let forged = json!({"id": ids["flaky"], "kind": "FlakyJob", "queue": "pushed", "args": {},
                        "attempt": 3, "max_attempts": 25, "enqueued_at": "2026-01-01T00:00:00Z"});
    let response = web
        .http
        .post(format!("{}/grafter/jobs", web.base))
        .header("Grafter-Signature", "t=1,v1=00")
        .json(&forged)
        .send()
        .await
        .expect("request to the push endpoint");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(setup.server.job(ids["flaky"]).await["attempt"], 2);
}

// ---- 003: enqueue inside the app's PostgreSQL transaction ----

/// The worker's long-poll in 003: a job whose commit did not wake the worker
/// would wait for its next fetch, up to this long.
const LONG_POLL_MS: &str = "20000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_a_rolled_back_enqueue_never_exists_and_a_committed_one_runs() {
    if !ruby_and_rails_present(r#"require "active_record/railtie"; require "pg""#) {
        return;
    }
    let Some(mut setup) = Setup::on_postgres().await else {
        return;
    };
    let welcomes = setup.path("welcome.log");
    setup
        .env
        .push(("WELCOME_LOG", welcomes.display().to_string()));
    let web = setup.start_web(&[]).await;
    let mut worker = setup.start("worker", &[("GRAFTER_WAIT_MS", LONG_POLL_MS.to_owned())]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        worker.assert_running();
        let (status, workers) = setup.server.get("/v1/workers").await;
        assert_eq!(status, StatusCode::OK, "{workers}");
        if workers["workers"].as_array().is_some_and(|w| !w.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not register within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Registered, then it fetches: let its long-poll begin.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Enqueued, then the transaction fails: neither the signup nor the job.
    let (status, rejected) = web.post("/signups?email=gone@example.com&reject=1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{rejected}");
    let gone = rejected["grafter_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("the enqueue inside the transaction gave no id: {rejected}"));
    let (status, body) = setup.server.get(&format!("/v1/jobs/{gone}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the rolled-back job exists: {body}"
    );

    // Committed: the commit wakes the worker, which runs the job.
    let (status, created) = web.post("/signups?email=ada@example.com").await;
    let committed = Instant::now();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["grafter_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no Grafter id in {created}"));
    let job = wait_finished(&setup.server, id, PATIENCE).await;
    let took = committed.elapsed();
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["kind"], "WelcomeJob", "{job}");
    assert_eq!(job["attempt"], 1, "{job}");
    assert_eq!(
        job["result"],
        json!({"email": "ada@example.com"}),
        "the worker read the committed signup: {job}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the commit should wake the worker's {LONG_POLL_MS} ms long-poll; the job finished {took:?} after it"
    );

    let (status, listed) = setup.server.get("/v1/jobs?kind=WelcomeJob").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let ids: Vec<i64> = listed["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {listed}"))
        .iter()
        .map(common::id_of)
        .collect();
    assert_eq!(ids, vec![id], "only the committed signup's job exists");
    let (url, schema) = setup.postgres.clone().expect("on PostgreSQL");
    let emails: Vec<String> = common::connect(&url)
        .await
        .expect("connect to PostgreSQL")
        .query(&format!("SELECT email FROM \"{schema}\".signups"), &[])
        .await
        .expect("read the signups")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        emails,
        vec!["ada@example.com"],
        "the rolled-back signup went with its job"
    );
    let log = std::fs::read_to_string(&welcomes).unwrap_or_default();
    assert_eq!(
        log,
        format!("Welcome ada@example.com (Grafter job {id})\n"),
        "only the committed signup was welcomed, once"
    );
    worker.assert_running();
}
