//! `POST /hooks/slack`: the Events API. Verified, answered at once (Slack wants a 2xx within
//! 3 s or retries), de-duplicated by `event_id`; an `app_mention` or a DM starts a session
//! whose thread is the conversation, and later messages in that thread continue it. Replies
//! (progress, then the result) go through the outbox to `chat.postMessage`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::inbox;
use super::outbox::{Delivery, retry_after};
use super::signature;
use super::store::{self, ReplyPayload, Source};
use super::waits::WaitContext;
use super::{
    LaunchError, Limiter, SlackConfig, TaskOutcome, TriggerSetupError, TriggeredTask, Triggers,
    truncate,
};
use crate::state::AppState;

/// Slack caps a message's `text` at 40,000 characters; stay well below.
const MAX_REPLY_BYTES: usize = 12_000;

pub struct SlackTrigger {
    pub config: SlackConfig,
    signing_secret: String,
    pub client: SlackClient,
    pub limiter: Limiter,
}

impl SlackTrigger {
    /// The v0 signing secret (also checks `/hooks/slack/interactive`, see `ui::slack`).
    pub(crate) fn signing_secret(&self) -> &str {
        &self.signing_secret
    }

    pub fn new(
        config: SlackConfig,
        signing_secret: String,
        bot_token: String,
    ) -> Result<Self, TriggerSetupError> {
        let client = SlackClient::new(&config.api_base_url, bot_token)?;
        let limiter = Limiter::new(config.max_concurrent, config.max_queued);
        Ok(Self {
            config,
            signing_secret,
            client,
            limiter,
        })
    }
}

// === the Events API payload (the fields we use) ===

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Envelope {
    UrlVerification {
        challenge: String,
    },
    EventCallback {
        event_id: String,
        event: Box<Event>,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    subtype: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    bot_id: Option<String>,
    #[serde(default)]
    text: String,
    ts: String,
    channel: String,
    #[serde(default)]
    channel_type: Option<String>,
    #[serde(default)]
    thread_ts: Option<String>,
}

/// What an event asks for, once filtered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Intent {
    /// A mention or DM: a new session, or a follow-up if its thread has one.
    Task,
    /// A plain message in a channel thread: only a follow-up, if the thread has a session.
    ThreadReplyOnly,
}

fn classify(event: &Event, bot_user: Option<&str>) -> Option<Intent> {
    // Edits, joins, our own posts and other bots' posts are never tasks.
    if event.subtype.is_some() || event.bot_id.is_some() {
        return None;
    }
    let user = event.user.as_deref()?;
    if bot_user == Some(user) {
        return None;
    }
    match event.kind.as_str() {
        "app_mention" => Some(Intent::Task),
        "message" if event.channel_type.as_deref() == Some("im") => Some(Intent::Task),
        "message" if event.thread_ts.is_some() => {
            // A mention in a thread also arrives as `app_mention`; handle it once.
            let mention = bot_user.map(|u| format!("<@{u}>"));
            if mention.is_some_and(|m| event.text.contains(&m)) {
                None
            } else {
                Some(Intent::ThreadReplyOnly)
            }
        }
        _ => None,
    }
}

/// The message without leading `<@U…>` mentions.
fn strip_mentions(text: &str) -> String {
    let mut rest = text.trim_start();
    while let Some(after) = rest.strip_prefix("<@") {
        match after.find('>') {
            Some(end) => rest = after[end + 1..].trim_start(),
            None => break,
        }
    }
    rest.trim().to_string()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The hook. Order: signature (raw body) → parse → admission → dedupe → 200 and spawn.
pub async fn hook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(triggers) = state.triggers.clone() else {
        return (StatusCode::NOT_FOUND, "no slack trigger configured").into_response();
    };
    let Some(slack) = triggers.slack.as_ref() else {
        return (StatusCode::NOT_FOUND, "no slack trigger configured").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify_slack(
        slack.signing_secret.as_bytes(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now_secs(),
    ) {
        tracing::warn!(reason = %e, "slack webhook refused");
        return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
    }
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::warn!(error = %e, "slack webhook: unreadable payload");
            return (StatusCode::BAD_REQUEST, format!("invalid payload: {e}")).into_response();
        }
    };
    let (event_id, event) = match envelope {
        Envelope::UrlVerification { challenge } => {
            return axum::Json(json!({ "challenge": challenge })).into_response();
        }
        Envelope::EventCallback { event_id, event } => (event_id, *event),
        Envelope::Other => return StatusCode::OK.into_response(),
    };
    let Some(intent) = classify(&event, slack.config.bot_user_id.as_deref()) else {
        tracing::debug!(event_id, kind = %event.kind, "slack event ignored");
        return StatusCode::OK.into_response();
    };
    let Some(admission) = slack.limiter.try_admit() else {
        tracing::warn!(
            event_id,
            in_flight = slack.limiter.in_flight(),
            "slack trigger at capacity; event refused (Slack will retry)"
        );
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    };
    // Durable before the 200 (the delivery id and the event in one transaction): a crash
    // right after the ack loses nothing, and a store failure answers 500 so Slack retries.
    let channel = event.channel.clone();
    let payload = inbox::Payload::Slack { event, intent };
    let owner = state.sessions.instance();
    let claimed = match inbox::accept(
        &state.store,
        &event_id,
        &payload,
        owner,
        inbox::lease_ms(&state),
    )
    .await
    {
        Ok(Some(claimed)) => claimed,
        Ok(None) => {
            tracing::info!(event_id, "duplicate slack event ignored");
            state.metrics.webhook("slack", "deduplicated");
            return StatusCode::OK.into_response();
        }
        Err(e) => {
            tracing::error!(event_id, error = %e, "slack webhook: cannot record the event");
            return (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable").into_response();
        }
    };
    tracing::info!(event_id, channel = %channel, "slack event accepted");
    state.metrics.webhook("slack", "accepted");
    tokio::spawn(inbox::process(state, triggers, claimed, admission));
    StatusCode::OK.into_response()
}

/// Starts or continues the thread's session. Returns the reply then owed, if any (`None`
/// when handling ended here, with or without a message).
pub(crate) async fn handle_event(
    state: &AppState,
    triggers: &Arc<Triggers>,
    ev: &inbox::Claimed,
    event: Event,
    intent: Intent,
) -> Option<(String, WaitContext)> {
    let thread_ts = event.thread_ts.clone().unwrap_or_else(|| event.ts.clone());
    let key = format!("{}:{thread_ts}", event.channel);
    let text = strip_mentions(&event.text);
    let reply = |text: String| ReplyPayload::SlackMessage {
        channel: event.channel.clone(),
        thread_ts: thread_ts.clone(),
        text: truncate(&text, MAX_REPLY_BYTES),
    };
    // Held from the lookup until the new session is bound, so two events for one new
    // thread cannot both start a session (within this brain).
    if let Some(session) = &ev.session_id {
        // Taken over after it had started or continued its session: only the reply is left.
        if intent == Intent::Task {
            store::bind_thread(&state.store, Source::Slack, &key, session)
                .await
                .ok();
        }
        let context = WaitContext::Slack {
            channel: event.channel.clone(),
            thread_ts,
        };
        return Some((session.clone(), context));
    }
    let start_guard = triggers.thread_lock.lock().await;
    // The session this event starts, if it is a new thread's task (idempotent: see below).
    let own = format!("ses-{}", super::session_key(&ev.id));
    let existing = match super::retry_store("slack: reading the thread mapping", || {
        store::thread_session(&state.store, Source::Slack, &key)
    })
    .await
    {
        Ok(existing) => existing,
        Err(e) => {
            tracing::error!(error = %e, thread = %key, "slack: cannot read the thread mapping");
            triggers
                .reply(
                    state,
                    reply(format!(
                        ":warning: {}",
                        super::public_error("Could not start a session", None, &e)
                    )),
                )
                .await;
            return None;
        }
    };
    let session_id = match (existing, intent) {
        // This event started it before a takeover or a lost answer: only the reply is left.
        (Some(session), _) if session == own => session,
        (Some(session), _) => {
            let follow_up = super::retry_launch("slack: continuing a session", || {
                triggers.launcher.follow_up(&session, text.clone())
            });
            if let Err(e) = follow_up.await {
                tracing::warn!(session = %session, error = %e, "slack follow-up failed");
                triggers
                    .reply(
                        state,
                        reply(format!(
                            ":warning: {}",
                            super::public_error(
                                "Could not continue the session",
                                Some(&session),
                                &e
                            )
                        )),
                    )
                    .await;
                return None;
            }
            tracing::info!(session = %session, thread = %key, "slack follow-up delivered");
            session
        }
        (None, Intent::ThreadReplyOnly) => return None,
        (None, Intent::Task) => {
            if text.is_empty() {
                triggers
                    .reply(state, reply("Mention me with a task to run.".into()))
                    .await;
                return None;
            }
            let task = TriggeredTask {
                task: format!(
                    "Task from Slack (user <@{}> in channel {}):\n\n{text}",
                    event.user.as_deref().unwrap_or("?"),
                    event.channel
                ),
                request: text,
                credentials: triggers
                    .slack
                    .as_ref()
                    .map(|s| s.config.credentials.clone())
                    .unwrap_or_default(),
                origin: json!({
                    "kind": "slack", "channel": event.channel, "thread_ts": thread_ts,
                    "user": event.user,
                }),
                key: Some(super::session_key(&ev.id)),
            };
            let start = super::retry_launch("slack: starting a session", || {
                triggers.launcher.start(task.clone())
            });
            let session = match start.await {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "slack: starting a session failed");
                    triggers
                        .reply(
                            state,
                            reply(format!(
                                ":warning: {}",
                                super::public_error("Could not start a session", None, &e)
                            )),
                        )
                        .await;
                    return None;
                }
            };
            let bind = super::retry_store("slack: recording the thread", || {
                store::bind_thread(&state.store, Source::Slack, &key, &session)
            });
            if let Err(e) = bind.await {
                tracing::error!(error = %e, session = %session, "slack: cannot record the thread");
            }
            tracing::info!(session = %session, thread = %key, "slack session started");
            triggers
                .reply(state, reply(format!("On it (session `{session}`).")))
                .await;
            session
        }
    };
    drop(start_guard);
    // A takeover of this event from here on only owes the reply.
    let recorded = super::retry_store("slack: recording the event's session", || {
        inbox::set_session(&state.store, &ev.id, &session_id)
    });
    if let Err(e) = recorded.await {
        tracing::warn!(event = %ev.id, error = %e, "cannot record the event's session");
    }
    // The answer is owed from here on; `waits` keeps that promise across a restart.
    let context = WaitContext::Slack {
        channel: event.channel.clone(),
        thread_ts,
    };
    Some((session_id, context))
}

/// The thread reply for a settled session.
pub(crate) fn settled_reply(
    channel: &str,
    thread_ts: &str,
    session_id: &str,
    outcome: Result<TaskOutcome, LaunchError>,
) -> ReplyPayload {
    let text = match outcome {
        Ok(outcome) if outcome.succeeded => outcome.summary,
        Ok(outcome) => format!(":x: the task failed:\n{}", outcome.summary),
        Err(e) => format!(
            ":warning: {}",
            super::public_error(
                &format!("Lost track of session `{session_id}`"),
                Some(session_id),
                &e
            )
        ),
    };
    ReplyPayload::SlackMessage {
        channel: channel.to_string(),
        thread_ts: thread_ts.to_string(),
        text: truncate(&text, MAX_REPLY_BYTES),
    }
}

// === chat.postMessage ===

/// The Slack Web API client (`chat.postMessage` only). The base URL is configurable so the
/// same client talks to Slack or to a local fake.
pub struct SlackClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl SlackClient {
    pub fn new(base: &str, token: String) -> Result<Self, TriggerSetupError> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| TriggerSetupError::Config(format!("slack http client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// `chat.postMessage` with Block Kit `blocks` (and `text` as the fallback); `Err` names why
    /// it was not posted (the caller retries on its next pass).
    pub async fn post_blocks(
        &self,
        channel: &str,
        thread_ts: &str,
        text: &str,
        blocks: &serde_json::Value,
    ) -> Result<(), String> {
        let url = format!("{}/chat.postMessage", self.base);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(
                &json!({ "channel": channel, "thread_ts": thread_ts, "text": text,
                           "blocks": blocks }),
            )
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["ok"] == true {
            Ok(())
        } else {
            Err(format!("chat.postMessage: {}", body["error"]))
        }
    }

    pub async fn post_message(&self, channel: &str, thread_ts: &str, text: &str) -> Delivery {
        let url = format!("{}/chat.postMessage", self.base);
        let resp = match self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&json!({ "channel": channel, "thread_ts": thread_ts, "text": text }))
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                return Delivery::Retry {
                    error: format!("POST {url}: {e}"),
                    after: None,
                };
            }
        };
        let status = resp.status();
        let hint = retry_after(resp.headers());
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Delivery::Retry {
                error: format!("chat.postMessage: HTTP {status}"),
                after: hint,
            };
        }
        let body: serde_json::Value = match resp.json().await {
            Ok(body) => body,
            Err(e) => {
                return Delivery::Retry {
                    error: format!("chat.postMessage: HTTP {status}, unreadable body: {e}"),
                    after: None,
                };
            }
        };
        if body["ok"] == true {
            return Delivery::Delivered;
        }
        let error = body["error"]
            .as_str()
            .unwrap_or("unknown_error")
            .to_string();
        match error.as_str() {
            // The message can never be posted as it is.
            "channel_not_found"
            | "not_in_channel"
            | "is_archived"
            | "msg_too_long"
            | "no_text"
            | "invalid_blocks"
            | "restricted_action"
            | "cannot_reply_to_message" => Delivery::Fatal(format!("chat.postMessage: {error}")),
            // Rate limits, outages and auth problems an operator can fix: try again later.
            _ => Delivery::Retry {
                error: format!("chat.postMessage: {error}"),
                after: hint,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, user: Option<&str>, text: &str) -> Event {
        Event {
            kind: kind.into(),
            subtype: None,
            user: user.map(Into::into),
            bot_id: None,
            text: text.into(),
            ts: "1.1".into(),
            channel: "C1".into(),
            channel_type: None,
            thread_ts: None,
        }
    }

    #[test]
    fn mentions_and_dms_are_tasks_own_and_bot_messages_are_not() {
        let bot = Some("UBOT");
        assert_eq!(
            classify(&event("app_mention", Some("U1"), "<@UBOT> ls"), bot),
            Some(Intent::Task)
        );
        let mut dm = event("message", Some("U1"), "ls");
        dm.channel_type = Some("im".into());
        assert_eq!(classify(&dm, bot), Some(Intent::Task));
        // Our own post, another bot's post, an edit, a top-level channel message.
        assert_eq!(classify(&event("message", Some("UBOT"), "x"), bot), None);
        let mut from_bot = event("app_mention", Some("U2"), "x");
        from_bot.bot_id = Some("B1".into());
        assert_eq!(classify(&from_bot, bot), None);
        let mut edited = dm;
        edited.subtype = Some("message_changed".into());
        assert_eq!(classify(&edited, bot), None);
        assert_eq!(classify(&event("message", Some("U1"), "x"), bot), None);
        // A thread reply is a follow-up candidate unless it mentions us (then app_mention has it).
        let mut reply = event("message", Some("U1"), "more");
        reply.thread_ts = Some("1.0".into());
        assert_eq!(classify(&reply, bot), Some(Intent::ThreadReplyOnly));
        reply.text = "<@UBOT> more".into();
        assert_eq!(classify(&reply, bot), None);
    }

    #[test]
    fn leading_mentions_are_stripped() {
        assert_eq!(strip_mentions("<@UBOT> echo hi"), "echo hi");
        assert_eq!(strip_mentions("  <@UBOT>  <@U2> run <@U3>"), "run <@U3>");
        assert_eq!(strip_mentions("<@UBOT"), "<@UBOT");
        assert_eq!(strip_mentions("<@UBOT>"), "");
    }

    #[test]
    fn envelopes_parse() {
        let v: Envelope =
            serde_json::from_str(r#"{"token":"t","challenge":"abc","type":"url_verification"}"#)
                .unwrap();
        assert!(matches!(v, Envelope::UrlVerification { challenge } if challenge == "abc"));
        let v: Envelope = serde_json::from_str(
            r#"{"type":"event_callback","event_id":"Ev1","event_time":1,"team_id":"T","api_app_id":"A",
                "event":{"type":"app_mention","user":"U1","text":"<@UB> hi","ts":"1.2","channel":"C1","event_ts":"1.2"}}"#,
        )
        .unwrap();
        assert!(matches!(v, Envelope::EventCallback { event_id, .. } if event_id == "Ev1"));
        let v: Envelope = serde_json::from_str(r#"{"type":"app_rate_limited"}"#).unwrap();
        assert!(matches!(v, Envelope::Other));
    }
}
