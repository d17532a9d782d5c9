//! `GET /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=P` over WebSocket.
//!
//! Followed (kubernetes/kubernetes):
//! - `pkg/registry/core/pod/strategy.go` `PortForwardLocation`: an unknown pod is a 404
//!   `pods "<name>" not found`; a pod not yet on a node is a 400 `pod <name> does not have a
//!   host assigned`.
//! - `pkg/kubelet/cri/streaming/portforward/websocket.go`: subprotocol `v4.channel.k8s.io`
//!   (binary channels; kube-rs offers `v5.channel.k8s.io, v4.channel.k8s.io` and the
//!   port-forward handler knows only v4 and the unnamed one); two channels per port, data
//!   `2i` and error `2i+1`; the first frame on each channel is the port as a little-endian
//!   `uint16`; every frame is prefixed with its channel byte; a failed dial is written as text
//!   on the error channel.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Seen, Shared, failure, not_found, query_map};

const PROTOCOL: &str = "v4.channel.k8s.io";

pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    mut req: Request,
) -> Response {
    let path = req.uri().path().to_string();
    let resp = upgrade(&shared, &ns, &name, &mut req);
    shared.lock().seen.push(Seen {
        method: req.method().clone(),
        path,
        query: req.uri().query().unwrap_or_default().to_string(),
        status: resp.status().as_u16(),
    });
    resp
}

fn upgrade(shared: &Arc<Shared>, ns: &str, name: &str, req: &mut Request) -> Response {
    let headers = req.headers().clone();
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.opts.token);
    if !authorized {
        return failure(401, "Unauthorized", "Unauthorized");
    }
    if ns != shared.opts.namespace {
        return failure(
            403,
            "Forbidden",
            &format!(
                "pods \"{name}\" is forbidden: User \"system:serviceaccount:airlock-system:airlock-brain\" \
                 cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"{ns}\""
            ),
        );
    }
    let query = query_map(req.uri());
    let port: u16 = match query.get("ports").map(|p| p.parse::<u16>()) {
        Some(Ok(p)) if p > 0 => p,
        Some(_) => return failure(400, "BadRequest", "invalid port: must be 1-65535"),
        None => return failure(400, "BadRequest", "query parameter \"ports\" is required"),
    };
    let target = {
        let inner = shared.lock();
        let Some(entry) = inner.pods.get(&(ns.to_string(), name.to_string())) else {
            return not_found("pods", name);
        };
        if entry.object["spec"]["nodeName"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            return failure(
                400,
                "BadRequest",
                &format!("pod {name} does not have a host assigned"),
            );
        }
        let uid = entry.object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (uid, entry.ip.clone().filter(|_| entry.agent.is_some()))
    };
    let offered = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return failure(
            400,
            "BadRequest",
            "unable to upgrade connection: no supported websocket subprotocol offered",
        );
    }
    let Some(key) = headers.get("sec-websocket-key") else {
        return failure(
            400,
            "BadRequest",
            "unable to upgrade connection: not a websocket request",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        relay(ws, port, target).await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

async fn relay<S>(ws: WebSocketStream<S>, port: u16, (uid, ip): (String, Option<String>))
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    for ch in [0u8, 1] {
        if sink.send(Message::binary(vec![ch, lo, hi])).await.is_err() {
            return;
        }
    }
    let dialed = match &ip {
        Some(ip) => tokio::net::TcpStream::connect((ip.as_str(), port))
            .await
            .map_err(|e| e.to_string()),
        None => Err("connect: connection refused".to_string()),
    };
    let tcp = match dialed {
        Ok(t) => t,
        Err(e) => {
            let mut msg = vec![1u8];
            msg.extend_from_slice(
                format!(
                    "error forwarding port {port} to pod {uid}, uid : failed to connect to localhost:{port} inside namespace: {e}"
                )
                .as_bytes(),
            );
            let _ = sink.send(Message::binary(msg)).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b)
                    if b.len() > 1 && b[0] == 0 && wr.write_all(&b[1..]).await.is_err() =>
                {
                    break;
                }
                Message::Binary(_) => {}
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(0u8);
                    frame.extend_from_slice(&buf[..n]);
                    if sink.send(Message::binary(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::join!(to_pod, from_pod);
}
