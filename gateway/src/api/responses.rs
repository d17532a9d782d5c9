//! `POST /v1/responses` (OpenAI Responses API, `create`).
//!
//! With the caller's auth, limits, routing and spend as on the chat path:
//! - an `openai/` deployment gets the body passed through to its `/responses`
//!   (OpenAI hosts the response store and the built-in tools);
//! - any other deployment gets it translated to a chat turn and the answer
//!   back into a `Response` object (or its stream events);
//! - a `code_interpreter` tool is served by Airlock's sandboxes when a sandbox
//!   host is configured, for every deployment ([`crate::code_interpreter`]).

use super::{State, authenticate, body_bytes};
use crate::Inner;
use crate::canonical::{ChatRequest, StreamEvent};
use crate::code_interpreter::run::{self, Step};
use crate::error::{GatewayError, ProviderError, WireFormat};
use crate::formats::{self, responses as rs};
use crate::keys::Caller;
use crate::limits::ParallelGuard;
use crate::providers::{ByteStream, CallOpts, Endpoint, EventStream, RawResponse};
use crate::proxy::{SpendGuard, json_response, set_cost_header, set_rate_headers};
use crate::sse::SseSplitter;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

pub(crate) async fn create(
    axum::extract::State(inner): axum::extract::State<State>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let caller = match authenticate(&inner, &parts.headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response_for(WireFormat::OpenAi),
    };
    let body = match body_bytes(body, WireFormat::OpenAi).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match serve(&inner, caller, body).await {
        Ok(r) => r,
        Err(e) => {
            inner.metrics.error(&e);
            e.into_response_for(WireFormat::OpenAi)
        }
    }
}

pub(crate) fn sse_response<S>(s: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
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

/// Whether a body may declare a code interpreter tool (a byte scan: bodies
/// without the word skip JSON parsing entirely).
pub(crate) fn mentions_code_tool(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"code_interpreter").is_some()
}

async fn serve(inner: &Arc<Inner>, caller: Caller, body: Bytes) -> Result<Response, GatewayError> {
    let peek = formats::peek(&body).map_err(GatewayError::BadRequest)?;
    caller.check(&peek.model)?;
    let (rate, parallel) = inner.keys.admit(&caller)?;
    let parallel = parallel.map(Arc::new);
    if let Some(ci) = inner.code_interpreter.get()
        && mentions_code_tool(&body)
    {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
        let decoded = rs::decode_request(&v)?;
        if let Some(container) = decoded.code_interpreter.clone() {
            let mut r = intercept(inner, ci, caller, decoded, container, parallel).await?;
            set_rate_headers(r.headers_mut(), rate);
            return Ok(r);
        }
    }
    let mut r = route(inner, &caller, &body, &peek, parallel).await?;
    set_rate_headers(r.headers_mut(), rate);
    Ok(r)
}

async fn route(
    inner: &Arc<Inner>,
    caller: &Caller,
    body: &Bytes,
    peek: &formats::Peeked,
    parallel: Option<Arc<ParallelGuard>>,
) -> Result<Response, GatewayError> {
    let decoded: OnceLock<Result<rs::Decoded, String>> = OnceLock::new();
    let (decoded, parallel) = (&decoded, &parallel);
    inner
        .router
        .execute_with(&peek.model, peek.fallbacks.as_deref(), move |flight, group| async move {
            let dep = flight.deployment().clone();
            let upstream = dep.upstream_for(&peek.model, &group.name).into_owned();
            let price = dep.price_for(&upstream);
            caller
                .check_priced(&upstream, &price)
                .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
            let opts = CallOpts {
                model: &upstream,
                timeout: dep.timeout,
                idle_timeout: dep.idle_timeout,
                anthropic_beta: None,
            };
            let mut guard = SpendGuard::new(
                inner.clone(),
                caller.clone(),
                flight,
                price,
                &upstream,
                parallel.clone(),
            );
            if &*dep.provider_name == "openai" && dep.provider.has_endpoint(Endpoint::Responses) {
                let out = formats::rewrite(body, peek, &upstream, false)
                    .map(Bytes::from)
                    .unwrap_or_else(|| body.clone());
                let out = if peek.litellm_fields || peek.metadata {
                    // Responses' `metadata` is OpenAI's own (stored with the
                    // response): only LiteLLM's fields go.
                    formats::strip_litellm_fields(&out, false)
                        .map(Bytes::from)
                        .unwrap_or(out)
                } else {
                    out
                };
                return match dep
                    .provider
                    .forward_endpoint(Endpoint::Responses, out, peek.stream, opts)
                    .await?
                {
                    RawResponse::Full(bytes) => {
                        guard.arm();
                        guard.usage = serde_json::from_slice::<Value>(&bytes)
                            .map(|v| rs::decode_usage(v.get("usage")))
                            .unwrap_or_default();
                        let mut r = json_response(bytes);
                        set_cost_header(r.headers_mut(), guard.cost());
                        Ok(r)
                    }
                    RawResponse::Stream(s) => {
                        guard.arm();
                        Ok(sse_response(PassThrough {
                            inner: Some(s),
                            splitter: SseSplitter::default(),
                            guard,
                        }))
                    }
                };
            }
            let d = decoded
                .get_or_init(|| {
                    serde_json::from_slice::<Value>(body)
                        .map_err(|e| format!("invalid JSON body: {e}"))
                        .and_then(|v| rs::decode_request(&v).map_err(|e| e.to_string()))
                })
                .as_ref()
                .map_err(|e| ProviderError::InvalidRequest(e.clone()))?;
            if d.code_interpreter.is_some() {
                return Err(ProviderError::InvalidRequest(format!(
                    "model `{}` is served by provider `{}`, which does not host the code_interpreter tool, \
                     and this gateway has no sandboxes for it (set code_interpreter.brain_url to an Airlock brain)",
                    peek.model, dep.provider_name
                )));
            }
            let req: &ChatRequest = &d.request;
            if peek.stream {
                let events = dep.provider.stream(req, opts).await?;
                guard.arm();
                let enc = rs::StreamEncoder::new(&peek.model, d.echo.clone());
                return Ok(sse_response(Translate {
                    inner: Some(events),
                    enc,
                    guard,
                    started: false,
                }));
            }
            let r = dep.provider.complete(req, opts).await?;
            guard.arm();
            guard.usage = r.usage;
            let v = rs::encode_response(&r, &peek.model, &d.echo);
            let mut resp = json_response(Bytes::from(v.to_string()));
            set_cost_header(resp.headers_mut(), guard.cost());
            Ok(resp)
        })
        .await
}

/// An OpenAI Responses stream passed through untouched; usage is read from
/// its `response.completed` (or `.incomplete`/`.failed`) event.
struct PassThrough {
    inner: Option<ByteStream>,
    splitter: SseSplitter,
    guard: SpendGuard,
}

fn scan_usage(ev: &[u8], guard: &mut SpendGuard) {
    if memchr::memmem::find(ev, b"\"usage\"").is_none() {
        return;
    }
    let e = crate::sse::parse_event(ev);
    if let Ok(v) = serde_json::from_str::<Value>(&e.data)
        && let Some(u) = v.pointer("/response/usage").filter(|u| u.is_object())
    {
        guard.usage = rs::decode_usage(Some(u));
    }
}

impl Stream for PassThrough {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(s) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match s.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                let mut out = Vec::new();
                rs::StreamEncoder::new("", Default::default())
                    .error(&GatewayError::Provider(e), &mut out);
                Poll::Ready(Some(Ok(Bytes::from(out))))
            }
            Poll::Ready(Some(Ok(chunk))) => {
                let guard = &mut this.guard;
                this.splitter.push(&chunk, |ev| scan_usage(ev, guard));
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

/// A translated stream: canonical events → Responses events.
struct Translate {
    inner: Option<EventStream>,
    enc: rs::StreamEncoder,
    guard: SpendGuard,
    started: bool,
}

impl Stream for Translate {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut out = Vec::new();
        if !this.started {
            this.started = true;
            this.enc.start(&mut out);
        }
        while let Some(s) = this.inner.as_mut() {
            match s.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    this.inner = None;
                    this.enc.complete(&mut out);
                }
                Poll::Ready(Some(Ok(ev))) => {
                    match &ev {
                        StreamEvent::Start { input_tokens, .. } => {
                            this.guard.usage.input_tokens = *input_tokens
                        }
                        StreamEvent::Finish { usage, .. } => this.guard.usage = *usage,
                        _ => {}
                    }
                    this.enc.push(&ev, &mut out);
                    if out.len() > 16 * 1024 {
                        break;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.inner = None;
                    this.enc.error(&GatewayError::Provider(e), &mut out);
                }
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

/// Serve a Responses request whose `code_interpreter` tool runs in Airlock sandboxes.
async fn intercept(
    inner: &Arc<Inner>,
    ci: &Arc<crate::code_interpreter::CodeInterpreter>,
    caller: Caller,
    decoded: rs::Decoded,
    container: Value,
    parallel: Option<Arc<ParallelGuard>>,
) -> Result<Response, GatewayError> {
    let rs::Decoded { request, echo, .. } = decoded;
    let model = request.model.clone();
    if !request.stream {
        let mut output = Vec::new();
        let mut sink = |step: Step| match step {
            Step::Turn(t) => rs::output_items(&t, &mut output),
            Step::CodeDone { item, .. } => output.push(item),
            Step::CodeStart { .. } | Step::Container(_) | Step::Event(_) => {}
        };
        let o = run::run(ci, inner, &caller, request, &container, parallel, &mut sink).await?;
        let incomplete = (o.last.stop_reason == crate::canonical::StopReason::MaxTokens)
            .then_some("max_output_tokens");
        let v = rs::ResponseObject {
            id: &rs::new_id("resp"),
            model: &model,
            created_at: chrono::Utc::now().timestamp(),
            echo: &echo,
            output,
            usage: Some(o.usage),
            incomplete,
            status: if incomplete.is_some() {
                "incomplete"
            } else {
                "completed"
            },
        }
        .to_json();
        return Ok(json_response(Bytes::from(v.to_string())));
    }
    // Streamed: the loop runs in its own task and reports steps over a channel;
    // a client that hangs up drops the receiver, and the loop ends at its next step.
    let mut rx = spawn_loop(ci, inner, caller, request, container, parallel);
    // Nothing is sent before the container is known: a refused one (another
    // key's id, no sandbox) is an HTTP error, not a failed stream.
    match rx.recv().await {
        Some(Msg::Step(Step::Container(_))) => {}
        Some(Msg::Done(Err(e))) => return Err(e),
        _ => {
            return Err(GatewayError::Internal(
                "the code interpreter loop stopped".into(),
            ));
        }
    }
    let mut enc = rs::StreamEncoder::new(&model, echo);
    let mut first = Vec::new();
    enc.start(&mut first);
    let init = (rx, enc, Some(first), false);
    let s = futures_util::stream::unfold(init, |(mut rx, mut enc, first, done)| async move {
        if let Some(f) = first {
            return Some((Ok(Bytes::from(f)), (rx, enc, None, done)));
        }
        if done {
            return None;
        }
        let mut out = Vec::new();
        let done = match rx.recv().await {
            Some(Msg::Step(step)) => {
                encode_step(&mut enc, step, &mut out);
                false
            }
            Some(Msg::Done(Ok(_))) => {
                enc.complete(&mut out);
                true
            }
            Some(Msg::Done(Err(e))) => {
                enc.error(&e, &mut out);
                true
            }
            None => {
                enc.error(
                    &GatewayError::Internal("the code interpreter loop stopped".into()),
                    &mut out,
                );
                true
            }
        };
        Some((
            Ok::<_, std::io::Error>(Bytes::from(out)),
            (rx, enc, None, done),
        ))
    });
    Ok(sse_response(s))
}

/// Runs the interception loop in its own task; its steps, then its outcome,
/// arrive on the returned channel.
pub(crate) fn spawn_loop(
    ci: &Arc<crate::code_interpreter::CodeInterpreter>,
    inner: &Arc<Inner>,
    caller: Caller,
    request: ChatRequest,
    container: Value,
    parallel: Option<Arc<ParallelGuard>>,
) -> tokio::sync::mpsc::UnboundedReceiver<Msg> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let (ci, inner) = (ci.clone(), inner.clone());
    tokio::spawn(async move {
        let tx2 = tx.clone();
        let mut sink = move |step: Step| {
            let _ = tx2.send(Msg::Step(step));
        };
        let r = run::run(
            &ci, &inner, &caller, request, &container, parallel, &mut sink,
        )
        .await;
        let _ = tx.send(Msg::Done(r));
    });
    rx
}

pub(crate) enum Msg {
    Step(Step),
    Done(Result<run::Outcome, GatewayError>),
}

fn encode_step(enc: &mut rs::StreamEncoder, step: Step, out: &mut Vec<u8>) {
    match step {
        Step::Container(_) => {}
        Step::Turn(t) => enc.push_turn(&t, out),
        Step::Event(ev) => enc.push(&ev, out),
        Step::CodeStart {
            item_id,
            code,
            container_id,
        } => {
            enc.code_call_start(&item_id, &code, &container_id, out);
        }
        Step::CodeDone { item, .. } => enc.code_call_done(item, out),
    }
}
