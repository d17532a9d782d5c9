//! The in-process gateway the loop calls (no HTTP hop) and whose routes the brain serves.

use std::collections::HashMap;
use std::path::Path;

use gateway::canonical::{ChatRequest, ChatResponse};
use gateway::pricing::{self, Price};

use super::config::ModelsConfig;
use crate::config::MasterKey;
use crate::store::{Db, Store};

/// The gateway plus what the loop needs around it.
pub struct Models {
    pub gateway: gateway::Gateway,
    pub default_model: String,
    names: Vec<String>,
    /// model_name → price of its (first) deployment, as the gateway's spend uses it.
    prices: HashMap<String, Price>,
}

impl Models {
    /// Builds the gateway from `models:` (None when nothing is configured). Keys and spend
    /// live in the brain's database; the gateway's HTTP routes take the brain's master key
    /// unless the LiteLLM config sets its own.
    pub async fn build(
        config: &ModelsConfig,
        base_dir: &Path,
        store: &Store,
        master_key: &MasterKey,
    ) -> Result<Option<Self>, String> {
        let mut gw_config = if let Some(path) = &config.config {
            gateway::config::Config::load(path)
                .map_err(|e| format!("models.config {}: {e}", path.display()))?
        } else if !config.model_list.is_empty() {
            let mut root = serde_json::json!({ "model_list": config.model_list });
            if let Some(ls) = &config.litellm_settings {
                root["litellm_settings"] = ls.clone();
            }
            if let Some(rs) = &config.router_settings {
                root["router_settings"] = rs.clone();
            }
            gateway::config::Config::from_value(&root, base_dir)
                .map_err(|e| format!("models.model_list: {e}"))?
        } else {
            return Ok(None);
        };
        for warning in &gw_config.warnings {
            tracing::warn!(%warning, "models config");
        }
        if gw_config.master_key.is_none() {
            gw_config.master_key = Some(gateway::config::Secret(master_key.expose().to_owned()));
        }
        let mut names = Vec::new();
        let mut prices = HashMap::new();
        for entry in &gw_config.model_list {
            if !names.contains(&entry.model_name) {
                names.push(entry.model_name.clone());
            }
            prices
                .entry(entry.model_name.clone())
                .or_insert(pricing::for_deployment(
                    pricing::provider_prefix(&entry.provider),
                    &entry.model,
                    entry.input_cost_per_token,
                    entry.output_cost_per_token,
                ));
        }
        let default_model = match &config.default_model {
            Some(m) => m.clone(),
            None => names
                .first()
                .cloned()
                .ok_or("models: the model list is empty")?,
        };
        let gw_store = match store.db() {
            Db::Sqlite(pool) => gateway::store::Store::Sqlite(pool.clone()),
            Db::Postgres(pool) => gateway::store::Store::Postgres(pool.clone()),
        };
        let gateway = gateway::Gateway::from_config(gw_config, gw_store)
            .await
            .map_err(|e| format!("starting the gateway: {e}"))?;
        Ok(Some(Self {
            gateway,
            default_model,
            names,
            prices,
        }))
    }

    /// Whether `model` is one the gateway serves (exact `model_name`, or a wildcard group).
    pub fn knows(&self, model: &str) -> bool {
        self.names.iter().any(|n| wildcard_match(n, model))
    }

    pub fn cost(&self, requested: &str, response: &ChatResponse) -> f64 {
        let price = self
            .prices
            .get(requested)
            .copied()
            .unwrap_or_else(|| pricing::lookup(&response.model));
        price.cost(response.usage)
    }

    pub async fn chat(
        &self,
        request: ChatRequest,
    ) -> Result<ChatResponse, gateway::error::GatewayError> {
        self.gateway.chat(request, None).await
    }
}

/// `*` matches any run of characters (LiteLLM wildcard model names like `openai/*`).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, suffix)) => {
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards_match_prefix_and_suffix() {
        assert!(wildcard_match("demo", "demo"));
        assert!(!wildcard_match("demo", "demo2"));
        assert!(wildcard_match("openai/*", "openai/gpt-4o"));
        assert!(!wildcard_match("openai/*", "anthropic/claude"));
        assert!(wildcard_match("*-mini", "gpt-4o-mini"));
    }
}
