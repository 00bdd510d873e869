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
        let d = at - c.last_ms;
        let mut healthy_step = None;
        let mut slow_step = None;
        let mut checkpoint_step = false;
        let mut effective = 0;
        match c.mode {
            Mode::Recovery | Mode::Waiting => {
                // Resumed: one healthy step of this interval was training.
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
                effective = step_ms * i64::from(c.cards);
            }
            Mode::Running => {
                let over = expected.map_or(0, |e| (d - e).max(0));
                // Split the time over the expected step between a
                // checkpoint save and an open straggler.
                let (ckpt, strag) = if c.checkpoint_pending {
                    // A synchronous save blocks from the step end to its
                    // report; an asynchronous one only for what the step
                    // took over the expected time. While a straggler is
                    // open the rest is its excess.
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
                    slow_step = Some(d);
                    (0, over)
                } else {
                    healthy_step = Some(d);
                    (0, 0)
                };
                let straggler = c.straggler.clone().unwrap_or_default();
                let e_end = at - ckpt - strag;
                self.charge(
                    job,
                    c.cards,
                    c.last_ms,
                    e_end,
                    Category::Effective,
                    &Culprit::default(),
                );
                self.charge(
                    job,
                    c.cards,
                    e_end,
                    at - ckpt,
                    Category::Straggler,
                    &straggler,
                );
                self.charge(
                    job,
                    c.cards,
                    at - ckpt,
                    at,
                    Category::Checkpoint,
                    &Culprit::default(),
                );
                checkpoint_step = c.checkpoint_pending;
                effective = (e_end - c.last_ms) * i64::from(c.cards);
            }
            Mode::Ended => {}
        }
        let Some(cur) = self.cursors.get_mut(job) else {
            return;
        };
        if let Some(h) = healthy_step {
            // Only ordinary steps teach the expected step time: within 15%
            // of it, or a new normal held for a whole window (a job-wide
            // change of pace).
            let ordinary = cur.expected_step().is_none_or(|e| h * 100 <= e * 115);
            if ordinary {
                cur.unusual = 0;
            } else {
                cur.unusual += 1;
            }
            if ordinary || cur.unusual >= HEALTHY_WINDOW as u32 {
                if !ordinary {
                    cur.healthy.clear();
                    cur.unusual = 0;
                }
                cur.healthy.push_back(h);
                if cur.healthy.len() > HEALTHY_WINDOW {
                    cur.healthy.pop_front();
                }
            }
        }
        if let Some(d) = slow_step {
            cur.slow.push_back(d);
            if cur.slow.len() > SLOW_WINDOW {
                cur.slow.pop_front();
            }
        }
        cur.mode = Mode::Running;
        cur.culprit = Culprit::default();
        cur.checkpoint_pending = false;
        cur.checkpoint_at = None;
        cur.last_ms = at;
        cur.effective_total += effective;
        while cur.steps.back().is_some_and(|(s, _, _, _)| *s >= step) {
            cur.steps.pop_back();
        }
        cur.steps
            .push_back((step, at, cur.effective_total, checkpoint_step));
        if cur.steps.len() > STEP_HISTORY {
            cur.steps.pop_front();
        }
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

/// How `report` groups the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One entry per job (CONTRACT.md's ledger entry).
    Job,
    /// Losses by the node, card or card model that caused them.
    Node,
    Card,
    Model,
    /// Losses by category over every job.
    Cause,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "job" => GroupBy::Job,
            "node" => GroupBy::Node,
            "card" => GroupBy::Card,
            "model" => GroupBy::Model,
            "cause" => GroupBy::Cause,
            _ => {
                return Err(format!(
                    "--by {s:?}: expected job, node, card, model or cause"
                ));
            }
        })
    }
}

const MS_PER_HOUR: f64 = 3_600_000.0;

fn hours(card_ms: i64) -> f64 {
    card_ms as f64 / MS_PER_HOUR
}

fn losses_json(t: &Totals) -> (serde_json::Value, serde_json::Value) {
    let mut h = serde_json::Map::new();
    let mut ms = serde_json::Map::new();
    for c in Category::LOSSES {
        let v = t.by_category.get(&c).copied().unwrap_or(0);
        h.insert(c.as_str().to_owned(), hours(v).into());
        ms.insert(c.as_str().to_owned(), v.into());
    }
    (h.into(), ms.into())
}

/// The ledger as JSON: with `GroupBy::Job`, one entry per job shaped as in
/// CONTRACT.md (hours), with the exact integer card-milliseconds beside them
/// (`*_card_ms`), for which allocated = effective + lost holds exactly.
pub fn report(rows: &[LedgerRow], by: GroupBy, job: Option<&JobId>) -> Vec<serde_json::Value> {
    use serde_json::json;
    let rows = rows.iter().filter(|r| job.is_none_or(|j| r.job == *j));
    match by {
        GroupBy::Job => {
            let mut per: BTreeMap<&JobId, Totals> = BTreeMap::new();
            for r in rows {
                *per.entry(&r.job)
                    .or_default()
                    .by_category
                    .entry(r.category)
                    .or_insert(0) += r.card_ms;
            }
            per.into_iter()
                .map(|(j, t)| {
                    let (lost_h, lost_ms) = losses_json(&t);
                    let alloc = t.allocated();
                    json!({
                        "job": j,
                        "allocated_card_hours": hours(alloc),
                        "effective_card_hours": hours(t.effective()),
                        "ettr": if alloc > 0 { t.effective() as f64 / alloc as f64 } else { 0.0 },
                        "lost_card_hours": lost_h,
                        "allocated_card_ms": alloc,
                        "effective_card_ms": t.effective(),
                        "lost_card_ms": lost_ms,
                    })
                })
                .collect()
        }
        GroupBy::Cause => {
            let mut per: BTreeMap<Category, i64> = BTreeMap::new();
            let mut alloc = 0;
            for r in rows {
                alloc += r.card_ms;
                *per.entry(r.category).or_insert(0) += r.card_ms;
            }
            per.into_iter()
                .map(|(c, v)| {
                    json!({
                        "cause": c.as_str(),
                        "card_hours": hours(v),
                        "card_ms": v,
                        "share": if alloc > 0 { v as f64 / alloc as f64 } else { 0.0 },
                    })
                })
                .collect()
        }
        GroupBy::Node | GroupBy::Card | GroupBy::Model => {
            let key = |c: &Culprit| -> Option<String> {
                match by {
                    GroupBy::Node => c.node.as_ref().map(|n| n.to_string()),
                    GroupBy::Card => c
                        .node
                        .as_ref()
                        .zip(c.card)
                        .map(|(n, i)| format!("{n}/{i}"))
                        .or_else(|| c.node.as_ref().map(|n| n.to_string())),
                    _ => c.model.clone(),
                }
            };
            let field = match by {
                GroupBy::Node => "node",
                GroupBy::Card => "card",
                _ => "model",
            };
            let mut per: BTreeMap<String, (Totals, BTreeSet<IncidentId>)> = BTreeMap::new();
            for r in rows.filter(|r| r.category != Category::Effective) {
                let Some(k) = key(&r.culprit) else { continue };
                let e = per.entry(k).or_default();
                *e.0.by_category.entry(r.category).or_insert(0) += r.card_ms;
                e.1.extend(r.culprit.incident);
            }
            let mut out: Vec<(i64, serde_json::Value)> = per
                .into_iter()
                .map(|(k, (t, incs))| {
                    let (lost_h, _) = losses_json(&t);
                    (
                        t.lost(),
                        json!({
                            field: k,
                            "lost_card_hours_total": hours(t.lost()),
                            "lost_card_ms_total": t.lost(),
                            "lost_card_hours": lost_h,
                            "incidents": incs.into_iter().collect::<Vec<_>>(),
                        }),
                    )
                })
                .collect();
            out.sort_by_key(|(lost, _)| std::cmp::Reverse(*lost));
            out.into_iter().map(|(_, v)| v).collect()
        }
    }
}

/// The checkpoint interval that maximizes ETTR for a job, from what the
/// ledger observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub job: JobId,
    /// Observed: seconds of training per fault (running time / faults).
    pub mtbf_s: f64,
    /// Observed: seconds one checkpoint save blocks training.
    pub checkpoint_cost_s: f64,
    /// Observed: seconds from a fault to training again, per fault.
    pub restart_cost_s: f64,
    /// Observed: seconds between checkpoints now.
    pub current_interval_s: Option<f64>,
    /// Young/Daly: sqrt(2 C (M + R)) - C, at least C.
    pub optimal_interval_s: f64,
    pub expected_ettr_now: Option<f64>,
    pub expected_ettr_optimal: f64,
    /// ETTR gained by moving to the optimal interval.
    pub expected_gain: Option<f64>,
    /// Why the advice is rough, if it is.
    pub note: Option<String>,
}

/// First-order expected ETTR with checkpoints every `tau` seconds:
/// checkpoint overhead C/(tau + C), plus per fault the rework (half an
/// interval) and the restart.
fn expected_ettr(tau: f64, c: f64, r: f64, m: f64) -> f64 {
    let overhead = c / (tau + c);
    let per_fault = (tau + c) / 2.0 + r;
    ((1.0 - overhead) * (1.0 - per_fault / m)).clamp(0.0, 1.0)
}

impl Ledger {
    /// Young/Daly advice for every job with enough history.
    pub fn advise(&self, now: Millis) -> Vec<Advice> {
        let totals = self.totals(now);
        let mut out = Vec::new();
        for (job, c) in &self.cursors {
            let Some(t) = totals.get(job) else { continue };
            let cards = f64::from(c.cards.max(1));
            let secs = |cat: Category| {
                t.by_category.get(&cat).copied().unwrap_or(0) as f64 / cards / 1000.0
            };
            let running =
                secs(Category::Effective) + secs(Category::Straggler) + secs(Category::Checkpoint);
            if running <= 0.0 || c.checkpoints == 0 {
                continue;
            }
            let ckpt = secs(Category::Checkpoint) / c.checkpoints as f64;
            let faults = c.faults.max(1) as f64;
            let restart = (secs(Category::Detection)
                + secs(Category::Recovery)
                + secs(Category::WaitingForCapacity))
                / faults;
            let mtbf = running / faults;
            let note = (c.faults == 0).then(|| {
                "no fault observed yet: the failure rate is a lower bound (one fault assumed)"
                    .to_owned()
            });
            let current = Some((running - secs(Category::Checkpoint)) / c.checkpoints as f64);
            let opt = ((2.0 * ckpt.max(0.001) * (mtbf + restart)).sqrt() - ckpt).max(ckpt);
            let now_e = current.map(|tau| expected_ettr(tau, ckpt, restart, mtbf));
            let opt_e = expected_ettr(opt, ckpt, restart, mtbf);
            out.push(Advice {
                job: job.clone(),
                mtbf_s: mtbf,
                checkpoint_cost_s: ckpt,
                restart_cost_s: restart,
                current_interval_s: current,
                optimal_interval_s: opt,
                expected_ettr_now: now_e,
                expected_ettr_optimal: opt_e,
                expected_gain: now_e.map(|e| opt_e - e),
                note,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job() -> JobId {
        JobId::new("pretrain").expect("valid")
    }

    fn culprit() -> Culprit {
        Culprit {
            incident: Some(IncidentId(1)),
            node: Some(NodeId::new("n2").expect("valid")),
            card: Some(5),
            model: Some("H100".into()),
        }
    }

    fn get(t: &Totals, c: Category) -> i64 {
        t.by_category.get(&c).copied().unwrap_or(0)
    }

    /// 8 cards, 1 s steps, a checkpoint after step 10, an XID at 15.5 s,
    /// detected at 16 s, 2 s waiting for a spare, restored from step 10 at
    /// 20 s, resumed at 23 s, ended at 30 s.
    #[test]
    fn a_recovery_is_accounted_by_cause() {
        let mut l = Ledger::default();
        let j = job();
        for s in 1..=10 {
            l.step(&j, 8, 0, s, s as i64 * 1000);
        }
        l.checkpoint(&j, 12_000);
        l.step(&j, 8, 0, 11, 13_000); // 2 s checkpoint pause
        for s in 12..=15 {
            l.step(&j, 8, 0, s, 13_000 + (s as i64 - 11) * 1000);
        }
        l.fault(&j, 17_500, 18_000, culprit());
        l.waiting(&j, 18_500, true);
        l.waiting(&j, 20_500, false);
        l.restored(&j, Some(10));
        l.step(&j, 8, 0, 11, 23_000);
        for s in 12..=18 {
            l.step(&j, 8, 0, s, 23_000 + (s as i64 - 11) * 1000);
        }
        l.ended(&j, 30_000);
        let t = &l.totals(40_000)[&j];
        assert_eq!(t.allocated(), 30_000 * 8, "from start to end");
        assert_eq!(get(t, Category::Checkpoint), 2000 * 8);
        assert_eq!(get(t, Category::Detection), 500 * 8);
        assert_eq!(get(t, Category::WaitingForCapacity), 2000 * 8);
        // 17 s..17.5 s in flight, and the effective time of steps 11..15
        // (1 s of step 11, whose other 2 s were the checkpoint, and 4 s).
        assert_eq!(get(t, Category::RolledBack), (500 + 5000) * 8);
        // 18 s..18.5 s and 20.5 s..22 s (the resumed step took the last 1 s).
        assert_eq!(get(t, Category::Recovery), (500 + 1500) * 8);
        assert_eq!(t.effective() + t.lost(), t.allocated());
        assert_eq!(t.effective(), (10_000 + 1000 + 7000) * 8);
        // The losses link to the incident and card.
        let rows = l.rows(40_000, None, None);
        assert!(
            rows.iter()
                .filter(|r| matches!(r.category, Category::Detection | Category::Recovery))
                .all(|r| r.culprit.card == Some(5) && r.culprit.incident == Some(IncidentId(1)))
        );
    }

    #[test]
    fn straggler_excess_is_charged_to_the_slow_card() {
        let mut l = Ledger::default();
        let j = job();
        for s in 1..=10 {
            l.step(&j, 4, 0, s, s as i64 * 1000);
        }
        l.straggler(&j, Some(culprit()), 0);
        for s in 11..=15 {
            l.step(&j, 4, 0, s, 10_000 + (s as i64 - 10) * 1300);
        }
        l.straggler(&j, None, 0);
        let t = &l.totals(16_500)[&j];
        assert_eq!(get(t, Category::Straggler), 5 * 300 * 4);
        assert_eq!(t.allocated(), 16_500 * 4);
        assert_eq!(t.effective() + t.lost(), t.allocated());
    }

    #[test]
    fn time_ranges_select_minutes_and_restore_round_trips() {
        let mut l = Ledger::default();
        let j = job();
        for s in 1..=180 {
            l.step(&j, 2, 0, s, s as i64 * 1000);
        }
        let (rows, cursors) = l.take_dirty();
        let minute2: i64 = l
            .rows(180_000, Some(60_000), Some(120_000))
            .iter()
            .map(|r| r.card_ms)
            .sum();
        assert_eq!(minute2, 60_000 * 2);
        let mut back = Ledger::default();
        back.restore(rows, cursors);
        assert_eq!(back.totals(200_000), l.totals(200_000));
        // A restored ledger goes on from its cursor.
        back.step(&j, 2, 0, 181, 181_000);
        assert_eq!(back.totals(181_000)[&j].allocated(), 181_000 * 2);
    }

    proptest! {
        /// Whatever happens, in whatever order, the identity holds exactly
        /// and the total is the job's cards over its life.
        #[test]
        fn the_identity_always_holds(ops in proptest::collection::vec((0u8..7, 1i64..5000), 1..120)) {
            let mut l = Ledger::default();
            let j = job();
            let mut now = 0;
            let mut step = 0;
            l.step(&j, 8, 0, 0, 0);
            for (op, dt) in ops {
                now += dt;
                match op {
                    0 | 1 => { step += 1; l.step(&j, 8, 0, step, now); }
                    2 => l.checkpoint(&j, now),
                    3 => l.fault(&j, now - dt / 2, now, culprit()),
                    4 => l.waiting(&j, now, dt % 2 == 0),
                    5 => { l.restored(&j, Some(step / 2)); step /= 2; }
                    _ => l.straggler(&j, (dt % 2 == 0).then(culprit), (dt % 8) as usize),
                }
            }
            let t = &l.totals(now)[&j];
            prop_assert_eq!(t.effective() + t.lost(), t.allocated());
            prop_assert_eq!(t.allocated(), now * 8);
            prop_assert!(t.by_category.values().all(|v| *v >= 0), "{:?}", t);
        }
    }

    #[test]
    fn reports_group_by_job_culprit_and_cause() {
        let mut l = Ledger::default();
        let j = job();
        for s in 1..=10 {
            l.step(&j, 8, 0, s, s as i64 * 1000);
        }
        l.fault(&j, 10_500, 11_000, culprit());
        l.restored(&j, Some(5));
        l.step(&j, 8, 0, 6, 14_000);
        let rows = l.rows(14_000, None, None);
        let by_job = report(&rows, GroupBy::Job, None);
        assert_eq!(by_job.len(), 1);
        let e = &by_job[0];
        let lost: i64 = e["lost_card_ms"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_i64()).sum());
        assert_eq!(e["allocated_card_ms"].as_i64(), Some(14_000 * 8));
        assert_eq!(
            e["effective_card_ms"].as_i64().map(|x| x + lost),
            Some(14_000 * 8)
        );
        assert!(
            (e["allocated_card_hours"].as_f64().unwrap_or(0.0) - 14.0 * 8.0 / 3600.0).abs() < 1e-12
        );
        let by_card = report(&rows, GroupBy::Card, None);
        assert_eq!(by_card[0]["card"], "n2/5");
        assert_eq!(by_card[0]["incidents"][0], "inc-1");
        let by_cause = report(&rows, GroupBy::Cause, None);
        assert!(by_cause.iter().any(|c| c["cause"] == "rolled_back"));
        assert!(
            report(
                &rows,
                GroupBy::Job,
                Some(&JobId::new("other").expect("valid"))
            )
            .is_empty()
        );
        assert!("rack".parse::<GroupBy>().is_err());
    }

    #[test]
    fn advice_follows_young_daly() {
        let mut l = Ledger::default();
        let j = job();
        // 1 s steps, a 10 s checkpoint every 100 steps, a fault every 1000 s
        // with a 60 s recovery.
        let mut t = 0;
        let mut step = 0;
        for cycle in 0..4 {
            for _ in 0..10 {
                for _ in 0..100 {
                    step += 1;
                    t += 1000;
                    l.step(&j, 8, 0, step, t);
                }
                t += 10_000;
                l.checkpoint(&j, t);
            }
            if cycle < 3 {
                l.fault(&j, t, t, culprit());
                t += 60_000;
                l.restored(&j, Some(step));
            }
        }
        let a = &l.advise(t)[0];
        assert!((a.checkpoint_cost_s - 10.0).abs() < 1.5, "{a:?}");
        assert!(a.optimal_interval_s > a.checkpoint_cost_s);
        // sqrt(2 * 10 * (mtbf + 60)) - 10 with mtbf about 1000 s.
        let expect = (2.0 * a.checkpoint_cost_s * (a.mtbf_s + a.restart_cost_s)).sqrt()
            - a.checkpoint_cost_s;
        assert!((a.optimal_interval_s - expect).abs() < 1e-9);
        assert!(a.expected_gain.is_some_and(|g| g >= 0.0), "{a:?}");
    }
}
