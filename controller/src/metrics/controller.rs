//! The controller's own families: streams, ingest counters, the feed, the
//! state task's queue, store errors, the build.

use super::family::{add, counter, gauge, set};
use crate::state::StateHandle;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;

/// The controller's own counters, registered in `reg`.
pub(super) fn register(state: &StateHandle, reg: &mut Registry) {
    let s = &state.stats;
    let streams = gauge(reg, "vigil_agent_streams", "Agent streams open now");
    set(&streams, Vec::new(), s.streams.load(Relaxed) as f64);
    let heartbeats = counter(reg, "vigil_heartbeats", "Heartbeats applied since start");
    add(&heartbeats, Vec::new(), s.heartbeats.load(Relaxed) as f64);
    let events = counter(
        reg,
        "vigil_agent_events",
        "Agent events applied since start",
    );
    add(&events, Vec::new(), s.events.load(Relaxed) as f64);
    let dup = counter(
        reg,
        "vigil_duplicate_events",
        "Replayed agent events that were already stored and were skipped",
    );
    add(&dup, Vec::new(), s.duplicate_events.load(Relaxed) as f64);
    let rejected = counter(
        reg,
        "vigil_rejected_streams",
        "Agent streams closed because the cluster state refused a heartbeat",
    );
    add(&rejected, Vec::new(), s.rejected.load(Relaxed) as f64);
    let feed = gauge(
        reg,
        "vigil_feed_sequence",
        "Sequence number of the newest feed event (it survives restarts)",
    );
    set(&feed, Vec::new(), s.feed_seq.load(Relaxed) as f64);
    let (depth, capacity) = state.queue_depth();
    let q = gauge(
        reg,
        "vigil_state_queue_depth",
        "Messages waiting for the state task",
    );
    set(&q, Vec::new(), depth as f64);
    let qc = gauge(
        reg,
        "vigil_state_queue_capacity",
        "Capacity of the state task's queue",
    );
    set(&qc, Vec::new(), capacity as f64);
    let store_errors = counter(
        reg,
        "vigil_store_errors",
        "Store reads and writes that failed since start",
    );
    add(
        &store_errors,
        Vec::new(),
        s.store_errors.load(Relaxed) as f64,
    );
    let info = gauge(
        reg,
        "vigil_build_info",
        "The controller's version, as a label",
    );
    set(
        &info,
        vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
        1.0,
    );
}
