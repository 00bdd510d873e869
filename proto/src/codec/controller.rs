//! Messages the controller sends: `Welcome`, `Ack` and `Command`, with the
//! agent's decoding of them.

use super::InvalidMessage;
use crate::v1 as pb;
use vigil_core::cluster::WorkerCommand;

/// The first answer to a `Register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub controller_version: String,
    pub protocol_version: u32,
    /// Highest event sequence number of this (node, boot id) already stored.
    pub acked_event_seq: u64,
    /// The heartbeat period the agent must use, if the controller sets one.
    pub heartbeat_ms: Option<u32>,
}

impl Welcome {
    /// A welcome in this build's protocol version.
    pub fn new(controller_version: &str, acked_event_seq: u64, heartbeat_ms: u32) -> Self {
        Welcome {
            controller_version: controller_version.to_owned(),
            protocol_version: crate::PROTOCOL_VERSION,
            acked_event_seq,
            heartbeat_ms: Some(heartbeat_ms),
        }
    }
}

/// Acknowledgement of durable events and of an applied heartbeat; 0 means
/// "nothing new".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ack {
    pub event_seq: u64,
    pub heartbeat_seq: u64,
}

/// What a command orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Stop or start the node's workers.
    Worker(WorkerCommand),
    /// The card (or, without one, the whole node) is out of service.
    Quarantine { card: Option<u32>, reason: String },
    /// Apply new settings.
    Configure { heartbeat_ms: u32 },
}

/// A command with its id. A command without a body decodes with `order`
/// `None`, so the agent can still answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: u64,
    pub order: Option<Order>,
}

/// Everything the controller sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerMsg {
    Welcome(Welcome),
    Ack(Ack),
    Command(Command),
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

impl From<&Welcome> for pb::Welcome {
    fn from(w: &Welcome) -> Self {
        pb::Welcome {
            controller_version: w.controller_version.clone(),
            protocol_version: w.protocol_version,
            acked_event_seq: w.acked_event_seq,
            config: w
                .heartbeat_ms
                .map(|heartbeat_ms| pb::AgentConfig { heartbeat_ms }),
        }
    }
}

impl From<Ack> for pb::Ack {
    fn from(a: Ack) -> Self {
        pb::Ack {
            event_seq: a.event_seq,
            heartbeat_seq: a.heartbeat_seq,
        }
    }
}

impl From<&Order> for pb::command::Body {
    fn from(o: &Order) -> Self {
        use pb::command::Body;
        match o {
            Order::Worker(WorkerCommand::Stop { grace_s }) => {
                Body::StopWorkers(pb::StopWorkers { grace_s: *grace_s })
            }
            Order::Worker(WorkerCommand::Start {
                resume_from,
                restart_count,
                replaces,
            }) => Body::StartWorkers(pb::StartWorkers {
                resume_from: resume_from.clone(),
                restart_count: *restart_count,
                replaces: replaces.clone(),
            }),
            Order::Quarantine { card, reason } => Body::Quarantine(pb::Quarantine {
                card: *card,
                reason: reason.clone(),
            }),
            Order::Configure { heartbeat_ms } => Body::Configure(pb::AgentConfig {
                heartbeat_ms: *heartbeat_ms,
            }),
        }
    }
}

impl From<&Command> for pb::Command {
    fn from(c: &Command) -> Self {
        pb::Command {
            id: c.id,
            body: c.order.as_ref().map(pb::command::Body::from),
        }
    }
}

impl From<&ControllerMsg> for pb::ControllerMessage {
    fn from(m: &ControllerMsg) -> Self {
        use pb::controller_message::Body;
        let body = match m {
            ControllerMsg::Welcome(w) => Body::Welcome(w.into()),
            ControllerMsg::Ack(a) => Body::Ack((*a).into()),
            ControllerMsg::Command(c) => Body::Command(c.into()),
        };
        pb::ControllerMessage { body: Some(body) }
    }
}

impl From<ControllerMsg> for pb::ControllerMessage {
    fn from(m: ControllerMsg) -> Self {
        (&m).into()
    }
}

impl From<Ack> for pb::ControllerMessage {
    fn from(a: Ack) -> Self {
        ControllerMsg::Ack(a).into()
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

impl From<pb::Welcome> for Welcome {
    fn from(w: pb::Welcome) -> Self {
        Welcome {
            controller_version: w.controller_version,
            protocol_version: w.protocol_version,
            acked_event_seq: w.acked_event_seq,
            heartbeat_ms: w.config.map(|c| c.heartbeat_ms),
        }
    }
}

impl From<pb::Ack> for Ack {
    fn from(a: pb::Ack) -> Self {
        Ack {
            event_seq: a.event_seq,
            heartbeat_seq: a.heartbeat_seq,
        }
    }
}

impl From<pb::command::Body> for Order {
    fn from(b: pb::command::Body) -> Self {
        use pb::command::Body;
        match b {
            Body::StopWorkers(s) => Order::Worker(WorkerCommand::Stop { grace_s: s.grace_s }),
            Body::StartWorkers(s) => Order::Worker(WorkerCommand::Start {
                resume_from: s.resume_from,
                restart_count: s.restart_count,
                replaces: s.replaces,
            }),
            Body::Quarantine(q) => Order::Quarantine {
                card: q.card,
                reason: q.reason,
            },
            Body::Configure(c) => Order::Configure {
                heartbeat_ms: c.heartbeat_ms,
            },
        }
    }
}

impl From<pb::Command> for Command {
    fn from(c: pb::Command) -> Self {
        Command {
            id: c.id,
            order: c.body.map(Order::from),
        }
    }
}

impl TryFrom<pb::ControllerMessage> for ControllerMsg {
    type Error = InvalidMessage;

    fn try_from(m: pb::ControllerMessage) -> Result<Self, InvalidMessage> {
        use pb::controller_message::Body;
        Ok(match m.body.ok_or(InvalidMessage::EmptyMessage)? {
            Body::Welcome(w) => ControllerMsg::Welcome(w.into()),
            Body::Ack(a) => ControllerMsg::Ack(a.into()),
            Body::Command(c) => ControllerMsg::Command(c.into()),
        })
    }
}
