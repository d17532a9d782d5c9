//! Typed credentials (`type:` under `credentials:`, DESIGN.md "Contract: vault proxy",
//! rule 4): the sandbox still holds only a stub, and the proxy does the secret work.
//!
//! - `github_app`: `app_id`, `installation_id`, the App's RSA private key
//!   (`private_key_file` | `private_key_env` | `private_key_stored`), `api_base`
//!   (default `https://api.github.com`; GitHub Enterprise: `https://HOST/api/v3`), optional
//!   `repositories` / `permissions` to narrow the installation token.
//! - `oauth2_refresh`: `token_url` (https), `client_id` | `client_id_env`,
//!   `client_secret_env` (optional: public clients have none), `client_auth`
//!   (`basic`, the default, or `post`: RFC 6749 §2.3.1), `scope`, and the refresh token
//!   (`refresh_token_env` | `refresh_token_file` | `refresh_token_stored`; only a stored
//!   one survives rotation across restarts).
//! - `aws_sigv4`: `access_key_id` | `access_key_id_env`, the secret key
//!   (`secret_access_key_env` | `secret_access_key_file` | `stored`), optional `region`
//!   ([`aws_fields`]).
//!
//! The long-lived secret of a typed credential (private key, refresh token) becomes the
//! credential's [`CredentialSource`], so it is read, zeroized and scrubbed like any value.

use std::collections::BTreeMap;
use std::path::Path;

use super::{ConfigError, CredentialSource, RawCredential, invalid, is_credential_name};
use super::{is_env_name, resolve_path};

/// What kind of credential this is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialType {
    /// A plain value swapped for its stub (no `type:`).
    #[default]
    Static,
    /// `type: aws_sigv4`: the sandbox signs with a stub key pair, the proxy verifies that
    /// signature and re-signs with the real keys (settings in [`AwsSigv4Config`]).
    AwsSigv4,
    /// `type: github_app`.
    GithubApp(GithubAppConfig),
    /// `type: oauth2_refresh`.
    Oauth2Refresh(OAuth2Config),
}

impl CredentialType {
    /// The `type:` spelling (audit records name it).
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialType::Static => "static",
            CredentialType::AwsSigv4 => "aws_sigv4",
            CredentialType::GithubApp(_) => "github_app",
            CredentialType::Oauth2Refresh(_) => "oauth2_refresh",
        }
    }

    /// True for the types whose real value is minted by the proxy.
    pub fn is_minted(&self) -> bool {
        matches!(
            self,
            CredentialType::GithubApp(_) | CredentialType::Oauth2Refresh(_)
        )
    }
}

/// An `https://host[:port]/path` endpoint the proxy itself calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Lower-case host name.
    pub host: String,
    /// Port (443 unless given).
    pub port: u16,
    /// Path, no trailing `/` (empty for the root).
    pub path: String,
}

impl Endpoint {
    /// Parses an `https://` URL without query, fragment or userinfo.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
        if uri.scheme_str() != Some("https") {
            return Err(
                "must be an https:// URL (the proxy never sends secrets in the clear)".into(),
            );
        }
        let auth = uri.authority().ok_or("has no host")?;
        if auth.as_str().contains('@') {
            return Err("must not contain user info".into());
        }
        if uri.query().is_some() || url.contains('#') {
            return Err("must not have a query or fragment".into());
        }
        let host = auth.host().trim_matches(['[', ']']).to_ascii_lowercase();
        if host.is_empty() {
            return Err("has no host".into());
        }
        Ok(Endpoint {
            host,
            port: auth.port_u16().unwrap_or(443),
            path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// `host` or `host:port` (for the `Host` header).
    pub fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `type: github_app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubAppConfig {
    /// The App's id (the JWT `iss`).
    pub app_id: u64,
    /// The installation whose tokens are minted.
    pub installation_id: u64,
    /// REST API base (`https://api.github.com`, or `https://HOST/api/v3` for GHES).
    pub api: Endpoint,
    /// Optional: narrow the token to these repository names.
    pub repositories: Vec<String>,
    /// Optional: narrow the token's permissions (`contents: write`, …).
    pub permissions: BTreeMap<String, String>,
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded id and secret (servers MUST support it).
    Basic,
    /// `client_id` / `client_secret` in the form body.
    Post,
}

/// `type: oauth2_refresh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    /// The token endpoint.
    pub token_url: Endpoint,
    /// The client id, or the env var holding it.
    pub client_id: ValueRef,
    /// Env var holding the client secret (none for public clients).
    pub client_secret_env: Option<String>,
    /// `basic` (default) or `post`.
    pub client_auth: ClientAuth,
    /// Optional `scope` sent with the refresh (RFC 6749 §6).
    pub scope: Option<String>,
}

/// A non-secret value given inline or through an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRef {
    /// Written in the config.
    Inline(String),
    /// Read from this env var at start.
    Env(String),
}

/// Parses the `type:` keys of one credential. Returns the type and, for typed
/// credentials, where their long-lived secret lives.
pub(super) fn parse(
    key: &str,
    rc: &RawCredential,
    base: &Path,
) -> Result<(CredentialType, Option<CredentialSource>), ConfigError> {
    let k = |f: &str| format!("{key}.{f}");
    let kind = rc.kind.as_deref();
    let github_keys = [
        ("app_id", rc.app_id.is_some()),
        ("installation_id", rc.installation_id.is_some()),
        ("private_key_file", rc.private_key_file.is_some()),
        ("private_key_env", rc.private_key_env.is_some()),
        ("private_key_stored", rc.private_key_stored.is_some()),
        ("api_base", rc.api_base.is_some()),
        ("repositories", rc.repositories.is_some()),
        ("permissions", rc.permissions.is_some()),
    ];
    let oauth_keys = [
        ("token_url", rc.token_url.is_some()),
        ("client_id", rc.client_id.is_some()),
        ("client_id_env", rc.client_id_env.is_some()),
        ("client_secret_env", rc.client_secret_env.is_some()),
        ("client_auth", rc.client_auth.is_some()),
        ("scope", rc.scope.is_some()),
        ("refresh_token_env", rc.refresh_token_env.is_some()),
        ("refresh_token_file", rc.refresh_token_file.is_some()),
        ("refresh_token_stored", rc.refresh_token_stored.is_some()),
    ];
    let foreign = |keys: &[(&str, bool)], ty: &str| -> Result<(), ConfigError> {
        match keys.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(invalid(
                k(name),
                format!("only applies to `type: {ty}` credentials"),
            )),
            None => Ok(()),
        }
    };
    let value_keys_set = rc.value_env.is_some() || rc.value_file.is_some() || rc.stored.is_some();
    let no_value_keys = |what: &str| -> Result<(), ConfigError> {
        if value_keys_set {
            return Err(invalid(
                key,
                format!(
                    "typed credentials name their secret with {what}, not value_env/value_file/stored"
                ),
            ));
        }
        Ok(())
    };
    match kind {
        None | Some("static") => {
            foreign(&github_keys, "github_app")?;
            foreign(&oauth_keys, "oauth2_refresh")?;
            Ok((CredentialType::Static, None))
        }
        // Its own keys (key id, secret, region) are checked by [`aws_fields`].
        Some("aws_sigv4") => {
            foreign(&github_keys, "github_app")?;
            foreign(&oauth_keys, "oauth2_refresh")?;
            Ok((CredentialType::AwsSigv4, None))
        }
        Some("github_app") => {
            foreign(&oauth_keys, "oauth2_refresh")?;
            no_value_keys("private_key_file/private_key_env/private_key_stored")?;
            let app_id = rc
                .app_id
                .ok_or_else(|| invalid(k("app_id"), "is required"))?;
            let installation_id = rc
                .installation_id
                .ok_or_else(|| invalid(k("installation_id"), "is required"))?;
            if app_id == 0 || installation_id == 0 {
                return Err(invalid(key, "app_id and installation_id must be positive"));
            }
            let source = one_source(
                key,
                ("private_key_env", &rc.private_key_env),
                ("private_key_file", &rc.private_key_file),
                ("private_key_stored", &rc.private_key_stored),
                base,
            )?;
            let api = Endpoint::parse(rc.api_base.as_deref().unwrap_or("https://api.github.com"))
                .map_err(|e| invalid(k("api_base"), e))?;
            let repositories = rc.repositories.clone().unwrap_or_default();
            if repositories
                .iter()
                .any(|r| r.is_empty() || r.contains('/') || r.len() > 100)
            {
                return Err(invalid(
                    k("repositories"),
                    "repository names without owner (`widgets`, not `acme/widgets`)",
                ));
            }
            let permissions = rc.permissions.clone().unwrap_or_default();
            for (p, level) in &permissions {
                if !matches!(level.as_str(), "read" | "write" | "admin")
                    || !p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                {
                    return Err(invalid(
                        k(&format!("permissions.{p}")),
                        "a GitHub permission name with `read`, `write` or `admin`",
                    ));
                }
            }
            Ok((
                CredentialType::GithubApp(GithubAppConfig {
                    app_id,
                    installation_id,
                    api,
                    repositories,
                    permissions,
                }),
                Some(source),
            ))
        }
        Some("oauth2_refresh") => {
            foreign(&github_keys, "github_app")?;
            no_value_keys("refresh_token_env/refresh_token_file/refresh_token_stored")?;
            let token_url = Endpoint::parse(
                rc.token_url
                    .as_deref()
                    .ok_or_else(|| invalid(k("token_url"), "is required"))?,
            )
            .map_err(|e| invalid(k("token_url"), e))?;
            let client_id = match (&rc.client_id, &rc.client_id_env) {
                (Some(id), None) if !id.is_empty() => ValueRef::Inline(id.clone()),
                (None, Some(env)) if is_env_name(env) => ValueRef::Env(env.clone()),
                _ => {
                    return Err(invalid(
                        key,
                        "exactly one of `client_id`, `client_id_env` (an env var name) must be set",
                    ));
                }
            };
            if let Some(env) = &rc.client_secret_env
                && !is_env_name(env)
            {
                return Err(invalid(
                    k("client_secret_env"),
                    "must be an environment variable name",
                ));
            }
            let client_auth = match rc.client_auth.as_deref() {
                None | Some("basic") => ClientAuth::Basic,
                Some("post") => ClientAuth::Post,
                Some(_) => return Err(invalid(k("client_auth"), "must be `basic` or `post`")),
            };
            let source = one_source(
                key,
                ("refresh_token_env", &rc.refresh_token_env),
                ("refresh_token_file", &rc.refresh_token_file),
                ("refresh_token_stored", &rc.refresh_token_stored),
                base,
            )?;
            Ok((
                CredentialType::Oauth2Refresh(OAuth2Config {
                    token_url,
                    client_id,
                    client_secret_env: rc.client_secret_env.clone(),
                    client_auth,
                    scope: rc.scope.clone(),
                }),
                Some(source),
            ))
        }
        Some(other) => Err(invalid(
            k("type"),
            format!("unknown type `{other}` (aws_sigv4, github_app, oauth2_refresh)"),
        )),
    }
}

fn one_source(
    key: &str,
    env: (&str, &Option<String>),
    file: (&str, &Option<std::path::PathBuf>),
    stored: (&str, &Option<String>),
    base: &Path,
) -> Result<CredentialSource, ConfigError> {
    match (env.1, file.1, stored.1) {
        (Some(e), None, None) if is_env_name(e) => Ok(CredentialSource::Env(e.clone())),
        (Some(_), None, None) => Err(invalid(
            format!("{key}.{}", env.0),
            "must be an environment variable name",
        )),
        (None, Some(f), None) => Ok(CredentialSource::File(resolve_path(base, f))),
        (None, None, Some(s)) if is_credential_name(s) => Ok(CredentialSource::Stored(s.clone())),
        (None, None, Some(_)) => Err(invalid(
            format!("{key}.{}", stored.0),
            "invalid store entry name",
        )),
        _ => Err(invalid(
            key,
            format!(
                "exactly one of `{}`, `{}`, `{}` must be set",
                env.0, file.0, stored.0
            ),
        )),
    }
}

/// Where a real AWS access key id comes from (it is not a secret, but it is
/// configured beside one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsKeyIdSource {
    /// `access_key_id: AKIA…`
    Literal(String),
    /// `access_key_id_env: NAME`
    Env(String),
}

/// `type: aws_sigv4` settings besides the secret (which is the credential's
/// source: `secret_access_key_env`, `secret_access_key_file` or `stored`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSigv4Config {
    /// The real access key id.
    pub access_key_id: AwsKeyIdSource,
    /// Default region handed to the sandbox (`AWS_REGION`).
    pub region: Option<String>,
}

/// Whether `s` has the shape of an AWS access key id (`AKIA…`/`ASIA…`, 16–128
/// upper-case letters and digits).
pub fn is_access_key_id(s: &str) -> bool {
    (16..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Checks the type-specific keys of one credential; for `aws_sigv4` moves
/// the secret's source into `value_env`/`value_file` so the common code
/// resolves it.
pub(super) fn aws_fields(
    key: &str,
    kind: &CredentialType,
    rc: &mut RawCredential,
) -> Result<Option<AwsSigv4Config>, ConfigError> {
    let aws_keys_given = rc.access_key_id.is_some()
        || rc.access_key_id_env.is_some()
        || rc.secret_access_key_env.is_some()
        || rc.secret_access_key_file.is_some()
        || rc.region.is_some();
    match kind {
        CredentialType::Static
        | CredentialType::GithubApp(_)
        | CredentialType::Oauth2Refresh(_) => {
            if aws_keys_given {
                return Err(invalid(
                    key,
                    "access_key_id/secret_access_key_*/region need `type: aws_sigv4`",
                ));
            }
            Ok(None)
        }
        CredentialType::AwsSigv4 => {
            if rc.value_env.is_some() || rc.value_file.is_some() {
                return Err(invalid(
                    key,
                    "an aws_sigv4 credential takes `secret_access_key_env`, \
                     `secret_access_key_file` or `stored`, not `value_env`/`value_file`",
                ));
            }
            if rc.positions.is_some() {
                return Err(invalid(
                    format!("{key}.positions"),
                    "an aws_sigv4 stub stands in the request's signature; positions do not apply",
                ));
            }
            rc.value_env = rc.secret_access_key_env.take();
            rc.value_file = rc.secret_access_key_file.take();
            let access_key_id = match (rc.access_key_id.take(), rc.access_key_id_env.take()) {
                (Some(id), None) => {
                    if !is_access_key_id(&id) {
                        return Err(invalid(
                            format!("{key}.access_key_id"),
                            "is not an AWS access key id (AKIA…)",
                        ));
                    }
                    AwsKeyIdSource::Literal(id)
                }
                (None, Some(env)) => {
                    if !is_env_name(&env) {
                        return Err(invalid(
                            format!("{key}.access_key_id_env"),
                            "must be an environment variable name",
                        ));
                    }
                    AwsKeyIdSource::Env(env)
                }
                _ => {
                    return Err(invalid(
                        key,
                        "exactly one of `access_key_id`, `access_key_id_env` must be set",
                    ));
                }
            };
            let region = rc.region.take();
            if let Some(r) = &region
                && (r.is_empty()
                    || !r
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
            {
                return Err(invalid(format!("{key}.region"), "is not a region name"));
            }
            Ok(Some(AwsSigv4Config {
                access_key_id,
                region,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(creds: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(&format!("credentials:\n{creds}"), Path::new("/etc/airlock"))
    }

    #[test]
    fn github_app_parses_with_defaults_and_ghes_base() {
        let c = load(
            "  APP: { type: github_app, app_id: 1, installation_id: 2, private_key_file: app.pem, allowed_hosts: [api.github.com, github.com] }\n",
        )
        .unwrap();
        let cc = &c.credentials["APP"];
        assert_eq!(
            cc.source,
            CredentialSource::File("/etc/airlock/app.pem".into())
        );
        let CredentialType::GithubApp(g) = &cc.kind else {
            panic!("{:?}", cc.kind)
        };
        assert_eq!((g.app_id, g.installation_id), (1, 2));
        assert_eq!(g.api.authority(), "api.github.com");
        assert_eq!(g.api.path, "");
        let c = load(
            "  APP: { type: github_app, app_id: 1, installation_id: 2, private_key_env: K, api_base: \"https://ghe.example.com:8443/api/v3/\", allowed_hosts: [ghe.example.com] }\n",
        )
        .unwrap();
        let CredentialType::GithubApp(g) = &c.credentials["APP"].kind else {
            panic!()
        };
        assert_eq!(
            (g.api.authority().as_str(), g.api.path.as_str()),
            ("ghe.example.com:8443", "/api/v3")
        );
    }

    #[test]
    fn typed_credentials_refuse_bad_or_mixed_keys() {
        let err = |yaml: &str| load(yaml).unwrap_err().to_string();
        assert!(err("  A: { type: github_app, installation_id: 2, private_key_env: K, allowed_hosts: [api.github.com] }\n").contains("credentials.A.app_id"));
        assert!(err("  A: { type: github_app, app_id: 1, installation_id: 2, private_key_env: K, value_env: V, allowed_hosts: [api.github.com] }\n").contains("not value_env"));
        assert!(err("  A: { type: github_app, app_id: 1, installation_id: 2, private_key_env: K, token_url: \"https://x.test/t\", allowed_hosts: [api.github.com] }\n").contains("credentials.A.token_url"));
        assert!(err("  A: { type: github_app, app_id: 1, installation_id: 2, private_key_env: K, api_base: \"http://api.github.com\", allowed_hosts: [api.github.com] }\n").contains("https://"));
        assert!(
            err("  A: { value_env: V, app_id: 3, allowed_hosts: [api.github.com] }\n")
                .contains("only applies to `type: github_app`")
        );
        assert!(err("  A: { type: oauth2_refresh, token_url: \"https://o.test/token?x=1\", client_id: c, refresh_token_env: R, allowed_hosts: [api.o.test] }\n").contains("query"));
        assert!(err("  A: { type: oauth2_refresh, token_url: \"https://o.test/token\", refresh_token_env: R, allowed_hosts: [api.o.test] }\n").contains("client_id"));
        assert!(err("  A: { type: oauth2_refresh, token_url: \"https://o.test/token\", client_id: c, allowed_hosts: [api.o.test] }\n").contains("refresh_token_env"));
        assert!(
            err("  A: { type: nope, value_env: V, allowed_hosts: [api.o.test] }\n")
                .contains("unknown type")
        );
    }

    #[test]
    fn oauth2_refresh_parses() {
        let c = load(
            "  G: { type: oauth2_refresh, token_url: \"https://oauth2.example.test/token\", client_id_env: C, client_secret_env: D, client_auth: post, scope: \"a b\", refresh_token_stored: google-refresh, allowed_hosts: [www.example.test] }\n",
        )
        .unwrap();
        let cc = &c.credentials["G"];
        assert_eq!(cc.source, CredentialSource::Stored("google-refresh".into()));
        let CredentialType::Oauth2Refresh(o) = &cc.kind else {
            panic!()
        };
        assert_eq!(o.token_url.path, "/token");
        assert_eq!(o.client_id, ValueRef::Env("C".into()));
        assert_eq!(o.client_auth, ClientAuth::Post);
        assert_eq!(o.scope.as_deref(), Some("a b"));
    }
}

#[cfg(test)]
mod aws_tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, CredentialSource};

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, Path::new("/etc/airlock"))
    }

    #[test]
    fn aws_sigv4_credential_parses() {
        let c = load(
            "credentials:\n  AWS: { type: aws_sigv4, access_key_id_env: A, secret_access_key_env: B, \
             region: eu-west-1, allowed_hosts: [s3.eu-west-1.amazonaws.com] }\n",
        )
        .unwrap();
        let cred = &c.credentials["AWS"];
        assert_eq!(cred.kind, CredentialType::AwsSigv4);
        assert_eq!(cred.source, CredentialSource::Env("B".into()));
        let aws = cred.aws.as_ref().unwrap();
        assert_eq!(aws.access_key_id, AwsKeyIdSource::Env("A".into()));
        assert_eq!(aws.region.as_deref(), Some("eu-west-1"));
        let c = load(
            "credentials:\n  AWS: { type: aws_sigv4, access_key_id: AKIAIOSFODNN7EXAMPLE, \
             secret_access_key_file: k.txt, allowed_hosts: [s3.amazonaws.com] }\n",
        )
        .unwrap();
        assert_eq!(
            c.credentials["AWS"].source,
            CredentialSource::File("/etc/airlock/k.txt".into())
        );
        // The default type is the plain swap.
        let c = load("credentials:\n  T: { value_env: X, allowed_hosts: [a.example] }\n").unwrap();
        assert_eq!(c.credentials["T"].kind, CredentialType::Static);
        assert!(c.credentials["T"].aws.is_none());
    }

    #[test]
    fn aws_sigv4_errors_name_the_key() {
        for (yaml, want) in [
            (
                "credentials:\n  AWS: { type: aws_sigv4, value_env: B, access_key_id: AKIAIOSFODNN7EXAMPLE, allowed_hosts: [s3.amazonaws.com] }\n",
                "credentials.AWS",
            ),
            (
                "credentials:\n  AWS: { type: aws_sigv4, secret_access_key_env: B, allowed_hosts: [s3.amazonaws.com] }\n",
                "exactly one of `access_key_id`",
            ),
            (
                "credentials:\n  AWS: { type: aws_sigv4, access_key_id: nope, secret_access_key_env: B, allowed_hosts: [s3.amazonaws.com] }\n",
                "credentials.AWS.access_key_id",
            ),
            (
                "credentials:\n  AWS: { type: aws_sigv4, access_key_id: AKIAIOSFODNN7EXAMPLE, secret_access_key_env: B, positions: [path], allowed_hosts: [s3.amazonaws.com] }\n",
                "credentials.AWS.positions",
            ),
            (
                "credentials:\n  T: { value_env: X, region: us-east-1, allowed_hosts: [a.example] }\n",
                "need `type: aws_sigv4`",
            ),
            (
                "credentials:\n  G: { type: nope, value_env: X, allowed_hosts: [a.example] }\n",
                "unknown type",
            ),
        ] {
            let e = load(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
