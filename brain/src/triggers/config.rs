//! `triggers:` in the brain config. Secrets are never inline: each is named by an env var.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TriggersConfig {
    /// `POST /hooks/slack`; absent = the route answers 404.
    pub slack: Option<SlackConfig>,
    /// `POST /hooks/github`; absent = the route answers 404.
    pub github: Option<GithubConfig>,
    /// What turns a triggered task into work. Required when a trigger is configured.
    pub launcher: Option<LauncherChoice>,
    /// First retry delay of an undelivered reply; doubles per failure up to the max.
    pub reply_retry_base_ms: u64,
    pub reply_retry_max_ms: u64,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        Self {
            slack: None,
            github: None,
            launcher: Some(LauncherChoice::Sessions),
            reply_retry_base_ms: 1000,
            reply_retry_max_ms: 300_000,
        }
    }
}

/// `triggers.launcher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LauncherChoice {
    /// The agent loop (`crate::sessions`): the default.
    Sessions,
    /// Test launcher: provisions a sandbox and runs the user's words as a shell command
    /// (`triggers::shell_launcher`). For end-to-end tests and demos without a model.
    Shell,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// Env var holding the app's signing secret.
    pub signing_secret_env: String,
    /// Env var holding the bot token (`xoxb-…`) used for `chat.postMessage`.
    pub bot_token_env: String,
    /// Slack Web API base URL.
    pub api_base_url: String,
    /// The bot's own user id (`U…`); its messages are never treated as tasks.
    pub bot_user_id: Option<String>,
    /// Sessions started by Slack at once; more wait in a queue of `max_queued`.
    pub max_concurrent: usize,
    /// Events waiting for a slot; beyond this they are refused with a log line.
    pub max_queued: usize,
    /// Credentials the sessions' sandboxes get.
    pub credentials: Vec<String>,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            signing_secret_env: "SLACK_SIGNING_SECRET".into(),
            bot_token_env: "SLACK_BOT_TOKEN".into(),
            api_base_url: "https://slack.com/api".into(),
            bot_user_id: None,
            max_concurrent: 4,
            max_queued: 32,
            credentials: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubConfig {
    /// Env var holding the webhook secret.
    pub webhook_secret_env: String,
    /// Env var holding the brain's own token (comments, permission checks). Never given to
    /// sandboxes.
    pub token_env: String,
    /// REST API base URL as the brain reaches it.
    pub api_base_url: String,
    /// REST API base URL as a sandbox reaches it (through the vault proxy); default
    /// `api_base_url`.
    pub sandbox_api_base_url: Option<String>,
    /// Extra PEM root for the brain's GitHub client (GitHub Enterprise with a private CA, tests).
    pub ca_file: Option<PathBuf>,
    /// Issues with this label start a session.
    pub label: String,
    /// Comments starting with this start (or continue) a session.
    pub command_prefix: String,
    /// The credential sandboxes get for clone, push and the pull request; the vault proxy
    /// swaps its stub for the real token toward `git_host` and the API host.
    pub credential: String,
    /// Host (and port, if not 443) sandboxes push to: `https://<git_host>/<owner>/<repo>.git`.
    pub git_host: String,
    /// Directory, relative to the sandbox's working directory, holding the clone the task
    /// works in; the brain pushes from there when it changed.
    pub repo_dir: String,
    /// Sessions started by GitHub at once; more wait in a queue of `max_queued`.
    pub max_concurrent: usize,
    pub max_queued: usize,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            webhook_secret_env: "GITHUB_WEBHOOK_SECRET".into(),
            token_env: "AIRLOCK_GITHUB_TOKEN".into(),
            api_base_url: "https://api.github.com".into(),
            sandbox_api_base_url: None,
            ca_file: None,
            label: "airlock".into(),
            command_prefix: "/airlock".into(),
            credential: "GITHUB_TOKEN".into(),
            git_host: "github.com".into(),
            repo_dir: "airlock-repo".into(),
            max_concurrent: 4,
            max_queued: 32,
        }
    }
}

impl TriggersConfig {
    pub fn any(&self) -> bool {
        self.slack.is_some() || self.github.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.reply_retry_base_ms == 0 || self.reply_retry_base_ms > self.reply_retry_max_ms {
            return Err(
                "triggers.reply_retry_base_ms must be between 1 and reply_retry_max_ms".into(),
            );
        }
        if self.any() && self.launcher.is_none() {
            return Err("triggers.launcher must be set when a trigger is configured".into());
        }
        if let Some(s) = &self.slack {
            if s.max_concurrent == 0 {
                return Err("triggers.slack.max_concurrent must be positive".into());
            }
            if !s.api_base_url.starts_with("http://") && !s.api_base_url.starts_with("https://") {
                return Err("triggers.slack.api_base_url must be an http(s) URL".into());
            }
        }
        if let Some(g) = &self.github {
            if g.max_concurrent == 0 {
                return Err("triggers.github.max_concurrent must be positive".into());
            }
            if g.label.is_empty() || g.command_prefix.is_empty() {
                return Err("triggers.github.label and command_prefix must not be empty".into());
            }
            let safe = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._:/".contains(c))
                    && !s.contains("..")
            };
            // Both are written into shell commands run in the sandbox.
            if !safe(&g.git_host) || g.git_host.contains('/') {
                return Err("triggers.github.git_host must be a host[:port]".into());
            }
            if !safe(&g.repo_dir) || g.repo_dir.starts_with('/') {
                return Err("triggers.github.repo_dir must be a plain relative path".into());
            }
            if !g
                .credential
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err("triggers.github.credential must be an env var name".into());
            }
        }
        Ok(())
    }
}
