//! The dashboard's counters on PostgreSQL: statements append deltas, the
//! background rollup folds them into the totals, and what readers see stays
//! exact throughout, with two nodes writing and rolling up at once.

mod common;

use std::time::Duration;

use chrono::Utc;
use grafter_core::{JobState, NewJob};
use grafter_postgres::PostgresStore;
use grafter_store::{JobsCompleteMany, JobsFetch, JobsInsert, Store, ThroughputRange};
use serde_json::json;
use tokio_postgres::NoTls;

use common::{database, fresh_config};

async fn counts(store: &PostgresStore) -> std::collections::BTreeMap<JobState, u64> {
    store.queues_list().await.unwrap()[0].counts.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_folds_deltas_without_changing_what_readers_see() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let schema = config.schema.clone().unwrap();
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    for (i, node) in [&a, &b].into_iter().enumerate() {
        let jobs = (0..50)
            .map(|n| NewJob::new("k", json!({"node": i, "n": n})))
            .collect();
        node.jobs_insert_many(JobsInsert { jobs, now })
            .await
            .unwrap();
        let leased = node
            .jobs_fetch(JobsFetch {
                queues: vec!["default".into()],
                max: 20,
                lease_duration: Duration::from_secs(30),
                worker_id: None,
                running_limit: None,
                max_bytes: usize::MAX,
                now,
            })
            .await
            .unwrap();
        let items = leased
            .into_iter()
            .map(|l| (l.job.id, l.lease, None))
            .collect();
        node.jobs_complete_many(JobsCompleteMany { items, now })
            .await
            .unwrap();
    }
    let expected = counts(&a).await;
    assert_eq!(expected[&JobState::Available], 60);
    assert_eq!(expected[&JobState::Completed], 40);
    let range = ThroughputRange {
        since: now - chrono::Duration::minutes(1),
        until: now + chrono::Duration::minutes(1),
    };
    let throughput = a.throughput_list(range.clone()).await.unwrap();
    assert_eq!(throughput.iter().map(|m| m.completed).sum::<u64>(), 40);

    // Within a few seconds the deltas are folded into the totals.
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let pending = format!(
        "SELECT (SELECT count(*) FROM \"{schema}\".job_count_deltas) + (SELECT count(*) FROM \"{schema}\".job_throughput_deltas)"
    );
    let mut left = -1i64;
    for _ in 0..50 {
        left = client.query_one(&pending, &[]).await.unwrap().get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left, 0, "the rollup emptied the delta tables");
    assert_eq!(counts(&a).await, expected);
    assert_eq!(counts(&b).await, expected);
    assert_eq!(b.throughput_list(range).await.unwrap(), throughput);
}
