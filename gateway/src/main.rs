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

/// The Rust heap of the standalone gateway. glibc's malloc, with its single arena (see
/// [`limit_malloc_arenas`]), made both serving threads queue on one lock whenever a size
/// missed their per-thread cache (hyper's buffers, header maps, bodies): 0.76 `futex`
/// calls and a context switch per request under load (strace -c), ~12 % of the gateway's
/// CPU in malloc/free (perf). mimalloc keeps a heap per thread with no lock on the hot
/// path: futex calls fell to 0.08 a request and throughput rose 10–20 % (bench/gateway,
/// same minutes, alternating rounds). The brain keeps the system allocator.
/// (`gateway::alloc::Mimalloc`: mimalloc without its alignment path for ordinary layouts.)
#[global_allocator]
static ALLOC: gateway::alloc::Mimalloc = gateway::alloc::Mimalloc;

fn main() -> anyhow::Result<()> {
    tune_mimalloc();
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
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    // One single-threaded runtime per worker thread (see `gateway::run_threads`); this one
    // builds the gateway, keeps its background tasks and serves as worker 0.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (gw, listener) = rt.block_on(start(&args, cfg))?;
    // Start-up code is dropped once every thread is up (building their runtimes is start-up too).
    gateway::run_threads(
        rt,
        gw,
        listener,
        workers,
        gateway::spin::window_from_env(),
        drop_startup_code,
        shutdown(),
    )?;
    Ok(())
}

/// Opens the database, builds the gateway and binds the listener.
async fn start(
    args: &Args,
    cfg: gateway::config::Config,
) -> anyhow::Result<(gateway::Gateway, std::net::TcpListener)> {
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
    Ok((gw, listener.into_std()?))
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

/// mimalloc's settings for a small resident set, unless its own environment variables say
/// otherwise (it reads them before `main`):
/// - no transparent huge pages: mimalloc asks for them on its arenas (`MADV_HUGEPAGE`),
///   and each touched 2 MiB region then counts whole: peak RSS under load 47 MB with
///   them, 26 MB without (the `no_thp` feature stops the request; the prctl also covers
///   kernels whose THP mode is `always`);
/// - freed pages go back to the kernel after 25 ms instead of mimalloc's 1 s: peak RSS
///   23.2 → 22.1 MB in the same run, throughput within noise (0 ms cost ~10 % of it).
fn tune_mimalloc() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: a process attribute; no memory is touched.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // `mi_option_purge_delay` (mimalloc.h's `mi_option_e`, the same index in v2 and
        // v3; libmimalloc-sys has no constant for it).
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: options may be set at any time; this one is read at each purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 25) };
    }
}

/// One glibc malloc arena for the whole process instead of up to eight per core. Rust's
/// heap is mimalloc's (above); glibc's malloc still serves C code, SQLite's page cache and
/// statements on its connection's thread, and one arena keeps what it frees from staying
/// resident in several (with glibc as the Rust heap too, one arena took the peak RSS from
/// 34 to 28 MB). `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Unmap (from this process only) the binary's code and read-only data pages that start-up
/// touched, once it is done.
///
/// The kernel maps a file-backed page together with its in-page-cache neighbours (fault-around,
/// 64 KiB windows), so by the time the gateway listens ~11 MB of its ~12 MB `.text` (and most of
/// `.rodata`) count as resident: start-up runs clap, the YAML parser, the config and price-table
/// code, sqlx's migrations and connection set-up, scattered over the whole binary. Serving
/// requests needs fewer windows (bench/gateway, release, 50 connections: ~9 MB of `.text` back
/// after the drop). After `MADV_DONTNEED` the pages stay in the page cache and come back on the
/// next access (a minor fault, no disk read), so only the start-up-only pages leave the resident
/// set: with `build.rs`'s packed relocations, idle RSS 17.0 → 14.0 MB and peak VmHWM under load
/// 22.5–23.0 → 20.3–20.8 MB, same minute, alternating (`.rodata` adds ~0.2 MB of it, the
/// relocations ~0.6 MB; `.text`'s windows move by ±0.5 MB from run to run). Only read-only
/// mappings of the executable that hold no private (copied) page are dropped, so no contents
/// are lost: never the RELRO segment the loader relocated, and a page differs from the file
/// only when a breakpoint or uprobe was set in it before this call.
/// `GATEWAY_DROP_STARTUP_CODE=0` keeps the pages.
fn drop_startup_code() {
    #[cfg(target_os = "linux")]
    {
        if std::env::var_os("GATEWAY_DROP_STARTUP_CODE").is_some_and(|v| v == "0") {
            return;
        }
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return;
        };
        for (start, end) in startup_pages(&smaps, drop_startup_code as *const () as usize) {
            // SAFETY: a private, read-only, file-backed mapping of this executable without
            // private pages, page aligned (from /proc/self/smaps): MADV_DONTNEED only drops
            // its page-table entries and the next access refills them from the same file
            // (which cannot change while it runs: ETXTBSY). No Rust object lives in it.
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
            if rc != 0 {
                tracing::debug!("madvise(code pages): {}", std::io::Error::last_os_error());
            }
        }
    }
}

/// The ranges [`drop_startup_code`] may drop, from `/proc/self/smaps` text: the read-only
/// (`r-xp`, `r--p`) mappings of the file whose mapping holds `anchor` (an address in this
/// binary's code) that have no anonymous (copied-on-write) page.
#[cfg(target_os = "linux")]
fn startup_pages(smaps: &str, anchor: usize) -> Vec<(usize, usize)> {
    struct Mapping<'a> {
        start: usize,
        end: usize,
        perms: &'a str,
        file: (&'a str, &'a str),
        anonymous: Option<u64>,
    }
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some(v) = first.strip_prefix("Anonymous:").map(|_| fields.next()) {
            if let (Some(m), Some(kb)) = (maps.last_mut(), v.and_then(|v| v.parse().ok())) {
                m.anonymous = Some(kb);
            }
            continue;
        }
        // A mapping's header: `start-end perms offset dev inode [path]`.
        let Some((start, end)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let (Some(perms), Some(_offset), Some(dev), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        maps.push(Mapping {
            start,
            end,
            perms,
            file: (dev, inode),
            anonymous: None,
        });
    }
    let Some(own) = maps
        .iter()
        .find(|m| (m.start..m.end).contains(&anchor) && m.file.1 != "0")
        .map(|m| m.file)
    else {
        return Vec::new();
    };
    maps.iter()
        .filter(|m| m.file == own && matches!(m.perms, "r-xp" | "r--p") && m.anonymous == Some(0))
        .map(|m| (m.start, m.end))
        .collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn only_clean_read_only_mappings_of_the_binary_are_dropped() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 1234  /usr/bin/gateway
Rss:                1000 kB
Anonymous:             0 kB
55d0a0100000-55d0a0d00000 r-xp 00100000 fe:01 1234  /usr/bin/gateway
Anonymous:             0 kB
55d0a0d00000-55d0a0d80000 r--p 00d00000 fe:01 1234  /usr/bin/gateway
Anonymous:           512 kB
55d0a0d80000-55d0a0d90000 rw-p 00d80000 fe:01 1234  /usr/bin/gateway
Anonymous:            32 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:01 99  /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
";
        // The anchor in the binary's code: its clean r--p and r-xp go, never the relocated
        // RELRO segment (anonymous pages), its data or another file.
        assert_eq!(
            super::startup_pages(smaps, 0x55d0a0100040),
            vec![
                (0x55d0a0000000, 0x55d0a0100000),
                (0x55d0a0100000, 0x55d0a0d00000)
            ]
        );
        // An anchor nowhere known, or in anonymous memory: nothing.
        assert!(super::startup_pages(smaps, 0x1000).is_empty());
        assert!(super::startup_pages(smaps, 0x7f0000200040).is_empty());
        // This process's own smaps: the test binary's code mapping is found and clean.
        let own = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let anchor = only_clean_read_only_mappings_of_the_binary_are_dropped as *const () as usize;
        let got = super::startup_pages(&own, anchor);
        assert!(
            got.iter().any(|&(s, e)| (s..e).contains(&anchor)),
            "{got:x?}"
        );
    }
}
