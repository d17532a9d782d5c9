//! `brain` binary: parse flags, load config, bind, run. Prints exactly one `listening on <addr>`
//! line to stdout once bound (the e2e harness waits for it); logs go to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use brain::config::{BackendChoice, Config, ConfigError, MasterKey, Overrides};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "brain",
    version,
    about = "Airlock brain: agent loop, HTTP API and sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Start a session for TASK and follow it to the end (exit 0 only if it succeeded).
    Run(RunArgs),
    /// List sessions, newest first.
    Sessions(SessionsArgs),
    /// Print a session's transcript.
    Logs(LogsArgs),
    /// The vault proxy's egress decisions (swaps, blocks), filterable.
    Audit(AuditArgs),
    /// List sandboxes.
    Sandboxes(SandboxesArgs),
    /// Live smoke test of a cloud or cluster backend (skipped without its credentials).
    Doctor(DoctorArgs),
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// e2b|daytona|kubernetes
    #[arg(long)]
    backend: BackendChoice,
    /// Config file [default: airlock.yaml in the working directory, if present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// host:port the sandbox must NOT reach directly (the "blocked call" step).
    #[arg(long, default_value = brain::cli::doctor::DEFAULT_BLOCKED_PROBE)]
    blocked_probe: String,
}

/// Where the brain is; the key comes from AIRLOCK_MASTER_KEY.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Base URL of the brain.
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// What the agent should do.
    task: String,
    /// Model name (default: the brain's `models.default_model`).
    #[arg(long)]
    model: Option<String>,
    /// Sandbox backend for this session.
    #[arg(long)]
    backend: Option<String>,
    /// Credential the session's sandboxes may use (repeatable).
    #[arg(long = "credential")]
    credentials: Vec<String>,
    #[arg(long)]
    max_steps: Option<u32>,
    #[arg(long)]
    max_cost_usd: Option<f64>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
struct SessionsArgs {
    /// queued|running|succeeded|failed|cancelled
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    /// Session id.
    id: String,
    /// Keep following until the session settles.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuditArgs {
    #[command(subcommand)]
    action: Option<AuditAction>,
    #[arg(long)]
    sandbox: Option<String>,
    #[arg(long)]
    session: Option<String>,
    #[arg(long)]
    credential: Option<String>,
    /// allow|deny
    #[arg(long)]
    decision: Option<String>,
    /// RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON record per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Verify the proxy's audit log against the heads the brain recorded: exit 0 "ok: …",
    /// exit 1 "audit log broken at seq N: <reason>" (edited, reordered, or its tail cut off).
    Verify(AuditVerifyArgs),
}

#[derive(Debug, clap::Args)]
struct AuditVerifyArgs {
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
struct SandboxesArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Config file [default: airlock.yaml in the working directory, if present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (overrides the file).
    #[arg(long, env = "AIRLOCK_LISTEN")]
    listen: Option<SocketAddr>,
    /// Database URL: sqlite://path or postgres://… (overrides the file).
    #[arg(long, env = "AIRLOCK_DATABASE_URL")]
    database_url: Option<String>,
    /// Default sandbox backend: auto|local|docker|kubernetes|e2b|daytona (overrides the file).
    #[arg(long, env = "AIRLOCK_BACKEND")]
    backend: Option<BackendChoice>,
    /// With no master key configured, mint a random one and print it once to stderr
    /// (development only: it changes on every start).
    #[arg(long)]
    dev_generate_key: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).map(|()| true),
        Command::Doctor(args) => init_telemetry(None).and_then(|_t| doctor(args)),
        other => init_telemetry(None).and_then(|_t| client_command(other)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // The command ran but its outcome is a failure (a session that did not succeed).
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            // One readable line (with causes), not a debug dump.
            eprintln!("brain: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs (text, or JSON with `AIRLOCK_LOG_FORMAT=json`) and, when an endpoint is configured,
/// OTLP traces. The guard flushes queued spans when dropped.
fn init_telemetry(otlp_endpoint: Option<&str>) -> anyhow::Result<airlock_telemetry::Telemetry> {
    Ok(airlock_telemetry::init(&airlock_telemetry::Options {
        service: "airlock-brain".into(),
        otlp_endpoint: otlp_endpoint.map(str::to_owned),
        default_filter: "info".into(),
    })?)
}

/// `brain doctor`: exit 0 when every step passed or the run was skipped (no credentials).
fn doctor(args: DoctorArgs) -> anyhow::Result<bool> {
    let config = Config::load(args.config.as_deref())?;
    let kind = args
        .backend
        .kind()
        .context("doctor needs a concrete backend: e2b, daytona or kubernetes")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(async {
        let mut out = std::io::stdout();
        brain::cli::doctor::run(kind, &config.sandbox, &args.blocked_probe, &mut out).await
    });
    Ok(report.ok())
}

fn client_command(command: Command) -> anyhow::Result<bool> {
    use brain::cli;
    let key = std::env::var(brain::config::MASTER_KEY_ENV)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .with_context(|| {
            format!(
                "set {} to the brain's master key",
                brain::config::MASTER_KEY_ENV
            )
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match command {
            Command::Serve(_) | Command::Doctor(_) => {
                anyhow::bail!("not a client command")
            }
            Command::Run(a) => {
                let client = cli::Client::new(&a.client.url, key)?;
                cli::run(
                    &client,
                    cli::RunArgs {
                        task: a.task,
                        model: a.model,
                        backend: a.backend,
                        credentials: a.credentials,
                        max_steps: a.max_steps,
                        max_cost_usd: a.max_cost_usd,
                    },
                )
                .await
            }
            Command::Sessions(a) => {
                let client = cli::Client::new(&a.client.url, key)?;
                cli::sessions(&client, a.status, a.limit, a.json)
                    .await
                    .map(|()| true)
            }
            Command::Logs(a) => {
                let client = cli::Client::new(&a.client.url, key)?;
                cli::logs(&client, &a.id, a.follow).await.map(|()| true)
            }
            Command::Audit(AuditArgs {
                action: Some(AuditAction::Verify(v)),
                ..
            }) => {
                let client = cli::Client::new(&v.client.url, key)?;
                cli::audit_verify(&client, v.json).await
            }
            Command::Audit(a) => {
                let client = cli::Client::new(&a.client.url, key)?;
                cli::audit(
                    &client,
                    cli::AuditArgs {
                        sandbox: a.sandbox,
                        session: a.session,
                        credential: a.credential,
                        decision: a.decision,
                        since: a.since,
                        limit: a.limit,
                        json: a.json,
                    },
                )
                .await
                .map(|()| true)
            }
            Command::Sandboxes(a) => {
                let client = cli::Client::new(&a.client.url, key)?;
                cli::sandboxes(&client, a.json).await.map(|()| true)
            }
        }
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    config.apply(Overrides {
        listen: args.listen,
        database_url: args.database_url,
        backend: args.backend,
    });
    config.validate()?;
    let telemetry = init_telemetry(config.telemetry.otlp_endpoint.as_deref())?;
    if telemetry.tracing() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    let master_key = match config.master_key(|name| std::env::var(name).ok()) {
        Ok(key) => key,
        Err(ConfigError::NoMasterKey { .. }) if args.dev_generate_key => {
            let key = MasterKey::generate();
            eprintln!(
                "generated a development master key (shown once, not stored): {}",
                key.expose()
            );
            key
        }
        Err(e) => return Err(e.into()),
    };

    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}").context("writing to stdout")?;
        stdout.flush().context("flushing stdout")?;
        drop(stdout);
        brain::run(config, master_key, listener, shutdown_signal())
            .await
            .context("brain stopped")
    });
    // `run` bounded its own last steps; a task still stuck (a query on a connection an outage
    // dropped, a blocking call) must not hold the exit: dropping the runtime would wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Resolves on SIGTERM or Ctrl-C.
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
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the brain");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
