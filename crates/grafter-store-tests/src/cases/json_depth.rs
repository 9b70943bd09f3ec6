//! JSON nested deeper than the stores can read back: refused by the engine
//! as invalid before anything is stored, so it can neither fail a fetch that
//! picks it (and stall the jobs leased with it) nor make a job unreadable.

use grafter_core::storable::MAX_JSON_DEPTH;
use grafter_core::{BatchCallbacks, JobState, NewJob};
use grafter_engine::{Ack, NewBatch, Outcome};
use serde_json::{json, Value};

use super::engine::{engine, fetch, refused};
use super::{get, t0, S};

/// `levels` arrays, one inside the other, around a number.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| Value::Array(vec![inner]))
}

fn on(queue: &str, args: Value) -> NewJob {
    NewJob {
        queue: queue.into(),
        ..NewJob::new("k", args)
    }
}

/// Args and results nested deeper than [`MAX_JSON_DEPTH`] are refused naming
/// the field, on every path that stores them, and nothing is stored: a fetch
/// still leases the queue's other jobs, and a running job whose result was
/// refused stays running under its lease. The deepest accepted value is
/// stored and read back whole.
pub async fn json_nested_too_deep_is_refused_and_nothing_stored(store: S) {
    let now = t0();
    let (engine, _clock) = engine(&store, now);
    let too_deep = nested(MAX_JSON_DEPTH + 1);
    let deepest = nested(MAX_JSON_DEPTH);

    let first = engine.enqueue(on("q", json!({"n": 1}))).await.unwrap().job;
    refused(engine.enqueue(on("q", nested(200))).await, "args");
    refused(engine.enqueue(on("q", too_deep.clone())).await, "args");
    refused(
        engine
            .enqueue_many(vec![on("q", json!({})), on("q", too_deep.clone())])
            .await,
        "jobs[1].args",
    );
    refused(
        engine
            .batch_create(NewBatch {
                jobs: vec![on("q", too_deep.clone())],
                ..NewBatch::default()
            })
            .await,
        "jobs[0].args",
    );
    refused(
        engine
            .batch_create(NewBatch {
                callbacks: BatchCallbacks {
                    on_success: Some(on("q", too_deep.clone())),
                    ..BatchCallbacks::default()
                },
                ..NewBatch::default()
            })
            .await,
        "on_success.args",
    );
    refused(engine.retry(first.id, Some(too_deep.clone())).await, "args");
    let deep = engine.enqueue(on("q", deepest.clone())).await.unwrap().job;
    assert_eq!(get(&store, deep.id).await.args, deepest);
    let last = engine.enqueue(on("q", json!({"n": 2}))).await.unwrap().job;

    // Only the three jobs accepted are there, and one fetch leases them all.
    let leased = engine
        .fetch(fetch("q", 10, 30_000), async {})
        .await
        .unwrap();
    let ids: Vec<_> = leased.iter().map(|l| l.job.id).collect();
    assert_eq!(ids, vec![first.id, deep.id, last.id]);
    assert_eq!(leased[1].job.args, deepest);

    // A result too deep leaves the job running, its lease current.
    refused(
        engine
            .record(
                leased[0].job.id,
                &leased[0].lease,
                Outcome::Completed {
                    result: Some(nested(200)),
                },
            )
            .await,
        "result",
    );
    let acks = vec![
        Ack {
            id: leased[1].job.id,
            lease: leased[1].lease.clone(),
            result: None,
        },
        Ack {
            id: leased[2].job.id,
            lease: leased[2].lease.clone(),
            result: Some(too_deep.clone()),
        },
    ];
    refused(engine.complete_many(acks).await, "acks[1].result");
    for leased in &leased {
        let job = get(&store, leased.job.id).await;
        assert_eq!(job.state, JobState::Running, "{}", job.id);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.result, None);
    }

    let done = engine
        .record(
            leased[0].job.id,
            &leased[0].lease,
            Outcome::Completed {
                result: Some(deepest.clone()),
            },
        )
        .await
        .expect("the deepest result accepted is stored under the same lease");
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(get(&store, done.id).await.result, Some(deepest.clone()));
    let acks = leased[1..]
        .iter()
        .map(|l| Ack {
            id: l.job.id,
            lease: l.lease.clone(),
            result: Some(deepest.clone()),
        })
        .collect();
    engine.complete_many(acks).await.unwrap();
    for leased in &leased[1..] {
        let job = get(&store, leased.job.id).await;
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.result, Some(deepest.clone()));
    }
}
