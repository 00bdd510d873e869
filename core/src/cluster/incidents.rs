//! Opening incidents: one open incident per root cause, with later
//! symptoms folded into it.

use super::*;

impl Cluster {
    pub(super) fn culprit(&self, incident: IncidentId, cause: &Cause) -> Culprit {
        Culprit {
            incident: Some(incident),
            node: Some(cause.node.clone()),
            card: cause.card,
            model: cause.card.and_then(|c| {
                self.nodes
                    .get(&cause.node)
                    .and_then(|n| n.cards.get(c as usize))
                    .map(|c| c.info.model.clone())
            }),
        }
    }

    /// Opens an incident for `cause`, or folds the symptom into the open one
    /// for the same root cause (the card itself, or its whole node).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_incident(
        &mut self,
        kind: IncidentKind,
        cause: Cause,
        job: Option<JobId>,
        observed_at: Millis,
        now: Millis,
        evidence: String,
        action: Action,
        fx: &mut Vec<Effect>,
    ) -> IncidentId {
        let node_key = (cause.node.clone(), None);
        let card_key = (cause.node.clone(), cause.card);
        let existing = self
            .open
            .get(&node_key)
            .or_else(|| self.open.get(&card_key))
            .copied();
        // A fault that stops the job is not folded into a weaker incident
        // at the same place (a straggler, a degraded card, a hung probe): it
        // opens its own, which takes over that place.
        let weak = |c: &Cluster, i: &Incident| match i.kind {
            IncidentKind::Straggler | IncidentKind::ProbeHung => true,
            IncidentKind::CardFault => !c.stops_job(i.kind, &i.cause.what),
            _ => false,
        };
        let takes_over = existing
            .and_then(|id| self.incidents.get(&id))
            .is_some_and(|i| weak(self, i) && self.stops_job(kind, &cause.what));
        if !takes_over
            && let Some(id) = existing
            && let Some(inc) = self.incidents.get_mut(&id)
        {
            inc.folded += 1;
            inc.add_evidence(evidence);
            fx.push(Effect::incident(inc));
            return id;
        }
        let id = IncidentId(self.next_incident);
        self.next_incident += 1;
        let mut inc = Incident {
            id,
            job,
            kind,
            state: IncidentState::Open,
            cause,
            detected_at: Timestamp(now),
            resolved_at: None,
            phases: Vec::new(),
            action: Some(action.as_str().to_owned()),
            checkpoint: None,
            lost_steps: None,
            evidence: Vec::new(),
            folded: 0,
            lost_boot: None,
        };
        inc.phase("detect", observed_at.min(now), Some(now));
        inc.phase("localize", now, Some(now));
        inc.add_evidence(evidence);
        self.open.insert(card_key, id);
        if let Some(job) = inc.job.clone()
            && action != Action::None
            && self.stops_job(kind, &inc.cause.what)
        {
            self.pending_recovery.push(id);
            let culprit = self.culprit(id, &inc.cause);
            // A hang stalls the step in flight from its start: the whole
            // stall since the last step end is detection time.
            let fault_ms = if kind == IncidentKind::Hang {
                Millis::MIN
            } else {
                observed_at.min(now)
            };
            self.ledger.fault(&job, fault_ms, now, culprit);
        }
        fx.push(Effect::Incident(
            Box::new(inc.clone()),
            IncidentChange::Opened,
        ));
        self.incidents.insert(id, inc);
        id
    }

    /// Whether an incident of this kind and signal stops the job (and so
    /// calls for a recovery). A throttled or degraded card does not.
    pub(super) fn stops_job(&self, kind: IncidentKind, what: &CauseKind) -> bool {
        match kind {
            IncidentKind::CardFault => what
                .signal()
                .is_some_and(|s| self.cfg.rules.classify(s).fatal),
            IncidentKind::NodeLost | IncidentKind::Hang | IncidentKind::WorkerExit => true,
            _ => false,
        }
    }
}
