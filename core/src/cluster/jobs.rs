//! Jobs: progress records, the checkpoint catalog, and the hang,
//! straggler and worker-exit detectors.

use super::*;

/// A rank's `start` record.
struct RankStart {
    node: NodeId,
    job: JobId,
    rank: u32,
    world_size: u32,
    card: Option<u32>,
    pid: Option<u32>,
}

/// A rank's step record.
struct StepDone {
    rank: u32,
    step: u64,
    phase: Phase,
    samples: u64,
    tokens: u64,
}

impl Cluster {
    /// A checkpoint report: a rank's own (progress protocol), or one from an
    /// agent's directory watcher that the layout marks complete for every
    /// rank. Either may say the agent found the checkpoint unusable.
    pub(super) fn checkpoint_report(
        &mut self,
        node: NodeId,
        c: CheckpointReport,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        if !c.complete_all {
            self.progress(
                node.clone(),
                ProgressRecord::Checkpoint {
                    job: c.job.clone(),
                    rank: c.rank,
                    step: c.step,
                    path: c.path.clone(),
                    bytes: c.bytes,
                    sha256: c.sha256.clone(),
                },
                now,
                now,
                fx,
            );
        }
        let catalog = match self.jobs.get_mut(&c.job) {
            Some(j) => &mut j.checkpoints,
            None => {
                let p = self.pending_catalog.entry(c.job.clone()).or_default();
                while p.len() >= PENDING_CATALOG {
                    p.pop_first();
                }
                p
            }
        };
        let cs = catalog
            .entry(c.step)
            .or_insert_with(|| CheckpointState::new(c.step, c.path.clone()));
        let before = cs.clone();
        if let Some(why) = &c.invalid
            && cs.invalid.is_none()
        {
            cs.invalid = Some(why.clone());
            fx.push(Effect::Feed(FeedEvent::CheckpointInvalid {
                job: c.job.clone(),
                step: c.step,
                path: c.path.clone(),
                node: node.clone(),
                reason: why.clone(),
            }));
        }
        if c.complete_all && !cs.complete {
            cs.complete = true;
            cs.source = c.source.clone().unwrap_or_else(|| "watcher".to_owned());
            if cs.invalid.is_none() {
                fx.push(Effect::Feed(FeedEvent::CheckpointComplete {
                    job: c.job.clone(),
                    step: c.step,
                    path: cs.path.clone(),
                    source: cs.source.clone(),
                }));
            }
        }
        if *cs != before && (cs.complete || cs.invalid.is_some()) {
            fx.push(Effect::Checkpoint {
                job: c.job.clone(),
                state: cs.clone(),
            });
        }
    }

    pub(super) fn progress(
        &mut self,
        node: NodeId,
        rec: ProgressRecord,
        at: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let job_id = rec.job().clone();
        let rank = rec.rank();
        if let ProgressRecord::Start {
            world_size,
            card,
            pid,
            ..
        } = rec
        {
            let start = RankStart {
                node,
                job: job_id,
                rank,
                world_size,
                card,
                pid,
            };
            self.rank_start(start, now, fx);
            return;
        }
        // Records of a job whose `start` records were never seen (the job
        // started before this controller, or its agent restarted) still
        // count: the job is created and sized by the highest rank seen, and
        // the rank is placed on the sending node with an unknown card.
        let job = self.jobs.entry(job_id.clone()).or_insert_with(|| {
            let mut j = JobState::new(job_id.clone(), rank + 1, now);
            j.checkpoints = self.pending_catalog.remove(&job_id).unwrap_or_default();
            j
        });
        job.world_size = job.world_size.max(rank + 1);
        let r = job.ranks.entry(rank).or_insert_with(|| RankState {
            node: node.clone(),
            card: None,
            pid: None,
            step: 0,
            phase: Phase::End,
            at_ms: now,
            ended: None,
        });
        r.at_ms = now;
        match rec {
            ProgressRecord::Step {
                step,
                phase,
                samples,
                tokens,
                ..
            } => {
                let done = StepDone {
                    rank,
                    step,
                    phase,
                    samples: samples.unwrap_or(0),
                    tokens: tokens.unwrap_or(0),
                };
                self.step_record(&job_id, done, at, now, fx);
            }
            ProgressRecord::Checkpoint { step, path, .. } => {
                self.checkpoint_record(&job_id, rank, step, path, at, fx)
            }
            ProgressRecord::End { status, .. } => self.rank_end(&job_id, rank, status, now, fx),
            ProgressRecord::Start { .. } => {}
        }
    }

    /// A rank's `start` record: the job appears (or starts again) and the
    /// rank is placed on its node and card.
    fn rank_start(&mut self, s: RankStart, now: Millis, fx: &mut Vec<Effect>) {
        let model = s.card.and_then(|c| {
            self.nodes
                .get(&s.node)
                .and_then(|n| n.cards.get(c as usize))
                .map(|c| c.info.model.clone())
        });
        let pending = &mut self.pending_catalog;
        let job = self.jobs.entry(s.job.clone()).or_insert_with(|| {
            fx.push(Effect::Feed(FeedEvent::JobStarted {
                job: s.job.clone(),
                world_size: s.world_size,
            }));
            let mut j = JobState::new(s.job.clone(), s.world_size, now);
            j.checkpoints = pending.remove(&s.job).unwrap_or_default();
            j
        });
        job.world_size = s.world_size;
        job.state = JobRunState::Running;
        let group = job.model_group(model.as_deref().unwrap_or("unknown"));
        job.timing.set_group(s.rank, group);
        let r = job.ranks.entry(s.rank).or_insert_with(|| RankState {
            node: s.node.clone(),
            card: s.card,
            pid: s.pid,
            step: 0,
            phase: Phase::End,
            at_ms: now,
            ended: None,
        });
        r.node = s.node;
        r.card = s.card;
        r.pid = s.pid;
        r.ended = None;
        r.at_ms = now;
        if self.recoveries.contains_key(&s.job) {
            self.rank_started(&s.job, s.rank);
        }
    }

    /// A rank's step record: step timing, totals, the ledger, and what the
    /// workload detectors and a recovery in restore make of it.
    fn step_record(
        &mut self,
        job_id: &JobId,
        d: StepDone,
        at: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let wcfg = self.cfg.workload;
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if let Some(r) = job.ranks.get_mut(&d.rank) {
            r.step = d.step;
            r.phase = d.phase;
        }
        job.last_progress_ms = now;
        let (rank, step) = (d.rank, d.step);
        match d.phase {
            Phase::Begin => job.timing.on_begin(rank, step, at),
            Phase::Collective => job.timing.on_collective(rank, step, at),
            Phase::End => {}
        }
        if d.phase != Phase::End {
            return;
        }
        job.steps_total += 1;
        job.samples_total += d.samples;
        job.tokens_total += d.tokens;
        let verdict = job.timing.on_end(rank, step, at, &wcfg);
        if verdict.is_some() {
            job.hung = false;
        }
        if step > job.step {
            job.step = step;
            self.ledger
                .step(job_id, job.world_size, job.started_at_ms, step, at);
            if step % PROGRESS_FEED_EVERY == 0 {
                fx.push(Effect::Feed(FeedEvent::JobProgress {
                    job: job.id.clone(),
                    step,
                }));
            }
        }
        if let Some(v) = verdict {
            self.step_verdict(job_id, v, now, fx);
        }
        if self.recoveries.contains_key(job_id) {
            self.step_ended(job_id, rank, step, now, fx);
        }
    }

    /// A rank wrote a checkpoint: complete once every rank has.
    fn checkpoint_record(
        &mut self,
        job_id: &JobId,
        rank: u32,
        step: u64,
        path: String,
        at: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        job.timing.on_checkpoint(at);
        self.ledger.checkpoint(job_id, at);
        let world = job.world_size;
        let c = job
            .checkpoints
            .entry(step)
            .or_insert_with(|| CheckpointState::new(step, path));
        c.ranks.insert(rank);
        if !c.complete && c.ranks.len() as u32 >= world {
            c.complete = true;
            fx.push(Effect::Checkpoint {
                job: job_id.clone(),
                state: c.clone(),
            });
            if c.invalid.is_none() {
                fx.push(Effect::Feed(FeedEvent::CheckpointComplete {
                    job: job_id.clone(),
                    step,
                    path: c.path.clone(),
                    source: c.source.clone(),
                }));
            }
        }
    }

    /// A rank ended: the job ends once every rank has.
    fn rank_end(
        &mut self,
        job_id: &JobId,
        rank: u32,
        status: String,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if let Some(r) = job.ranks.get_mut(&rank) {
            r.ended = Some(status);
        }
        if job.ranks.len() as u32 >= job.world_size && job.ranks.values().all(|r| r.ended.is_some())
        {
            let ok = job.ranks.values().all(|r| r.ended.as_deref() == Some("ok"));
            job.state = if ok {
                JobRunState::Finished
            } else {
                JobRunState::Failed
            };
            self.ledger.ended(job_id, now);
            fx.push(Effect::Feed(FeedEvent::JobEnded {
                job: job.id.clone(),
                state: job.state,
                step: job.step,
            }));
        }
    }

    /// Acts on what a finished step told the workload detectors.
    pub(super) fn step_verdict(
        &mut self,
        job_id: &JobId,
        v: StepVerdict,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        if let Some(slow) = v.slowdown {
            fx.push(Effect::Feed(match slow {
                Some(factor) => FeedEvent::JobSlowdown {
                    job: job_id.clone(),
                    factor,
                },
                None => FeedEvent::JobSpeedRecovered {
                    job: job_id.clone(),
                },
            }));
        }
        for (rank, factor) in v.new_stragglers {
            let Some((node, card)) = self.rank_place(job_id, rank) else {
                continue;
            };
            let cause = Cause {
                node: node.clone(),
                card,
                rank: Some(rank),
                what: CauseKind::Straggler { factor },
            };
            let evidence = format!(
                "rank {rank} on {node}/{} computes {factor:.2}x as long as its peers of the same card model",
                card.map_or("?".to_owned(), |c| c.to_string())
            );
            let id = self.open_incident(
                IncidentKind::Straggler,
                cause.clone(),
                Some(job_id.clone()),
                now,
                now,
                evidence,
                Action::None,
                fx,
            );
            let culprit = self.culprit(id, &cause);
            self.ledger
                .straggler(job_id, Some(culprit), self.cfg.workload.straggler_window);
            if let Some(c) = card.and_then(|c| self.card_mut(&node, c))
                && c.health == CardHealth::Healthy
            {
                c.health = CardHealth::Suspect {
                    since_ms: now,
                    reason: SuspectReason::Straggler { factor },
                };
            }
        }
        for rank in v.recovered {
            let Some((node, card)) = self.rank_place(job_id, rank) else {
                continue;
            };
            if let Some(id) = self.book.open_at(&node, card)
                && self
                    .book
                    .get(&id)
                    .is_some_and(|i| i.kind == IncidentKind::Straggler)
            {
                self.book.close_at(&node, card);
                if let Some(inc) = self.book.get_mut(&id) {
                    inc.add_evidence(format!("rank {rank} back to its peers' speed"));
                    self.ledger.straggler(job_id, None, 0);
                    inc.resolve(now);
                    fx.push(Effect::incident(inc));
                }
            }
            if let Some(c) = card.and_then(|c| self.card_mut(&node, c))
                && matches!(
                    c.health,
                    CardHealth::Suspect {
                        reason: SuspectReason::Straggler { .. },
                        ..
                    }
                )
            {
                c.health = CardHealth::Healthy;
            }
        }
    }

    pub(super) fn rank_place(&self, job: &JobId, rank: u32) -> Option<(NodeId, Option<u32>)> {
        self.jobs
            .get(job)
            .and_then(|j| j.ranks.get(&rank))
            .map(|r| (r.node.clone(), r.card))
    }

    /// Hang detection: a running job without progress past its deadline.
    pub(super) fn check_hangs(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let wcfg = self.cfg.workload;
        let mut hung = Vec::new();
        for job in self.jobs.values_mut() {
            if job.state != JobRunState::Running
                || job.hung
                || job.steps_total == 0
                || self.recoveries.contains_key(&job.id)
            {
                continue;
            }
            let silence = now - job.last_progress_ms;
            let deadline = job.timing.hang_deadline_ms(&wcfg);
            if silence < deadline {
                continue;
            }
            job.hung = true;
            let laggards = job.timing.laggards(job.world_size);
            let places: Vec<(u32, NodeId, Option<u32>)> = laggards
                .iter()
                .filter_map(|r| job.ranks.get(r).map(|x| (*r, x.node.clone(), x.card)))
                .collect();
            hung.push((
                job.id.clone(),
                job.last_progress_ms,
                silence,
                deadline,
                places,
            ));
        }
        for (job, since, silence, deadline, places) in hung {
            self.localize_hang(job, since, silence, deadline, places, now, fx);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn localize_hang(
        &mut self,
        job: JobId,
        since: Millis,
        silence: Millis,
        deadline: Millis,
        places: Vec<(u32, NodeId, Option<u32>)>,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let why = format!("no progress from job {job} for {silence} ms (deadline {deadline} ms)");
        if !places.is_empty() {
            // Group the ranks that missed the collective by node: several on
            // one node point at the node, one points at its card.
            let mut by_node: BTreeMap<NodeId, Vec<(u32, Option<u32>)>> = BTreeMap::new();
            for (rank, node, card) in places {
                by_node.entry(node).or_default().push((rank, card));
            }
            for (node, ranks) in by_node.into_iter().take(8) {
                let (card, rank) = match ranks.as_slice() {
                    [(rank, card)] => (*card, Some(*rank)),
                    _ => (None, None),
                };
                let list: Vec<String> = ranks.iter().map(|(r, _)| r.to_string()).collect();
                let evidence = format!(
                    "{why}; rank(s) {} on {node} never reached the collective",
                    list.join(",")
                );
                let cause = Cause {
                    node,
                    card,
                    rank,
                    what: CauseKind::Hang(HangClue::Collective),
                };
                self.open_incident(
                    IncidentKind::Hang,
                    cause,
                    Some(job.clone()),
                    since,
                    now,
                    evidence,
                    Action::RestartApp,
                    fx,
                );
            }
            return;
        }
        let Some(cause) = self.hang_without_phases(&job) else {
            return;
        };
        self.open_incident(
            IncidentKind::Hang,
            cause,
            Some(job),
            since,
            now,
            why,
            Action::RestartApp,
            fx,
        );
    }

    /// A hang without phase information: blamed on card and node signals
    /// of the job's ranks, else on the node whose ranks went silent first.
    fn hang_without_phases(&self, job: &JobId) -> Option<Cause> {
        let j = self.jobs.get(job)?;
        let mut suspect: Option<(NodeId, Option<u32>, Option<u32>, HangClue)> = None;
        for (rank, r) in &j.ranks {
            let node = self.nodes.get(&r.node);
            if node.is_some_and(|n| {
                matches!(n.liveness, Liveness::Lost { .. } | Liveness::Suspect { .. })
            }) {
                suspect = Some((r.node.clone(), None, None, HangClue::NodeSilent));
                break;
            }
            let failed = r
                .card
                .and_then(|c| node.and_then(|n| n.cards.get(c as usize)))
                .is_some_and(|c| {
                    matches!(
                        c.health,
                        CardHealth::Failed { .. } | CardHealth::Suspect { .. }
                    )
                });
            if failed {
                suspect = Some((r.node.clone(), r.card, Some(*rank), HangClue::CardSignal));
                break;
            }
        }
        let (node, card, rank, clue) = match suspect {
            Some(s) => s,
            None => {
                let (rank, r) = j.ranks.iter().min_by_key(|(_, r)| r.at_ms)?;
                (
                    r.node.clone(),
                    None,
                    None,
                    HangClue::SilentFirst { rank: *rank },
                )
            }
        };
        Some(Cause {
            node,
            card,
            rank,
            what: CauseKind::Hang(clue),
        })
    }

    /// A worker process ended. The first rank of a job to fail is the
    /// culprit; ranks that fail after it are symptoms folded into its incident.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn worker_exit(
        &mut self,
        node: NodeId,
        pid: u32,
        rank: Option<u32>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        at: Millis,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        if exit_code == Some(0) {
            return;
        }
        // A supervisor knows the process, not the rank: match its pid
        // against the ranks' start records.
        let rank = rank.or_else(|| {
            self.jobs.values().find_map(|j| {
                j.ranks
                    .iter()
                    .find(|(_, r)| r.node == node && pid != 0 && r.pid == Some(pid))
                    .map(|(rank, _)| *rank)
            })
        });
        if self.exit_during_recovery(&node, signal, now, fx) {
            return;
        }
        // Which job and card: by rank, or by the node's only running job.
        let job_id = self
            .jobs
            .values()
            .find(|j| {
                j.state == JobRunState::Running
                    && rank.is_some_and(|r| j.ranks.get(&r).is_some_and(|x| x.node == node))
            })
            .map(|j| j.id.clone())
            .or_else(|| self.job_on_node(&node));
        let card = match (&job_id, rank) {
            (Some(j), Some(r)) => self.rank_place(j, r).and_then(|(_, c)| c),
            _ => None,
        };
        let how = ExitStatus::new(exit_code, signal);
        let evidence = format!(
            "rank {} on {node} exited ({how})",
            rank.map_or("?".to_owned(), |r| r.to_string())
        );
        let cause = Cause {
            node,
            card,
            rank,
            what: CauseKind::Exit(how),
        };
        if let Some(j) = &job_id
            && self.fold_exit(j, &cause, &evidence, at, fx)
        {
            return;
        }
        let id = self.open_incident(
            IncidentKind::WorkerExit,
            cause,
            job_id.clone(),
            at,
            now,
            evidence,
            Action::RestartApp,
            fx,
        );
        if let Some(j) = job_id.and_then(|j| self.jobs.get_mut(&j)) {
            j.exit_incident = Some((id, at));
        }
    }

    /// During a recovery, exits are expected: ordered stops end workers
    /// with SIGTERM or SIGKILL; a worker that fails while restoring could
    /// not load its checkpoint. Returns whether the exit was one of these.
    fn exit_during_recovery(
        &mut self,
        node: &NodeId,
        signal: Option<i32>,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let recovering = self
            .recoveries
            .values()
            .find(|r| {
                self.nodes
                    .get(node)
                    .is_some_and(|n| n.job.as_ref() == Some(&r.job))
            })
            .map(|r| (r.job.clone(), r.phase));
        let Some((job, phase)) = recovering else {
            return false;
        };
        if !matches!(signal, Some(9 | 15)) && phase == RecoveryPhase::Restore {
            self.restore_failed(&job, now, fx);
        }
        true
    }

    /// Folds an exit into the job's open worker-exit incident when it came
    /// within the window of the first; an earlier exit becomes the culprit.
    /// Returns whether it folded.
    fn fold_exit(
        &mut self,
        job: &JobId,
        cause: &Cause,
        evidence: &str,
        at: Millis,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let window = self.cfg.workload.hang_floor_ms;
        let Some(j) = self.jobs.get_mut(job) else {
            return false;
        };
        let Some((id, first_at)) = j.exit_incident else {
            return false;
        };
        let Some(inc) = self.book.get_mut(&id) else {
            return false;
        };
        if inc.state != IncidentState::Open || (at - first_at).abs() > window {
            return false;
        }
        inc.folded += 1;
        inc.add_evidence(evidence.to_owned());
        if at < first_at {
            // This one failed first: it is the culprit.
            self.book.move_cause(id, cause.clone());
            j.exit_incident = Some((id, at));
        }
        if let Some(inc) = self.book.get(&id) {
            fx.push(Effect::incident(inc));
        }
        true
    }
}
