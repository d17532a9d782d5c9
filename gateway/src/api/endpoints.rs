//! The inference routes besides chat: `/v1/embeddings`, `/v1/completions`
//! (legacy text completions) and `/v1/messages/count_tokens`.
//!
//! They share the chat path's checks and bookkeeping (virtual-key auth, model
//! allow-lists, rate limits, routing with retries/fallbacks, spend and the
//! `x-litellm-response-cost` header). A deployment whose provider serves the
//! endpoint natively gets the body passed through; otherwise:
//! - embeddings: 400 (LiteLLM maps them per provider; we only pass through);
//! - completions: `prompt` becomes one user message on the canonical chat
//!   path, answered in the `text_completion` shape (streamed as its chunks);
//! - count_tokens: an estimate, see [`estimate_tokens`].

use super::{State, authenticate, body_bytes};
use crate::Inner;
use crate::canonical::{ChatRequest, ChatResponse, Message, StreamEvent};
use crate::error::{GatewayError, ProviderError, WireFormat};
use crate::formats::{self, Peeked};
use crate::keys::Caller;
use crate::providers::{CallOpts, Endpoint, EventStream, RawResponse};
use crate::proxy::{
    SpendGuard, json_response, pass_through_response, set_cost_header, set_rate_headers,
};
use crate::sse;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) async fn embeddings(
    axum::extract::State(inner): axum::extract::State<State>,
    req: Request,
) -> Response {
    serve(inner, req, Endpoint::Embeddings).await
}

pub(crate) async fn completions(
    axum::extract::State(inner): axum::extract::State<State>,
    req: Request,
) -> Response {
    serve(inner, req, Endpoint::Completions).await
}

pub(crate) async fn count_tokens(
    axum::extract::State(inner): axum::extract::State<State>,
    req: Request,
) -> Response {
    serve(inner, req, Endpoint::CountTokens).await
}

async fn serve(inner: State, req: Request, ep: Endpoint) -> Response {
    let format = match ep {
        Endpoint::CountTokens => WireFormat::Anthropic,
        _ => WireFormat::OpenAi,
    };
    let (parts, body) = req.into_parts();
    let caller = match authenticate(&inner, &parts.headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response_for(format),
    };
    let body = match body_bytes(body, format).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let beta = parts
        .headers
        .get("anthropic-beta")
        .and_then(|v| v.to_str().ok());
    match run(&inner, ep, caller, body, beta).await {
        Ok(r) => r,
        Err(e) => {
            inner.metrics.error(&e);
            e.into_response_for(format)
        }
    }
}

async fn run(
    inner: &Arc<Inner>,
    ep: Endpoint,
    caller: Caller,
    body: Bytes,
    beta: Option<&str>,
) -> Result<Response, GatewayError> {
    let peek = formats::peek(&body).map_err(GatewayError::BadRequest)?;
    caller.check(&peek.model)?;
    // Counting tokens is free upstream and generates nothing: it takes no
    // rate-limit slot and records no spend (Claude Code calls it often).
    let (rate, parallel) = match ep {
        Endpoint::CountTokens => (None, None),
        _ => inner.keys.admit(&caller)?,
    };
    let parallel = parallel.map(Arc::new);
    let (caller, parallel, body, peek) = (&caller, &parallel, &body, &peek);
    let mut resp = inner
        .router
        .execute_with(&peek.model, peek.fallbacks.as_deref(), move |flight, group| async move {
            let dep = flight.deployment().clone();
            let upstream = dep.upstream_for(&peek.model, &group.name).into_owned();
            let opts = CallOpts {
                model: &upstream,
                timeout: dep.timeout,
                idle_timeout: dep.idle_timeout,
                anthropic_beta: beta,
            };
            let native = dep.provider.has_endpoint(ep);
            if ep == Endpoint::CountTokens {
                if !native {
                    return Ok(json_response(Bytes::from(
                        json!({"input_tokens": estimate_tokens(body)}).to_string(),
                    )));
                }
                let out = pass_through_body(body, peek, &upstream, false, false);
                return match dep.provider.forward_endpoint(ep, out, false, opts).await? {
                    RawResponse::Full(b) => Ok(json_response(b)),
                    RawResponse::Stream(_) => Err(ProviderError::Protocol(
                        "count_tokens answered with a stream".into(),
                    )),
                };
            }
            let price = dep.price_for(&upstream);
            caller
                .check_priced(&upstream, &price)
                .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
            let mut guard = SpendGuard::new(
                inner.clone(),
                caller.clone(),
                flight,
                price,
                &upstream,
                parallel.clone(),
            );
            if native {
                // Only completions stream; an embeddings body's `stream` means nothing.
                let stream = ep == Endpoint::Completions && peek.stream;
                let out = pass_through_body(body, peek, &upstream, stream, true);
                return match dep.provider.forward_endpoint(ep, out, stream, opts).await? {
                    RawResponse::Full(bytes) => {
                        guard.arm();
                        guard.usage = sse::usage_from_body(WireFormat::OpenAi, &bytes);
                        let mut r = json_response(bytes);
                        set_cost_header(r.headers_mut(), guard.cost());
                        Ok(r)
                    }
                    RawResponse::Stream(s) => Ok(pass_through_response(
                        inner,
                        s,
                        WireFormat::OpenAi,
                        !peek.include_usage,
                        guard,
                    )),
                };
            }
            if ep == Endpoint::Embeddings {
                return Err(ProviderError::InvalidRequest(format!(
                    "model `{}` is served by provider `{}`, which has no embeddings endpoint here; \
                     /v1/embeddings needs an OpenAI-compatible deployment (openai, azure, hosted_vllm, ollama, …)",
                    peek.model, dep.provider_name
                )));
            }
            let (mut req, echo) =
                completion_to_chat(body).map_err(ProviderError::InvalidRequest)?;
            if peek.stream {
                req.stream = true;
                let events = dep.provider.stream(&req, opts).await?;
                guard.arm();
                return Ok(sse_response(TextStream {
                    inner: Some(events),
                    guard,
                    model: peek.model.clone(),
                    id: String::new(),
                    echo,
                    include_usage: peek.include_usage,
                    done: false,
                }));
            }
            let r = dep.provider.complete(&req, opts).await?;
            guard.arm();
            guard.usage = r.usage;
            let v = encode_text_completion(&r, &peek.model, echo.as_deref());
            let mut resp = json_response(Bytes::from(v.to_string()));
            set_cost_header(resp.headers_mut(), guard.cost());
            Ok(resp)
        })
        .await?;
    set_rate_headers(resp.headers_mut(), rate);
    Ok(resp)
}

/// The client body with the upstream model name (and, for a stream, usage
/// requested so spend is known), LiteLLM-only fields removed.
fn pass_through_body(
    body: &Bytes,
    peek: &Peeked,
    upstream: &str,
    want_usage: bool,
    openai: bool,
) -> Bytes {
    let out = formats::rewrite(body, peek, upstream, want_usage)
        .map(Bytes::from)
        .unwrap_or_else(|| body.clone());
    if peek.litellm_fields || (openai && peek.metadata) {
        formats::strip_litellm_fields(&out, openai)
            .map(Bytes::from)
            .unwrap_or(out)
    } else {
        out
    }
}

/// Token estimate for providers without a counting endpoint: the serialised
/// JSON of `system`, `messages` and `tools` in bytes, divided by 4 and rounded
/// up (the usual ~4 bytes per token of English text and JSON; it errs high on
/// code-heavy input rather than low, so context checks stay on the safe side).
pub(crate) fn estimate_tokens(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let bytes: usize = ["system", "messages", "tools"]
        .iter()
        .filter_map(|k| v.get(*k))
        .map(|x| x.to_string().len())
        .sum();
    (bytes as u64).div_ceil(4)
}

/// A legacy completions body as a canonical chat request; also returns the
/// prompt when `echo` asks for it to lead the answer.
fn completion_to_chat(body: &[u8]) -> Result<(ChatRequest, Option<String>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let prompt = match v.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(_)) => {
            return Err(
                "`prompt` must be one string for this model (batches and token arrays \
                 are only passed to OpenAI-compatible deployments)"
                    .into(),
            );
        }
        _ => return Err("`prompt` is required and must be a string".into()),
    };
    for (k, ok) in [
        ("n", v.get("n").is_none_or(|n| n.is_null() || n == 1)),
        (
            "best_of",
            v.get("best_of").is_none_or(|n| n.is_null() || n == 1),
        ),
        ("logprobs", v.get("logprobs").is_none_or(Value::is_null)),
        ("suffix", v.get("suffix").is_none_or(Value::is_null)),
    ] {
        if !ok {
            return Err(format!(
                "`{k}` is only supported on /v1/completions for OpenAI-compatible deployments"
            ));
        }
    }
    let stop = match v.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let echo = v
        .get("echo")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        .then(|| prompt.clone());
    let req = ChatRequest {
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        messages: vec![Message::user(prompt)],
        max_tokens: v.get("max_tokens").and_then(Value::as_u64),
        temperature: v.get("temperature").and_then(Value::as_f64),
        top_p: v.get("top_p").and_then(Value::as_f64),
        stop,
        user: v.get("user").and_then(Value::as_str).map(str::to_owned),
        ..ChatRequest::default()
    };
    Ok((req, echo))
}

fn sse_response<S>(s: S) -> Response
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut r = Response::new(axum::body::Body::from_stream(s));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

/// A translated stream as legacy completion chunks (`text_completion` objects
/// with `choices[].text`), the usage-only chunk if asked for, then `[DONE]`.
/// Spend is recorded when it ends (the guard drops).
struct TextStream {
    inner: Option<EventStream>,
    guard: SpendGuard,
    model: String,
    id: String,
    echo: Option<String>,
    include_usage: bool,
    done: bool,
}

impl TextStream {
    fn chunk(&self, choices: Value, usage: Option<Value>, out: &mut Vec<u8>) {
        let mut v = json!({"id": format!("cmpl-{}", self.id), "object": "text_completion",
            "created": chrono::Utc::now().timestamp(), "model": self.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(v.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }

    fn text(&self, text: &str, finish: Option<&str>, out: &mut Vec<u8>) {
        let c = json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
        self.chunk(c, None, out);
    }
}

impl futures_util::Stream for TextStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        let mut out = Vec::new();
        while let Some(s) = this.inner.as_mut() {
            match s.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    this.inner = None;
                    if !this.done {
                        this.done = true;
                        out.extend_from_slice(b"data: [DONE]\n\n");
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.inner = None;
                    this.done = true;
                    crate::formats::openai::StreamEncoder::new(&this.model, false)
                        .error(&GatewayError::Provider(e), &mut out);
                }
                Poll::Ready(Some(Ok(ev))) => match ev {
                    StreamEvent::Start {
                        id, input_tokens, ..
                    } => {
                        this.id = id;
                        this.guard.usage.input_tokens = input_tokens;
                        if let Some(p) = this.echo.take() {
                            this.text(&p, None, &mut out);
                        }
                    }
                    StreamEvent::TextDelta(t) => this.text(&t, None, &mut out),
                    StreamEvent::Finish { stop_reason, usage } => {
                        this.guard.usage = usage;
                        this.text("", Some(stop_reason.openai()), &mut out);
                        if this.include_usage {
                            let u = json!({"prompt_tokens": usage.input_tokens,
                                "completion_tokens": usage.output_tokens,
                                "total_tokens": usage.input_tokens + usage.output_tokens});
                            this.chunk(json!([]), Some(u), &mut out);
                        }
                    }
                    // Thinking and tool calls have no place in a text completion.
                    _ => {}
                },
            }
            if out.len() > 16 * 1024 {
                break;
            }
        }
        if !out.is_empty() {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        } else if this.inner.is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// OpenAI's legacy completion object (platform.openai.com/docs/api-reference/completions/object).
fn encode_text_completion(r: &ChatResponse, model: &str, echo: Option<&str>) -> Value {
    let text = match echo {
        Some(p) => format!("{p}{}", r.text()),
        None => r.text(),
    };
    let u = r.usage;
    json!({
        "id": format!("cmpl-{}", r.id),
        "object": "text_completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": r.stop_reason.openai()}],
        "usage": {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_is_serialised_bytes_over_four_rounded_up() {
        let body = br#"{"model":"m","system":"abc","messages":[{"role":"user","content":"hi"}]}"#;
        // "\"abc\"" = 5 bytes, [{"role":"user","content":"hi"}] = 32 bytes -> 37/4 -> 10
        assert_eq!(estimate_tokens(body), 10);
        assert_eq!(estimate_tokens(br#"{"model":"m"}"#), 0);
    }

    #[test]
    fn completion_translation_refuses_what_it_cannot_express() {
        let (req, echo) =
            completion_to_chat(br#"{"model":"m","prompt":["hi"],"stop":"\n","echo":true}"#)
                .unwrap();
        assert_eq!(req.messages, vec![Message::user("hi")]);
        assert_eq!(req.stop, vec!["\n".to_owned()]);
        assert_eq!(echo.as_deref(), Some("hi"));
        assert!(completion_to_chat(br#"{"model":"m","prompt":["a","b"]}"#).is_err());
        assert!(completion_to_chat(br#"{"model":"m","prompt":"a","n":2}"#).is_err());
        assert!(completion_to_chat(br#"{"model":"m"}"#).is_err());
    }
}
