//! Egress approvals in Slack: a pending approval of a Slack-started session is posted in the
//! session's thread with Allow once / Allow for session / Allow always / Deny buttons
//! ([`notify`]); Slack sends the click to `POST /hooks/slack/interactive` (form-encoded
//! `payload=` JSON, `block_actions`, signed with the same v0 HMAC as the Events API), which
//! answers it as `slack:<user id>` ([`interactive`]).
//! Slack: https://api.slack.com/interactivity/handling#payloads (block_actions payload).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::credentials::{ApprovalDecision, PendingApproval};
use crate::state::AppState;
use crate::triggers::{Triggers, signature};

const ACTION_ID: &str = "airlock_approval";
const POLL: Duration = Duration::from_secs(1);

fn decision_of(s: &str) -> Option<ApprovalDecision> {
    Some(match s {
        "allow_once" => ApprovalDecision::AllowOnce,
        "allow_session" => ApprovalDecision::AllowSession,
        "allow_always" => ApprovalDecision::AllowAlways,
        "deny" => ApprovalDecision::Deny,
        _ => return None,
    })
}

/// The session's Slack thread `(channel, thread_ts)`, if it was started from Slack.
async fn slack_thread(state: &AppState, a: &PendingApproval) -> Option<(String, String)> {
    let session = a.session.as_deref()?;
    let row = state.store.get_session(session).await.ok()??;
    if row.origin["kind"] != "slack" {
        return None;
    }
    Some((
        row.origin["channel"].as_str()?.to_string(),
        row.origin["thread_ts"].as_str()?.to_string(),
    ))
}

fn blocks(a: &PendingApproval) -> Value {
    let button = |label: &str, d: &str, style: Option<&str>| {
        let mut b = json!({"type": "button", "action_id": format!("{ACTION_ID}_{d}"),
            "text": {"type": "plain_text", "text": label}, "value": format!("{}:{d}", a.id)});
        if let Some(s) = style {
            b["style"] = json!(s);
        }
        b
    };
    json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": format!(
            ":lock: Sandbox `{}` wants to reach *{}:{}* (`{} {}`). Allow it?",
            a.sandbox, a.host, a.port, a.method, a.path)}},
        {"type": "actions", "block_id": format!("airlock_{}", a.id), "elements": [
            button("Allow once", "allow_once", Some("primary")),
            button("Allow for session", "allow_session", None),
            button("Allow always", "allow_always", None),
            button("Deny", "deny", Some("danger")),
        ]}
    ])
}

/// Posts each new pending approval of a Slack-started session in its thread, once.
pub async fn notify(state: AppState, triggers: Arc<Triggers>, mut stop: watch::Receiver<bool>) {
    let mut posted: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (Some(broker), Some(slack)) = (state.broker.as_ref(), triggers.slack.as_ref()) else {
            return;
        };
        let Ok(pending) = broker.approvals().await else {
            continue;
        };
        posted.retain(|id| pending.iter().any(|a| &a.id == id));
        for a in pending {
            if posted.contains(&a.id) {
                continue;
            }
            let Some((channel, thread_ts)) = slack_thread(&state, &a).await else {
                posted.insert(a.id.clone());
                continue;
            };
            // Once per approval across restarts and replicas: the key is claimed first and
            // given back if the post fails (then tried again at the next poll).
            let key = format!("approval-prompt:slack:{}", a.id);
            match crate::triggers::store::claim_key(&state.store, &key).await {
                Ok(true) => {}
                Ok(false) => {
                    posted.insert(a.id.clone());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(approval = %a.id, error = %e, "cannot claim an approval prompt");
                    continue;
                }
            }
            let text = format!("Sandbox {} wants to reach {}:{}", a.sandbox, a.host, a.port);
            match slack
                .client
                .post_blocks(&channel, &thread_ts, &text, &blocks(&a))
                .await
            {
                Ok(()) => {
                    posted.insert(a.id.clone());
                }
                Err(e) => {
                    let _ = crate::triggers::store::release_key(&state.store, &key).await;
                    tracing::warn!(approval = %a.id, error = %e, "posting an approval to Slack failed")
                }
            }
        }
    }
}

/// The `payload` field of a form-encoded body, decoded.
fn payload_field(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = text.split('&').find_map(|kv| kv.strip_prefix("payload="))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b'%' => return None,
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

pub async fn interactive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(slack) = state.triggers.as_ref().and_then(|t| t.slack.as_ref()) else {
        return (StatusCode::NOT_FOUND, "no slack trigger configured").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify_slack(
        slack.signing_secret().as_bytes(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now_secs(),
    ) {
        tracing::warn!(reason = %e, "slack interactive request refused");
        return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
    }
    let Some(payload) = payload_field(&body) else {
        return (StatusCode::BAD_REQUEST, "no payload").into_response();
    };
    let Ok(p) = serde_json::from_str::<Value>(&payload) else {
        return (StatusCode::BAD_REQUEST, "payload is not JSON").into_response();
    };
    if p["type"] != "block_actions" {
        return StatusCode::OK.into_response();
    }
    let user = p["user"]["id"].as_str().unwrap_or("unknown").to_string();
    let channel = p["channel"]["id"].as_str().unwrap_or("");
    let Some(action) = p["actions"].as_array().and_then(|a| {
        a.iter().find(|x| {
            x["action_id"]
                .as_str()
                .is_some_and(|s| s.starts_with(ACTION_ID))
        })
    }) else {
        return StatusCode::OK.into_response();
    };
    let Some((id, decision)) = action["value"]
        .as_str()
        .and_then(|v| v.split_once(':'))
        .and_then(|(id, d)| Some((id.to_string(), decision_of(d)?)))
    else {
        return (StatusCode::BAD_REQUEST, "unknown action value").into_response();
    };
    // Only from the thread it was posted in: the approval's session must live in this channel.
    let pending = match state.broker.as_ref() {
        Some(b) => b.approvals().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let Some(a) = pending.into_iter().find(|a| a.id == id) else {
        return axum::Json(
            json!({"text": "This request is no longer waiting (answered or expired)."}),
        )
        .into_response();
    };
    match slack_thread(&state, &a).await {
        Some((c, _)) if c == channel => {}
        _ => return (StatusCode::FORBIDDEN, "not this channel's approval").into_response(),
    }
    match crate::approvals::decide_as(&state, &id, decision, &format!("slack:{user}")).await {
        Ok(a) => axum::Json(
            json!({"text": format!("<@{user}> chose {} for {}", decision.as_str(), a.host)}),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}
