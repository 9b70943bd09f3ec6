//! Several `grafter serve` processes on one PostgreSQL database: work shared
//! with no job completed twice and none lost (also when a node is `kill -9`ed
//! mid-run), an enqueue on one node waking a long-poll on another, a
//! PostgreSQL restart mid-run, and the maintenance leader's failover.
//!
//! Each test works in its own fresh schema of the shared test database
//! (`GRAFTER_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! dropped afterwards; the restart test runs a private PostgreSQL cluster of its
//! own instead, so that the machine's shared server is never restarted. Without
//! PostgreSQL the tests say so loudly and skip, or fail when `CI` is set.
//!
//! Leases, backoff, maintenance and the leadership TTL are short so each test
//! takes seconds; waits are polls with generous deadlines, and nothing asserts
//! on speed beyond "before its own timeout".

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{
    enqueue_wakes_long_poll, id_of, schema_setup, temp_dir, write_postgres_config, PrivateCluster,
    Server, PATIENCE,
};

/// Waits until `server`'s log says it leads maintenance.
async fn wait_until_leading(server: &Server) {
    let deadline = Instant::now() + PATIENCE;
    while !server.leads_maintenance() {
        assert!(
            Instant::now() < deadline,
            "the node never took the maintenance leadership"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueues `n` jobs on `queue` in batches of 500, alternating between the
/// nodes, and returns their ids.
async fn enqueue_many(nodes: &[&Server], queue: &str, n: usize) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    let batches: Vec<Vec<Value>> = (0..n)
        .map(|i| json!({"kind": "work", "queue": queue, "args": {"i": i}}))
        .collect::<Vec<_>>()
        .chunks(500)
        .map(<[Value]>::to_vec)
        .collect();
    for (b, jobs) in batches.into_iter().enumerate() {
        let (status, body) = nodes[b % nodes.len()]
            .post("/v1/jobs/batch", json!({ "jobs": jobs }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.extend(
            body["jobs"]
                .as_array()
                .expect("batch answers jobs")
                .iter()
                .map(id_of),
        );
    }
    assert_eq!(ids.len(), n, "distinct ids");
    ids
}

/// What the workers of the 5,000-job run saw.
#[derive(Default)]
struct Tally {
    /// Every (job, attempt) handed out: a pair twice means one lease given to two workers.
    leased: Mutex<HashSet<(i64, i64)>>,
    /// Acks answered 200, per job.
    acked: Mutex<HashMap<i64, u32>>,
    /// Jobs a worker held when its node died with it: never acked by it.
    abandoned: Mutex<Vec<i64>>,
}

/// How the test steers the workers.
struct Control {
    nodes: [String; 2],
    /// Node 1 is up (the workers of node 0 ack through it while it is).
    node_1_up: AtomicBool,
    /// Node 1 is about to die: its workers take one more batch and "die" with it.
    node_1_dying: AtomicBool,
    /// Every job is completed.
    done: AtomicBool,
}

/// An HTTP worker: fetches batches from its home node, acks each job through
/// the other node while that is up (through its own otherwise), and retries an
/// ack whose node died under it on the surviving node.
async fn worker(name: String, home: usize, control: Arc<Control>, tally: Arc<Tally>) {
    let http = common::http_client();
    while !control.done.load(Ordering::SeqCst) {
        let request = json!({"queues": ["cluster"], "max": 25, "wait_ms": 500, "lease_ms": 2000, "worker_id": name});
        let answer = match http
            .post(format!("{}/v1/fetch", control.nodes[home]))
            .json(&request)
            .send()
            .await
        {
            Ok(answer) => answer,
            // Our node died under us; so do we.
            Err(_) if home == 1 && !control.node_1_up.load(Ordering::SeqCst) => return,
            Err(e) => panic!("{name}: fetch from a live node failed: {e}"),
        };
        assert_eq!(answer.status(), StatusCode::OK, "{name}: fetch");
        let body: Value = answer.json().await.expect("fetch JSON");
        let jobs = body["jobs"].as_array().expect("jobs").clone();
        for job in &jobs {
            let pair = (id_of(job), job["attempt"].as_i64().expect("attempt"));
            assert!(
                tally.leased.lock().unwrap().insert(pair),
                "{name}: job {} attempt {} leased twice",
                pair.0,
                pair.1
            );
        }
        if home == 1 && control.node_1_dying.load(Ordering::SeqCst) {
            tally
                .abandoned
                .lock()
                .unwrap()
                .extend(jobs.iter().map(id_of));
            return;
        }
        for job in &jobs {
            let id = id_of(job);
            let ack = json!({"lease": job["lease"], "result": {"by": name}});
            let through = if home == 0 && control.node_1_up.load(Ordering::SeqCst) {
                1
            } else {
                0
            };
            let mut answer = http
                .post(format!("{}/v1/jobs/{id}/ack", control.nodes[through]))
                .json(&ack)
                .send()
                .await;
            if answer.is_err() && through == 1 {
                // Node 1 died with the ack in flight: it may or may not have
                // committed it. Ask the survivor; it says 200 or 409, never both.
                answer = http
                    .post(format!("{}/v1/jobs/{id}/ack", control.nodes[0]))
                    .json(&ack)
                    .send()
                    .await;
            }
            let status = answer
                .unwrap_or_else(|e| panic!("{name}: ack of job {id} failed: {e}"))
                .status();
            match status {
                StatusCode::OK => *tally.acked.lock().unwrap().entry(id).or_default() += 1,
                // The lease ran out before the ack (a slow machine): the job runs again.
                StatusCode::CONFLICT => {}
                other => panic!("{name}: ack of job {id} answered {other}"),
            }
        }
    }
}

/// Two nodes, 5,000 jobs, eight HTTP workers (four per node): every job
/// completed, none acked successfully twice, no lease handed out twice. With
/// `kill`, node 1 (the maintenance leader) is `kill -9`ed a third of the way in,
/// its workers dying with it while holding leases.
async fn five_thousand_jobs_on_two_nodes(kill: bool) {
    const JOBS: usize = 5_000;
    let Some(pg) = schema_setup().await else {
        return;
    };
    // Node 1 starts first and leads maintenance, so killing it also tests the
    // failover: node 0 must take over to rescue node 1's lost leases.
    let mut node_1 = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    wait_until_leading(&node_1).await;
    let node_0 = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    let ids = enqueue_many(&[&node_0, &node_1], "cluster", JOBS).await;

    let control = Arc::new(Control {
        nodes: [node_0.base.clone(), node_1.base.clone()],
        node_1_up: AtomicBool::new(true),
        node_1_dying: AtomicBool::new(false),
        done: AtomicBool::new(false),
    });
    let tally = Arc::new(Tally::default());
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..8 {
        workers.spawn(worker(
            format!("worker-{n}"),
            n % 2,
            control.clone(),
            tally.clone(),
        ));
    }

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut killed = !kill;
    loop {
        let counts = node_0.queue_counts("cluster").await;
        let completed = counts.get("completed").copied().unwrap_or(0);
        if completed == JOBS as u64 {
            break;
        }
        if !killed && completed >= JOBS as u64 / 3 {
            // Node 1's workers take one more batch each and die holding it.
            control.node_1_dying.store(true, Ordering::SeqCst);
            let stop = Instant::now() + PATIENCE;
            while tally.abandoned.lock().unwrap().is_empty() && Instant::now() < stop {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            control.node_1_up.store(false, Ordering::SeqCst);
            node_1.kill9();
            killed = true;
        }
        assert!(
            Instant::now() < deadline,
            "not every job completed in time: {counts:?}"
        );
        if let Some(Err(e)) = workers.try_join_next() {
            std::panic::resume_unwind(e.into_panic());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    control.done.store(true, Ordering::SeqCst);
    while let Some(outcome) = workers.join_next().await {
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    let counts = node_0.queue_counts("cluster").await;
    let unfinished: BTreeMap<&String, &u64> = counts
        .iter()
        .filter(|(s, n)| *s != "completed" && **n > 0)
        .collect();
    assert!(unfinished.is_empty(), "jobs left unfinished: {counts:?}");
    let jobs = node_0.all_jobs("cluster", 1_000).await;
    let listed: BTreeSet<i64> = jobs.iter().map(id_of).collect();
    assert_eq!(listed, ids, "jobs lost or invented");
    assert!(
        jobs.iter().all(|j| j["state"] == "completed"),
        "a job is not completed"
    );

    let acked = tally.acked.lock().unwrap().clone();
    let twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "jobs acked successfully more than once: {twice:?}"
    );
    let abandoned = tally.abandoned.lock().unwrap().clone();
    if kill {
        // An ack committed by node 1 as it died got no answer: such a job is
        // completed without a 200 here. Every other job had exactly one.
        assert!(
            acked.len() <= JOBS && acked.len() > JOBS / 2,
            "{} acks answered 200",
            acked.len()
        );
        assert!(
            !abandoned.is_empty(),
            "node 1's workers held no leases when it died"
        );
        let by_id: HashMap<i64, &Value> = jobs.iter().map(|j| (id_of(j), j)).collect();
        for id in &abandoned {
            let job = by_id[id];
            assert!(
                job["attempt"].as_i64() >= Some(2),
                "abandoned job {id} was not run again: {job}"
            );
            assert_eq!(
                job["errors"][0]["error"], "lease expired",
                "abandoned job {id}: {job}"
            );
        }
        assert!(
            node_0.leads_maintenance(),
            "the survivor does not lead maintenance"
        );
    } else {
        assert_eq!(acked.len(), JOBS, "every job acked exactly once");
        assert!(abandoned.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_complete_5000_jobs_each_exactly_once() {
    five_thousand_jobs_on_two_nodes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_complete_5000_jobs_when_the_leader_is_killed_mid_run() {
    five_thousand_jobs_on_two_nodes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_on_one_node_wakes_a_long_poll_on_the_other() {
    let Some(pg) = schema_setup().await else {
        return;
    };
    let a = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    let b = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    enqueue_wakes_long_poll(&b, &a, "wake").await;
    enqueue_wakes_long_poll(&a, &b, "wake").await;
}

/// Polls `/readyz` until it answers `want`.
async fn wait_for_readyz(server: &Server, want: StatusCode) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = server.get("/readyz").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still answers {status} {body}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leases `n` jobs from `queue` (each fetch may lease several).
async fn lease(server: &Server, queue: &str, n: usize, lease_ms: u64) -> Vec<Value> {
    let (status, body) = server
        .post("/v1/fetch", json!({"queues": [queue], "max": n, "wait_ms": 0, "lease_ms": lease_ms, "worker_id": "w"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let jobs = body["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), n, "{body}");
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing_and_the_nodes_recover_by_themselves() {
    let Some(cluster) = PrivateCluster::start() else {
        return;
    };
    let url = cluster.url();
    let dir = temp_dir();
    let config = write_postgres_config(dir.path(), None);
    let mut a = Server::start(dir.path(), &url, &config).await;
    let mut b = Server::start(dir.path(), &url, &config).await;
    wait_for_readyz(&a, StatusCode::OK).await;
    let ids = enqueue_many(&[&a, &b], "restart", 100).await;

    // Some work done before the restart; two leases held across it.
    for job in lease(&a, "restart", 10, 60_000).await {
        let (status, body) = b
            .post(
                &format!("/v1/jobs/{}/ack", id_of(&job)),
                json!({"lease": job["lease"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let held = lease(&b, "restart", 2, 60_000).await;
    let (to_ack, to_fail) = (&held[0], &held[1]);
    let ack_path = format!("/v1/jobs/{}/ack", id_of(to_ack));
    let fail_path = format!("/v1/jobs/{}/fail", id_of(to_fail));

    cluster.stop();
    for node in [&a, &b] {
        wait_for_readyz(node, StatusCode::SERVICE_UNAVAILABLE).await;
        let (status, _) = node.get("/livez").await;
        assert_eq!(status, StatusCode::OK, "the process itself is alive");
    }
    // Nothing that could not be written is answered as a success.
    let (status, body) = a
        .post(&ack_path, json!({"lease": to_ack["lease"], "result": 1}))
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an ack with the database down: {body}"
    );
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let (status, body) = b
        .post(
            &fail_path,
            json!({"lease": to_fail["lease"], "error": "boom"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a fail with the database down: {body}"
    );
    let (status, body) = a
        .post("/v1/jobs", json!({"kind": "lost?", "queue": "restart"}))
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an enqueue with the database down: {body}"
    );
    let (status, body) = b
        .post(
            "/v1/fetch",
            json!({"queues": ["restart"], "max": 1, "wait_ms": 0, "worker_id": "w"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a fetch with the database down: {body}"
    );
    // Long enough for every maintenance loop and the listeners to hit the outage.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    cluster.restart();
    for node in [&a, &b] {
        wait_for_readyz(node, StatusCode::OK).await;
    }
    // The same ack and fail, retried, now succeed.
    let (status, body) = a
        .post(&ack_path, json!({"lease": to_ack["lease"], "result": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "the retried ack: {body}");
    assert_eq!(body["state"], "completed");
    let (status, body) = b
        .post(
            &fail_path,
            json!({"lease": to_fail["lease"], "error": "boom"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the retried fail: {body}");
    assert_eq!(body["state"], "retryable");
    // The listeners came back too: an enqueue on one node wakes the other.
    enqueue_wakes_long_poll(&b, &a, "after-restart").await;

    // The rest (including the failed job, once its backoff passes) completes.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let counts = a.queue_counts("restart").await;
        if counts.get("completed") == Some(&(ids.len() as u64)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs not completed after the restart: {counts:?}"
        );
        let (status, body) = b
            .post("/v1/fetch", json!({"queues": ["restart"], "max": 50, "wait_ms": 200, "lease_ms": 30_000, "worker_id": "w"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for job in body["jobs"].as_array().expect("jobs") {
            let (status, body) = a
                .post(
                    &format!("/v1/jobs/{}/ack", id_of(job)),
                    json!({"lease": job["lease"]}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let listed: BTreeSet<i64> = a
        .all_jobs("restart", 1_000)
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, ids, "jobs lost or invented across the restart");
    assert_eq!(
        b.job(id_of(to_fail)).await["attempt"],
        2,
        "the failed job ran again"
    );
    for node in [&mut a, &mut b] {
        assert!(node.is_running(), "a node exited:\n{}", node.log_text());
        assert!(
            !node.log_text().contains("panicked"),
            "a node panicked:\n{}",
            node.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_maintenance_leader_is_killed_the_survivor_takes_over() {
    let Some(pg) = schema_setup().await else {
        return;
    };
    let mut leader = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    wait_until_leading(&leader).await;
    let survivor = Server::start(pg.dir.path(), &pg.url, &pg.config).await;

    // A worker that will never come back, and a job due shortly: left to the
    // rescuer and the scheduler, which until now ran on the leader only.
    let lost = survivor
        .enqueue(json!({"kind": "lost", "queue": "failover"}))
        .await;
    let leased = survivor
        .fetch("failover", 2_000, 0)
        .await
        .expect("the job is available");
    assert_eq!(id_of(&leased), id_of(&lost));
    let run_at = (chrono::Utc::now() + chrono::Duration::milliseconds(2_000)).to_rfc3339();
    let due = survivor
        .enqueue(json!({"kind": "due", "queue": "failover", "run_at": run_at}))
        .await;
    assert_eq!(due["state"], "scheduled");

    leader.kill9();
    // Nothing was done before the kill: the lease is live, the job not yet due.
    assert_eq!(survivor.job(id_of(&lost)).await["state"], "running");
    assert_eq!(survivor.job(id_of(&due)).await["state"], "scheduled");

    let mut came = BTreeMap::new();
    for _ in 0..2 {
        let job = survivor.fetch_until("failover", 30_000).await;
        came.insert(id_of(&job), job);
    }
    let promoted = &came[&id_of(&due)];
    assert_eq!(promoted["attempt"], 1, "{promoted}");
    let rescued = &came[&id_of(&lost)];
    assert_eq!(rescued["attempt"], 2, "{rescued}");
    assert_eq!(rescued["errors"][0]["error"], "lease expired", "{rescued}");
    assert!(
        survivor.leads_maintenance(),
        "the survivor's log does not say it leads:\n{}",
        survivor.log_text()
    );
}
