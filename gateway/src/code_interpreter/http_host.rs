//! The standalone gateway's sandboxes: a brain's HTTP API (DESIGN.md, "Contract:
//! brain HTTP API": `POST /v1/sandboxes`, `POST /v1/sandboxes/{id}/exec`,
//! `DELETE /v1/sandboxes/{id}`), authenticated with the key in
//! `code_interpreter.key_env`. An HTTP dependency only: no brain code here.

use super::{ExecOutput, HostError, SandboxHost, SandboxRequest};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub struct BrainHttp {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl BrainHttp {
    pub fn new(brain_url: &str, key: String, client: reqwest::Client) -> Self {
        Self {
            base: brain_url.trim_end_matches('/').to_owned(),
            key,
            client,
        }
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, HostError> {
        let resp = rb
            .bearer_auth(&self.key)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| HostError::Unavailable(format!("brain at {}: {e}", self.base)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let body = &body[..body.len().min(500)];
        Err(match status.as_u16() {
            404 | 409 => HostError::Gone(body.to_owned()),
            _ => HostError::Unavailable(format!("brain answered {status}: {body}")),
        })
    }
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Exec {
    exit_code: Option<i32>,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    timed_out: bool,
}

#[async_trait]
impl SandboxHost for BrainHttp {
    async fn create(&self, req: &SandboxRequest) -> Result<String, HostError> {
        let mut body = json!({
            "task_description": req.description,
            "ttl_s": req.ttl.as_secs().max(1),
        });
        if !req.credentials.is_empty() {
            body["credentials"] = json!(req.credentials);
        }
        let rb = self
            .client
            .post(format!("{}/v1/sandboxes", self.base))
            .json(&body);
        let resp = self.send(rb, Duration::from_secs(300)).await?;
        let c: Created = resp
            .json()
            .await
            .map_err(|e| HostError::Unavailable(format!("brain sandbox answer: {e}")))?;
        Ok(c.id)
    }

    async fn exec(
        &self,
        sandbox_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, HostError> {
        let rb = self
            .client
            .post(format!("{}/v1/sandboxes/{sandbox_id}/exec", self.base))
            .json(&json!({"command": command, "timeout_s": timeout.as_secs().max(1)}));
        let resp = self.send(rb, timeout + Duration::from_secs(30)).await?;
        let e: Exec = resp
            .json()
            .await
            .map_err(|e| HostError::Unavailable(format!("brain exec answer: {e}")))?;
        Ok(ExecOutput {
            exit_code: e.exit_code,
            stdout: e.stdout,
            stderr: e.stderr,
            timed_out: e.timed_out,
        })
    }

    async fn destroy(&self, sandbox_id: &str) -> Result<(), HostError> {
        let rb = self
            .client
            .delete(format!("{}/v1/sandboxes/{sandbox_id}", self.base));
        match self.send(rb, Duration::from_secs(120)).await {
            Ok(_) | Err(HostError::Gone(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
