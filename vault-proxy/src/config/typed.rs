//! `type:` of a credential (DESIGN.md, "Contract: vault proxy"): what the
//! proxy does with it besides the plain stub swap, and the keys each type
//! adds. This build implements `aws_sigv4`; `github_app` and
//! `oauth2_refresh` are named so configs fail with a clear error.

use serde::Deserialize;

use super::{ConfigError, RawCredential, invalid, is_env_name};

/// What the proxy does with a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// The sandbox's stub is swapped for the real value (the default).
    #[default]
    Static,
    /// AWS Signature V4: the sandbox signs with a stub key pair, the proxy
    /// verifies that signature and re-signs with the real keys.
    AwsSigv4,
    /// GitHub App installation tokens minted by the proxy.
    GithubApp,
    /// OAuth2 access tokens refreshed by the proxy.
    Oauth2Refresh,
}

impl CredentialType {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Static => "static",
            CredentialType::AwsSigv4 => "aws_sigv4",
            CredentialType::GithubApp => "github_app",
            CredentialType::Oauth2Refresh => "oauth2_refresh",
        }
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
    rc: &mut RawCredential,
) -> Result<Option<AwsSigv4Config>, ConfigError> {
    let aws_keys_given = rc.access_key_id.is_some()
        || rc.access_key_id_env.is_some()
        || rc.secret_access_key_env.is_some()
        || rc.secret_access_key_file.is_some()
        || rc.region.is_some();
    match rc.kind {
        CredentialType::Static => {
            if aws_keys_given {
                return Err(invalid(
                    key,
                    "access_key_id/secret_access_key_*/region need `type: aws_sigv4`",
                ));
            }
            Ok(None)
        }
        CredentialType::GithubApp | CredentialType::Oauth2Refresh => Err(invalid(
            format!("{key}.type"),
            format!("`{}` is not supported by this build", rc.kind.as_str()),
        )),
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
                "credentials:\n  G: { type: github_app, value_env: X, allowed_hosts: [a.example] }\n",
                "credentials.G.type",
            ),
            (
                "credentials:\n  G: { type: nope, value_env: X, allowed_hosts: [a.example] }\n",
                "unknown variant",
            ),
        ] {
            let e = load(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
