//! The Vigil node agent, as a library so that the demo, the benchmark and the
//! tests can run many agents in one process through the same code as the
//! `vigil-agent` binary.
//!
//! The agent is one task ([`uplink::run`]) that owns the connection to the
//! controller, the event spool and the heartbeat clock. Card probes, the
//! progress endpoint and the worker supervisor feed it through channels.

pub mod backoff;
pub mod cards;
pub mod checkpoints;
pub mod config;
pub mod host;
pub mod logtail;
pub mod probes;
pub mod progress;
pub mod spool;
pub mod supervise;
pub mod uplink;

pub use config::AgentConfig;
pub use uplink::{AgentStats, run};

/// Agent build version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
