//! The console in a real headless Chromium, driven over W3C WebDriver (`chromedriver`, plain
//! HTTP calls: no extra crate). Signs in, watches a scripted session's transcript grow, approves
//! a held request from the inbox (the sandbox's curl completes) and denies another (403),
//! filters the audit, and saves a screenshot of every page under `target/ui-screenshots/`.
//!
//! Skips when chromium/chromedriver are absent, unless `AIRLOCK_REQUIRE_BROWSER=1`.
//! Needs `cargo build -p brain -p sandbox-agent` first.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::upstream::{UNBOUND_HOST, Upstream};
use airlock_tests::vault::{REAL_TOKEN_ENV, write_vault_config};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
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
    /// Ends the WebDriver session first, so that chromedriver quits the browser it started:
    /// killing chromedriver alone left every Chromium of the run behind, reparented to init
    /// and still using CPU (seen: 84 processes after one suite). Then the whole process group
    /// (chromedriver runs in one of its own, and Chromium inherits it) is killed, in case the
    /// session could not be ended (a test that panicked mid-call, a hung browser).
    fn drop(&mut self) {
        let _ = end_session(&self.base, &self.session);
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `DELETE /session/{id}` over a plain blocking socket (Drop cannot await), bounded by 10 s.
fn end_session(base: &str, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    Ok(())
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
            .process_group(0)
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

/// chromium and chromedriver, or `None` (skip) unless `AIRLOCK_REQUIRE_BROWSER=1`.
fn browser() -> Option<(PathBuf, PathBuf)> {
    match (which("chromium"), which("chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var("AIRLOCK_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "AIRLOCK_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed"
            );
            eprintln!("skipping: chromium or chromedriver not installed");
            None
        }
    }
}

/// A fresh PostgreSQL database, or `None` (skip) when `AIRLOCK_TEST_POSTGRES_URL` is unset.
async fn postgres() -> Option<String> {
    let url = airlock_tests::fresh_postgres_database().await;
    if url.is_none() {
        eprintln!("skipping the PostgreSQL run: AIRLOCK_TEST_POSTGRES_URL is not set");
    }
    url
}

/// Signs in with `key` through the form.
async fn sign_in(d: &Driver, brain: &BrainProcess, key: &str) {
    d.goto(&brain.url("/ui/login")).await;
    d.type_into("#key", key).await;
    d.click("button[type=submit]").await;
    d.wait_for("header form[action='/ui/logout']").await;
}

#[tokio::test]
async fn the_console_in_chromium_approves_and_denies_held_requests() {
    approves_and_denies(None, "").await;
}

/// The same on a brain whose store is PostgreSQL: the sessions list, the transcript, the
/// inbox, the audit filter and the chain status (heads recorded in the database).
#[tokio::test]
async fn the_console_on_postgres_approves_denies_and_filters_the_audit() {
    if let Some(url) = postgres().await {
        approves_and_denies(Some(url), "pg-").await;
    }
}

async fn approves_and_denies(database_url: Option<String>, shot: &str) {
    let Some((chromium, driver)) = browser() else {
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
        database_url,
        ..Default::default()
    })
    .await;
    let d = Driver::start(&chromium, &driver).await;
    let shot = |name: &str| format!("{shot}{name}");

    // Sign in.
    d.goto(&brain.url("/ui/login")).await;
    d.screenshot(&shot("login")).await;
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
    d.screenshot(&shot("sessions")).await;

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
    d.screenshot(&shot("approvals")).await;
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
    d.screenshot(&shot("session")).await;

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
    d.screenshot(&shot("audit")).await;
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
    d.screenshot(&shot("credentials")).await;
    d.goto(&brain.url("/ui/sandboxes")).await;
    d.wait_for("table").await;
    d.screenshot(&shot("sandboxes")).await;
}

/// A virtual key signs in and sees only the sessions it started (the sessions list, a
/// session page, the nav), through the API as well; the cookie is `HttpOnly` and
/// `SameSite=Strict` as the browser holds it; a form whose CSRF token was removed is refused
/// (403) and changes nothing, the same form with its token works; sign-out ends the sign-in.
#[tokio::test]
async fn a_virtual_key_sees_only_its_sessions_and_forms_need_their_csrf_token() {
    let Some((chromium, driver)) = browser() else {
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

/// A brain with the scripted model `script` (and `extra` YAML), on `database_url`.
async fn scripted_brain(
    dir: &std::path::Path,
    script: Value,
    extra: &str,
    database_url: Option<String>,
    env: Vec<(String, String)>,
) -> BrainProcess {
    std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
    BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\n{extra}",
            dir.join("script.json").display(),
        ),
        database_url,
        env,
        ..Default::default()
    })
    .await
}

/// Rows of the sessions table on the page.
async fn session_rows(d: &Driver) -> Vec<String> {
    let v = d
        .js("return Array.from(document.querySelectorAll('#sessions tbody tr')).map(r => r.textContent)")
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// The sessions list filters, searches and pages in the database: the search form finds the
/// sessions whose task matches on every page (not just the first), status and origin narrow
/// it, "Older →" continues where the page ended, on SQLite and on PostgreSQL.
#[tokio::test]
async fn the_sessions_list_filters_searches_and_pages_in_the_database() {
    sessions_filter_and_pages(None, "").await;
}

#[tokio::test]
async fn the_sessions_list_filters_searches_and_pages_on_postgres() {
    if let Some(url) = postgres().await {
        sessions_filter_and_pages(Some(url), "pg-").await;
    }
}

async fn sessions_filter_and_pages(database_url: Option<String>, shot: &str) {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let brain = scripted_brain(
        dir.path(),
        json!({"responses": [{"text": "finished"}]}),
        "",
        database_url,
        vec![],
    )
    .await;
    const N: usize = 70;
    // The needles are the oldest sessions: a search confined to the first page would miss them.
    for i in 0..N {
        let task = if i < 12 {
            format!("Needle deploy {i}")
        } else {
            format!("routine chore {i}")
        };
        let (status, v) = brain.post_json("/v1/sessions", json!({"task": task})).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        // `created_at` has millisecond resolution and ties are ordered by the (random) id: on a
        // fast machine two sessions can share a millisecond, and "newest first" below would
        // then be a coin toss between them.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = brain
            .get_json("/v1/sessions?status=succeeded&limit=200")
            .await;
        if v["sessions"].as_array().unwrap().len() == N {
            break;
        }
        assert!(Instant::now() < deadline, "{v}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let d = Driver::start(&chromium, &driver).await;
    sign_in(&d, &brain, &brain.master_key).await;

    // Newest first, 50 to a page; "Older →" shows the rest.
    d.goto(&brain.url("/ui/sessions")).await;
    d.wait_for("#sessions tbody tr").await;
    let first = session_rows(&d).await;
    assert_eq!(first.len(), 50);
    assert!(first[0].contains("routine chore 69"), "{}", first[0]);
    d.click("#older").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.count("#sessions tbody tr").await != N - 50 {
        assert!(Instant::now() < deadline, "{}", d.source().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = session_rows(&d).await;
    assert!(second.iter().all(|r| !first.contains(r)));
    assert_eq!(
        second
            .iter()
            .filter(|r| r.contains("Needle deploy"))
            .count(),
        12
    );
    assert_eq!(d.count("#older").await, 0);

    // The search form (any case): all twelve needles, from past the first page.
    d.goto(&brain.url("/ui/sessions")).await;
    d.type_into("form.filters input[name=q]", "nEEDLE").await;
    d.click("form.filters button[type=submit]").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.count("#sessions tbody tr").await != 12 {
        assert!(Instant::now() < deadline, "{}", d.source().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let found = session_rows(&d).await;
    assert_eq!(found.len(), 12, "{found:?}");
    assert!(
        found.iter().all(|r| r.contains("Needle deploy")),
        "{found:?}"
    );
    d.screenshot(&format!("{shot}sessions-search")).await;
    // Filters with the search: status and origin.
    d.goto(&brain.url("/ui/sessions?status=succeeded&origin=api&q=chore"))
        .await;
    d.wait_for("#sessions tbody tr").await;
    assert_eq!(session_rows(&d).await.len(), 50);
    d.goto(&brain.url("/ui/sessions?status=failed&q=chore"))
        .await;
    d.wait_for("#sessions .empty").await;
    d.goto(&brain.url("/ui/sessions?origin=slack")).await;
    d.wait_for("#sessions .empty").await;
    // LIKE wildcards are literal.
    d.goto(&brain.url("/ui/sessions?q=%25")).await;
    d.wait_for("#sessions .empty").await;
}

/// A running command's output reaches the session page while it runs: a command prints a
/// line, sleeps, prints another; the first line shows in the transcript before the command
/// has ended (no `tool_result` yet, the second line not printed), then the result replaces the
/// live block.
#[tokio::test]
async fn exec_output_appears_in_the_transcript_while_the_command_runs() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let brain = scripted_brain(
        dir.path(),
        json!({"responses": [
            {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "live"}}]},
            {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments":
                {"command": "sleep 4; echo early-line-$((6*7)); sleep 8; echo late-line-$((6*8))", "timeout_s": 60}}]},
            {"text": "finished"}
        ]}),
        "",
        None,
        vec![],
    )
    .await;
    let d = Driver::start(&chromium, &driver).await;
    sign_in(&d, &brain, &brain.master_key).await;
    let (_, v) = brain
        .post_json("/v1/sessions", json!({"task": "print slowly"}))
        .await;
    let session = v["id"].as_str().unwrap().to_string();
    d.goto(&brain.url(&format!("/ui/sessions/{session}"))).await;
    d.wait_for("#events").await;
    let live = ".ev-running[data-call='c2']";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = d
            .js(&format!(
                "const e = document.querySelector(\"{live}\"); return e ? e.textContent : ''"
            ))
            .await;
        if text.as_str().unwrap_or("").contains("early-line-42") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live output:\n{}\n{}",
            d.source().await,
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The command is still running: its result is not in the log, its last line not printed.
    let (_, ev) = brain
        .get_json(&format!("/v1/sessions/{session}/events"))
        .await;
    assert!(
        !ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "tool_result" && e["data"]["call_id"] == "c2"),
        "the command had ended already: {ev}"
    );
    assert!(!d.source().await.contains("late-line-48"));
    d.js(&format!(
        "document.querySelector(\"{live}\").scrollIntoView()"
    ))
    .await;
    d.screenshot("session-live-output").await;
    // When it ends, the result (both lines) replaces the live block.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(d.source().await.contains("late-line-48") && d.count(live).await == 0) {
        assert!(Instant::now() < deadline, "{}", d.source().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.count("#events .ev-tool_result").await >= 2);
}

/// Reads a proxy's answer to `CONNECT` with the grant `user:token` (status line only).
async fn connect_status(proxy: &str, user: &str, token: &str, target: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
    s.write_all(
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("the proxy answers CONNECT")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// "Destroy" on the sandboxes page destroys a real (local backend) sandbox: its row says
/// destroyed, its agent process is gone, and its vault grant is revoked (the proxy refuses
/// the sandbox's proxy credentials that worked before).
#[tokio::test]
async fn destroying_a_sandbox_from_the_console_revokes_its_grant() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let vault = write_vault_config(dir.path(), &up);
    let brain = scripted_brain(
        dir.path(),
        json!({"responses": [{"text": "finished"}]}),
        &format!("vault:\n  config: {}\n", vault.display()),
        None,
        vec![(
            REAL_TOKEN_ENV.into(),
            "ghp_realrealrealrealrealrealrealrealreal".into(),
        )],
    )
    .await;
    let (status, v) = brain
        .post_json(
            "/v1/sandboxes",
            json!({"task_description": "to destroy", "credentials": ["GITHUB_TOKEN"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (_, out) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "printenv HTTPS_PROXY"}),
        )
        .await;
    // http://<sandbox>:<token>@<proxy>
    let url = out["stdout"].as_str().unwrap().trim().to_string();
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{out}"));
    let (cred, proxy) = rest.rsplit_once('@').unwrap();
    let (user, token) = cred.split_once(':').unwrap();
    let target = format!("api.github.test:{}", up.port);
    let before = connect_status(proxy, user, token, &target).await;
    assert!(before.contains(" 200"), "{before}");
    let agents = || airlock_tests::processes_with_env("AIRLOCK_SANDBOX_ID", &id);
    assert!(!agents().is_empty(), "the local sandbox's agent runs");

    let d = Driver::start(&chromium, &driver).await;
    sign_in(&d, &brain, &brain.master_key).await;
    d.goto(&brain.url("/ui/sandboxes")).await;
    let destroy = format!("form[action='/ui/sandboxes/{id}/destroy'] button");
    d.wait_for(&destroy).await;
    d.screenshot("sandboxes-before-destroy").await;
    d.click(&destroy).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.count(&destroy).await > 0 {
        assert!(Instant::now() < deadline, "{}", d.source().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.wait_for("main table").await;
    let row = d
        .js(&format!(
            "return Array.from(document.querySelectorAll('main tbody tr')).map(r => r.textContent).find(t => t.includes('{id}')) || ''"
        ))
        .await;
    assert!(row.as_str().unwrap().contains("destroyed"), "{row}");
    d.screenshot("sandboxes-after-destroy").await;
    let (_, v) = brain.get_json(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(v["status"], "destroyed", "{v}");
    // The grant is gone: the same proxy credentials are refused now.
    let after = connect_status(proxy, user, token, &target).await;
    assert!(after.contains(" 407"), "{after}");
    assert!(
        airlock_tests::eventually(Duration::from_secs(10), || agents().is_empty()).await,
        "the sandbox's processes outlived it: {:?}",
        agents()
    );
}
