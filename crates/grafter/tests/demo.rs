//! The seed's demo, automated with the real `name_demo` example processes:
//! kill -9 mid-job loses nothing, a killed worker's job finishes elsewhere as
//! attempt 2, and a worker stopped with SIGTERM hands its job back uncounted.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(40);

/// The example binary `cargo test` built beside this test.
fn demo_binary() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let path = deps.parent().unwrap().join("examples").join("name_demo");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "grafter", "--example", "name_demo"])
            .status()
            .expect("run cargo to build the example");
        assert!(status.success(), "building name_demo failed");
    }
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Demo {
    child: Child,
    log: PathBuf,
}

impl Demo {
    fn start(dir: &Path, mode: &str, env: &[(&str, String)], name: &str) -> Demo {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(demo_binary());
        command
            .arg(mode)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .env("RUST_LOG", "info");
        for var in [
            "GRAFTER_URL",
            "GRAFTER_TOKEN",
            "GRAFTER_LISTEN",
            "GRAFTER_DATABASE_URL",
            "PORT",
        ] {
            command.env_remove(var);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        Demo {
            child: command.spawn().expect("start name_demo"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Polls `url` until it answers JSON satisfying `done`.
fn poll(url: &str, what: &str, done: impl Fn(&Value) -> bool, logs: &[&Demo]) -> Value {
    let deadline = Instant::now() + PATIENCE;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(response) = http().get(url).send() {
            if let Ok(body) = response.json::<Value>() {
                if done(&body) {
                    return body;
                }
                last = body;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs: Vec<String> = logs.iter().map(|d| d.log()).collect();
    panic!(
        "timed out waiting for {what} at {url}; last answer {last}\nlogs:\n{}",
        logs.join("\n---\n")
    );
}

/// Settings for a `web` process on its own database in `dir`.
fn web_env(dir: &Path, web_port: u16, api_port: u16) -> [(&'static str, String); 3] {
    [
        ("PORT", web_port.to_string()),
        ("GRAFTER_LISTEN", format!("127.0.0.1:{api_port}")),
        (
            "GRAFTER_DATABASE_URL",
            format!("sqlite://{}", dir.join("demo.db").display()),
        ),
    ]
}

fn enqueue_name(web_port: u16, name: &str, logs: &[&Demo]) -> i64 {
    let url = format!("http://127.0.0.1:{web_port}/?name={name}");
    let answer = poll(
        &url,
        "the web app to enqueue",
        |b| b["job_id"].is_i64(),
        logs,
    );
    answer["job_id"].as_i64().unwrap()
}

#[test]
fn seed_scenario_kill_9_mid_job_then_restart_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (web, api) = (free_port(), free_port());
    let env = [
        ("PORT", web.to_string()),
        ("GRAFTER_LISTEN", format!("127.0.0.1:{api}")),
        (
            "GRAFTER_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("demo.db").display()),
        ),
        ("NAME_JOB_SECONDS", "3".to_owned()),
    ];
    let mut first = Demo::start(dir.path(), "all", &env, "first");
    let id = enqueue_name(web, "foo", &[&first]);
    let job_url = format!("http://127.0.0.1:{api}/v1/jobs/{id}");
    poll(
        &job_url,
        "the job to run",
        |j| j["state"] == "running",
        &[&first],
    );
    first.kill_9();

    let second = Demo::start(dir.path(), "all", &env, "second");
    let done = poll(
        &job_url,
        "the job to complete",
        |j| j["state"] == "completed",
        &[&first, &second],
    );
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"]["greeting"], "Hello, foo");
    assert_eq!(done["errors"][0]["error"], "lease expired");
    assert!(second.log().contains("Hello, foo"), "{}", second.log());
    assert!(
        !first.log().contains("Hello, foo"),
        "the first run was killed before it finished"
    );
}

#[test]
fn a_killed_worker_process_loses_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let (web_port, api) = (free_port(), free_port());
    let api_url = format!("http://127.0.0.1:{api}");
    let web = Demo::start(
        dir.path(),
        "web",
        &web_env(dir.path(), web_port, api),
        "web",
    );
    let worker_env = |seconds: &str| {
        [
            ("GRAFTER_URL", api_url.clone()),
            ("NAME_JOB_SECONDS", seconds.to_owned()),
        ]
    };
    let mut doomed = Demo::start(dir.path(), "worker", &worker_env("60"), "doomed");
    let id = enqueue_name(web_port, "bar", &[&web, &doomed]);
    let job_url = format!("{api_url}/v1/jobs/{id}");
    let running = poll(
        &job_url,
        "the job to run",
        |j| j["state"] == "running",
        &[&web, &doomed],
    );
    doomed.kill_9();

    let rescuer = Demo::start(dir.path(), "worker", &worker_env("1"), "rescuer");
    let done = poll(
        &job_url,
        "the job to complete",
        |j| j["state"] == "completed",
        &[&web, &rescuer],
    );
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"]["greeting"], "Hello, bar");
    assert_eq!(done["errors"][0]["error"], "lease expired");
    assert_ne!(
        done["worker_id"], running["worker_id"],
        "finished by the new worker"
    );
}

#[test]
fn sigterm_hands_the_running_job_back_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let (web_port, api) = (free_port(), free_port());
    let api_url = format!("http://127.0.0.1:{api}");
    let web = Demo::start(
        dir.path(),
        "web",
        &web_env(dir.path(), web_port, api),
        "web",
    );
    let mut leaving = Demo::start(
        dir.path(),
        "worker",
        &[
            ("GRAFTER_URL", api_url.clone()),
            ("NAME_JOB_SECONDS", "60".to_owned()),
            ("SHUTDOWN_TIMEOUT_SECONDS", "1".to_owned()),
        ],
        "leaving",
    );
    let id = enqueue_name(web_port, "baz", &[&web, &leaving]);
    let job_url = format!("{api_url}/v1/jobs/{id}");
    poll(
        &job_url,
        "the job to run",
        |j| j["state"] == "running",
        &[&web, &leaving],
    );
    let status = leaving.terminate();
    assert!(
        status.success(),
        "worker exit {status:?}:\n{}",
        leaving.log()
    );
    let back = poll(
        &job_url,
        "the job to be handed back",
        |j| j["state"] == "available",
        &[&web, &leaving],
    );
    assert_eq!(
        back["attempt"], 0,
        "a handed-back job is not a failed attempt"
    );
    // It deregistered on the way out.
    poll(
        &format!("{api_url}/v1/workers"),
        "the worker to deregister",
        |w| w["workers"] == serde_json::json!([]),
        &[&web],
    );

    let next = Demo::start(
        dir.path(),
        "worker",
        &[
            ("GRAFTER_URL", api_url.clone()),
            ("NAME_JOB_SECONDS", "1".to_owned()),
        ],
        "next",
    );
    let done = poll(
        &job_url,
        "the job to complete",
        |j| j["state"] == "completed",
        &[&web, &next],
    );
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["errors"], serde_json::json!([]));
}
