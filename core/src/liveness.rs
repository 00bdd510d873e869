//! Node liveness, judged on the controller's clock.
//!
//! A node is `Alive` while messages arrive. After `suspect_after` heartbeat
//! intervals of silence it is `Suspect`; after `lost_after` intervals it is
//! `Lost`. The controller evaluates this on a tick of at most a tenth of the
//! heartbeat interval, so a dead node is declared lost between
//! `lost_after - 1` and `lost_after` intervals plus one tick after its last
//! heartbeat was sent (see docs/liveness.md).

use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Thresholds, in heartbeat intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessConfig {
    /// Expected heartbeat period, milliseconds.
    pub heartbeat_ms: u32,
    /// Silence (in intervals) after which a node is suspect.
    pub suspect_after: f64,
    /// Silence (in intervals) after which a node is lost.
    pub lost_after: f64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            heartbeat_ms: 1000,
            suspect_after: 1.5,
            lost_after: 2.5,
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
        if !(self.lost_after > self.suspect_after && self.lost_after.is_finite()) {
            return Err("lost_after must be greater than suspect_after".to_owned());
        }
        Ok(())
    }

    /// Silence after which a node becomes suspect, milliseconds.
    pub fn suspect_ms(&self) -> Millis {
        (self.suspect_after * f64::from(self.heartbeat_ms)).round() as Millis
    }

    /// Silence after which a node is lost, milliseconds.
    pub fn lost_ms(&self) -> Millis {
        (self.lost_after * f64::from(self.heartbeat_ms)).round() as Millis
    }

    /// How often the controller should evaluate liveness.
    pub fn tick_ms(&self) -> Millis {
        Millis::from(self.heartbeat_ms / 10).clamp(5, 100)
    }
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

/// The liveness a node should have now, given when it was last heard from.
/// `current` is kept when nothing changes, so evidence timestamps stay put.
pub fn evaluate(
    cfg: &LivenessConfig,
    current: &Liveness,
    last_seen: Millis,
    now: Millis,
) -> Liveness {
    let silence = now - last_seen;
    if silence >= cfg.lost_ms() {
        return match current {
            Liveness::Lost { .. } => current.clone(),
            _ => Liveness::Lost {
                at_ms: now,
                last_seen_ms: last_seen,
            },
        };
    }
    if silence >= cfg.suspect_ms() {
        return match current {
            Liveness::Suspect { .. } => current.clone(),
            _ => Liveness::Suspect {
                since_ms: now,
                reason: format!("no heartbeat for {silence} ms"),
            },
        };
    }
    match current {
        // A stream-closed suspicion stays until a message arrives (which
        // resets it through `heard_from`), or it escalates above.
        Liveness::Suspect { .. } => current.clone(),
        Liveness::Lost { .. } => current.clone(),
        Liveness::Alive => Liveness::Alive,
    }
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

    #[test]
    fn thresholds() {
        let c = cfg();
        assert_eq!(evaluate(&c, &Liveness::Alive, 0, 1499), Liveness::Alive);
        assert!(matches!(
            evaluate(&c, &Liveness::Alive, 0, 1500),
            Liveness::Suspect { since_ms: 1500, .. }
        ));
        assert_eq!(
            evaluate(&c, &Liveness::Alive, 0, 2500),
            Liveness::Lost {
                at_ms: 2500,
                last_seen_ms: 0
            }
        );
    }

    #[test]
    fn evidence_is_kept_while_nothing_changes() {
        let c = cfg();
        let s = evaluate(&c, &Liveness::Alive, 0, 1600);
        assert_eq!(evaluate(&c, &s, 0, 2000), s);
        let l = evaluate(&c, &s, 0, 2600);
        assert_eq!(evaluate(&c, &l, 0, 9000), l);
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
    }

    proptest! {
        /// Never lost before `lost_after` intervals of silence; always lost at it.
        #[test]
        fn lost_exactly_at_threshold(hb in 10u32..10_000, last in 0i64..1_000_000, silence in 0i64..100_000) {
            let c = LivenessConfig { heartbeat_ms: hb, ..Default::default() };
            let l = evaluate(&c, &Liveness::Alive, last, last + silence);
            let lost = matches!(l, Liveness::Lost { .. });
            prop_assert_eq!(lost, silence >= c.lost_ms());
            if silence < c.suspect_ms() {
                prop_assert_eq!(l, Liveness::Alive);
            }
        }
    }
}
