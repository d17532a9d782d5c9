//! Wire formats: conversion between each provider's JSON and the canonical types,
//! plus the minimal peeking/rewriting used on the pass-through path.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai;
pub mod responses;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The few fields the gateway needs from a request body, found without
/// building a JSON tree (everything else is skipped).
#[derive(Deserialize)]
pub struct Peek<'a> {
    #[serde(borrow)]
    pub model: Option<&'a RawValue>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(borrow, default)]
    pub stream_options: Option<&'a RawValue>,
    // LiteLLM-only fields: noticed in the same pass, never materialized.
    #[serde(default)]
    metadata: Option<serde::de::IgnoredAny>,
    // Per-request fallback lists: honoured by the router, then stripped.
    #[serde(borrow, default)]
    fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context_window_fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content_policy_fallbacks: Option<&'a RawValue>,
    #[serde(default)]
    num_retries: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    mock_testing_fallbacks: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    mock_response: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    mock_timeout: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    caching: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cache: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    user_api_key: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    user_api_key_alias: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    user_api_key_team_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    user_api_key_user_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    litellm_metadata: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    proxy_server_request: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    tags: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    guardrails: Option<serde::de::IgnoredAny>,
    // Read for the pass-through parameter checks (`crate::params`).
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    drop_params: Option<bool>,
    #[serde(default)]
    additional_drop_params: Option<Vec<String>>,
}

impl Peek<'_> {
    fn has_litellm_only(&self) -> bool {
        self.fallbacks.is_some()
            || self.context_window_fallbacks.is_some()
            || self.content_policy_fallbacks.is_some()
            || self.num_retries.is_some()
            || self.mock_testing_fallbacks.is_some()
            || self.mock_response.is_some()
            || self.mock_timeout.is_some()
            || self.caching.is_some()
            || self.cache.is_some()
            || self.user_api_key.is_some()
            || self.user_api_key_alias.is_some()
            || self.user_api_key_team_id.is_some()
            || self.user_api_key_user_id.is_some()
            || self.litellm_metadata.is_some()
            || self.proxy_server_request.is_some()
            || self.tags.is_some()
            || self.guardrails.is_some()
            || self.drop_params.is_some()
            || self.additional_drop_params.is_some()
    }
}

/// What the gateway learned from peeking at a request body.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub model: String,
    pub stream: bool,
    /// OpenAI: the client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// LiteLLM-only fields are present: strip before a pass-through.
    pub litellm_fields: bool,
    /// `metadata` is present (LiteLLM's on OpenAI requests, a real field on Anthropic's).
    pub metadata: bool,
    pub temperature: Option<f64>,
    /// LiteLLM's per-request `drop_params` / `additional_drop_params`.
    pub drop_params: Option<bool>,
    pub additional_drop_params: Vec<String>,
    /// The request's own fallback lists (`None` when it sent none).
    pub fallbacks: Option<Box<crate::fallbacks::RequestFallbacks>>,
    model_span: (usize, usize),
    stream_options_span: Option<(usize, usize)>,
    open_brace: usize,
}

fn span(body: &[u8], raw: &RawValue) -> (usize, usize) {
    let s = raw.get();
    let start = s.as_ptr() as usize - body.as_ptr() as usize;
    (start, start + s.len())
}

/// Peek at a request body: model, stream flag and where they sit.
pub fn peek(body: &[u8]) -> Result<Peeked, String> {
    let p: Peek<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let raw = p.model.ok_or_else(|| "`model` is required".to_owned())?;
    let model: String =
        serde_json::from_str(raw.get()).map_err(|_| "`model` must be a string".to_owned())?;
    let include_usage = p
        .stream_options
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
        .and_then(|v| v.get("include_usage").and_then(|b| b.as_bool()))
        .unwrap_or(false);
    let fallbacks = crate::fallbacks::RequestFallbacks::from_body(
        p.fallbacks,
        p.context_window_fallbacks,
        p.content_policy_fallbacks,
    )?;
    Ok(Peeked {
        fallbacks,
        litellm_fields: p.has_litellm_only(),
        temperature: p.temperature,
        drop_params: p.drop_params,
        additional_drop_params: p.additional_drop_params.clone().unwrap_or_default(),
        metadata: p.metadata.is_some(),
        model,
        stream: p.stream.unwrap_or(false),
        include_usage,
        model_span: span(body, raw),
        stream_options_span: p.stream_options.map(|r| span(body, r)),
        open_brace: body.iter().position(|&b| b == b'{').unwrap_or(0),
    })
}

/// Rewrite a pass-through body for the upstream: swap the model name and, for
/// OpenAI streams, ask for usage. Returns `None` when the body can go as is.
pub fn rewrite(body: &[u8], p: &Peeked, upstream_model: &str, want_usage: bool) -> Option<Vec<u8>> {
    let swap_model = upstream_model != p.model;
    let add_usage = want_usage && p.stream && !p.include_usage;
    if !swap_model && !add_usage {
        return None;
    }
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(2);
    if swap_model {
        let mut m = Vec::with_capacity(upstream_model.len() + 2);
        // Serializing a &str cannot fail.
        let _ = serde_json::to_writer(&mut m, upstream_model);
        edits.push((p.model_span.0, p.model_span.1, m));
    }
    if add_usage {
        match p.stream_options_span {
            Some((s, e)) => edits.push((s, e, b"{\"include_usage\":true}".to_vec())),
            None => edits.push((
                p.open_brace + 1,
                p.open_brace + 1,
                b"\"stream_options\":{\"include_usage\":true},".to_vec(),
            )),
        }
    }
    edits.sort_by_key(|e| e.0);
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut pos = 0;
    for (s, e, rep) in edits {
        out.extend_from_slice(&body[pos..s]);
        out.extend_from_slice(&rep);
        pos = e;
    }
    out.extend_from_slice(&body[pos..]);
    Some(out)
}

/// Body fields only LiteLLM understands (router and proxy controls); a real
/// upstream rejects them, so they never leave the gateway. OpenAI's own
/// `metadata` is also LiteLLM's (its proxy never forwards it); Anthropic's
/// `metadata` is a real field and stays.
const LITELLM_ONLY: &[&str] = &[
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "num_retries",
    "mock_testing_fallbacks",
    "mock_response",
    "mock_timeout",
    "caching",
    "cache",
    "user_api_key",
    "user_api_key_alias",
    "user_api_key_team_id",
    "user_api_key_user_id",
    "litellm_metadata",
    "proxy_server_request",
    "tags",
    "guardrails",
    "drop_params",
    "additional_drop_params",
];

/// `body` without LiteLLM-only fields, or `None` when it has none. Called
/// only when [`Peeked::litellm_fields`] says some are there.
pub fn strip_litellm_fields(body: &[u8], openai: bool) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object_mut()?;
    let before = o.len();
    for k in LITELLM_ONLY {
        o.remove(*k);
    }
    if openai {
        o.remove("metadata");
    }
    if o.len() == before {
        return None;
    }
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_litellm_only_fields() {
        let b = br#"{"model":"m","messages":[],"fallbacks":["x"],"num_retries":2,"mock_testing_fallbacks":true,"metadata":{"a":1}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&strip_litellm_fields(b, true).unwrap()).unwrap();
        assert_eq!(out, serde_json::json!({"model":"m","messages":[]}));
        let b = br#"{"model":"m","messages":[],"metadata":{"user_id":"u"}}"#;
        assert!(
            strip_litellm_fields(b, false).is_none(),
            "Anthropic metadata is real"
        );
        let b = br#"{"model":"m","messages":[{"role":"user","content":"the \"tags\" word"}]}"#;
        assert!(
            strip_litellm_fields(b, true).is_none(),
            "only top-level keys count"
        );
    }

    #[test]
    fn rewrites_model_and_usage() {
        let body = br#" {"messages":[],"model":"alias","stream":true}"#;
        let p = peek(body).unwrap();
        assert_eq!(p.model, "alias");
        assert!(p.stream);
        let out = rewrite(body, &p, "gpt-4o", true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["stream_options"]["include_usage"], true);
        let body = br#"{"model":"gpt-4o","stream":false}"#;
        assert!(rewrite(body, &peek(body).unwrap(), "gpt-4o", true).is_none());
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#;
        let out = rewrite(body, &peek(body).unwrap(), "m", true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
}
