//! Store-level rules the loop relies on: claim fencing, claims and leases, follow-ups that
//! cannot be lost between "answered" and "finished".

use serde_json::json;

use super::store::{NewSessionRow, Patch, QueueOutcome, SessionStatus};
use crate::store::{Store, now_ms};

async fn store_with_session(id: &str) -> Store {
    let store = Store::connect("sqlite::memory:").await.expect("store");
    store
        .insert_session(&NewSessionRow {
            id: id.into(),
            task: "t".into(),
            model: "m".into(),
            agent: None,
            backend: None,
            credentials: vec![],
            max_steps: 5,
            max_cost_usd: None,
            origin: json!({"kind": "api"}),
            deadline_at: now_ms() + 60_000,
        })
        .await
        .expect("insert");
    store
}

#[tokio::test]
async fn only_the_claim_holder_can_append_events() {
    let store = store_with_session("s1").await;
    let claimed = store.claim_sessions("a", 60_000, 10, &[]).await.unwrap();
    assert_eq!(claimed, vec!["s1".to_string()]);
    // A live lease is not claimable by anyone else.
    assert!(
        store
            .claim_sessions("b", 60_000, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let data = json!({"x": 1});
    let first = store
        .append_event("s1", Some("a"), "e", &data, &Patch::default())
        .await
        .unwrap()
        .expect("holder writes");
    assert_eq!(first.seq, 1);
    let fenced = store
        .append_event("s1", Some("b"), "e", &data, &Patch::default())
        .await
        .unwrap();
    assert!(fenced.is_none(), "a non-holder must not write");
    let second = store
        .append_event(
            "s1",
            Some("a"),
            "e",
            &data,
            &Patch {
                add_steps: 1,
                ..Patch::default()
            },
        )
        .await
        .unwrap()
        .expect("holder writes");
    assert_eq!(second.seq, 2);
    let row = store.get_session("s1").await.unwrap().unwrap();
    assert_eq!(row.steps, 1);
    assert_eq!(store.session_events("s1", 1, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out() {
    let store = store_with_session("s1").await;
    // A lease already in the past: as if the holder died.
    store.claim_sessions("dead", -1, 10, &[]).await.unwrap();
    let claimed = store
        .claim_sessions("alive", 60_000, 10, &[])
        .await
        .unwrap();
    assert_eq!(claimed, vec!["s1".to_string()]);
    let stale = store
        .append_event("s1", Some("dead"), "e", &json!({}), &Patch::default())
        .await
        .unwrap();
    assert!(stale.is_none());
}

#[tokio::test]
async fn a_follow_up_blocks_finishing_and_reopens_an_answered_session() {
    let store = store_with_session("s1").await;
    store.claim_sessions("a", 60_000, 10, &[]).await.unwrap();
    assert_eq!(
        store.queue_message("s1", "more").await.unwrap(),
        QueueOutcome::Queued { unclaimed: true }
    );
    let finish = Patch {
        status: Some(SessionStatus::Succeeded),
        result: Some("done"),
        require_no_pending: true,
        release_claim: true,
        ..Patch::default()
    };
    let blocked = store
        .append_event("s1", Some("a"), "status", &json!({}), &finish)
        .await
        .unwrap();
    assert!(blocked.is_none(), "cannot finish with a pending follow-up");
    let pending = store.pending_messages("s1").await.unwrap();
    assert_eq!(pending.len(), 1);
    store
        .append_event(
            "s1",
            Some("a"),
            "user_message",
            &json!({}),
            &Patch {
                consume_message: Some(&pending[0].0),
                ..Patch::default()
            },
        )
        .await
        .unwrap()
        .expect("consumed");
    assert!(store.pending_messages("s1").await.unwrap().is_empty());
    store
        .append_event("s1", Some("a"), "status", &json!({}), &finish)
        .await
        .unwrap()
        .expect("finishes now");
    let row = store.get_session("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.claim_owner.as_deref()),
        (SessionStatus::Succeeded, None)
    );

    // A follow-up to the answered session re-queues it for any brain to claim.
    store.queue_message("s1", "again").await.unwrap();
    let row = store.get_session("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.pending_messages),
        (SessionStatus::Queued, 1)
    );
    assert_eq!(
        store.claim_sessions("b", 60_000, 10, &[]).await.unwrap(),
        vec!["s1".to_string()]
    );
}

#[tokio::test]
async fn failed_and_cancelled_sessions_take_no_messages() {
    let store = store_with_session("s1").await;
    store.claim_sessions("a", 60_000, 10, &[]).await.unwrap();
    store
        .append_event(
            "s1",
            Some("a"),
            "status",
            &json!({}),
            &Patch {
                status: Some(SessionStatus::Failed),
                release_claim: true,
                ..Patch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.queue_message("s1", "hi").await.unwrap(),
        QueueOutcome::Closed(SessionStatus::Failed)
    );
    assert_eq!(
        store.queue_message("nope", "hi").await.unwrap(),
        QueueOutcome::NotFound
    );
    assert!(
        store
            .claim_sessions("b", 60_000, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Issue 12 (chaos): a dispatcher that only just got its database back takes queued sessions
/// but not lapsed claims (their owners are as likely alive after the same outage); once
/// healthy for a lease it takes those too. Starting again with a session's id returns it.
#[tokio::test]
async fn lapsed_claims_wait_for_a_healthy_claimant_and_starts_are_idempotent_per_id() {
    let store = store_with_session("s1").await;
    store.claim_sessions("peer", -1, 10, &[]).await.unwrap();
    store
        .insert_session(&NewSessionRow {
            id: "s2".into(),
            task: "t".into(),
            model: "m".into(),
            agent: None,
            backend: None,
            credentials: vec![],
            max_steps: 5,
            max_cost_usd: None,
            origin: json!({"kind": "api"}),
            deadline_at: now_ms() + 60_000,
        })
        .await
        .unwrap();
    let fresh = store
        .claim_sessions_with("back", 60_000, 10, &[], false)
        .await
        .unwrap();
    assert_eq!(fresh, vec!["s2".to_string()], "only the unclaimed one");
    let healthy = store
        .claim_sessions_with("back", 60_000, 10, &[], true)
        .await
        .unwrap();
    assert_eq!(healthy, vec!["s1".to_string()]);

    let again = store
        .insert_session(&NewSessionRow {
            id: "s2".into(),
            task: "another task".into(),
            model: "m".into(),
            agent: None,
            backend: None,
            credentials: vec![],
            max_steps: 5,
            max_cost_usd: None,
            origin: json!({"kind": "api"}),
            deadline_at: now_ms() + 60_000,
        })
        .await
        .unwrap();
    assert_eq!(
        (again.task.as_str(), again.claim_owner.as_deref()),
        ("t", Some("back"))
    );
}

/// A virtual key's sessions (`origin.owner`, kept in the `owner` column) are listed by the
/// database on their own, paged like every list; no owner lists them all.
#[tokio::test]
async fn sessions_list_by_owner_in_the_database() {
    use super::store::ListFilter;
    let store = Store::connect("sqlite::memory:").await.expect("store");
    for i in 0..7 {
        let origin = match i % 3 {
            0 => json!({"kind": "api", "owner": "vk:aaa"}),
            1 => json!({"kind": "api", "owner": "vk:bbb"}),
            _ => json!({"kind": "slack"}),
        };
        store
            .insert_session(&NewSessionRow {
                id: format!("s{i}"),
                task: "t".into(),
                model: "m".into(),
                agent: None,
                backend: None,
                credentials: vec![],
                max_steps: 5,
                max_cost_usd: None,
                origin,
                deadline_at: now_ms() + 60_000,
            })
            .await
            .expect("insert");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let list = |owner: Option<&str>, before_ms: Option<i64>, limit: i64| {
        let filter = ListFilter {
            owner: owner.map(str::to_string),
            before_ms,
            limit,
            ..ListFilter::default()
        };
        let store = store.clone();
        async move {
            store
                .list_sessions(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.id, r.created_at))
                .collect::<Vec<_>>()
        }
    };
    let ids = |v: &[(String, i64)]| v.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&list(Some("vk:aaa"), None, 50).await),
        ["s6", "s3", "s0"]
    );
    assert_eq!(ids(&list(Some("vk:bbb"), None, 50).await), ["s4", "s1"]);
    assert!(list(Some("vk:nobody"), None, 50).await.is_empty());
    assert_eq!(list(None, None, 50).await.len(), 7);
    // Paged: the second page of vk:aaa starts below the first page's last row.
    let first = list(Some("vk:aaa"), None, 2).await;
    assert_eq!(ids(&first), ["s6", "s3"]);
    let second = list(Some("vk:aaa"), Some(first[1].1), 2).await;
    assert_eq!(ids(&second), ["s0"]);
}
