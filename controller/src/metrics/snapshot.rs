//! What `/metrics` needs from cluster state, copied in one step of the
//! state task: owned numbers and names, no registry, no encoding.

use vigil_core::Millis;
use vigil_core::cluster::{Cluster, JobRunState};
use vigil_core::incident::IncidentState;
use vigil_core::ledger::LedgerRow;
use vigil_core::model::CardSample;

/// The cluster as `/metrics` shows it.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub nodes: Vec<NodeSnapshot>,
    pub jobs: Vec<JobSnapshot>,
    pub incidents: Vec<IncidentSnapshot>,
    pub breaker_open: bool,
    pub quarantine_allowance: u32,
    /// The whole ledger, for the per-job report.
    pub ledger: Vec<LedgerRow>,
}

/// One node and its cards.
#[derive(Debug, Clone, Default)]
pub struct NodeSnapshot {
    pub id: String,
    /// `alive`, `suspect` or `lost`.
    pub liveness: &'static str,
    pub connected: bool,
    pub cordoned: bool,
    pub spare: bool,
    pub heartbeats: u64,
    pub spool_pending: u64,
    pub spool_dropped: u64,
    pub last_seen_ms: Millis,
    /// Host CPU use in percent, when the node reported it.
    pub cpu_percent: Option<f32>,
    pub cards: Vec<CardSnapshot>,
}

/// One card.
#[derive(Debug, Clone, Default)]
pub struct CardSnapshot {
    pub index: u32,
    pub model: String,
    /// `healthy`, `suspect`, `failed` or `quarantined`.
    pub health: &'static str,
    pub memory_total_bytes: u64,
    /// The newest reading, if any.
    pub sample: Option<CardSample>,
}

/// One job.
#[derive(Debug, Clone, Default)]
pub struct JobSnapshot {
    pub id: String,
    pub step: u64,
    pub world_size: u32,
    pub ranks_reporting: usize,
    pub running: bool,
    pub hung: bool,
    pub steps_total: u64,
    pub samples_total: u64,
    pub tokens_total: u64,
    pub restarts: u32,
    pub last_progress_ms: Millis,
    pub stragglers: usize,
}

/// One incident, as the incident counters and histograms need it.
#[derive(Debug, Clone, Default)]
pub struct IncidentSnapshot {
    pub kind: &'static str,
    pub open: bool,
    /// Each finished phase: its name and duration in seconds.
    pub phases: Vec<(String, f64)>,
    /// Detection to resolution, in seconds, once resolved.
    pub resolution_s: Option<f64>,
}

/// Milliseconds from `start` to `end` in seconds (never negative).
fn seconds(start: Millis, end: Millis) -> f64 {
    (end - start).max(0) as f64 / 1000.0
}

impl ClusterSnapshot {
    /// Copies what `/metrics` shows; runs inside the state task.
    pub fn take(c: &Cluster, now_ms: Millis) -> Self {
        ClusterSnapshot {
            nodes: c.nodes().map(node).collect(),
            jobs: c.jobs().map(job).collect(),
            incidents: c.incidents().map(incident).collect(),
            breaker_open: c.breaker_open(),
            quarantine_allowance: c.quarantine_allowance(now_ms),
            ledger: c.ledger().rows(now_ms, None, None),
        }
    }
}

fn node(n: &vigil_core::cluster::NodeState) -> NodeSnapshot {
    NodeSnapshot {
        id: n.id.to_string(),
        liveness: n.liveness.name(),
        connected: n.connected,
        cordoned: n.cordoned.is_some(),
        spare: n.spare,
        heartbeats: n.heartbeats,
        spool_pending: n.spool_pending,
        spool_dropped: n.spool_dropped,
        last_seen_ms: n.last_seen_ms,
        cpu_percent: n.host.as_ref().map(|h| h.cpu_percent),
        cards: n
            .cards
            .iter()
            .map(|card| CardSnapshot {
                index: card.info.index,
                model: card.info.model.clone(),
                health: card.health.name(),
                memory_total_bytes: card.info.memory_total_bytes,
                sample: card.sample.clone(),
            })
            .collect(),
    }
}

fn job(j: &vigil_core::cluster::JobState) -> JobSnapshot {
    JobSnapshot {
        id: j.id.to_string(),
        step: j.step,
        world_size: j.world_size,
        ranks_reporting: j.ranks.len(),
        running: j.state == JobRunState::Running,
        hung: j.hung,
        steps_total: j.steps_total,
        samples_total: j.samples_total,
        tokens_total: j.tokens_total,
        restarts: j.restarts,
        last_progress_ms: j.last_progress_ms,
        stragglers: j.timing.stragglers.len(),
    }
}

fn incident(i: &vigil_core::incident::Incident) -> IncidentSnapshot {
    IncidentSnapshot {
        kind: i.kind.as_str(),
        open: i.state == IncidentState::Open,
        phases: i
            .phases
            .iter()
            .filter_map(|p| Some((p.name.clone(), seconds(p.start.0, p.end?.0))))
            .collect(),
        resolution_s: i.resolved_at.map(|r| seconds(i.detected_at.0, r.0)),
    }
}
