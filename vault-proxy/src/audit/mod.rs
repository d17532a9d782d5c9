//! Tamper-evident audit log: one hash-chained JSON line per decision.
//!
//! - [`record`]: [`AuditEvent`] (what the proxy reports), [`AuditRecord`]
//!   (one line) and the canonical form / hash definition that `verify` and
//!   external tools share.
//! - [`writer`]: [`AuditLog`], the append handle (bounded queue, back-pressure,
//!   never drops) and its writer thread.
//! - [`verify`](mod@verify): chain verification, [`read_records`] with a
//!   [`Filter`] (served by the brain at `GET /v1/audit/egress`), and the
//!   `vault-proxy audit verify FILE` command ([`audit_cli`]).
//!
//! Secret values and stubs never appear: no record field can hold one
//! (credentials are named), and query values are dropped from paths.

pub mod record;
pub mod verify;
pub mod writer;

use std::path::PathBuf;

pub use record::{
    AuditEvent, AuditRecord, ChainHasher, Decision, EventKind, GENESIS_PREV, chain_hash,
    sanitize_path,
};
pub use verify::{
    AuditCommand, ChainBreak, DEFAULT_KEY_ENV, Filter, Head, VerifyReport, audit_cli,
    audit_cli_with, hasher_from_env, read_records, verify, verify_live, verify_reader,
    verify_reader_heads, verify_reader_with, verify_with,
};
pub use writer::{AuditLog, OpenOptions as AuditOpenOptions, QUEUE_CAPACITY, head_path};

/// Audit errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the log file failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The existing log does not verify; the proxy refuses to append to it.
    #[error(
        "audit log {path} is broken at seq {seq}: {reason}; refusing to append to it \
         (fail closed). Inspect it with `vault-proxy audit verify {path}`, move it aside \
         to start a new log"
    )]
    Broken {
        /// The log file.
        path: PathBuf,
        /// First bad seq.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Another process holds the log open for writing.
    #[error("audit log {path} is locked by another process")]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// A line could not be parsed by [`read_records`].
    #[error("audit log {path}, line {line}: {reason}")]
    Parse {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Parser message.
        reason: String,
    },
    /// The writer has stopped (closed, or an earlier write failed): fail closed.
    #[error("audit writer stopped: {0}")]
    Writer(String),
}

#[cfg(test)]
mod tests;
