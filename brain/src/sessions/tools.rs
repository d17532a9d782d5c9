//! The tools offered to the model (DESIGN.md, "Tool schemas given to the model").
//!
//! The session is always the loop's own (`Ctx::session`), never an argument: a sandbox id the
//! model names must belong to this session. Bad arguments, unknown tools and failed calls are
//! [`ToolOutput`]s with `is_error`, which the model sees; nothing here panics or aborts the loop.

use airlock_wire::ExecRequest;
use bytes::Bytes;
use gateway::canonical::Tool;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::Instrument;

use super::store::SessionRow;
use crate::lifecycle::{self, ProvisionParams};
use crate::sandbox::BackendKind;
use crate::state::AppState;
use crate::store::SandboxStatus;

pub const SANDBOX_PROVISION: &str = "sandbox_provision";
pub const SANDBOX_EXECUTE: &str = "sandbox_execute";
pub const READ_FILE: &str = "read_file";
pub const WRITE_FILE: &str = "write_file";

/// What a tool returns to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
    /// The sandbox the call used or created (becomes the session's most recent one).
    pub sandbox_id: Option<String>,
}

impl ToolOutput {
    fn ok(value: Value, sandbox_id: Option<String>) -> Self {
        Self {
            content: value.to_string(),
            is_error: false,
            sandbox_id,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            content: json!({ "error": message.into() }).to_string(),
            is_error: true,
            sandbox_id: None,
        }
    }
}

pub fn definitions() -> Vec<Tool> {
    vec![
        Tool {
            name: SANDBOX_PROVISION.into(),
            description: Some(
                "Create a fresh sandbox (an isolated Linux machine with git, curl and python) \
                 for this task. Credentials are given as stub environment variables that work \
                 only toward the hosts they are bound to."
                    .into(),
            ),
            parameters: json!({
                "type": "object",
                "properties": {
                    "task_description": {"type": "string", "description": "What the sandbox is for."},
                    "credentials": {"type": "array", "items": {"type": "string"},
                        "description": "Credential names to expose (subset of the session's)."},
                    "from_snapshot": {"type": "string",
                        "description": "A snapshot id (snap-…): start with that snapshot's workspace files."}
                },
                "required": ["task_description"],
                "additionalProperties": false
            }),
        },
        Tool {
            name: SANDBOX_EXECUTE.into(),
            description: Some(
                "Run a shell command (sh -c) in a sandbox; returns exit code, stdout and stderr. \
                 Without sandbox_id, the most recent sandbox of this session is used."
                    .into(),
            ),
            parameters: json!({
                "type": "object",
                "properties": {
                    "sandbox_id": {"type": "string"},
                    "command": {"type": "string"},
                    "timeout_s": {"type": "integer", "minimum": 1}
                },
                "required": ["command"],
                "additionalProperties": false
            }),
        },
        Tool {
            name: READ_FILE.into(),
            description: Some("Read a text file from a sandbox.".into()),
            parameters: json!({
                "type": "object",
                "properties": {
                    "sandbox_id": {"type": "string"},
                    "path": {"type": "string"}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        },
        Tool {
            name: WRITE_FILE.into(),
            description: Some("Write a text file in a sandbox (parents are created).".into()),
            parameters: json!({
                "type": "object",
                "properties": {
                    "sandbox_id": {"type": "string"},
                    "path": {"type": "string"},
                    "content": {"type": "string"}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        },
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionArgs {
    task_description: String,
    #[serde(default)]
    credentials: Option<Vec<String>>,
    #[serde(default)]
    from_snapshot: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteArgs {
    #[serde(default)]
    sandbox_id: Option<String>,
    command: String,
    #[serde(default)]
    timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    #[serde(default)]
    sandbox_id: Option<String>,
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    #[serde(default)]
    sandbox_id: Option<String>,
    path: String,
    content: String,
}

/// Everything a tool may use: the loop's own session, never the model's say-so.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    pub session: &'a SessionRow,
    /// The tool call being run (names live output chunks).
    pub call_id: &'a str,
    /// The session's most recent sandbox, if any.
    pub last_sandbox: Option<&'a str>,
}

fn parse<T: DeserializeOwned>(tool: &str, arguments: &str) -> Result<T, ToolOutput> {
    // Some models send "" for a call without arguments.
    let text = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    serde_json::from_str(text)
        .map_err(|e| ToolOutput::error(format!("invalid arguments for {tool}: {e}")))
}

pub async fn execute(ctx: &Ctx<'_>, name: &str, arguments: &str) -> ToolOutput {
    let result = match name {
        SANDBOX_PROVISION => provision(ctx, arguments).await,
        SANDBOX_EXECUTE => exec(ctx, arguments).await,
        READ_FILE => read_file(ctx, arguments).await,
        WRITE_FILE => write_file(ctx, arguments).await,
        other => Err(ToolOutput::error(format!(
            "unknown tool {other:?}; available: {SANDBOX_PROVISION}, {SANDBOX_EXECUTE}, {READ_FILE}, {WRITE_FILE}"
        ))),
    };
    result.unwrap_or_else(|e| e)
}

async fn provision(ctx: &Ctx<'_>, arguments: &str) -> Result<ToolOutput, ToolOutput> {
    let args: ProvisionArgs = parse(SANDBOX_PROVISION, arguments)?;
    let credentials = match args.credentials {
        None => ctx.session.credentials.clone(),
        Some(asked) => {
            // Fail closed: the model gets at most what the session was started with.
            if let Some(extra) = asked.iter().find(|c| !ctx.session.credentials.contains(c)) {
                return Err(ToolOutput::error(format!(
                    "credential {extra:?} is not available to this session (available: {:?})",
                    ctx.session.credentials
                )));
            }
            asked
        }
    };
    let row = provision_for(
        ctx,
        Some(args.task_description),
        credentials,
        args.from_snapshot,
    )
    .await?;
    let value = json!({ "sandbox_id": row.0, "backend": row.1, "credentials": row.2 });
    Ok(ToolOutput::ok(value, Some(row.0)))
}

async fn provision_for(
    ctx: &Ctx<'_>,
    task_description: Option<String>,
    credentials: Vec<String>,
    from_snapshot: Option<String>,
) -> Result<(String, String, Vec<String>), ToolOutput> {
    let config = &ctx.state.config.sandbox;
    let params = ProvisionParams {
        backend: ctx
            .session
            .backend
            .unwrap_or_else(|| ctx.state.backends.default_kind()),
        image: None,
        task_description,
        credentials,
        ttl_s: config.default_ttl_seconds,
        resources: config.resources,
        session_id: Some(ctx.session.id.clone()),
        from_snapshot,
        workspace: None,
    };
    let span = tracing::info_span!(
        target: airlock_telemetry::TARGET,
        "sandbox.provision",
        "sandbox.backend" = %params.backend,
        "airlock.credentials" = %params.credentials.join(","),
        "sandbox.id" = tracing::field::Empty,
    );
    let provisioned = lifecycle::provision(ctx.state, params)
        .instrument(span.clone())
        .await;
    if let Ok(row) = &provisioned {
        span.record("sandbox.id", row.id.as_str());
    }
    match provisioned {
        Ok(row) if row.status == SandboxStatus::Running => {
            let params: ProvisionParams = serde_json::from_value(row.request.clone())
                .map_err(|e| ToolOutput::error(format!("reading the sandbox request: {e}")))?;
            Ok((row.id, row.backend.to_string(), params.credentials))
        }
        Ok(row) => Err(ToolOutput::error(format!(
            "sandbox {} ended during provisioning ({})",
            row.id, row.status
        ))),
        Err(e) => Err(ToolOutput::error(format!("provisioning failed: {e}"))),
    }
}

/// The sandbox a call works on, re-provisioned (same request) if the session's sandbox is
/// gone — destroyed after an earlier answer, expired, or lost while the brain was down.
/// Returns `(id, handle, note)`.
async fn resolve(
    ctx: &Ctx<'_>,
    named: Option<String>,
) -> Result<
    (
        String,
        crate::sandbox::SandboxHandle,
        crate::sandbox::BackendKind,
        Option<String>,
    ),
    ToolOutput,
> {
    let id = match named.or_else(|| ctx.last_sandbox.map(str::to_owned)) {
        Some(id) => id,
        None => {
            return Err(ToolOutput::error(format!(
                "this session has no sandbox yet: call {SANDBOX_PROVISION} first"
            )));
        }
    };
    let row = ctx
        .state
        .store
        .get_sandbox(&id)
        .await
        .map_err(|e| ToolOutput::error(format!("looking up sandbox {id}: {e}")))?;
    let Some(row) = row.filter(|r| r.session_id.as_deref() == Some(ctx.session.id.as_str())) else {
        return Err(ToolOutput::error(format!(
            "no sandbox {id} in this session"
        )));
    };
    // TTLs are on the database clock (`lifecycle::provision_fresh`).
    let now = ctx
        .state
        .store
        .clock()
        .await
        .map_err(|e| ToolOutput::error(format!("reading the database clock: {e}")))?;
    if row.status == SandboxStatus::Running
        && row.expires_at > now
        && let Some(handle) = row.handle.clone()
    {
        let backend = ctx
            .state
            .backends
            .get(row.backend)
            .await
            .map_err(|e| ToolOutput::error(format!("backend {}: {e}", row.backend)))?;
        if backend.is_alive(&handle).await {
            return Ok((row.id, handle, row.backend, None));
        }
        // Gone under us: close the row before replacing it.
        let _ = lifecycle::destroy(ctx.state, &row.id).await;
    }
    let earlier: Option<ProvisionParams> = serde_json::from_value(row.request.clone()).ok();
    // The replacement starts from the same snapshot as the lost one, if any.
    let (task, credentials, from_snapshot) = earlier
        .map(|p| (p.task_description, p.credentials, p.from_snapshot))
        .unwrap_or((None, ctx.session.credentials.clone(), None));
    let (new_id, _, _) = provision_for(ctx, task, credentials, from_snapshot).await?;
    let fresh = ctx
        .state
        .store
        .get_sandbox(&new_id)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.handle.map(|h| (h, r.backend)))
        .ok_or_else(|| ToolOutput::error(format!("sandbox {new_id} has no handle")))?;
    let note = format!(
        "sandbox {id} was no longer running ({}); re-provisioned as {new_id} — files from before are gone",
        row.status
    );
    Ok((new_id, fresh.0, fresh.1, Some(note)))
}

async fn exec(ctx: &Ctx<'_>, arguments: &str) -> Result<ToolOutput, ToolOutput> {
    let args: ExecuteArgs = parse(SANDBOX_EXECUTE, arguments)?;
    if args.command.trim().is_empty() {
        return Err(ToolOutput::error("command must not be empty"));
    }
    let limits = &ctx.state.config.sandbox;
    let timeout_s = match args.timeout_s {
        Some(0) => return Err(ToolOutput::error("timeout_s must be at least 1")),
        Some(t) => t.min(limits.max_exec_timeout_seconds),
        None => limits.default_exec_timeout_seconds,
    };
    let (id, handle, kind, note) = resolve(ctx, args.sandbox_id).await?;
    let backend = ctx
        .state
        .backends
        .get(kind)
        .await
        .map_err(|e| ToolOutput::error(e.to_string()))?;
    let request = ExecRequest {
        command: Some(args.command),
        timeout_ms: Some(timeout_s.saturating_mul(1000)),
        max_output_bytes: Some(limits.max_output_bytes),
        ..ExecRequest::default()
    };
    let span = tracing::info_span!(
        target: airlock_telemetry::TARGET,
        "sandbox.exec",
        "sandbox.id" = %id,
        "sandbox.backend" = %kind,
        "process.exit.code" = tracing::field::Empty,
        "airlock.timed_out" = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let result = exec_teed(ctx, backend.as_ref(), kind, &handle, request)
        .instrument(span.clone())
        .await;
    // Counted like the HTTP API's execs (`airlock_sandbox_execs_total`).
    let outcome = match &result {
        Ok(r) if r.timed_out => crate::metrics::Outcome::Timeout,
        Ok(_) => crate::metrics::Outcome::Ok,
        Err(_) => crate::metrics::Outcome::Error,
    };
    ctx.state
        .metrics
        .exec(kind.as_str(), outcome, started.elapsed());
    match &result {
        Ok(r) => {
            if let Some(code) = r.exit_code {
                span.record("process.exit.code", code);
            }
            span.record("airlock.timed_out", r.timed_out);
        }
        Err(_) => {
            span.record("error.type", "exec_failed");
        }
    }
    drop(span);
    match result {
        Ok(r) => {
            let mut value = json!({
                "sandbox_id": id,
                "exit_code": r.exit_code,
                "signal": r.signal,
                "stdout": r.stdout,
                "stderr": r.stderr,
                "timed_out": r.timed_out,
                "truncated": r.truncated,
                "duration_ms": r.duration_ms,
            });
            if let Some(note) = note {
                value["note"] = Value::String(note);
            }
            Ok(ToolOutput::ok(value, Some(id)))
        }
        Err(e) => Err(ToolOutput {
            sandbox_id: Some(id.clone()),
            ..ToolOutput::error(format!("exec in {id} failed: {e}"))
        }),
    }
}

/// Runs the command, handing its output to the session's live followers chunk by chunk as
/// the sandbox prints it ([`crate::sessions::Runtime::exec_output`]), and returns the
/// collected result. Backends without a native stream (Daytona's toolbox answers once) run
/// it plainly.
async fn exec_teed(
    ctx: &Ctx<'_>,
    backend: &dyn crate::sandbox::SandboxBackend,
    kind: BackendKind,
    handle: &crate::sandbox::SandboxHandle,
    request: ExecRequest,
) -> Result<airlock_wire::ExecResult, crate::sandbox::BackendError> {
    use airlock_wire::{ExecCollector, ExecEvent};
    use futures_util::StreamExt;
    if kind == BackendKind::Daytona {
        return backend.exec(handle, request).await;
    }
    let runtime = &ctx.state.sessions;
    let session = ctx.session.id.as_str();
    let mut budget = request
        .max_output_bytes
        .map(|cap| usize::try_from(cap).unwrap_or(usize::MAX));
    let mut dropped = false;
    let mut stream = backend.exec_stream(handle, request).await?;
    let mut collector = ExecCollector::default();
    while let Some(event) = stream.next().await {
        let mut event = event?;
        if let (ExecEvent::Stdout { data } | ExecEvent::Stderr { data }, Some(left)) =
            (&mut event, budget.as_mut())
        {
            if data.len() > *left {
                let mut cut = *left;
                while !data.is_char_boundary(cut) {
                    cut -= 1;
                }
                data.truncate(cut);
                dropped = true;
            }
            *left -= data.len();
        }
        let live = match &event {
            ExecEvent::Stdout { data } if !data.is_empty() => Some(("stdout", data)),
            ExecEvent::Stderr { data } if !data.is_empty() => Some(("stderr", data)),
            _ => None,
        };
        if let Some((which, data)) = live
            && runtime.output_followed(session)
        {
            runtime.exec_output(
                session,
                crate::sessions::ExecOutput {
                    call_id: ctx.call_id.to_string(),
                    stream: which,
                    data: data.clone(),
                },
            );
        }
        collector.push(event);
    }
    let mut result = collector.finish().ok_or_else(|| {
        crate::sandbox::BackendError::AgentUnreachable(
            "exec stream ended without an exit record".into(),
        )
    })?;
    result.truncated |= dropped;
    Ok(result)
}

async fn read_file(ctx: &Ctx<'_>, arguments: &str) -> Result<ToolOutput, ToolOutput> {
    let args: ReadArgs = parse(READ_FILE, arguments)?;
    let (id, handle, kind, note) = resolve(ctx, args.sandbox_id).await?;
    let backend = ctx
        .state
        .backends
        .get(kind)
        .await
        .map_err(|e| ToolOutput::error(e.to_string()))?;
    match backend.read_file(&handle, &args.path).await {
        Ok(bytes) => {
            let mut value = json!({
                "sandbox_id": id,
                "path": args.path,
                "content": String::from_utf8_lossy(&bytes),
            });
            if let Some(note) = note {
                value["note"] = Value::String(note);
            }
            Ok(ToolOutput::ok(value, Some(id)))
        }
        Err(e) => Err(ToolOutput::error(format!("reading {}: {e}", args.path))),
    }
}

async fn write_file(ctx: &Ctx<'_>, arguments: &str) -> Result<ToolOutput, ToolOutput> {
    let args: WriteArgs = parse(WRITE_FILE, arguments)?;
    let (id, handle, kind, note) = resolve(ctx, args.sandbox_id).await?;
    let backend = ctx
        .state
        .backends
        .get(kind)
        .await
        .map_err(|e| ToolOutput::error(e.to_string()))?;
    let len = args.content.len();
    match backend
        .write_file(&handle, &args.path, Bytes::from(args.content))
        .await
    {
        Ok(()) => {
            let mut value = json!({ "sandbox_id": id, "path": args.path, "bytes_written": len });
            if let Some(note) = note {
                value["note"] = Value::String(note);
            }
            Ok(ToolOutput::ok(value, Some(id)))
        }
        Err(e) => Err(ToolOutput::error(format!("writing {}: {e}", args.path))),
    }
}

/// Cuts `content` to at most `budget` bytes (on a char boundary), saying how much was cut, so
/// one chatty command cannot blow the model's context or the brain's memory.
pub fn truncate_output(content: String, budget: usize) -> String {
    if content.len() <= budget {
        return content;
    }
    let marker_room = 64;
    let mut cut = budget.saturating_sub(marker_room);
    while cut > 0 && !content.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = content.len() - cut;
    let mut out = String::with_capacity(cut + marker_room);
    out.push_str(&content[..cut]);
    out.push_str(&format!("\n…[output truncated: {dropped} more bytes]"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_budget_and_char_boundaries() {
        let short = "hello".to_string();
        assert_eq!(truncate_output(short.clone(), 256), short);
        let long = "é".repeat(1000); // 2000 bytes
        let cut = truncate_output(long, 300);
        assert!(cut.len() <= 300, "{} bytes", cut.len());
        assert!(cut.contains("output truncated"));
        assert!(cut.starts_with('é'));
    }

    #[test]
    fn malformed_arguments_become_tool_errors_naming_the_problem() {
        let e = parse::<ExecuteArgs>(SANDBOX_EXECUTE, "{\"command\": 5}").unwrap_err();
        assert!(e.is_error);
        assert!(
            e.content.contains("invalid arguments for sandbox_execute"),
            "{}",
            e.content
        );
        let e = parse::<ExecuteArgs>(SANDBOX_EXECUTE, "{not json").unwrap_err();
        assert!(e.is_error);
        let e = parse::<ExecuteArgs>(SANDBOX_EXECUTE, "{\"command\":\"ls\",\"session_id\":\"x\"}")
            .unwrap_err();
        assert!(e.content.contains("session_id"), "{}", e.content);
        let ok = parse::<ExecuteArgs>(SANDBOX_EXECUTE, "{\"command\":\"ls\"}").unwrap();
        assert_eq!(ok.command, "ls");
    }
}
