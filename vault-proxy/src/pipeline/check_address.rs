//! Rule 3: the proxy resolves DNS itself (once per tunnel), refuses
//! loopback, private, link-local, CGNAT, metadata, multicast, unspecified,
//! IPv6-embedded-IPv4 and its own listen addresses (unless
//! `network.allow_private` for the private classes), and returns the exact
//! address that will be dialled.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{CheckedDest, PinnedDest};
use crate::deny::Deny;

/// A resolver: host, port → addresses. Pluggable for tests.
pub type ResolveFn = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system resolver (tokio's `lookup_host`).
pub fn system_resolver() -> ResolveFn {
    Arc::new(|host, port| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

/// Address policy.
#[derive(Clone)]
pub struct NetPolicy {
    /// Let loopback/private/link-local/CGNAT/ULA through.
    pub allow_private: bool,
    /// Static overrides, consulted before the resolver.
    pub resolve: BTreeMap<String, IpAddr>,
    /// The proxy's own listen addresses (never dialled).
    pub own: Vec<SocketAddr>,
    /// The resolver.
    pub resolver: ResolveFn,
    /// Resolution timeout.
    pub timeout: Duration,
}

/// How an address is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpClass {
    /// Globally routable.
    Public,
    /// Refused unless `allow_private`.
    Private(&'static str),
    /// Always refused.
    Never(&'static str),
}

/// Classifies one address (smokescreen-style table).
pub fn classify(ip: IpAddr) -> IpClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

/// Cloud metadata and instance-service addresses: refused whatever
/// `allow_private` says, in every form (also embedded in IPv6, below).
/// AWS IMDS / ECS task metadata / EKS Pod Identity / Time Sync / DNS, GCP and Azure IMDS
/// (169.254.169.254), Azure WireServer (168.63.129.16), Alibaba
/// (100.100.100.200), Oracle (192.0.0.192), Tencent (169.254.0.23).
pub const METADATA_V4: &[Ipv4Addr] = &[
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(169, 254, 169, 123),
    Ipv4Addr::new(169, 254, 169, 253),
    Ipv4Addr::new(169, 254, 0, 23),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
];

/// The IPv4 addresses an IPv6 address carries in a well-known embedding:
/// mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, SIIT-translated
/// `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96` and local-use `64:ff9b:1::/48`
/// (RFC 6052 positions for /48, /56, /64, /96), 6to4 `2002::/16`, Teredo
/// (server and obfuscated client).
pub fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = ip.octets();
    let v4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let s = ip.segments();
    let mut out = Vec::new();
    if s[0..5] == [0, 0, 0, 0, 0] || (s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0) {
        out.push(v4(&o[12..16]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b {
        out.push(v4(&o[12..16])); // /96
        // RFC 6052 §2.2: /48 → octets 6,7,9,10; /56 → 7,9,10,11; /64 → 9..13.
        out.push(Ipv4Addr::new(o[6], o[7], o[9], o[10]));
        out.push(Ipv4Addr::new(o[7], o[9], o[10], o[11]));
        out.push(v4(&o[9..13]));
    }
    if s[0] == 0x2002 {
        out.push(v4(&o[2..6]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        out.push(v4(&o[4..8]));
        out.push(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    out
}

fn classify_v4(ip: Ipv4Addr) -> IpClass {
    if METADATA_V4.contains(&ip) {
        return IpClass::Never("metadata");
    }
    if in_v4(ip, [0, 0, 0, 0], 8) {
        return IpClass::Never("unspecified");
    }
    if in_v4(ip, [224, 0, 0, 0], 4) {
        return IpClass::Never("multicast");
    }
    if in_v4(ip, [240, 0, 0, 0], 4) {
        return IpClass::Never("reserved");
    }
    if in_v4(ip, [127, 0, 0, 0], 8) {
        return IpClass::Private("loopback");
    }
    if in_v4(ip, [10, 0, 0, 0], 8)
        || in_v4(ip, [172, 16, 0, 0], 12)
        || in_v4(ip, [192, 168, 0, 0], 16)
    {
        return IpClass::Private("private");
    }
    if in_v4(ip, [169, 254, 0, 0], 16) {
        return IpClass::Private("link-local");
    }
    if in_v4(ip, [100, 64, 0, 0], 10) {
        return IpClass::Private("cgnat");
    }
    if in_v4(ip, [192, 0, 0, 0], 24) || in_v4(ip, [198, 18, 0, 0], 15) {
        return IpClass::Private("special-purpose");
    }
    if in_v4(ip, [192, 0, 2, 0], 24)
        || in_v4(ip, [198, 51, 100, 0], 24)
        || in_v4(ip, [203, 0, 113, 0], 24)
    {
        return IpClass::Never("documentation");
    }
    IpClass::Public
}

fn classify_v6(ip: Ipv6Addr) -> IpClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        return IpClass::Never("unspecified");
    }
    if ip.is_loopback() {
        return IpClass::Private("loopback");
    }
    if s[0] & 0xff00 == 0xff00 {
        return IpClass::Never("multicast");
    }
    // Metadata in any IPv4-embedding form (AWS IMDS and Time Sync over IPv6 too).
    if (s[0] == 0xfd00 && s[1] == 0x0ec2)
        || embedded_v4(ip).iter().any(|v4| METADATA_V4.contains(v4))
    {
        return IpClass::Never("metadata");
    }
    if ip.to_ipv4_mapped().is_some() || (s[0..6] == [0, 0, 0, 0, 0, 0]) {
        return IpClass::Never("ipv4-mapped/compatible");
    }
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return IpClass::Never("ipv4-translated");
    }
    if s[0] == 0x64 && s[1] == 0xff9b {
        return IpClass::Never("nat64");
    }
    if s[0] == 0x2002 {
        return IpClass::Never("6to4");
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return IpClass::Never("teredo");
    }
    if s[0] == 0xfd00 && s[1] == 0x0ec2 {
        return IpClass::Never("metadata");
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 {
        return IpClass::Never("documentation");
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return IpClass::Private("unique-local");
    }
    if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        return IpClass::Private("link-local");
    }
    IpClass::Public
}

/// Whether `addr` may be dialled under `policy`; the reason if not.
pub fn check_ip(policy: &NetPolicy, addr: SocketAddr) -> Result<(), &'static str> {
    for own in &policy.own {
        if own.port() == addr.port() && (own.ip() == addr.ip() || own.ip().is_unspecified()) {
            return Err("proxy's own address");
        }
    }
    match classify(addr.ip()) {
        IpClass::Public => Ok(()),
        IpClass::Private(_) if policy.allow_private => Ok(()),
        IpClass::Private(r) | IpClass::Never(r) => Err(r),
    }
}

/// Resolves the pinned host once, picks the first allowed address and
/// returns it as the [`CheckedDest`] to dial.
pub async fn check_address(policy: &NetPolicy, pinned: PinnedDest) -> Result<CheckedDest, Deny> {
    let port = pinned.port();
    let ips: Vec<IpAddr> = if let Some(ip) = pinned.authority().ip() {
        vec![ip]
    } else if let Some(ip) = policy.resolve.get(pinned.host()) {
        vec![*ip]
    } else {
        let fut = (policy.resolver)(pinned.host().to_string(), port);
        match tokio::time::timeout(policy.timeout, fut).await {
            Ok(Ok(ips)) if !ips.is_empty() => ips,
            _ => return Err(Deny::Resolve),
        }
    };
    let mut first_err = "no address";
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        match check_ip(policy, addr) {
            Ok(()) => return Ok(CheckedDest { pinned, addr }),
            Err(r) if first_err == "no address" => first_err = r,
            Err(_) => {}
        }
    }
    Err(Deny::Address(first_err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Scheme;
    use crate::pipeline::pin_destination::parse_authority;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn classify_table() {
        let check = |ip: &str, want: IpClass| {
            assert_eq!(classify(ip.parse().unwrap()), want, "{ip}");
        };
        check("8.8.8.8", IpClass::Public);
        check("140.82.112.3", IpClass::Public);
        check("127.0.0.1", IpClass::Private("loopback"));
        check("127.255.0.9", IpClass::Private("loopback"));
        check("10.1.2.3", IpClass::Private("private"));
        check("172.16.0.1", IpClass::Private("private"));
        check("172.31.255.255", IpClass::Private("private"));
        check("172.32.0.1", IpClass::Public);
        check("192.168.1.1", IpClass::Private("private"));
        check("169.254.1.1", IpClass::Private("link-local"));
        check("169.254.169.254", IpClass::Never("metadata"));
        check("100.64.0.1", IpClass::Private("cgnat"));
        check("100.127.255.255", IpClass::Private("cgnat"));
        check("100.128.0.1", IpClass::Public);
        check("0.0.0.0", IpClass::Never("unspecified"));
        check("224.0.0.1", IpClass::Never("multicast"));
        check("255.255.255.255", IpClass::Never("reserved"));
        check("::1", IpClass::Private("loopback"));
        check("::", IpClass::Never("unspecified"));
        check("::ffff:127.0.0.1", IpClass::Never("ipv4-mapped/compatible"));
        check("::ffff:8.8.8.8", IpClass::Never("ipv4-mapped/compatible"));
        check("64:ff9b::7f00:1", IpClass::Never("nat64"));
        check("2002:7f00:1::", IpClass::Never("6to4"));
        check("2001:0:4136:e378::1", IpClass::Never("teredo"));
        check("fd00:ec2::254", IpClass::Never("metadata"));
        check("fc00::1", IpClass::Private("unique-local"));
        check("fe80::1", IpClass::Private("link-local"));
        check("ff02::1", IpClass::Never("multicast"));
        check("2606:4700::1111", IpClass::Public);
        check("::ffff:0:8.8.8.8", IpClass::Never("ipv4-translated"));
    }

    /// Every metadata address, in every IPv4-embedding IPv6 form, is refused
    /// even with `allow_private`.
    #[test]
    fn metadata_refused_in_every_form() {
        let p = policy(true, fixed(vec![]));
        for v4 in METADATA_V4 {
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            let forms = [
                v4.to_string(),
                format!("::ffff:{v4}"),
                format!("::{v4}"),
                format!("::ffff:0:{v4}"),
                format!("64:ff9b::{v4}"),
                format!("64:ff9b:1:{a:02x}{b:02x}:{c:02x}:{d:02x}00::"),
                format!("64:ff9b:1::{hi:x}:{lo:x}"),
                format!("2002:{hi:x}:{lo:x}::1"),
                format!("2001:0:{hi:x}:{lo:x}::1"),
                format!("2001:0:4136:e378:8000:63bf:{:x}:{:x}", !hi, !lo),
            ];
            for f in forms {
                let ip: IpAddr = f.parse().unwrap_or_else(|_| panic!("{f}"));
                assert_eq!(classify(ip), IpClass::Never("metadata"), "{f}");
                assert!(check_ip(&p, SocketAddr::new(ip, 80)).is_err(), "{f}");
            }
        }
        assert_eq!(
            classify("fd00:ec2::254".parse().unwrap()),
            IpClass::Never("metadata")
        );
        assert_eq!(
            classify("fd00:ec2::23".parse().unwrap()),
            IpClass::Never("metadata")
        );
    }

    fn policy(allow_private: bool, resolver: ResolveFn) -> NetPolicy {
        NetPolicy {
            allow_private,
            resolve: BTreeMap::from([(
                "api.github.test".to_string(),
                "127.0.0.1".parse().unwrap(),
            )]),
            own: vec!["127.0.0.1:8899".parse().unwrap()],
            resolver,
            timeout: Duration::from_secs(1),
        }
    }

    fn pinned(a: &str) -> PinnedDest {
        PinnedDest::new(parse_authority(a, None).unwrap(), Scheme::Https)
    }

    fn fixed(ips: Vec<&'static str>) -> ResolveFn {
        Arc::new(move |_, _| {
            let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
            Box::pin(async move { Ok(ips) })
        })
    }

    #[tokio::test]
    async fn check_table() {
        let check = |allow: bool,
                     dest: &'static str,
                     ips: Vec<&'static str>,
                     want: Result<&'static str, Deny>| async move {
            let got = check_address(&policy(allow, fixed(ips)), pinned(dest))
                .await
                .map(|c| c.addr().to_string());
            assert_eq!(
                got,
                want.map(str::to_string),
                "{dest} allow_private={allow}"
            );
        };
        check(
            false,
            "api.github.test:443",
            vec![],
            Err(Deny::Address("loopback")),
        )
        .await;
        check(true, "api.github.test:443", vec![], Ok("127.0.0.1:443")).await;
        check(
            true,
            "127.0.0.1:8899",
            vec![],
            Err(Deny::Address("proxy's own address")),
        )
        .await;
        check(
            true,
            "169.254.169.254:80",
            vec![],
            Err(Deny::Address("metadata")),
        )
        .await;
        check(false, "10.0.0.5:443", vec![], Err(Deny::Address("private"))).await;
        check(false, "8.8.8.8:443", vec![], Ok("8.8.8.8:443")).await;
        check(
            false,
            "x.test:443",
            vec!["127.0.0.1"],
            Err(Deny::Address("loopback")),
        )
        .await;
        check(
            false,
            "x.test:443",
            vec!["127.0.0.1", "93.184.216.34"],
            Ok("93.184.216.34:443"),
        )
        .await;
        check(false, "x.test:443", vec![], Err(Deny::Resolve)).await;
        check(
            true,
            "[::ffff:127.0.0.1]:443",
            vec![],
            Err(Deny::Address("ipv4-mapped/compatible")),
        )
        .await;
    }

    /// DNS rebinding: the resolver flips between a public and a private
    /// answer; the CheckedDest holds the answer that was checked, and the
    /// resolver is asked exactly once.
    #[tokio::test]
    async fn resolves_once_and_keeps_checked_address() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let flip: ResolveFn = Arc::new(move |_, _| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(vec![
                    if n.is_multiple_of(2) {
                        "93.184.216.34"
                    } else {
                        "127.0.0.1"
                    }
                    .parse()
                    .unwrap(),
                ])
            })
        });
        let p = policy(false, flip);
        let dest = check_address(&p, pinned("rebind.test:443")).await.unwrap();
        assert_eq!(dest.addr().to_string(), "93.184.216.34:443");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let again = check_address(&p, pinned("rebind.test:443")).await;
        assert_eq!(again, Err(Deny::Address("loopback")));
    }
}
