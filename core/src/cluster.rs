//! Cluster state and the decisions taken on it.
//!
//! [`Cluster::apply`] is the single transition function: it takes one input
//! (a registration, heartbeat, event, disconnection or clock tick) and the
//! current time, updates the state and returns the effects for the shell to
//! carry out (persist an incident, publish a feed event). It never does IO.

use crate::feed::FeedEvent;
use crate::ids::{IncidentId, JobId, NodeId};
use crate::incident::{
    Cause, CauseKind, ExitStatus, HangClue, Incident, IncidentChange, IncidentKind, IncidentState,
};
use crate::ledger::{self, Culprit, Ledger, LedgerRow};
use crate::liveness::{self, ArrivalWindow, Liveness, LivenessConfig};
use crate::model::{
    AgentEvent, CardInfo, CardSample, CheckpointReport, EventBody, Heartbeat, HostMetrics, Signal,
    THROTTLE_HW_POWER_BRAKE, THROTTLE_HW_THERMAL, THROTTLE_SW_THERMAL,
};

const THERMAL_THROTTLE: u64 = THROTTLE_HW_THERMAL | THROTTLE_SW_THERMAL | THROTTLE_HW_POWER_BRAKE;
use crate::progress::{Phase, ProgressRecord};
use crate::rules::{Action, Class, RuleTable};
use crate::time::{Millis, Timestamp};
use crate::workload::{StepClock, StepVerdict, WorkloadConfig};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Settings of the decision logic.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub liveness: LivenessConfig,
    pub rules: RuleTable,
    /// After a controller restart, how long restored nodes may take to
    /// reconnect before silence counts against them (agents back off up to
    /// 10 s between attempts).
    pub restart_grace_ms: Millis,
    pub workload: WorkloadConfig,
    pub health: HealthConfig,
    pub breaker: BreakerConfig,
    /// Shadow mode: detect, localize and record what recovery would do,
    /// without stopping, restarting or asking any back-end to act.
    pub shadow: bool,
}

/// Card health hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A suspect card with no new evidence for this long is healthy again.
    pub quiet_ms: Millis,
    /// Consecutive heartbeats with thermal or power-brake throttling that
    /// make throttling "sustained".
    pub thermal_heartbeats: u32,
    /// Losses of one node within `flap_window_ms` that make it flapping.
    pub flap_losses: u32,
    pub flap_window_ms: Millis,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            quiet_ms: 300_000,
            thermal_heartbeats: 10,
            flap_losses: 3,
            flap_window_ms: 600_000,
        }
    }
}

/// The automatic-quarantine circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Largest share of the cluster's cards quarantined automatically within
    /// the window (at least one node's worth).
    pub share: f64,
    pub window_ms: Millis,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            share: 0.10,
            window_ms: 600_000,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            liveness: LivenessConfig::default(),
            rules: RuleTable::default(),
            restart_grace_ms: 15_000,
            workload: WorkloadConfig::default(),
            health: HealthConfig::default(),
            breaker: BreakerConfig::default(),
            shadow: false,
        }
    }
}

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
    fn new(step: u64, path: String) -> Self {
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
const PENDING_CATALOG: usize = 16;

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
    models: Vec<String>,
    /// The open worker-exit incident and the time of its culprit's exit.
    #[serde(skip)]
    exit_incident: Option<(IncidentId, Millis)>,
    /// Times the job was restarted by a recovery.
    pub restarts: u32,
    /// The checkpoint step of the latest restore.
    pub restored_from: Option<u64>,
}

impl JobState {
    fn new(id: JobId, world_size: u32, now: Millis) -> Self {
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

    fn model_group(&mut self, model: &str) -> u32 {
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

    fn rank_on(&self, node: &NodeId, card: u32) -> Option<u32> {
        self.ranks
            .iter()
            .find(|(_, r)| &r.node == node && r.card == Some(card))
            .map(|(rank, _)| *rank)
    }

    fn has_rank_on(&self, node: &NodeId) -> bool {
        self.ranks.values().any(|r| &r.node == node)
    }
}

/// A registration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub node: NodeId,
    pub boot_id: String,
    pub cards: Vec<CardInfo>,
    pub spare: bool,
    pub job: Option<JobId>,
    /// The agent runs the job's workers and obeys worker orders.
    pub supervises: bool,
}

/// One input to the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Register(Registration),
    Heartbeat {
        node: NodeId,
        heartbeat: Heartbeat,
    },
    Event {
        node: NodeId,
        event: AgentEvent,
    },
    Disconnected {
        node: NodeId,
        boot_id: String,
    },
    /// An operator takes a node or card out of service, or puts it back.
    Cordon {
        node: NodeId,
        card: Option<u32>,
        reason: String,
    },
    Uncordon {
        node: NodeId,
        card: Option<u32>,
    },
    Tick,
}

/// What the shell must do after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish on the live feed.
    Feed(FeedEvent),
    /// Persist this incident (new or changed) and publish it as the change
    /// says.
    Incident(Box<Incident>, IncidentChange),
    /// Order a node's worker supervisor to stop or start the job's workers.
    Worker {
        node: NodeId,
        command: WorkerCommand,
    },
    /// Store this recovery durably before carrying out the effects after it.
    Recovery(Box<Recovery>),
    /// The job's recovery is over; forget the stored one.
    RecoveryDone(JobId),
    /// Tell a node's agent it (or one card) is quarantined.
    Quarantine {
        node: NodeId,
        card: Option<u32>,
        reason: String,
    },
    /// Ask the configured action back-ends (exec hook, Slurm, Kubernetes)
    /// to act.
    Action(Box<ActionRequest>),
    /// A checkpoint became complete or invalid: store it, so a restarted
    /// controller still knows what to restore from.
    Checkpoint { job: JobId, state: CheckpointState },
    /// A recovery changed a node's role (a spare joined a job, a replaced
    /// node left it): store it, so it survives a controller restart.
    NodeRole {
        node: NodeId,
        job: Option<JobId>,
        spare: bool,
    },
    /// Store these ledger amounts and cursors (absolute values; replace).
    Ledger {
        rows: Vec<LedgerRow>,
        cursors: Vec<ledger::Cursor>,
    },
}

impl Effect {
    /// Persist and publish a change to an existing incident.
    fn incident(inc: &Incident) -> Effect {
        Effect::Incident(Box::new(inc.clone()), IncidentChange::of(inc))
    }
}

/// What the action back-ends are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionVerb {
    /// Take a node (or one of its cards) out of service: drain, cordon, taint.
    Quarantine,
    /// An operator returned it to service.
    Release,
    /// Restart a job that no Vigil agent supervises (requeue, delete pods).
    Restart,
}

/// One request for the action back-ends, with everything a hook needs.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ActionRequest {
    pub verb: ActionVerb,
    pub incident: Option<IncidentId>,
    pub job: Option<JobId>,
    pub node: Option<NodeId>,
    pub card: Option<u32>,
    pub reason: String,
    /// For a restart: the newest complete checkpoint.
    pub checkpoint: Option<crate::incident::CheckpointRef>,
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("node {0} has not registered")]
    UnknownNode(NodeId),
    #[error("node {node}: card index {card} is not in its inventory")]
    UnknownCard { node: NodeId, card: u32 },
    #[error("node {node}: stale boot id {got} (current {current})")]
    StaleBoot {
        node: NodeId,
        got: String,
        current: String,
    },
}

/// The whole cluster as the controller sees it.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    cfg: ClusterConfig,
    nodes: BTreeMap<NodeId, NodeState>,
    jobs: BTreeMap<JobId, JobState>,
    incidents: BTreeMap<IncidentId, Incident>,
    /// Open incident per root cause: (node, card or None for the node).
    open: BTreeMap<(NodeId, Option<u32>), IncidentId>,
    next_incident: u64,
    /// Until then, restored nodes that have not reconnected are not judged.
    grace_until: Millis,
    /// Automatic quarantines within the breaker window: (time, cards).
    quarantines: std::collections::VecDeque<(Millis, u32)>,
    /// Since when the breaker withholds automatic quarantine.
    breaker_open_since: Option<Millis>,
    /// Recent losses per node, for flap damping.
    losses: BTreeMap<NodeId, std::collections::VecDeque<Millis>>,
    /// Recovery in progress per job.
    recoveries: BTreeMap<JobId, Recovery>,
    /// Incidents opened since the last input, for recovery to pick up.
    pending_recovery: Vec<IncidentId>,
    /// Checkpoints a directory watcher found for jobs no rank has reported
    /// yet; they join the job's catalog when it appears.
    pending_catalog: BTreeMap<JobId, BTreeMap<u64, CheckpointState>>,
    /// Allocated versus effective card-hours.
    ledger: Ledger,
}

/// Feed events emitted when a job advances this many steps.
const PROGRESS_FEED_EVERY: u64 = 10;

impl Cluster {
    pub fn new(cfg: ClusterConfig) -> Self {
        Cluster {
            cfg,
            next_incident: 1,
            ..Default::default()
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Restores persisted state after a controller restart: known nodes
    /// (treated as suspect until they reconnect) and incidents.
    pub fn restore(
        &mut self,
        nodes: Vec<Registration>,
        incidents: Vec<Incident>,
        now: Millis,
    ) -> Vec<Effect> {
        self.grace_until = now + self.cfg.restart_grace_ms;
        for reg in nodes {
            let mut node = new_node(reg, now);
            // The stored role is the one Vigil last decided.
            node.role_assigned = true;
            node.connected = false;
            node.awaiting_reconnect = true;
            node.liveness = Liveness::Suspect {
                since_ms: now,
                reason: "controller restarted; waiting for the agent".to_owned(),
            };
            self.nodes.insert(node.id.clone(), node);
        }
        for inc in incidents {
            self.next_incident = self.next_incident.max(inc.id.0 + 1);
            if inc.state == IncidentState::Open {
                self.open
                    .insert((inc.cause.node.clone(), inc.cause.card), inc.id);
                if let (Some(card), Some(node)) =
                    (inc.cause.card, self.nodes.get_mut(&inc.cause.node))
                    && let Some(c) = node.cards.get_mut(card as usize)
                {
                    c.health = CardHealth::Failed {
                        at_ms: inc.detected_at.0,
                        signal: inc.cause.what.clone(),
                        incident: inc.id,
                    };
                }
            }
            self.incidents.insert(inc.id, inc);
        }
        Vec::new()
    }

    pub fn nodes(&self) -> impl DoubleEndedIterator<Item = &NodeState> {
        self.nodes.values()
    }

    pub fn node(&self, id: &NodeId) -> Option<&NodeState> {
        self.nodes.get(id)
    }

    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &JobState> {
        self.jobs.values()
    }

    pub fn incidents(&self) -> impl DoubleEndedIterator<Item = &Incident> {
        self.incidents.values()
    }

    pub fn incident(&self, id: IncidentId) -> Option<&Incident> {
        self.incidents.get(&id)
    }

    /// Applies one input at time `now`.
    pub fn apply(&mut self, input: Input, now: Millis) -> Result<Vec<Effect>, Rejected> {
        let mut fx = Vec::new();
        let heartbeat = matches!(input, Input::Heartbeat { .. });
        match input {
            Input::Register(reg) => self.register(reg, now, &mut fx),
            Input::Heartbeat { node, heartbeat } => {
                self.heartbeat(node, heartbeat, now, &mut fx)?
            }
            Input::Event { node, event } => self.event(node, event, now, &mut fx)?,
            Input::Disconnected { node, boot_id } => self.disconnected(node, boot_id, now, &mut fx),
            Input::Cordon { node, card, reason } => {
                self.cordon(node, card, reason, now, &mut fx)?
            }
            Input::Uncordon { node, card } => self.uncordon(node, card, now, &mut fx)?,
            Input::Tick => self.tick(now, &mut fx),
        }
        if !self.pending_recovery.is_empty() || (!heartbeat && !self.recoveries.is_empty()) {
            self.drive_recoveries(now, &mut fx);
        }
        if !heartbeat {
            let (rows, cursors) = self.ledger.take_dirty();
            if !rows.is_empty() || !cursors.is_empty() {
                fx.push(Effect::Ledger { rows, cursors });
            }
        }
        Ok(fx)
    }

    /// Checkpoints stored by a previous controller: they join each job's
    /// catalog when the job appears (the newest per job are kept).
    pub fn restore_checkpoints(&mut self, checkpoints: Vec<(JobId, CheckpointState)>) {
        for (job, c) in checkpoints {
            let p = self.pending_catalog.entry(job).or_default();
            p.insert(c.step, c);
            while p.len() > PENDING_CATALOG {
                p.pop_first();
            }
        }
    }

    /// The goodput ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Ledger amounts and cursors stored by a previous controller.
    pub fn restore_ledger(&mut self, rows: Vec<LedgerRow>, cursors: Vec<ledger::Cursor>) {
        self.ledger.restore(rows, cursors);
    }

    fn culprit(&self, incident: IncidentId, cause: &Cause) -> Culprit {
        Culprit {
            incident: Some(incident),
            node: Some(cause.node.clone()),
            card: cause.card,
            model: cause.card.and_then(|c| {
                self.nodes
                    .get(&cause.node)
                    .and_then(|n| n.cards.get(c as usize))
                    .map(|c| c.info.model.clone())
            }),
        }
    }

    fn register(&mut self, reg: Registration, now: Millis, fx: &mut Vec<Effect>) {
        let node = reg.node.clone();
        self.register_node(reg, now, fx);
        self.reorder_restoring(&node, fx);
    }

    fn register_node(&mut self, mut reg: Registration, now: Millis, fx: &mut Vec<Effect>) {
        // A node a recovery moved keeps its new role when its agent
        // reconnects (or after a controller restart).
        for r in self.recoveries.values() {
            for (old, spare) in &r.replacements {
                if *spare == reg.node {
                    reg.job = Some(r.job.clone());
                    reg.spare = false;
                } else if *old == reg.node {
                    reg.job = None;
                }
            }
        }
        // The same agent process reconnecting (same boot id) keeps the role
        // a recovery gave its node (a spare now running the job, a replaced
        // node out of it), also after a controller restart: its flags still
        // say what it was started as. A new boot starts from its flags.
        if let Some(n) = self.nodes.get(&reg.node)
            && n.boot_id == reg.boot_id
            && n.role_assigned
            && (n.job != reg.job || n.spare != reg.spare)
        {
            reg.job = n.job.clone();
            reg.spare = n.spare;
            fx.push(Effect::NodeRole {
                node: reg.node.clone(),
                job: reg.job.clone(),
                spare: reg.spare,
            });
        }
        let id = reg.node.clone();
        let registered = FeedEvent::NodeRegistered {
            node: id.clone(),
            boot_id: reg.boot_id.clone(),
            cards: reg.cards.len(),
            spare: reg.spare,
            job: reg.job.clone(),
        };
        match self.nodes.get_mut(&id) {
            Some(node) => {
                let was_lost = matches!(node.liveness, Liveness::Lost { .. });
                let same_inventory = node.cards.len() == reg.cards.len()
                    && node.cards.iter().zip(&reg.cards).all(|(a, b)| a.info == *b);
                if node.boot_id != reg.boot_id {
                    node.arrivals.reset();
                }
                node.boot_id = reg.boot_id;
                node.awaiting_reconnect = false;
                node.supervises = reg.supervises;
                node.spare = reg.spare;
                node.job = reg.job;
                node.connected = true;
                node.last_seen_ms = now;
                node.liveness = Liveness::Alive;
                if !same_inventory {
                    node.cards = reg.cards.into_iter().map(new_card).collect();
                }
                fx.push(Effect::Feed(registered));
                if was_lost {
                    self.node_came_back(&id, now, fx);
                }
            }
            None => {
                self.nodes.insert(id, new_node(reg, now));
                fx.push(Effect::Feed(registered));
            }
        }
    }

    fn known_node(&mut self, id: &NodeId) -> Result<&mut NodeState, Rejected> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| Rejected::UnknownNode(id.clone()))
    }

    fn heartbeat(
        &mut self,
        id: NodeId,
        hb: Heartbeat,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Rejected> {
        let sustain = self.cfg.health.thermal_heartbeats;
        let node = self.known_node(&id)?;
        for s in &hb.cards {
            if s.index as usize >= node.cards.len() {
                return Err(Rejected::UnknownCard {
                    node: id,
                    card: s.index,
                });
            }
        }
        let was_lost = matches!(node.liveness, Liveness::Lost { .. });
        let was_suspect = matches!(node.liveness, Liveness::Suspect { .. });
        node.last_seen_ms = now;
        node.last_heartbeat_ms = Some(now);
        node.arrivals.heartbeat(now);
        node.awaiting_reconnect = false;
        node.heartbeats += 1;
        node.host = Some(hb.host);
        node.spool_pending = hb.spool_pending;
        node.spool_dropped = hb.spool_dropped;
        node.liveness = Liveness::Alive;
        node.connected = true;
        let mut hot = Vec::new();
        for s in hb.cards {
            let i = s.index as usize;
            if let Some(c) = node.cards.get_mut(i) {
                if s.throttle_reasons & THERMAL_THROTTLE != 0 {
                    c.thermal_streak += 1;
                    if c.thermal_streak == sustain {
                        hot.push((s.index, s.temperature_c, s.throttle_reasons));
                    }
                } else {
                    c.thermal_streak = 0;
                }
                c.sample = Some(s);
            }
        }
        for (card, temp, reasons) in hot {
            self.sustained_thermal(&id, card, temp, reasons, now, fx);
        }
        if was_suspect {
            fx.push(Effect::Feed(FeedEvent::NodeAlive { node: id.clone() }));
        }
        if was_lost {
            self.node_came_back(&id, now, fx);
        }
        Ok(())
    }

    fn node_came_back(&mut self, id: &NodeId, now: Millis, fx: &mut Vec<Effect>) {
        fx.push(Effect::Feed(FeedEvent::NodeRecovered { node: id.clone() }));
        let same_boot = self.nodes.get(id).map(|n| n.boot_id.clone());
        if let Some(inc_id) = self.open.get(&(id.clone(), None)).copied()
            && let Some(inc) = self.incidents.get_mut(&inc_id)
            && matches!(inc.kind, IncidentKind::NodeLost | IncidentKind::Network)
        {
            // The same agent boot came back: the node never died, its
            // network did.
            if inc.lost_boot.is_some() && inc.lost_boot == same_boot {
                inc.kind = IncidentKind::Network;
                if inc.cause.what == CauseKind::NodeLost {
                    inc.cause.what = CauseKind::Partition;
                }
            }
            inc.add_evidence(format!("{id} heard from again at {}", Timestamp(now)));
            if self.nodes.get(id).is_some_and(|n| n.cordoned.is_some()) {
                // A cordoned (flapping) node stays an open incident until an
                // operator uncordons it.
                fx.push(Effect::incident(inc));
                return;
            }
            inc.resolve(now);
            self.open.remove(&(id.clone(), None));
            fx.push(Effect::incident(inc));
        }
    }

    fn disconnected(&mut self, id: NodeId, boot_id: String, now: Millis, fx: &mut Vec<Effect>) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.boot_id != boot_id {
            return; // an older stream of a node that has already re-registered
        }
        node.connected = false;
        if matches!(node.liveness, Liveness::Alive) {
            node.liveness = Liveness::Suspect {
                since_ms: now,
                reason: "stream closed".to_owned(),
            };
            fx.push(Effect::Feed(FeedEvent::NodeSuspect {
                node: id,
                reason: "stream closed".to_owned(),
            }));
        }
    }

    fn tick(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let mut lost = Vec::new();
        for node in self.nodes.values_mut() {
            if node.awaiting_reconnect && now < self.grace_until {
                continue; // restored, still reconnecting after our restart
            }
            let next = liveness::evaluate(
                &self.cfg.liveness,
                &node.arrivals,
                &node.liveness,
                node.last_seen_ms,
                now,
            );
            if next == node.liveness {
                continue;
            }
            match &next {
                Liveness::Suspect { reason, .. } => fx.push(Effect::Feed(FeedEvent::NodeSuspect {
                    node: node.id.clone(),
                    reason: reason.clone(),
                })),
                Liveness::Lost { last_seen_ms, .. } => {
                    fx.push(Effect::Feed(FeedEvent::NodeLost {
                        node: node.id.clone(),
                        last_seen_ms: *last_seen_ms,
                    }));
                    lost.push((node.id.clone(), *last_seen_ms));
                }
                Liveness::Alive => {}
            }
            node.liveness = next;
        }
        for (id, last_seen) in lost {
            self.node_lost(id, last_seen, now, fx);
        }
        self.check_hangs(now, fx);
        self.decay_suspects(now, fx);
    }

    fn node_lost(&mut self, id: NodeId, last_seen: Millis, now: Millis, fx: &mut Vec<Effect>) {
        let spare = self.nodes.get(&id).is_some_and(|n| n.spare);
        let boot = self
            .nodes
            .get(&id)
            .map(|n| n.boot_id.clone())
            .unwrap_or_default();
        let job = self.job_on_node(&id);
        let evidence = format!(
            "no message from {id} for {} ms (detector bound {}..{} ms)",
            now - last_seen,
            self.cfg.liveness.min_lost_ms(),
            self.cfg.liveness.lost_ms()
        );
        // Flap damping: losses of one node within the window are one incident.
        let hc = self.cfg.health;
        let losses = self.losses.entry(id.clone()).or_default();
        while losses.front().is_some_and(|t| now - t > hc.flap_window_ms) {
            losses.pop_front();
        }
        losses.push_back(now);
        let count = losses.len() as u32;
        let recent = self.incidents.values_mut().rev().find(|i| {
            i.cause.node == id
                && i.cause.card.is_none()
                && matches!(i.kind, IncidentKind::NodeLost | IncidentKind::Network)
                && i.detected_at.0 >= now - hc.flap_window_ms
        });
        if count > 1
            && let Some(inc) = recent
        {
            let inc_id = inc.id;
            inc.state = IncidentState::Open;
            inc.resolved_at = None;
            inc.folded += 1;
            inc.add_evidence(format!(
                "{evidence}; lost {count} times within {} ms",
                hc.flap_window_ms
            ));
            self.open.insert((id.clone(), None), inc_id);
            if count >= hc.flap_losses {
                inc.kind = IncidentKind::Network;
                inc.cause.what = CauseKind::Flapping;
                fx.push(Effect::incident(inc));
                self.quarantine(
                    &id,
                    None,
                    inc_id,
                    "flapping: repeatedly lost and back",
                    now,
                    fx,
                );
            } else {
                fx.push(Effect::incident(inc));
            }
            return;
        }
        let cause = Cause {
            node: id.clone(),
            card: None,
            rank: None,
            what: CauseKind::NodeLost,
        };
        let action = if spare {
            Action::None
        } else {
            Action::DrainNode
        };
        let inc = self.open_incident(
            IncidentKind::NodeLost,
            cause,
            job,
            last_seen,
            now,
            evidence,
            action,
            fx,
        );
        if let Some(i) = self.incidents.get_mut(&inc) {
            i.note_lost_boot(&boot);
        }
    }

    fn job_on_node(&self, id: &NodeId) -> Option<JobId> {
        self.jobs
            .values()
            .find(|j| j.state == JobRunState::Running && j.has_rank_on(id))
            .map(|j| j.id.clone())
            .or_else(|| self.nodes.get(id).and_then(|n| n.job.clone()))
    }

    fn job_on_card(&self, id: &NodeId, card: u32) -> (Option<JobId>, Option<u32>) {
        for j in self
            .jobs
            .values()
            .filter(|j| j.state == JobRunState::Running)
        {
            if let Some(rank) = j.rank_on(id, card) {
                return (Some(j.id.clone()), Some(rank));
            }
        }
        (self.nodes.get(id).and_then(|n| n.job.clone()), None)
    }

    /// Opens an incident for `cause`, or folds the symptom into the open one
    /// for the same root cause (the card itself, or its whole node).
    #[allow(clippy::too_many_arguments)]
    fn open_incident(
        &mut self,
        kind: IncidentKind,
        cause: Cause,
        job: Option<JobId>,
        observed_at: Millis,
        now: Millis,
        evidence: String,
        action: Action,
        fx: &mut Vec<Effect>,
    ) -> IncidentId {
        let node_key = (cause.node.clone(), None);
        let card_key = (cause.node.clone(), cause.card);
        let existing = self
            .open
            .get(&node_key)
            .or_else(|| self.open.get(&card_key))
            .copied();
        // A fault that stops the job is not folded into a weaker incident
        // at the same place (a straggler, a degraded card, a hung probe): it
        // opens its own, which takes over that place.
        let weak = |c: &Cluster, i: &Incident| match i.kind {
            IncidentKind::Straggler | IncidentKind::ProbeHung => true,
            IncidentKind::CardFault => !c.stops_job(i.kind, &i.cause.what),
            _ => false,
        };
        let takes_over = existing
            .and_then(|id| self.incidents.get(&id))
            .is_some_and(|i| weak(self, i) && self.stops_job(kind, &cause.what));
        if !takes_over
            && let Some(id) = existing
            && let Some(inc) = self.incidents.get_mut(&id)
        {
            inc.folded += 1;
            inc.add_evidence(evidence);
            fx.push(Effect::incident(inc));
            return id;
        }
        let id = IncidentId(self.next_incident);
        self.next_incident += 1;
        let mut inc = Incident {
            id,
            job,
            kind,
            state: IncidentState::Open,
            cause,
            detected_at: Timestamp(now),
            resolved_at: None,
            phases: Vec::new(),
            action: Some(action.as_str().to_owned()),
            checkpoint: None,
            lost_steps: None,
            evidence: Vec::new(),
            folded: 0,
            lost_boot: None,
        };
        inc.phase("detect", observed_at.min(now), Some(now));
        inc.phase("localize", now, Some(now));
        inc.add_evidence(evidence);
        self.open.insert(card_key, id);
        if let Some(job) = inc.job.clone()
            && action != Action::None
            && self.stops_job(kind, &inc.cause.what)
        {
            self.pending_recovery.push(id);
            let culprit = self.culprit(id, &inc.cause);
            // A hang stalls the step in flight from its start: the whole
            // stall since the last step end is detection time.
            let fault_ms = if kind == IncidentKind::Hang {
                Millis::MIN
            } else {
                observed_at.min(now)
            };
            self.ledger.fault(&job, fault_ms, now, culprit);
        }
        fx.push(Effect::Incident(
            Box::new(inc.clone()),
            IncidentChange::Opened,
        ));
        self.incidents.insert(id, inc);
        id
    }

    /// Whether an incident of this kind and signal stops the job (and so
    /// calls for a recovery). A throttled or degraded card does not.
    fn stops_job(&self, kind: IncidentKind, what: &CauseKind) -> bool {
        match kind {
            IncidentKind::CardFault => what
                .signal()
                .is_some_and(|s| self.cfg.rules.classify(s).fatal),
            IncidentKind::NodeLost | IncidentKind::Hang | IncidentKind::WorkerExit => true,
            _ => false,
        }
    }

    fn event(
        &mut self,
        id: NodeId,
        ev: AgentEvent,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Rejected> {
        let node = self.known_node(&id)?;
        node.last_seen_ms = now;
        let ncards = node.cards.len();
        match ev.body {
            EventBody::CardError {
                card,
                signal,
                detail,
            } => {
                if card as usize >= ncards {
                    return Err(Rejected::UnknownCard { node: id, card });
                }
                // The edge validated the signal name; an unknown one is ignored.
                if let Ok(signal) = signal.parse::<Signal>() {
                    self.card_error(id, card, signal, detail, ev.at_ms, now, fx);
                }
            }
            EventBody::ProbeHung {
                card,
                probe,
                waited_ms,
            } => {
                fx.push(Effect::Feed(FeedEvent::ProbeHung {
                    node: id.clone(),
                    card,
                    probe: probe.clone(),
                    waited_ms,
                }));
                // The monitor's own failure: recorded, never held against
                // the card.
                let cause = Cause {
                    node: id.clone(),
                    card: None,
                    rank: None,
                    what: CauseKind::ProbeHung {
                        probe: probe.clone(),
                    },
                };
                let evidence =
                    format!("{id}: card {card} probe '{probe}' did not answer for {waited_ms} ms");
                let job = self.job_on_node(&id);
                self.open_incident(
                    IncidentKind::ProbeHung,
                    cause,
                    job,
                    ev.at_ms.min(now),
                    now,
                    evidence,
                    Action::None,
                    fx,
                );
            }
            EventBody::WorkerExit {
                rank,
                pid,
                exit_code,
                signal,
            } => {
                fx.push(Effect::Feed(FeedEvent::WorkerExit {
                    node: id.clone(),
                    rank,
                    pid,
                    exit_code,
                    signal,
                }));
                self.worker_exit(id, pid, rank, exit_code, signal, ev.at_ms.min(now), now, fx);
            }
            EventBody::Progress(rec) => {
                // Step timing uses the agent's receipt time, which carries no
                // transport jitter; an agent clock far off ours is ignored.
                let at = if (ev.at_ms - now).abs() <= 60_000 {
                    ev.at_ms
                } else {
                    now
                };
                self.progress(id, rec, at, now, fx)
            }
            EventBody::Checkpoint(c) => self.checkpoint_report(id, c, now, fx),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn card_error(
        &mut self,
        id: NodeId,
        card: u32,
        signal: Signal,
        detail: String,
        observed_at: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let rule = self.cfg.rules.classify(signal);
        let evidence = if detail.is_empty() {
            format!("{id}/{card}: {signal}")
        } else {
            format!("{id}/{card}: {signal} ({detail})")
        };
        fx.push(Effect::Feed(FeedEvent::CardSignal {
            node: id.clone(),
            card,
            signal,
            detail,
            class: rule.class,
            action: rule.action,
        }));
        if rule.action == Action::None {
            return;
        }
        if !rule.fatal {
            if let Some(c) = self.card_mut(&id, card)
                && c.health == CardHealth::Healthy
            {
                c.health = CardHealth::Suspect {
                    since_ms: now,
                    reason: SuspectReason::Signal(signal),
                };
            }
            // Throttling counts only when sustained (see the heartbeat path).
            if signal == Signal::Thermal {
                return;
            }
        }
        let (job, rank) = self.job_on_card(&id, card);
        let cause = Cause {
            node: id.clone(),
            card: Some(card),
            rank,
            what: CauseKind::Card(signal),
        };
        let inc = self.open_incident(
            IncidentKind::CardFault,
            cause,
            job,
            observed_at,
            now,
            evidence,
            rule.action,
            fx,
        );
        // An application-class signal names where the application failed;
        // the card itself stays healthy. A non-fatal signal leaves it suspect.
        if rule.class == Class::Application || !rule.fatal {
            return;
        }
        if let Some(c) = self.card_mut(&id, card)
            && !matches!(
                c.health,
                CardHealth::Failed { .. } | CardHealth::Quarantined { .. }
            )
        {
            c.health = CardHealth::Failed {
                at_ms: now,
                signal: CauseKind::Card(signal),
                incident: inc,
            };
            fx.push(Effect::Feed(FeedEvent::CardFailed {
                node: id.clone(),
                card,
                signal,
            }));
        }
        let target = if rule.action == Action::DrainNode {
            None
        } else {
            Some(card)
        };
        self.quarantine(
            &id,
            target,
            inc,
            &format!("{signal} on card {card}"),
            now,
            fx,
        );
    }

    fn card_mut(&mut self, id: &NodeId, card: u32) -> Option<&mut CardState> {
        self.nodes
            .get_mut(id)
            .and_then(|n| n.cards.get_mut(card as usize))
    }

    /// A checkpoint report: a rank's own (progress protocol), or one from an
    /// agent's directory watcher that the layout marks complete for every
    /// rank. Either may say the agent found the checkpoint unusable.
    fn checkpoint_report(
        &mut self,
        node: NodeId,
        c: CheckpointReport,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        if !c.complete_all {
            self.progress(
                node.clone(),
                ProgressRecord::Checkpoint {
                    job: c.job.clone(),
                    rank: c.rank,
                    step: c.step,
                    path: c.path.clone(),
                    bytes: c.bytes,
                    sha256: c.sha256.clone(),
                },
                now,
                now,
                fx,
            );
        }
        let catalog = match self.jobs.get_mut(&c.job) {
            Some(j) => &mut j.checkpoints,
            None => {
                let p = self.pending_catalog.entry(c.job.clone()).or_default();
                while p.len() >= PENDING_CATALOG {
                    p.pop_first();
                }
                p
            }
        };
        let cs = catalog
            .entry(c.step)
            .or_insert_with(|| CheckpointState::new(c.step, c.path.clone()));
        let before = cs.clone();
        if let Some(why) = &c.invalid
            && cs.invalid.is_none()
        {
            cs.invalid = Some(why.clone());
            fx.push(Effect::Feed(FeedEvent::CheckpointInvalid {
                job: c.job.clone(),
                step: c.step,
                path: c.path.clone(),
                node: node.clone(),
                reason: why.clone(),
            }));
        }
        if c.complete_all && !cs.complete {
            cs.complete = true;
            cs.source = c.source.clone().unwrap_or_else(|| "watcher".to_owned());
            if cs.invalid.is_none() {
                fx.push(Effect::Feed(FeedEvent::CheckpointComplete {
                    job: c.job.clone(),
                    step: c.step,
                    path: cs.path.clone(),
                    source: cs.source.clone(),
                }));
            }
        }
        if *cs != before && (cs.complete || cs.invalid.is_some()) {
            fx.push(Effect::Checkpoint {
                job: c.job.clone(),
                state: cs.clone(),
            });
        }
    }

    fn progress(
        &mut self,
        node: NodeId,
        rec: ProgressRecord,
        at: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let job_id = rec.job().clone();
        let rank = rec.rank();
        if let ProgressRecord::Start {
            world_size,
            card,
            pid,
            ..
        } = &rec
        {
            let model = card.and_then(|c| {
                self.nodes
                    .get(&node)
                    .and_then(|n| n.cards.get(c as usize))
                    .map(|c| c.info.model.clone())
            });
            let pending = &mut self.pending_catalog;
            let job = self.jobs.entry(job_id.clone()).or_insert_with(|| {
                fx.push(Effect::Feed(FeedEvent::JobStarted {
                    job: job_id.clone(),
                    world_size: *world_size,
                }));
                let mut j = JobState::new(job_id.clone(), *world_size, now);
                j.checkpoints = pending.remove(&job_id).unwrap_or_default();
                j
            });
            job.world_size = *world_size;
            job.state = JobRunState::Running;
            let group = job.model_group(model.as_deref().unwrap_or("unknown"));
            job.timing.set_group(rank, group);
            let r = job.ranks.entry(rank).or_insert_with(|| RankState {
                node: node.clone(),
                card: *card,
                pid: *pid,
                step: 0,
                phase: Phase::End,
                at_ms: now,
                ended: None,
            });
            r.node = node;
            r.card = *card;
            r.pid = *pid;
            r.ended = None;
            r.at_ms = now;
            if self.recoveries.contains_key(&job_id) {
                self.rank_started(&job_id, rank);
            }
            return;
        }
        // Records of a job whose `start` records were never seen (the job
        // started before this controller, or its agent restarted) still
        // count: the job is created and sized by the highest rank seen, and
        // the rank is placed on the sending node with an unknown card.
        let wcfg = self.cfg.workload;
        let job = self.jobs.entry(job_id.clone()).or_insert_with(|| {
            let mut j = JobState::new(job_id.clone(), rank + 1, now);
            j.checkpoints = self.pending_catalog.remove(&job_id).unwrap_or_default();
            j
        });
        job.world_size = job.world_size.max(rank + 1);
        let r = job.ranks.entry(rank).or_insert_with(|| RankState {
            node: node.clone(),
            card: None,
            pid: None,
            step: 0,
            phase: Phase::End,
            at_ms: now,
            ended: None,
        });
        r.at_ms = now;
        let mut verdict = None;
        let mut ended_step = None;
        match rec {
            ProgressRecord::Step {
                step,
                phase,
                samples,
                tokens,
                ..
            } => {
                r.step = step;
                r.phase = phase;
                job.last_progress_ms = now;
                match phase {
                    Phase::Begin => job.timing.on_begin(rank, step, at),
                    Phase::Collective => job.timing.on_collective(rank, step, at),
                    Phase::End => {
                        ended_step = Some(step);
                        job.steps_total += 1;
                        job.samples_total += samples.unwrap_or(0);
                        job.tokens_total += tokens.unwrap_or(0);
                        verdict = job.timing.on_end(rank, step, at, &wcfg);
                        if verdict.is_some() {
                            job.hung = false;
                        }
                        if step > job.step {
                            job.step = step;
                            self.ledger
                                .step(&job_id, job.world_size, job.started_at_ms, step, at);
                            if step % PROGRESS_FEED_EVERY == 0 {
                                fx.push(Effect::Feed(FeedEvent::JobProgress {
                                    job: job.id.clone(),
                                    step,
                                }));
                            }
                        }
                    }
                }
            }
            ProgressRecord::Checkpoint { step, path, .. } => {
                job.timing.on_checkpoint(at);
                self.ledger.checkpoint(&job_id, at);
                let world = job.world_size;
                let c = job
                    .checkpoints
                    .entry(step)
                    .or_insert_with(|| CheckpointState::new(step, path.clone()));
                c.ranks.insert(rank);
                if !c.complete && c.ranks.len() as u32 >= world {
                    c.complete = true;
                    fx.push(Effect::Checkpoint {
                        job: job_id.clone(),
                        state: c.clone(),
                    });
                    if c.invalid.is_none() {
                        fx.push(Effect::Feed(FeedEvent::CheckpointComplete {
                            job: job.id.clone(),
                            step,
                            path: c.path.clone(),
                            source: c.source.clone(),
                        }));
                    }
                }
            }
            ProgressRecord::End { status, .. } => {
                r.ended = Some(status);
                if job.ranks.len() as u32 >= job.world_size
                    && job.ranks.values().all(|r| r.ended.is_some())
                {
                    let ok = job.ranks.values().all(|r| r.ended.as_deref() == Some("ok"));
                    job.state = if ok {
                        JobRunState::Finished
                    } else {
                        JobRunState::Failed
                    };
                    self.ledger.ended(&job_id, now);
                    fx.push(Effect::Feed(FeedEvent::JobEnded {
                        job: job.id.clone(),
                        state: job.state,
                        step: job.step,
                    }));
                }
            }
            ProgressRecord::Start { .. } => {}
        }
        if let Some(v) = verdict {
            self.step_verdict(&job_id, v, now, fx);
        }
        if let Some(step) = ended_step
            && self.recoveries.contains_key(&job_id)
        {
            self.step_ended(&job_id, rank, step, now, fx);
        }
    }

    /// Acts on what a finished step told the workload detectors.
    fn step_verdict(&mut self, job_id: &JobId, v: StepVerdict, now: Millis, fx: &mut Vec<Effect>) {
        if let Some(slow) = v.slowdown {
            fx.push(Effect::Feed(match slow {
                Some(factor) => FeedEvent::JobSlowdown {
                    job: job_id.clone(),
                    factor,
                },
                None => FeedEvent::JobSpeedRecovered {
                    job: job_id.clone(),
                },
            }));
        }
        for (rank, factor) in v.new_stragglers {
            let Some((node, card)) = self.rank_place(job_id, rank) else {
                continue;
            };
            let cause = Cause {
                node: node.clone(),
                card,
                rank: Some(rank),
                what: CauseKind::Straggler { factor },
            };
            let evidence = format!(
                "rank {rank} on {node}/{} computes {factor:.2}x as long as its peers of the same card model",
                card.map_or("?".to_owned(), |c| c.to_string())
            );
            let id = self.open_incident(
                IncidentKind::Straggler,
                cause.clone(),
                Some(job_id.clone()),
                now,
                now,
                evidence,
                Action::None,
                fx,
            );
            let culprit = self.culprit(id, &cause);
            self.ledger
                .straggler(job_id, Some(culprit), self.cfg.workload.straggler_window);
            if let Some(c) = card.and_then(|c| self.card_mut(&node, c))
                && c.health == CardHealth::Healthy
            {
                c.health = CardHealth::Suspect {
                    since_ms: now,
                    reason: SuspectReason::Straggler { factor },
                };
            }
        }
        for rank in v.recovered {
            let Some((node, card)) = self.rank_place(job_id, rank) else {
                continue;
            };
            if let Some(id) = self.open.get(&(node.clone(), card)).copied()
                && let Some(inc) = self.incidents.get_mut(&id)
                && inc.kind == IncidentKind::Straggler
            {
                inc.add_evidence(format!("rank {rank} back to its peers' speed"));
                self.ledger.straggler(job_id, None, 0);
                inc.resolve(now);
                self.open.remove(&(node.clone(), card));
                fx.push(Effect::incident(inc));
            }
            if let Some(c) = card.and_then(|c| self.card_mut(&node, c))
                && matches!(
                    c.health,
                    CardHealth::Suspect {
                        reason: SuspectReason::Straggler { .. },
                        ..
                    }
                )
            {
                c.health = CardHealth::Healthy;
            }
        }
    }

    fn rank_place(&self, job: &JobId, rank: u32) -> Option<(NodeId, Option<u32>)> {
        self.jobs
            .get(job)
            .and_then(|j| j.ranks.get(&rank))
            .map(|r| (r.node.clone(), r.card))
    }

    /// Hang detection: a running job without progress past its deadline.
    fn check_hangs(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let wcfg = self.cfg.workload;
        let mut hung = Vec::new();
        for job in self.jobs.values_mut() {
            if job.state != JobRunState::Running
                || job.hung
                || job.steps_total == 0
                || self.recoveries.contains_key(&job.id)
            {
                continue;
            }
            let silence = now - job.last_progress_ms;
            let deadline = job.timing.hang_deadline_ms(&wcfg);
            if silence < deadline {
                continue;
            }
            job.hung = true;
            let laggards = job.timing.laggards(job.world_size);
            let places: Vec<(u32, NodeId, Option<u32>)> = laggards
                .iter()
                .filter_map(|r| job.ranks.get(r).map(|x| (*r, x.node.clone(), x.card)))
                .collect();
            hung.push((
                job.id.clone(),
                job.last_progress_ms,
                silence,
                deadline,
                places,
            ));
        }
        for (job, since, silence, deadline, places) in hung {
            self.localize_hang(job, since, silence, deadline, places, now, fx);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn localize_hang(
        &mut self,
        job: JobId,
        since: Millis,
        silence: Millis,
        deadline: Millis,
        places: Vec<(u32, NodeId, Option<u32>)>,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let why = format!("no progress from job {job} for {silence} ms (deadline {deadline} ms)");
        if !places.is_empty() {
            // Group the ranks that missed the collective by node: several on
            // one node point at the node, one points at its card.
            let mut by_node: BTreeMap<NodeId, Vec<(u32, Option<u32>)>> = BTreeMap::new();
            for (rank, node, card) in places {
                by_node.entry(node).or_default().push((rank, card));
            }
            for (node, ranks) in by_node.into_iter().take(8) {
                let (card, rank) = match ranks.as_slice() {
                    [(rank, card)] => (*card, Some(*rank)),
                    _ => (None, None),
                };
                let list: Vec<String> = ranks.iter().map(|(r, _)| r.to_string()).collect();
                let evidence = format!(
                    "{why}; rank(s) {} on {node} never reached the collective",
                    list.join(",")
                );
                let cause = Cause {
                    node,
                    card,
                    rank,
                    what: CauseKind::Hang(HangClue::Collective),
                };
                self.open_incident(
                    IncidentKind::Hang,
                    cause,
                    Some(job.clone()),
                    since,
                    now,
                    evidence,
                    Action::RestartApp,
                    fx,
                );
            }
            return;
        }
        // No phase information: fall back to card and node signals of the
        // job's ranks, then to the node whose ranks went silent first.
        let Some(j) = self.jobs.get(&job) else { return };
        let mut suspect: Option<(NodeId, Option<u32>, Option<u32>, HangClue)> = None;
        for (rank, r) in &j.ranks {
            let node = self.nodes.get(&r.node);
            if node.is_some_and(|n| {
                matches!(n.liveness, Liveness::Lost { .. } | Liveness::Suspect { .. })
            }) {
                suspect = Some((r.node.clone(), None, None, HangClue::NodeSilent));
                break;
            }
            let failed = r
                .card
                .and_then(|c| node.and_then(|n| n.cards.get(c as usize)))
                .is_some_and(|c| {
                    matches!(
                        c.health,
                        CardHealth::Failed { .. } | CardHealth::Suspect { .. }
                    )
                });
            if failed {
                suspect = Some((r.node.clone(), r.card, Some(*rank), HangClue::CardSignal));
                break;
            }
        }
        let (node, card, rank, clue) = match suspect {
            Some(s) => s,
            None => match j.ranks.iter().min_by_key(|(_, r)| r.at_ms) {
                Some((rank, r)) => (
                    r.node.clone(),
                    None,
                    None,
                    HangClue::SilentFirst { rank: *rank },
                ),
                None => return,
            },
        };
        let cause = Cause {
            node,
            card,
            rank,
            what: CauseKind::Hang(clue),
        };
        self.open_incident(
            IncidentKind::Hang,
            cause,
            Some(job),
            since,
            now,
            why,
            Action::RestartApp,
            fx,
        );
    }

    /// A worker process ended. The first rank of a job to fail is the
    /// culprit; ranks that fail after it are symptoms folded into its incident.
    #[allow(clippy::too_many_arguments)]
    fn worker_exit(
        &mut self,
        node: NodeId,
        pid: u32,
        rank: Option<u32>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        at: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        if exit_code == Some(0) {
            return;
        }
        // A supervisor knows the process, not the rank: match its pid
        // against the ranks' start records.
        let rank = rank.or_else(|| {
            self.jobs.values().find_map(|j| {
                j.ranks
                    .iter()
                    .find(|(_, r)| r.node == node && pid != 0 && r.pid == Some(pid))
                    .map(|(rank, _)| *rank)
            })
        });
        // During a recovery, exits are expected: ordered stops end workers
        // with SIGTERM or SIGKILL; a worker that fails while restoring could
        // not load its checkpoint.
        let recovering = self
            .recoveries
            .values()
            .find(|r| {
                self.nodes
                    .get(&node)
                    .is_some_and(|n| n.job.as_ref() == Some(&r.job))
            })
            .map(|r| (r.job.clone(), r.phase));
        if let Some((job, phase)) = recovering {
            if matches!(signal, Some(9 | 15)) {
                return;
            }
            if phase == RecoveryPhase::Restore {
                self.restore_failed(&job, now, fx);
            }
            return;
        }
        // Which job and card: by rank, or by the node's only running job.
        let job_id = self
            .jobs
            .values()
            .find(|j| {
                j.state == JobRunState::Running
                    && rank.is_some_and(|r| j.ranks.get(&r).is_some_and(|x| x.node == node))
            })
            .map(|j| j.id.clone())
            .or_else(|| self.job_on_node(&node));
        let card = match (&job_id, rank) {
            (Some(j), Some(r)) => self.rank_place(j, r).and_then(|(_, c)| c),
            _ => None,
        };
        let how = ExitStatus::new(exit_code, signal);
        let evidence = format!(
            "rank {} on {node} exited ({how})",
            rank.map_or("?".to_owned(), |r| r.to_string())
        );
        let window = self.cfg.workload.hang_floor_ms;
        if let Some(j) = job_id.as_ref().and_then(|j| self.jobs.get(j))
            && let Some((id, first_at)) = j.exit_incident
            && let Some(inc) = self.incidents.get_mut(&id)
            && inc.state == IncidentState::Open
            && (at - first_at).abs() <= window
        {
            inc.folded += 1;
            inc.add_evidence(evidence);
            if at < first_at {
                // This one failed first: it is the culprit.
                self.open.remove(&(inc.cause.node.clone(), inc.cause.card));
                inc.cause = Cause {
                    node: node.clone(),
                    card,
                    rank,
                    what: CauseKind::Exit(how),
                };
                self.open.insert((node, card), id);
                if let Some(jid) = &job_id
                    && let Some(j) = self.jobs.get_mut(jid)
                {
                    j.exit_incident = Some((id, at));
                }
            }
            fx.push(Effect::incident(inc));
            return;
        }
        let cause = Cause {
            node,
            card,
            rank,
            what: CauseKind::Exit(how),
        };
        let id = self.open_incident(
            IncidentKind::WorkerExit,
            cause,
            job_id.clone(),
            at,
            now,
            evidence,
            Action::RestartApp,
            fx,
        );
        if let Some(j) = job_id.and_then(|j| self.jobs.get_mut(&j)) {
            j.exit_incident = Some((id, at));
        }
    }
}

fn new_card(info: CardInfo) -> CardState {
    CardState {
        info,
        health: CardHealth::Healthy,
        sample: None,
        thermal_streak: 0,
    }
}

fn new_node(reg: Registration, now: Millis) -> NodeState {
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

mod recovery;
mod safety;

pub use recovery::{Recovery, RecoveryPhase, WorkerCommand};

#[cfg(test)]
mod tests;
