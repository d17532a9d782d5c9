//! Credential grants: every sandbox gets a vault-proxy grant (a per-sandbox proxy token, plus
//! one stub per requested credential) from a [`CredentialBroker`], and [`compose`] turns it
//! into what the sandbox sees: stub env vars, `HTTPS_PROXY` & co. with the token, and the
//! proxy CA as a file plus the env vars tools read it from (DESIGN.md, data flow step 3).
//!
//! Brokers: [`vault::EmbeddedVault`] (the proxy runs inside the brain, the default) and
//! [`vault::RemoteVault`] (a standalone `vault-proxy` by URL, through its admin API). Without a
//! broker (`vault.mode: off`), asking for credentials is a client error and sandboxes get no
//! proxy settings.

pub mod vault;
pub mod vault_tls;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use crate::sandbox::{BackendKind, SandboxHandle, docker};

pub use vault_proxy::approvals::{ApprovalDecision, PendingApproval};
pub use vault_proxy::audit::{
    AuditRecord, ChainHasher, Filter as AuditFilter, Head as AuditHead, VerifyReport,
};

/// A sandbox's own egress (`PUT /v1/grants/{sandbox}/egress` on the proxy): `default`
/// `ask`/`deny` overrides the proxy's, `allow_hosts` adds to its list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

/// Where the proxy CA is placed in every sandbox (and what the CA env vars name).
pub const CA_PATH: &str = "/etc/airlock/ca.pem";
/// The system trust bundle of the Debian-based sandbox image. Docker sandboxes get the proxy
/// CA mounted over it: all TLS goes through the proxy, which verifies upstreams itself, so the
/// proxy CA is the only root a sandbox needs.
pub const SYSTEM_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
// Sandbox-side names, defined in the sandbox layer (backends read them too).
pub use crate::sandbox::{CA_ENV_VARS, CURL_HOME, NO_PROXY, PROXY_TLS_ENV};

/// Whether sandboxes of `backend` reach the proxy across the internet (E2B, Daytona): their
/// proxy URL must be TLS (`listen_tls`), or provisioning refuses them (issue 10).
pub fn crosses_internet(backend: BackendKind) -> bool {
    matches!(backend, BackendKind::E2b | BackendKind::Daytona)
}

/// The `-----BEGIN CERTIFICATE-----` blocks of a PEM file, and nothing else (a combined
/// cert + key file never ships its key to a sandbox).
pub fn certificate_blocks(pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = String::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        out.push_str(&rest[start..start + len + END.len()]);
        out.push('\n');
        rest = &rest[start + len + END.len()..];
    }
    out
}

// The handle's grant keys and their reader live with the handle, in the sandbox layer.
pub use crate::sandbox::{HANDLE_STUBS_KEY, HANDLE_TOKEN_KEY, recorded_grant};

/// What a sandbox receives: env vars (`HTTPS_PROXY`, stubs, CA paths) and files (the proxy
/// CA), merged into its [`crate::sandbox::SandboxSpec`]; plus the grant itself, persisted in
/// the sandbox's handle so a restarted brain can re-register it.
#[derive(Clone, Default, PartialEq)]
pub struct CredentialGrant {
    pub env: BTreeMap<String, String>,
    pub files: Vec<(String, Bytes)>,
    /// The proxy token, when the broker issued one.
    pub token: Option<String>,
    /// Credential name → stub.
    pub stubs: BTreeMap<String, String>,
}

impl std::fmt::Debug for CredentialGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialGrant")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field(
                "files",
                &self.files.iter().map(|f| &f.0).collect::<Vec<_>>(),
            )
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("stubs", &self.stubs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CredentialGrant {
    /// Records the grant in the sandbox's handle (see [`HANDLE_TOKEN_KEY`]).
    pub fn record_in(&self, handle: &mut SandboxHandle) {
        if let Some(token) = &self.token {
            handle.extra.insert(HANDLE_TOKEN_KEY.into(), token.clone());
            handle.extra.insert(
                HANDLE_STUBS_KEY.into(),
                serde_json::to_string(&self.stubs).unwrap_or_default(),
            );
        }
    }
}

/// One grant request.
#[derive(Debug, Clone, Copy)]
pub struct GrantRequest<'a> {
    pub sandbox_id: &'a str,
    /// Credential names (e.g. `GITHUB_TOKEN`); empty = egress only.
    pub credentials: &'a [String],
    pub session_id: Option<&'a str>,
    /// Decides the proxy URL and where the CA goes.
    pub backend: BackendKind,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A requested credential is not configured in the vault (a caller error).
    #[error("unknown credential `{0}`")]
    UnknownCredential(String),
    /// The vault proxy could not be reached or refused.
    #[error("vault proxy unavailable: {0}")]
    Unavailable(String),
    /// The broker cannot do this (e.g. read the audit log of a remote proxy).
    #[error("{0}")]
    NotSupported(String),
    /// The request is malformed (e.g. a bad egress host pattern).
    #[error("{0}")]
    Invalid(String),
}

#[async_trait]
pub trait CredentialBroker: Send + Sync {
    /// Mints a grant for the sandbox (token and stubs) and composes what the sandbox gets.
    async fn grant(&self, req: GrantRequest<'_>) -> Result<CredentialGrant, BrokerError>;

    /// Revokes the sandbox's grant; revoking an unknown grant is `Ok`.
    async fn revoke(&self, sandbox_id: &str) -> Result<(), BrokerError>;

    /// Whether a sandbox adopted after a brain restart still has a working grant. `Err` names
    /// why not; the caller then destroys the sandbox. Default: yes.
    async fn readopt(&self, _handle: &SandboxHandle) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The proxy's Prometheus text when it runs in this process (a standalone proxy serves
    /// its own on its admin listener).
    fn metrics_text(&self) -> Option<String> {
        None
    }

    /// Pending egress approvals (`GET /v1/approvals` on the proxy).
    async fn approvals(&self) -> Result<Vec<PendingApproval>, BrokerError> {
        Err(BrokerError::NotSupported(
            "this vault proxy does not serve approvals".into(),
        ))
    }

    /// Answers one; `Ok(None)` = it is no longer pending. `by` names who decided (audited).
    async fn decide_approval(
        &self,
        _id: &str,
        _decision: ApprovalDecision,
        _by: &str,
    ) -> Result<Option<PendingApproval>, BrokerError> {
        Err(BrokerError::NotSupported(
            "this vault proxy does not serve approvals".into(),
        ))
    }

    /// Sets a sandbox's own egress.
    async fn set_egress(&self, _sandbox_id: &str, _p: &EgressPolicy) -> Result<(), BrokerError> {
        Err(BrokerError::NotSupported(
            "this vault proxy cannot set a sandbox's egress".into(),
        ))
    }

    /// The proxy's audit log, filtered (`GET /v1/audit/egress`).
    async fn audit(&self, _filter: AuditFilter) -> Result<Vec<AuditRecord>, BrokerError> {
        Err(BrokerError::NotSupported(
            "this vault proxy's audit log is not readable by the brain".into(),
        ))
    }

    /// Names the proxy's audit log: the key its heads are recorded under.
    fn audit_log_id(&self) -> String {
        "vault".into()
    }

    /// The proxy's audit head (`GET /v1/audit/head`): seq and hash of the last record written.
    async fn audit_head(&self) -> Result<AuditHead, BrokerError> {
        Err(BrokerError::NotSupported(
            "this vault proxy does not report its audit head".into(),
        ))
    }

    /// Verifies the proxy's audit log (still being written) against `heads`.
    async fn verify_audit(&self, _heads: Vec<AuditHead>) -> Result<VerifyReport, BrokerError> {
        Err(BrokerError::NotSupported(
            "this vault proxy's audit log is not readable by the brain".into(),
        ))
    }

    /// The proxy's credentials with their bindings (the console's credentials page); never
    /// a value, nor where a value is read from.
    async fn credentials(&self) -> Result<Vec<CredentialInfo>, BrokerError> {
        Err(BrokerError::NotSupported(
            "this vault proxy's credentials are configured on its own host; see its vault.yaml"
                .into(),
        ))
    }
}

/// One credential's bindings, as the console shows them (the vault proxy's own type: the
/// embedded proxy's config and a remote proxy's `GET /v1/credentials` give the same).
pub use vault_proxy::config::CredentialBinding as CredentialInfo;

/// The bindings of every credential of a vault-proxy config, by name.
pub fn credential_infos(config: &vault_proxy::config::Config) -> Vec<CredentialInfo> {
    config.credential_bindings()
}

/// Verifies the log at `path` off the async executor (see [`CredentialBroker::verify_audit`]).
pub async fn verify_audit_file(
    path: PathBuf,
    hasher: ChainHasher,
    heads: Vec<AuditHead>,
) -> Result<VerifyReport, BrokerError> {
    tokio::task::spawn_blocking(move || vault_proxy::audit::verify_live(&path, &hasher, &heads))
        .await
        .map_err(|e| BrokerError::Unavailable(format!("audit verifier: {e}")))?
        .map_err(|e| BrokerError::Unavailable(e.to_string()))
}

/// Reads `path` off the async executor.
pub async fn read_audit(
    path: PathBuf,
    filter: AuditFilter,
) -> Result<Vec<AuditRecord>, BrokerError> {
    tokio::task::spawn_blocking(move || vault_proxy::audit::read_records(&path, &filter))
        .await
        .map_err(|e| BrokerError::Unavailable(format!("audit reader: {e}")))?
        .map_err(|e| BrokerError::Unavailable(e.to_string()))
}

/// The proxy URL a sandbox uses: docker sandboxes reach the proxy through their in-sandbox
/// forward (`127.0.0.1:3128`); other backends dial `proxy_addr` (host:port) directly.
pub fn proxy_url(backend: BackendKind, sandbox_id: &str, token: &str, proxy_addr: &str) -> String {
    match backend {
        BackendKind::Docker => docker::sandbox_proxy_url(sandbox_id, token),
        // Remote mode over TLS: `proxy_addr` is `https://host:port` (the proxy's `listen_tls`).
        _ => match proxy_addr.strip_prefix("https://") {
            Some(addr) => format!("https://{sandbox_id}:{token}@{addr}"),
            None => format!("http://{sandbox_id}:{token}@{proxy_addr}"),
        },
    }
}

/// The env of an `aws_sigv4` stub pair: `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` (the first such credential by name wins), the
/// region when the credential names one, and `<NAME>_ACCESS_KEY_ID` /
/// `<NAME>_SECRET_ACCESS_KEY` for each. The SDKs take env keys before any
/// profile file (unless `--profile` is given), so no profile variable is set
/// (botocore refuses an `AWS_PROFILE` missing from `~/.aws/config`); the
/// instance metadata service is switched off (the proxy refuses it anyway).
fn aws_env(
    env: &mut BTreeMap<String, String>,
    name: &str,
    pair: vault_proxy::aws_sigv4::StubPair<'_>,
) {
    // Before the named pair: with a credential named `AWS` they are the same variables.
    let first = !env.contains_key("AWS_ACCESS_KEY_ID");
    env.insert(format!("{name}_ACCESS_KEY_ID"), pair.access_key_id.into());
    env.insert(
        format!("{name}_SECRET_ACCESS_KEY"),
        pair.secret_access_key.into(),
    );
    if !first {
        return;
    }
    env.insert("AWS_ACCESS_KEY_ID".into(), pair.access_key_id.into());
    env.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        pair.secret_access_key.into(),
    );
    env.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
    env.insert("AWS_CA_BUNDLE".into(), CA_PATH.into());
    if let Some(region) = pair.region {
        env.insert("AWS_REGION".into(), region.into());
        env.insert("AWS_DEFAULT_REGION".into(), region.into());
    }
}

/// Builds the sandbox's env and files from a grant. The local backend points env values that
/// name a file it staged (`CA_PATH`) at its copy, so the same paths work for every backend.
pub fn compose(
    req: GrantRequest<'_>,
    token: &str,
    stubs: &BTreeMap<String, String>,
    proxy_addr: &str,
    ca_pem: &str,
) -> CredentialGrant {
    let mut env = BTreeMap::new();
    for (name, stub) in stubs {
        match vault_proxy::aws_sigv4::split_pair(stub) {
            // aws_sigv4: the stub key pair, as every AWS SDK and the CLI read it.
            Some(pair) => aws_env(&mut env, name, pair),
            None => {
                env.insert(name.clone(), stub.clone());
            }
        }
    }
    let url = proxy_url(req.backend, req.sandbox_id, token, proxy_addr);
    for key in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        env.insert(key.into(), url.clone());
    }
    for key in ["NO_PROXY", "no_proxy"] {
        env.insert(key.into(), NO_PROXY.into());
    }
    for key in CA_ENV_VARS {
        env.insert(key.into(), CA_PATH.into());
    }
    let ca = Bytes::from(ca_pem.to_string());
    let mut files = vec![(CA_PATH.to_string(), ca.clone())];
    if req.backend != BackendKind::Docker && url.starts_with("https://") {
        // The sandbox speaks TLS to the proxy (`listen_tls`): tools that verify a proxy with
        // their own setting get the bundle (which holds the listener's certificate) too.
        env.insert("CURL_HOME".into(), CURL_HOME.into());
        env.insert("GIT_PROXY_SSL_CAINFO".into(), CA_PATH.into());
        files.push((
            format!("{CURL_HOME}/.curlrc"),
            Bytes::from(format!("proxy-cacert = \"{CA_PATH}\"\n")),
        ));
    }
    if req.backend == BackendKind::Docker {
        files.push((SYSTEM_BUNDLE_PATH.to_string(), ca));
    }
    CredentialGrant {
        env,
        files,
        token: Some(token.to_string()),
        stubs: stubs.clone(),
    }
}

/// Adds the extra env vars the proxy names for typed credentials (`GH_TOKEN` and
/// `GITHUB_TOKEN` = a `github_app` stub). They never replace a variable already set (a
/// credential's own name, the proxy and CA variables), and are not recorded as stubs.
pub fn add_stub_aliases(grant: &mut CredentialGrant, aliases: &BTreeMap<String, String>) {
    for (k, v) in aliases {
        grant.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(backend: BackendKind, creds: &'a [String]) -> GrantRequest<'a> {
        GrantRequest {
            sandbox_id: "sb-1",
            credentials: creds,
            session_id: None,
            backend,
        }
    }

    #[test]
    fn docker_env_uses_the_in_sandbox_forward_and_mounts_the_ca_over_the_system_bundle() {
        let creds = vec!["GITHUB_TOKEN".to_string()];
        let stubs = BTreeMap::from([("GITHUB_TOKEN".to_string(), "ghp_stub".to_string())]);
        let g = compose(
            req(BackendKind::Docker, &creds),
            "tok",
            &stubs,
            "127.0.0.1:8899",
            "PEM",
        );
        assert_eq!(g.env["GITHUB_TOKEN"], "ghp_stub");
        for key in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            assert_eq!(g.env[key], "http://sb-1:tok@127.0.0.1:3128", "{key}");
        }
        for key in CA_ENV_VARS {
            assert_eq!(g.env[key], CA_PATH, "{key}");
        }
        assert_eq!(g.env["NO_PROXY"], NO_PROXY);
        let paths: Vec<_> = g.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(paths, [CA_PATH, SYSTEM_BUNDLE_PATH]);
        assert!(g.files.iter().all(|f| f.1 == "PEM"));
        assert_eq!(g.token.as_deref(), Some("tok"));
        assert!(!format!("{g:?}").contains("tok\""), "token in Debug: {g:?}");
        assert!(!format!("{g:?}").contains("ghp_stub"));
    }

    /// A cloud sandbox with a TLS proxy URL: `https://…`, and curl and git told to verify the
    /// proxy with the bundle (curl ignores `CURL_CA_BUNDLE` for a proxy).
    #[test]
    fn an_https_proxy_url_points_curl_and_git_at_the_bundle() {
        let g = compose(
            req(BackendKind::E2b, &[]),
            "tok",
            &BTreeMap::new(),
            "https://127.0.0.1:8443",
            "PEM",
        );
        assert_eq!(g.env["HTTPS_PROXY"], "https://sb-1:tok@127.0.0.1:8443");
        assert_eq!(g.env["CURL_HOME"], CURL_HOME);
        assert_eq!(g.env["GIT_PROXY_SSL_CAINFO"], CA_PATH);
        let curlrc = g
            .files
            .iter()
            .find(|f| f.0 == "/etc/airlock/.curlrc")
            .expect(".curlrc");
        assert_eq!(curlrc.1, "proxy-cacert = \"/etc/airlock/ca.pem\"\n");
        // Plain: nothing of the kind.
        let g = compose(
            req(BackendKind::E2b, &[]),
            "tok",
            &BTreeMap::new(),
            "127.0.0.1:8899",
            "PEM",
        );
        assert!(!g.env.contains_key("CURL_HOME"));
        assert_eq!(g.files.len(), 1);
        assert!(crosses_internet(BackendKind::Daytona) && !crosses_internet(BackendKind::Local));
        let pem = "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN PRIVATE KEY-----\nKK\n-----END PRIVATE KEY-----\n\
                   -----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----";
        let certs = certificate_blocks(pem);
        assert!(
            !certs.contains("KEY") && certs.contains("AA") && certs.contains("BB"),
            "{certs}"
        );
    }

    #[test]
    fn an_aws_sigv4_pair_becomes_the_sdk_env() {
        let creds = vec!["AWS".to_string()];
        let pair = "AKIAABCDEFGHIJKLMNOP:abcdefghijABCDEFGHIJ0123456789+/abcdefgh:eu-west-1";
        let stubs = BTreeMap::from([("AWS".to_string(), pair.to_string())]);
        let g = compose(
            req(BackendKind::Docker, &creds),
            "tok",
            &stubs,
            "127.0.0.1:1",
            "PEM",
        );
        assert_eq!(g.env["AWS_ACCESS_KEY_ID"], "AKIAABCDEFGHIJKLMNOP");
        assert_eq!(
            g.env["AWS_SECRET_ACCESS_KEY"],
            "abcdefghijABCDEFGHIJ0123456789+/abcdefgh"
        );
        assert_eq!(g.env["AWS_REGION"], "eu-west-1");
        assert_eq!(g.env["AWS_DEFAULT_REGION"], "eu-west-1");
        assert_eq!(g.env["AWS_CA_BUNDLE"], CA_PATH);
        assert_eq!(g.env["AWS_EC2_METADATA_DISABLED"], "true");
        // botocore fails on a named profile missing from ~/.aws/config: none is set.
        assert!(!g.env.contains_key("AWS_PROFILE"));
        assert!(
            !g.env.contains_key("AWS"),
            "the one-string form is not an env var"
        );
        // The grant record keeps the one-string form (restored as a static grant).
        assert_eq!(g.stubs["AWS"], pair);
    }

    #[test]
    fn local_env_dials_the_proxy_directly_and_a_grant_round_trips_through_the_handle() {
        let g = compose(
            req(BackendKind::Local, &[]),
            "tok",
            &BTreeMap::new(),
            "127.0.0.1:41000",
            "PEM",
        );
        assert_eq!(g.env["HTTPS_PROXY"], "http://sb-1:tok@127.0.0.1:41000");
        assert_eq!(g.files.len(), 1);
        assert!(!g.env.contains_key("GITHUB_TOKEN"));

        let mut handle = SandboxHandle {
            id: "sb-1".into(),
            backend: BackendKind::Local,
            backend_ref: "1".into(),
            agent_url: None,
            agent_token: "a".into(),
            extra: BTreeMap::new(),
        };
        assert_eq!(recorded_grant(&handle), None);
        let stubs = BTreeMap::from([("A".to_string(), "s".to_string())]);
        let g = compose(req(BackendKind::Local, &[]), "t2", &stubs, "x:1", "PEM");
        g.record_in(&mut handle);
        assert_eq!(recorded_grant(&handle), Some(("t2".to_string(), stubs)));
    }
}
