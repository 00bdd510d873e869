//! The feed catalog: every kind of event the live feed carries.
//!
//! [`FeedEvent`] is what the cluster's decisions publish, one variant per
//! kind with typed fields; [`FeedEvent::data`] gives the JSON the feed
//! carries. [`KINDS`] lists every kind on the feed, including the ones the
//! controller publishes itself; `docs/api.md` is tested against it.

use crate::cluster::JobRunState;
use crate::ids::{IncidentId, JobId, NodeId};
use crate::incident::CheckpointRef;
use crate::model::Signal;
use crate::rules::{Action, Class};
use crate::time::{Millis, Timestamp};
use serde_json::{Value, json};

/// Every kind of event on the feed, in the order `docs/api.md` lists them.
pub const KINDS: &[&str] = &[
    // Published by the cluster's decisions ([`FeedEvent`]).
    "node_registered",
    "node_suspect",
    "node_alive",
    "node_lost",
    "node_recovered",
    "card_signal",
    "card_health",
    "quarantined",
    "uncordoned",
    "alert",
    "circuit_breaker_closed",
    "probe_hung",
    "worker_exit",
    "job_started",
    "job_progress",
    "checkpoint_complete",
    "checkpoint_invalid",
    "job_slowdown",
    "job_speed_recovered",
    "job_ended",
    "waiting_for_capacity",
    "recovery_restore",
    "recovery_done",
    "shadow_action",
    // Incident effects ([`crate::incident::IncidentChange::kind`]).
    "incident_opened",
    "incident_updated",
    "incident_resolved",
    // Published by the controller itself.
    "command_result",
    "action_shadow",
    "snapshot",
    "dropped",
];

/// Note on job-wide slowdowns: they are never blamed on a card.
const SLOWDOWN_NOTE: &str = "every rank slowed together; not blamed on a card";

/// One event the cluster's decisions publish on the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    NodeRegistered {
        node: NodeId,
        boot_id: String,
        cards: usize,
        spare: bool,
        job: Option<JobId>,
    },
    NodeSuspect {
        node: NodeId,
        reason: String,
    },
    /// A suspect node was heard from again.
    NodeAlive {
        node: NodeId,
    },
    NodeLost {
        node: NodeId,
        last_seen_ms: Millis,
    },
    /// A lost node was heard from again.
    NodeRecovered {
        node: NodeId,
    },
    CardSignal {
        node: NodeId,
        card: u32,
        signal: Signal,
        detail: String,
        class: Class,
        action: Action,
    },
    /// `card_health` with `failed`.
    CardFailed {
        node: NodeId,
        card: u32,
        signal: Signal,
    },
    /// `card_health` with `healthy`: the quiet period passed.
    CardHealthy {
        node: NodeId,
        card: u32,
    },
    Quarantined {
        node: NodeId,
        card: Option<u32>,
        reason: String,
    },
    Uncordoned {
        node: NodeId,
        card: Option<u32>,
    },
    /// `alert` `circuit_breaker_open`: more than `share` of the cluster's
    /// `cards` would be quarantined within the window.
    BreakerOpen {
        share: f64,
        cards: u32,
        window_ms: Millis,
    },
    BreakerClosed,
    ProbeHung {
        node: NodeId,
        card: u32,
        probe: String,
        waited_ms: u32,
    },
    WorkerExit {
        node: NodeId,
        rank: Option<u32>,
        pid: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    JobStarted {
        job: JobId,
        world_size: u32,
    },
    JobProgress {
        job: JobId,
        step: u64,
    },
    CheckpointComplete {
        job: JobId,
        step: u64,
        path: String,
        source: String,
    },
    CheckpointInvalid {
        job: JobId,
        step: u64,
        path: String,
        node: NodeId,
        reason: String,
    },
    JobSlowdown {
        job: JobId,
        factor: f64,
    },
    JobSpeedRecovered {
        job: JobId,
    },
    JobEnded {
        job: JobId,
        state: JobRunState,
        step: u64,
    },
    WaitingForCapacity {
        job: JobId,
        need: usize,
        idle_spares: usize,
    },
    RecoveryRestore {
        job: JobId,
        checkpoint: Option<CheckpointRef>,
        restart: u32,
    },
    RecoveryDone {
        job: JobId,
        resumed_at_step: u64,
        lost_steps: u64,
    },
    /// Shadow mode: the recovery that would run.
    ShadowAction {
        incident: IncidentId,
        job: JobId,
        plan: Vec<String>,
        checkpoint: Option<CheckpointRef>,
    },
}

impl FeedEvent {
    /// The feed kind (one of [`KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::NodeRegistered { .. } => "node_registered",
            FeedEvent::NodeSuspect { .. } => "node_suspect",
            FeedEvent::NodeAlive { .. } => "node_alive",
            FeedEvent::NodeLost { .. } => "node_lost",
            FeedEvent::NodeRecovered { .. } => "node_recovered",
            FeedEvent::CardSignal { .. } => "card_signal",
            FeedEvent::CardFailed { .. } | FeedEvent::CardHealthy { .. } => "card_health",
            FeedEvent::Quarantined { .. } => "quarantined",
            FeedEvent::Uncordoned { .. } => "uncordoned",
            FeedEvent::BreakerOpen { .. } => "alert",
            FeedEvent::BreakerClosed => "circuit_breaker_closed",
            FeedEvent::ProbeHung { .. } => "probe_hung",
            FeedEvent::WorkerExit { .. } => "worker_exit",
            FeedEvent::JobStarted { .. } => "job_started",
            FeedEvent::JobProgress { .. } => "job_progress",
            FeedEvent::CheckpointComplete { .. } => "checkpoint_complete",
            FeedEvent::CheckpointInvalid { .. } => "checkpoint_invalid",
            FeedEvent::JobSlowdown { .. } => "job_slowdown",
            FeedEvent::JobSpeedRecovered { .. } => "job_speed_recovered",
            FeedEvent::JobEnded { .. } => "job_ended",
            FeedEvent::WaitingForCapacity { .. } => "waiting_for_capacity",
            FeedEvent::RecoveryRestore { .. } => "recovery_restore",
            FeedEvent::RecoveryDone { .. } => "recovery_done",
            FeedEvent::ShadowAction { .. } => "shadow_action",
        }
    }

    /// The event's JSON `data`.
    pub fn data(&self) -> Value {
        self.node_data()
            .or_else(|| self.job_data())
            .unwrap_or(Value::Null)
    }

    /// The `data` of node and card events.
    fn node_data(&self) -> Option<Value> {
        Some(match self {
            FeedEvent::NodeRegistered {
                node,
                boot_id,
                cards,
                spare,
                job,
            } => {
                json!({ "node": node, "boot_id": boot_id, "cards": cards, "spare": spare, "job": job })
            }
            FeedEvent::NodeSuspect { node, reason } => json!({ "node": node, "reason": reason }),
            FeedEvent::NodeAlive { node } | FeedEvent::NodeRecovered { node } => {
                json!({ "node": node })
            }
            FeedEvent::NodeLost { node, last_seen_ms } => {
                json!({ "node": node, "last_seen": Timestamp(*last_seen_ms) })
            }
            FeedEvent::CardSignal {
                node,
                card,
                signal,
                detail,
                class,
                action,
            } => {
                json!({ "node": node, "card": card, "signal": signal.to_string(), "detail": detail,
                          "class": class, "action": action })
            }
            FeedEvent::CardFailed { node, card, signal } => {
                json!({ "node": node, "card": card, "health": "failed", "signal": signal.to_string() })
            }
            FeedEvent::CardHealthy { node, card } => {
                json!({ "node": node, "card": card, "health": "healthy", "note": "quiet period passed" })
            }
            FeedEvent::Quarantined { node, card, reason } => {
                json!({ "node": node, "card": card, "reason": reason })
            }
            FeedEvent::Uncordoned { node, card } => json!({ "node": node, "card": card }),
            FeedEvent::BreakerOpen {
                share,
                cards,
                window_ms,
            } => json!({
                "alert": "circuit_breaker_open",
                "note": format!(
                    "more than {:.0}% of the cluster's {cards} cards would be quarantined within {} s; automatic quarantine stopped, operator review needed",
                    share * 100.0, window_ms / 1000),
            }),
            FeedEvent::BreakerClosed => json!({ "note": "automatic quarantine resumes" }),
            FeedEvent::ProbeHung {
                node,
                card,
                probe,
                waited_ms,
            } => json!({ "node": node, "card": card, "probe": probe, "waited_ms": waited_ms }),
            FeedEvent::WorkerExit {
                node,
                rank,
                pid,
                exit_code,
                signal,
            } => {
                json!({ "node": node, "rank": rank, "pid": pid, "exit_code": exit_code, "signal": signal })
            }
            _ => return None,
        })
    }

    /// The `data` of job and recovery events.
    fn job_data(&self) -> Option<Value> {
        Some(match self {
            FeedEvent::JobStarted { job, world_size } => {
                json!({ "job": job, "world_size": world_size })
            }
            FeedEvent::JobProgress { job, step } => json!({ "job": job, "step": step }),
            FeedEvent::CheckpointComplete {
                job,
                step,
                path,
                source,
            } => json!({ "job": job, "step": step, "path": path, "source": source }),
            FeedEvent::CheckpointInvalid {
                job,
                step,
                path,
                node,
                reason,
            } => json!({ "job": job, "step": step, "path": path, "node": node, "reason": reason }),
            FeedEvent::JobSlowdown { job, factor } => {
                json!({ "job": job, "factor": Some(factor), "note": SLOWDOWN_NOTE })
            }
            FeedEvent::JobSpeedRecovered { job } => {
                json!({ "job": job, "factor": None::<f64>, "note": SLOWDOWN_NOTE })
            }
            FeedEvent::JobEnded { job, state, step } => {
                json!({ "job": job, "state": state, "step": step })
            }
            FeedEvent::WaitingForCapacity {
                job,
                need,
                idle_spares,
            } => json!({ "job": job, "need": need, "idle_spares": idle_spares }),
            FeedEvent::RecoveryRestore {
                job,
                checkpoint,
                restart,
            } => json!({ "job": job, "checkpoint": checkpoint, "restart": restart }),
            FeedEvent::RecoveryDone {
                job,
                resumed_at_step,
                lost_steps,
            } => {
                json!({ "job": job, "resumed_at_step": resumed_at_step, "lost_steps": lost_steps })
            }
            FeedEvent::ShadowAction {
                incident,
                job,
                plan,
                checkpoint,
            } => {
                json!({ "incident": incident, "job": job, "plan": plan, "checkpoint": checkpoint })
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::IncidentChange;
    use std::collections::BTreeSet;

    fn node() -> NodeId {
        NodeId::new("n1").expect("id")
    }

    fn job() -> JobId {
        JobId::new("j").expect("id")
    }

    /// One event of every variant.
    fn examples() -> Vec<FeedEvent> {
        let (node, job) = (node(), job());
        vec![
            FeedEvent::NodeRegistered {
                node: node.clone(),
                boot_id: "b".into(),
                cards: 8,
                spare: false,
                job: None,
            },
            FeedEvent::NodeSuspect {
                node: node.clone(),
                reason: "stream closed".into(),
            },
            FeedEvent::NodeAlive { node: node.clone() },
            FeedEvent::NodeLost {
                node: node.clone(),
                last_seen_ms: 1000,
            },
            FeedEvent::NodeRecovered { node: node.clone() },
            FeedEvent::CardSignal {
                node: node.clone(),
                card: 1,
                signal: Signal::Xid(79),
                detail: String::new(),
                class: Class::Hardware,
                action: Action::DrainNode,
            },
            FeedEvent::CardFailed {
                node: node.clone(),
                card: 1,
                signal: Signal::EccDbe,
            },
            FeedEvent::CardHealthy {
                node: node.clone(),
                card: 1,
            },
            FeedEvent::Quarantined {
                node: node.clone(),
                card: None,
                reason: "r".into(),
            },
            FeedEvent::Uncordoned {
                node: node.clone(),
                card: Some(2),
            },
            FeedEvent::BreakerOpen {
                share: 0.1,
                cards: 64,
                window_ms: 600_000,
            },
            FeedEvent::BreakerClosed,
            FeedEvent::ProbeHung {
                node: node.clone(),
                card: 0,
                probe: "nvml".into(),
                waited_ms: 5000,
            },
            FeedEvent::WorkerExit {
                node: node.clone(),
                rank: Some(3),
                pid: 42,
                exit_code: None,
                signal: Some(9),
            },
            FeedEvent::JobStarted {
                job: job.clone(),
                world_size: 4,
            },
            FeedEvent::JobProgress {
                job: job.clone(),
                step: 10,
            },
            FeedEvent::CheckpointComplete {
                job: job.clone(),
                step: 10,
                path: "/c".into(),
                source: "ranks".into(),
            },
            FeedEvent::CheckpointInvalid {
                job: job.clone(),
                step: 10,
                path: "/c".into(),
                node: node.clone(),
                reason: "checksum".into(),
            },
            FeedEvent::JobSlowdown {
                job: job.clone(),
                factor: 1.5,
            },
            FeedEvent::JobSpeedRecovered { job: job.clone() },
            FeedEvent::JobEnded {
                job: job.clone(),
                state: JobRunState::Finished,
                step: 100,
            },
            FeedEvent::WaitingForCapacity {
                job: job.clone(),
                need: 1,
                idle_spares: 0,
            },
            FeedEvent::RecoveryRestore {
                job: job.clone(),
                checkpoint: None,
                restart: 1,
            },
            FeedEvent::RecoveryDone {
                job: job.clone(),
                resumed_at_step: 11,
                lost_steps: 1,
            },
            FeedEvent::ShadowAction {
                incident: IncidentId(1),
                job,
                plan: vec!["restart in place".into()],
                checkpoint: None,
            },
        ]
    }

    #[test]
    fn data_keeps_its_shape() {
        let ev = examples();
        assert!(ev.iter().all(|e| !e.data().is_null()));
        let json: Vec<String> = ev.iter().map(|e| e.data().to_string()).collect();
        assert_eq!(
            json[3],
            r#"{"last_seen":"1970-01-01T00:00:01Z","node":"n1"}"#
        );
        assert_eq!(
            json[10],
            r#"{"alert":"circuit_breaker_open","note":"more than 10% of the cluster's 64 cards would be quarantined within 600 s; automatic quarantine stopped, operator review needed"}"#
        );
        assert_eq!(
            json[19],
            r#"{"factor":null,"job":"j","note":"every rank slowed together; not blamed on a card"}"#
        );
    }

    #[test]
    fn every_kind_is_in_the_catalog_once() {
        let all: BTreeSet<&str> = KINDS.iter().copied().collect();
        assert_eq!(all.len(), KINDS.len(), "a kind is listed twice");
        for e in examples() {
            assert!(all.contains(e.kind()), "{} not in KINDS", e.kind());
        }
        for c in [
            IncidentChange::Opened,
            IncidentChange::Updated,
            IncidentChange::Resolved,
        ] {
            assert!(all.contains(c.kind()), "{} not in KINDS", c.kind());
        }
    }

    /// The kinds in the table under "Kinds and their `data`" in docs/api.md.
    fn documented_kinds() -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md");
        let doc = std::fs::read_to_string(path).expect("docs/api.md");
        let table = doc
            .split("**Kinds and their `data`:**")
            .nth(1)
            .expect("the feed kinds table in docs/api.md");
        let mut kinds = Vec::new();
        for line in table.lines().skip_while(|l| !l.starts_with('|')) {
            if !line.starts_with('|') {
                break;
            }
            let first = line.split('|').nth(1).unwrap_or_default();
            kinds.extend(
                first
                    .split(',')
                    .filter_map(|k| k.trim().strip_prefix('`')?.strip_suffix('`'))
                    .map(str::to_owned),
            );
        }
        kinds
    }

    #[test]
    fn docs_list_exactly_the_kinds_of_the_catalog() {
        let documented = documented_kinds();
        for k in KINDS {
            assert!(
                documented.iter().any(|d| d == k),
                "feed kind {k} is missing from docs/api.md"
            );
        }
        for d in &documented {
            assert!(
                KINDS.contains(&d.as_str()),
                "docs/api.md lists feed kind {d}, which the code does not emit"
            );
        }
    }
}
