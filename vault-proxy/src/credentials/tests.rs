use super::*;
use crate::config::typed::{Endpoint, GithubAppConfig};

/// A fresh 2048-bit RSA key from `openssl genrsa` (PKCS#1 with `-traditional`, else PKCS#8).
fn openssl_key(traditional: bool) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("genrsa");
    if traditional {
        cmd.arg("-traditional");
    }
    let ok = cmd
        .arg("-out")
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let pubder = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl rsa");
    assert!(pubder.status.success());
    (std::fs::read_to_string(&key).unwrap(), pubder.stdout)
}

fn app_cfg() -> GithubAppConfig {
    GithubAppConfig {
        app_id: 4242,
        installation_id: 7,
        api: Endpoint::parse("https://ghe.example.test/api/v3").unwrap(),
        repositories: vec![],
        permissions: Default::default(),
    }
}

#[test]
fn app_jwt_is_rs256_with_githubs_claims_and_verifies_with_the_public_key() {
    for traditional in [true, false] {
        let (pem, public) = openssl_key(traditional);
        assert!(pem.contains(if traditional {
            "BEGIN RSA PRIVATE KEY"
        } else {
            "BEGIN PRIVATE KEY"
        }));
        let app = GithubApp::new(app_cfg(), &SecretValue::new(pem)).unwrap();
        let jwt = app.jwt(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let dec = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let header: serde_json::Value = serde_json::from_slice(&dec(parts[0])).unwrap();
        assert_eq!(header["alg"], "RS256");
        let claims: serde_json::Value = serde_json::from_slice(&dec(parts[1])).unwrap();
        assert_eq!(claims["iat"], 1_700_000_000 - 60);
        assert_eq!(claims["iss"], "4242");
        let exp = claims["exp"].as_i64().unwrap();
        assert!(exp > 1_700_000_000 && exp - 1_700_000_000 <= 600, "{exp}");
        let pk = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &public,
        );
        pk.verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &dec(parts[2]),
        )
        .expect("signature verifies with openssl's public key");
        // Tampered claims do not verify.
        assert!(
            pk.verify(
                format!("{}.{}x", parts[0], parts[1]).as_bytes(),
                &dec(parts[2])
            )
            .is_err()
        );
    }
}

#[test]
fn bad_keys_are_refused_without_echoing_them() {
    let e = GithubApp::new(app_cfg(), &SecretValue::new("not a key at all".into()))
        .err()
        .unwrap();
    assert!(e.contains("PEM"), "{e}");
    let ec = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBvLrtoP\n-----END EC PRIVATE KEY-----\n";
    let e = GithubApp::new(app_cfg(), &SecretValue::new(ec.into()))
        .err()
        .unwrap();
    assert!(
        e.contains("not an RSA private key") && !e.contains("MHcC"),
        "{e}"
    );
    let junk = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    let e = GithubApp::new(app_cfg(), &SecretValue::new(junk.into()))
        .err()
        .unwrap();
    assert!(e.contains("not a usable RSA key"), "{e}");
}

#[test]
fn token_endpoints_are_recognised_as_the_server_reads_the_path() {
    let (pem, _) = openssl_key(true);
    let m = Minter::github_app(
        "APP",
        GithubApp::new(app_cfg(), &SecretValue::new(pem)).unwrap(),
        Default::default(),
    );
    let host = "ghe.example.test";
    assert!(m.is_token_endpoint(host, 443, "/api/v3/app/installations/7/access_tokens"));
    assert!(m.is_token_endpoint(host, 443, "/api/v3/App/installations"));
    assert!(m.is_token_endpoint(
        host,
        443,
        "/api/v3/repos/../app/installations/7/access_tokens"
    ));
    assert!(m.is_token_endpoint(host, 443, "/api/v3/installation/token"));
    assert!(
        m.is_token_endpoint(host, 443, "/api/v3/a%2fb"),
        "ambiguous paths count"
    );
    assert!(!m.is_token_endpoint(host, 443, "/api/v3/repos/acme/app"));
    assert!(!m.is_token_endpoint(host, 8443, "/api/v3/app/installations"));
    assert!(!m.is_token_endpoint("github.com", 443, "/api/v3/app/installations"));
    assert!(m.stub_template().starts_with("ghs_") && m.stub_template().len() == 40);
}

#[test]
fn minted_swaps_name_type_fingerprint_and_expiry_never_the_value() {
    let mut s = MintedSwaps::default();
    let value = "ghs_realrealrealrealrealrealrealreal1234";
    s.by_name.insert(
        "APP".into(),
        (
            Arc::new(Minted {
                value: SecretValue::new(value.into()),
                expires_at: DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
                fingerprint: fingerprint(value),
                renew_at: Instant::now(),
            }),
            "github_app",
        ),
    );
    let r = s.audit_reason("APP").unwrap();
    assert!(
        r.contains("type=github_app") && r.contains("expires_at=2030-01-01T00:00:00Z"),
        "{r}"
    );
    assert!(r.contains(&fingerprint(value)) && !r.contains(value), "{r}");
    assert_eq!(s.value_for("APP"), Some(value));
    assert_eq!(MintedSwaps::NONE.value_for("APP"), None);
}
