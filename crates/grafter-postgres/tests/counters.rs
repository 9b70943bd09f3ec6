//! The dashboard's counters on PostgreSQL: statements append deltas, the
//! background rollup folds them into the totals, and what readers see stays
//! exact throughout, with two nodes writing and rolling up at once.

mod common;

use std::time::Duration;

use chrono::Utc;
use grafter_core::{JobState, NewJob, QueueLimits, RateLimit};
use grafter_postgres::PostgresStore;
use grafter_store::{
    JobComplete, JobsCompleteMany, JobsFetch, JobsInsert, QueueLimitsSet, Store, ThroughputRange,
};
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

/// The fetches and completions count their own moves (migration 22), so each
/// statement that makes them is checked here against the jobs table itself:
/// several queues at once, a running limit, a queue limited to a concurrency
/// (leased in one round trip) and one limited to a rate (the general
/// admission), a single ack and a batch ack; and the acks' throughput.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_that_leases_or_completes_counts_its_moves() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let schema = config.schema.clone().unwrap();
    let store = PostgresStore::connect(config).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let now = Utc::now();
    let queues = ["plain_a", "plain_b", "capped", "concurrent", "rated"];
    let jobs = queues
        .iter()
        .flat_map(|queue| {
            (0..6).map(move |n| {
                let mut job = NewJob::new("k", json!({ "n": n }));
                job.queue = (*queue).into();
                job
            })
        })
        .collect();
    store
        .jobs_insert_many(JobsInsert { jobs, now })
        .await
        .unwrap();
    let limit = |queue: &str, limits: QueueLimits| QueueLimitsSet {
        queue: queue.into(),
        limits: Some(limits),
        now,
    };
    store
        .queue_set_limits(limit(
            "concurrent",
            QueueLimits {
                concurrency: Some(4),
                rate: None,
                partition_by: None,
            },
        ))
        .await
        .unwrap();
    store
        .queue_set_limits(limit(
            "rated",
            QueueLimits {
                concurrency: None,
                rate: Some(RateLimit {
                    count: 3,
                    period_ms: 60_000,
                }),
                partition_by: None,
            },
        ))
        .await
        .unwrap();
    let fetch = |queues: &[&str], running_limit: Option<usize>| JobsFetch {
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        max: 5,
        lease_duration: Duration::from_secs(30),
        worker_id: None,
        running_limit,
        max_bytes: usize::MAX,
        now,
    };
    let mut leased = Vec::new();
    for (queues, running_limit, expected) in [
        (&["plain_a", "plain_b"][..], None, 5),
        (&["capped"][..], Some(2), 2),
        (&["concurrent"][..], None, 4),
        (&["rated"][..], None, 3),
    ] {
        let got = store
            .jobs_fetch(fetch(queues, running_limit))
            .await
            .unwrap();
        assert_eq!(got.len(), expected, "leased from {queues:?}");
        leased.extend(got);
    }
    let one = leased.pop().unwrap();
    store
        .job_complete(JobComplete {
            id: one.job.id,
            lease: one.lease,
            result: None,
            now,
        })
        .await
        .unwrap();
    let items = leased
        .iter()
        .step_by(2)
        .map(|l| (l.job.id, l.lease.clone(), None))
        .collect::<Vec<_>>();
    let acked = items.len() as u64;
    store
        .jobs_complete_many(JobsCompleteMany { items, now })
        .await
        .unwrap();

    let actual = client
        .query(
            &format!("SELECT queue, state, count(*) FROM \"{schema}\".jobs GROUP BY 1, 2"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let state: String = row.get(1);
            let n: i64 = row.get(2);
            ((row.get::<_, String>(0), state.parse().unwrap()), n as u64)
        })
        .collect::<std::collections::BTreeMap<(String, JobState), u64>>();
    let kept = store
        .queues_list()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|q| {
            let name = q.name;
            q.counts
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(move |(state, n)| ((name.clone(), state), n))
        })
        .collect::<std::collections::BTreeMap<_, _>>();
    assert_eq!(kept, actual);
    let range = ThroughputRange {
        since: now - chrono::Duration::minutes(1),
        until: now + chrono::Duration::minutes(1),
    };
    let throughput = store.throughput_list(range).await.unwrap();
    assert_eq!(
        throughput.iter().map(|m| m.completed).sum::<u64>(),
        1 + acked
    );
}
