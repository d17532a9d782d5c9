//! Link settings for the standalone `gateway` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=hot-code.ld");
    println!("cargo:rerun-if-env-changed=GATEWAY_HOT_CODE");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    // Packed relative relocations (DT_RELR, glibc ≥ 2.36, GNU ld ≥ 2.38 or lld): the PIE's
    // 31 k R_X86_64_RELATIVE entries take 740 kB as RELA, all of it read by the dynamic
    // loader at start-up and resident for the life of the process (bench/gateway: 740 of the
    // gateway's ~18 MB idle RSS); as RELR they take a few kB. Dynamic glibc builds only:
    // crt-static (static-pie) binaries relocate themselves.
    if os == "linux" && env == "gnu" && !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin=gateway=-Wl,-z,pack-relative-relocs");
    }
    // The functions serving a request, packed together at the start of `.text` (`hot-code.ld`,
    // written by bench/gateway/hot-code.sh): the kernel maps code in 64 KiB windows around each
    // fault, and scattered over the whole `.text` the ~1.3 MB of functions a request runs kept ~8 MB
    // of it resident. An INSERT script adds to the linker's default layout instead of
    // replacing it (GNU ld, gold and lld alike); `GATEWAY_HOT_CODE=0` leaves it out.
    let script = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("hot-code.ld");
    if os == "linux" && script.is_file() && std::env::var("GATEWAY_HOT_CODE").as_deref() != Ok("0")
    {
        println!(
            "cargo:rustc-link-arg-bin=gateway=-Wl,-T,{}",
            script.display()
        );
    }
}
