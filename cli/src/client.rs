//! HTTP client for the controller's JSON API and event feed.

use anyhow::{Context, anyhow};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// A client for one controller.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--controller {base:?}: must start with http:// or https://");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        // The innermost cause says what went wrong ("Connection refused").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let why = if e.is_timeout() {
            "timed out".to_owned()
        } else {
            cause.to_string()
        };
        anyhow!(
            "cannot reach the controller at {} ({why}); is vigil-controller running? Point at it with --controller or VIGIL_API",
            self.base
        )
    }

    /// GETs a JSON document from `path` (e.g. `/api/v1/nodes`).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(body);
            anyhow::bail!("controller answered {status}: {msg}");
        }
        serde_json::from_str(&body)
            .with_context(|| format!("controller sent invalid JSON for {path}"))
    }

    /// POSTs a JSON document and returns the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            anyhow::bail!("controller answered {status}: {msg}");
        }
        Ok(v)
    }

    /// Follows the event feed from `after`, calling `on_event(id, kind, data)`
    /// for each event. Reconnects after a disconnect, resuming after the last
    /// event seen (so nothing is missed or repeated). Returns when `on_event`
    /// returns false.
    pub async fn watch(
        &self,
        mut after: u64,
        mut on_event: impl FnMut(u64, &str, &str) -> bool,
    ) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(250);
        let mut ever_connected = false;
        loop {
            let url = format!("{}/api/v1/events", self.base);
            let resp = self
                .http
                .get(&url)
                .header("Last-Event-ID", after.to_string())
                .header("Accept", "text/event-stream")
                .send()
                .await;
            let resp = match resp {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => anyhow::bail!("controller answered {} for the event feed", r.status()),
                Err(e) => {
                    if !ever_connected {
                        return Err(self.unreachable(e));
                    }
                    eprintln!(
                        "vigil: feed disconnected ({e}); retrying in {} ms",
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            ever_connected = true;
            delay = Duration::from_millis(250);
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            let (mut id, mut kind, mut data) = (None::<u64>, String::new(), String::new());
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if !data.is_empty() {
                            if let Some(i) = id {
                                after = after.max(i);
                            }
                            if !on_event(id.unwrap_or(0), &kind, &data) {
                                return Ok(());
                            }
                        }
                        id = None;
                        kind.clear();
                        data.clear();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
            }
            eprintln!("vigil: feed disconnected; resuming after event {after}");
            tokio::time::sleep(delay).await;
        }
    }
}
