//! Helpers shared by unit tests.

use std::sync::Arc;

use crate::config::{HostPattern, Position, Scope};
use crate::grants::Grants;
use crate::secrets::{Credential, Credentials, SecretValue};

/// Real values used by unit tests.
pub const GH_REAL: &str = "ghp_REALREALREALREALREALREALREALREAL1234";
pub const ANT_REAL: &str = "sk-ant-api03-realrealrealrealrealrealreal-abcdEFGH";
pub const BODY_REAL: &str = "body_secret_value_0123456789abcdef";

pub fn cred(name: &str, value: &str, hosts: &[&str], positions: &[&str]) -> Credential {
    Credential {
        name: name.to_string(),
        value: SecretValue::new(value.to_string()),
        allowed_hosts: hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        scope: Scope {
            positions: positions
                .iter()
                .map(|p| Position::parse(p).unwrap())
                .collect(),
            ..Scope::default()
        },
        kind: Default::default(),
        aws: None,
        minter: None,
    }
}

/// Credentials: GH (api.github.test, *.github.test; header:authorization,
/// query:access_token), ANT (api.anthropic.test; header:x-api-key), BODY
/// (api.github.test; header:authorization, form:token, json:/auth/token).
pub fn creds() -> Arc<Credentials> {
    let mut c = Credentials::default();
    c.insert(cred(
        "GH",
        GH_REAL,
        &["api.github.test", "*.github.test"],
        &["header:authorization", "query:access_token"],
    ));
    c.insert(cred(
        "ANT",
        ANT_REAL,
        &["api.anthropic.test"],
        &["header:x-api-key"],
    ));
    c.insert(cred(
        "BODY",
        BODY_REAL,
        &["api.github.test"],
        &["header:authorization", "form:token", "json:/auth/token"],
    ));
    Arc::new(c)
}

pub fn grants() -> Grants {
    Grants::new(creds())
}
