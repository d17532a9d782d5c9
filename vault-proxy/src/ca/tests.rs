use std::os::unix::fs::PermissionsExt;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

use super::*;

fn verifier(ca: &CertificateAuthority) -> Arc<rustls::client::WebPkiServerVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der().clone()).unwrap();
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap()
}

/// Issues a leaf for `host` and checks it against `server_name` with webpki.
fn check_leaf(ca: &CertificateAuthority, host: &str, server_name: &str, want_ok: bool) {
    let leaf = ca.issue_leaf(host).unwrap();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let res = verifier(ca).verify_server_cert(&leaf.cert[0], &[], &name, &[], UnixTime::now());
    assert_eq!(
        res.is_ok(),
        want_ok,
        "leaf for {host} as {server_name}: {res:?}"
    );
}

#[test]
fn leaves_verify_against_the_ca() {
    let ca = CertificateAuthority::generate().unwrap();
    for (host, name, ok) in [
        ("api.github.com", "api.github.com", true),
        ("API.GitHub.com.", "api.github.com", true),
        ("api.github.com", "github.com", false),
        ("api.github.com", "evil.test", false),
        ("127.0.0.1", "127.0.0.1", true),
        ("127.0.0.1", "127.0.0.2", false),
        ("[::1]", "::1", true),
        ("::1", "::1", true),
        ("localhost", "localhost", true),
    ] {
        check_leaf(&ca, host, name, ok);
    }
    // an unrelated CA does not vouch for our leaves
    let other = CertificateAuthority::generate().unwrap();
    let leaf = ca.issue_leaf("a.example.com").unwrap();
    let name = ServerName::try_from("a.example.com").unwrap();
    assert!(
        verifier(&other)
            .verify_server_cert(&leaf.cert[0], &[], &name, &[], UnixTime::now())
            .is_err()
    );
}

#[test]
fn invalid_hosts_are_refused() {
    let ca = CertificateAuthority::generate().unwrap();
    for bad in [
        "",
        "*.example.com",
        "a b.com",
        "exa_mple..com",
        "bücher.example",
    ] {
        assert!(
            matches!(ca.issue_leaf(bad), Err(CaError::InvalidHost(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn each_leaf_has_a_fresh_key() {
    let ca = CertificateAuthority::generate().unwrap();
    let a = ca.issue_leaf("a.example.com").unwrap();
    let b = ca.issue_leaf("a.example.com").unwrap();
    let (_, spki_a) = der::subject_and_spki(&a.cert[0]).unwrap();
    let (_, spki_b) = der::subject_and_spki(&b.cert[0]).unwrap();
    let (_, spki_ca) = der::subject_and_spki(ca.ca_der()).unwrap();
    assert_ne!(spki_a, spki_b);
    assert_ne!(spki_a, spki_ca);
}

#[test]
fn create_then_load_with_key_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("sub/ca-key.pem"));
    let ca = CertificateAuthority::load_or_create(&cert, &key).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), ca.ca_pem());

    // loading again gives the same CA, and its leaves chain to the first one
    let again = CertificateAuthority::load_or_create(&cert, &key).unwrap();
    assert_eq!(again.ca_pem(), ca.ca_pem());
    let leaf = again.issue_leaf("x.example.com").unwrap();
    let name = ServerName::try_from("x.example.com").unwrap();
    verifier(&ca)
        .verify_server_cert(&leaf.cert[0], &[], &name, &[], UnixTime::now())
        .unwrap();

    // group-readable: loads (with a warning); world-readable: refused
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    CertificateAuthority::load_or_create(&cert, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        CertificateAuthority::load_or_create(&cert, &key),
        Err(CaError::KeyPermissions { mode: 0o644, .. })
    ));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // a cert that does not match the key is refused
    let other_dir = tempfile::tempdir().unwrap();
    let other_cert = other_dir.path().join("ca.pem");
    CertificateAuthority::load_or_create(&other_cert, &other_dir.path().join("k.pem")).unwrap();
    let err = CertificateAuthority::load_or_create(&other_cert, &key).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn half_present_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    CertificateAuthority::load_or_create(&cert, &key).unwrap();
    std::fs::remove_file(&cert).unwrap();
    assert!(matches!(
        CertificateAuthority::load_or_create(&cert, &key),
        Err(CaError::Incomplete { .. })
    ));
    assert!(key.exists(), "the existing key is never replaced");
    std::fs::write(&cert, "junk").unwrap();
    std::fs::remove_file(&key).unwrap();
    assert!(matches!(
        CertificateAuthority::load_or_create(&cert, &key),
        Err(CaError::Incomplete { .. })
    ));
    std::fs::write(&key, "junk").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        CertificateAuthority::load_or_create(&cert, &key),
        Err(CaError::Invalid { .. })
    ));
}

#[tokio::test]
async fn cache_hits_share_the_arc_and_eviction_bounds_it() {
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let cache = LeafCache::new(ca, 2);
    let a1 = cache.server_config("a.example.com").await.unwrap();
    let a2 = cache.server_config("A.example.com.").await.unwrap();
    assert!(Arc::ptr_eq(&a1, &a2));
    assert_eq!(
        a1.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let k1 = cache.certified_key("a.example.com").await.unwrap();
    let k2 = cache.certified_key("a.example.com").await.unwrap();
    assert!(Arc::ptr_eq(&k1, &k2));

    cache.server_config("b.example.com").await.unwrap();
    cache.server_config("a.example.com").await.unwrap(); // a is now most recent
    cache.server_config("c.example.com").await.unwrap(); // evicts b
    assert_eq!(cache.len(), 2);
    let a3 = cache.server_config("a.example.com").await.unwrap();
    assert!(Arc::ptr_eq(&a1, &a3), "recently used entry survived");
    assert!(cache.server_config("bad host").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_issue_one_leaf() {
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let cache = Arc::new(LeafCache::new(ca, 16));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = cache.clone();
            tokio::spawn(async move { c.certified_key("same.example.com").await.unwrap() })
        })
        .collect();
    let mut keys = Vec::new();
    for t in tasks {
        keys.push(t.await.unwrap());
    }
    assert!(keys.iter().all(|k| Arc::ptr_eq(k, &keys[0])));
}

/// A full in-memory TLS handshake: rustls client trusting only our CA,
/// server using the cached config; ALPN negotiates h2.
#[tokio::test]
async fn handshake_with_rustls_client() {
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let cache = LeafCache::new(ca.clone(), 4);
    let server_cfg = cache.server_config("api.example.com").await.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der().clone()).unwrap();
    let mut client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client_cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let name = ServerName::try_from("api.example.com").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name).unwrap();
    let mut server = rustls::ServerConnection::new(server_cfg).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
}
