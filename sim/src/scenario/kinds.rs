//! The fault kinds: [`SPECS`] is the one table that names each kind and says
//! where it applies and which parameters it takes. The kind list
//! ([`FAULT_KINDS`]), the names [`FaultKind::name`] gives and the parser's
//! checks all read it.

use super::{FaultKind, FaultScope};
use serde::{Serialize, Serializer};

/// A fault kind without its parameters, as the simulator's truth records it.
/// Serializes as its name in scenario files (`"xid"`, `"node_crash"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultType {
    Xid,
    EccDbe,
    GpuLost,
    Thermal,
    Nvlink,
    PcieDegraded,
    Hang,
    Slow,
    WorkerExit,
    ProbeHang,
    NodeCrash,
    Partition,
    Flap,
    JobSlowdown,
    CheckpointCorrupt,
}

/// Whether a kind takes a parameter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Param {
    No,
    Optional,
    Required,
}

#[derive(Clone, Copy)]
pub(super) enum FactorRule {
    /// A relative speed: 0 < factor <= 1.
    Speed,
    /// Any positive factor.
    Positive,
}

/// One row of the kind table.
pub(super) struct KindSpec {
    pub(super) ty: FaultType,
    /// The name in scenario files.
    pub(super) name: &'static str,
    pub(super) scope: FaultScope,
    pub(super) needs_job: bool,
    pub(super) code: Param,
    pub(super) factor: Param,
    pub(super) for_s: Param,
    pub(super) factor_rule: FactorRule,
}

const fn spec(
    ty: FaultType,
    name: &'static str,
    scope: FaultScope,
    needs_job: bool,
    code: Param,
    factor: Param,
    for_s: Param,
) -> KindSpec {
    KindSpec {
        ty,
        name,
        scope,
        needs_job,
        code,
        factor,
        for_s,
        factor_rule: FactorRule::Speed,
    }
}

const KINDS: usize = 15;

/// Every fault kind, in CONTRACT order, which is also [`FaultType`]'s order.
pub(super) const SPECS: [KindSpec; KINDS] = {
    use FaultScope::{Card, Job, Node};
    use FaultType as T;
    use Param::{No, Optional, Required};
    [
        spec(T::Xid, "xid", Card, false, Required, No, No),
        spec(T::EccDbe, "ecc_dbe", Card, false, No, No, No),
        spec(T::GpuLost, "gpu_lost", Card, false, No, No, No),
        spec(T::Thermal, "thermal", Card, false, No, No, Optional),
        spec(T::Nvlink, "nvlink", Card, false, No, No, Optional),
        spec(
            T::PcieDegraded,
            "pcie_degraded",
            Card,
            false,
            No,
            No,
            Optional,
        ),
        spec(T::Hang, "hang", Card, true, No, No, No),
        spec(T::Slow, "slow", Card, true, No, Required, Optional),
        spec(T::WorkerExit, "worker_exit", Card, true, No, No, No),
        spec(T::ProbeHang, "probe_hang", Card, false, No, No, Optional),
        spec(T::NodeCrash, "node_crash", Node, false, No, No, No),
        spec(T::Partition, "partition", Node, false, No, No, Required),
        spec(T::Flap, "flap", Node, false, No, No, Required),
        KindSpec {
            factor_rule: FactorRule::Positive,
            ..spec(
                T::JobSlowdown,
                "job_slowdown",
                Job,
                true,
                No,
                Required,
                Required,
            )
        },
        spec(
            T::CheckpointCorrupt,
            "checkpoint_corrupt",
            Job,
            true,
            No,
            No,
            No,
        ),
    ]
};

/// Every fault kind a scenario may name, in CONTRACT order.
pub const FAULT_KINDS: [&str; KINDS] = {
    let mut names = [""; KINDS];
    let mut i = 0;
    while i < KINDS {
        names[i] = SPECS[i].name;
        i += 1;
    }
    names
};

impl FaultType {
    /// The kind's row of the table.
    pub(super) fn spec(self) -> &'static KindSpec {
        &SPECS[self as usize]
    }

    /// The kind named `name` in a scenario file.
    pub(super) fn from_name(name: &str) -> Option<FaultType> {
        SPECS.iter().find(|s| s.name == name).map(|s| s.ty)
    }

    /// The kind's name as written in scenario files.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Whether the kind applies to a card, a whole node or the whole job.
    pub fn scope(self) -> FaultScope {
        self.spec().scope
    }

    /// Whether the kind acts on a training job (the scenario must have a `[job]`).
    pub fn needs_job(self) -> bool {
        self.spec().needs_job
    }
}

impl std::fmt::Display for FaultType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for FaultType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl FaultKind {
    /// The kind without its parameters.
    pub fn fault_type(&self) -> FaultType {
        match self {
            FaultKind::Xid { .. } => FaultType::Xid,
            FaultKind::EccDbe => FaultType::EccDbe,
            FaultKind::GpuLost => FaultType::GpuLost,
            FaultKind::Thermal { .. } => FaultType::Thermal,
            FaultKind::Nvlink { .. } => FaultType::Nvlink,
            FaultKind::PcieDegraded { .. } => FaultType::PcieDegraded,
            FaultKind::Hang => FaultType::Hang,
            FaultKind::Slow { .. } => FaultType::Slow,
            FaultKind::WorkerExit => FaultType::WorkerExit,
            FaultKind::ProbeHang { .. } => FaultType::ProbeHang,
            FaultKind::NodeCrash => FaultType::NodeCrash,
            FaultKind::Partition { .. } => FaultType::Partition,
            FaultKind::Flap { .. } => FaultType::Flap,
            FaultKind::JobSlowdown { .. } => FaultType::JobSlowdown,
            FaultKind::CheckpointCorrupt => FaultType::CheckpointCorrupt,
        }
    }

    /// The kind's name as written in scenario files.
    pub fn name(&self) -> &'static str {
        self.fault_type().name()
    }

    /// Whether the kind applies to a card, a whole node or the whole job.
    pub fn scope(&self) -> FaultScope {
        self.fault_type().scope()
    }

    /// Whether the kind acts on a training job (the scenario must have a `[job]`).
    pub fn needs_job(&self) -> bool {
        self.fault_type().needs_job()
    }
}

/// Assemble the kind from already validated parameters; `None` only if a
/// required one is absent.
pub(super) fn build_kind(
    ty: FaultType,
    code: Option<u32>,
    factor: Option<f64>,
    for_s: Option<f64>,
) -> Option<FaultKind> {
    Some(match ty {
        FaultType::Xid => FaultKind::Xid { code: code? },
        FaultType::EccDbe => FaultKind::EccDbe,
        FaultType::GpuLost => FaultKind::GpuLost,
        FaultType::Thermal => FaultKind::Thermal { for_s },
        FaultType::Nvlink => FaultKind::Nvlink { for_s },
        FaultType::PcieDegraded => FaultKind::PcieDegraded { for_s },
        FaultType::Hang => FaultKind::Hang,
        FaultType::Slow => FaultKind::Slow {
            factor: factor?,
            for_s,
        },
        FaultType::WorkerExit => FaultKind::WorkerExit,
        FaultType::ProbeHang => FaultKind::ProbeHang { for_s },
        FaultType::NodeCrash => FaultKind::NodeCrash,
        FaultType::Partition => FaultKind::Partition { for_s: for_s? },
        FaultType::Flap => FaultKind::Flap { for_s: for_s? },
        FaultType::JobSlowdown => FaultKind::JobSlowdown {
            factor: factor?,
            for_s: for_s?,
        },
        FaultType::CheckpointCorrupt => FaultKind::CheckpointCorrupt,
    })
}
