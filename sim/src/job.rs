//! The discrete-event core of the simulator: scenario time, faults and the
//! synchronous training job.

use crate::scenario::{Fault, FaultKind, FaultType, JobSpec, Scenario};
use crate::{InjectedFault, SimNode, now_ms};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;
use tokio::time::Instant;
use vigil_agent::cards::SimFault;
use vigil_agent::progress::to_event;
use vigil_agent::supervise::WorkerOrder;
use vigil_core::model::EventBody;
use vigil_core::progress::{Phase, ProgressRecord};
use vigil_core::{JobId, Timestamp};

/// How the job ended, by the simulator's own account.
#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    pub id: String,
    pub world_size: u32,
    pub final_step: u64,
    pub restarts: u32,
    /// Steps completed by every rank.
    pub steps_completed: u64,
    /// Latest checkpoint written by every rank.
    pub last_checkpoint: Option<u64>,
    /// The simulator's own account of where the job's card-time went:
    /// category (as in the ledger) -> card-milliseconds of scenario time.
    pub truth_card_ms: BTreeMap<&'static str, i64>,
}

/// The simulator's ground truth for the ledger, in scenario milliseconds
/// (multiplied by the world size when reported).
#[derive(Debug, Default)]
struct Truth {
    /// Accounted up to here.
    last: u64,
    /// Stopped by a fault: waiting for the restarted job.
    stopped: bool,
    /// When the pending job-stopping fault struck.
    fault_at: Option<u64>,
    /// The first stop and start orders of the current recovery.
    stop_at: Option<u64>,
    start_at: Option<u64>,
    /// The current step's straggler excess (ms over the healthy time).
    straggle: u64,
    /// Effective ms of each kept step.
    steps: Vec<(u64, u64)>,
    ms: BTreeMap<&'static str, u64>,
}

impl Truth {
    fn add(&mut self, cat: &'static str, ms: u64) {
        *self.ms.entry(cat).or_insert(0) += ms;
    }
}

/// Epoch of actions that survive a stop (faults).
const ALWAYS: u64 = u64::MAX;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// Fault `i` starts.
    Fault(usize),
    /// Fault `i` ends (transient kinds).
    FaultEnd(usize),
    /// A flap cuts the node (true) or restores it (false).
    Flap(usize, bool),
    StepStart(u64),
    Collective(u32, u64),
    StepEnd(u64),
    CheckpointDone(u64),
    /// Every node of the placement started its workers: training resumes
    /// after the checkpoint at this step.
    Restart(u64),
}

#[derive(Debug, Clone)]
struct Rank {
    node: String,
    card: u32,
    dead: bool,
    hung: bool,
    slow: f64,
}

struct Sim<'a> {
    scn: &'a Scenario,
    nodes: &'a BTreeMap<String, crate::SimNode>,
    queue: BinaryHeap<Reverse<(u64, u64, u64, Action)>>,
    /// Job actions of an older epoch (before a stop) are void.
    epoch: u64,
    /// Nodes whose workers were started since the last stop.
    started: std::collections::BTreeSet<String>,
    /// The restart each node's workers run (a repeated order is ignored).
    running_restart: BTreeMap<String, u32>,
    /// The checkpoint step that cannot be read back.
    corrupt_step: Option<u64>,
    restarts: u32,
    order: u64,
    ranks: Vec<Rank>,
    job: Option<JobId>,
    arrived: u32,
    step_started_at: u64,
    frozen: BTreeMap<String, bool>,
    job_speed: f64,
    steps_completed: u64,
    last_checkpoint: Option<u64>,
    current_step: u64,
    rng: u64,
    injected: Vec<InjectedFault>,
    truth: Truth,
}

/// Runs the scenario to its end. Returns the job outcome and the faults.
pub async fn run(
    scn: &Scenario,
    nodes: &BTreeMap<String, SimNode>,
    orders: &mut tokio::sync::mpsc::Receiver<(String, WorkerOrder)>,
    speed: f64,
    faults: &[Fault],
) -> (Option<JobOutcome>, Vec<InjectedFault>) {
    let ranks = scn
        .job
        .as_ref()
        .map(|j| {
            (0..j.world_size)
                .map(|r| {
                    let (node, card) = scn.rank_location(r);
                    Rank {
                        node,
                        card,
                        dead: false,
                        hung: false,
                        slow: 1.0,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let mut sim = Sim {
        scn,
        nodes,
        queue: BinaryHeap::new(),
        epoch: 0,
        started: std::collections::BTreeSet::new(),
        running_restart: BTreeMap::new(),
        corrupt_step: None,
        restarts: 0,
        order: 0,
        ranks,
        job: scn.job.as_ref().and_then(|j| JobId::new(j.id.clone()).ok()),
        arrived: 0,
        step_started_at: 0,
        frozen: BTreeMap::new(),
        job_speed: 1.0,
        steps_completed: 0,
        last_checkpoint: None,
        current_step: 0,
        rng: scn.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        injected: Vec::new(),
        truth: Truth::default(),
    };
    for (i, f) in faults.iter().enumerate() {
        sim.at((f.at_s * 1000.0) as u64, Action::Fault(i));
    }
    sim.start_job();
    let end_ms = (scn.duration_s * 1000.0) as u64;
    let origin = Instant::now();
    let scenario_now = |origin: Instant| (origin.elapsed().as_secs_f64() * speed * 1000.0) as u64;
    loop {
        let next = sim.queue.peek().map(|Reverse((t, ..))| *t);
        let wall = origin
            + Duration::from_secs_f64(next.unwrap_or(end_ms).min(end_ms) as f64 / 1000.0 / speed);
        tokio::select! {
            _ = tokio::time::sleep_until(wall) => {
                let Some(Reverse((t, _, epoch, action))) = sim.queue.pop() else { break };
                if t > end_ms {
                    break;
                }
                if epoch == ALWAYS || epoch == sim.epoch {
                    sim.apply(t, action, faults, speed);
                }
            }
            Some((node, order)) = orders.recv() => {
                let t = scenario_now(origin);
                if t <= end_ms {
                    sim.order(t, node, order);
                }
            }
        }
    }
    tokio::time::sleep_until(origin + Duration::from_secs_f64(end_ms as f64 / 1000.0 / speed))
        .await;
    sim.truth_close(end_ms);
    let world = scn.job.as_ref().map_or(0, |j| i64::from(j.world_size));
    let truth_card_ms = sim
        .truth
        .ms
        .iter()
        .map(|(k, v)| (*k, *v as i64 * world))
        .collect();
    let outcome = scn.job.as_ref().map(|j| JobOutcome {
        truth_card_ms,
        id: j.id.clone(),
        world_size: j.world_size,
        final_step: sim.steps_completed,
        restarts: sim.restarts,
        steps_completed: sim.steps_completed,
        last_checkpoint: sim.last_checkpoint,
    });
    (outcome, sim.injected)
}

impl Sim<'_> {
    fn at(&mut self, t: u64, a: Action) {
        self.order += 1;
        let epoch = match a {
            Action::Fault(_) | Action::FaultEnd(_) | Action::Flap(..) => ALWAYS,
            _ => self.epoch,
        };
        self.queue.push(Reverse((t, self.order, epoch, a)));
    }

    /// The controller, through an agent, ordered this node's workers.
    fn order(&mut self, t: u64, node: String, order: WorkerOrder) {
        tracing::debug!(t, %node, ?order, "worker order");
        let Some(spec) = self.scn.job.clone() else {
            return;
        };
        match order {
            WorkerOrder::Stop { .. } => {
                // A node that no longer holds ranks (replaced) changes nothing.
                if !self.ranks.iter().any(|r| r.node == node) {
                    return;
                }
                self.truth_stop(t);
                // Every rank on the node ends; the job cannot step on.
                self.running_restart.remove(&node);
                self.epoch += 1;
                self.started.remove(&node);
                for r in self.ranks.iter().filter(|r| r.node == node) {
                    self.inject(
                        &r.node,
                        SimFault::Load {
                            card: r.card,
                            utilization: 0.0,
                        },
                    );
                }
            }
            WorkerOrder::Start {
                resume_from,
                replaces,
                restart_count,
            } => {
                if self.running_restart.get(&node) == Some(&restart_count) {
                    return;
                }
                if self.truth.stopped && self.truth.start_at.is_none() {
                    // Stop to first start: waiting for capacity, if any.
                    let since = self.truth.stop_at.unwrap_or(t);
                    self.truth
                        .add("recovery", since.saturating_sub(self.truth.last));
                    self.truth
                        .add("waiting_for_capacity", t.saturating_sub(since));
                    self.truth.last = t;
                    self.truth.start_at = Some(t);
                }
                self.running_restart.insert(node.clone(), restart_count);
                if !replaces.is_empty() {
                    for r in self.ranks.iter_mut().filter(|r| r.node == replaces) {
                        r.node = node.clone();
                        r.slow = 1.0;
                        r.dead = false;
                        r.hung = false;
                    }
                }
                self.started.insert(node);
                let placement: std::collections::BTreeSet<String> =
                    self.ranks.iter().map(|r| r.node.clone()).collect();
                if placement.iter().all(|n| self.started.contains(n)) {
                    self.started.clear();
                    self.epoch += 1;
                    let step = resume_from
                        .rsplit("step-")
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                    self.at(t + u64::from(spec.restore_ms), Action::Restart(step));
                }
            }
        }
    }

    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn emit(&self, rank: u32, rec: ProgressRecord) {
        let Some(r) = self.ranks.get(rank as usize) else {
            return;
        };
        if let Some(node) = self.nodes.get(&r.node) {
            // A full queue drops the record, as the real endpoint does.
            let _ = node.progress.try_send(to_event(rec));
        }
    }

    /// Every rank's process starts: a `start` record each, and its card
    /// gets busy. `pid_base` tells the processes of one launch apart.
    fn launch_ranks(&mut self, pid_base: u32) {
        let (Some(job), Some(spec)) = (self.job.clone(), self.scn.job.as_ref()) else {
            return;
        };
        let world = spec.world_size;
        for (i, r) in self.ranks.clone().into_iter().enumerate() {
            self.ranks[i].dead = false;
            self.ranks[i].hung = false;
            self.emit(
                i as u32,
                ProgressRecord::Start {
                    job: job.clone(),
                    rank: i as u32,
                    world_size: world,
                    local_rank: Some(r.card),
                    card: Some(r.card),
                    pid: Some(pid_base + i as u32),
                },
            );
            self.inject(
                &r.node,
                SimFault::Load {
                    card: r.card,
                    utilization: 96.0,
                },
            );
        }
    }

    fn start_job(&mut self) {
        if self.scn.job.is_none() {
            return;
        }
        self.launch_ranks(10_000);
        self.at(0, Action::StepStart(1));
    }

    fn rank_can_run(&self, r: &Rank) -> bool {
        !r.dead && !r.hung && !self.frozen.get(&r.node).copied().unwrap_or(false)
    }

    fn apply(&mut self, t: u64, action: Action, faults: &[Fault], speed: f64) {
        if let Action::Fault(i) | Action::FaultEnd(i) | Action::Flap(i, _) = action {
            self.fault_action(t, i, &action, faults, speed);
            return;
        }
        let Some(spec) = self.scn.job.clone() else {
            return;
        };
        let Some(job) = self.job.clone() else { return };
        match action {
            Action::Fault(_) | Action::FaultEnd(_) | Action::Flap(..) => {}
            Action::StepStart(step) => self.step_start(t, step, &spec, &job),
            Action::Collective(rank, step) => self.collective(t, rank, step, &spec, &job),
            Action::StepEnd(step) => self.step_end(t, step, &spec, &job),
            Action::Restart(from) => self.restart(t, from),
            Action::CheckpointDone(step) => self.checkpoint_done(t, step, &spec, &job),
        }
    }

    /// Every live rank begins `step` and computes for its own time.
    fn step_start(&mut self, t: u64, step: u64, spec: &JobSpec, job: &JobId) {
        self.current_step = step;
        self.arrived = 0;
        self.step_started_at = t;
        let mut healthy: f64 = 0.0;
        let mut actual: f64 = 0.0;
        for i in 0..self.ranks.len() {
            let r = self.ranks[i].clone();
            if r.dead {
                continue;
            }
            self.emit(
                i as u32,
                ProgressRecord::Step {
                    job: job.clone(),
                    rank: i as u32,
                    step,
                    phase: Phase::Begin,
                    samples: None,
                    tokens: None,
                },
            );
            if r.hung {
                continue;
            }
            let model_speed = self.scn.speed_of(&r.node);
            let jitter = 1.0 + 0.04 * (self.noise() - 0.5);
            let compute = f64::from(spec.step_ms) / model_speed / r.slow / self.job_speed * jitter;
            healthy = healthy.max(compute * r.slow);
            actual = actual.max(compute);
            self.at(
                t + compute.max(1.0) as u64,
                Action::Collective(i as u32, step),
            );
        }
        self.truth.straggle = (actual - healthy).max(0.0) as u64;
    }

    /// Rank `rank` enters the step's collective; the last one in ends the step.
    fn collective(&mut self, t: u64, rank: u32, step: u64, spec: &JobSpec, job: &JobId) {
        if step != self.current_step {
            return;
        }
        let Some(r) = self.ranks.get(rank as usize).cloned() else {
            return;
        };
        if !self.rank_can_run(&r) {
            // A rank cut off or stopped never reaches the collective;
            // a partitioned node's ranks reach it once it heals.
            if !r.dead && !r.hung {
                self.at(t + 100, Action::Collective(rank, step));
            }
            return;
        }
        self.emit(
            rank,
            ProgressRecord::Step {
                job: job.clone(),
                rank,
                step,
                phase: Phase::Collective,
                samples: None,
                tokens: None,
            },
        );
        self.arrived += 1;
        if self.arrived == spec.world_size {
            let comm = (f64::from(spec.step_ms) * 0.03) as u64;
            self.at(t + comm.max(1), Action::StepEnd(step));
        }
    }

    /// Every rank ends `step`; a checkpoint follows when one is due.
    fn step_end(&mut self, t: u64, step: u64, spec: &JobSpec, job: &JobId) {
        if !self.truth.stopped {
            let d = t.saturating_sub(self.truth.last);
            let slow = self.truth.straggle.min(d);
            self.truth.add("straggler", slow);
            self.truth.add("effective", d - slow);
            self.truth.steps.push((step, d - slow));
            self.truth.last = t;
        }
        for i in 0..self.ranks.len() as u32 {
            self.emit(
                i,
                ProgressRecord::Step {
                    job: job.clone(),
                    rank: i,
                    step,
                    phase: Phase::End,
                    samples: Some(32),
                    tokens: Some(65_536),
                },
            );
        }
        self.steps_completed = step;
        if step.is_multiple_of(spec.checkpoint_every) {
            self.at(
                t + u64::from(spec.checkpoint_ms),
                Action::CheckpointDone(step),
            );
        } else {
            self.at(t, Action::StepStart(step + 1));
        }
    }

    /// The restarted workers resume from the checkpoint at `from`.
    fn restart(&mut self, t: u64, from: u64) {
        tracing::debug!(t, from, "restart");
        if from > 0 && self.corrupt_step == Some(from) {
            // The checkpoint cannot be read: the workers fail to load
            // it and exit, as the supervisor would report.
            if let Some(r) = self.ranks.first()
                && let Some(n) = self.nodes.get(&r.node)
            {
                let _ = n.progress.try_send(EventBody::WorkerExit {
                    rank: Some(0),
                    pid: 20_000,
                    exit_code: Some(3),
                    signal: None,
                });
            }
            return;
        }
        self.truth_restart(t, from);
        self.restarts += 1;
        self.launch_ranks(30_000 + 1000 * self.restarts);
        self.steps_completed = from;
        self.current_step = from;
        self.at(t, Action::StepStart(from + 1));
    }

    /// Every rank finished writing the checkpoint at `step`.
    fn checkpoint_done(&mut self, t: u64, step: u64, spec: &JobSpec, job: &JobId) {
        for i in 0..self.ranks.len() as u32 {
            self.emit(
                i,
                ProgressRecord::Checkpoint {
                    job: job.clone(),
                    rank: i,
                    step,
                    path: format!("/ckpt/{}/step-{step}", spec.id),
                    bytes: Some(1 << 30),
                    sha256: None,
                },
            );
        }
        self.last_checkpoint = Some(step);
        if !self.truth.stopped {
            self.truth
                .add("checkpoint", t.saturating_sub(self.truth.last));
            self.truth.last = t;
        }
        self.at(t, Action::StepStart(step + 1));
    }

    fn rank_at(&self, node: &str, card: u32) -> Option<u32> {
        self.ranks
            .iter()
            .position(|r| r.node == node && r.card == card)
            .map(|i| i as u32)
    }

    fn kill_rank(&mut self, node: &str, card: u32) {
        if let Some(i) = self.rank_at(node, card) {
            self.ranks[i as usize].dead = true;
        }
    }

    fn fault_action(&mut self, t: u64, i: usize, action: &Action, faults: &[Fault], speed: f64) {
        let Some(f) = faults.get(i) else { return };
        if matches!(action, Action::Fault(_)) {
            self.record_fault(t, i, f);
        }
        use FaultType as T;
        match f.kind.fault_type() {
            T::Xid
            | T::EccDbe
            | T::GpuLost
            | T::Thermal
            | T::Nvlink
            | T::PcieDegraded
            | T::ProbeHang => self.card_fault(t, f, action, speed),
            T::Hang | T::Slow | T::WorkerExit => self.rank_fault(t, f, action),
            T::NodeCrash | T::Partition | T::Flap | T::JobSlowdown | T::CheckpointCorrupt => {
                self.node_or_job_fault(t, i, f, action);
            }
        }
    }

    /// Fault `i` starts: it goes into the truth, and a transient one is
    /// scheduled to end.
    fn record_fault(&mut self, t: u64, i: usize, f: &Fault) {
        let node_name = f.node.clone().unwrap_or_default();
        self.injected.push(InjectedFault {
            kind: f.kind.fault_type(),
            code: match f.kind {
                FaultKind::Xid { code } => Some(code),
                _ => None,
            },
            for_s: f.kind.for_s(),
            node: f.node.clone(),
            card: f.card,
            rank: f.card.and_then(|c| self.rank_at(&node_name, c)),
            at_s: f.at_s,
            at: Timestamp(now_ms()),
        });
        if let Some(for_s) = f.kind.for_s() {
            self.at(t + (for_s * 1000.0) as u64, Action::FaultEnd(i));
        }
    }

    /// Makes the simulated card of `node` show `fault`.
    fn inject(&self, node: &str, fault: SimFault) {
        if let Some(n) = self.nodes.get(node)
            && let Err(e) = n.cards.inject(&fault)
        {
            tracing::warn!(%node, ?fault, error = %e, "simulated card refused a fault");
        }
    }

    /// Freezes (`on`) or thaws the agent of `node`.
    fn freeze(&mut self, node: &str, on: bool) {
        if let Some(n) = self.nodes.get(node)
            && n.freeze.send(on).is_err()
        {
            tracing::warn!(%node, on, "simulated agent is gone; cannot freeze it");
        }
        self.frozen.insert(node.to_owned(), on);
    }

    /// A fault the card's readings or driver log show.
    fn card_fault(&mut self, t: u64, f: &Fault, action: &Action, speed: f64) {
        let node = f.node.clone().unwrap_or_default();
        let card = f.card.unwrap_or(0);
        let on = matches!(action, Action::Fault(_));
        match (&f.kind, on) {
            (FaultKind::Xid { code }, true) => {
                self.inject(&node, SimFault::Xid { card, code: *code });
                // Informational XIDs leave the process running; the rest
                // take its CUDA context down.
                if !crate::informational_xid(*code) {
                    self.kill_rank(&node, card);
                    self.truth_fault(t);
                }
            }
            (FaultKind::EccDbe, true) => {
                self.inject(&node, SimFault::EccDbe { card });
                self.kill_rank(&node, card);
                self.truth_fault(t);
            }
            (FaultKind::GpuLost, true) => {
                self.inject(&node, SimFault::GpuLost { card });
                self.kill_rank(&node, card);
                self.truth_fault(t);
            }
            (FaultKind::Thermal { .. }, _) => {
                self.inject(&node, SimFault::Thermal { card, on });
                self.set_slow(&node, card, if on { 0.7 } else { 1.0 });
            }
            (FaultKind::Nvlink { .. }, _) => {
                self.inject(&node, SimFault::Nvlink { card, on });
                self.set_slow(&node, card, if on { 0.8 } else { 1.0 });
            }
            (FaultKind::PcieDegraded { .. }, _) => {
                self.inject(&node, SimFault::PcieDegraded { card, on });
                self.set_slow(&node, card, if on { 0.85 } else { 1.0 });
            }
            (FaultKind::ProbeHang { for_s }, true) => {
                let ms = (for_s.unwrap_or(10.0) * 1000.0 / speed) as u64;
                self.inject(&node, SimFault::ProbeHang { for_ms: ms });
            }
            _ => {}
        }
    }

    /// A fault of the rank's process, with no hardware signal.
    fn rank_fault(&mut self, t: u64, f: &Fault, action: &Action) {
        let node = f.node.clone().unwrap_or_default();
        let card = f.card.unwrap_or(0);
        let on = matches!(action, Action::Fault(_));
        match (&f.kind, on) {
            (FaultKind::Hang, true) => {
                if let Some(r) = self.rank_at(&node, card) {
                    self.ranks[r as usize].hung = true;
                    self.truth_fault(t);
                }
            }
            (FaultKind::Slow { factor, .. }, _) => {
                self.set_slow(&node, card, if on { *factor } else { 1.0 });
            }
            (FaultKind::WorkerExit, true) => {
                let rank = self.rank_at(&node, card);
                self.kill_rank(&node, card);
                self.truth_fault(t);
                if let Some(n) = self.nodes.get(&node) {
                    // A full queue drops the report, as the real endpoint does.
                    let _ = n.progress.try_send(EventBody::WorkerExit {
                        rank,
                        pid: 10_000 + rank.unwrap_or(0),
                        exit_code: Some(1),
                        signal: None,
                    });
                }
            }
            _ => {}
        }
    }

    /// A fault of a whole node (crash, network) or of the whole job.
    fn node_or_job_fault(&mut self, t: u64, i: usize, f: &Fault, action: &Action) {
        let node = f.node.clone().unwrap_or_default();
        let on = matches!(action, Action::Fault(_));
        match (&f.kind, action) {
            (FaultKind::NodeCrash, Action::Fault(_)) => {
                self.freeze(&node, true);
                for r in self.ranks.iter_mut().filter(|r| r.node == node) {
                    r.dead = true;
                }
                self.truth_fault(t);
            }
            (FaultKind::Partition { .. }, _) => self.freeze(&node, on),
            (FaultKind::Flap { for_s }, Action::Fault(_)) => {
                let hb = u64::from(self.scn.cluster.heartbeat_ms);
                let (cut, up) = (hb * 4, hb * 4);
                let mut s = t;
                while s < t + (*for_s * 1000.0) as u64 {
                    self.at(s, Action::Flap(i, true));
                    self.at(s + cut, Action::Flap(i, false));
                    s += cut + up;
                }
            }
            (FaultKind::Flap { .. }, Action::Flap(_, cut)) => self.freeze(&node, *cut),
            (FaultKind::JobSlowdown { factor, .. }, _) => {
                self.job_speed = if on { *factor } else { 1.0 };
            }
            // The corrupt checkpoint only matters when a restore reads it.
            (FaultKind::CheckpointCorrupt, Action::Fault(_)) => {
                self.corrupt_step = self.last_checkpoint;
            }
            _ => {}
        }
    }

    /// A job-stopping fault struck at `t` (the first one counts).
    fn truth_fault(&mut self, t: u64) {
        if !self.truth.stopped && self.truth.fault_at.is_none() {
            self.truth.fault_at = Some(t);
        }
    }

    /// The first stop order of a recovery: the step in flight is lost, and
    /// the time since the fault went to detection.
    fn truth_stop(&mut self, t: u64) {
        if self.truth.stopped {
            return;
        }
        let fault = self.truth.fault_at.unwrap_or(t).clamp(self.truth.last, t);
        self.truth.add("rolled_back", fault - self.truth.last);
        self.truth.add("detection", t - fault);
        self.truth.last = t;
        self.truth.stopped = true;
        self.truth.stop_at = Some(t);
        self.truth.start_at = None;
    }

    /// Training restarts at `t` from the checkpoint at `from`: the steps
    /// after it are thrown away.
    fn truth_restart(&mut self, t: u64, from: u64) {
        if self.truth.start_at.is_none() {
            self.truth.start_at = Some(t);
        }
        self.truth
            .add("recovery", t.saturating_sub(self.truth.last));
        self.truth.last = t;
        let mut rolled = 0;
        self.truth.steps.retain(|(s, ms)| {
            if *s > from {
                rolled += ms;
                false
            } else {
                true
            }
        });
        if let Some(e) = self.truth.ms.get_mut("effective") {
            *e -= rolled.min(*e);
        }
        self.truth.add("rolled_back", rolled);
        self.truth.stopped = false;
        self.truth.fault_at = None;
        self.truth.stop_at = None;
    }

    /// The scenario ended at `t`: the time since the last account.
    fn truth_close(&mut self, t: u64) {
        let cat = if self.truth.stopped {
            "recovery"
        } else {
            "effective"
        };
        self.truth.add(cat, t.saturating_sub(self.truth.last));
        self.truth.last = t;
    }

    fn set_slow(&mut self, node: &str, card: u32, factor: f64) {
        if let Some(r) = self.rank_at(node, card) {
            self.ranks[r as usize].slow = factor;
        }
    }
}
