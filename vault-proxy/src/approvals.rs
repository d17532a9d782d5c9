//! Egress approvals (rule 6, `egress.default: ask`) and per-sandbox egress.
//!
//! A request with no stub to a host that neither the proxy's `egress.allow_hosts`, the
//! sandbox's own list, nor an earlier "always" answer allows is, under `ask`, *held*: it is
//! registered here as a pending approval and waits (up to `egress.ask_timeout_s`) for a
//! decision through the admin API (`POST /v1/approvals/{id}`). Unanswered = deny.
//!
//! Decisions:
//! - `allow_once`: this one request (a later request, even in the same tunnel, asks again);
//! - `allow_session`: the host joins that sandbox's egress list (until its grant is revoked);
//! - `allow_always`: the host joins a proxy-wide list. It lives as long as the proxy process:
//!   nothing is written to the config file, so a restart forgets it (put the host in
//!   `egress.allow_hosts` to make it permanent);
//! - `deny`: the held request gets `403 egress_denied`.
//!
//! Fail closed: at most [`MAX_PENDING_PER_SANDBOX`] requests of one sandbox wait at once; more
//! are denied without asking. Revoking a grant denies its pending requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::config::{EgressConfig, EgressDefault, HostPattern};

/// Held requests per sandbox; beyond this, requests are denied without asking.
pub const MAX_PENDING_PER_SANDBOX: usize = 16;
/// Longest `by` (who decided) kept in the audit record.
const MAX_BY_LEN: usize = 128;

/// What an answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    AllowOnce,
    AllowSession,
    AllowAlways,
    Deny,
}

impl ApprovalDecision {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowOnce => "allow_once",
            Self::AllowSession => "allow_session",
            Self::AllowAlways => "allow_always",
            Self::Deny => "deny",
        }
    }

    /// Whether the held request goes through.
    pub fn allows(self) -> bool {
        self != Self::Deny
    }
}

/// A held request, as `GET /v1/approvals` lists it (never a value: the path has no query
/// values and stubs are redacted by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingApproval {
    pub id: String,
    pub sandbox: String,
    pub session: Option<String>,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub path: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The answer a held request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub decision: ApprovalDecision,
    /// Who decided (`timeout` when nobody did, `limit` when too many were pending).
    pub by: String,
}

/// What the egress policy says about one host for one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    Ask,
}

/// A sandbox's own egress, set at run time (`PUT /v1/grants/{sandbox}/egress`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxEgress {
    /// Overrides `egress.default` for this sandbox (`deny` or `ask`).
    pub default: Option<EgressDefault>,
    pub allow_hosts: Vec<HostPattern>,
}

/// Why a decision could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no pending approval with this id (answered, timed out, or never asked)")]
    NotFound,
}

struct Held {
    info: PendingApproval,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Held>,
    sandboxes: HashMap<String, SandboxEgress>,
    always: Vec<HostPattern>,
}

/// The registry: pending approvals, per-sandbox egress, the proxy-wide "always" list.
pub struct Approvals {
    state: Mutex<State>,
    /// Bumped on every change of the pending set (live views wait on it).
    version: watch::Sender<u64>,
}

impl Default for Approvals {
    fn default() -> Self {
        Self::new()
    }
}

impl Approvals {
    pub fn new() -> Self {
        Approvals {
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Changes whenever the pending set changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The policy for a request with no stub from `sandbox` to `host`.
    pub fn verdict(&self, egress: &EgressConfig, sandbox: &str, host: &str) -> Verdict {
        if egress.allow_hosts.iter().any(|p| p.matches(host)) {
            return Verdict::Allow;
        }
        let st = self.lock();
        if st.always.iter().any(|p| p.matches(host)) {
            return Verdict::Allow;
        }
        let own = st.sandboxes.get(sandbox);
        if own.is_some_and(|e| e.allow_hosts.iter().any(|p| p.matches(host))) {
            return Verdict::Allow;
        }
        match own.and_then(|e| e.default).unwrap_or(egress.default) {
            EgressDefault::Allow => Verdict::Allow,
            EgressDefault::Deny => Verdict::Deny,
            EgressDefault::Ask => Verdict::Ask,
        }
    }

    /// Holds a request until it is answered or `timeout` passes (= deny by `timeout`).
    /// `info.id`, `created_at` and `expires_at` are filled in here.
    pub async fn ask(&self, mut info: PendingApproval, timeout: Duration) -> Answer {
        let now = Utc::now();
        info.id = new_id();
        info.created_at = now;
        info.expires_at = now + chrono::Duration::from_std(timeout).unwrap_or_default();
        let id = info.id.clone();
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            let held = st
                .pending
                .values()
                .filter(|h| h.info.sandbox == info.sandbox)
                .count();
            if held >= MAX_PENDING_PER_SANDBOX {
                return Answer {
                    decision: ApprovalDecision::Deny,
                    by: "limit".into(),
                };
            }
            st.pending.insert(id.clone(), Held { info, tx });
        }
        self.bump();
        // Removes the entry if this future is dropped (client gone) or times out.
        let guard = PendingGuard { reg: self, id: &id };
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(a)) => a,
            // Sender dropped without an answer (grant revoked) or timeout: deny.
            Ok(Err(_)) => Answer {
                decision: ApprovalDecision::Deny,
                by: "revoked".into(),
            },
            Err(_) => Answer {
                decision: ApprovalDecision::Deny,
                by: "timeout".into(),
            },
        };
        drop(guard);
        answer
    }

    /// Pending approvals, oldest first.
    pub fn pending(&self) -> Vec<PendingApproval> {
        let mut v: Vec<_> = self
            .lock()
            .pending
            .values()
            .map(|h| h.info.clone())
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Answers a pending approval; `allow_session` / `allow_always` also widen the sandbox's
    /// or the proxy's egress by that exact host. Returns what was answered.
    pub fn decide(
        &self,
        id: &str,
        decision: ApprovalDecision,
        by: &str,
    ) -> Result<PendingApproval, ApprovalError> {
        let held = {
            let mut st = self.lock();
            let held = st.pending.remove(id).ok_or(ApprovalError::NotFound)?;
            if let Ok(p) = HostPattern::parse(&held.info.host) {
                match decision {
                    ApprovalDecision::AllowSession => {
                        let own = st.sandboxes.entry(held.info.sandbox.clone()).or_default();
                        if !own.allow_hosts.contains(&p) {
                            own.allow_hosts.push(p);
                        }
                    }
                    ApprovalDecision::AllowAlways => {
                        if !st.always.contains(&p) {
                            st.always.push(p);
                        }
                    }
                    ApprovalDecision::AllowOnce | ApprovalDecision::Deny => {}
                }
            }
            held
        };
        let info = held.info.clone();
        // The waiter may have just timed out; then the answer is simply dropped.
        let _ = held.tx.send(Answer {
            decision,
            by: clean_by(by),
        });
        self.bump();
        Ok(info)
    }

    /// Replaces a sandbox's own egress (`PUT /v1/grants/{sandbox}/egress`).
    pub fn set_sandbox_egress(&self, sandbox: &str, egress: SandboxEgress) {
        self.lock().sandboxes.insert(sandbox.to_string(), egress);
    }

    /// A sandbox's own egress (empty when never set).
    pub fn sandbox_egress(&self, sandbox: &str) -> SandboxEgress {
        self.lock()
            .sandboxes
            .get(sandbox)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets a sandbox (its grant was revoked): its egress list goes and its held requests
    /// are denied.
    pub fn forget(&self, sandbox: &str) {
        let mut st = self.lock();
        st.sandboxes.remove(sandbox);
        let before = st.pending.len();
        // Dropping the senders wakes the waiters with a deny.
        st.pending.retain(|_, h| h.info.sandbox != sandbox);
        let changed = st.pending.len() != before;
        drop(st);
        if changed {
            self.bump();
        }
    }
}

struct PendingGuard<'a> {
    reg: &'a Approvals,
    id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let removed = self.reg.lock().pending.remove(self.id).is_some();
        if removed {
            self.reg.bump();
        }
    }
}

fn new_id() -> String {
    use rand::Rng;
    let mut b = [0u8; 12];
    rand::rng().fill(&mut b);
    format!("ap_{}", hex::encode(b))
}

/// `by` goes into an audit reason: printable, bounded.
fn clean_by(by: &str) -> String {
    let s: String = by
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_BY_LEN)
        .collect();
    if s.trim().is_empty() {
        "admin".into()
    } else {
        s
    }
}

pub(crate) mod api;

#[cfg(test)]
mod tests;
