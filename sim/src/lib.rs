//! The cluster simulator behind `vigil demo` and the scenario tests.
//!
//! It runs one real agent (the `vigil-agent` library, over real gRPC) per
//! simulated node and plays a scenario against them. The simulator is
//! honest: it changes only what a real cluster would show an agent. Faults
//! become card readings and driver error events on simulated cards, frozen
//! agents (a crashed or cut-off node), and the progress records that ranks
//! of a synchronous training job would send, or stop sending. Neither the
//! agents nor the controller ever see the injected fault itself; the
//! [`Truth`] it returns is for scoring only.
//!
//! Synchronous training: every rank begins a step together, computes for
//! its own time, enters the step's collective, and the step ends for all
//! ranks only once every rank has entered it. One hung or dead rank blocks
//! the others; the slowest rank sets the pace; checkpoints pause every rank.

mod job;
pub mod scenario;

use crate::scenario::{Fault, FaultType, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vigil_agent::AgentStats;
use vigil_agent::cards::{SimCards, SimHandle};
use vigil_agent::supervise::WorkerOrder;
use vigil_agent::uplink::AgentIo;
use vigil_agent::{AgentConfig, backoff::BackoffConfig};
use vigil_core::model::EventBody;
use vigil_core::{JobId, Millis, NodeId};

pub use job::JobOutcome;

/// One simulated node: its agent and the simulator's levers on it.
#[derive(Debug)]
pub struct SimNode {
    pub name: String,
    pub spare: bool,
    /// Injects card faults into the node's simulated cards.
    pub cards: SimHandle,
    /// The node's progress endpoint, as a training process would reach it.
    pub progress: mpsc::Sender<EventBody>,
    /// True freezes the node's agent (crash or network cut).
    pub freeze: watch::Sender<bool>,
    pub stats: Arc<AgentStats>,
    task: JoinHandle<()>,
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for one simulation run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Controller gRPC URL.
    pub controller: String,
    /// Scenario seconds per wall second.
    pub speed: f64,
}

/// A fault as it was injected, for scoring.
#[derive(Debug, Clone, Serialize)]
pub struct InjectedFault {
    pub kind: FaultType,
    /// The XID code, for `xid` faults.
    pub code: Option<u32>,
    /// How long a transient fault lasted, scenario seconds.
    pub for_s: Option<f64>,
    pub node: Option<String>,
    pub card: Option<u32>,
    pub rank: Option<u32>,
    /// Scenario seconds.
    pub at_s: f64,
    /// Wall clock when injected.
    pub at: vigil_core::Timestamp,
}

/// What really happened.
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub faults: Vec<InjectedFault>,
    pub job: Option<JobOutcome>,
    /// Wall clock when the scenario started.
    pub started: vigil_core::Timestamp,
}

/// Whether the controller's built-in rules take no action on XID `code`
/// (`vigil_core::rules::RuleTable`): the process keeps running, and a correct
/// verdict is no incident.
pub fn informational_xid(code: u32) -> bool {
    use vigil_core::rules::{Class, RuleTable};
    RuleTable::default()
        .classify(vigil_core::model::Signal::Xid(code))
        .class
        == Class::Informational
}

/// Heartbeat period the agents and controller use for a scenario at a speed.
pub fn heartbeat_ms(scn: &Scenario, speed: f64) -> u32 {
    ((f64::from(scn.cluster.heartbeat_ms) / speed).round() as u32).max(10)
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The simulated cluster: its nodes and the worker orders their agents
/// receive from the controller (which the simulated ranks obey).
#[derive(Debug)]
pub struct SimCluster {
    pub nodes: BTreeMap<String, SimNode>,
    pub orders: mpsc::Receiver<(String, WorkerOrder)>,
}

/// Starts one agent per node and spare of the scenario.
pub fn spawn_nodes(scn: &Scenario, opts: &SimOptions) -> anyhow::Result<SimCluster> {
    let (orders_tx, orders) = mpsc::channel(1024);
    let hb = Duration::from_millis(u64::from(heartbeat_ms(scn, opts.speed)));
    let job = scn
        .job
        .as_ref()
        .map(|j| JobId::new(j.id.clone()))
        .transpose()?;
    let mut nodes = BTreeMap::new();
    let all = scn
        .node_names()
        .into_iter()
        .map(|n| (n, false))
        .chain(scn.spare_names().into_iter().map(|n| (n, true)));
    for (name, spare) in all {
        let (cards, handle) =
            SimCards::new(&name, scn.cluster.cards_per_node, scn.card_model_of(&name));
        let mut cfg = AgentConfig::new(opts.controller.clone(), NodeId::new(name.clone())?);
        cfg.heartbeat = hb;
        cfg.spare = spare;
        cfg.job = if spare { None } else { job.clone() };
        cfg.host_metrics = false;
        cfg.supervises = true;
        cfg.probe_timeout = (hb * 3).max(Duration::from_millis(200));
        cfg.backoff = BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            ..Default::default()
        };
        let (mut io, progress) = AgentIo::new();
        let (freeze, freeze_rx) = watch::channel(false);
        io.pause = Some(freeze_rx);
        // The agent's worker supervisor, in the simulation, is the simulated
        // job itself: orders are forwarded to it, tagged with the node.
        let (wtx, mut wrx) = mpsc::channel::<WorkerOrder>(64);
        io.worker = Some(wtx);
        let fwd = orders_tx.clone();
        let fwd_name = name.clone();
        tokio::spawn(async move {
            while let Some(o) = wrx.recv().await {
                if fwd.send((fwd_name.clone(), o)).await.is_err() {
                    return;
                }
            }
        });
        let stats = io.stats.clone();
        let node_name = name.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = vigil_agent::run(cfg, Box::new(cards), io).await {
                tracing::error!(node = %node_name, error = %e, "simulated agent stopped");
            }
        });
        nodes.insert(
            name.clone(),
            SimNode {
                name,
                spare,
                cards: handle,
                progress,
                freeze,
                stats,
                task,
            },
        );
    }
    Ok(SimCluster { nodes, orders })
}

/// Plays `scn` against already started nodes until its end, and returns
/// what was injected and how the job went.
pub async fn play(scn: &Scenario, cluster: &mut SimCluster, speed: f64) -> Truth {
    let started = now_ms();
    let faults: Vec<Fault> = scn.faults_sorted();
    let outcome = job::run(scn, &cluster.nodes, &mut cluster.orders, speed, &faults).await;
    Truth {
        faults: outcome.1,
        job: outcome.0,
        started: vigil_core::Timestamp(started),
    }
}
