//! A schema this build does not know (a later release migrated it, or its
//! `grafter_migrations` records a version no release has) is refused by
//! every way of opening it, and left as it was.

mod common;

use common::{admin, database, fresh_config};
use grafter_postgres::{PostgresConfig, PostgresStore};
use grafter_store::StoreError;

/// Every version recorded in `schema`, in order.
async fn versions(url: &str, schema: &str) -> Vec<i32> {
    admin(url)
        .await
        .query(
            &format!("SELECT version FROM \"{schema}\".grafter_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn refusal<T>(outcome: Result<T, StoreError>) -> String {
    match outcome {
        Ok(_) => panic!("opened"),
        Err(StoreError::Invalid(message)) => message,
        Err(other) => panic!("refused, but not as Invalid: {other:?}"),
    }
}

/// Connects migrating, connects without migrating, and migrates through a
/// store connected before the version was recorded: all are refused with a
/// message containing `expected`, and the schema's versions stay as they are.
async fn every_way_refuses(
    url: &str,
    config: &PostgresConfig,
    earlier: &PostgresStore,
    expected: &str,
) {
    let schema = config.schema.clone().unwrap();
    let before = versions(url, &schema).await;

    let message = refusal(PostgresStore::connect(config.clone()).await);
    assert!(message.contains(expected), "{message}");
    let mut not_migrating = config.clone();
    not_migrating.migrate = false;
    let message = refusal(PostgresStore::connect(not_migrating).await);
    assert!(message.contains(expected), "without migrating: {message}");
    let message = refusal(earlier.migrate().await);
    assert!(message.contains(expected), "migrate(): {message}");

    assert_eq!(versions(url, &schema).await, before, "left as it was");
}

/// Records `version` in `schema`'s migrations table behind the store's back.
async fn record_version(url: &str, schema: &str, version: i32) {
    admin(url)
        .await
        .execute(
            &format!("INSERT INTO \"{schema}\".grafter_migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_this_build_is_refused() {
    let Some(url) = database().await else { return };
    for newer in [None, Some(999), Some(i32::MAX)] {
        let (config, guard) = fresh_config(&url);
        let store = PostgresStore::connect(config.clone()).await.unwrap();
        let latest = *versions(&url, &guard.schema).await.last().unwrap();
        // None stands for the very next version.
        let newer = newer.unwrap_or(latest + 1);
        record_version(&url, &guard.schema, newer).await;
        let expected = format!(
            "the database's schema is at version {newer}, newer than this grafter's {latest} \
             (a later release migrated it): upgrade grafter"
        );
        every_way_refuses(&url, &config, &store, &expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_no_release_has_is_refused() {
    let Some(url) = database().await else { return };
    for junk in [0, -1, i32::MIN] {
        let (config, guard) = fresh_config(&url);
        let store = PostgresStore::connect(config.clone()).await.unwrap();
        let latest = *versions(&url, &guard.schema).await.last().unwrap();
        record_version(&url, &guard.schema, junk).await;
        let expected = format!(
            "the database records schema version {junk}, which no grafter release has \
             (this one knows 1 to {latest})"
        );
        every_way_refuses(&url, &config, &store, &expected).await;
    }
}

/// Nodes starting together on a newer schema all refuse it (the check is
/// made under the migration lock) and change nothing; without the later
/// release's version they start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_a_newer_schema_all_refuse_it() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    drop(PostgresStore::connect(config.clone()).await.unwrap());
    let schema = &guard.schema;
    let latest = *versions(&url, schema).await.last().unwrap();
    let record = |sql: String| {
        let url = url.clone();
        async move { admin(&url).await.batch_execute(&sql).await.unwrap() }
    };
    record(format!(
        "INSERT INTO \"{schema}\".grafter_migrations (version) VALUES ({})",
        latest + 1
    ))
    .await;
    let before = versions(&url, schema).await;
    let connects = (0..4).map(|_| PostgresStore::connect(config.clone()));
    for outcome in futures_util::future::join_all(connects).await {
        let message = refusal(outcome);
        assert!(message.contains("upgrade grafter"), "{message}");
    }
    assert_eq!(versions(&url, schema).await, before);

    record(format!(
        "DELETE FROM \"{schema}\".grafter_migrations WHERE version = {}",
        latest + 1
    ))
    .await;
    let connects = (0..4).map(|_| PostgresStore::connect(config.clone()));
    for outcome in futures_util::future::join_all(connects).await {
        assert!(outcome.unwrap().migrate().await.unwrap().is_empty());
    }
    assert_eq!(
        versions(&url, schema).await,
        (1..=latest).collect::<Vec<_>>()
    );
}
