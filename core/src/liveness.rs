//! Node liveness, judged on the controller's clock with an adaptive
//! (phi-accrual) failure detector.
//!
//! Each node keeps a window of recent heartbeat inter-arrival times. The
//! suspicion level phi = -log10(P(a heartbeat arrives later than now)) under
//! a normal model of that window (Hayashibara et al.; Akka's approximation).
//! A node whose heartbeats are regular is declared lost soon after they stop;
//! one whose heartbeats are jittery is given more time. Hard bounds keep the
//! verdict within the documented window whatever the history says:
//!
//! - never suspect before `suspect_after` intervals of silence, never lost
//!   before `min_lost_after` intervals;
//! - always lost at `lost_after` intervals.
//!
//! The controller evaluates this on a tick of at most a tenth of the
//! heartbeat interval (see docs/liveness.md).

use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Thresholds, in heartbeat intervals and phi.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessConfig {
    /// Expected heartbeat period, milliseconds.
    pub heartbeat_ms: u32,
    /// Silence (in intervals) before a node may be suspect.
    pub suspect_after: f64,
    /// Silence (in intervals) before a node may be lost.
    pub min_lost_after: f64,
    /// Silence (in intervals) after which a node is lost regardless of phi.
    pub lost_after: f64,
    /// Phi at which a node is suspect.
    pub phi_suspect: f64,
    /// Phi at which a node is lost.
    pub phi_lost: f64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            heartbeat_ms: 1000,
            suspect_after: 1.5,
            min_lost_after: 1.8,
            lost_after: 2.8,
            phi_suspect: 3.0,
            phi_lost: 8.0,
        }
    }
}

impl LivenessConfig {
    /// Checks the thresholds make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms < 10 {
            return Err(format!(
                "heartbeat interval {} ms is below the 10 ms minimum",
                self.heartbeat_ms
            ));
        }
        if !(self.suspect_after >= 1.0 && self.suspect_after.is_finite()) {
            return Err("suspect_after must be at least 1 interval".to_owned());
        }
        if !(self.min_lost_after >= self.suspect_after && self.min_lost_after.is_finite()) {
            return Err("min_lost_after must be at least suspect_after".to_owned());
        }
        if !(self.lost_after > self.suspect_after
            && self.lost_after >= self.min_lost_after
            && self.lost_after.is_finite())
        {
            return Err(
                "lost_after must be greater than suspect_after and at least min_lost_after"
                    .to_owned(),
            );
        }
        if !(self.phi_suspect > 0.0
            && self.phi_lost >= self.phi_suspect
            && self.phi_lost.is_finite())
        {
            return Err("phi thresholds must satisfy 0 < phi_suspect <= phi_lost".to_owned());
        }
        Ok(())
    }

    fn ms(&self, intervals: f64) -> Millis {
        (intervals * f64::from(self.heartbeat_ms)).round() as Millis
    }

    /// Silence after which a node may become suspect, milliseconds.
    pub fn suspect_ms(&self) -> Millis {
        self.ms(self.suspect_after)
    }

    /// Silence before which a node is never lost, milliseconds.
    pub fn min_lost_ms(&self) -> Millis {
        self.ms(self.min_lost_after)
    }

    /// Silence after which a node is lost whatever its history, milliseconds.
    pub fn lost_ms(&self) -> Millis {
        self.ms(self.lost_after)
    }

    /// How often the controller should evaluate liveness.
    pub fn tick_ms(&self) -> Millis {
        Millis::from(self.heartbeat_ms / 10).clamp(5, 100)
    }
}

/// Recent heartbeat inter-arrival times of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArrivalWindow {
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Millis>,
}

const WINDOW: usize = 100;

impl ArrivalWindow {
    /// Records a heartbeat arriving at `now`.
    pub fn heartbeat(&mut self, now: Millis) {
        if let Some(last) = self.last {
            let dt = (now - last).max(0) as f64;
            if self.intervals.len() >= WINDOW
                && let Some(old) = self.intervals.pop_front()
            {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
            self.intervals.push_back(dt);
            self.sum += dt;
            self.sum_sq += dt * dt;
        }
        self.last = Some(now);
    }

    /// Forgets the history (a new agent boot).
    pub fn reset(&mut self) {
        *self = ArrivalWindow::default();
    }

    /// Mean and standard deviation of the window, with the configured
    /// interval as the prior and a floor of a fifth of it on the deviation.
    pub fn stats(&self, cfg: &LivenessConfig) -> (f64, f64) {
        let hb = f64::from(cfg.heartbeat_ms);
        let n = self.intervals.len() as f64;
        let (mean, var) = if n < 2.0 {
            (hb, 0.0)
        } else {
            let mean = self.sum / n;
            (mean, (self.sum_sq / n - mean * mean).max(0.0))
        };
        (mean, var.sqrt().max(hb / 5.0))
    }

    /// Suspicion after `silence_ms` without a heartbeat.
    pub fn phi(&self, cfg: &LivenessConfig, silence_ms: Millis) -> f64 {
        let (mean, std) = self.stats(cfg);
        phi(silence_ms as f64, mean, std)
    }
}

/// Phi for a silence of `t` given a normal model of inter-arrival times
/// (logistic approximation of the normal CDF, as in Akka).
pub fn phi(t: f64, mean: f64, std: f64) -> f64 {
    let y = (t - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if t > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    if p_later <= 0.0 || !p_later.is_finite() {
        return f64::MAX;
    }
    -p_later.log10()
}

/// A node's liveness with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Liveness {
    Alive,
    Suspect { since_ms: Millis, reason: String },
    Lost { at_ms: Millis, last_seen_ms: Millis },
}

impl Liveness {
    pub fn name(&self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Suspect { .. } => "suspect",
            Liveness::Lost { .. } => "lost",
        }
    }
}

/// The liveness a node should have now, given when it was last heard from
/// and its heartbeat history. `current` is kept when nothing changes, so
/// evidence timestamps stay put.
pub fn evaluate(
    cfg: &LivenessConfig,
    window: &ArrivalWindow,
    current: &Liveness,
    last_seen: Millis,
    now: Millis,
) -> Liveness {
    let silence = now - last_seen;
    if silence < cfg.suspect_ms() {
        return current.clone();
    }
    let phi = window.phi(cfg, silence);
    let lost = silence >= cfg.lost_ms() || (silence >= cfg.min_lost_ms() && phi >= cfg.phi_lost);
    if lost {
        return match current {
            Liveness::Lost { .. } => current.clone(),
            _ => Liveness::Lost {
                at_ms: now,
                last_seen_ms: last_seen,
            },
        };
    }
    if phi >= cfg.phi_suspect {
        return match current {
            Liveness::Alive => Liveness::Suspect {
                since_ms: now,
                reason: format!("no heartbeat for {silence} ms (phi {phi:.1})"),
            },
            _ => current.clone(),
        };
    }
    current.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> LivenessConfig {
        LivenessConfig {
            heartbeat_ms: 1000,
            ..Default::default()
        }
    }

    fn regular(n: usize, hb: Millis) -> ArrivalWindow {
        let mut w = ArrivalWindow::default();
        for i in 0..n as Millis {
            w.heartbeat(i * hb);
        }
        w
    }

    #[test]
    fn regular_heartbeats_are_lost_soon_after_they_stop() {
        let c = cfg();
        let w = regular(50, 1000);
        assert_eq!(evaluate(&c, &w, &Liveness::Alive, 0, 1499), Liveness::Alive);
        assert!(matches!(
            evaluate(&c, &w, &Liveness::Alive, 0, 1700),
            Liveness::Suspect { .. }
        ));
        // phi passes 8 a little after 2 intervals: lost well before the cap.
        let l = evaluate(&c, &w, &Liveness::Alive, 0, 2200);
        assert!(
            matches!(
                l,
                Liveness::Lost {
                    at_ms: 2200,
                    last_seen_ms: 0
                }
            ),
            "{l:?}"
        );
    }

    #[test]
    fn jittery_heartbeats_get_more_time_up_to_the_cap() {
        let c = cfg();
        let mut w = ArrivalWindow::default();
        let mut t = 0;
        for i in 0..60 {
            t += if i % 2 == 0 { 400 } else { 1600 };
            w.heartbeat(t);
        }
        assert_eq!(evaluate(&c, &w, &Liveness::Alive, 0, 2200), Liveness::Alive);
        assert!(matches!(
            evaluate(&c, &w, &Liveness::Alive, 0, 2800),
            Liveness::Lost { .. }
        ));
    }

    #[test]
    fn evidence_is_kept_while_nothing_changes() {
        let c = cfg();
        let w = regular(10, 1000);
        let s = evaluate(&c, &w, &Liveness::Alive, 0, 1700);
        assert_eq!(evaluate(&c, &w, &s, 0, 1750), s);
        let l = evaluate(&c, &w, &s, 0, 2900);
        assert_eq!(evaluate(&c, &w, &l, 0, 9000), l);
    }

    #[test]
    fn config_is_validated() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.lost_after = 1.0;
        assert!(c.validate().is_err());
        c = cfg();
        c.heartbeat_ms = 1;
        assert!(c.validate().is_err());
        c = cfg();
        c.suspect_after = f64::NAN;
        assert!(c.validate().is_err());
        c = cfg();
        c.phi_lost = 1.0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn phi_grows_with_silence() {
        assert!(phi(500.0, 1000.0, 200.0) < 0.5);
        assert!(phi(2000.0, 1000.0, 200.0) > 7.0);
        assert!(phi(1e9, 1000.0, 200.0).is_finite());
    }

    proptest! {
        /// Whatever the history: never lost before `min_lost_after`
        /// intervals of silence, never suspect before `suspect_after`, and
        /// always lost at `lost_after`.
        #[test]
        fn hard_bounds_hold(hb in 10u32..10_000, gaps in prop::collection::vec(0.1f64..3.0, 0..80), silence in 0i64..100_000) {
            let c = LivenessConfig { heartbeat_ms: hb, ..Default::default() };
            let mut w = ArrivalWindow::default();
            let mut t = 0;
            for g in gaps {
                t += (g * f64::from(hb)) as i64;
                w.heartbeat(t);
            }
            let l = evaluate(&c, &w, &Liveness::Alive, t, t + silence);
            if silence >= c.lost_ms() {
                let lost = matches!(l, Liveness::Lost { .. });
                prop_assert!(lost);
            }
            if silence < c.min_lost_ms() {
                let lost = matches!(l, Liveness::Lost { .. });
                prop_assert!(!lost);
            }
            if silence < c.suspect_ms() {
                prop_assert_eq!(l, Liveness::Alive);
            }
        }
    }
}
