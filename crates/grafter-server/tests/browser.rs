//! The dashboard in a real browser: Debian's headless Chromium driven over
//! WebDriver (chromedriver), against `grafter serve`'s server on a loopback
//! port. One test walks what a person does: read the overview, filter to dead
//! jobs, open one, retry it, pause and resume a queue, open a schedule,
//! trigger and pause it, watch a running job's progress move, and see
//! hostile job data shown as text. Screenshots of each
//! page go to `test-artifacts/` at the workspace root.
//!
//! Chromium and chromedriver come from `.ci/run` (`apt_install chromium
//! chromium-driver`). Without them the test says so loudly and passes, except
//! under CI (`CI` set), where it fails.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fantoccini::{Client, ClientBuilder, Locator};
use grafter_core::{
    JobId, LeasedJob, NewJob, Progress, ScheduleSource, ScheduleSpec, WorkerRegistration,
};
use grafter_engine::{Engine, EngineConfig};
use grafter_server::ServerConfig;
use grafter_sqlite::SqliteStore;
use grafter_store::{JobComplete, JobFail, JobHeartbeat, JobsFetch, JobsInsert, Store, WorkerBeat};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Kills chromedriver (and so its browser) when the test ends, pass or fail.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start_driver() -> Option<(Driver, String)> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} or {CHROMEDRIVER} missing; CI is set, so the browser test fails instead of skipping \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!("\n**** SKIPPING the browser test: install chromium and chromium-driver to run it ****\n");
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some((driver, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on port {port}");
}

async fn browser(driver_url: &str, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1280,1000", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(driver_url)
        .await
        .expect("start a browser session")
}

async fn shot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("dashboard-{name}.png")), png).unwrap();
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits until the element's text satisfies `ok` (pages refresh on their own).
async fn eventually(client: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        if let Ok(el) = client.find(Locator::Css(css)).await {
            last = el.text().await.unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{css}: expected {what}, last saw {last:?}");
}

async fn lease(store: &Arc<dyn Store>, queue: &str, max: usize) -> Vec<LeasedJob> {
    store
        .jobs_fetch(JobsFetch {
            queues: vec![queue.into()],
            max,
            lease_duration: Duration::from_secs(300),
            worker_id: Some("mailer-1".into()),
            running_limit: None,
            max_bytes: usize::MAX,
            now: Utc::now(),
        })
        .await
        .unwrap()
}

async fn kill(store: &Arc<dyn Store>, leased: LeasedJob, error: &str) -> JobId {
    let id = leased.job.id;
    let fail = JobFail {
        id,
        lease: leased.lease,
        error: error.into(),
        retry: false,
        retry_at: None,
        backoff: Default::default(),
        now: Utc::now(),
    };
    store.job_fail(fail).await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_and_fixes_jobs_in_the_browser() {
    let Some((_driver, driver_url)) = start_driver().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap(),
    );

    // Jobs in every interesting state: 3 dead (one with a hostile payload),
    // 1 running with progress, 4 waiting on "mail", 2 on "reports".
    let xss_args = json!({"to": "<script>window.__xss = 'args'</script>", "html": "<img src=x onerror=\"window.__xss='img'\">"});
    let mut jobs = vec![NewJob::new("send_email", xss_args)];
    for i in 0..2 {
        jobs.push(NewJob::new(
            "send_email",
            json!({"to": format!("user{i}@example.com")}),
        ));
    }
    jobs.push(NewJob::new("export", json!({"report": "monthly"})));
    for job in &mut jobs {
        job.queue = "mail".into();
    }
    for i in 0..4 {
        let mut j = NewJob::new("send_email", json!({"to": format!("later{i}@example.com")}));
        j.queue = "mail".into();
        jobs.push(j);
    }
    for i in 0..2 {
        let mut j = NewJob::new("build_report", json!({"n": i}));
        j.queue = "reports".into();
        jobs.push(j);
    }
    store
        .jobs_insert_many(JobsInsert {
            jobs,
            now: Utc::now(),
        })
        .await
        .unwrap();
    let mut leased = lease(&store, "mail", 4).await;
    let running = leased.pop().unwrap();
    let xss = kill(
        &store,
        leased.remove(0),
        "<script>window.__xss = 'error'</script><b>bold?</b>",
    )
    .await;
    let dead_a = kill(&store, leased.remove(0), "SMTP 550: mailbox unavailable").await;
    let dead_b = kill(&store, leased.remove(0), "SMTP 421: try again later").await;
    let registration = WorkerRegistration {
        id: "mailer-1".into(),
        host: "web-1".into(),
        pid: 4242,
        queues: vec!["mail".into()],
        concurrency: 4,
        kinds: vec!["send_email".into(), "export".into()],
    };
    store
        .worker_heartbeat(WorkerBeat {
            worker: registration,
            now: Utc::now(),
        })
        .await
        .unwrap();

    // A schedule that does not fire during the test: it runs when triggered.
    let mut nightly = ScheduleSpec::cron(
        "0 3 * * *",
        NewJob::new("build_report", json!({"full": true})),
    );
    nightly.timezone = "Europe/Berlin".into();
    nightly.job.queue = "reports".into();
    Engine::new(store.clone(), EngineConfig::default())
        .schedule_put("nightly-report", nightly, ScheduleSource::Api)
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(grafter_server::serve(
        listener,
        store.clone(),
        ServerConfig::default(),
        shutdown.clone(),
    ));

    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver_url, profile.path()).await;
    let result = async {
        // The overview shows the counts.
        client.goto(&format!("{base}/")).await.unwrap();
        assert_eq!(text(&client, r#"a.count[data-state="dead"] .n"#).await, "3");
        assert_eq!(
            text(&client, r#"a.count[data-state="running"] .n"#).await,
            "1"
        );
        assert_eq!(
            text(&client, r#"a.count[data-state="available"] .n"#).await,
            "6"
        );
        assert!(text(&client, "figure.chart figcaption")
            .await
            .contains("3 failed"));
        assert!(text(&client, r#"tr[data-queue="mail"]"#)
            .await
            .contains("mail"));
        // Times are shown in the browser's zone with a relative hint.
        assert!(text(&client, "table.workers time").await.contains("ago"));
        shot(&client, "overview").await;

        // Filter to dead jobs.
        client.goto(&format!("{base}/jobs")).await.unwrap();
        shot(&client, "jobs").await;
        client
            .find(Locator::Css(r#"nav.states a[href*="state=dead"]"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        eventually(&client, "nav.states a.current", "the dead tab", |t| {
            t.starts_with("dead")
        })
        .await;
        let rows = client
            .find_all(Locator::Css("table.jobs tbody tr"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        shot(&client, "jobs-dead").await;

        // Open a job and see its attempt.
        client
            .find(Locator::Css(&format!(r#"a[href="/jobs/{dead_a}"]"#)))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let attempts = eventually(&client, "table.attempts", "the failed attempt", |t| {
            t.contains("SMTP 550")
        })
        .await;
        assert!(attempts.contains("mailer-1"), "{attempts}");
        shot(&client, "job").await;

        // Retry it and see it leave the dead list.
        client
            .find(Locator::Css(r#"form[action$="/retry"] button"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        eventually(&client, "p.flash.ok", "a confirmation", |t| {
            t.contains("Retried")
        })
        .await;
        assert!(text(&client, "section.status").await.contains("available"));
        client
            .goto(&format!("{base}/jobs?state=dead"))
            .await
            .unwrap();
        let ids: Vec<String> = {
            let mut ids = Vec::new();
            for row in client
                .find_all(Locator::Css("table.jobs tbody tr"))
                .await
                .unwrap()
            {
                ids.push(row.attr("data-job").await.unwrap().unwrap_or_default());
            }
            ids
        };
        assert_eq!(
            ids,
            [dead_b.to_string(), xss.to_string()],
            "the retried job left the dead list"
        );

        // Pause and resume a queue (pausing asks first).
        client.goto(&format!("{base}/queues")).await.unwrap();
        client
            .find(Locator::Css(r#"tr[data-queue="mail"] form button"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        client.accept_alert().await.unwrap();
        eventually(&client, "p.flash.ok", "the pause confirmation", |t| {
            t.contains("Paused queue mail")
        })
        .await;
        assert!(text(&client, r#"tr[data-queue="mail"]"#)
            .await
            .contains("paused"));
        assert!(store
            .queues_list()
            .await
            .unwrap()
            .iter()
            .any(|q| q.name == "mail" && q.paused));
        shot(&client, "queues-paused").await;
        client
            .find(Locator::Css(r#"tr[data-queue="mail"] form button"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        eventually(&client, "p.flash.ok", "the resume confirmation", |t| {
            t.contains("Resumed queue mail")
        })
        .await;
        assert!(text(&client, r#"tr[data-queue="mail"]"#)
            .await
            .contains("active"));
        assert!(store.queues_list().await.unwrap().iter().all(|q| !q.paused));

        // A schedule: open it from the list, trigger it (asks first), see
        // its run among its jobs, pause it.
        client.goto(&format!("{base}/schedules")).await.unwrap();
        let row = text(&client, r#"tr[data-schedule="nightly-report"]"#).await;
        assert!(
            row.contains("0 3 * * *") && row.contains("Europe/Berlin") && row.contains("active"),
            "{row}"
        );
        shot(&client, "schedules").await;
        client
            .find(Locator::Css(
                r#"tr[data-schedule="nightly-report"] a[href="/schedules/nightly-report"]"#,
            ))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let upcoming = eventually(&client, "ol.upcoming", "the next fire times", |t| {
            t.lines().count() == 10
        })
        .await;
        assert!(
            upcoming.contains("ago") || upcoming.contains("in "),
            "{upcoming}"
        );
        assert!(text(&client, "main")
            .await
            .contains("No job of this schedule is kept."));
        client
            .find(Locator::Css(
                r#"form[action="/schedules/nightly-report/trigger"] button"#,
            ))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        client.accept_alert().await.unwrap();
        let flash = eventually(&client, "p.flash.ok", "the trigger confirmation", |t| {
            t.contains("Triggered schedule nightly-report")
        })
        .await;
        let triggered = text(&client, "table.jobs tbody tr").await;
        assert!(
            triggered.contains("available") && triggered.contains("triggered"),
            "{triggered}"
        );
        let job_id: String = flash
            .split('#')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .trim_end_matches('.')
            .to_owned();
        assert!(
            triggered.contains(&format!("#{job_id}")),
            "{triggered} / {flash}"
        );
        shot(&client, "schedule").await;
        client
            .find(Locator::Css(
                r#"form[action="/schedules/nightly-report/pause"] button"#,
            ))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        client.accept_alert().await.unwrap();
        eventually(&client, "p.flash.ok", "the pause confirmation", |t| {
            t.contains("Paused schedule nightly-report")
        })
        .await;
        assert!(text(&client, "h1").await.contains("paused"));
        assert!(client
            .find(Locator::Css(
                r#"form[action="/schedules/nightly-report/resume"] button"#
            ))
            .await
            .is_ok());

        // Workers.
        client.goto(&format!("{base}/workers")).await.unwrap();
        let workers = text(&client, "table.workers").await;
        assert!(
            workers.contains("mailer-1") && workers.contains("web-1") && workers.contains("4242"),
            "{workers}"
        );
        shot(&client, "workers").await;

        // A running job's progress moves without a reload.
        client
            .goto(&format!("{base}/jobs/{}", running.job.id))
            .await
            .unwrap();
        client
            .execute("window.__stayed = true", vec![])
            .await
            .unwrap();
        let beat = JobHeartbeat {
            id: running.job.id,
            lease: running.lease.clone(),
            progress: Some(Progress {
                fraction: 0.5,
                message: Some("half way: 500 of 1000 rows".into()),
            }),
            lease_duration: Duration::from_secs(300),
            now: Utc::now(),
        };
        // Told by the job's event stream, not by polling.
        let region = client.find(Locator::Css("div[data-live]")).await.unwrap();
        for _ in 0..100 {
            if region.attr("data-stream").await.unwrap().as_deref() == Some("open") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            region.attr("data-stream").await.unwrap().as_deref(),
            Some("open"),
            "the page follows the job's event stream"
        );
        store.job_heartbeat(beat).await.unwrap();
        eventually(&client, "div.progress", "the new progress", |t| {
            t.contains("half way") && t.contains("50%")
        })
        .await;
        assert_eq!(
            client
                .execute("return window.__stayed === true", vec![])
                .await
                .unwrap(),
            json!(true),
            "no reload"
        );
        shot(&client, "job-running").await;
        store
            .job_complete(JobComplete {
                id: running.job.id,
                lease: running.lease.clone(),
                result: Some(json!({"rows": 1000})),
                now: Utc::now(),
            })
            .await
            .unwrap();
        eventually(&client, "section.status", "the end", |t| {
            t.contains("completed")
        })
        .await;
        assert_eq!(
            region.attr("data-stream").await.unwrap().as_deref(),
            Some("ended")
        );

        // Hostile args and errors are text.
        client.goto(&format!("{base}/jobs/{xss}")).await.unwrap();
        assert!(text(&client, "pre.json")
            .await
            .contains("<script>window.__xss = 'args'</script>"));
        assert!(text(&client, "table.attempts")
            .await
            .contains("<script>window.__xss = 'error'</script><b>bold?</b>"));
        assert!(client
            .find_all(Locator::Css("table.attempts b, main img"))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            client
                .execute("return window.__xss === undefined", vec![])
                .await
                .unwrap(),
            json!(true)
        );
        shot(&client, "job-xss").await;
    }
    .await;
    let _ = client.close().await;
    shutdown.cancel();
    let _ = server.await;
    result
}

/// A batch's page follows the batch's event stream: as the test acks its
/// jobs through the API, the progress bar fills and the counts move, and
/// when the last one is acked the final state and the callback show, all
/// without a reload. The list, the job page's link to its batch and the
/// batch's job list are checked on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_watches_a_batch_fill_and_finish() {
    let Some((_driver, driver_url)) = start_driver().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("grafter.db"))
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(grafter_server::serve(
        listener,
        store.clone(),
        ServerConfig::default(),
        shutdown.clone(),
    ));
    let api = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let request = api.post(format!("{base}{path}")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(status.is_success(), "{status}: {body}");
            body
        }
    };
    let jobs: Vec<_> = (0..4)
        .map(|i| json!({"kind": "export", "queue": "exports", "args": {"part": i}}))
        .collect();
    let created = post(
        "/v1/batches".into(),
        json!({"jobs": jobs, "on_complete": {"kind": "notify", "queue": "callbacks"}}),
    )
    .await;
    let batch = created["batch"]["id"].as_i64().unwrap();
    let zip = post(
        "/v1/jobs".into(),
        json!({"kind": "zip", "queue": "zips", "depends_on_batches": [batch]}),
    )
    .await;
    let zip = zip["id"].as_i64().unwrap();

    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver_url, profile.path()).await;
    let result = async {
        // A job waiting for the batch says so, and links to it.
        client.goto(&format!("{base}/jobs/{zip}")).await.unwrap();
        assert!(text(&client, "section.status").await.contains("pending"));
        let waiting = text(&client, "p[data-waiting-for]").await;
        assert!(
            waiting.contains(&format!("batch #{batch}")) && waiting.contains("4 of 4"),
            "{waiting}"
        );
        let upstream = format!(r#"tr[data-upstream-batch="{batch}"]"#);
        assert!(text(&client, &upstream).await.contains("running"));
        shot(&client, "job-waiting-for-batch").await;

        // The list shows it running, and leads to its page.
        client.goto(&format!("{base}/batches")).await.unwrap();
        let row = text(&client, &format!(r#"tr[data-batch="{batch}"]"#)).await;
        assert!(row.contains("running") && row.contains("0%"), "{row}");
        shot(&client, "batches").await;
        client
            .find(Locator::Css(&format!(r#"a[href="/batches/{batch}"]"#)))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        eventually(&client, "h1", "the batch's page", |t| {
            t.contains(&format!("Batch #{batch}"))
        })
        .await;
        client
            .execute("window.__stayed = true", vec![])
            .await
            .unwrap();
        let region = client.find(Locator::Css("div[data-live]")).await.unwrap();
        for _ in 0..100 {
            if region.attr("data-stream").await.unwrap().as_deref() == Some("open") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            region.attr("data-stream").await.unwrap().as_deref(),
            Some("open"),
            "the page follows the batch's event stream"
        );
        assert!(text(&client, "section.status").await.contains("not yet"));

        // Acked one at a time through the API: the bar fills.
        let leased = post("/v1/fetch".into(), json!({"queues": ["exports"], "max": 4})).await;
        let leased = leased["jobs"].as_array().unwrap().clone();
        assert_eq!(leased.len(), 4);
        for (i, job) in leased.iter().enumerate() {
            let id = job["id"].as_i64().unwrap();
            post(format!("/v1/jobs/{id}/ack"), json!({"lease": job["lease"]})).await;
            let percent = format!("{}%", (i + 1) * 25);
            eventually(&client, "div.progress", "the bar to fill", |t| {
                t.contains(&percent)
            })
            .await;
            let completed = text(&client, r#"a.count[data-count="completed"] strong"#).await;
            assert_eq!(completed, (i + 1).to_string());
            if i == 1 {
                shot(&client, "batch-running").await;
            }
        }
        let status = eventually(&client, "section.status", "the final state", |t| {
            t.contains("succeeded")
        })
        .await;
        assert!(status.contains("finished"), "{status}");
        assert!(
            !status.contains("not yet"),
            "the callback shows enqueued: {status}"
        );
        for _ in 0..50 {
            if region.attr("data-stream").await.unwrap().as_deref() == Some("ended") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            region.attr("data-stream").await.unwrap().as_deref(),
            Some("ended")
        );
        assert_eq!(
            client
                .execute("return window.__stayed === true", vec![])
                .await
                .unwrap(),
            json!(true),
            "no reload"
        );
        shot(&client, "batch-finished").await;

        // Its jobs, and a job's way back to it.
        client
            .goto(&format!("{base}/jobs?batch={batch}"))
            .await
            .unwrap();
        let rows = client
            .find_all(Locator::Css("table.jobs tbody tr"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 4);
        let job = leased[0]["id"].as_i64().unwrap();
        client.goto(&format!("{base}/jobs/{job}")).await.unwrap();
        assert_eq!(
            text(&client, "a[data-batch-link]").await,
            format!("#{batch}")
        );

        // The job that waited for it is released, its batch shown finished.
        client.goto(&format!("{base}/jobs/{zip}")).await.unwrap();
        assert!(text(&client, "section.status").await.contains("available"));
        assert!(text(&client, &upstream).await.contains("succeeded"));
        assert!(client
            .find(Locator::Css("p[data-waiting-for]"))
            .await
            .is_err());
        client
            .find(Locator::Css(&format!(
                r#"{upstream} a[href="/batches/{batch}"]"#
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        eventually(&client, "h1", "the batch's page", |t| {
            t.contains(&format!("Batch #{batch}"))
        })
        .await;
    }
    .await;
    let _ = client.close().await;
    shutdown.cancel();
    let _ = server.await;
    result
}
