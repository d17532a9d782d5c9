//! Request parameters per provider, as LiteLLM treats them:
//! - a parameter the target provider does not take is refused with LiteLLM's
//!   `UnsupportedParamsError` (400), or dropped when `drop_params` is on (globally in
//!   `litellm_settings`, per deployment in `litellm_params`, or per request);
//!   `additional_drop_params` names parameters always dropped;
//! - `response_format` for Anthropic and Bedrock becomes a forced `json_tool_call`
//!   tool whose arguments come back as the message content (LiteLLM's
//!   `RESPONSE_FORMAT_TOOL_NAME` approach); Gemini and OpenAI take it natively.
//!
//! Supported sets follow LiteLLM's `get_supported_openai_params` for each config
//! (`AnthropicConfig`, `VertexGeminiConfig`, `AmazonConverseConfig`,
//! `OpenAIOSeriesConfig`/`OpenAIGPT5Config` for temperature on reasoning models).

use crate::canonical::{
    ChatRequest, ChatResponse, Part, ResponseFormat, StopReason, StreamEvent, Tool, ToolChoice,
};
use crate::config::ProviderKind;
use crate::error::ProviderError;
use crate::providers::EventStream;
use serde_json::{Value, json};
use std::borrow::Cow;

/// The tool LiteLLM forces to get JSON out of Anthropic and Bedrock models.
pub const JSON_TOOL_NAME: &str = "json_tool_call";

/// How a deployment's requests are encoded, for parameter support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// OpenAI and Azure OpenAI themselves.
    OpenAi,
    /// Any other OpenAI-compatible server: takes whatever it is sent.
    OpenAiCompatible,
    Anthropic,
    Gemini,
    Bedrock,
    /// Canned replies: parameters are irrelevant.
    Scripted,
}

impl Family {
    pub fn of(kind: &ProviderKind, provider_name: &str, upstream: &str) -> Family {
        match kind {
            ProviderKind::OpenAi if matches!(provider_name, "openai" | "") => Family::OpenAi,
            ProviderKind::OpenAi => Family::OpenAiCompatible,
            ProviderKind::Azure => Family::OpenAi,
            ProviderKind::Anthropic => Family::Anthropic,
            ProviderKind::Gemini => Family::Gemini,
            ProviderKind::VertexAi if upstream.starts_with("claude") => Family::Anthropic,
            ProviderKind::VertexAi => Family::Gemini,
            ProviderKind::Bedrock => Family::Bedrock,
            ProviderKind::Scripted(_) => Family::Scripted,
        }
    }

    /// LiteLLM's provider name in error messages.
    fn name(self) -> &'static str {
        match self {
            Family::OpenAi | Family::OpenAiCompatible => "openai",
            Family::Anthropic => "anthropic",
            Family::Gemini => "gemini",
            Family::Bedrock => "bedrock",
            Family::Scripted => "scripted",
        }
    }

    /// Whether `param` (an OpenAI name from `ChatRequest::extra`) reaches this provider.
    fn supports(self, param: &str) -> bool {
        match self {
            Family::OpenAiCompatible | Family::Scripted => true,
            // `top_k` is not an OpenAI parameter (OpenAI answers 400 to it).
            Family::OpenAi => param != "top_k",
            Family::Anthropic => matches!(param, "top_k"),
            Family::Gemini => matches!(
                param,
                "seed"
                    | "frequency_penalty"
                    | "presence_penalty"
                    | "n"
                    | "logprobs"
                    | "top_logprobs"
                    | "top_k"
            ),
            Family::Bedrock => matches!(param, "top_k"),
        }
    }

    /// Does `response_format` need the forced-tool translation?
    fn json_via_tool(self) -> bool {
        matches!(self, Family::Anthropic | Family::Bedrock)
    }
}

/// The drop policy in force for one request on one deployment.
#[derive(Debug, Clone, Copy)]
pub struct DropPolicy<'a> {
    /// `drop_params` (the request's own value wins over the deployment's).
    pub drop: bool,
    /// The deployment's `additional_drop_params`.
    pub additional: &'a [String],
}

impl<'a> DropPolicy<'a> {
    pub fn new(deployment_drop: bool, additional: &'a [String], request: Option<bool>) -> Self {
        Self {
            drop: request.unwrap_or(deployment_drop),
            additional,
        }
    }
}

/// A request ready for one deployment.
#[derive(Debug)]
pub struct Prepared<'a> {
    pub req: Cow<'a, ChatRequest>,
    /// `response_format` went out as the forced JSON tool: turn it back into text.
    pub json_mode: bool,
}

/// LiteLLM's `UnsupportedParamsError` text (its proxy answers it with 400).
pub fn unsupported_error(provider: &str, model: &str, params: &[String]) -> ProviderError {
    let list = params
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    ProviderError::InvalidRequest(format!(
        "litellm.UnsupportedParamsError: {provider} does not support parameters: [{list}], \
         for model={model}. To drop these, set `litellm.drop_params=True` or for proxy:\n\n\
         `litellm_settings:\n drop_params: true`\n"
    ))
}

/// OpenAI's reasoning models take only the default temperature (1).
fn temperature_unsupported(family: Family, upstream: &str, t: Option<f64>) -> bool {
    family == Family::OpenAi
        && crate::formats::openai::is_reasoning_model(upstream)
        && t.is_some_and(|t| t != 1.0)
}

/// Fit a canonical request to one deployment: drop or refuse what it cannot take,
/// and express `response_format` the way the provider can.
pub fn prepare<'a>(
    req: &'a ChatRequest,
    family: Family,
    upstream: &str,
    policy: DropPolicy<'_>,
) -> Result<Prepared<'a>, ProviderError> {
    let mut unsupported: Vec<String> = req
        .extra
        .keys()
        .filter(|k| !family.supports(k))
        .cloned()
        .collect();
    let temp = temperature_unsupported(family, upstream, req.temperature);
    if temp {
        unsupported.push("temperature".into());
    }
    let mut remove: Vec<&str> = policy
        .additional
        .iter()
        .chain(req.additional_drop_params.iter())
        .map(String::as_str)
        .collect();
    unsupported.retain(|p| !remove.contains(&p.as_str()));
    if !unsupported.is_empty() && !policy.drop {
        return Err(unsupported_error(family.name(), upstream, &unsupported));
    }
    remove.extend(unsupported.iter().map(String::as_str));
    let json_format = match family.json_via_tool() {
        true => req.response_format.as_ref().and_then(ResponseFormat::parse),
        false => None,
    };
    let plain_text_format = family.json_via_tool()
        && req.response_format.is_some()
        && json_format.is_none()
        && !remove.contains(&"response_format");
    if remove.is_empty() && json_format.is_none() && !plain_text_format {
        return Ok(Prepared {
            req: Cow::Borrowed(req),
            json_mode: false,
        });
    }
    let mut r = req.clone();
    for p in &remove {
        drop_param(&mut r, p);
    }
    if plain_text_format {
        // `{"type": "text"}` is the default: nothing to send.
        r.response_format = None;
    }
    let json_mode = match (json_format, r.response_format.take()) {
        (Some(f), Some(_)) => {
            add_json_tool(&mut r, f);
            true
        }
        (_, rf) => {
            r.response_format = rf;
            false
        }
    };
    Ok(Prepared {
        req: Cow::Owned(r),
        json_mode,
    })
}

fn drop_param(r: &mut ChatRequest, p: &str) {
    match p {
        "temperature" => r.temperature = None,
        "top_p" => r.top_p = None,
        "max_tokens" | "max_completion_tokens" => r.max_tokens = None,
        "stop" => r.stop.clear(),
        "user" => r.user = None,
        "tools" => {
            r.tools.clear();
            r.tool_choice = None;
        }
        "tool_choice" => r.tool_choice = None,
        "parallel_tool_calls" => r.parallel_tool_calls = None,
        "response_format" => r.response_format = None,
        "reasoning_effort" => r.reasoning_effort = None,
        "thinking" => r.thinking = None,
        other => {
            r.extra.remove(other);
        }
    }
}

/// LiteLLM's `_create_json_tool_call_for_response_format`: the schema (or any
/// object) as the input of a tool the model is forced to call.
fn add_json_tool(r: &mut ChatRequest, f: ResponseFormat) {
    let schema = match f {
        ResponseFormat::JsonObject => {
            json!({"type": "object", "additionalProperties": true, "properties": {}})
        }
        ResponseFormat::JsonSchema { schema, .. } => schema,
    };
    r.tools.push(Tool {
        name: JSON_TOOL_NAME.into(),
        description: None,
        parameters: schema,
    });
    r.tool_choice = Some(ToolChoice::Tool(JSON_TOOL_NAME.into()));
    // Extended thinking cannot be combined with a forced tool choice.
    r.thinking = None;
    r.reasoning_effort = None;
}

/// LiteLLM's `_convert_tool_response_to_message`: the forced tool's arguments
/// become the message text, and the answer ends normally.
pub fn json_mode_response(mut r: ChatResponse) -> ChatResponse {
    let calls = r.tool_calls().count();
    let json_call = r
        .content
        .iter()
        .position(|p| matches!(p, Part::ToolCall(c) if c.name == JSON_TOOL_NAME));
    if let (1, Some(i)) = (calls, json_call) {
        let Part::ToolCall(c) = r.content.remove(i) else {
            return r;
        };
        // Text the model wrote around the forced call is not part of the JSON answer.
        r.content.retain(|p| !matches!(p, Part::Text(_)));
        r.content.push(Part::Text(c.arguments));
        if r.stop_reason == StopReason::ToolUse {
            r.stop_reason = StopReason::EndTurn;
        }
    }
    r
}

/// The streamed form of [`json_mode_response`]: the forced tool's argument
/// deltas are streamed as text deltas, and its start event is swallowed.
pub fn json_mode_stream(s: EventStream) -> EventStream {
    use futures_util::StreamExt;
    let mut json_index: Option<usize> = None;
    let mut other_tools = false;
    Box::pin(s.filter_map(move |ev| {
        let out = match ev {
            Ok(StreamEvent::ToolCallStart { index, name, .. }) if name == JSON_TOOL_NAME => {
                json_index = Some(index);
                None
            }
            Ok(StreamEvent::ToolCallDelta { index, arguments }) if Some(index) == json_index => {
                Some(Ok(StreamEvent::TextDelta(arguments)))
            }
            Ok(ev @ StreamEvent::ToolCallStart { .. }) => {
                other_tools = true;
                Some(Ok(ev))
            }
            // Text around the forced call is not part of the JSON answer.
            Ok(StreamEvent::TextDelta(_)) if json_index.is_none() => None,
            Ok(StreamEvent::Finish {
                stop_reason: StopReason::ToolUse,
                usage,
            }) if json_index.is_some() && !other_tools => Some(Ok(StreamEvent::Finish {
                stop_reason: StopReason::EndTurn,
                usage,
            })),
            other => Some(other),
        };
        std::future::ready(out)
    }))
}

/// Pass-through bodies (client format == provider format): what must leave the
/// body before it goes upstream. `None` when nothing needs dropping.
pub fn passthrough_drops(
    family: Family,
    upstream: &str,
    temperature: Option<f64>,
    policy: DropPolicy<'_>,
    request_additional: &[String],
) -> Result<Option<Vec<String>>, ProviderError> {
    let mut remove: Vec<String> = policy
        .additional
        .iter()
        .chain(request_additional)
        .cloned()
        .collect();
    if temperature_unsupported(family, upstream, temperature)
        && !remove.iter().any(|p| p == "temperature")
    {
        if !policy.drop {
            return Err(unsupported_error(
                family.name(),
                upstream,
                &["temperature".into()],
            ));
        }
        remove.push("temperature".into());
    }
    Ok((!remove.is_empty()).then_some(remove))
}

/// Remove top-level `fields` from a JSON body.
pub fn remove_fields(body: &[u8], fields: &[String]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object_mut()?;
    for f in fields {
        o.remove(f);
        if f == "max_tokens" {
            o.remove("max_completion_tokens");
        }
    }
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, ToolCall, Usage};

    fn req(extra: Value) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![Message::user("hi")],
            extra: extra.as_object().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn unsupported_params_are_refused_unless_dropped() {
        let r = req(json!({"frequency_penalty": 0.5, "seed": 7}));
        let off = DropPolicy::new(false, &[], None);
        let e = prepare(&r, Family::Anthropic, "claude-x", off).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("UnsupportedParamsError"), "{msg}");
        assert!(msg.contains("'frequency_penalty'") && msg.contains("'seed'"));
        // Gemini takes both; OpenAI-compatible servers take anything.
        assert!(
            !prepare(&r, Family::Gemini, "gemini-2.5-pro", off)
                .unwrap()
                .json_mode
        );
        assert!(matches!(
            prepare(&r, Family::OpenAiCompatible, "x", off).unwrap().req,
            Cow::Borrowed(_)
        ));
        // drop_params: from the deployment, or the request itself.
        for policy in [
            DropPolicy::new(true, &[], None),
            DropPolicy::new(false, &[], Some(true)),
        ] {
            let p = prepare(&r, Family::Anthropic, "claude-x", policy).unwrap();
            assert!(p.req.extra.is_empty(), "{:?}", p.req.extra);
        }
        // The request can turn it off again.
        assert!(
            prepare(
                &r,
                Family::Anthropic,
                "c",
                DropPolicy::new(true, &[], Some(false))
            )
            .is_err()
        );
        // additional_drop_params removes named params (even supported ones).
        let add = vec![
            "frequency_penalty".to_owned(),
            "seed".to_owned(),
            "temperature".to_owned(),
        ];
        let mut r2 = r.clone();
        r2.temperature = Some(0.3);
        let p = prepare(
            &r2,
            Family::Anthropic,
            "c",
            DropPolicy::new(false, &add, None),
        )
        .unwrap();
        assert!(p.req.extra.is_empty());
        assert_eq!(p.req.temperature, None);
    }

    #[test]
    fn reasoning_models_refuse_temperature() {
        let mut r = req(json!({}));
        r.temperature = Some(0.2);
        let off = DropPolicy::new(false, &[], None);
        assert!(prepare(&r, Family::OpenAi, "o3-mini", off).is_err());
        assert!(prepare(&r, Family::OpenAi, "gpt-4o", off).is_ok());
        let p = prepare(
            &r,
            Family::OpenAi,
            "gpt-5",
            DropPolicy::new(true, &[], None),
        )
        .unwrap();
        assert_eq!(p.req.temperature, None);
        r.temperature = Some(1.0);
        assert!(prepare(&r, Family::OpenAi, "o3", off).is_ok());
        // The pass-through path decides the same way.
        assert!(passthrough_drops(Family::OpenAi, "o1", Some(0.0), off, &[]).is_err());
        assert_eq!(
            passthrough_drops(
                Family::OpenAi,
                "o1",
                Some(0.0),
                DropPolicy::new(true, &[], None),
                &[]
            )
            .unwrap(),
            Some(vec!["temperature".to_owned()])
        );
        assert_eq!(
            passthrough_drops(Family::OpenAi, "gpt-4o", Some(0.0), off, &[]).unwrap(),
            None
        );
    }

    #[test]
    fn response_format_becomes_a_forced_tool_and_comes_back_as_text() {
        let mut r = req(json!({}));
        r.response_format = Some(
            json!({"type": "json_schema", "json_schema": {"name": "person",
            "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}),
        );
        let off = DropPolicy::new(false, &[], None);
        let p = prepare(&r, Family::Anthropic, "claude-x", off).unwrap();
        assert!(p.json_mode);
        assert_eq!(p.req.response_format, None);
        assert_eq!(p.req.tools[0].name, JSON_TOOL_NAME);
        assert_eq!(p.req.tools[0].parameters["required"][0], "name");
        assert_eq!(
            p.req.tool_choice,
            Some(ToolChoice::Tool(JSON_TOOL_NAME.into()))
        );
        // Gemini and OpenAI keep it for their own encoders.
        let g = prepare(&r, Family::Gemini, "gemini-2.5-pro", off).unwrap();
        assert!(!g.json_mode && g.req.response_format.is_some());

        let answer = ChatResponse {
            content: vec![Part::ToolCall(ToolCall {
                id: "toolu_1".into(),
                name: JSON_TOOL_NAME.into(),
                arguments: r#"{"name":"Ada"}"#.into(),
            })],
            stop_reason: StopReason::ToolUse,
            usage: Usage::default(),
            ..Default::default()
        };
        let out = json_mode_response(answer);
        assert_eq!(out.text(), r#"{"name":"Ada"}"#);
        assert_eq!(out.tool_calls().count(), 0);
        assert_eq!(out.stop_reason, StopReason::EndTurn);
    }

    #[tokio::test]
    async fn json_mode_stream_turns_argument_deltas_into_text() {
        use futures_util::StreamExt;
        let evs = vec![
            StreamEvent::Start {
                id: "x".into(),
                model: "m".into(),
                input_tokens: 3,
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "t".into(),
                name: JSON_TOOL_NAME.into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::Finish {
                stop_reason: StopReason::ToolUse,
                usage: Usage::default(),
            },
        ];
        let s: EventStream = Box::pin(futures_util::stream::iter(evs.into_iter().map(Ok)));
        let out: Vec<_> = json_mode_stream(s).map(Result::unwrap).collect().await;
        let mut c = crate::canonical::StreamCollector::default();
        for e in out {
            c.push(e);
        }
        assert_eq!(c.response.text(), "{\"a\":1}");
        assert_eq!(c.response.tool_calls().count(), 0);
        assert_eq!(c.response.stop_reason, StopReason::EndTurn);
    }
}
