//! API tokens (found by their secret's hash, revoked, touched) and the
//! audit log (appended, paged newest first, pruned).

use grafter_store::{
    ApiToken, AuditEntry, AuditList, AuditPrune, Scope, TokenInsert, TokenRevoke, TokenTouch,
};
use serde_json::json;

use super::{ms, t0, S};

fn token(id: &str, now: chrono::DateTime<chrono::Utc>) -> ApiToken {
    ApiToken {
        id: id.into(),
        name: format!("name of {id}"),
        scopes: vec![Scope::Enqueue, Scope::Read],
        queues: vec!["emails*".into(), "sms".into()],
        expires_at: Some(now + ms(3_600_000)),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    }
}

pub async fn tokens_are_found_by_secret_hash_listed_and_revoked(store: S) {
    let now = t0();
    let first = token("tok_1", now);
    let mut second = token("tok_2", now + ms(1));
    second.scopes = vec![Scope::Admin];
    second.queues = vec![];
    second.expires_at = None;
    for (t, hash) in [(&first, "aa11"), (&second, "bb22")] {
        store
            .token_insert(TokenInsert {
                token: t.clone(),
                secret_sha256: hash.into(),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.token_by_secret("aa11".into()).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.token_by_secret("bb22".into()).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.token_by_secret("cc33".into()).await.unwrap(), None);
    assert_eq!(
        store.token_get("tok_2".into()).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.token_get("tok_9".into()).await.unwrap(), None);
    assert_eq!(
        store.tokens_list().await.unwrap(),
        vec![first.clone(), second.clone()]
    );

    let again = TokenInsert {
        token: token("tok_3", now),
        secret_sha256: "aa11".into(),
    };
    assert!(
        store.token_insert(again).await.is_err(),
        "a secret's hash names one token"
    );

    let revoked = store
        .token_revoke(TokenRevoke {
            id: "tok_1".into(),
            now: now + ms(10),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(now + ms(10)));
    let later = store
        .token_revoke(TokenRevoke {
            id: "tok_1".into(),
            now: now + ms(20),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        later.revoked_at,
        Some(now + ms(10)),
        "the first revocation stands"
    );
    assert_eq!(
        store
            .token_by_secret("aa11".into())
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(now + ms(10))
    );
    assert_eq!(
        store
            .token_revoke(TokenRevoke {
                id: "tok_9".into(),
                now
            })
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .token_get("tok_2".into())
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None,
        "only that token"
    );
}

pub async fn token_last_use_only_moves_forward(store: S) {
    let now = t0();
    store
        .token_insert(TokenInsert {
            token: token("tok_1", now),
            secret_sha256: "aa11".into(),
        })
        .await
        .unwrap();
    let touch = |at| TokenTouch {
        id: "tok_1".into(),
        now: at,
    };
    store.token_touch(touch(now + ms(60_000))).await.unwrap();
    store.token_touch(touch(now + ms(30_000))).await.unwrap();
    let read = store.token_get("tok_1".into()).await.unwrap().unwrap();
    assert_eq!(read.last_used_at, Some(now + ms(60_000)));
    store.token_touch(touch(now + ms(120_000))).await.unwrap();
    let read = store.token_get("tok_1".into()).await.unwrap().unwrap();
    assert_eq!(read.last_used_at, Some(now + ms(120_000)));
}

pub async fn audit_log_pages_newest_first_and_prunes_the_oldest(store: S) {
    let now = t0();
    let mut written = Vec::new();
    for i in 0..5i64 {
        let entry = AuditEntry {
            at: now + ms(i * 1000),
            token_id: (i % 2 == 0).then(|| format!("tok_{i}")),
            actor: if i % 2 == 0 {
                format!("deploy {i}")
            } else {
                "server token".into()
            },
            action: "job.retry".into(),
            target: format!("job:{i}"),
            details: (i == 3).then(|| json!({"note": "ünïcode", "n": [1, 2]})),
        };
        let record = store.audit_append(entry.clone()).await.unwrap();
        assert_eq!(record.entry, entry);
        if let Some(previous) = written.last() {
            let previous: &grafter_store::AuditRecord = previous;
            assert!(record.id > previous.id, "ids grow");
        }
        written.push(record);
    }
    let first_page = store
        .audit_list(AuditList {
            before: None,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(first_page, vec![written[4].clone(), written[3].clone()]);
    let second_page = store
        .audit_list(AuditList {
            before: Some(first_page[1].id),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        second_page,
        vec![written[2].clone(), written[1].clone(), written[0].clone()]
    );

    let pruned = store
        .audit_prune(AuditPrune {
            before: now + ms(2500),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 2, "at most the limit, oldest first");
    let left = store
        .audit_list(AuditList {
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![written[4].clone(), written[3].clone(), written[2].clone()]
    );
    let pruned = store
        .audit_prune(AuditPrune {
            before: now + ms(2500),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 1, "only entries before the cutoff");
}
