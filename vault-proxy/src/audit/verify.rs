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
//! detect that, keep a head (`seq:hash`, `GET /v1/audit/head`; the brain
//! records it periodically) somewhere the proxy's host cannot rewrite and
//! pass it as `--head`: a log that ends before that seq, or whose record at
//! that seq has another hash, fails at the first missing/differing seq.
//! With `audit_key_env`, the chain is an HMAC chain: `verify` needs the key
//! (`AIRLOCK_AUDIT_KEY`, or `--key-env NAME`) and a chain re-hashed without
//! it fails at seq 1.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::AuditError;
use super::record::{AuditRecord, ChainHasher, Decision, GENESIS_PREV};

/// A recorded chain head: the log must reach `seq` with this `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The record's seq (0 = empty log).
    pub seq: u64,
    /// Its hash (64 hex digits; 64 zeros for seq 0).
    pub hash: String,
}

impl std::str::FromStr for Head {
    type Err = String;
    /// `SEQ:HASH`.
    fn from_str(s: &str) -> Result<Head, String> {
        let (seq, hash) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("head `{s}` is not SEQ:HASH"))?;
        let seq = seq
            .parse::<u64>()
            .map_err(|_| format!("head seq `{seq}` is not a number"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("head hash must be 64 hex digits".into());
        }
        Ok(Head {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

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
    verify_with(path, &ChainHasher::Sha256, None)
}

/// [`verify`] under `hasher`, and (with `head`) requiring the log to reach
/// that head: a cut-off tail is reported at the first missing seq.
pub fn verify_with(
    path: &Path,
    hasher: &ChainHasher,
    head: Option<&Head>,
) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    verify_file(&file, hasher, head).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Verifies a log that is still being written against every head recorded
/// for it (the brain's `brain audit verify`): the chain must reach each head
/// with the same hash. A last line without its newline is a record being
/// written right now and is not read (a head never names it: the head moves
/// only after the whole write returned).
pub fn verify_live(
    path: &Path,
    hasher: &ChainHasher,
    heads: &[Head],
) -> Result<VerifyReport, AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let complete = complete_lines_len(&mut file).map_err(io_err)?;
    let mut heads = heads.to_vec();
    heads.sort_by_key(|h| h.seq);
    verify_reader_heads(
        BufReader::new(std::io::Read::take(file, complete)),
        hasher,
        &heads,
    )
    .map_err(io_err)
}

/// Length of `file` up to and including its last newline.
fn complete_lines_len(file: &mut File) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut end = file.metadata()?.len();
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            file.seek(SeekFrom::Start(0))?;
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(0)
}

pub(crate) fn verify_file(
    file: &File,
    hasher: &ChainHasher,
    head: Option<&Head>,
) -> std::io::Result<VerifyReport> {
    verify_reader_with(BufReader::new(file), hasher, head)
}

/// Verifies a log read from any reader (tests, tools).
pub fn verify_reader(reader: impl BufRead) -> std::io::Result<VerifyReport> {
    verify_reader_with(reader, &ChainHasher::Sha256, None)
}

/// [`verify_reader`] under `hasher`, checking `head` when given.
pub fn verify_reader_with(
    reader: impl BufRead,
    hasher: &ChainHasher,
    head: Option<&Head>,
) -> std::io::Result<VerifyReport> {
    verify_reader_heads(reader, hasher, head.cloned().as_slice())
}

/// [`verify_reader`] under `hasher`, requiring the log to reach every head
/// in `heads` (sorted by seq) with its hash.
pub fn verify_reader_heads(
    mut reader: impl BufRead,
    hasher: &ChainHasher,
    heads: &[Head],
) -> std::io::Result<VerifyReport> {
    let mut pending = heads.iter().peekable();
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
        if rec.compute_hash_with(hasher) != rec.hash {
            let why = match hasher {
                ChainHasher::Sha256 => "hash mismatch: the record was edited",
                ChainHasher::Hmac(_) => {
                    "hash mismatch: the record was edited, or the chain was not written under this key"
                }
            };
            return Ok(report(broken(why.into()), count, prev));
        }
        while let Some(h) = pending.next_if(|h| h.seq <= seq) {
            if h.seq == seq && h.hash != rec.hash {
                return Ok(report(
                    broken(format!(
                        "record {seq} differs from the recorded head {h}: the log was replaced"
                    )),
                    count,
                    prev,
                ));
            }
        }
        prev = rec.hash;
        count = seq;
    }
    if let Some(h) = heads.iter().max_by_key(|h| h.seq)
        && count < h.seq
    {
        return Ok(VerifyReport {
            records: count,
            last_hash: (count > 0).then_some(prev),
            broken: Some(ChainBreak {
                seq: count + 1,
                reason: format!(
                    "the log ends at seq {count} but the recorded head is seq {}: its tail was cut off",
                    h.seq
                ),
            }),
        });
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
    /// Only records to this host (case-insensitive).
    pub host: Option<String>,
    /// Only records with `seq < before_seq` (paging back from a page's oldest record).
    pub before_seq: Option<u64>,
    /// At most this many, the most recent ones.
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether `r` passes the filter (ignores `limit`).
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.sandbox.as_ref().is_none_or(|s| *s == r.sandbox)
            && self.before_seq.is_none_or(|b| r.seq < b)
            && self
                .host
                .as_ref()
                .is_none_or(|h| h.eq_ignore_ascii_case(&r.host))
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
///
/// With a `limit` (the most recent matches) the file is read backwards from
/// its end — or from `before_seq`, found by bisecting the file on `seq`
/// (lines are in `seq` order) — and reading stops once `limit` records
/// matched or a record older than `since` was read: a page of a large log
/// costs what it shows, not the log's size (issue 15: 1,000,000 records).
pub fn read_records(path: &Path, filter: &Filter) -> Result<Vec<AuditRecord>, AuditError> {
    if filter.limit.is_some() {
        return read_tail(path, filter);
    }
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

/// Bytes read per step when reading backwards.
const TAIL_CHUNK: usize = 64 * 1024;

/// [`read_records`] with a limit: backwards from the end (or `before_seq`).
fn read_tail(path: &Path, filter: &Filter) -> Result<Vec<AuditRecord>, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let len = file.metadata().map_err(io_err)?.len();
    let mut end = len;
    if let Some(before) = filter.before_seq {
        end = bisect_end(&mut file, len, before).map_err(io_err)?;
    }
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    // `pending` holds the bytes of [pos, end) not yet parsed: complete lines
    // plus, at its front, the tail of a line that starts before `pos`.
    let mut pos = end;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; TAIL_CHUNK];
    let mut first = true;
    loop {
        let step = (pos.min(TAIL_CHUNK as u64)) as usize;
        if step > 0 {
            pos -= step as u64;
            file.seek(SeekFrom::Start(pos)).map_err(io_err)?;
            file.read_exact(&mut chunk[..step]).map_err(io_err)?;
            let mut joined = Vec::with_capacity(step + pending.len());
            joined.extend_from_slice(&chunk[..step]);
            joined.extend_from_slice(&pending);
            pending = joined;
        }
        if first {
            // A trailing partial line (being written) is not a record yet.
            match pending.iter().rposition(|&b| b == b'\n') {
                Some(i) => pending.truncate(i + 1),
                None if pos > 0 => continue,
                None => return Ok(out),
            }
            first = false;
        }
        // Parse complete lines from the back; keep the (possibly partial) first one.
        let keep_first = pos > 0;
        let mut stop = pending.len();
        loop {
            // `stop` is one past a '\n'; the line is (start, stop - 1).
            let line_end = stop - 1;
            let start = match pending[..line_end].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if keep_first => break,
                None => 0,
            };
            let line = &pending[start..line_end];
            if !line.is_empty() {
                let rec: AuditRecord =
                    serde_json::from_slice(line).map_err(|e| AuditError::Parse {
                        path: path.to_path_buf(),
                        line: 0,
                        reason: format!("record at byte {}: {e}", pos + start as u64),
                    })?;
                let older = filter.since.is_some_and(|since| {
                    DateTime::parse_from_rfc3339(&rec.ts)
                        .is_ok_and(|ts| ts.with_timezone(&Utc) < since)
                });
                if older {
                    // Records are written in time order: nothing before this matches.
                    out.reverse();
                    return Ok(out);
                }
                if filter.matches(&rec) {
                    out.push(rec);
                    if out.len() >= limit {
                        out.reverse();
                        return Ok(out);
                    }
                }
            }
            stop = start;
            if stop == 0 {
                break;
            }
        }
        pending.truncate(stop);
        if pos == 0 {
            out.reverse();
            return Ok(out);
        }
    }
}

/// The end of the region holding every line with `seq < before`: bisects the
/// file on byte offsets (lines are in `seq` order), then extends to the end of
/// the line it lands in, so the region ends on a line boundary.
fn bisect_end(file: &mut File, len: u64, before: u64) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    // The seq of the first complete line starting after `at`.
    fn seq_after(file: &mut File, at: u64) -> std::io::Result<Option<u64>> {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(at))?;
        let mut reader = BufReader::new(&mut *file);
        let mut skipped = Vec::new();
        if at > 0 {
            reader.read_until(b'\n', &mut skipped)?;
        }
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Ok(None);
        }
        #[derive(serde::Deserialize)]
        struct Seq {
            seq: u64,
        }
        Ok(serde_json::from_slice::<Seq>(&line).ok().map(|s| s.seq))
    }
    let (mut lo, mut hi) = (0u64, len);
    while hi - lo > TAIL_CHUNK as u64 {
        let mid = lo + (hi - lo) / 2;
        match seq_after(file, mid)? {
            Some(seq) if seq >= before => hi = mid,
            Some(_) => lo = mid,
            // Unparseable or at the very end: search the lower half.
            None => hi = mid,
        }
    }
    // Extend `hi` to the end of the line it falls in.
    if hi >= len {
        return Ok(len);
    }
    file.seek(SeekFrom::Start(hi))?;
    let mut rest = Vec::new();
    BufReader::new(&mut *file).read_until(b'\n', &mut rest)?;
    Ok(hi + rest.len() as u64)
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
        /// A head recorded earlier (`SEQ:HASH`, from `GET /v1/audit/head`):
        /// the log must reach it, so a cut-off tail fails.
        #[arg(long)]
        head: Option<Head>,
        /// Env var holding the HMAC key of an `audit_key_env` chain
        /// (default: `AIRLOCK_AUDIT_KEY` when set; else plain SHA-256).
        #[arg(long)]
        key_env: Option<String>,
    },
}

/// The env var `audit verify` reads the HMAC key from by default.
pub const DEFAULT_KEY_ENV: &str = "AIRLOCK_AUDIT_KEY";

/// The hasher `audit verify` uses: the key in `key_env` (which must be set),
/// else in `AIRLOCK_AUDIT_KEY` if set, else plain SHA-256.
pub fn hasher_from_env(key_env: Option<&str>) -> Result<ChainHasher, String> {
    match key_env {
        Some(name) => match std::env::var(name) {
            Ok(k) if !k.is_empty() => Ok(ChainHasher::hmac(k.as_bytes())),
            _ => Err(format!("--key-env {name}: the variable is not set")),
        },
        None => Ok(match std::env::var(DEFAULT_KEY_ENV) {
            Ok(k) if !k.is_empty() => ChainHasher::hmac(k.as_bytes()),
            _ => ChainHasher::Sha256,
        }),
    }
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
        AuditCommand::Verify {
            file,
            head,
            key_env,
        } => match hasher_from_env(key_env.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|h| verify_with(&file, &h, head.as_ref()).map_err(|e| e.to_string()))
        {
            Ok(VerifyReport {
                records,
                last_hash,
                broken: None,
            }) => {
                let head = last_hash.unwrap_or_else(|| GENESIS_PREV.to_string());
                let _ = writeln!(out, "ok: {records} records, head {records}:{head}");
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
