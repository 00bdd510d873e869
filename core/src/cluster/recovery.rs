//! Recovery orchestration: carry a job from a fault back to training.
//!
//! One recovery per job at a time, as a state machine driven by the same
//! inputs as the rest of the cluster:
//!
//! 1. **isolate**: stop the job's workers on every reachable node (the
//!    faulty card or node is already quarantined by then);
//! 2. **capacity**: restart in place when no hardware left the job;
//!    otherwise give each lost, cordoned or quarantined node's ranks to an
//!    idle spare, or wait (recorded) until one joins;
//! 3. **restore**: start the workers everywhere from the newest complete
//!    checkpoint; a restore that fails (the workers exit) marks that
//!    checkpoint unreadable and falls back to the previous complete one;
//! 4. **resume**: the first step that ends after the restore resolves the
//!    incident, with the checkpoint used and the steps lost.
//!
//! Only supervised jobs (agents started with `--job`) are orchestrated; for
//! others the incident records what should be done.

use super::*;
use crate::incident::CheckpointRef;

/// Where a recovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryPhase {
    Isolate,
    WaitingForCapacity,
    Restore,
    Resume,
}

/// An order for an agent's worker supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerCommand {
    Stop {
        grace_s: u32,
    },
    Start {
        resume_from: String,
        restart_count: u32,
        replaces: String,
    },
}

/// One job's recovery. It is persisted (as an effect) before any order it
/// implies is sent, so a restarted controller carries it on without a
/// second restore.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Recovery {
    pub job: JobId,
    /// The incident that started it, then any that joined.
    pub incidents: Vec<IncidentId>,
    pub phase: RecoveryPhase,
    pub since_ms: Millis,
    /// Nodes handed to a spare: lost or cordoned node -> spare.
    pub replacements: BTreeMap<NodeId, NodeId>,
    pub checkpoint: Option<CheckpointRef>,
    pub bad_checkpoints: Vec<u64>,
    pub restart_count: u32,
    /// Highest step finished before the fault.
    pub failed_at_step: u64,
    /// Ranks that reported `start` since the latest restore began: only
    /// their steps prove the job resumed (records of the stopped processes
    /// may still be in flight).
    pub restarted: std::collections::BTreeSet<u32>,
}

/// Seconds between SIGTERM and SIGKILL when stopping workers.
const STOP_GRACE_S: u32 = 10;

impl Cluster {
    /// The recoveries in progress.
    pub fn recoveries(&self) -> impl Iterator<Item = &Recovery> {
        self.recoveries.values()
    }

    fn supervised(&self, job: &JobId) -> bool {
        self.nodes
            .values()
            .any(|n| n.job.as_ref() == Some(job) && n.supervises)
    }

    /// Nodes running the job, in the current placement.
    fn placement(&self, job: &JobId) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.job.as_ref() == Some(job))
            .map(|n| n.id.clone())
            .collect()
    }

    fn node_usable(&self, id: &NodeId) -> bool {
        self.nodes.get(id).is_some_and(|n| {
            !matches!(n.liveness, Liveness::Lost { .. })
                && n.cordoned.is_none()
                && n.cards.iter().all(|c| {
                    !matches!(
                        c.health,
                        CardHealth::Failed { .. } | CardHealth::Quarantined { .. }
                    )
                })
        })
    }

    /// Starts or extends recoveries for newly opened incidents, and moves
    /// every recovery on as far as it can go now.
    pub(super) fn drive_recoveries(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        for id in std::mem::take(&mut self.pending_recovery) {
            let Some(inc) = self.book.get(&id) else {
                continue;
            };
            let Some(job) = inc.job.clone() else { continue };
            if inc.state != IncidentState::Open {
                continue;
            }
            if self.cfg.shadow {
                self.shadow_plan(id, &job, fx);
                continue;
            }
            if !self.supervised(&job) {
                self.external_restart(id, &job, fx);
                continue;
            }
            let failed_at = self.jobs.get(&job).map_or(0, |j| j.step);
            match self.recoveries.get_mut(&job) {
                Some(r) => {
                    // A fault during recovery: start over with the new
                    // picture, keeping one recovery for the job.
                    if !r.incidents.contains(&id) {
                        r.incidents.push(id);
                    }
                    r.phase = RecoveryPhase::Isolate;
                    r.since_ms = now;
                }
                None => {
                    self.recoveries.insert(
                        job.clone(),
                        Recovery {
                            job: job.clone(),
                            incidents: vec![id],
                            phase: RecoveryPhase::Isolate,
                            since_ms: now,
                            replacements: BTreeMap::new(),
                            checkpoint: None,
                            bad_checkpoints: Vec::new(),
                            restart_count: 0,
                            failed_at_step: failed_at,
                            restarted: std::collections::BTreeSet::new(),
                        },
                    );
                }
            }
        }
        let jobs: Vec<JobId> = self.recoveries.keys().cloned().collect();
        for job in jobs {
            self.advance(&job, now, fx);
        }
    }

    fn newest_usable(&self, job: &JobId, skip: &[u64]) -> Option<CheckpointRef> {
        self.jobs.get(job).and_then(|j| {
            j.checkpoints
                .values()
                .rev()
                .find(|c| c.usable() && !skip.contains(&c.step))
                .map(|c| CheckpointRef {
                    step: c.step,
                    path: c.path.clone(),
                })
        })
    }

    /// A job no agent supervises: the action back-ends are asked to restart
    /// it (Slurm requeue, Kubernetes pod deletion, the exec hook), once per
    /// incident; the incident records the request.
    fn external_restart(&mut self, id: IncidentId, job: &JobId, fx: &mut Vec<Effect>) {
        let checkpoint = self.newest_usable(job, &[]);
        let Some(inc) = self.book.get_mut(&id) else {
            return;
        };
        let reason = format!("{} {}", inc.kind.as_str(), inc.cause.what);
        inc.add_evidence(match &checkpoint {
            Some(c) => format!(
                "asked the action back-ends to restart {job} (newest complete checkpoint: step {})",
                c.step
            ),
            None => format!("asked the action back-ends to restart {job} (no complete checkpoint)"),
        });
        inc.checkpoint = checkpoint.clone();
        fx.push(Effect::incident(inc));
        fx.push(Effect::Action(Box::new(ActionRequest {
            verb: ActionVerb::Restart,
            incident: Some(id),
            job: Some(job.clone()),
            node: Some(inc.cause.node.clone()),
            card: inc.cause.card,
            reason,
            checkpoint,
        })));
    }

    /// Shadow mode: record the recovery that would run, and run none.
    fn shadow_plan(&mut self, id: IncidentId, job: &JobId, fx: &mut Vec<Effect>) {
        let checkpoint = self.newest_usable(job, &[]);
        let placement = self.placement(job);
        let broken: Vec<NodeId> = placement
            .iter()
            .filter(|n| !self.node_usable(n))
            .cloned()
            .collect();
        let spares: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.spare && n.job.is_none() && self.node_usable(&n.id))
            .map(|n| n.id.clone())
            .collect();
        let supervised = self.supervised(job);
        let mut plan = Vec::new();
        if supervised {
            plan.push(format!(
                "stop the workers of {job} on {} node(s)",
                placement.len()
            ));
            if broken.is_empty() {
                plan.push("restart in place".to_owned());
            } else if broken.len() <= spares.len() {
                for (old, spare) in broken.iter().zip(&spares) {
                    plan.push(format!("replace {old} with spare {spare}"));
                }
            } else {
                plan.push(format!(
                    "wait for {} spare node(s) ({} idle)",
                    broken.len(),
                    spares.len()
                ));
            }
        } else {
            plan.push(format!("ask the action back-ends to restart {job}"));
        }
        plan.push(match &checkpoint {
            Some(c) => format!("restore from checkpoint step {} ({})", c.step, c.path),
            None => "restart from scratch (no complete checkpoint)".to_owned(),
        });
        let Some(inc) = self.book.get_mut(&id) else {
            return;
        };
        inc.add_evidence(format!("shadow mode, not done: {}", plan.join("; ")));
        inc.checkpoint = checkpoint.clone();
        fx.push(Effect::incident(inc));
        fx.push(Effect::Feed(FeedEvent::ShadowAction {
            incident: id,
            job: job.clone(),
            plan,
            checkpoint,
        }));
    }

    fn note(&mut self, job: &JobId, f: impl Fn(&mut Incident)) -> Vec<Effect> {
        let ids = self
            .recoveries
            .get(job)
            .map(|r| r.incidents.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for id in ids {
            if let Some(inc) = self.book.get_mut(&id) {
                f(inc);
                out.push(Effect::incident(inc));
            }
        }
        out
    }

    fn advance(&mut self, job: &JobId, now: Millis, fx: &mut Vec<Effect>) {
        let Some(r) = self.recoveries.get(job).cloned() else {
            return;
        };
        match r.phase {
            RecoveryPhase::Isolate => self.isolate(job, now, fx),
            RecoveryPhase::WaitingForCapacity => self.find_capacity(job, &r, now, fx),
            RecoveryPhase::Restore => {}
            RecoveryPhase::Resume => {}
        }
    }

    /// Stops the job's workers on every reachable node.
    fn isolate(&mut self, job: &JobId, now: Millis, fx: &mut Vec<Effect>) {
        self.set_phase(job, RecoveryPhase::WaitingForCapacity, now);
        self.persist(job, fx);
        for node in self.placement(job) {
            if self
                .nodes
                .get(&node)
                .is_some_and(|n| !matches!(n.liveness, Liveness::Lost { .. }))
            {
                fx.push(Effect::Worker {
                    node,
                    command: WorkerCommand::Stop {
                        grace_s: STOP_GRACE_S,
                    },
                });
            }
        }
        let ev = self.note(job, |inc| {
            if !inc.phases.iter().any(|p| p.name == "isolate") {
                inc.phase("isolate", now, Some(now));
            }
            inc.add_evidence(format!("stopped the job's workers at {}", Timestamp(now)));
        });
        fx.extend(ev);
        self.advance(job, now, fx);
    }

    /// Gives each broken node's ranks to an idle spare and restores, or
    /// waits (recorded) until there are enough spares.
    fn find_capacity(&mut self, job: &JobId, r: &Recovery, now: Millis, fx: &mut Vec<Effect>) {
        let broken: Vec<NodeId> = self
            .placement(job)
            .into_iter()
            .filter(|n| !self.node_usable(n))
            .collect();
        let mut idle: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.spare && n.supervises && n.job.is_none() && self.node_usable(&n.id))
            .map(|n| n.id.clone())
            .collect();
        if broken.len() > idle.len() {
            let waiting = r.incidents.iter().any(|id| {
                self.book.get(id).is_some_and(|i| {
                    i.phases
                        .iter()
                        .any(|p| p.name == "waiting_for_capacity" && p.end.is_none())
                })
            });
            if !waiting {
                self.ledger.waiting(job, now, true);
                let need = broken.len();
                let ev = self.note(job, |inc| {
                    inc.phase("waiting_for_capacity", now, None);
                    inc.add_evidence(format!("waiting for {need} spare node(s)"));
                });
                fx.extend(ev);
                fx.push(Effect::Feed(FeedEvent::WaitingForCapacity {
                    job: job.clone(),
                    need: broken.len(),
                    idle_spares: idle.len(),
                }));
            }
            return;
        }
        let mut replaced = Vec::new();
        for old in broken {
            let Some(spare) = idle.pop() else { break };
            if let Some(n) = self.nodes.get_mut(&spare) {
                n.job = Some(job.clone());
                n.spare = false;
                n.role_assigned = true;
            }
            if let Some(n) = self.nodes.get_mut(&old) {
                n.job = None;
                n.role_assigned = true;
            }
            fx.push(Effect::NodeRole {
                node: spare.clone(),
                job: Some(job.clone()),
                spare: false,
            });
            fx.push(Effect::NodeRole {
                node: old.clone(),
                job: None,
                spare: self.nodes.get(&old).is_some_and(|n| n.spare),
            });
            replaced.push((old.clone(), spare.clone()));
            if let Some(rec) = self.recoveries.get_mut(job) {
                rec.replacements.insert(old, spare);
            }
        }
        let action = if replaced.is_empty() {
            "restart_in_place"
        } else {
            "replace_node"
        };
        self.ledger.waiting(job, now, false);
        let ev = self.note(job, |inc| {
            for p in inc
                .phases
                .iter_mut()
                .filter(|p| p.name == "waiting_for_capacity" && p.end.is_none())
            {
                p.end = Some(Timestamp(now));
            }
            inc.action = Some(action.to_owned());
            for (old, spare) in &replaced {
                inc.add_evidence(format!("spare {spare} replaces {old}"));
            }
        });
        fx.extend(ev);
        self.set_phase(job, RecoveryPhase::Restore, now);
        self.start_workers(job, now, fx);
    }

    /// A node of a job in restore (re)connected: repeat its start order.
    /// Its supervisor ignores an order for the restart it already runs, so
    /// this is never a second restore; it covers orders lost when the
    /// controller died while sending them.
    pub(super) fn reorder_restoring(&mut self, node: &NodeId, fx: &mut Vec<Effect>) {
        let Some(job) = self.nodes.get(node).and_then(|n| n.job.clone()) else {
            return;
        };
        let Some(r) = self.recoveries.get(&job) else {
            return;
        };
        if r.phase != RecoveryPhase::Restore {
            return;
        }
        let replaces = r
            .replacements
            .iter()
            .find(|(_, spare)| *spare == node)
            .map(|(old, _)| old.to_string())
            .unwrap_or_default();
        fx.push(Effect::Worker {
            node: node.clone(),
            command: WorkerCommand::Start {
                resume_from: r
                    .checkpoint
                    .as_ref()
                    .map(|c| c.path.clone())
                    .unwrap_or_default(),
                restart_count: r.restart_count,
                replaces,
            },
        });
    }

    /// Asks the shell to store the recovery durably before the effects after
    /// this one are carried out.
    fn persist(&self, job: &JobId, fx: &mut Vec<Effect>) {
        if let Some(r) = self.recoveries.get(job) {
            fx.push(Effect::Recovery(Box::new(r.clone())));
        }
    }

    /// Recoveries stored by a previous controller, carried on where they
    /// were. One whose workers were already ordered to start waits for the
    /// job to resume and is never restored a second time.
    pub fn restore_recoveries(&mut self, recoveries: Vec<Recovery>) {
        for r in recoveries {
            let live = r.incidents.iter().any(|id| {
                self.book
                    .get(id)
                    .is_some_and(|i| i.state == IncidentState::Open)
            });
            if live {
                self.recoveries.insert(r.job.clone(), r);
            }
        }
    }

    fn set_phase(&mut self, job: &JobId, phase: RecoveryPhase, now: Millis) {
        if let Some(r) = self.recoveries.get_mut(job) {
            r.phase = phase;
            r.since_ms = now;
        }
    }

    /// Orders every node of the job to start from the newest usable checkpoint.
    fn start_workers(&mut self, job: &JobId, now: Millis, fx: &mut Vec<Effect>) {
        let Some(r) = self.recoveries.get(job).cloned() else {
            return;
        };
        let ckpt = self.newest_usable(job, &r.bad_checkpoints);
        // Counted per job across recoveries (VIGIL_RESTART_COUNT).
        let restart_count = self.jobs.get(job).map_or(0, |j| j.restarts) + 1;
        let replaced_by: BTreeMap<NodeId, NodeId> = r
            .replacements
            .iter()
            .map(|(a, b)| (b.clone(), a.clone()))
            .collect();
        if let Some(rec) = self.recoveries.get_mut(job) {
            rec.checkpoint = ckpt.clone();
            rec.restart_count = restart_count;
            rec.restarted.clear();
        }
        // Write ahead: the restore is on record before any order goes out.
        self.persist(job, fx);
        for node in self.placement(job) {
            fx.push(Effect::Worker {
                command: WorkerCommand::Start {
                    resume_from: ckpt.as_ref().map(|c| c.path.clone()).unwrap_or_default(),
                    restart_count,
                    replaces: replaced_by
                        .get(&node)
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                },
                node,
            });
        }
        if let Some(rec) = self.recoveries.get_mut(job) {
            rec.checkpoint = ckpt.clone();
            rec.restart_count = restart_count;
            rec.restarted.clear();
        }
        self.ledger.restored(job, ckpt.as_ref().map(|c| c.step));
        if let Some(j) = self.jobs.get_mut(job) {
            j.restarts += 1;
            j.restored_from = ckpt.as_ref().map(|c| c.step);
            // Progress after the checkpoint is thrown away.
            j.step = ckpt.as_ref().map_or(0, |c| c.step);
        }
        let ev = self.note(job, |inc| {
            if !inc
                .phases
                .iter()
                .any(|p| p.name == "restore" && p.end.is_none())
            {
                inc.phase("restore", now, None);
            }
            inc.checkpoint = ckpt.clone();
            inc.add_evidence(match &ckpt {
                Some(c) => format!("restarting from checkpoint step {} ({})", c.step, c.path),
                None => "restarting from scratch: no complete checkpoint".to_owned(),
            });
        });
        fx.extend(ev);
        fx.push(Effect::Feed(FeedEvent::RecoveryRestore {
            job: job.clone(),
            checkpoint: ckpt,
            restart: restart_count,
        }));
    }

    /// A worker of a job in restore exited: the checkpoint could not be
    /// loaded. Fall back to the previous complete one.
    pub(super) fn restore_failed(
        &mut self,
        job: &JobId,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let Some(r) = self.recoveries.get_mut(job) else {
            return false;
        };
        if r.phase != RecoveryPhase::Restore {
            return false;
        }
        let Some(bad) = r.checkpoint.clone() else {
            return false;
        };
        r.bad_checkpoints.push(bad.step);
        let ev = self.note(job, |inc| {
            inc.add_evidence(format!(
                "checkpoint step {} could not be restored; falling back",
                bad.step
            ));
        });
        fx.extend(ev);
        for node in self.placement(job) {
            fx.push(Effect::Worker {
                node,
                command: WorkerCommand::Stop {
                    grace_s: STOP_GRACE_S,
                },
            });
        }
        self.start_workers(job, now, fx);
        true
    }

    /// A step ended: a job in restore has resumed.
    /// A rank of a job in restore started: the restored processes are up.
    pub(super) fn rank_started(&mut self, job: &JobId, rank: u32) {
        let Some(r) = self.recoveries.get_mut(job) else {
            return;
        };
        if r.phase != RecoveryPhase::Restore {
            return;
        }
        if r.restarted.is_empty()
            && let Some(j) = self.jobs.get_mut(job)
        {
            // Steps count again from the checkpoint.
            j.timing.restart();
        }
        r.restarted.insert(rank);
    }

    /// A rank finished a step: a job in restore has resumed once a restored
    /// rank finishes a step past the checkpoint.
    pub(super) fn step_ended(
        &mut self,
        job: &JobId,
        rank: u32,
        step: u64,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let Some(r) = self.recoveries.get(job).cloned() else {
            return;
        };
        if r.phase != RecoveryPhase::Restore || !r.restarted.contains(&rank) {
            return;
        }
        let from = r.checkpoint.as_ref().map_or(0, |c| c.step);
        if step <= from {
            return;
        }
        let lost = r.failed_at_step.saturating_sub(from);
        let ev = self.note(job, |inc| {
            for p in inc
                .phases
                .iter_mut()
                .filter(|p| p.name == "restore" && p.end.is_none())
            {
                p.end = Some(Timestamp(now));
            }
            inc.phase("resume", now, Some(now));
            inc.lost_steps = Some(lost);
            inc.add_evidence(format!(
                "job resumed: step {step} ended after restoring step {from}"
            ));
            inc.resolve(now);
        });
        fx.extend(ev);
        for id in &r.incidents {
            self.book.close(*id);
        }
        self.recoveries.remove(job);
        fx.push(Effect::RecoveryDone(job.clone()));
        fx.push(Effect::Feed(FeedEvent::RecoveryDone {
            job: job.clone(),
            resumed_at_step: step,
            lost_steps: lost,
        }));
    }
}
