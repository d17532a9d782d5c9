//! The last step before a request leaves for the upstream (DESIGN.md, audit
//! log): a swap's records must be in the log first, and the grant must still
//! stand after that write.
//!
//! - Swaps: [`AuditLog::commit`](crate::audit::AuditLog::commit) writes one
//!   `swap` record per credential and waits for the write (group commit). If
//!   the log cannot be written the request gets `503 audit_unavailable` and
//!   nothing is sent.
//! - No swap (egress allow): its record is written after the response as
//!   before (connection level), but while the log is unwritable nothing is
//!   sent either — fail closed for everything that would need a record.
//! - Revocation: a grant revoked while the record was being written (or
//!   earlier) stops the request here, after the write and immediately before
//!   the send, so a revoked grant never carries the secret.

use std::sync::Arc;

use crate::audit::{Decision, EventKind};
use crate::deny::Deny;
use crate::handler::{Facts, Target};

/// Commits the swap records (if any) and re-checks the grant. `Err` means
/// nothing may be sent.
pub(crate) async fn before_send(
    t: &Arc<Target>,
    f: &Facts,
    swaps: &[String],
    minted: &crate::credentials::MintedSwaps,
) -> Result<(), Deny> {
    let audit = &t.shared.audit;
    if swaps.is_empty() {
        if !audit.is_healthy() {
            return Err(Deny::AuditUnavailable);
        }
    } else {
        let events = swaps
            .iter()
            .map(|name| {
                t.event(
                    f,
                    EventKind::Swap,
                    Decision::Allow,
                    // Typed credentials name their type and the upstream token's id or
                    // fingerprint and expiry, never the value.
                    minted
                        .audit_reason(name)
                        .or_else(|| {
                            t.grant
                                .credential(name)
                                .and_then(|c| crate::aws_sigv4::swap_reason(c))
                        })
                        .unwrap_or_else(|| "stub_swapped_for_bound_host".into()),
                    Some(name.clone()),
                    None,
                )
            })
            .collect();
        if let Err(e) = audit.commit(events).await {
            tracing::error!(error = %e, "audit write failed; swap refused");
            return Err(Deny::AuditUnavailable);
        }
        let pause = t.shared.limits.pause_after_audit;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    if t.grant.is_revoked() {
        return Err(Deny::Revoked);
    }
    Ok(())
}
