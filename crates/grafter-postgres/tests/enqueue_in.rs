//! Transactional enqueue: jobs enqueued inside an application's own transaction
//! exist if and only if it commits, and wake long-polls on other connections
//! only then.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use grafter_core::{JobState, NewJob};
use grafter_postgres::{enqueue_in, PostgresStore};
use grafter_store::{JobsFetch, JobsInsert, Store, StoreError};
use serde_json::json;
use tokio_postgres::{Client, NoTls};

use common::{database, fresh_config, listening};

/// Generous: a passing test never comes close.
const PATIENCE: Duration = Duration::from_secs(10);

/// A store on a fresh schema (which creates the tables), an application's own
/// connection to the same database, and the schema's name.
async fn setup(url: &str) -> (Arc<PostgresStore>, Client, String, common::DropSchema) {
    let (config, guard) = fresh_config(url);
    let store = Arc::new(
        PostgresStore::connect(config)
            .await
            .expect("connect the store"),
    );
    let (app, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect the app");
    tokio::spawn(connection);
    let schema = guard.schema.clone();
    (store, app, schema, guard)
}

fn fetch(queue: &str) -> JobsFetch {
    JobsFetch {
        queues: vec![queue.to_owned()],
        max: 10,
        lease_duration: Duration::from_secs(30),
        worker_id: Some("test".into()),
        running_limit: None,
        max_bytes: usize::MAX,
        now: Utc::now(),
    }
}

async fn search_path(client: &impl tokio_postgres::GenericClient) -> String {
    client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_enqueue_leaves_nothing_and_a_committed_one_wakes_a_long_poll() {
    let Some(url) = database().await else { return };
    let (store, mut app, schema, _guard) = setup(&url).await;

    let tx = app.transaction().await.unwrap();
    let inserted = enqueue_in(
        &tx,
        Some(&schema),
        vec![NewJob::new("welcome", json!({"n": 1}))],
    )
    .await
    .unwrap();
    assert_eq!(inserted.len(), 1);
    assert!(inserted[0].created);
    assert_eq!(inserted[0].job.state, JobState::Available);
    let rolled_back = inserted[0].job.id;
    tx.rollback().await.unwrap();
    assert_eq!(
        store.job_get(rolled_back).await.unwrap(),
        None,
        "a rolled-back job exists"
    );
    assert!(store.jobs_fetch(fetch("default")).await.unwrap().is_empty());

    // Wait for the store's listener, so the wake-up below can only come from
    // the commit's NOTIFY.
    listening(&url, &schema, 1).await;
    let wait = Duration::from_secs(20);
    let poller = store.clone();
    let started = Instant::now();
    // A long-poll as the engine does it: look, then wait to be woken.
    let waiter = store.wakeups().waiter(&["default".to_owned()]);
    let poll = tokio::spawn(async move {
        loop {
            let jobs = poller.jobs_fetch(fetch("default")).await?;
            if !jobs.is_empty() || tokio::time::timeout(wait, waiter.woken()).await.is_err() {
                return Ok::<_, grafter_store::StoreError>(jobs);
            }
        }
    });

    let tx = app.transaction().await.unwrap();
    let inserted = enqueue_in(
        &tx,
        Some(&schema),
        vec![NewJob::new("welcome", json!({"n": 2}))],
    )
    .await
    .unwrap();
    let id = inserted[0].job.id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered before the transaction committed"
    );
    assert_eq!(
        store.job_get(id).await.unwrap(),
        None,
        "an uncommitted job is visible"
    );
    tx.commit().await.unwrap();

    let leased = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("the long-poll was not woken")
        .unwrap()
        .unwrap();
    // Not a speed check: the poll's own timeout would mean it was never woken.
    assert!(
        started.elapsed() < wait,
        "the long-poll ran to its own timeout"
    );
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.id, id);
    assert_eq!(leased[0].job.args, json!({"n": 2}));
    assert_ne!(id, rolled_back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_keys_hold_against_committed_jobs_and_within_the_transaction() {
    let Some(url) = database().await else { return };
    let (store, mut app, schema, _guard) = setup(&url).await;
    let keyed = |key: &str| {
        let mut job = NewJob::new("sync", json!({"key": key}));
        job.unique_key = Some(key.to_owned());
        job
    };
    let held = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![keyed("a")],
            now: Utc::now(),
        })
        .await
        .unwrap();
    let held = held[0].job.id;

    let tx = app.transaction().await.unwrap();
    let jobs = vec![
        keyed("a"),
        keyed("b"),
        NewJob::new("plain", json!({})),
        keyed("b"),
    ];
    let inserted = enqueue_in(&tx, Some(&schema), jobs).await.unwrap();
    let created: Vec<bool> = inserted.iter().map(|i| i.created).collect();
    assert_eq!(created, [false, true, true, false]);
    assert_eq!(
        inserted[0].job.id, held,
        "the committed holder of key a is returned"
    );
    assert_eq!(
        inserted[3].job.id, inserted[1].job.id,
        "the holder of key b from this transaction is returned"
    );
    assert_eq!(inserted[2].job.kind, "plain");
    tx.commit().await.unwrap();

    let again = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![keyed("b")],
            now: Utc::now(),
        })
        .await
        .unwrap();
    assert!(
        !again[0].created,
        "the committed key b holds against the store's own enqueue"
    );
    assert_eq!(again[0].job.id, inserted[1].job.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_path_is_kept_and_a_failed_enqueue_leaves_the_transaction_usable() {
    let Some(url) = database().await else { return };
    let (store, mut app, schema, _guard) = setup(&url).await;
    let tx = app.transaction().await.unwrap();
    tx.batch_execute("CREATE TEMP TABLE signups (email text) ON COMMIT DROP")
        .await
        .unwrap();
    tx.execute("INSERT INTO signups VALUES ('ada@example.com')", &[])
        .await
        .unwrap();
    let before = search_path(&tx).await;

    let first = enqueue_in(&tx, Some(&schema), vec![NewJob::new("welcome", json!({}))])
        .await
        .unwrap();
    assert_eq!(
        search_path(&tx).await,
        before,
        "the transaction's search_path changed"
    );

    // A schema without Grafter's tables: an error, and the transaction goes on.
    let missing = enqueue_in(
        &tx,
        Some("grafter_no_such_schema"),
        vec![NewJob::new("x", json!({}))],
    )
    .await;
    assert!(
        matches!(missing, Err(StoreError::Backend(_))),
        "{missing:?}"
    );
    assert_eq!(search_path(&tx).await, before);
    // An invalid job: refused before anything is written.
    let mut bad = NewJob::new("x", json!({}));
    bad.max_attempts = 0;
    let refused = enqueue_in(&tx, Some(&schema), vec![NewJob::new("ok", json!({})), bad]).await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid(m)) if m.contains("jobs[1]")),
        "{refused:?}"
    );
    // A bad schema name.
    let refused = enqueue_in(&tx, Some(""), vec![NewJob::new("x", json!({}))]).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );

    // No schema: the transaction's own search_path decides.
    tx.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
        .await
        .unwrap();
    let second = enqueue_in(
        &tx,
        None,
        vec![NewJob::new("welcome", json!({"second": true}))],
    )
    .await
    .unwrap();
    let signups: i64 = tx
        .query_one("SELECT count(*) FROM signups", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(signups, 1, "the application's own work is intact");
    tx.commit().await.unwrap();

    assert!(store.job_get(first[0].job.id).await.unwrap().is_some());
    assert!(store.job_get(second[0].job.id).await.unwrap().is_some());
    let all = store
        .jobs_fetch(JobsFetch {
            max: 100,
            ..fetch("default")
        })
        .await
        .unwrap();
    let kinds: Vec<&str> = all.iter().map(|l| l.job.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["welcome", "welcome"],
        "only the two good enqueues were stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_deadpool_transaction_works_as_it_is() {
    let Some(url) = database().await else { return };
    let (store, _app, schema, _guard) = setup(&url).await;
    let manager = deadpool_postgres::Manager::new(url.parse().unwrap(), NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap();
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    // `&deadpool_postgres::Transaction` dereferences to the driver's transaction.
    let inserted = enqueue_in(&tx, Some(&schema), vec![NewJob::new("pooled", json!({}))])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(store.job_get(inserted[0].job.id).await.unwrap().is_some());
}
