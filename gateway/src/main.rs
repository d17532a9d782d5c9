//! `gateway --config config.yaml --listen 127.0.0.1:4000`

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "LiteLLM-compatible LLM gateway")]
struct Args {
    /// LiteLLM config.yaml
    #[arg(long, short, env = "GATEWAY_CONFIG")]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4000", env = "GATEWAY_LISTEN")]
    listen: String,
    /// sqlite://… or postgres://… (overrides general_settings.database_url;
    /// default sqlite://gateway.db; `memory` keeps nothing).
    #[arg(long, env = "GATEWAY_DATABASE_URL")]
    database_url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    // Only ring is compiled in; make it the process default before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let cfg = gateway::config::Config::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    // Logs (text, or JSON with AIRLOCK_LOG_FORMAT=json); traces when
    // `telemetry.otlp_endpoint` or OTEL_EXPORTER_OTLP_* names a collector. Kept until exit:
    // dropping it flushes queued spans.
    let _telemetry = airlock_telemetry::init(&airlock_telemetry::Options {
        service: "airlock-gateway".into(),
        otlp_endpoint: cfg.otlp_endpoint.clone(),
        default_filter: "info".into(),
    })?;
    // The config was read before logging existed: its warnings are written now.
    for w in &cfg.warnings {
        tracing::warn!("config: {w}");
    }
    let workers = std::env::var("GATEWAY_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve(args, cfg))
}

async fn serve(args: Args, cfg: gateway::config::Config) -> anyhow::Result<()> {
    let url = args
        .database_url
        .clone()
        .or_else(|| cfg.database_url.clone())
        .unwrap_or_else(|| "sqlite://gateway.db".to_owned());
    let store = gateway::store::Store::connect(&url)
        .await
        .with_context(|| format!("opening database {url}"))?;
    let gw = gateway::Gateway::from_config(cfg, store).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    drop_startup_code();
    gateway::run(gw, listener, shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// One glibc malloc arena for the whole process instead of up to eight per core. Every
/// thread (two tokio workers, one per SQLite connection) otherwise gets an arena of its
/// own, and each keeps its freed memory resident: at 50 connections the anonymous RSS
/// was 15 MB against a live heap of ~8 MB (heaptrack), and 6 MB less with one arena
/// (bench/gateway: peak 34 → 28 MB) at the same throughput within noise, since
/// glibc's per-thread caches serve most small allocations without the arena lock.
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Unmap (from this process only) the code pages that start-up touched, once it is done.
///
/// The kernel maps a file-backed page together with its in-page-cache neighbours (fault-around,
/// 64 KiB windows), so by the time the gateway listens ~11 MB of its ~12 MB `.text` count as
/// resident: start-up runs clap, the YAML parser, the config and price-table code, sqlx's
/// migrations and connection set-up, scattered over the whole binary. Serving requests needs
/// fewer windows (bench/gateway, release, 50 connections: ~9 MB of `.text` back after the drop).
/// After `MADV_DONTNEED` the pages stay in the page cache and come back on the next execution
/// (a minor fault, no disk read), so only the start-up-only code leaves the resident set: with
/// `build.rs`'s packed relocations, idle RSS 17.1 → 14.9 MB and peak VmHWM under load
/// 22.0–22.7 → 20.2–20.8 MB, same minute (the relocations alone: −0.6 MB, within the run-to-run
/// noise of `.text`'s windows). The mapping is private, read-only and never written, so no
/// contents are lost (only breakpoints or uprobes set before this call, since they live in
/// copied pages). `GATEWAY_DROP_STARTUP_CODE=0` keeps the pages.
fn drop_startup_code() {
    #[cfg(target_os = "linux")]
    {
        if std::env::var_os("GATEWAY_DROP_STARTUP_CODE").is_some_and(|v| v == "0") {
            return;
        }
        // The executable's code mapping is the one holding this function.
        let anchor = drop_startup_code as *const () as usize;
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            if perms == "r-xp" && (start..end).contains(&anchor) {
                // SAFETY: a private, read-only, file-backed mapping of this executable, page
                // aligned (from /proc/self/maps): MADV_DONTNEED only drops its page-table
                // entries and the next access refills them from the same file (which cannot
                // change while it runs: ETXTBSY). No Rust object lives in it.
                let rc = unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
                if rc != 0 {
                    tracing::debug!("madvise(code pages): {}", std::io::Error::last_os_error());
                }
                return;
            }
        }
    }
}
