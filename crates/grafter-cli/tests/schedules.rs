//! Schedules on two `grafter serve` nodes sharing one PostgreSQL schema:
//! both race to fire the same every-second and cron-with-seconds slots
//! (only the maintenance leader fires, and a node that was leader a moment
//! ago is stopped by the version check and the unique slot index); then the
//! leader is `kill -9`ed just after a slot boundary, the other node takes
//! over, and the killed node comes back. In the end every slot between a
//! schedule's first and last run was enqueued exactly once: with `catch_up:
//! "all"` none is missing, the leader gap included; with `"skip"` each slot
//! not run is in the schedule's skip records (reason `missed`).
//!
//! Runs in its own fresh schema of the shared test database
//! (`GRAFTER_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`);
//! without PostgreSQL it skips loudly, or fails when `CI` is set.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{schema_setup, Server, PATIENCE};

/// How long the nodes race before the leader is killed, and after.
const RACE_BEFORE_KILL: Duration = Duration::from_secs(12);
const RACE_AFTER_RESTART: Duration = Duration::from_secs(5);

/// The schedules: id (also the queue of its jobs), definition without the
/// job, and the spacing of their slots in ms.
fn schedules() -> Vec<(&'static str, Value, i64)> {
    let all = [
        (
            "every-second-a",
            json!({"every_ms": 1000, "catch_up": "all"}),
            1000,
        ),
        (
            "every-second-b",
            json!({"every_ms": 1000, "catch_up": "all", "timezone": "Australia/Lord_Howe"}),
            1000,
        ),
        (
            "cron-seconds",
            json!({"cron": "*/2 * * * * *", "timezone": "Europe/Berlin", "catch_up": "all"}),
            2000,
        ),
        (
            "every-second-skip",
            json!({"every_ms": 1000, "catch_up": "skip"}),
            1000,
        ),
    ];
    all.into_iter()
        .map(|(id, mut definition, step_ms)| {
            definition["job"] = json!({"kind": "tick", "queue": id});
            (id, definition, step_ms)
        })
        .collect()
}

/// The node whose log says it leads maintenance, once exactly one does.
async fn leader_of(nodes: &[&Server]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let leading: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].leads_maintenance())
            .collect();
        if let [one] = leading[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no single node led maintenance within {PATIENCE:?} (leading: {leading:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sleeps until `offset` past the next whole second of the wall clock: just
/// after every schedule here has a slot due.
async fn just_after_a_slot(offset: Duration) {
    let now = Utc::now();
    let into_second = Duration::from_nanos(u64::from(now.nanosecond() % 1_000_000_000));
    tokio::time::sleep(Duration::from_secs(1) - into_second + offset).await;
}

fn slot_of(job: &Value) -> DateTime<Utc> {
    let slot = job["schedule"]["slot"]
        .as_str()
        .unwrap_or_else(|| panic!("a scheduled job without a slot: {job}"));
    DateTime::parse_from_rfc3339(slot)
        .unwrap_or_else(|e| panic!("slot {slot:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Every slot in `[first, last]`, `step_ms` apart.
fn slots_between(first: DateTime<Utc>, last: DateTime<Utc>, step_ms: i64) -> Vec<DateTime<Utc>> {
    let mut slots = Vec::new();
    let mut slot = first;
    while slot <= last {
        slots.push(slot);
        slot += chrono::Duration::milliseconds(step_ms);
    }
    slots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_enqueue_each_slot_once_through_a_leader_kill() {
    let Some(pg) = schema_setup().await else {
        return;
    };
    // Fire passes every 100 ms on a one-second leadership (FAST_CONFIG).
    let mut config = std::fs::read_to_string(&pg.config).expect("read config");
    config = config.replace(
        "[maintenance]\n",
        "[maintenance]\nperiodic_interval_ms = 100\n",
    );
    std::fs::write(&pg.config, config).expect("write config");

    let node_0 = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    let node_1 = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    let mut nodes = [node_0, node_1];
    for (n, (id, definition, _)) in schedules().into_iter().enumerate() {
        // Put through either node: both write the same rows.
        let (status, body) = nodes[n % 2]
            .send(
                nodes[n % 2]
                    .http
                    .put(nodes[n % 2].url(&format!("/v1/schedules/{id}")))
                    .json(&definition),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "put {id}: {body}");
    }

    tokio::time::sleep(RACE_BEFORE_KILL).await;
    let leader = leader_of(&[&nodes[0], &nodes[1]]).await;
    // Just past a whole second: every schedule's slot is due and the
    // leader's 100 ms pass is about to fire (or is firing) it.
    just_after_a_slot(Duration::from_millis(20)).await;
    nodes[leader].kill9();
    let killed_at = Utc::now();
    let survivor = 1 - leader;
    let deadline = Instant::now() + PATIENCE;
    while !nodes[survivor].leads_maintenance() {
        assert!(
            Instant::now() < deadline,
            "the survivor never took over maintenance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes[leader] = Server::start(pg.dir.path(), &pg.url, &pg.config).await;
    tokio::time::sleep(RACE_AFTER_RESTART).await;

    // Stop firing, then read what was enqueued: a pause is written under the
    // version, so after it answers no firing of these schedules commits.
    let reader = &nodes[survivor];
    for (id, _, _) in schedules() {
        let (status, body) = reader
            .post(&format!("/v1/schedules/{id}/pause"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "pause {id}: {body}");
    }

    for (id, _, step_ms) in schedules() {
        let jobs = reader.all_jobs(id, 1_000).await;
        let mut per_slot: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
        for job in &jobs {
            assert_eq!(job["schedule"]["id"], id, "{job}");
            *per_slot.entry(slot_of(job)).or_default() += 1;
        }
        let twice: Vec<_> = per_slot.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{id}: slots enqueued twice: {twice:?}");
        let (first, last) = (
            *per_slot.keys().next().expect("some slot ran"),
            *per_slot.keys().next_back().expect("some slot ran"),
        );
        assert!(
            last > killed_at,
            "{id}: no slot ran after the leader was killed at {killed_at} (last {last})"
        );
        let expected = slots_between(first, last, step_ms);
        let missing: BTreeSet<DateTime<Utc>> = expected
            .iter()
            .filter(|slot| !per_slot.contains_key(slot))
            .copied()
            .collect();
        assert!(
            per_slot.keys().all(|slot| expected.contains(slot)),
            "{id}: a slot off the schedule's grid ran: {:?}",
            per_slot.keys().collect::<Vec<_>>()
        );
        if id == "every-second-skip" {
            // Slots the leader gap made late are skipped, and recorded.
            let (status, body) = reader.get(&format!("/v1/schedules/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let mut recorded = BTreeSet::new();
            for skip in body["skipped"].as_array().expect("skipped") {
                assert_eq!(skip["reason"], "missed", "{skip}");
                let from = DateTime::parse_from_rfc3339(skip["first_slot"].as_str().unwrap())
                    .unwrap()
                    .with_timezone(&Utc);
                let to = DateTime::parse_from_rfc3339(skip["last_slot"].as_str().unwrap())
                    .unwrap()
                    .with_timezone(&Utc);
                let slots = slots_between(from, to, step_ms);
                assert_eq!(
                    slots.len() as u64,
                    skip["count"].as_u64().unwrap(),
                    "{skip}"
                );
                recorded.extend(slots);
            }
            let unrecorded: Vec<_> = missing.difference(&recorded).collect();
            assert!(
                unrecorded.is_empty(),
                "{id}: slots neither run nor recorded as skipped: {unrecorded:?}"
            );
            let ran_and_skipped: Vec<_> = recorded
                .iter()
                .filter(|slot| per_slot.contains_key(slot))
                .collect();
            assert!(
                ran_and_skipped.is_empty(),
                "{id}: slots both run and recorded as skipped: {ran_and_skipped:?}"
            );
        } else {
            assert!(
                missing.is_empty(),
                "{id} (catch_up all): slots between {first} and {last} never enqueued: {missing:?}"
            );
        }
        // The race lasted well over ten seconds: this is not a handful of slots.
        assert!(
            expected.len() as i64 >= 10_000 / step_ms,
            "{id}: only {} slots from {first} to {last}",
            expected.len()
        );
    }
    for node in &mut nodes {
        assert!(node.is_running(), "a node exited:\n{}", node.log_text());
        assert!(
            !node.log_text().contains("panicked"),
            "a node panicked:\n{}",
            node.log_text()
        );
    }
}
