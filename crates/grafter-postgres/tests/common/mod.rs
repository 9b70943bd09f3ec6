//! Helpers shared by the PostgreSQL test files: where the database is, fresh
//! schemas that are dropped afterwards, and the skip-or-fail rule when the
//! database is absent.

#![allow(dead_code)] // each test file uses a different subset

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use grafter_postgres::{PostgresConfig, PostgresStore};
use grafter_store_tests::Harness;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn url() -> String {
    std::env::var("GRAFTER_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A schema name no other case, run or process uses.
pub fn fresh_schema() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "grafter_test_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// A plain connection of the test's own, to look at or change the database
/// behind the store's back.
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Drops the case's schema when the case ends, pass or fail. Runs on its own
/// thread and runtime because `Drop` cannot await, and waits for it so that the
/// process does not exit with the schema still there.
///
/// Waiting blocks the case's runtime, so a task of the case's store on it
/// (the counter rollup, say) that is inside a transaction when the case ends
/// never commits, and its locks would hold the drop forever. Those are the
/// case's own connections, done with: whoever holds a lock on the schema's
/// tables when the drop cannot get it is disconnected, and the drop tried again.
pub struct DropSchema {
    pub url: String,
    pub schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        const DISCONNECT_HOLDERS: &str = "
            SELECT pg_terminate_backend(pid) FROM (
                SELECT DISTINCT l.pid FROM pg_locks AS l
                JOIN pg_class AS c ON c.oid = l.relation
                JOIN pg_namespace AS n ON n.oid = c.relnamespace
                WHERE n.nspname = $1 AND l.granted AND l.pid <> pg_backend_pid()
            ) AS holders";
        let url = self.url.clone();
        let schema = self.schema.clone();
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
                let driver = tokio::spawn(connection);
                client.batch_execute("SET lock_timeout = '2s'").await?;
                let mut outcome = client.batch_execute(&sql).await;
                for _ in 0..5 {
                    match &outcome {
                        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {}
                        _ => break,
                    }
                    client.execute(DISCONNECT_HOLDERS, &[&schema]).await?;
                    outcome = client.batch_execute(&sql).await;
                }
                drop(client);
                let _ = driver.await;
                outcome
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// Whether the database answers; `Err` says why not.
pub async fn reachable(url: &str) -> Result<(), String> {
    let connecting =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, NoTls));
    match connecting.await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
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

/// The database URL if PostgreSQL answers; `None` (skip) when it does not and
/// this is not CI; a panic when it does not and this is CI.
pub async fn database() -> Option<String> {
    let url = url();
    if let Err(why) = reachable(&url).await {
        if std::env::var_os("CI").is_some() {
            panic!(
                "PostgreSQL not reachable at {url} ({why}); CI is set, so the PostgreSQL \
                 conformance suite fails instead of skipping. Start PostgreSQL or set \
                 GRAFTER_TEST_POSTGRES_URL."
            );
        }
        // Straight to the process's stderr: libtest captures `eprintln!` from a
        // passing test, and this must not be missed.
        static WARN: Once = Once::new();
        WARN.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "\n********************************************************************\n\
                 SKIPPING: PostgreSQL not reachable at {url} ({why}).\n\
                 The PostgreSQL tests return early and pass vacuously. Start\n\
                 PostgreSQL or set GRAFTER_TEST_POSTGRES_URL to run them.\n\
                 ********************************************************************\n"
            );
        });
        return None;
    }
    Some(url)
}

/// A config for a fresh schema, and the guard that drops that schema.
pub fn fresh_config(url: &str) -> (PostgresConfig, DropSchema) {
    let schema = fresh_schema();
    let guard = DropSchema {
        url: url.to_owned(),
        schema: schema.clone(),
    };
    let mut config = PostgresConfig::new(url);
    config.schema = Some(schema);
    config.pool_size = 8;
    (config, guard)
}

/// A store on a fresh schema, or `None` (skip) when PostgreSQL is not there and
/// this is not CI.
pub async fn postgres() -> Option<Harness> {
    let url = database().await?;
    let (config, guard) = fresh_config(&url);
    // The guard is dropped after the store: it removes whatever the store created.
    let store = PostgresStore::connect(config)
        .await
        .expect("connect to PostgreSQL");
    // Its listener wakes every waiter as it comes up: let that happen before
    // a case registers waiters of its own.
    listening(&url, &guard.schema, 1).await;
    Some(Harness::new(Arc::new(store), guard))
}

/// How long the listeners may take to come up.
const LISTENER_PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `count` stores' listeners on `schema`'s channel are up, as
/// PostgreSQL itself shows them: an announcement before that is not heard.
pub async fn listening(url: &str, schema: &str, count: i64) {
    let admin = admin(url).await;
    let up = || async {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'grafter:listener'
                   AND query LIKE 'LISTEN %' || $1 || '%'",
                &[&schema],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let deadline = tokio::time::Instant::now() + LISTENER_PATIENCE;
    while up().await < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listeners come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
