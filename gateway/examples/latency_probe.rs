//! One keep-alive connection, sequential POSTs: the latency a single client sees.
//! Used by `bench/gateway/latency.sh` to compare direct vs through the gateway
//! (the "added p50 at one connection" figure), alternating rounds.
//!
//! `latency_probe <url> <body.json> <bearer or -> <requests>` prints
//! `RESULT n=… p50_us=… p90_us=… p99_us=… non2xx=…`. With `TRACEPARENT` set, every request
//! carries it as a W3C `traceparent` header (bench/telemetry/callgrind.sh: a traced gateway
//! joins each request to it).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() == 5,
        "usage: latency_probe <url> <body.json> <bearer|-> <requests>"
    );
    let uri: hyper::Uri = a[1].parse()?;
    let body = Bytes::from(std::fs::read(&a[2])?);
    let auth = (a[3] != "-").then(|| format!("Bearer {}", a[3]));
    let n: usize = a[4].parse()?;
    let traceparent = std::env::var("TRACEPARENT").ok().filter(|t| !t.is_empty());
    let host = uri.authority().map(|x| x.to_string()).unwrap_or_default();
    let stream = tokio::net::TcpStream::connect(&host).await?;
    stream.set_nodelay(true)?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut lat = Vec::with_capacity(n);
    let mut bad = 0usize;
    for i in 0..n + n / 10 {
        let mut req = hyper::Request::post(uri.path())
            .header("host", &host)
            .header("content-type", "application/json")
            .header("x-api-key", a[3].as_str());
        if let Some(h) = &auth {
            req = req.header("authorization", h);
        }
        if let Some(tp) = &traceparent {
            req = req.header("traceparent", tp);
        }
        let req = req.body(Full::new(body.clone()))?;
        let t = Instant::now();
        let resp = tx.send_request(req).await?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        // The first tenth warms up (connection pools, caches) and is not counted.
        if i >= n / 10 {
            lat.push(us);
            bad += usize::from(!ok);
        }
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "RESULT n={} p50_us={:.1} p90_us={:.1} p99_us={:.1} non2xx={bad}",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99)
    );
    Ok(())
}
