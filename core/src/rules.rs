//! The signal rules: how bad each card signal is and what to do about it.
//!
//! The rules are data. [`RuleTable::default`] holds the built-in table
//! (following NVIDIA's XID catalog resolution buckets, see docs/rules.md);
//! operators override single entries from config without recompiling.

use crate::model::Signal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who is to blame for a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The application misbehaved; the card stays usable.
    Application,
    /// The card or its links are faulty.
    Hardware,
    /// Worth recording, no action.
    Informational,
}

/// What recovery a signal calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing.
    None,
    /// Restart the job's workers in place.
    RestartApp,
    /// Take the card out of service until it is reset.
    ResetCard,
    /// Take the whole node out of service.
    DrainNode,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::RestartApp => "restart_app",
            Action::ResetCard => "reset_card",
            Action::DrainNode => "drain_node",
        }
    }
}

/// The verdict of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub class: Class,
    pub action: Action,
    /// True when a single occurrence fails the card (no hysteresis).
    pub fatal: bool,
}

const fn rule(class: Class, action: Action, fatal: bool) -> Rule {
    Rule {
        class,
        action,
        fatal,
    }
}

/// One operator override, as written in the controller's config file:
/// `[[rules.xid]] code = 13, class = "hardware", action = "reset_card", fatal = true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XidOverride {
    pub code: u32,
    pub class: Class,
    pub action: Action,
    #[serde(default = "yes")]
    pub fatal: bool,
}

fn yes() -> bool {
    true
}

/// The full rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTable {
    xids: BTreeMap<u32, Rule>,
    unknown_xid: Rule,
}

impl Default for RuleTable {
    fn default() -> Self {
        use Action::*;
        use Class::*;
        let app = rule(Application, RestartApp, true);
        let info = rule(Informational, None, false);
        let reset = rule(Hardware, ResetCard, true);
        let drain = rule(Hardware, DrainNode, true);
        let mut xids = BTreeMap::new();
        // Application errors: the card stays usable (device-plugin skip list
        // and the catalog's RESTART_APP bucket).
        for code in [8, 13, 31, 32, 43, 45, 68, 69, 94] {
            xids.insert(code, app);
        }
        // Informational: IGNORE bucket, or a trend signal.
        for code in [38, 61, 63, 92, 121, 154, 157] {
            xids.insert(code, info);
        }
        // Card faults: RESET_GPU and the ECC/row-remap workflows.
        for code in [
            46, 48, 62, 64, 74, 95, 109, 119, 120, 136, 140, 143, 144, 145, 146, 147, 148, 149,
            150, 155, 156, 158, 171, 172,
        ] {
            xids.insert(code, reset);
        }
        // Off the bus: only a power cycle of the node brings it back.
        xids.insert(79, drain);
        RuleTable {
            xids,
            unknown_xid: reset,
        }
    }
}

impl RuleTable {
    /// The default table with `overrides` applied in order.
    pub fn with_overrides(overrides: &[XidOverride]) -> Self {
        let mut t = RuleTable::default();
        for o in overrides {
            t.xids.insert(o.code, rule(o.class, o.action, o.fatal));
        }
        t
    }

    /// The rule for a signal.
    pub fn classify(&self, signal: Signal) -> Rule {
        use Action::*;
        use Class::*;
        match signal {
            Signal::Xid(code) => self.xids.get(&code).copied().unwrap_or(self.unknown_xid),
            Signal::EccDbe => rule(Hardware, ResetCard, true),
            Signal::GpuLost => rule(Hardware, DrainNode, true),
            Signal::Nvlink => rule(Hardware, ResetCard, true),
            Signal::Thermal | Signal::PcieDegraded | Signal::RetiredPages => {
                rule(Hardware, ResetCard, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_catalog() {
        let t = RuleTable::default();
        assert_eq!(t.classify(Signal::Xid(79)).action, Action::DrainNode);
        assert_eq!(t.classify(Signal::Xid(48)).class, Class::Hardware);
        assert_eq!(t.classify(Signal::Xid(13)).class, Class::Application);
        assert_eq!(t.classify(Signal::Xid(63)).action, Action::None);
        assert!(!t.classify(Signal::Xid(63)).fatal);
        // An XID nobody has classified is treated as a card fault.
        assert_eq!(t.classify(Signal::Xid(9999)).action, Action::ResetCard);
        assert!(t.classify(Signal::EccDbe).fatal);
        assert_eq!(t.classify(Signal::GpuLost).action, Action::DrainNode);
        assert!(!t.classify(Signal::Thermal).fatal);
    }

    #[test]
    fn overrides_replace_one_entry() {
        let t = RuleTable::with_overrides(&[XidOverride {
            code: 13,
            class: Class::Hardware,
            action: Action::ResetCard,
            fatal: true,
        }]);
        assert_eq!(t.classify(Signal::Xid(13)).class, Class::Hardware);
        assert_eq!(t.classify(Signal::Xid(31)).class, Class::Application);
    }
}
