//! The sandbox tools offered over MCP, and how a `tools/call` runs.
//!
//! One table ([`TOOLS`]) is the single source of each tool's argument list: `tools/list`
//! renders it as JSON Schema and `tools/call` checks arguments against it before anything
//! runs, so a wrong type or a missing or unknown argument is a `-32602` that names it.
//! Everything that goes wrong after that (a sandbox of another session, a failed exec, an
//! empty command) is a tool result with `isError: true`, which the model can act on.
//!
//! The session is never an argument: the caller's MCP session is passed in by the transport,
//! sandboxes are created with `session_id` = that session, and a `sandbox_id` argument is
//! only honoured if the sandbox belongs to it.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::jsonrpc::RpcError;
use super::session::{self, McpSession};
use crate::api::sandboxes::{
    ExecBody, ProvisionBody, exec_collect, exec_request, usable_handle, validate_provision,
};
use crate::error::ApiError;
use crate::lifecycle;
use crate::sandbox::{SandboxBackend, SandboxHandle};
use crate::state::AppState;
use crate::store::SandboxRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    /// A non-negative integer.
    Integer,
    StringArray,
}

struct Arg {
    name: &'static str,
    kind: Kind,
    required: bool,
    description: &'static str,
}

struct Tool {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    args: &'static [Arg],
    /// JSON Schema of `structuredContent` (offered from protocol revision 2025-06-18 on).
    output: fn() -> Value,
    read_only: bool,
    destructive: bool,
}

const SANDBOX_ID: Arg = Arg {
    name: "sandbox_id",
    kind: Kind::String,
    required: false,
    description: "A sandbox created in this MCP session; omitted = the most recent one.",
};

const TOOLS: &[Tool] = &[
    Tool {
        name: "sandbox_provision",
        title: "Provision a sandbox",
        description: "Create an isolated sandbox to run commands in. Credentials are given by \
                      name and arrive as stub values that the egress proxy swaps for the real \
                      secret only toward the hosts the secret is bound to. Returns sandbox_id.",
        args: &[
            Arg {
                name: "task_description",
                kind: Kind::String,
                required: true,
                description: "What the sandbox is for (kept with the sandbox for audit).",
            },
            Arg {
                name: "credentials",
                kind: Kind::StringArray,
                required: false,
                description: "Names of credentials to grant, e.g. [\"GITHUB_TOKEN\"].",
            },
            Arg {
                name: "from_snapshot",
                kind: Kind::String,
                required: false,
                description: "A snapshot id from sandbox_snapshot: start with its workspace \
                              files (the grant is always fresh).",
            },
        ],
        output: provision_output_schema,
        read_only: false,
        destructive: false,
    },
    Tool {
        name: "sandbox_execute",
        title: "Run a shell command in a sandbox",
        description: "Run a command with `sh -c` in a sandbox and return its exit code, \
                      stdout and stderr (output is capped; timed_out/truncated say when a \
                      limit was hit).",
        args: &[
            SANDBOX_ID,
            Arg {
                name: "command",
                kind: Kind::String,
                required: true,
                description: "The shell command (`sh -c`).",
            },
            Arg {
                name: "cwd",
                kind: Kind::String,
                required: false,
                description: "Working directory; default: the sandbox's workspace.",
            },
            Arg {
                name: "timeout_s",
                kind: Kind::Integer,
                required: false,
                description: "Seconds before the command is killed (clamped to the brain's maximum).",
            },
        ],
        output: exec_output_schema,
        read_only: false,
        destructive: true,
    },
    Tool {
        name: "sandbox_read_file",
        title: "Read a file from a sandbox",
        description: "Return a UTF-8 text file's content. Relative paths are relative to the \
                      sandbox's workspace.",
        args: &[
            SANDBOX_ID,
            Arg {
                name: "path",
                kind: Kind::String,
                required: true,
                description: "File path.",
            },
        ],
        output: read_output_schema,
        read_only: true,
        destructive: false,
    },
    Tool {
        name: "sandbox_write_file",
        title: "Write a file in a sandbox",
        description: "Create or replace a file (parent directories are created).",
        args: &[
            SANDBOX_ID,
            Arg {
                name: "path",
                kind: Kind::String,
                required: true,
                description: "File path.",
            },
            Arg {
                name: "content",
                kind: Kind::String,
                required: true,
                description: "The whole new content (UTF-8 text).",
            },
        ],
        output: write_output_schema,
        read_only: false,
        destructive: true,
    },
    Tool {
        name: "sandbox_list_files",
        title: "List a directory in a sandbox",
        description: "List the entries of a directory (name, size, is_dir).",
        args: &[
            SANDBOX_ID,
            Arg {
                name: "path",
                kind: Kind::String,
                required: true,
                description: "Directory path, e.g. \".\".",
            },
        ],
        output: list_output_schema,
        read_only: true,
        destructive: false,
    },
    Tool {
        name: "sandbox_destroy",
        title: "Destroy a sandbox",
        description: "Destroy a sandbox of this session now (it would otherwise live until \
                      its TTL or the end of the MCP session).",
        args: &[Arg {
            name: "sandbox_id",
            kind: Kind::String,
            required: true,
            description: "A sandbox created in this MCP session.",
        }],
        output: destroy_output_schema,
        read_only: false,
        destructive: true,
    },
    Tool {
        name: "sandbox_pause",
        title: "Pause a sandbox",
        description: "Freeze every process of a sandbox of this session, memory kept (docker); \
                      its TTL keeps counting. Backends without pause answer not_supported.",
        args: &[Arg {
            name: "sandbox_id",
            kind: Kind::String,
            required: true,
            description: "A sandbox created in this MCP session.",
        }],
        output: destroy_output_schema,
        read_only: false,
        destructive: false,
    },
    Tool {
        name: "sandbox_snapshot",
        title: "Snapshot a sandbox's workspace",
        description: "Store the files under /workspace of a sandbox of this session and return \
                      a snapshot id for sandbox_provision's from_snapshot. Never captures \
                      credentials: a workspace file holding one is refused. Backends without \
                      snapshots answer not_supported.",
        args: &[SANDBOX_ID],
        output: snapshot_output_schema,
        read_only: false,
        destructive: false,
    },
    Tool {
        name: "sandbox_resume",
        title: "Resume a paused sandbox",
        description: "Undo sandbox_pause.",
        args: &[Arg {
            name: "sandbox_id",
            kind: Kind::String,
            required: true,
            description: "A sandbox created in this MCP session.",
        }],
        output: destroy_output_schema,
        read_only: false,
        destructive: false,
    },
];

fn provision_output_schema() -> Value {
    object_schema(
        json!({
            "sandbox_id": {"type": "string"},
            "backend": {"type": "string"},
            "status": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
            "credentials": {"type": "array", "items": {"type": "string"}},
        }),
        &[
            "sandbox_id",
            "backend",
            "status",
            "expires_at",
            "credentials",
        ],
    )
}

fn exec_output_schema() -> Value {
    object_schema(
        json!({
            "sandbox_id": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
            "signal": {"type": ["integer", "null"]},
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "timed_out": {"type": "boolean"},
            "truncated": {"type": "boolean"},
            "duration_ms": {"type": "integer"},
        }),
        &[
            "sandbox_id",
            "exit_code",
            "signal",
            "stdout",
            "stderr",
            "timed_out",
            "truncated",
            "duration_ms",
        ],
    )
}

fn read_output_schema() -> Value {
    object_schema(
        json!({
            "sandbox_id": {"type": "string"},
            "path": {"type": "string"},
            "size": {"type": "integer"},
            "content": {"type": "string"},
        }),
        &["sandbox_id", "path", "size", "content"],
    )
}

fn write_output_schema() -> Value {
    object_schema(
        json!({
            "sandbox_id": {"type": "string"},
            "path": {"type": "string"},
            "bytes_written": {"type": "integer"},
        }),
        &["sandbox_id", "path", "bytes_written"],
    )
}

fn list_output_schema() -> Value {
    object_schema(
        json!({
            "sandbox_id": {"type": "string"},
            "path": {"type": "string"},
            "entries": {
                "type": "array",
                "items": object_schema(
                    json!({
                        "name": {"type": "string"},
                        "size": {"type": "integer"},
                        "is_dir": {"type": "boolean"},
                    }),
                    &["name", "size", "is_dir"],
                ),
            },
        }),
        &["sandbox_id", "path", "entries"],
    )
}

fn snapshot_output_schema() -> Value {
    object_schema(
        json!({
            "sandbox_id": {"type": "string"},
            "snapshot": {"type": "string"},
            "size_bytes": {"type": "integer"},
        }),
        &["sandbox_id", "snapshot", "size_bytes"],
    )
}

fn destroy_output_schema() -> Value {
    object_schema(
        json!({
            "sandbox_id": {"type": "string"},
            "status": {"type": "string"},
        }),
        &["sandbox_id", "status"],
    )
}

fn object_schema(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn input_schema(args: &[Arg]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for arg in args {
        let schema = match arg.kind {
            Kind::String => json!({"type": "string", "description": arg.description}),
            Kind::Integer => {
                json!({"type": "integer", "minimum": 0, "description": arg.description})
            }
            Kind::StringArray => json!({
                "type": "array",
                "items": {"type": "string"},
                "description": arg.description,
            }),
        };
        properties.insert(arg.name.into(), schema);
        if arg.required {
            required.push(arg.name);
        }
    }
    object_schema(Value::Object(properties), &required)
}

/// Whether a protocol revision has `outputSchema`, `structuredContent` and tool `title`s
/// (added in 2025-06-18). Revisions are dates, so they compare as strings.
pub fn has_structured_output(protocol_version: &str) -> bool {
    protocol_version >= "2025-06-18"
}

/// The `tools/list` result for a session on `protocol_version`.
pub fn list(protocol_version: &str) -> Value {
    let structured = has_structured_output(protocol_version);
    let tools: Vec<Value> = TOOLS
        .iter()
        .map(|tool| {
            let mut t = json!({
                "name": tool.name,
                "description": tool.description,
                "inputSchema": input_schema(tool.args),
                "annotations": {
                    "title": tool.title,
                    "readOnlyHint": tool.read_only,
                    "destructiveHint": tool.destructive,
                    "idempotentHint": tool.read_only,
                    "openWorldHint": false,
                },
            });
            if structured {
                t["title"] = json!(tool.title);
                t["outputSchema"] = (tool.output)();
            }
            t
        })
        .collect();
    json!({ "tools": tools })
}

/// Checks `arguments` against the tool's table entry: every required argument present, no
/// unknown ones, every value of its declared type.
fn check_args(tool: &Tool, arguments: &Map<String, Value>) -> Result<(), RpcError> {
    let name = tool.name;
    for key in arguments.keys() {
        if !tool.args.iter().any(|a| a.name == key) {
            let known: Vec<&str> = tool.args.iter().map(|a| a.name).collect();
            return Err(RpcError::invalid_params(format!(
                "{name}: unknown argument `{key}` (expected: {})",
                known.join(", ")
            )));
        }
    }
    for arg in tool.args {
        let value = match arguments.get(arg.name) {
            None | Some(Value::Null) if arg.required => {
                return Err(RpcError::invalid_params(format!(
                    "{name}: argument `{}` is required",
                    arg.name
                )));
            }
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        let ok = match arg.kind {
            Kind::String => value.is_string(),
            Kind::Integer => value.is_u64(),
            Kind::StringArray => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
        };
        if !ok {
            let expected = match arg.kind {
                Kind::String => "a string",
                Kind::Integer => "a non-negative integer",
                Kind::StringArray => "an array of strings",
            };
            return Err(RpcError::invalid_params(format!(
                "{name}: argument `{}` must be {expected}",
                arg.name
            )));
        }
    }
    Ok(())
}

/// A tool's outcome: structured data on success, a message for the model on failure.
type Outcome = Result<Value, String>;

/// Runs `tools/call`. `Err` is a protocol error (unknown tool, arguments that do not fit the
/// schema); tool failures are an `Ok` result with `isError: true`.
pub async fn call(
    state: &AppState,
    session: &McpSession,
    params: &Map<String, Value>,
) -> Result<Value, RpcError> {
    let name = match params.get("name") {
        Some(Value::String(name)) => name.as_str(),
        Some(_) => return Err(RpcError::invalid_params("`name` must be a string")),
        None => return Err(RpcError::invalid_params("`name` is required")),
    };
    let empty = Map::new();
    let args = match params.get("arguments") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(args)) => args,
        Some(_) => return Err(RpcError::invalid_params("`arguments` must be an object")),
    };
    let tool = TOOLS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| RpcError::invalid_params(format!("Unknown tool: {name}")))?;
    check_args(tool, args)?;
    let outcome = match tool.name {
        "sandbox_provision" => provision(state, session, args).await,
        "sandbox_execute" => execute(state, session, args).await,
        "sandbox_read_file" => read_file(state, session, args).await,
        "sandbox_write_file" => write_file(state, session, args).await,
        "sandbox_list_files" => list_files(state, session, args).await,
        "sandbox_destroy" => destroy(state, session, args).await,
        "sandbox_pause" => pause_or_resume(state, session, args, true).await,
        "sandbox_resume" => pause_or_resume(state, session, args, false).await,
        "sandbox_snapshot" => snapshot(state, session, args).await,
        other => {
            tracing::error!(tool = other, "tool listed but not dispatched");
            return Err(RpcError::internal());
        }
    };
    Ok(result(
        outcome,
        has_structured_output(&session.protocol_version),
    ))
}

/// A `CallToolResult`. The text block carries the same JSON as `structuredContent`, as the
/// specification recommends, so clients that only read text lose nothing.
fn result(outcome: Outcome, structured: bool) -> Value {
    match outcome {
        Ok(value) => {
            let text = value.to_string();
            let mut r = json!({
                "content": [{"type": "text", "text": text}],
                "isError": false,
            });
            if structured {
                r["structuredContent"] = value;
            }
            r
        }
        Err(message) => json!({
            "content": [{"type": "text", "text": message}],
            "isError": true,
        }),
    }
}

fn api_error(e: ApiError) -> String {
    format!("{}: {}", e.code, e.message)
}

fn str_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

/// The sandbox a call addresses: the named one if this session created it, else the
/// session's most recent one. A sandbox of another session is answered exactly like one that
/// does not exist, so ids cannot be probed.
async fn resolve(
    state: &AppState,
    session: &McpSession,
    args: &Map<String, Value>,
) -> Result<SandboxRow, String> {
    let internal = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "mcp: reading sandboxes");
        "internal error reading the sandbox".to_string()
    };
    let id = match str_arg(args, "sandbox_id") {
        Some(id) => id.to_string(),
        None => session::latest_sandbox(&state.store, &session.id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                "no sandbox in this session yet: call sandbox_provision first".to_string()
            })?,
    };
    match state.store.get_sandbox(&id).await.map_err(internal)? {
        Some(row) if row.session_id.as_deref() == Some(session.id.as_str()) => Ok(row),
        _ => Err(format!("no such sandbox in this session: {id}")),
    }
}

async fn provision(state: &AppState, session: &McpSession, args: &Map<String, Value>) -> Outcome {
    let credentials = args.get("credentials").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    let body = ProvisionBody {
        task_description: str_arg(args, "task_description").map(str::to_string),
        backend: None,
        image: None,
        credentials,
        ttl_s: None,
        resources: None,
        from_snapshot: str_arg(args, "from_snapshot").map(str::to_string),
        workspace: None,
    };
    let mut params = validate_provision(state, body).map_err(api_error)?;
    params.session_id = Some(session.id.clone());
    let row = lifecycle::provision(state, params)
        .await
        .map_err(|e| api_error(e.into()))?;
    if row.status != crate::store::SandboxStatus::Running {
        return Err(format!("sandbox {} ended as {}", row.id, row.status));
    }
    let view = crate::api::sandboxes::SandboxView::from(&row);
    Ok(json!({
        "sandbox_id": view.id,
        "backend": view.backend,
        "status": view.status,
        "expires_at": view.expires_at,
        "credentials": view.credentials,
    }))
}

async fn execute(state: &AppState, session: &McpSession, args: &Map<String, Value>) -> Outcome {
    let row = resolve(state, session, args).await?;
    let now = state.store.clock().await.map_err(|e| api_error(e.into()))?;
    let handle = usable_handle(&row, now).map_err(api_error)?;
    let body = ExecBody {
        command: str_arg(args, "command").unwrap_or_default().to_string(),
        cwd: str_arg(args, "cwd").map(str::to_string),
        timeout_s: args.get("timeout_s").and_then(Value::as_u64),
    };
    let request = exec_request(state, body).map_err(api_error)?;
    let r = exec_collect(state, &row, &handle, request)
        .await
        .map_err(api_error)?;
    Ok(json!({
        "sandbox_id": row.id,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "timed_out": r.timed_out,
        "truncated": r.truncated,
        "duration_ms": r.duration_ms,
    }))
}

/// The session's sandbox named by `args` (or its latest), a handle that may take calls now,
/// and its backend: what every file tool starts from.
async fn file_target(
    state: &AppState,
    session: &McpSession,
    args: &Map<String, Value>,
) -> Result<(SandboxRow, SandboxHandle, Arc<dyn SandboxBackend>), String> {
    let row = resolve(state, session, args).await?;
    let now = state.store.clock().await.map_err(|e| api_error(e.into()))?;
    let handle = usable_handle(&row, now).map_err(api_error)?;
    let backend = state
        .backends
        .get(row.backend)
        .await
        .map_err(|e| api_error(e.into()))?;
    Ok((row, handle, backend))
}

async fn read_file(state: &AppState, session: &McpSession, args: &Map<String, Value>) -> Outcome {
    let (row, handle, backend) = file_target(state, session, args).await?;
    let path = str_arg(args, "path").unwrap_or_default();
    let bytes = backend
        .read_file(&handle, path)
        .await
        .map_err(|e| api_error(e.into()))?;
    let cap = state.config.sandbox.max_output_bytes;
    if bytes.len() as u64 > cap {
        return Err(format!(
            "{path} is {} bytes, more than the {cap}-byte limit (sandbox.max_output_bytes); \
             read a part with sandbox_execute (e.g. head -c)",
            bytes.len()
        ));
    }
    let size = bytes.len();
    let content = String::from_utf8(bytes.into()).map_err(|_| {
        format!("{path} is not UTF-8 text; inspect it with sandbox_execute (e.g. base64)")
    })?;
    Ok(json!({"sandbox_id": row.id, "path": path, "size": size, "content": content}))
}

async fn write_file(state: &AppState, session: &McpSession, args: &Map<String, Value>) -> Outcome {
    let (row, handle, backend) = file_target(state, session, args).await?;
    let path = str_arg(args, "path").unwrap_or_default();
    let content = str_arg(args, "content").unwrap_or_default();
    let data = Bytes::copy_from_slice(content.as_bytes());
    let written = data.len();
    backend
        .write_file(&handle, path, data)
        .await
        .map_err(|e| api_error(e.into()))?;
    Ok(json!({"sandbox_id": row.id, "path": path, "bytes_written": written}))
}

async fn list_files(state: &AppState, session: &McpSession, args: &Map<String, Value>) -> Outcome {
    let (row, handle, backend) = file_target(state, session, args).await?;
    let path = str_arg(args, "path").unwrap_or_default();
    let entries = backend
        .list_files(&handle, path)
        .await
        .map_err(|e| api_error(e.into()))?;
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| json!({"name": e.name, "size": e.size, "is_dir": e.is_dir}))
        .collect();
    Ok(json!({"sandbox_id": row.id, "path": path, "entries": entries}))
}

async fn destroy(state: &AppState, session: &McpSession, args: &Map<String, Value>) -> Outcome {
    let row = resolve(state, session, args).await?;
    let state2 = state.clone();
    let id = row.id.clone();
    // Spawned so a client hanging up mid-destroy cannot leave the row half-way.
    let row = tokio::spawn(async move { lifecycle::destroy(&state2, &id).await })
        .await
        .map_err(|e| api_error(ApiError::internal(e.to_string())))?
        .map_err(|e| api_error(e.into()))?;
    Ok(json!({"sandbox_id": row.id, "status": row.status.to_string()}))
}

async fn pause_or_resume(
    state: &AppState,
    session: &McpSession,
    args: &Map<String, Value>,
    pause: bool,
) -> Outcome {
    let row = resolve(state, session, args).await?;
    let _view = crate::api::sandboxes::pause_or_resume(state, &row.id, pause)
        .await
        .map_err(api_error)?;
    let status = if pause { "paused" } else { "running" };
    Ok(json!({"sandbox_id": row.id, "status": status}))
}

async fn snapshot(state: &AppState, session: &McpSession, args: &Map<String, Value>) -> Outcome {
    let row = resolve(state, session, args).await?;
    let now = state.store.clock().await.map_err(|e| api_error(e.into()))?;
    let handle = usable_handle(&row, now).map_err(api_error)?;
    let state2 = state.clone();
    let row2 = row.clone();
    // Spawned: a dropped MCP request cannot leave a stored snapshot without its row.
    let task = tokio::spawn(async move { crate::snapshots::take(&state2, &row2, &handle).await });
    let snapshot = task
        .await
        .map_err(|e| format!("internal: {e}"))?
        .map_err(|e| api_error(e.into()))?;
    Ok(json!({
        "sandbox_id": row.id,
        "snapshot": snapshot.id,
        "size_bytes": snapshot.size_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_closed_object_schema_and_output_only_when_supported() {
        let new = list("2025-11-25");
        let tools = new["tools"].as_array().unwrap();
        assert_eq!(tools.len(), TOOLS.len());
        for t in tools {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            assert_eq!(t["inputSchema"]["additionalProperties"], false, "{t}");
            assert_eq!(t["outputSchema"]["type"], "object", "{t}");
            assert!(t["title"].is_string(), "{t}");
        }
        let exec = tools
            .iter()
            .find(|t| t["name"] == "sandbox_execute")
            .unwrap();
        assert_eq!(exec["inputSchema"]["required"], json!(["command"]));
        assert_eq!(
            exec["inputSchema"]["properties"]["timeout_s"]["type"],
            "integer"
        );
        let old = list("2025-03-26");
        for t in old["tools"].as_array().unwrap() {
            assert!(
                t.get("outputSchema").is_none() && t.get("title").is_none(),
                "{t}"
            );
        }
    }

    #[test]
    fn arguments_are_checked_against_the_table_naming_the_argument() {
        let exec = TOOLS.iter().find(|t| t.name == "sandbox_execute").unwrap();
        let args = |v: Value| v.as_object().unwrap().clone();
        check_args(exec, &args(json!({"command": "true"}))).unwrap();
        check_args(
            exec,
            &args(json!({"command": "true", "sandbox_id": "sb-1", "timeout_s": 5})),
        )
        .unwrap();
        for (bad, needle) in [
            (json!({}), "`command` is required"),
            (json!({"command": null}), "`command` is required"),
            (json!({"command": 1}), "`command` must be a string"),
            (
                json!({"command": "x", "timeout_s": -1}),
                "`timeout_s` must be",
            ),
            (
                json!({"command": "x", "timeout_s": "5"}),
                "`timeout_s` must be",
            ),
            (
                json!({"command": "x", "session_id": "s"}),
                "unknown argument `session_id`",
            ),
        ] {
            let e = check_args(exec, &args(bad.clone())).unwrap_err();
            assert_eq!(e.code, super::super::jsonrpc::INVALID_PARAMS);
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
        let prov = TOOLS
            .iter()
            .find(|t| t.name == "sandbox_provision")
            .unwrap();
        let e = check_args(
            prov,
            &args(json!({"task_description": "t", "credentials": ["A", 1]})),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("`credentials` must be an array of strings")
        );
    }

    #[test]
    fn results_carry_text_and_structured_content_per_revision() {
        let ok = result(Ok(json!({"a": 1})), true);
        assert_eq!(ok["isError"], false);
        assert_eq!(ok["structuredContent"], json!({"a": 1}));
        assert_eq!(
            ok["content"][0],
            json!({"type": "text", "text": "{\"a\":1}"})
        );
        let old = result(Ok(json!({"a": 1})), false);
        assert!(old.get("structuredContent").is_none());
        let err = result(Err("boom".into()), true);
        assert_eq!(err["isError"], true);
        assert_eq!(err["content"][0]["text"], "boom");
        assert!(has_structured_output("2025-06-18") && !has_structured_output("2025-03-26"));
    }
}
