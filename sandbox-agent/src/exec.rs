//! `POST /exec`: run one command in its own process group and return or stream its output.
//!
//! Lifecycle of the process group (the child is its leader, `pgid == pid`):
//! - **timeout** → `SIGKILL` to the whole group, `timed_out: true`;
//! - **client disconnect** (streamed: the response body is dropped; buffered: the handler
//!   future is dropped) → `SIGKILL` to the group via [`GroupGuard`];
//! - **agent shutdown** (SIGTERM) → `SIGKILL` to the group, reported like a kill by signal;
//! - **main child exits** → we keep reading until both pipes reach EOF. If something that
//!   inherited the pipes is still running after `pipe_grace_ms` (e.g. `sleep 100 &`), the
//!   group is killed so the request can finish. Background processes that detached their
//!   output (`nohup srv >log 2>&1 &`) close the pipes and are left running, so "start a dev
//!   server, then curl it in the next exec" works.
//!
//! Not covered: a process that leaves the group (`setsid`, its own `setpgid`) escapes all of
//! the above; the sandbox's lifetime bounds it.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airlock_wire::{AGENT_TOKEN_ENV, ExecEvent, ExecExit, ExecRequest, ExecResult, NDJSON};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::files::resolve_path;
use crate::{ApiError, ApiJson, AppState, Config, reaper};

/// Size of one pipe read; also the largest `data` chunk of a stream line.
const READ_CHUNK: usize = 64 * 1024;
/// After we kill the group, how long we keep draining pipes held by processes that escaped it.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(200);
/// Reads taken without waiting once the drain time is up: a full pipe buffer is 64 KiB,
/// so this covers what a killed group can have left behind.
const FINAL_DRAIN_READS: usize = 64;
/// Streamed lines buffered between the command and a slow client before we stop reading
/// the pipes (which then back-pressures the command, as a terminal would).
const STREAM_BUFFER: usize = 32;

pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let mut plan = Plan::from_request(req, &state.config)?;
    plan.inherited = state.setup.begin_use();
    let running = plan.spawn()?;
    if wants_ndjson(&headers) {
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut sink = Sink::Stream(tx);
            let outcome = running.pump(&mut sink, &state).await;
            if let (Sink::Stream(tx), Some(exit)) = (sink, outcome) {
                // The client may be gone already; nothing left to kill then.
                let _ = tx.send(event_line(&ExecEvent::Exit(exit))).await;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
        });
        Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(stream)).into_response())
    } else {
        let mut sink = Sink::Collect {
            stdout: String::new(),
            stderr: String::new(),
        };
        // If the client disconnects, hyper drops this future and `GroupGuard` kills the group.
        let exit = running.pump(&mut sink, &state).await;
        let (Sink::Collect { stdout, stderr }, Some(exit)) = (sink, exit) else {
            // Invariant: a Collect sink never reports a disconnect, so `pump` returned Some.
            return Err(ApiError::Internal(
                "exec ended without an exit status".into(),
            ));
        };
        Ok(Json(ExecResult {
            exit_code: exit.exit_code,
            signal: exit.signal,
            stdout,
            stderr,
            timed_out: exit.timed_out,
            truncated: exit.truncated,
            duration_ms: exit.duration_ms,
        })
        .into_response())
    }
}

/// True when the client listed `application/x-ndjson` in `Accept`.
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(NDJSON))
        })
}

fn event_line(event: &ExecEvent) -> Bytes {
    // Serializing these plain structs cannot fail; fall back to an empty line rather than panic.
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A validated exec request.
#[derive(Debug)]
struct Plan {
    program: String,
    args: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    /// Env set by `POST /configure`; the request's own `env` wins on a clash.
    inherited: Option<Arc<BTreeMap<String, String>>>,
    stdin: Option<String>,
    timeout: Duration,
    max_output: u64,
    pipe_grace: Duration,
}

impl Plan {
    fn from_request(req: ExecRequest, config: &Config) -> Result<Plan, ApiError> {
        let (program, args) = match (req.command, req.argv) {
            (Some(cmd), None) => ("sh".to_string(), vec!["-c".to_string(), cmd]),
            (None, Some(argv)) => {
                let mut it = argv.into_iter();
                let program = it
                    .next()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| ApiError::BadRequest("argv must not be empty".into()))?;
                (program, it.collect())
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "set exactly one of `command` or `argv`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(ApiError::BadRequest(
                    "set exactly one of `command` or `argv`".into(),
                ));
            }
        };
        let cwd = match req.cwd.as_deref() {
            None | Some("") => config.workdir.clone(),
            Some(raw) => {
                let cwd = resolve_path(&config.workdir, raw)
                    .map_err(|e| ApiError::BadCwd(format!("bad cwd {raw:?}: {e}")))?;
                match std::fs::metadata(&cwd) {
                    Ok(m) if m.is_dir() => cwd,
                    Ok(_) => {
                        return Err(ApiError::BadCwd(format!(
                            "bad cwd {}: not a directory",
                            cwd.display()
                        )));
                    }
                    Err(e) => {
                        return Err(ApiError::BadCwd(format!("bad cwd {}: {e}", cwd.display())));
                    }
                }
            }
        };
        let timeout_ms = req.timeout_ms.unwrap_or(config.default_timeout_ms);
        if timeout_ms == 0 {
            return Err(ApiError::BadRequest(
                "timeout_ms must be greater than 0".into(),
            ));
        }
        Ok(Plan {
            program,
            args,
            cwd,
            env: req.env.unwrap_or_default(),
            inherited: None,
            stdin: req.stdin,
            timeout: Duration::from_millis(timeout_ms.min(config.max_timeout_ms)),
            max_output: req
                .max_output_bytes
                .unwrap_or(config.default_max_output_bytes)
                .min(config.max_output_bytes_cap),
            pipe_grace: Duration::from_millis(config.pipe_grace_ms),
        })
    }

    fn spawn(self) -> Result<Running, ApiError> {
        let mut cmd = Command::new(&self.program);
        if let Some(inherited) = &self.inherited {
            cmd.envs(inherited.iter());
        }
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .envs(&self.env)
            // The agent's own credential is not the command's business (and would end up in
            // `env` output shown to the model).
            .env_remove(AGENT_TOKEN_ENV)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // setpgid(0, 0) in the child: it leads a new group we can kill as a whole.
            .process_group(0);
        let started = Instant::now();
        let (mut child, tracked) = reaper::spawn_tracked(&mut cmd).map_err(|e| {
            ApiError::SpawnFailed(format!("failed to start {:?}: {e}", self.program))
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| {
                // Invariant: a freshly spawned, not yet awaited child always has a pid.
                ApiError::Internal("spawned child has no pid".into())
            })?;
        let guard = GroupGuard {
            pgid: pid,
            armed: true,
        };
        tracing::info!(pid, program = %self.program, cwd = %self.cwd.display(), "exec started");
        let stdin_task = match (child.stdin.take(), self.stdin) {
            (Some(mut pipe), Some(data)) => Some(tokio::spawn(async move {
                // EPIPE when the command does not read its input is expected, not an error.
                let _ = pipe.write_all(data.as_bytes()).await;
                // Dropping `pipe` closes it, so the command sees EOF.
            })),
            _ => None,
        };
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            // Invariant: both were configured as `Stdio::piped()` above.
            return Err(ApiError::Internal("child pipes missing".into()));
        };
        Ok(Running {
            child,
            stdout,
            stderr,
            guard,
            _tracked: tracked,
            stdin_task,
            started,
            deadline: started + self.timeout,
            max_output: self.max_output,
            pipe_grace: self.pipe_grace,
        })
    }
}

/// Kills the process group when dropped, unless the group was already fully handled.
/// Dropping happens on every early exit, including a dropped handler future.
#[derive(Debug)]
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl GroupGuard {
    fn disarm(mut self) {
        self.armed = false;
    }

    fn kill(&self) {
        // SAFETY: killpg only sends a signal; ESRCH (group already gone) is fine to ignore.
        unsafe {
            libc::killpg(self.pgid, libc::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// Where output goes: NDJSON lines to the client, or two strings for the buffered result.
enum Sink {
    Stream(mpsc::Sender<Bytes>),
    Collect { stdout: String, stderr: String },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

impl Sink {
    /// Sends one chunk. A streaming client that stops reading is waited for only until
    /// `deadline` (the exec timeout), so it cannot keep the command alive past it; the chunk
    /// is then dropped and the output reported as truncated.
    async fn emit(&mut self, which: Stream, data: String, deadline: Instant) -> Emitted {
        if data.is_empty() {
            return Emitted::Sent;
        }
        match self {
            Sink::Stream(tx) => {
                let event = match which {
                    Stream::Stdout => ExecEvent::Stdout { data },
                    Stream::Stderr => ExecEvent::Stderr { data },
                };
                match tokio::time::timeout_at(deadline, tx.send(event_line(&event))).await {
                    Ok(Ok(())) => Emitted::Sent,
                    Ok(Err(_)) => Emitted::Gone,
                    Err(_) => Emitted::Dropped,
                }
            }
            Sink::Collect { stdout, stderr } => {
                match which {
                    Stream::Stdout => stdout.push_str(&data),
                    Stream::Stderr => stderr.push_str(&data),
                }
                Emitted::Sent
            }
        }
    }

    /// Resolves when a streaming client has gone away; never for a buffered exec.
    async fn closed(&self) {
        match self {
            Sink::Stream(tx) => tx.closed().await,
            Sink::Collect { .. } => std::future::pending().await,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Emitted {
    Sent,
    /// The client did not take the chunk before the exec deadline.
    Dropped,
    /// The streaming client went away.
    Gone,
}

/// What `pump` is waiting for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Main child running; the deadline is the exec timeout.
    Running,
    /// Main child exited; the deadline is the end of the pipe grace period.
    Exited,
    /// Group killed; the deadline bounds how long we still drain the pipes.
    Killed,
}

struct Running {
    child: Child,
    stdout: ChildStdout,
    stderr: ChildStderr,
    guard: GroupGuard,
    /// Keeps the orphan reaper off this child until `pump` is done with it.
    _tracked: reaper::Tracked,
    stdin_task: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
    deadline: Instant,
    max_output: u64,
    pipe_grace: Duration,
}

/// One output pipe with its UTF-8 carry-over.
struct Pipe<R> {
    reader: R,
    which: Stream,
    decoder: Utf8Decoder,
    open: bool,
}

impl<R: AsyncRead + Unpin> Pipe<R> {
    fn new(reader: R, which: Stream) -> Self {
        Pipe {
            reader,
            which,
            decoder: Utf8Decoder::default(),
            open: true,
        }
    }
}

impl Running {
    /// Runs the command to completion. Returns the exit summary, or `None` if the streaming
    /// client went away (the group has been killed then).
    async fn pump(self, sink: &mut Sink, state: &AppState) -> Option<ExecExit> {
        let Running {
            mut child,
            stdout,
            stderr,
            guard,
            _tracked,
            stdin_task,
            started,
            deadline,
            max_output,
            pipe_grace,
        } = self;
        let mut out = Pipe::new(stdout, Stream::Stdout);
        let mut err = Pipe::new(stderr, Stream::Stderr);
        let mut out_buf = vec![0u8; READ_CHUNK];
        let mut err_buf = vec![0u8; READ_CHUNK];
        let mut budget = Budget {
            remaining: max_output,
            truncated: false,
        };
        let mut status: Option<ExitStatus> = None;
        let mut phase = Phase::Running;
        let mut stop_at = deadline;
        let mut timed_out = false;
        let mut disconnected = false;

        while out.open || err.open || status.is_none() {
            tokio::select! {
                r = out.reader.read(&mut out_buf), if out.open => {
                    if !forward(&mut out, r, &out_buf, &mut budget, sink, deadline).await {
                        disconnected = true;
                        break;
                    }
                }
                r = err.reader.read(&mut err_buf), if err.open => {
                    if !forward(&mut err, r, &err_buf, &mut budget, sink, deadline).await {
                        disconnected = true;
                        break;
                    }
                }
                s = child.wait(), if status.is_none() => {
                    match s {
                        Ok(s) => status = Some(s),
                        Err(e) => {
                            tracing::warn!(error = %e, "waiting for child failed");
                            guard.kill();
                            break;
                        }
                    }
                    if phase == Phase::Running {
                        phase = Phase::Exited;
                        stop_at = (Instant::now() + pipe_grace).min(deadline.max(Instant::now()));
                    }
                }
                _ = sleep_until(stop_at) => match phase {
                    Phase::Running | Phase::Exited => {
                        if phase == Phase::Running {
                            timed_out = true;
                            tracing::info!(pgid = guard.pgid, "exec timed out, killing group");
                        } else {
                            tracing::info!(pgid = guard.pgid,
                                "main process exited but its pipes are still held, killing group");
                        }
                        guard.kill();
                        phase = Phase::Killed;
                        stop_at = Instant::now() + DRAIN_AFTER_KILL;
                    }
                    Phase::Killed => {
                        // A loaded machine can wake us with the timer and unread output both
                        // ready; `select!` may pick the timer. Take what is already in the
                        // pipes (the group is dead, so this is bounded) before giving up.
                        if !drain_ready(&mut out, &mut out_buf, &mut budget, sink, deadline).await
                            || !drain_ready(&mut err, &mut err_buf, &mut budget, sink, deadline).await
                        {
                            disconnected = true;
                        }
                        break;
                    }
                },
                _ = sink.closed() => {
                    disconnected = true;
                    break;
                }
                _ = state.shutdown_requested(), if phase != Phase::Killed => {
                    tracing::info!(pgid = guard.pgid, "agent shutting down, killing group");
                    guard.kill();
                    phase = Phase::Killed;
                    stop_at = Instant::now() + DRAIN_AFTER_KILL;
                }
            }
        }

        if let Some(task) = stdin_task {
            task.abort();
        }
        if disconnected {
            tracing::info!(pgid = guard.pgid, "client went away, killing group");
            drop(guard);
            return None;
        }
        if !budget.truncated {
            // Bytes left in a decoder at EOF are a truncated sequence: show them lossily.
            for pipe in [
                (Stream::Stdout, out.decoder.finish()),
                (Stream::Stderr, err.decoder.finish()),
            ] {
                if sink.emit(pipe.0, pipe.1, deadline).await == Emitted::Gone {
                    return None;
                }
            }
        }
        if status.is_none() {
            // Pipes drained but the child could not be reaped in time (stuck in the kernel):
            // make sure it dies and wait briefly.
            guard.kill();
            status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        // Main child reaped and pipes closed: whatever is left in the group detached its
        // output on purpose (`nohup srv >log 2>&1 &`), so it keeps running (module docs).
        guard.disarm();
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let exit = ExecExit {
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            truncated: budget.truncated,
            duration_ms,
        };
        tracing::info!(?exit, "exec finished");
        Some(exit)
    }
}

/// Output allowance shared by stdout and stderr.
struct Budget {
    remaining: u64,
    truncated: bool,
}

/// Handles one read result: EOF closes the pipe, data within budget is decoded and emitted,
/// the rest is dropped (we keep reading so the command never blocks on a full pipe).
/// Returns `false` when the client is gone.
async fn forward<R>(
    pipe: &mut Pipe<R>,
    read: std::io::Result<usize>,
    buf: &[u8],
    budget: &mut Budget,
    sink: &mut Sink,
    deadline: Instant,
) -> bool {
    let n = match read {
        Ok(0) => {
            pipe.open = false;
            return true;
        }
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, stream = ?pipe.which, "reading output failed");
            pipe.open = false;
            return true;
        }
    };
    let keep = usize::try_from(budget.remaining).map_or(n, |r| r.min(n));
    if keep < n {
        budget.truncated = true;
    }
    if keep == 0 {
        return true;
    }
    budget.remaining -= keep as u64;
    let text = pipe.decoder.decode(&buf[..keep]);
    match sink.emit(pipe.which, text, deadline).await {
        Emitted::Sent => true,
        Emitted::Dropped => {
            budget.truncated = true;
            true
        }
        Emitted::Gone => false,
    }
}

/// Forwards what is already readable in `pipe` without waiting for more. Returns false
/// when a streaming client went away.
///
/// This reads the descriptor directly instead of polling the tokio reader: tokio only tries
/// the syscall once its reactor has seen the readiness event, and on a loaded machine the
/// drain timer can win before that event is processed, which used to drop the last output.
/// The pipe is non-blocking (tokio set it so), so `read` returns EAGAIN instead of waiting.
async fn drain_ready<R: AsyncRead + AsRawFd + Unpin>(
    pipe: &mut Pipe<R>,
    buf: &mut [u8],
    budget: &mut Budget,
    sink: &mut Sink,
    deadline: Instant,
) -> bool {
    for _ in 0..FINAL_DRAIN_READS {
        if !pipe.open {
            break;
        }
        let fd = pipe.reader.as_raw_fd();
        // SAFETY: F_GETFL only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || flags & libc::O_NONBLOCK == 0 {
            // Never block the executor; tokio's child pipes are always non-blocking.
            break;
        }
        // SAFETY: `fd` is owned by `pipe.reader`, which outlives this call; `buf` is a valid
        // writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let read = match usize::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                }
            }
        };
        if !forward(pipe, read, buf, budget, sink, deadline).await {
            return false;
        }
    }
    true
}

/// Incremental UTF-8 decoder: never splits a multi-byte sequence across chunks; invalid
/// bytes become U+FFFD.
#[derive(Debug, Default)]
pub(crate) struct Utf8Decoder {
    /// Up to 3 bytes of an incomplete sequence from the end of the previous chunk.
    pending: Vec<u8>,
}

impl Utf8Decoder {
    pub(crate) fn decode(&mut self, input: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(input);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // from_utf8 just reported this prefix as valid, so this never falls back.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            // Incomplete sequence at the end: keep it for the next chunk.
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// Flushes what is left at EOF (an incomplete sequence, shown lossily).
    pub(crate) fn finish(&mut self) -> String {
        let pending = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Decoder;

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = Utf8Decoder::default();
        let mut out: Vec<String> = chunks.iter().map(|c| d.decode(c)).collect();
        out.push(d.finish());
        out
    }

    #[test]
    fn utf8_decoder_never_splits_sequences() {
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"abc"], &["abc", ""]),
            // "é" = C3 A9 split across two chunks.
            (&[b"a\xC3", b"\xA9b"], &["a", "éb", ""]),
            // 4-byte emoji split 1/3 and 3/1.
            (&[b"\xF0", b"\x9F\x98\x80"], &["", "😀", ""]),
            (&[b"\xF0\x9F\x98", b"\x80!"], &["", "😀!", ""]),
            // Invalid byte in the middle → replacement, rest kept.
            (&[b"a\xFFb"], &["a\u{FFFD}b", ""]),
            // Truncated sequence at EOF → shown lossily by finish().
            (&[b"x\xE2\x82"], &["x", "\u{FFFD}"]),
        ];
        for (chunks, want) in cases {
            assert_eq!(decode_chunks(chunks), *want, "chunks {chunks:?}");
        }
    }
}
