//! Running one code cell in a sandbox through the persistent REPL driver
//! (`driver.py`), and turning its result into what the model and the client see.

use super::{ExecOutput, HostError, SandboxHost};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::Duration;

const DRIVER: &str = include_str!("driver.py");
const RESULT_MARK: &str = "AIRLOCK-CI-RESULT ";
/// Beyond this the cell would not fit one `sh -c` argument (Linux MAX_ARG_STRLEN
/// is 128 KiB; base64 grows the code by 4/3, the driver takes the rest).
pub const MAX_CODE_BYTES: usize = 64 * 1024;

/// The shell prefix that installs the driver once per sandbox (content-addressed
/// file name, so a changed driver is a new file) and runs it.
fn prelude() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, DRIVER.as_bytes());
        let tag = hex::encode(&digest.as_ref()[..6]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(DRIVER);
        format!(
            "D=\"${{TMPDIR:-/tmp}}/airlock-ci/driver-{tag}.py\"; \
             [ -s \"$D\" ] || {{ mkdir -p -m 700 \"${{D%/*}}\" && printf %s '{b64}' | base64 -d > \"$D.tmp\" && mv \"$D.tmp\" \"$D\"; }} || exit 97; \
             exec python3 -S \"$D\" run"
        )
    })
}

/// The command that runs `code` as one cell.
pub fn command(code: &str, timeout: Duration) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(code);
    format!("{} '{b64}' {}", prelude(), timeout.as_secs().max(1))
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CellError {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub traceback: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Image {
    pub name: String,
    pub mime: String,
    /// base64
    pub data: String,
}

/// One cell's result.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CellResult {
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub error: Option<CellError>,
    #[serde(default)]
    pub images: Vec<Image>,
}

impl CellResult {
    /// Everything the program printed, then the error with its traceback
    /// (OpenAI's `logs` output mixes them the same way).
    pub fn logs(&self) -> String {
        let mut s = String::with_capacity(self.stdout.len() + self.stderr.len());
        s.push_str(&self.stdout);
        s.push_str(&self.stderr);
        if let Some(e) = &self.error {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            if e.traceback.is_empty() {
                s.push_str(&format!("{}: {}\n", e.name, e.value));
            } else {
                s.push_str(&e.traceback);
            }
        }
        s
    }

    /// The tool result the model reads.
    pub fn for_model(&self) -> String {
        let mut s = self.logs();
        for i in &self.images {
            s.push_str(&format!(
                "\n[image {} ({}) shown to the user]",
                i.name, i.mime
            ));
        }
        if s.trim().is_empty() {
            s.push_str("(no output)");
        }
        s
    }

    /// `outputs` of a `code_interpreter_call` item: logs, then images as data URLs.
    pub fn outputs(&self) -> Value {
        let mut v = Vec::new();
        let logs = self.logs();
        if !logs.is_empty() {
            v.push(json!({"type": "logs", "logs": logs}));
        }
        for i in &self.images {
            v.push(json!({"type": "image", "url": format!("data:{};base64,{}", i.mime, i.data)}));
        }
        Value::Array(v)
    }
}

/// Parse the driver's answer; anything else (no python3, a killed client) is
/// reported as an error cell carrying the raw output.
pub fn parse(out: &ExecOutput) -> CellResult {
    if let Some(line) = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(RESULT_MARK))
        && let Ok(r) = serde_json::from_str::<CellResult>(line)
    {
        return r;
    }
    let value = if out.timed_out {
        "the sandbox command timed out".to_owned()
    } else if out.exit_code == Some(97) {
        "could not install the interpreter driver in the sandbox".to_owned()
    } else {
        format!(
            "the interpreter did not answer (exit code {:?}); is python3 in the sandbox image?",
            out.exit_code
        )
    };
    CellResult {
        stdout: out.stdout.clone(),
        stderr: out.stderr.clone(),
        error: Some(CellError {
            name: "SandboxError".into(),
            value,
            traceback: String::new(),
        }),
        images: Vec::new(),
    }
}

/// Run one cell in `sandbox_id`.
pub async fn run_cell(
    host: &dyn SandboxHost,
    sandbox_id: &str,
    code: &str,
    timeout: Duration,
) -> Result<CellResult, HostError> {
    if code.len() > MAX_CODE_BYTES {
        return Ok(CellResult {
            error: Some(CellError {
                name: "ValueError".into(),
                value: format!(
                    "code is {} bytes; one call takes at most {MAX_CODE_BYTES} (split it, or write files in steps)",
                    code.len()
                ),
                traceback: String::new(),
            }),
            ..Default::default()
        });
    }
    // The sandbox command gets a margin over the cell's own timeout, so the driver
    // can interrupt the cell and still answer.
    let out = host
        .exec(
            sandbox_id,
            &command(code, timeout),
            timeout + Duration::from_secs(10),
        )
        .await?;
    Ok(parse(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_driver_answer_and_failures() {
        let ok = ExecOutput {
            exit_code: Some(0),
            stdout: "AIRLOCK-CI-RESULT {\"stdout\":\"45\\n\",\"stderr\":\"\",\"error\":null,\"images\":[]}\n".into(),
            ..Default::default()
        };
        let r = parse(&ok);
        assert_eq!(r.stdout, "45\n");
        assert_eq!(r.outputs(), json!([{"type": "logs", "logs": "45\n"}]));
        let broken = ExecOutput {
            exit_code: Some(127),
            stderr: "sh: python3: not found".into(),
            ..Default::default()
        };
        let r = parse(&broken);
        assert!(r.logs().contains("python3: not found"));
        assert!(r.for_model().contains("SandboxError"));
    }

    #[test]
    fn command_embeds_code_as_base64_only() {
        let c = command("print('it''s')\n$(rm -rf /)", Duration::from_secs(5));
        assert!(
            !c.contains("rm -rf"),
            "code must not reach the shell as text"
        );
        assert!(c.ends_with(" 5"));
    }

    /// The driver itself, run with the host's python3 (skipped when absent):
    /// state persists between cells, errors carry tracebacks, last expressions echo.
    #[test]
    fn driver_keeps_state_between_cells() {
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_err()
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = |code: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(command(code, Duration::from_secs(20)))
                .env("TMPDIR", dir.path())
                .output()
                .unwrap();
            parse(&ExecOutput {
                exit_code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                timed_out: false,
            })
        };
        let r = run("x = sum(range(10))\nprint('sum', x)");
        assert_eq!(r.stdout, "sum 45\n", "{r:?}");
        let r = run("x + 1");
        assert_eq!(r.stdout, "46\n", "{r:?}");
        let r = run("import os\nos.system('echo from-a-subprocess')\n1/0");
        assert!(r.stdout.contains("from-a-subprocess"), "{r:?}");
        let e = r.error.unwrap();
        assert_eq!(e.name, "ZeroDivisionError");
        assert!(e.traceback.contains("<cell>"), "{}", e.traceback);
        // Stop the REPL server this test started.
        if let Ok(pid) = std::fs::read_to_string(dir.path().join("airlock-ci/repl.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}
