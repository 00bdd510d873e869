//! What agents observe: card inventory, samples, heartbeats and events.
//!
//! These are the domain forms of the wire messages; the controller converts
//! at its edge and rejects what does not validate.

use crate::ids::JobId;
use crate::progress::ProgressRecord;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One card as the agent's probe inventoried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardInfo {
    pub index: u32,
    pub uuid: String,
    pub vendor: String,
    pub model: String,
    pub memory_total_bytes: u64,
    pub pci_bus_id: String,
}

/// One reading of one card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CardSample {
    pub index: u32,
    pub utilization_percent: f32,
    pub memory_used_bytes: u64,
    pub temperature_c: f32,
    pub power_w: f32,
    pub ecc_sbe_volatile: u64,
    pub ecc_dbe_volatile: u64,
    pub retired_pages: u32,
    pub retirement_pending: bool,
    pub throttle_reasons: u64,
    pub pcie_link_width: u32,
    pub pcie_link_width_max: u32,
    pub nvlink_up: u32,
    pub nvlink_total: u32,
    pub probe_latency_us: u32,
    pub unreachable: bool,
    /// Current and maximum PCIe link generation (0: unknown).
    #[serde(default)]
    pub pcie_link_gen: u32,
    #[serde(default)]
    pub pcie_link_gen_max: u32,
    /// PCIe replay counter (link-level retransmissions), cumulative.
    #[serde(default)]
    pub pcie_replay: u64,
    /// NVLink data-link error counters (replay, recovery, CRC) summed over
    /// the card's links, cumulative.
    #[serde(default)]
    pub nvlink_errors: u64,
}

/// A rise of the PCIe replay counter between two samples that counts as a
/// degraded link.
pub const PCIE_REPLAY_BURST: u64 = 100;
/// A rise of the NVLink error counters between two samples that counts as
/// an NVLink fault.
pub const NVLINK_ERROR_BURST: u64 = 100;
/// Utilization from which a link below its maximum generation is degraded
/// (an idle card may downshift on purpose).
pub const PCIE_GEN_BUSY_PERCENT: f32 = 50.0;

/// Host-level readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub load_1m: f32,
    pub uptime_s: u64,
}

/// A periodic heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub sent_at_ms: Millis,
    pub host: HostMetrics,
    pub cards: Vec<CardSample>,
    pub spool_dropped: u64,
    pub spool_pending: u64,
}

/// A named failure signal from a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// An NVIDIA XID (or a vendor's equivalent numbered error).
    Xid(u32),
    /// An uncorrectable (double-bit) ECC error.
    EccDbe,
    /// The card stopped answering (fallen off the bus, lost).
    GpuLost,
    /// Sustained thermal or power throttling.
    Thermal,
    /// An NVLink went down or logged errors.
    Nvlink,
    /// The PCIe link trained below its maximum width or generation.
    PcieDegraded,
    /// Retired pages or row remapping pending or failed.
    RetiredPages,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signal::Xid(code) => write!(f, "xid:{code}"),
            Signal::EccDbe => f.write_str("ecc_dbe"),
            Signal::GpuLost => f.write_str("gpu_lost"),
            Signal::Thermal => f.write_str("thermal"),
            Signal::Nvlink => f.write_str("nvlink"),
            Signal::PcieDegraded => f.write_str("pcie_degraded"),
            Signal::RetiredPages => f.write_str("retired_pages"),
        }
    }
}

impl Signal {
    /// Builds a signal from its wire name and code.
    pub fn from_parts(name: &str, code: u32) -> Result<Self, String> {
        Ok(match name {
            "xid" => Signal::Xid(code),
            "ecc_dbe" => Signal::EccDbe,
            "gpu_lost" => Signal::GpuLost,
            "thermal" => Signal::Thermal,
            "nvlink" => Signal::Nvlink,
            "pcie_degraded" => Signal::PcieDegraded,
            "retired_pages" => Signal::RetiredPages,
            other => {
                return Err(format!(
                    "unknown card signal {other:?} (expected xid, ecc_dbe, gpu_lost, thermal, nvlink, pcie_degraded or retired_pages)"
                ));
            }
        })
    }

    /// The wire name and code.
    pub fn parts(&self) -> (&'static str, u32) {
        match self {
            Signal::Xid(c) => ("xid", *c),
            Signal::EccDbe => ("ecc_dbe", 0),
            Signal::GpuLost => ("gpu_lost", 0),
            Signal::Thermal => ("thermal", 0),
            Signal::Nvlink => ("nvlink", 0),
            Signal::PcieDegraded => ("pcie_degraded", 0),
            Signal::RetiredPages => ("retired_pages", 0),
        }
    }
}

/// Serialized as its string form (`xid:79`, `ecc_dbe`, ...), the shape
/// stored agent events have always had.
impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((name, code)) => {
                let code = code
                    .parse()
                    .map_err(|_| format!("signal {s:?} has a bad code"))?;
                Signal::from_parts(name, code)
            }
            None => Signal::from_parts(s, 0),
        }
    }
}

/// A checkpoint a rank reported writing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub job: JobId,
    pub rank: u32,
    pub step: u64,
    pub path: String,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// The checkpoint's layout marks it complete for every rank (reported
    /// by the agent's checkpoint directory watcher, not by a rank).
    #[serde(default)]
    pub complete_all: bool,
    /// Why the agent found the checkpoint unusable (a checksum that does not
    /// match, a file it lists that is missing). Never restored from.
    #[serde(default)]
    pub invalid: Option<String>,
    /// Who reported it: `rank` or `watcher:<layout>`.
    #[serde(default)]
    pub source: Option<String>,
}

/// What an agent event says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    CardError {
        card: u32,
        signal: Signal,
        detail: String,
    },
    WorkerExit {
        rank: Option<u32>,
        pid: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    Progress(ProgressRecord),
    Checkpoint(CheckpointReport),
    ProbeHung {
        card: u32,
        probe: String,
        waited_ms: u32,
    },
}

/// A durable event from an agent: sequence-numbered per boot id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    pub seq: u64,
    pub at_ms: Millis,
    pub body: EventBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_card_error_keeps_its_string_signal() {
        const ROW: &str =
            r#"{"type":"card_error","card":3,"signal":"xid:79","detail":"fell off the bus"}"#;
        let body: EventBody = serde_json::from_str(ROW).expect("an old row loads");
        assert_eq!(
            body,
            EventBody::CardError {
                card: 3,
                signal: Signal::Xid(79),
                detail: "fell off the bus".into(),
            }
        );
        assert_eq!(serde_json::to_string(&body).expect("json"), ROW);
        let bad = r#"{"type":"card_error","card":3,"signal":"xid:banana","detail":""}"#;
        assert!(serde_json::from_str::<EventBody>(bad).is_err());
    }

    #[test]
    fn signals_round_trip() {
        for s in [
            Signal::Xid(79),
            Signal::EccDbe,
            Signal::GpuLost,
            Signal::Thermal,
            Signal::Nvlink,
            Signal::PcieDegraded,
            Signal::RetiredPages,
        ] {
            assert_eq!(s.to_string().parse::<Signal>(), Ok(s));
            let (n, c) = s.parts();
            assert_eq!(Signal::from_parts(n, c), Ok(s));
        }
        assert!("bogus".parse::<Signal>().is_err());
        assert!("xid:abc".parse::<Signal>().is_err());
    }
}

/// The card errors implied by two consecutive samples of one card: counters
/// that rose and states that changed for the worse. Shared by every probe
/// backend, so NVML, `nvidia-smi`, vendor probes and simulated cards all
/// report the same way.
pub fn sample_transitions(prev: Option<&CardSample>, cur: &CardSample) -> Vec<(Signal, String)> {
    let mut out = Vec::new();
    let default = CardSample::default();
    let p = prev.unwrap_or(&default);
    if cur.ecc_dbe_volatile > p.ecc_dbe_volatile {
        out.push((
            Signal::EccDbe,
            format!(
                "volatile uncorrected ECC count {} -> {}",
                p.ecc_dbe_volatile, cur.ecc_dbe_volatile
            ),
        ));
    }
    if cur.unreachable && !p.unreachable {
        out.push((
            Signal::GpuLost,
            "card stopped answering its probe".to_owned(),
        ));
    }
    if cur.retirement_pending && !p.retirement_pending {
        out.push((
            Signal::RetiredPages,
            "row remap / page retirement pending".to_owned(),
        ));
    }
    if cur.nvlink_up < cur.nvlink_total && (prev.is_none() || cur.nvlink_up < p.nvlink_up) {
        out.push((
            Signal::Nvlink,
            format!("{} of {} NVLinks up", cur.nvlink_up, cur.nvlink_total),
        ));
    }
    if cur.pcie_link_width < cur.pcie_link_width_max
        && (prev.is_none() || cur.pcie_link_width < p.pcie_link_width)
    {
        out.push((
            Signal::PcieDegraded,
            format!(
                "PCIe link x{} of x{}",
                cur.pcie_link_width, cur.pcie_link_width_max
            ),
        ));
    }
    let gen_low = |x: &CardSample| {
        x.pcie_link_gen > 0
            && x.pcie_link_gen < x.pcie_link_gen_max
            && x.utilization_percent >= PCIE_GEN_BUSY_PERCENT
    };
    if gen_low(cur) && (prev.is_none() || !gen_low(p)) {
        out.push((
            Signal::PcieDegraded,
            format!(
                "PCIe link gen {} of {} while busy",
                cur.pcie_link_gen, cur.pcie_link_gen_max
            ),
        ));
    }
    if let Some(prev) = prev {
        let replays = cur.pcie_replay.saturating_sub(prev.pcie_replay);
        if replays >= PCIE_REPLAY_BURST {
            out.push((
                Signal::PcieDegraded,
                format!("PCIe replay counter rose by {replays}"),
            ));
        }
        let nvl = cur.nvlink_errors.saturating_sub(prev.nvlink_errors);
        if nvl >= NVLINK_ERROR_BURST {
            out.push((
                Signal::Nvlink,
                format!("NVLink error counters rose by {nvl}"),
            ));
        }
    }
    const THERMAL_MASK: u64 = THROTTLE_HW_THERMAL | THROTTLE_SW_THERMAL | THROTTLE_HW_POWER_BRAKE;
    if cur.throttle_reasons & THERMAL_MASK != 0 && p.throttle_reasons & THERMAL_MASK == 0 {
        out.push((
            Signal::Thermal,
            format!(
                "throttle reasons {:#x} at {:.0} C",
                cur.throttle_reasons, cur.temperature_c
            ),
        ));
    }
    out
}

/// NVML clock event reason bits (nvmlClocksEventReason*).
pub const THROTTLE_SW_POWER_CAP: u64 = 0x4;
pub const THROTTLE_HW_SLOWDOWN: u64 = 0x8;
pub const THROTTLE_SW_THERMAL: u64 = 0x20;
pub const THROTTLE_HW_THERMAL: u64 = 0x40;
pub const THROTTLE_HW_POWER_BRAKE: u64 = 0x80;

#[cfg(test)]
mod transition_tests {
    use super::*;

    fn healthy() -> CardSample {
        CardSample {
            pcie_link_width: 16,
            pcie_link_width_max: 16,
            nvlink_up: 18,
            nvlink_total: 18,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_cards_report_nothing() {
        assert!(sample_transitions(None, &healthy()).is_empty());
        assert!(sample_transitions(Some(&healthy()), &healthy()).is_empty());
    }

    #[test]
    fn each_change_is_reported_once() {
        let mut cur = healthy();
        cur.ecc_dbe_volatile = 1;
        cur.unreachable = true;
        let sig: Vec<_> = sample_transitions(Some(&healthy()), &cur)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(sig, [Signal::EccDbe, Signal::GpuLost]);
        assert!(sample_transitions(Some(&cur), &cur).is_empty());
        let mut hot = healthy();
        hot.throttle_reasons = THROTTLE_HW_THERMAL;
        assert_eq!(
            sample_transitions(Some(&healthy()), &hot)[0].0,
            Signal::Thermal
        );
        let mut slow_gen = healthy();
        slow_gen.pcie_link_gen = 3;
        slow_gen.pcie_link_gen_max = 5;
        assert!(
            sample_transitions(Some(&healthy()), &slow_gen).is_empty(),
            "an idle card may downshift"
        );
        slow_gen.utilization_percent = 95.0;
        let sig = sample_transitions(Some(&healthy()), &slow_gen);
        assert_eq!(sig[0].0, Signal::PcieDegraded, "{sig:?}");
        assert!(
            sample_transitions(Some(&slow_gen), &slow_gen).is_empty(),
            "once"
        );
        let mut replays = healthy();
        replays.pcie_replay = 99;
        assert!(sample_transitions(Some(&healthy()), &replays).is_empty());
        replays.pcie_replay = 150;
        assert_eq!(
            sample_transitions(Some(&healthy()), &replays)[0].0,
            Signal::PcieDegraded
        );
        let mut nvl = healthy();
        nvl.nvlink_errors = 500;
        assert_eq!(
            sample_transitions(Some(&healthy()), &nvl)[0].0,
            Signal::Nvlink
        );
        let mut narrow = healthy();
        narrow.pcie_link_width = 8;
        assert_eq!(
            sample_transitions(Some(&healthy()), &narrow)[0].0,
            Signal::PcieDegraded
        );
        let mut link = healthy();
        link.nvlink_up = 17;
        assert_eq!(
            sample_transitions(Some(&healthy()), &link)[0].0,
            Signal::Nvlink
        );
    }
}
