//! Isolation and its safety: quarantine with a circuit breaker, operator
//! cordons, sustained throttling, and the quiet period that clears a
//! suspect card.

use super::*;
use std::collections::VecDeque;

/// The automatic-quarantine circuit breaker's state.
#[derive(Debug, Clone, Default)]
pub(super) struct Breaker {
    /// Automatic quarantines within the window: (time, cards).
    quarantines: VecDeque<(Millis, u32)>,
    /// Since when it withholds automatic quarantine.
    open_since: Option<Millis>,
}

impl Breaker {
    /// Forgets the quarantines that left the window. Returns whether that
    /// closed the breaker.
    fn expire(&mut self, now: Millis, window: Millis) -> bool {
        while self
            .quarantines
            .front()
            .is_some_and(|(t, _)| now - t > window)
        {
            self.quarantines.pop_front();
        }
        if self.open_since.is_some() && self.quarantines.is_empty() {
            self.open_since = None;
            return true;
        }
        false
    }

    /// Cards quarantined automatically within the window.
    fn used(&self, now: Millis, window: Millis) -> u32 {
        self.quarantines
            .iter()
            .filter(|(t, _)| now - t <= window)
            .map(|(_, n)| n)
            .sum()
    }

    fn record(&mut self, now: Millis, cards: u32) {
        self.quarantines.push_back((now, cards));
    }

    /// Opens the breaker. Returns whether it was closed.
    fn trip(&mut self, now: Millis) -> bool {
        if self.open_since.is_some() {
            return false;
        }
        self.open_since = Some(now);
        true
    }
}

impl Cluster {
    /// Total cards known, and the most any one node has.
    fn capacity(&self) -> (u32, u32) {
        let total = self.nodes.values().map(|n| n.cards.len() as u32).sum();
        let widest = self
            .nodes
            .values()
            .map(|n| n.cards.len() as u32)
            .max()
            .unwrap_or(0);
        (total, widest)
    }

    /// Cards an automatic quarantine may still take now without opening the
    /// breaker: the configured share of the cluster within the window, and
    /// never less than one node's worth.
    pub fn quarantine_allowance(&self, now: Millis) -> u32 {
        let (total, widest) = self.capacity();
        let limit = ((f64::from(total) * self.cfg.breaker.share).floor() as u32).max(widest);
        let used = self.breaker.used(now, self.cfg.breaker.window_ms);
        limit.saturating_sub(used)
    }

    /// Whether the breaker is withholding automatic quarantine.
    pub fn breaker_open(&self) -> bool {
        self.breaker.open_since.is_some()
    }

    /// Automatically quarantines a card (or, with `card` None, cordons a
    /// node), unless the circuit breaker forbids it. Returns whether it did.
    pub(super) fn quarantine(
        &mut self,
        node: &NodeId,
        card: Option<u32>,
        incident: IncidentId,
        reason: &str,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let window = self.cfg.breaker.window_ms;
        if self.breaker.expire(now, window) {
            fx.push(Effect::Feed(FeedEvent::BreakerClosed));
        }
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let cards = match card {
            Some(_) => 1,
            None => n.cards.len() as u32,
        };
        let already = match card {
            Some(c) => n
                .cards
                .get(c as usize)
                .is_some_and(|c| matches!(c.health, CardHealth::Quarantined { .. })),
            None => n.cordoned.is_some(),
        };
        if already {
            return true;
        }
        if cards > self.quarantine_allowance(now) {
            if let Some(inc) = self.book.get_mut(&incident) {
                inc.add_evidence("automatic quarantine withheld: circuit breaker open".to_owned());
                fx.push(Effect::incident(inc));
            }
            if self.breaker.trip(now) {
                let (total, _) = self.capacity();
                fx.push(Effect::Feed(FeedEvent::BreakerOpen {
                    share: self.cfg.breaker.share,
                    cards: total,
                    window_ms: window,
                }));
            }
            return false;
        }
        self.breaker.record(now, cards);
        self.apply_quarantine(node, card, reason, Some(incident), now, fx);
        if let Some(inc) = self.book.get_mut(&incident) {
            inc.phase("isolate", now, Some(now));
            inc.add_evidence(match card {
                Some(c) => format!("quarantined {node}/{c}"),
                None => format!("cordoned {node}"),
            });
            fx.push(Effect::incident(inc));
        }
        true
    }

    fn apply_quarantine(
        &mut self,
        node: &NodeId,
        card: Option<u32>,
        reason: &str,
        incident: Option<IncidentId>,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let job = incident
            .and_then(|id| self.book.get(&id))
            .and_then(|i| i.job.clone())
            .or_else(|| self.nodes.get(node).and_then(|n| n.job.clone()));
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let q = CardHealth::Quarantined {
            at_ms: now,
            reason: reason.to_owned(),
        };
        match card {
            Some(c) => {
                if let Some(c) = n.cards.get_mut(c as usize) {
                    c.health = q;
                }
            }
            None => {
                n.cordoned = Some(reason.to_owned());
                for c in &mut n.cards {
                    c.health = q.clone();
                }
            }
        }
        fx.push(Effect::Feed(FeedEvent::Quarantined {
            node: node.clone(),
            card,
            reason: reason.to_owned(),
        }));
        fx.push(Effect::Quarantine {
            node: node.clone(),
            card,
            reason: reason.to_owned(),
        });
        fx.push(Effect::Action(Box::new(ActionRequest {
            verb: ActionVerb::Quarantine,
            incident,
            job,
            node: Some(node.clone()),
            card,
            reason: reason.to_owned(),
            checkpoint: None,
        })));
    }

    pub(super) fn cordon(
        &mut self,
        node: NodeId,
        card: Option<u32>,
        reason: String,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Rejected> {
        let n = self.known_node(&node)?;
        if let Some(c) = card
            && c as usize >= n.cards.len()
        {
            return Err(Rejected::UnknownCard { node, card: c });
        }
        // An operator's decision is not rate-limited by the breaker.
        self.apply_quarantine(&node, card, &format!("operator: {reason}"), None, now, fx);
        Ok(())
    }

    pub(super) fn uncordon(
        &mut self,
        node: NodeId,
        card: Option<u32>,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Rejected> {
        let n = self.known_node(&node)?;
        match card {
            Some(c) => {
                let Some(cs) = n.cards.get_mut(c as usize) else {
                    return Err(Rejected::UnknownCard { node, card: c });
                };
                cs.health = CardHealth::Healthy;
                cs.thermal_streak = 0;
            }
            None => {
                n.cordoned = None;
                for c in &mut n.cards {
                    c.health = CardHealth::Healthy;
                    c.thermal_streak = 0;
                }
            }
        }
        fx.push(Effect::Feed(FeedEvent::Uncordoned {
            node: node.clone(),
            card,
        }));
        fx.push(Effect::Action(Box::new(ActionRequest {
            verb: ActionVerb::Release,
            incident: None,
            job: None,
            node: Some(node.clone()),
            card,
            reason: "operator: uncordon".to_owned(),
            checkpoint: None,
        })));
        // The operator's clearance closes the open incidents it covers.
        let keys = self.book.open_places(&node, card);
        for k in keys {
            if let Some(id) = self.book.close_at(&k.0, k.1)
                && let Some(inc) = self.book.get_mut(&id)
            {
                inc.add_evidence("cleared by an operator".to_owned());
                inc.resolve(now);
                fx.push(Effect::incident(inc));
            }
        }
        if card.is_none() {
            self.losses.remove(&node);
        }
        Ok(())
    }

    /// Throttling held for the configured number of heartbeats.
    pub(super) fn sustained_thermal(
        &mut self,
        node: &NodeId,
        card: u32,
        temp: f32,
        reasons: u64,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let (job, rank) = self.job_on_card(node, card);
        let n = self.cfg.health.thermal_heartbeats;
        let evidence = format!(
            "{node}/{card}: throttled (reasons {reasons:#x}) at {temp:.0} C for {n} heartbeats in a row"
        );
        let cause = Cause {
            node: node.clone(),
            card: Some(card),
            rank,
            what: CauseKind::Card(Signal::Thermal),
        };
        self.open_incident(
            IncidentKind::CardFault,
            cause,
            job,
            now,
            now,
            evidence,
            Action::ResetCard,
            fx,
        );
        if let Some(c) = self.card_mut(node, card)
            && c.health == CardHealth::Healthy
        {
            c.health = CardHealth::Suspect {
                since_ms: now,
                reason: SuspectReason::SustainedThermal,
            };
        }
    }

    /// Hysteresis: a suspect card with no new evidence for the quiet period
    /// is healthy again (a passing check). Failed and quarantined cards need
    /// an operator.
    pub(super) fn decay_suspects(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let quiet = self.cfg.health.quiet_ms;
        for n in self.nodes.values_mut() {
            for c in &mut n.cards {
                if let CardHealth::Suspect { since_ms, .. } = c.health
                    && now - since_ms >= quiet
                    && c.thermal_streak == 0
                    && c.sample.as_ref().is_some_and(|s| !s.unreachable)
                {
                    c.health = CardHealth::Healthy;
                    fx.push(Effect::Feed(FeedEvent::CardHealthy {
                        node: n.id.clone(),
                        card: c.info.index,
                    }));
                }
            }
        }
    }
}
