//! A fast local mock of the OpenAI and Anthropic APIs for the benchmark
//! (bench/gateway/run.sh): fixed, realistic response bodies, keep-alive.
//!
//! `cargo run --release -p gateway --example mock_upstream -- 127.0.0.1:9100`

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use std::io::Write;

const OPENAI: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21},"system_fingerprint":"fp_bench"}"#;
const ANTHROPIC: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[{"type":"text","text":"Hello! How can I help you today?"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":9}}"#;

async fn openai(_body: Bytes) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAI)
}

async fn anthropic(_body: Bytes) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], ANTHROPIC)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    let app = Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic));
    let l = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", l.local_addr()?);
    std::io::stdout().flush()?;
    use axum::serve::ListenerExt;
    let l = l.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(l, app).await?;
    Ok(())
}
