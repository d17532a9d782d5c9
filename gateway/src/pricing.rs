//! Prices in LiteLLM's `model_prices_and_context_window.json` format.
//!
//! The built-in table (`data/model_prices_and_context_window.json`) is the subset of
//! LiteLLM's own file (litellm 1.110.2, MIT licence) for the providers the gateway speaks:
//! openai, anthropic, azure, bedrock, vertex_ai and gemini, chat/completion/embedding/
//! responses modes, pricing fields only. A user replaces it with their own file (same
//! format; LiteLLM's full file works) through `LITELLM_MODEL_COST_MAP_URL` — LiteLLM's own
//! variable — set to a path or a `file://` URL. Nothing is fetched over the network.
//!
//! Lookup follows LiteLLM's `_model_cost_lookup_order` (litellm/utils.py): the
//! provider-qualified name, the name as given, then the name with a *dated snapshot
//! suffix* removed (`-2024-08-06`; vertex/gemini `-002`; bedrock region prefixes and
//! `:0` versions). There is no prefix matching: `o3-pro` is not `o3`.

use crate::canonical::Usage;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The environment variable naming a replacement price file (LiteLLM's name).
pub const COST_MAP_ENV: &str = "LITELLM_MODEL_COST_MAP_URL";

const BUILTIN: &str = include_str!("../data/model_prices_and_context_window.json");

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("{COST_MAP_ENV}={0}: only local files (a path or file://) are supported")]
    Remote(String),
    #[error("reading price file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("price file {path} is not a LiteLLM model cost map: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// USD per token; cache prices fall back to the input price when the table has none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_creation: Option<f64>,
    /// False when neither the table nor the config priced this model: its spend is $0
    /// and budgeted keys are refused (see `keys::Caller::check_priced`).
    pub known: bool,
}

impl Price {
    pub fn new(input: f64, output: f64) -> Self {
        Price {
            input,
            output,
            cache_read: None,
            cache_creation: None,
            known: true,
        }
    }

    /// Cost of one call. `input_tokens` includes cached tokens (both formats'
    /// canonical form); those are billed at the cache prices instead.
    pub fn cost(&self, u: Usage) -> f64 {
        let cached = u.cache_read_tokens + u.cache_creation_tokens;
        let plain = u.input_tokens.saturating_sub(cached);
        plain as f64 * self.input
            + u.cache_read_tokens as f64 * self.cache_read.unwrap_or(self.input)
            + u.cache_creation_tokens as f64 * self.cache_creation.unwrap_or(self.input)
            + u.output_tokens as f64 * self.output
    }
}

/// One entry of a LiteLLM model cost map (fields we do not use are ignored).
#[derive(Debug, Clone, serde::Deserialize)]
struct Entry {
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
    cache_creation_input_token_cost: Option<f64>,
    #[serde(default)]
    litellm_provider: Option<String>,
}

/// A parsed model cost map.
#[derive(Debug, Default)]
pub struct PriceTable {
    map: HashMap<String, Price>,
    provider: HashMap<String, String>,
}

impl PriceTable {
    /// Parse LiteLLM's JSON format. Entries without token prices (images, audio,
    /// `sample_spec`) are skipped rather than failing the file.
    pub fn parse(json: &str) -> Result<PriceTable, serde_json::Error> {
        // Each entry is kept as its raw text and decoded alone: the file is never a
        // `serde_json::Value` tree (~10 allocations per entry, a few MB for LiteLLM's full
        // file), and an entry of another shape is skipped instead of failing the load.
        let raw: HashMap<String, &serde_json::value::RawValue> = serde_json::from_str(json)?;
        let mut t = PriceTable::default();
        t.map.reserve(raw.len());
        for (k, v) in raw {
            let Ok(e) = serde_json::from_str::<Entry>(v.get()) else {
                continue;
            };
            let (Some(i), o) = (e.input_cost_per_token, e.output_cost_per_token) else {
                continue;
            };
            t.map.insert(
                k.clone(),
                Price {
                    input: i,
                    output: o.unwrap_or(0.0),
                    cache_read: e.cache_read_input_token_cost,
                    cache_creation: e.cache_creation_input_token_cost,
                    known: true,
                },
            );
            if let Some(p) = e.litellm_provider {
                t.provider.insert(k, p);
            }
        }
        Ok(t)
    }

    pub fn builtin() -> PriceTable {
        // The vendored file is checked by a unit test; an error here is a build defect.
        PriceTable::parse(BUILTIN).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Price of `model` served by `provider` (a LiteLLM provider prefix such as
    /// `openai`, `azure`, `bedrock`, `vertex_ai`, `gemini`, `anthropic`), or None.
    pub fn find(&self, provider: Option<&str>, model: &str) -> Option<Price> {
        // A model given with its own prefix (`openai/gpt-4o`) names its provider.
        let (provider, model) = match (provider, model.split_once('/')) {
            (None, Some((p, m))) if KNOWN_PREFIXES.contains(&p) => (Some(p), m),
            (Some(p), Some((q, m))) if p == q => (Some(p), m),
            _ => (provider, model),
        };
        for cand in candidates(provider, model) {
            if let Some(p) = self.map.get(&cand) {
                return Some(*p);
            }
        }
        None
    }
}

const KNOWN_PREFIXES: &[&str] = &[
    "openai",
    "anthropic",
    "azure",
    "azure_ai",
    "bedrock",
    "bedrock_converse",
    "vertex_ai",
    "gemini",
    "text-completion-openai",
];

const BEDROCK_REGIONS: &[&str] = &[
    "us.", "eu.", "apac.", "jp.", "au.", "ca.", "global.", "us-gov.",
];

/// Names to try, in LiteLLM's order: combined, as given, stripped variants.
fn candidates(provider: Option<&str>, model: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(6);
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    if let Some(p) = provider {
        push(format!("{p}/{model}"));
    }
    push(model.to_owned());
    let stripped = strip_snapshot(provider, model);
    for s in stripped {
        if let Some(p) = provider {
            push(format!("{p}/{s}"));
        }
        push(s);
    }
    out
}

/// LiteLLM's `_strip_model_name`: only well-defined version suffixes go.
fn strip_snapshot(provider: Option<&str>, model: &str) -> Vec<String> {
    match provider {
        Some("bedrock" | "bedrock_converse") => {
            let mut m = model;
            for r in BEDROCK_REGIONS {
                if let Some(rest) = m.strip_prefix(r) {
                    m = rest;
                    break;
                }
            }
            let mut v = vec![m.to_owned()];
            // `…-v1:0` → `…-v1` (BedrockModelInfo.get_base_model).
            if let Some((base, ver)) = m.rsplit_once(':')
                && !ver.is_empty()
                && ver.bytes().all(|b| b.is_ascii_digit())
            {
                v.push(base.to_owned());
            }
            v
        }
        Some("vertex_ai" | "gemini") => {
            // `-\d+$`: gemini-1.5-pro-002 → gemini-1.5-pro
            match model.rsplit_once('-') {
                Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    vec![base.to_owned()]
                }
                _ => vec![],
            }
        }
        _ => {
            // `-\d{4}-\d{2}-\d{2}$`: gpt-4o-2024-08-06 → gpt-4o
            let b = model.as_bytes();
            let n = b.len();
            let is_date = n > 11
                && b[n - 11] == b'-'
                && b[n - 6] == b'-'
                && b[n - 3] == b'-'
                && [n - 10, n - 9, n - 8, n - 7, n - 5, n - 4, n - 2, n - 1]
                    .iter()
                    .all(|&i| b[i].is_ascii_digit());
            if is_date {
                vec![model[..n - 11].to_owned()]
            } else {
                vec![]
            }
        }
    }
}

static TABLE: OnceLock<PriceTable> = OnceLock::new();

/// Load the price table once per process: the file named by `LITELLM_MODEL_COST_MAP_URL`,
/// else the built-in one. A named file that cannot be read is an error (never a silent $0).
pub fn init() -> Result<&'static PriceTable, PricingError> {
    if let Some(t) = TABLE.get() {
        return Ok(t);
    }
    let t = match std::env::var(COST_MAP_ENV) {
        Ok(url) if !url.trim().is_empty() => load_file(url.trim())?,
        _ => PriceTable::builtin(),
    };
    Ok(TABLE.get_or_init(|| t))
}

/// Read a cost map from a path or `file://` URL.
pub fn load_file(url: &str) -> Result<PriceTable, PricingError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(PricingError::Remote(url.to_owned()));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    let text = std::fs::read_to_string(path).map_err(|source| PricingError::Read {
        path: path.to_owned(),
        source,
    })?;
    PriceTable::parse(&text).map_err(|source| PricingError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The process's table (built-in if [`init`] was never called or failed).
pub fn table() -> &'static PriceTable {
    TABLE.get_or_init(PriceTable::builtin)
}

/// Price of a model name, possibly `provider/`-prefixed; unknown = zero with `known: false`.
pub fn lookup(model: &str) -> Price {
    table().find(None, model).unwrap_or_default()
}

/// The LiteLLM provider prefix for a deployment's provider kind (for qualified lookups).
pub fn provider_prefix(kind: &crate::config::ProviderKind) -> Option<&'static str> {
    // Matched on the variant's name so new provider kinds need no change here to compile;
    // an unlisted one is looked up unqualified.
    let name = format!("{kind:?}").to_ascii_lowercase();
    let name = name.split('(').next().unwrap_or("");
    Some(match name {
        "openai" => "openai",
        "anthropic" => "anthropic",
        "azure" => "azure",
        "bedrock" => "bedrock",
        "vertex" | "vertexai" | "vertex_ai" => "vertex_ai",
        "gemini" => "gemini",
        _ => return None,
    })
}

/// The name a deployment is priced under: `model_info.base_model` when set (LiteLLM's
/// way to price an Azure deployment whose name is the customer's own, e.g.
/// `base_model: azure/gpt-4o`), else its upstream model. A `base_model` with its own
/// provider prefix names that provider.
pub fn priced_name<'a>(
    provider: Option<&'static str>,
    model: &'a str,
    model_info: Option<&'a serde_json::Value>,
) -> (Option<&'static str>, &'a str) {
    match model_info
        .and_then(|i| i.get("base_model"))
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        Some(b) => match b.split_once('/') {
            Some((p, _)) if KNOWN_PREFIXES.contains(&p) => (None, b),
            _ => (provider, b),
        },
        None => (provider, model),
    }
}

/// Price of one deployment: the table's, with the config's `input_cost_per_token` /
/// `output_cost_per_token` on top (LiteLLM custom pricing).
pub fn for_deployment(
    provider: Option<&str>,
    model: &str,
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
) -> Price {
    let base = table().find(provider, model);
    match (input_cost_per_token, output_cost_per_token, base) {
        (None, None, Some(p)) => p,
        (None, None, None) => Price::default(),
        (i, o, base) => {
            let b = base.unwrap_or_default();
            Price {
                input: i.unwrap_or(b.input),
                output: o.unwrap_or(b.output),
                // Custom prices replace the table's; cache tokens then cost the custom input price.
                cache_read: if i.is_some() { None } else { b.cache_read },
                cache_creation: if i.is_some() { None } else { b.cache_creation },
                known: true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> PriceTable {
        PriceTable::builtin()
    }

    #[test]
    fn builtin_parses_and_covers_the_providers() {
        let t = t();
        assert!(t.len() > 800, "{}", t.len());
        for (p, m) in [
            (Some("openai"), "gpt-4o"),
            (Some("anthropic"), "claude-sonnet-4-5"),
            (Some("azure"), "gpt-4o"),
            (Some("bedrock"), "anthropic.claude-3-5-sonnet-20240620-v1:0"),
            (Some("vertex_ai"), "gemini-2.5-pro"),
            (Some("vertex_ai"), "claude-sonnet-4-5"),
            (Some("gemini"), "gemini-2.5-flash"),
            (None, "text-embedding-3-small"),
        ] {
            assert!(t.find(p, m).is_some(), "{p:?} {m}");
        }
    }

    #[test]
    fn no_prefix_matching() {
        let t = t();
        let o3 = t.find(Some("openai"), "o3").unwrap();
        let o3pro = t.find(Some("openai"), "o3-pro").unwrap();
        assert_eq!(o3.input, 2e-6);
        assert_eq!(o3pro.input, 2e-5);
        assert_eq!(t.find(Some("openai"), "gpt-5").unwrap().output, 1e-5);
        assert_eq!(t.find(Some("openai"), "gpt-5-pro").unwrap().output, 1.2e-4);
        assert!(t.find(Some("openai"), "gpt-4o-turbo-imaginary").is_none());
        assert!(t.find(None, "mystery").is_none());
        assert_eq!(lookup("mystery"), Price::default());
    }

    #[test]
    fn dated_variants_resolve_as_litellm_does() {
        let t = t();
        let s = t
            .find(Some("anthropic"), "claude-sonnet-4-5-20250929")
            .unwrap();
        assert_eq!((s.input, s.output), (3e-6, 1.5e-5));
        assert_eq!(s.cache_read, Some(3e-7));
        assert_eq!(s.cache_creation, Some(3.75e-6));
        // OpenAI snapshot suffix not in the table → its base model.
        let g = t.find(Some("openai"), "gpt-4o-2099-01-01").unwrap();
        assert_eq!(g.input, 2.5e-6);
        // Bedrock cross-region inference profile → base model.
        let b = t
            .find(
                Some("bedrock"),
                "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            )
            .unwrap();
        assert_eq!(b.input, 3e-6);
        // Vertex stable version suffix.
        assert!(t.find(Some("vertex_ai"), "gemini-2.5-pro-001").is_some());
        // A prefixed name names its provider.
        assert_eq!(t.find(None, "azure/gpt-4o").unwrap().input, 2.5e-6);
    }

    #[test]
    fn cache_tokens_are_priced_as_such() {
        // Claude Code turn: 80k cache reads, 2k cache writes, 500 fresh input, 1k output.
        let p = t().find(Some("anthropic"), "claude-sonnet-4-5").unwrap();
        let u = Usage {
            input_tokens: 82_500,
            output_tokens: 1_000,
            cache_read_tokens: 80_000,
            cache_creation_tokens: 2_000,
        };
        // 500*3e-6 + 80000*3e-7 + 2000*3.75e-6 + 1000*1.5e-5 = 0.0015+0.024+0.0075+0.015
        let c = p.cost(u);
        assert!((c - 0.048).abs() < 1e-9, "{c}");
        // OpenAI cached_tokens: gpt-4o cache read is half price.
        let p = t().find(Some("openai"), "gpt-4o").unwrap();
        let u = Usage {
            input_tokens: 10_000,
            output_tokens: 1_000,
            cache_read_tokens: 8_000,
            cache_creation_tokens: 0,
        };
        // 2000*2.5e-6 + 8000*1.25e-6 + 1000*1e-5 = 0.005+0.01+0.01
        assert!((p.cost(u) - 0.025).abs() < 1e-9);
    }

    #[test]
    fn custom_prices_override() {
        let p = for_deployment(Some("openai"), "gpt-4o", Some(1e-6), None);
        assert_eq!((p.input, p.output, p.cache_read), (1e-6, 1e-5, None));
        let p = for_deployment(Some("openai"), "in-house", Some(2e-6), Some(4e-6));
        assert!(p.known);
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            ..Default::default()
        };
        assert!((p.cost(u) - 4.0).abs() < 1e-9);
        assert!(!for_deployment(None, "in-house", None, None).known);
    }

    #[test]
    fn replacement_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("prices.json");
        std::fs::write(
            &f,
            r#"{"sample_spec": {"mode": "x"}, "my-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "litellm_provider": "openai", "mode": "chat"}}"#,
        )
        .unwrap();
        let t = load_file(&format!("file://{}", f.display())).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.find(Some("openai"), "my-model").unwrap().output, 2e-6);
        assert!(matches!(
            load_file("https://example.invalid/x.json"),
            Err(PricingError::Remote(_))
        ));
        std::fs::write(&f, "not json").unwrap();
        assert!(matches!(
            load_file(f.to_str().unwrap()),
            Err(PricingError::Parse { .. })
        ));
    }

    #[test]
    fn entries_of_another_shape_are_skipped_not_fatal() {
        // LiteLLM's own file has `sample_spec` with prose where the numbers go; keys with
        // escapes must survive the raw-entry parse too.
        let t = PriceTable::parse(
            r#"{"sample_spec": {"input_cost_per_token": "cost per input token", "output_cost_per_token": 0},
                "list": [1, 2],
                "a\u002fb": {"input_cost_per_token": 3e-6, "output_cost_per_token": 4e-6, "litellm_provider": "openai"},
                "c": {"input_cost_per_token": 1e-6}}"#,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(None, "a/b").unwrap().output, 4e-6);
        assert_eq!(t.find(None, "c").unwrap().output, 0.0);
        assert!(t.find(None, "sample_spec").is_none());
    }

    #[test]
    fn base_model_prices_a_custom_deployment_name() {
        let info = serde_json::json!({"base_model": "azure/gpt-4o"});
        assert_eq!(
            priced_name(Some("azure"), "my-deploy", Some(&info)),
            (None, "azure/gpt-4o")
        );
        let info = serde_json::json!({"base_model": "gpt-4o"});
        assert_eq!(
            priced_name(Some("azure"), "my-deploy", Some(&info)),
            (Some("azure"), "gpt-4o")
        );
        assert_eq!(
            priced_name(Some("azure"), "my-deploy", None),
            (Some("azure"), "my-deploy")
        );
    }
}
