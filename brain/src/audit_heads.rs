//! The vault proxy's audit heads, kept by the brain.
//!
//! A hash chain proves every record up to its last one, but not that the last one is the last
//! one written: cutting whole records off the end leaves a valid, shorter chain, and a log
//! removed and restarted is a valid new chain. So every `vault.audit_head_interval_s` the brain
//! asks the proxy for its head (`GET /v1/audit/head`, or the embedded proxy directly) and
//! records it in its own store, which the proxy's host cannot rewrite. `brain audit verify`
//! (`GET /v1/audit/verify`) then checks the log against every recorded head: the chain must
//! reach each one with the same hash. Records written after the last recorded head are covered
//! only by the chain itself: the interval bounds what a cut can remove unnoticed.
//!
//! A head that goes backwards (a lower seq than one recorded, or another hash for a recorded
//! seq) is logged as an error when it is seen and makes `verify` fail from then on: the tail
//! was cut, or a new chain was started, and either is what the audit exists to show.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::credentials::{AuditHead, BrokerError, CredentialBroker};
use crate::store::{HeadRecord, Store, StoreError};

/// `vault.audit_head_interval_s` when unset.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks the proxy for its head and records it. Returns the head.
pub async fn record(broker: &dyn CredentialBroker, store: &Store) -> Result<AuditHead, HeadError> {
    let head = broker.audit_head().await?;
    let log = broker.audit_log_id();
    if head.seq == 0 {
        // An empty log has nothing to anchor yet.
        return Ok(head);
    }
    match store.record_audit_head(&log, head.seq, &head.hash).await? {
        HeadRecord::Added => {
            // Compare with the highest head recorded before it: a lower seq is a cut.
            let heads = store.audit_heads(&log).await?;
            if let Some(top) = heads.last()
                && top.seq > head.seq
            {
                tracing::error!(
                    log = %log,
                    recorded_seq = top.seq,
                    seq = head.seq,
                    "the vault proxy's audit head went back: the log's tail was cut off or a new \
                     chain was started; `brain audit verify` fails from now on"
                );
            }
        }
        HeadRecord::Known => {}
        HeadRecord::Conflicts { recorded } => tracing::error!(
            log = %log,
            seq = head.seq,
            recorded = %recorded,
            hash = %head.hash,
            "the vault proxy's audit record at this seq has another hash than recorded earlier: \
             the log was replaced; `brain audit verify` fails from now on"
        ),
    }
    Ok(head)
}

/// Records the head every `interval` until `stop` turns true.
pub async fn run(
    broker: std::sync::Arc<dyn CredentialBroker>,
    store: Store,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut warned = false;
    loop {
        match record(broker.as_ref(), &store).await {
            Ok(_) => warned = false,
            // A broker that cannot report heads (none of ours) would warn forever: once.
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "recording the vault proxy's audit head failed; retrying");
            }
            Err(e) => tracing::debug!(error = %e, "recording the audit head failed again"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Records the current head, then verifies the log against every head recorded for it. The
/// JSON of `GET /v1/audit/verify`: `ok`, `records`, `head` (`{seq,hash}` of the last record
/// read), `recorded_heads`, `latest_recorded` (`{seq,hash,recorded_at}` or null) and `broken`
/// (`{seq,reason}` or null).
pub async fn verify(broker: &dyn CredentialBroker, store: &Store) -> Result<Value, HeadError> {
    if let Err(e) = record(broker, store).await {
        // Verifying against what was recorded so far is still worth it.
        tracing::warn!(error = %e, "recording the audit head before verifying failed");
    }
    let recorded = store.audit_heads(&broker.audit_log_id()).await?;
    let heads = recorded
        .iter()
        .map(|h| AuditHead {
            seq: h.seq,
            hash: h.hash.clone(),
        })
        .collect();
    let report = broker.verify_audit(heads).await?;
    let latest = recorded
        .last()
        .map(|h| json!({"seq": h.seq, "hash": h.hash, "recorded_at": h.recorded_at.to_rfc3339()}));
    Ok(json!({
        "ok": report.is_ok(),
        "records": report.records,
        "head": {
            "seq": report.records,
            "hash": report.last_hash.unwrap_or_else(|| vault_proxy::audit::GENESIS_PREV.to_string()),
        },
        "recorded_heads": recorded.len(),
        "latest_recorded": latest,
        "broken": report.broken.map(|b| json!({"seq": b.seq, "reason": b.reason})),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use vault_proxy::audit::{AuditEvent, AuditLog, ChainHasher, Decision, EventKind};

    use super::*;
    use crate::credentials::{CredentialGrant, GrantRequest, VerifyReport, verify_audit_file};

    /// A proxy whose head the test sets, over a real audit file.
    struct Fixed {
        head: Mutex<AuditHead>,
        path: PathBuf,
    }

    #[async_trait]
    impl CredentialBroker for Fixed {
        async fn grant(&self, _: GrantRequest<'_>) -> Result<CredentialGrant, BrokerError> {
            Err(BrokerError::NotSupported("test".into()))
        }
        async fn revoke(&self, _: &str) -> Result<(), BrokerError> {
            Ok(())
        }
        fn audit_log_id(&self) -> String {
            "test-log".into()
        }
        async fn audit_head(&self) -> Result<AuditHead, BrokerError> {
            Ok(self.head.lock().unwrap().clone())
        }
        async fn verify_audit(&self, heads: Vec<AuditHead>) -> Result<VerifyReport, BrokerError> {
            verify_audit_file(self.path.clone(), ChainHasher::Sha256, heads).await
        }
    }

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            sandbox: "sb".into(),
            session: None,
            event: EventKind::Swap,
            host: "api.github.com".into(),
            port: 443,
            method: "GET".into(),
            path: format!("/r/{i}"),
            credential: Some("GITHUB_TOKEN".into()),
            decision: Decision::Allow,
            reason: "bound_host".into(),
            status: None,
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn recorded_heads_catch_a_cut_tail_and_a_head_that_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).await.unwrap();
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let broker = Fixed {
            head: Mutex::new(log.head()),
            path: path.clone(),
        };
        // An empty log records nothing.
        record(&broker, &store).await.unwrap();
        assert!(store.audit_heads("test-log").await.unwrap().is_empty());

        let h3 = log.commit((0..3).map(event).collect()).await.unwrap();
        *broker.head.lock().unwrap() = h3.clone();
        record(&broker, &store).await.unwrap();
        let h5 = log.commit((3..5).map(event).collect()).await.unwrap();
        *broker.head.lock().unwrap() = h5.clone();
        let v = verify(&broker, &store).await.unwrap();
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["records"], 5);
        assert_eq!(v["recorded_heads"], 2);
        assert_eq!(v["latest_recorded"]["seq"], 5);
        log.close().await.unwrap();

        // The tail cut off (the proxy restarted on the shorter file as a new chain would):
        // the recorded head 5 is not reached.
        let text = std::fs::read_to_string(&path).unwrap();
        let keep: String = text.split_inclusive('\n').take(4).collect();
        std::fs::write(&path, keep).unwrap();
        *broker.head.lock().unwrap() = AuditHead {
            seq: 4,
            hash: "c".repeat(64),
        };
        let v = verify(&broker, &store).await.unwrap();
        assert_eq!(v["ok"], false, "{v}");
        // Seq 4 now has a recorded head whose hash the file does not have: the first break.
        assert_eq!(v["broken"]["seq"], 4, "{v}");
        assert_eq!(v["recorded_heads"], 3);
        // And the first hash recorded for a seq stays.
        assert_eq!(
            store
                .record_audit_head("test-log", 3, &"d".repeat(64))
                .await
                .unwrap(),
            HeadRecord::Conflicts {
                recorded: h3.hash.clone()
            }
        );
    }
}
