//! Pieces shared by the cloud backends (`e2b`, `daytona`): the HTTP client, bounded retries,
//! provider error bodies, the sandbox's egress settings, and the exec output cap.
//!
//! Neither provider runs `sandbox-agent`: exec and files go through the provider's own
//! in-sandbox API, so these backends override every agent-based method of the trait.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use airlock_wire::{ExecEvent, ExecExit};
use bytes::Bytes;
use reqwest::{Response, StatusCode};

use super::{BackendError, SandboxSpec};
use super::{CA_ENV_VARS, NO_PROXY};
use crate::sandbox::PROXY_TLS_ENV;

/// Longest `Retry-After` honoured; a provider asking for more is treated as failing now, so a
/// request never stalls the brain for minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);

/// Env vars the credentials layer (`compose`) sets that are not credentials.
const PROXY_ENV: [&str; 4] = ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"];
const NO_PROXY_ENV: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// One reqwest client per backend: TLS with the ring provider, never a system proxy (the
/// brain's own env may carry `HTTPS_PROXY` for other purposes). No client-wide read timeout:
/// an exec may be silent for minutes; each call sets its own bound.
pub(crate) fn http_client() -> Result<reqwest::Client, BackendError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BackendError::Unavailable(format!("http client: {e}")))
}

/// Reads the API key from the env var `name`; missing or empty is a configuration error.
pub(crate) fn api_key_from_env(provider: &str, name: &str) -> Result<String, BackendError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(BackendError::Unavailable(format!(
            "{provider}: env {name} (the API key) is not set"
        ))),
    }
}

/// Bounded retries for idempotent calls: 429 (honouring `Retry-After`), 5xx, and transport
/// errors, with exponential backoff.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32, base_delay_ms: u64) -> Self {
        Self {
            attempts: max_retries.saturating_add(1),
            base_delay: Duration::from_millis(base_delay_ms),
            max_delay: Duration::from_secs(5),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Whether a status is worth retrying.
pub(crate) fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// What one attempt ended with.
pub(crate) enum Attempt {
    Response(Response),
    Transport(reqwest::Error),
}

/// Sends `make()` until it answers something not retryable or the attempts run out; returns the
/// last response (the caller maps its status) or the last transport error.
pub(crate) async fn send_with_retry(
    policy: RetryPolicy,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Attempt {
    let mut attempt = 0;
    loop {
        let result = make().send().await;
        attempt += 1;
        let last = attempt >= policy.attempts;
        let delay = match &result {
            Ok(resp) if retryable(resp.status()) && !last => match retry_after(resp) {
                Some(d) if d > MAX_RETRY_AFTER => None,
                Some(d) => Some(d),
                None => Some(policy.backoff(attempt - 1)),
            },
            Err(e) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                Some(policy.backoff(attempt - 1))
            }
            _ => None,
        };
        match (result, delay) {
            (Ok(resp), None) => return Attempt::Response(resp),
            (Err(e), None) => return Attempt::Transport(e),
            (Ok(resp), Some(delay)) => {
                tracing::debug!(status = %resp.status(), ?delay, attempt, "provider call retried");
                tokio::time::sleep(delay).await;
            }
            (Err(e), Some(delay)) => {
                tracing::debug!(error = %e, ?delay, attempt, "provider call retried");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs; treated as absent).
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    let secs: f64 = v.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A provider's error answer, reduced to what the brain reports: status, a code and the
/// provider's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProviderError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// Reads an error body: `message` as a string or a list of strings (NestJS validation), and a
/// `code` that may be a string (Connect, Daytona daemon) or a number (E2B API).
pub(crate) async fn provider_error(resp: Response) -> ProviderError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    parse_error_body(status, &text)
}

/// `code` of an answer that carries a `sandboxId` (E2B's edge: the sandbox is not routable).
pub(crate) const SANDBOX_NOT_FOUND: &str = "sandbox_not_found";

pub(crate) fn parse_error_body(status: StatusCode, text: &str) -> ProviderError {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if value["sandboxId"].is_string() {
        return ProviderError {
            status: status.as_u16(),
            code: SANDBOX_NOT_FOUND.into(),
            message: value["message"]
                .as_str()
                .unwrap_or("The sandbox was not found")
                .to_string(),
        };
    }
    let message = match &value["message"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        _ => {
            let t = text.trim();
            if t.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                t.chars().take(500).collect()
            }
        }
    };
    let code = match (&value["code"], &value["error_code"], &value["error"]) {
        (_, serde_json::Value::String(s), _) => s.clone(),
        (serde_json::Value::String(s), _, _) => s.clone(),
        (_, _, serde_json::Value::String(s)) => s.clone(),
        _ => status_code_name(status),
    };
    ProviderError {
        status: status.as_u16(),
        code,
        message,
    }
}

fn status_code_name(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_")
}

/// Maps a provider error on a control-plane call to a backend error that names the provider,
/// the call and the provider's message (the model sees it as the tool error).
pub(crate) fn control_plane_error(provider: &str, call: &str, e: ProviderError) -> BackendError {
    let text = format!(
        "{provider} {call} answered {}: {} ({})",
        e.status, e.message, e.code
    );
    match e.status {
        400 | 422 => BackendError::Invalid(text),
        404 => BackendError::NotFound(text),
        _ => BackendError::Unavailable(text),
    }
}

/// A transport failure on a control-plane call.
pub(crate) fn transport_error(provider: &str, call: &str, e: reqwest::Error) -> BackendError {
    // reqwest's Display includes the URL but never headers, so the API key stays out.
    BackendError::Unavailable(format!("{provider} {call}: {e}"))
}

/// Maps an error from the in-sandbox API (envd, toolbox) to a backend error. `gone` is the
/// provider's own judgement that the answer means "this sandbox no longer exists" (each
/// provider words it differently, and a missing *file* is a 404 too).
pub(crate) fn sandbox_api_error(provider: &str, e: ProviderError, gone: bool) -> BackendError {
    if gone {
        return BackendError::NotFound(format!("{provider}: {}", e.message));
    }
    if matches!(e.status, 401 | 403) {
        // The brain's credentials for the sandbox were refused: a backend fault, not the
        // caller's (passing the status on would tell an authenticated caller "401").
        return BackendError::Unavailable(format!(
            "{provider} refused the sandbox credentials ({}): {}",
            e.status, e.message
        ));
    }
    BackendError::Agent {
        status: e.status,
        code: e.code,
        message: format!("{provider}: {}", e.message),
    }
}

/// A `multipart/form-data` body with one file part `field` (the form every envd and Daytona
/// daemon generation accepts); returns the content type (with its boundary) and the body.
pub(crate) fn multipart_file(field: &str, path: &str, data: &[u8]) -> (String, Bytes) {
    use std::fmt::Write as _;
    // 96 random bits: the data cannot be expected to contain it.
    let mut boundary = String::from("airlock-");
    for b in rand::random::<[u8; 12]>() {
        let _ = write!(boundary, "{b:02x}");
    }
    let name = path.rsplit('/').next().unwrap_or("file").replace('"', "");
    let mut body = Vec::with_capacity(data.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

/// How a cloud sandbox reaches the vault proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteEgress {
    /// The sandbox's env, with proxy URLs pointing at the public proxy address.
    pub env: BTreeMap<String, String>,
    /// Destinations the sandbox may reach (`ip/32`, `ip/128`); empty = no egress at all.
    pub allow_cidrs: Vec<String>,
}

/// Whether a cloud sandbox can be pointed at `ip` as its vault proxy: a public IPv4 address.
/// Both providers' firewalls are IPv4-only (Daytona's `networkAllowList` takes IPv4 CIDRs;
/// E2B's nftables sets are IPv4) and E2B drops private ranges before any allow-list
/// (e2b-dev/infra `packages/shared/pkg/sandbox-network/firewall.go` `DeniedSandboxCIDRs`:
/// 10/8, 127/8, 169.254/16, 172.16/12, 192.168/16); carrier-grade NAT (100.64/10) and the
/// other special-purpose ranges are not reachable from a cloud either. The documentation
/// ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) are accepted so examples and tests can use
/// them; they fail closed (nothing answers there).
pub(crate) fn public_ipv4(ip: IpAddr) -> Result<Ipv4Addr, &'static str> {
    let IpAddr::V4(v4) = ip else {
        return Err("an IPv6 address (the providers' firewalls are IPv4-only)");
    };
    let [a, b, c, _] = v4.octets();
    let why = match (a, b, c) {
        _ if v4.is_loopback() => "a loopback address",
        _ if v4.is_private() => "a private (RFC 1918) address",
        _ if v4.is_link_local() => "a link-local address",
        _ if v4.is_unspecified() || a == 0 => "an unspecified (0.0.0.0/8) address",
        _ if v4.is_broadcast() || v4.is_multicast() || a >= 240 => {
            "a multicast, broadcast or reserved address"
        }
        (100, 64..=127, _) => "a carrier-grade NAT (100.64.0.0/10) address",
        (192, 0, 0) => "an IETF protocol assignment (192.0.0.0/24)",
        (198, 18..=19, _) => "a benchmarking (198.18.0.0/15) address",
        _ => return Ok(v4),
    };
    Err(why)
}

/// Checks `proxy_url` when the backend is built, so a brain does not start creating sandboxes
/// that can never reach the proxy: `host:port`, and an IP literal must be a public IPv4
/// address. A host name is checked again after each resolution (at provision).
pub(crate) fn validate_proxy_url(
    provider: &str,
    config_key: &str,
    proxy_url: Option<&str>,
) -> Result<(), BackendError> {
    let Some(proxy) = proxy_url.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let (host, _) = split_host_port(proxy).ok_or_else(|| {
        BackendError::Invalid(format!(
            "{provider}: `{config_key}` must be host:port, got `{proxy}`"
        ))
    })?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        public_ipv4(ip).map_err(|why| {
            BackendError::Invalid(format!(
                "{provider}: `{config_key}` = `{proxy}` is {why}; the {provider} cloud reaches \
                 only public IPv4 addresses, so name the vault proxy's public IPv4 address or \
                 host name"
            ))
        })?;
    }
    Ok(())
}

/// Decides a cloud sandbox's egress. The brain's proxy URL names an address the cloud cannot
/// reach (loopback, embedded proxy), so it is rewritten to `proxy_url` (`host:port`, the
/// proxy as the cloud reaches it), resolved here to IPs so the sandbox needs no DNS and the
/// provider's firewall can be an IP allow-list. Fails closed: credentials with no reachable
/// proxy are refused; without a proxy a sandbox gets no egress at all.
pub(crate) async fn remote_egress(
    provider: &str,
    config_key: &str,
    proxy_url: Option<&str>,
    max_allow_entries: usize,
    spec: &SandboxSpec,
) -> Result<RemoteEgress, BackendError> {
    let mut env = spec.env.clone();
    let has_grant = PROXY_ENV.iter().any(|k| env.contains_key(*k));
    let credentials: Vec<&str> = spec
        .env
        .keys()
        .map(String::as_str)
        .filter(|k| !PROXY_ENV.contains(k) && !NO_PROXY_ENV.contains(k))
        .filter(|k| !CA_ENV_VARS.contains(k) && !PROXY_TLS_ENV.contains(k))
        .collect();
    let proxy = proxy_url.map(str::trim).filter(|p| !p.is_empty());
    let Some(proxy) = proxy.filter(|_| has_grant) else {
        if has_grant && !credentials.is_empty() {
            return Err(BackendError::Invalid(format!(
                "{provider}: credentials ({}) need a vault proxy the {provider} cloud can reach; \
                 set `{config_key}` (and run the vault proxy with `vault.mode: remote` on a \
                 public address)",
                credentials.join(", ")
            )));
        }
        // Nothing to reach: drop proxy settings that name a brain-local address.
        for k in PROXY_ENV
            .iter()
            .chain(NO_PROXY_ENV.iter())
            .chain(PROXY_TLS_ENV.iter())
        {
            env.remove(*k);
        }
        return Ok(RemoteEgress {
            env,
            allow_cidrs: Vec::new(),
        });
    };
    // The grant's proxy URL carries the sandbox's proxy token (`Proxy-Authorization` on every
    // CONNECT): across the internet it must be TLS (issue 10). Fails closed, no opt-out.
    if let Some(k) = PROXY_ENV
        .iter()
        .find(|k| env.get(**k).is_some_and(|url| !url.starts_with("https://")))
    {
        return Err(BackendError::Invalid(format!(
            "{provider}: the vault proxy URL the sandbox would get (`{k}`) is plain http: its \
             proxy token and CONNECT lines would cross the internet to `{config_key}` in clear. \
             Give the vault proxy a TLS listener: with the embedded vault add `tls: {{cert, \
             key}}` and `listen_tls` to its vault.yaml (`vault.config`) and point `{config_key}` \
             at listen_tls's public address; with `vault.mode: remote` set `vault.remote.tls_url`"
        )));
    }
    let (host, port) = split_host_port(proxy).ok_or_else(|| {
        BackendError::Invalid(format!(
            "{provider}: `{config_key}` must be host:port, got `{proxy}`"
        ))
    })?;
    let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let mut ips: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| {
                    BackendError::Unavailable(format!(
                        "{provider}: resolving the vault proxy `{host}`: {e}"
                    ))
                })?
                .map(|a| a.ip())
                .collect();
            ips.sort();
            ips.dedup();
            ips
        }
    };
    // Only public IPv4 addresses can be allowed (see `public_ipv4`); IPv6 ones are dropped,
    // a non-public one is a configuration error (the sandbox could never reach it).
    let mut v4 = Vec::new();
    for ip in &ips {
        match public_ipv4(*ip) {
            Ok(a) => v4.push(a),
            Err(_) if ip.is_ipv6() => {}
            Err(why) => {
                return Err(BackendError::Invalid(format!(
                    "{provider}: the vault proxy `{host}` (`{config_key}`) resolves to {ip}, \
                     {why}; the {provider} cloud reaches only public IPv4 addresses"
                )));
            }
        }
    }
    let Some(first) = v4.first().copied() else {
        return Err(BackendError::Invalid(format!(
            "{provider}: the vault proxy `{host}` (`{config_key}`) has no public IPv4 address"
        )));
    };
    if v4.len() > max_allow_entries {
        return Err(BackendError::Invalid(format!(
            "{provider}: the vault proxy `{host}` resolves to {} addresses; the {provider} \
             allow-list takes at most {max_allow_entries}: name one address in `{config_key}`",
            v4.len()
        )));
    }
    let authority = format!("{first}:{port}");
    for k in PROXY_ENV {
        if let Some(url) = env.get_mut(k) {
            *url = with_authority(url, &authority);
        }
    }
    for k in NO_PROXY_ENV {
        env.insert(k.into(), NO_PROXY.into());
    }
    let allow_cidrs = v4.iter().map(|ip| format!("{ip}/32")).collect();
    Ok(RemoteEgress { env, allow_cidrs })
}

/// `host:port`, also accepting a `http://` or `https://` prefix and a trailing `/` (the
/// scheme the sandbox uses comes from the grant's proxy URL, not from here).
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s)
        .trim_end_matches('/');
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// Replaces the `host:port` of `http://user:pass@host:port` (userinfo kept).
fn with_authority(url: &str, authority: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let userinfo = rest.rsplit_once('@').map(|(u, _)| u);
    match userinfo {
        Some(u) => format!("{scheme}://{u}@{authority}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// Caps exec output at `max` bytes of stdout + stderr (beyond it output is dropped and the
/// exit says `truncated`), and turns byte chunks into UTF-8 text without splitting a
/// multi-byte character across two events.
#[derive(Debug)]
pub(crate) struct OutputCap {
    remaining: u64,
    truncated: bool,
    stdout_tail: Vec<u8>,
    stderr_tail: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Stdout,
    Stderr,
}

impl OutputCap {
    pub fn new(max: u64) -> Self {
        Self {
            remaining: max,
            truncated: false,
            stdout_tail: Vec::new(),
            stderr_tail: Vec::new(),
        }
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The event for a chunk, or `None` when nothing of it is kept (or only a partial
    /// character, held for the next chunk).
    pub fn push(&mut self, channel: Channel, bytes: &[u8]) -> Option<ExecEvent> {
        let keep = (bytes.len() as u64).min(self.remaining) as usize;
        if keep < bytes.len() {
            self.truncated = true;
        }
        self.remaining -= keep as u64;
        let tail = match channel {
            Channel::Stdout => &mut self.stdout_tail,
            Channel::Stderr => &mut self.stderr_tail,
        };
        tail.extend_from_slice(&bytes[..keep]);
        let text = take_utf8(tail, self.truncated);
        (!text.is_empty()).then(|| event(channel, text))
    }

    /// Whatever partial characters are left (as replacement characters), then nothing.
    pub fn flush(&mut self) -> Vec<ExecEvent> {
        let mut out = Vec::new();
        for (channel, tail) in [
            (Channel::Stdout, &mut self.stdout_tail),
            (Channel::Stderr, &mut self.stderr_tail),
        ] {
            if !tail.is_empty() {
                out.push(event(channel, String::from_utf8_lossy(tail).into_owned()));
                tail.clear();
            }
        }
        out
    }
}

fn event(channel: Channel, data: String) -> ExecEvent {
    match channel {
        Channel::Stdout => ExecEvent::Stdout { data },
        Channel::Stderr => ExecEvent::Stderr { data },
    }
}

/// Takes the valid UTF-8 text of `buf`, keeping an incomplete trailing character for the next
/// chunk, or dropping it when `at_end` (output was cut there).
fn take_utf8(buf: &mut Vec<u8>, at_end: bool) -> String {
    let cut = match std::str::from_utf8(buf) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => buf.len(),
    };
    let rest = buf.split_off(cut);
    let text = String::from_utf8_lossy(buf).into_owned();
    buf.clear();
    if !at_end {
        *buf = rest;
    }
    text
}

/// The exit event of an exec.
pub(crate) fn exit_event(
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    truncated: bool,
    started: std::time::Instant,
) -> ExecEvent {
    ExecEvent::Exit(ExecExit {
        exit_code,
        signal,
        timed_out,
        truncated,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(env: &[(&str, &str)]) -> SandboxSpec {
        SandboxSpec {
            id: "sb-1".into(),
            owner: "o".into(),
            image: None,
            resources: Default::default(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: vec![("/etc/airlock/ca.pem".into(), Bytes::from_static(b"PEM"))],
            agent_token: "t".into(),
            ttl_s: 60,
            workspace: None,
            cache_tenant: None,
        }
    }

    const GRANT: [(&str, &str); 3] = [
        ("HTTPS_PROXY", "https://sb-1:tok@127.0.0.1:41443"),
        ("NO_PROXY", "localhost"),
        ("SSL_CERT_FILE", "/etc/airlock/ca.pem"),
    ];

    #[tokio::test]
    async fn egress_points_the_proxy_env_at_the_public_proxy_and_allows_only_it() {
        let s = spec(&GRANT);
        let e = remote_egress(
            "e2b",
            "sandbox.e2b.proxy_url",
            Some("203.0.113.7:8899"),
            10,
            &s,
        )
        .await
        .unwrap();
        assert_eq!(e.env["HTTPS_PROXY"], "https://sb-1:tok@203.0.113.7:8899");
        assert_eq!(e.env["SSL_CERT_FILE"], "/etc/airlock/ca.pem");
        assert_eq!(e.allow_cidrs, ["203.0.113.7/32"]);
    }

    /// Issue 10: a grant whose proxy URL is plain http never reaches a cloud sandbox, with or
    /// without credentials (the proxy token alone is a bearer credential for its egress);
    /// the error names the fix.
    #[tokio::test]
    async fn a_plain_http_proxy_url_is_refused_for_cloud_sandboxes() {
        for (creds, provider) in [(false, "e2b"), (true, "e2b"), (true, "daytona")] {
            let mut env = vec![
                ("HTTPS_PROXY", "https://sb-1:tok@127.0.0.1:41443"),
                ("http_proxy", "http://sb-1:tok@127.0.0.1:41000"),
            ];
            if creds {
                env.push(("GITHUB_TOKEN", "ghp_stub"));
            }
            let err = remote_egress(
                provider,
                "sandbox.x.proxy_url",
                Some("203.0.113.7:8443"),
                10,
                &spec(&env),
            )
            .await
            .unwrap_err();
            assert!(matches!(err, BackendError::Invalid(_)), "{err}");
            let msg = err.to_string();
            for needle in [
                "plain http",
                "http_proxy",
                "listen_tls",
                "vault.remote.tls_url",
                "sandbox.x.proxy_url",
            ] {
                assert!(msg.contains(needle), "{needle}: {msg}");
            }
            assert!(
                !msg.contains("tok@"),
                "the token is not in the error: {msg}"
            );
        }
    }

    /// Remote mode over TLS (issue 10): the grant's proxy URL is `https://…` (the proxy's
    /// `listen_tls`), so `Proxy-Authorization` never crosses the internet in clear. The
    /// rewrite to the public address keeps that scheme for both providers, and a
    /// `proxy_url` written with `https://` names the same listener.
    #[tokio::test]
    async fn a_tls_proxy_url_stays_tls_for_cloud_sandboxes() {
        let grant = [
            ("HTTPS_PROXY", "https://sb-1:tok@127.0.0.1:41443"),
            ("HTTP_PROXY", "https://sb-1:tok@127.0.0.1:41443"),
            ("SSL_CERT_FILE", "/etc/airlock/ca.pem"),
        ];
        for (provider, proxy_url) in [
            ("e2b", "203.0.113.7:8443"),
            ("daytona", "https://203.0.113.7:8443/"),
        ] {
            let e = remote_egress(provider, "k", Some(proxy_url), 10, &spec(&grant))
                .await
                .unwrap_or_else(|err| panic!("{provider} {proxy_url}: {err}"));
            for k in ["HTTPS_PROXY", "HTTP_PROXY"] {
                assert_eq!(e.env[k], "https://sb-1:tok@203.0.113.7:8443", "{provider}");
            }
            assert_eq!(e.allow_cidrs, ["203.0.113.7/32"], "{provider}");
        }
        assert!(
            validate_proxy_url(
                "e2b",
                "sandbox.e2b.proxy_url",
                Some("https://127.0.0.1:8443")
            )
            .is_err(),
            "an https prefix is no way around the public-address check"
        );
    }

    #[tokio::test]
    async fn credentials_without_a_reachable_proxy_are_refused_and_no_proxy_means_no_egress() {
        let mut env = GRANT.to_vec();
        env.push(("GITHUB_TOKEN", "ghp_stub"));
        let err = remote_egress("e2b", "sandbox.e2b.proxy_url", None, 10, &spec(&env))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("GITHUB_TOKEN"), "{err}");
        assert!(err.to_string().contains("sandbox.e2b.proxy_url"), "{err}");

        let e = remote_egress("e2b", "k", None, 10, &spec(&GRANT))
            .await
            .unwrap();
        assert!(e.allow_cidrs.is_empty());
        assert!(!e.env.contains_key("HTTPS_PROXY"));
        // No grant at all (vault off): a configured proxy is not opened either.
        let e = remote_egress("e2b", "k", Some("203.0.113.7:1"), 10, &spec(&[]))
            .await
            .unwrap();
        assert!(e.allow_cidrs.is_empty());
        let err = remote_egress("e2b", "k", Some("no-port"), 10, &spec(&GRANT))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
    }

    /// E2B's always-denied ranges (infra `sandbox-network/firewall.go` `DeniedSandboxCIDRs`),
    /// carrier-grade NAT, IPv6 (both providers' firewalls are IPv4-only), and public ones.
    #[test]
    fn only_public_ipv4_proxies_are_accepted() {
        let table: &[(&str, bool)] = &[
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("127.0.0.1", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.254", false),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("100.127.255.254", false),
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("240.0.0.1", false),
            ("192.0.0.8", false),
            ("198.18.0.1", false),
            ("::1", false),
            ("2001:4860:4860::8888", false),
            ("fc00::1", false),
            ("172.32.0.1", true),
            ("100.128.0.1", true),
            ("8.8.8.8", true),
            ("203.0.113.7", true),
            ("198.51.100.1", true),
        ];
        for (ip, public) in table {
            let got = public_ipv4(ip.parse().unwrap());
            assert_eq!(got.is_ok(), *public, "{ip}: {got:?}");
        }
        for (url, ok) in [
            (Some("203.0.113.7:8899"), true),
            (Some("http://203.0.113.7:8899/"), true),
            (Some("vault.example.com:8899"), true),
            (None, true),
            (Some("127.0.0.1:3128"), false),
            (Some("10.1.2.3:3128"), false),
            (Some("100.64.1.1:3128"), false),
            (Some("[2001:db8::1]:3128"), false),
            (Some("203.0.113.7"), false),
        ] {
            let r = validate_proxy_url("daytona", "sandbox.daytona.proxy_url", url);
            assert_eq!(r.is_ok(), ok, "{url:?}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("sandbox.daytona.proxy_url"), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn resolved_proxies_must_be_public_and_fit_the_allow_list() {
        let err = remote_egress("daytona", "k", Some("localhost:3128"), 10, &spec(&GRANT))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("public IPv4"), "{err}");
        let e = remote_egress("e2b", "k", Some("203.0.113.7:1"), 0, &spec(&GRANT))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("at most 0"), "{e}");
    }

    #[test]
    fn output_cap_truncates_and_keeps_characters_whole() {
        let mut cap = OutputCap::new(5);
        // "é" is two bytes; the first chunk ends in its middle.
        assert_eq!(
            cap.push(Channel::Stdout, b"a\xc3"),
            Some(event(Channel::Stdout, "a".into()))
        );
        assert_eq!(
            cap.push(Channel::Stdout, b"\xa9bcdef"),
            Some(event(Channel::Stdout, "\u{e9}bc".into()))
        );
        assert!(cap.truncated());
        assert_eq!(cap.push(Channel::Stderr, b"zzz"), None);
        assert!(cap.flush().is_empty());
    }

    #[test]
    fn error_bodies_of_both_providers_are_read() {
        let e = parse_error_body(
            StatusCode::UNAUTHORIZED,
            r#"{"code":401,"message":"Invalid API key"}"#,
        );
        assert_eq!(e.message, "Invalid API key");
        assert_eq!(e.code, "unauthorized");
        let e = parse_error_body(
            StatusCode::BAD_REQUEST,
            r#"{"statusCode":400,"error":"Bad Request","message":["property x should not exist","y"]}"#,
        );
        assert_eq!(e.message, "property x should not exist; y");
        assert_eq!(e.code, "Bad Request");
        let e = parse_error_body(StatusCode::BAD_GATEWAY, "upstream down");
        assert_eq!(e.message, "upstream down");
    }

    #[test]
    fn in_sandbox_api_errors_map_by_cause() {
        let e = |status: u16, code: &str, message: &str| ProviderError {
            status,
            code: code.into(),
            message: message.into(),
        };
        assert!(matches!(
            sandbox_api_error("e2b", e(401, "unauthenticated", "bad token"), false),
            BackendError::Unavailable(m) if m.contains("bad token")
        ));
        assert!(matches!(
            sandbox_api_error(
                "e2b",
                e(502, SANDBOX_NOT_FOUND, "The sandbox was not found"),
                true
            ),
            BackendError::NotFound(_)
        ));
        assert!(matches!(
            sandbox_api_error(
                "daytona",
                e(404, "FILE_NOT_FOUND", "file not found: /a"),
                false
            ),
            BackendError::Agent { status: 404, .. }
        ));
        // The edge's body is recognised by its `sandboxId`, whatever its status.
        let edge = parse_error_body(
            StatusCode::BAD_GATEWAY,
            r#"{"sandboxId":"abc","message":"The sandbox was not found","code":502}"#,
        );
        assert_eq!(edge.code, SANDBOX_NOT_FOUND);
    }

    #[test]
    fn multipart_bodies_carry_one_file_part() {
        let (ct, body) = multipart_file("file", "/etc/airlock/ca.pem", b"PEM\r\n--x");
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"file\"; filename=\"ca.pem\""));
        assert!(text.contains("\r\n\r\nPEM\r\n--x\r\n"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }

    #[test]
    fn proxy_urls_keep_their_userinfo() {
        assert_eq!(
            with_authority("http://sb:tok@127.0.0.1:1", "[::1]:2"),
            "http://sb:tok@[::1]:2"
        );
        assert_eq!(
            split_host_port("http://[::1]:8899/"),
            Some(("::1".into(), 8899))
        );
    }
}
