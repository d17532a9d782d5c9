//! Reaping orphaned zombies when the agent is a container's PID 1 (or a subreaper).
//!
//! Killing a process group, or a command that backgrounds work and exits, leaves grandchildren
//! whose parent is gone; the kernel re-parents them to PID 1 (or the nearest subreaper). If
//! that is the agent and nobody waits for them, every one stays a zombie and holds a pid, until
//! the sandbox's pids limit makes `fork` fail. So the agent waits for such orphans itself.
//!
//! It must not steal the exit status of the commands it runs (tokio waits for those): every
//! spawned exec child is registered in [`TRACKED`] under the same lock the reaper holds while
//! scanning, and only untracked zombies whose parent is us are reaped.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Pids of exec children whose exit status tokio will collect.
static TRACKED: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

fn tracked() -> MutexGuard<'static, Option<HashSet<i32>>> {
    // A panic while holding this lock cannot leave the set inconsistent (single inserts and
    // removes), so a poisoned lock is still usable.
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `cmd` and registers the child before the reaper can look at it.
pub(crate) fn spawn_tracked(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, Tracked)> {
    let mut set = tracked();
    let child = cmd.spawn()?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    set.get_or_insert_with(HashSet::new).insert(pid);
    Ok((child, Tracked(pid)))
}

/// Unregisters the child when dropped: after tokio reaped it, or when the exec is abandoned
/// (then either tokio's orphan queue or our reaper collects it; both tolerate the other).
#[derive(Debug)]
pub(crate) struct Tracked(i32);

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(set) = tracked().as_mut() {
            set.remove(&self.0);
        }
    }
}

/// Makes this process the reaper for orphaned descendants (no-op need when it is PID 1).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reaps untracked zombie children on every SIGCHLD and every few seconds, forever.
pub async fn run() {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGCHLD stream; reaping orphans by polling only");
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        match sigchld.as_mut() {
            Some(s) => {
                tokio::select! {
                    _ = s.recv() => {}
                    _ = tick.tick() => {}
                }
            }
            None => {
                tick.tick().await;
            }
        }
        reap_once();
    }
}

/// One pass over /proc: wait for every zombie child of ours that no exec is waiting for.
///
/// The scan runs without the [`TRACKED`] lock (it reads all of /proc, and `spawn_tracked`
/// must not wait behind it: a spawn delayed by a busy reaper used to eat the command's own
/// timeout). The lock is taken only to check candidates and wait for them. That is enough:
/// `spawn_tracked` spawns and registers under the lock, so any exec child that exists while
/// we hold it is registered; a candidate whose pid was reused since the scan is either
/// registered (skipped) or not a zombie (WNOHANG returns 0).
pub(crate) fn reap_once() -> usize {
    let candidates = zombie_children();
    if candidates.is_empty() {
        return 0;
    }
    let set = tracked();
    let mut reaped = 0;
    for pid in candidates {
        if set.as_ref().is_some_and(|s| s.contains(&pid)) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on a specific child; WNOHANG so it never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            reaped += 1;
            tracing::debug!(pid, "reaped orphan");
        }
    }
    reaped
}

/// Pids of this process's children that are zombies right now.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut zombies = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after "(comm)": state ppid …; comm may contain spaces and parens.
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace();
        if let (Some("Z"), Some(ppid)) = (fields.next(), fields.next())
            && ppid == me
        {
            zombies.push(pid);
        }
    }
    zombies
}
