//! A local fake of GitHub over HTTPS: the REST calls the GitHub trigger makes and git smart
//! HTTP (clone and push, served by `git http-backend` against bare repositories in a temp
//! dir). One listener on `127.0.0.1` with a certificate for `api.github.test`, `github.test`
//! and `127.0.0.1`, signed by a throwaway CA ([`FakeGithub::ca_pem`]).
//!
//! REST, as GitHub documents it: `Authorization: Bearer <token>` (or `token <token>`), a
//! `User-Agent` (403 without), `401 {"message":"Bad credentials","documentation_url",…}` for
//! an unknown token;
//! - `GET /repos/{owner}/{repo}/collaborators/{user}/permission` → `200 {"permission",
//!   "role_name","user"}` (`none` for a known non-collaborator, 404 for an unknown user);
//! - `POST /repos/{owner}/{repo}/issues/{n}/comments {body}` → `201 {id,html_url,body,user}`;
//! - `POST /repos/{owner}/{repo}/pulls {title,head,base,body,draft}` → `201 {number,html_url,
//!   draft,head,base,…}`; `422 Validation Failed` when `head` does not exist or already has
//!   a pull request.
//!
//! Git: `/{owner}/{repo}.git/…` needs `Authorization: Basic` whose password is a known
//! token; without credentials it answers 401 with `WWW-Authenticate: Basic`, like GitHub.
//!
//! GitHub Apps ([`FakeGithub::install_app`]): `POST /app/installations/{id}/access_tokens`
//! with an App JWT → `201 {token, expires_at, permissions, repository_selection}`; see
//! [`app`] for what is verified. Installation tokens are accepted (REST and git) until they
//! expire.
//!
//! Every request is recorded with its `Authorization` header, so a test can show which
//! token reached the host.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

pub const API_HOST: &str = "api.github.test";
pub const GIT_HOST: &str = "github.test";
const DOCS: &str = "https://docs.github.com/rest";

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct GithubSeen {
    pub method: String,
    pub host: String,
    pub path: String,
    pub authorization: Option<String>,
    /// The token the request authenticated with, if it was a known one.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IssueComment {
    pub repo: String,
    pub issue: u64,
    pub body: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PullRequest {
    pub repo: String,
    pub number: u64,
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: String,
    pub draft: bool,
    pub token: String,
}

#[derive(Default)]
struct Inner {
    tokens: HashSet<String>,
    /// user → permission, per repo full name.
    permissions: HashMap<(String, String), String>,
    users: HashSet<String>,
    seen: Vec<GithubSeen>,
    comments: Vec<IssueComment>,
    pulls: Vec<PullRequest>,
    /// Comment calls to fail with 503 before succeeding.
    fail_comments: usize,
    next_id: u64,
    /// The installed App, if any.
    app: Option<app::InstalledApp>,
    /// Installation tokens issued, in order, with their expiry.
    installation_tokens: Vec<(String, std::time::Instant)>,
    /// App JWTs refused (bad signature, claims, app id).
    jwt_rejections: Vec<String>,
}

impl Inner {
    /// Whether `token` authenticates: a configured token or an unexpired installation token.
    fn accepts(&self, token: &str) -> bool {
        self.tokens.contains(token)
            || self
                .installation_tokens
                .iter()
                .any(|(t, exp)| t == token && std::time::Instant::now() < *exp)
    }
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    root: Arc<PathBuf>,
    port: u16,
}

/// A running fake; serves until the runtime stops. Its repositories live in a temp dir that
/// is removed when the last clone of this handle is dropped.
#[derive(Clone)]
pub struct FakeGithub {
    pub port: u16,
    /// PEM of the CA that signed the fake's certificate.
    pub ca_pem: String,
    shared: Shared,
    _dir: Arc<tempfile::TempDir>,
}

impl FakeGithub {
    /// Starts the fake; `tokens` are the tokens it accepts (REST and git).
    pub async fn start(tokens: &[&str]) -> Self {
        crate::install_crypto_provider();
        let (ca_pem, tls) = tls_config();
        let dir = tempfile::Builder::new()
            .prefix("fake-github-")
            .tempdir()
            .expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake GitHub");
        let port = listener.local_addr().expect("address").port();
        let inner = Inner {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            next_id: 1000,
            ..Inner::default()
        };
        let shared = Shared {
            inner: Arc::new(Mutex::new(inner)),
            root: Arc::new(dir.path().to_path_buf()),
            port,
        };
        let app = axum::Router::new()
            .route(
                "/repos/{owner}/{repo}/collaborators/{user}/permission",
                get(permission),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                post(create_comment),
            )
            .route("/repos/{owner}/{repo}/pulls", post(create_pull))
            .route(
                "/app/installations/{installation_id}/access_tokens",
                post(app::create_installation_token),
            )
            .fallback(git_or_404)
            .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
            .with_state(shared.clone());
        tokio::spawn(serve(listener, tokio_rustls::TlsAcceptor::from(tls), app));
        Self {
            port,
            ca_pem,
            shared,
            _dir: Arc::new(dir),
        }
    }

    /// `https://127.0.0.1:PORT` (the brain's own client reaches the fake directly).
    pub fn direct_api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `https://api.github.test:PORT` (sandboxes, through the vault proxy).
    pub fn api_url(&self) -> String {
        format!("https://{API_HOST}:{}", self.port)
    }

    /// `github.test:PORT`.
    pub fn git_host(&self) -> String {
        format!("{GIT_HOST}:{}", self.port)
    }

    /// Creates `owner/repo` with one commit on `main` (a README).
    pub fn create_repo(&self, owner: &str, repo: &str) {
        let bare = self.bare_path(owner, repo);
        std::fs::create_dir_all(&bare).expect("repo dir");
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work = tempfile::tempdir().expect("seed dir");
        git(work.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(work.path().join("README.md"), format!("# {repo}\n")).expect("readme");
        git(work.path(), &["add", "README.md"]);
        git(
            work.path(),
            &[
                "-c",
                "user.name=seed",
                "-c",
                "user.email=seed@localhost",
                "commit",
                "-q",
                "-m",
                "init",
            ],
        );
        git(
            work.path(),
            &["push", "-q", bare.to_str().expect("utf-8 path"), "main"],
        );
    }

    /// Gives `user` a permission (`admin`, `write`, `read`, `none`) on `owner/repo`.
    pub fn set_permission(&self, repo: &str, user: &str, permission: &str) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.users.insert(user.to_string());
        inner
            .permissions
            .insert((repo.to_string(), user.to_string()), permission.to_string());
    }

    /// Makes the next `n` comment calls fail with 503.
    pub fn fail_next_comments(&self, n: usize) {
        self.shared.inner.lock().unwrap().fail_comments += n;
    }

    pub fn seen(&self) -> Vec<GithubSeen> {
        self.shared.inner.lock().unwrap().seen.clone()
    }

    pub fn comments(&self) -> Vec<IssueComment> {
        self.shared.inner.lock().unwrap().comments.clone()
    }

    pub fn pulls(&self) -> Vec<PullRequest> {
        self.shared.inner.lock().unwrap().pulls.clone()
    }

    /// The content of `path` on `branch`, if both exist.
    pub fn file_on_branch(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
        path: &str,
    ) -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(self.bare_path(owner, repo))
            .args(["show", &format!("refs/heads/{branch}:{path}")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs a GitHub App: its id, one installation, the App's public key (PKCS#1
    /// `RSAPublicKey` DER, e.g. `openssl rsa -RSAPublicKey_out -outform DER`) and the
    /// lifetime of the installation tokens it issues (GitHub: one hour).
    pub fn install_app(
        &self,
        app_id: u64,
        installation_id: u64,
        public_key_der: Vec<u8>,
        token_ttl: std::time::Duration,
    ) {
        self.shared.inner.lock().unwrap().app = Some(app::InstalledApp {
            app_id,
            installation_id,
            public_key_der,
            token_ttl,
        });
    }

    /// Installation tokens issued so far, oldest first.
    pub fn installation_tokens(&self) -> Vec<String> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .installation_tokens
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Why App JWTs were refused, in order.
    pub fn jwt_rejections(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().jwt_rejections.clone()
    }

    fn bare_path(&self, owner: &str, repo: &str) -> PathBuf {
        self.shared.root.join(owner).join(format!("{repo}.git"))
    }
}

/// `sha256=<hex>` HMAC-SHA256 of `body`, as GitHub signs webhook deliveries.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!(
        "sha256={}",
        crate::fake_slack::hex(ring::hmac::sign(&key, body).as_ref())
    )
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_config() -> (String, Arc<rustls::ServerConfig>) {
    tls_config_for(&[API_HOST, GIT_HOST, "127.0.0.1"])
}

/// A throwaway CA (PEM) and a server config for a leaf naming `names` (HTTP/1.1).
pub(crate) fn tls_config_for(names: &[&str]) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake GitHub test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, names[0]);
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca_cert.pem(), Arc::new(config))
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The token a request carries: `Bearer x`, `token x`, or the password of `Basic`.
fn presented_token(auth: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, value) = auth.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Some(value.trim().to_string()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            Some(text.split_once(':')?.1.to_string())
        }
        _ => None,
    }
}

async fn record(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    {
        let mut inner = shared.inner.lock().unwrap();
        let token = authorization
            .as_deref()
            .and_then(presented_token)
            .filter(|t| inner.accepts(t));
        inner.seen.push(GithubSeen {
            method: request.method().to_string(),
            host,
            path: request.uri().path().to_string(),
            authorization,
            token,
        });
    }
    next.run(request).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"message": message, "documentation_url": DOCS, "status": status.as_u16().to_string()})),
    )
        .into_response()
}

/// REST auth: a known token and a User-Agent. Returns the token, or GitHub's refusal.
fn rest_auth(shared: &Shared, headers: &HeaderMap) -> Result<String, (StatusCode, &'static str)> {
    if !headers.contains_key("user-agent") {
        return Err((
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        ));
    }
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err((StatusCode::UNAUTHORIZED, "Requires authentication"));
    };
    match presented_token(auth) {
        Some(t) if shared.inner.lock().unwrap().accepts(&t) => Ok(t),
        _ => Err((StatusCode::UNAUTHORIZED, "Bad credentials")),
    }
}

fn repo_exists(shared: &Shared, owner: &str, repo: &str) -> bool {
    shared.root.join(owner).join(format!("{repo}.git")).is_dir()
}

async fn permission(
    State(shared): State<Shared>,
    UrlPath((owner, repo, user)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, message)) = rest_auth(&shared, &headers) {
        return error(status, message);
    }
    if !repo_exists(&shared, &owner, &repo) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let inner = shared.inner.lock().unwrap();
    if !inner.users.contains(&user) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let permission = inner
        .permissions
        .get(&(format!("{owner}/{repo}"), user.clone()))
        .cloned()
        .unwrap_or_else(|| "none".into());
    axum::Json(json!({
        "permission": permission,
        "role_name": permission,
        "user": {"login": user, "type": "User"},
    }))
    .into_response()
}

async fn create_comment(
    State(shared): State<Shared>,
    UrlPath((owner, repo, number)): UrlPath<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = match rest_auth(&shared, &headers) {
        Ok(t) => t,
        Err((status, message)) => return error(status, message),
    };
    if !repo_exists(&shared, &owner, &repo) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let mut inner = shared.inner.lock().unwrap();
    if inner.fail_comments > 0 {
        inner.fail_comments -= 1;
        return error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(text) = parsed["body"].as_str() else {
        return validation_failed("IssueComment", "body", "missing_field");
    };
    inner.next_id += 1;
    let id = inner.next_id;
    inner.comments.push(IssueComment {
        repo: format!("{owner}/{repo}"),
        issue: number,
        body: text.to_string(),
        token,
    });
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "id": id,
            "html_url": format!("https://{GIT_HOST}/{owner}/{repo}/issues/{number}#issuecomment-{id}"),
            "body": text,
            "user": {"login": "airlock-bot", "type": "Bot"},
        })),
    )
        .into_response()
}

fn validation_failed(resource: &str, field: &str, code: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({
            "message": "Validation Failed",
            "errors": [{"resource": resource, "field": field, "code": code}],
            "documentation_url": DOCS,
            "status": "422",
        })),
    )
        .into_response()
}

async fn create_pull(
    State(shared): State<Shared>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = match rest_auth(&shared, &headers) {
        Ok(t) => t,
        Err((status, message)) => return error(status, message),
    };
    if !repo_exists(&shared, &owner, &repo) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(title), Some(head), Some(base)) = (
        parsed["title"].as_str(),
        parsed["head"].as_str(),
        parsed["base"].as_str(),
    ) else {
        return validation_failed("PullRequest", "head", "missing_field");
    };
    let bare = shared.root.join(&owner).join(format!("{repo}.git"));
    let branch_exists = |b: &str| {
        Command::new("git")
            .arg("--git-dir")
            .arg(&bare)
            .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !branch_exists(head) {
        return validation_failed("PullRequest", "head", "invalid");
    }
    if !branch_exists(base) {
        return validation_failed("PullRequest", "base", "invalid");
    }
    let mut inner = shared.inner.lock().unwrap();
    let full = format!("{owner}/{repo}");
    if inner.pulls.iter().any(|p| p.repo == full && p.head == head) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "message": "Validation Failed",
                "errors": [{"resource": "PullRequest", "code": "custom",
                            "message": format!("A pull request already exists for {owner}:{head}.")}],
                "documentation_url": DOCS,
                "status": "422",
            })),
        )
            .into_response();
    }
    let number = inner.pulls.iter().filter(|p| p.repo == full).count() as u64 + 1;
    let draft = parsed["draft"].as_bool().unwrap_or(false);
    let pr_body = parsed["body"].as_str().unwrap_or("").to_string();
    inner.pulls.push(PullRequest {
        repo: full,
        number,
        title: title.to_string(),
        head: head.to_string(),
        base: base.to_string(),
        body: pr_body.clone(),
        draft,
        token,
    });
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "id": 5000 + number,
            "number": number,
            "state": "open",
            "draft": draft,
            "title": title,
            "body": pr_body,
            "html_url": format!("https://{GIT_HOST}/{owner}/{repo}/pull/{number}"),
            "url": format!("https://{API_HOST}:{}/repos/{owner}/{repo}/pulls/{number}", shared.port),
            "head": {"ref": head, "label": format!("{owner}:{head}")},
            "base": {"ref": base, "label": format!("{owner}:{base}")},
        })),
    )
        .into_response()
}

/// `/{owner}/{repo}.git/…` → `git http-backend` (CGI); anything else 404.
async fn git_or_404(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let is_git = path.contains(".git/")
        && (path.ends_with("/info/refs")
            || path.ends_with("/git-upload-pack")
            || path.ends_with("/git-receive-pack"));
    if !is_git {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token);
    let known = token
        .as_ref()
        .is_some_and(|t| shared.inner.lock().unwrap().accepts(t));
    if !known {
        let mut resp = (StatusCode::UNAUTHORIZED, "Invalid username or token.\n").into_response();
        resp.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"GitHub\"".parse().expect("static header"),
        );
        return resp;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", shared.root.as_path())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let Ok(mut child) = cmd.spawn() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend failed to start",
        );
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        let _ = stdin.shutdown().await;
    });
    let Ok(out) = child.wait_with_output().await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed");
    };
    let _ = writer.await;
    cgi_response(&out.stdout)
}

/// Turns CGI output (headers, blank line, body) into a response.
fn cgi_response(out: &[u8]) -> Response {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        });
    let Some((head_end, body_start)) = split else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad CGI output");
    };
    let head = String::from_utf8_lossy(&out[..head_end]);
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            builder = builder.status(code);
        } else {
            builder = builder.header(k, v);
        }
    }
    builder
        .body(Body::from(out[body_start..].to_vec()))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "bad CGI headers"))
}

/// GitHub App installation tokens, after GitHub's docs:
/// - "Generating a JSON Web Token (JWT) for a GitHub App"
///   (docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/
///   generating-a-json-web-token-jwt-for-a-github-app): RS256; `iat` ("60 seconds in the
///   past to allow for clock drift"); `exp` "no more than 10 minutes into the future";
///   `iss` the App's client id or App id. GitHub answers 401 with a message when the JWT
///   cannot be decoded or verified or its times are off.
/// - "Create an installation access token for an app" (docs.github.com/en/rest/apps/
///   apps#create-an-installation-access-token-for-an-app): `POST /app/installations/
///   {installation_id}/access_tokens` → `201 {token, expires_at, permissions,
///   repository_selection}`; 401 (bad JWT), 404 (no such installation). "Installation
///   access tokens expire after one hour."
pub mod app {
    use super::*;
    use base64::Engine as _;

    pub(super) struct InstalledApp {
        pub app_id: u64,
        pub installation_id: u64,
        pub public_key_der: Vec<u8>,
        pub token_ttl: std::time::Duration,
    }

    fn b64(s: &str) -> Option<Vec<u8>> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
    }

    /// Verifies the App JWT as GitHub does; `Err` is GitHub's 401 message.
    fn verify_jwt(app: &InstalledApp, jwt: &str, now: i64) -> Result<(), String> {
        let undecodable = || "A JSON web token could not be decoded".to_string();
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 {
            return Err(undecodable());
        }
        let header: Value = serde_json::from_slice(&b64(parts[0]).ok_or_else(undecodable)?)
            .map_err(|_| undecodable())?;
        if header["alg"] != "RS256" {
            return Err(undecodable());
        }
        let sig = b64(parts[2]).ok_or_else(undecodable)?;
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &app.public_key_der,
        );
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .map_err(|_| "A JSON web token could not be decoded".to_string())?;
        let claims: Value = serde_json::from_slice(&b64(parts[1]).ok_or_else(undecodable)?)
            .map_err(|_| undecodable())?;
        let iss_ok = match &claims["iss"] {
            Value::String(s) => s == &app.app_id.to_string(),
            Value::Number(n) => n.as_u64() == Some(app.app_id),
            _ => false,
        };
        if !iss_ok {
            return Err("Integration not found".into());
        }
        let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
            return Err(undecodable());
        };
        if iat > now {
            return Err("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued.".into());
        }
        if exp <= now {
            return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires.".into());
        }
        if exp > now + 600 {
            return Err("'Expiration time' claim ('exp') is too far in the future.".into());
        }
        Ok(())
    }

    pub(super) async fn create_installation_token(
        State(shared): State<Shared>,
        UrlPath(installation_id): UrlPath<String>,
        headers: HeaderMap,
    ) -> Response {
        let now = chrono::Utc::now();
        let mut inner = shared.inner.lock().unwrap();
        let Some(app) = inner.app.as_ref() else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        let jwt = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if let Err(message) = verify_jwt(app, jwt.trim(), now.timestamp()) {
            inner.jwt_rejections.push(message.clone());
            return error(StatusCode::UNAUTHORIZED, &message);
        }
        if installation_id.parse::<u64>().ok() != Some(app.installation_id) {
            return error(StatusCode::NOT_FOUND, "Not Found");
        }
        let ttl = app.token_ttl;
        let token = format!("ghs_{}", random_alnum(36));
        inner
            .installation_tokens
            .push((token.clone(), std::time::Instant::now() + ttl));
        let expires_at = now + chrono::Duration::from_std(ttl).expect("ttl");
        (
            StatusCode::CREATED,
            axum::Json(json!({
                "token": token,
                "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "permissions": {"contents": "write", "metadata": "read", "pull_requests": "write"},
                "repository_selection": "all",
            })),
        )
            .into_response()
    }

    fn random_alnum(n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut bytes = vec![0u8; n];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("random");
        bytes
            .iter()
            .map(|b| A[*b as usize % A.len()] as char)
            .collect()
    }
}
