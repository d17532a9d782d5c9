//! Helpers shared by unit tests.

use std::sync::Arc;

use crate::config::{HostPattern, SwapIn};
use crate::grants::Grants;
use crate::secrets::{Credential, Credentials, SecretValue};

/// Real values used by unit tests.
pub const GH_REAL: &str = "ghp_REALREALREALREALREALREALREALREAL1234";
pub const ANT_REAL: &str = "sk-ant-api03-realrealrealrealrealrealreal-abcdEFGH";
pub const BODY_REAL: &str = "body_secret_value_0123456789abcdef";

pub fn cred(name: &str, value: &str, hosts: &[&str], swap_in: SwapIn) -> Credential {
    Credential {
        name: name.to_string(),
        value: SecretValue::new(value.to_string()),
        allowed_hosts: hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        swap_in,
    }
}

/// Credentials: GH (api.github.test, *.github.test; header+query), ANT
/// (api.anthropic.test; header), BODY (api.github.test; header+body).
pub fn creds() -> Arc<Credentials> {
    let mut c = Credentials::default();
    c.insert(cred(
        "GH",
        GH_REAL,
        &["api.github.test", "*.github.test"],
        SwapIn::default(),
    ));
    c.insert(cred(
        "ANT",
        ANT_REAL,
        &["api.anthropic.test"],
        SwapIn {
            header: true,
            query: false,
            body: false,
        },
    ));
    c.insert(cred(
        "BODY",
        BODY_REAL,
        &["api.github.test"],
        SwapIn {
            header: true,
            query: false,
            body: true,
        },
    ));
    Arc::new(c)
}

pub fn grants() -> Grants {
    Grants::new(creds())
}
