//! `vault-proxy`: thin binary over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vault_proxy::audit::{AuditCommand, audit_cli};
use vault_proxy::config::Config;
use vault_proxy::secrets::{SecretsCommand, secrets_cli};

#[derive(Parser)]
#[command(
    name = "vault-proxy",
    version,
    about = "Airlock credential-swapping TLS proxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy and its admin API.
    Serve {
        /// Config file (YAML).
        #[arg(long, default_value = "vault.yaml")]
        config: PathBuf,
        /// Start a new audit chain although the log does not reach the head
        /// kept in `<audit_log>.head` (the log was removed or cut).
        #[arg(long)]
        new_audit_chain: bool,
    },
    /// Manage the encrypted secret store.
    Secrets {
        /// Config file naming the store.
        #[arg(long, default_value = "vault.yaml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: SecretsCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            config,
            new_audit_chain,
        } => serve(config, new_audit_chain),
        Cmd::Secrets { config, cmd } => match secrets_cli(cmd, &config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Audit { cmd } => audit_cli(cmd),
    }
}

fn serve(config_path: PathBuf, new_audit_chain: bool) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A file-size limit (RLIMIT_FSIZE) reached by the audit log must be an
    // EFBIG write error the writer fails closed on, not SIGXFSZ killing
    // the process.
    // SAFETY: setting a signal disposition to SIG_IGN at start, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let result = (|| -> anyhow::Result<()> {
        let mut config = Config::load(&config_path)?;
        // Logs (text, or JSON with AIRLOCK_LOG_FORMAT=json); traces when
        // `telemetry.otlp_endpoint` or OTEL_EXPORTER_OTLP_* names a collector (egress
        // decisions of grants issued under a trace). Dropped at the end: queued spans are
        // flushed.
        let _telemetry = airlock_telemetry::init(&airlock_telemetry::Options {
            service: "airlock-vault-proxy".into(),
            otlp_endpoint: config.telemetry.otlp_endpoint.clone(),
            default_filter: "info".into(),
        })?;
        config.audit_new_chain |= new_audit_chain;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            vault_proxy::run(config, vault_proxy::StartOptions::default(), shutdown).await
        })?;
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
