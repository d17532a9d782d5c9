//! LiteLLM `config.yaml` compatibility.
//!
//! The YAML is read into a `serde_json::Value` first and then extracted by
//! hand, so that (a) unknown keys — LiteLLM configs carry many — are ignored
//! with a warning naming their path, and (b) a known key with the wrong type is
//! a clear error naming its path (`model_list[2].litellm_params.rpm`).

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("`{path}`: expected {expected}, found {found}")]
    Type {
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("`{path}` is required")]
    Missing { path: String },
    #[error("`{path}`: {message}")]
    Invalid { path: String, message: String },
    #[error("`{path}`: environment variable {var} is not set")]
    Env { path: String, var: String },
}

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which transport a deployment uses.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server (vLLM, Ollama, Groq, DeepSeek, …).
    OpenAi,
    Anthropic,
    /// Replays a canned JSON script (path resolved against the config's directory).
    Scripted(PathBuf),
}

/// One `model_list` entry (a deployment).
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Client-facing name (`model_name`); may contain `*` wildcards.
    pub model_name: String,
    pub provider: ProviderKind,
    /// Upstream model (after the `provider/` prefix); may contain `*`.
    pub model: String,
    pub api_key: Option<Secret>,
    pub api_base: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Per-attempt timeout; defaults to `request_timeout`.
    pub timeout: Option<Duration>,
    /// Time allowed between stream chunks (and to the first one).
    pub stream_timeout: Option<Duration>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    /// Relative weight for `simple-shuffle`.
    pub weight: Option<f64>,
    /// `api_version` for Anthropic (`anthropic-version` header).
    pub api_version: Option<String>,
    pub extra_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingStrategy {
    #[default]
    SimpleShuffle,
    LeastBusy,
    LatencyBased,
}

/// The whole gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub model_list: Vec<ModelEntry>,
    pub routing_strategy: RoutingStrategy,
    /// Retries per model group before moving to fallbacks.
    pub num_retries: u32,
    /// `model_name` -> fallback model names, tried in order.
    pub fallbacks: HashMap<String, Vec<String>>,
    /// Overall default per-attempt timeout.
    pub request_timeout: Duration,
    /// How long a failing deployment is skipped.
    pub cooldown_time: Duration,
    /// Upper bound on how long a `Retry-After` is honoured.
    pub max_retry_after: Duration,
    pub master_key: Option<Secret>,
    pub database_url: Option<String>,
    /// Non-fatal findings (unknown keys, unsupported strategies), also logged.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            model_list: Vec::new(),
            routing_strategy: RoutingStrategy::SimpleShuffle,
            num_retries: 0,
            fallbacks: HashMap::new(),
            request_timeout: Duration::from_secs(600),
            cooldown_time: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(5),
            master_key: None,
            database_url: None,
            warnings: Vec::new(),
        }
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

struct Ctx<'a> {
    env_overlay: &'a HashMap<String, String>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn warn(&mut self, msg: String) {
        tracing::warn!("config: {msg}");
        self.warnings.push(msg);
    }

    fn unknown(&mut self, path: &str, map: &Map<String, Value>, known: &[&str]) {
        for k in map.keys() {
            if !known.contains(&k.as_str()) {
                self.warn(format!(
                    "`{path}.{k}` is not supported by this gateway; ignored"
                ));
            }
        }
    }

    /// Resolve `os.environ/NAME`.
    fn resolve(&self, path: &str, s: &str) -> Result<Option<String>, ConfigError> {
        match s.strip_prefix("os.environ/") {
            Some(var) => Ok(self
                .env_overlay
                .get(var)
                .cloned()
                .or_else(|| std::env::var(var).ok())
                .or_else(|| {
                    tracing::warn!("config: `{path}` refers to unset environment variable {var}");
                    None
                })),
            None => Ok(Some(s.to_owned())),
        }
    }

    fn string(&self, path: &str, v: Option<&Value>) -> Result<Option<String>, ConfigError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => self.resolve(path, s),
            Some(other) => Err(ConfigError::Type {
                path: path.into(),
                expected: "a string",
                found: type_name(other),
            }),
        }
    }

    fn number(&self, path: &str, v: Option<&Value>) -> Result<Option<f64>, ConfigError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) => {
                let r = self.resolve(path, s)?;
                match r {
                    None => Ok(None),
                    Some(r) => r
                        .trim()
                        .parse::<f64>()
                        .map(Some)
                        .map_err(|_| ConfigError::Type {
                            path: path.into(),
                            expected: "a number",
                            found: type_name(&Value::String(s.clone())),
                        }),
                }
            }
            Some(other) => Err(ConfigError::Type {
                path: path.into(),
                expected: "a number",
                found: type_name(other),
            }),
        }
    }

    fn uint(&self, path: &str, v: Option<&Value>) -> Result<Option<u64>, ConfigError> {
        match self.number(path, v)? {
            None => Ok(None),
            Some(n) if n >= 0.0 && n.fract() == 0.0 => Ok(Some(n as u64)),
            Some(n) => Err(ConfigError::Type {
                path: path.into(),
                expected: "a non-negative integer",
                found: format!("{n}"),
            }),
        }
    }

    fn seconds(&self, path: &str, v: Option<&Value>) -> Result<Option<Duration>, ConfigError> {
        match self.number(path, v)? {
            None => Ok(None),
            Some(n) if n > 0.0 && n.is_finite() => Ok(Some(Duration::from_secs_f64(n))),
            Some(n) => Err(ConfigError::Invalid {
                path: path.into(),
                message: format!("must be a positive number of seconds, found {n}"),
            }),
        }
    }
}

fn map<'v>(
    path: &str,
    v: Option<&'v Value>,
) -> Result<Option<&'v Map<String, Value>>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(ConfigError::Type {
            path: path.into(),
            expected: "a mapping",
            found: type_name(other),
        }),
    }
}

/// Providers that speak the OpenAI API, with their default `api_base`.
const OPENAI_COMPATIBLE: &[(&str, &str)] = &[
    ("openai", "https://api.openai.com/v1"),
    ("text-completion-openai", "https://api.openai.com/v1"),
    ("openai_like", ""),
    ("custom_openai", ""),
    ("hosted_vllm", ""),
    ("vllm", ""),
    ("lm_studio", "http://localhost:1234/v1"),
    ("ollama", "http://localhost:11434/v1"),
    ("ollama_chat", "http://localhost:11434/v1"),
    ("groq", "https://api.groq.com/openai/v1"),
    ("deepseek", "https://api.deepseek.com/v1"),
    ("mistral", "https://api.mistral.ai/v1"),
    ("together_ai", "https://api.together.xyz/v1"),
    ("fireworks_ai", "https://api.fireworks.ai/inference/v1"),
    ("openrouter", "https://openrouter.ai/api/v1"),
    ("xai", "https://api.x.ai/v1"),
    ("perplexity", "https://api.perplexity.ai"),
    ("deepinfra", "https://api.deepinfra.com/v1/openai"),
    ("cerebras", "https://api.cerebras.ai/v1"),
    ("nvidia_nim", "https://integrate.api.nvidia.com/v1"),
];

/// Default `api_base` for an OpenAI-compatible provider prefix.
pub fn default_openai_base(prefix: &str) -> Option<&'static str> {
    OPENAI_COMPATIBLE
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, b)| *b)
        .filter(|b| !b.is_empty())
}

/// Providers whose API is not OpenAI's even when given an `api_base`.
const NOT_OPENAI_COMPATIBLE: &[&str] = &[
    "azure",
    "bedrock",
    "vertex_ai",
    "vertex_ai_beta",
    "gemini",
    "cohere",
    "cohere_chat",
    "sagemaker",
    "huggingface",
    "replicate",
    "watsonx",
    "palm",
];

const TOP_KEYS: &[&str] = &[
    "model_list",
    "litellm_settings",
    "general_settings",
    "router_settings",
    "environment_variables",
];
const ENTRY_KEYS: &[&str] = &["model_name", "litellm_params", "model_info", "rpm", "tpm"];
const PARAM_KEYS: &[&str] = &[
    "model",
    "api_key",
    "api_base",
    "base_url",
    "rpm",
    "tpm",
    "timeout",
    "stream_timeout",
    "input_cost_per_token",
    "output_cost_per_token",
    "weight",
    "api_version",
    "extra_headers",
    "max_retries",
    "drop_params",
    "custom_llm_provider",
];
const LITELLM_KEYS: &[&str] = &[
    "num_retries",
    "fallbacks",
    "request_timeout",
    "drop_params",
    "default_fallbacks",
];
const ROUTER_KEYS: &[&str] = &[
    "routing_strategy",
    "num_retries",
    "fallbacks",
    "timeout",
    "cooldown_time",
    "retry_after",
    "max_retry_after",
];
const GENERAL_KEYS: &[&str] = &["master_key", "database_url"];

impl Config {
    /// Read and parse a config file; `scripted/` paths resolve against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml_str(&text, base)
    }

    /// Parse a LiteLLM `config.yaml` text.
    pub fn from_yaml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let root: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        Self::from_value(&root, base_dir)
    }

    /// Extract the configuration from an already-parsed document.
    pub fn from_value(root: &Value, base_dir: &Path) -> Result<Config, ConfigError> {
        let root = map("(root)", Some(root))?.ok_or_else(|| ConfigError::Missing {
            path: "(root)".into(),
        })?;
        let mut overlay = HashMap::new();
        if let Some(env) = map("environment_variables", root.get("environment_variables"))? {
            for (k, v) in env {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(ConfigError::Type {
                            path: format!("environment_variables.{k}"),
                            expected: "a string",
                            found: type_name(other),
                        });
                    }
                };
                overlay.insert(k.clone(), s);
            }
        }
        let mut cx = Ctx {
            env_overlay: &overlay,
            warnings: Vec::new(),
        };
        cx.unknown("(root)", root, TOP_KEYS);
        let mut cfg = Config::default();

        // litellm_settings
        if let Some(ls) = map("litellm_settings", root.get("litellm_settings"))? {
            cx.unknown("litellm_settings", ls, LITELLM_KEYS);
            if let Some(n) = cx.uint("litellm_settings.num_retries", ls.get("num_retries"))? {
                cfg.num_retries = n as u32;
            }
            if let Some(t) = cx.seconds(
                "litellm_settings.request_timeout",
                ls.get("request_timeout"),
            )? {
                cfg.request_timeout = t;
            }
            parse_fallbacks(
                "litellm_settings.fallbacks",
                ls.get("fallbacks"),
                &mut cfg.fallbacks,
            )?;
        }
        // router_settings
        if let Some(rs) = map("router_settings", root.get("router_settings"))? {
            cx.unknown("router_settings", rs, ROUTER_KEYS);
            if let Some(s) = cx.string(
                "router_settings.routing_strategy",
                rs.get("routing_strategy"),
            )? {
                cfg.routing_strategy = match s.as_str() {
                    "simple-shuffle" => RoutingStrategy::SimpleShuffle,
                    "least-busy" => RoutingStrategy::LeastBusy,
                    "latency-based-routing" => RoutingStrategy::LatencyBased,
                    other => {
                        cx.warn(format!(
                            "`router_settings.routing_strategy: {other}` is not supported; using simple-shuffle"
                        ));
                        RoutingStrategy::SimpleShuffle
                    }
                };
            }
            if let Some(n) = cx.uint("router_settings.num_retries", rs.get("num_retries"))? {
                cfg.num_retries = n as u32;
            }
            if let Some(t) = cx.seconds("router_settings.timeout", rs.get("timeout"))? {
                cfg.request_timeout = t;
            }
            if let Some(t) = cx.seconds("router_settings.cooldown_time", rs.get("cooldown_time"))? {
                cfg.cooldown_time = t;
            }
            if let Some(t) =
                cx.seconds("router_settings.max_retry_after", rs.get("max_retry_after"))?
            {
                cfg.max_retry_after = t;
            }
            parse_fallbacks(
                "router_settings.fallbacks",
                rs.get("fallbacks"),
                &mut cfg.fallbacks,
            )?;
        }
        // general_settings
        if let Some(gs) = map("general_settings", root.get("general_settings"))? {
            cx.unknown("general_settings", gs, GENERAL_KEYS);
            if let Some(Value::String(s)) = gs.get("master_key")
                && let Some(var) = s.strip_prefix("os.environ/")
                && !overlay.contains_key(var)
                && std::env::var(var).is_err()
            {
                // An unset master key would silently open the gateway: refuse.
                return Err(ConfigError::Env {
                    path: "general_settings.master_key".into(),
                    var: var.into(),
                });
            }
            cfg.master_key = cx
                .string("general_settings.master_key", gs.get("master_key"))?
                .map(Secret);
            cfg.database_url =
                cx.string("general_settings.database_url", gs.get("database_url"))?;
        }
        // model_list
        match root.get("model_list") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, e) in list.iter().enumerate() {
                    match parse_entry(&mut cx, &format!("model_list[{i}]"), e, base_dir) {
                        Ok(entry) => cfg.model_list.push(entry),
                        // A provider we cannot speak: skip that deployment, keep the rest.
                        Err(ConfigError::Invalid { path, message })
                            if message.starts_with("provider `") =>
                        {
                            cx.warn(format!("`{path}`: {message}; deployment skipped"));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(other) => {
                return Err(ConfigError::Type {
                    path: "model_list".into(),
                    expected: "a list",
                    found: type_name(other),
                });
            }
        }
        for (from, tos) in &cfg.fallbacks {
            for to in tos.iter().chain(std::iter::once(from)) {
                if !cfg
                    .model_list
                    .iter()
                    .any(|m| &m.model_name == to || m.model_name.contains('*'))
                {
                    cx.warn(format!("fallback model `{to}` is not in model_list"));
                }
            }
        }
        cfg.warnings = cx.warnings;
        Ok(cfg)
    }
}

fn parse_fallbacks(
    path: &str,
    v: Option<&Value>,
    out: &mut HashMap<String, Vec<String>>,
) -> Result<(), ConfigError> {
    let list_of = |p: &str, v: &Value| -> Result<Vec<String>, ConfigError> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(j, x)| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ConfigError::Type {
                            path: format!("{p}[{j}]"),
                            expected: "a model name",
                            found: type_name(x),
                        })
                })
                .collect(),
            other => Err(ConfigError::Type {
                path: p.into(),
                expected: "a list of model names",
                found: type_name(other),
            }),
        }
    };
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let m = map(&format!("{path}[{i}]"), Some(item))?.ok_or_else(|| {
                    ConfigError::Missing {
                        path: format!("{path}[{i}]"),
                    }
                })?;
                for (k, v) in m {
                    out.insert(k.clone(), list_of(&format!("{path}[{i}].{k}"), v)?);
                }
            }
            Ok(())
        }
        Some(Value::Object(m)) => {
            for (k, v) in m {
                out.insert(k.clone(), list_of(&format!("{path}.{k}"), v)?);
            }
            Ok(())
        }
        Some(other) => Err(ConfigError::Type {
            path: path.into(),
            expected: "a list of {model: [fallbacks]} mappings",
            found: type_name(other),
        }),
    }
}

fn parse_entry(
    cx: &mut Ctx<'_>,
    path: &str,
    e: &Value,
    base_dir: &Path,
) -> Result<ModelEntry, ConfigError> {
    let m = map(path, Some(e))?.ok_or_else(|| ConfigError::Missing { path: path.into() })?;
    cx.unknown(path, m, ENTRY_KEYS);
    let model_name = cx
        .string(&format!("{path}.model_name"), m.get("model_name"))?
        .ok_or_else(|| ConfigError::Missing {
            path: format!("{path}.model_name"),
        })?;
    let pp = format!("{path}.litellm_params");
    let p = map(&pp, m.get("litellm_params"))?
        .ok_or_else(|| ConfigError::Missing { path: pp.clone() })?;
    cx.unknown(&pp, p, PARAM_KEYS);
    let full = cx
        .string(&format!("{pp}.model"), p.get("model"))?
        .ok_or_else(|| ConfigError::Missing {
            path: format!("{pp}.model"),
        })?;
    let explicit = cx.string(
        &format!("{pp}.custom_llm_provider"),
        p.get("custom_llm_provider"),
    )?;
    let (prefix, model) = match (&explicit, full.split_once('/')) {
        (Some(pfx), _) => (pfx.clone(), full.clone()),
        (None, Some((pfx, rest))) => (pfx.to_owned(), rest.to_owned()),
        (None, None) => {
            // LiteLLM infers well-known model families.
            let inferred = if full.starts_with("claude") {
                "anthropic"
            } else if ["gpt-", "o1", "o3", "o4", "chatgpt", "text-embedding"]
                .iter()
                .any(|p| full.starts_with(p))
            {
                "openai"
            } else {
                return Err(ConfigError::Invalid {
                    path: format!("{pp}.model"),
                    message: format!("`{full}` needs a provider prefix like `openai/{full}`"),
                });
            };
            (inferred.to_owned(), full.clone())
        }
    };
    let provider = match prefix.as_str() {
        "anthropic" => ProviderKind::Anthropic,
        "scripted" => ProviderKind::Scripted(base_dir.join(&model)),
        p if OPENAI_COMPATIBLE.iter().any(|(n, _)| *n == p) => ProviderKind::OpenAi,
        // An OpenAI-compatible server under another name works when api_base is given.
        other
            if !NOT_OPENAI_COMPATIBLE.contains(&other)
                && (p.contains_key("api_base") || p.contains_key("base_url")) =>
        {
            ProviderKind::OpenAi
        }
        other => {
            return Err(ConfigError::Invalid {
                path: format!("{pp}.model"),
                message: format!(
                    "provider `{other}` is not supported (use openai/, anthropic/, scripted/ or an OpenAI-compatible provider with api_base)"
                ),
            });
        }
    };
    let mut api_base = cx.string(&format!("{pp}.api_base"), p.get("api_base"))?;
    if api_base.is_none() {
        api_base = cx.string(&format!("{pp}.base_url"), p.get("base_url"))?;
    }
    if api_base.is_none() && provider == ProviderKind::OpenAi {
        api_base = default_openai_base(&prefix).map(str::to_owned);
        if api_base.is_none() {
            return Err(ConfigError::Missing {
                path: format!("{pp}.api_base"),
            });
        }
    }
    if prefix.starts_with("ollama")
        && let Some(b) = &api_base
        && !b.trim_end_matches('/').ends_with("/v1")
    {
        // Ollama's OpenAI-compatible API lives under /v1.
        api_base = Some(format!("{}/v1", b.trim_end_matches('/')));
    }
    let mut extra_headers = Vec::new();
    if let Some(h) = map(&format!("{pp}.extra_headers"), p.get("extra_headers"))? {
        for (k, v) in h {
            if let Some(s) = cx.string(&format!("{pp}.extra_headers.{k}"), Some(v))? {
                extra_headers.push((k.clone(), s));
            }
        }
    }
    let rpm = match cx.uint(&format!("{pp}.rpm"), p.get("rpm"))? {
        Some(r) => Some(r),
        None => cx.uint(&format!("{path}.rpm"), m.get("rpm"))?,
    };
    let tpm = match cx.uint(&format!("{pp}.tpm"), p.get("tpm"))? {
        Some(r) => Some(r),
        None => cx.uint(&format!("{path}.tpm"), m.get("tpm"))?,
    };
    Ok(ModelEntry {
        model_name,
        provider,
        model,
        api_key: cx
            .string(&format!("{pp}.api_key"), p.get("api_key"))?
            .map(Secret),
        api_base,
        rpm,
        tpm,
        timeout: cx.seconds(&format!("{pp}.timeout"), p.get("timeout"))?,
        stream_timeout: cx.seconds(&format!("{pp}.stream_timeout"), p.get("stream_timeout"))?,
        input_cost_per_token: cx.number(
            &format!("{pp}.input_cost_per_token"),
            p.get("input_cost_per_token"),
        )?,
        output_cost_per_token: cx.number(
            &format!("{pp}.output_cost_per_token"),
            p.get("output_cost_per_token"),
        )?,
        weight: cx.number(&format!("{pp}.weight"), p.get("weight"))?,
        api_version: cx.string(&format!("{pp}.api_version"), p.get("api_version"))?,
        extra_headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, Path::new("/cfg"))
    }

    #[test]
    fn parses_basic_and_env() {
        // SAFETY: test-only env mutation; the variable name is unique to this test.
        unsafe { std::env::set_var("GW_TEST_KEY_1", "sk-real") };
        let c = check(
            r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/GW_TEST_KEY_1, rpm: 10}
  - model_name: demo
    litellm_params: {model: scripted/demo.json}
router_settings: {routing_strategy: usage-based-routing-v2}
litellm_settings: {num_retries: 2, request_timeout: 30, fallbacks: [{gpt-4o: [demo]}], set_verbose: true}
general_settings: {master_key: sk-1234}
"#,
        )
        .unwrap();
        assert_eq!(
            c.model_list[0].api_key.as_ref().unwrap().expose(),
            "sk-real"
        );
        assert_eq!(c.model_list[0].rpm, Some(10));
        assert_eq!(
            c.model_list[1].provider,
            ProviderKind::Scripted(PathBuf::from("/cfg/demo.json"))
        );
        assert_eq!(c.num_retries, 2);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.fallbacks["gpt-4o"], vec!["demo".to_owned()]);
        assert!(c.warnings.iter().any(|w| w.contains("set_verbose")));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("usage-based-routing-v2"))
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = check(
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, rpm: lots}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("model_list[0].litellm_params.rpm"), "{e}");
        let e = check("litellm_settings: {num_retries: [1]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("litellm_settings.num_retries"), "{e}");
        let e = check("model_list: {a: 1}").unwrap_err().to_string();
        assert!(e.contains("model_list"), "{e}");
    }
}
