//! The IO shells of the real card probes: they run `nvidia-smi` or a vendor
//! wrapper, call NVML, or read the kernel log, and hand the text to the pure
//! parsers in `vigil_ingest::probe`. See `docs/probes.md`.
//!
//! Every backend here reports a failure of its own (a command that fails, a
//! document that does not parse) as a log line and an empty sample, never as
//! a card failure and never as a panic. A card is reported unreachable only
//! when the source names that card as lost.

pub mod command;
pub mod exec;
pub mod kmsg;
pub mod nvml;
pub mod smi;

use std::time::{Duration, Instant};
use vigil_core::model::Signal;

/// The longest a probe command may run before it is killed. The agent
/// reports `probe_hung` well before this (its `probe_timeout`); this bound
/// only keeps a wedged command from blocking the probe thread for ever.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Drops a repeat of the same (card, signal) within a window, so that an XID
/// seen both as an NVML event and in the kernel log is reported once.
#[derive(Debug)]
pub(crate) struct Dedup {
    window: Duration,
    recent: Vec<((u32, Signal), Instant)>,
}

impl Dedup {
    pub(crate) fn new(window: Duration) -> Dedup {
        Dedup {
            window,
            recent: Vec::new(),
        }
    }

    /// Whether the event is new; records it.
    pub(crate) fn admit(&mut self, card: u32, signal: Signal, now: Instant) -> bool {
        self.recent
            .retain(|(_, at)| now.saturating_duration_since(*at) < self.window);
        if self.recent.iter().any(|(k, _)| *k == (card, signal)) {
            return false;
        }
        self.recent.push(((card, signal), now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_drops_repeats_within_the_window_only() {
        let mut d = Dedup::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(d.admit(1, Signal::Xid(79), t0));
        assert!(!d.admit(1, Signal::Xid(79), t0 + Duration::from_secs(3)));
        assert!(d.admit(2, Signal::Xid(79), t0 + Duration::from_secs(3)));
        assert!(d.admit(1, Signal::Xid(48), t0 + Duration::from_secs(3)));
        assert!(d.admit(1, Signal::Xid(79), t0 + Duration::from_secs(11)));
    }
}
