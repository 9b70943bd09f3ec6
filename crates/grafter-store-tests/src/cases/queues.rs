//! Queues: the list, with counts per state and the oldest available job, and
//! the push target setting. (Pausing is in `leasing.rs`, as what the fetch
//! skips.)

use std::time::Duration;

use grafter_core::{JobState, NewJob, PushTarget};
use grafter_store::{QueuePause, QueuePush, Waiter};
use serde_json::json;

use super::{fetch, insert, ms, t0, S};

pub async fn queues_list_counts_per_state(store: S) {
    let now = t0();
    assert!(store.queues_list().await.unwrap().is_empty());
    let mut mail = NewJob::new("m", json!({}));
    mail.queue = "mail".into();
    insert(
        &store,
        vec![mail.clone(), mail, NewJob::new("d", json!({}))],
        now,
    )
    .await;
    fetch(&store, "mail", 1, now).await;
    let queues = store.queues_list().await.unwrap();
    let mail = queues.iter().find(|q| q.name == "mail").unwrap();
    assert_eq!(mail.counts[&JobState::Available], 1);
    assert_eq!(mail.counts[&JobState::Running], 1);
    assert_eq!(mail.counts[&JobState::Dead], 0);
    assert_eq!(mail.counts.len(), JobState::ALL.len());
    let default = queues.iter().find(|q| q.name == "default").unwrap();
    assert_eq!(default.counts[&JobState::Available], 1);
    assert!(!default.paused);
}

pub async fn push_target_is_kept_and_removed(store: S) {
    let now = t0();
    let target = PushTarget {
        url: "http://127.0.0.1:9/jobs".into(),
        secret: "0123456789abcdef".into(),
        old_secrets: vec!["fedcba9876543210".into()],
        timeout_ms: 5_000,
        concurrency: 3,
        headers: [("X-App".to_owned(), "demo".to_owned())].into(),
        signing: grafter_core::Signing::Both,
    };
    let info = store
        .queue_set_push(QueuePush {
            queue: "hooks".into(),
            push: Some(target.clone()),
            now,
        })
        .await
        .unwrap();
    assert_eq!(info.push.as_ref(), Some(&target));
    assert!(!info.paused);
    // Pausing keeps the target; the list shows it.
    store
        .queue_set_paused(QueuePause {
            queue: "hooks".into(),
            paused: true,
            now,
        })
        .await
        .unwrap();
    let listed = store.queues_list().await.unwrap();
    let hooks = listed.iter().find(|q| q.name == "hooks").unwrap();
    assert_eq!(hooks.push.as_ref(), Some(&target));
    assert!(hooks.paused);
    let info = store
        .queue_set_push(QueuePush {
            queue: "hooks".into(),
            push: None,
            now,
        })
        .await
        .unwrap();
    assert!(info.push.is_none());
    assert!(info.paused, "removing the target keeps other settings");
}

pub async fn queues_list_shows_the_oldest_available_job(store: S) {
    let now = t0();
    let at = |back_ms: i64| {
        let mut j = NewJob::new("k", json!({}));
        j.run_at = Some(now - ms(back_ms));
        j
    };
    insert(&store, vec![at(5_000), at(60_000), at(1_000)], now).await;
    let queues = store.queues_list().await.unwrap();
    assert_eq!(queues[0].oldest_available_at, Some(now - ms(60_000)));
    fetch(&store, "default", 3, now).await;
    assert_eq!(
        store.queues_list().await.unwrap()[0].oldest_available_at,
        None,
        "none available"
    );
}

/// What `announce` wakes: the waiters of the queues it names (waiting
/// fetches in this process; on a shared database, in every process), and
/// every waiter for `announce_all`. When to announce is the engine's rule.
pub async fn announce_wakes_only_the_waiters_of_its_queues(store: S) {
    async fn woken(waiter: &Waiter) -> bool {
        tokio::time::timeout(Duration::from_millis(200), waiter.woken())
            .await
            .is_ok()
    }
    let waiter = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        store.wakeups().waiter(&names)
    };
    let mail = waiter(&["mail"]);
    let reports = waiter(&["reports", "other"]);
    store.announce(&["mail"]);
    assert!(woken(&mail).await, "announcing mail wakes its waiter");
    assert!(!woken(&reports).await, "and no other");
    store.announce(&["other", "elsewhere"]);
    assert!(
        woken(&reports).await,
        "a waiter wakes for any of its queues"
    );
    assert!(!woken(&mail).await);
    store.announce(&[]);
    assert!(
        !woken(&mail).await && !woken(&reports).await,
        "nothing named, nobody woken"
    );
    store.announce_all();
    assert!(woken(&mail).await && woken(&reports).await);
}
