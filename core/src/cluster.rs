//! Cluster state and the decisions taken on it.
//!
//! [`Cluster::apply`] is the single transition function: it takes one input
//! (a registration, heartbeat, event, disconnection or clock tick) and the
//! current time, updates the state and returns the effects for the shell to
//! carry out (persist an incident, publish a feed event). It never does IO.
//!
//! The decisions are split by what they own:
//! - `nodes`: the registry, heartbeats, liveness, node loss with flap
//!   damping, and partition versus crash;
//! - `cards`: card signals;
//! - `jobs`: progress records, the checkpoint catalog, and the hang,
//!   straggler and worker-exit detectors;
//! - `incidents`: one open incident per root cause, and folding;
//! - `safety`: quarantine behind the circuit breaker, cordons, sustained
//!   throttling and the quiet period;
//! - `recovery`: one recovery per job.
//!
//! `config`, `state` and `effect` hold the settings, the state types and
//! the inputs and effects.

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

/// The whole cluster as the controller sees it.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    cfg: ClusterConfig,
    nodes: BTreeMap<NodeId, NodeState>,
    jobs: BTreeMap<JobId, JobState>,
    /// Every incident, and the open one per root cause.
    book: IncidentBook,
    /// Until then, restored nodes that have not reconnected are not judged.
    grace_until: Millis,
    /// The automatic-quarantine circuit breaker.
    breaker: Breaker,
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
            if inc.state == IncidentState::Open
                && let (Some(card), Some(node)) =
                    (inc.cause.card, self.nodes.get_mut(&inc.cause.node))
                && let Some(c) = node.cards.get_mut(card as usize)
            {
                c.health = CardHealth::Failed {
                    at_ms: inc.detected_at.0,
                    signal: inc.cause.what.clone(),
                    incident: inc.id,
                };
            }
            self.book.restore(inc);
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
        self.book.iter()
    }

    pub fn incident(&self, id: IncidentId) -> Option<&Incident> {
        self.book.get(&id)
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
                self.card_error(id, card, signal, detail, ev.at_ms, now, fx);
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
}

mod cards;
mod config;
mod effect;
mod incidents;
mod jobs;
mod nodes;
mod recovery;
mod safety;
mod state;

pub use config::{BreakerConfig, ClusterConfig, HealthConfig};
pub use effect::{ActionRequest, ActionVerb, Effect, Input, Registration, Rejected};
use incidents::IncidentBook;
pub use recovery::{Recovery, RecoveryPhase, WorkerCommand};
use safety::Breaker;
pub use state::{
    CardHealth, CardState, CheckpointState, JobRunState, JobState, NodeState, RankState,
    SuspectReason,
};
use state::{PENDING_CATALOG, new_card, new_node};

#[cfg(test)]
mod tests;
