//! Process-level tests: the real `grafter` binary, a real SQLite file in a temp
//! directory, real HTTP on loopback. Servers are stopped with `kill -9`
//! (SIGKILL) to check that whatever Grafter acknowledged survives a crash, and
//! with SIGTERM to check the graceful shutdown.
//!
//! Maintenance and retry backoff are configured fast so the tests take seconds;
//! every wait is a poll with a generous deadline, and nothing asserts on speed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{
    enqueue_wakes_long_poll, free_port, grafter, http_client, id_of, output_text, run_cli,
    temp_dir, Server, FAST_CONFIG, PATIENCE,
};

/// A server whose stderr closes (the log shipper reading it went away) goes
/// on serving and still stops on SIGTERM: a log line it cannot write is
/// lost, and nothing panics over it, at start-up or in the shutdown.
#[tokio::test]
async fn a_closed_stderr_neither_stops_the_server_nor_its_shutdown() {
    use std::io::BufRead;
    let dir = temp_dir();
    let port = free_port();
    let mut child = grafter()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--database")
        .arg(format!("sqlite://{}", dir.path().join("jobs.db").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn grafter serve");
    // Its first log line, then no reader: every later line meets a closed pipe.
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr
        .read_line(&mut first)
        .expect("read the first log line");
    drop(stderr);

    let http = http_client();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("grafter serve exited ({status}) once its stderr closed");
        }
        if let Ok(answer) = http.get(format!("{base}/livez")).send().await {
            if answer.status().is_success() {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "k"}))
        .send()
        .await
        .expect("enqueue");
    assert_eq!(answer.status(), StatusCode::CREATED);

    let pid = child.id().to_string();
    let kill = std::process::Command::new("sh")
        .args(["-c", "kill -TERM \"$0\"", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let stop_by = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > stop_by {
            let _ = child.kill();
            panic!("grafter serve still running 15 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exited with {status} after SIGTERM");
}

/// A server on the SQLite file `dir/jobs.db`, configured by `dir/grafter.toml`
/// (written with [`FAST_CONFIG`] if missing).
async fn start(dir: &Path) -> Server {
    let config = dir.join("grafter.toml");
    if !config.exists() {
        std::fs::write(&config, FAST_CONFIG).expect("write config");
    }
    let database = format!("sqlite://{}", dir.join("jobs.db").display());
    Server::start(dir, &database, &config).await
}

#[tokio::test]
async fn kill_9_while_leased_the_job_comes_back_as_attempt_2() {
    let dir = temp_dir();
    let mut server = start(dir.path()).await;
    let id = id_of(
        &server
            .enqueue(json!({"kind": "sync", "queue": "crash", "args": {"n": 1}}))
            .await,
    );

    let first = server
        .fetch("crash", 1_000, 0)
        .await
        .expect("the job is available");
    assert_eq!(id_of(&first), id);
    assert_eq!(first["state"], "running");
    assert_eq!(first["attempt"], 1);
    let old_lease = first["lease"].as_str().expect("a lease").to_owned();

    server.kill9();
    let server = start(dir.path()).await;

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
    let (status, body) = server
        .post(&format!("/v1/jobs/{id}/ack"), json!({"lease": old_lease}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "lease_mismatch", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let unchanged = server.job(id).await;
    assert_eq!(unchanged["state"], "running");
    assert_eq!(unchanged["attempt"], 2);

    let (status, done) = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            json!({"lease": new_lease, "result": {"ok": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "completed");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"], json!({"ok": true}));
    assert_eq!(server.job(id).await["state"], "completed");
}

#[tokio::test]
async fn an_acknowledged_batch_survives_kill_9() {
    let dir = temp_dir();
    let mut server = start(dir.path()).await;
    let jobs: Vec<Value> = (0..200)
        .map(|i| json!({"kind": "bulk", "queue": "durable", "args": {"i": i}}))
        .collect();
    let (status, body) = server.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created = body["jobs"].as_array().expect("batch answers jobs");
    assert_eq!(created.len(), 200);
    let expected: BTreeMap<i64, Value> = created
        .iter()
        .map(|j| (id_of(j), j["args"].clone()))
        .collect();
    assert_eq!(expected.len(), 200, "ids are distinct");

    server.kill9();
    let server = start(dir.path()).await;

    // Small pages, to follow the cursor too.
    let stored = server.all_jobs("durable", 64).await;
    let found: BTreeMap<i64, Value> = stored
        .iter()
        .map(|j| (id_of(j), j["args"].clone()))
        .collect();
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
    let mut server = start(dir.path()).await;
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
    let server = start(dir.path()).await;

    for &id in &ids {
        let job = server.job(id).await;
        assert_eq!(job["queue"], "concurrent");
        assert_eq!(job["state"], "available");
    }
    let listed: BTreeSet<i64> = server
        .all_jobs("concurrent", 1_000)
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(
        server.queue_counts("concurrent").await.get("available"),
        Some(&50)
    );
}

#[tokio::test]
async fn a_new_job_wakes_a_long_poll() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    enqueue_wakes_long_poll(&server, &server, "wake").await;
}

#[tokio::test]
async fn sigterm_with_a_pending_long_poll_exits_cleanly() {
    let dir = temp_dir();
    let mut server = start(dir.path()).await;
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
    assert!(
        !poll.is_finished(),
        "the fetch on an empty queue answered at once"
    );

    let pid = server.pid().to_string();
    let kill = std::process::Command::new("sh")
        .args(["-c", "kill -TERM \"$0\"", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");

    let status = server.wait_exit(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "grafter serve still running 15 s after SIGTERM:\n{}",
            server.log_text()
        )
    });
    assert!(
        status.success(),
        "grafter serve exited with {status} after SIGTERM:\n{}",
        server.log_text()
    );

    // The pending long-poll was answered (with no job), not cut off.
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long-poll never answered")
        .expect("the long-poll task panicked");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"], json!([]));
    assert!(
        server.log_text().contains("Grafter stopped"),
        "{}",
        server.log_text()
    );
}

#[tokio::test]
async fn the_cli_enqueues_shows_and_explains_failures() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    let cwd = dir.path();

    let out = run_cli(
        &[
            "enqueue",
            "send_email",
            "--args",
            r#"{"to":"a@b.c"}"#,
            "--url",
            &server.base,
        ],
        cwd,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "enqueue failed ({}): {stdout}{stderr}",
        out.status
    );
    // "job <id> send_email on queue default (available, run at …)"
    let id: i64 = stdout
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no job id in: {stdout}"));
    assert!(stdout.contains("send_email"), "{stdout}");
    let stored = server.job(id).await;
    assert_eq!(stored["kind"], "send_email");
    assert_eq!(stored["args"], json!({"to": "a@b.c"}));

    let out = run_cli(
        &["jobs", "show", &id.to_string(), "--url", &server.base],
        cwd,
    )
    .await;
    assert!(
        out.status.success(),
        "jobs show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "jobs show printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(id_of(&shown), id);
    assert_eq!(shown["kind"], "send_email");
    assert_eq!(shown["args"]["to"], "a@b.c");

    let out = run_cli(
        &["enqueue", "x", "--args", "{bad", "--url", &server.base],
        cwd,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad --args was accepted");
    assert!(stderr.contains("not valid JSON"), "{stderr}");

    let out = run_cli(&["jobs", "list", "--url", "http://127.0.0.1:1"], cwd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "jobs list against nothing succeeded");
    assert!(stderr.contains("cannot reach Grafter"), "{stderr}");

    let listen = format!("127.0.0.1:{}", free_port());
    let out = run_cli(
        &["serve", "--database", "mysql://x", "--listen", &listen],
        cwd,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve accepted a mysql:// URL");
    assert!(stderr.contains("unsupported database URL"), "{stderr}");
    let out = run_cli(&["serve", "--token", "hunter2", "--listen", &listen], cwd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve accepted a 7-character token");
    assert!(
        stderr.contains("invalid setting token: must be at least 16 characters"),
        "{stderr}"
    );

    // The failed commands stored nothing: only the one good enqueue is there.
    let (status, page) = server.get("/v1/jobs?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1), "{page}");
}

#[tokio::test]
async fn client_commands_end_quietly_when_their_reader_stops_reading() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    let id = id_of(&server.enqueue(json!({"kind": "k"})).await).to_string();
    let url = server.base.as_str();
    for args in [
        vec!["jobs", "show", &id, "--url", url],
        vec!["jobs", "list", "--url", url],
        vec!["queues", "--url", url],
        vec!["openapi"],
    ] {
        // `grafter … | head -0`: the reading end of stdout is closed before
        // the command has written anything.
        let mut command = tokio::process::Command::from(common::grafter());
        command
            .args(&args)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("run grafter");
        drop(child.stdout.take());
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the command did not end")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "grafter {args:?} with its stdout closed: {} {stderr}",
            out.status
        );
    }
}

#[tokio::test]
async fn a_failing_job_is_retried_after_backoff_then_dead() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    let id = id_of(
        &server
            .enqueue(json!({"kind": "flaky", "queue": "retry", "max_attempts": 2}))
            .await,
    );

    let first = server
        .fetch("retry", 30_000, 0)
        .await
        .expect("the job is available");
    assert_eq!(id_of(&first), id);
    assert_eq!(first["attempt"], 1);
    let (status, failed) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease": first["lease"], "error": "boom"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["state"], "retryable", "{failed}");
    assert_eq!(failed["attempt"], 1);
    assert_eq!(
        failed["errors"].as_array().map(Vec::len),
        Some(1),
        "{failed}"
    );

    // The backoff passes, the scheduler makes it available, a worker takes it.
    let second = server.fetch_until("retry", 30_000).await;
    assert_eq!(id_of(&second), id);
    assert_eq!(second["attempt"], 2);
    let (status, dead) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease": second["lease"], "error": "boom"}),
        )
        .await;
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
    assert!(
        server.fetch("retry", 30_000, 1_000).await.is_none(),
        "a dead job was handed out"
    );
    assert_eq!(server.job(id).await["state"], "dead");
}

/// `grafter schedules put|list|show|pause|resume|trigger|delete` against a
/// real server: the schedule it makes fires by the server's clock, and bad
/// input comes back as one line naming the field.
#[tokio::test]
async fn the_cli_manages_schedules() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    let cwd = dir.path();
    let cli = |args: Vec<&str>| {
        let mut args = args;
        args.extend(["--url", server.base.as_str()]);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run_cli(&args, cwd).await;
            let text = output_text(&out);
            (out.status.success(), text)
        }
    };
    let (ok, text) = cli(vec![
        "schedules",
        "put",
        "tick",
        "--every-ms",
        "1000",
        "--kind",
        "tick",
        "--queue",
        "ticks",
        "--catch-up",
        "all",
    ])
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("every 1000 ms"), "{text}");
    let (ok, text) = cli(vec!["schedules", "list"]).await;
    assert!(ok && text.contains("tick"), "{text}");
    // It fires each second on the server's clock.
    let mut fired = Vec::new();
    for _ in 0..100 {
        fired = server.all_jobs("ticks", 100).await;
        if fired.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fired.len() >= 2, "{fired:?}");
    assert_eq!(fired[0]["schedule"]["id"], "tick");
    let (ok, text) = cli(vec!["schedules", "pause", "tick"]).await;
    assert!(ok && text.contains("true"), "{text}");
    let (ok, text) = cli(vec!["schedules", "trigger", "tick"]).await;
    assert!(ok && text.contains("enqueued job"), "{text}");
    let (ok, text) = cli(vec!["schedules", "show", "tick", "--json"]).await;
    assert!(ok, "{text}");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["paused"], true);
    let (ok, text) = cli(vec!["schedules", "resume", "tick"]).await;
    assert!(ok && text.contains("false"), "{text}");
    let (ok, text) = cli(vec![
        "schedules",
        "put",
        "bad",
        "--cron",
        "0 0 31 2 *",
        "--kind",
        "k",
    ])
    .await;
    assert!(
        !ok && text.contains("cron") && text.contains("never fires"),
        "{text}"
    );
    let (ok, text) = cli(vec!["schedules", "delete", "tick"]).await;
    assert!(ok && text.contains("deleted schedule tick"), "{text}");
    let (ok, text) = cli(vec!["schedules", "show", "tick"]).await;
    assert!(!ok && text.contains("not_found"), "{text}");
}

/// `grafter serve` on `listen` with `extra` flags and `env` variables,
/// waited for until `/livez` answers on loopback; its stderr if it exited
/// first.
async fn serve_open(
    dir: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<tokio::process::Child, String> {
    let port = listen.rsplit(':').next().expect("a port");
    let database = format!("sqlite://{}", dir.join("open.db").display());
    let mut child = tokio::process::Command::from(common::grafter())
        .args(["serve", "--database", &database, "--listen", listen])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn grafter serve");
    let http = common::http_client();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let output = child.wait_with_output().await.expect("its output");
            assert!(!output.status.success(), "a refusal exits non-zero");
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let livez = http
            .get(format!("http://127.0.0.1:{port}/livez"))
            .send()
            .await;
        if livez.is_ok_and(|r| r.status().is_success()) {
            return Ok(child);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither started nor refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_refuses_an_open_address_without_a_token_unless_told_insecure() {
    let dir = temp_dir();
    let open = format!("0.0.0.0:{}", free_port());
    let refusal = serve_open(dir.path(), &open, &[], &[])
        .await
        .expect_err("no token on 0.0.0.0 is refused");
    assert!(
        refusal.contains("without a token")
            && refusal.contains("--token")
            && refusal.contains("GRAFTER_TOKEN")
            && refusal.contains("--insecure"),
        "the refusal says how to go on: {refusal}"
    );

    // The file's `insecure = true` gives way to a flag or a variable saying
    // false, as any setting of the file does.
    let file = dir.path().join("insecure.toml");
    std::fs::write(&file, "insecure = true\n").unwrap();
    let file = file.display().to_string();
    for (flags, env) in [
        (vec!["--config", &file, "--insecure=false"], vec![]),
        (vec!["--config", &file], vec![("GRAFTER_INSECURE", "false")]),
    ] {
        let refusal = serve_open(dir.path(), &open, &flags, &env)
            .await
            .expect_err("told false, the file's true does not open it");
        assert!(refusal.contains("without a token"), "{refusal}");
    }

    let mut insecure = serve_open(dir.path(), &open, &["--insecure"], &[])
        .await
        .expect("--insecure insists");
    insecure.kill().await.expect("kill");
    // Each killed and waited for before the next starts: one server owns a
    // SQLite file, and the next is refused while the last has not exited.
    let mut with_token = serve_open(
        dir.path(),
        &format!("0.0.0.0:{}", free_port()),
        &["--token", "a-token-of-sixteen-or-more"],
        &[],
    )
    .await
    .expect("a token makes it safe");
    with_token.kill().await.expect("kill");
    let mut loopback = serve_open(dir.path(), &format!("127.0.0.1:{}", free_port()), &[], &[])
        .await
        .expect("loopback needs no token");
    loopback.kill().await.expect("kill");
}

#[tokio::test]
async fn info_and_cleanup_from_the_cli() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    for _ in 0..2 {
        server.enqueue(json!({"kind": "k", "queue": "ops"})).await;
    }
    let leased = server.fetch("ops", 30_000, 0).await.expect("a job");
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/ack", id_of(&leased)),
            json!({"lease": leased["lease"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let url = server.base.clone();
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--url".to_owned(), url.clone()]);
        let dir = dir.path().to_owned();
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            let output = run_cli(&args, &dir).await;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "{args:?}: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            text
        }
    };
    let info = run(&["info"]).await;
    assert!(
        info.contains("store       sqlite (schema version"),
        "{info}"
    );
    assert!(
        info.lines().any(|l| l.starts_with("queue       ops: ")
            && l.contains("completed 1")
            && l.contains("available 1")),
        "{info}"
    );
    let dry = run(&[
        "cleanup",
        "--older-than",
        "0s",
        "--state",
        "completed",
        "--dry-run",
    ])
    .await;
    assert!(dry.contains("would delete 1 jobs"), "{dry}");
    let done = run(&["cleanup", "--older-than", "0s"]).await;
    assert!(done.contains("deleted 1 jobs"), "{done}");
    assert!(!run(&["info"]).await.contains("completed 1"));
    let refused = run_cli(
        &[
            "cleanup",
            "--older-than",
            "7d",
            "--state",
            "running",
            "--url",
            &url,
        ],
        dir.path(),
    )
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a finished state"));
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_tokens() {
    const ADMIN: &str = "the-server-token-0123456789";
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("grafter.toml"),
        format!("token = \"{ADMIN}\"\n{FAST_CONFIG}"),
    )
    .expect("write config");
    let server = start(dir.path()).await;
    let url = server.base.clone();
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend([
            "--url".to_owned(),
            url.clone(),
            "--token".to_owned(),
            ADMIN.to_owned(),
        ]);
        let dir = dir.path().to_owned();
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            let output = run_cli(&args, &dir).await;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "{args:?}: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            text
        }
    };
    let created = run(&[
        "tokens",
        "create",
        "--name",
        "mailer",
        "--scope",
        "producer",
        "--queue",
        "emails*",
        "--expires-in",
        "30d",
    ])
    .await;
    let secret = created
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .expect("the secret is printed")
        .to_owned();
    assert!(secret.starts_with("gft_"), "{created}");
    let id = created.split_whitespace().next().unwrap().to_owned();
    assert!(id.starts_with("tok_"), "{created}");

    let listed = run(&["tokens", "list"]).await;
    assert!(
        listed.contains(&id) && listed.contains("mailer"),
        "{listed}"
    );
    assert!(
        listed.contains("[enqueue,read]") && listed.contains("queues emails*"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "the secret is listed: {listed}");

    let http = reqwest::Client::new();
    let queues = || {
        http.get(server.url("/v1/queues"))
            .bearer_auth(&secret)
            .send()
    };
    assert_eq!(queues().await.unwrap().status(), StatusCode::OK);
    let revoked = run(&["tokens", "revoke", &id]).await;
    assert!(revoked.contains("REVOKED"), "{revoked}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while queues().await.unwrap().status() != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked token still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads one HTTP/1.1 request from `socket` (head and Content-Length body),
/// answers 200, and hands back the head and the body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_from) = loop {
        let read = socket.read(&mut chunk).await.expect("read the request");
        assert!(read > 0, "the connection closed mid-request");
        bytes.extend_from_slice(&chunk[..read]);
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&bytes[..end]).into_owned(), end + 4);
        }
    };
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    while bytes.len() < body_from + length {
        let read = socket.read(&mut chunk).await.expect("read the body");
        assert!(read > 0, "the connection closed mid-body");
        bytes.extend_from_slice(&chunk[..read]);
    }
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    socket.write_all(answer).await.expect("answer");
    (head, bytes[body_from..body_from + length].to_vec())
}

/// `grafter serve` on a SQLite file in `dir`, on `port`, with `env` set.
fn serve_with_env(env: &[(&str, &str)], dir: &std::path::Path, port: u16) -> std::process::Child {
    let mut command = grafter();
    command.envs(env.iter().copied());
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
        ])
        .arg(format!("sqlite://{}", dir.join("jobs.db").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn grafter serve")
}

#[tokio::test]
async fn the_standard_otel_variables_turn_span_export_on() {
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let dir = temp_dir();
    let port = free_port();
    let mut child = serve_with_env(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "billing-jobs"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=s3cr%3Dt,x-team=ops",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "X-Team=billing"),
        ],
        dir.path(),
        port,
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = http_client();
    let enqueued = async {
        loop {
            let request = http
                .post(format!("{base}/v1/jobs"))
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .json(&json!({"kind": "invoice", "queue": "billing"}));
            if let Ok(response) = request.send().await {
                assert_eq!(response.status(), StatusCode::CREATED);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, enqueued)
        .await
        .expect("the server never took the job");
    let (mut socket, _) = tokio::time::timeout(PATIENCE, collector.accept())
        .await
        .expect("no export reached the collector")
        .unwrap();
    let (head, body) = read_request(&mut socket).await;
    child.kill().expect("stop grafter serve");
    child.wait().expect("reap grafter serve");
    assert!(head.starts_with("POST /v1/traces HTTP/1.1"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    assert!(head.contains("x-api-key: s3cr=t\r\n"), "{head}");
    assert!(
        head.contains("x-team: billing\r\n") && !head.contains("x-team: ops"),
        "the traces' own headers win: {head}"
    );
    // Protobuf keeps strings as they are: the service and the span's name.
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"billing-jobs"),
        "service.name from OTEL_SERVICE_NAME"
    );
    assert!(contains(b"send billing"), "the enqueue's span");
}

/// An `OTEL_…` variable set to nothing counts as unset (as the OpenTelemetry
/// specification has it): the server starts, exporting nothing.
#[tokio::test]
async fn empty_otel_variables_are_unset() {
    let dir = temp_dir();
    let port = free_port();
    let unset = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ]
    .map(|name| (name, ""));
    let mut child = serve_with_env(&unset, dir.path(), port);
    let http = http_client();
    let live = async {
        loop {
            if let Some(status) = child.try_wait().expect("poll grafter serve") {
                panic!("grafter serve exited: {status}");
            }
            let request = http.get(format!("http://127.0.0.1:{port}/livez"));
            if let Ok(response) = request.send().await {
                return response.status();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let status = tokio::time::timeout(PATIENCE, live).await;
    child.kill().expect("stop grafter serve");
    child.wait().expect("reap grafter serve");
    assert_eq!(status.expect("the server never answered"), StatusCode::OK);
}
