//! The goodput ledger: allocated versus effective card-hours per job, with
//! every lost card-hour attributed to a cause, an incident and a card.
//!
//! Time is accounted lazily: each job has a cursor (the last instant
//! accounted and the job's mode), and every input that changes the picture
//! (a step ends, a fault is detected, capacity is waited for, a checkpoint
//! is restored, the job ends) first charges the interval since the cursor
//! to one category, then moves the cursor. Each charge is O(1) (plus one
//! per minute the interval spans). Amounts are integer card-milliseconds,
//! so allocated = effective + the sum of the losses holds exactly.
//!
//! - Running: the time between two step ends is `effective`, except the
//!   part over the expected healthy step time, which is `checkpoint` when a
//!   checkpoint was saved in between, or `straggler` (attributed to the
//!   slow rank's card) while a straggler incident is open.
//! - A fault that stops the job: from the last step end to the fault, the
//!   partial step is `rolled_back`; from the fault to its detection,
//!   `detection`; then `recovery` (teardown, restart, checkpoint loading,
//!   less one healthy step at resume) and `waiting_for_capacity` while the
//!   recovery waits for a spare.
//! - A restore from a checkpoint at step S moves the effective time of the
//!   steps after S, which are thrown away, to `rolled_back`.
//!
//! The ledger counts a job's world size in cards for its whole life: a
//! spare's cards take the place of the lost ones.

use crate::ids::{IncidentId, JobId, NodeId};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where a card-millisecond went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Effective,
    Detection,
    Recovery,
    RolledBack,
    Straggler,
    WaitingForCapacity,
    Checkpoint,
    Other,
}

impl Category {
    pub const LOSSES: [Category; 7] = [
        Category::Detection,
        Category::Recovery,
        Category::RolledBack,
        Category::Straggler,
        Category::WaitingForCapacity,
        Category::Checkpoint,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Effective => "effective",
            Category::Detection => "detection",
            Category::Recovery => "recovery",
            Category::RolledBack => "rolled_back",
            Category::Straggler => "straggler",
            Category::WaitingForCapacity => "waiting_for_capacity",
            Category::Checkpoint => "checkpoint",
            Category::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        [Category::Effective]
            .into_iter()
            .chain(Category::LOSSES)
            .find(|c| c.as_str() == s)
    }
}

/// What caused a loss: its incident and the card (or node) behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Culprit {
    pub incident: Option<IncidentId>,
    pub node: Option<NodeId>,
    pub card: Option<u32>,
    pub model: Option<String>,
}

/// Accounting granularity for time-range queries.
pub const BUCKET_MS: Millis = 60_000;

/// One stored amount: a job's card-milliseconds in a category, for one
/// culprit, within one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub job: JobId,
    pub bucket_ms: Millis,
    pub category: Category,
    pub culprit: Culprit,
    pub card_ms: i64,
}

type Key = (JobId, Millis, Category, Culprit);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Running,
    Recovery,
    Waiting,
    Ended,
}

/// Steps kept for rolling back and for the expected step time.
const STEP_HISTORY: usize = 4096;
const HEALTHY_WINDOW: usize = 16;
const SLOW_WINDOW: usize = 8;

/// A job's accounting position; stored, so a restarted controller goes on
/// from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub job: JobId,
    pub cards: u32,
    pub last_ms: Millis,
    mode: Mode,
    /// The culprit of the loss under way (recovery, waiting).
    culprit: Culprit,
    /// An open straggler incident's culprit.
    straggler: Option<Culprit>,
    checkpoint_pending: bool,
    /// When the first checkpoint report since the last step end arrived.
    #[serde(default)]
    checkpoint_at: Option<Millis>,
    /// Recent healthy step durations.
    healthy: VecDeque<Millis>,
    /// Recent step durations while a straggler is open.
    #[serde(default)]
    slow: VecDeque<Millis>,
    /// Effective card-ms charged so far.
    effective_total: i64,
    /// Checkpoints saved and faults that stopped the job, for the advice.
    #[serde(default)]
    pub checkpoints: u64,
    #[serde(default)]
    pub faults: u64,
    /// Consecutive steps off the expected pace.
    #[serde(default)]
    unusual: u32,
    /// (step, end time, effective_total then, a checkpoint was saved
    /// during it) of the steps kept.
    steps: VecDeque<(u64, Millis, i64, bool)>,
}

impl Cursor {
    /// Moves the cursor past a step that ended at `at`, learning the
    /// expected and the slow step time from it.
    fn stepped(&mut self, step: u64, at: Millis, c: &Charged) {
        if let Some(h) = c.healthy_step {
            // Only ordinary steps teach the expected step time: within 15%
            // of it, or a new normal held for a whole window (a job-wide
            // change of pace).
            let ordinary = self.expected_step().is_none_or(|e| h * 100 <= e * 115);
            if ordinary {
                self.unusual = 0;
            } else {
                self.unusual += 1;
            }
            if ordinary || self.unusual >= HEALTHY_WINDOW as u32 {
                if !ordinary {
                    self.healthy.clear();
                    self.unusual = 0;
                }
                self.healthy.push_back(h);
                if self.healthy.len() > HEALTHY_WINDOW {
                    self.healthy.pop_front();
                }
            }
        }
        if let Some(d) = c.slow_step {
            self.slow.push_back(d);
            if self.slow.len() > SLOW_WINDOW {
                self.slow.pop_front();
            }
        }
        self.mode = Mode::Running;
        self.culprit = Culprit::default();
        self.checkpoint_pending = false;
        self.checkpoint_at = None;
        self.last_ms = at;
        self.effective_total += c.effective;
        while self.steps.back().is_some_and(|(s, _, _, _)| *s >= step) {
            self.steps.pop_back();
        }
        self.steps
            .push_back((step, at, self.effective_total, c.checkpoint_step));
        if self.steps.len() > STEP_HISTORY {
            self.steps.pop_front();
        }
    }

    /// The median step time while the open straggler slows the job.
    fn slow_step(&self) -> Option<Millis> {
        if self.slow.is_empty() {
            return None;
        }
        let mut v: Vec<Millis> = self.slow.iter().copied().collect();
        v.sort_unstable();
        Some(v[v.len() / 2])
    }

    fn expected_step(&self) -> Option<Millis> {
        if self.healthy.is_empty() {
            return None;
        }
        let mut v: Vec<Millis> = self.healthy.iter().copied().collect();
        v.sort_unstable();
        Some(v[v.len() / 2])
    }
}

/// The fields of a cursor a step reads while it charges.
struct Snapshot {
    cards: u32,
    last_ms: Millis,
    mode: Mode,
    culprit: Culprit,
    straggler: Option<Culprit>,
    checkpoint_pending: bool,
    checkpoint_at: Option<Millis>,
    slow_step: Option<Millis>,
}

/// What charging one step found.
#[derive(Debug, Default)]
struct Charged {
    /// Effective card-ms charged.
    effective: i64,
    /// The step's duration, when it was an ordinary healthy step.
    healthy_step: Option<Millis>,
    /// The step's duration, when an open straggler slowed it.
    slow_step: Option<Millis>,
    /// A checkpoint was saved during the step.
    checkpoint_step: bool,
}

/// The ledger of every job.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    cursors: BTreeMap<JobId, Cursor>,
    amounts: BTreeMap<Key, i64>,
    dirty: BTreeSet<Key>,
    dirty_cursors: BTreeSet<JobId>,
}

/// The totals of one job (or of a group), card-milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub by_category: BTreeMap<Category, i64>,
}

impl Totals {
    pub fn effective(&self) -> i64 {
        self.by_category
            .get(&Category::Effective)
            .copied()
            .unwrap_or(0)
    }
    pub fn lost(&self) -> i64 {
        Category::LOSSES
            .iter()
            .map(|c| self.by_category.get(c).copied().unwrap_or(0))
            .sum()
    }
    pub fn allocated(&self) -> i64 {
        self.effective() + self.lost()
    }
}

impl Ledger {
    /// Restores stored amounts and cursors.
    pub fn restore(&mut self, rows: Vec<LedgerRow>, cursors: Vec<Cursor>) {
        for r in rows {
            self.amounts
                .insert((r.job, r.bucket_ms, r.category, r.culprit), r.card_ms);
        }
        for c in cursors {
            self.cursors.insert(c.job.clone(), c);
        }
    }

    fn add(&mut self, job: &JobId, at: Millis, cat: Category, culprit: &Culprit, card_ms: i64) {
        if card_ms == 0 {
            return;
        }
        let key = (
            job.clone(),
            at - at.rem_euclid(BUCKET_MS),
            cat,
            culprit.clone(),
        );
        *self.amounts.entry(key.clone()).or_insert(0) += card_ms;
        self.dirty.insert(key);
    }

    /// Charges [from, to) x cards to a category, split at minute bounds.
    fn charge(
        &mut self,
        job: &JobId,
        cards: u32,
        from: Millis,
        to: Millis,
        cat: Category,
        culprit: &Culprit,
    ) {
        let mut t = from;
        while t < to {
            let end = (t - t.rem_euclid(BUCKET_MS) + BUCKET_MS).min(to);
            self.add(job, t, cat, culprit, (end - t) * i64::from(cards));
            t = end;
        }
    }

    fn cursor(&mut self, job: &JobId, cards: u32, started_ms: Millis) -> &mut Cursor {
        self.dirty_cursors.insert(job.clone());
        self.cursors.entry(job.clone()).or_insert_with(|| Cursor {
            job: job.clone(),
            cards,
            last_ms: started_ms,
            mode: Mode::Running,
            culprit: Culprit::default(),
            straggler: None,
            checkpoint_pending: false,
            checkpoint_at: None,
            healthy: VecDeque::new(),
            slow: VecDeque::new(),
            effective_total: 0,
            checkpoints: 0,
            faults: 0,
            unusual: 0,
            steps: VecDeque::new(),
        })
    }

    /// The job finished a new step at `at` (the first rank's end record).
    pub fn step(&mut self, job: &JobId, cards: u32, started_ms: Millis, step: u64, at: Millis) {
        // What the step needs of the cursor, without copying its history.
        let cur = self.cursor(job, cards, started_ms);
        let c = Snapshot {
            cards: cur.cards,
            last_ms: cur.last_ms,
            mode: cur.mode,
            culprit: cur.culprit.clone(),
            straggler: cur.straggler.clone(),
            checkpoint_pending: cur.checkpoint_pending,
            checkpoint_at: cur.checkpoint_at,
            slow_step: cur.slow_step(),
        };
        let expected = cur.expected_step();
        if at < c.last_ms || c.mode == Mode::Ended {
            return;
        }
        let charged = match c.mode {
            Mode::Recovery | Mode::Waiting => self.charge_resumed(job, &c, expected, at),
            Mode::Running => self.charge_running(job, &c, expected, at),
            Mode::Ended => Charged::default(),
        };
        if let Some(cur) = self.cursors.get_mut(job) {
            cur.stepped(step, at, &charged);
        }
    }

    /// The first step after a recovery: one healthy step of the interval
    /// was training, the rest was the recovery (or the wait for capacity).
    fn charge_resumed(
        &mut self,
        job: &JobId,
        c: &Snapshot,
        expected: Option<Millis>,
        at: Millis,
    ) -> Charged {
        let d = at - c.last_ms;
        let step_ms = expected.unwrap_or(0).min(d);
        let cat = if c.mode == Mode::Waiting {
            Category::WaitingForCapacity
        } else {
            Category::Recovery
        };
        self.charge(job, c.cards, c.last_ms, at - step_ms, cat, &c.culprit);
        self.charge(
            job,
            c.cards,
            at - step_ms,
            at,
            Category::Effective,
            &Culprit::default(),
        );
        Charged {
            effective: step_ms * i64::from(c.cards),
            ..Charged::default()
        }
    }

    /// A step of a running job: effective up to the expected step time,
    /// the time over it split between a checkpoint save and an open
    /// straggler.
    fn charge_running(
        &mut self,
        job: &JobId,
        c: &Snapshot,
        expected: Option<Millis>,
        at: Millis,
    ) -> Charged {
        let d = at - c.last_ms;
        let mut out = Charged::default();
        let over = expected.map_or(0, |e| (d - e).max(0));
        let (ckpt, strag) = if c.checkpoint_pending {
            // A synchronous save blocks from the step end to its report; an
            // asynchronous one only for what the step took over the
            // expected time. While a straggler is open the rest is its
            // excess.
            let slow_over = match (&c.straggler, expected, c.slow_step) {
                (Some(_), Some(e), Some(slow)) => (slow - e).clamp(0, over),
                _ => 0,
            };
            let ckpt = c
                .checkpoint_at
                .map_or(over - slow_over, |t| (t - c.last_ms).clamp(0, over));
            let strag = if c.straggler.is_some() {
                over - ckpt
            } else {
                0
            };
            (ckpt, strag)
        } else if c.straggler.is_some() {
            out.slow_step = Some(d);
            (0, over)
        } else {
            out.healthy_step = Some(d);
            (0, 0)
        };
        let straggler = c.straggler.clone().unwrap_or_default();
        let e_end = at - ckpt - strag;
        let none = Culprit::default();
        self.charge(job, c.cards, c.last_ms, e_end, Category::Effective, &none);
        self.charge(
            job,
            c.cards,
            e_end,
            at - ckpt,
            Category::Straggler,
            &straggler,
        );
        self.charge(job, c.cards, at - ckpt, at, Category::Checkpoint, &none);
        out.checkpoint_step = c.checkpoint_pending;
        out.effective = (e_end - c.last_ms) * i64::from(c.cards);
        out
    }

    /// A checkpoint was saved since the last step end; its report arrived
    /// at `at`.
    pub fn checkpoint(&mut self, job: &JobId, at: Millis) {
        if let Some(c) = self.cursors.get_mut(job) {
            if !c.checkpoint_pending {
                c.checkpoints += 1;
                c.checkpoint_at = (c.mode == Mode::Running && at >= c.last_ms).then_some(at);
            }
            c.checkpoint_pending = true;
            self.dirty_cursors.insert(job.clone());
        }
    }

    /// A straggler incident opened (Some) or closed (None) for the job.
    /// On opening, the excess of the slow steps that led to the verdict
    /// (at most the last `lookback` steps) moves from effective to
    /// straggler: the detector needs a few steps to be sure.
    pub fn straggler(&mut self, job: &JobId, culprit: Option<Culprit>, lookback: usize) {
        let Some(c) = self.cursors.get(job).cloned() else {
            return;
        };
        if let (Some(who), None, Some(expected)) = (&culprit, &c.straggler, c.expected_step()) {
            let n = c.steps.len();
            let first = n.saturating_sub(lookback).max(1);
            // Cumulative excess at each step of the window.
            let mut cumulative = Vec::new();
            let mut excess = 0;
            for i in first..n {
                let d = c.steps[i].1 - c.steps[i - 1].1;
                // A checkpoint step's excess is the checkpoint's already.
                if !c.steps[i].3 && d * 100 > expected * 115 {
                    excess += (d - expected) * i64::from(c.cards);
                }
                cumulative.push((i, excess));
            }
            let moved = self.take_effective(job, excess, Category::Straggler, who);
            if let Some(cur) = self.cursors.get_mut(job) {
                cur.effective_total -= moved;
                for (i, cum) in cumulative {
                    if let Some(s) = cur.steps.get_mut(i) {
                        s.2 -= cum.min(moved);
                    }
                }
            }
        }
        if let Some(cur) = self.cursors.get_mut(job) {
            if culprit.is_none() {
                cur.slow.clear();
            }
            cur.straggler = culprit;
        }
        self.dirty_cursors.insert(job.clone());
    }

    /// Moves up to `amount` effective card-ms, newest minutes first, to a
    /// loss category; returns what was moved.
    fn take_effective(&mut self, job: &JobId, amount: i64, to: Category, culprit: &Culprit) -> i64 {
        let mut remaining = amount.max(0);
        let keys: Vec<Key> = self
            .amounts
            .range(
                (
                    job.clone(),
                    Millis::MIN,
                    Category::Effective,
                    Culprit::default(),
                )..,
            )
            .take_while(|(k, _)| k.0 == *job)
            .filter(|(k, v)| k.2 == Category::Effective && k.3 == Culprit::default() && **v > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys.into_iter().rev() {
            if remaining == 0 {
                break;
            }
            let have = self.amounts.get(&k).copied().unwrap_or(0);
            let take = have.min(remaining);
            self.add(job, k.1, Category::Effective, &Culprit::default(), -take);
            self.add(job, k.1, to, culprit, take);
            remaining -= take;
        }
        amount.max(0) - remaining
    }

    /// A fault that stops the job happened at `fault_ms` and was detected
    /// at `detected_ms`. A fault during a recovery joins it.
    pub fn fault(&mut self, job: &JobId, fault_ms: Millis, detected_ms: Millis, culprit: Culprit) {
        let Some(c) = self.cursors.get(job).cloned() else {
            return;
        };
        if c.mode != Mode::Running || detected_ms < c.last_ms {
            return;
        }
        let fault_ms = fault_ms.clamp(c.last_ms, detected_ms);
        // A checkpoint saved since the last step end blocked training
        // until its report; only the rest of the step in flight is lost.
        let saved = c
            .checkpoint_at
            .filter(|_| c.checkpoint_pending)
            .map_or(c.last_ms, |t| t.clamp(c.last_ms, fault_ms));
        self.charge(
            job,
            c.cards,
            c.last_ms,
            saved,
            Category::Checkpoint,
            &Culprit::default(),
        );
        self.charge(
            job,
            c.cards,
            saved,
            fault_ms,
            Category::RolledBack,
            &culprit,
        );
        self.charge(
            job,
            c.cards,
            fault_ms,
            detected_ms,
            Category::Detection,
            &culprit,
        );
        if let Some(cur) = self.cursors.get_mut(job) {
            cur.faults += 1;
            cur.mode = Mode::Recovery;
            cur.culprit = culprit;
            cur.last_ms = detected_ms;
            cur.checkpoint_pending = false;
            cur.checkpoint_at = None;
        }
        self.dirty_cursors.insert(job.clone());
    }

    fn switch(&mut self, job: &JobId, now: Millis, to: Mode) {
        let Some(c) = self.cursors.get(job).cloned() else {
            return;
        };
        if now < c.last_ms || c.mode == to {
            return;
        }
        let cat = match c.mode {
            Mode::Recovery => Category::Recovery,
            Mode::Waiting => Category::WaitingForCapacity,
            Mode::Running => Category::Effective,
            Mode::Ended => return,
        };
        let culprit = if cat == Category::Effective {
            Culprit::default()
        } else {
            c.culprit.clone()
        };
        self.charge(job, c.cards, c.last_ms, now, cat, &culprit);
        if let Some(cur) = self.cursors.get_mut(job) {
            cur.mode = to;
            cur.last_ms = now;
        }
        self.dirty_cursors.insert(job.clone());
    }

    /// The job's recovery starts (true) or stops (false) waiting for capacity.
    pub fn waiting(&mut self, job: &JobId, now: Millis, waiting: bool) {
        let in_recovery = self
            .cursors
            .get(job)
            .is_some_and(|c| matches!(c.mode, Mode::Recovery | Mode::Waiting));
        if in_recovery {
            self.switch(
                job,
                now,
                if waiting {
                    Mode::Waiting
                } else {
                    Mode::Recovery
                },
            );
        }
    }

    /// The job restarts from the checkpoint at `from` (None: from scratch):
    /// the effective time of the later steps is thrown away. It is taken
    /// from the newest minutes first, where those steps ran.
    pub fn restored(&mut self, job: &JobId, from: Option<u64>) {
        let Some(c) = self.cursors.get(job).cloned() else {
            return;
        };
        let base = match from {
            Some(s) => match c.steps.iter().find(|(st, _, _, _)| *st == s) {
                Some((_, _, eff, _)) => *eff,
                None => return,
            },
            None => 0,
        };
        self.take_effective(
            job,
            c.effective_total - base,
            Category::RolledBack,
            &c.culprit,
        );
        if let Some(cur) = self.cursors.get_mut(job) {
            cur.effective_total = base;
            while cur.steps.back().is_some_and(|(s, _, _, _)| Some(*s) > from) {
                cur.steps.pop_back();
            }
        }
        self.dirty_cursors.insert(job.clone());
    }

    /// The job ended at `now`.
    pub fn ended(&mut self, job: &JobId, now: Millis) {
        self.switch(job, now, Mode::Ended);
    }

    /// Changed rows and cursors since the last call, to store.
    pub fn take_dirty(&mut self) -> (Vec<LedgerRow>, Vec<Cursor>) {
        let rows = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| LedgerRow {
                card_ms: self.amounts.get(&k).copied().unwrap_or(0),
                job: k.0,
                bucket_ms: k.1,
                category: k.2,
                culprit: k.3,
            })
            .collect();
        let cursors = std::mem::take(&mut self.dirty_cursors)
            .into_iter()
            .filter_map(|j| self.cursors.get(&j).cloned())
            .collect();
        (rows, cursors)
    }

    /// Every amount, plus each job's interval not yet accounted up to `now`
    /// (counted by the job's mode), within [since, until).
    pub fn rows(
        &self,
        now: Millis,
        since: Option<Millis>,
        until: Option<Millis>,
    ) -> Vec<LedgerRow> {
        let inside =
            |b: Millis| since.is_none_or(|s| b + BUCKET_MS > s) && until.is_none_or(|u| b < u);
        let mut out: Vec<LedgerRow> = self
            .amounts
            .iter()
            .filter(|(k, v)| **v != 0 && inside(k.1))
            .map(|(k, v)| LedgerRow {
                job: k.0.clone(),
                bucket_ms: k.1,
                category: k.2,
                culprit: k.3.clone(),
                card_ms: *v,
            })
            .collect();
        for c in self.cursors.values() {
            let cat = match c.mode {
                Mode::Running => Category::Effective,
                Mode::Recovery => Category::Recovery,
                Mode::Waiting => Category::WaitingForCapacity,
                Mode::Ended => continue,
            };
            let to = until.map_or(now, |u| u.min(now));
            let from = since.map_or(c.last_ms, |s| s.max(c.last_ms));
            if to > from {
                out.push(LedgerRow {
                    job: c.job.clone(),
                    bucket_ms: to - to.rem_euclid(BUCKET_MS),
                    category: cat,
                    culprit: if cat == Category::Effective {
                        Culprit::default()
                    } else {
                        c.culprit.clone()
                    },
                    card_ms: (to - from) * i64::from(c.cards),
                });
            }
        }
        out
    }

    /// Per-job totals up to `now`.
    pub fn totals(&self, now: Millis) -> BTreeMap<JobId, Totals> {
        let mut out: BTreeMap<JobId, Totals> = BTreeMap::new();
        for r in self.rows(now, None, None) {
            *out.entry(r.job)
                .or_default()
                .by_category
                .entry(r.category)
                .or_insert(0) += r.card_ms;
        }
        out
    }
}

mod advise;
mod report;

pub use advise::Advice;
pub use report::{
    CauseEntry, CulpritEntry, GroupBy, JobEntry, Losses, Report, report, report_jobs,
};

#[cfg(test)]
mod tests;
