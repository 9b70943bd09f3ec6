//! The library on PostgreSQL: a typed job enqueued inside the application's
//! own transaction (`grafter::postgres::enqueue_in`) runs only if that
//! transaction commits; a worker whose result could not be written while the
//! database was unreachable records it once the database is back; a finished
//! job's slot goes to the next job while its ack waits for the database.
//!
//! Needs PostgreSQL at `GRAFTER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the test skips loudly,
//! or fails when `CI` is set. Each test works in a fresh schema, dropped afterwards.

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grafter::postgres::{enqueue_in, enqueue_in_with, tokio_postgres};
use grafter::{Client, EnqueueOptions, Job, JobContext, JobError, JobState, Worker};
use grafter_postgres::{PostgresConfig, PostgresStore};
use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;

#[derive(Serialize, Deserialize)]
struct Welcome {
    email: String,
}

impl Job for Welcome {
    const KIND: &'static str = "welcome";
    type Output = String;

    async fn perform(self, _ctx: JobContext) -> Result<String, JobError> {
        Ok(format!("welcomed {}", self.email))
    }
}

/// The database URL, or `None` (with a loud message) when PostgreSQL is not
/// there and this is not CI; under CI its absence fails the test.
async fn database() -> Option<String> {
    let url = std::env::var("GRAFTER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let why =
        match tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls))
            .await
        {
            Ok(Ok(_)) => return Some(url),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out after 5 s".to_owned(),
        };
    assert!(
        std::env::var_os("CI").is_none(),
        "PostgreSQL not reachable at {url} ({why}); CI is set, so this fails instead of skipping"
    );
    // Straight to stderr: libtest hides `eprintln!` of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPING: PostgreSQL not reachable at {url} ({why}) ***\n"
    );
    None
}

/// Runs `test` with the database URL and a fresh schema name, then drops the
/// schema, pass or fail.
async fn in_fresh_schema<F, Fut>(url: String, test: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schema = format!(
        "grafter_test_lib_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    // In its own task, so that a panic comes back here as a value.
    let outcome = tokio::spawn(test(url.clone(), schema.clone())).await;
    let (admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_in_a_transaction_runs_only_once_it_commits() {
    let Some(url) = database().await else { return };
    in_fresh_schema(url, enqueue_and_run).await;
}

async fn enqueue_and_run(url: String, schema: String) {
    let mut config = PostgresConfig::new(&url);
    config.schema = Some(schema.clone());
    let store = Arc::new(
        PostgresStore::connect(config)
            .await
            .expect("connect the store"),
    );
    let client = Client::from_store(store);
    // Waiting longer than the test waits for a result: the jobs must be picked
    // up because the commit woke the worker, not because it looked again.
    let worker = Worker::builder(&client)
        .register::<Welcome>()
        .queue("default", 2)
        .poll_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let running = worker.start();

    let (mut app, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);

    // Rolled back: the job never existed.
    let tx = app.transaction().await.unwrap();
    let options = EnqueueOptions {
        unique_key: Some("ada".into()),
        ..Default::default()
    };
    let gone = enqueue_in_with(
        &tx,
        Some(&schema),
        Welcome {
            email: "ada@example.com".into(),
        },
        options.clone(),
    )
    .await
    .unwrap();
    assert!(gone.created);
    tx.rollback().await.unwrap();
    assert!(matches!(
        client.get(gone.job.id).await,
        Err(grafter::Error::NotFound(_))
    ));

    // Committed: the worker runs them. The same key within the transaction
    // returns the first job. Without a schema the tables are found through the
    // search_path (the wake-up comes from the first enqueue, which names the
    // nodes' schema and so their channel).
    let tx = app.transaction().await.unwrap();
    let first = enqueue_in_with(
        &tx,
        Some(&schema),
        Welcome {
            email: "ada@example.com".into(),
        },
        options,
    )
    .await
    .unwrap();
    tx.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
        .await
        .unwrap();
    let unkeyed = enqueue_in(
        &tx,
        Welcome {
            email: "bob@example.com".into(),
        },
    )
    .await
    .unwrap();
    let again = enqueue_in_with(
        &tx,
        Some(&schema),
        Welcome {
            email: "ada@example.com".into(),
        },
        EnqueueOptions {
            unique_key: Some("ada".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(first.created && unkeyed.created && !again.created);
    assert_eq!(again.job.id, first.job.id);
    tx.commit().await.unwrap();

    for (id, result) in [
        (first.job.id, "welcomed ada@example.com"),
        (unkeyed.job.id, "welcomed bob@example.com"),
    ] {
        let done = client.wait(id, Duration::from_secs(15)).await.unwrap();
        assert_eq!(done.state, JobState::Completed);
        assert_eq!(done.result, Some(serde_json::json!(result)));
    }
    running.shutdown().await;
}

/// Blocks until the test opens its gate, so the test decides when it finishes.
#[derive(Serialize, Deserialize)]
struct Gated;

static GATED_STARTED: AtomicBool = AtomicBool::new(false);
static GATE_OPEN: AtomicBool = AtomicBool::new(false);

impl Job for Gated {
    const KIND: &'static str = "gated";
    const QUEUE: &'static str = "gated";
    type Output = String;

    async fn perform(self, _ctx: JobContext) -> Result<String, JobError> {
        GATED_STARTED.store(true, Ordering::SeqCst);
        while !GATE_OPEN.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok("finished during the outage".into())
    }
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every open
/// connection dropped, new ones dropped as they come) and restore: to Grafter
/// this looks like a database restart or a network outage.
struct Proxy {
    /// A connection string that goes through the proxy.
    url: String,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(url: &str) -> Proxy {
        let config: tokio_postgres::Config = url.parse().expect("a valid database URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            other => panic!("the outage test needs PostgreSQL over TCP, not {other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut proxied = format!(
            "host=127.0.0.1 port={}",
            listener.local_addr().unwrap().port()
        );
        if let Some(user) = config.get_user() {
            proxied.push_str(&format!(" user={user}"));
        }
        if let Some(password) = config.get_password() {
            proxied.push_str(&format!(" password={}", String::from_utf8_lossy(password)));
        }
        if let Some(dbname) = config.get_dbname() {
            proxied.push_str(&format!(" dbname={dbname}"));
        }
        let (up, _) = tokio::sync::watch::channel(true);
        let watch_up = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*watch_up.borrow() {
                    continue; // dropped at once
                }
                let mut cut = watch_up.subscribe();
                let upstream = (host.clone(), port);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { url: proxied, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_could_not_be_written_is_recorded_once_the_database_is_back() {
    let Some(url) = database().await else { return };
    in_fresh_schema(url, record_through_an_outage).await;
}

async fn record_through_an_outage(url: String, schema: String) {
    let proxy = Proxy::start(&url).await;
    let mut config = PostgresConfig::new(&proxy.url);
    config.schema = Some(schema);
    let store = Arc::new(
        PostgresStore::connect(config)
            .await
            .expect("connect through the proxy"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop_server = shutdown.clone().drop_guard();
    tokio::spawn(grafter::server::serve(
        listener,
        store,
        Default::default(),
        shutdown,
    ));

    // The worker talks HTTP to the server, which cannot reach the database
    // while the proxy is cut: its answers are then 503s, never a false 200.
    let client = Client::http(&server_url).unwrap();
    let worker = Worker::builder(&client)
        .register::<Gated>()
        .queue("gated", 1)
        .lease(Duration::from_secs(20))
        .poll_wait(Duration::from_millis(500))
        .build()
        .unwrap();
    let running = worker.start();
    let id = client.enqueue(Gated).await.unwrap().job.id;
    let started = tokio::time::timeout(Duration::from_secs(15), async {
        while !GATED_STARTED.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    started.await.expect("the worker never started the job");

    proxy.cut();
    assert!(
        matches!(client.get(id).await, Err(grafter::Error::Unavailable(_))),
        "the server still reaches the database through a cut proxy"
    );
    // The job finishes; recording its result fails while the database is away.
    GATE_OPEN.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(matches!(
        client.get(id).await,
        Err(grafter::Error::Unavailable(_))
    ));

    proxy.restore();
    let done = client
        .wait(id, Duration::from_secs(15))
        .await
        .expect("the job is finished");
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    // The same attempt's result: recorded by the retry, not run again after
    // its lease (20 s) ran out.
    assert_eq!(done.attempt, 1, "{done:?}");
    assert_eq!(
        done.result,
        Some(serde_json::json!("finished during the outage"))
    );
    running.shutdown().await;
}

/// Jobs of the slot test: each says it started; "first" then waits for the gate.
#[derive(Serialize, Deserialize)]
struct Step {
    name: String,
}

static STARTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl Job for Step {
    const KIND: &'static str = "step";
    type Output = ();

    async fn perform(self, _ctx: JobContext) -> Result<(), JobError> {
        STARTED.lock().unwrap().push(self.name.clone());
        if self.name == "first" {
            GATE.notified().await;
        }
        Ok(())
    }
}

/// Polls `check` every 20 ms for up to 10 s.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_jobs_slot_goes_to_the_next_job_while_its_ack_waits() {
    let Some(url) = database().await else { return };
    in_fresh_schema(url, next_job_runs_while_ack_waits).await;
}

/// One slot. The first job finishes while another session holds its row
/// locked, so its ack cannot commit; the second job runs meanwhile, and the
/// first is completed once the lock goes.
async fn next_job_runs_while_ack_waits(url: String, schema: String) {
    let mut config = PostgresConfig::new(&url);
    config.schema = Some(schema.clone());
    let store = Arc::new(PostgresStore::connect(config).await.unwrap());
    let client = Client::from_store(store);
    let step = |name: &str| Step { name: name.into() };
    let first = client.enqueue(step("first")).await.unwrap().job.id;
    let second = client.enqueue(step("second")).await.unwrap().job.id;
    let worker = Worker::builder(&client)
        .register::<Step>()
        .queue("default", 1)
        .build()
        .unwrap();
    let running = worker.start();
    let started = |name: &str| STARTED.lock().unwrap().iter().any(|n| n == name);
    assert!(
        eventually(|| started("first")).await,
        "the first job never ran"
    );

    let (mut admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let lock = admin.transaction().await.unwrap();
    lock.execute(
        &format!("SELECT 1 FROM \"{schema}\".jobs WHERE id = $1 FOR UPDATE"),
        &[&first.0],
    )
    .await
    .unwrap();
    GATE.notify_one();

    assert!(
        eventually(|| started("second")).await,
        "the second job did not run while the first one's ack waited"
    );
    let pending = client.get(first).await.unwrap();
    assert_eq!(
        pending.state,
        JobState::Running,
        "the first job's ack should still be waiting for the lock"
    );

    lock.rollback().await.unwrap();
    for id in [first, second] {
        let mut state = JobState::Running;
        for _ in 0..500 {
            state = client.get(id).await.unwrap().state;
            if state == JobState::Completed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(state, JobState::Completed, "job {id}");
    }
    running.shutdown().await;
}
