//! Component tests: the real router through `oneshot`, and one real listener for the
//! disconnect-over-TCP case. Process-group checks read /proc, ignoring zombies (which are
//! dead; whether they are reaped depends on the container's PID 1, not on us).

use std::time::Duration;

use airlock_wire::{ErrorBody, ExecCollector, ExecEvent, ExecResult, FileEntry, Health, NDJSON};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::{AppState, Config, Token, app};

const TOKEN: &str = "test-token-123";

fn setup() -> (Router, TempDir) {
    setup_with(|_| {})
}

fn setup_with(tweak: impl FnOnce(&mut Config)) -> (Router, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(
        Token::new(TOKEN).unwrap(),
        dir.path().canonicalize().unwrap(),
    );
    tweak(&mut config);
    (app(AppState::new(config)), dir)
}

fn request(method: Method, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(body.into())
        .unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body)
}

async fn exec(app: &Router, body: Value) -> ExecResult {
    let (status, bytes) = send(app, request(Method::POST, "/exec", body.to_string())).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// Sends an exec that must fail and returns (status, error code, message).
async fn exec_err(app: &Router, body: &str) -> (StatusCode, String, String) {
    let (status, bytes) = send(app, request(Method::POST, "/exec", body.to_string())).await;
    let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "not an error body ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, err.error.code, err.error.message)
}

/// Streams an exec and returns its parsed lines.
async fn exec_stream(app: &Router, body: Value) -> Vec<ExecEvent> {
    let mut req = request(Method::POST, "/exec", body.to_string());
    req.headers_mut()
        .insert(header::ACCEPT, NDJSON.parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], NDJSON);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.ends_with('\n'),
        "stream must end with a newline: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Pids of the group `pgid` that are still alive (not zombies).
fn live_members(pgid: i32) -> Vec<i32> {
    let mut live = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return live;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after "(comm)": state ppid pgrp …
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
        {
            live.push(pid);
        }
    }
    live
}

async fn assert_group_dies(pgid: i32) {
    assert!(pgid > 1, "bad pgid {pgid}");
    for _ in 0..100 {
        if live_members(pgid).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivors = live_members(pgid);
    // Clean up before failing so a broken build does not leave sleepers behind.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    panic!("process group {pgid} still has live members: {survivors:?}");
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|zombie| !zombie)
}

async fn wait_for_file(path: &std::path::Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never appeared", path.display());
}

// === health and auth ===

#[tokio::test]
async fn health_is_open_and_reports_version() {
    let (app, _dir) = setup();
    let req = Request::get("/health").body(Body::empty()).unwrap();
    let (status, body) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    let health: Health = serde_json::from_slice(&body).unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn every_route_but_health_requires_the_token() {
    let (app, _dir) = setup();
    let routes = [
        (Method::POST, "/exec"),
        (Method::GET, "/files?path=x"),
        (Method::PUT, "/files?path=x"),
        (Method::GET, "/files/list?path=."),
    ];
    let auths = [
        None,
        Some("Bearer wrong-token-123".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer ".to_string()),
    ];
    for (method, uri) in routes {
        for auth in &auths {
            let mut req = Request::builder().method(method.clone()).uri(uri);
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let body = r#"{"command":"touch should-not-exist"}"#;
            let (status, bytes) = send(&app, req.body(Body::from(body)).unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {auth:?}"
            );
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(err.error.code, "unauthorized");
        }
    }
    assert!(!_dir.path().join("should-not-exist").exists());
    assert!(!_dir.path().join("x").exists());
}

#[tokio::test]
async fn unknown_route_and_method_get_json_errors() {
    let (app, _dir) = setup();
    let (status, body) = send(&app, request(Method::GET, "/nope", Body::empty())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    serde_json::from_slice::<ErrorBody>(&body).unwrap();
    let (status, body) = send(&app, request(Method::GET, "/exec", Body::empty())).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    serde_json::from_slice::<ErrorBody>(&body).unwrap();
}

// === exec: request validation ===

#[tokio::test]
async fn bad_exec_requests_are_400_with_a_useful_message() {
    let (app, dir) = setup();
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"command":"#, "bad_request", "invalid JSON body: EOF"),
        (r#"not json"#, "bad_request", "invalid JSON body: expected"),
        (
            r#"{"command":"true","timeout":5}"#,
            "bad_request",
            "unknown field `timeout`",
        ),
        (
            r#"{"command":5}"#,
            "bad_request",
            "invalid type: integer `5`",
        ),
        (r#"{}"#, "bad_request", "exactly one of `command` or `argv`"),
        (
            r#"{"command":"true","argv":["true"]}"#,
            "bad_request",
            "not both",
        ),
        (r#"{"argv":[]}"#, "bad_request", "argv must not be empty"),
        (
            r#"{"command":"true","timeout_ms":0}"#,
            "bad_request",
            "timeout_ms",
        ),
        (
            r#"{"command":"true","cwd":"no/such/dir"}"#,
            "bad_cwd",
            "no/such/dir",
        ),
    ];
    for (body, code, needle) in cases {
        let (status, got_code, message) = exec_err(&app, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {message}");
        assert_eq!(got_code, *code, "{body}");
        assert!(
            message.contains(needle),
            "{body}: {message:?} lacks {needle:?}"
        );
    }
    std::fs::write(dir.path().join("afile"), "x").unwrap();
    let (status, code, message) = exec_err(&app, r#"{"command":"true","cwd":"afile"}"#).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_cwd")
    );
    assert!(message.contains("not a directory"), "{message}");
}

#[tokio::test]
async fn spawn_failure_is_422_with_the_os_error() {
    let (app, _dir) = setup();
    let (status, code, message) = exec_err(&app, r#"{"argv":["/no/such/binary","x"]}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "spawn_failed");
    assert!(
        message.contains("/no/such/binary") && message.contains("No such file"),
        "{message}"
    );
}

// === exec: buffered ===

#[tokio::test]
async fn exec_echo_and_exit_codes() {
    let (app, _dir) = setup();
    let r = exec(&app, json!({"command": "echo hello"})).await;
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(
        (r.exit_code, r.signal, r.timed_out, r.truncated),
        (Some(0), None, false, false)
    );
    for code in [1, 3, 42, 255] {
        let r = exec(&app, json!({"command": format!("exit {code}")})).await;
        assert_eq!(r.exit_code, Some(code));
    }
    let r = exec(&app, json!({"command": "kill -TERM $$"})).await;
    assert_eq!((r.exit_code, r.signal), (None, Some(libc::SIGTERM)));
}

#[tokio::test]
async fn exec_keeps_stderr_separate() {
    let (app, _dir) = setup();
    let r = exec(
        &app,
        json!({"command": "echo out; echo err >&2; echo out2"}),
    )
    .await;
    assert_eq!(r.stdout, "out\nout2\n");
    assert_eq!(r.stderr, "err\n");
}

#[tokio::test]
async fn exec_cwd_env_stdin_and_argv() {
    let (app, dir) = setup();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let r = exec(&app, json!({"command": "pwd"})).await;
    assert_eq!(
        r.stdout.trim(),
        dir.path().canonicalize().unwrap().to_str().unwrap()
    );
    let r = exec(&app, json!({"command": "pwd", "cwd": "sub"})).await;
    assert!(r.stdout.trim().ends_with("/sub"), "{}", r.stdout);
    let r = exec(&app, json!({"command": "pwd", "cwd": "/tmp"})).await;
    assert_eq!(r.stdout, "/tmp\n");

    let r = exec(
        &app,
        json!({"command": "echo \"$FOO-$BAR\"; test -n \"$PATH\" && echo path", "env": {"FOO": "a b", "BAR": "1"}}),
    )
    .await;
    assert_eq!(r.stdout, "a b-1\npath\n");
    // The agent token is not passed on to commands.
    let r = exec(
        &app,
        json!({"command": "echo \"[${AIRLOCK_AGENT_TOKEN-unset}]\""}),
    )
    .await;
    assert_eq!(r.stdout, "[unset]\n");

    let r = exec(
        &app,
        json!({"command": "tr a-z A-Z", "stdin": "hello\nworld"}),
    )
    .await;
    assert_eq!(r.stdout, "HELLO\nWORLD");
    // Without stdin the command reads /dev/null (EOF at once), it does not hang.
    let r = exec(
        &app,
        json!({"command": "cat; echo done", "timeout_ms": 5000}),
    )
    .await;
    assert_eq!((r.stdout.as_str(), r.timed_out), ("done\n", false));

    // argv is not interpreted by a shell.
    let r = exec(
        &app,
        json!({"argv": ["printf", "%s|", "a b", "$HOME", ";x"]}),
    )
    .await;
    assert_eq!(r.stdout, "a b|$HOME|;x|");
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let (app, dir) = setup();
    let started = std::time::Instant::now();
    let r = exec(
        &app,
        // The shell also writes its pid to a file, so a failure tells "the command never ran
        // before the timeout" (a starved machine) apart from "its output was lost".
        json!({"command": "echo $$ > pgid; echo $$; sleep 1000 & sleep 1000", "timeout_ms": 5000}),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(r.timed_out, "{r:?}");
    assert_eq!(
        (r.exit_code, r.signal),
        (None, Some(libc::SIGKILL)),
        "{r:?}"
    );
    assert!(r.duration_ms >= 5000, "{r:?}");
    let written = std::fs::read_to_string(dir.path().join("pgid")).unwrap_or_else(|e| {
        panic!("the command did not start within its 5 s timeout ({e}): {r:?}")
    });
    // What the command printed before it was killed reaches the caller.
    assert_eq!(r.stdout, written, "output lost after the kill: {r:?}");
    let pgid: i32 = written.trim().parse().unwrap();
    assert_group_dies(pgid).await;
}

#[tokio::test]
async fn output_cap_truncates_and_keeps_draining() {
    let (app, _dir) = setup();
    // 50 MB through a 1000-byte cap: the command must finish (we keep draining) and only
    // the first 1000 bytes are kept.
    let r = exec(
        &app,
        json!({"command": "head -c 50000000 /dev/zero | tr '\\0' a; echo done >&2",
               "max_output_bytes": 1000, "timeout_ms": 60000}),
    )
    .await;
    assert_eq!(
        (r.exit_code, r.timed_out, r.truncated),
        (Some(0), false, true)
    );
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout.bytes().all(|b| b == b'a'));
    assert_eq!(r.stderr, "", "stderr came after the cap was used up");

    // The cap covers stdout and stderr together.
    let r = exec(
        &app,
        json!({"command": "printf aaaa; printf bbbb >&2", "max_output_bytes": 6}),
    )
    .await;
    assert!(r.truncated);
    assert_eq!(r.stdout.len() + r.stderr.len(), 6);

    let r = exec(
        &app,
        json!({"command": "printf abc", "max_output_bytes": 3}),
    )
    .await;
    assert_eq!((r.stdout.as_str(), r.truncated), ("abc", false));
}

#[tokio::test]
async fn backgrounded_children_holding_pipes_are_killed_detached_ones_survive() {
    let (app, _dir) = setup();
    let started = std::time::Instant::now();
    let r = exec(&app, json!({"command": "sleep 1000 & echo $!"})).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "request hung on the held pipe"
    );
    assert_eq!(r.exit_code, Some(0));
    let held: i32 = r.stdout.trim().parse().unwrap();
    for _ in 0..100 {
        if !pid_alive(held) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pid_alive(held), "background sleep holding stdout survived");

    let r = exec(
        &app,
        json!({"command": "sleep 1000 >/dev/null 2>&1 </dev/null & echo $!"}),
    )
    .await;
    let detached: i32 = r.stdout.trim().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = pid_alive(detached);
    unsafe {
        libc::kill(detached, libc::SIGKILL);
    }
    assert!(
        alive,
        "a background process with detached output should keep running"
    );
}

#[tokio::test]
async fn invalid_utf8_output_is_replaced_not_rejected() {
    let (app, _dir) = setup();
    let r = exec(&app, json!({"command": "printf 'a\\377b\\303\\251'"})).await;
    assert_eq!(r.stdout, "a\u{FFFD}bé");
}

// === exec: streamed ===

#[tokio::test]
async fn ndjson_stream_is_ordered_and_ends_with_one_exit() {
    let (app, _dir) = setup();
    let events = exec_stream(
        &app,
        json!({"command": "echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three; exit 7"}),
    )
    .await;
    let exits = events
        .iter()
        .filter(|e| matches!(e, ExecEvent::Exit(_)))
        .count();
    assert_eq!(exits, 1, "{events:?}");
    assert!(
        matches!(events.last(), Some(ExecEvent::Exit(_))),
        "{events:?}"
    );
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stdout { data } => Some(format!("out:{data}")),
            ExecEvent::Stderr { data } => Some(format!("err:{data}")),
            ExecEvent::Exit(_) => None,
        })
        .collect();
    assert_eq!(order.concat(), "out:one\nerr:two\nout:three\n");
    let mut collector = ExecCollector::default();
    events.into_iter().for_each(|e| collector.push(e));
    let r = collector.finish().unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_str(), r.stderr.as_str()),
        (Some(7), "one\nthree\n", "two\n")
    );
}

#[tokio::test]
async fn ndjson_stream_reports_truncation_and_timeout_in_exit() {
    let (app, _dir) = setup();
    let events = exec_stream(
        &app,
        json!({"command": "head -c 5000000 /dev/zero | tr '\\0' b; sleep 1000", "max_output_bytes": 100000, "timeout_ms": 4000}),
    )
    .await;
    let mut collector = ExecCollector::default();
    events.into_iter().for_each(|e| collector.push(e));
    let r = collector.finish().unwrap();
    assert_eq!(r.stdout.len(), 100_000);
    assert!(r.truncated && r.timed_out);
    assert_eq!(r.signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn ndjson_chunks_are_sent_before_the_command_ends() {
    let (app, _dir) = setup();
    let mut req = request(
        Method::POST,
        "/exec",
        json!({"command": "echo first; sleep 1000", "timeout_ms": 20000}).to_string(),
    );
    req.headers_mut().insert(
        header::ACCEPT,
        "text/plain, application/x-ndjson;q=0.9".parse().unwrap(),
    );
    let resp = app.clone().oneshot(req).await.unwrap();
    let mut body = resp.into_body().into_data_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("first chunk not flushed promptly")
        .unwrap()
        .unwrap();
    let event: ExecEvent = serde_json::from_slice(&first).unwrap();
    assert_eq!(
        event,
        ExecEvent::Stdout {
            data: "first\n".into()
        }
    );
}

#[tokio::test]
async fn dropping_the_stream_kills_the_group() {
    let (app, _dir) = setup();
    let mut req = request(
        Method::POST,
        "/exec",
        json!({"command": "echo $$; sleep 1000 & sleep 1000", "timeout_ms": 60000}).to_string(),
    );
    req.headers_mut()
        .insert(header::ACCEPT, NDJSON.parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    let mut body = resp.into_body().into_data_stream();
    let first = body.next().await.unwrap().unwrap();
    let ExecEvent::Stdout { data } = serde_json::from_slice(&first).unwrap() else {
        panic!("expected stdout first");
    };
    let pgid: i32 = data.trim().parse().unwrap();
    assert!(
        !live_members(pgid).is_empty(),
        "command should still be running"
    );
    drop(body);
    assert_group_dies(pgid).await;
}

#[tokio::test]
async fn dropping_a_buffered_request_kills_the_group() {
    let (app, dir) = setup();
    let pidfile = dir.path().join("pid");
    let req = request(
        Method::POST,
        "/exec",
        json!({"command": "echo $$ > pid; sleep 1000 & sleep 1000", "timeout_ms": 60000})
            .to_string(),
    );
    let call = tokio::spawn(app.clone().oneshot(req));
    let pgid: i32 = wait_for_file(&pidfile).await.trim().parse().unwrap();
    assert!(!live_members(pgid).is_empty());
    call.abort();
    assert_group_dies(pgid).await;
}

#[tokio::test]
async fn tcp_client_disconnect_kills_a_buffered_exec() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(
        Token::new(TOKEN).unwrap(),
        dir.path().canonicalize().unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(crate::run(config, listener, std::future::pending()));

    let body = json!({"command": "echo $$ > pid; sleep 1000 & sleep 1000", "timeout_ms": 60000})
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST /exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(raw.as_bytes()).await.unwrap();
    let pgid: i32 = wait_for_file(&dir.path().join("pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(!live_members(pgid).is_empty());
    drop(conn);
    assert_group_dies(pgid).await;

    // The server is still fine afterwards.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    server.abort();
}

#[tokio::test]
async fn shutdown_kills_running_commands_and_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(
        Token::new(TOKEN).unwrap(),
        dir.path().canonicalize().unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(config, listener, async move {
        let _ = stop_rx.await;
    }));
    let body = json!({"command": "echo $$ > pid; sleep 1000", "timeout_ms": 60000}).to_string();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST /exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(raw.as_bytes()).await.unwrap();
    let pgid: i32 = wait_for_file(&dir.path().join("pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    stop_tx.send(()).unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut resp))
        .await
        .expect("response not finished after shutdown")
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""signal":9"#), "{resp}");
    assert_group_dies(pgid).await;
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

// === files ===

#[tokio::test]
async fn files_round_trip_with_nested_parents() {
    let (app, dir) = setup();
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let (status, body) = send(
        &app,
        request(Method::PUT, "/files?path=a/b/c/data.bin", data.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let written: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(written["size"], 300_000);
    assert_eq!(
        std::fs::read(dir.path().join("a/b/c/data.bin")).unwrap(),
        data
    );

    let (status, body) = send(
        &app,
        request(Method::GET, "/files?path=a/b/c/data.bin", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_ref(), data.as_slice());

    // Absolute paths work too (documented choice: the sandbox is the boundary).
    let abs = dir.path().join("abs.txt");
    let uri = format!("/files?path={}", abs.display());
    let (status, _) = send(&app, request(Method::PUT, &uri, "absolute")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = send(&app, request(Method::GET, &uri, Body::empty())).await;
    assert_eq!(body.as_ref(), b"absolute");

    // Overwrite keeps the file mode.
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "old").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, _) = send(
        &app,
        request(Method::PUT, "/files?path=run.sh", "#!/bin/sh\n"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let meta = std::fs::metadata(&script).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read_to_string(&script).unwrap(), "#!/bin/sh\n");
}

#[tokio::test]
async fn files_list_and_errors() {
    let (app, dir) = setup();
    std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
    std::fs::write(dir.path().join("d/f.txt"), "12345").unwrap();
    let (status, body) = send(
        &app,
        request(Method::GET, "/files/list?path=d", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let entries: Vec<FileEntry> = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        entries,
        vec![
            FileEntry {
                name: "f.txt".into(),
                size: 5,
                is_dir: false
            },
            FileEntry {
                name: "sub".into(),
                size: entries[1].size,
                is_dir: true
            },
        ]
    );

    let cases: &[(Method, &str, StatusCode, &str)] = &[
        (
            Method::GET,
            "/files?path=missing.txt",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/files/list?path=missing",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/files?path=d",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/files/list?path=d/f.txt",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/files",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/files?path=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (method, uri, want_status, want_code) in cases {
        let (status, body) = send(&app, request(method.clone(), uri, Body::empty())).await;
        assert_eq!(
            status,
            *want_status,
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
        let err: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(err.error.code, *want_code, "{uri}");
    }
}

#[tokio::test]
async fn oversized_upload_is_413_and_leaves_nothing_behind() {
    let (app, dir) = setup_with(|c| c.max_upload_bytes = 1000);
    let (status, body) = send(
        &app,
        request(Method::PUT, "/files?path=big", vec![b'x'; 1001]),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let err: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(err.error.code, "payload_too_large");
    // Same without a Content-Length (streamed body): counted while writing.
    let stream = futures_util::stream::iter(
        (0..5).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 300]))),
    );
    let (status, _) = send(
        &app,
        request(Method::PUT, "/files?path=big", Body::from_stream(stream)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let (status, _) = send(
        &app,
        request(Method::PUT, "/files?path=ok", vec![b'x'; 1000]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

// === orphan reaping (PID 1 / subreaper) ===

#[tokio::test]
async fn reaper_collects_orphans_but_never_an_exec_child() {
    // Orphans of every test in this process now come to us; harmless (they are reaped or
    // stay dead zombies, which the group checks ignore).
    crate::reaper::become_subreaper().unwrap();
    let (app, _dir) = setup();
    let r = exec(
        &app,
        json!({"command": "sleep 0.2 >/dev/null 2>&1 & echo $!"}),
    )
    .await;
    let orphan: i32 = r.stdout.trim().parse().unwrap();
    let me = std::process::id().to_string();
    let mut zombie = false;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == me {
            zombie = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(zombie, "orphan {orphan} did not become our zombie");
    assert!(crate::reaper::reap_once() >= 1);
    assert!(
        !std::path::Path::new(&format!("/proc/{orphan}")).exists(),
        "orphan not reaped"
    );

    // Hammer the reaper while execs finish: each must still get its own exit status.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                crate::reaper::reap_once();
                // Back to back but not a busy loop: a spinning /proc scan starves the other
                // tests of this process on a 2-core machine.
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let runs = (0..20).map(|i| {
        let app = app.clone();
        async move { exec(&app, json!({"command": format!("exit {}", i + 1)})).await }
    });
    let results = futures_util::future::join_all(runs).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.exit_code, Some(i as i32 + 1), "exec {i}: {r:?}");
    }
}

// === /configure ===

async fn health(app: &Router) -> Health {
    let req = Request::builder()
        .uri("/health")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(app, req).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn configure_once_then_every_exec_inherits_env_and_files_are_written() {
    let (app, dir) = setup();
    let h = health(&app).await;
    assert_eq!((h.configured, h.used), (Some(false), Some(false)));
    let ca = dir.path().join("etc/airlock/ca.pem");
    let body = json!({
        "env": {"GITHUB_TOKEN": "ghp_stub", "HTTPS_PROXY": "http://sb:tok@127.0.0.1:3128"},
        "files": {ca.display().to_string(): "-----BEGIN CERTIFICATE-----\n"},
    });
    let (status, bytes) = send(&app, request(Method::POST, "/configure", body.to_string())).await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        "-----BEGIN CERTIFICATE-----\n"
    );
    let out = exec(&app, json!({"command": "echo $GITHUB_TOKEN $HTTPS_PROXY"})).await;
    assert_eq!(out.stdout, "ghp_stub http://sb:tok@127.0.0.1:3128\n");
    // The request's own env wins over the configured one.
    let out = exec(
        &app,
        json!({"command": "echo $GITHUB_TOKEN", "env": {"GITHUB_TOKEN": "mine"}}),
    )
    .await;
    assert_eq!(out.stdout, "mine\n");
    let h = health(&app).await;
    assert_eq!((h.configured, h.used), (Some(true), Some(true)));

    // A second configure is refused and changes nothing.
    let again = json!({"env": {"GITHUB_TOKEN": "other"}});
    let (status, bytes) = send(&app, request(Method::POST, "/configure", again.to_string())).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let err: ErrorBody = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(err.error.code, "already_configured");
    let out = exec(&app, json!({"command": "echo $GITHUB_TOKEN"})).await;
    assert_eq!(out.stdout, "ghp_stub\n");
}

#[tokio::test]
async fn configure_is_refused_after_a_command_ran_or_a_file_was_written() {
    for first in ["exec", "file"] {
        let (app, _dir) = setup();
        match first {
            "exec" => {
                exec(&app, json!({"command": "true"})).await;
            }
            _ => {
                let (status, _) = send(&app, request(Method::PUT, "/files?path=a.txt", "x")).await;
                assert_eq!(status, StatusCode::OK);
            }
        }
        let body = json!({"env": {"A": "b"}});
        let (status, bytes) =
            send(&app, request(Method::POST, "/configure", body.to_string())).await;
        assert_eq!(status, StatusCode::CONFLICT, "{first}");
        let err: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(err.error.code, "already_used", "{first}");
        assert_eq!(health(&app).await.configured, Some(false));
    }
}

#[tokio::test]
async fn configure_rejects_bad_input_and_needs_the_token() {
    let (app, _dir) = setup();
    for body in [
        json!({"env": {"A=B": "x"}}),
        json!({"env": {"AIRLOCK_AGENT_TOKEN": "x"}}),
        json!({"files": {"relative/ca.pem": "x"}}),
        json!({"files": {"/etc/../x": "x"}}),
        json!({"envs": {}}),
    ] {
        let (status, _) = send(&app, request(Method::POST, "/configure", body.to_string())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri("/configure")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::UNAUTHORIZED);
    // None of these configured it.
    assert_eq!(health(&app).await.configured, Some(false));
}
