//! The proxy's own calls to token endpoints: through the same [`Upstream`] (TLS roots,
//! pool) and the same address checks as sandbox traffic.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;

use super::{MintContext, MintError};
use crate::config::typed::Endpoint;
use crate::pipeline::check_address::check_address;
use crate::pipeline::{Authority, PinnedDest, Scheme};

/// Largest token response read (GitHub's is about 1 KiB).
const MAX_RESPONSE: usize = 64 * 1024;

/// POSTs `body` to `endpoint` + `path_suffix`; returns the status and the body.
pub(super) async fn post(
    ctx: MintContext<'_>,
    endpoint: &Endpoint,
    path_suffix: &str,
    headers: &[(header::HeaderName, http::HeaderValue)],
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), MintError> {
    let pinned = PinnedDest::new(
        Authority {
            host: endpoint.host.clone(),
            port: endpoint.port,
        },
        Scheme::Https,
    );
    let dest = check_address(ctx.net, pinned)
        .await
        .map_err(|d| MintError::new(format!("token endpoint unreachable: {}", d.reason())))?;
    let path = format!("{}{path_suffix}", endpoint.path);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(if path.is_empty() { "/" } else { path.as_str() })
        .header(header::HOST, endpoint.authority())
        .header(header::USER_AGENT, "airlock-vault-proxy")
        .header(header::CONTENT_LENGTH, body.len());
    for (k, v) in headers {
        req = req.header(k, v.clone());
    }
    let req = req
        .body(crate::body::full(Bytes::from(body)))
        .map_err(|_| MintError::new("invalid token request"))?;
    let resp = ctx
        .upstream
        .send(&dest, req)
        .await
        .map_err(|d| MintError::new(format!("token endpoint: {}", d.reason())))?;
    let status = resp.status();
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
    let body = limited
        .collect()
        .await
        .map_err(|_| MintError::new("token endpoint: response unreadable or too large"))?
        .to_bytes();
    Ok((status, body))
}
