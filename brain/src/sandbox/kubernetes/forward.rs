//! Port-forward: how a brain outside the cluster reaches an agent whose pod IP it cannot route.
//!
//! One loopback listener per pod (`127.0.0.1:<ephemeral>`); each TCP connection accepted there
//! becomes one `pods/<name>/portforward` WebSocket through the API server (kube's
//! `Api::portforward`, `v4.channel.k8s.io`) to the agent port, and bytes are copied both
//! ways. The agent client then talks to `http://127.0.0.1:<port>` as it would to the pod IP
//! (its keep-alive pool reuses a forwarded connection). Another local process could connect
//! to the listener too, but the agent still requires its bearer token.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::super::BackendError;

struct Forward {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The listeners of one backend, by pod name.
pub struct Forwarders {
    pods: Api<Pod>,
    port: u16,
    by_pod: Mutex<HashMap<String, Forward>>,
}

impl Forwarders {
    pub fn new(pods: Api<Pod>, port: u16) -> Self {
        Self {
            pods,
            port,
            by_pod: Mutex::new(HashMap::new()),
        }
    }

    /// The local URL reaching `pod`'s agent, starting its listener on first use (also after a
    /// brain restart: the handle's stored URL named a listener of the previous process).
    pub fn url_for(&self, pod: &str) -> Result<String, BackendError> {
        let mut map = self.by_pod.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(pod)
            && !f.task.is_finished()
        {
            return Ok(f.url.clone());
        }
        let unavailable =
            |e: std::io::Error| BackendError::Unavailable(format!("port-forward listener: {e}"));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(unavailable)?;
        std_listener.set_nonblocking(true).map_err(unavailable)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(unavailable)?;
        let url = format!("http://{}", listener.local_addr().map_err(unavailable)?);
        let task = tokio::spawn(serve(
            listener,
            self.pods.clone(),
            pod.to_string(),
            self.port,
        ));
        map.insert(
            pod.to_string(),
            Forward {
                url: url.clone(),
                task,
            },
        );
        Ok(url)
    }

    /// Stops `pod`'s listener (destroy).
    pub fn remove(&self, pod: &str) {
        self.by_pod
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod);
    }
}

async fn serve(listener: tokio::net::TcpListener, pods: Api<Pod>, pod: String, port: u16) {
    loop {
        let mut local = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors or similar: do not spin.
                tracing::debug!(error = %e, "port-forward accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let pods = pods.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            let mut forwarder = match pods.portforward(&pod, &[port]).await {
                Ok(f) => f,
                Err(e) => {
                    // Dropping `local` resets the client's connection: the agent client sees
                    // a transport error and the backend checks whether the pod is gone.
                    tracing::debug!(pod = %pod, error = %e, "port-forward refused");
                    return;
                }
            };
            let Some(mut upstream) = forwarder.take_stream(port) else {
                return;
            };
            let errors = forwarder.take_error(port);
            if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut upstream).await {
                tracing::debug!(pod = %pod, error = %e, "port-forward stream ended");
            }
            drop(upstream);
            if let Some(errors) = errors
                && let Ok(Some(message)) =
                    tokio::time::timeout(std::time::Duration::from_millis(50), errors).await
            {
                tracing::debug!(pod = %pod, message = %message, "port-forward error channel");
            }
            forwarder.abort();
        });
    }
}
