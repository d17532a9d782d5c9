//! Trigger component tests: the store tables (dedupe, threads, outbox) on SQLite and, when
//! `AIRLOCK_TEST_POSTGRES_URL` is set, PostgreSQL; the outbox against a local HTTP server that
//! fails like Slack does; and the hooks through the real router with a recording launcher.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::outbox::{self, RetryPolicy};
use super::signature::{sign_github, sign_slack};
use super::store::{self, ReplyPayload, Source};
use super::*;
use crate::config::{Config, MasterKey};
use crate::sandbox::fake::FakeBackend;
use crate::sandbox::{BackendKind, Backends};
use crate::store::Store;

const SLACK_SECRET: &str = "slack-signing-secret";
const BOT_TOKEN: &str = "xoxb-test-token";
const GH_SECRET: &str = "github-webhook-secret";

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    Store::connect(&url).await.unwrap()
}

/// Every store test runs on SQLite, and on PostgreSQL (own schema) when configured.
async fn each_store(test: impl AsyncFn(Store)) {
    let dir = tempfile::tempdir().unwrap();
    test(sqlite_store(&dir).await).await;
    match std::env::var("AIRLOCK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("trg_{}", uuid::Uuid::new_v4().simple());
            let store = Store::connect_in_schema(&url, Some(&schema)).await.unwrap();
            test(store).await;
        }
        _ => {
            assert!(
                std::env::var("AIRLOCK_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set"
            );
            eprintln!("skipping the PostgreSQL half: AIRLOCK_TEST_POSTGRES_URL is not set");
        }
    }
}

#[tokio::test]
async fn deliveries_are_recorded_once_per_source() {
    each_store(async |s: Store| {
        assert!(
            store::record_delivery(&s, Source::Slack, "Ev1")
                .await
                .unwrap()
        );
        assert!(
            !store::record_delivery(&s, Source::Slack, "Ev1")
                .await
                .unwrap()
        );
        // The same id from another source is another delivery.
        assert!(
            store::record_delivery(&s, Source::Github, "Ev1")
                .await
                .unwrap()
        );
        assert!(
            store::record_delivery(&s, Source::Slack, "Ev2")
                .await
                .unwrap()
        );
        // Received up to now (age -1 ms: everything until a millisecond from now).
        let pruned = store::prune_deliveries(&s, -1).await.unwrap();
        assert_eq!(pruned, 3);
        assert!(
            store::record_delivery(&s, Source::Slack, "Ev1")
                .await
                .unwrap()
        );
    })
    .await;
}

/// An approval prompt is queued once per key, by any brain, whenever asked (a restarted
/// brain asks again for approvals still pending); a claimed Slack key given back is free.
#[tokio::test]
async fn replies_with_a_key_are_queued_once() {
    each_store(async |s: Store| {
        let payload = store::ReplyPayload::GithubComment {
            repo: "acme/widgets".into(),
            issue: 7,
            body: "Airlock: sandbox wants to reach x".into(),
        };
        assert!(
            store::enqueue_reply_once(&s, "approval-prompt:github:ap_1", &payload)
                .await
                .unwrap()
        );
        for _ in 0..3 {
            assert!(
                !store::enqueue_reply_once(&s, "approval-prompt:github:ap_1", &payload)
                    .await
                    .unwrap()
            );
        }
        assert!(
            store::enqueue_reply_once(&s, "approval-prompt:github:ap_2", &payload)
                .await
                .unwrap()
        );
        assert_eq!(store::undelivered_replies(&s).await.unwrap().len(), 2);
        assert!(
            store::claim_key(&s, "approval-prompt:slack:ap_1")
                .await
                .unwrap()
        );
        assert!(
            !store::claim_key(&s, "approval-prompt:slack:ap_1")
                .await
                .unwrap()
        );
        store::release_key(&s, "approval-prompt:slack:ap_1")
            .await
            .unwrap();
        assert!(
            store::claim_key(&s, "approval-prompt:slack:ap_1")
                .await
                .unwrap()
        );
        assert_eq!(store::undelivered_replies(&s).await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn threads_map_to_the_first_session() {
    each_store(async |s: Store| {
        assert_eq!(
            store::thread_session(&s, Source::Slack, "C1:1.0")
                .await
                .unwrap(),
            None
        );
        assert!(
            store::bind_thread(&s, Source::Slack, "C1:1.0", "ses-a")
                .await
                .unwrap()
        );
        assert!(
            !store::bind_thread(&s, Source::Slack, "C1:1.0", "ses-b")
                .await
                .unwrap()
        );
        assert_eq!(
            store::thread_session(&s, Source::Slack, "C1:1.0")
                .await
                .unwrap()
                .as_deref(),
            Some("ses-a")
        );
        assert_eq!(
            store::thread_session(&s, Source::Github, "C1:1.0")
                .await
                .unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn outbox_claims_are_exclusive_and_retries_are_scheduled() {
    each_store(async |s: Store| {
        let payload = ReplyPayload::GithubComment {
            repo: "a/b".into(),
            issue: 1,
            body: "hi".into(),
        };
        let id = store::enqueue_reply(&s, &payload).await.unwrap();
        // Leases and due times are lengths from now on the database clock.
        let (first, second) = tokio::join!(
            store::claim_due_replies(&s, 300, 10),
            store::claim_due_replies(&s, 300, 10),
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(
            first.len() + second.len(),
            1,
            "one claimant wins: {first:?} {second:?}"
        );
        let claimed = first.into_iter().chain(second).next().unwrap();
        assert_eq!(
            (claimed.id.as_str(), &claimed.payload, claimed.attempts),
            (id.as_str(), &payload, 0)
        );
        // Leased: not due again until the lease passes.
        assert!(
            store::claim_due_replies(&s, 60_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            store::claim_due_replies(&s, 60_000, 10)
                .await
                .unwrap()
                .len(),
            1
        );

        store::reply_retry(&s, &id, 400, "HTTP 500").await.unwrap();
        assert!(
            store::claim_due_replies(&s, 1, 10)
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = store::claim_due_replies(&s, 1, 10).await.unwrap();
        assert_eq!(again[0].attempts, 1);
        assert_eq!(
            store::undelivered_replies(&s).await.unwrap()[0]
                .3
                .as_deref(),
            Some("HTTP 500")
        );

        store::reply_failed(&s, &id, "channel_not_found")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            store::claim_due_replies(&s, 1, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let left = store::undelivered_replies(&s).await.unwrap();
        assert_eq!(
            (left.len(), left[0].1, left[0].2),
            (1, 2, true),
            "a failed reply is kept"
        );

        let id2 = store::enqueue_reply(&s, &payload).await.unwrap();
        store::reply_delivered(&s, &id2).await.unwrap();
        assert_eq!(store::undelivered_replies(&s).await.unwrap().len(), 1);
    })
    .await;
}

/// Issue 12, item 4: outbox due times are on the database clock. A reply one brain scheduled
/// for a retry in 2 s is not sent early by a brain whose clock runs an hour ahead, and a reply
/// due now is not held back by a brain whose clock runs an hour behind (with the brain's clock,
/// the first would be claimed at once and the second an hour late).
#[tokio::test]
async fn a_skewed_brain_sends_outbox_replies_neither_early_nor_late() {
    each_store(async |s: Store| {
        let payload = ReplyPayload::SlackMessage {
            channel: "C1".into(),
            thread_ts: "1.2".into(),
            text: "retry me".into(),
        };
        crate::store::test_skew::set(0);
        let later = store::enqueue_reply(&s, &payload).await.unwrap();
        assert_eq!(
            store::claim_due_replies(&s, 60_000, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        store::reply_retry(&s, &later, 2_000, "HTTP 500")
            .await
            .unwrap();

        crate::store::test_skew::set(3_600_000);
        assert!(
            store::claim_due_replies(&s, 60_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "a brain an hour ahead sent a retry that is due in 2 s"
        );
        let wait = store::next_due_in_ms(&s).await.unwrap().unwrap();
        assert!((1..=2_000).contains(&wait), "due in {wait} ms");

        crate::store::test_skew::set(-3_600_000);
        let now = store::enqueue_reply(&s, &payload).await.unwrap();
        let due = store::claim_due_replies(&s, 60_000, 10).await.unwrap();
        assert_eq!(
            due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec![now.as_str()],
            "a brain an hour behind holds back a reply due now"
        );
        crate::store::test_skew::set(0);
    })
    .await;
}

#[tokio::test]
async fn owed_replies_are_taken_over_after_the_lease_and_queued_once() {
    each_store(async |s: Store| {
        let wait = waits::Wait {
            id: format!("tw-{}", uuid::Uuid::new_v4().simple()),
            session_id: "se-1".into(),
            context: waits::WaitContext::Slack {
                channel: "C1".into(),
                thread_ts: "1.2".into(),
            },
        };
        // Leases are on the database clock: the callers pass lengths, never their own time.
        waits::insert(&s, &wait, "brain-dead", 300).await.unwrap();
        // A live lease is nobody else's to take.
        assert!(
            waits::claim_expired(&s, "brain-b", 30_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // The owner stops renewing; once the lease passes, exactly one of two brains takes it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (b, c) = tokio::join!(
            waits::claim_expired(&s, "brain-b", 30_000, 10),
            waits::claim_expired(&s, "brain-c", 30_000, 10),
        );
        let (b, c) = (b.unwrap(), c.unwrap());
        assert_eq!(b.len() + c.len(), 1, "one taker: {b:?} {c:?}");
        let (taker, loser) = if b.len() == 1 {
            ("brain-b", "brain-c")
        } else {
            ("brain-c", "brain-b")
        };
        let taken = b.into_iter().chain(c).next().unwrap();
        assert_eq!(taken, wait, "the context survives the round trip");

        let payload = ReplyPayload::SlackMessage {
            channel: "C1".into(),
            thread_ts: "1.2".into(),
            text: "done".into(),
        };
        // The dead brain (or the loser) finishing late queues nothing.
        assert!(
            !waits::finish(&s, "brain-dead", &wait.id, &payload)
                .await
                .unwrap()
        );
        assert!(!waits::finish(&s, loser, &wait.id, &payload).await.unwrap());
        assert!(store::undelivered_replies(&s).await.unwrap().is_empty());
        // The owner's finish queues the reply and removes the wait, once.
        assert!(waits::finish(&s, taker, &wait.id, &payload).await.unwrap());
        assert!(!waits::finish(&s, taker, &wait.id, &payload).await.unwrap());
        let due = store::claim_due_replies(&s, 1, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].payload, payload);

        // Renewing keeps a wait ours; a clean release hands it over at once.
        let w2 = waits::Wait {
            id: format!("tw-{}", uuid::Uuid::new_v4().simple()),
            ..wait.clone()
        };
        waits::insert(&s, &w2, "brain-a", 300).await.unwrap();
        assert_eq!(
            waits::renew(&s, "brain-a", std::slice::from_ref(&w2.id), 90_000)
                .await
                .unwrap(),
            1
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            waits::claim_expired(&s, "brain-b", 30_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(waits::release(&s, Some("brain-a")).await.unwrap(), 1);
        assert_eq!(
            waits::claim_expired(&s, "brain-b", 30_000, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    })
    .await;
}

#[test]
fn backoff_doubles_up_to_the_cap_and_honours_hints() {
    let p = RetryPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        max_attempts: 5,
    };
    assert_eq!(p.delay(1, None), Duration::from_millis(100));
    assert_eq!(p.delay(2, None), Duration::from_millis(200));
    assert_eq!(p.delay(4, None), Duration::from_millis(800));
    assert_eq!(p.delay(5, None), Duration::from_secs(1));
    assert_eq!(p.delay(60, None), Duration::from_secs(1));
    assert_eq!(
        p.delay(1, Some(Duration::from_millis(300))),
        Duration::from_millis(300)
    );
    assert_eq!(
        p.delay(1, Some(Duration::from_secs(30))),
        Duration::from_secs(1)
    );
}

#[test]
fn limiter_admits_running_plus_queued_and_frees_on_drop() {
    let limiter = Limiter::new(2, 1);
    let held: Vec<_> = (0..3).map(|_| limiter.try_admit().expect("room")).collect();
    assert!(limiter.try_admit().is_none());
    assert_eq!(limiter.in_flight(), 3);
    drop(held);
    assert_eq!(limiter.in_flight(), 0);
    assert!(limiter.try_admit().is_some());
}

// === a local chat.postMessage server with scripted failures ===

/// A scripted failure: (HTTP status, JSON body, `Retry-After` seconds).
type Failure = (u16, Value, Option<u64>);

#[derive(Clone, Default)]
struct FakeSlackApi {
    /// Responses to give before answering `ok: true`: (status, body, retry-after).
    failures: Arc<Mutex<VecDeque<Failure>>>,
    posted: Arc<Mutex<Vec<Value>>>,
    calls: Arc<Mutex<usize>>,
    /// How long each post takes (a slow API).
    delay_ms: Arc<Mutex<u64>>,
}

impl FakeSlackApi {
    async fn start(failures: Vec<Failure>) -> (Self, String) {
        let fake = Self::default();
        fake.failures.lock().unwrap().extend(failures);
        let app = axum::Router::new()
            .route("/api/chat.postMessage", axum::routing::post(Self::post))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, format!("http://{addr}/api"))
    }

    async fn post(
        axum::extract::State(fake): axum::extract::State<Self>,
        headers: axum::http::HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        *fake.calls.lock().unwrap() += 1;
        let delay = *fake.delay_ms.lock().unwrap();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {BOT_TOKEN}")) {
            return axum::Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
        }
        if let Some((status, body, retry)) = fake.failures.lock().unwrap().pop_front() {
            let mut resp =
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            if let Some(s) = retry {
                resp.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            return resp;
        }
        fake.posted.lock().unwrap().push(body.clone());
        axum::Json(json!({"ok": true, "channel": body["channel"], "ts": "2.0"})).into_response()
    }
}

struct Recording {
    started: Mutex<Vec<TriggeredTask>>,
    follow_ups: Mutex<Vec<(String, String)>>,
}

/// Records what the hooks ask for; a session's outcome echoes its latest message, so the
/// test sees the hook carried the right text through.
#[async_trait]
impl SessionLauncher for Recording {
    async fn start(&self, task: TriggeredTask) -> Result<String, LaunchError> {
        let mut started = self.started.lock().unwrap();
        started.push(task);
        Ok(format!("ses-{}", started.len()))
    }
    async fn follow_up(&self, id: &str, text: String) -> Result<(), LaunchError> {
        self.follow_ups.lock().unwrap().push((id.to_string(), text));
        Ok(())
    }
    async fn wait_settled(&self, id: &str) -> Result<TaskOutcome, LaunchError> {
        let last_follow_up = self
            .follow_ups
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(s, _)| s == id)
            .map(|(_, t)| t.clone());
        let index: usize = id.trim_start_matches("ses-").parse().unwrap();
        let answered = self
            .follow_ups
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == id)
            .count();
        let text = last_follow_up
            .unwrap_or_else(|| self.started.lock().unwrap()[index - 1].request.clone());
        Ok(TaskOutcome {
            succeeded: true,
            summary: format!("did: {text}"),
            sandbox_id: None,
            settled_at: Some(format!("{id}:{answered}")),
        })
    }
}

struct Hooks {
    state: AppState,
    launcher: Arc<Recording>,
    slack_api: FakeSlackApi,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn hooks(failures: Vec<Failure>) -> Hooks {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    let mut h = hooks_on(&url, failures).await;
    h._dir = Some(dir);
    h
}

/// A brain (state, triggers, launcher) on the database at `url`; two of them on one file are
/// two replicas. Leases last 2 s, so a brain that stops renewing is taken over quickly.
async fn hooks_on(url: &str, failures: Vec<Failure>) -> Hooks {
    let (slack_api, base) = FakeSlackApi::start(failures).await;
    let mut config = Config {
        database_url: url.to_string(),
        ..Config::default()
    };
    config.sessions.lease_seconds = 2;
    config.triggers = TriggersConfig {
        slack: Some(SlackConfig {
            api_base_url: base,
            bot_user_id: Some("UBOT".into()),
            max_concurrent: 1,
            max_queued: 1,
            ..SlackConfig::default()
        }),
        github: Some(GithubConfig {
            // Nothing listens here: the github hook tests stop before any API call.
            api_base_url: "http://127.0.0.1:9".into(),
            ..GithubConfig::default()
        }),
        launcher: Some(LauncherChoice::Shell),
        reply_retry_base_ms: 20,
        reply_retry_max_ms: 200,
    };
    config.validate().unwrap();
    let store = Store::connect(&config.database_url).await.unwrap();
    let backends = Backends::with_backend(
        BackendKind::Local,
        Arc::new(FakeBackend::default()),
        config.sandbox.clone(),
    );
    let mut state = AppState::new(config, store, backends, MasterKey::new("k"));
    let launcher = Arc::new(Recording {
        started: Mutex::default(),
        follow_ups: Mutex::default(),
    });
    let env = |name: &str| match name {
        "SLACK_SIGNING_SECRET" => Some(SLACK_SECRET.to_string()),
        "SLACK_BOT_TOKEN" => Some(BOT_TOKEN.to_string()),
        "GITHUB_WEBHOOK_SECRET" => Some(GH_SECRET.to_string()),
        "AIRLOCK_GITHUB_TOKEN" => Some("ghp_brain".to_string()),
        _ => None,
    };
    let triggers = Triggers::from_config(&state.config.triggers, launcher.clone(), env).unwrap();
    state.triggers = Some(Arc::new(triggers));
    Hooks {
        state,
        launcher,
        slack_api,
        url: url.to_string(),
        _dir: None,
    }
}

impl Hooks {
    async fn post(
        &self,
        uri: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = crate::app(self.state.clone())
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn slack(&self, body: &Value, ts: i64, secret: &str) -> (StatusCode, String) {
        let body = body.to_string();
        let ts = ts.to_string();
        let sig = sign_slack(secret.as_bytes(), &ts, body.as_bytes());
        self.post(
            "/hooks/slack",
            &[
                ("x-slack-request-timestamp", ts),
                ("x-slack-signature", sig),
            ],
            &body,
        )
        .await
    }

    fn triggers(&self) -> &Triggers {
        self.state.triggers.as_deref().unwrap()
    }

    /// Runs outbox passes until `n` messages were posted (or fails after 10 s).
    async fn deliver_until(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.slack_api.posted.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {:?} posted",
                self.slack_api.posted.lock().unwrap()
            );
            outbox::pass(&self.state, self.triggers()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn mention(event_id: &str, text: &str, ts: &str, thread_ts: Option<&str>) -> Value {
    let mut event = json!({"type": "app_mention", "user": "U1", "text": text, "ts": ts,
                           "channel": "C1", "event_ts": ts});
    if let Some(t) = thread_ts {
        event["thread_ts"] = json!(t);
    }
    json!({"type": "event_callback", "event_id": event_id, "event_time": 1, "team_id": "T1",
           "api_app_id": "A1", "event": event})
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn eventually(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn slack_hook_verifies_dedupes_and_threads() {
    let h = hooks(Vec::new()).await;
    // url_verification is answered with the challenge (after the signature check).
    let (status, body) = h
        .slack(
            &json!({"type": "url_verification", "challenge": "c-123", "token": "t"}),
            now(),
            SLACK_SECRET,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["challenge"],
        "c-123"
    );

    // Refused: wrong secret, stale, from the future, unsigned. No session.
    // The skews are 10 s past the limit: the hook reads the clock a little
    // later than the test, and a second boundary in between would otherwise
    // bring "301 s in the future" down to the 300 s that is still allowed.
    let ev = mention("Ev1", "<@UBOT> echo one", "1.0", None);
    for (ts, secret) in [
        (now(), "nope"),
        (now() - 310, SLACK_SECRET),
        (now() + 310, SLACK_SECRET),
    ] {
        assert_eq!(h.slack(&ev, ts, secret).await.0, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = h.post("/hooks/slack", &[], &ev.to_string()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.launcher.started.lock().unwrap().is_empty());

    // Accepted once; the retry with the same event_id is ignored.
    assert_eq!(h.slack(&ev, now(), SLACK_SECRET).await.0, StatusCode::OK);
    assert_eq!(h.slack(&ev, now(), SLACK_SECRET).await.0, StatusCode::OK);
    h.deliver_until(2).await;
    {
        let started = h.launcher.started.lock().unwrap();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].request, "echo one");
        assert_eq!(started[0].origin["thread_ts"], "1.0");
    }
    let posted = h.slack_api.posted.lock().unwrap().clone();
    assert!(
        posted
            .iter()
            .all(|p| p["thread_ts"] == "1.0" && p["channel"] == "C1"),
        "{posted:?}"
    );
    assert!(
        posted
            .iter()
            .any(|p| p["text"].as_str().unwrap().contains("ses-1")),
        "{posted:?}"
    );
    assert!(
        posted.contains(&json!({"channel": "C1", "thread_ts": "1.0", "text": "did: echo one"}))
    );

    // A plain reply in the thread continues the session; our own post is ignored.
    let reply = json!({"type": "event_callback", "event_id": "Ev2", "event": {"type": "message",
        "user": "U1", "text": "echo two", "ts": "1.5", "thread_ts": "1.0", "channel": "C1",
        "channel_type": "channel"}});
    assert_eq!(h.slack(&reply, now(), SLACK_SECRET).await.0, StatusCode::OK);
    let own = json!({"type": "event_callback", "event_id": "Ev3", "event": {"type": "message",
        "user": "UBOT", "text": "did: x", "ts": "1.6", "thread_ts": "1.0", "channel": "C1"}});
    assert_eq!(h.slack(&own, now(), SLACK_SECRET).await.0, StatusCode::OK);
    h.deliver_until(3).await;
    assert_eq!(
        *h.launcher.follow_ups.lock().unwrap(),
        vec![("ses-1".to_string(), "echo two".to_string())]
    );
    assert_eq!(
        h.slack_api.posted.lock().unwrap()[2]["text"],
        "did: echo two"
    );
    assert_eq!(h.launcher.started.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn slack_outage_delays_the_reply_without_losing_it() {
    let h = hooks(vec![
        (500, json!({"ok": false}), None),
        (429, json!({"ok": false, "error": "ratelimited"}), Some(0)),
        (200, json!({"ok": false, "error": "ratelimited"}), None),
    ])
    .await;
    let ev = mention("EvX", "<@UBOT> echo out", "3.0", None);
    assert_eq!(h.slack(&ev, now(), SLACK_SECRET).await.0, StatusCode::OK);
    h.deliver_until(2).await;
    let posted = h.slack_api.posted.lock().unwrap().clone();
    assert_eq!(posted.len(), 2, "each reply exactly once: {posted:?}");
    assert!(
        posted.iter().any(|p| p["text"] == "did: echo out"),
        "{posted:?}"
    );
    assert_eq!(
        *h.slack_api.calls.lock().unwrap(),
        5,
        "3 failures + 2 deliveries"
    );
    assert!(
        store::undelivered_replies(&h.state.store)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn slack_permanent_errors_are_kept_as_failed() {
    let h = hooks(vec![(
        200,
        json!({"ok": false, "error": "channel_not_found"}),
        None,
    )])
    .await;
    let payload = ReplyPayload::SlackMessage {
        channel: "CX".into(),
        thread_ts: "1.0".into(),
        text: "hi".into(),
    };
    h.triggers().reply(&h.state, payload).await;
    outbox::pass(&h.state, h.triggers()).await.unwrap();
    let left = store::undelivered_replies(&h.state.store).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].2, "marked failed: {left:?}");
    assert_eq!(
        left[0].3.as_deref(),
        Some("chat.postMessage: channel_not_found")
    );
    // Not retried.
    outbox::pass(&h.state, h.triggers()).await.unwrap();
    assert_eq!(*h.slack_api.calls.lock().unwrap(), 1);
}

#[tokio::test]
async fn slack_flood_is_capped_by_the_limiter() {
    let h = hooks(Vec::new()).await;
    // Hold the only running slot and the only queue place.
    let slack = h.triggers().slack.as_ref().unwrap();
    let (a, b) = (
        slack.limiter.try_admit().unwrap(),
        slack.limiter.try_admit().unwrap(),
    );
    let ev = mention("EvF", "<@UBOT> echo flood", "4.0", None);
    let (status, _) = h.slack(&ev, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Refused before dedupe: Slack's retry is processed once there is room.
    drop((a, b));
    assert_eq!(h.slack(&ev, now(), SLACK_SECRET).await.0, StatusCode::OK);
    eventually(|| h.launcher.started.lock().unwrap().len() == 1).await;
}

#[tokio::test]
async fn github_hook_refuses_bad_signatures_and_dedupes_deliveries() {
    let h = hooks(Vec::new()).await;
    let body = json!({"action": "labeled", "label": {"name": "airlock"},
        "issue": {"number": 3, "title": "t", "body": "echo", "labels": [{"name": "airlock"}]},
        "repository": {"full_name": "acme/widgets", "default_branch": "main"},
        "sender": {"login": "mallory", "type": "User"}})
    .to_string();
    let headers = |sig: String, delivery: &str| {
        vec![
            ("x-hub-signature-256", sig),
            ("x-github-event", "issues".to_string()),
            ("x-github-delivery", delivery.to_string()),
        ]
    };
    let good = sign_github(GH_SECRET.as_bytes(), body.as_bytes());
    let bad = sign_github(b"other", body.as_bytes());
    assert_eq!(
        h.post("/hooks/github", &headers(bad, "d1"), &body).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = h
        .post(
            "/hooks/github",
            &[("x-github-event", "issues".into())],
            &body,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let tampered = body.replace("mallory", "alice");
    assert_eq!(
        h.post("/hooks/github", &headers(good.clone(), "d1"), &tampered)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let no_delivery = vec![
        ("x-hub-signature-256", good.clone()),
        ("x-github-event", "issues".into()),
    ];
    assert_eq!(
        h.post("/hooks/github", &no_delivery, &body).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.post("/hooks/github", &headers(good.clone(), "d1"), &body)
            .await
            .0,
        StatusCode::OK
    );
    assert!(
        !store::record_delivery(&h.state.store, Source::Github, "d1")
            .await
            .unwrap()
    );
    assert_eq!(
        h.post("/hooks/github", &headers(good.clone(), "d1"), &body)
            .await
            .0,
        StatusCode::OK
    );
    // A replay: the captured signed body with a fresh (unsigned) delivery id is a duplicate.
    assert_eq!(
        h.post("/hooks/github", &headers(good, "d2"), &body).await.0,
        StatusCode::OK
    );
    assert!(
        store::record_delivery(&h.state.store, Source::Github, "d2")
            .await
            .unwrap(),
        "the replay was processed as a new delivery"
    );
    // The permission check cannot reach GitHub (nothing listens), so it fails closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.launcher.started.lock().unwrap().is_empty());
}

#[tokio::test]
async fn hooks_answer_404_when_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database_url: format!("sqlite://{}", dir.path().join("b.db").display()),
        ..Config::default()
    };
    let store = Store::connect(&config.database_url).await.unwrap();
    let backends = Backends::with_backend(
        BackendKind::Local,
        Arc::new(FakeBackend::default()),
        config.sandbox.clone(),
    );
    let state = AppState::new(config, store, backends, MasterKey::new("k"));
    for uri in ["/hooks/slack", "/hooks/github"] {
        let resp = crate::app(state.clone())
            .oneshot(
                Request::builder()
                    .method("POST")
                    .uri(uri)
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}

#[test]
fn trigger_config_requires_a_launcher_and_safe_names() {
    // The default launcher is the agent loop, which needs a model.
    let yaml = "triggers:\n  slack: {}\n";
    let config = Config::from_yaml(yaml).unwrap();
    assert_eq!(config.triggers.launcher, Some(LauncherChoice::Sessions));
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("need a model") && err.contains("launcher"),
        "{err}"
    );
    let with_model = format!(
        "{yaml}models:\n  model_list:\n    - model_name: m\n      litellm_params: {{ model: scripted/x.json }}\n"
    );
    Config::from_yaml(&with_model).unwrap().validate().unwrap();
    let none = Config::from_yaml("triggers:\n  launcher: null\n  slack: {}\n").unwrap();
    assert!(
        none.validate()
            .unwrap_err()
            .to_string()
            .contains("launcher")
    );
    let config =
        Config::from_yaml("triggers:\n  launcher: shell\n  github: { git_host: \"a b\" }\n")
            .unwrap();
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("git_host")
    );
    let config =
        Config::from_yaml("triggers:\n  launcher: shell\n  github: { repo_dir: /etc }\n").unwrap();
    assert!(config.validate().is_err());
    assert!(Config::from_yaml("triggers:\n  slak: {}\n").is_err());
    let err = Triggers::from_config(
        &Config::from_yaml("triggers:\n  launcher: shell\n  slack: {}\n")
            .unwrap()
            .triggers,
        Arc::new(Recording {
            started: Mutex::default(),
            follow_ups: Mutex::default(),
        }),
        |_| None,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("SLACK_SIGNING_SECRET"), "{err}");
}

#[tokio::test]
async fn a_batch_longer_than_its_lease_sends_each_reply_once() {
    let h = hooks(Vec::new()).await;
    *h.slack_api.delay_ms.lock().unwrap() = 150;
    for i in 0..4 {
        let payload = ReplyPayload::SlackMessage {
            channel: "C1".into(),
            thread_ts: "1.0".into(),
            text: format!("r{i}"),
        };
        store::enqueue_reply(&h.state.store, &payload)
            .await
            .unwrap();
    }
    // Two workers (replicas); a claim lasts 200 ms, a batch of four sends takes 600 ms: the
    // second worker starts while the first is mid-batch with lapsed leases.
    let (a, b) = tokio::join!(outbox::pass_with(&h.state, h.triggers(), 200, 16), async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        outbox::pass_with(&h.state, h.triggers(), 200, 16).await
    },);
    a.unwrap();
    b.unwrap();
    while !store::undelivered_replies(&h.state.store)
        .await
        .unwrap()
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        outbox::pass_with(&h.state, h.triggers(), 200, 16)
            .await
            .unwrap();
    }
    let mut texts: Vec<String> = h
        .slack_api
        .posted
        .lock()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        ["r0", "r1", "r2", "r3"],
        "each reply sent exactly once"
    );
}

#[tokio::test]
async fn two_waits_on_one_settle_reply_once() {
    let h = hooks(Vec::new()).await;
    let triggers = h.state.triggers.clone().unwrap();
    let session = triggers
        .launcher
        .start(TriggeredTask {
            task: "t".into(),
            request: "echo hi".into(),
            credentials: Vec::new(),
            origin: json!({}),
            key: None,
        })
        .await
        .unwrap();
    let context = || waits::WaitContext::Slack {
        channel: "C1".into(),
        thread_ts: "1.0".into(),
    };
    // A mention and a follow-up in its thread both owe "the answer" of the same settle.
    tokio::join!(
        waits::begin_and_complete(&h.state, &triggers, &session, context(), None),
        waits::begin_and_complete(&h.state, &triggers, &session, context(), None),
    );
    let owed = store::undelivered_replies(&h.state.store).await.unwrap();
    assert_eq!(owed.len(), 1, "one reply per settle: {owed:?}");
    // A later settle (after another follow-up) is answered again.
    triggers
        .launcher
        .follow_up(&session, "echo again".into())
        .await
        .unwrap();
    waits::begin_and_complete(&h.state, &triggers, &session, context(), None).await;
    assert_eq!(
        store::undelivered_replies(&h.state.store)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn an_acknowledged_slack_event_survives_the_brain_that_acked_it() {
    let a = hooks(Vec::new()).await;
    // Brain A answers 200 but never gets to handle the event (its only run slot is busy),
    // then is gone: it stops renewing anything.
    let slack = a.triggers().slack.as_ref().unwrap();
    let busy = slack.limiter.try_admit().unwrap();
    let _slot = busy.run_slot().await;
    let ev = mention("EvD", "<@UBOT> echo durable", "7.0", None);
    assert_eq!(a.slack(&ev, now(), SLACK_SECRET).await.0, StatusCode::OK);
    assert!(a.launcher.started.lock().unwrap().is_empty());

    // Brain B on the same database takes the event over once A's lease lapsed.
    let b = hooks_on(&a.url, Vec::new()).await;
    let triggers_b = b.state.triggers.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.launcher.started.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the acknowledged event was lost");
        inbox::take_over(&b.state, &triggers_b).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        b.launcher.started.lock().unwrap()[0].request,
        "echo durable"
    );
    // Its replies ("On it", then the answer) go out; the event became an owed reply.
    b.deliver_until(2).await;
    let posted = b.slack_api.posted.lock().unwrap().clone();
    assert_eq!(posted[1]["text"], "did: echo durable", "{posted:?}");
    // Slack's retry of the same event is a duplicate, whichever brain gets it.
    assert_eq!(b.slack(&ev, now(), SLACK_SECRET).await.0, StatusCode::OK);
    inbox::take_over(&b.state, &triggers_b).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.launcher.started.lock().unwrap().len(), 1);
    assert!(a.launcher.started.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_store_failure_answers_500_and_the_retry_is_accepted() {
    let h = hooks(Vec::new()).await;
    h.state.store.faults.arm(
        "accept_event",
        None,
        crate::store::faults::Action::FailTransient,
        1,
    );
    let ev = mention("EvS", "<@UBOT> echo retried", "8.0", None);
    assert_eq!(
        h.slack(&ev, now(), SLACK_SECRET).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Nothing was recorded: Slack's retry is a new delivery, not a duplicate.
    assert_eq!(h.slack(&ev, now(), SLACK_SECRET).await.0, StatusCode::OK);
    eventually(|| h.launcher.started.lock().unwrap().len() == 1).await;
}

#[tokio::test]
async fn inbox_events_are_durable_deduped_and_taken_over_once() {
    each_store(async |s: Store| {
        let payload: inbox::Payload = serde_json::from_value(json!({"kind": "github",
            "request": {"repo": "o/r", "issue": 7, "title": "t", "text": "fix", "actor": "u",
                        "base": "main"}}))
        .unwrap();
        let ev = inbox::accept(&s, "comment:1", &payload, "brain-a", 300)
            .await
            .unwrap()
            .expect("fresh");
        assert!(
            inbox::accept(&s, "comment:1", &payload, "brain-b", 300)
                .await
                .unwrap()
                .is_none(),
            "a redelivery is a duplicate"
        );
        assert!(inbox::still_owned(&s, &ev.id, "brain-a").await.unwrap());
        inbox::set_session(&s, &ev.id, "ses-9").await.unwrap();
        assert!(
            inbox::claim_expired(&s, "brain-b", 30_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        inbox::renew(&s, "brain-a", std::slice::from_ref(&ev.id), 300)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (b, c) = tokio::join!(
            inbox::claim_expired(&s, "brain-b", 30_000, 10),
            inbox::claim_expired(&s, "brain-c", 30_000, 10),
        );
        let taken: Vec<_> = b.unwrap().into_iter().chain(c.unwrap()).collect();
        assert_eq!(taken.len(), 1, "one taker");
        assert_eq!(taken[0].session_id.as_deref(), Some("ses-9"));
        assert!(!inbox::still_owned(&s, &ev.id, "brain-a").await.unwrap());
        // The owed reply consumes the event.
        inbox::done(&s, &ev.id).await.unwrap();
        assert_eq!(inbox::release(&s, None).await.unwrap(), 0);
        // One reply key per settle: the first wait holds it, a re-run of it still wins.
        assert_eq!(
            waits::claim_reply_key(&s, "ses-9@1", "tw-1").await.unwrap(),
            "tw-1"
        );
        assert_eq!(
            waits::claim_reply_key(&s, "ses-9@1", "tw-2").await.unwrap(),
            "tw-1"
        );
        assert_eq!(
            waits::claim_reply_key(&s, "ses-9@1", "tw-1").await.unwrap(),
            "tw-1"
        );
    })
    .await;
}

/// The text of every reply queued and not yet sent.
async fn queued_texts(s: &Store) -> Vec<String> {
    store::claim_due_replies(s, 1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| match r.payload {
            ReplyPayload::SlackMessage { text, .. } => text,
            ReplyPayload::GithubComment { body, .. } => body,
        })
        .collect()
}

#[tokio::test]
async fn a_wait_whose_reply_cannot_be_stored_is_settled_generically_or_given_up() {
    use crate::store::faults::Action;
    let h = hooks(Vec::new()).await;
    let triggers = h.state.triggers.clone().unwrap();
    let session = triggers
        .launcher
        .start(TriggeredTask {
            task: "t".into(),
            request: "echo hi".into(),
            credentials: Vec::new(),
            origin: json!({}),
            key: None,
        })
        .await
        .unwrap();
    let context = || waits::WaitContext::Slack {
        channel: "C1".into(),
        thread_ts: "1.0".into(),
    };
    // Queuing the reply fails with an error that is not an outage: the owed reply is still
    // sent, once, as a generic message with a reference (the detail is in the log).
    h.state
        .store
        .faults
        .arm("finish_wait", None, Action::FailPermanent, 1);
    waits::begin_and_complete(&h.state, &triggers, &session, context(), None).await;
    let texts = queued_texts(&h.state.store).await;
    assert_eq!(texts.len(), 1, "the owed reply is settled: {texts:?}");
    assert!(
        texts[0].contains("reference `err-") && !texts[0].contains("injected"),
        "{texts:?}"
    );

    // Even the generic reply cannot be stored: it is tried a bounded number of times with
    // backoff, then given up (logged, counted); the wait is gone, so no brain takes it over
    // and tries again after every lease, for ever.
    triggers
        .launcher
        .follow_up(&session, "echo again".into())
        .await
        .unwrap();
    let faults = &h.state.store.faults;
    faults.arm("finish_wait", None, Action::FailPermanent, 100);
    let began = Instant::now();
    waits::begin_and_complete(&h.state, &triggers, &session, context(), None).await;
    let took = began.elapsed();
    let tries = 100 - faults.remaining("finish_wait");
    assert_eq!(tries, 1 + 4, "the reply once, then the generic one 4 times");
    assert!(
        took >= Duration::from_millis(250 + 500 + 1000),
        "backoff between the attempts: {took:?}"
    );
    assert!(triggers.live_waits().is_empty());
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let taken = waits::claim_expired(&h.state.store, "brain-b", 30_000, 10)
        .await
        .unwrap();
    assert!(
        taken.is_empty(),
        "a given-up reply is not retried: {taken:?}"
    );
    let metrics = h.state.metrics.render(&[], &[], 0);
    assert!(
        metrics.contains("airlock_triggers_replies_failed_total{source=\"slack\"} 1"),
        "{metrics}"
    );
}

#[test]
fn error_replies_carry_a_reference_not_the_error() {
    let detail = "error returned from database: relation \"sessions\" password=hunter2";
    let reply = slack::settled_reply(
        "C1",
        "1.0",
        "ses-1",
        Err(LaunchError::Failed(detail.into())),
    );
    let ReplyPayload::SlackMessage { text, .. } = reply else {
        panic!("{reply:?}")
    };
    assert!(
        !text.contains("hunter2") && !text.contains("database"),
        "{text}"
    );
    assert!(
        text.contains("ses-1") && text.contains("reference `err-"),
        "{text}"
    );
    let text = public_error("Could not start a session", None, &detail);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.starts_with("Could not start a session (reference `err-"),
        "{text}"
    );
}
