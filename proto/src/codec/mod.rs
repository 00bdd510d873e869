//! Conversions between the wire messages of [`crate::v1`] and the domain
//! types of `vigil-core`, one module per direction:
//!
//! - [`agent`]: what an agent sends (`Register`, `Heartbeat`, `EventBatch`,
//!   `CommandResult`). Encoding is infallible; decoding validates every
//!   field and refuses the message with an [`InvalidMessage`] that names it.
//! - [`controller`]: what the controller sends (`Welcome`, `Ack`,
//!   `Command`).
//!
//! No other code builds or takes apart these messages field by field.

pub mod agent;
pub mod controller;

#[cfg(test)]
mod tests;

use vigil_core::ids::InvalidId;

/// Most cards one node may declare.
pub const MAX_CARDS: usize = 64;
/// Most events in one batch.
pub const MAX_BATCH: usize = 4096;
/// Longest accepted text field, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Longest accepted boot id, in characters.
pub const MAX_BOOT_ID: usize = 64;

/// Why a wire message was refused. The texts name the field; the
/// controller sends them back in the `INVALID_ARGUMENT` status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("register.node_id: {0}")]
    NodeId(InvalidId),
    #[error("register.boot_id must be 1 to {MAX_BOOT_ID} characters")]
    BootId,
    #[error("register.cards: {0} cards, at most {MAX_CARDS}")]
    TooManyCards(usize),
    #[error("register.cards[{position}].index is {index}; cards must be listed by index from 0")]
    CardOrder { position: usize, index: u32 },
    #[error("register.job: {0}")]
    RegisterJob(InvalidId),
    #[error("{0} is longer than {MAX_TEXT} bytes")]
    TooLong(&'static str),
    #[error("{0} is not a finite number")]
    NotFinite(&'static str),
    #[error("heartbeat.seq must start at 1")]
    HeartbeatSeq,
    #[error("heartbeat has {samples} card samples for {cards} registered cards")]
    TooManySamples { samples: usize, cards: usize },
    #[error("heartbeat sample for unknown card {0}")]
    UnknownSample(u32),
    #[error("event batch of {0} events, at most {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("event seq {seq} is not above the previous one ({last})")]
    EventOrder { seq: u64, last: u64 },
    #[error("event {seq}: {reason}")]
    Event {
        seq: u64,
        reason: Box<InvalidMessage>,
    },
    #[error("empty event")]
    EmptyEvent,
    #[error("card {0} is not in this node's inventory")]
    UnknownCard(u32),
    /// An unknown signal name or a bad code (the core's reason).
    #[error("{0}")]
    Signal(String),
    #[error("checkpoint path is empty")]
    EmptyCheckpointPath,
    #[error("{0}")]
    Job(InvalidId),
    /// An unknown step phase (the core's reason).
    #[error("{0}")]
    Phase(String),
    #[error("unknown progress type {0:?}")]
    ProgressType(String),
    /// A progress record the core refuses (the core's reason).
    #[error("{0}")]
    Progress(String),
    /// A message or command with no body.
    #[error("empty message")]
    EmptyMessage,
}

fn text(field: &'static str, s: String) -> Result<String, InvalidMessage> {
    if s.len() > MAX_TEXT {
        return Err(InvalidMessage::TooLong(field));
    }
    Ok(s)
}

/// Optional text: empty means absent.
fn opt_text(field: &'static str, s: String) -> Result<Option<String>, InvalidMessage> {
    if s.is_empty() {
        Ok(None)
    } else {
        text(field, s).map(Some)
    }
}

fn finite(field: &'static str, v: f32) -> Result<f32, InvalidMessage> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(InvalidMessage::NotFinite(field))
    }
}
