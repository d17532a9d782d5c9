//! A minimal OTLP/HTTP sink for the telemetry benchmarks (bench/telemetry): accepts
//! `POST /v1/traces` (any path) with a `content-length` body on keep-alive connections, reads
//! and discards the body, answers `200` with an empty body (an empty
//! `ExportTraceServiceResponse`), and prints how many requests and bytes it took when stopped
//! (SIGTERM or SIGINT). One thread and no decoding: it stands in for a collector that runs
//! elsewhere, so what a benchmark measures on the shared cores is Airlock, not the sink.
//!
//! `cargo run --release -p airlock-telemetry --example otlp_sink -- <port>`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    bytes: AtomicU64,
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// A request head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;

/// Serves one connection until the peer closes it or sends something this sink does not take.
async fn serve(mut stream: TcpStream, stats: Arc<Stats>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    loop {
        // The head: read until its blank line.
        let head_end = loop {
            if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if have == buf.len() {
                if buf.len() >= MAX_HEAD {
                    return stream.write_all(BAD).await;
                }
                buf.resize(buf.len() * 2, 0);
            }
            let n = stream.read(&mut buf[have..]).await?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let Some(length) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        else {
            return stream.write_all(BAD).await;
        };
        // The body: what is already buffered, then the rest, discarded as it comes.
        let buffered = (have - head_end).min(length);
        let mut left = length - buffered;
        buf.copy_within(head_end + buffered..have, 0);
        have -= head_end + buffered;
        while left > 0 {
            let n = stream.read(&mut buf[have..]).await?;
            if n == 0 {
                return Ok(());
            }
            let used = n.min(left);
            left -= used;
            // Bytes past the body belong to the next request.
            buf.copy_within(have + used..have + n, have);
            have += n - used;
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(length as u64, Ordering::Relaxed);
        stream.write_all(OK).await?;
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4318);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("OTLP sink listening on 127.0.0.1:{port}");
        let stats = Arc::new(Stats::default());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, stats.clone()));
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        println!(
            "OTLP sink: {} export requests, {:.1} MB",
            stats.requests.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed) as f64 / 1e6
        );
        Ok(())
    })
}
