//! Local fakes for the providers that are not OpenAI or Anthropic, each
//! following its provider's published wire format (cited per fake), plus
//! helpers to serve a gateway built from a config with a given environment.
#![allow(dead_code)]

pub mod azure;
pub mod bedrock;
pub mod google;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

pub async fn serve(app: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// A gateway served on 127.0.0.1:0 from `cfg`.
pub struct Served {
    pub gw: gateway::Gateway,
    pub base: String,
}

pub async fn serve_config(cfg: gateway::config::Config) -> Served {
    let gw = gateway::Gateway::from_config(cfg, gateway::store::Store::Memory)
        .await
        .unwrap();
    let addr = serve(gw.router()).await;
    Served {
        gw,
        base: format!("http://{addr}"),
    }
}

/// Load a config file with environment variables from `env` only (the
/// process environment is shared by parallel tests, so it is never used).
pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> gateway::config::Config {
    gateway::config::Config::load_with_env(path, &|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn yaml_with_env(yaml: &str, env: &HashMap<String, String>) -> gateway::config::Config {
    gateway::config::Config::from_yaml_str_with_env(
        yaml,
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &|k| env.get(k).cloned(),
    )
    .unwrap()
}

pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POST JSON with a bearer key; returns (status, body as JSON or a string).
pub async fn post(url: &str, key: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = client()
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let t = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)),
    )
}

/// POST and return the raw SSE text.
pub async fn post_text(url: &str, key: &str, body: &serde_json::Value) -> (u16, String) {
    let r = client()
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
