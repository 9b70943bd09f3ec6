//! The client commands' handling of awkward input, against the real `grafter`
//! binary and a real server on a SQLite file: durations beyond what the API
//! accepts, putting a paused schedule again, and more schedules than one page
//! holds.

mod common;

use std::path::Path;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{output_text, run_cli, temp_dir, Server, FAST_CONFIG};

/// A server on the SQLite file `dir/jobs.db`.
async fn start(dir: &Path) -> Server {
    let config = dir.join("grafter.toml");
    std::fs::write(&config, FAST_CONFIG).expect("write config");
    let database = format!("sqlite://{}", dir.join("jobs.db").display());
    Server::start(dir, &database, &config).await
}

/// `grafter <args> --url <server>`: whether it succeeded, its exit code, and
/// its stdout and stderr together.
async fn cli(server: &Server, cwd: &Path, args: &[&str]) -> (bool, Option<i32>, String) {
    let mut args = args.to_vec();
    args.extend(["--url", &server.base]);
    let out = run_cli(&args, cwd).await;
    let text = output_text(&out);
    (out.status.success(), out.status.code(), text)
}

/// Delays, timeouts and ages past the API's 100 years are refused before
/// anything is sent, naming the flag and the limit: no panic, no vague
/// overflow message, no wrapped negative `timeout_ms`. The limit itself is
/// accepted and sent exactly. So are durations below a millisecond and
/// names no URL can carry.
#[tokio::test]
async fn values_the_api_cannot_take_are_refused_before_anything_is_sent() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    let cwd = dir.path();
    for (args, flag) in [
        (vec!["enqueue", "k", "--delay", "300000y"], "--delay"),
        (
            vec!["enqueue", "k", "--delay", "99999999999999h"],
            "--delay",
        ),
        (vec!["enqueue", "k", "--delay", "101y"], "--delay"),
        (
            vec!["enqueue", "k", "--timeout", "9999999999999d"],
            "--timeout",
        ),
        (vec!["enqueue", "k", "--timeout", "36501d"], "--timeout"),
        (vec!["cleanup", "--older-than", "101y"], "--older-than"),
    ] {
        let (ok, code, text) = cli(&server, cwd, &args).await;
        assert!(!ok && code == Some(2), "{args:?} was not refused: {text}");
        assert!(
            text.contains(flag) && text.contains("at most 36500d") && !text.contains("panicked"),
            "{args:?}: {text}"
        );
    }
    // `.` and `..` name no queue or schedule: refused here, before a URL
    // library resolves them into another route.
    for args in [
        vec!["queues", "pause", ".."],
        vec!["queues", "set-limits", ".", "--concurrency", "1"],
        vec!["schedules", "delete", ".."],
    ] {
        let (ok, code, text) = cli(&server, cwd, &args).await;
        assert!(!ok && code == Some(2), "{args:?} was not refused: {text}");
        assert!(text.contains("must not be . or .."), "{args:?}: {text}");
    }
    // Below the API's millisecond: refused, not rounded down to nothing.
    for args in [
        vec!["enqueue", "k", "--timeout", "1ns"],
        vec!["enqueue", "k", "--delay", "1500us"],
    ] {
        let (ok, code, text) = cli(&server, cwd, &args).await;
        assert!(!ok && code == Some(2), "{args:?} was not refused: {text}");
        assert!(text.contains("whole milliseconds"), "{args:?}: {text}");
    }
    let (status, page) = server.get("/v1/jobs?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["jobs"], json!([]), "a refused enqueue stored a job");

    let (ok, _, text) = cli(
        &server,
        cwd,
        &[
            "enqueue",
            "k",
            "--delay",
            "36500d",
            "--timeout",
            "36500d",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{text}");
    let job: Value = serde_json::from_str(&text).expect("enqueue --json prints the job");
    assert_eq!(
        job["timeout_ms"],
        json!(grafter_core::time::MAX_DURATION_MS),
        "{job}"
    );
    let run_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(job["run_at"].clone()).expect("run_at");
    let delay = run_at - chrono::Utc::now();
    assert!(
        (36_499..=36_500).contains(&delay.num_days()),
        "run_at {run_at} is not 36500 days away"
    );
}

/// Putting a schedule's definition again without --paused leaves a paused
/// schedule paused; --paused pauses it, also when creating one.
#[tokio::test]
async fn putting_a_paused_schedule_again_keeps_it_paused() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    let cwd = dir.path();
    let paused = |id: &'static str| {
        let server = &server;
        async move {
            let (status, shown) = server.get(&format!("/v1/schedules/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{shown}");
            shown["paused"].clone()
        }
    };
    let put = [
        "schedules",
        "put",
        "s2",
        "--kind",
        "k",
        "--cron",
        "0 1 * * *",
    ];
    let (ok, _, text) = cli(&server, cwd, &put).await;
    assert!(ok, "{text}");
    assert_eq!(paused("s2").await, false);
    let (ok, _, text) = cli(&server, cwd, &["schedules", "pause", "s2"]).await;
    assert!(ok, "{text}");

    let (ok, _, text) = cli(&server, cwd, &put).await;
    assert!(ok, "{text}");
    assert_eq!(paused("s2").await, true, "putting s2 again resumed it");

    let (ok, _, text) = cli(&server, cwd, &["schedules", "resume", "s2"]).await;
    assert!(ok, "{text}");
    let (ok, _, text) = cli(&server, cwd, &[&put[..], &["--paused"]].concat()).await;
    assert!(ok, "{text}");
    assert_eq!(paused("s2").await, true, "--paused did not pause s2");
    let mut create = put;
    create[2] = "s3";
    let (ok, _, text) = cli(&server, cwd, &[&create[..], &["--paused"]].concat()).await;
    assert!(ok, "{text}");
    assert_eq!(paused("s3").await, true, "s3 was not created paused");
}

/// `schedules list` shows every schedule, however many pages the API splits
/// them into (at most 1000 a page).
#[tokio::test]
async fn schedules_list_follows_every_page() {
    let dir = temp_dir();
    let server = start(dir.path()).await;
    let ids: Vec<String> = (0..1_005).map(|n| format!("s{n:04}")).collect();
    let server = &server;
    for chunk in ids.chunks(50) {
        join_all(chunk.iter().map(|id| async move {
            let request = server.http.put(server.url(&format!("/v1/schedules/{id}")));
            let definition = json!({"cron": "0 0 1 1 *", "paused": true, "job": {"kind": "k"}});
            let (status, body) = server.send(request.json(&definition)).await;
            assert_eq!(status, StatusCode::CREATED, "put {id}: {body}");
        }))
        .await;
    }

    let (ok, _, text) = cli(server, dir.path(), &["schedules", "list", "--json"]).await;
    assert!(ok, "{text}");
    let listed: Value = serde_json::from_str(&text).expect("schedules list --json prints JSON");
    let listed: Vec<&str> = listed["schedules"]
        .as_array()
        .expect("a list of schedules")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(listed.len(), ids.len(), "schedules list --json missed some");
    assert_eq!(
        listed, ids,
        "schedules list --json repeated or reordered some"
    );

    let (ok, _, text) = cli(server, dir.path(), &["schedules", "list"]).await;
    assert!(ok, "{text}");
    let rows = text.lines().filter(|line| line.starts_with('s')).count();
    assert_eq!(rows, ids.len(), "{text}");
}
