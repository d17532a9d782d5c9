//! `sandbox-agent` binary: parse flags, read the token, bind, serve until SIGTERM/SIGINT.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use sandbox_agent::{Config, EgressForward, ListenAddr, Token};

/// HTTP agent that runs commands and moves files inside a sandbox.
#[derive(Debug, Parser)]
// `args_override_self`: a later `--listen` replaces the image entrypoint's, so a backend can
// append `--listen unix:…` to an image whose entrypoint already names a TCP address.
#[command(version, about, args_override_self = true)]
struct Args {
    /// Address of the HTTP API: an IP:port (never resolved through DNS) or unix:/abs/path. A
    /// unix socket replaces a stale one and is created mode 0666: access is governed by the
    /// permissions of its directory.
    #[arg(long, default_value = "0.0.0.0:7700")]
    listen: ListenAddr,
    /// LISTEN=TARGET, e.g. 127.0.0.1:3128=unix:/run/airlock/egress.sock: accept TCP on LISTEN
    /// and copy each connection both ways to the unix socket TARGET. Repeatable.
    #[arg(long = "egress-forward", value_name = "LISTEN=TARGET")]
    egress_forward: Vec<EgressForward>,
    /// Most connections each --egress-forward carries at once; more wait in the backlog.
    #[arg(long, default_value_t = 512)]
    egress_max_connections: usize,
    /// Directory relative paths and the default exec cwd resolve against [default: current dir].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Largest accepted `PUT /files` body in bytes.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    max_upload_bytes: u64,
    /// Exec timeout when the request sets none.
    #[arg(long, default_value_t = 600_000)]
    default_timeout_ms: u64,
    /// Upper bound for a requested exec timeout (larger values are clamped).
    #[arg(long, default_value_t = 24 * 3600 * 1000)]
    max_timeout_ms: u64,
    /// Output cap (stdout + stderr) when the request sets none.
    #[arg(long, default_value_t = 1024 * 1024)]
    default_max_output_bytes: u64,
    /// Upper bound for a requested output cap.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_output_bytes_cap: u64,
    /// After the main process exits, how long backgrounded processes may hold the output
    /// pipes before the process group is killed.
    #[arg(long, default_value_t = 300)]
    pipe_grace_ms: u64,
    /// Become a child subreaper and reap orphaned zombies (always done when running as PID 1).
    #[arg(long)]
    subreaper: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line, no backtrace: this is what an operator sees in `docker logs`.
            eprintln!("sandbox-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let raw = std::env::var(airlock_wire::AGENT_TOKEN_ENV).unwrap_or_default();
    let Some(token) = Token::new(&raw) else {
        bail!(
            "{} is not set or empty: refusing to start an unauthenticated agent",
            airlock_wire::AGENT_TOKEN_ENV
        );
    };
    let workdir = match args.workdir {
        Some(dir) => dir,
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let workdir = workdir
        .canonicalize()
        .with_context(|| format!("workdir {}", workdir.display()))?;
    if !workdir.is_dir() {
        bail!("workdir {} is not a directory", workdir.display());
    }
    let mut config = Config::new(token, workdir);
    config.max_upload_bytes = args.max_upload_bytes;
    config.default_timeout_ms = args.default_timeout_ms;
    config.max_timeout_ms = args.max_timeout_ms;
    config.default_max_output_bytes = args.default_max_output_bytes;
    config.max_output_bytes_cap = args.max_output_bytes_cap;
    config.pipe_grace_ms = args.pipe_grace_ms;
    if args.subreaper {
        sandbox_agent::reaper::become_subreaper().context("PR_SET_CHILD_SUBREAPER")?;
        config.reap_orphans = true;
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        // Forwarders first: a client told the agent is up may use the proxy at once. A bind
        // failure is a configuration error and stops the agent.
        for fwd in &args.egress_forward {
            let listener = tokio::net::TcpListener::bind(fwd.listen)
                .await
                .with_context(|| format!("binding egress forward {}", fwd.listen))?;
            tracing::info!(listen = %fwd.listen, target = %fwd.target.display(), "egress forward started");
            tokio::spawn(sandbox_agent::forward_tcp_to_unix(
                listener,
                fwd.target.clone(),
                args.egress_max_connections,
            ));
        }
        match &args.listen {
            ListenAddr::Tcp(want) => {
                let listener = tokio::net::TcpListener::bind(want)
                    .await
                    .with_context(|| format!("binding {want}"))?;
                let addr = listener.local_addr().context("reading the bound address")?;
                announce(&addr.to_string(), &config)?;
                // Streamed exec writes small NDJSON chunks; with Nagle on, the exit line waits
                // for the client's delayed ACK (~40 ms per exec over TCP).
                use axum::serve::ListenerExt;
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                sandbox_agent::run(config, listener, shutdown_signal())
                    .await
                    .context("serving")
            }
            ListenAddr::Unix(path) => {
                let listener = sandbox_agent::bind_unix(path)
                    .with_context(|| format!("binding unix:{}", path.display()))?;
                announce(&args.listen.to_string(), &config)?;
                let served = sandbox_agent::run(config, listener, shutdown_signal())
                    .await
                    .context("serving");
                // Best effort: a socket left behind is replaced on the next start anyway.
                let _ = std::fs::remove_file(path);
                served
            }
        }
    })
}

/// Logs the start and prints `listening on <addr>` once: the e2e harness and the docker
/// backend's error messages rely on exactly this stdout line.
fn announce(addr: &str, config: &Config) -> anyhow::Result<()> {
    tracing::info!(%addr, workdir = %config.workdir.display(), "sandbox-agent started");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").context("writing to stdout")?;
    stdout.flush().context("flushing stdout")
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
