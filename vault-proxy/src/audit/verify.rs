//! Chain verification, record reading (for `GET /v1/audit/egress`) and the
//! `vault-proxy audit verify FILE` command.
//!
//! Line *n* (1-based) must be a complete (newline-terminated) canonical
//! record with `seq == n`, `prev` equal to the hash of line *n−1* (64 zeros
//! for line 1), and `hash` equal to the recomputed hash. The first line that
//! fails is reported by the seq it should have had:
//!
//! | tampering                       | reported seq                  |
//! |---------------------------------|-------------------------------|
//! | a field of record k edited      | k (hash mismatch)             |
//! | record k edited, hash recomputed| k+1 (prev mismatch)           |
//! | record k removed                | k (found k+1)                 |
//! | records k and k+1 swapped       | k (found k+1)                 |
//! | record k duplicated / inserted  | k+1 (found k)                 |
//! | last line cut short             | its seq (truncated)           |
//!
//! Removing whole records from the *end* leaves a valid shorter chain; to
//! detect that, keep the reported last hash (`VerifyReport::last_hash`)
//! somewhere the proxy cannot write and compare.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::AuditError;
use super::record::{AuditRecord, Decision, GENESIS_PREV};

/// Result of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records that verified (before the break, if any).
    pub records: u64,
    /// Hash of the last verified record (`None` for an empty log).
    pub last_hash: Option<String>,
    /// The first break, if the chain is broken.
    pub broken: Option<ChainBreak>,
}

impl VerifyReport {
    /// True if the whole file verified.
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// Where and why a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The seq the first bad line should have had.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Verifies the chain of the log at `path`. I/O problems are errors; a
/// broken chain is a report with `broken` set.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    verify_file(&file).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn verify_file(file: &File) -> std::io::Result<VerifyReport> {
    verify_reader(BufReader::new(file))
}

/// Verifies a log read from any reader (tests, tools).
pub fn verify_reader(mut reader: impl BufRead) -> std::io::Result<VerifyReport> {
    let mut prev = GENESIS_PREV.to_string();
    let mut count: u64 = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let seq = count + 1;
        let broken = |reason: String| ChainBreak { seq, reason };
        let report = |b: ChainBreak, count: u64, prev: String| VerifyReport {
            records: count,
            last_hash: (count > 0).then_some(prev),
            broken: Some(b),
        };
        if buf.last() != Some(&b'\n') {
            return Ok(report(
                broken("last line is truncated (no newline)".into()),
                count,
                prev,
            ));
        }
        buf.pop();
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l,
            Err(_) => return Ok(report(broken("line is not UTF-8".into()), count, prev)),
        };
        let rec: AuditRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                return Ok(report(
                    broken(format!("not a valid audit record ({e})")),
                    count,
                    prev,
                ));
            }
        };
        if rec.seq != seq {
            return Ok(report(
                broken(format!(
                    "expected seq {seq}, found seq {}: a record was removed, inserted or reordered",
                    rec.seq
                )),
                count,
                prev,
            ));
        }
        if rec.to_line() != line {
            return Ok(report(
                broken("line is not in canonical form (edited)".into()),
                count,
                prev,
            ));
        }
        if rec.prev != prev {
            return Ok(report(
                broken(format!(
                    "prev does not match the hash of seq {} (a record before it was edited or replaced)",
                    seq - 1
                )),
                count,
                prev,
            ));
        }
        if rec.compute_hash() != rec.hash {
            return Ok(report(
                broken("hash mismatch: the record was edited".into()),
                count,
                prev,
            ));
        }
        prev = rec.hash;
        count = seq;
    }
    Ok(VerifyReport {
        records: count,
        last_hash: (count > 0).then_some(prev),
        broken: None,
    })
}

// === reading ===

/// Which records [`read_records`] returns; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this sandbox.
    pub sandbox: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// Only records naming this credential.
    pub credential: Option<String>,
    /// Only this decision.
    pub decision: Option<Decision>,
    /// Only records with `ts >= since`.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, the most recent ones.
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether `r` passes the filter (ignores `limit`).
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.sandbox.as_ref().is_none_or(|s| *s == r.sandbox)
            && self
                .session
                .as_ref()
                .is_none_or(|s| r.session.as_ref() == Some(s))
            && self
                .credential
                .as_ref()
                .is_none_or(|c| r.credential.as_ref() == Some(c))
            && self.decision.is_none_or(|d| d == r.decision)
            && self.since.is_none_or(|since| {
                DateTime::parse_from_rfc3339(&r.ts).is_ok_and(|ts| ts.with_timezone(&Utc) >= since)
            })
    }
}

/// Reads the records of the log at `path` that match `filter`, oldest
/// first. A missing file reads as empty; a trailing partial line (being
/// written) is skipped; a malformed complete line is an error. This does not
/// verify the chain (use [`verify`]). Blocking: call it from
/// `spawn_blocking` in async code.
pub fn read_records(path: &Path, filter: &Filter) -> Result<Vec<AuditRecord>, AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut reader = BufReader::new(file);
    let mut out = std::collections::VecDeque::new();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            break;
        }
        let rec: AuditRecord =
            serde_json::from_slice(&buf[..buf.len() - 1]).map_err(|e| AuditError::Parse {
                path: path.to_path_buf(),
                line: line_no,
                reason: e.to_string(),
            })?;
        if filter.matches(&rec) {
            out.push_back(rec);
            if let Some(limit) = filter.limit
                && out.len() > limit
            {
                out.pop_front();
            }
        }
    }
    Ok(out.into())
}

// === CLI ===

/// `vault-proxy audit …` subcommands (wire into main.rs with `#[command(subcommand)]`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of an audit log: exit 0 "ok: N records", or
    /// exit 1 "audit log broken at seq N: <reason>".
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
    },
}

/// Runs an `audit` subcommand, printing its report to stdout (errors to
/// stderr); returns the process exit code (0 ok, 1 broken or unreadable).
pub fn audit_cli(cmd: AuditCommand) -> std::process::ExitCode {
    let code = audit_cli_with(cmd, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::ExitCode::from(code)
}

/// [`audit_cli`] with explicit output streams; returns 0 or 1.
pub fn audit_cli_with(
    cmd: AuditCommand,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> u8 {
    match cmd {
        AuditCommand::Verify { file } => match verify(&file) {
            Ok(VerifyReport {
                records,
                broken: None,
                ..
            }) => {
                let _ = writeln!(out, "ok: {records} records");
                0
            }
            Ok(VerifyReport {
                broken: Some(b), ..
            }) => {
                let _ = writeln!(out, "audit log broken at seq {}: {}", b.seq, b.reason);
                1
            }
            Err(e) => {
                let _ = writeln!(err, "cannot verify audit log: {e}");
                1
            }
        },
    }
}
