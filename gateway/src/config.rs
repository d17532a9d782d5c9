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
    /// Azure OpenAI: `{api_base}/openai/deployments/{model}/chat/completions?api-version=…`.
    Azure,
    /// Google AI Studio (`generativelanguage.googleapis.com`), API key.
    Gemini,
    /// AWS Bedrock Converse API, SigV4-signed.
    Bedrock,
    /// Google Vertex AI (Gemini and Anthropic models), service-account OAuth.
    VertexAi,
    /// Replays a canned JSON script (path resolved against the config's directory).
    Scripted(PathBuf),
}

/// AWS settings of a `bedrock/` deployment (`litellm_params.aws_*` or the `AWS_*` env vars).
#[derive(Debug, Clone, Default)]
pub struct AwsParams {
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// `aws_region_name`, `AWS_REGION_NAME`, `AWS_REGION`; LiteLLM's default is us-west-2.
    pub region: String,
}

/// Vertex AI settings of a `vertex_ai/` deployment.
#[derive(Debug, Clone, Default)]
pub struct VertexParams {
    pub project: Option<String>,
    /// `vertex_location`, `VERTEXAI_LOCATION`; default us-central1.
    pub location: String,
    /// The service-account JSON (read from `vertex_credentials`, which may be a
    /// path or the JSON itself, or from `GOOGLE_APPLICATION_CREDENTIALS`).
    pub credentials: Option<Secret>,
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
    /// The provider prefix as written (`openai`, `groq`, `azure`, …).
    pub provider_name: String,
    /// OpenAI `OpenAI-Organization` header (`organization` or `OPENAI_ORGANIZATION`).
    pub organization: Option<String>,
    /// Extra attempts on this same deployment before the router moves on.
    pub max_retries: Option<u32>,
    /// Drop request parameters the provider cannot take instead of answering 400.
    pub drop_params: bool,
    /// `additional_drop_params`: parameters always removed before the upstream.
    pub additional_drop_params: Vec<String>,
    /// `model_info` as given (exposed by `/v1/models` and `/model/info`).
    pub model_info: Option<Value>,
    pub aws: AwsParams,
    pub vertex: VertexParams,
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
    /// `litellm_settings.default_fallbacks`: tried for any group without its own fallbacks.
    pub default_fallbacks: Vec<String>,
    /// `context_window_fallbacks`: `model_name` -> larger-context models, tried in
    /// order when the upstream says the prompt is too long (LiteLLM's
    /// `ContextWindowExceededError`); without an entry, the ordinary fallbacks are.
    pub context_window_fallbacks: HashMap<String, Vec<String>>,
    /// `content_policy_fallbacks`: `model_name` -> models tried when the upstream
    /// refuses the content (LiteLLM's `ContentPolicyViolationError`); without an
    /// entry, the ordinary fallbacks are.
    pub content_policy_fallbacks: HashMap<String, Vec<String>>,
    /// `router_settings.max_fallbacks` (else `litellm_settings.max_fallbacks`, else
    /// the `ROUTER_MAX_FALLBACKS` env var, else 5, as LiteLLM's `Router.__init__`):
    /// how deep a fallback walk may go. A fallback group that fails walks its own
    /// fallbacks only while the attempts made so far on its path are below this;
    /// 0 turns fallbacks off (`run_async_fallback`'s "max fallback depth reached").
    pub max_fallbacks: u32,
    /// `general_settings.apply_user_budget_to_team_keys` (LiteLLM ≥ 1.97, default
    /// off): a key that belongs to a team is also held to its owner's personal
    /// `max_budget`, which otherwise applies only to keys outside a team.
    pub apply_user_budget_to_team_keys: bool,
    /// `litellm_settings.drop_params`: the default for every deployment.
    pub drop_params: bool,
    /// `litellm_settings.include_cost_in_streaming_usage`: a stream's usage event
    /// carries the answer's `cost`. LiteLLM's default is off; Airlock's is on (an
    /// extra field clients ignore, and a stream's headers cannot carry the cost).
    pub include_cost_in_streaming_usage: bool,
    /// Overall default per-attempt timeout.
    pub request_timeout: Duration,
    /// How long a failing deployment is skipped.
    pub cooldown_time: Duration,
    /// Upper bound on how long a `Retry-After` is honoured.
    pub max_retry_after: Duration,
    pub master_key: Option<Secret>,
    pub database_url: Option<String>,
    /// `code_interpreter:` (an Airlock extension; see `code_interpreter/`).
    pub code_interpreter: Option<CodeInterpreterConfig>,
    /// `telemetry.otlp_endpoint` (an Airlock extension, DESIGN.md "Telemetry"): the OTLP/HTTP
    /// collector of the standalone gateway's traces. Unset: the `OTEL_EXPORTER_OTLP_*` env
    /// vars decide. Embedded in a brain, the brain's `telemetry:` applies.
    pub otlp_endpoint: Option<String>,
    /// Non-fatal findings (unknown keys, unsupported strategies), also logged.
    pub warnings: Vec<String>,
}

/// LiteLLM's `ROUTER_MAX_FALLBACKS` default (litellm/constants.py).
pub const DEFAULT_MAX_FALLBACKS: u32 = 5;

impl Default for Config {
    fn default() -> Self {
        Self {
            model_list: Vec::new(),
            routing_strategy: RoutingStrategy::SimpleShuffle,
            num_retries: 0,
            fallbacks: HashMap::new(),
            default_fallbacks: Vec::new(),
            context_window_fallbacks: HashMap::new(),
            content_policy_fallbacks: HashMap::new(),
            max_fallbacks: DEFAULT_MAX_FALLBACKS,
            apply_user_budget_to_team_keys: false,
            drop_params: false,
            include_cost_in_streaming_usage: true,
            request_timeout: Duration::from_secs(600),
            cooldown_time: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(5),
            master_key: None,
            database_url: None,
            code_interpreter: None,
            otlp_endpoint: None,
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

/// Where environment variables come from: the process, or a fixed map (tests,
/// embedding). `environment_variables:` in the config is consulted first either way.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

struct Ctx<'a> {
    env_overlay: &'a HashMap<String, String>,
    env: EnvLookup<'a>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    /// An environment variable, as LiteLLM's `get_secret` sees it.
    fn var(&self, name: &str) -> Option<String> {
        self.env_overlay
            .get(name)
            .cloned()
            .or_else(|| (self.env)(name))
    }

    /// The first of `names` that is set.
    fn first_var(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| self.var(n))
    }

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
            Some(var) => Ok(self.var(var).or_else(|| {
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
    "include",
    "model_list",
    "litellm_settings",
    "general_settings",
    "router_settings",
    "environment_variables",
    "code_interpreter",
    "telemetry",
];
const CODE_INTERPRETER_KEYS: &[&str] = &[
    "brain_url",
    "key_env",
    "max_iterations",
    "idle_ttl_seconds",
    "exec_timeout_seconds",
];

/// `code_interpreter:`: where sandboxes come from for intercepted
/// `code_interpreter` tools (a brain's HTTP API), and the loop's bounds.
#[derive(Debug, Clone, Default)]
pub struct CodeInterpreterConfig {
    pub brain_url: Option<String>,
    /// The brain key, read from this environment variable (default `AIRLOCK_BRAIN_KEY`).
    pub key: Option<Secret>,
    pub max_iterations: Option<u64>,
    pub idle_ttl_seconds: Option<u64>,
    pub exec_timeout_seconds: Option<u64>,
}
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
    "additional_drop_params",
    "custom_llm_provider",
    "organization",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_bedrock_runtime_endpoint",
    "vertex_project",
    "vertex_location",
    "vertex_credentials",
];
const LITELLM_KEYS: &[&str] = &[
    "num_retries",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "request_timeout",
    "drop_params",
    "default_fallbacks",
    "include_cost_in_streaming_usage",
    "max_fallbacks",
];
const ROUTER_KEYS: &[&str] = &[
    "routing_strategy",
    "num_retries",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "timeout",
    "cooldown_time",
    "retry_after",
    "max_retry_after",
    "max_fallbacks",
];
const GENERAL_KEYS: &[&str] = &[
    "master_key",
    "database_url",
    "apply_user_budget_to_team_keys",
];

impl Config {
    /// Read and parse a config file (and its `include`s); `scripted/` and
    /// `include` paths resolve against its directory. Environment: the process's.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &process_env)
    }

    /// As [`Config::load`], with environment variables from `env` only.
    pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml_str_with_env(&text, base, env)
    }

    /// Parse a LiteLLM `config.yaml` text (process environment).
    pub fn from_yaml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with_env(text, base_dir, &process_env)
    }

    /// Parse a LiteLLM `config.yaml` text with environment variables from `env`.
    pub fn from_yaml_str_with_env(
        text: &str,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let root = parse_yaml(text)?;
        Self::from_value_with_env(&root, base_dir, env)
    }

    /// Extract the configuration from an already-parsed document.
    pub fn from_value(root: &Value, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::from_value_with_env(root, base_dir, &process_env)
    }

    /// Extract the configuration with environment variables from `env`.
    pub fn from_value_with_env(
        root: &Value,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let mut merged = root.clone();
        resolve_includes(&mut merged, base_dir, 0)?;
        let root = map("(root)", Some(&merged))?.ok_or_else(|| ConfigError::Missing {
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
            env,
            warnings: Vec::new(),
        };
        cx.unknown("(root)", root, TOP_KEYS);
        let mut cfg = Config::default();

        let mut litellm_max_fallbacks = None;
        let mut router_max_fallbacks = None;
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
            if let Some(b) = boolean("litellm_settings.drop_params", ls.get("drop_params"))? {
                cfg.drop_params = b;
            }
            if let Some(b) = boolean(
                "litellm_settings.include_cost_in_streaming_usage",
                ls.get("include_cost_in_streaming_usage"),
            )? {
                cfg.include_cost_in_streaming_usage = b;
            }
            parse_fallbacks(
                "litellm_settings.context_window_fallbacks",
                ls.get("context_window_fallbacks"),
                &mut cfg.context_window_fallbacks,
            )?;
            parse_fallbacks(
                "litellm_settings.content_policy_fallbacks",
                ls.get("content_policy_fallbacks"),
                &mut cfg.content_policy_fallbacks,
            )?;
            cfg.default_fallbacks = string_list(
                "litellm_settings.default_fallbacks",
                ls.get("default_fallbacks"),
            )?;
            // `litellm.max_fallbacks`, which the router takes when its own is unset.
            litellm_max_fallbacks =
                cx.uint("litellm_settings.max_fallbacks", ls.get("max_fallbacks"))?;
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
            parse_fallbacks(
                "router_settings.context_window_fallbacks",
                rs.get("context_window_fallbacks"),
                &mut cfg.context_window_fallbacks,
            )?;
            parse_fallbacks(
                "router_settings.content_policy_fallbacks",
                rs.get("content_policy_fallbacks"),
                &mut cfg.content_policy_fallbacks,
            )?;
            router_max_fallbacks =
                cx.uint("router_settings.max_fallbacks", rs.get("max_fallbacks"))?;
        }
        // Router(max_fallbacks) > litellm.max_fallbacks > ROUTER_MAX_FALLBACKS env > 5.
        // LiteLLM's `get_env_int`: an unparsable value means the default.
        let env_max_fallbacks = match cx.var("ROUTER_MAX_FALLBACKS") {
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    cx.warn(format!(
                        "ROUTER_MAX_FALLBACKS={v:?} is not a non-negative integer; using {DEFAULT_MAX_FALLBACKS}"
                    ));
                    None
                }
            },
            None => None,
        };
        if let Some(n) = router_max_fallbacks
            .or(litellm_max_fallbacks)
            .or(env_max_fallbacks)
        {
            cfg.max_fallbacks = u32::try_from(n).unwrap_or(u32::MAX);
        }
        // general_settings (LITELLM_MASTER_KEY / DATABASE_URL as LiteLLM's fallbacks)
        if let Some(gs) = map("general_settings", root.get("general_settings"))? {
            cx.unknown("general_settings", gs, GENERAL_KEYS);
            if let Some(Value::String(s)) = gs.get("master_key")
                && let Some(var) = s.strip_prefix("os.environ/")
                && cx.var(var).is_none()
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
            if let Some(b) = boolean(
                "general_settings.apply_user_budget_to_team_keys",
                gs.get("apply_user_budget_to_team_keys"),
            )? {
                cfg.apply_user_budget_to_team_keys = b;
            }
        }
        if let Some(ci) = map("code_interpreter", root.get("code_interpreter"))? {
            cx.unknown("code_interpreter", ci, CODE_INTERPRETER_KEYS);
            let key_env = cx
                .string("code_interpreter.key_env", ci.get("key_env"))?
                .unwrap_or_else(|| "AIRLOCK_BRAIN_KEY".to_owned());
            let brain_url = cx.string("code_interpreter.brain_url", ci.get("brain_url"))?;
            let key = cx.var(&key_env).map(Secret);
            if brain_url.is_some() && key.is_none() {
                return Err(ConfigError::Env {
                    path: "code_interpreter.key_env".into(),
                    var: key_env,
                });
            }
            cfg.code_interpreter = Some(CodeInterpreterConfig {
                brain_url,
                key,
                max_iterations: cx
                    .uint("code_interpreter.max_iterations", ci.get("max_iterations"))?,
                idle_ttl_seconds: cx.uint(
                    "code_interpreter.idle_ttl_seconds",
                    ci.get("idle_ttl_seconds"),
                )?,
                exec_timeout_seconds: cx.uint(
                    "code_interpreter.exec_timeout_seconds",
                    ci.get("exec_timeout_seconds"),
                )?,
            });
        }
        if let Some(t) = map("telemetry", root.get("telemetry"))? {
            cx.unknown("telemetry", t, &["otlp_endpoint"]);
            let url = cx
                .string("telemetry.otlp_endpoint", t.get("otlp_endpoint"))?
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty());
            if let Some(u) = &url {
                airlock_telemetry::check_otlp_endpoint(u).map_err(|e| ConfigError::Invalid {
                    path: "telemetry.otlp_endpoint".into(),
                    message: e.to_string(),
                })?;
            }
            cfg.otlp_endpoint = url;
        }
        if cfg.master_key.is_none() {
            cfg.master_key = cx.var("LITELLM_MASTER_KEY").map(Secret);
        }
        if cfg.database_url.is_none() {
            cfg.database_url = cx.var("DATABASE_URL");
        }
        // model_list
        match root.get("model_list") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, e) in list.iter().enumerate() {
                    let drop = cfg.drop_params;
                    match parse_entry(&mut cx, &format!("model_list[{i}]"), e, base_dir, drop) {
                        Ok(entry) => cfg.model_list.push(entry),
                        // A provider we cannot speak, or a bare name we cannot place:
                        // skip that deployment, keep the rest.
                        Err(ConfigError::Invalid { path, message })
                            if message.starts_with("provider `")
                                || message.contains("needs a provider prefix") =>
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
        for (from, tos) in cfg
            .fallbacks
            .iter()
            .chain(&cfg.context_window_fallbacks)
            .chain(&cfg.content_policy_fallbacks)
        {
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

fn parse_yaml(text: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        Ok(Value::Object(Map::new()))
    } else {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))
    }
}

/// LiteLLM's `include: [file.yaml, …]` (paths relative to the including
/// file): lists are appended, mappings merged, other keys set when absent.
fn resolve_includes(root: &mut Value, base_dir: &Path, depth: usize) -> Result<(), ConfigError> {
    let Some(obj) = root.as_object_mut() else {
        return Ok(());
    };
    let Some(inc) = obj.remove("include") else {
        return Ok(());
    };
    if depth > 8 {
        return Err(ConfigError::Invalid {
            path: "include".into(),
            message: "includes nested more than 8 deep (a cycle?)".into(),
        });
    }
    for (i, f) in string_list("include", Some(&inc))?.into_iter().enumerate() {
        let path = base_dir.join(&f);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut sub = parse_yaml(&text).map_err(|e| ConfigError::Invalid {
            path: format!("include[{i}]"),
            message: format!("{}: {e}", path.display()),
        })?;
        resolve_includes(&mut sub, path.parent().unwrap_or(base_dir), depth + 1)?;
        let Value::Object(sub) = sub else {
            return Err(ConfigError::Type {
                path: format!("include[{i}]"),
                expected: "a YAML mapping",
                found: type_name(&sub),
            });
        };
        for (k, v) in sub {
            match (obj.get_mut(&k), v) {
                (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
                (Some(Value::Object(a)), Value::Object(b)) => {
                    for (bk, bv) in b {
                        a.entry(bk).or_insert(bv);
                    }
                }
                (Some(_), _) => {}
                (None, v) => {
                    obj.insert(k, v);
                }
            }
        }
    }
    Ok(())
}

fn boolean(path: &str, v: Option<&Value>) -> Result<Option<bool>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(ConfigError::Type {
            path: path.into(),
            expected: "a boolean",
            found: type_name(other),
        }),
    }
}

fn string_list(path: &str, v: Option<&Value>) -> Result<Vec<String>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ConfigError::Type {
                        path: format!("{path}[{i}]"),
                        expected: "a string",
                        found: type_name(x),
                    })
            })
            .collect(),
        Some(other) => Err(ConfigError::Type {
            path: path.into(),
            expected: "a list of strings",
            found: type_name(other),
        }),
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

/// LiteLLM's inference for a model name without a `provider/` prefix.
/// LiteLLM matches against its model lists (BerriAI/litellm@001a933:
/// litellm/litellm_core_utils/get_llm_provider_logic.py, `get_llm_provider`:
/// open_ai_chat_completion_models → openai, anthropic_models → anthropic,
/// cohere_chat_models → cohere_chat, vertex_language_models (`gemini-pro`, …)
/// → vertex_ai, bedrock_models → bedrock, open_ai_embedding_models → openai);
/// these are the families those lists hold.
pub fn infer_provider(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_lowercase();
    let starts = |ps: &[&str]| ps.iter().any(|p| m.starts_with(p));
    if starts(&[
        "ft:gpt-",
        "gpt-",
        "chatgpt",
        "o1",
        "o3",
        "o4",
        "whisper-",
        "tts-",
        "dall-e",
        "text-embedding-",
        "omni-moderation",
        "text-moderation",
        "codex-",
        "computer-use-",
    ]) {
        Some("openai")
    } else if starts(&["babbage-", "davinci-", "gpt-3.5-turbo-instruct"]) {
        Some("text-completion-openai")
    } else if starts(&["claude"]) {
        Some("anthropic")
    } else if starts(&[
        "command-r",
        "command-a",
        "command-light",
        "command-nightly",
        "command",
    ]) {
        Some("cohere_chat")
    } else if starts(&["embed-english", "embed-multilingual"]) {
        Some("cohere")
    } else if starts(&[
        "gemini-",
        "chat-bison",
        "codechat-bison",
        "text-bison",
        "code-bison",
        "text-embedding-00",
        "textembedding-gecko",
        "text-multilingual-embedding",
        "imagegeneration",
        "imagen-",
    ]) {
        Some("vertex_ai")
    } else if starts(&[
        "anthropic.",
        "amazon.",
        "meta.llama",
        "mistral.",
        "cohere.",
        "ai21.",
        "us.anthropic.",
        "eu.anthropic.",
        "apac.anthropic.",
        "us.amazon.",
        "us.meta.",
    ]) {
        Some("bedrock")
    } else {
        None
    }
}

/// The env vars LiteLLM reads a provider's key (and base URL) from when
/// `api_key` (`api_base`) is absent, first match wins.
fn env_key_vars(prefix: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match prefix {
        "openai" | "text-completion-openai" => {
            (&["OPENAI_API_KEY"], &["OPENAI_BASE_URL", "OPENAI_API_BASE"])
        }
        "anthropic" => (
            &["ANTHROPIC_API_KEY"],
            &["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
        ),
        "azure" => (
            &["AZURE_API_KEY", "AZURE_OPENAI_API_KEY"],
            &["AZURE_API_BASE", "AZURE_OPENAI_ENDPOINT"],
        ),
        "gemini" => (&["GEMINI_API_KEY", "GOOGLE_API_KEY"], &["GEMINI_API_BASE"]),
        "groq" => (&["GROQ_API_KEY"], &["GROQ_API_BASE"]),
        "deepseek" => (&["DEEPSEEK_API_KEY"], &["DEEPSEEK_API_BASE"]),
        "mistral" => (&["MISTRAL_API_KEY"], &["MISTRAL_API_BASE"]),
        "together_ai" => (
            &[
                "TOGETHERAI_API_KEY",
                "TOGETHER_AI_API_KEY",
                "TOGETHER_API_KEY",
                "TOGETHER_AI_TOKEN",
            ],
            &["TOGETHERAI_API_BASE"],
        ),
        "fireworks_ai" => (
            &[
                "FIREWORKS_API_KEY",
                "FIREWORKS_AI_API_KEY",
                "FIREWORKSAI_API_KEY",
                "FIREWORKS_AI_TOKEN",
            ],
            &["FIREWORKS_API_BASE"],
        ),
        "openrouter" => (
            &["OPENROUTER_API_KEY", "OR_API_KEY"],
            &["OPENROUTER_API_BASE"],
        ),
        "xai" => (&["XAI_API_KEY"], &["XAI_API_BASE"]),
        "perplexity" => (
            &["PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"],
            &["PERPLEXITY_API_BASE"],
        ),
        "deepinfra" => (&["DEEPINFRA_API_KEY"], &["DEEPINFRA_API_BASE"]),
        "cerebras" => (&["CEREBRAS_API_KEY"], &["CEREBRAS_API_BASE"]),
        "nvidia_nim" => (&["NVIDIA_NIM_API_KEY"], &["NVIDIA_NIM_API_BASE"]),
        "hosted_vllm" | "vllm" => (&["HOSTED_VLLM_API_KEY"], &["HOSTED_VLLM_API_BASE"]),
        "lm_studio" => (&["LM_STUDIO_API_KEY"], &["LM_STUDIO_API_BASE"]),
        "ollama" | "ollama_chat" => (&["OLLAMA_API_KEY"], &["OLLAMA_API_BASE"]),
        "cohere" | "cohere_chat" => (&["COHERE_API_KEY", "CO_API_KEY"], &["COHERE_API_BASE"]),
        "openai_like" | "custom_openai" => (&["OPENAI_LIKE_API_KEY"], &[]),
        _ => (&[], &[]),
    }
}

fn parse_entry(
    cx: &mut Ctx<'_>,
    path: &str,
    e: &Value,
    base_dir: &Path,
    drop_params_default: bool,
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
    let s = |cx: &Ctx<'_>, k: &str| cx.string(&format!("{pp}.{k}"), p.get(k));
    let full = s(cx, "model")?.ok_or_else(|| ConfigError::Missing {
        path: format!("{pp}.model"),
    })?;
    let explicit = s(cx, "custom_llm_provider")?;
    let (prefix, model) = match (&explicit, full.split_once('/')) {
        (Some(pfx), _) => (pfx.clone(), full.clone()),
        (None, Some((pfx, rest))) if known_prefix(pfx) => (pfx.to_owned(), rest.to_owned()),
        // `org/model` with an unknown first part: a bare (e.g. HF-style) name.
        (None, _) => match infer_provider(&full) {
            Some(inferred) => (inferred.to_owned(), full.clone()),
            None if full.contains('/') => {
                let (pfx, rest) = full.split_once('/').unwrap_or_default();
                (pfx.to_owned(), rest.to_owned())
            }
            None => {
                return Err(ConfigError::Invalid {
                    path: format!("{pp}.model"),
                    message: format!("`{full}` needs a provider prefix like `openai/{full}`"),
                });
            }
        },
    };
    let has_base = p.contains_key("api_base") || p.contains_key("base_url");
    let provider = match prefix.as_str() {
        "anthropic" => ProviderKind::Anthropic,
        "azure" => ProviderKind::Azure,
        "gemini" => ProviderKind::Gemini,
        "bedrock" => ProviderKind::Bedrock,
        "vertex_ai" | "vertex_ai_beta" => ProviderKind::VertexAi,
        "scripted" => ProviderKind::Scripted(base_dir.join(&model)),
        // Cohere serves an OpenAI-compatible API (docs.cohere.com "Compatibility API").
        "cohere" | "cohere_chat" => ProviderKind::OpenAi,
        p if OPENAI_COMPATIBLE.iter().any(|(n, _)| *n == p) => ProviderKind::OpenAi,
        // An OpenAI-compatible server under another name works when api_base is given.
        other if !NOT_OPENAI_COMPATIBLE.contains(&other) && has_base => ProviderKind::OpenAi,
        other => {
            return Err(ConfigError::Invalid {
                path: format!("{pp}.model"),
                message: format!(
                    "provider `{other}` is not supported (use openai/, anthropic/, azure/, gemini/, bedrock/, vertex_ai/, scripted/ or an OpenAI-compatible provider with api_base)"
                ),
            });
        }
    };
    let (key_vars, base_vars) = env_key_vars(&prefix);
    let mut api_base = s(cx, "api_base")?;
    if api_base.is_none() {
        api_base = s(cx, "base_url")?;
    }
    if api_base.is_none() {
        api_base = cx.first_var(base_vars);
    }
    if api_base.is_none() && prefix.starts_with("cohere") {
        api_base = Some("https://api.cohere.ai/compatibility/v1".into());
    }
    if api_base.is_none() && provider == ProviderKind::OpenAi {
        api_base = default_openai_base(&prefix).map(str::to_owned);
        if api_base.is_none() {
            return Err(ConfigError::Missing {
                path: format!("{pp}.api_base"),
            });
        }
    }
    if provider == ProviderKind::Azure && api_base.is_none() {
        return Err(ConfigError::Invalid {
            path: format!("{pp}.api_base"),
            message: "azure/ needs api_base (or AZURE_API_BASE)".into(),
        });
    }
    if prefix.starts_with("ollama")
        && let Some(b) = &api_base
        && !b.trim_end_matches('/').ends_with("/v1")
    {
        // Ollama's OpenAI-compatible API lives under /v1.
        api_base = Some(format!("{}/v1", b.trim_end_matches('/')));
    }
    let mut api_key = s(cx, "api_key")?;
    if api_key.is_none() {
        api_key = cx.first_var(key_vars);
    }
    let mut api_version = s(cx, "api_version")?;
    if api_version.is_none() && provider == ProviderKind::Azure {
        api_version = cx.var("AZURE_API_VERSION");
    }
    let mut organization = s(cx, "organization")?;
    if organization.is_none() && provider == ProviderKind::OpenAi && prefix == "openai" {
        organization = cx.var("OPENAI_ORGANIZATION");
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
    let secret = |cx: &Ctx<'_>, k: &str, vars: &[&str]| -> Result<Option<Secret>, ConfigError> {
        Ok(s(cx, k)?.or_else(|| cx.first_var(vars)).map(Secret))
    };
    let aws = if provider == ProviderKind::Bedrock {
        let a = AwsParams {
            access_key_id: secret(cx, "aws_access_key_id", &["AWS_ACCESS_KEY_ID"])?,
            secret_access_key: secret(cx, "aws_secret_access_key", &["AWS_SECRET_ACCESS_KEY"])?,
            session_token: secret(cx, "aws_session_token", &["AWS_SESSION_TOKEN"])?,
            region: s(cx, "aws_region_name")?
                .or_else(|| cx.first_var(&["AWS_REGION_NAME", "AWS_REGION"]))
                .unwrap_or_else(|| "us-west-2".into()),
        };
        if api_base.is_none() {
            api_base = s(cx, "aws_bedrock_runtime_endpoint")?
                .or_else(|| cx.var("AWS_BEDROCK_RUNTIME_ENDPOINT"));
        }
        if a.access_key_id.is_none() || a.secret_access_key.is_none() {
            return Err(ConfigError::Invalid {
                path: format!("{pp}.aws_access_key_id"),
                message: "provider `bedrock` needs aws_access_key_id and aws_secret_access_key (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)".into(),
            });
        }
        a
    } else {
        AwsParams::default()
    };
    let vertex = if provider == ProviderKind::VertexAi {
        let creds = match s(cx, "vertex_credentials")? {
            Some(c) => Some(c),
            None => cx.var("GOOGLE_APPLICATION_CREDENTIALS"),
        };
        let credentials = match creds {
            // Inline JSON, as LiteLLM accepts it.
            Some(c) if c.trim_start().starts_with('{') => Some(Secret(c)),
            Some(c) => {
                let f = base_dir.join(&c);
                Some(Secret(std::fs::read_to_string(&f).map_err(|source| {
                    ConfigError::Read {
                        path: f.clone(),
                        source,
                    }
                })?))
            }
            None => {
                // LiteLLM would fall back to Google's ADC; without a key file there is nothing to sign with.
                return Err(ConfigError::Invalid {
                    path: format!("{pp}.vertex_credentials"),
                    message: "provider `vertex_ai` needs vertex_credentials or GOOGLE_APPLICATION_CREDENTIALS".into(),
                });
            }
        };
        VertexParams {
            project: s(cx, "vertex_project")?
                .or_else(|| cx.first_var(&["VERTEXAI_PROJECT", "VERTEX_PROJECT"])),
            location: s(cx, "vertex_location")?
                .or_else(|| cx.first_var(&["VERTEXAI_LOCATION", "VERTEX_LOCATION"]))
                .unwrap_or_else(|| "us-central1".into()),
            credentials,
        }
    } else {
        VertexParams::default()
    };
    let model_info = match m.get("model_info") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(ConfigError::Type {
                path: format!("{path}.model_info"),
                expected: "a mapping",
                found: type_name(other),
            });
        }
    };
    Ok(ModelEntry {
        model_name,
        provider,
        model,
        api_key: api_key.map(Secret),
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
        api_version,
        extra_headers,
        provider_name: prefix,
        organization,
        max_retries: cx
            .uint(&format!("{pp}.max_retries"), p.get("max_retries"))?
            .map(|n| n.min(10) as u32),
        drop_params: boolean(&format!("{pp}.drop_params"), p.get("drop_params"))?
            .unwrap_or(drop_params_default),
        additional_drop_params: string_list(
            &format!("{pp}.additional_drop_params"),
            p.get("additional_drop_params"),
        )?,
        model_info,
        aws,
        vertex,
    })
}

/// A provider prefix LiteLLM knows (so `prefix/rest` splits there).
fn known_prefix(p: &str) -> bool {
    OPENAI_COMPATIBLE.iter().any(|(n, _)| *n == p)
        || NOT_OPENAI_COMPATIBLE.contains(&p)
        || matches!(p, "anthropic" | "scripted" | "cohere_chat")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, Path::new("/cfg"))
    }

    #[test]
    fn telemetry_otlp_endpoint() {
        assert_eq!(check("model_list: []").unwrap().otlp_endpoint, None);
        let c = check("telemetry: {otlp_endpoint: 'http://otel-collector:4318'}").unwrap();
        assert_eq!(
            c.otlp_endpoint.as_deref(),
            Some("http://otel-collector:4318")
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let err = check("telemetry: {otlp_endpoint: 'collector:4318'}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
        let c = check("telemetry: {otlp_endpoint: 'http://c:4318', sampler: x}").unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("sampler")),
            "{:?}",
            c.warnings
        );
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

    #[test]
    fn context_window_fallbacks_and_streaming_cost_are_read() {
        let c = check(
            "litellm_settings: {context_window_fallbacks: [{small: [large]}], include_cost_in_streaming_usage: false}\n\
             router_settings: {context_window_fallbacks: [{mini: [big, bigger]}]}\n",
        )
        .unwrap();
        assert_eq!(
            c.context_window_fallbacks["small"],
            vec!["large".to_owned()]
        );
        assert_eq!(c.context_window_fallbacks["mini"].len(), 2);
        assert!(!c.include_cost_in_streaming_usage);
        assert!(
            !c.warnings
                .iter()
                .any(|w| w.contains("context_window_fallbacks")
                    || w.contains("include_cost_in_streaming_usage")),
            "{:?}",
            c.warnings
        );
        assert!(check("").unwrap().include_cost_in_streaming_usage);
    }

    #[test]
    fn max_fallbacks_and_user_budget_on_team_keys_are_read() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let read = |yaml: &str, vars: &'static [(&'static str, &'static str)]| {
            Config::from_yaml_str_with_env(yaml, Path::new("/cfg"), &env(vars)).unwrap()
        };
        let c = read("", &[]);
        assert_eq!(c.max_fallbacks, DEFAULT_MAX_FALLBACKS);
        assert!(!c.apply_user_budget_to_team_keys);
        // Router(max_fallbacks) > litellm.max_fallbacks > ROUTER_MAX_FALLBACKS > 5.
        assert_eq!(read("", &[("ROUTER_MAX_FALLBACKS", "2")]).max_fallbacks, 2);
        let bad = read("", &[("ROUTER_MAX_FALLBACKS", "many")]);
        assert_eq!(bad.max_fallbacks, DEFAULT_MAX_FALLBACKS);
        assert!(
            bad.warnings
                .iter()
                .any(|w| w.contains("ROUTER_MAX_FALLBACKS"))
        );
        let ls = "litellm_settings: {max_fallbacks: 1}\n";
        assert_eq!(read(ls, &[("ROUTER_MAX_FALLBACKS", "2")]).max_fallbacks, 1);
        let both = "litellm_settings: {max_fallbacks: 1}\nrouter_settings: {max_fallbacks: 0}\n";
        let c = read(both, &[("ROUTER_MAX_FALLBACKS", "2")]);
        assert_eq!(c.max_fallbacks, 0);
        let c = read(
            "general_settings: {apply_user_budget_to_team_keys: true}\n",
            &[],
        );
        assert!(c.apply_user_budget_to_team_keys);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(
            Config::from_yaml_str_with_env(
                "router_settings: {max_fallbacks: -1}",
                Path::new("/cfg"),
                &env(&[])
            )
            .is_err()
        );
    }
}
