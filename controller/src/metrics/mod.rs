//! `/metrics`: Prometheus text exposition (OpenMetrics 1.0) of cluster
//! state and controller internals.
//!
//! Every scrape takes a [`ClusterSnapshot`] in one step of the state task
//! ([`StateHandle::query`]): owned numbers and names, cheap to copy. The
//! registry is built and encoded from it outside the state task, in the
//! HTTP handler, so a large scrape does not hold the task up, and no metric
//! can drift from what the JSON API shows. Counters that are derived from
//! state (incidents by kind, phase durations) are recomputed from the
//! incidents the controller keeps, which survive a restart through the
//! store, so they only grow.
//!
//! Names follow the Prometheus conventions with a `vigil_` prefix. Where a
//! reading also exists in NVIDIA's dcgm-exporter, docs/api.md names the
//! `DCGM_FI_*` field it corresponds to.
//!
//! - `snapshot.rs`: [`ClusterSnapshot::take`], inside the state task.
//! - `cluster.rs`: cards, nodes, jobs, incidents and safety from a snapshot.
//! - `ledger.rs`: the ledger's families. `controller.rs`: the controller's own.
//! - `family.rs`: registering and filling families. `text.rs`: the formats.

mod cluster;
mod controller;
mod family;
mod ledger;
mod snapshot;
mod text;

pub use ledger::ledger_metrics;
pub use snapshot::{CardSnapshot, ClusterSnapshot, IncidentSnapshot, JobSnapshot, NodeSnapshot};

use crate::state::StateHandle;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text answer.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why `/metrics` has no answer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("controller is shutting down")]
    Unavailable,
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Renders `/metrics` as OpenMetrics text when `openmetrics` is true
/// (Prometheus asks for it), else in the classic Prometheus text format
/// (version 0.0.4) that older tools and `promtool check metrics` read.
pub async fn render(state: &StateHandle, openmetrics: bool) -> Result<String, MetricsError> {
    let now = crate::now_ms();
    let snap = state
        .query(move |c| ClusterSnapshot::take(c, now))
        .await
        .ok_or(MetricsError::Unavailable)?;
    let mut reg = Registry::default();
    cluster::register(&snap, &mut reg);
    controller::register(state, &mut reg);
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(if openmetrics {
        text::tidy(&out)
    } else {
        text::classic(&out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(s: &ClusterSnapshot) -> String {
        let mut reg = Registry::default();
        cluster::register(s, &mut reg);
        let mut out = String::new();
        encode(&mut out, &reg).expect("encode");
        out
    }

    #[test]
    fn an_empty_cluster_still_exposes_every_family() {
        let c = vigil_core::cluster::Cluster::new(vigil_core::cluster::ClusterConfig::default());
        let out = encoded(&ClusterSnapshot::take(&c, 0));
        assert!(out.contains("# TYPE vigil_incidents counter"), "{out}");
        assert!(
            out.contains(r#"vigil_incidents_total{kind="card_fault"} 0.0"#),
            "{out}"
        );
        assert!(out.contains("vigil_circuit_breaker_open{} 0.0"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
        let c = text::classic(&out);
        assert!(c.contains("# TYPE vigil_incidents_total counter\n"), "{c}");
        assert!(c.contains("\nvigil_circuit_breaker_open 0.0\n"), "{c}");
        assert!(!c.contains("# EOF"), "{c}");
    }

    #[test]
    fn a_snapshot_renders_cards_nodes_jobs_and_incidents() {
        let s = ClusterSnapshot {
            nodes: vec![NodeSnapshot {
                id: "n1".into(),
                liveness: "alive",
                connected: true,
                heartbeats: 7,
                last_seen_ms: 1500,
                cpu_percent: Some(25.0),
                cards: vec![CardSnapshot {
                    index: 3,
                    model: "H100".into(),
                    health: "failed",
                    memory_total_bytes: 1024,
                    sample: Some(vigil_core::model::CardSample {
                        index: 3,
                        temperature_c: 61.5,
                        ecc_dbe_volatile: 2,
                        probe_latency_us: 1500,
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            }],
            jobs: vec![JobSnapshot {
                id: "pretrain".into(),
                step: 12,
                running: true,
                stragglers: 1,
                ..Default::default()
            }],
            incidents: vec![IncidentSnapshot {
                kind: "card_fault",
                open: true,
                phases: vec![("detect".into(), 0.2)],
                resolution_s: None,
            }],
            ..Default::default()
        };
        let out = encoded(&s);
        for line in [
            r#"vigil_card_health{node="n1",card="3",model="H100",state="failed"} 1.0"#,
            r#"vigil_card_health{node="n1",card="3",model="H100",state="healthy"} 0.0"#,
            r#"vigil_card_temperature_celsius{node="n1",card="3",model="H100"} 61.5"#,
            r#"vigil_card_ecc_dbe_volatile_total{node="n1",card="3",model="H100"} 2.0"#,
            r#"vigil_card_probe_latency_seconds{node="n1",card="3",model="H100"} 0.0015"#,
            r#"vigil_node_liveness{node="n1",state="alive"} 1.0"#,
            r#"vigil_node_heartbeats_total{node="n1"} 7.0"#,
            r#"vigil_node_last_seen_timestamp_seconds{node="n1"} 1.5"#,
            r#"vigil_node_cpu_ratio{node="n1"} 0.25"#,
            r#"vigil_job_step{job="pretrain"} 12.0"#,
            r#"vigil_job_stragglers{job="pretrain"} 1.0"#,
            r#"vigil_incidents_total{kind="card_fault"} 1.0"#,
            r#"vigil_incidents_open{kind="card_fault"} 1.0"#,
            r#"vigil_incident_phase_duration_seconds_count{phase="detect"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
    }
}
