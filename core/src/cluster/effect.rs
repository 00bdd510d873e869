//! The inputs of the state machine, the effects it returns, and why it
//! refuses an input.

use super::*;

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
    pub(super) fn incident(inc: &Incident) -> Effect {
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
}
