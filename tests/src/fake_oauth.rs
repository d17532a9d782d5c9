//! A local fake OAuth 2.0 authorization server + resource server over HTTPS (one listener on
//! `127.0.0.1`, certificate for `oauth.test` and `api.oauth.test`, throwaway CA).
//!
//! Token endpoint `POST /token`, after RFC 6749:
//! - §2.3.1 client authentication: HTTP Basic over the form-urlencoded client id and
//!   secret (or both in the body); a wrong client → `401 {"error":"invalid_client"}`;
//! - §6 refresh: `application/x-www-form-urlencoded` body `grant_type=refresh_token&
//!   refresh_token=…`; answer §5.1 `200 {"access_token","token_type":"Bearer",
//!   "expires_in","refresh_token"}` with `Cache-Control: no-store`;
//! - §5.2 errors: `400 {"error":"invalid_grant"}` for an unknown, expired or revoked
//!   refresh token, `unsupported_grant_type`, `invalid_request`;
//! - rotation (OAuth 2.1 draft §4.3.1, RFC 9700 §4.14.2): every refresh issues a new
//!   refresh token and invalidates the old one; presenting an old one again is taken as a
//!   breach and revokes the whole grant (the current refresh token too).
//!
//! Resource server: `GET /me` needs `Authorization: Bearer <unexpired access token>`
//! (RFC 6750 §3.1: `401` + `WWW-Authenticate: Bearer error="invalid_token"` otherwise);
//! `GET /echo` (authenticated the same way) answers with the *current refresh token* and
//! the access token in its body — a misbehaving bound API, to show the proxy scrubs them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::json;

pub const TOKEN_HOST: &str = "oauth.test";
pub const API_HOST: &str = "api.oauth.test";

#[derive(Default)]
struct Inner {
    client_id: String,
    client_secret: String,
    refresh_token: Option<String>,
    /// Refresh tokens that were valid once (reuse = breach).
    spent: Vec<String>,
    access: Vec<(String, Instant)>,
    ttl: Duration,
    refreshes: usize,
    refused: Vec<String>,
}

/// A running fake; serves until the runtime stops.
#[derive(Clone)]
pub struct FakeOAuth {
    pub port: u16,
    pub ca_pem: String,
    inner: Arc<Mutex<Inner>>,
}

fn random(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    b.iter().map(|x| A[*x as usize % A.len()] as char).collect()
}

impl FakeOAuth {
    /// Starts the fake with one client and one refresh token; access tokens live `ttl`.
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
        ttl: Duration,
    ) -> Self {
        crate::install_crypto_provider();
        let (ca_pem, tls) =
            crate::fake_github::tls_config_for(&[TOKEN_HOST, API_HOST, "127.0.0.1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let inner = Arc::new(Mutex::new(Inner {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            refresh_token: Some(refresh_token.into()),
            ttl,
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .route("/token", post(token))
            .route("/me", get(me))
            .route("/echo", get(echo))
            .with_state(inner.clone());
        tokio::spawn(crate::fake_github::serve(
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            app,
        ));
        FakeOAuth {
            port,
            ca_pem,
            inner,
        }
    }

    /// The refresh token currently valid (None once revoked).
    pub fn current_refresh_token(&self) -> Option<String> {
        self.inner.lock().unwrap().refresh_token.clone()
    }

    /// Access tokens issued so far, oldest first.
    pub fn access_tokens(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .access
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Successful refreshes.
    pub fn refreshes(&self) -> usize {
        self.inner.lock().unwrap().refreshes
    }

    /// `error` codes of refused token requests, in order.
    pub fn refused(&self) -> Vec<String> {
        self.inner.lock().unwrap().refused.clone()
    }

    /// Revokes the grant (the user withdrew consent): refresh → `invalid_grant`.
    pub fn revoke(&self) {
        let mut i = self.inner.lock().unwrap();
        if let Some(rt) = i.refresh_token.take() {
            i.spent.push(rt);
        }
        i.access.clear();
    }
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        [("cache-control", "no-store")],
        axum::Json(json!({"error": code})),
    )
        .into_response()
}

fn form(body: &str) -> std::collections::HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (pct_decode(k), pct_decode(v)))
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.replace('+', " ");
    let bytes = b.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&b[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn token(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut i = inner.lock().unwrap();
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        i.refused.push("invalid_request".into());
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let f = form(&body);
    // §2.3.1: Basic over the form-urlencoded id:secret, or both in the body.
    let (id, secret) = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(a) => {
            let dec = a
                .strip_prefix("Basic ")
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let (id, secret) = dec.split_once(':').unwrap_or(("", ""));
            (pct_decode(id), pct_decode(secret))
        }
        None => (
            f.get("client_id").cloned().unwrap_or_default(),
            f.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    if id != i.client_id || secret != i.client_secret {
        i.refused.push("invalid_client".into());
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if f.get("grant_type").map(String::as_str) != Some("refresh_token") {
        i.refused.push("unsupported_grant_type".into());
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let presented = f.get("refresh_token").cloned().unwrap_or_default();
    if i.refresh_token.as_deref() != Some(presented.as_str()) || presented.is_empty() {
        if i.spent.contains(&presented) {
            // Reuse of a rotated token: revoke the whole grant (RFC 9700 §4.14.2).
            if let Some(rt) = i.refresh_token.take() {
                i.spent.push(rt);
            }
        }
        i.refused.push("invalid_grant".into());
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let new_rt = format!("rt-{}", random(40));
    i.spent.push(presented);
    i.refresh_token = Some(new_rt.clone());
    let access = format!("at-{}", random(48));
    let ttl = i.ttl;
    i.access.push((access.clone(), Instant::now() + ttl));
    i.refreshes += 1;
    (
        StatusCode::OK,
        [("cache-control", "no-store")],
        axum::Json(json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
            "refresh_token": new_rt,
        })),
    )
        .into_response()
}

fn bearer_ok(i: &Inner, headers: &HeaderMap) -> Option<String> {
    let t = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim()
        .to_string();
    i.access
        .iter()
        .any(|(a, exp)| *a == t && Instant::now() < *exp)
        .then_some(t)
}

fn invalid_token() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", "Bearer error=\"invalid_token\"")],
        axum::Json(json!({"error": "invalid_token"})),
    )
        .into_response()
}

async fn me(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let i = inner.lock().unwrap();
    match bearer_ok(&i, &headers) {
        Some(_) => axum::Json(json!({"user": "alice"})).into_response(),
        None => invalid_token(),
    }
}

async fn echo(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let i = inner.lock().unwrap();
    match bearer_ok(&i, &headers) {
        Some(at) => axum::Json(json!({
            "refresh_token": i.refresh_token,
            "access_token": at,
            "client_secret": i.client_secret,
        }))
        .into_response(),
        None => invalid_token(),
    }
}
