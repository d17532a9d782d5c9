//! Test-only fault injection at the store: a failing write, a write whose commit is lost on
//! the way back, a panic inside a write. Tests arm a [`FaultPlan`] on a store (every clone
//! shares it) to reproduce failure interleavings deterministically. Compiled only in tests,
//! so the hot path carries nothing.

use std::sync::{Arc, Mutex};

use super::StoreError;

/// What an armed fault does to the store call it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail before touching the database with a connection error (transient).
    FailTransient,
    /// Fail before touching the database with a non-transient error.
    FailPermanent,
    /// Commit, then report a connection error (the answer was lost on the way back).
    FailAfterCommit,
    /// Panic inside the call (a bug in the loop's task).
    Panic,
}

#[derive(Debug, Clone)]
struct Rule {
    op: &'static str,
    /// For `append_event`: the event kind (None = any).
    kind: Option<String>,
    action: Action,
    remaining: u32,
}

#[derive(Debug, Default, Clone)]
pub struct FaultPlan {
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl FaultPlan {
    /// Arms `action` for the next `times` calls of `op` (with event `kind`, if given).
    pub fn arm(&self, op: &'static str, kind: Option<&str>, action: Action, times: u32) {
        self.lock().push(Rule {
            op,
            kind: kind.map(str::to_owned),
            action,
            remaining: times,
        });
    }

    /// How many armed uses of `op` are left (to count how often a path tried it).
    pub fn remaining(&self, op: &str) -> u32 {
        self.lock()
            .iter()
            .filter(|r| r.op == op)
            .map(|r| r.remaining)
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The action armed for this call, consuming one use of it. `after_commit` selects
    /// [`Action::FailAfterCommit`] rules (checked after the commit), the others before.
    pub(crate) fn take(&self, op: &str, kind: Option<&str>, after_commit: bool) -> Option<Action> {
        let mut rules = self.lock();
        let i = rules.iter().position(|r| {
            r.op == op
                && r.remaining > 0
                && (r.kind.is_none() || r.kind.as_deref() == kind)
                && (r.action == Action::FailAfterCommit) == after_commit
        })?;
        rules[i].remaining -= 1;
        let action = rules[i].action;
        if action == Action::Panic {
            drop(rules);
            panic!("injected fault: panic in {op}({kind:?})");
        }
        Some(action)
    }
}

pub(crate) fn transient() -> StoreError {
    StoreError::Db(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected fault: connection reset",
    )))
}

pub(crate) fn permanent() -> StoreError {
    StoreError::Corrupt {
        table: "injected",
        message: "injected fault".into(),
    }
}
