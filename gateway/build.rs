//! Link settings for the standalone `gateway` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
}
