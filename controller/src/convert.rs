//! The edge: wire messages to validated domain types.
//!
//! Everything an agent sends passes through here before it reaches cluster
//! state. The decoding itself is the shared codec,
//! [`vigil_proto::codec::agent`]; this module adds the node's context (its
//! registered inventory) and the status a refusal closes the stream with.
//! A message that does not validate is refused with a reason that names the
//! field; the stream that sent it is closed with `INVALID_ARGUMENT`, and no
//! other stream is affected.

use tonic::Status;
use vigil_core::cluster::Registration;
use vigil_core::model::{AgentEvent, Heartbeat};
use vigil_proto::codec::agent;
pub use vigil_proto::codec::{InvalidMessage, MAX_BATCH, MAX_CARDS};
use vigil_proto::v1 as pb;

/// A `Register`, once its protocol version has been checked.
pub fn registration(r: pb::Register) -> Result<Registration, Status> {
    Registration::try_from(r).map_err(refuse)
}

/// A heartbeat from a node with `ncards` registered cards.
pub fn heartbeat(h: pb::Heartbeat, ncards: usize) -> Result<Heartbeat, Status> {
    agent::heartbeat(h, ncards).map_err(refuse)
}

/// An event batch from a node with `ncards` registered cards.
pub fn events(batch: pb::EventBatch, ncards: usize) -> Result<Vec<AgentEvent>, Status> {
    agent::events(batch, ncards).map_err(refuse)
}

/// The status that closes a stream which sent an invalid message.
pub fn refuse(e: InvalidMessage) -> Status {
    Status::invalid_argument(e.to_string())
}
