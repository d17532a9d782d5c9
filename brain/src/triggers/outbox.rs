//! Delivers the `trigger_replies` outbox: claims due rows, sends each through its API
//! client, deletes it on success, and otherwise schedules the next attempt with exponential
//! backoff (a `Retry-After` from the API wins). Rows survive restarts; a claim is a lease,
//! so a worker that dies mid-send only delays the reply. Due times and leases are on the
//! database clock (`store::claim_due_replies`): a brain whose own clock is skewed sends
//! nothing early or late.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Triggers;
use super::store::{self, PendingReply, ReplyPayload};
use crate::state::AppState;

/// How long a claimed reply is reserved for the worker sending it.
const CLAIM_LEASE_MS: i64 = 60_000;
/// Replies claimed per pass.
const BATCH: i64 = 16;
/// Longest sleep between passes, whatever the schedule says (a row enqueued by another
/// replica does not wake this one).
const MAX_IDLE: Duration = Duration::from_secs(5);

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Delivered,
    /// Try again; `after` is the API's own hint (`Retry-After`, rate-limit reset).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The API refused it for good (unknown channel, no access, invalid body).
    Fatal(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// After this many failed attempts a reply is marked failed instead of retried.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_attempts: 30,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`, given `attempts` failures so far (counting this one).
    pub fn delay(&self, failures: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max);
        }
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Delivery ids older than this are forgotten: Slack retries for minutes, GitHub
/// redeliveries are manual and rare after a week.
const DEDUPE_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs until `shutdown` flips to true. Also prunes old delivery ids, hourly.
pub async fn run(state: AppState, triggers: Arc<Triggers>, mut shutdown: watch::Receiver<bool>) {
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            match store::prune_deliveries(&state.store, DEDUPE_RETENTION_MS).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "forgot old webhook delivery ids"),
                Err(e) => tracing::warn!(error = %e, "pruning webhook delivery ids failed"),
            }
        }
        let sent = match pass(&state, &triggers).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reply outbox pass failed");
                0
            }
        };
        if sent > 0 {
            continue;
        }
        let wait = match store::next_due_in_ms(&state.store).await {
            Ok(Some(ms)) => Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(MAX_IDLE),
            _ => MAX_IDLE,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = triggers.outbox_wakeup.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass: deliver what is due. Returns how many replies were attempted.
pub async fn pass(
    state: &AppState,
    triggers: &Triggers,
) -> Result<usize, crate::store::StoreError> {
    pass_with(state, triggers, CLAIM_LEASE_MS, BATCH).await
}

/// [`pass`] with a given claim lease and batch size. Each reply's lease is renewed right
/// before its send (one send takes at most the client timeout, 25 s, well inside the lease),
/// so a long batch never sends a reply whose lease lapsed meanwhile: another worker may have
/// claimed it, and then only that worker sends it.
pub async fn pass_with(
    state: &AppState,
    triggers: &Triggers,
    lease_ms: i64,
    batch: i64,
) -> Result<usize, crate::store::StoreError> {
    let due = store::claim_due_replies(&state.store, lease_ms, batch).await?;
    let n = due.len();
    for mut reply in due {
        if !store::extend_reply_lease(&state.store, &mut reply, lease_ms).await? {
            tracing::info!(reply = %reply.id, "reply lease lapsed during the batch; another worker sends it");
            continue;
        }
        let outcome = deliver(triggers, &reply).await;
        settle(state, &triggers.retry, &reply, outcome).await?;
    }
    Ok(n)
}

async fn deliver(triggers: &Triggers, reply: &PendingReply) -> Delivery {
    match &reply.payload {
        ReplyPayload::SlackMessage {
            channel,
            thread_ts,
            text,
        } => match &triggers.slack {
            Some(slack) => slack.client.post_message(channel, thread_ts, text).await,
            None => Delivery::Retry {
                error: "the slack trigger is not configured on this brain".into(),
                after: None,
            },
        },
        ReplyPayload::GithubComment { repo, issue, body } => match &triggers.github {
            Some(github) => github.client.comment(repo, *issue, body).await,
            None => Delivery::Retry {
                error: "the github trigger is not configured on this brain".into(),
                after: None,
            },
        },
    }
}

/// Records the outcome of one attempt.
pub async fn settle(
    state: &AppState,
    policy: &RetryPolicy,
    reply: &PendingReply,
    outcome: Delivery,
) -> Result<(), crate::store::StoreError> {
    let source = reply.payload.source().as_str();
    match outcome {
        Delivery::Delivered => {
            tracing::info!(reply = %reply.id, source, attempts = reply.attempts + 1, "reply delivered");
            store::reply_delivered(&state.store, &reply.id).await
        }
        Delivery::Fatal(error) => {
            tracing::error!(reply = %reply.id, source, %error, "reply refused by the API; kept as failed");
            store::reply_failed(&state.store, &reply.id, &error).await
        }
        Delivery::Retry { error, .. } if reply.attempts + 1 >= policy.max_attempts => {
            tracing::error!(reply = %reply.id, source, %error, attempts = reply.attempts + 1,
                "reply still failing after the last attempt; kept as failed");
            state.metrics.reply_failed(source, true);
            store::reply_failed(&state.store, &reply.id, &error).await
        }
        Delivery::Retry { error, after } => {
            let delay = policy.delay(reply.attempts + 1, after);
            tracing::warn!(reply = %reply.id, source, %error, retry_in_ms = delay.as_millis() as u64,
                "reply delivery failed; will retry");
            state.metrics.reply_failed(source, false);
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
            store::reply_retry(&state.store, &reply.id, delay_ms, &error).await
        }
    }
}

/// Parses `Retry-After` (seconds; HTTP dates are not used by Slack or GitHub here).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
