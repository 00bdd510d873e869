//! Workload signals from per-rank progress: step timing, hangs, stragglers
//! and job-wide slowdowns.
//!
//! A [`StepClock`] follows one job's current step: when each rank began it,
//! when each entered the step's first collective, and how long steps take.
//! From that it tells which ranks did not reach the collective (the hang
//! culprits), which ranks are persistently slower than their peers of the
//! same card model (stragglers), and whether the whole job slowed down (which
//! is never blamed on a card).

use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Thresholds of the workload detectors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// A job with no progress for this many median step times is hung ...
    pub hang_factor: f64,
    /// ... but never before this much silence, milliseconds.
    pub hang_floor_ms: Millis,
    /// A rank whose compute time is this many times its peers' median, over
    /// the window, is a straggler (1.2: 20% slower).
    pub straggler_ratio: f64,
    /// Steps in the straggler window.
    pub straggler_window: usize,
    /// Steps needed in the window before judging.
    pub straggler_min_steps: usize,
    /// Recent median step time over the baseline above which the whole job
    /// is reported slow.
    pub slowdown_ratio: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            hang_factor: 3.0,
            hang_floor_ms: 10_000,
            straggler_ratio: 1.2,
            straggler_window: 12,
            straggler_min_steps: 6,
            slowdown_ratio: 1.3,
        }
    }
}

/// Median of a slice (0 when empty). Sorts a copy.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// What a finished step told the detectors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepVerdict {
    /// Ranks newly judged stragglers, with their slowdown factor.
    pub new_stragglers: Vec<(u32, f64)>,
    /// Ranks no longer slow.
    pub recovered: Vec<u32>,
    /// The whole job became slow (factor over its baseline), or recovered (None).
    pub slowdown: Option<Option<f64>>,
}

/// Step timing of one job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepClock {
    /// The highest step any rank has begun.
    pub step: u64,
    #[serde(skip)]
    begin: Vec<Option<Millis>>,
    #[serde(skip)]
    arrived: Vec<bool>,
    #[serde(skip)]
    compute: Vec<Option<f64>>,
    #[serde(skip)]
    group: Vec<u32>,
    #[serde(skip)]
    ratios: Vec<VecDeque<f64>>,
    /// Ranks currently judged stragglers, with their factor.
    pub stragglers: Vec<(u32, f64)>,
    #[serde(skip)]
    step_times: VecDeque<f64>,
    #[serde(skip)]
    last_end: Option<(u64, Millis)>,
    #[serde(skip)]
    checkpoint_since_end: bool,
    /// Longest pause seen between a step's end and a checkpoint report.
    pub max_checkpoint_ms: Millis,
    /// Median of the first steps, milliseconds.
    pub baseline_step_ms: Option<f64>,
    /// Whether the job is currently judged slow as a whole.
    pub slow: bool,
    /// Whether any rank has ever reported the `collective` phase.
    pub has_phases: bool,
    #[serde(skip)]
    evaluated: u64,
}

const STEP_WINDOW: usize = 32;
const BASELINE_STEPS: usize = 8;
const RECENT_STEPS: usize = 5;

impl StepClock {
    fn ensure(&mut self, rank: u32) {
        let n = rank as usize + 1;
        if self.begin.len() < n {
            self.begin.resize(n, None);
            self.arrived.resize(n, false);
            self.compute.resize(n, None);
            self.group.resize(n, 0);
            self.ratios.resize(n, VecDeque::new());
        }
    }

    /// The job restarted from a checkpoint: steps count again from there.
    /// Step-time history is kept; per-step state and straggler windows are
    /// not (the processes are new, and may run on other cards).
    pub fn restart(&mut self) {
        self.step = 0;
        self.evaluated = 0;
        self.last_end = None;
        self.checkpoint_since_end = false;
        self.begin.iter_mut().for_each(|b| *b = None);
        self.arrived.iter_mut().for_each(|a| *a = false);
        self.compute.iter_mut().for_each(|c| *c = None);
        self.ratios.iter_mut().for_each(VecDeque::clear);
        self.stragglers.clear();
    }

    /// Ranks sharing a group id are compared with each other (same card model).
    pub fn set_group(&mut self, rank: u32, group: u32) {
        self.ensure(rank);
        self.group[rank as usize] = group;
    }

    fn start_step(&mut self, step: u64) {
        self.step = step;
        self.begin.iter_mut().for_each(|b| *b = None);
        self.arrived.iter_mut().for_each(|a| *a = false);
        self.compute.iter_mut().for_each(|c| *c = None);
    }

    pub fn on_begin(&mut self, rank: u32, step: u64, now: Millis) {
        self.ensure(rank);
        if step > self.step {
            self.start_step(step);
        }
        if step == self.step {
            self.begin[rank as usize] = Some(now);
        }
    }

    pub fn on_collective(&mut self, rank: u32, step: u64, now: Millis) {
        self.ensure(rank);
        self.has_phases = true;
        if step > self.step {
            self.start_step(step);
        }
        if step == self.step {
            let r = rank as usize;
            self.arrived[r] = true;
            if let Some(b) = self.begin[r] {
                self.compute[r] = Some((now - b).max(0) as f64);
            }
        }
    }

    pub fn on_checkpoint(&mut self, now: Millis) {
        if let Some((_, end)) = self.last_end {
            self.max_checkpoint_ms = self.max_checkpoint_ms.max(now - end);
        }
        self.checkpoint_since_end = true;
    }

    /// A rank finished `step`. The first end of a step closes it for the
    /// detectors and returns their verdict.
    pub fn on_end(
        &mut self,
        rank: u32,
        step: u64,
        now: Millis,
        cfg: &WorkloadConfig,
    ) -> Option<StepVerdict> {
        self.ensure(rank);
        if step < self.step || step <= self.evaluated {
            return None;
        }
        if step > self.step {
            self.step = step;
        }
        self.evaluated = step;
        let mut v = StepVerdict::default();
        // Step time, end to end, skipping steps that include a checkpoint.
        if let Some((prev, at)) = self.last_end
            && prev + 1 == step
            && !self.checkpoint_since_end
        {
            if self.step_times.len() >= STEP_WINDOW {
                self.step_times.pop_front();
            }
            self.step_times.push_back((now - at).max(0) as f64);
            if self.baseline_step_ms.is_none() && self.step_times.len() >= BASELINE_STEPS {
                let first: Vec<f64> = self.step_times.iter().copied().collect();
                self.baseline_step_ms = Some(median(&first));
            }
        }
        self.last_end = Some((step, now));
        self.checkpoint_since_end = false;
        self.judge_stragglers(cfg, &mut v);
        self.judge_slowdown(cfg, &mut v);
        Some(v)
    }

    fn judge_stragglers(&mut self, cfg: &WorkloadConfig, v: &mut StepVerdict) {
        let groups: std::collections::BTreeSet<u32> = self.group.iter().copied().collect();
        for g in groups {
            let members: Vec<usize> = (0..self.group.len())
                .filter(|&r| self.group[r] == g && self.compute[r].is_some())
                .collect();
            if members.len() < 3 {
                continue; // too few peers to call anyone slow
            }
            let times: Vec<f64> = members.iter().filter_map(|&r| self.compute[r]).collect();
            let m = median(&times);
            if m <= 0.0 {
                continue;
            }
            for &r in &members {
                let Some(c) = self.compute[r] else { continue };
                let w = &mut self.ratios[r];
                if w.len() >= cfg.straggler_window {
                    w.pop_front();
                }
                w.push_back(c / m);
            }
        }
        for r in 0..self.ratios.len() {
            let w: Vec<f64> = self.ratios[r].iter().copied().collect();
            let was = self.stragglers.iter().position(|(x, _)| *x as usize == r);
            if w.len() < cfg.straggler_min_steps {
                continue;
            }
            let factor = median(&w);
            match (factor >= cfg.straggler_ratio, was) {
                (true, None) => {
                    self.stragglers.push((r as u32, factor));
                    v.new_stragglers.push((r as u32, factor));
                }
                (true, Some(i)) => self.stragglers[i].1 = factor,
                // Hysteresis: recovered only well below the threshold.
                (false, Some(i)) if factor < 1.0 + (cfg.straggler_ratio - 1.0) / 2.0 => {
                    self.stragglers.remove(i);
                    v.recovered.push(r as u32);
                }
                _ => {}
            }
        }
    }

    fn judge_slowdown(&mut self, cfg: &WorkloadConfig, v: &mut StepVerdict) {
        let Some(base) = self.baseline_step_ms else {
            return;
        };
        if self.step_times.len() < BASELINE_STEPS + RECENT_STEPS || base <= 0.0 {
            return;
        }
        let recent: Vec<f64> = self
            .step_times
            .iter()
            .rev()
            .take(RECENT_STEPS)
            .copied()
            .collect();
        let factor = median(&recent) / base;
        // A slowdown explained by a straggler is the straggler's, not the job's.
        let slow = factor >= cfg.slowdown_ratio && self.stragglers.is_empty();
        if slow && !self.slow {
            self.slow = true;
            v.slowdown = Some(Some(factor));
        } else if !slow && self.slow && factor < 1.0 + (cfg.slowdown_ratio - 1.0) / 2.0 {
            self.slow = false;
            v.slowdown = Some(None);
        }
    }

    /// Median step time over the recent window, milliseconds.
    pub fn median_step_ms(&self) -> Option<f64> {
        if self.step_times.is_empty() {
            return None;
        }
        let v: Vec<f64> = self.step_times.iter().copied().collect();
        Some(median(&v))
    }

    /// How long the job may go without progress before it is hung.
    pub fn hang_deadline_ms(&self, cfg: &WorkloadConfig) -> Millis {
        let by_steps = self
            .median_step_ms()
            .map_or(0, |m| (m * cfg.hang_factor).round() as Millis);
        let base = by_steps.max(cfg.hang_floor_ms);
        // Between steps a checkpoint may be saving: allow the longest seen.
        if self.between_steps() {
            base.max(self.max_checkpoint_ms * 3 / 2)
        } else {
            base
        }
    }

    /// True when no rank has begun a step after the last one that ended.
    fn between_steps(&self) -> bool {
        self.last_end.is_some_and(|(s, _)| s >= self.step)
    }

    /// Ranks that have not reached the current step's collective while at
    /// least one other rank has: the hang's culprits. Empty when no rank has
    /// arrived (no phase information, or the job is between steps).
    pub fn laggards(&self, world: u32) -> Vec<u32> {
        if !self.has_phases || self.between_steps() {
            return Vec::new();
        }
        let n = world as usize;
        let arrived = (0..n)
            .filter(|&r| self.arrived.get(r).copied().unwrap_or(false))
            .count();
        if arrived == 0 || arrived == n {
            return Vec::new();
        }
        (0..n)
            .filter(|&r| !self.arrived.get(r).copied().unwrap_or(false))
            .map(|r| r as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> WorkloadConfig {
        WorkloadConfig::default()
    }

    /// Plays `steps` steps of a `world`-rank job; `compute(rank, step)` gives
    /// each rank's compute time. Returns the verdicts.
    fn play(
        clock: &mut StepClock,
        world: u32,
        steps: u64,
        mut compute: impl FnMut(u32, u64) -> f64,
    ) -> Vec<StepVerdict> {
        let mut t = 0;
        let mut out = Vec::new();
        for s in 1..=steps {
            let times: Vec<f64> = (0..world).map(|r| compute(r, s)).collect();
            for r in 0..world {
                clock.on_begin(r, s, t);
            }
            for r in 0..world {
                clock.on_collective(r, s, t + times[r as usize] as Millis);
            }
            let end = t + times.iter().copied().fold(0.0, f64::max) as Millis + 10;
            for r in 0..world {
                if let Some(v) = clock.on_end(r, s, end, &cfg()) {
                    out.push(v);
                }
            }
            t = end;
        }
        out
    }

    fn noise(seed: u64) -> f64 {
        let x = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((x >> 33) % 1000) as f64 / 1000.0 // 0..1
    }

    #[test]
    fn a_30_percent_slow_rank_is_found_within_20_steps() {
        let mut c = StepClock::default();
        let v = play(&mut c, 16, 20, |r, s| {
            let base = 1000.0 * (0.97 + 0.06 * noise(u64::from(r) * 1000 + s));
            if r == 5 { base / 0.7 } else { base }
        });
        let found: Vec<(usize, u32, f64)> = v
            .iter()
            .enumerate()
            .flat_map(|(i, v)| v.new_stragglers.iter().map(move |(r, f)| (i + 1, *r, *f)))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        let (step, rank, factor) = found[0];
        assert_eq!(rank, 5);
        assert!(step <= 20);
        assert!((1.3..1.6).contains(&factor), "factor {factor}");
    }

    #[test]
    fn heterogeneous_groups_are_judged_against_their_own_speed() {
        let mut c = StepClock::default();
        for r in 8..16 {
            c.set_group(r, 1); // a slower card model, expected
        }
        let v = play(&mut c, 16, 30, |r, s| {
            let base = 1000.0 * (0.97 + 0.06 * noise(u64::from(r) * 77 + s));
            if r >= 8 { base / 0.55 } else { base }
        });
        assert!(v.iter().all(|v| v.new_stragglers.is_empty()), "{v:?}");
    }

    #[test]
    fn a_job_wide_slowdown_is_the_jobs_not_a_cards() {
        let mut c = StepClock::default();
        let v = play(&mut c, 8, 40, |r, s| {
            let base = 1000.0 * (0.97 + 0.06 * noise(u64::from(r) * 13 + s));
            if s > 20 { base / 0.6 } else { base }
        });
        assert!(v.iter().all(|v| v.new_stragglers.is_empty()));
        let slow: Vec<&StepVerdict> = v
            .iter()
            .filter(|v| matches!(v.slowdown, Some(Some(_))))
            .collect();
        assert_eq!(slow.len(), 1);
    }

    #[test]
    fn checkpoint_pauses_are_not_step_time_and_extend_the_hang_deadline() {
        let mut c = StepClock::default();
        play(&mut c, 4, 10, |_, _| 1000.0);
        let m = c.median_step_ms().expect("median");
        // A checkpoint after the last step: 8 s of silence, then the report.
        let end = c.last_end.expect("ended").1;
        c.on_checkpoint(end + 8000);
        assert_eq!(c.max_checkpoint_ms, 8000);
        assert!(c.hang_deadline_ms(&cfg()) >= 12_000);
        assert!((m - 1010.0).abs() < 1.0, "{m}");
        assert!(c.laggards(4).is_empty(), "between steps nobody lags");
    }

    #[test]
    fn the_rank_that_missed_the_collective_is_the_culprit() {
        let mut c = StepClock::default();
        play(&mut c, 8, 5, |_, _| 1000.0);
        for r in 0..8 {
            c.on_begin(r, 6, 10_000);
        }
        for r in (0..8).filter(|r| *r != 3) {
            c.on_collective(r, 6, 11_000);
        }
        assert_eq!(c.laggards(8), [3]);
        // Without phases nobody can be named from progress alone.
        let mut d = StepClock::default();
        d.on_begin(0, 1, 0);
        assert!(d.laggards(2).is_empty());
    }

    #[test]
    fn the_hang_deadline_has_a_floor() {
        let mut c = StepClock::default();
        play(&mut c, 2, 12, |_, _| 100.0);
        assert_eq!(c.hang_deadline_ms(&cfg()), 10_000);
        let mut d = StepClock::default();
        play(&mut d, 2, 12, |_, _| 5000.0);
        assert!(d.hang_deadline_ms(&cfg()) >= 15_000);
    }

    proptest! {
        /// With only noise (within +-10%), nobody is ever a straggler and the
        /// job is never slow.
        #[test]
        fn noise_alone_blames_nobody(seed in 0u64..10_000, world in 3u32..24, jitter in 0.0f64..0.1) {
            let mut c = StepClock::default();
            let v = play(&mut c, world, 40, |r, s| {
                1000.0 * (1.0 + jitter * (2.0 * noise(seed ^ (u64::from(r) << 20) ^ s) - 1.0))
            });
            prop_assert!(v.iter().all(|v| v.new_stragglers.is_empty()));
            prop_assert!(v.iter().all(|v| v.slowdown.is_none()));
        }

        /// A rank at least 40% slower is always found, and only that rank.
        #[test]
        fn a_clearly_slow_rank_is_always_found(seed in 0u64..10_000, world in 4u32..24, slow_rank in 0u32..4, factor in 0.3f64..0.7) {
            let mut c = StepClock::default();
            let v = play(&mut c, world, 20, |r, s| {
                let base = 1000.0 * (0.97 + 0.06 * noise(seed ^ (u64::from(r) << 20) ^ s));
                if r == slow_rank { base / factor } else { base }
            });
            let found: Vec<u32> = v.iter().flat_map(|v| v.new_stragglers.iter().map(|(r, _)| *r)).collect();
            prop_assert_eq!(found, vec![slow_rank]);
        }
    }
}
