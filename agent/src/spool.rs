//! The bounded spool of events not yet acknowledged by the controller.
//!
//! Every event gets the next sequence number of this boot. Events stay until
//! the controller acknowledges a sequence number at or above theirs; after a
//! reconnect everything unacknowledged is sent again (the controller drops
//! duplicates by node, boot id and sequence). When the spool is full the
//! oldest event is dropped and counted, so memory stays bounded.

use std::collections::VecDeque;
use vigil_core::Millis;
use vigil_core::model::{AgentEvent, EventBody};

#[derive(Debug)]
pub struct Spool {
    events: VecDeque<AgentEvent>,
    capacity: usize,
    next_seq: u64,
    acked: u64,
    sent: u64,
    dropped: u64,
}

impl Spool {
    pub fn new(capacity: usize) -> Self {
        Spool {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 1,
            acked: 0,
            sent: 0,
            dropped: 0,
        }
    }

    /// Adds an event and returns its sequence number.
    pub fn push(&mut self, body: EventBody, at_ms: Millis) -> u64 {
        if self.events.len() >= self.capacity {
            self.events.pop_front();
            self.dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push_back(AgentEvent { seq, at_ms, body });
        seq
    }

    /// Drops every event with `seq <= upto`.
    pub fn ack(&mut self, upto: u64) {
        if upto <= self.acked {
            return;
        }
        self.acked = upto.min(self.next_seq - 1);
        while self.events.front().is_some_and(|e| e.seq <= self.acked) {
            self.events.pop_front();
        }
        self.sent = self.sent.max(self.acked);
    }

    /// Marks everything unacknowledged as unsent (after a reconnect).
    pub fn rewind(&mut self) {
        self.sent = self.acked;
    }

    /// Up to `max` events not sent on the current connection; marks them sent.
    pub fn take_unsent(&mut self, max: usize) -> Vec<AgentEvent> {
        let out: Vec<AgentEvent> = self
            .events
            .iter()
            .filter(|e| e.seq > self.sent)
            .take(max)
            .cloned()
            .collect();
        if let Some(last) = out.last() {
            self.sent = last.seq;
        }
        out
    }

    /// Gives back events taken but not handed to the connection.
    pub fn unsend(&mut self, from_seq: u64) {
        self.sent = self.sent.min(from_seq.saturating_sub(1)).max(self.acked);
    }

    pub fn has_unsent(&self) -> bool {
        self.events.back().is_some_and(|e| e.seq > self.sent)
    }

    pub fn pending(&self) -> u64 {
        self.events.len() as u64
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vigil_core::model::EventBody;

    fn body(i: u32) -> EventBody {
        EventBody::ProbeHung {
            card: i,
            probe: "t".into(),
            waited_ms: 0,
        }
    }

    #[test]
    fn replays_unacked_after_rewind() {
        let mut s = Spool::new(10);
        for i in 0..5 {
            s.push(body(i), 0);
        }
        assert_eq!(s.take_unsent(3).len(), 3);
        assert_eq!(s.take_unsent(10).len(), 2);
        assert!(!s.has_unsent());
        s.ack(2);
        s.rewind();
        let again: Vec<u64> = s.take_unsent(10).iter().map(|e| e.seq).collect();
        assert_eq!(again, [3, 4, 5]);
    }

    #[test]
    fn bounded_with_a_drop_count() {
        let mut s = Spool::new(3);
        for i in 0..5 {
            s.push(body(i), 0);
        }
        assert_eq!(s.pending(), 3);
        assert_eq!(s.dropped(), 2);
        let seqs: Vec<u64> = s.take_unsent(10).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
    }

    #[test]
    fn acks_beyond_what_exists_are_clamped() {
        let mut s = Spool::new(3);
        s.push(body(0), 0);
        s.ack(100);
        assert_eq!(s.acked(), 1);
        assert_eq!(s.push(body(1), 0), 2);
        assert!(s.has_unsent());
    }

    proptest! {
        /// Whatever the interleaving of pushes, sends, acks and reconnects,
        /// every event not acknowledged is sent again, in order, exactly once
        /// per connection.
        #[test]
        fn unacked_events_are_never_lost(ops in prop::collection::vec(0u8..4, 1..200)) {
            let mut s = Spool::new(1000);
            let mut delivered_on_conn: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    0 => { s.push(body(0), 0); }
                    1 => delivered_on_conn.extend(s.take_unsent(4).iter().map(|e| e.seq)),
                    2 => if let Some(&last) = delivered_on_conn.last() { s.ack(last) },
                    _ => { s.rewind(); delivered_on_conn.clear(); }
                }
                // Sent on this connection: strictly increasing.
                prop_assert!(delivered_on_conn.windows(2).all(|w| w[0] < w[1]));
            }
            s.rewind();
            let rest: Vec<u64> = s.take_unsent(10_000).iter().map(|e| e.seq).collect();
            let expected: Vec<u64> = (s.acked() + 1..=s.last_seq()).collect();
            prop_assert_eq!(rest, expected);
        }
    }
}
