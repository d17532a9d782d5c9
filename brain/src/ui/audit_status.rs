//! The chain status the audit page shows: the last result of `audit verify` against the
//! heads the brain recorded (`audit_heads::verify`, the same as `GET /v1/audit/verify`).
//!
//! Verifying reads the whole log, so a page load never runs it: the page shows the last
//! result (with when it was taken) and starts one in the background when there is none or
//! it is older than [`STALE`]; "Verify now" (a CSRF-checked POST) starts one at once. One
//! runs at a time per process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::state::AppState;

/// A result older than this is refreshed in the background when the page is viewed.
pub const STALE: Duration = Duration::from_secs(600);

/// One finished verification.
#[derive(Debug, Clone)]
pub struct Checked {
    pub at: DateTime<Utc>,
    /// `GET /v1/audit/verify`'s body, or why it could not run.
    pub result: Result<Value, String>,
}

static LAST: LazyLock<Mutex<Option<Checked>>> = LazyLock::new(Default::default);
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The last result, and whether a verification is running now.
pub fn snapshot() -> (Option<Checked>, bool) {
    let last = LAST.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (last, RUNNING.load(Ordering::Acquire))
}

/// Starts a verification in the background unless one is running.
pub fn start(state: &AppState) {
    let Some(broker) = state.broker.clone() else {
        return;
    };
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let store = state.store.clone();
    tokio::spawn(async move {
        let result = crate::audit_heads::verify(broker.as_ref(), &store)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::warn!(error = %e, "console: verifying the audit chain failed");
        }
        *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some(Checked {
            at: Utc::now(),
            result,
        });
        RUNNING.store(false, Ordering::Release);
    });
}

/// Starts one when there is no result yet or the last one is stale.
pub fn refresh_if_stale(state: &AppState) {
    let (last, running) = snapshot();
    let stale = last.is_none_or(|c| (Utc::now() - c.at).to_std().is_ok_and(|age| age > STALE));
    if stale && !running {
        start(state);
    }
}
