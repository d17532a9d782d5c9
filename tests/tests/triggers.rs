//! End to end: the real `brain serve` (local backend, embedded vault proxy) with Slack and
//! GitHub triggers, against the local fakes (`airlock_tests::fake_slack`, `fake_github`).
//! Sessions run through `triggers.launcher: shell` (the test launcher: a real sandbox per
//! session, the user's words run as a shell command), so every reply below is real sandbox
//! output.

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_tests::fake_github::{API_HOST, FakeGithub, GIT_HOST};
use airlock_tests::fake_slack::{FakeSlack, SlackFailure, sign};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode, processes_with_env};
use serde_json::{Value, json};

const SIGNING_SECRET: &str = "e2e-slack-signing-secret";
const BOT_TOKEN: &str = "xoxb-e2e-bot-token";
const WEBHOOK_SECRET: &str = "e2e-github-webhook-secret";
/// `ghp_` + 36 characters, like a GitHub token: the real one, known only to the vault proxy.
const REAL_TOKEN: &str = "ghp_REALsecretVALUE0123456789abcdefghij";
/// The brain's own token for comments and permission checks.
const BRAIN_TOKEN: &str = "ghp_BRAINownTOKEN0123456789abcdefghijk";

// === Slack ===

async fn slack_brain(fake: &FakeSlack) -> BrainProcess {
    BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "triggers:\n  launcher: shell\n  reply_retry_base_ms: 100\n  reply_retry_max_ms: 1000\n  \
             slack:\n    api_base_url: {}\n    bot_user_id: UBOT\n    max_concurrent: 2\n    max_queued: 2\n",
            fake.base_url
        ),
        env: vec![
            ("SLACK_SIGNING_SECRET".into(), SIGNING_SECRET.into()),
            ("SLACK_BOT_TOKEN".into(), BOT_TOKEN.into()),
        ],
        ..Default::default()
    })
    .await
}

/// A brain with the production launcher (the agent loop) and a scripted model, wired to the
/// fake Slack.
async fn agent_loop_slack_brain(fake: &FakeSlack, script: &Path) -> BrainProcess {
    BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        \
             model: scripted/{}\n\
             triggers:\n  reply_retry_base_ms: 100\n  reply_retry_max_ms: 1000\n  \
             slack:\n    api_base_url: {}\n    bot_user_id: UBOT\n",
            script.display(),
            fake.base_url
        ),
        env: vec![
            ("SLACK_SIGNING_SECRET".into(), SIGNING_SECRET.into()),
            ("SLACK_BOT_TOKEN".into(), BOT_TOKEN.into()),
        ],
        ..Default::default()
    })
    .await
}

/// Posts a signed Events API request (`secret`, `timestamp` as given).
async fn send_slack(
    brain: &BrainProcess,
    body: &Value,
    secret: &str,
    timestamp: i64,
) -> (StatusCode, String) {
    let body = body.to_string();
    let ts = timestamp.to_string();
    let resp = brain
        .http
        .post(brain.url("/hooks/slack"))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", sign(secret, &ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .expect("posting to /hooks/slack");
    (resp.status(), resp.text().await.unwrap_or_default())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn event(event_id: &str, event: Value) -> Value {
    json!({"type": "event_callback", "token": "unused", "team_id": "T1", "api_app_id": "A1",
           "event_id": event_id, "event_time": now(), "event": event})
}

fn mention(event_id: &str, ts: &str, text: &str) -> Value {
    event(
        event_id,
        json!({"type": "app_mention", "user": "U1", "text": text, "ts": ts,
               "channel": "C1", "event_ts": ts}),
    )
}

async fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sandboxes(brain: &BrainProcess) -> Vec<Value> {
    let (status, v) = brain.get_json("/v1/sandboxes").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["sandboxes"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn slack_mention_runs_in_a_sandbox_and_the_thread_continues_the_session() {
    let fake = FakeSlack::start(BOT_TOKEN).await;
    let brain = slack_brain(&fake).await;

    // url_verification answers the challenge.
    let (status, body) = send_slack(
        &brain,
        &json!({"type": "url_verification", "token": "t", "challenge": "chal-42"}),
        SIGNING_SECRET,
        now(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["challenge"],
        "chal-42"
    );

    // A mention: acked at once, then "On it" and the result in the thread of the mention.
    let first = mention(
        "Ev001",
        "1700000001.000100",
        "<@UBOT> echo ran-in=$AIRLOCK_SANDBOX_ID",
    );
    let started = Instant::now();
    let (status, _) = send_slack(&brain, &first, SIGNING_SECRET, now()).await;
    let ack = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(ack < Duration::from_secs(3), "ack took {ack:?}");
    eprintln!("FIGURE slack webhook ack latency: {} ms", ack.as_millis());
    let thread = wait_for("the result in the thread", Duration::from_secs(60), || {
        let msgs = fake.thread("C1", "1700000001.000100");
        msgs.iter()
            .any(|m| m.text.starts_with("ran-in="))
            .then_some(msgs)
    })
    .await;
    assert!(
        thread[0].text.starts_with("On it (session `ses-"),
        "{thread:?}"
    );
    let sandbox = thread[1].text.trim_start_matches("ran-in=").to_string();
    assert!(sandbox.starts_with("sb-"), "{thread:?}");
    let (status, row) = brain.get_json(&format!("/v1/sandboxes/{sandbox}")).await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["backend"], "local");
    assert!(
        row["session_id"].as_str().unwrap().starts_with("ses-"),
        "{row}"
    );

    // A plain reply in the thread continues the same session (same sandbox, same files).
    let follow = event(
        "Ev002",
        json!({"type": "message", "channel_type": "channel", "user": "U1",
               "text": "touch note && echo again-in=$AIRLOCK_SANDBOX_ID && ls note",
               "ts": "1700000002.000100", "thread_ts": "1700000001.000100", "channel": "C1"}),
    );
    assert_eq!(
        send_slack(&brain, &follow, SIGNING_SECRET, now()).await.0,
        StatusCode::OK
    );
    let thread = wait_for("the follow-up's answer", Duration::from_secs(30), || {
        let msgs = fake.thread("C1", "1700000001.000100");
        (msgs.len() >= 3).then_some(msgs)
    })
    .await;
    assert_eq!(thread[2].text, format!("again-in={sandbox}\nnote"));

    // The bot's own message and a retry of an event already handled change nothing.
    let own = event(
        "Ev003",
        json!({"type": "message", "user": "UBOT", "text": "echo loop", "ts": "1700000003.000100",
               "thread_ts": "1700000001.000100", "channel": "C1"}),
    );
    assert_eq!(
        send_slack(&brain, &own, SIGNING_SECRET, now()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send_slack(&brain, &first, SIGNING_SECRET, now()).await.0,
        StatusCode::OK
    );

    // Refused: wrong secret, replayed (stale) and future timestamps, no signature at all.
    let other = mention("Ev004", "1700000004.000100", "<@UBOT> echo should-not-run");
    for (secret, ts) in [
        ("not-the-secret", now()),
        (SIGNING_SECRET, now() - 6 * 60),
        (SIGNING_SECRET, now() + 6 * 60),
    ] {
        let (status, _) = send_slack(&brain, &other, secret, ts).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "secret {secret} ts {ts}");
    }
    let resp = brain
        .http
        .post(brain.url("/hooks/slack"))
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fake.thread("C1", "1700000001.000100").len(),
        3,
        "{:?}",
        fake.posted()
    );
    assert!(fake.thread("C1", "1700000004.000100").is_empty());
    assert_eq!(sandboxes(&brain).await.len(), 1, "one session, one sandbox");
    let log = brain.log();
    assert!(log.contains("duplicate slack event ignored"), "{log}");
    assert_eq!(log.matches("slack webhook refused").count(), 4, "{log}");
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
}

#[tokio::test]
async fn slack_outage_and_brain_restart_delay_the_reply_but_do_not_lose_it() {
    let fake = FakeSlack::start(BOT_TOKEN).await;
    fake.fail_next(&[
        SlackFailure::ServerError,
        SlackFailure::TooManyRequests {
            retry_after_secs: 1,
        },
        SlackFailure::RateLimitedOk,
    ]);
    let mut brain = slack_brain(&fake).await;
    let ev = mention(
        "EvOut1",
        "1700000100.000100",
        "<@UBOT> echo survived-the-outage",
    );
    assert_eq!(
        send_slack(&brain, &ev, SIGNING_SECRET, now()).await.0,
        StatusCode::OK
    );
    let thread = wait_for(
        "both replies after the outage",
        Duration::from_secs(60),
        || {
            let msgs = fake.thread("C1", "1700000100.000100");
            (msgs.len() >= 2).then_some(msgs)
        },
    )
    .await;
    assert!(
        thread.iter().any(|m| m.text == "survived-the-outage"),
        "{thread:?}"
    );
    assert!(
        fake.calls() >= 5,
        "3 failures then 2 deliveries: {}",
        fake.calls()
    );

    // A longer outage spanning a restart: the reply waits in the database.
    fake.fail_next(&[SlackFailure::ServerError; 10_000]);
    let ev = mention("EvOut2", "1700000200.000100", "<@UBOT> echo after-restart");
    assert_eq!(
        send_slack(&brain, &ev, SIGNING_SECRET, now()).await.0,
        StatusCode::OK
    );
    let before = fake.calls();
    wait_for("retries during the outage", Duration::from_secs(60), || {
        (fake.calls() >= before + 8).then_some(())
    })
    .await;
    brain.terminate();
    fake.clear_failures();
    brain.restart().await;
    let thread = wait_for(
        "the reply after the restart",
        Duration::from_secs(60),
        || {
            let msgs = fake.thread("C1", "1700000200.000100");
            msgs.iter()
                .any(|m| m.text == "after-restart")
                .then_some(msgs)
        },
    )
    .await;
    assert_eq!(
        thread.iter().filter(|m| m.text == "after-restart").count(),
        1,
        "{thread:?}"
    );
}

#[tokio::test]
async fn slack_flood_starts_no_more_sessions_than_the_limit_allows() {
    let fake = FakeSlack::start(BOT_TOKEN).await;
    let brain = slack_brain(&fake).await; // max_concurrent 2 + max_queued 2
    let mut accepted = 0;
    let mut busy = 0;
    for i in 0..12 {
        let ev = mention(
            &format!("EvFlood{i}"),
            &format!("1700000300.{i:06}"),
            "<@UBOT> sleep 3; echo done",
        );
        match send_slack(&brain, &ev, SIGNING_SECRET, now()).await.0 {
            StatusCode::OK => accepted += 1,
            StatusCode::SERVICE_UNAVAILABLE => busy += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    eprintln!("FIGURE slack flood of 12: {accepted} accepted, {busy} refused with 503");
    assert_eq!(accepted, 4, "2 running + 2 queued");
    assert_eq!(busy, 8);
    wait_for(
        "the accepted sessions' results",
        Duration::from_secs(90),
        || (fake.posted().iter().filter(|m| m.text == "done").count() == 4).then_some(()),
    )
    .await;
    assert_eq!(sandboxes(&brain).await.len(), 4);
    assert!(brain.log().contains("slack trigger at capacity"));
}

// === GitHub ===

struct GithubSetup {
    brain: BrainProcess,
    github: FakeGithub,
    _dir: tempfile::TempDir,
}

/// The fake GitHub, a vault config binding `GITHUB_TOKEN` to its two host names, and a brain
/// (local backend, embedded proxy) with the GitHub trigger.
async fn github_setup() -> GithubSetup {
    github_setup_with(|_| "triggers:\n  launcher: shell\n".to_string()).await
}

/// [`github_setup`] with the brain's `triggers:`/`models:` head chosen by `head(&github)`.
async fn github_setup_with(head: impl FnOnce(&FakeGithub) -> String) -> GithubSetup {
    github_setup_full(head, |github, _| {
        format!(
            "  GITHUB_TOKEN:\n    value_env: REAL_GITHUB_TOKEN\n    allowed_hosts: [\"{GIT_HOST}:{port}\", \"{API_HOST}:{port}\"]\n",
            port = github.port
        )
    }, "GITHUB_TOKEN")
    .await
}

/// The GitHub setup with the vault's `credentials:` body from `credentials(&github, dir)`
/// and the trigger using `credential`.
async fn github_setup_full(
    head: impl FnOnce(&FakeGithub) -> String,
    credentials: impl FnOnce(&FakeGithub, &Path) -> String,
    credential: &str,
) -> GithubSetup {
    let github = FakeGithub::start(&[REAL_TOKEN, BRAIN_TOKEN]).await;
    github.create_repo("acme", "widgets");
    github.set_permission("acme/widgets", "alice", "write");
    github.set_permission("acme/widgets", "mallory", "read");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("github-ca.pem"), &github.ca_pem).unwrap();
    let vault = dir.path().join("vault.yaml");
    std::fs::write(
        &vault,
        format!(
            "listen: 127.0.0.1:0\n\
             ca: {{ cert: ca.pem, key: ca-key.pem }}\n\
             upstream_roots: [github-ca.pem]\n\
             audit_log: audit.jsonl\n\
             egress: {{ default: deny, allow_hosts: [{GIT_HOST}, {API_HOST}] }}\n\
             network:\n  allow_private: true\n  resolve: {{ \"{GIT_HOST}\": \"127.0.0.1\", \"{API_HOST}\": \"127.0.0.1\" }}\n\
             credentials:\n{creds}",
            creds = credentials(&github, dir.path()),
        ),
    )
    .unwrap();
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "vault:\n  config: {vault}\n\
             {head}  reply_retry_base_ms: 100\n  reply_retry_max_ms: 1000\n  \
             github:\n    api_base_url: {direct}\n    sandbox_api_base_url: {api}\n    ca_file: {ca}\n    git_host: {git}\n    credential: {credential}\n",
            vault = vault.display(),
            head = head(&github),
            direct = github.direct_api_url(),
            api = github.api_url(),
            ca = dir.path().join("github-ca.pem").display(),
            git = github.git_host(),
        ),
        env: vec![
            ("REAL_GITHUB_TOKEN".into(), REAL_TOKEN.into()),
            ("GITHUB_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
            ("AIRLOCK_GITHUB_TOKEN".into(), BRAIN_TOKEN.into()),
        ],
        ..Default::default()
    })
    .await;
    GithubSetup {
        brain,
        github,
        _dir: dir,
    }
}

fn github_signature(body: &[u8]) -> String {
    airlock_tests::fake_github::sign(WEBHOOK_SECRET, body)
}

async fn send_github(
    brain: &BrainProcess,
    event: &str,
    delivery: &str,
    body: &Value,
    signature: Option<String>,
) -> StatusCode {
    let body = body.to_string();
    let mut req = brain
        .http
        .post(brain.url("/hooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery);
    if let Some(sig) = signature.or_else(|| Some(github_signature(body.as_bytes()))) {
        req = req.header("x-hub-signature-256", sig);
    }
    req.body(body)
        .send()
        .await
        .expect("posting to /hooks/github")
        .status()
}

fn labelled_issue(number: u64, sender: &str, body: &str) -> Value {
    json!({
        "action": "labeled",
        "label": {"name": "airlock"},
        "issue": {"number": number, "title": "Add a FIX file", "body": body, "state": "open",
                  "labels": [{"name": "airlock"}], "user": {"login": sender, "type": "User"}},
        "repository": {"full_name": "acme/widgets", "name": "widgets", "default_branch": "main",
                       "owner": {"login": "acme"}},
        "sender": {"login": sender, "type": "User"},
    })
}

/// Every file under `dir` (sandbox directories), checked for `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_symlink() {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn labelled_issue_becomes_a_comment_and_a_draft_pr_pushed_with_the_swapped_token() {
    let GithubSetup {
        brain,
        github,
        _dir,
    } = github_setup().await;
    let task = format!(
        "GIT_TERMINAL_PROMPT=0 git clone -q \"https://x-access-token:$GITHUB_TOKEN@{git}/acme/widgets.git\" airlock-repo \
         && cd airlock-repo && printf 'fixed\\n' > FIX.md && git status --porcelain",
        git = github.git_host()
    );
    let issue = labelled_issue(42, "alice", &task);
    assert_eq!(
        send_github(&brain, "issues", "dlv-1", &issue, None).await,
        StatusCode::OK
    );

    let comment = wait_for("the result comment", Duration::from_secs(90), || {
        github.comments().into_iter().next()
    })
    .await;
    let log = brain.log();
    assert_eq!((comment.repo.as_str(), comment.issue), ("acme/widgets", 42));
    assert!(
        comment.body.contains("?? FIX.md"),
        "{}\n{log}",
        comment.body
    );
    assert!(
        comment
            .body
            .contains("Draft pull request: https://github.test/acme/widgets/pull/1"),
        "{}\n{log}",
        comment.body
    );
    assert_eq!(
        comment.token, BRAIN_TOKEN,
        "comments use the brain's own token"
    );

    let pulls = github.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let pr = &pulls[0];
    assert_eq!(
        (pr.head.as_str(), pr.base.as_str(), pr.draft),
        ("airlock/issue-42", "main", true)
    );
    assert_eq!(
        pr.token, REAL_TOKEN,
        "the PR call reached GitHub with the real token"
    );
    assert_eq!(
        github
            .file_on_branch("acme", "widgets", "airlock/issue-42", "FIX.md")
            .as_deref(),
        Some("fixed\n")
    );

    // What reached the fake GitHub host: the push carried the real token inside Basic; no
    // request carried anything else (a stub would not be a known token).
    let seen = github.seen();
    let push = seen
        .iter()
        .filter(|s| s.path.ends_with("/git-receive-pack"))
        .collect::<Vec<_>>();
    assert!(!push.is_empty(), "{seen:?}");
    assert!(
        push.iter().all(|s| s.token.as_deref() == Some(REAL_TOKEN)),
        "{push:?}"
    );
    assert!(
        seen.iter()
            .all(|s| s.authorization.is_none() || s.token.is_some()),
        "a request carried an unknown credential: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.path.contains("/collaborators/alice/permission")
                && s.token.as_deref() == Some(BRAIN_TOKEN))
    );

    // The sandbox only ever held the stub.
    let sbs = sandboxes(&brain).await;
    assert_eq!(sbs.len(), 1, "{sbs:?}");
    assert_eq!(sbs[0]["credentials"], json!(["GITHUB_TOKEN"]));
    let id = sbs[0]["id"].as_str().unwrap();
    let (status, out) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": "printf %s \"$GITHUB_TOKEN\""}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let stub = out["stdout"].as_str().unwrap();
    assert!(
        stub.starts_with("ghp_") && stub.len() == REAL_TOKEN.len() && stub != REAL_TOKEN,
        "{stub}"
    );
    assert!(processes_with_env("GITHUB_TOKEN", REAL_TOKEN).is_empty());
    let leaked = files_containing(&brain.data_dir().join("sandboxes"), REAL_TOKEN.as_bytes());
    assert!(
        leaked.is_empty(),
        "the real token is in sandbox files: {leaked:?}"
    );
    assert!(
        !brain.log().contains(REAL_TOKEN),
        "the real token is in the brain log"
    );

    // A redelivery of the same delivery id does nothing.
    assert_eq!(
        send_github(&brain, "issues", "dlv-1", &issue, None).await,
        StatusCode::OK
    );
    // A read-only user's command, and a mis-signed delivery, start nothing.
    let comment_body = |user: &str| {
        json!({"action": "created",
               "issue": {"number": 42, "title": "Add a FIX file", "labels": []},
               "comment": {"body": "/airlock echo pwned", "user": {"login": user, "type": "User"}},
               "repository": {"full_name": "acme/widgets", "default_branch": "main"},
               "sender": {"login": user, "type": "User"}})
    };
    assert_eq!(
        send_github(
            &brain,
            "issue_comment",
            "dlv-2",
            &comment_body("mallory"),
            None
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        send_github(
            &brain,
            "issue_comment",
            "dlv-3",
            &comment_body("alice"),
            Some("sha256=00".into())
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(github.comments().len(), 1, "{:?}", github.comments());
    assert_eq!(github.pulls().len(), 1);
    let log = brain.log();
    assert!(log.contains("duplicate github delivery ignored"), "{log}");
    assert!(log.contains("lacks write access"), "{log}");
    assert!(log.contains("github webhook refused"), "{log}");

    // A write user's follow-up command continues the issue's session in the same sandbox.
    assert_eq!(
        send_github(
            &brain,
            "issue_comment",
            "dlv-4",
            &json!({"action": "created",
            "issue": {"number": 42, "title": "Add a FIX file", "labels": []},
            "comment": {"body": "/airlock cd airlock-repo && echo more >> FIX.md && echo appended",
                        "user": {"login": "alice", "type": "User"}},
            "repository": {"full_name": "acme/widgets", "default_branch": "main"},
            "sender": {"login": "alice", "type": "User"}}),
            None
        )
        .await,
        StatusCode::OK
    );
    let second = wait_for("the follow-up comment", Duration::from_secs(60), || {
        github.comments().get(1).cloned()
    })
    .await;
    assert!(second.body.contains("appended"), "{}", second.body);
    assert_eq!(
        github
            .file_on_branch("acme", "widgets", "airlock/issue-42", "FIX.md")
            .as_deref(),
        Some("fixed\nmore\n")
    );
    assert_eq!(
        github.pulls().len(),
        1,
        "the existing PR was updated, not duplicated"
    );
    assert_eq!(sandboxes(&brain).await.len(), 1);
}

/// The same flow with a GitHub App: the sandbox holds one `ghs_` stub; the vault proxy mints
/// installation tokens with the App's key (made here by openssl) and the fake GitHub accepts
/// only tokens it issued for a JWT that verifies with the App's public key.
#[tokio::test]
async fn labelled_issue_with_a_github_app_pushes_and_opens_a_draft_pr() {
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("app.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl genrsa");
    assert!(out.status.success());
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl rsa")
        .stdout;
    let GithubSetup {
        brain,
        github,
        _dir,
    } = github_setup_full(
        |_| "triggers:\n  launcher: shell\n".to_string(),
        |github, _| {
            github.install_app(7, 99, public.clone(), Duration::from_secs(3600));
            format!(
                "  GH_APP:\n    type: github_app\n    app_id: 7\n    installation_id: 99\n    private_key_file: {key}\n    api_base: \"https://{API_HOST}:{port}\"\n    allowed_hosts: [\"{GIT_HOST}:{port}\", \"{API_HOST}:{port}\"]\n",
                key = key.display(),
                port = github.port
            )
        },
        "GH_APP",
    )
    .await;
    let task = format!(
        "GIT_TERMINAL_PROMPT=0 git clone -q \"https://x-access-token:$GH_TOKEN@{git}/acme/widgets.git\" airlock-repo \
         && cd airlock-repo && printf 'app\\n' > APP.md && git status --porcelain",
        git = github.git_host()
    );
    let issue = labelled_issue(43, "alice", &task);
    assert_eq!(
        send_github(&brain, "issues", "dlv-app-1", &issue, None).await,
        StatusCode::OK
    );
    let comment = wait_for("the result comment", Duration::from_secs(90), || {
        github.comments().into_iter().next()
    })
    .await;
    assert!(
        comment
            .body
            .contains("Draft pull request: https://github.test/acme/widgets/pull/1"),
        "{}\n{}",
        comment.body,
        brain.log()
    );
    let minted = github.installation_tokens();
    assert_eq!(
        minted.len(),
        1,
        "one installation token for clone, push and PR"
    );
    assert!(
        github.jwt_rejections().is_empty(),
        "{:?}",
        github.jwt_rejections()
    );
    let pulls = github.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert!(pulls[0].draft);
    assert_eq!(
        pulls[0].token, minted[0],
        "the PR call carried the installation token"
    );
    assert_eq!(
        github
            .file_on_branch("acme", "widgets", "airlock/issue-43", "APP.md")
            .as_deref(),
        Some("app\n")
    );
    let seen = github.seen();
    assert!(
        seen.iter()
            .filter(|s| s.path.ends_with("/git-receive-pack"))
            .all(|s| s.token.as_deref() == Some(minted[0].as_str())),
        "{seen:?}"
    );
    // The sandbox holds the stub only.
    let sbs = sandboxes(&brain).await;
    let id = sbs[0]["id"].as_str().unwrap();
    let (_, out) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": "printf '%s %s' \"$GH_APP\" \"$GITHUB_TOKEN\""}),
        )
        .await;
    let stub = out["stdout"].as_str().unwrap();
    let (a, b) = stub.split_once(' ').unwrap();
    assert!(
        a == b && a.starts_with("ghs_") && a.len() == 40 && a != minted[0],
        "{stub}"
    );
    let leaked = files_containing(&brain.data_dir().join("sandboxes"), minted[0].as_bytes());
    assert!(leaked.is_empty(), "{leaked:?}");
    assert!(!brain.log().contains(&minted[0]));
}

/// The production launcher: a Slack mention becomes a real agent-loop session (scripted model)
/// that provisions a sandbox, runs a command through `sandbox_execute`, and answers in the
/// thread; a reply in the thread is a follow-up message to the same session.
#[tokio::test]
async fn slack_mention_through_the_agent_loop_answers_in_the_thread() {
    let fake = FakeSlack::start(BOT_TOKEN).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        json!({"when_exhausted": "error", "responses": [
            {"tool_calls": [{"name": "sandbox_provision",
                             "arguments": {"task_description": "answer a slack question"}}]},
            {"tool_calls": [{"name": "sandbox_execute",
                             "arguments": {"command": "printf 'sum=%s' $((40+2))"}}]},
            {"text": "The sandbox says the answer is 42."},
            {"text": "Follow-up received in the same session."}
        ]})
        .to_string(),
    )
    .expect("script");
    let brain = agent_loop_slack_brain(&fake, &script).await;

    let ts = "1700000100.000100";
    let (status, _) = send_slack(
        &brain,
        &mention("EvLoop1", ts, "<@UBOT> what is 40+2?"),
        SIGNING_SECRET,
        now(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let thread = wait_for("the agent's answer", Duration::from_secs(60), || {
        let msgs = fake.thread("C1", ts);
        msgs.iter()
            .any(|m| m.text.contains("answer is 42"))
            .then_some(msgs)
    })
    .await;
    let session = thread[0]
        .text
        .split('`')
        .nth(1)
        .expect("session id in the first message")
        .to_string();
    assert!(session.starts_with("ses-"), "{thread:?}");

    // The session is a real one: its events hold the command's output from the sandbox, and
    // its origin says where it came from.
    let (status, s) = brain.get_json(&format!("/v1/sessions/{session}")).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["origin"]["kind"], "slack", "{s}");
    let (status, events) = brain
        .get_json(&format!("/v1/sessions/{session}/events"))
        .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert!(events.to_string().contains("sum=42"), "{events}");

    // A reply in the thread reaches the same session as a follow-up message.
    let follow = event(
        "EvLoop2",
        json!({"type": "message", "channel_type": "channel", "user": "U1",
               "text": "thanks, one more thing", "ts": "1700000101.000100",
               "thread_ts": ts, "channel": "C1"}),
    );
    assert_eq!(
        send_slack(&brain, &follow, SIGNING_SECRET, now()).await.0,
        StatusCode::OK
    );
    wait_for("the follow-up's answer", Duration::from_secs(60), || {
        fake.thread("C1", ts)
            .iter()
            .any(|m| m.text.contains("Follow-up received"))
            .then_some(())
    })
    .await;
    let (_, events) = brain
        .get_json(&format!("/v1/sessions/{session}/events"))
        .await;
    assert!(
        events.to_string().contains("thanks, one more thing"),
        "{events}"
    );
}

/// A brain SIGKILLed while a Slack-triggered session runs: the restarted brain resumes the
/// session and still posts its answer in the thread, once (the owed reply is a leased row in
/// `trigger_waits`, taken over by the next brain).
#[tokio::test]
async fn slack_reply_survives_a_brain_killed_while_the_session_runs() {
    let fake = FakeSlack::start(BOT_TOKEN).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("ran");
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        json!({"when_exhausted": "error", "responses": [
            {"tool_calls": [{"id": "p", "name": "sandbox_provision",
                             "arguments": {"task_description": "a slow slack task"}}]},
            {"tool_calls": [{"id": "slow", "name": "sandbox_execute",
                             "arguments": {"command": format!("echo ran >> {}; sleep 30", marker.display())}}]},
            {"text": "Finished despite the crash."}
        ]})
        .to_string(),
    )
    .expect("script");
    let mut brain = agent_loop_slack_brain(&fake, &script).await;

    let ts = "1700000300.000100";
    let (status, _) = send_slack(
        &brain,
        &mention("EvCrash1", ts, "<@UBOT> run the slow thing"),
        SIGNING_SECRET,
        now(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    wait_for("the slow command to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&marker)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await;
    // The session is mid-tool and its reply is owed: crash.
    brain.kill9();
    brain.restart().await;
    wait_for(
        "the answer after the restart",
        Duration::from_secs(90),
        || {
            fake.thread("C1", ts)
                .iter()
                .any(|m| m.text.contains("Finished despite the crash"))
                .then_some(())
        },
    )
    .await;
    // Give a duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let thread = fake.thread("C1", ts);
    assert_eq!(
        thread
            .iter()
            .filter(|m| m.text.contains("Finished despite the crash"))
            .count(),
        1,
        "{thread:?}\n{}",
        brain.log()
    );
    assert!(thread.len() >= 2, "'On it' then the answer: {thread:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().lines().count(),
        1,
        "the interrupted command ran again"
    );
}

/// The production launcher: a labelled issue becomes an agent-loop session (scripted model)
/// that clones the repo with the stub, changes a file and answers; the brain then pushes
/// from that session's sandbox and opens the draft PR, the push carrying the real token only
/// as far as the fake GitHub host.
#[tokio::test]
async fn labelled_issue_through_the_agent_loop_becomes_a_comment_and_a_draft_pr() {
    let script_dir = tempfile::tempdir().unwrap();
    let script = script_dir.path().join("script.json");
    let GithubSetup {
        brain,
        github,
        _dir,
    } = github_setup_with(|github| {
        let clone = format!(
            "GIT_TERMINAL_PROMPT=0 git clone -q \"https://x-access-token:$GITHUB_TOKEN@{}/acme/widgets.git\" airlock-repo \
             && cd airlock-repo && printf 'fixed by the agent\\n' > FIX.md && git status --porcelain",
            github.git_host()
        );
        std::fs::write(
            &script,
            json!({"when_exhausted": "error", "responses": [
                {"tool_calls": [{"name": "sandbox_provision", "arguments":
                    {"task_description": "fix acme/widgets#7", "credentials": ["GITHUB_TOKEN"]}}]},
                {"tool_calls": [{"name": "sandbox_execute", "arguments": {"command": clone}}]},
                {"text": "Wrote FIX.md with the fix."}
            ]})
            .to_string(),
        )
        .unwrap();
        format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        \
             model: scripted/{}\ntriggers:\n",
            script.display()
        )
    })
    .await;

    let issue = labelled_issue(7, "alice", "Please add FIX.md");
    assert_eq!(
        send_github(&brain, "issues", "dlv-loop-1", &issue, None).await,
        StatusCode::OK
    );
    let comment = wait_for("the result comment", Duration::from_secs(90), || {
        github.comments().into_iter().next()
    })
    .await;
    let log = brain.log();
    assert!(
        comment.body.contains("Wrote FIX.md with the fix."),
        "{}\n{log}",
        comment.body
    );
    assert!(
        comment
            .body
            .contains("Draft pull request: https://github.test/acme/widgets/pull/1"),
        "{}\n{log}",
        comment.body
    );
    let pulls = github.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(
        (
            pulls[0].head.as_str(),
            pulls[0].draft,
            pulls[0].token.as_str()
        ),
        ("airlock/issue-7", true, REAL_TOKEN)
    );
    assert_eq!(
        github
            .file_on_branch("acme", "widgets", "airlock/issue-7", "FIX.md")
            .as_deref(),
        Some("fixed by the agent\n")
    );
    let seen = github.seen();
    let push: Vec<_> = seen
        .iter()
        .filter(|s| s.path.ends_with("/git-receive-pack"))
        .collect();
    assert!(
        !push.is_empty() && push.iter().all(|s| s.token.as_deref() == Some(REAL_TOKEN)),
        "{seen:?}"
    );
    assert!(
        !log.contains(REAL_TOKEN),
        "the brain log holds the real token"
    );
}
