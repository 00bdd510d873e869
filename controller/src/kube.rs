//! The Kubernetes back-end (cargo feature `kubernetes`): plain calls to the
//! API server with the pod's service account, no client library.
//!
//! - cordon and taint: read the node, then one merge patch that sets
//!   `spec.unschedulable` and Vigil's own taint and keeps every other taint,
//!   guarded by the node's `resourceVersion` (retried once on a conflict);
//! - delete pods: one `deletecollection` on the job's label selector,
//!   narrowed to a node when the request names one.
//!
//! The RBAC this needs is in `deploy/kubernetes/rbac.yaml`.

use crate::actions::{KubeConfig, Step};
use serde_json::{Value, json};
use std::time::Duration;

fn client(k: &KubeConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(k.timeout_s))
        .connect_timeout(Duration::from_secs(5));
    if k.api.starts_with("https://") && !k.ca_file.is_empty() {
        let pem =
            std::fs::read(&k.ca_file).map_err(|e| format!("cannot read {}: {e}", k.ca_file))?;
        let cert =
            reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", k.ca_file))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

fn token(k: &KubeConfig) -> Result<Option<String>, String> {
    if k.token_file.is_empty() {
        return Ok(None);
    }
    std::fs::read_to_string(&k.token_file)
        .map(|t| Some(t.trim().to_owned()))
        .map_err(|e| format!("cannot read the token {}: {e}", k.token_file))
}

async fn send(rb: reqwest::RequestBuilder, what: &str) -> Result<(u16, Value), String> {
    let resp = rb.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("{what}: {e}"))?;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, v))
}

fn api_error(what: &str, status: u16, v: &Value) -> String {
    let msg = v
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string());
    format!("{what}: HTTP {status}: {msg}")
}

/// Carries out one Kubernetes step.
pub async fn run(k: &KubeConfig, step: &Step) -> Result<String, String> {
    let http = client(k)?;
    let auth = |rb: reqwest::RequestBuilder| -> Result<reqwest::RequestBuilder, String> {
        Ok(match token(k)? {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        })
    };
    let api = k.api.trim_end_matches('/');
    match step {
        Step::KubeNode {
            node,
            cordon,
            taint,
        } => {
            let url = format!("{api}/api/v1/nodes/{node}");
            for attempt in 0..2 {
                let (status, cur) = send(auth(http.get(&url))?, "get node").await?;
                if status != 200 {
                    return Err(api_error(&format!("get node {node}"), status, &cur));
                }
                let mut taints: Vec<Value> = cur["spec"]["taints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t["key"].as_str() != Some(k.taint_key.as_str()))
                    .collect();
                if let Some(v) = taint {
                    taints.push(json!({ "key": k.taint_key, "value": v, "effect": "NoSchedule" }));
                }
                let patch = json!({
                    "metadata": { "resourceVersion": cur["metadata"]["resourceVersion"] },
                    "spec": { "unschedulable": cordon, "taints": taints },
                });
                let rb = auth(http.patch(&url))?
                    .header("content-type", "application/merge-patch+json")
                    .body(patch.to_string());
                let (status, v) = send(rb, "patch node").await?;
                match status {
                    200 => {
                        return Ok(format!(
                            "node {node}: {}",
                            if *cordon {
                                "cordoned and tainted"
                            } else {
                                "uncordoned and untainted"
                            }
                        ));
                    }
                    409 if attempt == 0 => continue,
                    _ => return Err(api_error(&format!("patch node {node}"), status, &v)),
                }
            }
            Err(format!("patch node {node}: conflicting updates"))
        }
        Step::KubeDeletePods {
            namespace,
            selector,
            node,
        } => {
            let url = format!("{api}/api/v1/namespaces/{namespace}/pods");
            let mut q = vec![("labelSelector", selector.clone())];
            if let Some(n) = node {
                q.push(("fieldSelector", format!("spec.nodeName={n}")));
            }
            let (status, v) = send(auth(http.delete(&url))?.query(&q), "delete pods").await?;
            if status != 200 {
                return Err(api_error("delete pods", status, &v));
            }
            let n = v["items"].as_array().map_or(0, Vec::len);
            Ok(format!("deleted {n} pod(s) matching {selector}"))
        }
        other => Err(format!("not a Kubernetes step: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::{Path, RawQuery, State};
    use axum::http::HeaderMap;
    use axum::routing::get;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<String>>>;

    /// A stand-in API server on loopback: one node with a foreign taint.
    async fn fake_api() -> (String, Log) {
        let log: Log = Arc::default();
        let app = Router::new()
            .route(
                "/api/v1/nodes/{node}",
                get(|Path(n): Path<String>, State(l): State<Log>| async move {
                    l.lock().map(|mut l| l.push(format!("GET {n}"))).ok();
                    axum::Json(json!({
                        "metadata": { "name": n, "resourceVersion": "41" },
                        "spec": { "taints": [{ "key": "gpu.vendor/maint", "effect": "NoSchedule" }] }
                    }))
                })
                .patch(
                    |Path(n): Path<String>, State(l): State<Log>, h: HeaderMap, body: String| async move {
                        let ct = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
                        let auth = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                        l.lock().map(|mut l| l.push(format!("PATCH {n} {ct} {auth} {body}"))).ok();
                        axum::Json(json!({ "metadata": { "name": n } }))
                    },
                ),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods",
                axum::routing::delete(
                    |Path(ns): Path<String>, RawQuery(q): RawQuery, State(l): State<Log>| async move {
                        l.lock().map(|mut l| l.push(format!("DELETE {ns} {}", q.unwrap_or_default()))).ok();
                        axum::Json(json!({ "kind": "PodList", "items": [{}, {}] }))
                    },
                ),
            )
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), log)
    }

    #[tokio::test]
    async fn cordon_taint_and_pod_deletion_reach_the_api() {
        let (api, log) = fake_api().await;
        let dir = std::env::temp_dir().join(format!("vigil-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").expect("write");
        let k: KubeConfig = toml::from_str(&format!(
            "api = \"{api}\"\ntoken_file = \"{}\"\nca_file = \"\"\nnamespace = \"train\"\n",
            token.display()
        ))
        .expect("config");
        let r = run(
            &k,
            &Step::KubeNode {
                node: "n2".into(),
                cordon: true,
                taint: Some("inc-7".into()),
            },
        )
        .await;
        assert_eq!(r.as_deref(), Ok("node n2: cordoned and tainted"));
        let r = run(
            &k,
            &Step::KubeDeletePods {
                namespace: "train".into(),
                selector: "vigil.dev/job=pretrain".into(),
                node: Some("n2".into()),
            },
        )
        .await;
        assert_eq!(
            r.as_deref(),
            Ok("deleted 2 pod(s) matching vigil.dev/job=pretrain")
        );
        let log = log.lock().expect("log").clone();
        assert_eq!(log[0], "GET n2");
        assert!(
            log[1].starts_with("PATCH n2 application/merge-patch+json Bearer s3cret "),
            "{}",
            log[1]
        );
        let body: Value =
            serde_json::from_str(log[1].splitn(6, ' ').nth(5).unwrap_or("")).expect("json");
        assert_eq!(body["spec"]["unschedulable"], true);
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        let taints = body["spec"]["taints"].as_array().expect("taints");
        assert_eq!(taints.len(), 2, "the foreign taint is kept: {taints:?}");
        assert_eq!(taints[1]["key"], "vigil.dev/quarantined");
        assert_eq!(
            log[2],
            "DELETE train labelSelector=vigil.dev%2Fjob%3Dpretrain&fieldSelector=spec.nodeName%3Dn2"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
