//! Real credential values.
//!
//! - [`SecretValue`]: the only type that holds a real secret. Zeroized on
//!   drop, `Debug`/`Display` print `[REDACTED]`, deliberately not
//!   `Serialize`, no `PartialEq` (nothing should compare or print it by
//!   accident). [`SecretValue::expose`] is the one way to read it.
//! - [`resolve_credentials`]: turns the config's `credentials:` into
//!   [`Credentials`] (name → value + bindings) at start-up, from `value_env`,
//!   `value_file` or the encrypted store (`stored:`).
//! - [`store`]: the AES-256-GCM encrypted store and [`cli`]: `vault-proxy secrets`.
//!
//! Bindings of `stored:` credentials: if the config gives `allowed_hosts`,
//! those win (the operator's file is the policy); otherwise the bindings kept
//! in the store entry (authenticated with the ciphertext) are used.
//!
//! Error messages name credentials, env vars and files, never values.

pub mod cli;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::config::{
    AwsKeyIdSource, Config, CredentialSource, CredentialType, HostPattern, HostPatternError, Scope,
};

pub use cli::{SecretsCommand, secrets_cli, secrets_cli_with};
pub use store::{SecretStore, StoreKey, StoredEntryInfo, VAULT_KEY_ENV};

/// Shortest real secret accepted. Stubs keep the secret's length, and the
/// response scrubber searches for the value: very short values would make
/// both meaningless.
pub const MIN_SECRET_LEN: usize = 8;

// === SecretValue ===

/// A real secret value. Zeroized on drop; `Debug` and `Display` print
/// `[REDACTED]`; not serializable.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps a value (takes ownership so no unzeroized copy is left behind).
    pub fn new(value: String) -> SecretValue {
        SecretValue(Zeroizing::new(value))
    }

    /// The plaintext. Only for swapping it into a request and scanning
    /// responses; never log, format or return it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if empty (never the case for resolved credentials).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Checks a value before it is accepted (no value in the error).
fn validate_value(credential: &str, value: &str) -> Result<(), SecretError> {
    let bad = |reason: &'static str| SecretError::InvalidValue {
        credential: credential.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("the value is empty"));
    }
    if value.len() < MIN_SECRET_LEN {
        return Err(bad("the value is shorter than 8 characters"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(bad(
            "the value contains control characters (newline, NUL, …)",
        ));
    }
    Ok(())
}

/// Strips one trailing `\n` or `\r\n` in place.
fn strip_one_newline(s: &mut String) {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
}

// === Credential(s) ===

/// One resolved credential.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The config name (what grants, stubs and audit records refer to).
    pub name: String,
    /// The real value.
    pub value: SecretValue,
    /// Hosts the real value may be sent to (never empty).
    pub allowed_hosts: Vec<HostPattern>,
    /// Where its stub may stand, and the paths and methods it may be used on.
    pub scope: Scope,
    /// `type:`; for typed credentials `value` is the long-lived secret (private key,
    /// refresh token, AWS secret key), never what is swapped in.
    pub kind: CredentialType,
    /// `type: aws_sigv4`: the real access key id (`value` is the secret key).
    pub aws: Option<Arc<crate::aws_sigv4::AwsKeys>>,
    /// Mints the swapped value of `github_app` / `oauth2_refresh` credentials.
    pub minter: Option<Arc<crate::credentials::Minter>>,
}

impl Credential {
    /// Whether the real value may go to `host` (bare host, no port).
    pub fn allows_host(&self, host: &str) -> bool {
        self.allowed_hosts.iter().any(|p| p.matches(host))
    }
}

/// All resolved credentials, by name.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_name: BTreeMap<String, Arc<Credential>>,
    /// Bumped whenever a minter adds a value to scrub (grants rebuild their scrubbers).
    scrub_generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Credentials {
    /// Changes whenever the set of values to scrub grew (a token was minted).
    pub fn scrub_generation(&self) -> u64 {
        self.scrub_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Looks a credential up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Credential>> {
        self.by_name.get(name)
    }

    /// All credentials, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Credential>> {
        self.by_name.values()
    }

    /// Names, ordered.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Number of credentials.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True if none are configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Adds or replaces one (tests, embedding).
    pub fn insert(&mut self, credential: Credential) {
        self.by_name
            .insert(credential.name.clone(), Arc::new(credential));
    }
}

// === errors ===

/// Errors resolving credentials or using the encrypted store. None carries a
/// secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `value_env` names an unset or empty variable.
    #[error("credential `{credential}`: environment variable `{var}` is not set or is empty")]
    MissingEnv {
        /// Credential name.
        credential: String,
        /// Variable name.
        var: String,
    },
    /// `value_env` names a variable that is not valid UTF-8.
    #[error("credential `{credential}`: environment variable `{var}` is not valid UTF-8")]
    EnvNotUtf8 {
        /// Credential name.
        credential: String,
        /// Variable name.
        var: String,
    },
    /// `value_file` could not be read.
    #[error("credential `{credential}`: cannot read value file {path}: {source}")]
    ReadFile {
        /// Credential name.
        credential: String,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The value is unusable (empty, too short, control characters, not UTF-8).
    #[error("credential `{credential}`: {reason}")]
    InvalidValue {
        /// Credential name.
        credential: String,
        /// What is wrong (never the value).
        reason: &'static str,
    },
    /// A stored credential has bindings neither in the config nor in the store.
    #[error("credential `{credential}`: no allowed_hosts in the config or the store")]
    NoAllowedHosts {
        /// Credential name.
        credential: String,
    },
    /// A binding (from the store) is a wildcard over a public suffix.
    #[error(
        "credential `{credential}`: the wildcard binding `{pattern}` covers a public suffix or a shared multi-tenant domain"
    )]
    SharedWildcard {
        /// Credential name.
        credential: String,
        /// The binding.
        pattern: String,
    },
    /// `AIRLOCK_VAULT_KEY` missing or malformed.
    #[error("store key: {0}")]
    StoreKey(String),
    /// Reading or writing the store file failed.
    #[error("secret store {path}: {source}")]
    StoreIo {
        /// Store file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The store file is not a valid store.
    #[error("secret store {path}: {reason}")]
    StoreFormat {
        /// Store file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No such entry in the store.
    #[error("secret store has no entry `{name}`")]
    NotFound {
        /// Entry name.
        name: String,
    },
    /// Authentication failed: wrong key, or the entry (value, name or
    /// bindings) was tampered with.
    #[error(
        "cannot decrypt store entry `{name}`: wrong AIRLOCK_VAULT_KEY, or the entry \
         (ciphertext, name or allowed hosts) was modified"
    )]
    Decrypt {
        /// Entry name.
        name: String,
    },
    /// An entry name is not acceptable.
    #[error("invalid secret name `{0}`: use letters, digits, `_`, `-`, `.` (max 128)")]
    InvalidName(String),
    /// An `--allowed-host` is not a valid host pattern.
    #[error(transparent)]
    InvalidHost(#[from] HostPatternError),
    /// The config could not be loaded (CLI).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// stdin/stdout failed (CLI).
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    /// A typed credential's material or settings are unusable (bad key, missing env).
    #[error("credential `{credential}`: {reason}")]
    Typed {
        /// Credential name.
        credential: String,
        /// What is wrong (never the value).
        reason: String,
    },
    /// A crypto primitive failed (random source unavailable, …).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

// === resolution ===

/// Resolves every configured credential from the process environment, files
/// and the encrypted store.
pub fn resolve_credentials(config: &Config) -> Result<Credentials, SecretError> {
    resolve_credentials_with(config, &|name| std::env::var_os(name))
}

/// Like [`resolve_credentials`] with an explicit environment lookup (tests,
/// embedding). `env` is also used for `AIRLOCK_VAULT_KEY`.
pub fn resolve_credentials_with(
    config: &Config,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Credentials, SecretError> {
    let mut store: Option<SecretStore> = None;
    let mut out = Credentials::default();
    for (name, cc) in &config.credentials {
        let mut allowed_hosts = cc.allowed_hosts.clone();
        let value = match &cc.source {
            CredentialSource::Env(var) => {
                let raw = env(var).ok_or_else(|| SecretError::MissingEnv {
                    credential: name.clone(),
                    var: var.clone(),
                })?;
                let s = raw.into_string().map_err(|raw| {
                    // Zeroize the rejected bytes too.
                    let mut bytes = raw.into_encoded_bytes();
                    zeroize::Zeroize::zeroize(&mut bytes);
                    SecretError::EnvNotUtf8 {
                        credential: name.clone(),
                        var: var.clone(),
                    }
                })?;
                let value = SecretValue::new(s);
                if value.is_empty() {
                    return Err(SecretError::MissingEnv {
                        credential: name.clone(),
                        var: var.clone(),
                    });
                }
                value
            }
            CredentialSource::File(path) => {
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| {
                    SecretError::ReadFile {
                        credential: name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?);
                let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::InvalidValue {
                    credential: name.clone(),
                    reason: "the value file is not valid UTF-8",
                })?;
                let mut s = String::with_capacity(text.len());
                s.push_str(text);
                strip_one_newline(&mut s);
                SecretValue::new(s)
            }
            CredentialSource::Stored(entry) => {
                let st = match store.take() {
                    Some(st) => st,
                    None => {
                        SecretStore::new(config.secrets_store.clone(), StoreKey::from_lookup(env)?)
                    }
                };
                let (value, store_hosts) = st.get(entry)?;
                store = Some(st);
                if allowed_hosts.is_empty() {
                    allowed_hosts = store_hosts;
                }
                value
            }
        };
        // A PEM key has newlines; it is checked by parsing it instead.
        if !matches!(cc.kind, CredentialType::GithubApp(_)) {
            validate_value(name, value.expose())?;
        }
        let minter = {
            let refresh_store = match (&cc.kind, &cc.source, &store) {
                (CredentialType::Oauth2Refresh(_), CredentialSource::Stored(entry), Some(_)) => {
                    let hosts = SecretStore::list_entries(&config.secrets_store)?
                        .into_iter()
                        .find(|e| &e.name == entry)
                        .map(|e| e.allowed_hosts)
                        .unwrap_or_default();
                    Some(crate::credentials::RefreshStore {
                        store: SecretStore::new(
                            config.secrets_store.clone(),
                            StoreKey::from_lookup(env)?,
                        ),
                        entry: entry.clone(),
                        hosts,
                    })
                }
                _ => None,
            };
            crate::credentials::build(
                name,
                &cc.kind,
                &value,
                env,
                refresh_store,
                &out.scrub_generation,
            )
            .map_err(|reason| SecretError::Typed {
                credential: name.clone(),
                reason,
            })?
        };
        if allowed_hosts.is_empty() {
            return Err(SecretError::NoAllowedHosts {
                credential: name.clone(),
            });
        }
        if let Some(p) = allowed_hosts.iter().find(|p| p.covers_public_suffix()) {
            return Err(SecretError::SharedWildcard {
                credential: name.clone(),
                pattern: p.to_string(),
            });
        }
        let aws = match &cc.aws {
            None => None,
            Some(a) => Some(Arc::new(crate::aws_sigv4::AwsKeys {
                access_key_id: match &a.access_key_id {
                    AwsKeyIdSource::Literal(id) => id.clone(),
                    AwsKeyIdSource::Env(var) => env(var)
                        .and_then(|v| v.into_string().ok())
                        .filter(|v| crate::config::typed_is_access_key_id(v))
                        .ok_or_else(|| SecretError::InvalidValue {
                            credential: name.clone(),
                            reason: "access_key_id_env is unset or not an AWS access key id",
                        })?,
                },
                region: a.region.clone(),
            })),
        };
        out.insert(Credential {
            name: name.clone(),
            value,
            allowed_hosts,
            scope: cc.scope.clone(),
            kind: cc.kind.clone(),
            aws,
            minter,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
