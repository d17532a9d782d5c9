//! The session loop under failures, reproduced with faults injected at the store
//! ([`crate::store::faults`]): a panicking loop, a failure that cannot be recorded, a database
//! outage mid-run, a lost commit answer, a crash mid model call, a crash loop, a crash between
//! the first two events. A real dispatcher, SQLite store, scripted model and fake backend.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::store::{NewSessionRow, Patch, SessionStatus};
use crate::config::{Config, MasterKey};
use crate::sandbox::fake::FakeBackend;
use crate::sandbox::{BackendKind, Backends};
use crate::state::AppState;
use crate::store::faults::Action;
use crate::store::{Store, now_ms};

struct Harness {
    state: AppState,
    stop: watch::Sender<bool>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A brain's session machinery on a fresh SQLite file, with `script` as the model (price:
/// $0.001 per input token, so calls cost something) and a 2 s lease.
async fn harness(script: Value) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("script.json"), script.to_string()).unwrap();
    let mut config = Config {
        database_url: format!("sqlite://{}", dir.path().join("b.db").display()),
        ..Config::default()
    };
    config.sessions.lease_seconds = 2;
    config.sessions.poll_interval_ms = 100;
    config.sessions.max_resumes = 2;
    config.models.model_list = vec![json!({
        "model_name": "scripted",
        "litellm_params": { "model": format!("scripted/{}", dir.path().join("script.json").display()) },
        "input_cost_per_token": 0.001,
    })];
    let store = Store::connect(&config.database_url).await.unwrap();
    let master_key = MasterKey::new("k");
    let models = super::Models::build(&config.models, dir.path(), &store, &master_key)
        .await
        .unwrap()
        .expect("models");
    let fake = Arc::new(FakeBackend::default());
    let backends = Backends::with_backend(BackendKind::Local, fake, config.sandbox.clone());
    let state = AppState::new(config, store, backends, master_key).with_models(models);
    let (stop, _) = watch::channel(false);
    Harness {
        state,
        stop,
        dispatcher: None,
        _dir: dir,
    }
}

impl Harness {
    fn store(&self) -> &Store {
        &self.state.store
    }

    fn start_dispatcher(&mut self) {
        let rx = self.stop.subscribe();
        self.dispatcher = Some(tokio::spawn(super::dispatcher(self.state.clone(), rx)));
    }

    async fn new_session(&self, task: &str) -> String {
        let view = super::start(
            &self.state,
            super::NewSession {
                task: task.into(),
                ..super::NewSession::default()
            },
        )
        .await
        .unwrap();
        view.id
    }

    /// A session whose earlier run (by a brain now dead) left `events`; its lease expired.
    async fn crashed_session(&self, events: &[(&str, Value, Patch<'_>)]) -> String {
        let id = format!("ses-{}", uuid::Uuid::new_v4().simple());
        self.store()
            .insert_session(&NewSessionRow {
                id: id.clone(),
                task: "the task".into(),
                model: "scripted".into(),
                agent: None,
                backend: None,
                credentials: vec![],
                max_steps: 10,
                max_cost_usd: None,
                origin: json!({"kind": "api"}),
                deadline_at: now_ms() + 60_000,
            })
            .await
            .unwrap();
        let claimed = self
            .store()
            .claim_sessions("dead-brain", -1, 10, &[])
            .await
            .unwrap();
        assert_eq!(claimed, vec![id.clone()]);
        for (kind, data, patch) in events {
            self.store()
                .append_event(&id, Some("dead-brain"), kind, data, patch)
                .await
                .unwrap()
                .expect("written");
        }
        id
    }

    async fn settled(&self, id: &str, within: Duration) -> super::SessionView {
        match tokio::time::timeout(within, super::wait_settled(&self.state, id)).await {
            Ok(view) => view.unwrap(),
            Err(_) => {
                let row = self.store().get_session(id).await.unwrap().unwrap();
                panic!("session {id} not settled within {within:?}: {row:?}");
            }
        }
    }

    async fn kinds(&self, id: &str) -> Vec<String> {
        self.store()
            .session_events(id, 0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(d) = self.dispatcher.take() {
            d.abort();
        }
    }
}

fn running() -> Patch<'static> {
    Patch {
        status: Some(SessionStatus::Running),
        ..Patch::default()
    }
}

fn tool_then_answer() -> Value {
    json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": {"command": "echo hi"}}]},
        {"text": "done"}
    ]})
}

#[tokio::test]
async fn a_panicking_loop_fails_its_session_and_releases_its_claim() {
    let mut h = harness(tool_then_answer()).await;
    h.store()
        .faults
        .arm("append_event", Some("model_request"), Action::Panic, 1);
    h.start_dispatcher();
    let id = h.new_session("panic please").await;
    let view = h.settled(&id, Duration::from_secs(10)).await;
    assert_eq!(view.status, SessionStatus::Failed, "{view:?}");
    let error = view.error.unwrap_or_default();
    assert!(
        error.starts_with("internal error (reference err-"),
        "{error}"
    );
    assert!(!error.contains("panic"), "details stay in the log: {error}");
    let row = h.store().get_session(&id).await.unwrap().unwrap();
    assert_eq!(row.claim_owner, None);
    // The task leaves the live set right after recording the failure.
    for _ in 0..50 {
        if h.state.sessions.running_here() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.state.sessions.running_here(), 0, "no loop, no renewal");
}

#[tokio::test]
async fn a_failure_that_cannot_be_recorded_lets_the_lease_lapse_and_the_session_resumes() {
    let mut h = harness(tool_then_answer()).await;
    let faults = &h.store().faults;
    // The loop hits a non-transient error, then cannot record the failure nor release.
    faults.arm(
        "append_event",
        Some("model_request"),
        Action::FailPermanent,
        1,
    );
    faults.arm("append_event", Some("status"), Action::FailPermanent, 1);
    faults.arm("release_claim", None, Action::FailPermanent, 1);
    h.start_dispatcher();
    let id = h.new_session("recover").await;
    // No loop runs for it, so no heartbeat renews it: after the 2 s lease it is resumed.
    let view = h.settled(&id, Duration::from_secs(15)).await;
    assert_eq!(view.status, SessionStatus::Succeeded, "{view:?}");
    assert!(h.kinds(&id).await.contains(&"resumed".to_string()));
}

#[tokio::test]
async fn a_database_outage_pauses_the_loop_and_a_lost_commit_answer_writes_nothing_twice() {
    let mut h = harness(tool_then_answer()).await;
    let faults = &h.store().faults;
    faults.arm("append_event", None, Action::FailTransient, 4);
    faults.arm(
        "append_event",
        Some("tool_result"),
        Action::FailAfterCommit,
        2,
    );
    faults.arm("renew_leases", None, Action::FailTransient, 3);
    h.start_dispatcher();
    let id = h.new_session("outage").await;
    let view = h.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(view.status, SessionStatus::Succeeded, "{view:?}");
    assert_eq!(view.result.as_deref(), Some("done"));
    let events = h.store().session_events(&id, 0, 1000).await.unwrap();
    for call in ["c1", "c2"] {
        let results = events
            .iter()
            .filter(|e| e.kind == "tool_result" && e.data["call_id"] == call)
            .count();
        assert_eq!(results, 1, "one result for {call}: {events:#?}");
    }
    assert!(!h.kinds(&id).await.contains(&"resumed".to_string()));
}

#[tokio::test]
async fn failed_or_cancelled_sessions_with_a_queued_follow_up_are_settled() {
    let h = harness(tool_then_answer()).await;
    for status in [SessionStatus::Failed, SessionStatus::Cancelled] {
        let id = h.crashed_session(&[]).await;
        h.store()
            .queue_message(&id, "one more thing")
            .await
            .unwrap();
        let patch = Patch {
            status: Some(status),
            release_claim: true,
            ..Patch::default()
        };
        h.store()
            .append_event(&id, Some("dead-brain"), "status", &json!({}), &patch)
            .await
            .unwrap()
            .unwrap();
        let view = h.settled(&id, Duration::from_secs(2)).await;
        assert_eq!((view.status, view.pending_messages), (status, 1));
    }
}

#[tokio::test]
async fn a_brain_never_claims_a_session_its_own_loop_runs_and_no_tool_starts_on_a_lapsed_lease() {
    let h = harness(tool_then_answer()).await;
    let id = h.crashed_session(&[]).await;
    // The lease lapsed (say, a long pool wait) while our loop still runs it.
    let again = h
        .store()
        .claim_sessions("dead-brain", 60_000, 10, std::slice::from_ref(&id))
        .await
        .unwrap();
    assert!(again.is_empty(), "claimed its own live session again");
    let patch = Patch {
        require_live_lease: true,
        ..Patch::default()
    };
    let started = h
        .store()
        .append_event(&id, Some("dead-brain"), "tool_started", &json!({}), &patch)
        .await
        .unwrap();
    assert!(started.is_none(), "a tool started on an expired lease");
}

#[tokio::test]
async fn leases_are_set_on_the_database_clock() {
    let h = harness(tool_then_answer()).await;
    let id = h.crashed_session(&[]).await;
    let before = h.store().db_now_ms().await.unwrap();
    h.store()
        .renew_leases("dead-brain", std::slice::from_ref(&id), 60_000)
        .await
        .unwrap();
    let after = h.store().db_now_ms().await.unwrap();
    let lease = h
        .store()
        .get_session(&id)
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at
        .unwrap();
    assert!(
        (before + 60_000..=after + 60_000).contains(&lease),
        "{before} {lease} {after}"
    );
    // Renewal covers only the live loops named.
    let renewal = h
        .store()
        .renew_leases("dead-brain", &[], 60_000)
        .await
        .unwrap();
    assert!(renewal.held.is_empty());
}

#[tokio::test]
async fn a_model_call_in_flight_at_a_crash_is_counted_and_charged() {
    let mut h = harness(json!({"responses": [{"text": "done"}]})).await;
    let id = h
        .crashed_session(&[
            ("session_started", json!({}), Patch::default()),
            (
                "user_message",
                json!({"text": "the task"}),
                Patch::default(),
            ),
            (
                "model_response",
                json!({"text": "", "tool_calls": [], "cost_usd": 0.25}),
                Patch {
                    add_steps: 1,
                    add_cost_usd: 0.25,
                    ..Patch::default()
                },
            ),
            ("user_message", json!({"text": "more"}), Patch::default()),
            ("model_request", json!({"step": 2}), Patch::default()),
        ])
        .await;
    h.start_dispatcher();
    let view = h.settled(&id, Duration::from_secs(10)).await;
    assert_eq!(view.status, SessionStatus::Succeeded, "{view:?}");
    // 1 answered + 1 abandoned + 1 asked again.
    assert_eq!(view.steps, 3);
    assert!(
        view.cost_usd >= 0.5,
        "abandoned call charged: {}",
        view.cost_usd
    );
    let events = h.store().session_events(&id, 0, 100).await.unwrap();
    let resumed = events.iter().find(|e| e.kind == "resumed").unwrap();
    assert_eq!(resumed.data["abandoned_model_calls"], 1);
}

#[tokio::test]
async fn a_crash_loop_fails_the_session_after_max_resumes() {
    let mut h = harness(json!({"responses": [{"text": "done"}]})).await;
    let resumed = || ("resumed", json!({"restart": true}), Patch::default());
    let id = h
        .crashed_session(&[
            ("session_started", json!({}), running()),
            (
                "user_message",
                json!({"text": "the task"}),
                Patch::default(),
            ),
            resumed(),
            resumed(),
        ])
        .await;
    h.start_dispatcher();
    let view = h.settled(&id, Duration::from_secs(10)).await;
    assert_eq!(view.status, SessionStatus::Failed, "{view:?}");
    assert!(
        view.error
            .unwrap_or_default()
            .contains("sessions.max_resumes"),
        "reason names the setting"
    );
}

#[tokio::test]
async fn a_crash_between_session_started_and_the_task_still_gives_the_model_the_task() {
    let mut h = harness(json!({"responses": [{"text": "done"}]})).await;
    let id = h
        .crashed_session(&[("session_started", json!({}), Patch::default())])
        .await;
    h.start_dispatcher();
    let view = h.settled(&id, Duration::from_secs(10)).await;
    assert_eq!(view.status, SessionStatus::Succeeded, "{view:?}");
    let events = h.store().session_events(&id, 0, 100).await.unwrap();
    let task = events.iter().find(|e| e.kind == "user_message").unwrap();
    assert_eq!(task.data["text"], "the task");
}

/// Deadlines are on the database clock: a replica whose own clock runs two hours ahead (an
/// injected offset) runs a session another replica started, instead of timing it out.
#[tokio::test]
async fn a_brain_clock_ahead_does_not_time_out_a_session_early() {
    let mut h = harness(json!({"responses": [{"text": "done"}]})).await;
    crate::store::test_skew::set(0);
    let id = h
        .new_session("started by a replica with a right clock")
        .await;
    crate::store::test_skew::set(2 * 3_600_000);
    h.start_dispatcher();
    let view = h.settled(&id, Duration::from_secs(10)).await;
    crate::store::test_skew::set(0);
    assert_eq!(
        view.status,
        SessionStatus::Succeeded,
        "timed out early by a skewed brain clock: {view:?}"
    );
}

/// ... and one whose clock lags two hours does not run a session past its deadline.
#[tokio::test]
async fn a_brain_clock_behind_does_not_run_a_session_past_its_deadline() {
    let mut h = harness(json!({"responses": [{"text": "done"}]})).await;
    let db_now = h.store().db_now_ms().await.unwrap();
    let id = format!("ses-{}", uuid::Uuid::new_v4().simple());
    h.store()
        .insert_session(&NewSessionRow {
            id: id.clone(),
            task: "the task".into(),
            model: "scripted".into(),
            agent: None,
            backend: None,
            credentials: vec![],
            max_steps: 10,
            max_cost_usd: None,
            origin: json!({"kind": "api"}),
            deadline_at: db_now - 1_000,
        })
        .await
        .unwrap();
    crate::store::test_skew::set(-2 * 3_600_000);
    h.start_dispatcher();
    let view = h.settled(&id, Duration::from_secs(10)).await;
    crate::store::test_skew::set(0);
    assert_eq!(view.status, SessionStatus::Failed, "{view:?}");
    assert!(
        view.error.as_deref().unwrap_or("").contains("timed out"),
        "{view:?}"
    );
}
