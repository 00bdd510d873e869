//! Vigil's domain: types and decisions, with no IO.
//!
//! Everything here is a pure function of state, input and `now` (milliseconds
//! since the Unix epoch, passed in by the caller). The agent and controller
//! crates are thin IO shells around it; the crate boundary is how the
//! compiler keeps this code free of sockets, files, clocks and runtimes.

pub mod cluster;
pub mod feed;
pub mod ids;
pub mod incident;
pub mod ledger;
pub mod liveness;
pub mod model;
pub mod progress;
pub mod rules;
pub mod time;
pub mod workload;

pub use ids::{CardId, IncidentId, JobId, NodeId};
pub use time::{Millis, Timestamp};
