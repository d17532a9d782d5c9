//! Wire types of the sandbox-agent HTTP API (see DESIGN.md, "Contract: sandbox-agent HTTP API").
//!
//! This crate is serde-only on purpose: `brain` and `sandbox-agent` share these types without
//! either depending on the other's runtime. Request types a caller writes reject unknown
//! fields so a typo (`timeout` for `timeout_ms`) is an error, not a silently ignored option.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default port the agent listens on inside a sandbox.
pub const DEFAULT_AGENT_PORT: u16 = 7700;
/// Env var the agent reads its bearer token from.
pub const AGENT_TOKEN_ENV: &str = "AIRLOCK_AGENT_TOKEN";
/// NDJSON content type used for streamed exec output.
pub const NDJSON: &str = "application/x-ndjson";

/// `POST /exec` body. Exactly one of `command` (run by `sh -c`) or `argv` must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// Non-streamed `POST /exec` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, or `None` when the process was killed by a signal.
    pub exit_code: Option<i32>,
    /// Signal that ended the process, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// True when output beyond `max_output_bytes` was dropped.
    pub truncated: bool,
    pub duration_ms: u64,
}

/// Summary sent as the last line of a streamed exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration_ms: u64,
}

/// One line of the NDJSON exec stream: any number of `stdout`/`stderr` chunks, then exactly
/// one `exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecEvent {
    Stdout { data: String },
    Stderr { data: String },
    Exit(ExecExit),
}

/// Folds a stream of events into the non-streamed result shape.
#[derive(Debug, Default)]
pub struct ExecCollector {
    stdout: String,
    stderr: String,
    exit: Option<ExecExit>,
}

impl ExecCollector {
    pub fn push(&mut self, event: ExecEvent) {
        match event {
            ExecEvent::Stdout { data } => self.stdout.push_str(&data),
            ExecEvent::Stderr { data } => self.stderr.push_str(&data),
            ExecEvent::Exit(exit) => self.exit = Some(exit),
        }
    }

    /// The folded result, or `None` if the stream ended without an `exit` line.
    pub fn finish(self) -> Option<ExecResult> {
        let exit = self.exit?;
        Some(ExecResult {
            exit_code: exit.exit_code,
            signal: exit.signal,
            stdout: self.stdout,
            stderr: self.stderr,
            timed_out: exit.timed_out,
            truncated: exit.truncated,
            duration_ms: exit.duration_ms,
        })
    }
}

/// One entry of `GET /files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub is_dir: bool,
}

/// `GET /health` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Whether `POST /configure` has been applied (absent from older agents = unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured: Option<bool>,
    /// Whether a command has run or a file was written through the API (absent from older
    /// agents = unknown). A warm-pool sandbox must show `false` before it is handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<bool>,
}

/// `POST /configure` body: applied once, before the first command, to a sandbox started
/// without its grant (a warm pool). Every later exec inherits `env` (a request's own `env`
/// wins on a clash); each entry of `files` (absolute path → UTF-8 text, e.g. the proxy CA)
/// is written, parents created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigureRequest {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// Error body shared by the agent and the brain: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_event_lines_match_the_contract() {
        let line = serde_json::to_string(&ExecEvent::Stdout {
            data: "hi\n".into(),
        })
        .unwrap();
        assert_eq!(line, r#"{"type":"stdout","data":"hi\n"}"#);
        let exit = ExecEvent::Exit(ExecExit {
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            truncated: true,
            duration_ms: 12,
        });
        assert_eq!(
            serde_json::to_string(&exit).unwrap(),
            r#"{"type":"exit","exit_code":3,"signal":null,"timed_out":false,"truncated":true,"duration_ms":12}"#
        );
    }

    #[test]
    fn exec_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<ExecRequest>(r#"{"command":"true","timeout":5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `timeout`"), "{err}");
    }

    #[test]
    fn collector_folds_stream_and_requires_exit() {
        let mut c = ExecCollector::default();
        c.push(ExecEvent::Stdout { data: "a".into() });
        c.push(ExecEvent::Stderr { data: "b".into() });
        c.push(ExecEvent::Stdout { data: "c".into() });
        let mut open = ExecCollector::default();
        open.push(ExecEvent::Stdout { data: "x".into() });
        assert!(open.finish().is_none());
        c.push(ExecEvent::Exit(ExecExit {
            exit_code: Some(0),
            ..Default::default()
        }));
        let r = c.finish().unwrap();
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
            ("ac", "b", Some(0))
        );
    }
}
