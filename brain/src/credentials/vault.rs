//! The two brokers: the vault proxy embedded in the brain process (default) and a standalone
//! one reached through its admin API.
//!
//! Restart: an embedded proxy's dynamic grants die with the brain process. On start the brain
//! re-registers the grants recorded in the handles of its live sandboxes as the proxy's static
//! grants (same token, same stubs), so adopted sandboxes keep working. A grant the proxy
//! refuses (its credential was removed from the vault config, a stub no longer fits) is
//! dropped, and [`CredentialBroker::readopt`] then tells reconcile to destroy that sandbox.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use async_trait::async_trait;
use vault_proxy::audit::AuditLog;
use vault_proxy::config::{Config as ProxyConfig, GrantConfig};
use vault_proxy::{GrantError, RunningProxy, StartError, StartOptions, VaultProxy};

use vault_proxy::audit::hasher_from_env;

use super::{
    ApprovalDecision, AuditFilter, AuditHead, AuditRecord, BrokerError, ChainHasher,
    CredentialBroker, CredentialGrant, EgressPolicy, GrantRequest, PendingApproval, VerifyReport,
    compose, read_audit, recorded_grant, verify_audit_file,
};
use crate::config::RemoteVaultConfig;
use crate::sandbox::SandboxHandle;

/// The vault config used when `vault.config` is unset: no credentials (egress still goes
/// through the proxy, default deny), ephemeral ports, state files in the brain's directory.
pub const DEFAULT_EMBEDDED_YAML: &str = "listen: 127.0.0.1:0\n\
admin_listen: 127.0.0.1:0\n\
ca: { cert: vault-ca.pem, key: vault-ca-key.pem }\n\
audit_log: vault-audit.jsonl\n";

/// Loads the embedded proxy's config: `path` (relative paths inside are relative to it), or
/// [`DEFAULT_EMBEDDED_YAML`] with paths relative to `base_dir`.
pub fn load_embedded_config(path: Option<&Path>, base_dir: &Path) -> Result<ProxyConfig, String> {
    match path {
        Some(path) => {
            let config = ProxyConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if config.telemetry.otlp_endpoint.is_some() {
                // One process, one exporter: the brain's `telemetry:` decides.
                tracing::warn!(
                    file = %path.display(),
                    "the embedded vault proxy's `telemetry:` is ignored; the brain's `telemetry:` applies"
                );
            }
            Ok(config)
        }
        None => {
            ProxyConfig::from_yaml_str(DEFAULT_EMBEDDED_YAML, base_dir).map_err(|e| e.to_string())
        }
    }
}

/// The proxy running inside the brain; grants are direct calls.
pub struct EmbeddedVault {
    proxy: RwLock<Option<RunningProxy>>,
    audit: AuditLog,
    /// The env var keying the audit chain (`audit_key_env`), if any.
    audit_key_env: Option<String>,
    proxy_addr: String,
    ca_pem: String,
    /// The TLS proxy listener (`listen_tls` with `tls:` in the vault config) as
    /// `https://host:port`, and the bundle sandboxes speaking TLS to it get: the proxy CA plus
    /// the certificates of `tls.cert`. Cloud sandboxes (E2B, Daytona) are granted this URL.
    tls: Option<(String, String)>,
    /// Sandboxes whose recorded grant was re-registered at start.
    restored: HashSet<String>,
    /// The credentials' bindings (no values), for the console.
    credentials: Vec<super::CredentialInfo>,
}

impl EmbeddedVault {
    /// Starts the proxy with `restore` (grants recorded in live sandboxes' handles) added as
    /// static grants; grants the proxy refuses are dropped with a warning.
    pub async fn start(
        mut config: ProxyConfig,
        mut restore: Vec<GrantConfig>,
    ) -> Result<Self, String> {
        let base = std::mem::take(&mut config.grants);
        // The listen_tls certificate, for the bundle of sandboxes that speak TLS to it.
        let tls_certs = match (&config.tls, config.listen_tls) {
            (Some(t), Some(_)) => {
                let pem = std::fs::read_to_string(&t.cert)
                    .map_err(|e| format!("vault tls.cert {}: {e}", t.cert.display()))?;
                let certs = super::certificate_blocks(&pem);
                if certs.is_empty() {
                    return Err(format!(
                        "vault tls.cert {}: no certificate in file",
                        t.cert.display()
                    ));
                }
                Some(certs)
            }
            _ => None,
        };
        loop {
            let mut attempt = config.clone();
            attempt.grants = base.iter().chain(restore.iter()).cloned().collect();
            let opts = StartOptions {
                no_admin: true,
                ..StartOptions::default()
            };
            match VaultProxy::start_with(attempt, opts).await {
                Ok(proxy) => {
                    let restored = restore.iter().map(|g| g.sandbox.clone()).collect();
                    let ca_pem = proxy.ca_pem().to_string();
                    let tls = proxy
                        .tls_addr()
                        .zip(tls_certs.as_ref())
                        .map(|(addr, certs)| {
                            let mut bundle = ca_pem.clone();
                            if !bundle.ends_with('\n') {
                                bundle.push('\n');
                            }
                            bundle.push_str(certs);
                            (format!("https://{addr}"), bundle)
                        });
                    return Ok(Self {
                        tls,
                        audit: proxy.audit().clone(),
                        audit_key_env: config.audit_key_env.clone(),
                        proxy_addr: proxy.proxy_addr().to_string(),
                        ca_pem,
                        proxy: RwLock::new(Some(proxy)),
                        restored,
                        credentials: super::credential_infos(&config),
                    });
                }
                Err(StartError::Grant { sandbox, source })
                    if restore.iter().any(|g| g.sandbox == sandbox) =>
                {
                    tracing::warn!(sandbox = %sandbox, error = %source,
                        "cannot restore this sandbox's vault grant; it will be destroyed");
                    restore.retain(|g| g.sandbox != sandbox);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Address of the proxy listener (`host:port`).
    pub fn proxy_addr(&self) -> &str {
        &self.proxy_addr
    }

    /// The TLS proxy listener (`listen_tls`), `https://host:port`, if configured.
    pub fn tls_proxy_addr(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.0.as_str())
    }

    /// Stops the proxy and flushes its audit log.
    pub async fn shutdown(&self) {
        let proxy = self.proxy.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(proxy) = proxy {
            proxy.shutdown().await;
        }
    }

    fn with_proxy<T>(&self, f: impl FnOnce(&RunningProxy) -> T) -> Result<T, BrokerError> {
        let guard = self.proxy.read().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(f)
            .ok_or_else(|| BrokerError::Unavailable("the embedded vault proxy has stopped".into()))
    }
}

/// The grants to re-register for `handles` (live sandboxes that recorded one).
pub fn grants_to_restore<'a>(
    handles: impl IntoIterator<Item = (&'a SandboxHandle, Option<&'a str>)>,
) -> Vec<GrantConfig> {
    handles
        .into_iter()
        .filter_map(|(h, session)| {
            let (token, credentials) = recorded_grant(h)?;
            Some(GrantConfig {
                sandbox: h.id.clone(),
                token,
                credentials,
                // Audit records after a restart still name the session.
                session: session.map(str::to_string),
            })
        })
        .collect()
}

fn grant_error(e: GrantError) -> BrokerError {
    match e {
        GrantError::UnknownCredential(name) => BrokerError::UnknownCredential(name),
        other => BrokerError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl CredentialBroker for EmbeddedVault {
    fn metrics_text(&self) -> Option<String> {
        self.with_proxy(RunningProxy::metrics_text).ok()
    }

    async fn grant(&self, req: GrantRequest<'_>) -> Result<CredentialGrant, BrokerError> {
        let traceparent = airlock_telemetry::current_traceparent();
        let issued = self
            .with_proxy(|p| {
                p.grant_traced(
                    req.sandbox_id,
                    req.credentials,
                    req.session_id.map(str::to_string),
                    traceparent.as_deref(),
                )
            })?
            .map_err(grant_error)?;
        // Cloud sandboxes reach the proxy across the internet: over its TLS listener when it
        // has one (without, the backend refuses the plain URL at provision).
        let (addr, ca) = match &self.tls {
            Some((addr, bundle)) if super::crosses_internet(req.backend) => (addr, bundle),
            _ => (&self.proxy_addr, &self.ca_pem),
        };
        let mut grant = compose(req, &issued.token, &issued.stubs, addr, ca);
        super::add_stub_aliases(&mut grant, &issued.env);
        Ok(grant)
    }

    async fn revoke(&self, sandbox_id: &str) -> Result<(), BrokerError> {
        self.with_proxy(|p| {
            p.revoke(sandbox_id);
        })
    }

    async fn readopt(&self, handle: &SandboxHandle) -> Result<(), BrokerError> {
        if recorded_grant(handle).is_none() || self.restored.contains(&handle.id) {
            return Ok(());
        }
        Err(BrokerError::Unavailable(
            "its vault grant could not be restored after the brain restarted".into(),
        ))
    }

    async fn approvals(&self) -> Result<Vec<PendingApproval>, BrokerError> {
        self.with_proxy(|p| p.approvals().pending())
    }

    async fn decide_approval(
        &self,
        id: &str,
        decision: ApprovalDecision,
        by: &str,
    ) -> Result<Option<PendingApproval>, BrokerError> {
        self.with_proxy(|p| p.approvals().decide(id, decision, by).ok())
    }

    async fn set_egress(&self, sandbox_id: &str, p: &EgressPolicy) -> Result<(), BrokerError> {
        let egress = sandbox_egress(p)?;
        self.with_proxy(|proxy| proxy.approvals().set_sandbox_egress(sandbox_id, egress))
    }

    async fn audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, BrokerError> {
        // Records still queued in the writer are on disk after this.
        if let Err(e) = self.audit.flush().await {
            tracing::warn!(error = %e, "flushing the audit log before reading it failed");
        }
        read_audit(self.audit.path().to_path_buf(), filter).await
    }

    fn audit_log_id(&self) -> String {
        // Replicas each embed a proxy with its own file: the host tells them apart.
        let path = std::path::absolute(self.audit.path())
            .unwrap_or_else(|_| self.audit.path().to_path_buf());
        format!("embedded:{}:{}", host_name(), path.display())
    }

    async fn audit_head(&self) -> Result<AuditHead, BrokerError> {
        Ok(self.audit.head())
    }

    async fn verify_audit(&self, heads: Vec<AuditHead>) -> Result<VerifyReport, BrokerError> {
        let hasher = match &self.audit_key_env {
            // The proxy started with this key, so it is set.
            Some(name) => hasher_from_env(Some(name)).map_err(BrokerError::Unavailable)?,
            None => ChainHasher::Sha256,
        };
        verify_audit_file(self.audit.path().to_path_buf(), hasher, heads).await
    }

    async fn credentials(&self) -> Result<Vec<super::CredentialInfo>, BrokerError> {
        Ok(self.credentials.clone())
    }
}

/// This machine's name (`/proc/sys/kernel/hostname`), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The proxy's form of a brain [`EgressPolicy`] (validated like the admin API does).
fn sandbox_egress(p: &EgressPolicy) -> Result<vault_proxy::approvals::SandboxEgress, BrokerError> {
    use vault_proxy::config::{EgressDefault, HostPattern};
    let default = match p.default.as_deref() {
        None => None,
        Some("ask") => Some(EgressDefault::Ask),
        Some("deny") => Some(EgressDefault::Deny),
        Some(other) => {
            return Err(BrokerError::Invalid(format!(
                "egress default must be ask or deny, not `{other}`"
            )));
        }
    };
    let allow_hosts = p
        .allow_hosts
        .iter()
        .map(|h| HostPattern::parse(h).map_err(|e| BrokerError::Invalid(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(vault_proxy::approvals::SandboxEgress {
        default,
        allow_hosts,
    })
}

/// A standalone `vault-proxy` reached through its admin API.
pub struct RemoteVault {
    http: reqwest::Client,
    admin_url: String,
    admin_token: String,
    proxy_addr: String,
    ca_pem: String,
    audit_log: Option<PathBuf>,
}

impl RemoteVault {
    /// Reads the admin token from its env var and the CA from `ca_file` or `GET /v1/ca`.
    pub async fn connect(
        config: &RemoteVaultConfig,
        lookup_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let admin_token = lookup_env(&config.admin_token_env)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                format!(
                    "vault.remote: env {} (the proxy's admin token) is not set",
                    config.admin_token_env
                )
            })?;
        // https with the pinned certificate (or plain http on loopback only): the admin
        // token and the CA never cross a network in clear.
        let http = super::vault_tls::admin_client(config)?;
        let admin_url = config.admin_url.trim_end_matches('/').to_string();
        let ca_pem = match &config.ca_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("vault.remote.ca_file {}: {e}", path.display()))?,
            None => {
                let resp = http
                    .get(format!("{admin_url}/v1/ca"))
                    .bearer_auth(&admin_token)
                    .send()
                    .await
                    .map_err(|e| format!("vault.remote: GET {admin_url}/v1/ca: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!(
                        "vault.remote: GET {admin_url}/v1/ca answered {}",
                        resp.status()
                    ));
                }
                resp.text()
                    .await
                    .map_err(|e| format!("vault.remote: reading the CA: {e}"))?
            }
        };
        if !ca_pem.contains("BEGIN CERTIFICATE") {
            return Err("vault.remote: the proxy CA is not a PEM certificate".into());
        }
        let mut ca_pem = ca_pem;
        if let Some(path) = &config.tls_ca_file {
            // Sandboxes must also trust the `listen_tls` certificate they speak TLS to.
            let extra = std::fs::read_to_string(path)
                .map_err(|e| format!("vault.remote.tls_ca_file {}: {e}", path.display()))?;
            if !ca_pem.ends_with('\n') {
                ca_pem.push('\n');
            }
            ca_pem.push_str(&extra);
        }
        // With `listen_tls`, sandboxes speak TLS to the proxy (`HTTPS_PROXY=https://…`).
        let proxy_addr = match &config.tls_url {
            Some(t) => format!("https://{}", t.trim_start_matches("https://")),
            None => config.url.clone(),
        };
        Ok(Self {
            http,
            admin_url,
            admin_token,
            proxy_addr,
            ca_pem,
            audit_log: config.audit_log.clone(),
        })
    }
}

#[derive(serde::Deserialize)]
struct IssuedGrantBody {
    token: String,
    /// A string, or an `aws_sigv4` pair object (kept in its one-string form).
    #[serde(default)]
    stubs: BTreeMap<String, serde_json::Value>,
    /// Extra stub env vars of typed credentials (`GH_TOKEN`/`GITHUB_TOKEN` for `github_app`).
    #[serde(default)]
    env: BTreeMap<String, String>,
}

impl IssuedGrantBody {
    fn stubs(&self) -> Result<BTreeMap<String, String>, BrokerError> {
        self.stubs
            .iter()
            .map(|(name, v)| {
                let s = match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => vault_proxy::aws_sigv4::pair_from_json(other),
                };
                s.map(|s| (name.clone(), s)).ok_or_else(|| {
                    BrokerError::Unavailable(format!(
                        "POST /v1/grants: stub of `{name}` has an unknown form"
                    ))
                })
            })
            .collect()
    }
}

#[async_trait]
impl CredentialBroker for RemoteVault {
    async fn grant(&self, req: GrantRequest<'_>) -> Result<CredentialGrant, BrokerError> {
        let resp = self
            .http
            .post(format!("{}/v1/grants", self.admin_url))
            .bearer_auth(&self.admin_token)
            .json(&{
                let mut body = serde_json::json!({
                    "sandbox": req.sandbox_id,
                    "credentials": req.credentials,
                    "session": req.session_id,
                });
                // Only when tracing: a proxy from before traces refuses unknown fields.
                if let Some(tp) = airlock_telemetry::current_traceparent() {
                    body["traceparent"] = serde_json::Value::String(tp);
                }
                body
            })
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("POST /v1/grants: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            let body: IssuedGrantBody = resp
                .json()
                .await
                .map_err(|e| BrokerError::Unavailable(format!("POST /v1/grants: {e}")))?;
            let mut grant = compose(
                req,
                &body.token,
                &body.stubs()?,
                &self.proxy_addr,
                &self.ca_pem,
            );
            super::add_stub_aliases(&mut grant, &body.env);
            return Ok(grant);
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or("");
        let message = body["error"]["message"].as_str().unwrap_or("").to_string();
        if code == "unknown_credential" {
            let name = req
                .credentials
                .iter()
                .find(|c| message.contains(c.as_str()))
                .cloned()
                .unwrap_or(message);
            return Err(BrokerError::UnknownCredential(name));
        }
        Err(BrokerError::Unavailable(format!(
            "POST /v1/grants answered {status}: {code} {message}"
        )))
    }

    async fn revoke(&self, sandbox_id: &str) -> Result<(), BrokerError> {
        let resp = self
            .http
            .delete(format!("{}/v1/grants/{sandbox_id}", self.admin_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("DELETE /v1/grants: {e}")))?;
        let status = resp.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "DELETE /v1/grants/{sandbox_id} answered {status}"
            )))
        }
    }

    async fn approvals(&self) -> Result<Vec<PendingApproval>, BrokerError> {
        #[derive(serde::Deserialize)]
        struct List {
            approvals: Vec<PendingApproval>,
        }
        let resp = self
            .http
            .get(format!("{}/v1/approvals", self.admin_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("GET /v1/approvals: {e}")))?;
        if !resp.status().is_success() {
            return Err(BrokerError::Unavailable(format!(
                "GET /v1/approvals answered {}",
                resp.status()
            )));
        }
        let list: List = resp
            .json()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("GET /v1/approvals: {e}")))?;
        Ok(list.approvals)
    }

    async fn decide_approval(
        &self,
        id: &str,
        decision: ApprovalDecision,
        by: &str,
    ) -> Result<Option<PendingApproval>, BrokerError> {
        #[derive(serde::Deserialize)]
        struct Decided {
            approval: PendingApproval,
        }
        let resp = self
            .http
            .post(format!("{}/v1/approvals/{id}", self.admin_url))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({"decision": decision, "by": by}))
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("POST /v1/approvals: {e}")))?;
        match resp.status() {
            s if s.is_success() => {
                let d: Decided = resp
                    .json()
                    .await
                    .map_err(|e| BrokerError::Unavailable(format!("POST /v1/approvals: {e}")))?;
                Ok(Some(d.approval))
            }
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => Err(BrokerError::Unavailable(format!(
                "POST /v1/approvals/{id} answered {s}"
            ))),
        }
    }

    async fn set_egress(&self, sandbox_id: &str, p: &EgressPolicy) -> Result<(), BrokerError> {
        sandbox_egress(p)?;
        let resp = self
            .http
            .put(format!("{}/v1/grants/{sandbox_id}/egress", self.admin_url))
            .bearer_auth(&self.admin_token)
            .json(p)
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("PUT egress: {e}")))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "PUT /v1/grants/{sandbox_id}/egress answered {}",
                resp.status()
            )))
        }
    }

    async fn audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, BrokerError> {
        match &self.audit_log {
            Some(path) => read_audit(path.clone(), filter).await,
            None => Err(BrokerError::NotSupported(
                "the brain uses a remote vault proxy whose audit log it cannot read: set \
                 vault.remote.audit_log to the proxy's audit file (shared storage), or read it \
                 on the proxy's host"
                    .into(),
            )),
        }
    }

    fn audit_log_id(&self) -> String {
        format!("remote:{}", self.admin_url)
    }

    /// `GET /v1/credentials` on the admin API: names and bindings only (the proxy never sends
    /// a value or where one is read from).
    async fn credentials(&self) -> Result<Vec<super::CredentialInfo>, BrokerError> {
        #[derive(serde::Deserialize)]
        struct List {
            credentials: Vec<super::CredentialInfo>,
        }
        let resp = self
            .http
            .get(format!("{}/v1/credentials", self.admin_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("GET /v1/credentials: {e}")))?;
        match resp.status() {
            s if s.is_success() => {}
            // An older proxy without the route.
            reqwest::StatusCode::NOT_FOUND => {
                return Err(BrokerError::NotSupported(
                    "this vault proxy does not list its credentials (GET /v1/credentials); see \
                     its vault.yaml"
                        .into(),
                ));
            }
            s => {
                return Err(BrokerError::Unavailable(format!(
                    "GET /v1/credentials answered {s}"
                )));
            }
        }
        let list: List = resp
            .json()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("GET /v1/credentials: {e}")))?;
        Ok(list.credentials)
    }

    async fn audit_head(&self) -> Result<AuditHead, BrokerError> {
        #[derive(serde::Deserialize)]
        struct Body {
            seq: u64,
            hash: String,
        }
        let url = format!("{}/v1/audit/head", self.admin_url);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(BrokerError::Unavailable(format!(
                "GET {url} answered {}",
                resp.status()
            )));
        }
        let body: Body = resp
            .json()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("GET {url}: {e}")))?;
        // Parsed like `--head`, so a malformed hash is refused rather than recorded.
        format!("{}:{}", body.seq, body.hash)
            .parse()
            .map_err(|e| BrokerError::Unavailable(format!("GET {url}: {e}")))
    }

    async fn verify_audit(&self, heads: Vec<AuditHead>) -> Result<VerifyReport, BrokerError> {
        let Some(path) = &self.audit_log else {
            return Err(BrokerError::NotSupported(
                "the brain uses a remote vault proxy whose audit log it cannot read: set \
                 vault.remote.audit_log to the proxy's audit file (shared storage)"
                    .into(),
            ));
        };
        // The remote proxy's key, if it keys its chain, is given to the brain as to
        // `vault-proxy audit verify`: AIRLOCK_AUDIT_KEY.
        let hasher = hasher_from_env(None).map_err(BrokerError::Unavailable)?;
        verify_audit_file(path.clone(), hasher, heads).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{delete, get, post};

    use super::*;
    use crate::sandbox::BackendKind;

    type Log = Arc<Mutex<Vec<String>>>;

    fn authorized(headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer admin-tok")
    }

    /// A stand-in for `vault-proxy`'s admin API, following its routes and bodies.
    async fn fake_admin() -> (String, Log) {
        let log: Log = Arc::default();
        let app = Router::new()
            .route(
                "/v1/ca",
                get(|headers: HeaderMap| async move {
                    if authorized(&headers) {
                        (
                            StatusCode::OK,
                            "-----BEGIN CERTIFICATE-----\nx\n".to_string(),
                        )
                    } else {
                        (StatusCode::UNAUTHORIZED, String::new())
                    }
                }),
            )
            .route(
                "/v1/grants",
                post(
                    |State(log): State<Log>,
                     headers: HeaderMap,
                     axum::Json(body): axum::Json<serde_json::Value>| async move {
                        assert!(authorized(&headers));
                        log.lock().unwrap().push(format!("grant {body}"));
                        if body["credentials"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|c| c == "NOPE")
                        {
                            return (
                                StatusCode::BAD_REQUEST,
                                axum::Json(serde_json::json!({"error": {
                                    "code": "unknown_credential",
                                    "message": "unknown credential `NOPE`"}})),
                            );
                        }
                        (
                            StatusCode::CREATED,
                            axum::Json(serde_json::json!({
                                "token": "remote-tok",
                                "stubs": {"GITHUB_TOKEN": "ghp_stub"}})),
                        )
                    },
                ),
            )
            .route(
                "/v1/grants/{sandbox}",
                delete(
                    |State(log): State<Log>, UrlPath(sandbox): UrlPath<String>| async move {
                        log.lock().unwrap().push(format!("revoke {sandbox}"));
                        StatusCode::NOT_FOUND
                    },
                ),
            )
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), log)
    }

    /// Remote mode over TLS against the real proxy: the brain pins the
    /// proxy's admin certificate, presents its client certificate, fetches
    /// the CA over TLS, and gives sandboxes an `https://` proxy URL; a wrong
    /// pin, a missing client certificate or plain http to a non-loopback
    /// admin API are refused.
    #[tokio::test]
    async fn remote_vault_over_pinned_tls() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mk_ca = |cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            rcgen::CertifiedIssuer::self_signed(p, key).unwrap()
        };
        let server_ca = mk_ca("vault server CA");
        let client_ca = mk_ca("brain client CA");
        let skey = rcgen::KeyPair::generate().unwrap();
        let scert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&skey, &server_ca)
            .unwrap();
        let ckey = rcgen::KeyPair::generate().unwrap();
        let ccert = rcgen::CertificateParams::new(vec!["brain".to_string()])
            .unwrap()
            .signed_by(&ckey, &client_ca)
            .unwrap();
        std::fs::write(d.join("server.pem"), scert.pem()).unwrap();
        std::fs::write(d.join("server-key.pem"), skey.serialize_pem()).unwrap();
        std::fs::write(d.join("client-ca.pem"), client_ca.pem()).unwrap();
        std::fs::write(d.join("server-ca.pem"), server_ca.pem()).unwrap();
        std::fs::write(
            d.join("client.pem"),
            format!("{}{}", ccert.pem(), ckey.serialize_pem()),
        )
        .unwrap();
        std::fs::write(
            d.join("gh.secret"),
            "ghp_R3alT0kenR3alT0kenR3alT0kenR3alT0ken",
        )
        .unwrap();
        std::fs::write(
            d.join("vault.yaml"),
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nadmin_token_env: BRAIN_IT_TLS_ADMIN\n\
             audit_log: audit.jsonl\n\
             tls: { cert: server.pem, key: server-key.pem, client_ca: client-ca.pem }\n\
             listen_tls: 127.0.0.1:0\n\
             credentials:\n  GITHUB_TOKEN: { value_file: gh.secret, allowed_hosts: [api.github.com] }\n",
        )
        .unwrap();
        // SAFETY: a name only this test uses, set before the proxy reads it.
        unsafe { std::env::set_var("BRAIN_IT_TLS_ADMIN", "admin-tls-token") };
        let cfg = vault_proxy::config::Config::load(d.join("vault.yaml")).unwrap();
        let proxy = vault_proxy::VaultProxy::start(cfg).await.unwrap();
        let admin = proxy.admin_addr().unwrap();
        let tls = proxy.tls_addr().unwrap();
        let env = |n: &str| (n == "X_ADMIN").then(|| "admin-tls-token".to_string());
        let config = RemoteVaultConfig {
            url: "10.9.9.9:8899".into(),
            admin_url: format!("https://{admin}"),
            admin_token_env: "X_ADMIN".into(),
            ca_file: None,
            audit_log: None,
            pin_sha256: None,
            pin_cert: Some(d.join("server.pem")),
            client_cert: Some(d.join("client.pem")),
            tls_url: Some(tls.to_string()),
            tls_ca_file: Some(d.join("server-ca.pem")),
        };
        let vault = RemoteVault::connect(&config, env).await.unwrap();
        assert!(
            vault.ca_pem.contains(proxy.ca_pem().trim()),
            "CA fetched over TLS"
        );
        assert!(
            vault.ca_pem.contains(server_ca.pem().trim()),
            "listen_tls CA added"
        );
        let creds = vec!["GITHUB_TOKEN".to_string()];
        let grant = vault
            .grant(GrantRequest {
                sandbox_id: "sb-t",
                credentials: &creds,
                session_id: None,
                backend: BackendKind::Local,
            })
            .await
            .unwrap();
        let url = &grant.env["HTTPS_PROXY"];
        assert!(
            url.starts_with("https://sb-t:") && url.ends_with(&format!("@{tls}")),
            "{url}"
        );
        vault.revoke("sb-t").await.unwrap();

        // A wrong pin: refused in the handshake, the token never sent.
        let wrong = RemoteVaultConfig {
            pin_cert: None,
            pin_sha256: Some("00".repeat(32)),
            ..config.clone()
        };
        let err = RemoteVault::connect(&wrong, env).await.err().unwrap();
        assert!(err.contains("/v1/ca"), "{err}");
        // No client certificate: the proxy refuses.
        let no_cert = RemoteVaultConfig {
            client_cert: None,
            ..config.clone()
        };
        assert!(RemoteVault::connect(&no_cert, env).await.is_err());
        // https without a pin, and plain http across a network: refused before any request.
        let no_pin = RemoteVaultConfig {
            pin_cert: None,
            ..config.clone()
        };
        let err = RemoteVault::connect(&no_pin, env).await.err().unwrap();
        assert!(err.contains("pin"), "{err}");
        let clear = RemoteVaultConfig {
            admin_url: "http://10.9.9.9:8898".into(),
            pin_cert: None,
            client_cert: None,
            ..config.clone()
        };
        let err = RemoteVault::connect(&clear, env).await.err().unwrap();
        assert!(err.contains("in clear"), "{err}");
        proxy.shutdown().await;
    }

    /// The console's credentials page in remote mode: the bindings come from the real proxy's
    /// admin API (`GET /v1/credentials`), names and bindings only; no value, nor the file it
    /// is read from, crosses the wire. Without the admin token: refused.
    #[tokio::test]
    async fn remote_vault_lists_the_proxys_credential_bindings() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        const VALUE: &str = "ghp_R3alT0kenR3alT0kenR3alT0kenR3alT0ken";
        std::fs::write(d.join("gh.secret"), VALUE).unwrap();
        std::fs::write(
            d.join("vault.yaml"),
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nadmin_token_env: BRAIN_IT_CREDS_ADMIN\n\
             audit_log: audit.jsonl\n\
             credentials:\n  GITHUB_TOKEN: { value_file: gh.secret, allowed_hosts: [api.github.com, \"uploads.github.com:443\"] }\n",
        )
        .unwrap();
        // SAFETY: a name only this test uses, set before the proxy reads it.
        unsafe { std::env::set_var("BRAIN_IT_CREDS_ADMIN", "admin-creds-token") };
        let cfg = vault_proxy::config::Config::load(d.join("vault.yaml")).unwrap();
        let want = super::super::credential_infos(&cfg);
        let proxy = vault_proxy::VaultProxy::start(cfg).await.unwrap();
        let admin = proxy.admin_addr().unwrap();
        let config = RemoteVaultConfig {
            url: proxy.proxy_addr().to_string(),
            admin_url: format!("http://{admin}"),
            admin_token_env: "X_ADMIN".into(),
            ca_file: None,
            audit_log: None,
            pin_sha256: None,
            pin_cert: None,
            client_cert: None,
            tls_url: None,
            tls_ca_file: None,
        };
        let env = |n: &str| (n == "X_ADMIN").then(|| "admin-creds-token".to_string());
        let vault = RemoteVault::connect(&config, env).await.unwrap();
        let got = vault.credentials().await.unwrap();
        assert_eq!(got, want);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "GITHUB_TOKEN");
        assert_eq!(got[0].kind, "static");
        assert_eq!(got[0].hosts, ["api.github.com", "uploads.github.com:443"]);
        assert!(!got[0].stored);
        let raw = reqwest::Client::new()
            .get(format!("http://{admin}/v1/credentials"))
            .bearer_auth("admin-creds-token")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!raw.contains(VALUE) && !raw.contains("gh.secret"), "{raw}");
        let refused = reqwest::Client::new()
            .get(format!("http://{admin}/v1/credentials"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn remote_vault_uses_the_admin_api() {
        crate::install_crypto_provider();
        let (admin_url, log) = fake_admin().await;
        let config = RemoteVaultConfig {
            url: "10.9.9.9:8899".into(),
            admin_url: admin_url.clone(),
            admin_token_env: "X_ADMIN".into(),
            ca_file: None,
            audit_log: None,
            pin_sha256: None,
            pin_cert: None,
            client_cert: None,
            tls_url: None,
            tls_ca_file: None,
        };
        let env = |n: &str| (n == "X_ADMIN").then(|| "admin-tok".to_string());
        let err = RemoteVault::connect(&config, |_| None).await.err().unwrap();
        assert!(err.contains("X_ADMIN"), "{err}");
        let vault = RemoteVault::connect(&config, env).await.unwrap();

        let creds = vec!["GITHUB_TOKEN".to_string()];
        let req = GrantRequest {
            sandbox_id: "sb-r",
            credentials: &creds,
            session_id: Some("s-1"),
            backend: BackendKind::Local,
        };
        let grant = vault.grant(req).await.unwrap();
        assert_eq!(grant.env["GITHUB_TOKEN"], "ghp_stub");
        assert_eq!(
            grant.env["HTTPS_PROXY"],
            "http://sb-r:remote-tok@10.9.9.9:8899"
        );
        assert!(grant.files[0].1.starts_with(b"-----BEGIN CERTIFICATE-----"));

        let nope = vec!["NOPE".to_string()];
        let err = vault
            .grant(GrantRequest {
                credentials: &nope,
                ..req
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, BrokerError::UnknownCredential(ref n) if n == "NOPE"),
            "{err}"
        );

        // An unknown grant (404) is fine to revoke.
        vault.revoke("sb-r").await.unwrap();
        let log = log.lock().unwrap().clone();
        assert!(log[0].contains("\"session\":\"s-1\""), "{log:?}");
        assert_eq!(log.last().unwrap(), "revoke sb-r");
        assert!(matches!(
            vault.audit(AuditFilter::default()).await,
            Err(BrokerError::NotSupported(_))
        ));
    }

    fn handle_with(id: &str, token: Option<&str>, stubs: &str) -> SandboxHandle {
        let mut extra = std::collections::BTreeMap::new();
        if let Some(t) = token {
            extra.insert(super::super::HANDLE_TOKEN_KEY.to_string(), t.to_string());
            extra.insert(
                super::super::HANDLE_STUBS_KEY.to_string(),
                stubs.to_string(),
            );
        }
        SandboxHandle {
            id: id.into(),
            backend: BackendKind::Docker,
            backend_ref: "c".into(),
            agent_url: None,
            agent_token: "a".into(),
            extra,
        }
    }

    /// Issue 10: the embedded vault with `tls` + `listen_tls` in its config serves the TLS
    /// proxy listener of remote mode; cloud sandboxes are granted `https://…` there with the
    /// listener's certificate (never its key) in their bundle, other backends keep the plain
    /// listener, and the proxy token authenticates over the TLS listener.
    #[tokio::test]
    async fn embedded_vault_grants_cloud_sandboxes_its_tls_listener() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // One file with the certificate and its key: only the certificate reaches sandboxes.
        std::fs::write(
            d.join("tls.pem"),
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .unwrap();
        std::fs::write(d.join("tls-key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(
            d.join("vault.yaml"),
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\naudit_log: audit.jsonl\n\
             ca: { cert: ca.pem, key: ca-key.pem }\n\
             tls: { cert: tls.pem, key: tls-key.pem }\nlisten_tls: 127.0.0.1:0\n",
        )
        .unwrap();
        let config = ProxyConfig::load(d.join("vault.yaml")).unwrap();
        let vault = EmbeddedVault::start(config, Vec::new()).await.unwrap();
        let tls = vault.tls_proxy_addr().expect("tls listener").to_string();
        assert!(tls.starts_with("https://127.0.0.1:"), "{tls}");
        let grant = |backend| {
            vault.grant(GrantRequest {
                sandbox_id: "sb-c",
                credentials: &[],
                session_id: None,
                backend,
            })
        };
        for backend in [BackendKind::E2b, BackendKind::Daytona] {
            let g = grant(backend).await.unwrap();
            let authority = tls.trim_start_matches("https://");
            assert!(
                g.env["HTTPS_PROXY"].starts_with("https://sb-c:")
                    && g.env["HTTPS_PROXY"].ends_with(&format!("@{authority}")),
                "{backend:?}: {}",
                g.env["HTTPS_PROXY"]
            );
            let bundle = String::from_utf8(g.files[0].1.to_vec()).unwrap();
            assert!(bundle.contains(vault.ca_pem.trim()), "proxy CA kept");
            assert!(bundle.contains(cert.pem().trim()), "listen_tls cert added");
            assert!(!bundle.contains("PRIVATE KEY"), "a key in the bundle");
        }
        let local = grant(BackendKind::Local).await.unwrap();
        assert_eq!(
            local.env["HTTPS_PROXY"],
            format!(
                "http://sb-c:{}@{}",
                local.token.as_deref().unwrap(),
                vault.proxy_addr()
            )
        );
        assert!(!String::from_utf8_lossy(&local.files[0].1).contains(cert.pem().trim()));

        // The token authenticates over TLS (trusting only the bundle); a wrong one is a 407.
        let g = grant(BackendKind::E2b).await.unwrap();
        let bundle = reqwest::Certificate::from_pem_bundle(&g.files[0].1).unwrap();
        let client = |url: &str| {
            reqwest::Client::builder()
                .tls_certs_only(bundle.clone())
                .proxy(reqwest::Proxy::all(url).unwrap())
                .build()
                .unwrap()
        };
        let ok = client(&g.env["HTTPS_PROXY"])
            .get("http://example.invalid/")
            .send()
            .await
            .unwrap();
        assert_ne!(ok.status().as_u16(), 407);
        let bad_url = g.env["HTTPS_PROXY"].replace(g.token.as_deref().unwrap(), "wrong-token");
        let bad = client(&bad_url)
            .get("http://example.invalid/")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status().as_u16(), 407);
        vault.shutdown().await;
    }

    #[tokio::test]
    async fn embedded_vault_restores_recorded_grants_and_refuses_the_unrestorable() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let config = load_embedded_config(None, dir.path()).unwrap();
        let good = handle_with("sb-good", Some("tok-good"), "{}");
        // Its credential is not in this vault's config: the proxy refuses the grant.
        let gone = handle_with("sb-gone", Some("tok-gone"), r#"{"GONE":"ghp_x"}"#);
        let none = handle_with("sb-old", None, "");
        let restore = grants_to_restore([
            (&good, Some("s-good")),
            (&gone, Some("s-gone")),
            (&none, None),
        ]);
        assert_eq!(restore.len(), 2);
        let vault = EmbeddedVault::start(config, restore).await.unwrap();
        vault.readopt(&good).await.unwrap();
        vault.readopt(&none).await.unwrap();
        assert!(vault.readopt(&gone).await.is_err());

        // The restored token authenticates at the proxy.
        let client = |token: &str| {
            let url = format!("http://sb-good:{token}@{}", vault.proxy_addr());
            reqwest::Client::builder()
                .proxy(reqwest::Proxy::all(url).unwrap())
                .build()
                .unwrap()
        };
        let denied = client("tok-good")
            .get("http://example.invalid/")
            .send()
            .await
            .unwrap();
        assert_ne!(denied.status().as_u16(), 407, "restored token refused");
        let wrong = client("tok-wrong")
            .get("http://example.invalid/")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 407);
        // Records of the restored grant still name its session.
        let records = vault.audit(AuditFilter::default()).await.unwrap();
        let mine: Vec<_> = records.iter().filter(|r| r.sandbox == "sb-good").collect();
        assert!(!mine.is_empty(), "{records:?}");
        assert!(
            mine.iter().all(|r| r.session.as_deref() == Some("s-good")),
            "{records:?}"
        );
        vault.shutdown().await;
    }
}
