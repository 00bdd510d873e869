//! Scenario files (TOML): the script that drives the simulator behind `vigil demo` and
//! `vigil bench`. See CONTRACT.md, "Scenario files (TOML)".
//!
//! This module only parses and validates text; reading the file is the caller's business.
//! Every error names the 1-based line of the offending key or table.

use serde::Serialize;

mod kinds;
mod parse;
#[cfg(test)]
mod tests;

pub use kinds::{FAULT_KINDS, FaultType};
pub use parse::parse;

/// The built-in demo scenario (a copy of `scenarios/default.toml` at the
/// workspace root, which a test keeps equal).
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/default.toml");

/// A parsed, validated scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub duration_s: f64,
    pub seed: u64,
    pub cluster: ClusterSpec,
    pub job: Option<JobSpec>,
    /// In file order; see [`Scenario::faults_sorted`].
    pub faults: Vec<Fault>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    pub nodes: u32,
    pub cards_per_node: u32,
    pub spares: u32,
    pub card_model: String,
    pub heartbeat_ms: u32,
    pub groups: Vec<GroupSpec>,
}

/// A set of nodes that differ from the cluster default (heterogeneous hardware).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSpec {
    pub nodes: Vec<String>,
    pub card_model: String,
    /// Relative compute speed; expected, not a fault.
    pub speed: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSpec {
    pub id: String,
    pub world_size: u32,
    pub step_ms: u32,
    pub checkpoint_every: u64,
    pub checkpoint_ms: u32,
    pub restore_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    pub at_s: f64,
    /// `None` for job-wide kinds.
    pub node: Option<String>,
    /// `Some` exactly for card-level kinds.
    pub card: Option<u32>,
    pub kind: FaultKind,
    /// 1-based line of the fault's table in the scenario file.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    Xid {
        code: u32,
    },
    EccDbe,
    GpuLost,
    Thermal {
        for_s: Option<f64>,
    },
    Nvlink {
        for_s: Option<f64>,
    },
    PcieDegraded {
        for_s: Option<f64>,
    },
    /// The rank stops without any hardware signal.
    Hang,
    /// The card runs at `factor` of its normal speed (0 < factor <= 1).
    Slow {
        factor: f64,
        for_s: Option<f64>,
    },
    WorkerExit,
    ProbeHang {
        for_s: Option<f64>,
    },
    NodeCrash,
    Partition {
        for_s: f64,
    },
    /// Repeated short network cuts for `for_s`.
    Flap {
        for_s: f64,
    },
    /// Every rank slows (e.g. storage); no card is to blame.
    JobSlowdown {
        factor: f64,
        for_s: f64,
    },
    /// The newest checkpoint is unreadable when restored.
    CheckpointCorrupt,
}

/// Where a fault kind applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    /// Needs `node` and `card`.
    Card,
    /// Needs `node`, takes no `card`.
    Node,
    /// Takes neither `node` nor `card`.
    Job,
}

impl FaultKind {
    /// How long a transient fault lasts, if it is transient and bounded.
    pub fn for_s(&self) -> Option<f64> {
        match self {
            FaultKind::Thermal { for_s }
            | FaultKind::Nvlink { for_s }
            | FaultKind::PcieDegraded { for_s }
            | FaultKind::Slow { for_s, .. }
            | FaultKind::ProbeHang { for_s } => *for_s,
            FaultKind::Partition { for_s }
            | FaultKind::Flap { for_s }
            | FaultKind::JobSlowdown { for_s, .. } => Some(*for_s),
            FaultKind::Xid { .. }
            | FaultKind::EccDbe
            | FaultKind::GpuLost
            | FaultKind::Hang
            | FaultKind::WorkerExit
            | FaultKind::NodeCrash
            | FaultKind::CheckpointCorrupt => None,
        }
    }
}

/// A scenario that could not be parsed or is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ScenarioError {
    /// 1-based line of the offending key or table.
    pub line: usize,
    pub reason: String,
}

impl Scenario {
    /// Training node names: `n0` .. `n{nodes-1}`.
    pub fn node_names(&self) -> Vec<String> {
        (0..self.cluster.nodes).map(|i| format!("n{i}")).collect()
    }

    /// Standby node names: `s0` .. `s{spares-1}`.
    pub fn spare_names(&self) -> Vec<String> {
        (0..self.cluster.spares).map(|i| format!("s{i}")).collect()
    }

    fn group_of(&self, node: &str) -> Option<&GroupSpec> {
        self.cluster
            .groups
            .iter()
            .find(|g| g.nodes.iter().any(|n| n == node))
    }

    /// The card model of `node`: its group's, or the cluster default.
    pub fn card_model_of(&self, node: &str) -> &str {
        self.group_of(node)
            .map_or(self.cluster.card_model.as_str(), |g| g.card_model.as_str())
    }

    /// The relative compute speed of `node`: its group's, or 1.0.
    pub fn speed_of(&self, node: &str) -> f64 {
        self.group_of(node).map_or(1.0, |g| g.speed)
    }

    /// Where rank `rank` runs: node `n(rank / cards_per_node)`, card `rank % cards_per_node`.
    pub fn rank_location(&self, rank: u32) -> (String, u32) {
        let cards = self.cluster.cards_per_node.max(1);
        (format!("n{}", rank / cards), rank % cards)
    }

    /// The faults ordered by `at_s`; faults at the same time keep file order.
    pub fn faults_sorted(&self) -> Vec<Fault> {
        let mut faults = self.faults.clone();
        faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        faults
    }
}

// ---------------------------------------------------------------------------------------------
