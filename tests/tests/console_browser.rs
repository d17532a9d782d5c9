//! The console in a real headless Chromium, driven over W3C WebDriver (`chromedriver`, plain
//! HTTP calls: no extra crate). Signs in, watches a scripted session's transcript grow, approves
//! a held request from the inbox (the sandbox's curl completes) and denies another (403),
//! filters the audit, and saves a screenshot of every page under `target/ui-screenshots/`.
//!
//! Skips when chromium/chromedriver are absent, unless `AIRLOCK_REQUIRE_BROWSER=1`.
//! Needs `cargo build -p brain -p sandbox-agent` first.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::upstream::{UNBOUND_HOST, Upstream};
use airlock_tests::vault::{REAL_TOKEN_ENV, write_vault_config};
use airlock_tests::{BrainOptions, BrainProcess};
use base64::Engine;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

struct Driver {
    child: Child,
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(chromium: &PathBuf, chromedriver: &PathBuf) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let http = airlock_tests::http_client();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": ["--headless=new", "--no-sandbox",
                "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
                "--no-proxy-server"]}}}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Driver {
            child,
            http,
            base,
            session,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(
            method,
            format!("{}/session/{}{path}", self.base, self.session),
        );
        r = r.json(&body.unwrap_or(json!({})));
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Waits for `css` to appear (bounded).
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never appeared:\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{e}/click"), None)
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn count(&self, css: &str) -> usize {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    /// Runs `script` in the page (W3C "Execute Script"), returning its value.
    async fn js(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The browser's view of cookie `name` (W3C "Get Named Cookie": httpOnly, sameSite, …).
    async fn cookie(&self, name: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await
    }

    async fn screenshot(&self, name: &str) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn curl(port: u16, path: &str) -> Value {
    json!({"command": format!("curl -sS -m 60 -o /dev/null -w '%{{http_code}}' https://{UNBOUND_HOST}:{port}{path}"),
           "timeout_s": 90})
}

#[tokio::test]
async fn the_console_in_chromium_approves_and_denies_held_requests() {
    let (Some(chromium), Some(driver)) = (which("chromium"), which("chromedriver")) else {
        assert!(
            std::env::var("AIRLOCK_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "AIRLOCK_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed"
        );
        eprintln!("skipping: chromium or chromedriver not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let vault = write_vault_config(dir.path(), &up);
    let script = json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "browser"}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": {"command": "echo first step; sleep 1; echo done"}}]},
        {"tool_calls": [{"id": "c3", "name": "sandbox_execute", "arguments": curl(up.port, "/browser-allow")}]},
        {"tool_calls": [{"id": "c4", "name": "sandbox_execute", "arguments": curl(up.port, "/browser-deny")}]},
        {"text": "finished"}
    ]});
    std::fs::write(dir.path().join("script.json"), script.to_string()).unwrap();
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\nvault:\n  config: {}\n",
            dir.path().join("script.json").display(),
            vault.display()
        ),
        env: vec![(REAL_TOKEN_ENV.into(), "ghp_realrealrealrealrealrealrealrealreal".into())],
        ..Default::default()
    })
    .await;
    let d = Driver::start(&chromium, &driver).await;

    // Sign in.
    d.goto(&brain.url("/ui/login")).await;
    d.screenshot("login").await;
    d.type_into("#key", &brain.master_key).await;
    d.click("button[type=submit]").await;
    d.wait_for("header form[action='/ui/logout']").await;

    let (_, v) = brain
        .post_json(
            "/v1/sessions",
            json!({"task": "fetch two hosts, one approved and one denied", "egress": "ask"}),
        )
        .await;
    let session = v["id"].as_str().unwrap().to_string();
    d.goto(&brain.url("/ui/sessions")).await;
    d.wait_for(&format!("a[href='/ui/sessions/{session}']"))
        .await;
    d.screenshot("sessions").await;

    // The transcript grows live on the session page (appended by app.js from the SSE stream).
    d.goto(&brain.url(&format!("/ui/sessions/{session}"))).await;
    let first = d.count("#events .ev").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.count("#events .ev").await <= first {
        assert!(Instant::now() < deadline, "transcript did not grow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Approve the first held request from the inbox, which follows its SSE stream.
    d.goto(&brain.url("/ui/approvals")).await;
    d.wait_for("#inbox[data-live='1']").await;
    d.wait_for("tr[data-approval]").await;
    assert!(d.source().await.contains("/browser-allow"));
    d.screenshot("approvals").await;
    d.click("tr[data-approval] button[value=allow_once]").await;
    // Deny the second one (the inbox refreshes itself).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.source().await.contains("/browser-deny") {
        assert!(Instant::now() < deadline, "second approval never showed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    d.click("tr[data-approval] button[value=deny]").await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = brain.get_json(&format!("/v1/sessions/{session}")).await;
        if s["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up.with_path("/browser-allow").len(), 1);
    assert!(up.with_path("/browser-deny").is_empty());
    d.goto(&brain.url(&format!("/ui/sessions/{session}"))).await;
    d.wait_for("#events .ev-tool_result").await;
    let page = d.source().await;
    assert!(
        page.contains("200") && page.contains("403"),
        "curl results shown"
    );
    d.screenshot("session").await;

    // The audit, filtered to denials of this session.
    d.goto(&brain.url(&format!("/ui/audit?session={session}&decision=deny")))
        .await;
    d.wait_for("table").await;
    let page = d.source().await;
    assert!(page.contains("deny by console:master"));
    assert!(!page.contains("allow_once by console:master"));
    // The chain status (verified in the background, never on the page load itself) and head.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        d.goto(&brain.url(&format!("/ui/audit?session={session}")))
            .await;
        d.wait_for("#chain-status").await;
        if d.source().await.contains("chain intact") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", d.source().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    d.wait_for("#chain-head").await;
    let (_, verify) = brain.get_json("/v1/audit/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
    d.screenshot("audit").await;
    // Credentials and their bindings, never a value.
    d.goto(&brain.url("/ui/credentials")).await;
    d.wait_for("tr[data-credential='GITHUB_TOKEN']").await;
    let page = d.source().await;
    assert!(
        page.contains(&format!("api.github.test:{}", up.port)),
        "{page}"
    );
    assert!(page.contains("header:authorization"), "{page}");
    assert!(!page.contains("ghp_real"), "a value reached the page");
    assert!(
        !page.contains(REAL_TOKEN_ENV),
        "where the value lives reached the page"
    );
    d.screenshot("credentials").await;
    d.goto(&brain.url("/ui/sandboxes")).await;
    d.wait_for("table").await;
    d.screenshot("sandboxes").await;
}

/// A virtual key signs in and sees only the sessions it started (the sessions list, a
/// session page, the nav), through the API as well; the cookie is `HttpOnly` and
/// `SameSite=Strict` as the browser holds it; a form whose CSRF token was removed is refused
/// (403) and changes nothing, the same form with its token works; sign-out ends the sign-in.
#[tokio::test]
async fn a_virtual_key_sees_only_its_sessions_and_forms_need_their_csrf_token() {
    let (Some(chromium), Some(driver)) = (which("chromium"), which("chromedriver")) else {
        assert!(
            std::env::var("AIRLOCK_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "AIRLOCK_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed"
        );
        eprintln!("skipping: chromium or chromedriver not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("script.json"),
        json!({"responses": [{"text": "finished"}]}).to_string(),
    )
    .unwrap();
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\n",
            dir.path().join("script.json").display(),
        ),
        ..Default::default()
    })
    .await;
    let mint = || async {
        let (status, v) = brain.post_json("/key/generate", json!({})).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{v}");
        v["key"].as_str().unwrap().to_string()
    };
    let (key_a, key_b) = (mint().await, mint().await);
    let start = |key: String, task: &'static str| {
        let brain = &brain;
        async move {
            let r = brain
                .http
                .post(brain.url("/v1/sessions"))
                .bearer_auth(&key)
                .json(&json!({"task": task}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), reqwest::StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let a = start(key_a.clone(), "task of key A").await;
    let b = start(key_b.clone(), "task of key B").await;
    // The API: key A lists and reads only its own sessions; other routes need the master key.
    let get = |key: &str, path: &str| {
        brain
            .http
            .get(brain.url(path))
            .bearer_auth(key.to_string())
            .send()
    };
    let list: Value = get(&key_a, "/v1/sessions")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, vec![a.as_str()], "{list}");
    for path in [
        format!("/v1/sessions/{b}"),
        format!("/v1/sessions/{b}/events"),
    ] {
        assert_eq!(
            get(&key_a, &path).await.unwrap().status(),
            reqwest::StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        get(&key_a, "/v1/sandboxes").await.unwrap().status(),
        reqwest::StatusCode::FORBIDDEN
    );
    let (_, all) = brain.get_json("/v1/sessions").await;
    assert_eq!(all["sessions"].as_array().unwrap().len(), 2, "{all}");

    let d = Driver::start(&chromium, &driver).await;
    d.goto(&brain.url("/ui/login")).await;
    d.type_into("#key", &key_a).await;
    d.click("button[type=submit]").await;
    d.wait_for("header form[action='/ui/logout']").await;
    let cookie = d.cookie("airlock_ui").await;
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert!(
        !d.js("return document.cookie")
            .await
            .as_str()
            .unwrap_or("")
            .contains("airlock_ui="),
        "page script can read the sign-in cookie"
    );
    d.goto(&brain.url("/ui/sessions")).await;
    d.wait_for(&format!("a[href='/ui/sessions/{a}']")).await;
    let page = d.source().await;
    assert!(
        !page.contains(&b) && !page.contains("task of key B"),
        "{page}"
    );
    assert_eq!(d.count("header a[href='/ui/audit']").await, 0);
    assert_eq!(d.count("header a[href='/ui/credentials']").await, 0);
    d.screenshot("sessions-virtual-key").await;
    d.goto(&brain.url(&format!("/ui/sessions/{b}"))).await;
    let page = d.source().await;
    assert!(
        page.contains("404") && !page.contains("task of key B"),
        "{page}"
    );
    d.goto(&brain.url("/ui/audit")).await;
    assert!(d.source().await.contains("needs the master key"));

    // A form without its CSRF token: refused, and nothing queued.
    d.goto(&brain.url(&format!("/ui/sessions/{a}"))).await;
    d.wait_for("form[action$='/messages'] textarea").await;
    d.js(
        "const f = document.querySelector(\"form[action$='/messages']\");
          f.querySelector('input[name=csrf]').remove();
          f.querySelector('textarea').value = 'sent without a token';
          f.submit();",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.source().await.contains("CSRF") {
        assert!(Instant::now() < deadline, "{}", d.source().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.screenshot("csrf-refused").await;
    // The same form with its token is accepted.
    d.goto(&brain.url(&format!("/ui/sessions/{a}"))).await;
    d.type_into("form[action$='/messages'] textarea", "sent with the token")
        .await;
    d.click("form[action$='/messages'] button").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ev) = brain.get_json(&format!("/v1/sessions/{a}/events")).await;
        let text = ev.to_string();
        assert!(!text.contains("sent without a token"), "{text}");
        if text.contains("sent with the token") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Sign out: back to the form, and the console asks to sign in again.
    d.goto(&brain.url("/ui/sessions")).await;
    d.click("header form[action='/ui/logout'] button").await;
    d.wait_for("#key").await;
    d.goto(&brain.url("/ui/sessions")).await;
    d.wait_for("#key").await;
}
