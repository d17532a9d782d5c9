//! The client subcommands (`brain run|sessions|logs|audit|sandboxes`): a person's daily use of
//! a running brain over its HTTP API. Output is plain text meant for a terminal; `--json`
//! where a script wants the API's own shape.

pub mod doctor;
mod render;

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

pub use render::{event_line, status_is_terminal};

/// Talks to one brain with one key.
pub struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, key: String) -> Result<Self> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            key,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn check(resp: reqwest::Response) -> Result<Value> {
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{status}: {message}");
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.key)
            .query(query)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {}", self.url(path)))?;
        Self::check(resp).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("POST {}", self.url(path)))?;
        Self::check(resp).await
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub task: String,
    pub model: Option<String>,
    pub backend: Option<String>,
    pub credentials: Vec<String>,
    pub max_steps: Option<u32>,
    pub max_cost_usd: Option<f64>,
}

/// Starts a session, follows it to the end printing the transcript, and returns whether it
/// succeeded.
pub async fn run(client: &Client, args: RunArgs) -> Result<bool> {
    let mut body = json!({ "task": args.task });
    if let Some(m) = args.model {
        body["model"] = json!(m);
    }
    if let Some(b) = args.backend {
        body["backend"] = json!(b);
    }
    if !args.credentials.is_empty() {
        body["credentials"] = json!(args.credentials);
    }
    if let Some(n) = args.max_steps {
        body["max_steps"] = json!(n);
    }
    if let Some(c) = args.max_cost_usd {
        body["max_cost_usd"] = json!(c);
    }
    let created = client.post("/v1/sessions", &body).await?;
    let id = created["id"]
        .as_str()
        .context("the brain answered without a session id")?
        .to_owned();
    println!("session {id}");
    follow(client, &id, 0).await?;
    let session = client.get(&format!("/v1/sessions/{id}"), &[]).await?;
    println!("{}", render::summary(&session));
    Ok(session["status"] == "succeeded")
}

/// `brain logs ID [--follow]`.
pub async fn logs(client: &Client, id: &str, follow_live: bool) -> Result<()> {
    if follow_live {
        follow(client, id, 0).await?;
    } else {
        let mut after = 0i64;
        loop {
            let page = client
                .get(
                    &format!("/v1/sessions/{id}/events"),
                    &[("after", after.to_string())],
                )
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                break;
            }
            for event in &events {
                after = event["seq"].as_i64().unwrap_or(after);
                if let Some(line) = event_line(event) {
                    println!("{line}");
                }
            }
        }
    }
    let session = client.get(&format!("/v1/sessions/{id}"), &[]).await?;
    println!("{}", render::summary(&session));
    Ok(())
}

/// Follows the SSE event stream until the session settles, reconnecting (with
/// `Last-Event-ID`) if the brain goes away meanwhile — a restarted brain resumes the session.
async fn follow(client: &Client, id: &str, mut after: i64) -> Result<()> {
    let progress = Progress::start(std::io::stdout().is_terminal());
    let mut failures = 0u32;
    loop {
        let resp = client
            .http
            .get(client.url(&format!("/v1/sessions/{id}/events")))
            .bearer_auth(&client.key)
            .header("accept", "text/event-stream")
            .header("last-event-id", after.to_string())
            .send()
            .await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().is_client_error() => {
                progress.stop();
                Client::check(r).await?;
                bail!("unexpected answer following session {id}");
            }
            other => {
                failures += 1;
                if failures > 60 {
                    progress.stop();
                    bail!("lost the brain while following session {id}: {other:?}");
                }
                progress.set(&format!("reconnecting to the brain (attempt {failures})"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        let mut settled = false;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            failures = 0;
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let Some((seq, event)) = parse_sse_block(&block) else {
                    continue;
                };
                after = after.max(seq);
                progress.set(&render::progress_label(&event));
                if let Some(line) = event_line(&event) {
                    progress.println(&line);
                }
                if event["kind"] == "status" && status_is_terminal(&event["data"]["status"]) {
                    settled = true;
                }
            }
        }
        if settled {
            break;
        }
        // The stream ended without a terminal status: the brain stopped (or the session
        // was re-opened by a follow-up). Check, then reconnect from where we were.
        match client.get(&format!("/v1/sessions/{id}"), &[]).await {
            Ok(s) if status_is_terminal(&s["status"]) && s["pending_messages"] == 0 => {
                // Drain anything after `after` (the stream may have been cut at the end).
                let page = client
                    .get(
                        &format!("/v1/sessions/{id}/events"),
                        &[("after", after.to_string())],
                    )
                    .await?;
                for event in page["events"].as_array().into_iter().flatten() {
                    if let Some(line) = event_line(event) {
                        progress.println(&line);
                    }
                }
                break;
            }
            _ => {
                failures += 1;
                progress.set("reconnecting to the brain");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    progress.stop();
    Ok(())
}

/// `(seq, {"seq","ts","kind","data"})` from one SSE block; comments and keep-alives are None.
fn parse_sse_block(block: &str) -> Option<(i64, Value)> {
    let mut data = String::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    if data.is_empty() {
        return None;
    }
    let value: Value = serde_json::from_str(&data).ok()?;
    Some((value["seq"].as_i64()?, value))
}

/// `brain sessions`.
pub async fn sessions(
    client: &Client,
    status: Option<String>,
    limit: u32,
    as_json: bool,
) -> Result<()> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(s) = status {
        query.push(("status", s));
    }
    let list = client.get("/v1/sessions", &query).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<9}  {:>5}  {:>10}  {:<24}  TASK",
        "ID", "STATUS", "STEPS", "COST $", "CREATED"
    );
    for s in list["sessions"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<9}  {:>5}  {:>10.6}  {:<24}  {}",
            s["id"].as_str().unwrap_or("?"),
            s["status"].as_str().unwrap_or("?"),
            s["steps"].as_u64().unwrap_or(0),
            s["cost_usd"].as_f64().unwrap_or(0.0),
            s["created_at"].as_str().unwrap_or(""),
            render::clip(s["task"].as_str().unwrap_or(""), 60),
        );
    }
    Ok(())
}

/// `brain sandboxes`.
pub async fn sandboxes(client: &Client, as_json: bool) -> Result<()> {
    let list = client.get("/v1/sandboxes", &[]).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<35}  {:<7}  {:<10}  {:<36}  {:<24}  CREDENTIALS",
        "ID", "BACKEND", "STATUS", "SESSION", "CREATED"
    );
    for s in list["sandboxes"].as_array().into_iter().flatten() {
        let creds: Vec<&str> = s["credentials"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<35}  {:<7}  {:<10}  {:<36}  {:<24}  {}",
            s["id"].as_str().unwrap_or("?"),
            s["backend"].as_str().unwrap_or("?"),
            s["status"].as_str().unwrap_or("?"),
            s["session_id"].as_str().unwrap_or("-"),
            s["created_at"].as_str().unwrap_or(""),
            creds.join(","),
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct AuditArgs {
    pub sandbox: Option<String>,
    pub session: Option<String>,
    pub credential: Option<String>,
    pub decision: Option<String>,
    pub since: Option<String>,
    pub limit: Option<usize>,
    pub json: bool,
}

/// `brain audit`: the vault proxy's egress decisions.
pub async fn audit(client: &Client, args: AuditArgs) -> Result<()> {
    let mut query = Vec::new();
    for (key, value) in [
        ("sandbox", args.sandbox),
        ("session", args.session),
        ("credential", args.credential),
        ("decision", args.decision),
        ("since", args.since),
        ("limit", args.limit.map(|l| l.to_string())),
    ] {
        if let Some(v) = value {
            query.push((key, v));
        }
    }
    let records = client.get("/v1/audit/egress", &query).await?;
    for record in records.as_array().into_iter().flatten() {
        if args.json {
            println!("{record}");
        } else {
            println!("{}", render::audit_line(record));
        }
    }
    Ok(())
}

/// `brain audit verify`: the proxy's audit chain checked against the heads the brain
/// recorded. `Ok(true)` = intact (exit 0), `Ok(false)` = broken (exit 1).
pub async fn audit_verify(client: &Client, json: bool) -> Result<bool> {
    let report = client.get("/v1/audit/verify", &[]).await?;
    let ok = report.get("ok").and_then(Value::as_bool).unwrap_or(false);
    if json {
        println!("{report}");
    } else {
        println!("{}", render::verify_line(&report));
    }
    Ok(ok)
}

/// The one-line progress indicator: a spinner redrawn in place on a TTY, nothing otherwise.
struct Progress {
    inner: Option<Arc<ProgressInner>>,
}

struct ProgressInner {
    label: Mutex<String>,
    stop: tokio_util::sync::CancellationToken,
}

const FRAMES: &[&str] = &["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Progress {
    fn start(tty: bool) -> Self {
        if !tty {
            return Self { inner: None };
        }
        let inner = Arc::new(ProgressInner {
            label: Mutex::new("starting".into()),
            stop: tokio_util::sync::CancellationToken::new(),
        });
        let ticker = inner.clone();
        tokio::spawn(async move {
            let mut frame = 0usize;
            loop {
                {
                    let label = ticker.label.lock().unwrap_or_else(|p| p.into_inner());
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "\r\x1b[2K{} {}", FRAMES[frame % FRAMES.len()], label);
                    let _ = out.flush();
                }
                frame += 1;
                tokio::select! {
                    _ = ticker.stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Self { inner: Some(inner) }
    }

    fn set(&self, label: &str) {
        if let Some(inner) = &self.inner {
            *inner.label.lock().unwrap_or_else(|p| p.into_inner()) = label.to_owned();
        }
    }

    /// Prints a transcript line above the indicator.
    fn println(&self, line: &str) {
        match &self.inner {
            Some(inner) => {
                let label = inner.label.lock().unwrap_or_else(|p| p.into_inner());
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "\r\x1b[2K{line}");
                let _ = write!(out, "{} {}", FRAMES[0], label);
                let _ = out.flush();
            }
            None => println!("{line}"),
        }
    }

    fn stop(&self) {
        if let Some(inner) = &self.inner {
            inner.stop.cancel();
            let _ = inner.label.lock().map(|_| {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r\x1b[2K");
                let _ = out.flush();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_parse_to_seq_and_event() {
        let block = "id: 3\nevent: tool_result\ndata: {\"seq\":3,\"ts\":1,\"kind\":\"tool_result\",\"data\":{}}\n\n";
        let (seq, event) = parse_sse_block(block).unwrap();
        assert_eq!(seq, 3);
        assert_eq!(event["kind"], "tool_result");
        assert!(parse_sse_block(":keep-alive\n\n").is_none());
    }
}
