//! The vault proxy's configuration file (`vault.yaml`), as fixed by the
//! "Contract: vault proxy" section of DESIGN.md.
//!
//! Parsing happens in two steps: serde reads the YAML into private `Raw*`
//! types (every struct a human writes has `deny_unknown_fields`), then
//! [`Config::from_yaml_str`] validates them into the public types below, so
//! that every error names the offending key (`credentials.GITHUB_TOKEN.allowed_hosts[1]`).
//! Relative paths are resolved against the directory of the config file.
//!
//! Secret *values* are never in this file: a credential names where its value
//! lives (`value_env`, `value_file` or `stored`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

mod public_suffix;
mod scope;
pub use scope::{PathGlob, Position, Scope, normalize_path};
pub mod typed;
pub use typed::{
    AwsKeyIdSource, AwsSigv4Config, CredentialType, is_access_key_id as typed_is_access_key_id,
};

// === public types ===

/// The whole vault proxy configuration, validated, with absolute paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the HTTP proxy (CONNECT for https, absolute-form for http).
    /// Default `127.0.0.1:8899`.
    pub listen: SocketAddr,
    /// Address of the admin API (grants). Default `127.0.0.1:8898`.
    pub admin_listen: SocketAddr,
    /// Name of the environment variable holding the admin API bearer token.
    /// Default `AIRLOCK_VAULT_ADMIN_TOKEN`.
    pub admin_token_env: String,
    /// The interception CA (created on first start if both files are missing).
    pub ca: CaConfig,
    /// Extra PEM files whose certificates are trusted as roots for upstream
    /// TLS, in addition to the webpki roots (tests, private CAs).
    pub upstream_roots: Vec<PathBuf>,
    /// Path of the hash-chained JSON-lines audit log. Default `audit.jsonl`.
    pub audit_log: PathBuf,
    /// Path of the encrypted secret store used by `stored:` credentials and by
    /// `vault-proxy secrets put|list|rm`. Default `secrets.enc` next to the
    /// config file.
    pub secrets_store: PathBuf,
    /// Policy for traffic that carries no stub.
    pub egress: EgressConfig,
    /// Destination address policy and static DNS overrides.
    pub network: NetworkConfig,
    /// Real credentials by name (the name is what grants and audit records use).
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Static grants for standalone use; the brain adds its own via the admin API.
    pub grants: Vec<GrantConfig>,
    /// `limits:` (tunnels per sandbox, unauthenticated timeout).
    pub limits: LimitsConfig,
    /// `tls:` remote mode: admin API over TLS (client certs with `client_ca`).
    pub tls: Option<TlsConfig>,
    /// `listen_tls:` the HTTPS proxy listener (needs `tls`).
    pub listen_tls: Option<SocketAddr>,
    /// `audit_key_env:` env var whose value keys the HMAC audit chain.
    pub audit_key_env: Option<String>,
    /// `audit_new_chain: true` (or `serve --new-audit-chain`): start a new
    /// chain although the log does not reach the head in its sidecar.
    pub audit_new_chain: bool,
    /// `telemetry:` (standalone proxy): the OTLP endpoint of its traces.
    pub telemetry: TelemetryConfig,
}

/// Where the interception CA lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// CA certificate (PEM). Default `ca.pem`.
    pub cert: PathBuf,
    /// CA private key (PEM, PKCS#8), file mode 0600. Default `ca-key.pem`.
    pub key: PathBuf,
}

/// Policy for requests that carry no stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// What happens to a host not in `allow_hosts`. Default `deny`.
    pub default: EgressDefault,
    /// Hosts reachable without a credential (exact names or `*.` wildcards).
    pub allow_hosts: Vec<HostPattern>,
    /// How long `ask` holds a request for an answer; unanswered = deny.
    /// `egress.ask_timeout_s`, default 120.
    pub ask_timeout_s: u64,
}

/// Default egress decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressDefault {
    /// Refuse anything not explicitly allowed (the default).
    #[default]
    Deny,
    /// Let anything through (still subject to `network` and stub rules).
    Allow,
    /// Hold the request while a person approves or denies the host
    /// (see [`crate::approvals`]).
    Ask,
}

impl EgressConfig {
    /// Whether a request with no stub may go to `host` (a bare host name,
    /// no port).
    pub fn allows(&self, host: &str) -> bool {
        match self.default {
            EgressDefault::Allow => true,
            // `ask` lets through only what is listed; the rest is asked
            // about by the caller (`approvals`), never let through here.
            EgressDefault::Deny | EgressDefault::Ask => {
                self.allow_hosts.iter().any(|p| p.matches(host))
            }
        }
    }
}

/// Destination address policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `true` lets loopback/private/link-local destinations through (tests,
    /// on-prem). Default `false`.
    pub allow_private: bool,
    /// Static DNS overrides (like `curl --resolve`): lower-case host name →
    /// address. Consulted before the system resolver.
    pub resolve: BTreeMap<String, IpAddr>,
}

impl NetworkConfig {
    /// The static override for `host`, if any (case-insensitive, trailing dot ignored).
    pub fn resolve_override(&self, host: &str) -> Option<IpAddr> {
        self.resolve.get(&normalize_host(host)).copied()
    }
}

/// One real credential: where its value comes from and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    /// Where the real value is read from.
    pub source: CredentialSource,
    /// Hosts the real value may be sent to. Never empty for `Env`/`File`.
    /// For `Stored` it may be empty, meaning "use the bindings kept in the
    /// store"; when given it replaces the store's bindings.
    pub allowed_hosts: Vec<HostPattern>,
    /// Where its stub may stand, and the paths and methods it may be used on.
    pub scope: Scope,
    /// `type:` (static when absent). Typed credentials keep their long-lived
    /// secret (private key, refresh token, AWS secret key) in `source`.
    pub kind: CredentialType,
    /// `type: aws_sigv4`: the access key id and region (the secret is `source`).
    pub aws: Option<typed::AwsSigv4Config>,
}

/// Where a credential's real value lives. Exactly one per credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `value_env: NAME` — read from this environment variable at start.
    Env(String),
    /// `value_file: path` — read from this file (absolute after loading);
    /// one trailing newline is stripped.
    File(PathBuf),
    /// `stored: name` — read from the encrypted store (`secrets_store`).
    Stored(String),
}

/// A static grant: a sandbox identity, its proxy token and its stubs.
#[derive(Clone, PartialEq, Eq)]
pub struct GrantConfig {
    /// Sandbox id (the user part of `Proxy-Authorization: Basic`).
    pub sandbox: String,
    /// Proxy token (the password part).
    pub token: String,
    /// Credential name → the stub the sandbox holds for it.
    pub credentials: BTreeMap<String, String>,
    /// Session the sandbox works for, written into every audit record of the grant.
    /// Optional in the file; the brain sets it when it restores grants after a restart.
    pub session: Option<String>,
}

impl fmt::Debug for GrantConfig {
    // Tokens and stubs are credentials of their own: keep them out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantConfig")
            .field("sandbox", &self.sandbox)
            .field("token", &"[REDACTED]")
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field("session", &self.session)
            .finish()
    }
}

/// Errors from loading or validating the config. Each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax error, unknown key or wrong type.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A key has an invalid value.
    #[error("invalid config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `credentials.GITHUB_TOKEN.allowed_hosts[0]`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// === impl Config ===

impl Config {
    /// Reads and validates the config file at `path`; relative paths inside
    /// are resolved against the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Config::from_yaml_str(&text, &dir)
    }

    /// Parses and validates YAML text; relative paths are resolved against `base_dir`.
    /// An empty document gives the all-defaults config.
    pub fn from_yaml_str(yaml: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = if yaml.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(yaml).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        raw.validate(base_dir)
    }
}

fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

// === raw (as written) types ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    admin_token_env: Option<String>,
    ca: Option<RawCa>,
    #[serde(default)]
    upstream_roots: Vec<PathBuf>,
    audit_log: Option<PathBuf>,
    secrets_store: Option<PathBuf>,
    egress: Option<RawEgress>,
    network: Option<RawNetwork>,
    #[serde(default)]
    credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    grants: Vec<RawGrant>,
    limits: Option<ops::RawLimits>,
    tls: Option<ops::RawTls>,
    listen_tls: Option<SocketAddr>,
    audit_key_env: Option<String>,
    #[serde(default)]
    audit_new_chain: bool,
    telemetry: Option<ops::RawTelemetry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    default: EgressDefault,
    #[serde(default)]
    allow_hosts: Vec<String>,
    ask_timeout_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    allow_private: bool,
    #[serde(default)]
    resolve: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    value_env: Option<String>,
    value_file: Option<PathBuf>,
    stored: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    positions: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    // --- typed credentials (config/typed.rs) ---
    #[serde(rename = "type")]
    kind: Option<String>,
    app_id: Option<u64>,
    installation_id: Option<u64>,
    private_key_file: Option<PathBuf>,
    private_key_env: Option<String>,
    private_key_stored: Option<String>,
    api_base: Option<String>,
    repositories: Option<Vec<String>>,
    permissions: Option<BTreeMap<String, String>>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_id_env: Option<String>,
    client_secret_env: Option<String>,
    client_auth: Option<String>,
    scope: Option<String>,
    refresh_token_env: Option<String>,
    refresh_token_file: Option<PathBuf>,
    refresh_token_stored: Option<String>,
    // --- type: aws_sigv4 (config/typed.rs) ---
    access_key_id: Option<String>,
    access_key_id_env: Option<String>,
    secret_access_key_env: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    region: Option<String>,
    // --- end typed credentials ---
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    sandbox: String,
    token: String,
    #[serde(default)]
    credentials: BTreeMap<String, String>,
    #[serde(default)]
    session: Option<String>,
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let admin_token_env = self
            .admin_token_env
            .unwrap_or_else(|| "AIRLOCK_VAULT_ADMIN_TOKEN".to_string());
        if !is_env_name(&admin_token_env) {
            return Err(invalid(
                "admin_token_env",
                "must be an environment variable name",
            ));
        }

        let raw_ca = self.ca.unwrap_or_default();
        let ca = CaConfig {
            cert: resolve_path(base, &raw_ca.cert.unwrap_or_else(|| "ca.pem".into())),
            key: resolve_path(base, &raw_ca.key.unwrap_or_else(|| "ca-key.pem".into())),
        };
        if ca.cert == ca.key {
            return Err(invalid("ca.key", "must differ from ca.cert"));
        }

        let raw_egress = self.egress.unwrap_or_default();
        let egress = EgressConfig {
            default: raw_egress.default,
            allow_hosts: parse_patterns("egress.allow_hosts", &raw_egress.allow_hosts)?,
            ask_timeout_s: match raw_egress.ask_timeout_s {
                None => 120,
                Some(s) if (1..=3600).contains(&s) => s,
                Some(_) => {
                    return Err(invalid(
                        "egress.ask_timeout_s",
                        "must be between 1 and 3600 seconds",
                    ));
                }
            },
        };

        let raw_net = self.network.unwrap_or_default();
        let mut resolve = BTreeMap::new();
        for (host, addr) in raw_net.resolve {
            let key = format!("network.resolve.{host}");
            let pattern = HostPattern::parse(&host).map_err(|e| invalid(&key, e.to_string()))?;
            if pattern.is_wildcard() {
                return Err(invalid(&key, "wildcards are not allowed here"));
            }
            let ip = IpAddr::from_str(addr.trim())
                .map_err(|_| invalid(&key, format!("`{addr}` is not an IP address")))?;
            resolve.insert(pattern.as_str().to_string(), ip);
        }
        let network = NetworkConfig {
            allow_private: raw_net.allow_private,
            resolve,
        };

        let mut credentials = BTreeMap::new();
        for (name, mut rc) in self.credentials {
            let key = format!("credentials.{name}");
            if !is_credential_name(&name) {
                return Err(invalid(
                    &key,
                    "credential names use letters, digits, `_`, `-` and `.` (max 128)",
                ));
            }
            let (kind, typed_source) = typed::parse(&key, &rc, base)?;
            let aws = typed::aws_fields(&key, &kind, &mut rc)?;
            let source = match (rc.value_env, rc.value_file, rc.stored) {
                _ if typed_source.is_some() => typed_source.expect("checked"),
                (Some(env), None, None) => {
                    if !is_env_name(&env) {
                        return Err(invalid(
                            format!("{key}.value_env"),
                            "must be an environment variable name",
                        ));
                    }
                    CredentialSource::Env(env)
                }
                (None, Some(file), None) => CredentialSource::File(resolve_path(base, &file)),
                (None, None, Some(stored)) => {
                    if !is_credential_name(&stored) {
                        return Err(invalid(format!("{key}.stored"), "invalid store entry name"));
                    }
                    CredentialSource::Stored(stored)
                }
                _ => {
                    return Err(invalid(
                        &key,
                        "exactly one of `value_env`, `value_file`, `stored` must be set",
                    ));
                }
            };
            let hosts_key = format!("{key}.allowed_hosts");
            let allowed_hosts = match rc.allowed_hosts {
                Some(list) => {
                    let patterns = parse_patterns(&hosts_key, &list)?;
                    if patterns.is_empty() {
                        return Err(invalid(&hosts_key, "must name at least one host"));
                    }
                    patterns
                }
                None if matches!(source, CredentialSource::Stored(_)) => Vec::new(),
                None => return Err(invalid(&hosts_key, "is required")),
            };
            for (i, p) in allowed_hosts.iter().enumerate() {
                if p.is_ip_literal() {
                    return Err(invalid(
                        format!("{hosts_key}[{i}]"),
                        "credentials are never sent to IP literals; bind a host name",
                    ));
                }
            }
            for (i, p) in allowed_hosts.iter().enumerate() {
                if p.covers_public_suffix() {
                    return Err(invalid(
                        format!("{hosts_key}[{i}]"),
                        "this wildcard covers a public suffix or a shared multi-tenant domain \
                         (anyone can own a name under it); bind exact names",
                    ));
                }
            }
            let scope = parse_scope(&key, rc.positions, rc.paths, rc.methods)?;
            credentials.insert(
                name,
                CredentialConfig {
                    source,
                    allowed_hosts,
                    scope,
                    kind,
                    aws,
                },
            );
        }

        let mut grants = Vec::new();
        let mut seen_sandboxes = std::collections::BTreeSet::new();
        let mut seen_stubs = std::collections::BTreeSet::new();
        for (i, g) in self.grants.into_iter().enumerate() {
            let key = format!("grants[{i}]");
            if g.sandbox.is_empty() || g.sandbox.contains(':') {
                return Err(invalid(
                    format!("{key}.sandbox"),
                    "must be non-empty and contain no `:`",
                ));
            }
            if !seen_sandboxes.insert(g.sandbox.clone()) {
                return Err(invalid(
                    format!("{key}.sandbox"),
                    format!("duplicate sandbox `{}`", g.sandbox),
                ));
            }
            if g.token.len() < 8 {
                return Err(invalid(
                    format!("{key}.token"),
                    "must be at least 8 characters",
                ));
            }
            for (cred, stub) in &g.credentials {
                let ckey = format!("{key}.credentials.{cred}");
                if !credentials.contains_key(cred) {
                    return Err(invalid(&ckey, "names no configured credential"));
                }
                if stub.len() < 8 {
                    return Err(invalid(&ckey, "stub must be at least 8 characters"));
                }
                if !seen_stubs.insert(stub.clone()) {
                    return Err(invalid(&ckey, "stub is used twice"));
                }
            }
            grants.push(GrantConfig {
                sandbox: g.sandbox,
                token: g.token,
                credentials: g.credentials,
                session: g.session,
            });
        }

        let tls = ops::tls(self.tls, base);
        if self.listen_tls.is_some() && tls.is_none() {
            return Err(invalid("listen_tls", "needs `tls: {cert, key}`"));
        }
        Ok(Config {
            limits: ops::limits(self.limits)?,
            tls,
            listen_tls: self.listen_tls,
            audit_key_env: ops::audit_key_env(self.audit_key_env)?,
            audit_new_chain: self.audit_new_chain,
            telemetry: ops::telemetry(self.telemetry)?,
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8899))),
            admin_listen: self
                .admin_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8898))),
            admin_token_env,
            ca,
            upstream_roots: self
                .upstream_roots
                .iter()
                .map(|p| resolve_path(base, p))
                .collect(),
            audit_log: resolve_path(
                base,
                &self.audit_log.unwrap_or_else(|| "audit.jsonl".into()),
            ),
            secrets_store: resolve_path(
                base,
                &self.secrets_store.unwrap_or_else(|| "secrets.enc".into()),
            ),
            egress,
            network,
            credentials,
            grants,
        })
    }
}

fn parse_scope(
    key: &str,
    positions: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    methods: Option<Vec<String>>,
) -> Result<Scope, ConfigError> {
    let mut scope = Scope::default();
    if let Some(list) = positions {
        if list.is_empty() {
            return Err(invalid(format!("{key}.positions"), "must not be empty"));
        }
        scope.positions = list
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Position::parse(p).map_err(|e| invalid(format!("{key}.positions[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(list) = paths {
        if list.is_empty() {
            return Err(invalid(
                format!("{key}.paths"),
                "must not be empty (omit it for any path)",
            ));
        }
        scope.paths = list
            .iter()
            .enumerate()
            .map(|(i, p)| PathGlob::parse(p).map_err(|e| invalid(format!("{key}.paths[{i}]"), e)))
            .collect::<Result<_, _>>()?;
    }
    if let Some(list) = methods {
        if list.is_empty() {
            return Err(invalid(
                format!("{key}.methods"),
                "must not be empty (omit it for any method)",
            ));
        }
        for (i, m) in list.iter().enumerate() {
            let up = m.trim().to_ascii_uppercase();
            if http::Method::from_bytes(up.as_bytes()).is_err() || up == "CONNECT" || up == "TRACE"
            {
                return Err(invalid(
                    format!("{key}.methods[{i}]"),
                    format!("`{m}` is not a method a credential can be used with"),
                ));
            }
            scope.methods.push(up);
        }
    }
    Ok(scope)
}

fn parse_patterns(key: &str, list: &[String]) -> Result<Vec<HostPattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            HostPattern::parse(s).map_err(|e| invalid(format!("{key}[{i}]"), e.to_string()))
        })
        .collect()
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Credential / store entry names: what audit records and grants carry.
pub(crate) fn is_credential_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

// === HostPattern ===

/// A host a credential (or egress rule) is bound to: an exact name, or a
/// leading `*.` wildcard.
///
/// Matching rules (`matches`):
/// - case-insensitive (ASCII); one trailing dot on either side is ignored
///   (`Example.COM.` ≡ `example.com`);
/// - an exact pattern matches only that name (an IP-literal pattern matches
///   only that address, compared as parsed addresses);
/// - `*.example.com` matches any subdomain at **any depth**
///   (`a.example.com`, `a.b.example.com`) but **not the apex** `example.com`
///   and not look-alikes such as `example.com.evil.test` or `badexample.com`;
/// - host names must be ASCII: internationalised names must be written (and
///   are compared) in punycode (`xn--…`); a host with an empty label
///   (`a..example.com`, `.example.com`) or with characters outside
///   `[a-z0-9-_]` never matches.
///
/// Patterns themselves are validated when parsed: labels of 1–63 characters
/// of `[a-z0-9-_]`, at most 253 characters, `*` only as the whole first label,
/// and a wildcard must leave at least two labels (`*.com` is refused: a
/// credential bound to a whole TLD is almost certainly a mistake).
///
/// A pattern may name a port (`api.example.com:8443`); for credential
/// bindings ([`HostPattern::matches_dest`]) no port means 443. Egress rules
/// ([`HostPattern::matches`]) compare the host only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// Normalised text: lower-case, no trailing dot, `*.` kept for wildcards,
    /// `:port` when one was given.
    text: String,
    /// The host part of `text`.
    host: String,
    port: Option<u16>,
    kind: PatternKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PatternKind {
    Exact,
    Ip(IpAddr),
    /// Wildcard; `text[2..]` is the suffix.
    Wildcard,
}

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host pattern `{pattern}`: {reason}")]
pub struct HostPatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl HostPattern {
    /// Parses and normalises a pattern (`api.github.com`, `*.github.com`, `10.0.0.5`).
    pub fn parse(s: &str) -> Result<HostPattern, HostPatternError> {
        let err = |reason| HostPatternError {
            pattern: s.to_string(),
            reason,
        };
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(err("empty"));
        }
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = IpAddr::from_str(unbracketed) {
            return Ok(HostPattern {
                text: ip.to_string(),
                host: ip.to_string(),
                port: None,
                kind: PatternKind::Ip(ip),
            });
        }
        // `host:port` (or `[v6]:port`).
        if let Some((h, p)) = trimmed.rsplit_once(':')
            && !h.is_empty()
            && (!h.contains(':') || (h.starts_with('[') && h.ends_with(']')))
        {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
            let mut pat = HostPattern::parse(h)?;
            if pat.port.is_some() {
                return Err(err("two ports"));
            }
            pat.port = Some(port);
            pat.text = match pat.kind {
                PatternKind::Ip(IpAddr::V6(_)) => format!("[{}]:{port}", pat.host),
                _ => format!("{}:{port}", pat.host),
            };
            return Ok(pat);
        }
        if !trimmed.is_ascii() {
            return Err(err("non-ASCII name: write it in punycode (xn--…)"));
        }
        let lower = trimmed.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower).to_string();
        if lower.len() > 253 {
            return Err(err("longer than 253 characters"));
        }
        let (kind, name) = match lower.strip_prefix("*.") {
            Some(rest) => (PatternKind::Wildcard, rest),
            None => (PatternKind::Exact, lower.as_str()),
        };
        if name.contains('*') {
            return Err(err(
                "`*` is only allowed as the whole first label (`*.example.com`)",
            ));
        }
        if !valid_name(name) {
            return Err(err(
                "labels must be 1-63 characters of letters, digits, `-` or `_`",
            ));
        }
        if kind == PatternKind::Wildcard && !name.contains('.') {
            return Err(err(
                "a wildcard must keep at least two labels (`*.example.com`)",
            ));
        }
        Ok(HostPattern {
            text: lower.clone(),
            host: lower,
            port: None,
            kind,
        })
    }

    /// Whether `host` (a bare host name or IP literal, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match &self.kind {
            PatternKind::Ip(ip) => {
                let h = host
                    .strip_prefix('[')
                    .and_then(|t| t.strip_suffix(']'))
                    .unwrap_or(host);
                IpAddr::from_str(h).is_ok_and(|h| h == *ip)
            }
            PatternKind::Exact => {
                let h = normalize_host(host);
                valid_name(&h) && h == self.host
            }
            PatternKind::Wildcard => {
                let h = normalize_host(host);
                let suffix = &self.host[1..]; // ".example.com"
                valid_name(&h)
                    && h.len() > suffix.len()
                    && h.ends_with(suffix)
                    && IpAddr::from_str(&h).is_err()
            }
        }
    }

    /// Whether a credential bound to this pattern may go to `host:port`:
    /// the host matches and the port is the pattern's (443 when it names none).
    pub fn matches_dest(&self, host: &str, port: u16) -> bool {
        port == self.port.unwrap_or(443) && self.matches(host)
    }

    /// The port named by the pattern, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// True for a wildcard whose domain is a public suffix or has public
    /// suffixes below it (`*.com`, `*.co.uk`, `*.github.io`, `*.amazonaws.com`):
    /// names under it belong to unrelated parties.
    pub fn covers_public_suffix(&self) -> bool {
        self.kind == PatternKind::Wildcard && public_suffix::covers_public_suffix(&self.host[2..])
    }

    /// True for `*.` patterns.
    pub fn is_wildcard(&self) -> bool {
        self.kind == PatternKind::Wildcard
    }

    /// True for IP-literal patterns.
    pub fn is_ip_literal(&self) -> bool {
        matches!(self.kind, PatternKind::Ip(_))
    }

    /// The normalised pattern text (`*.example.com`, `api.github.com`).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Lower-cases and strips one trailing dot (how hosts are compared).
pub fn normalize_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    match lower.strip_suffix('.') {
        Some(s) => s.to_string(),
        None => lower,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPattern({})", self.text)
    }
}

impl FromStr for HostPattern {
    type Err = HostPatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

mod ops;
pub use ops::{LimitsConfig, TelemetryConfig, TlsConfig};

/// One credential's bindings as the admin API lists them (`GET /v1/credentials`) and the
/// brain's console shows them: where its value may go, never the value nor where it is read
/// from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredentialBinding {
    pub name: String,
    /// `static`, `aws_sigv4`, `github_app`, `oauth2_refresh`.
    pub kind: String,
    /// Hosts its real value may be sent to (empty for a `stored:` one = the store's bindings).
    pub hosts: Vec<String>,
    /// Where its stub may stand (`header:authorization`, `query:key`, …).
    pub positions: Vec<String>,
    /// Paths it may be used on; empty = any.
    pub paths: Vec<String>,
    /// Methods it may be used with; empty = any.
    pub methods: Vec<String>,
    /// Its value lives in the proxy's encrypted store (`stored:`).
    pub stored: bool,
}

impl Config {
    /// The bindings of every credential, by name.
    pub fn credential_bindings(&self) -> Vec<CredentialBinding> {
        self.credentials
            .iter()
            .map(|(name, c)| CredentialBinding {
                name: name.clone(),
                kind: c.kind.as_str().to_string(),
                hosts: c.allowed_hosts.iter().map(ToString::to_string).collect(),
                positions: c.scope.positions.iter().map(ToString::to_string).collect(),
                paths: c
                    .scope
                    .paths
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .collect(),
                methods: c.scope.methods.clone(),
                stored: matches!(c.source, CredentialSource::Stored(_)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
