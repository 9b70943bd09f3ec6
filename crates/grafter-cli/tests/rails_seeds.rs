//! The seed scenarios on a real Rails 6.1 app: the fixture in
//! `clients/ruby/test/rails_app` (Debian's Rails, no bundler), served by puma,
//! its jobs run by the gem's `grafter-worker`, each a separate process started
//! from the app's `Procfile` exactly as written there, against a real
//! `grafter serve` on a SQLite file.
//!
//! - 001: `GET /?name=foo` enqueues a `NameJob` through ActiveJob; the worker is
//!   killed with SIGKILL while the job runs; a new worker finishes it as
//!   attempt 2, and the greeting is logged once.
//! - 002: `POST /exports` starts an export job; `GET /exports/:id` shows its
//!   progress moving, then the job done with the export's path and row count.
//! - 000: no worker process: the queue pushes to the app's mounted
//!   `Grafter::Rack::PushEndpoint`; a job that raises once is retried and
//!   completes, a `discard_on` job completes (never `dead`), and a
//!   `retry_on attempts: 3` job runs three times and is then `dead`.
//!
//! Ruby, Rails and puma come from Debian's packages; without them the tests
//! skip loudly, or fail under `CI`. Every Ruby process is killed when its
//! handle drops, so a failing assertion leaves none behind, and its output is
//! printed then. Every wait is a poll with a generous deadline.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{free_port, skip_or_fail, temp_dir, Server, FAST_CONFIG, PATIENCE};

/// Appended to [`FAST_CONFIG`] (inside its `[maintenance]` table): a worker
/// silent this long is dead and its jobs retry at once, so the killed
/// worker's job comes back within seconds rather than at the end of its 30 s
/// lease (`grafter-worker` has no lease option). A live worker re-registers
/// every 5 s: twice that leaves a loaded machine 5 s of slack.
const WORKER_STALE: &str = "worker_stale_ms = 10000\n";

/// How long `NameJob` sleeps: long enough to kill its worker in the middle.
const NAME_JOB_SECONDS: &str = "3";

/// How long each of `ExportJob`'s five steps takes.
const EXPORT_STEP_SECONDS: &str = "0.6";

const PUSH_SECRET: &str = "rails-seeds-push-secret-0123456789";

fn rails_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/ruby/test/rails_app")
}

/// True if Ruby with Debian's Rails and puma can run the app; otherwise says
/// why through [`skip_or_fail`].
fn ruby_and_rails_present() -> bool {
    let probe = Command::new("ruby")
        .args([
            "-e",
            r#"require "rails"; require "action_controller/railtie"; require "active_job/railtie"; require "puma""#,
        ])
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
                "Ruby cannot load Rails 6.1 and puma ({}); install ruby-rails and puma",
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
fn procfile() -> BTreeMap<String, String> {
    let path = rails_app().join("Procfile");
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
    fn start(name: &str, command: &str, env: &[(&str, String)], log: PathBuf) -> AppProcess {
        let output = File::create(&log).expect("create the process log");
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("exec {command}"))
            .current_dir(rails_app())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log file"))
            .stderr(output);
        // Nothing from the caller's environment may point the app elsewhere.
        for variable in ["GRAFTER_URL", "GRAFTER_TOKEN", "BUNDLE_GEMFILE", "RUBYOPT"] {
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

/// What every scenario needs: a temp dir, a `grafter serve` on SQLite in it,
/// and the environment the app's processes share.
struct Setup {
    server: Server,
    env: Vec<(&'static str, String)>,
    started: usize,
    /// Last: removed only after the server has printed its log from it.
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let dir = temp_dir();
        let config = dir.path().join("grafter.toml");
        std::fs::write(&config, format!("{FAST_CONFIG}{WORKER_STALE}")).expect("write config");
        let database = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let server = Server::start(dir.path(), &database, &config).await;
        let env = vec![("GRAFTER_URL", server.base.clone())];
        Setup {
            server,
            env,
            started: 0,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the Procfile's process `kind` with the shared environment and `extra`.
    fn start(&mut self, kind: &str, extra: &[(&'static str, String)]) -> AppProcess {
        let command = procfile()
            .remove(kind)
            .unwrap_or_else(|| panic!("the Procfile has no `{kind}` process"));
        self.started += 1;
        let name = format!("{kind}.{}", self.started);
        let mut env = self.env.clone();
        env.extend_from_slice(extra);
        AppProcess::start(&name, &command, &env, self.path(&format!("{name}.log")))
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
        let deadline = Instant::now() + PATIENCE;
        loop {
            process.assert_running();
            // Any answer from Rails will do: this one (no name) enqueues nothing.
            if let Ok(response) = http.get(format!("{base}/")).send().await {
                assert_eq!(
                    response.status(),
                    StatusCode::BAD_REQUEST,
                    "GET / without a name"
                );
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
    if !ruby_and_rails_present() {
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

    let mut first = setup.start("worker", &[]);
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

    let _second = setup.start("worker", &[]);
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
    if !ruby_and_rails_present() {
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
    if !ruby_and_rails_present() {
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
