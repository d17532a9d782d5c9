//! Airlock vault proxy: a TLS-terminating HTTP proxy that swaps per-sandbox
//! stub credentials for real secrets only toward the hosts each secret is
//! bound to, blocks everything else, scrubs secrets from responses, and
//! audits every decision in a hash-chained log.
//!
//! Built directly on hyper 1 + tokio-rustls + rcgen (not hudsucker, which
//! passes unparseable tunnels through raw and does not pin HTTP/2
//! `:authority`). Entry points: [`VaultProxy::start`] (embedded, used by the
//! brain) and [`run`] (the `vault-proxy serve` binary); request handling is
//! in [`pipeline`].

pub mod admin;
pub mod approvals;
pub mod audit;
pub(crate) mod audit_gate;
pub mod aws_sigv4;
pub mod body;
pub mod ca;
pub mod config;
pub mod connect;
pub mod credentials;
pub mod deny;
pub mod grants;
pub(crate) mod handler;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod remote_tls;
pub(crate) mod sandbox_limits;
pub mod secrets;
mod telemetry;
#[cfg(test)]
pub(crate) mod testutil;
pub(crate) mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::grants::{GrantError, IssuedGrant};
pub use crate::pipeline::check_address::ResolveFn;
pub use crate::proxy::Limits;

use crate::audit::AuditLog;
use crate::ca::{CertificateAuthority, LeafCache};
use crate::config::Config;
use crate::grants::Grants;
use crate::pipeline::check_address::{NetPolicy, system_resolver};
use crate::proxy::Shared;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Credentials could not be resolved.
    #[error("credentials: {0}")]
    Secrets(#[from] secrets::SecretError),
    /// The CA could not be loaded or created.
    #[error("ca: {0}")]
    Ca(#[from] ca::CaError),
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditError),
    /// `audit_key_env` names a variable that is not set.
    #[error("audit_key_env: environment variable {0} is not set (refusing an unkeyed chain)")]
    AuditKey(String),
    /// `upstream_roots` could not be loaded.
    #[error("upstream roots: {0}")]
    Upstream(#[from] connect::UpstreamConfigError),
    /// A static grant is invalid.
    #[error("static grant for `{sandbox}`: {source}")]
    Grant {
        /// The sandbox.
        sandbox: String,
        /// The cause.
        #[source]
        source: GrantError,
    },
    /// The `tls` material could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] remote_tls::TlsError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Options beyond the config file (embedding, tests).
#[derive(Default)]
pub struct StartOptions {
    /// Resource limits.
    pub limits: Limits,
    /// A pre-bound proxy listener (otherwise `config.listen` is bound).
    pub listener: Option<TcpListener>,
    /// A pre-bound admin listener (otherwise `config.admin_listen`).
    pub admin_listener: Option<TcpListener>,
    /// Do not serve the admin API (embedded use grants directly).
    pub no_admin: bool,
    /// Replace the system resolver (tests).
    pub resolver: Option<ResolveFn>,
}

/// Namespace for starting an embedded proxy.
pub struct VaultProxy;

impl VaultProxy {
    /// Starts the proxy (and admin API) from a loaded config.
    pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
        Self::start_with(config, StartOptions::default()).await
    }

    /// Starts with explicit options.
    pub async fn start_with(
        config: Config,
        opts: StartOptions,
    ) -> Result<RunningProxy, StartError> {
        // Ring is the only provider; install it as the process default for
        // any component that asks for one (ignored if already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();

        let creds = Arc::new(secrets::resolve_credentials(&config)?);
        let grants = Arc::new(Grants::new(creds));
        for g in &config.grants {
            grants.add_static(g).map_err(|source| StartError::Grant {
                sandbox: g.sandbox.clone(),
                source,
            })?;
        }
        let ca = Arc::new(CertificateAuthority::load_or_create(
            &config.ca.cert,
            &config.ca.key,
        )?);
        let ca_pem = ca.ca_pem().to_string();
        let leaves = LeafCache::new(ca, 1024);
        let hasher = match &config.audit_key_env {
            None => audit::ChainHasher::Sha256,
            Some(env) => match std::env::var(env) {
                Ok(k) if !k.is_empty() => audit::ChainHasher::hmac(k.as_bytes()),
                // A keyed chain was asked for: never fall back to an unkeyed one.
                _ => return Err(StartError::AuditKey(env.clone())),
            },
        };
        let audit = AuditLog::open_with(
            &config.audit_log,
            audit::AuditOpenOptions {
                hasher,
                new_chain: config.audit_new_chain,
            },
        )
        .await?;
        let mut limits = opts.limits;
        limits.max_tunnels_per_sandbox = limits
            .max_tunnels_per_sandbox
            .min(config.limits.tunnels_per_sandbox);
        limits.unauthenticated_timeout = limits.unauthenticated_timeout.min(Duration::from_millis(
            config.limits.unauthenticated_timeout_ms,
        ));
        let upstream = connect::Upstream::new(&config.upstream_roots, limits.connect_timeout)?;

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let listener = match opts.listener {
            Some(l) => l,
            None => bind(config.listen).await?,
        };
        let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_listener = if opts.no_admin {
            None
        } else {
            Some(match opts.admin_listener {
                Some(l) => l,
                None => bind(config.admin_listen).await?,
            })
        };
        let admin_addr = match &admin_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
                addr: config.admin_listen,
                source,
            })?),
            None => None,
        };
        let (tls_admin, tls_proxy) = match &config.tls {
            Some(t) => {
                let (a, p) = remote_tls::acceptors(t)?;
                (Some(a), Some(p))
            }
            None => (None, None),
        };
        let tls_listener = match config.listen_tls {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let tls_addr = match &tls_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
                addr: config.listen_tls.unwrap_or(config.listen),
                source,
            })?),
            None => None,
        };
        let mut own = vec![proxy_addr];
        own.extend(admin_addr);
        own.extend(tls_addr);

        let net = NetPolicy {
            allow_private: config.network.allow_private,
            resolve: config.network.resolve.clone(),
            own,
            resolver: opts.resolver.unwrap_or_else(system_resolver),
            timeout: Duration::from_secs(5),
        };
        let approvals = Arc::new(approvals::Approvals::new());
        let shared = Arc::new(Shared {
            grants: grants.clone(),
            egress: config.egress.clone(),
            approvals: approvals.clone(),
            net,
            upstream,
            audit: audit.clone(),
            leaves,
            conn_limit: Arc::new(Semaphore::new(limits.max_connections)),
            unauth_limit: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        });
        let shutdown = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(proxy::serve(
            shared.clone(),
            listener,
            shutdown.clone(),
            None,
        ))];
        if let Some(l) = tls_listener {
            tasks.push(tokio::spawn(proxy::serve(
                shared.clone(),
                l,
                shutdown.clone(),
                tls_proxy.clone(),
            )));
        }
        if let Some(l) = admin_listener {
            let token_digest = std::env::var(&config.admin_token_env)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| admin::digest(t.trim()));
            if token_digest.is_none() {
                tracing::warn!(env = %config.admin_token_env, "admin token not set: admin API refuses every request");
            }
            let admin = Arc::new(admin::Admin {
                grants: grants.clone(),
                audit: audit.clone(),
                approvals: approvals.clone(),
                token_digest,
                ca_pem: ca_pem.clone(),
                credentials: config.credential_bindings(),
            });
            tasks.push(tokio::spawn(admin::serve(
                admin,
                l,
                shutdown.clone(),
                tls_admin,
            )));
        }
        Ok(RunningProxy {
            grants,
            approvals,
            audit,
            ca_pem,
            proxy_addr,
            admin_addr,
            tls_addr,
            shutdown,
            tasks,
        })
    }
}

/// A running proxy. Dropping it does not stop it; call [`RunningProxy::shutdown`].
pub struct RunningProxy {
    grants: Arc<Grants>,
    approvals: Arc<approvals::Approvals>,
    audit: AuditLog,
    ca_pem: String,
    proxy_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Address of the HTTP proxy (for `HTTPS_PROXY`).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Address of the admin API, if served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Address of the HTTPS proxy listener (`listen_tls`), if configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The CA certificate (PEM) to install in sandboxes.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a grant (fresh token and stubs); replaces any grant of `sandbox`.
    pub fn grant(
        &self,
        sandbox: &str,
        credentials: &[String],
        session: Option<String>,
    ) -> Result<IssuedGrant, GrantError> {
        self.grants.issue(sandbox, session, credentials)
    }

    /// [`RunningProxy::grant`] under the caller's trace (a W3C `traceparent` value): the
    /// sandbox's audit records carry its trace id and its egress decisions become spans.
    pub fn grant_traced(
        &self,
        sandbox: &str,
        credentials: &[String],
        session: Option<String>,
        traceparent: Option<&str>,
    ) -> Result<IssuedGrant, GrantError> {
        self.grants
            .issue_traced(sandbox, session, credentials, traceparent)
    }

    /// Revokes the sandbox's grant; open tunnels close. Returns whether one existed.
    pub fn revoke(&self, sandbox: &str) -> bool {
        self.approvals.forget(sandbox);
        self.grants.revoke(sandbox)
    }

    /// Held `ask` requests and per-sandbox egress (what the admin API's
    /// `/v1/approvals` and `/v1/grants/{sandbox}/egress` serve).
    pub fn approvals(&self) -> &Arc<approvals::Approvals> {
        &self.approvals
    }

    /// The proxy's Prometheus text (`airlock_vault_*`), for an embedding app's `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.audit
            .metrics()
            .render_for(&self.audit, &self.grants, &self.approvals)
    }

    /// The audit log handle (flush before reading the file).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Stops accepting, closes tunnels, flushes the audit log.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.grants.revoke_all();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.audit.close().await {
            tracing::error!(error = %e, "audit close failed");
        }
    }
}

/// Runs the proxy from `config` until `shutdown` resolves (the binary's entry).
/// Prints `listening on <addr>` and `admin listening on <addr>`.
pub async fn run(
    config: Config,
    opts: StartOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let running = VaultProxy::start_with(config, opts).await?;
    println!("listening on {}", running.proxy_addr());
    if let Some(a) = running.admin_addr() {
        println!("admin listening on {a}");
    }
    if let Some(a) = running.tls_addr() {
        println!("tls listening on {a}");
    }
    shutdown.await;
    running.shutdown().await;
    Ok(())
}
