use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;

use super::*;

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const REAL: &str = "ghp_realSECRETvalue0123456789abcdefABCD";

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |n: &str| map.get(n).map(OsString::from)
}

fn config(dir: &Path, yaml: &str) -> Config {
    Config::from_yaml_str(yaml, dir).unwrap()
}

#[test]
fn secret_value_is_redacted() {
    let v = SecretValue::new(REAL.to_string());
    assert_eq!(format!("{v:?}"), "[REDACTED]");
    assert_eq!(format!("{v}"), "[REDACTED]");
    assert_eq!(v.expose(), REAL);
    let c = Credential {
        name: "GH".into(),
        value: v,
        allowed_hosts: vec![HostPattern::parse("api.github.com").unwrap()],
        scope: Scope::default(),
        kind: Default::default(),
        aws: None,
        minter: None,
    };
    let dbg = format!("{c:?} {:?}", Credentials::default());
    assert!(!dbg.contains(REAL), "{dbg}");
    assert!(c.allows_host("API.github.com"));
    assert!(!c.allows_host("github.com"));
}

#[test]
fn resolves_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok.txt"), format!("{REAL}-file\n")).unwrap();
    let cfg = config(
        dir.path(),
        "credentials:\n  A: { value_env: REAL_A, allowed_hosts: [a.example.com] }\n  B: { value_file: tok.txt, allowed_hosts: ['*.b.example'], positions: ['form:token'] }\n",
    );
    let creds = resolve_credentials_with(&cfg, &env_of(&[("REAL_A", REAL)])).unwrap();
    assert_eq!(creds.len(), 2);
    let a = creds.get("A").unwrap();
    assert_eq!(a.value.expose(), REAL);
    assert_eq!(a.name, "A");
    let b = creds.get("B").unwrap();
    assert_eq!(b.value.expose(), format!("{REAL}-file"));
    assert!(b.scope.has_body_positions());
    assert!(b.allows_host("x.b.example"));
}

/// One failing setup → a fragment its error must contain; no error may contain the value.
fn check_resolve_error(yaml: &str, env: &[(&str, &str)], files: &[(&str, &str)], want: &str) {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let cfg = config(dir.path(), yaml);
    let err = resolve_credentials_with(&cfg, &env_of(env))
        .expect_err(yaml)
        .to_string();
    assert!(err.contains(want), "{yaml}: {err:?} lacks {want:?}");
    assert!(!err.contains("SECRET"), "error leaks a value: {err}");
}

#[test]
fn resolve_errors_name_the_source_never_the_value() {
    let a = "credentials: { A: { value_env: REAL_A, allowed_hosts: [a.com] } }";
    check_resolve_error(a, &[], &[], "`REAL_A` is not set");
    check_resolve_error(a, &[("REAL_A", "")], &[], "`REAL_A` is not set or is empty");
    check_resolve_error(a, &[("REAL_A", "SECRET")], &[], "shorter than 8");
    check_resolve_error(
        a,
        &[("REAL_A", "SECRET\nSECRET")],
        &[],
        "control characters",
    );
    let f = "credentials: { A: { value_file: t.txt, allowed_hosts: [a.com] } }";
    check_resolve_error(f, &[], &[], "t.txt");
    check_resolve_error(f, &[], &[("t.txt", "\n")], "empty");
    check_resolve_error(
        f,
        &[],
        &[("t.txt", "SECRETSECRET\n\n")],
        "control characters",
    );
    let s = "credentials: { A: { stored: a } }";
    check_resolve_error(s, &[], &[], "AIRLOCK_VAULT_KEY is not set");
    check_resolve_error(s, &[("AIRLOCK_VAULT_KEY", "abcd")], &[], "32 bytes");
    check_resolve_error(s, &[("AIRLOCK_VAULT_KEY", KEY_HEX)], &[], "no entry `a`");
}

#[test]
fn store_key_formats() {
    let from_hex = StoreKey::parse(KEY_HEX).unwrap();
    let bytes: Vec<u8> = (0u8..32).collect();
    for text in [
        base64::engine::general_purpose::STANDARD.encode(&bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
        format!("  {KEY_HEX}\n"),
    ] {
        let k = StoreKey::parse(&text).unwrap();
        assert_eq!(*k.0, *from_hex.0);
    }
    for bad in [
        "",
        "zz",
        &KEY_HEX[..62],
        &format!("{KEY_HEX}00"),
        "not base64 !!",
    ] {
        let err = StoreKey::parse(bad).unwrap_err().to_string();
        assert!(err.contains("AIRLOCK_VAULT_KEY"), "{err}");
    }
    assert_eq!(format!("{from_hex:?}"), "StoreKey([REDACTED])");
}

fn hosts(list: &[&str]) -> Vec<HostPattern> {
    list.iter()
        .map(|h| HostPattern::parse(h).unwrap())
        .collect()
}

#[test]
fn store_round_trip_and_file_properties() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/secrets.enc");
    let store = SecretStore::new(&path, StoreKey::parse(KEY_HEX).unwrap());
    store
        .put(
            "GH",
            &SecretValue::new(REAL.into()),
            &hosts(&["api.github.com"]),
        )
        .unwrap();
    store
        .put(
            "OTHER",
            &SecretValue::new(format!("{REAL}2")),
            &hosts(&["*.x.example"]),
        )
        .unwrap();
    let (v, h) = store.get("GH").unwrap();
    assert_eq!(v.expose(), REAL);
    assert_eq!(h, hosts(&["api.github.com"]));

    // on disk: 0600, no plaintext, no temporary files left
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(REAL) && !text.contains("realSECRET"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // fresh nonce on every write of the same value
    let nonce_of = |name: &str| {
        let f: StoreFileProbe =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let e = f
            .entries
            .into_iter()
            .find(|e| field(e, "name") == name)
            .unwrap();
        field(&e, "nonce").to_string()
    };
    let n1 = nonce_of("GH");
    store
        .put(
            "GH",
            &SecretValue::new(REAL.into()),
            &hosts(&["api.github.com"]),
        )
        .unwrap();
    assert_ne!(n1, nonce_of("GH"));

    // list shows names and bindings only
    let list = SecretStore::list_entries(&path).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].name, "GH");

    // wrong key fails to decrypt
    let other = SecretStore::new(
        &path,
        StoreKey::parse(&KEY_HEX.replace("00", "ff")).unwrap(),
    );
    assert!(matches!(other.get("GH"), Err(SecretError::Decrypt { .. })));

    store.remove("OTHER").unwrap();
    assert!(matches!(
        store.remove("OTHER"),
        Err(SecretError::NotFound { .. })
    ));
    assert!(matches!(
        store.get("OTHER"),
        Err(SecretError::NotFound { .. })
    ));
}

#[derive(serde::Deserialize)]
struct StoreFileProbe {
    entries: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn field<'a>(m: &'a serde_json::Map<String, serde_json::Value>, k: &str) -> &'a str {
    m[k].as_str().unwrap()
}

/// Tampering with a stored entry (moving ciphertexts between names, editing
/// bindings) must make decryption fail.
#[test]
fn store_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.enc");
    let store = SecretStore::new(&path, StoreKey::parse(KEY_HEX).unwrap());
    store
        .put(
            "A",
            &SecretValue::new(REAL.into()),
            &hosts(&["a.example.com"]),
        )
        .unwrap();
    store
        .put(
            "B",
            &SecretValue::new(format!("{REAL}-b")),
            &hosts(&["b.example.com"]),
        )
        .unwrap();
    let original = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&original).unwrap();

    // swap ciphertext+nonce of A and B
    let mut swapped = doc.clone();
    let (a, b) = (doc["entries"][0].clone(), doc["entries"][1].clone());
    for k in ["nonce", "ciphertext"] {
        swapped["entries"][0][k] = b[k].clone();
        swapped["entries"][1][k] = a[k].clone();
    }
    std::fs::write(&path, serde_json::to_string(&swapped).unwrap()).unwrap();
    assert!(matches!(store.get("A"), Err(SecretError::Decrypt { .. })));
    assert!(matches!(store.get("B"), Err(SecretError::Decrypt { .. })));

    // rebind A to an attacker's host
    let mut rebound = doc.clone();
    rebound["entries"][0]["allowed_hosts"] = serde_json::json!(["attacker.example"]);
    std::fs::write(&path, serde_json::to_string(&rebound).unwrap()).unwrap();
    assert!(matches!(store.get("A"), Err(SecretError::Decrypt { .. })));

    // flip one ciphertext bit
    let mut flipped = doc.clone();
    let mut ct = base64::engine::general_purpose::STANDARD
        .decode(field(doc["entries"][0].as_object().unwrap(), "ciphertext"))
        .unwrap();
    ct[0] ^= 1;
    flipped["entries"][0]["ciphertext"] =
        serde_json::json!(base64::engine::general_purpose::STANDARD.encode(ct));
    std::fs::write(&path, serde_json::to_string(&flipped).unwrap()).unwrap();
    assert!(matches!(store.get("A"), Err(SecretError::Decrypt { .. })));

    std::fs::write(&path, original).unwrap();
    assert_eq!(store.get("A").unwrap().0.expose(), REAL);
}

#[test]
fn stored_credentials_binding_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let store = SecretStore::new(
        dir.path().join("secrets.enc"),
        StoreKey::parse(KEY_HEX).unwrap(),
    );
    store
        .put(
            "gh",
            &SecretValue::new(REAL.into()),
            &hosts(&["store.example.com"]),
        )
        .unwrap();
    let cfg = config(
        dir.path(),
        "credentials:\n  FROM_STORE: { stored: gh }\n  FROM_CONFIG: { stored: gh, allowed_hosts: [config.example.com] }\n",
    );
    let creds = resolve_credentials_with(&cfg, &env_of(&[("AIRLOCK_VAULT_KEY", KEY_HEX)])).unwrap();
    let s = creds.get("FROM_STORE").unwrap();
    assert_eq!(s.value.expose(), REAL);
    assert_eq!(s.allowed_hosts, hosts(&["store.example.com"]));
    let c = creds.get("FROM_CONFIG").unwrap();
    assert_eq!(c.allowed_hosts, hosts(&["config.example.com"]));
}

#[test]
fn cli_put_list_rm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("vault.yaml");
    std::fs::write(&cfg_path, "secrets_store: store/s.enc\n").unwrap();
    let env = env_of(&[("AIRLOCK_VAULT_KEY", KEY_HEX)]);
    let run = |cmd: SecretsCommand, stdin: &str| -> Result<String, SecretError> {
        let mut out = Vec::new();
        secrets_cli_with(cmd, &cfg_path, &mut stdin.as_bytes(), &mut out, &env)?;
        Ok(String::from_utf8(out).unwrap())
    };
    let put = |name: &str, hosts: &[&str]| SecretsCommand::Put {
        name: name.into(),
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
    };

    let out = run(
        put("GH", &["API.github.com", "*.github.com"]),
        &format!("{REAL}\n"),
    )
    .unwrap();
    assert!(out.contains("GH") && !out.contains(REAL), "{out}");
    let store = SecretStore::new(
        dir.path().join("store/s.enc"),
        StoreKey::parse(KEY_HEX).unwrap(),
    );
    assert_eq!(
        store.get("GH").unwrap().0.expose(),
        REAL,
        "one trailing newline stripped"
    );

    // refusals
    assert!(
        run(put("E", &["a.com"]), "\n")
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    assert!(run(put("E", &["a.com"]), "").is_err());
    assert!(run(put("E", &["*.com"]), REAL).is_err());
    assert!(run(put("E", &["10.1.2.3"]), REAL).is_err());
    assert!(run(put("bad name", &["a.com"]), REAL).is_err());
    let no_key = |cmd| {
        let mut out = Vec::new();
        secrets_cli_with(cmd, &cfg_path, &mut REAL.as_bytes(), &mut out, &env_of(&[]))
    };
    assert!(matches!(
        no_key(put("X", &["a.com"])),
        Err(SecretError::StoreKey(_))
    ));

    let out = run(SecretsCommand::List, "").unwrap();
    assert_eq!(out, "GH\tapi.github.com,*.github.com\n");
    assert!(!out.contains(REAL));

    run(SecretsCommand::Rm { name: "GH".into() }, "").unwrap();
    assert_eq!(run(SecretsCommand::List, "").unwrap(), "");
    assert!(matches!(
        run(SecretsCommand::Rm { name: "GH".into() }, ""),
        Err(SecretError::NotFound { .. })
    ));
}

#[test]
fn clap_parses_secrets_command() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: SecretsCommand,
    }
    let cli = Cli::try_parse_from([
        "x",
        "put",
        "GH",
        "--allowed-host",
        "a.com",
        "--allowed-host",
        "b.com",
    ])
    .unwrap();
    assert_eq!(
        cli.cmd,
        SecretsCommand::Put {
            name: "GH".into(),
            allowed_hosts: vec!["a.com".into(), "b.com".into()]
        }
    );
    assert!(
        Cli::try_parse_from(["x", "put", "GH"]).is_err(),
        "--allowed-host is required"
    );
}
