//! Leadership: one node at a time, until it expires or is released.

use std::time::Duration;

use grafter_store::{LeaderAcquire, LeaderRelease};

use super::{ms, t0, S};

pub async fn leadership_is_exclusive_until_it_expires_or_is_released(store: S) {
    let now = t0();
    let acquire = |node: &str, now| LeaderAcquire {
        name: "maintenance".into(),
        node: node.into(),
        ttl: Duration::from_secs(10),
        now,
    };
    assert!(store.leader_acquire(acquire("a", now)).await.unwrap());
    assert!(!store
        .leader_acquire(acquire("b", now + ms(1)))
        .await
        .unwrap());
    assert!(
        store
            .leader_acquire(acquire("a", now + ms(5_000)))
            .await
            .unwrap(),
        "renewal"
    );
    assert!(
        !store
            .leader_acquire(acquire("b", now + ms(14_000)))
            .await
            .unwrap(),
        "renewed until 15 s"
    );
    assert!(
        store
            .leader_acquire(acquire("b", now + ms(15_000)))
            .await
            .unwrap(),
        "expired: b takes over"
    );
    assert!(!store
        .leader_acquire(acquire("a", now + ms(15_001)))
        .await
        .unwrap());
    // Another name is another leadership.
    let mut other = acquire("a", now + ms(15_001));
    other.name = "cron".into();
    assert!(store.leader_acquire(other).await.unwrap());
    // Releasing hands over at once; releasing what one does not hold does nothing.
    store
        .leader_release(LeaderRelease {
            name: "maintenance".into(),
            node: "a".into(),
        })
        .await
        .unwrap();
    assert!(!store
        .leader_acquire(acquire("a", now + ms(15_002)))
        .await
        .unwrap());
    store
        .leader_release(LeaderRelease {
            name: "maintenance".into(),
            node: "b".into(),
        })
        .await
        .unwrap();
    assert!(store
        .leader_acquire(acquire("a", now + ms(15_003)))
        .await
        .unwrap());
}

pub async fn store_info_names_its_schema_and_who_leads(store: S) {
    let now = t0();
    let before = store.store_info().await.unwrap();
    assert!(["sqlite", "postgres"].contains(&before.kind), "{before:?}");
    assert!(before.schema_version >= 1, "{before:?}");
    assert!(before.leaders.is_empty(), "{before:?}");
    let acquire = LeaderAcquire {
        name: "maintenance".into(),
        node: "node-a".into(),
        ttl: Duration::from_secs(10),
        now,
    };
    assert!(store.leader_acquire(acquire).await.unwrap());
    let after = store.store_info().await.unwrap();
    assert_eq!(after.schema_version, before.schema_version);
    assert_eq!(after.leaders.len(), 1, "{after:?}");
    assert_eq!(
        (
            after.leaders[0].name.as_str(),
            after.leaders[0].node.as_str()
        ),
        ("maintenance", "node-a")
    );
    assert_eq!(after.leaders[0].expires_at, now + ms(10_000));
}
