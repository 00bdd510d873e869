//! Card signals: classify, open incidents, mark cards failed or suspect.

use super::*;

impl Cluster {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn card_error(
        &mut self,
        id: NodeId,
        card: u32,
        signal: Signal,
        detail: String,
        observed_at: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let rule = self.cfg.rules.classify(signal);
        let evidence = if detail.is_empty() {
            format!("{id}/{card}: {signal}")
        } else {
            format!("{id}/{card}: {signal} ({detail})")
        };
        fx.push(Effect::Feed(FeedEvent::CardSignal {
            node: id.clone(),
            card,
            signal,
            detail,
            class: rule.class,
            action: rule.action,
        }));
        if rule.action == Action::None {
            return;
        }
        if !rule.fatal {
            if let Some(c) = self.card_mut(&id, card)
                && c.health == CardHealth::Healthy
            {
                c.health = CardHealth::Suspect {
                    since_ms: now,
                    reason: SuspectReason::Signal(signal),
                };
            }
            // Throttling counts only when sustained (see the heartbeat path).
            if signal == Signal::Thermal {
                return;
            }
        }
        let (job, rank) = self.job_on_card(&id, card);
        let cause = Cause {
            node: id.clone(),
            card: Some(card),
            rank,
            what: CauseKind::Card(signal),
        };
        let inc = self.open_incident(
            IncidentKind::CardFault,
            cause,
            job,
            observed_at,
            now,
            evidence,
            rule.action,
            fx,
        );
        // An application-class signal names where the application failed;
        // the card itself stays healthy. A non-fatal signal leaves it suspect.
        if rule.class == Class::Application || !rule.fatal {
            return;
        }
        if let Some(c) = self.card_mut(&id, card)
            && !matches!(
                c.health,
                CardHealth::Failed { .. } | CardHealth::Quarantined { .. }
            )
        {
            c.health = CardHealth::Failed {
                at_ms: now,
                signal: CauseKind::Card(signal),
                incident: inc,
            };
            fx.push(Effect::Feed(FeedEvent::CardFailed {
                node: id.clone(),
                card,
                signal,
            }));
        }
        let target = if rule.action == Action::DrainNode {
            None
        } else {
            Some(card)
        };
        self.quarantine(
            &id,
            target,
            inc,
            &format!("{signal} on card {card}"),
            now,
            fx,
        );
    }

    pub(super) fn card_mut(&mut self, id: &NodeId, card: u32) -> Option<&mut CardState> {
        self.nodes
            .get_mut(id)
            .and_then(|n| n.cards.get_mut(card as usize))
    }
}
