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
