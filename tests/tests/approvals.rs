//! End to end: live egress approvals on a real `brain` (local backend, embedded vault proxy,
//! scripted model). A session started with `"egress":"ask"` runs `curl` to a host nobody
//! allowed; the proxy holds the request and the brain lists it at `GET /v1/approvals`;
//! `POST /v1/approvals/{id}` lets it complete (allow_once) or turns it into a 403 (deny), and
//! the proxy's audit log names the decision and who made it.
//!
//! Needs `cargo build -p brain -p sandbox-agent` first (see `airlock_tests::bin_path`).

use std::time::{Duration, Instant};

use airlock_tests::upstream::{UNBOUND_HOST, Upstream};
use airlock_tests::vault::{REAL_TOKEN_ENV, audit_log_path, write_vault_config};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use serde_json::{Value, json};

async fn brain(dir: &std::path::Path, up: &Upstream, script: &Value) -> BrainProcess {
    let vault = write_vault_config(dir, up);
    std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
    BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\nvault:\n  config: {}\n",
            dir.join("script.json").display(),
            vault.display()
        ),
        env: vec![(REAL_TOKEN_ENV.into(), "ghp_realrealrealrealrealrealrealrealreal".into())],
        ..Default::default()
    })
    .await
}

/// Waits for one pending approval whose path is `path`.
async fn pending(brain: &BrainProcess, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = brain.get_json("/v1/approvals").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if let Some(a) = v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["path"] == path)
        {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no approval for {path}: {v}\n{}",
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn curl(port: u16, path: &str) -> Value {
    json!({"command": format!("curl -sS -m 60 -o /dev/null -w '%{{http_code}}' https://{UNBOUND_HOST}:{port}{path}"),
           "timeout_s": 90})
}

#[tokio::test]
async fn a_held_request_completes_when_allowed_and_gets_403_when_denied() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let script = json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "ask"}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": curl(up.port, "/approved")}]},
        {"tool_calls": [{"id": "c3", "name": "sandbox_execute", "arguments": curl(up.port, "/denied")}]},
        {"text": "done"}
    ]});
    let brain = brain(dir.path(), &up, &script).await;

    // Bad egress values are refused before anything starts.
    for bad in [json!("allow"), json!({"allow_hosts": ["*.com"]}), json!(7)] {
        let (status, v) = brain
            .post_json("/v1/sessions", json!({"task": "x", "egress": bad}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    }

    let (status, v) = brain
        .post_json("/v1/sessions", json!({"task": "fetch", "egress": "ask"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let session = v["id"].as_str().unwrap().to_string();

    let a = pending(&brain, "/approved").await;
    assert_eq!(a["host"], UNBOUND_HOST);
    assert_eq!(a["session"], session.as_str());
    assert!(up.with_path("/approved").is_empty(), "held, not sent");
    let (status, v) = brain
        .post_json(
            &format!("/v1/approvals/{}", a["id"].as_str().unwrap()),
            json!({"decision": "allow_once", "by": "tester"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Answered: a second answer finds nothing.
    let (status, _) = brain
        .post_json(
            &format!("/v1/approvals/{}", a["id"].as_str().unwrap()),
            json!({"decision": "deny"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let d = pending(&brain, "/denied").await;
    let (status, _) = brain
        .post_json(
            &format!("/v1/approvals/{}", d["id"].as_str().unwrap()),
            json!({"decision": "deny", "by": "tester"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The session's two curls: 200 after the allow, 403 after the deny.
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let (_, s) = brain.get_json(&format!("/v1/sessions/{session}")).await;
        if matches!(
            s["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["status"], "succeeded", "{s}");
    let (_, ev) = brain
        .get_json(&format!("/v1/sessions/{session}/events"))
        .await;
    let outs: Vec<String> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "tool_result" && e["data"]["name"] == "sandbox_execute")
        .map(|e| e["data"].to_string())
        .collect();
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert!(outs[0].contains("200"), "{}", outs[0]);
    assert!(outs[1].contains("403"), "{}", outs[1]);
    assert_eq!(up.with_path("/approved").len(), 1);
    assert!(up.with_path("/denied").is_empty());

    // Audited: who decided what, tied to the session.
    let (status, recs) = brain
        .get_json(&format!("/v1/audit/egress?session={session}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{recs}");
    let approvals: Vec<(String, String)> = recs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "approval")
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        approvals,
        [
            ("allow".to_string(), "allow_once by api:tester".to_string()),
            ("deny".to_string(), "deny by api:tester".to_string()),
        ]
    );
    assert!(audit_log_path(dir.path()).exists());
}

#[tokio::test]
async fn a_session_allow_list_lets_its_hosts_through_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let script = json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "list"}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": curl(up.port, "/listed")}]},
        {"text": "done"}
    ]});
    let brain = brain(dir.path(), &up, &script).await;
    let (status, v) = brain
        .post_json(
            "/v1/sessions",
            json!({"task": "fetch", "egress": {"allow_hosts": [UNBOUND_HOST]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let session = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = brain.get_json(&format!("/v1/sessions/{session}")).await;
        if s["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.with_path("/listed").len(), 1);
    let (_, v) = brain.get_json("/v1/approvals").await;
    assert_eq!(v["approvals"], json!([]));
}

/// `application/x-www-form-urlencoded` as a browser sends it.
fn enc(pairs: &[(&str, &str)]) -> String {
    let pct = |v: &str| -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of `name="csrf"` in a page.
fn csrf_of(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[i..i + html[i..].find('"').unwrap()].to_string()
}

fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// The console over plain HTTP (no browser): sign-in, CSRF, the approvals inbox answering a
/// held request, the audit filter showing who decided.
#[tokio::test]
async fn console_signs_in_refuses_forms_without_csrf_and_answers_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let script = json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "ui"}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": curl(up.port, "/from-ui")}]},
        {"text": "done"}
    ]});
    let brain = brain(dir.path(), &up, &script).await;
    airlock_tests::install_crypto_provider();
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Not signed in: every page redirects to the sign-in form.
    let r = c.get(brain.url("/ui/sessions")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/ui/login");

    let r = c.get(brain.url("/ui/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.starts_with("default-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let login_cookie = set_cookie(&r, "airlock_ui_login").unwrap();
    let login_cookie = login_cookie.split(';').next().unwrap().to_string();
    let html = r.text().await.unwrap();
    assert!(!html.contains("<script>") && html.contains("/ui/static/app.js"));
    let token = csrf_of(&html);

    // Without the form's CSRF token: refused. With a wrong key: 401.
    let r = c
        .post(brain.url("/ui/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(enc(&[("key", brain.master_key.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .post(brain.url("/ui/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(enc(&[("key", "wrong"), ("csrf", token.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(brain.url("/ui/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(enc(&[
            ("key", brain.master_key.as_str()),
            ("csrf", token.as_str()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let sc = set_cookie(&r, "airlock_ui").unwrap();
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Strict"),
        "{sc}"
    );
    assert!(
        !sc.contains(&brain.master_key),
        "the key is never in the cookie"
    );
    let cookie = sc.split(';').next().unwrap().to_string();
    let get = |path: &str| c.get(brain.url(path)).header("cookie", &cookie).send();

    let (_, v) = brain
        .post_json(
            "/v1/sessions",
            json!({"task": "fetch from the ui", "egress": "ask"}),
        )
        .await;
    let session = v["id"].as_str().unwrap().to_string();
    let html = get("/ui/sessions").await.unwrap().text().await.unwrap();
    assert!(
        html.contains(&session) && html.contains("fetch from the ui"),
        "{html}"
    );
    let a = pending(&brain, "/from-ui").await;
    let id = a["id"].as_str().unwrap();
    let html = get("/ui/approvals").await.unwrap().text().await.unwrap();
    assert!(html.contains(id) && html.contains(UNBOUND_HOST), "{html}");
    let csrf = csrf_of(&html);

    // A decision without the CSRF token is refused and changes nothing.
    let r = c
        .post(brain.url(&format!("/ui/approvals/{id}")))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(enc(&[("decision", "allow_once")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(pending(&brain, "/from-ui").await["id"], id);
    let r = c
        .post(brain.url(&format!("/ui/approvals/{id}")))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(enc(&[("decision", "allow_once"), ("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = brain.get_json(&format!("/v1/sessions/{session}")).await;
        if s["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.with_path("/from-ui").len(), 1);
    let html = get(&format!("/ui/sessions/{session}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("tool_result") && html.contains("200"),
        "{html}"
    );

    // The audit page, filtered to this session's allowed records, shows who decided.
    let html = get(&format!("/ui/audit?session={session}&decision=allow"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("allow_once by console:master"), "{html}");
    let html = get(&format!("/ui/audit?session={session}&decision=deny"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("allow_once by console:master"));
    let jsonl = get(&format!("/ui/audit.jsonl?session={session}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        jsonl
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
    assert!(jsonl.contains("\"event\":\"approval\""));

    // Sign-out ends the sign-in (needs the CSRF token too).
    let r = c
        .post(brain.url("/ui/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(enc(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = get("/ui/sessions").await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

/// Slack: a Slack-started session's held request is posted in its thread with buttons; a
/// signed `block_actions` click on `/hooks/slack/interactive` answers it (an unsigned one is
/// refused), and the audit names the Slack user.
#[tokio::test]
async fn a_slack_thread_gets_the_approval_and_its_button_answers_it() {
    use airlock_tests::fake_slack::{FakeSlack, sign};
    const SECRET: &str = "approvals-slack-secret";
    const BOT: &str = "xoxb-approvals-bot";
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let vault = write_vault_config(dir.path(), &up);
    let yaml = std::fs::read_to_string(&vault)
        .unwrap()
        .replace("default: deny", "default: ask");
    std::fs::write(&vault, yaml).unwrap();
    let script = json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "slack"}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": curl(up.port, "/from-slack")}]},
        {"text": "done"}
    ]});
    std::fs::write(dir.path().join("script.json"), script.to_string()).unwrap();
    let fake = FakeSlack::start(BOT).await;
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\nvault:\n  config: {}\ntriggers:\n  slack:\n    api_base_url: {}\n    bot_user_id: UBOT\n",
            dir.path().join("script.json").display(),
            vault.display(),
            fake.base_url
        ),
        env: vec![
            (REAL_TOKEN_ENV.into(), "ghp_realrealrealrealrealrealrealrealreal".into()),
            ("SLACK_SIGNING_SECRET".into(), SECRET.into()),
            ("SLACK_BOT_TOKEN".into(), BOT.into()),
        ],
        ..Default::default()
    })
    .await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string()
    };
    let send = |path: &'static str, ctype: &'static str, body: String, secret: &'static str| {
        let ts = now();
        brain
            .http
            .post(brain.url(path))
            .header("content-type", ctype)
            .header("x-slack-request-timestamp", &ts)
            .header("x-slack-signature", sign(secret, &ts, body.as_bytes()))
            .body(body)
            .send()
    };
    let mention = json!({"type": "event_callback", "token": "unused", "team_id": "T1",
        "api_app_id": "A1", "event_id": "Ev1", "event_time": 1,
        "event": {"type": "app_mention", "user": "U1", "text": "<@UBOT> fetch it", "ts": "100.1",
                  "channel": "C1", "event_ts": "100.1"}});
    let r = send(
        "/hooks/slack",
        "application/json",
        mention.to_string(),
        SECRET,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let a = pending(&brain, "/from-slack").await;
    let id = a["id"].as_str().unwrap().to_string();
    // Posted in the session's thread, naming the host.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fake
        .thread("C1", "100.1")
        .iter()
        .any(|m| m.text.contains(&format!("wants to reach {UNBOUND_HOST}")))
    {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            fake.posted(),
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let payload = json!({"type": "block_actions", "user": {"id": "U7", "username": "alice"},
        "channel": {"id": "C1"}, "container": {"type": "message", "thread_ts": "100.1"},
        "actions": [{"type": "button", "action_id": "airlock_approval_allow_once",
                     "value": format!("{id}:allow_once")}]});
    let form = enc(&[("payload", &payload.to_string())]);
    let ct = "application/x-www-form-urlencoded";
    // A wrong signature changes nothing.
    let r = send(
        "/hooks/slack/interactive",
        ct,
        form.clone(),
        "not-the-secret",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(pending(&brain, "/from-slack").await["id"], id.as_str());
    // From another channel: refused.
    let other = enc(&[("payload", &payload.to_string().replace("\"C1\"", "\"C9\""))]);
    let r = send("/hooks/slack/interactive", ct, other, SECRET)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send("/hooks/slack/interactive", ct, form, SECRET)
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    while up.with_path("/from-slack").is_empty() {
        assert!(Instant::now() < deadline, "{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, recs) = brain.get_json("/v1/audit/egress").await;
    assert!(
        recs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"] == "approval" && r["reason"] == "allow_once by slack:U7"),
        "{recs}"
    );
}

/// GitHub: a GitHub-started session's held request is commented on its issue; a
/// `/airlock allow <host>` comment (a signed `issue_comment` webhook) from a user without
/// write access changes nothing, one from a writer lets the sandbox's `curl` complete, and
/// the audit names the GitHub user. The fake GitHub follows GitHub's REST docs
/// (`airlock_tests::fake_github`: collaborator permission, issue comments).
#[tokio::test]
async fn a_github_issue_gets_the_approval_and_a_writers_comment_answers_it() {
    use airlock_tests::fake_github::{FakeGithub, sign};
    const SECRET: &str = "approvals-github-secret";
    const BRAIN_TOKEN: &str = "ghp_brainbrainbrainbrainbrainbrainbrain1";
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let vault = write_vault_config(dir.path(), &up);
    let yaml = std::fs::read_to_string(&vault)
        .unwrap()
        .replace("default: deny", "default: ask");
    std::fs::write(&vault, yaml).unwrap();
    let github = FakeGithub::start(&[BRAIN_TOKEN]).await;
    github.create_repo("acme", "widgets");
    github.set_permission("acme/widgets", "alice", "write");
    github.set_permission("acme/widgets", "mallory", "read");
    std::fs::write(dir.path().join("github-ca.pem"), &github.ca_pem).unwrap();
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "vault:\n  config: {vault}\n\
             triggers:\n  launcher: shell\n  reply_retry_base_ms: 100\n  reply_retry_max_ms: 1000\n  \
             github:\n    api_base_url: {direct}\n    ca_file: {ca}\n    git_host: {git}\n    credential: GITHUB_TOKEN\n",
            vault = vault.display(),
            direct = github.direct_api_url(),
            ca = dir.path().join("github-ca.pem").display(),
            git = github.git_host(),
        ),
        env: vec![
            (REAL_TOKEN_ENV.into(), "ghp_realrealrealrealrealrealrealrealreal".into()),
            ("GITHUB_WEBHOOK_SECRET".into(), SECRET.into()),
            ("AIRLOCK_GITHUB_TOKEN".into(), BRAIN_TOKEN.into()),
        ],
        ..Default::default()
    })
    .await;
    let send = |event: &'static str, delivery: String, body: Value| {
        let body = body.to_string();
        brain
            .http
            .post(brain.url("/hooks/github"))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(SECRET, body.as_bytes()))
            .body(body)
            .send()
    };
    let repo = json!({"full_name": "acme/widgets", "name": "widgets", "default_branch": "main",
                      "owner": {"login": "acme"}});
    let issue = json!({"number": 7, "title": "Fetch it", "state": "open",
        "body": format!("curl -sS -m 60 -o /dev/null -w '%{{http_code}}' https://{UNBOUND_HOST}:{}/from-github", up.port),
        "labels": [{"name": "airlock"}], "user": {"login": "alice", "type": "User"}});
    let r = send(
        "issues",
        "d-1".into(),
        json!({"action": "labeled", "label": {"name": "airlock"}, "issue": issue,
               "repository": repo, "sender": {"login": "alice", "type": "User"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let a = pending(&brain, "/from-github").await;
    // Commented on the issue, naming the host and how to answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !github
        .comments()
        .iter()
        .any(|c| c.issue == 7 && c.body.contains(&format!("/airlock allow {UNBOUND_HOST}")))
    {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            github.comments(),
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let comment = |id: u64, who: &str, text: String| {
        json!({"action": "created", "issue": issue, "repository": repo,
               "comment": {"id": id, "body": text, "user": {"login": who, "type": "User"}},
               "sender": {"login": who, "type": "User"}})
    };
    // A reader cannot answer: told so, and the request stays held.
    let r = send(
        "issue_comment",
        "d-2".into(),
        comment(901, "mallory", format!("/airlock allow {UNBOUND_HOST}")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !github
        .comments()
        .iter()
        .any(|c| c.body.contains("@mallory: only users with write access"))
    {
        assert!(Instant::now() < deadline, "{:?}", github.comments());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending(&brain, "/from-github").await["id"], a["id"]);
    assert!(up.with_path("/from-github").is_empty());
    // A writer allows the host for the session: the held curl completes.
    let r = send(
        "issue_comment",
        "d-3".into(),
        comment(902, "alice", format!("/airlock allow {UNBOUND_HOST}")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(60);
    while up.with_path("/from-github").is_empty() {
        assert!(Instant::now() < deadline, "{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !github
        .comments()
        .iter()
        .any(|c| c.body.contains("@alice chose `allow_session`"))
    {
        assert!(Instant::now() < deadline, "{:?}", github.comments());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, recs) = brain.get_json("/v1/audit/egress").await;
    assert!(
        recs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"] == "approval" && r["reason"] == "allow_session by github:alice"),
        "{recs}"
    );
    assert!(
        !recs
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"].as_str().unwrap_or("").contains("mallory")),
        "{recs}"
    );
}

/// A standalone `vault-proxy serve` on free ports with the admin token `admin_token`; killed
/// on drop.
struct StandaloneProxy {
    child: std::process::Child,
    proxy: String,
    admin: String,
}

impl Drop for StandaloneProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn standalone_proxy(
    dir: &std::path::Path,
    up: &Upstream,
    admin_token: &str,
) -> StandaloneProxy {
    let vault = write_vault_config(dir, up);
    let (p, a) = (free_port(), free_port());
    let yaml = std::fs::read_to_string(&vault)
        .unwrap()
        .replace("default: deny", "default: ask")
        .replace(
            "listen: 127.0.0.1:0\n",
            &format!("listen: 127.0.0.1:{p}\nadmin_listen: 127.0.0.1:{a}\nadmin_token_env: TEST_VAULT_ADMIN\n"),
        );
    std::fs::write(&vault, yaml).unwrap();
    let child = std::process::Command::new(airlock_tests::bin_path("vault-proxy"))
        .arg("serve")
        .arg("--config")
        .arg(&vault)
        .current_dir(dir)
        .env("TEST_VAULT_ADMIN", admin_token)
        .env(REAL_TOKEN_ENV, "ghp_realrealrealrealrealrealrealrealreal")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("vault.log")).unwrap())
        .spawn()
        .unwrap();
    let sp = StandaloneProxy {
        child,
        proxy: format!("127.0.0.1:{p}"),
        admin: format!("http://127.0.0.1:{a}"),
    };
    let http = airlock_tests::http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{}/healthz", sp.admin))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "vault-proxy did not start: {}",
            std::fs::read_to_string(dir.join("vault.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sp
}

/// Signs in to the console over HTTP; returns the `airlock_ui=…` cookie.
async fn sign_in(c: &reqwest::Client, brain: &BrainProcess) -> String {
    let r = c.get(brain.url("/ui/login")).send().await.unwrap();
    let login_cookie = set_cookie(&r, "airlock_ui_login").unwrap();
    let login_cookie = login_cookie.split(';').next().unwrap().to_string();
    let token = csrf_of(&r.text().await.unwrap());
    let r = c
        .post(brain.url("/ui/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(enc(&[
            ("key", brain.master_key.as_str()),
            ("csrf", token.as_str()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let sc = set_cookie(&r, "airlock_ui").unwrap();
    sc.split(';').next().unwrap().to_string()
}

/// With a remote vault proxy (`vault.mode: remote`) an approval outlives a brain restart. Its
/// GitHub prompt is posted once: the restarted brain finds it already queued (persisted per
/// approval) and does not comment again, while it still prompts for a new approval. The
/// console's credentials page shows the remote proxy's bindings (its admin API), never a value.
#[tokio::test]
async fn a_github_prompt_is_posted_once_across_a_brain_restart_with_a_remote_vault() {
    use airlock_tests::fake_github::{FakeGithub, sign};
    const SECRET: &str = "approvals-restart-secret";
    const BRAIN_TOKEN: &str = "ghp_brainbrainbrainbrainbrainbrainbrain2";
    const ADMIN: &str = "vault-admin-token-for-the-restart-test";
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let vault = standalone_proxy(dir.path(), &up, ADMIN).await;
    let github = FakeGithub::start(&[BRAIN_TOKEN]).await;
    github.create_repo("acme", "widgets");
    github.set_permission("acme/widgets", "alice", "write");
    std::fs::write(dir.path().join("github-ca.pem"), &github.ca_pem).unwrap();
    std::fs::write(
        dir.path().join("script.json"),
        json!({"responses": [{"text": "looking into it"}]}).to_string(),
    )
    .unwrap();
    let mut brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{script}\n\
             vault:\n  mode: remote\n  remote:\n    url: {proxy}\n    admin_url: {admin}\n    admin_token_env: TEST_VAULT_ADMIN\n\
             triggers:\n  reply_retry_base_ms: 100\n  reply_retry_max_ms: 1000\n  \
             github:\n    api_base_url: {direct}\n    ca_file: {ca}\n    git_host: {git}\n    credential: GITHUB_TOKEN\n",
            script = dir.path().join("script.json").display(),
            proxy = vault.proxy,
            admin = vault.admin,
            direct = github.direct_api_url(),
            ca = dir.path().join("github-ca.pem").display(),
            git = github.git_host(),
        ),
        env: vec![
            ("TEST_VAULT_ADMIN".into(), ADMIN.into()),
            ("GITHUB_WEBHOOK_SECRET".into(), SECRET.into()),
            ("AIRLOCK_GITHUB_TOKEN".into(), BRAIN_TOKEN.into()),
        ],
        ..Default::default()
    })
    .await;
    // A GitHub-started session.
    let repo = json!({"full_name": "acme/widgets", "name": "widgets", "default_branch": "main",
                      "owner": {"login": "acme"}});
    let issue = json!({"number": 9, "title": "Fetch it", "state": "open", "body": "please fetch",
        "labels": [{"name": "airlock"}], "user": {"login": "alice", "type": "User"}});
    let body = json!({"action": "labeled", "label": {"name": "airlock"}, "issue": issue,
                      "repository": repo, "sender": {"login": "alice", "type": "User"}})
    .to_string();
    let r = brain
        .http
        .post(brain.url("/hooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "issues")
        .header("x-github-delivery", "restart-1")
        .header("x-hub-signature-256", sign(SECRET, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let (_, v) = brain.get_json("/v1/sessions?origin=github").await;
        if let Some(id) = v["sessions"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "{v}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A sandbox of that session (a grant on the remote proxy) asks for a new host: the request
    // is held by the proxy, which outlives the brain.
    let http = airlock_tests::http_client();
    let grant: Value = http
        .post(format!("{}/v1/grants", vault.admin))
        .bearer_auth(ADMIN)
        .json(&json!({"sandbox": "sb-held", "credentials": [], "session": session}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = grant["token"].as_str().unwrap_or_else(|| panic!("{grant}"));
    let ca = http
        .get(format!("{}/v1/ca", vault.admin))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(dir.path().join("proxy-ca.pem"), ca).unwrap();
    let held = |path: &str| {
        ChildGuard(
            std::process::Command::new("curl")
                .args(["-sS", "-m", "100", "-o", "/dev/null", "--cacert"])
                .arg(dir.path().join("proxy-ca.pem"))
                .arg("--proxy")
                .arg(format!("http://sb-held:{token}@{}", vault.proxy))
                .arg(format!("https://{UNBOUND_HOST}:{}{path}", up.port))
                .env_remove("https_proxy")
                .env_remove("HTTPS_PROXY")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _first = held("/held-across-restart");
    let a = pending(&brain, "/held-across-restart").await;
    let prompts = |path: &str| {
        github
            .comments()
            .iter()
            .filter(|c| c.issue == 9 && c.body.contains("wants to reach") && c.body.contains(path))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while prompts("/held-across-restart") == 0 {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            github.comments(),
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    brain.restart().await;
    // Still held by the proxy, under the same id.
    assert_eq!(pending(&brain, "/held-across-restart").await["id"], a["id"]);
    // The restarted brain prompts for a new approval (its loop runs)…
    let _second = held("/asked-after-restart");
    pending(&brain, "/asked-after-restart").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while prompts("/asked-after-restart") == 0 {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            github.comments(),
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and not again for the one it had prompted for before the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        prompts("/held-across-restart"),
        1,
        "{:?}",
        github.comments()
    );
    assert_eq!(
        prompts("/asked-after-restart"),
        1,
        "{:?}",
        github.comments()
    );

    // The credentials page with the remote proxy: its bindings, no value.
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = sign_in(&c, &brain).await;
    let html = c
        .get(brain.url("/ui/credentials"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("data-credential=\"GITHUB_TOKEN\""), "{html}");
    assert!(
        html.contains(&format!("api.github.test:{}", up.port)),
        "{html}"
    );
    assert!(
        !html.contains("ghp_real") && !html.contains(REAL_TOKEN_ENV),
        "{html}"
    );

    // Release the held requests.
    let (_, v) = brain.get_json("/v1/approvals").await;
    for a in v["approvals"].as_array().unwrap() {
        let id = a["id"].as_str().unwrap();
        brain
            .post_json(&format!("/v1/approvals/{id}"), json!({"decision": "deny"}))
            .await;
    }
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
