//! The audit writer: one OS thread owns the file and the chain state.
//!
//! - [`AuditLog::append`] only queues the event on a bounded channel
//!   ([`QUEUE_CAPACITY`]); when the queue is full it **waits** (back-pressure)
//!   rather than drop: an audit record is never silently lost. It fails only
//!   when the writer has stopped (I/O error or [`AuditLog::close`]) — callers
//!   must then fail closed (refuse the request).
//! - The writer assigns `seq`, `ts`, `prev`, `hash`, and writes lines through
//!   a `BufWriter`. After every batch (whatever was queued, up to 256
//!   records) the buffer is flushed to the OS, then the writer waits
//!   [`COALESCE`] (2 ms) before taking the next batch, so a line reaches the
//!   file within a few milliseconds even under load, and a busy proxy does
//!   not wake this thread once per record.
//! - fsync policy: `sync_data` at most once per second while records flow,
//!   on [`AuditLog::flush`] / [`AuditLog::close`], and when the writer stops
//!   (all handles dropped). A process crash loses nothing already flushed;
//!   a power loss can lose up to about a second of records.
//! - The file is opened in append mode (created 0600) and locked
//!   (`File::try_lock`) so two proxies cannot interleave one chain.
//! - On open, an existing log is verified end to end; if it does not verify
//!   the proxy refuses to start (fail closed) and says how to inspect it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::record::{AuditEvent, AuditRecord, GENESIS_PREV};
use super::{AuditError, verify::verify_file};

/// Records that may wait in the queue before `append` applies back-pressure.
pub const QUEUE_CAPACITY: usize = 4096;
const BATCH: usize = 256;
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long the writer lets records collect after draining the queue.
const COALESCE: Duration = Duration::from_millis(2);

enum Msg {
    Record(AuditEvent),
    Flush(oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<Result<(), String>>),
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
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log at `path` (creating it, mode 0600, or continuing an
    /// existing one after verifying its whole chain) and starts the writer
    /// thread. Refuses an existing log that does not verify.
    pub async fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || AuditLog::open_blocking(&path))
            .await
            .map_err(|e| AuditError::Writer(format!("open task failed: {e}")))?
    }

    /// [`AuditLog::open`] for synchronous callers (no runtime needed).
    pub fn open_blocking(path: &Path) -> Result<AuditLog, AuditError> {
        let io_err = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        // Verify what is there (under the lock, so nobody appends meanwhile).
        let report = verify_file(&file).map_err(io_err)?;
        if let Some(b) = report.broken {
            return Err(AuditError::Broken {
                path: path.to_path_buf(),
                seq: b.seq,
                reason: b.reason,
            });
        }
        let state = ChainState {
            next_seq: report.records + 1,
            prev: report.last_hash.unwrap_or_else(|| GENESIS_PREV.to_string()),
        };

        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            failure: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_thread(file, state, rx, thread_shared))
            .map_err(io_err)?;
        Ok(AuditLog { tx, shared })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Queues one record; waits while the queue is full (never drops).
    /// Errors only if the writer has stopped — then fail closed.
    pub async fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.tx
            .send(Msg::Record(event))
            .await
            .map_err(|_| self.stopped())
    }

    /// Waits until everything appended before this call is written and
    /// `fsync`ed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(ack))
            .await
            .map_err(|_| self.stopped())?;
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
        done.await
            .map_err(|_| self.stopped())?
            .map_err(AuditError::Writer)
    }

    /// True while the writer accepts records.
    pub fn is_healthy(&self) -> bool {
        !self.tx.is_closed()
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
}

fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn writer_thread(
    file: File,
    mut state: ChainState,
    mut rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
) {
    let mut close_acks = Vec::new();
    let result = write_loop(file, &mut state, &mut rx, &mut close_acks);
    match result {
        Ok(()) => {
            for ack in close_acks {
                let _ = ack.send(Ok(()));
            }
        }
        Err(e) => {
            let msg = format!("audit log {} write failed: {e}", shared.path.display());
            tracing::error!(error = %msg, "audit writer stopped; requests must fail closed");
            if let Ok(mut f) = shared.failure.lock() {
                *f = Some(msg.clone());
            }
            rx.close();
            for ack in close_acks {
                let _ = ack.send(Err(msg.clone()));
            }
        }
    }
}

fn write_loop(
    file: File,
    state: &mut ChainState,
    rx: &mut mpsc::Receiver<Msg>,
    close_acks: &mut Vec<oneshot::Sender<Result<(), String>>>,
) -> std::io::Result<()> {
    let sync_handle = file.try_clone()?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut batch = Vec::with_capacity(BATCH);
    let mut line = Vec::with_capacity(1024);
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let sync = |out: &mut BufWriter<File>| -> std::io::Result<()> {
        out.flush()?;
        sync_handle.sync_data()
    };

    loop {
        // Returns 0 once the channel is closed (close() or all handles
        // dropped) and everything still queued has been received.
        let received = rx.blocking_recv_many(&mut batch, BATCH);
        if received == 0 {
            return sync(&mut out);
        }
        for msg in batch.drain(..) {
            match msg {
                Msg::Record(ev) => {
                    let rec = AuditRecord::unsealed(
                        state.next_seq,
                        now_ts(),
                        std::mem::take(&mut state.prev),
                        ev,
                    );
                    line.clear();
                    let hash = rec.write_line(&mut line);
                    line.push(b'\n');
                    out.write_all(&line)?;
                    state.next_seq += 1;
                    // Invariant: write_line returns 64 ASCII hex digits.
                    state.prev = String::from_utf8_lossy(&hash).into_owned();
                    dirty = true;
                }
                Msg::Flush(ack) => {
                    if let Err(e) = sync(&mut out) {
                        let _ = ack.send(Err(e.to_string()));
                        return Err(e);
                    }
                    let _ = ack.send(Ok(()));
                    dirty = false;
                    last_sync = Instant::now();
                }
                Msg::Close(ack) => {
                    // Stop accepting; what is already queued is still written.
                    rx.close();
                    close_acks.push(ack);
                }
            }
        }
        out.flush()?;
        if dirty && last_sync.elapsed() >= SYNC_INTERVAL {
            sync(&mut out)?;
            dirty = false;
            last_sync = Instant::now();
        }
        if received < BATCH {
            // The queue is drained. Let records collect for a moment instead of parking at
            // once: a parked writer is woken by every single `append` (a futex call on the
            // request path plus a context switch here), which under load cost more than
            // writing the record. Appends never wait for this; lines land COALESCE later.
            std::thread::sleep(COALESCE);
        }
    }
}
