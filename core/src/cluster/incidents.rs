//! The incident book: every incident, and at most one open incident per
//! root cause (a card, or a whole node), with later symptoms folded into it.

use super::*;

/// Every incident, and the open one per place (a card, or with no card a
/// whole node). Only the book changes which incident is open where.
#[derive(Debug, Clone)]
pub(super) struct IncidentBook {
    incidents: BTreeMap<IncidentId, Incident>,
    open: BTreeMap<(NodeId, Option<u32>), IncidentId>,
    next: u64,
}

impl Default for IncidentBook {
    fn default() -> Self {
        IncidentBook {
            incidents: BTreeMap::new(),
            open: BTreeMap::new(),
            next: 1,
        }
    }
}

impl IncidentBook {
    pub(super) fn get(&self, id: &IncidentId) -> Option<&Incident> {
        self.incidents.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &IncidentId) -> Option<&mut Incident> {
        self.incidents.get_mut(id)
    }

    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &Incident> {
        self.incidents.values()
    }

    /// The incident open at a place.
    pub(super) fn open_at(&self, node: &NodeId, card: Option<u32>) -> Option<IncidentId> {
        self.open.get(&(node.clone(), card)).copied()
    }

    /// The open incident a cause belongs to: its whole node's, else the one
    /// at its own place.
    fn covering(&self, cause: &Cause) -> Option<IncidentId> {
        self.open_at(&cause.node, None)
            .or_else(|| self.open_at(&cause.node, cause.card))
    }

    fn next_id(&mut self) -> IncidentId {
        let id = IncidentId(self.next);
        self.next += 1;
        id
    }

    /// Files a new incident, open at its cause's place (it takes the place
    /// over from any weaker one there).
    fn file(&mut self, inc: Incident) {
        self.open
            .insert((inc.cause.node.clone(), inc.cause.card), inc.id);
        self.incidents.insert(inc.id, inc);
    }

    /// Opens a resolved incident again at its cause's place.
    pub(super) fn reopen(&mut self, id: IncidentId) -> Option<&mut Incident> {
        let inc = self.incidents.get_mut(&id)?;
        inc.state = IncidentState::Open;
        inc.resolved_at = None;
        self.open
            .insert((inc.cause.node.clone(), inc.cause.card), id);
        Some(inc)
    }

    /// No incident is open at a place any more; returns the one that was.
    pub(super) fn close_at(&mut self, node: &NodeId, card: Option<u32>) -> Option<IncidentId> {
        self.open.remove(&(node.clone(), card))
    }

    /// Closes every place where incident `id` is open.
    pub(super) fn close(&mut self, id: IncidentId) {
        self.open.retain(|_, v| *v != id);
    }

    /// The places of a node with an open incident: all, or the node's own
    /// and one card's.
    pub(super) fn open_places(
        &self,
        node: &NodeId,
        card: Option<u32>,
    ) -> Vec<(NodeId, Option<u32>)> {
        self.open
            .keys()
            .filter(|(n, c)| n == node && (card.is_none() || *c == card))
            .cloned()
            .collect()
    }

    /// Gives an open incident another cause, at another place (an earlier
    /// worker exit became the culprit).
    pub(super) fn move_cause(&mut self, id: IncidentId, cause: Cause) {
        let Some(inc) = self.incidents.get_mut(&id) else {
            return;
        };
        self.open.remove(&(inc.cause.node.clone(), inc.cause.card));
        self.open.insert((cause.node.clone(), cause.card), id);
        inc.cause = cause;
    }

    /// An incident stored by a previous controller.
    pub(super) fn restore(&mut self, inc: Incident) {
        self.next = self.next.max(inc.id.0 + 1);
        if inc.state == IncidentState::Open {
            self.open
                .insert((inc.cause.node.clone(), inc.cause.card), inc.id);
        }
        self.incidents.insert(inc.id, inc);
    }
}

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
        let existing = self.book.covering(&cause);
        // A fault that stops the job is not folded into a weaker incident
        // at the same place (a straggler, a degraded card, a hung probe): it
        // opens its own, which takes over that place.
        let weak = |c: &Cluster, i: &Incident| match i.kind {
            IncidentKind::Straggler | IncidentKind::ProbeHung => true,
            IncidentKind::CardFault => !c.stops_job(i.kind, &i.cause.what),
            _ => false,
        };
        let takes_over = existing
            .and_then(|id| self.book.get(&id))
            .is_some_and(|i| weak(self, i) && self.stops_job(kind, &cause.what));
        if !takes_over
            && let Some(id) = existing
            && let Some(inc) = self.book.get_mut(&id)
        {
            inc.folded += 1;
            inc.add_evidence(evidence);
            fx.push(Effect::incident(inc));
            return id;
        }
        let id = self.book.next_id();
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
        self.book.file(inc);
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
