use std::sync::Arc;

use super::*;

fn egress(default: EgressDefault, allow: &[&str]) -> EgressConfig {
    EgressConfig {
        default,
        allow_hosts: allow
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        ask_timeout_s: 120,
    }
}

fn info(sandbox: &str, host: &str) -> PendingApproval {
    PendingApproval {
        id: String::new(),
        sandbox: sandbox.into(),
        session: None,
        host: host.into(),
        port: 443,
        method: "GET".into(),
        path: "/".into(),
        created_at: Utc::now(),
        expires_at: Utc::now(),
    }
}

async fn wait_pending(reg: &Approvals, n: usize) -> Vec<PendingApproval> {
    for _ in 0..200 {
        let p = reg.pending();
        if p.len() == n {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("expected {n} pending, have {:?}", reg.pending());
}

#[test]
fn verdict_follows_global_list_then_always_then_sandbox_then_default() {
    let reg = Approvals::new();
    let ask = egress(EgressDefault::Ask, &["pypi.org"]);
    assert_eq!(reg.verdict(&ask, "sb", "pypi.org"), Verdict::Allow);
    assert_eq!(reg.verdict(&ask, "sb", "evil.test"), Verdict::Ask);
    let deny = egress(EgressDefault::Deny, &[]);
    assert_eq!(reg.verdict(&deny, "sb", "evil.test"), Verdict::Deny);
    // A sandbox can be switched to ask under a deny proxy, and get its own hosts.
    reg.set_sandbox_egress(
        "sb",
        SandboxEgress {
            default: Some(EgressDefault::Ask),
            allow_hosts: vec![HostPattern::parse("*.npmjs.org").unwrap()],
        },
    );
    assert_eq!(reg.verdict(&deny, "sb", "evil.test"), Verdict::Ask);
    assert_eq!(
        reg.verdict(&deny, "sb", "registry.npmjs.org"),
        Verdict::Allow
    );
    assert_eq!(
        reg.verdict(&deny, "other", "registry.npmjs.org"),
        Verdict::Deny
    );
    reg.forget("sb");
    assert_eq!(reg.verdict(&deny, "sb", "evil.test"), Verdict::Deny);
}

#[tokio::test]
async fn allow_session_widens_only_that_sandbox_and_allow_always_every_sandbox() {
    let reg = Arc::new(Approvals::new());
    let cfg = egress(EgressDefault::Ask, &[]);
    let r2 = reg.clone();
    let waiter = tokio::spawn(async move {
        r2.ask(info("sb-a", "registry.npmjs.org"), Duration::from_secs(30))
            .await
    });
    let p = wait_pending(&reg, 1).await;
    assert_eq!(p[0].sandbox, "sb-a");
    assert!(p[0].id.starts_with("ap_"));
    assert!(p[0].expires_at > p[0].created_at);
    let answered = reg
        .decide(&p[0].id, ApprovalDecision::AllowSession, "alice\n")
        .unwrap();
    assert_eq!(answered.host, "registry.npmjs.org");
    let a = waiter.await.unwrap();
    assert_eq!(a.decision, ApprovalDecision::AllowSession);
    assert_eq!(a.by, "alice", "control characters are dropped");
    assert!(reg.pending().is_empty());
    assert_eq!(
        reg.verdict(&cfg, "sb-a", "registry.npmjs.org"),
        Verdict::Allow
    );
    assert_eq!(
        reg.verdict(&cfg, "sb-b", "registry.npmjs.org"),
        Verdict::Ask
    );
    // The same id cannot be answered twice.
    assert_eq!(
        reg.decide(&p[0].id, ApprovalDecision::Deny, "bob"),
        Err(ApprovalError::NotFound)
    );

    let r2 = reg.clone();
    let waiter = tokio::spawn(async move {
        r2.ask(info("sb-b", "pypi.org"), Duration::from_secs(30))
            .await
    });
    let p = wait_pending(&reg, 1).await;
    reg.decide(&p[0].id, ApprovalDecision::AllowAlways, "bob")
        .unwrap();
    assert!(waiter.await.unwrap().decision.allows());
    assert_eq!(reg.verdict(&cfg, "sb-z", "pypi.org"), Verdict::Allow);
}

#[tokio::test]
async fn allow_once_and_deny_leave_policy_unchanged() {
    let reg = Arc::new(Approvals::new());
    let cfg = egress(EgressDefault::Ask, &[]);
    for d in [ApprovalDecision::AllowOnce, ApprovalDecision::Deny] {
        let r2 = reg.clone();
        let waiter =
            tokio::spawn(
                async move { r2.ask(info("sb", "x.test"), Duration::from_secs(30)).await },
            );
        let p = wait_pending(&reg, 1).await;
        reg.decide(&p[0].id, d, "carol").unwrap();
        assert_eq!(waiter.await.unwrap().decision, d);
        assert_eq!(reg.verdict(&cfg, "sb", "x.test"), Verdict::Ask);
    }
}

#[tokio::test]
async fn unanswered_times_out_as_deny_and_leaves_no_entry() {
    let reg = Approvals::new();
    let a = reg
        .ask(info("sb", "x.test"), Duration::from_millis(50))
        .await;
    assert_eq!(
        a,
        Answer {
            decision: ApprovalDecision::Deny,
            by: "timeout".into()
        }
    );
    assert!(reg.pending().is_empty());
}

#[tokio::test]
async fn pending_per_sandbox_is_bounded_and_revoking_denies_held_requests() {
    let reg = Arc::new(Approvals::new());
    let mut waiters = Vec::new();
    for i in 0..MAX_PENDING_PER_SANDBOX {
        let r2 = reg.clone();
        waiters.push(tokio::spawn(async move {
            r2.ask(info("sb", &format!("h{i}.test")), Duration::from_secs(30))
                .await
        }));
    }
    wait_pending(&reg, MAX_PENDING_PER_SANDBOX).await;
    // Full: the next one is denied at once, without asking.
    let over = reg
        .ask(info("sb", "more.test"), Duration::from_secs(30))
        .await;
    assert_eq!(over.by, "limit");
    assert_eq!(over.decision, ApprovalDecision::Deny);
    // Another sandbox is not affected.
    let r2 = reg.clone();
    let other =
        tokio::spawn(async move { r2.ask(info("sb2", "o.test"), Duration::from_secs(30)).await });
    wait_pending(&reg, MAX_PENDING_PER_SANDBOX + 1).await;
    reg.forget("sb");
    for w in waiters {
        let a = w.await.unwrap();
        assert_eq!(a.decision, ApprovalDecision::Deny);
        assert_eq!(a.by, "revoked");
    }
    let p = wait_pending(&reg, 1).await;
    assert_eq!(p[0].sandbox, "sb2");
    reg.decide(&p[0].id, ApprovalDecision::Deny, "x").unwrap();
    assert!(!other.await.unwrap().decision.allows());
}

#[tokio::test]
async fn a_dropped_waiter_removes_its_entry() {
    let reg = Arc::new(Approvals::new());
    let r2 = reg.clone();
    let mut rx = reg.subscribe();
    let waiter =
        tokio::spawn(async move { r2.ask(info("sb", "x.test"), Duration::from_secs(30)).await });
    wait_pending(&reg, 1).await;
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
    waiter.abort();
    wait_pending(&reg, 0).await;
    assert!(rx.has_changed().unwrap());
}

#[test]
fn config_accepts_ask_and_bounds_its_timeout() {
    use crate::config::Config;
    let dir = std::env::temp_dir();
    let c = Config::from_yaml_str("egress: { default: ask, ask_timeout_s: 30 }\n", &dir).unwrap();
    assert_eq!(c.egress.default, EgressDefault::Ask);
    assert_eq!(c.egress.ask_timeout_s, 30);
    let c = Config::from_yaml_str("egress: { default: ask }\n", &dir).unwrap();
    assert_eq!(c.egress.ask_timeout_s, 120);
    assert!(Config::from_yaml_str("egress: { default: ask, ask_timeout_s: 0 }\n", &dir).is_err());
    assert!(Config::from_yaml_str("egress: { default: maybe }\n", &dir).is_err());
}
