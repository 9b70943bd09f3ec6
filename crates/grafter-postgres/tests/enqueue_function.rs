//! The SQL enqueue functions of migration 10 (`grafter_enqueue_v1`,
//! `grafter_enqueue_many_v1`): the job they store is the job the Rust store
//! stores for the same JSON, they refuse what the API refuses, naming the
//! field, and they enqueue inside the caller's transaction, waking waiting
//! fetches on commit and only then; a transaction left open holding an
//! upstream stalls nothing but that upstream's changes, and only for the
//! lock timeout; racing calls never deadlock on their upstreams.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use grafter_core::storable::MAX_JSON_DEPTH;
use grafter_core::{Job, JobState, NewJob};
use grafter_postgres::{PostgresConfig, PostgresStore};
use grafter_store::{BatchCreate, JobFail, JobHeartbeat, JobsFetch, JobsInsert, Store, StoreError};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

use common::{database, fresh_schema, listening, DropSchema};

/// Generous: a passing test never comes close.
const PATIENCE: Duration = Duration::from_secs(10);

/// A store on a fresh schema whose name holds `odd` (quotes, spaces…), an
/// application's own connection, and the schema's name.
async fn setup(
    url: &str,
    odd: impl Fn(&str) -> String,
) -> (Arc<PostgresStore>, Client, String, DropSchema) {
    let fresh = fresh_schema();
    let schema = format!("{fresh}{}", odd(&fresh));
    let guard = DropSchema {
        url: url.to_owned(),
        // DropSchema wraps the name in double quotes as it is.
        schema: schema.replace('"', "\"\""),
    };
    let mut config = PostgresConfig::new(url);
    config.schema = Some(schema.clone());
    config.pool_size = 4;
    let store = Arc::new(
        PostgresStore::connect(config)
            .await
            .expect("connect the store"),
    );
    let (app, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect the app");
    tokio::spawn(connection);
    (store, app, schema, guard)
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `SELECT schema.grafter_enqueue_v1($1)` on `client` (a connection or a transaction).
async fn enqueue_sql(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    job: &str,
) -> Result<Value, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {}.grafter_enqueue_v1($1::text::json)",
        ident(schema)
    );
    client.query_one(&sql, &[&job]).await.map(|row| row.get(0))
}

async fn enqueue_many_sql(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    jobs: &str,
) -> Result<Value, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {}.grafter_enqueue_many_v1($1::text::json)",
        ident(schema)
    );
    client.query_one(&sql, &[&jobs]).await.map(|row| row.get(0))
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

fn job_of(value: &Value) -> Job {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("not a job ({e}): {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_a_long_poll_and_a_rollback_leaves_nothing_and_wakes_nobody() {
    let Some(url) = database().await else { return };
    // A schema name with quotes, a space, a semicolon and a backslash, long
    // enough that the channel name is cut at 63 bytes, inside the é (padded
    // to that whatever the length of the fresh name).
    let odd = |fresh: &str| {
        let start = format!("grafter_jobs:{fresh} o'd\"d; \\ ");
        format!(" o'd\"d; \\ {}é", "x".repeat(62 - start.len()))
    };
    let (store, mut app, schema, _guard) = setup(&url, odd).await;
    assert_eq!(format!("grafter_jobs:{schema}").find('é'), Some(62));
    // The wake-up below can only come from the commit's NOTIFY.
    listening(&url, &schema[..schema.find(" ").unwrap()], 1).await;

    let poll = |store: Arc<PostgresStore>, wait: Duration| {
        // A long-poll as the engine does it: look, then wait to be woken.
        let waiter = store.wakeups().waiter(&["mail".to_owned()]);
        tokio::spawn(async move {
            loop {
                let jobs = store.jobs_fetch(fetch("mail")).await.unwrap();
                if !jobs.is_empty() || tokio::time::timeout(wait, waiter.woken()).await.is_err() {
                    return jobs;
                }
            }
        })
    };

    // Rolled back: no job, and the waiting fetch is not woken.
    let waiting = poll(store.clone(), Duration::from_secs(2));
    let tx = app.transaction().await.unwrap();
    let rolled_back = enqueue_sql(&tx, &schema, r#"{"kind": "welcome", "queue": "mail"}"#)
        .await
        .unwrap();
    let rolled_back = job_of(&rolled_back).id;
    tx.rollback().await.unwrap();
    let started = Instant::now();
    let leased = waiting.await.unwrap();
    assert!(leased.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "a rolled-back enqueue woke the waiting fetch"
    );
    assert_eq!(store.job_get(rolled_back).await.unwrap(), None);

    // Committed: the waiting fetch (on the store's own node: the
    // notification is from no node, so it is not skipped as an echo) is
    // woken and leases the job.
    let wait = Duration::from_secs(20);
    let waiting = poll(store.clone(), wait);
    let started = Instant::now();
    let tx = app.transaction().await.unwrap();
    let job = enqueue_sql(
        &tx,
        &schema,
        r#"{"kind": "welcome", "queue": "mail", "args": {"n": 2}}"#,
    )
    .await
    .unwrap();
    let id = job_of(&job).id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "woken before the commit");
    assert_eq!(
        store.job_get(id).await.unwrap(),
        None,
        "visible before the commit"
    );
    tx.commit().await.unwrap();
    let leased = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the long-poll was not woken")
        .unwrap();
    assert!(
        started.elapsed() < wait,
        "the long-poll ran to its own timeout"
    );
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.id, id);
    assert_eq!(leased[0].job.args, json!({"n": 2}));

    // Called without the schema on the search path, the function still finds
    // its tables; the caller's search_path is left as it was.
    let before: String = app.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    enqueue_sql(&app, &schema, r#"{"kind": "again"}"#)
        .await
        .unwrap();
    let after: String = app.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(before, after);
}

/// Inputs the API accepts; each must give the same stored job both ways.
const ACCEPTED: &[&str] = &[
    r#"{"kind": "a"}"#,
    r#"{"kind": "send_email", "args": {"to": "a@b", "n": [1, 2.5, -3, 1e2, -0, 1.50, 0.1, 1e21, 1E-7, 5e-324, 1e-400, -1e-400, 1e308, 1.5e300]},
        "queue": "mail", "priority": -5, "run_at": "2030-01-01T00:00:00.123456789+02:00",
        "max_attempts": 3, "tags": ["x", "y", "x"], "unique_key": "k1", "timeout_ms": 1000,
        "expires_at": "2031-01-01 00:00:00z", "backoff": {"base_ms": 10, "factor": 3, "max_ms": 1000, "jitter": 0}}"#,
    r#"{"kind": "a", "args": [18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809, 12345678901234567890123, 123456789012345678]}"#,
    r#"{"kind": "a", "args": [1e15, 1e16, 1e17, 123.456e5, 0.00001, 0.000001, -2.5E+3, 9007199254740993]}"#,
    r#"{"kind": "a", "args": null}"#,
    r#"{"kind": "a", "args": "quote \" backslash \\ tab \t nl \n é \u00e9 \/ \u0001 😀 \ud83d\ude00 , : "}"#,
    r#"{"kind": "a", "args": {"a, b": "c: d", "e\"": [{}, [], {"f": {"g": [true, false, null]}}]}}"#,
    r#"{"kind": "a", "args": 42}"#,
    r#"{"kind": "a", "backoff": {}}"#,
    r#"{"kind": "a", "backoff": {"jitter": 1, "factor": 1.0}}"#,
    r#"{"kind": "a", "backoff": null, "run_at": null, "unique_key": null, "timeout_ms": null, "expires_at": null}"#,
    r#"{"kind": "é", "queue": "ü ü", "tags": []}"#,
    r#"{"kind": "a", "priority": -32768, "max_attempts": 2147483647, "timeout_ms": 3153600000000}"#,
    r#"{"kind": "a", "run_at": "2030-01-01 00:00:00Z"}"#,
    r#"{"kind": "a", "run_at": "2030-01-01t00:00:00z"}"#,
    r#"{"kind": "a", "run_at": "2030-01-01T00:00:00+0200"}"#,
    r#"{"kind": "a", "run_at": "2030-01-01T00:00:00+23:59"}"#,
    r#"{"kind": "a", "run_at": "2030-01-01T00:00:00-00:00"}"#,
    r#"{"kind": "a", "run_at": "2030-06-30T23:59:60Z"}"#,
    r#"{"kind": "a", "run_at": "2030-06-30T12:00:60.5Z"}"#,
    r#"{"kind": "a", "run_at": "1999-12-31T23:59:59.0000005Z"}"#,
    r#"{"kind": "a", "run_at": "1970-01-01T00:00:00.1234567Z"}"#,
    r#"{"kind": "a", "run_at": "2030-01-01T00:00:00.1234567891234Z"}"#,
    r#"{"kind": "a", "run_at": "+2030-01-01T00:00:00Z"}"#,
    r#"{"kind": "a", "run_at": " 2030-01-01T00:00:00Z "}"#,
    r#"{"kind": "a", "run_at": "2030-1-01T0:00:00Z"}"#,
    r#"{"kind": "a", "run_at": "2030-01-01T00:00:00 +02:00"}"#,
    r#"{"kind": "a", "run_at": "2030-01-01T00:00:00UTC"}"#,
    r#"{"kind": "a", "run_at": "2000-01-01T00:00:00.5Z"}"#,
    r#"{"kind": "a", "run_at": "0001-01-01T00:00:00Z", "expires_at": "9999-12-31T23:59:59.999999Z"}"#,
    r#"{"kind": "a", "run_at": "0001-01-01T01:00:00+01:00"}"#,
    r#"{"kind": "a", "run_at": "+10000-01-01T00:00:00+01:00"}"#,
    r#"{"kind": "a", "run_at": "2000-01-01T00:00:00.0000001Z"}"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_the_function_is_the_job_the_api_stores() {
    let Some(url) = database().await else { return };
    let (store, app, schema, _guard) = setup(&url, |_| String::new()).await;
    let mut cases: Vec<String> = ACCEPTED.iter().map(|s| s.to_string()).collect();
    // Sizes at the edges of the rules.
    cases.push(json!({"kind": "é".repeat(127) + "x", "tags": vec!["t"; 64]}).to_string());
    cases.push(format!(
        r#"{{"kind": "a", "args": {}{}}}"#,
        "[".repeat(MAX_JSON_DEPTH),
        "]".repeat(MAX_JSON_DEPTH)
    ));
    cases.push(
        json!({"kind": "a", "args": {"big": "x".repeat(100_000), "n": vec![1.5; 1000]}})
            .to_string(),
    );

    let stored = |id: i64| {
        let sql = format!(
            "SELECT args::text, args_bytes, state FROM {}.jobs WHERE id = $1",
            ident(&schema)
        );
        let app = &app;
        async move {
            let row = app.query_one(&sql, &[&id]).await.unwrap();
            (
                row.get::<_, String>(0),
                row.get::<_, i32>(1),
                row.get::<_, String>(2),
            )
        }
    };
    for input in &cases {
        let short: String = input.chars().take(120).collect();
        // The API's path: serde, NewJob::validate, the store's insert.
        let new_job: NewJob =
            serde_json::from_str(input).unwrap_or_else(|e| panic!("{short}: {e}"));
        new_job
            .validate()
            .unwrap_or_else(|e| panic!("{short}: {e}"));
        let by_api = store
            .jobs_insert_many(JobsInsert {
                jobs: vec![new_job],
                now: Utc::now(),
            })
            .await
            .unwrap()
            .remove(0)
            .job;
        let api_row = stored(by_api.id.0).await;
        // Out of the way of the function's insert (unique keys).
        store.job_delete(by_api.id).await.unwrap();

        let answer = enqueue_sql(&app, &schema, input)
            .await
            .unwrap_or_else(|e| panic!("{short}: {e:?}"));
        let by_sql = job_of(&answer);
        assert_eq!(
            store.job_get(by_sql.id).await.unwrap().as_ref(),
            Some(&by_sql),
            "{short}: the function's answer is the stored job"
        );
        let sql_row = stored(by_sql.id.0).await;
        store.job_delete(by_sql.id).await.unwrap();

        assert_eq!(
            api_row, sql_row,
            "{short}: args as stored, args_bytes, state"
        );
        let mut expected = by_api.clone();
        expected.id = by_sql.id;
        expected.created_at = by_sql.created_at;
        if !input.contains("\"run_at\": \"") {
            // Both default to their own "now".
            expected.run_at = by_sql.run_at;
        }
        assert_eq!(by_sql, expected, "{short}");
    }
}

/// Inputs the API refuses, and the field its error names.
const REFUSED: &[(&str, &str)] = &[
    // Shape and fields, as serde reads a NewJob.
    (r#"[1]"#, "body"),
    (r#"{"queue": "q"}"#, "kind"),
    (r#"{"kind": null}"#, "kind"),
    (r#"{"kind": 5}"#, "kind"),
    (r#"{"kind": "a", "priorty": 1}"#, "priorty"),
    (r#"{"kind": "a", "kind": "b"}"#, "body"),
    (r#"{"kind": "a", "tags": null}"#, "tags"),
    (r#"{"kind": "a", "tags": [1]}"#, "tags[0]"),
    (r#"{"kind": "a", "queue": null}"#, "queue"),
    // Integers: type and range.
    (r#"{"kind": "a", "priority": 1e2}"#, "priority"),
    (r#"{"kind": "a", "priority": 1.0}"#, "priority"),
    (r#"{"kind": "a", "priority": -0}"#, "priority"),
    (r#"{"kind": "a", "priority": 40000}"#, "priority"),
    (r#"{"kind": "a", "priority": "1"}"#, "priority"),
    (
        r#"{"kind": "a", "max_attempts": 2147483648}"#,
        "max_attempts",
    ),
    (
        r#"{"kind": "a", "timeout_ms": 9223372036854775808}"#,
        "timeout_ms",
    ),
    (r#"{"kind": "a", "timeout_ms": 1.5}"#, "timeout_ms"),
    // Names.
    (r#"{"kind": ""}"#, "kind"),
    (r#"{"kind": "a\u0007"}"#, "kind"),
    (r#"{"kind": "a\u0000"}"#, "kind"),
    (r#"{"kind": "\u200b"}"#, "kind"),
    (r#"{"kind": "a\u202eb"}"#, "kind"),
    (r#"{"kind": "a\udb40\udc01"}"#, "kind"),
    (r#"{"kind": "a", "queue": " sp"}"#, "queue"),
    (r#"{"kind": "a", "queue": "x\u3000"}"#, "queue"),
    (r#"{"kind": "a", "queue": "\u00a0x"}"#, "queue"),
    (r#"{"kind": "a", "tags": ["ok", ""]}"#, "tags"),
    (r#"{"kind": "a", "unique_key": "k\n"}"#, "unique_key"),
    // A lone surrogate is not text: the whole body is refused.
    (r#"{"kind": "\ud800"}"#, "body"),
    // Args.
    (r#"{"kind": "a", "args": {"x": "\u0000"}}"#, "args"),
    (r#"{"kind": "a", "args": {"\u0000": 1}}"#, "args"),
    (r#"{"kind": "a", "args": {"x": 1e400}}"#, "args"),
    (r#"{"kind": "a", "args": [-1e309]}"#, "args"),
    (r#"{"kind": "a", "args": ["\udc00"]}"#, "body"),
    // Counts and ranges.
    (r#"{"kind": "a", "max_attempts": 0}"#, "max_attempts"),
    (r#"{"kind": "a", "timeout_ms": 0}"#, "timeout_ms"),
    (
        r#"{"kind": "a", "timeout_ms": 3153600000001}"#,
        "timeout_ms",
    ),
    // Times: format and years 1 to 9999.
    (
        r#"{"kind": "a", "run_at": "0000-12-31T00:00:00Z"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "run_at": "0001-01-01T00:00:00+00:01"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "expires_at": "+10000-01-01T00:00:00Z"}"#,
        "expires_at",
    ),
    (
        r#"{"kind": "a", "expires_at": "9999-12-31T23:59:59.9999999Z"}"#,
        "expires_at",
    ),
    (
        r#"{"kind": "a", "run_at": "2030-01-01T00:00:00+24:00"}"#,
        "run_at",
    ),
    (r#"{"kind": "a", "run_at": "2030-01-01T00:00Z"}"#, "run_at"),
    (
        r#"{"kind": "a", "run_at": "2030-01-01T00:00:00"}"#,
        "run_at",
    ),
    (r#"{"kind": "a", "run_at": "2030-01-01"}"#, "run_at"),
    (
        r#"{"kind": "a", "run_at": "2030-01-01T00:00:00.Z"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "run_at": "02030-01-01T00:00:00Z"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "run_at": "2030-02-30T00:00:00Z"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "run_at": "2030-01-01T24:00:00Z"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "run_at": "2030-01-01T00:00:00+02"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "run_at": "2030-01-01T00:00:00,5Z"}"#,
        "run_at",
    ),
    (
        r#"{"kind": "a", "run_at": "2030-01-01T00:00:00+02:00:30"}"#,
        "run_at",
    ),
    (r#"{"kind": "a", "run_at": 1700000000}"#, "run_at"),
    // Backoff.
    (r#"{"kind": "a", "backoff": {"factor": 0.5}}"#, "backoff"),
    (r#"{"kind": "a", "backoff": {"jitter": 1.5}}"#, "backoff"),
    (
        r#"{"kind": "a", "backoff": {"max_ms": 31536000001}}"#,
        "backoff",
    ),
    (
        r#"{"kind": "a", "backoff": {"base_ms": 10, "max_ms": 1}}"#,
        "backoff",
    ),
    (r#"{"kind": "a", "backoff": {"foo": 1}}"#, "backoff.foo"),
    (
        r#"{"kind": "a", "backoff": {"factor": "2"}}"#,
        "backoff.factor",
    ),
    (
        r#"{"kind": "a", "backoff": {"base_ms": -1}}"#,
        "backoff.base_ms",
    ),
    (
        r#"{"kind": "a", "backoff": {"factor": 1e400}}"#,
        "backoff.factor",
    ),
    (r#"{"kind": "a", "backoff": 5}"#, "backoff"),
    (r#"{"kind": "a", "queue": ".."}"#, "queue"),
    (r#"{"kind": "a", "queue": "."}"#, "queue"),
];

/// Whether the API refuses `input` (serde or NewJob::validate).
fn api_refuses(input: &str) -> bool {
    serde_json::from_str::<NewJob>(input).map_or(true, |job| job.validate().is_err())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_is_refused_as_the_api_refuses_it_naming_the_field() {
    let Some(url) = database().await else { return };
    let (store, app, schema, _guard) = setup(&url, |_| String::new()).await;
    let mut cases: Vec<(String, &str)> = REFUSED
        .iter()
        .map(|&(input, field)| (input.to_owned(), field))
        .collect();
    cases.push((json!({"kind": "x".repeat(256)}).to_string(), "kind"));
    cases.push((json!({"kind": "é".repeat(128)}).to_string(), "kind"));
    cases.push((
        json!({"kind": "a", "tags": vec!["t"; 65]}).to_string(),
        "tags",
    ));
    cases.push((
        format!(
            r#"{{"kind": "a", "args": {}{}}}"#,
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        ),
        "args",
    ));
    cases.push((
        format!(
            r#"{{"kind": "a", "args": {{"a": {}{}}}}}"#,
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        ),
        "args",
    ));
    for (input, field) in &cases {
        let short: String = input.chars().take(100).collect();
        assert!(api_refuses(input), "the API accepts {short}");
        let error = enqueue_sql(&app, &schema, input)
            .await
            .expect_err(&format!("the function accepted {short}"));
        let db = error
            .as_db_error()
            .unwrap_or_else(|| panic!("{short}: {error:?}"));
        assert_eq!(db.code().code(), "22023", "{short}: {}", db.message());
        assert_eq!(db.column(), Some(*field), "{short}: {}", db.message());
        assert!(
            db.message().starts_with(&format!("{field}: ")),
            "{short}: {}",
            db.message()
        );
    }
    // Batches: the job is named, and one bad job stores none.
    let error = enqueue_many_sql(&app, &schema, r#"[{"kind": "ok"}, {"kind": ""}]"#)
        .await
        .unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(db.column(), Some("jobs[1].kind"), "{}", db.message());
    for bad in ["[]", r#"{"kind": "a"}"#] {
        let error = enqueue_many_sql(&app, &schema, bad).await.unwrap_err();
        assert_eq!(error.as_db_error().unwrap().column(), Some("jobs"), "{bad}");
    }
    // Not JSON at all: PostgreSQL's own error, before the function runs.
    let error = enqueue_sql(&app, &schema, "{kind").await.unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "22P02");
    assert!(store.jobs_fetch(fetch("default")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_keys_behave_as_the_apis() {
    let Some(url) = database().await else { return };
    let (store, mut app, schema, _guard) = setup(&url, |_| String::new()).await;
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
        .unwrap()
        .remove(0)
        .job;

    // Held by a committed job, by an earlier job of the same batch, and free.
    let tx = app.transaction().await.unwrap();
    let jobs = enqueue_many_sql(
        &tx,
        &schema,
        r#"[{"kind": "sync", "unique_key": "a"}, {"kind": "sync", "unique_key": "b"},
            {"kind": "plain"}, {"kind": "sync", "unique_key": "b", "args": {"later": true}}]"#,
    )
    .await
    .unwrap();
    let jobs: Vec<Job> = jobs.as_array().unwrap().iter().map(job_of).collect();
    assert_eq!(
        jobs[0], held,
        "the committed holder of a is returned as it is"
    );
    assert_eq!(
        jobs[3], jobs[1],
        "the holder of b from this batch is returned"
    );
    assert_eq!(jobs[2].kind, "plain");
    assert!(jobs[1].id < jobs[2].id, "ids follow the batch's order");
    tx.commit().await.unwrap();
    let again = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![keyed("b")],
            now: Utc::now(),
        })
        .await
        .unwrap()
        .remove(0);
    assert!(
        !again.created,
        "the function's key holds against the store's own enqueue"
    );
    assert_eq!(again.job.id, jobs[1].id);

    // A finished job no longer holds its key.
    let leased = store
        .jobs_fetch(JobsFetch {
            max: 100,
            ..fetch("default")
        })
        .await
        .unwrap();
    let a = leased.iter().find(|l| l.job.id == held.id).unwrap();
    store
        .job_complete(grafter_store::JobComplete {
            id: a.job.id,
            lease: a.lease.clone(),
            result: None,
            now: Utc::now(),
        })
        .await
        .unwrap();
    let fresh = job_of(
        &enqueue_sql(&app, &schema, r#"{"kind": "sync", "unique_key": "a"}"#)
            .await
            .unwrap(),
    );
    assert_ne!(fresh.id, held.id);
    assert_eq!(fresh.state, JobState::Available);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_racing_for_a_unique_key_get_one_job() {
    let Some(url) = database().await else { return };
    let (store, mut first, schema, _guard) = setup(&url, |_| String::new()).await;
    let (mut second, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);

    // The second waits for the first; the first commits: both see its job.
    let tx = first.transaction().await.unwrap();
    let mine = job_of(
        &enqueue_sql(&tx, &schema, r#"{"kind": "k", "unique_key": "race"}"#)
            .await
            .unwrap(),
    );
    let racing = {
        let schema = schema.clone();
        tokio::spawn(async move {
            let tx = second.transaction().await.unwrap();
            let theirs = enqueue_sql(&tx, &schema, r#"{"kind": "k", "unique_key": "race"}"#).await;
            tx.commit().await.unwrap();
            (theirs.map(|v| job_of(&v)), second)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !racing.is_finished(),
        "the second did not wait for the first"
    );
    tx.commit().await.unwrap();
    let (theirs, second) = tokio::time::timeout(PATIENCE, racing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(theirs.unwrap().id, mine.id);

    // The first rolls back: the second creates the job.
    let tx = first.transaction().await.unwrap();
    let rolled_back = job_of(
        &enqueue_sql(&tx, &schema, r#"{"kind": "k", "unique_key": "race2"}"#)
            .await
            .unwrap(),
    );
    let racing = {
        let schema = schema.clone();
        tokio::spawn(async move {
            let theirs =
                enqueue_sql(&second, &schema, r#"{"kind": "k", "unique_key": "race2"}"#).await;
            (theirs.map(|v| job_of(&v)), second)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.rollback().await.unwrap();
    let (theirs, mut second) = tokio::time::timeout(PATIENCE, racing)
        .await
        .unwrap()
        .unwrap();
    let theirs = theirs.unwrap();
    assert_ne!(theirs.id, rolled_back.id);
    assert_eq!(
        store
            .job_get(theirs.id)
            .await
            .unwrap()
            .unwrap()
            .unique_key
            .as_deref(),
        Some("race2")
    );

    // Batches holding the same keys in opposite orders: one after the other,
    // never a deadlock (the advisory locks of inserts.rs).
    let a = first.transaction().await.unwrap();
    let b = second.transaction().await.unwrap();
    let ab = r#"[{"kind": "k", "unique_key": "x"}, {"kind": "k", "unique_key": "y"}]"#;
    let ba = r#"[{"kind": "k", "unique_key": "y"}, {"kind": "k", "unique_key": "x"}]"#;
    let both = async { tokio::join!(hold_batch(a, &schema, ab), hold_batch(b, &schema, ba)) };
    let (left, right) = tokio::time::timeout(PATIENCE, both)
        .await
        .expect("two batches sharing unique keys hang");
    let (left, right) = (left.unwrap(), right.unwrap());
    assert_eq!(left[0]["id"], right[1]["id"]);
    assert_eq!(left[1]["id"], right[0]["id"]);
}

/// Enqueues `jobs` in `tx` and commits a while later, holding their keys
/// that long.
async fn hold_batch(
    tx: tokio_postgres::Transaction<'_>,
    schema: &str,
    jobs: &str,
) -> Result<Value, tokio_postgres::Error> {
    let out = enqueue_many_sql(&tx, schema, jobs).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.commit().await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_many_inputs_answer_without_hanging() {
    let Some(url) = database().await else { return };
    let (store, mut app, schema, _guard) = setup(&url, |_| String::new()).await;
    // A 10,000-job batch, the API's largest, in one statement.
    let jobs: Vec<Value> = (0..10_000)
        .map(|i| json!({"kind": "bulk", "args": {"i": i}, "queue": format!("q{}", i % 7)}))
        .collect();
    let tx = app.transaction().await.unwrap();
    let started = Instant::now();
    let out = enqueue_many_sql(&tx, &schema, &Value::from(jobs).to_string())
        .await
        .unwrap();
    let took = started.elapsed();
    tx.commit().await.unwrap();
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), 10_000);
    assert!(out
        .windows(2)
        .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));
    eprintln!("10,000 jobs through grafter_enqueue_many_v1 in {took:?}");
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"kind": "x"})).collect();
    let error = enqueue_many_sql(&app, &schema, &Value::from(too_many).to_string())
        .await
        .unwrap_err();
    assert_eq!(error.as_db_error().unwrap().column(), Some("jobs"));

    // 8 MB of args.
    let big = json!({"kind": "big", "args": {"blob": "é".repeat(4_000_000)}}).to_string();
    let job = job_of(&enqueue_sql(&app, &schema, &big).await.unwrap());
    assert_eq!(
        store.job_get(job.id).await.unwrap().unwrap().args["blob"]
            .as_str()
            .unwrap()
            .len(),
        8_000_000
    );
}

/// `depends_on` (job ids) and `depends_on_batches` through the function:
/// stored and linked as the Rust store links them (the same columns, the
/// same release), refused as the API refuses them, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_are_linked_and_refused_as_the_api_does() {
    let Some(url) = database().await else { return };
    let (store, app, schema, _guard) = setup(&url, |_| String::new()).await;
    let now = Utc::now();
    let one = |queue: &str| NewJob {
        queue: queue.into(),
        max_attempts: 1,
        ..NewJob::new("up", json!({}))
    };
    let up = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![one("up")],
            now,
        })
        .await
        .unwrap()
        .remove(0)
        .job;
    let batch = store
        .batch_create(BatchCreate {
            jobs: vec![one("in-batch")],
            open: false,
            callbacks: Default::default(),
            now,
        })
        .await
        .unwrap()
        .batch;
    let input = json!({"kind": "down", "queue": "down", "depends_on": [up.id.0],
                       "depends_on_batches": [batch.id.0], "on_dependency_failure": "run"});
    let from_sql = job_of(
        &enqueue_sql(&app, &schema, &input.to_string())
            .await
            .unwrap(),
    );
    assert_eq!(from_sql.state, JobState::Pending);
    let from_api = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![serde_json::from_value(input).unwrap()],
            now,
        })
        .await
        .unwrap()
        .remove(0)
        .job;
    // Every column the links write, alike.
    let links = |id: i64| {
        let sql = format!(
            "SELECT state, deps_left, on_dependency_failure,
                    ARRAY(SELECT depends_on FROM {s}.job_dependencies WHERE job_id = $1),
                    ARRAY(SELECT batch_id FROM {s}.batch_dependencies WHERE job_id = $1)
             FROM {s}.jobs WHERE id = $1",
            s = ident(&schema)
        );
        let app = &app;
        async move {
            let row = app.query_one(&sql, &[&id]).await.unwrap();
            (
                row.get::<_, String>(0),
                row.get::<_, Option<i32>>(1),
                row.get::<_, Option<String>>(2),
                row.get::<_, Vec<i64>>(3),
                row.get::<_, Vec<i64>>(4),
            )
        }
    };
    let sql_links = links(from_sql.id.0).await;
    assert_eq!(
        sql_links,
        (
            "pending".to_owned(),
            Some(2),
            Some("run".to_owned()),
            vec![up.id.0],
            vec![batch.id.0]
        )
    );
    assert_eq!(sql_links, links(from_api.id.0).await);
    // Released by its upstreams' moves, as the API's.
    for queue in ["up", "in-batch"] {
        let leased = store.jobs_fetch(fetch(queue)).await.unwrap();
        store
            .job_fail(JobFail {
                id: leased[0].job.id,
                lease: leased[0].lease.clone(),
                error: "boom".into(),
                retry: false,
                retry_at: None,
                backoff: Default::default(),
                now: Utc::now(),
            })
            .await
            .unwrap();
    }
    let released = store.jobs_fetch(fetch("down")).await.unwrap();
    let mut ids: Vec<i64> = released.iter().map(|l| l.job.id.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, [from_sql.id.0, from_api.id.0], "policy run: both run");
    // Already finished at the call: a dead upstream cancels at once.
    let cancelled = job_of(
        &enqueue_sql(
            &app,
            &schema,
            &json!({"kind": "k", "depends_on": [up.id.0]}).to_string(),
        )
        .await
        .unwrap(),
    );
    assert_eq!(cancelled.state, JobState::Cancelled);

    let open = store
        .batch_create(BatchCreate {
            jobs: vec![],
            open: true,
            callbacks: Default::default(),
            now,
        })
        .await
        .unwrap()
        .batch;
    let refused = [
        (
            json!([{"kind": "k", "queue": "refused", "depends_on": [i64::MAX]}]),
            "jobs[0].depends_on[0]",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "depends_on": [up.id.0, "a-ref"]}]),
            "jobs[0].depends_on[1]",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "depends_on": [1.0]}]),
            "jobs[0].depends_on[0]",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "depends_on": 7}]),
            "jobs[0].depends_on",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "depends_on_batches": [i64::MAX]}]),
            "jobs[0].depends_on_batches[0]",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "depends_on_batches": [open.id.0]}]),
            "jobs[0].depends_on_batches[0]",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "depends_on": [up.id.0], "unique_key": "u"}]),
            "jobs[0].unique_key",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "on_dependency_failure": "maybe"}]),
            "jobs[0].on_dependency_failure",
        ),
        (
            json!([{"kind": "k", "queue": "refused", "depends_on": (0..101).collect::<Vec<i64>>()}]),
            "jobs[0].depends_on",
        ),
    ];
    for (input, field) in refused {
        let error = enqueue_many_sql(&app, &schema, &input.to_string())
            .await
            .expect_err(&format!("the function accepted {input}"));
        let db = error.as_db_error().unwrap();
        assert_eq!(db.code().code(), "22023", "{input}: {}", db.message());
        assert_eq!(db.column(), Some(field), "{input}: {}", db.message());
        // The API refuses it too, naming the same field.
        let api = store
            .jobs_insert_many(JobsInsert {
                jobs: serde_json::from_value(input.clone()).unwrap_or_default(),
                now,
            })
            .await;
        if let Err(
            error @ (StoreError::UnknownDependency { field: f, .. }
            | StoreError::RefusedDependency { field: f, .. }),
        ) = &api
        {
            assert_eq!(f, field, "{input}");
            assert_eq!(db.message(), error.to_string(), "{input}");
        }
    }
    // An id of a job of the same call (here: the next ids) could make a
    // cycle; refused, and nothing of the call is stored.
    let first = job_of(
        &enqueue_sql(&app, &schema, r#"{"kind": "probe", "queue": "probe"}"#)
            .await
            .unwrap(),
    );
    let guessed = json!([{"kind": "a", "queue": "refused", "depends_on": [first.id.0 + 2]},
                         {"kind": "b", "queue": "refused", "depends_on": [first.id.0 + 1]}]);
    let error = enqueue_many_sql(&app, &schema, &guessed.to_string())
        .await
        .unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(
        db.column(),
        Some("jobs[0].depends_on[0]"),
        "{}",
        db.message()
    );
    assert!(
        db.message().contains("this same request"),
        "{}",
        db.message()
    );
    assert!(store.jobs_fetch(fetch("refused")).await.unwrap().is_empty());
}

/// An application's transaction that enqueued a dependent holds its upstream
/// job's row until it ends: the upstream's heartbeat waits for it no longer
/// than the store's lock timeout, then fails as unavailable (a retry), and
/// succeeds once the transaction has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holding_an_upstream_makes_its_heartbeat_unavailable_not_stuck() {
    let Some(url) = database().await else { return };
    let (store, mut app, schema, _guard) = setup(&url, |_| String::new()).await;
    let up = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![NewJob {
                queue: "up".into(),
                ..NewJob::new("up", json!({}))
            }],
            now: Utc::now(),
        })
        .await
        .unwrap()
        .remove(0)
        .job;
    let leased = store.jobs_fetch(fetch("up")).await.unwrap().remove(0);
    let heartbeat = || {
        store.job_heartbeat(JobHeartbeat {
            id: up.id,
            lease: leased.lease.clone(),
            progress: None,
            lease_duration: Duration::from_secs(30),
            now: Utc::now(),
        })
    };
    let open = app.transaction().await.unwrap();
    let dependent = json!({"kind": "down", "depends_on": [up.id.0]}).to_string();
    enqueue_sql(&open, &schema, &dependent).await.unwrap();
    let waited = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(60), heartbeat())
        .await
        .expect("the heartbeat waited for the transaction");
    match answer {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("lock"), "{message}")
        }
        other => panic!("not unavailable: {other:?}"),
    }
    assert!(
        waited.elapsed() >= Duration::from_secs(4),
        "it did wait for the lock"
    );
    open.rollback().await.unwrap();
    heartbeat()
        .await
        .expect("the lock is gone with the transaction");
}

/// Requests naming the same upstreams in opposite orders, racing, through
/// the store and through the SQL function: each upstream is locked in id
/// order, so none deadlocks (PostgreSQL would fail one to break it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_naming_upstreams_in_other_orders_never_deadlock() {
    let Some(url) = database().await else { return };
    let (store, app, schema, _guard) = setup(&url, |_| String::new()).await;
    let upstreams: Vec<i64> = store
        .jobs_insert_many(JobsInsert {
            jobs: vec![NewJob::new("up", json!({})), NewJob::new("up", json!({}))],
            now: Utc::now(),
        })
        .await
        .unwrap()
        .iter()
        .map(|inserted| inserted.job.id.0)
        .collect();
    let (x, y) = (upstreams[0], upstreams[1]);
    let through_store = |order: [i64; 2]| {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let job: NewJob = serde_json::from_value(
                    json!({"kind": "down", "queue": "down", "depends_on": order}),
                )
                .unwrap();
                store
                    .jobs_insert_many(JobsInsert {
                        jobs: vec![job],
                        now: Utc::now(),
                    })
                    .await
                    .expect("no deadlock through the store");
            }
        })
    };
    let (other, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let through_sql = |client: Client, order: [i64; 2]| {
        let schema = schema.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let job = json!({"kind": "down", "depends_on": order}).to_string();
                enqueue_sql(&client, &schema, &job)
                    .await
                    .expect("no deadlock through the SQL function");
            }
        })
    };
    let racing = [
        through_store([x, y]),
        through_store([y, x]),
        through_sql(app, [x, y]),
        through_sql(other, [y, x]),
    ];
    for task in racing {
        task.await.unwrap();
    }
}
