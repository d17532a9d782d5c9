//! `vault-proxy secrets put|list|rm`: manage the encrypted store named by the
//! config's `secrets_store`. Values are read from stdin only (never argv,
//! which `ps` shows) and are never printed.

use std::io::{Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

use super::store::{SecretStore, StoreKey};
use super::{SecretError, SecretValue, strip_one_newline};
use crate::config::{Config, HostPattern};

/// `vault-proxy secrets …` subcommands (wired into main.rs with
/// `#[command(subcommand)]`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum SecretsCommand {
    /// Store (or replace) a secret; the value is read from stdin, one
    /// trailing newline stripped. Needs AIRLOCK_VAULT_KEY.
    Put {
        /// Entry name (what `stored:` in the config refers to).
        name: String,
        /// A host the secret may be sent to: exact name or `*.` wildcard (repeatable).
        #[arg(long = "allowed-host", required = true, value_name = "HOST")]
        allowed_hosts: Vec<String>,
    },
    /// List entry names and their allowed hosts (never values).
    List,
    /// Remove an entry. Needs AIRLOCK_VAULT_KEY.
    Rm {
        /// Entry name.
        name: String,
    },
}

/// Runs a `secrets` subcommand with the process's stdin, stdout and environment.
pub fn secrets_cli(cmd: SecretsCommand, config_path: &Path) -> Result<(), SecretError> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    secrets_cli_with(
        cmd,
        config_path,
        &mut stdin.lock(),
        &mut stdout.lock(),
        &|n| std::env::var_os(n),
    )
}

/// [`secrets_cli`] with explicit I/O and environment (tests).
pub fn secrets_cli_with(
    cmd: SecretsCommand,
    config_path: &Path,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<(), SecretError> {
    let config = Config::load(config_path)?;
    let path = config.secrets_store.clone();
    match cmd {
        SecretsCommand::Put {
            name,
            allowed_hosts,
        } => {
            let hosts = allowed_hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(h) = hosts.iter().find(|h| h.is_ip_literal()) {
                return Err(SecretError::InvalidHost(crate::config::HostPatternError {
                    pattern: h.to_string(),
                    reason: "credentials are never sent to IP literals; bind a host name",
                }));
            }
            let store = SecretStore::new(path.clone(), StoreKey::from_lookup(env)?);
            let mut raw = Zeroizing::new(Vec::new());
            stdin.read_to_end(&mut raw).map_err(SecretError::Io)?;
            let text = std::str::from_utf8(&raw).map_err(|_| SecretError::InvalidValue {
                credential: name.clone(),
                reason: "the value read from stdin is not valid UTF-8",
            })?;
            let mut s = String::with_capacity(text.len());
            s.push_str(text);
            strip_one_newline(&mut s);
            let value = SecretValue::new(s);
            store.put(&name, &value, &hosts)?;
            let list: Vec<&str> = hosts.iter().map(HostPattern::as_str).collect();
            writeln!(
                out,
                "stored `{name}` in {} (allowed hosts: {})",
                path.display(),
                list.join(", ")
            )
            .map_err(SecretError::Io)?;
        }
        SecretsCommand::List => {
            for e in SecretStore::list_entries(&path)? {
                let list: Vec<&str> = e.allowed_hosts.iter().map(HostPattern::as_str).collect();
                writeln!(out, "{}\t{}", e.name, list.join(",")).map_err(SecretError::Io)?;
            }
        }
        SecretsCommand::Rm { name } => {
            let store = SecretStore::new(path, StoreKey::from_lookup(env)?);
            store.remove(&name)?;
            writeln!(out, "removed `{name}`").map_err(SecretError::Io)?;
        }
    }
    Ok(())
}
