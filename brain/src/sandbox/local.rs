//! Local backend: each sandbox is a `sandbox-agent` child process in a fresh directory.
//!
//! **No isolation.** Commands run as the brain's user, on the brain's file system and network.
//! It exists so the platform runs (and its tests run) with nothing installed; the brain logs a
//! warning when it is chosen.
//!
//! Layout of one sandbox: `<temp_root>/airlock-sb-<id>/` holding `work/` (the agent's
//! `--workdir`, also `HOME`), `tmp/` (`TMPDIR`), `files/` (staged [`SandboxSpec::files`]) and
//! `agent.log` (the agent's stderr). A state file `<state_dir>/<id>.json` records owner, pid and
//! boot id; it is written *before* anything is created, so a brain killed at any point finds
//! what to reap with [`SandboxBackend::list_labelled`].
//!
//! The agent is started in a new session (`setsid`), so it and every process it starts share
//! one session id, even though each exec runs in its own process group. Destroy sends SIGTERM
//! to the agent (which kills its exec groups), then SIGKILLs whatever is left in the session,
//! then removes the directory and the state file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::agent_client::AgentClient;
use super::{
    BackendError, BackendKind, LabelledSandbox, SandboxBackend, SandboxHandle, SandboxSpec,
};

/// Binary name looked up next to the brain executable and on `PATH`.
const AGENT_BINARY: &str = "sandbox-agent";
/// Prefix of sandbox directories under the temp root.
pub const DIR_PREFIX: &str = "airlock-sb-";
/// Env var naming the sandbox, set for the agent and inherited by every command.
pub const SANDBOX_ID_ENV: &str = "AIRLOCK_SANDBOX_ID";
const EXTRA_ROOT: &str = "root";
const EXTRA_PID: &str = "pid";
const EXTRA_BOOT_ID: &str = "boot_id";

/// Settings of the local backend (`sandbox.local` in the brain config).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// Path of the `sandbox-agent` binary. Unset: next to the brain executable, else on `PATH`.
    pub agent_path: Option<PathBuf>,
    /// Directory with one `<id>.json` file per sandbox (owner, pid), read after a restart to
    /// find leftovers. Unset: `<temp dir>/airlock-local`.
    pub state_dir: Option<PathBuf>,
    /// Where sandbox directories (`airlock-sb-<id>`) are created. Unset: the system temp dir.
    pub temp_root: Option<PathBuf>,
    /// How long to wait for the agent to print its address and answer `/health`.
    pub startup_timeout_seconds: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            agent_path: None,
            state_dir: None,
            temp_root: None,
            startup_timeout_seconds: 10,
        }
    }
}

/// What is on disk for one sandbox, in `<state_dir>/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    id: String,
    owner: String,
    root: PathBuf,
    /// Agent pid (= its session id); `None` until spawned.
    pid: Option<i32>,
    /// Kernel boot id when the agent was started: after a reboot nothing of it can be running,
    /// and its pid may belong to someone else.
    boot_id: String,
}

#[derive(Debug, Clone)]
pub struct LocalBackend {
    agent_path: PathBuf,
    state_dir: PathBuf,
    temp_root: PathBuf,
    startup_timeout: Duration,
}

// === impl LocalBackend ===

impl LocalBackend {
    pub fn new(config: &LocalConfig) -> Result<Self, BackendError> {
        let agent_path = match &config.agent_path {
            Some(path) if path.is_file() => path.clone(),
            Some(path) => {
                return Err(BackendError::Unavailable(format!(
                    "sandbox.local.agent_path {} does not exist",
                    path.display()
                )));
            }
            None => find_agent().ok_or_else(|| {
                BackendError::Unavailable(format!(
                    "`{AGENT_BINARY}` not found next to the brain executable or on PATH; \
                     build it with `cargo build -p sandbox-agent` or set sandbox.local.agent_path"
                ))
            })?,
        };
        let state_dir = config
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("airlock-local"));
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            BackendError::Unavailable(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        let temp_root = config.temp_root.clone().unwrap_or_else(std::env::temp_dir);
        tracing::warn!(
            agent = %agent_path.display(),
            "LOCAL SANDBOX BACKEND: commands run as this user on this machine with NO ISOLATION \
             (no container, no network restriction). Use it for development only."
        );
        Ok(Self {
            agent_path,
            state_dir,
            temp_root,
            startup_timeout: Duration::from_secs(config.startup_timeout_seconds.max(1)),
        })
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.state_dir.join(format!("{id}.json"))
    }

    async fn write_state(&self, state: &StateFile) -> Result<(), BackendError> {
        let path = self.state_path(&state.id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(state)
            .map_err(|e| BackendError::Unavailable(format!("encoding local state: {e}")))?;
        // Write then rename, so a crash never leaves a half-written state file.
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(io_err("writing", &tmp))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io_err("renaming", &tmp))
    }

    async fn read_state(&self, id: &str) -> Option<StateFile> {
        let bytes = tokio::fs::read(self.state_path(id)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn spawn_agent(
        &self,
        spec: &SandboxSpec,
        root: &Path,
        state: &mut StateFile,
    ) -> Result<String, BackendError> {
        let work = root.join("work");
        let tmp = root.join("tmp");
        for dir in [&work, &tmp] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(io_err("creating", dir))?;
        }
        let staged = stage_files(root, &spec.files).await?;
        let log_path = root.join("agent.log");
        let log = std::fs::File::create(&log_path).map_err(io_err("creating", &log_path))?;

        let mut cmd = tokio::process::Command::new(&self.agent_path);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--workdir")
            .arg(&work)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &work)
            .env("TMPDIR", &tmp)
            .env("LANG", "C.UTF-8")
            .env("RUST_LOG", "info");
        for (key, value) in &spec.env {
            // An env value naming a staged file (SSL_CERT_FILE=/etc/…/ca.pem) points at the copy.
            let value = staged
                .get(value)
                .map(|p| p.as_os_str().to_owned())
                .unwrap_or_else(|| value.into());
            cmd.env(key, value);
        }
        cmd.env(SANDBOX_ID_ENV, &spec.id)
            .env(airlock_wire::AGENT_TOKEN_ENV, &spec.agent_token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            // The agent must outlive a brain crash so a restarted brain can adopt it.
            .kill_on_drop(false);
        // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent; it gives
        // the agent and all its descendants one session id that destroy can sweep.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            BackendError::Unavailable(format!("cannot start {}: {e}", self.agent_path.display()))
        })?;
        state.pid = child.id().and_then(|pid| i32::try_from(pid).ok());
        self.write_state(state).await?;

        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BackendError::NotReady("agent stdout was not captured".into()))?;
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(self.startup_timeout, lines.read_line(&mut line)).await;
        let addr = match read {
            Ok(Ok(n)) if n > 0 => line.trim().strip_prefix("listening on ").map(str::to_owned),
            _ => None,
        };
        // Keep draining stdout so a later write by the agent never hits a full pipe.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink).await;
        });
        // Dropping the handle leaves the agent running; tokio reaps it once it exits.
        drop(child);
        let Some(addr) = addr else {
            return Err(BackendError::NotReady(format!(
                "agent did not print its address within {:?}; log: {}",
                self.startup_timeout,
                log_tail(&log_path).await
            )));
        };
        let url = format!("http://{addr}");
        let agent = AgentClient::new(&url, &spec.agent_token);
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            match agent.health().await {
                Ok(_) => return Ok(url),
                Err(e) if Instant::now() >= deadline => {
                    return Err(BackendError::NotReady(format!(
                        "agent at {url} not healthy: {e}; log: {}",
                        log_tail(&log_path).await
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Stops everything of one sandbox and removes its files. Safe to repeat.
    async fn teardown(&self, state: &StateFile) -> Result<(), BackendError> {
        if state.boot_id == boot_id() {
            let marker = state.root.clone();
            let pid = state.pid;
            tokio::task::spawn_blocking(move || {
                // No pid recorded: the brain died between spawning the agent and writing the
                // pid down. The agent is then found by its work dir on its command line.
                match pid.or_else(|| find_session_leader(&marker)) {
                    Some(pid) => kill_session(pid, &marker),
                    None => Ok(()),
                }
            })
            .await
            .map_err(|e| BackendError::Unavailable(format!("kill task failed: {e}")))??;
        }
        match tokio::fs::remove_dir_all(&state.root).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &state.root)(e)),
        }
        match tokio::fs::remove_file(self.state_path(&state.id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing state of", Path::new(&state.id))(e)),
        }
    }
}

#[async_trait]
impl SandboxBackend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        check_id(&spec.id)?;
        let root = self.temp_root.join(format!("{DIR_PREFIX}{}", spec.id));
        let mut state = StateFile {
            id: spec.id.clone(),
            owner: spec.owner.clone(),
            root: root.clone(),
            pid: None,
            boot_id: boot_id(),
        };
        self.write_state(&state).await?;
        match self.spawn_agent(spec, &root, &mut state).await {
            Ok(agent_url) => {
                let mut extra = BTreeMap::new();
                extra.insert(EXTRA_ROOT.to_string(), root.display().to_string());
                extra.insert(EXTRA_BOOT_ID.to_string(), state.boot_id.clone());
                if let Some(pid) = state.pid {
                    extra.insert(EXTRA_PID.to_string(), pid.to_string());
                }
                Ok(SandboxHandle {
                    id: spec.id.clone(),
                    backend: BackendKind::Local,
                    backend_ref: state.pid.map(|p| p.to_string()).unwrap_or_default(),
                    agent_url: Some(agent_url),
                    agent_token: spec.agent_token.clone(),
                    extra,
                })
            }
            Err(e) => {
                if let Err(cleanup) = self.teardown(&state).await {
                    tracing::warn!(sandbox = %spec.id, error = %cleanup, "cleanup after failed provision");
                }
                Err(e)
            }
        }
    }

    fn supports_pool(&self) -> bool {
        true
    }

    /// A pooled local sandbox gets its grant at the claim: the files are staged under its
    /// directory as at provision (never at their absolute paths: no isolation here), env
    /// values naming them point at the copies, and the env goes to the agent's one-time
    /// `POST /configure`, which every later exec inherits.
    async fn configure(
        &self,
        handle: &SandboxHandle,
        env: &BTreeMap<String, String>,
        files: &[(String, bytes::Bytes)],
    ) -> Result<(), BackendError> {
        let root = handle
            .extra
            .get(EXTRA_ROOT)
            .map(PathBuf::from)
            .ok_or_else(|| BackendError::Invalid(format!("sandbox {} has no root", handle.id)))?;
        let staged = stage_files(&root, files).await?;
        let env = env
            .iter()
            .map(|(k, v)| {
                let v = staged
                    .get(v)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| v.clone());
                (k.clone(), v)
            })
            .collect();
        self.agent(handle)?
            .configure(&airlock_wire::ConfigureRequest {
                env,
                files: BTreeMap::new(),
            })
            .await
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        check_id(&handle.id)?;
        let state = match self.read_state(&handle.id).await {
            Some(state) => state,
            // State file already gone (destroyed before); the handle still says where things are.
            None => StateFile {
                id: handle.id.clone(),
                owner: String::new(),
                root: handle
                    .extra
                    .get(EXTRA_ROOT)
                    .map(PathBuf::from)
                    .unwrap_or_else(|| self.temp_root.join(format!("{DIR_PREFIX}{}", handle.id))),
                pid: handle.extra.get(EXTRA_PID).and_then(|p| p.parse().ok()),
                boot_id: handle.extra.get(EXTRA_BOOT_ID).cloned().unwrap_or_default(),
            },
        };
        self.teardown(&state).await
    }

    async fn destroy_labelled(&self, found: &LabelledSandbox) -> Result<(), BackendError> {
        check_id(&found.id)?;
        match self.read_state(&found.id).await {
            Some(state) => self.teardown(&state).await,
            None => Ok(()),
        }
    }

    async fn list_labelled(&self) -> Result<Vec<LabelledSandbox>, BackendError> {
        let mut dir = match tokio::fs::read_dir(&self.state_dir).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("reading", &self.state_dir)(e)),
        };
        let mut found = Vec::new();
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(io_err("reading", &self.state_dir))?
        {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(state) => found.push(LabelledSandbox {
                    id: state.id,
                    owner: Some(state.owner),
                    backend_ref: state.root.display().to_string(),
                }),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable local state file")
                }
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }
}

/// Ids become file and directory names, so only a safe alphabet is accepted.
fn check_id(id: &str) -> Result<(), BackendError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BackendError::Invalid(format!("bad sandbox id {id:?}")))
    }
}

fn find_agent() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.parent()?.join(AGENT_BINARY);
    if beside.is_file() {
        return Some(beside);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(AGENT_BINARY))
        .find(|p| p.is_file())
}

/// Copies spec files under `<root>/files/<path>`; returns original path → staged path.
async fn stage_files(
    root: &Path,
    files: &[(String, bytes::Bytes)],
) -> Result<BTreeMap<String, PathBuf>, BackendError> {
    let mut staged = BTreeMap::new();
    for (path, data) in files {
        let relative = Path::new(path.trim_start_matches('/'));
        let safe = relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe || relative.as_os_str().is_empty() {
            return Err(BackendError::Invalid(format!(
                "bad sandbox file path {path:?}"
            )));
        }
        let target = root.join("files").join(relative);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_err("creating", parent))?;
        }
        tokio::fs::write(&target, data)
            .await
            .map_err(io_err("writing", &target))?;
        staged.insert(path.clone(), target);
    }
    Ok(staged)
}

async fn log_tail(path: &Path) -> String {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}

fn io_err<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackendError + 'a {
    move |e| BackendError::Unavailable(format!("{what} {}: {e}", path.display()))
}

/// The kernel's id for this boot (empty if unavailable, which disables pid-based kills of
/// state written by another boot).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub comm: String,
    pub state: char,
    pub session: i32,
}

pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// `pid (comm) state ppid pgrp session …`; comm may contain spaces and parentheses, so it is
/// taken up to the *last* `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let _ppid = rest.next()?;
    let _pgrp = rest.next()?;
    let session = rest.next()?.parse().ok()?;
    Some(ProcStat {
        comm,
        state,
        session,
    })
}

fn is_running(stat: &ProcStat) -> bool {
    stat.state != 'Z' && stat.state != 'X'
}

/// Every live process whose session id is `sid`.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.session == sid && is_running(&s)))
        .collect()
}

/// Whether session `sid` is still the one our agent started. The pid of a session leader is
/// not reused while any member of its session lives, so: leader alive → it must be our agent
/// (its command line names our directory); leader gone → remaining members are ours.
fn session_is_ours(sid: i32, marker: &Path) -> bool {
    match proc_stat(sid) {
        None => true,
        Some(stat) if !is_running(&stat) => AGENT_BINARY.starts_with(stat.comm.as_str()),
        Some(_) => cmdline_contains(sid, marker),
    }
}

/// A live session leader whose command line contains `marker` (our agent, found by its
/// `--workdir`).
fn find_session_leader(marker: &Path) -> Option<i32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            proc_stat(*pid).is_some_and(|s| s.session == *pid && is_running(&s))
                && cmdline_contains(*pid, marker)
        })
}

fn cmdline_contains(pid: i32, marker: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let marker = marker.as_os_str().as_encoded_bytes();
    !marker.is_empty() && cmdline.windows(marker.len()).any(|w| w == marker)
}

/// SIGTERM to the agent (it kills its exec groups), then SIGKILL to anything left in its
/// session until nothing is.
fn kill_session(sid: i32, marker: &Path) -> Result<(), BackendError> {
    if sid <= 1 || !session_is_ours(sid, marker) {
        return Ok(());
    }
    if proc_stat(sid).is_some_and(|s| is_running(&s)) {
        // SAFETY: plain syscall on a pid verified above to be our agent.
        unsafe { libc::kill(sid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && proc_stat(sid).is_some_and(|s| is_running(&s)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for _ in 0..100 {
        let members = session_members(sid);
        if members.is_empty() {
            return Ok(());
        }
        for pid in members {
            // SAFETY: plain syscall; members of the agent's session are ours (see above).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = session_members(sid);
    if left.is_empty() {
        Ok(())
    } else {
        Err(BackendError::Unavailable(format!(
            "processes {left:?} of session {sid} survive SIGKILL"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_odd_command_names() {
        let stat = parse_stat("123 (a) b (c)) S 1 123 120 0 -1").unwrap();
        assert_eq!(
            stat,
            ProcStat {
                comm: "a) b (c)".into(),
                state: 'S',
                session: 120
            }
        );
        assert!(parse_stat("garbage").is_none());
        let me = proc_stat(std::process::id() as i32).unwrap();
        assert!(is_running(&me));
    }

    #[test]
    fn ids_must_be_safe_file_names() {
        for ok in ["sb-1", "sb_ABC-09"] {
            check_id(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", "a b", "é"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn stage_files_rejects_escapes_and_maps_paths() {
        let dir = tempfile::tempdir().unwrap();
        let staged = stage_files(dir.path(), &[("/etc/airlock/ca.pem".into(), "pem".into())])
            .await
            .unwrap();
        let target = &staged["/etc/airlock/ca.pem"];
        assert_eq!(std::fs::read_to_string(target).unwrap(), "pem");
        assert!(target.starts_with(dir.path().join("files")));
        for bad in ["/etc/../../x", "", "/"] {
            assert!(
                stage_files(dir.path(), &[(bad.into(), "x".into())])
                    .await
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn leftover_without_a_recorded_pid_is_found_and_its_session_killed() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalConfig {
            agent_path: Some("/bin/sh".into()),
            state_dir: Some(dir.path().join("state")),
            temp_root: Some(dir.path().into()),
            startup_timeout_seconds: 1,
        };
        let backend = LocalBackend::new(&config).unwrap();
        let root = dir.path().join("airlock-sb-sb-left");
        std::fs::create_dir_all(&root).unwrap();
        // Stands in for an agent the brain spawned but died before recording: a session leader
        // naming the sandbox dir, with a child in its session.
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg("sleep 1000 & wait").arg(&root);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let mut leader = cmd.spawn().unwrap();
        let sid = leader.id() as i32;
        let state = StateFile {
            id: "sb-left".into(),
            owner: "brain-x".into(),
            root: root.clone(),
            pid: None,
            boot_id: boot_id(),
        };
        backend.write_state(&state).await.unwrap();
        let found = backend.list_labelled().await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].id.as_str(), found[0].owner.as_deref()),
            ("sb-left", Some("brain-x"))
        );
        // Wait until the child is in the session too.
        for _ in 0..100 {
            if session_members(sid).len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(session_members(sid).len() >= 2);

        backend.destroy_labelled(&found[0]).await.unwrap();
        let _ = leader.wait();
        assert!(session_members(sid).is_empty(), "session members survive");
        assert!(!root.exists());
        assert!(backend.list_labelled().await.unwrap().is_empty());
    }

    #[test]
    fn session_of_an_unrelated_live_leader_is_not_ours() {
        // Our own test process is alive and its command line does not name the marker.
        let me = std::process::id() as i32;
        assert!(!session_is_ours(me, Path::new("/nonexistent/airlock-sb-x")));
    }
}
