//! The audit writer: one OS thread owns the file and the chain state.
//!
//! - [`AuditLog::commit`] is the swap path: it hands the records to the
//!   writer and **waits** until their line has been written to the file
//!   (`write(2)` returned for the whole batch). Only then may the request
//!   carrying the secret leave. Commits group: every commit queued while the
//!   writer works on a batch goes out in the next single `write`, and the
//!   writer is woken at once for a commit (no coalescing delay).
//! - [`AuditLog::append`] (blocks, connects, allows, scrubs) only queues the
//!   event on a bounded channel ([`QUEUE_CAPACITY`]); when the queue is full
//!   it **waits** (back-pressure) rather than drop. Between batches the
//!   writer waits [`COALESCE`] (2 ms) so a busy proxy does not wake it once
//!   per record.
//! - Durability: a committed record has been written to the kernel (it
//!   survives a crash of the proxy, and the write's own errors — `ENOSPC`,
//!   `EFBIG` from `RLIMIT_FSIZE`, `EIO` — are seen before anything is sent).
//!   `fsync` (`sync_data`) happens at most once per second while records
//!   flow, on [`AuditLog::flush`] / [`AuditLog::close`] and when the writer
//!   stops: a power loss can lose up to about a second of records. An fsync
//!   per group would cost milliseconds per swap on ordinary disks.
//! - Fail closed: when a write fails, the file is cut back to its last
//!   complete line (so it still verifies), the writer stops for good and
//!   the log is unhealthy: commits and appends fail, swaps are refused
//!   (`503 audit_unavailable`), `/healthz` answers 503. A restart after the
//!   disk was fixed continues the chain.
//! - Head: after every batch the last record's `seq:hash` is kept in memory
//!   ([`AuditLog::head`], `GET /v1/audit/head`) and in the sidecar file
//!   `<log>.head` (one fixed-width line rewritten in place). On open, a log
//!   that does not reach the sidecar's head (removed, emptied, tail cut off)
//!   is refused unless [`OpenOptions::new_chain`] says to start a new chain.
//! - The file is opened in append mode (created 0600) and locked
//!   (`File::try_lock`) so two proxies cannot interleave one chain. On open,
//!   an existing log is verified end to end; if it does not verify the proxy
//!   refuses to start (fail closed) and says how to inspect it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::record::{AuditEvent, AuditRecord, ChainHasher, GENESIS_PREV};
use super::verify::{Head, verify_file};
use super::{AuditError, ChainBreak};

/// Records that may wait in the queue before `append` applies back-pressure.
pub const QUEUE_CAPACITY: usize = 4096;
const BATCH: usize = 256;
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long the writer lets records collect after draining the queue.
const COALESCE: Duration = Duration::from_millis(2);

type Ack<T> = oneshot::Sender<Result<T, String>>;

enum Msg {
    Record(AuditEvent),
    Commit(Vec<AuditEvent>, Ack<Head>),
    Flush(Ack<()>),
    Close(Ack<()>),
}

/// How to open the log.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Plain SHA-256 chain, or HMAC under the `audit_key_env` key.
    pub hasher: ChainHasher,
    /// Start a new chain even though the log does not reach the head in its
    /// sidecar (the log was removed or cut): an explicit operator decision
    /// (`vault-proxy serve --new-audit-chain`).
    pub new_chain: bool,
}

/// Handle to the audit log. Cheap to clone; the writer stops (after a final
/// flush and fsync) when every handle is dropped or on [`AuditLog::close`].
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// Set when the writer stopped because of an I/O error.
    failure: Mutex<Option<String>>,
    /// False once a write failed: fail closed.
    healthy: AtomicBool,
    /// The last record written.
    head: Mutex<Head>,
    /// The writer thread, unparked by commits so they skip the coalescing wait.
    writer: OnceLock<std::thread::Thread>,
    /// The proxy's counters: every record is a decision (`crate::metrics`).
    metrics: Arc<crate::metrics::VaultMetrics>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// The sidecar holding the last head: `<log>.head`.
pub fn head_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_os_string();
    s.push(".head");
    PathBuf::from(s)
}

/// Fixed width, so rewriting it in place never leaves a longer old tail.
fn head_line(h: &Head) -> String {
    format!("{:020}:{}\n", h.seq, h.hash)
}

impl AuditLog {
    /// Opens the log at `path` (creating it, mode 0600, or continuing an
    /// existing one after verifying its whole chain) and starts the writer
    /// thread. Refuses an existing log that does not verify.
    pub async fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        Self::open_with(path, OpenOptions::default()).await
    }

    /// [`AuditLog::open`] with options (HMAC key, new chain).
    pub async fn open_with(
        path: impl AsRef<Path>,
        opts: OpenOptions,
    ) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || AuditLog::open_blocking_with(&path, opts))
            .await
            .map_err(|e| AuditError::Writer(format!("open task failed: {e}")))?
    }

    /// [`AuditLog::open`] for synchronous callers (no runtime needed).
    pub fn open_blocking(path: &Path) -> Result<AuditLog, AuditError> {
        Self::open_blocking_with(path, OpenOptions::default())
    }

    /// [`AuditLog::open_with`] for synchronous callers.
    pub fn open_blocking_with(path: &Path, opts: OpenOptions) -> Result<AuditLog, AuditError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| AuditError::Io { path: p, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(path))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
        }
        let hpath = head_path(path);
        let known_head = match std::fs::read_to_string(&hpath) {
            Ok(s) => match s.parse::<Head>() {
                Ok(h) => Some(h),
                Err(e) if !opts.new_chain => {
                    return Err(AuditError::Broken {
                        path: hpath,
                        seq: 0,
                        reason: format!("head file is unreadable ({e})"),
                    });
                }
                Err(_) => None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&hpath)(e)),
        };
        let expect = known_head.as_ref().filter(|_| !opts.new_chain);
        // Verify what is there (under the lock, so nobody appends meanwhile).
        let report = verify_file(&file, &opts.hasher, expect).map_err(io_err(path))?;
        if let Some(ChainBreak { seq, reason }) = report.broken {
            let reason = if expect.is_some_and(|h| report.records < h.seq) {
                format!(
                    "{reason}. The log was removed or cut; refusing to start a new chain \
                     (start with --new-audit-chain to do so deliberately)"
                )
            } else {
                reason
            };
            return Err(AuditError::Broken {
                path: path.to_path_buf(),
                seq,
                reason,
            });
        }
        if opts.new_chain && known_head.is_some() {
            tracing::warn!(log = %path.display(), "starting a new audit chain as told (--new-audit-chain); the previous head is replaced");
        }
        let good_len = file.metadata().map_err(io_err(path))?.len();
        let head = Head {
            seq: report.records,
            hash: report.last_hash.unwrap_or_else(|| GENESIS_PREV.to_string()),
        };
        let head_file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&hpath)
            .map_err(io_err(&hpath))?;
        head_file
            .write_all_at(head_line(&head).as_bytes(), 0)
            .and_then(|()| head_file.set_len(head_line(&head).len() as u64))
            .and_then(|()| head_file.sync_data())
            .map_err(io_err(&hpath))?;
        let state = ChainState {
            next_seq: head.seq + 1,
            prev: head.hash.clone(),
            good_len,
        };

        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            failure: Mutex::new(None),
            healthy: AtomicBool::new(true),
            head: Mutex::new(head),
            writer: OnceLock::new(),
            metrics: Arc::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let thread_shared = shared.clone();
        let hasher = opts.hasher;
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                writer_thread(
                    Files {
                        log: file,
                        head: head_file,
                    },
                    state,
                    hasher,
                    rx,
                    thread_shared,
                )
            })
            .map_err(io_err(path))?;
        let _ = shared.writer.set(handle.thread().clone());
        Ok(AuditLog { tx, shared })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Queues one record; waits while the queue is full (never drops).
    /// Errors if the writer has stopped or a write failed — then fail closed.
    pub async fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        if !self.is_healthy() {
            return Err(self.stopped());
        }
        self.shared.metrics.decision(&event);
        crate::telemetry::egress_span(&event);
        self.tx
            .send(Msg::Record(event))
            .await
            .map_err(|_| self.stopped())
    }

    /// Writes `events` and waits until their lines are in the file (see the
    /// module doc for what that guarantees). Returns the head after them.
    /// An error means nothing may be sent on their account.
    pub async fn commit(&self, events: Vec<AuditEvent>) -> Result<Head, AuditError> {
        if !self.is_healthy() {
            return Err(self.stopped());
        }
        events.iter().for_each(|e| {
            self.shared.metrics.decision(e);
            crate::telemetry::egress_span(e);
        });
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Commit(events, ack))
            .await
            .map_err(|_| self.stopped())?;
        if let Some(t) = self.shared.writer.get() {
            t.unpark();
        }
        done.await
            .map_err(|_| self.stopped())?
            .map_err(AuditError::Writer)
    }

    /// Waits until everything appended before this call is written and
    /// `fsync`ed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(ack))
            .await
            .map_err(|_| self.stopped())?;
        if let Some(t) = self.shared.writer.get() {
            t.unpark();
        }
        done.await
            .map_err(|_| self.stopped())?
            .map_err(AuditError::Writer)
    }

    /// Writes and syncs everything queued, then stops the writer; later
    /// appends (from any clone) fail.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Close(ack))
            .await
            .map_err(|_| self.stopped())?;
        if let Some(t) = self.shared.writer.get() {
            t.unpark();
        }
        done.await
            .map_err(|_| self.stopped())?
            .map_err(AuditError::Writer)
    }

    /// The proxy's counters (`GET /metrics`).
    pub fn metrics(&self) -> &Arc<crate::metrics::VaultMetrics> {
        &self.shared.metrics
    }

    /// Records (and commits) queued for the writer thread.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// True while the writer accepts records and no write has failed.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// The last record written (`seq` 0 and 64 zeros for an empty log).
    pub fn head(&self) -> Head {
        match self.shared.head.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn stopped(&self) -> AuditError {
        let failure = self
            .shared
            .failure
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        AuditError::Writer(failure.unwrap_or_else(|| "audit writer is closed".to_string()))
    }
}

struct ChainState {
    next_seq: u64,
    prev: String,
    /// File length after the last successful write: where a failed write is cut back to.
    good_len: u64,
}

struct Files {
    log: File,
    head: File,
}

fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Acks waiting on the batch being written.
#[derive(Default)]
struct Waiting {
    commits: Vec<Ack<Head>>,
    flushes: Vec<Ack<()>>,
    closes: Vec<Ack<()>>,
}

impl Waiting {
    fn fail(&mut self, msg: &str) {
        for a in self.commits.drain(..) {
            let _ = a.send(Err(msg.to_string()));
        }
        for a in self.flushes.drain(..) {
            let _ = a.send(Err(msg.to_string()));
        }
        for a in self.closes.drain(..) {
            let _ = a.send(Err(msg.to_string()));
        }
    }
}

fn writer_thread(
    files: Files,
    mut state: ChainState,
    hasher: ChainHasher,
    mut rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
) {
    let mut waiting = Waiting::default();
    let result = write_loop(&files, &mut state, &hasher, &mut rx, &mut waiting, &shared);
    match result {
        Ok(()) => {
            // Release the file (and its lock) before anyone hears "closed",
            // so a reopen right after close() does not find it locked.
            drop(files);
            for ack in waiting.closes.drain(..) {
                let _ = ack.send(Ok(()));
            }
        }
        Err(e) => {
            let msg = format!("audit log {} write failed: {e}", shared.path.display());
            tracing::error!(error = %msg, "audit writer stopped; requests fail closed");
            // Cut a partly written line back off, so the file still verifies
            // and a restart (once the disk is fixed) continues the chain.
            if let Err(e) = files.log.set_len(state.good_len) {
                tracing::error!(error = %e, "could not cut the audit log back to its last complete line");
            }
            drop(files);
            if let Ok(mut f) = shared.failure.lock() {
                *f = Some(msg.clone());
            }
            shared.healthy.store(false, Ordering::Release);
            rx.close();
            waiting.fail(&msg);
            // Whatever is still queued is answered too, never left hanging.
            while let Ok(m) = rx.try_recv() {
                match m {
                    Msg::Record(_) => {}
                    Msg::Commit(_, a) => {
                        let _ = a.send(Err(msg.clone()));
                    }
                    Msg::Flush(a) | Msg::Close(a) => {
                        let _ = a.send(Err(msg.clone()));
                    }
                }
            }
        }
    }
}

fn write_loop(
    files: &Files,
    state: &mut ChainState,
    hasher: &ChainHasher,
    rx: &mut mpsc::Receiver<Msg>,
    waiting: &mut Waiting,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut log = &files.log;
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let sync = || -> std::io::Result<()> {
        files.log.sync_data()?;
        files.head.sync_data()
    };
    let seal = |ev: AuditEvent, state: &mut ChainState, buf: &mut Vec<u8>| {
        let hash = AuditRecord::write_new_line(
            state.next_seq,
            now_ts(),
            std::mem::take(&mut state.prev),
            ev,
            buf,
            hasher,
        );
        buf.push(b'\n');
        state.next_seq += 1;
        // Invariant: write_new_line returns 64 ASCII hex digits.
        state.prev = String::from_utf8_lossy(&hash).into_owned();
    };

    loop {
        // Returns 0 once the channel is closed (close() or all handles
        // dropped) and everything still queued has been received.
        let received = rx.blocking_recv_many(&mut batch, BATCH);
        if received == 0 {
            return sync();
        }
        buf.clear();
        let mut commits_at = Vec::new();
        let mut want_sync = false;
        for msg in batch.drain(..) {
            match msg {
                Msg::Record(ev) => seal(ev, state, &mut buf),
                Msg::Commit(evs, ack) => {
                    for ev in evs {
                        seal(ev, state, &mut buf);
                    }
                    commits_at.push(Head {
                        seq: state.next_seq - 1,
                        hash: state.prev.clone(),
                    });
                    waiting.commits.push(ack);
                }
                Msg::Flush(ack) => {
                    want_sync = true;
                    waiting.flushes.push(ack);
                }
                Msg::Close(ack) => {
                    // Stop accepting; what is already queued is still written.
                    want_sync = true;
                    rx.close();
                    waiting.closes.push(ack);
                }
            }
        }
        if !buf.is_empty() {
            // One write(2) for the whole group; an error here (ENOSPC, EFBIG,
            // EIO) fails every commit of the group: their requests are not sent.
            let started = Instant::now();
            log.write_all(&buf)
                .inspect_err(|_| shared.metrics.audit_write_failed())?;
            shared.metrics.audit_write(started.elapsed());
            state.good_len += buf.len() as u64;
            let head = Head {
                seq: state.next_seq - 1,
                hash: state.prev.clone(),
            };
            files.head.write_all_at(head_line(&head).as_bytes(), 0)?;
            if let Ok(mut h) = shared.head.lock() {
                *h = head;
            }
            dirty = true;
        }
        if want_sync || (dirty && last_sync.elapsed() >= SYNC_INTERVAL) {
            sync()?;
            dirty = false;
            last_sync = Instant::now();
        }
        for (ack, head) in waiting.commits.drain(..).zip(commits_at) {
            let _ = ack.send(Ok(head));
        }
        for ack in waiting.flushes.drain(..) {
            let _ = ack.send(Ok(()));
        }
        if received < BATCH && waiting.closes.is_empty() {
            // The queue is drained. Let records collect for a moment instead of parking on
            // the channel at once: a parked writer is woken by every single `append` (a
            // futex call on the request path plus a context switch here). A commit (or
            // flush/close) unparks this wait at once: swaps never wait for it.
            std::thread::park_timeout(COALESCE);
        }
    }
}
