//! A local OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest` (decoded with `opentelemetry-proto`'s prost messages), answered
//! `200` with an empty `ExportTraceServiceResponse`, as the OTLP spec's HTTP transport says
//! (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>): binary protobuf needs
//! `Content-Type: application/x-protobuf`; anything else is `415`, an undecodable body `400`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of its resource.
    pub service: String,
    pub name: String,
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Every attribute, rendered as text (arrays and maps as their debug form).
    pub attributes: BTreeMap<String, String>,
    /// Every string anywhere in the span and its resource (attribute values, event
    /// names and attributes, status message), for "no secret anywhere" checks.
    pub all_text: Vec<String>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    requests: usize,
}

/// A running receiver; serves until the runtime stops.
#[derive(Clone)]
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT` (the base URL: traces go to `/v1/traces`).
    pub endpoint: String,
    received: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Received>> = Arc::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint: format!("http://{addr}"),
            received,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> usize {
        self.received.lock().unwrap().requests
    }
}

async fn export(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    if !protobuf {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new()).into_response();
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
    };
    let mut flat = Vec::new();
    for rs in request.resource_spans {
        let resource_attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
        let service = resource_attrs
            .iter()
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        let mut resource_text = Vec::new();
        collect(&resource_attrs, &mut resource_text);
        for ss in rs.scope_spans {
            for span in ss.spans {
                let mut all_text = resource_text.clone();
                collect(&span.attributes, &mut all_text);
                all_text.push(span.name.clone());
                for ev in &span.events {
                    all_text.push(ev.name.clone());
                    collect(&ev.attributes, &mut all_text);
                }
                for link in &span.links {
                    collect(&link.attributes, &mut all_text);
                }
                if let Some(status) = &span.status {
                    all_text.push(status.message.clone());
                }
                flat.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                    all_text,
                });
            }
        }
    }
    {
        let mut r = received.lock().unwrap();
        r.requests += 1;
        r.spans.extend(flat);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

fn collect(attrs: &[KeyValue], out: &mut Vec<String>) {
    for kv in attrs {
        out.push(kv.key.clone());
        out.push(text(kv.value.as_ref()));
    }
}
