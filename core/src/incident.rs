//! Incidents: one per root cause, with a timeline.

use crate::ids::{IncidentId, JobId, NodeId};
use crate::time::{Millis, Timestamp};
use serde::{Deserialize, Serialize};

/// What kind of failure an incident records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    CardFault,
    NodeLost,
    Hang,
    Straggler,
    WorkerExit,
    ProbeHung,
    Network,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::CardFault => "card_fault",
            IncidentKind::NodeLost => "node_lost",
            IncidentKind::Hang => "hang",
            IncidentKind::Straggler => "straggler",
            IncidentKind::WorkerExit => "worker_exit",
            IncidentKind::ProbeHung => "probe_hung",
            IncidentKind::Network => "network",
        }
    }
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Resolved,
}

/// The localized root cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub node: NodeId,
    /// Null when the cause is the whole node.
    pub card: Option<u32>,
    /// The rank that ran on the card, when known.
    pub rank: Option<u32>,
    /// Signal name, e.g. `xid:79`, `ecc_dbe`, `heartbeat_timeout`.
    pub signal: String,
}

/// One phase of the timeline: detect, localize, isolate, restore, resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSpan {
    pub name: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

/// The checkpoint a recovery restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub step: u64,
    pub path: String,
}

/// A recorded incident, in the shape of CONTRACT.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub job: Option<JobId>,
    pub kind: IncidentKind,
    pub state: IncidentState,
    pub cause: Cause,
    pub detected_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub phases: Vec<PhaseSpan>,
    pub action: Option<String>,
    pub checkpoint: Option<CheckpointRef>,
    pub lost_steps: Option<u64>,
    /// What was observed, oldest first (bounded).
    pub evidence: Vec<String>,
    /// Correlated symptoms folded into this incident.
    pub folded: u32,
}

/// Evidence lines kept per incident.
pub const MAX_EVIDENCE: usize = 32;

impl Incident {
    /// Adds a line of evidence, keeping the list bounded.
    pub fn add_evidence(&mut self, line: String) {
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(line);
        }
    }

    /// Records a phase with its start and end.
    pub fn phase(&mut self, name: &str, start: Millis, end: Option<Millis>) {
        self.phases.push(PhaseSpan {
            name: name.to_owned(),
            start: Timestamp(start),
            end: end.map(Timestamp),
        });
    }

    /// Marks the incident resolved at `now`, closing any open phase.
    pub fn resolve(&mut self, now: Millis) {
        for p in &mut self.phases {
            if p.end.is_none() {
                p.end = Some(Timestamp(now));
            }
        }
        self.state = IncidentState::Resolved;
        self.resolved_at = Some(Timestamp(now));
    }
}
