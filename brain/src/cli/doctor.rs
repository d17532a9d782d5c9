//! `brain doctor --backend e2b|daytona|kubernetes`: a live smoke test of one sandbox backend
//! against the real service (or anything at the configured URL, such as the test fakes).
//!
//! Steps, each printed with its latency: provision; exec (a plain one, one with a bad cwd,
//! one that times out); files (write, read back, list, a missing file and directory);
//! egress (the vault proxy is reachable when `proxy_url` is set; a direct call elsewhere is
//! blocked); destroy, then exec on the destroyed sandbox (expects `sandbox_lost`); sweep of
//! leftovers of earlier doctor runs. Without the backend's credentials (API key env var,
//! kubeconfig) it says so and succeeds: CI runs it unconditionally.

use std::collections::BTreeMap;
use std::time::Instant;

use airlock_wire::ExecRequest;
use bytes::Bytes;

use crate::config::SandboxConfig;
use crate::sandbox::{self, BackendError, BackendKind, SandboxBackend, SandboxHandle, SandboxSpec};

/// Owner label of doctor sandboxes: the sweep destroys only these.
pub const DOCTOR_OWNER: &str = "airlock-doctor";

/// What a run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    /// Set when the run did not happen (no credentials): why.
    pub skipped: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// Why the backend cannot be tried here, if so (no API key, no kubeconfig).
pub fn missing_credentials(kind: BackendKind, config: &SandboxConfig) -> Option<String> {
    let env_set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    match kind {
        BackendKind::E2b if !env_set(&config.e2b.api_key_env) => {
            Some(format!("env {} is not set", config.e2b.api_key_env))
        }
        BackendKind::Daytona if !env_set(&config.daytona.api_key_env) => {
            Some(format!("env {} is not set", config.daytona.api_key_env))
        }
        BackendKind::Kubernetes => {
            let in_cluster = env_set("KUBERNETES_SERVICE_HOST");
            let file = config
                .kubernetes
                .kubeconfig
                .clone()
                .or_else(|| std::env::var_os("KUBECONFIG").map(Into::into))
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| format!("{}/.kube/config", h.to_string_lossy()).into())
                });
            let has_file = file
                .as_ref()
                .is_some_and(|f: &std::path::PathBuf| f.is_file());
            (!in_cluster && !has_file).then(|| "no kubeconfig and not in a cluster".to_string())
        }
        _ => None,
    }
}

/// Where the "direct egress is blocked" step tries to connect (a public address the sandbox
/// must not reach).
pub const DEFAULT_BLOCKED_PROBE: &str = "1.1.1.1:443";

/// Runs the smoke test, printing one line per step to `out`. `blocked_probe` is the
/// `host:port` the sandbox must not reach directly.
pub async fn run(
    kind: BackendKind,
    config: &SandboxConfig,
    blocked_probe: &str,
    out: &mut (dyn std::io::Write + Send),
) -> Report {
    let mut report = Report::default();
    if !matches!(
        kind,
        BackendKind::E2b | BackendKind::Daytona | BackendKind::Kubernetes
    ) {
        let why = format!("doctor covers e2b, daytona and kubernetes, not {kind:?}");
        let _ = writeln!(out, "skipped: {why}");
        report.skipped = Some(why);
        return report;
    }
    if let Some(why) = missing_credentials(kind, config) {
        let _ = writeln!(out, "skipped: no credentials ({why})");
        report.skipped = Some(why);
        return report;
    }
    let mut step = Stepper { out, report };
    let backend = match step
        .run("connect", async {
            sandbox::build(kind, config)
                .await
                .map(|b| (b, String::new()))
        })
        .await
    {
        Some(b) => b,
        None => return step.finish(),
    };
    let proxy = proxy_url(kind, config);
    let spec = doctor_spec(proxy.is_some());
    let handle = match step
        .run("provision", async {
            backend
                .provision(&spec)
                .await
                .map(|h| (h.clone(), format!("ref {}", h.backend_ref)))
        })
        .await
    {
        Some(h) => h,
        None => {
            sweep(&mut step, backend.as_ref()).await;
            // What the backend keeps ready (docker spare networks) goes with the doctor.
            backend.shutdown().await;
            return step.finish();
        }
    };
    exec_steps(&mut step, backend.as_ref(), &handle).await;
    file_steps(&mut step, backend.as_ref(), &handle).await;
    egress_steps(
        &mut step,
        backend.as_ref(),
        &handle,
        proxy.as_deref(),
        blocked_probe,
    )
    .await;
    step.run("destroy", async {
        backend.destroy(&handle).await.map(|()| ((), String::new()))
    })
    .await;
    step.run("exec after destroy is sandbox_lost", async {
        match backend.exec(&handle, cmd("true", 10_000)).await {
            Err(BackendError::NotFound(m)) => Ok(((), m)),
            Err(e) => Err(format!("expected sandbox_lost, got {e}")),
            Ok(r) => Err(format!("the destroyed sandbox ran a command: {r:?}")),
        }
    })
    .await;
    sweep(&mut step, backend.as_ref()).await;
    backend.shutdown().await;
    step.finish()
}

/// Prints each step as it ends: `ok|FAIL  <name>  <ms> ms  <detail>`.
struct Stepper<'a> {
    out: &'a mut (dyn std::io::Write + Send),
    report: Report,
}

impl Stepper<'_> {
    async fn run<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        f: impl std::future::Future<Output = Result<(T, String), E>>,
    ) -> Option<T> {
        let started = Instant::now();
        let result = f.await;
        let ms = started.elapsed().as_millis();
        match result {
            Ok((v, detail)) => {
                self.report.passed += 1;
                let _ = writeln!(self.out, "ok    {name:<40} {ms:>6} ms  {detail}");
                Some(v)
            }
            Err(e) => {
                self.report.failed += 1;
                let _ = writeln!(self.out, "FAIL  {name:<40} {ms:>6} ms  {e}");
                None
            }
        }
    }

    fn finish(self) -> Report {
        let r = self.report;
        let _ = writeln!(self.out, "doctor: {} passed, {} failed", r.passed, r.failed);
        r
    }
}

fn proxy_url(kind: BackendKind, config: &SandboxConfig) -> Option<String> {
    match kind {
        BackendKind::E2b => config.e2b.proxy_url.clone(),
        BackendKind::Daytona => config.daytona.proxy_url.clone(),
        _ => None,
    }
}

/// A small sandbox with a proxy setting but no credentials: with `proxy_url` set the backend
/// opens egress to the vault proxy only; without, none at all.
fn doctor_spec(with_proxy: bool) -> SandboxSpec {
    let id = format!("doctor-{}", uuid::Uuid::new_v4().simple());
    let mut env = BTreeMap::new();
    if with_proxy {
        for k in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            env.insert(k.to_string(), format!("https://{id}:doctor@127.0.0.1:1"));
        }
    }
    SandboxSpec {
        id,
        owner: DOCTOR_OWNER.into(),
        image: None,
        resources: Default::default(),
        env,
        files: Vec::new(),
        agent_token: uuid::Uuid::new_v4().simple().to_string(),
        ttl_s: 600,
        workspace: None,
        cache_tenant: None,
    }
}

fn cmd(command: &str, timeout_ms: u64) -> ExecRequest {
    ExecRequest {
        command: Some(command.into()),
        timeout_ms: Some(timeout_ms),
        max_output_bytes: Some(64 * 1024),
        ..ExecRequest::default()
    }
}

async fn exec_steps(step: &mut Stepper<'_>, b: &dyn SandboxBackend, h: &SandboxHandle) {
    step.run("exec echo", async {
        let r = b
            .exec(h, cmd("echo airlock-ok; echo err >&2; exit 3", 30_000))
            .await
            .map_err(|e| e.to_string())?;
        if r.stdout.contains("airlock-ok") && r.exit_code == Some(3) {
            Ok(((), format!("exit {:?}", r.exit_code)))
        } else {
            Err(format!("unexpected result {r:?}"))
        }
    })
    .await;
    step.run("exec with a bad cwd is a request error", async {
        let mut req = cmd("pwd", 30_000);
        req.cwd = Some("/nonexistent/airlock-doctor".into());
        match b.exec(h, req).await {
            Err(BackendError::Invalid(m)) => Ok(((), m)),
            Err(BackendError::Agent {
                status, message, ..
            }) if (400..500).contains(&status) => Ok(((), message)),
            other => Err(format!("expected a 4xx tool error, got {other:?}")),
        }
    })
    .await;
    step.run("exec that times out", async {
        let r = b
            .exec(h, cmd("sleep 30", 1_000))
            .await
            .map_err(|e| e.to_string())?;
        if r.timed_out {
            Ok(((), format!("{} ms", r.duration_ms)))
        } else {
            Err(format!("did not time out: {r:?}"))
        }
    })
    .await;
}

async fn file_steps(step: &mut Stepper<'_>, b: &dyn SandboxBackend, h: &SandboxHandle) {
    let data = Bytes::from_static(b"airlock doctor \x00\xff\n");
    let dir = "/tmp/airlock-doctor";
    let path = "/tmp/airlock-doctor/probe.bin";
    step.run("write file", async {
        b.write_file(h, path, data.clone())
            .await
            .map(|()| ((), String::new()))
    })
    .await;
    step.run("read file back", async {
        let got = b.read_file(h, path).await.map_err(|e| e.to_string())?;
        (got == data)
            .then_some(((), format!("{} bytes", got.len())))
            .ok_or_else(|| format!("read back {got:?}"))
    })
    .await;
    step.run("list directory", async {
        let list = b.list_files(h, dir).await.map_err(|e| e.to_string())?;
        list.iter()
            .any(|e| e.name == "probe.bin")
            .then_some(((), format!("{} entries", list.len())))
            .ok_or_else(|| format!("probe.bin not listed: {list:?}"))
    })
    .await;
    for (name, missing) in [
        ("read a missing file is not found", true),
        ("list a missing directory is not found", false),
    ] {
        step.run(name, async {
            let r = if missing {
                b.read_file(h, "/nonexistent/airlock-doctor")
                    .await
                    .map(|_| ())
            } else {
                b.list_files(h, "/nonexistent/airlock-doctor")
                    .await
                    .map(|_| ())
            };
            match r {
                Err(BackendError::Agent {
                    status: 404,
                    message,
                    ..
                }) => Ok(((), message)),
                other => Err(format!("expected a 404 tool error, got {other:?}")),
            }
        })
        .await;
    }
}

async fn egress_steps(
    step: &mut Stepper<'_>,
    b: &dyn SandboxBackend,
    h: &SandboxHandle,
    proxy: Option<&str>,
    blocked_probe: &str,
) {
    // bash's /dev/tcp: no curl needed in the image; `timeout` bounds a dropped SYN.
    let connect = |host: &str, port: &str| {
        format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2>/dev/null && echo open || echo closed"
        )
    };
    match proxy.and_then(host_port) {
        Some((host, port)) => {
            let c = connect(&host, &port);
            step.run("egress to the vault proxy", async {
                let r = b
                    .exec(h, cmd(&c, 20_000))
                    .await
                    .map_err(|e| e.to_string())?;
                (r.stdout.trim() == "open")
                    .then_some(((), format!("{host}:{port} reachable")))
                    .ok_or_else(|| format!("{host}:{port} not reachable from the sandbox"))
            })
            .await;
        }
        None => {
            let _ = writeln!(
                step.out,
                "skip  {:<40} {:>6}     no proxy_url configured",
                "egress to the vault proxy", "-"
            );
        }
    }
    let Some((host, port)) = host_port(blocked_probe) else {
        let _ = writeln!(step.out, "FAIL  bad --blocked-probe `{blocked_probe}`");
        step.report.failed += 1;
        return;
    };
    let c = connect(&host, &port);
    step.run("direct egress is blocked", async {
        let r = b
            .exec(h, cmd(&c, 20_000))
            .await
            .map_err(|e| e.to_string())?;
        (r.stdout.trim() == "closed")
            .then_some(((), format!("{host}:{port} unreachable")))
            .ok_or_else(|| format!("the sandbox reached {host}:{port} directly"))
    })
    .await;
}

/// `host` and `port` of `host:port` (or `http://host:port/`).
fn host_port(s: &str) -> Option<(String, String)> {
    let s = s.trim().strip_prefix("http://").unwrap_or(s.trim());
    let (host, port) = s.trim_end_matches('/').rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_string(), port.to_string()))
}

/// Destroys what earlier doctor runs left (owner [`DOCTOR_OWNER`] only; never other sandboxes).
async fn sweep(step: &mut Stepper<'_>, b: &dyn SandboxBackend) {
    step.run("sweep doctor leftovers", async {
        let found = b.list_labelled().await?;
        let mine: Vec<_> = found
            .into_iter()
            .filter(|f| f.owner.as_deref() == Some(DOCTOR_OWNER))
            .collect();
        for f in &mine {
            b.destroy_labelled(f).await?;
        }
        Ok::<_, BackendError>(((), format!("{} destroyed", mine.len())))
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_credentials_it_says_so_and_succeeds() {
        let mut config = SandboxConfig::default();
        config.e2b.api_key_env = "AIRLOCK_DOCTOR_TEST_UNSET_KEY".into();
        let mut out = Vec::new();
        let r = run(BackendKind::E2b, &config, DEFAULT_BLOCKED_PROBE, &mut out).await;
        assert!(r.ok() && r.skipped.is_some());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("skipped: no credentials (env AIRLOCK_DOCTOR_TEST_UNSET_KEY"),
            "{text}"
        );
    }

    #[test]
    fn proxy_addresses_split() {
        assert_eq!(
            host_port("http://203.0.113.7:8899/"),
            Some(("203.0.113.7".into(), "8899".into()))
        );
        assert_eq!(host_port("no-port"), None);
    }
}
