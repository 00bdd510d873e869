//! The node registry: registration, heartbeats, liveness, node loss with
//! flap damping, and partition versus crash.

use super::*;

impl Cluster {
    pub(super) fn register(&mut self, reg: Registration, now: Millis, fx: &mut Vec<Effect>) {
        let node = reg.node.clone();
        self.register_node(reg, now, fx);
        self.reorder_restoring(&node, fx);
    }

    pub(super) fn register_node(
        &mut self,
        mut reg: Registration,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        // A node a recovery moved keeps its new role when its agent
        // reconnects (or after a controller restart).
        for r in self.recoveries.values() {
            for (old, spare) in &r.replacements {
                if *spare == reg.node {
                    reg.job = Some(r.job.clone());
                    reg.spare = false;
                } else if *old == reg.node {
                    reg.job = None;
                }
            }
        }
        // The same agent process reconnecting (same boot id) keeps the role
        // a recovery gave its node (a spare now running the job, a replaced
        // node out of it), also after a controller restart: its flags still
        // say what it was started as. A new boot starts from its flags.
        if let Some(n) = self.nodes.get(&reg.node)
            && n.boot_id == reg.boot_id
            && n.role_assigned
            && (n.job != reg.job || n.spare != reg.spare)
        {
            reg.job = n.job.clone();
            reg.spare = n.spare;
            fx.push(Effect::NodeRole {
                node: reg.node.clone(),
                job: reg.job.clone(),
                spare: reg.spare,
            });
        }
        let id = reg.node.clone();
        let registered = FeedEvent::NodeRegistered {
            node: id.clone(),
            boot_id: reg.boot_id.clone(),
            cards: reg.cards.len(),
            spare: reg.spare,
            job: reg.job.clone(),
        };
        match self.nodes.get_mut(&id) {
            Some(node) => {
                let was_lost = matches!(node.liveness, Liveness::Lost { .. });
                let same_inventory = node.cards.len() == reg.cards.len()
                    && node.cards.iter().zip(&reg.cards).all(|(a, b)| a.info == *b);
                if node.boot_id != reg.boot_id {
                    node.arrivals.reset();
                }
                node.boot_id = reg.boot_id;
                node.awaiting_reconnect = false;
                node.supervises = reg.supervises;
                node.spare = reg.spare;
                node.job = reg.job;
                node.connected = true;
                node.last_seen_ms = now;
                node.liveness = Liveness::Alive;
                if !same_inventory {
                    node.cards = reg.cards.into_iter().map(new_card).collect();
                }
                fx.push(Effect::Feed(registered));
                if was_lost {
                    self.node_came_back(&id, now, fx);
                }
            }
            None => {
                self.nodes.insert(id, new_node(reg, now));
                fx.push(Effect::Feed(registered));
            }
        }
    }

    pub(super) fn known_node(&mut self, id: &NodeId) -> Result<&mut NodeState, Rejected> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| Rejected::UnknownNode(id.clone()))
    }

    pub(super) fn heartbeat(
        &mut self,
        id: NodeId,
        hb: Heartbeat,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Rejected> {
        let sustain = self.cfg.health.thermal_heartbeats;
        let node = self.known_node(&id)?;
        for s in &hb.cards {
            if s.index as usize >= node.cards.len() {
                return Err(Rejected::UnknownCard {
                    node: id,
                    card: s.index,
                });
            }
        }
        let was_lost = matches!(node.liveness, Liveness::Lost { .. });
        let was_suspect = matches!(node.liveness, Liveness::Suspect { .. });
        node.last_seen_ms = now;
        node.last_heartbeat_ms = Some(now);
        node.arrivals.heartbeat(now);
        node.awaiting_reconnect = false;
        node.heartbeats += 1;
        node.host = Some(hb.host);
        node.spool_pending = hb.spool_pending;
        node.spool_dropped = hb.spool_dropped;
        node.liveness = Liveness::Alive;
        node.connected = true;
        let mut hot = Vec::new();
        for s in hb.cards {
            let i = s.index as usize;
            if let Some(c) = node.cards.get_mut(i) {
                if s.throttle_reasons & THERMAL_THROTTLE != 0 {
                    c.thermal_streak += 1;
                    if c.thermal_streak == sustain {
                        hot.push((s.index, s.temperature_c, s.throttle_reasons));
                    }
                } else {
                    c.thermal_streak = 0;
                }
                c.sample = Some(s);
            }
        }
        for (card, temp, reasons) in hot {
            self.sustained_thermal(&id, card, temp, reasons, now, fx);
        }
        if was_suspect {
            fx.push(Effect::Feed(FeedEvent::NodeAlive { node: id.clone() }));
        }
        if was_lost {
            self.node_came_back(&id, now, fx);
        }
        Ok(())
    }

    pub(super) fn node_came_back(&mut self, id: &NodeId, now: Millis, fx: &mut Vec<Effect>) {
        fx.push(Effect::Feed(FeedEvent::NodeRecovered { node: id.clone() }));
        let same_boot = self.nodes.get(id).map(|n| n.boot_id.clone());
        let cordoned = self.nodes.get(id).is_some_and(|n| n.cordoned.is_some());
        if let Some(inc_id) = self.book.open_at(id, None)
            && let Some(inc) = self.book.get_mut(&inc_id)
            && matches!(inc.kind, IncidentKind::NodeLost | IncidentKind::Network)
        {
            // The same agent boot came back: the node never died, its
            // network did.
            if inc.lost_boot.is_some() && inc.lost_boot == same_boot {
                inc.kind = IncidentKind::Network;
                if inc.cause.what == CauseKind::NodeLost {
                    inc.cause.what = CauseKind::Partition;
                }
            }
            inc.add_evidence(format!("{id} heard from again at {}", Timestamp(now)));
            if cordoned {
                // A cordoned (flapping) node stays an open incident until an
                // operator uncordons it.
                fx.push(Effect::incident(inc));
                return;
            }
            inc.resolve(now);
            let resolved = Effect::incident(inc);
            self.book.close_at(id, None);
            fx.push(resolved);
        }
    }

    pub(super) fn disconnected(
        &mut self,
        id: NodeId,
        boot_id: String,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.boot_id != boot_id {
            return; // an older stream of a node that has already re-registered
        }
        node.connected = false;
        if matches!(node.liveness, Liveness::Alive) {
            node.liveness = Liveness::Suspect {
                since_ms: now,
                reason: "stream closed".to_owned(),
            };
            fx.push(Effect::Feed(FeedEvent::NodeSuspect {
                node: id,
                reason: "stream closed".to_owned(),
            }));
        }
    }

    pub(super) fn tick(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let mut lost = Vec::new();
        for node in self.nodes.values_mut() {
            if node.awaiting_reconnect && now < self.grace_until {
                continue; // restored, still reconnecting after our restart
            }
            let next = liveness::evaluate(
                &self.cfg.liveness,
                &node.arrivals,
                &node.liveness,
                node.last_seen_ms,
                now,
            );
            if next == node.liveness {
                continue;
            }
            match &next {
                Liveness::Suspect { reason, .. } => fx.push(Effect::Feed(FeedEvent::NodeSuspect {
                    node: node.id.clone(),
                    reason: reason.clone(),
                })),
                Liveness::Lost { last_seen_ms, .. } => {
                    fx.push(Effect::Feed(FeedEvent::NodeLost {
                        node: node.id.clone(),
                        last_seen_ms: *last_seen_ms,
                    }));
                    lost.push((node.id.clone(), *last_seen_ms));
                }
                Liveness::Alive => {}
            }
            node.liveness = next;
        }
        for (id, last_seen) in lost {
            self.node_lost(id, last_seen, now, fx);
        }
        self.check_hangs(now, fx);
        self.decay_suspects(now, fx);
    }

    pub(super) fn node_lost(
        &mut self,
        id: NodeId,
        last_seen: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let spare = self.nodes.get(&id).is_some_and(|n| n.spare);
        let boot = self
            .nodes
            .get(&id)
            .map(|n| n.boot_id.clone())
            .unwrap_or_default();
        let job = self.job_on_node(&id);
        let evidence = format!(
            "no message from {id} for {} ms (detector bound {}..{} ms)",
            now - last_seen,
            self.cfg.liveness.min_lost_ms(),
            self.cfg.liveness.lost_ms()
        );
        // Flap damping: losses of one node within the window are one incident.
        let hc = self.cfg.health;
        let losses = self.losses.entry(id.clone()).or_default();
        while losses.front().is_some_and(|t| now - t > hc.flap_window_ms) {
            losses.pop_front();
        }
        losses.push_back(now);
        let count = losses.len() as u32;
        let recent = self
            .book
            .iter()
            .rev()
            .find(|i| {
                i.cause.node == id
                    && i.cause.card.is_none()
                    && matches!(i.kind, IncidentKind::NodeLost | IncidentKind::Network)
                    && i.detected_at.0 >= now - hc.flap_window_ms
            })
            .map(|i| i.id);
        if count > 1
            && let Some(inc_id) = recent
            && let Some(inc) = self.book.reopen(inc_id)
        {
            inc.folded += 1;
            inc.add_evidence(format!(
                "{evidence}; lost {count} times within {} ms",
                hc.flap_window_ms
            ));
            if count >= hc.flap_losses {
                inc.kind = IncidentKind::Network;
                inc.cause.what = CauseKind::Flapping;
                fx.push(Effect::incident(inc));
                self.quarantine(
                    &id,
                    None,
                    inc_id,
                    "flapping: repeatedly lost and back",
                    now,
                    fx,
                );
            } else {
                fx.push(Effect::incident(inc));
            }
            return;
        }
        let cause = Cause {
            node: id.clone(),
            card: None,
            rank: None,
            what: CauseKind::NodeLost,
        };
        let action = if spare {
            Action::None
        } else {
            Action::DrainNode
        };
        let inc = self.open_incident(
            IncidentKind::NodeLost,
            cause,
            job,
            last_seen,
            now,
            evidence,
            action,
            fx,
        );
        if let Some(i) = self.book.get_mut(&inc) {
            i.note_lost_boot(&boot);
        }
    }

    pub(super) fn job_on_node(&self, id: &NodeId) -> Option<JobId> {
        self.jobs
            .values()
            .find(|j| j.state == JobRunState::Running && j.has_rank_on(id))
            .map(|j| j.id.clone())
            .or_else(|| self.nodes.get(id).and_then(|n| n.job.clone()))
    }

    pub(super) fn job_on_card(&self, id: &NodeId, card: u32) -> (Option<JobId>, Option<u32>) {
        for j in self
            .jobs
            .values()
            .filter(|j| j.state == JobRunState::Running)
        {
            if let Some(rank) = j.rank_on(id, card) {
                return (Some(j.id.clone()), Some(rank));
            }
        }
        (self.nodes.get(id).and_then(|n| n.job.clone()), None)
    }
}
