//! Bedrock runtime fake: Converse and ConverseStream
//! (docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html,
//! API_runtime_ConverseStream.html). Every request's SigV4 signature is
//! recomputed with the real secret from the raw path, the signed headers as
//! received and the body's SHA-256 (docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html);
//! an unknown key answers 403 `UnrecognizedClientException`, a wrong signature 403
//! `InvalidSignatureException`, both `{"message": …}` with `x-amzn-ErrorType`, as AWS does.
//! Streams answer `application/vnd.amazon.eventstream` frames (messageStart,
//! contentBlockStart/Delta/Stop, messageStop, metadata), payloads padded with `p` as AWS pads them.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use gateway::formats::bedrock::Frame;
use gateway::providers::sigv4;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

pub struct BedrockState {
    pub key_id: String,
    pub secret: String,
    pub region: String,
    /// (raw path, body) of each verified request.
    pub seen: Mutex<Vec<(String, Value)>>,
    pub rejected: Mutex<Vec<String>>,
}

pub async fn start(key_id: &str, secret: &str, region: &str) -> (String, Arc<BedrockState>) {
    let st = Arc::new(BedrockState {
        key_id: key_id.into(),
        secret: secret.into(),
        region: region.into(),
        seen: Mutex::new(Vec::new()),
        rejected: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .fallback(axum::routing::post(handle))
        .with_state(st.clone());
    (format!("http://{}", super::serve(app).await), st)
}

fn aws_err(status: StatusCode, ty: &str, msg: &str) -> Response {
    (
        status,
        [("x-amzn-errortype", ty.to_owned())],
        axum::Json(json!({"message": msg})),
    )
        .into_response()
}

#[allow(clippy::result_large_err)] // test fake: the error is the response to send
fn verify(st: &BedrockState, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let field = |name: &str| {
        auth.split([',', ' '])
            .find_map(|p| p.trim().strip_prefix(name))
            .unwrap_or("")
            .to_owned()
    };
    let cred = field("Credential=");
    let signed = field("SignedHeaders=");
    let sig = field("Signature=");
    let parts: Vec<&str> = cred.split('/').collect();
    if !auth.starts_with("AWS4-HMAC-SHA256 ") || parts.len() != 5 {
        return Err(aws_err(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    }
    if parts[0] != st.key_id {
        return Err(aws_err(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut hs = Vec::new();
    for name in signed.split(';') {
        let v = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        hs.push((name.to_owned(), v.to_owned()));
    }
    if !signed.split(';').any(|h| h == "host")
        || parts[2] != st.region
        || parts[3] != "bedrock"
        || !amz_date.starts_with(parts[1])
    {
        return Err(aws_err(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            "Credential should be scoped to a valid region and service.",
        ));
    }
    let expect = sigv4::authorization(
        &sigv4::Request {
            method: "POST",
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &hs,
            payload_sha256: &sigv4::sha256_hex(body),
        },
        &sigv4::Scope {
            access_key_id: &st.key_id,
            secret: &st.secret,
            region: &st.region,
            service: "bedrock",
            amz_date,
        },
    );
    if !expect.ends_with(&format!("Signature={sig}")) {
        st.rejected.lock().unwrap().push(uri.path().to_owned());
        return Err(aws_err(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}

fn wants_tool(body: &Value) -> Option<String> {
    let name = body
        .pointer("/toolConfig/tools/0/toolSpec/name")?
        .as_str()?
        .to_owned();
    let last = body["messages"].as_array()?.last()?;
    let answered = last["content"]
        .as_array()?
        .iter()
        .any(|b| b.get("toolResult").is_some());
    (!answered).then_some(name)
}

fn frame(event: &str, mut payload: Value) -> Vec<u8> {
    payload["p"] = "abcdefghijkl".into();
    Frame {
        headers: vec![
            (":event-type".into(), event.into()),
            (":content-type".into(), "application/json".into()),
            (":message-type".into(), "event".into()),
        ],
        payload: payload.to_string().into_bytes(),
    }
    .encode()
}

async fn handle(
    State(st): State<Arc<BedrockState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = verify(&st, &uri, &headers, &body) {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return aws_err(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "Unexpected JSON",
        );
    };
    let path = uri.path().to_owned();
    let Some(rest) = path.strip_prefix("/model/") else {
        return aws_err(StatusCode::NOT_FOUND, "UnknownOperationException", "");
    };
    let Some((_model, action)) = rest.rsplit_once('/') else {
        return aws_err(StatusCode::NOT_FOUND, "UnknownOperationException", "");
    };
    if v.get("messages")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        return aws_err(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "A conversation must start with a user message.",
        );
    }
    st.seen.lock().unwrap().push((path.clone(), v.clone()));
    let tool = wants_tool(&v);
    let usage = json!({"inputTokens": 15, "outputTokens": 8, "totalTokens": 23});
    match action {
        "converse" => {
            let (content, stop) = match &tool {
                Some(n) => (
                    json!([{"text": "Let me check."}, {"toolUse": {"toolUseId": "tooluse_abc123", "name": n, "input": {"command": "ls -la"}}}]),
                    "tool_use",
                ),
                None => (json!([{"text": "Hello from bedrock"}]), "end_turn"),
            };
            axum::Json(
                json!({"output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 120}}),
            )
            .into_response()
        }
        "converse-stream" => {
            let mut out = frame("messageStart", json!({"role": "assistant"}));
            let stop = match &tool {
                Some(n) => {
                    out.extend(frame("contentBlockStart", json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_abc123", "name": n}}})));
                    for piece in ["{\"command\":", "\"ls -la\"}"] {
                        out.extend(frame(
                            "contentBlockDelta",
                            json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}),
                        ));
                    }
                    out.extend(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
                    "tool_use"
                }
                None => {
                    for piece in ["Hello", " from bedrock"] {
                        out.extend(frame(
                            "contentBlockDelta",
                            json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
                        ));
                    }
                    out.extend(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
                    "end_turn"
                }
            };
            out.extend(frame("messageStop", json!({"stopReason": stop})));
            out.extend(frame(
                "metadata",
                json!({"usage": usage, "metrics": {"latencyMs": 130}}),
            ));
            // Deliver in small pieces so frames straddle chunk boundaries.
            let chunks: Vec<Result<Bytes, std::io::Error>> = out
                .chunks(37)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Response::builder()
                .header("content-type", "application/vnd.amazon.eventstream")
                .body(axum::body::Body::from_stream(futures_util::stream::iter(
                    chunks,
                )))
                .unwrap()
        }
        _ => aws_err(StatusCode::NOT_FOUND, "UnknownOperationException", ""),
    }
}
