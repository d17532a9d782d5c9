//! Admin API (bearer admin token): grants for the brain, the CA certificate.
//!
//! - `GET /healthz` (no auth) → `{"status":"ok"}`, or 503
//!   `{"status":"audit_unavailable"}` while the audit log cannot be written
//! - `GET /v1/audit/head` → `{"seq","hash"}` of the last record written
//! - `POST /v1/grants {"sandbox","credentials":[names],"session"?}` → `{"token","stubs"}`
//! - `DELETE /v1/grants/{sandbox}` → 204 (404 if none)
//! - `GET /v1/ca` → the CA certificate PEM (public part only)
//! - `GET /v1/credentials` → `{"credentials":[{"name","kind","hosts","positions","paths",
//!   "methods","stored"}]}`: the bindings of the configured credentials (the brain's console),
//!   never a value nor its source
//! - approvals and per-sandbox egress: see [`crate::approvals::api`]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{ProxyBody, full};
use crate::grants::{GrantError, Grants};

/// Admin state.
pub(crate) struct Admin {
    pub grants: Arc<Grants>,
    pub audit: crate::audit::AuditLog,
    pub approvals: Arc<crate::approvals::Approvals>,
    /// SHA-256 of the admin token; `None` = no token configured: every
    /// authenticated route answers 401 (fail closed).
    pub token_digest: Option<[u8; 32]>,
    pub ca_pem: String,
    /// `GET /v1/credentials`, rendered once from the config.
    pub credentials: Vec<crate::config::CredentialBinding>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    sandbox: String,
    credentials: Vec<String>,
    #[serde(default)]
    session: Option<String>,
    /// The caller's W3C trace context (else the request's `traceparent` header).
    #[serde(default)]
    traceparent: Option<String>,
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn metrics_response(text: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

pub(crate) fn digest(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(want) = self.token_digest else {
            return false;
        };
        let Some(got) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let got = digest(got.trim());
        got.iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let path = req.uri().path().to_string();
        if req.method() == Method::GET && path == "/healthz" {
            if !self.audit.is_healthy() {
                return Ok(json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "audit_unavailable"}),
                ));
            }
            return Ok(json(StatusCode::OK, serde_json::json!({"status": "ok"})));
        }
        if req.method() == Method::GET && path == "/metrics" {
            // Open like /healthz: counts only, never a host, sandbox or credential.
            return Ok(metrics_response(self.audit.metrics().render_for(
                &self.audit,
                &self.grants,
                &self.approvals,
            )));
        }
        if !self.authorized(&req) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid admin token",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
        let method = req.method().clone();
        if crate::approvals::api::handles(&method, &path) {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "request body too large",
                    ));
                }
            };
            let (status, v) =
                crate::approvals::api::route(&self.approvals, &self.grants, &method, &path, &body);
            return Ok(json(status, v));
        }
        Ok(match (method, path.as_str()) {
            (Method::GET, "/v1/audit/head") => {
                let h = self.audit.head();
                json(
                    StatusCode::OK,
                    serde_json::json!({"seq": h.seq, "hash": h.hash}),
                )
            }
            (Method::GET, "/v1/credentials") => json(
                StatusCode::OK,
                serde_json::json!({ "credentials": self.credentials }),
            ),
            (Method::GET, "/v1/ca") => {
                let mut r = Response::new(full(Bytes::from(self.ca_pem.clone())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-pem-file"),
                );
                r
            }
            (Method::POST, "/v1/grants") => {
                let header_traceparent = req
                    .headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return Ok(error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            "request body too large",
                        ));
                    }
                };
                let g: GrantRequest = match serde_json::from_slice(&body) {
                    Ok(g) => g,
                    Err(e) => {
                        return Ok(error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            &e.to_string(),
                        ));
                    }
                };
                let traceparent = g.traceparent.as_deref().or(header_traceparent.as_deref());
                match self
                    .grants
                    .issue_traced(&g.sandbox, g.session, &g.credentials, traceparent)
                {
                    Ok(issued) => json(
                        StatusCode::CREATED,
                        // `env`: extra stub env vars of typed credentials (additive).
                        serde_json::json!({"token": issued.token, "stubs": issued.stubs_json(), "env": issued.env}),
                    ),
                    Err(e @ GrantError::UnknownCredential(_)) => error(
                        StatusCode::BAD_REQUEST,
                        "unknown_credential",
                        &e.to_string(),
                    ),
                    Err(e @ GrantError::InvalidSandbox) => {
                        error(StatusCode::BAD_REQUEST, "invalid_sandbox", &e.to_string())
                    }
                    Err(e) => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &e.to_string(),
                    ),
                }
            }
            (Method::DELETE, p) if p.starts_with("/v1/grants/") => {
                let sandbox = &p["/v1/grants/".len()..];
                self.approvals.forget(sandbox);
                if self.grants.revoke(sandbox) {
                    let mut r = Response::new(crate::body::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no grant for this sandbox",
                    )
                }
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
        })
    }
}

/// Serves the admin API until `shutdown`.
/// With `tls` (remote mode) every connection completes a TLS handshake
/// first (and presents a client certificate when `client_ca` is set).
pub(crate) async fn serve(
    admin: Arc<Admin>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let sd = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_conn(admin, stream, sd).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    match hs.await {
                        Ok(Ok(s)) => serve_conn(admin, s, sd).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "admin tls handshake failed"),
                        Err(_) => tracing::debug!("admin tls handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_conn<S>(admin: Arc<Admin>, stream: S, sd: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| admin.clone().route(req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = sd.cancelled() => {}
    }
}
