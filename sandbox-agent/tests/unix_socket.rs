//! The real binary with `--listen unix:…` and `--egress-forward`, as the docker backend runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const TOKEN: &str = "unix-test-token";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the agent and returns it with the address it printed.
fn start(dir: &Path, extra: &[String]) -> (Agent, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", dir.join("agent.sock").display()))
        .arg("--workdir")
        .arg(dir)
        .args(extra)
        .env("AIRLOCK_AGENT_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sandbox-agent");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    (Agent(child), line.trim().to_string())
}

/// One HTTP/1.1 request over the unix socket; returns the raw response.
async fn request(sock: &Path, method: &str, path: &str, body: &str) -> String {
    let mut s = UnixStream::connect(sock).await.expect("connect agent.sock");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    out
}

#[tokio::test]
async fn http_api_on_a_unix_socket_replacing_a_stale_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    // A stale socket from an earlier run (bound, then abandoned).
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let (_agent, line) = start(dir.path(), &[]);
    assert_eq!(line, format!("listening on unix:{}", sock.display()));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);

    let health = request(&sock, "GET", "/health", "").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""status":"ok""#), "{health}");
    let exec = request(&sock, "POST", "/exec", r#"{"command":"echo over-unix"}"#).await;
    assert!(exec.starts_with("HTTP/1.1 200"), "{exec}");
    assert!(exec.contains(r#""stdout":"over-unix\n""#), "{exec}");
}

#[tokio::test]
async fn egress_forward_carries_tcp_to_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let egress = dir.path().join("egress.sock");
    // The brain's end: answers each connection with what it received, as an HTTP response.
    let upstream = UnixListener::bind(&egress).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let got = String::from_utf8_lossy(&buf[..n]).into_owned();
                let first = got.lines().next().unwrap_or_default().to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
                    first.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let forward = format!("127.0.0.1:{port}=unix:{}", egress.display());
    let (_agent, line) = start(
        dir.path(),
        &[
            "--egress-forward".into(),
            forward,
            "--egress-max-connections".into(),
            "8".into(),
        ],
    );
    assert!(line.starts_with("listening on unix:"), "{line}");

    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the forward listens before the agent announces itself");
        s.write_all(b"GET http://anything.test/ HTTP/1.1\r\nHost: anything.test\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("GET http://anything.test/ HTTP/1.1"), "{out}");
    }
}

#[test]
fn bad_forward_specs_are_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbox-agent"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--egress-forward",
            "127.0.0.1:3128=/no/scheme.sock",
        ])
        .env("AIRLOCK_AGENT_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unix:/abs/path"), "{err}");
}
