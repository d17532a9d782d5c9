//! Inbound HTTP routes: one module per wire format, plus key management.

pub mod anthropic;
pub mod code_execution;
pub mod code_interpreter;
pub mod endpoints;
pub mod health;
pub mod keys;
pub mod openai;
pub mod responses;

use crate::Inner;
use crate::error::{GatewayError, WireFormat};
use crate::keys::Caller;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use http::HeaderMap;
use std::convert::Infallible;
use std::sync::Arc;

/// Large enough for long contexts with images.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub(crate) type State = Arc<Inner>;

/// `/metrics` is the standalone binary's; an embedding app serves
/// [`crate::Gateway::metrics_text`] in its own.
pub(crate) fn metrics_routes<S: Clone + Send + Sync + 'static>(inner: State) -> Router<S> {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/metrics/", get(health::metrics))
        .with_state(inner)
}

pub(crate) fn routes<S: Clone + Send + Sync + 'static>(inner: State) -> Router<S> {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/messages", post(anthropic::messages))
        .route("/v1/responses", post(responses::create))
        .route("/responses", post(responses::create))
        .route(
            "/v1/containers",
            post(code_interpreter::create_container).get(code_interpreter::list_containers),
        )
        .route(
            "/v1/containers/{id}",
            get(code_interpreter::show_container).delete(code_interpreter::delete_container),
        )
        .route("/v1/embeddings", post(endpoints::embeddings))
        .route("/embeddings", post(endpoints::embeddings))
        .route("/v1/completions", post(endpoints::completions))
        .route("/completions", post(endpoints::completions))
        .route("/v1/messages/count_tokens", post(endpoints::count_tokens))
        .route("/messages/count_tokens", post(endpoints::count_tokens))
        .route("/v1/models", get(openai::models))
        .route("/models", get(openai::models))
        .route("/health", get(health::models))
        .route("/health/liveliness", get(health::liveliness))
        .route("/health/liveness", get(health::liveliness))
        .route("/health/readiness", get(health::readiness))
        .route("/model/info", get(openai::model_info))
        .route("/v1/model/info", get(openai::model_info))
        .route("/key/generate", post(keys::generate))
        .route("/key/info", get(keys::info))
        .route("/key/update", post(keys::update))
        .route("/key/delete", post(keys::delete))
        .route("/spend/logs", get(keys::spend_logs))
        .layer(axum::middleware::from_fn(trace_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(inner)
}

/// The standalone server's service: `POST` to the two routes every model call takes goes
/// straight to its handler; everything else (and any other method on those paths) goes
/// through the [`Router`].
///
/// Why: the Router's per-request path (route lookup, the boxed route service, the
/// `from_fn` layer's boxed `Next`, response mapping) cost ~7k instructions a request under
/// callgrind, ~6 % of the gateway's whole cost per proxied call. The handlers, the
/// `gateway.request` span and the body limit ([`body_bytes`]) are the same either way, so
/// the answer is the same; `routes()` (what an embedding app merges) is unchanged.
#[derive(Clone)]
pub(crate) struct HotRoutes {
    inner: State,
    router: Router,
}

impl HotRoutes {
    pub(crate) fn new(inner: State, router: Router) -> Self {
        Self { inner, router }
    }
}

#[derive(Clone, Copy)]
enum Hot {
    Chat(&'static str),
    Messages(&'static str),
}

impl Hot {
    fn of(req: &axum::extract::Request) -> Option<Hot> {
        if req.method() != http::Method::POST {
            return None;
        }
        match req.uri().path() {
            "/v1/chat/completions" => Some(Hot::Chat("/v1/chat/completions")),
            "/chat/completions" => Some(Hot::Chat("/chat/completions")),
            "/v1/messages" => Some(Hot::Messages("/v1/messages")),
            "/messages" => Some(Hot::Messages("/messages")),
            _ => None,
        }
    }
}

type HotFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<axum::response::Response, Infallible>> + Send>,
>;

impl tower_service::Service<axum::extract::Request> for HotRoutes {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        HotFuture,
        <Router as tower_service::Service<axum::extract::Request>>::Future,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use futures_util::future::Either;
        let Some(hot) = Hot::of(&req) else {
            return Either::Right(self.router.call(req));
        };
        let inner = self.inner.clone();
        let in_flight = crate::spin::note_request();
        Either::Left(Box::pin(async move {
            let answer = serve_hot(inner, hot, req).await;
            drop(in_flight);
            Ok(answer)
        }))
    }
}

/// One hot request, with the same `gateway.request` span as [`trace_request`] gives the
/// Router's routes (the route attribute is the matched path, as `MatchedPath` would say).
async fn serve_hot(
    inner: State,
    hot: Hot,
    req: axum::extract::Request,
) -> axum::response::Response {
    let route = match hot {
        Hot::Chat(r) | Hot::Messages(r) => r,
    };
    traced(
        req,
        |_| airlock_telemetry::AttrValue::Static(route),
        |req| async move {
            match hot {
                Hot::Chat(_) => openai::chat_completions(axum::extract::State(inner), req).await,
                Hot::Messages(_) => anthropic::messages(axum::extract::State(inner), req).await,
            }
        },
    )
    .await
}

/// With tracing on, a `gateway.request` span per request, joined to the caller's trace when the
/// request carries a W3C `traceparent` header (the brain's, or any instrumented client's). It is
/// a [`airlock_telemetry::HotSpan`] (a compact record, not a `tracing` span entered on every
/// poll nor an SDK span); JSON log lines written while serving the request carry its trace id.
/// Off: one relaxed load.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use airlock_telemetry::AttrValue;
    traced(
        req,
        |req| {
            req.extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or(AttrValue::Static(""), |p| AttrValue::text(p.as_str()))
        },
        |req| next.run(req),
    )
    .await
}

/// `run(req)` inside a `gateway.request` span (when tracing is on) with the method, the
/// `route` named for the request, and the response's status.
async fn traced<Run, Fut>(
    req: axum::extract::Request,
    route: impl FnOnce(&axum::extract::Request) -> airlock_telemetry::AttrValue,
    run: Run,
) -> axum::response::Response
where
    Run: FnOnce(axum::extract::Request) -> Fut,
    Fut: std::future::Future<Output = axum::response::Response>,
{
    let span = airlock_telemetry::HotSpan::start(
        "gateway.request",
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let Some(mut span) = span else {
        return run(req).await;
    };
    span.set("http.request.method", method_attribute(req.method()));
    span.set("http.route", route(&req));
    let response = span.scope(run(req)).await;
    span.set(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    response
}

/// `http.request.method`: a static string for the standard methods (no copy).
fn method_attribute(m: &http::Method) -> airlock_telemetry::AttrValue {
    use airlock_telemetry::AttrValue;
    match *m {
        http::Method::GET => AttrValue::Static("GET"),
        http::Method::POST => AttrValue::Static("POST"),
        _ => AttrValue::text(m.as_str()),
    }
}

/// The key a client presented: `Authorization: Bearer`, else `x-api-key`, else `api-key`.
pub(crate) fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let k = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim();
        if !k.is_empty() {
            return Some(k);
        }
    }
    h.get("x-api-key")
        .or_else(|| h.get("api-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Who is calling (cached key check; only a never-seen key waits for the database).
pub(crate) async fn authenticate(inner: &Inner, h: &HeaderMap) -> Result<Caller, GatewayError> {
    inner.keys.authenticate(presented_key(h)).await
}

/// Read a request body (limit enforced by the layer) or answer in `format`.
pub(crate) async fn body_bytes(
    body: axum::body::Body,
    format: WireFormat,
) -> Result<bytes::Bytes, axum::response::Response> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            GatewayError::BadRequest(format!("cannot read body: {e}")).into_response_for(format)
        })
}

#[cfg(test)]
mod hot_route_tests {
    use super::*;
    use crate::{Config, Gateway, Store};
    use tower_service::Service;

    async fn gateway() -> Gateway {
        let yaml = "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://127.0.0.1:9/v1\n      api_key: sk-test\ngeneral_settings:\n  master_key: sk-master\n";
        let cfg = Config::from_yaml_str(yaml, std::path::Path::new(".")).unwrap();
        Gateway::from_config(cfg, Store::connect("memory").await.unwrap())
            .await
            .unwrap()
    }

    fn request(method: http::Method, path: &str, body: &'static str) -> axum::extract::Request {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    async fn answer(
        svc: &mut (
                 impl Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
        > + Send
             ),
        req: axum::extract::Request,
    ) -> (http::StatusCode, String) {
        let r = svc.call(req).await.unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Every hot path and method gives what the Router gives for the same request: the same
    /// handlers answer POSTs (here: 401 in each route's own error format), and other methods
    /// and paths fall through to the Router (405, 404, the health route).
    #[tokio::test]
    async fn hot_routes_answer_as_the_router_does() {
        let gw = gateway().await;
        let mut hot = HotRoutes::new(gw.inner.clone(), gw.router());
        let mut router = gw.router();
        let body = r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
        let cases = [
            (http::Method::POST, "/v1/chat/completions", 401),
            (http::Method::POST, "/chat/completions", 401),
            (http::Method::POST, "/v1/messages", 401),
            (http::Method::POST, "/messages", 401),
            (http::Method::GET, "/v1/chat/completions", 405),
            (http::Method::GET, "/v1/messages", 405),
            (http::Method::POST, "/v1/messages/extra", 404),
            (http::Method::GET, "/health/liveliness", 200),
        ];
        for (method, path, want) in cases {
            let via_hot = answer(&mut hot, request(method.clone(), path, body)).await;
            let via_router = answer(&mut router, request(method.clone(), path, body)).await;
            assert_eq!(via_hot.0.as_u16(), want, "{method} {path}: {via_hot:?}");
            assert_eq!(via_hot, via_router, "{method} {path}");
        }
        // Each format's own error shape: OpenAI's `error.message`, Anthropic's `type: error`.
        let (_, chat) = answer(
            &mut hot,
            request(http::Method::POST, "/v1/chat/completions", body),
        )
        .await;
        let (_, messages) =
            answer(&mut hot, request(http::Method::POST, "/v1/messages", body)).await;
        assert!(chat.contains("\"error\""), "{chat}");
        assert!(messages.contains("\"type\":\"error\""), "{messages}");
    }
}
