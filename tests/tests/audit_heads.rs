//! End to end: the brain records its embedded vault proxy's audit head, and `brain audit
//! verify` (the real binary) proves the log against the recorded heads: exit 0 while intact,
//! exit 1 naming the first missing seq once the log's tail is cut off. Requests are real
//! proxy requests (a static grant, egress `deny`: each one is a `block` record).

use std::process::Command;
use std::time::Duration;

use airlock_tests::{BrainOptions, BrainProcess, StatusCode, bin_path};
use serde_json::Value;

const SANDBOX: &str = "sb-audit";
const TOKEN: &str = "audit-token-0123";

fn vault_yaml(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vault.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\n\
             ca: {{ cert: ca.pem, key: ca-key.pem }}\n\
             audit_log: audit.jsonl\n\
             egress: {{ default: deny }}\n\
             grants:\n  - sandbox: {SANDBOX}\n    token: {TOKEN}\n    credentials: {{}}\n"
        ),
    )
    .unwrap();
    path
}

/// `brain audit verify` against `brain`: (exit code, stdout, stderr).
fn cli_verify(brain: &BrainProcess) -> (i32, String, String) {
    let out = Command::new(bin_path("brain"))
        .args(["audit", "verify", "--url", &brain.base_url])
        .env("AIRLOCK_MASTER_KEY", &brain.master_key)
        .output()
        .expect("running brain audit verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Blocked plain-HTTP requests through the proxy: one audit record each.
async fn blocked_requests(proxy: &str, n: usize) {
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{SANDBOX}:{TOKEN}@{proxy}")).unwrap())
        .build()
        .unwrap();
    for i in 0..n {
        let resp = client
            .get(format!("http://blocked.example/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn brain_audit_verify_detects_a_cut_off_tail() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_yaml(dir.path());
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "vault:\n  config: {}\n  audit_head_interval_s: 1\n",
            vault.display()
        ),
        ..Default::default()
    })
    .await;
    let proxy = airlock_tests::vault::proxy_addr_from_log(&brain.log())
        .unwrap_or_else(|| panic!("no proxy address:\n{}", brain.log()));
    blocked_requests(&proxy, 6).await;
    let audit = dir.path().join("audit.jsonl");
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        airlock_tests::eventually(Duration::from_secs(10), || lines(&audit).lines().count()
            >= 6)
        .await,
        "the blocks were not audited: {}",
        lines(&audit)
    );
    let total = lines(&audit).lines().count();

    // The recorder picks the head up on its own (interval 1 s), without a verify call.
    let db = format!("sqlite://{}", brain.data_dir().join("brain.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let mut recorded = 0i64;
    for _ in 0..100 {
        recorded = sqlx::query_scalar("SELECT COALESCE(max(seq), 0) FROM audit_heads")
            .fetch_one(&pool)
            .await
            .unwrap();
        if recorded == total as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        recorded, total as i64,
        "the periodic recorder did not record the head"
    );
    pool.close().await;

    // Intact: the API and the CLI agree.
    let (status, v) = brain.get_json("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
    assert_eq!(v["records"], total, "{v}");
    assert_eq!(v["latest_recorded"]["seq"], total, "{v}");
    let (code, out, err) = cli_verify(&brain);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("ok: {total} records, head {total}:")),
        "{out}"
    );
    assert!(out.contains("recorded heads"), "{out}");

    // Cut the last two records off. The shorter file is still a valid chain on its own
    // (`vault-proxy audit verify` without --head says ok), but the brain's heads expose it.
    let text = lines(&audit);
    let keep: String = text
        .split_inclusive('\n')
        .take(total - 2)
        .collect::<Vec<_>>()
        .concat();
    std::fs::write(&audit, keep).unwrap();
    let plain = Command::new(bin_path("vault-proxy"))
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stdout)
    );
    let (code, out, err) = cli_verify(&brain);
    assert_eq!(code, 1, "a cut tail must fail: {out}{err}");
    assert!(
        out.starts_with(&format!("audit log broken at seq {}:", total - 1)),
        "{out}"
    );
    assert!(out.contains("cut off"), "{out}");
    let (status, v) = brain.get_json("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["ok"], Value::Bool(false), "{v}");
    assert_eq!(v["broken"]["seq"], total - 1, "{v}");
}
