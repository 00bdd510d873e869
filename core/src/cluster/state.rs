//! What the cluster knows of its nodes, cards, jobs and checkpoints.

use super::*;

/// A card's health, carrying its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CardHealth {
    Healthy,
    Suspect {
        since_ms: Millis,
        #[serde(serialize_with = "as_string")]
        reason: SuspectReason,
    },
    Failed {
        at_ms: Millis,
        /// The cause of the incident that failed it.
        #[serde(serialize_with = "as_string")]
        signal: CauseKind,
        incident: IncidentId,
    },
    Quarantined {
        at_ms: Millis,
        reason: String,
    },
}

/// Why a card is suspect. Served as its string form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SuspectReason {
    /// A card signal that does not stop the job.
    Signal(Signal),
    /// Its rank computes slower than its peers by this factor.
    Straggler { factor: f64 },
    /// It throttled for the configured number of heartbeats in a row.
    SustainedThermal,
}

impl std::fmt::Display for SuspectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuspectReason::Signal(s) => write!(f, "{s}"),
            SuspectReason::Straggler { factor } => {
                write!(f, "straggler: {factor:.2}x slower than its peers")
            }
            SuspectReason::SustainedThermal => f.write_str("sustained thermal throttling"),
        }
    }
}

fn as_string<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl CardHealth {
    pub fn name(&self) -> &'static str {
        match self {
            CardHealth::Healthy => "healthy",
            CardHealth::Suspect { .. } => "suspect",
            CardHealth::Failed { .. } => "failed",
            CardHealth::Quarantined { .. } => "quarantined",
        }
    }
}

/// One card of a node.
#[derive(Debug, Clone, Serialize)]
pub struct CardState {
    #[serde(flatten)]
    pub info: CardInfo,
    pub health: CardHealth,
    pub sample: Option<CardSample>,
    /// Consecutive heartbeats showing thermal throttling.
    #[serde(skip)]
    pub thermal_streak: u32,
}

/// One node as the controller knows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub id: NodeId,
    pub boot_id: String,
    pub spare: bool,
    pub job: Option<JobId>,
    pub connected: bool,
    pub liveness: Liveness,
    pub registered_at_ms: Millis,
    pub last_seen_ms: Millis,
    pub last_heartbeat_ms: Option<Millis>,
    pub heartbeats: u64,
    pub host: Option<HostMetrics>,
    pub spool_pending: u64,
    pub spool_dropped: u64,
    pub cards: Vec<CardState>,
    /// Heartbeat inter-arrival history for the failure detector.
    #[serde(skip)]
    pub arrivals: ArrivalWindow,
    /// Restored from the store after a controller restart and not heard
    /// from since.
    pub awaiting_reconnect: bool,
    /// Why the controller keeps this node out of service, if it does.
    pub cordoned: Option<String>,
    /// The agent runs the job's workers and obeys worker orders.
    pub supervises: bool,
    /// A recovery (or the store) set this node's job and spare role.
    #[serde(skip)]
    pub role_assigned: bool,
}

/// One rank of a job.
#[derive(Debug, Clone, Serialize)]
pub struct RankState {
    pub node: NodeId,
    pub card: Option<u32>,
    /// Process id from the rank's `start` record.
    pub pid: Option<u32>,
    pub step: u64,
    pub phase: Phase,
    pub at_ms: Millis,
    pub ended: Option<String>,
}

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobRunState {
    Running,
    Finished,
    Failed,
}

/// A checkpoint and which ranks have reported writing it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CheckpointState {
    pub step: u64,
    pub path: String,
    pub ranks: BTreeSet<u32>,
    /// Every rank reported it, or its layout marks it complete.
    pub complete: bool,
    /// Why an agent found it unusable (checksum mismatch, missing file).
    pub invalid: Option<String>,
    /// Who vouched for completeness: `ranks` or `watcher:<layout>`.
    pub source: String,
}

impl CheckpointState {
    pub(super) fn new(step: u64, path: String) -> Self {
        CheckpointState {
            step,
            path,
            ranks: BTreeSet::new(),
            complete: false,
            invalid: None,
            source: "ranks".to_owned(),
        }
    }

    /// Complete and not found invalid: a restore may use it.
    pub fn usable(&self) -> bool {
        self.complete && self.invalid.is_none()
    }
}

/// Checkpoints found for jobs not seen yet, at most this many per job.
pub(super) const PENDING_CATALOG: usize = 16;

/// One training job as seen through its ranks' progress records.
#[derive(Debug, Clone, Serialize)]
pub struct JobState {
    pub id: JobId,
    pub world_size: u32,
    pub state: JobRunState,
    /// Highest step any rank has finished.
    pub step: u64,
    pub started_at_ms: Millis,
    pub last_progress_ms: Millis,
    pub ranks: BTreeMap<u32, RankState>,
    pub checkpoints: BTreeMap<u64, CheckpointState>,
    /// Steps a rank has finished since the job started.
    pub steps_total: u64,
    pub samples_total: u64,
    pub tokens_total: u64,
    /// Step timing and the workload detectors' view.
    pub timing: StepClock,
    /// A hang was reported and no step has ended since.
    pub hung: bool,
    /// Card models of the job's ranks, in order of first appearance; a rank
    /// is compared with peers of the same model.
    #[serde(skip)]
    pub(super) models: Vec<String>,
    /// The open worker-exit incident and the time of its culprit's exit.
    #[serde(skip)]
    pub(super) exit_incident: Option<(IncidentId, Millis)>,
    /// Times the job was restarted by a recovery.
    pub restarts: u32,
    /// The checkpoint step of the latest restore.
    pub restored_from: Option<u64>,
}

impl JobState {
    pub(super) fn new(id: JobId, world_size: u32, now: Millis) -> Self {
        JobState {
            id,
            world_size,
            state: JobRunState::Running,
            step: 0,
            started_at_ms: now,
            last_progress_ms: now,
            ranks: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            steps_total: 0,
            samples_total: 0,
            tokens_total: 0,
            timing: StepClock::default(),
            hung: false,
            models: Vec::new(),
            exit_incident: None,
            restarts: 0,
            restored_from: None,
        }
    }

    pub(super) fn model_group(&mut self, model: &str) -> u32 {
        match self.models.iter().position(|m| m == model) {
            Some(i) => i as u32,
            None => {
                self.models.push(model.to_owned());
                (self.models.len() - 1) as u32
            }
        }
    }

    /// The newest checkpoint every rank has reported.
    pub fn latest_complete_checkpoint(&self) -> Option<&CheckpointState> {
        self.checkpoints.values().rev().find(|c| c.usable())
    }

    pub(super) fn rank_on(&self, node: &NodeId, card: u32) -> Option<u32> {
        self.ranks
            .iter()
            .find(|(_, r)| &r.node == node && r.card == Some(card))
            .map(|(rank, _)| *rank)
    }

    pub(super) fn has_rank_on(&self, node: &NodeId) -> bool {
        self.ranks.values().any(|r| &r.node == node)
    }
}

pub(super) fn new_card(info: CardInfo) -> CardState {
    CardState {
        info,
        health: CardHealth::Healthy,
        sample: None,
        thermal_streak: 0,
    }
}

pub(super) fn new_node(reg: Registration, now: Millis) -> NodeState {
    NodeState {
        id: reg.node,
        boot_id: reg.boot_id,
        spare: reg.spare,
        job: reg.job,
        connected: true,
        liveness: Liveness::Alive,
        registered_at_ms: now,
        last_seen_ms: now,
        last_heartbeat_ms: None,
        heartbeats: 0,
        host: None,
        spool_pending: 0,
        spool_dropped: 0,
        cards: reg.cards.into_iter().map(new_card).collect(),
        arrivals: ArrivalWindow::default(),
        awaiting_reconnect: false,
        cordoned: None,
        supervises: reg.supervises,
        role_assigned: false,
    }
}
