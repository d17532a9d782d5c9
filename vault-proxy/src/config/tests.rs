use super::*;

/// The example from DESIGN.md ("Contract: vault proxy"), verbatim.
const DESIGN_EXAMPLE: &str = r#"
listen: 127.0.0.1:8899            # HTTP proxy: CONNECT for https, absolute-form for http
admin_listen: 127.0.0.1:8898      # admin API (grants), bearer admin_token
admin_token_env: AIRLOCK_VAULT_ADMIN_TOKEN
ca: { cert: ca.pem, key: ca-key.pem }   # created on first start if missing (key file 0600)
upstream_roots: []                # extra PEM roots trusted for upstream TLS (tests, private CAs)
audit_log: audit.jsonl
egress: { default: deny, allow_hosts: ["*.github.com", "docs.python.org"] }  # non-credential traffic
network:
  allow_private: false            # true lets loopback/private destinations through (tests, on-prem)
  resolve: { "api.github.com": "10.0.0.5" }   # static DNS overrides, like curl --resolve
credentials:
  GITHUB_TOKEN:
    value_env: REAL_GITHUB_TOKEN   # or value_file: path, or stored: name (encrypted store)
    allowed_hosts: [api.github.com, github.com]   # exact names or leading "*." wildcards
    positions: [header:Authorization]   # where the stub may stand (this is the default); see rule 4
    paths: ["/repos/acme/**"]      # optional: request paths it may be used on ("*" one segment, "**" any)
    methods: [GET, POST, PATCH]    # optional: methods it may be used with
grants:                            # static grants for standalone use; the brain adds its own via admin API
  - sandbox: sb-demo
    token: demo-token
    credentials: { GITHUB_TOKEN: ghp_stubAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA }
"#;

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(yaml, Path::new("/etc/vault"))
}

#[test]
fn design_example_parses() {
    let c = parse(DESIGN_EXAMPLE).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8899".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:8898".parse().unwrap());
    assert_eq!(c.admin_token_env, "AIRLOCK_VAULT_ADMIN_TOKEN");
    assert_eq!(c.ca.cert, PathBuf::from("/etc/vault/ca.pem"));
    assert_eq!(c.ca.key, PathBuf::from("/etc/vault/ca-key.pem"));
    assert_eq!(c.audit_log, PathBuf::from("/etc/vault/audit.jsonl"));
    assert_eq!(c.secrets_store, PathBuf::from("/etc/vault/secrets.enc"));
    assert_eq!(c.egress.default, EgressDefault::Deny);
    assert!(c.egress.allows("api.github.com"));
    assert!(c.egress.allows("docs.python.org"));
    assert!(!c.egress.allows("github.com"));
    assert!(!c.egress.allows("evil.test"));
    assert!(!c.network.allow_private);
    assert_eq!(
        c.network.resolve_override("API.github.com."),
        Some("10.0.0.5".parse().unwrap())
    );
    let gh = &c.credentials["GITHUB_TOKEN"];
    assert_eq!(gh.source, CredentialSource::Env("REAL_GITHUB_TOKEN".into()));
    assert_eq!(gh.allowed_hosts.len(), 2);
    assert_eq!(gh.scope.positions, Scope::default().positions);
    assert!(gh.scope.allows(&Position::Header("authorization".into())));
    assert!(!gh.scope.allows(&Position::Query("access_token".into())));
    assert!(gh.scope.allows_path("/repos/acme/x/issues"));
    assert!(!gh.scope.allows_path("/repos/acme/../other"));
    assert!(gh.scope.allows_method("PATCH"));
    assert!(!gh.scope.allows_method("DELETE"));
    assert_eq!(c.grants.len(), 1);
    assert_eq!(c.grants[0].sandbox, "sb-demo");
    let dbg = format!("{:?}", c.grants[0]);
    assert!(
        !dbg.contains("demo-token") && !dbg.contains("ghp_stub"),
        "{dbg}"
    );
}

#[test]
fn empty_config_is_all_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.listen, "127.0.0.1:8899".parse().unwrap());
    assert_eq!(c.egress.default, EgressDefault::Deny);
    assert!(c.credentials.is_empty() && c.grants.is_empty());
    let c = parse("{}").unwrap();
    assert_eq!(c.audit_log, PathBuf::from("/etc/vault/audit.jsonl"));
}

#[test]
fn absolute_paths_are_kept_and_secrets_store_is_configurable() {
    let c = parse("audit_log: /var/log/a.jsonl\nsecrets_store: s/x.enc\nupstream_roots: [roots.pem, /r.pem]\nca: {cert: /c.pem}\n").unwrap();
    assert_eq!(c.audit_log, PathBuf::from("/var/log/a.jsonl"));
    assert_eq!(c.secrets_store, PathBuf::from("/etc/vault/s/x.enc"));
    assert_eq!(
        c.upstream_roots,
        vec![
            PathBuf::from("/etc/vault/roots.pem"),
            PathBuf::from("/r.pem")
        ]
    );
    assert_eq!(c.ca.cert, PathBuf::from("/c.pem"));
    assert_eq!(c.ca.key, PathBuf::from("/etc/vault/ca-key.pem"));
}

#[test]
fn credential_sources_and_scope() {
    let c = parse(
        r#"
credentials:
  A: { value_file: a.txt, allowed_hosts: ["*.example.com", "api.example.com:8443"], positions: ["header:X-Api-Key", "form:token", "json:/auth/token", path, "query:key"] }
  B: { stored: b-entry }
  C: { stored: c, allowed_hosts: [c.example.com] }
"#,
    )
    .unwrap();
    assert_eq!(
        c.credentials["A"].source,
        CredentialSource::File("/etc/vault/a.txt".into())
    );
    let a = &c.credentials["A"];
    assert_eq!(
        a.scope.positions,
        vec![
            Position::Header("x-api-key".into()),
            Position::Form("token".into()),
            Position::Json("/auth/token".into()),
            Position::Path,
            Position::Query("key".into()),
        ]
    );
    assert!(a.scope.has_body_positions());
    assert!(a.scope.paths.is_empty() && a.scope.methods.is_empty());
    // Ports: given → that port only; none → 443.
    assert!(a.allowed_hosts[1].matches_dest("api.example.com", 8443));
    assert!(!a.allowed_hosts[1].matches_dest("api.example.com", 443));
    assert!(a.allowed_hosts[0].matches_dest("x.example.com", 443));
    assert!(!a.allowed_hosts[0].matches_dest("x.example.com", 8443));
    assert_eq!(a.allowed_hosts[1].as_str(), "api.example.com:8443");
    assert_eq!(
        c.credentials["B"].source,
        CredentialSource::Stored("b-entry".into())
    );
    assert!(c.credentials["B"].allowed_hosts.is_empty());
    assert_eq!(
        c.credentials["C"].allowed_hosts[0].as_str(),
        "c.example.com"
    );
}

/// One bad config → the key its error must name.
fn check_error(yaml: &str, expect_in_message: &str) {
    let err = parse(yaml).expect_err(yaml).to_string();
    assert!(
        err.contains(expect_in_message),
        "config {yaml:?}: error {err:?} should contain {expect_in_message:?}"
    );
}

#[test]
fn invalid_configs_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("bogus: 1", "bogus"),
        ("listen: nowhere", "invalid config"),
        ("egress: { default: maybe }", "invalid config"),
        ("egress: { allow_hosts: ['*'] }", "egress.allow_hosts[0]"),
        (
            "egress: { allow_hosts: [ok.com, 'a..b'] }",
            "egress.allow_hosts[1]",
        ),
        (
            "network: { resolve: { x.com: not-an-ip } }",
            "network.resolve.x.com",
        ),
        (
            "network: { resolve: { '*.x.com': 1.2.3.4 } }",
            "network.resolve.*.x.com",
        ),
        (
            "credentials: { A: { allowed_hosts: [a.com] } }",
            "credentials.A",
        ),
        (
            "credentials: { A: { value_env: X, value_file: f, allowed_hosts: [a.com] } }",
            "exactly one of",
        ),
        (
            "credentials: { A: { value_env: X } }",
            "credentials.A.allowed_hosts",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [] } }",
            "credentials.A.allowed_hosts",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [a.com, '*.com'] } }",
            "credentials.A.allowed_hosts[1]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [10.0.0.1] } }",
            "credentials.A.allowed_hosts[0]",
        ),
        (
            "credentials: { A: { value_env: 'BAD NAME', allowed_hosts: [a.com] } }",
            "value_env",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [a.com], swap_in: [header] } }",
            "swap_in",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [a.com], positions: [cookie:x] } }",
            "credentials.A.positions[0]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [a.com], positions: [] } }",
            "credentials.A.positions",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [a.com], paths: ['repos/**'] } }",
            "credentials.A.paths[0]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [a.com], methods: [TRACE] } }",
            "credentials.A.methods[0]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: ['*.amazonaws.com'] } }",
            "credentials.A.allowed_hosts[0]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [ok.example.com, '*.github.io'] } }",
            "credentials.A.allowed_hosts[1]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: ['*.co.uk'] } }",
            "credentials.A.allowed_hosts[0]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: ['*.herokuapp.com'] } }",
            "public suffix",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: ['a.com:0'] } }",
            "credentials.A.allowed_hosts[0]",
        ),
        (
            "credentials: { A: { value_env: X, allowed_hosts: [a.com], extra: 1 } }",
            "extra",
        ),
        (
            "grants: [ { sandbox: s, token: tttttttt, credentials: { NOPE: stubstubstub } } ]",
            "grants[0].credentials.NOPE",
        ),
        (
            "grants: [ { sandbox: 'a:b', token: tttttttt } ]",
            "grants[0].sandbox",
        ),
        (
            "grants: [ { sandbox: s, token: short } ]",
            "grants[0].token",
        ),
        (
            "grants: [ { sandbox: s, token: tttttttt }, { sandbox: s, token: uuuuuuuu } ]",
            "grants[1].sandbox",
        ),
    ];
    for (yaml, needle) in cases {
        check_error(yaml, needle);
    }
}

#[test]
fn load_resolves_relative_to_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.yaml");
    std::fs::write(&path, "audit_log: logs/a.jsonl\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.audit_log, dir.path().join("logs/a.jsonl"));
    assert!(matches!(
        Config::load(dir.path().join("missing.yaml")),
        Err(ConfigError::Read { .. })
    ));
}

// === HostPattern ===

/// (pattern, host, expected match)
fn check_match(cases: &[(&str, &str, bool)]) {
    for (pattern, host, want) in cases {
        let p = HostPattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        assert_eq!(
            p.matches(host),
            *want,
            "pattern {pattern:?} vs host {host:?}"
        );
    }
}

#[test]
fn host_pattern_matching() {
    check_match(&[
        // exact
        ("api.github.com", "api.github.com", true),
        ("api.github.com", "API.GitHub.COM", true),
        ("API.GITHUB.COM", "api.github.com", true),
        ("api.github.com", "api.github.com.", true),
        ("api.github.com.", "api.github.com", true),
        ("api.github.com", "github.com", false),
        ("api.github.com", "xapi.github.com", false),
        ("api.github.com", "api.github.com.evil.test", false),
        ("api.github.com", "api.github.com..", false),
        ("api.github.com", "", false),
        ("api.github.com", "api.github.com:443", false),
        // wildcard: any depth, never the apex
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "a.b.example.com", true),
        ("*.example.com", "A.Example.Com.", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", ".example.com", false),
        ("*.example.com", "a..example.com", false),
        ("*.example.com", "badexample.com", false),
        ("*.example.com", "example.com.evil.test", false),
        ("*.example.com", "a.example.com.evil.test", false),
        ("*.example.com", "a.example.co", false),
        ("*.example.com", "a b.example.com", false),
        ("*.example.com", "a.example.com/", false),
        // punycode passes through untouched; unicode never matches
        ("xn--bcher-kva.example", "xn--bcher-kva.example", true),
        ("xn--bcher-kva.example", "XN--BCHER-KVA.example", true),
        ("xn--bcher-kva.example", "bücher.example", false),
        ("*.xn--bcher-kva.example", "www.xn--bcher-kva.example", true),
        // IP literal patterns compare addresses
        ("10.0.0.5", "10.0.0.5", true),
        ("10.0.0.5", "10.0.0.50", false),
        ("::1", "[::1]", true),
        ("::1", "0:0:0:0:0:0:0:1", true),
        ("*.0.0.5", "10.0.0.5", false),
    ]);
}

#[test]
fn host_pattern_validation() {
    for bad in [
        "",
        "  ",
        "*",
        "*.",
        "*.com",
        "**.example.com",
        "a.*.example.com",
        "*example.com",
        "a..example.com",
        ".example.com",
        "exa mple.com",
        "bücher.example",
        "example.com:0",
        "example.com:99999",
        "example.com:x",
        "https://example.com",
        &format!("{}.com", "a".repeat(64)),
    ] {
        assert!(
            HostPattern::parse(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    for (good, normal) in [
        ("Example.COM.", "example.com"),
        ("*.Example.com", "*.example.com"),
        ("localhost", "localhost"),
        ("[::1]", "::1"),
        ("_acme.example.com", "_acme.example.com"),
        ("API.example.com:8443", "api.example.com:8443"),
        ("*.example.com:8443", "*.example.com:8443"),
    ] {
        assert_eq!(HostPattern::parse(good).unwrap().as_str(), normal);
    }
}

#[test]
fn example_config_file_parses() {
    let c = parse(include_str!("../../vault.example.yaml")).unwrap();
    assert_eq!(c.credentials.len(), 7);
    assert_eq!(
        c.credentials["NPM_TOKEN"].source,
        CredentialSource::Stored("npm".into())
    );
    assert_eq!(
        c.credentials["ANTHROPIC_API_KEY"].scope.positions,
        vec![Position::Header("x-api-key".into())]
    );
    assert!(c.egress.allows("objects.githubusercontent.com"));
}

#[test]
fn duplicate_keys_are_refused() {
    let yaml = "credentials:\n  A: { value_env: X, allowed_hosts: [a.com] }\n  A: { value_env: Y, allowed_hosts: [evil.com] }\n";
    assert!(parse(yaml).is_err());
    assert!(parse("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n").is_err());
}

#[test]
fn telemetry_otlp_endpoint() {
    assert_eq!(parse("").unwrap().telemetry.otlp_endpoint, None);
    let c = parse("telemetry: { otlp_endpoint: 'http://otel-collector:4318' }\n").unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://otel-collector:4318")
    );
    assert_eq!(
        parse("telemetry: { otlp_endpoint: '  ' }\n")
            .unwrap()
            .telemetry
            .otlp_endpoint,
        None
    );
    check_error(
        "telemetry: { otlp_endpoint: 'collector:4318' }",
        "telemetry.otlp_endpoint",
    );
    check_error("telemetry: { endpoint: 'http://c:4318' }", "endpoint");
}
