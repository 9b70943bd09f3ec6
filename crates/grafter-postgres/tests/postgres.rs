//! What only the PostgreSQL store does, beyond the shared suite: wake-ups that
//! cross nodes (and not schemas), the polling fallback, migrations racing on
//! start and upgrading, jobs from before `args_bytes`, unique keys and worker
//! pruning racing across nodes, running limits, queue limits reshaped through
//! another node, leadership, batch acks and job pruning across nodes, a
//! schedule's firing failing half-way, and a watch racing a waiting fetch.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_core::{CutField, JobState, LeasedJob, NewJob, WorkerRegistration};
use grafter_postgres::{PostgresConfig, PostgresStore};
use grafter_store::preview::json_len;
use grafter_store::{
    AckOutcome, JobComplete, JobHeartbeat, JobRelease, JobRetry, JobsCompleteMany, JobsFetch,
    JobsInsert, JobsList, JobsPrune, LeaderAcquire, QueueLimitsSet, QueuePause, Store, StoreError,
    Waiter, WorkerBeat, WorkersPrune,
};
use serde_json::json;

use common::{admin, database, fresh_config, listening};
use grafter_store_tests::cases::{
    a_firing_that_fails_half_way_leaves_nothing,
    a_job_that_cannot_even_be_set_aside_stops_no_rescue,
    an_unreadable_row_is_set_aside_and_the_others_are_rescued,
};

const PATIENCE: Duration = Duration::from_secs(5);

/// A fetch of up to `max` jobs of one queue on a 60-second lease, by no
/// worker in particular.
fn fetch_params(queue: &str, max: usize, now: chrono::DateTime<Utc>) -> JobsFetch {
    JobsFetch {
        queues: vec![queue.into()],
        max,
        lease_duration: Duration::from_secs(60),
        worker_id: None,
        running_limit: None,
        max_bytes: usize::MAX,
        now,
    }
}

/// Batch-acks `leased` and checks that each of them completed.
async fn ack_all(store: &impl Store, leased: &[LeasedJob], now: chrono::DateTime<Utc>) {
    let items = leased
        .iter()
        .map(|l| (l.job.id, l.lease.clone(), None))
        .collect();
    let acked = store
        .jobs_complete_many(JobsCompleteMany { items, now })
        .await
        .unwrap();
    assert!(
        acked.iter().all(|&o| o == AckOutcome::Completed),
        "{acked:?}"
    );
}

/// Whether `waiter` is woken within `within`.
async fn woken(waiter: &Waiter, within: Duration) -> bool {
    tokio::time::timeout(within, waiter.woken()).await.is_ok()
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

async fn insert(store: &PostgresStore, job: NewJob) -> Vec<grafter_store::Inserted> {
    store
        .jobs_insert_many(JobsInsert {
            jobs: vec![job],
            now: Utc::now(),
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_on_one_node_wakes_the_others_waiting_on_its_queues_in_its_schema_only() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let (elsewhere, other_guard) = fresh_config(&url);
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    let c = PostgresStore::connect(elsewhere).await.unwrap();
    listening(&url, &guard.schema, 2).await;
    listening(&url, &other_guard.schema, 1).await;
    let on_b = b.wakeups().waiter(&queues(&["default"]));
    let mail_on_b = b.wakeups().waiter(&queues(&["mail"]));
    let on_c = c.wakeups().waiter(&queues(&["default"]));

    a.announce(&["default", "it's \\ quoted"]);
    assert!(
        woken(&on_b, PATIENCE).await,
        "another node in the schema hears of work on its queue"
    );
    let quiet = Duration::from_millis(300);
    assert!(
        !woken(&mail_on_b, quiet).await,
        "a waiter on another queue is not woken"
    );
    assert!(
        !woken(&on_c, quiet).await,
        "a store in another schema is not woken"
    );

    a.announce_all();
    assert!(
        woken(&mail_on_b, PATIENCE).await,
        "every queue, when named none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_comes_back_after_its_connection_is_killed() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    listening(&url, &guard.schema, 2).await;
    let on_b = b.wakeups().waiter(&queues(&["default"]));

    let admin = admin(&url).await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'grafter:listener' AND query LIKE '%' || $1 || '%'",
            &[&guard.schema],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 2, "both stores' listeners were found");
    // Back up: the listener wakes every waiter on reconnecting, for what it missed.
    assert!(woken(&on_b, PATIENCE).await, "the listener reconnects");
    // And listening again: a new announcement wakes b.
    listening(&url, &guard.schema, 2).await;
    a.announce(&["default"]);
    assert!(
        woken(&on_b, PATIENCE).await,
        "the reconnected listener hears new work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_waiting_fetches_are_woken_by_polling() {
    let Some(url) = database().await else { return };
    let (mut config, _guard) = fresh_config(&url);
    config.listen = false;
    config.poll_interval = Duration::from_millis(50);
    let store = PostgresStore::connect(config).await.unwrap();
    let waiter = store.wakeups().waiter(&queues(&["default"]));
    for _ in 0..3 {
        assert!(
            woken(&waiter, PATIENCE).await,
            "the poller wakes every waiter"
        );
    }
}

/// A store opened without migrating (`grafter migrate` opens one, then
/// migrates; a node can be set not to migrate) starts on an empty schema, and
/// migrating it afterwards works: nothing it reads at start may need tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opened_without_migrating_starts_on_an_empty_schema() {
    let Some(url) = database().await else { return };
    let (mut config, _guard) = fresh_config(&url);
    config.migrate = false;
    let store = PostgresStore::connect(config)
        .await
        .expect("opens on an empty schema");
    assert!(!store.migrate().await.unwrap().is_empty(), "then migrates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_apply_each_migration_once() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let connects = (0..4).map(|_| PostgresStore::connect(config.clone()));
    let stores: Vec<_> = futures_util::future::join_all(connects)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every node starts");
    assert_eq!(
        stores[0].migrate().await.unwrap(),
        Vec::<i32>::new(),
        "nothing left to apply"
    );

    let client = admin(&url).await;
    let sql = format!(
        "SELECT count(*), count(DISTINCT version) FROM \"{}\".grafter_migrations",
        guard.schema
    );
    let row = client.query_one(&sql, &[]).await.unwrap();
    let (rows, versions): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(rows, versions);
    assert!(versions >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_key_raced_from_two_nodes_is_created_once() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let a = Arc::new(PostgresStore::connect(config.clone()).await.unwrap());
    let b = Arc::new(PostgresStore::connect(config).await.unwrap());
    for round in 0..20 {
        let keyed = || {
            let mut job = NewJob::new("sync", json!({}));
            job.unique_key = Some(format!("user:{round}"));
            job
        };
        let (x, y) = tokio::join!(insert(&a, keyed()), insert(&b, keyed()));
        assert_eq!(
            x[0].job.id, y[0].job.id,
            "round {round}: both answers name one job"
        );
        assert!(
            x[0].created ^ y[0].created,
            "round {round}: exactly one insert created it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_mixed_batch_keeps_its_order() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    // Runs of plain jobs (one statement each) between keyed ones, some repeated.
    let jobs: Vec<NewJob> = (0..600)
        .map(|i| {
            let mut job = NewJob::new("k", json!({ "i": i }));
            if i % 50 == 7 {
                job.unique_key = Some(format!("key:{}", i % 100));
            }
            job
        })
        .collect();
    let inserted = store
        .jobs_insert_many(JobsInsert {
            jobs: jobs.clone(),
            now: Utc::now(),
        })
        .await
        .unwrap();
    assert_eq!(inserted.len(), jobs.len());
    let mut last_id = None;
    for (i, (new, got)) in jobs.iter().zip(&inserted).enumerate() {
        if got.created {
            assert_eq!(got.job.args, new.args, "job {i} answered in its place");
            assert!(
                Some(got.job.id) > last_id,
                "job {i}: ids follow the batch order"
            );
            last_id = Some(got.job.id);
        } else {
            assert_eq!(
                got.job.unique_key, new.unique_key,
                "job {i} answered with its key's holder"
            );
        }
    }
    assert_eq!(
        inserted.iter().filter(|i| !i.created).count(),
        10,
        "keys 7 and 57 repeat 5 times each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_from_several_queues_merges_them_in_order_and_skips_paused() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    let on = |queue: &str, priority: i16| {
        let mut job = NewJob::new(format!("{queue}{priority}"), json!({}));
        job.queue = queue.into();
        job.priority = priority;
        job
    };
    let jobs = vec![on("a", 3), on("b", 1), on("c", 0), on("a", 2), on("b", 4)];
    store
        .jobs_insert_many(JobsInsert { jobs, now })
        .await
        .unwrap();
    store
        .queue_set_paused(QueuePause {
            queue: "c".into(),
            paused: true,
            now,
        })
        .await
        .unwrap();
    let fetch = |max| JobsFetch {
        // "a" twice: its jobs must not be picked twice.
        queues: vec!["a".into(), "b".into(), "c".into(), "a".into()],
        max,
        lease_duration: Duration::from_secs(30),
        worker_id: None,
        running_limit: None,
        max_bytes: usize::MAX,
        now,
    };
    let first = store.jobs_fetch(fetch(3)).await.unwrap();
    let rest = store.jobs_fetch(fetch(10)).await.unwrap();
    let kinds: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|l| l.job.kind.as_str())
        .collect();
    assert_eq!(kinds, ["b1", "a2", "a3", "b4"]);
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let mut config = PostgresConfig::new("postgres://postgres@127.0.0.1:1/test");
    config.connect_timeout = Duration::from_secs(2);
    match PostgresStore::connect(config).await {
        Err(StoreError::Unavailable(message)) => assert!(!message.is_empty()),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

#[tokio::test]
async fn bad_settings_are_invalid() {
    let bad_url = PostgresConfig::new("postgres://host:notaport/db");
    assert!(matches!(
        PostgresStore::connect(bad_url).await,
        Err(StoreError::Invalid(_))
    ));
    let mut bad_schema = PostgresConfig::new("postgres://postgres@127.0.0.1/test");
    bad_schema.schema = Some("x".repeat(64));
    assert!(matches!(
        PostgresStore::connect(bad_schema).await,
        Err(StoreError::Invalid(_))
    ));
}

fn registration(id: &str) -> WorkerRegistration {
    WorkerRegistration {
        id: id.into(),
        host: "host-1".into(),
        pid: u32::MAX,
        queues: vec!["default".into()],
        concurrency: u32::MAX,
        kinds: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_fenced_like_any_lease() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let a = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    let job = insert(&a, NewJob::new("k", json!({}))).await.remove(0).job;
    let fetch = JobsFetch {
        queues: vec!["default".into()],
        max: 1,
        lease_duration: Duration::from_secs(30),
        worker_id: None,
        running_limit: None,
        max_bytes: usize::MAX,
        now,
    };
    let leased = a.jobs_fetch(fetch).await.unwrap().remove(0);
    let release = JobRelease {
        id: job.id,
        lease: leased.lease.clone(),
        run_at: now,
        now,
    };
    a.job_delete(job.id).await.unwrap();
    assert!(matches!(a.job_release(release).await, Err(StoreError::NotFound(id)) if id == job.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_full_u32_values_and_any_stale_after_is_accepted() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    store
        .worker_heartbeat(WorkerBeat {
            worker: registration("w"),
            now,
        })
        .await
        .unwrap();
    let listed = store.workers_list().await.unwrap();
    assert_eq!(listed[0].registration, registration("w"));
    // A limit reaching back past what PostgreSQL can store prunes nobody, without error.
    for stale_after in [Duration::MAX, Duration::from_secs(10_000 * 365 * 24 * 3600)] {
        let prune = WorkersPrune { now, stale_after };
        assert_eq!(
            store.workers_prune(prune).await.unwrap(),
            0,
            "{stale_after:?}"
        );
    }
    assert_eq!(store.workers_list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_pruning_at_once_forget_each_worker_once() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    for i in 0..50 {
        let beat = WorkerBeat {
            worker: registration(&format!("w-{i}")),
            now,
        };
        a.worker_heartbeat(beat).await.unwrap();
    }
    let prune = || WorkersPrune {
        now: now + chrono::Duration::seconds(60),
        stale_after: Duration::from_secs(15),
    };
    let (x, y) = tokio::join!(a.workers_prune(prune()), b.workers_prune(prune()));
    assert_eq!(x.unwrap() + y.unwrap(), 50);
    assert!(a.workers_list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_at_version_1_is_brought_to_version_2() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    let admin = admin(&url).await;
    // Back to how a version 1 deployment left it.
    let schema = format!("\"{}\"", guard.schema);
    admin
        .batch_execute(&format!(
            "DROP TABLE {schema}.workers; DROP INDEX IF EXISTS {schema}.jobs_running_worker;
             DELETE FROM {schema}.grafter_migrations WHERE version = 2"
        ))
        .await
        .unwrap();
    assert_eq!(store.migrate().await.unwrap(), [2]);
    store
        .worker_heartbeat(WorkerBeat {
            worker: registration("w"),
            now: Utc::now(),
        })
        .await
        .unwrap();
    assert_eq!(store.workers_list().await.unwrap().len(), 1);
}

/// Jobs enqueued before migration 9 have no `args_bytes`: a fetch's byte
/// budget and a list's cut measure their args instead. New args given on a
/// retry are measured as they are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_enqueued_without_a_recorded_size_are_measured() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    let admin = admin(&url).await;
    let jobs_table = format!("\"{}\".jobs", guard.schema);
    let now = Utc::now();
    let big = json!({"blob": "x".repeat(100_000)});
    let jobs = store
        .jobs_insert_many(JobsInsert {
            jobs: (0..3).map(|_| NewJob::new("big", big.clone())).collect(),
            now,
        })
        .await
        .unwrap();
    admin
        .batch_execute(&format!("UPDATE {jobs_table} SET args_bytes = NULL"))
        .await
        .unwrap();

    let page = store
        .jobs_list(JobsList {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.jobs.iter().all(|j| j.cut == [CutField::Args]));
    let small = json!({"small": true});
    let retry = JobRetry {
        id: jobs[0].job.id,
        args: Some(small.clone()),
        now,
    };
    store.job_retry(retry).await.unwrap();
    let sizes: Vec<Option<i32>> = admin
        .query(
            &format!("SELECT args_bytes FROM {jobs_table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(sizes, [Some(json_len(&small) as i32), None, None]);
    let within = JobsFetch {
        max_bytes: json_len(&big) * 3 / 2,
        ..fetch_params("default", 10, now)
    };
    let leased = store.jobs_fetch(within).await.unwrap();
    assert_eq!(leased.len(), 2, "the small job and one large one fit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_at_version_2_is_brought_to_version_3() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    let admin = admin(&url).await;
    // Back to how a version 2 deployment left it, with a queue setting and a job.
    let schema = format!("\"{}\"", guard.schema);
    store
        .queue_set_paused(QueuePause {
            queue: "q".into(),
            paused: true,
            now: Utc::now(),
        })
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "DROP TABLE {schema}.leaders; DROP INDEX {schema}.jobs_finished;
             ALTER TABLE {schema}.queues DROP COLUMN push;
             DELETE FROM {schema}.grafter_migrations WHERE version = 3"
        ))
        .await
        .unwrap();
    assert_eq!(store.migrate().await.unwrap(), [3]);
    let queues = store.queues_list().await.unwrap();
    assert!(
        queues[0].paused && queues[0].push.is_none(),
        "settings survive the upgrade"
    );
    let acquire = LeaderAcquire {
        name: "m".into(),
        node: "n".into(),
        ttl: Duration::from_secs(1),
        now: Utc::now(),
    };
    assert!(store.leader_acquire(acquire).await.unwrap());
}

/// Nodes fetching one queue at once, each with the queue's running limit, never
/// have more than the limit running between them. A monitor on its own
/// connection counts running jobs throughout; the workers also count the jobs
/// they hold (from the fetch's answer until before their ack), a subset of
/// what the database holds running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_fetching_with_a_running_limit_never_exceed_it_together() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    const JOBS: usize = 300;
    const LIMIT: usize = 5;
    const TASKS_PER_NODE: usize = 4;
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let a = Arc::new(PostgresStore::connect(config.clone()).await.unwrap());
    let b = Arc::new(PostgresStore::connect(config).await.unwrap());
    let now = Utc::now();
    let jobs = (0..JOBS)
        .map(|i| {
            let mut job = NewJob::new("hook", json!({ "i": i }));
            job.queue = "push".into();
            job
        })
        .collect();
    a.jobs_insert_many(JobsInsert { jobs, now }).await.unwrap();
    // Another queue's running jobs do not count against this one's limit.
    let mut other = NewJob::new("k", json!({}));
    other.queue = "other".into();
    a.jobs_insert_many(JobsInsert {
        jobs: vec![other],
        now,
    })
    .await
    .unwrap();
    let other_fetch = fetch_params("other", 1, now);
    assert_eq!(a.jobs_fetch(other_fetch).await.unwrap().len(), 1);

    let held = Arc::new(AtomicI64::new(0));
    let most_held = Arc::new(AtomicI64::new(0));
    let completed = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let admin = admin(&url).await;
    let count = format!(
        "SELECT count(*) FROM \"{}\".jobs WHERE state = 'running' AND queue = 'push'",
        guard.schema
    );
    let monitor = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::SeqCst) {
                let running: i64 = admin.query_one(&count, &[]).await.unwrap().get(0);
                most = most.max(running);
            }
            most
        })
    };

    let mut tasks = Vec::new();
    for (n, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for t in 0..TASKS_PER_NODE {
            let (store, held, most_held, completed) = (
                store.clone(),
                held.clone(),
                most_held.clone(),
                completed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut round = 0;
                while completed.load(Ordering::SeqCst) < JOBS as i64 {
                    round += 1;
                    let fetch = JobsFetch {
                        queues: vec!["push".into()],
                        max: 1 + (n + t + round) % 3,
                        lease_duration: Duration::from_secs(60),
                        worker_id: Some(format!("node-{n}-task-{t}")),
                        running_limit: Some(LIMIT),
                        max_bytes: usize::MAX,
                        now,
                    };
                    let leased = store.jobs_fetch(fetch).await.unwrap();
                    if leased.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let now_held =
                        held.fetch_add(leased.len() as i64, Ordering::SeqCst) + leased.len() as i64;
                    most_held.fetch_max(now_held, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    held.fetch_sub(leased.len() as i64, Ordering::SeqCst);
                    ack_all(&*store, &leased, now).await;
                    completed.fetch_add(leased.len() as i64, Ordering::SeqCst);
                }
            }));
        }
    }
    let all = futures_util::future::join_all(tasks);
    for task in tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the queue drains")
    {
        task.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let most_running = monitor.await.unwrap();
    assert_eq!(completed.load(Ordering::SeqCst), JOBS as i64);
    let most_held = most_held.load(Ordering::SeqCst);
    assert!(
        most_running <= LIMIT as i64,
        "{most_running} running at once, limit {LIMIT}"
    );
    assert!(
        most_held <= LIMIT as i64,
        "{most_held} held at once, limit {LIMIT}"
    );
    assert_eq!(
        most_running.max(most_held),
        LIMIT as i64,
        "the limit was reached, so it was tested"
    );
}

/// Sets `queue`'s limits through `store` (`None` removes them).
async fn set_limits(store: &PostgresStore, queue: &str, limits: Option<serde_json::Value>) {
    let limits = limits.map(|l| serde_json::from_value(l).unwrap());
    store
        .queue_set_limits(QueueLimitsSet {
            queue: queue.into(),
            limits,
            now: Utc::now(),
        })
        .await
        .unwrap();
}

/// A node admits by the limits the queue has when it fetches, not by the
/// shape it last saw: limits changed through another node (a whole-queue
/// limit made per partition, and back, then a pause) rule this node's next
/// fetch at once.
#[tokio::test]
async fn limits_reshaped_through_another_node_rule_the_next_fetch() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    let jobs = (0..12)
        .map(|i| {
            let mut job = NewJob::new("k", json!({ "i": i }));
            job.queue = "q".into();
            job.partition = Some(format!("p{}", i % 2));
            job
        })
        .collect();
    a.jobs_insert_many(JobsInsert { jobs, now }).await.unwrap();

    set_limits(&a, "q", Some(json!({"concurrency": 5}))).await;
    let first = a.jobs_fetch(fetch_params("q", 1, now)).await.unwrap();
    assert_eq!(
        first.len(),
        1,
        "a whole-queue limit of 5 admits the one asked for"
    );
    ack_all(&a, &first, now).await;

    set_limits(
        &b,
        "q",
        Some(json!({"concurrency": 1, "partition_by": "partition"})),
    )
    .await;
    let per_partition = a.jobs_fetch(fetch_params("q", 10, now)).await.unwrap();
    let mut partitions: Vec<_> = per_partition
        .iter()
        .map(|l| l.job.partition.clone().unwrap())
        .collect();
    partitions.sort();
    assert_eq!(
        partitions,
        ["p0", "p1"],
        "one per partition, as the new limits say"
    );
    ack_all(&a, &per_partition, now).await;

    set_limits(&b, "q", Some(json!({"concurrency": 3}))).await;
    let whole = a.jobs_fetch(fetch_params("q", 10, now)).await.unwrap();
    assert_eq!(
        whole.len(),
        3,
        "three for the whole queue, as the new limits say"
    );
    ack_all(&a, &whole, now).await;

    b.queue_set_paused(QueuePause {
        queue: "q".into(),
        paused: true,
        now,
    })
    .await
    .unwrap();
    let paused = a.jobs_fetch(fetch_params("q", 10, now)).await.unwrap();
    assert!(
        paused.is_empty(),
        "a pause through another node stops this one's fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_racing_for_a_leadership_end_with_exactly_one_leader() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    let acquire = |name: &str, node: &str, now| LeaderAcquire {
        name: name.into(),
        node: node.into(),
        ttl: Duration::from_secs(10),
        now,
    };
    let later = now + chrono::Duration::seconds(20);
    for round in 0..25 {
        // Free: two nodes, each with two contenders, ask at once.
        let name = format!("maintenance-{round}");
        let (a1, b1, a2, b2) = tokio::join!(
            a.leader_acquire(acquire(&name, "a1", now)),
            b.leader_acquire(acquire(&name, "b1", now)),
            a.leader_acquire(acquire(&name, "a2", now)),
            b.leader_acquire(acquire(&name, "b2", now)),
        );
        let won = [a1.unwrap(), b1.unwrap(), a2.unwrap(), b2.unwrap()];
        assert_eq!(
            won.iter().filter(|&&w| w).count(),
            1,
            "round {round}, free: {won:?}"
        );
        // Expired: the same race again, after the leader let its lease run out.
        let (a1, b1, a2, b2) = tokio::join!(
            a.leader_acquire(acquire(&name, "a1", later)),
            b.leader_acquire(acquire(&name, "b1", later)),
            a.leader_acquire(acquire(&name, "a2", later)),
            b.leader_acquire(acquire(&name, "b2", later)),
        );
        let won_later = [a1.unwrap(), b1.unwrap(), a2.unwrap(), b2.unwrap()];
        let winners: Vec<_> = won_later
            .iter()
            .enumerate()
            .filter(|(_, &w)| w)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}, expired: {won_later:?}");
        // Whoever leads renews; nobody else gets in.
        let node = ["a1", "b1", "a2", "b2"][winners[0]];
        let renew = later + chrono::Duration::seconds(5);
        assert!(a.leader_acquire(acquire(&name, node, renew)).await.unwrap());
        let other = if node == "a1" { "b1" } else { "a1" };
        assert!(!b
            .leader_acquire(acquire(&name, other, renew))
            .await
            .unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_acks_racing_over_the_same_jobs_complete_each_once() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    for round in 0..10 {
        let jobs = (0..200)
            .map(|i| NewJob::new("k", json!({ "round": round, "i": i })))
            .collect();
        a.jobs_insert_many(JobsInsert { jobs, now }).await.unwrap();
        let fetch = fetch_params("default", 200, now);
        let leased = a.jobs_fetch(fetch).await.unwrap();
        assert_eq!(leased.len(), 200);
        // One node acks in order, the other in reverse (a retried ack), both
        // naming some jobs twice: every job is completed once, and neither
        // batch fails (a deadlock would fail one).
        let forward: Vec<_> = leased
            .iter()
            .chain(&leased[..10])
            .map(|l| (l.job.id, l.lease.clone(), Some(json!("forward"))))
            .collect();
        let mut backward: Vec<_> = forward
            .iter()
            .map(|(id, lease, _)| (*id, lease.clone(), Some(json!("backward"))))
            .collect();
        backward.reverse();
        let (x, y) = tokio::join!(
            a.jobs_complete_many(JobsCompleteMany {
                items: forward,
                now
            }),
            b.jobs_complete_many(JobsCompleteMany {
                items: backward,
                now
            }),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.len(), 210);
        assert_eq!(y.len(), 210);
        for (i, l) in leased.iter().enumerate() {
            // Forward names job i at i (and at 200 + i for the first ten);
            // backward at 209 - i (and 9 - i).
            let mut answers = vec![x[i], y[209 - i]];
            if i < 10 {
                answers.extend([x[200 + i], y[9 - i]]);
            }
            let done = |o: &AckOutcome| *o == AckOutcome::Completed;
            assert_eq!(
                answers.iter().filter(|o| done(o)).count(),
                1,
                "round {round}, job {i}: {answers:?}"
            );
            // The first naming within a batch is the one that answers.
            if i < 10 {
                assert!(
                    !done(&x[200 + i]) && !done(&y[209 - i]),
                    "round {round}, job {i}"
                );
            }
            let job = a.job_get(l.job.id).await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Completed);
            let by = if done(&x[i]) { "forward" } else { "backward" };
            assert_eq!(
                job.result,
                Some(json!(by)),
                "round {round}, job {i}: the winner's result"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_uses_its_index_and_two_pruners_share_the_work() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    // PostgreSQL keeps microseconds.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let jobs = (0..500)
        .map(|i| NewJob::new("k", json!({ "i": i })))
        .collect();
    a.jobs_insert_many(JobsInsert { jobs, now }).await.unwrap();
    let fetch = fetch_params("default", 400, now);
    let leased = a.jobs_fetch(fetch).await.unwrap();
    ack_all(&a, &leased, now).await;

    let admin = admin(&url).await;
    let schema = format!("\"{}\"", guard.schema);
    admin
        .batch_execute(&format!("ANALYZE {schema}.jobs"))
        .await
        .unwrap();
    // The plan of the pruning subselect, with sequential scans ruled out so a
    // small table cannot hide that the index is unusable.
    let plan: Vec<String> = admin
        .simple_query(&format!(
            "SET enable_seqscan = off;
             EXPLAIN SELECT id FROM {schema}.jobs
             WHERE state IN ('completed', 'dead', 'cancelled', 'expired')
               AND state = ANY('{{completed,dead}}'::text[]) AND finished_at < now()
             ORDER BY finished_at LIMIT 10 FOR UPDATE SKIP LOCKED"
        ))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert!(
        plan.iter().any(|line| line.contains("jobs_finished")),
        "{plan:#?}"
    );

    let prune = || JobsPrune {
        states: vec![JobState::Completed, JobState::Running],
        finished_before: now + chrono::Duration::seconds(1),
        limit: 150,
    };
    let (x, y) = tokio::join!(a.jobs_prune(prune()), b.jobs_prune(prune()));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x <= 150 && y <= 150);
    let rest = a.jobs_prune(prune()).await.unwrap();
    assert_eq!(x + y + rest, 400, "each completed job pruned once");
    assert_eq!(a.jobs_prune(prune()).await.unwrap(), 0);
    let queues = a.queues_list().await.unwrap();
    assert_eq!(
        queues[0].counts[&JobState::Available],
        100,
        "unfinished jobs stay"
    );
    assert_eq!(queues[0].oldest_available_at, Some(now));
}

/// Sends `count` inserts of 1 to 3 jobs at once, request `bad` (if any) with a
/// NUL character, which PostgreSQL's jsonb refuses (SQLite stores it), so it
/// fails in the database, inside whatever group it joined. Checks each caller
/// got its own jobs back; returns how many were stored.
async fn insert_at_once(
    store: &Arc<PostgresStore>,
    wave: usize,
    count: usize,
    bad: Option<usize>,
) -> i64 {
    let requests = (0..count).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let text = if Some(i) == bad {
                "nul \u{0} here"
            } else {
                "fine"
            };
            let jobs = (0..1 + i % 3)
                .map(|n| {
                    NewJob::new(
                        "k",
                        json!({"wave": wave, "request": i, "n": n, "text": text}),
                    )
                })
                .collect();
            store
                .jobs_insert_many(JobsInsert {
                    jobs,
                    now: Utc::now(),
                })
                .await
        })
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut stored = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap();
        if Some(i) == bad {
            assert!(answer.is_err(), "the NUL request fails");
            continue;
        }
        // Each caller gets its own jobs back, in its order, with their ids.
        let inserted = answer.unwrap();
        assert_eq!(inserted.len(), 1 + i % 3);
        for (n, job) in inserted.iter().enumerate() {
            assert!(job.created);
            let args = json!({"wave": wave, "request": i, "n": n, "text": "fine"});
            assert_eq!(job.job.args, args);
            assert_eq!(store.job_get(job.job.id).await.unwrap().unwrap().args, args);
        }
        assert!(inserted.windows(2).all(|w| w[0].job.id < w[1].job.id));
        stored += inserted.len() as i64;
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_small_inserts_share_statements_and_one_bad_request_fails_alone() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = Arc::new(PostgresStore::connect(config).await.unwrap());
    let admin = admin(&url).await;
    // Rows written by one statement share its transaction id.
    let count = format!(
        "SELECT count(*), count(DISTINCT xmin::text) FROM \"{}\".jobs",
        guard.schema
    );

    let stored = insert_at_once(&store, 1, 100, None).await;
    let row = admin.query_one(&count, &[]).await.unwrap();
    let (rows, transactions): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(rows, stored);
    assert!(
        transactions < 50,
        "100 requests at once share statements: {transactions} transactions"
    );

    let stored = stored + insert_at_once(&store, 2, 100, Some(37)).await;
    let row = admin.query_one(&count, &[]).await.unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        stored,
        "all but the bad request's jobs are stored"
    );
}

/// After an ANALYZE that saw no running jobs, the planner takes `jobs_leases`
/// for nearly empty. A statement on one leased job (ack, heartbeat, release)
/// must still reach its row through the primary key: through `jobs_leases` each
/// one reads every running job (`lease_fence!` in `src/leasing.rs`). Counted in
/// the statistics views, which the store's sessions report within seconds:
/// those statements may not read `jobs_leases` at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_on_a_leased_job_reach_it_by_key_whatever_the_statistics() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    for _ in 0..5 {
        let jobs = (0..1000).map(|_| NewJob::new("k", json!({}))).collect();
        store
            .jobs_insert_many(JobsInsert { jobs, now })
            .await
            .unwrap();
    }
    let admin = admin(&url).await;
    admin
        .batch_execute(&format!("ANALYZE \"{}\".jobs", guard.schema))
        .await
        .unwrap();
    let mut leased = Vec::new();
    for _ in 0..2 {
        let fetch = fetch_params("default", 1000, now);
        leased.extend(store.jobs_fetch(fetch).await.unwrap());
    }
    assert_eq!(leased.len(), 2000);

    // (primary key scans, jobs_leases entries read)
    let index_use = || async {
        let row = admin
            .query_one(
                "SELECT sum(idx_scan) FILTER (WHERE indexrelname = 'jobs_pkey')::bigint,
                        sum(idx_tup_read) FILTER (WHERE indexrelname = 'jobs_leases')::bigint
                 FROM pg_stat_user_indexes WHERE schemaname = $1",
                &[&guard.schema],
            )
            .await
            .unwrap();
        (
            row.get::<_, Option<i64>>(0).unwrap_or(0),
            row.get::<_, Option<i64>>(1).unwrap_or(0),
        )
    };
    let (pkey_before, leases_before) = index_use().await;

    ack_all(&store, &leased[..1000], now).await;
    let one = &leased[1000];
    store
        .job_heartbeat(JobHeartbeat {
            id: one.job.id,
            lease: one.lease.clone(),
            progress: None,
            lease_duration: Duration::from_secs(60),
            now,
        })
        .await
        .unwrap();
    store
        .job_complete(JobComplete {
            id: one.job.id,
            lease: one.lease.clone(),
            result: None,
            now,
        })
        .await
        .unwrap();
    let other = &leased[1001];
    store
        .job_release(JobRelease {
            id: other.job.id,
            lease: other.lease.clone(),
            run_at: now,
            now,
        })
        .await
        .unwrap();

    // The batch ack alone looks up 1,000 rows by key; wait until its report is in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (pkey_after, leases_after) = loop {
        let (pkey, leases) = index_use().await;
        if pkey >= pkey_before + 1000 || tokio::time::Instant::now() > deadline {
            break (pkey, leases);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        leases_after - leases_before,
        0,
        "jobs_leases entries read by statements on single leased jobs \
         (primary key scans went from {pkey_before} to {pkey_after})"
    );
    assert!(
        pkey_after >= pkey_before + 1000,
        "{pkey_before} -> {pkey_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_read_is_set_aside_and_the_others_are_rescued() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = Arc::new(PostgresStore::connect(config).await.unwrap());
    an_unreadable_row_is_set_aside_and_the_others_are_rescued(store, async |id| {
        // Written behind the store's back, as a bad upgrade or a hand edit might.
        let sql = format!(
            "UPDATE \"{}\".jobs SET errors = '\"not a list\"' WHERE id = $1",
            guard.schema
        );
        admin(&url).await.execute(&sql, &[&id.0]).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_even_be_set_aside_stops_no_rescue_on_postgres() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = Arc::new(PostgresStore::connect(config).await.unwrap());
    let schema = guard.schema.clone();
    a_job_that_cannot_even_be_set_aside_stops_no_rescue(store, async |id| {
        // Written behind the store's back: the job refuses every move.
        let sql = format!(
            "CREATE FUNCTION \"{schema}\".immovable() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'injected: this job cannot move'; END $$;
             CREATE TRIGGER immovable BEFORE UPDATE OF state ON \"{schema}\".jobs
             FOR EACH ROW WHEN (OLD.id = {})
             EXECUTE FUNCTION \"{schema}\".immovable()",
            id.0
        );
        admin(&url).await.batch_execute(&sql).await.unwrap();
    })
    .await;
}

/// A firing that fails between a slot's job and the schedule's record of
/// the slot leaves neither (the failure injected by a trigger written
/// behind the store's back).
#[tokio::test]
async fn a_firing_that_fails_half_way_leaves_nothing_behind() {
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let store = Arc::new(PostgresStore::connect(config).await.unwrap());
    let schema = guard.schema.clone();
    a_firing_that_fails_half_way_leaves_nothing(
        store,
        async || {
            // Fires after the job is inserted, when the schedule records it.
            let sql = format!(
                "CREATE FUNCTION \"{schema}\".fail_to_record() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'injected: the slot is not recorded'; END $$;
                 CREATE TRIGGER fail_to_record BEFORE UPDATE OF last_job_id
                 ON \"{schema}\".schedules FOR EACH ROW
                 EXECUTE FUNCTION \"{schema}\".fail_to_record()"
            );
            admin(&url).await.batch_execute(&sql).await.unwrap();
        },
        async || {
            let sql = format!(
                "DROP TRIGGER fail_to_record ON \"{}\".schedules",
                guard.schema
            );
            admin(&url).await.batch_execute(&sql).await.unwrap();
        },
    )
    .await;
}

/// Lease tokens come from one random seed per fetch (`lease_set!`): within a
/// fetch each job's token is its own, each is 32 lowercase hex digits as
/// before, and a job leased again gets a token unlike its last, which no
/// longer fences it.
#[tokio::test]
async fn each_lease_token_is_its_own_and_a_new_lease_a_new_token() {
    let Some(url) = database().await else { return };
    let (config, _guard) = fresh_config(&url);
    let store = PostgresStore::connect(config).await.unwrap();
    let now = Utc::now();
    let jobs = (0..50)
        .map(|n| NewJob::new("k", json!({ "n": n })))
        .collect();
    store
        .jobs_insert_many(JobsInsert { jobs, now })
        .await
        .unwrap();
    let leased = store
        .jobs_fetch(fetch_params("default", 50, now))
        .await
        .unwrap();
    assert_eq!(leased.len(), 50);
    let tokens: std::collections::HashSet<&str> = leased.iter().map(|l| l.lease.as_str()).collect();
    assert_eq!(tokens.len(), 50, "one token per job");
    assert!(leased.iter().all(|l| l.lease.len() == 32
        && l.lease
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));

    let first = &leased[0];
    store
        .job_release(JobRelease {
            id: first.job.id,
            lease: first.lease.clone(),
            run_at: now,
            now,
        })
        .await
        .unwrap();
    let again = store
        .jobs_fetch(fetch_params("default", 1, now))
        .await
        .unwrap();
    assert_eq!(again[0].job.id, first.job.id);
    assert_ne!(again[0].lease, first.lease);
    let stale = store
        .job_complete(JobComplete {
            id: first.job.id,
            lease: first.lease.clone(),
            result: None,
            now,
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::LeaseMismatch { .. })),
        "{stale:?}"
    );
}

/// A case that ends while a connection of its own is inside a transaction
/// (the store's counter rollup can be, and the drop blocks the case's
/// runtime, so it never commits) still has its schema dropped, instead of
/// waiting for the lock forever.
#[tokio::test]
async fn a_cases_schema_is_dropped_while_its_own_transaction_is_open() {
    let Some(url) = database().await else { return };
    let schema = common::fresh_schema();
    let holder = admin(&url).await;
    holder
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".t (n int)"
        ))
        .await
        .unwrap();
    holder
        .batch_execute(&format!("BEGIN; INSERT INTO \"{schema}\".t VALUES (1)"))
        .await
        .unwrap();
    let guard = common::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(guard);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(Duration::from_secs(60))
        .expect("the schema's drop waited for the open transaction");
    let left: i64 = admin(&url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert!(holder.is_closed() || holder.batch_execute("COMMIT").await.is_err());
}

/// A long-polling fetch of `queue`, as the engine's (`jobs_fetch_waiting`):
/// a waiter registered before the first look, then looks until a job is
/// leased, each look after a wake-up or after `wait`.
async fn fetch_waiting(store: &PostgresStore, queue: &str, wait: Duration) -> Vec<LeasedJob> {
    let waiter = store.wakeups().waiter(&queues(&[queue]));
    loop {
        let leased = store
            .jobs_fetch(fetch_params(queue, 10, Utc::now()))
            .await
            .unwrap();
        if !leased.is_empty() {
            return leased;
        }
        let _ = tokio::time::timeout(wait, waiter.woken()).await;
    }
}

/// Watching a job (`job_watch`, what `Client::wait` does right after an
/// enqueue) writes its row: a fetch woken by the enqueue that looks while
/// the watch holds the row skips it (`SKIP LOCKED`), finds nothing and waits
/// again. The watch of an available job wakes the fetches of its queue on
/// every node once it commits, so each job is still leased at once, by a
/// fetch on the enqueuing node as by one on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_watched_as_a_waiting_fetch_looks_is_still_leased_at_once_on_every_node() {
    const ROUNDS: usize = 30;
    const WAIT: Duration = Duration::from_secs(10);
    const BOUND: Duration = Duration::from_secs(2);
    let Some(url) = database().await else { return };
    let (config, guard) = fresh_config(&url);
    let a = Arc::new(PostgresStore::connect(config.clone()).await.unwrap());
    let b = Arc::new(PostgresStore::connect(config).await.unwrap());
    listening(&url, &guard.schema, 2).await;
    for (node, fetching) in [("the enqueuing node", &a), ("another node", &b)] {
        let (sender, mut leased) = tokio::sync::mpsc::unbounded_channel();
        let fetcher = tokio::spawn({
            let fetching = fetching.clone();
            async move {
                loop {
                    for l in fetch_waiting(&fetching, "watched", WAIT).await {
                        if sender.send(l.job.id).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut late = Vec::new();
        for round in 0..ROUNDS {
            // The fetch is idle, waiting.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut job = NewJob::new("k", json!({ "round": round }));
            job.queue = "watched".into();
            let id = insert(&a, job).await[0].job.id;
            a.announce(&["watched"]);
            a.job_watch(id).await.unwrap().expect("the job is there");
            match tokio::time::timeout(BOUND, leased.recv()).await {
                Ok(got) => assert_eq!(got, Some(id), "{node}, round {round}"),
                Err(_) => {
                    late.push(round);
                    // Leased once the fetch looks again: make it look now.
                    fetching.announce(&["watched"]);
                    let got = tokio::time::timeout(PATIENCE, leased.recv()).await;
                    assert_eq!(got, Ok(Some(id)), "{node}, round {round}");
                }
            }
        }
        fetcher.abort();
        assert!(
            late.is_empty(),
            "{node}: jobs of rounds {late:?} of {ROUNDS} were not leased within {BOUND:?}"
        );
    }
}
