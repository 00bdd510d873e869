//! Card probes: where card inventory, readings and error events come from.
//!
//! Every backend implements [`CardProbe`]. The agent calls it on a blocking
//! thread under a timeout, so a wedged driver cannot hang the agent; a probe
//! that does not answer in time is reported as `probe_hung`, never as a card
//! failure.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_core::model::{CardInfo, CardSample, Signal, THROTTLE_HW_THERMAL, THROTTLE_SW_THERMAL};

/// A source of card readings.
pub trait CardProbe: Send + 'static {
    /// Probe name for logs and `probe_hung` events.
    fn name(&self) -> &'static str;
    /// The cards present.
    fn inventory(&self) -> Vec<CardInfo>;
    /// Reads every card. May block; the agent bounds it with a timeout.
    fn sample(&mut self) -> Vec<CardSample>;
    /// Errors the source reports as events (XIDs), since the last call.
    fn drain_errors(&mut self) -> Vec<(u32, Signal, String)>;
}

/// Which backend `--cards` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardSpec {
    /// NVML if a driver is present, else no cards.
    Auto,
    /// No cards (a CPU-only node or a test).
    None,
    Nvml,
    Smi,
    Exec(String),
    /// N simulated cards.
    Sim(u32),
}

impl std::str::FromStr for CardSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => CardSpec::Auto,
            "none" => CardSpec::None,
            "nvml" => CardSpec::Nvml,
            "smi" => CardSpec::Smi,
            _ => {
                if let Some(cmd) = s.strip_prefix("exec:") {
                    if cmd.trim().is_empty() {
                        return Err("--cards exec:CMD needs a command".to_owned());
                    }
                    CardSpec::Exec(cmd.to_owned())
                } else if let Some(n) = s.strip_prefix("sim:") {
                    let n: u32 = n
                        .parse()
                        .map_err(|_| format!("--cards {s}: N in sim:N must be a number"))?;
                    if n == 0 || n > 64 {
                        return Err(format!("--cards {s}: N must be within 1..=64"));
                    }
                    CardSpec::Sim(n)
                } else {
                    return Err(format!(
                        "--cards {s:?}: expected auto, none, nvml, smi, exec:CMD or sim:N"
                    ));
                }
            }
        })
    }
}

/// A probe with no cards.
#[derive(Debug, Default)]
pub struct NoCards;

impl CardProbe for NoCards {
    fn name(&self) -> &'static str {
        "none"
    }
    fn inventory(&self) -> Vec<CardInfo> {
        Vec::new()
    }
    fn sample(&mut self) -> Vec<CardSample> {
        Vec::new()
    }
    fn drain_errors(&mut self) -> Vec<(u32, Signal, String)> {
        Vec::new()
    }
}

/// A fault a simulated card can be given. The agent never sees this value:
/// it only sees what the card then reports (readings and error events), as
/// it would on real hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SimFault {
    /// The driver logs an XID for the card.
    Xid { card: u32, code: u32 },
    /// An uncorrectable ECC error: the volatile DBE counter rises, and the
    /// driver logs XID 48.
    EccDbe { card: u32 },
    /// The card falls off the bus: XID 79, then no answers.
    GpuLost { card: u32 },
    /// Thermal throttling on or off.
    Thermal { card: u32, on: bool },
    /// One NVLink down, or back up.
    Nvlink { card: u32, on: bool },
    /// PCIe link trained at half width, or restored.
    PcieDegraded { card: u32, on: bool },
    /// The probe itself stops answering for a while.
    ProbeHang { for_ms: u64 },
    /// Set a card's load (what a running rank does to it).
    Load { card: u32, utilization: f32 },
    /// Clear every fault (a reset or replacement).
    Reset,
}

#[derive(Debug, Clone)]
struct SimCard {
    info: CardInfo,
    util: f32,
    ecc_sbe: u64,
    ecc_dbe: u64,
    lost: bool,
    thermal: bool,
    nvlink_down: bool,
    pcie_narrow: bool,
}

#[derive(Debug)]
struct SimState {
    cards: Vec<SimCard>,
    xids: Vec<(u32, Signal, String)>,
    hang_until: Option<Instant>,
    noise: u64,
}

/// Simulated cards with realistic readings.
#[derive(Debug, Clone)]
pub struct SimCards {
    state: Arc<Mutex<SimState>>,
}

/// The simulator's side of [`SimCards`]: injects faults.
#[derive(Debug, Clone)]
pub struct SimHandle {
    state: Arc<Mutex<SimState>>,
}

impl SimCards {
    /// `n` cards of `model` on the node `node` (the name seeds the uuids).
    pub fn new(node: &str, n: u32, model: &str) -> (SimCards, SimHandle) {
        let cards = (0..n)
            .map(|i| SimCard {
                info: CardInfo {
                    index: i,
                    uuid: format!("GPU-sim-{node}-{i}"),
                    vendor: "sim".to_owned(),
                    model: model.to_owned(),
                    memory_total_bytes: 80 * (1 << 30),
                    pci_bus_id: format!("0000:{:02x}:00.0", 0x18 + i * 0x10),
                },
                util: 0.0,
                ecc_sbe: 0,
                ecc_dbe: 0,
                lost: false,
                thermal: false,
                nvlink_down: false,
                pcie_narrow: false,
            })
            .collect();
        let state = Arc::new(Mutex::new(SimState {
            cards,
            xids: Vec::new(),
            hang_until: None,
            noise: node.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            }),
        }));
        (
            SimCards {
                state: state.clone(),
            },
            SimHandle { state },
        )
    }
}

fn lock(m: &Mutex<SimState>) -> std::sync::MutexGuard<'_, SimState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimHandle {
    /// Applies a fault. Unknown card indexes are refused.
    pub fn inject(&self, fault: &SimFault) -> Result<(), String> {
        let mut s = lock(&self.state);
        let n = s.cards.len() as u32;
        let card_of = |c: u32| -> Result<usize, String> {
            if c < n {
                Ok(c as usize)
            } else {
                Err(format!("card {c} does not exist (this node has {n})"))
            }
        };
        match *fault {
            SimFault::Xid { card, code } => {
                card_of(card)?;
                s.xids.push((card, Signal::Xid(code), xid_line(code)));
                if code == 79 {
                    s.cards[card as usize].lost = true;
                }
            }
            SimFault::EccDbe { card } => {
                let i = card_of(card)?;
                s.cards[i].ecc_dbe += 1;
                s.xids.push((card, Signal::Xid(48), xid_line(48)));
            }
            SimFault::GpuLost { card } => {
                let i = card_of(card)?;
                s.cards[i].lost = true;
            }
            SimFault::Thermal { card, on } => s.cards[card_of(card)?].thermal = on,
            SimFault::Nvlink { card, on } => s.cards[card_of(card)?].nvlink_down = on,
            SimFault::PcieDegraded { card, on } => s.cards[card_of(card)?].pcie_narrow = on,
            SimFault::ProbeHang { for_ms } => {
                s.hang_until = Some(Instant::now() + Duration::from_millis(for_ms));
            }
            SimFault::Load { card, utilization } => {
                let i = card_of(card)?;
                s.cards[i].util = utilization.clamp(0.0, 100.0);
            }
            SimFault::Reset => {
                for c in &mut s.cards {
                    c.lost = false;
                    c.thermal = false;
                    c.nvlink_down = false;
                    c.pcie_narrow = false;
                }
                s.hang_until = None;
            }
        }
        Ok(())
    }
}

fn xid_line(code: u32) -> String {
    format!("NVRM: Xid (PCI:0000:00:00): {code}, simulated")
}

impl CardProbe for SimCards {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn inventory(&self) -> Vec<CardInfo> {
        lock(&self.state)
            .cards
            .iter()
            .map(|c| c.info.clone())
            .collect()
    }

    fn sample(&mut self) -> Vec<CardSample> {
        let hang = lock(&self.state).hang_until;
        if let Some(until) = hang {
            let now = Instant::now();
            if until > now {
                std::thread::sleep(until - now);
            }
            lock(&self.state).hang_until = None;
        }
        let mut s = lock(&self.state);
        let mut noise = s.noise;
        let out = s
            .cards
            .iter()
            .map(|c| {
                noise = noise
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let jitter = ((noise >> 33) % 1000) as f32 / 1000.0; // 0..1
                if c.lost {
                    return CardSample {
                        index: c.info.index,
                        unreachable: true,
                        probe_latency_us: 5_000,
                        ..Default::default()
                    };
                }
                let busy = c.util / 100.0;
                let temp = 34.0 + 40.0 * busy + 2.0 * jitter + if c.thermal { 22.0 } else { 0.0 };
                CardSample {
                    index: c.info.index,
                    utilization_percent: (c.util - 3.0 * jitter).max(0.0),
                    memory_used_bytes: ((0.05 + 0.8 * busy) * c.info.memory_total_bytes as f32)
                        as u64,
                    temperature_c: temp,
                    power_w: 70.0 + 560.0 * busy + 10.0 * jitter,
                    ecc_sbe_volatile: c.ecc_sbe,
                    ecc_dbe_volatile: c.ecc_dbe,
                    retired_pages: 0,
                    retirement_pending: c.ecc_dbe > 0,
                    throttle_reasons: if c.thermal {
                        THROTTLE_HW_THERMAL | THROTTLE_SW_THERMAL
                    } else {
                        0
                    },
                    pcie_link_width: if c.pcie_narrow { 8 } else { 16 },
                    pcie_link_width_max: 16,
                    nvlink_up: if c.nvlink_down { 17 } else { 18 },
                    nvlink_total: 18,
                    probe_latency_us: 150 + (jitter * 100.0) as u32,
                    unreachable: false,
                    pcie_link_gen: 5,
                    pcie_link_gen_max: 5,
                    pcie_replay: 0,
                    nvlink_errors: 0,
                }
            })
            .collect();
        s.noise = noise;
        out
    }

    fn drain_errors(&mut self) -> Vec<(u32, Signal, String)> {
        std::mem::take(&mut lock(&self.state).xids)
    }
}

/// Builds the probe for a spec. A backend that cannot start fails with a
/// reason; `auto` falls back to no cards when NVML is not available.
pub fn from_spec(
    spec: &CardSpec,
    node: &str,
) -> Result<(Box<dyn CardProbe>, Option<SimHandle>), String> {
    use crate::probes::{exec::ExecProbe, kmsg::KernelLog, nvml::NvmlProbe, smi::SmiProbe};
    match spec {
        CardSpec::None => Ok((Box::new(NoCards), None)),
        CardSpec::Auto => match NvmlProbe::new(Some(KernelLog::from_env())) {
            Ok(p) => Ok((Box::new(p), None)),
            Err(e) => {
                tracing::info!(reason = %e, "NVML is not available; running with no cards (--cards auto)");
                Ok((Box::new(NoCards), None))
            }
        },
        CardSpec::Nvml => {
            let p = NvmlProbe::new(Some(KernelLog::from_env()))
                .map_err(|e| format!("--cards nvml: NVML is not available: {e}"))?;
            Ok((Box::new(p), None))
        }
        CardSpec::Smi => {
            let p = SmiProbe::from_env().map_err(|e| format!("--cards smi: {e}"))?;
            Ok((Box::new(p), None))
        }
        CardSpec::Exec(cmd) => {
            let p = ExecProbe::new(cmd).map_err(|e| format!("--cards exec: {e}"))?;
            Ok((Box::new(p), None))
        }
        CardSpec::Sim(n) => {
            let (cards, handle) = SimCards::new(node, *n, "H100");
            Ok((Box::new(cards), Some(handle)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::model::sample_transitions;

    #[test]
    fn specs_parse() {
        assert_eq!("sim:8".parse::<CardSpec>(), Ok(CardSpec::Sim(8)));
        assert_eq!("auto".parse::<CardSpec>(), Ok(CardSpec::Auto));
        assert!("sim:0".parse::<CardSpec>().is_err());
        assert!("sim:x".parse::<CardSpec>().is_err());
        assert!("exec:".parse::<CardSpec>().is_err());
        assert!("gpu".parse::<CardSpec>().is_err());
    }

    #[test]
    fn sim_cards_report_faults_only_through_readings_and_events() {
        let (mut cards, h) = SimCards::new("n0", 4, "H100");
        let before = cards.sample();
        assert_eq!(before.len(), 4);
        assert!(
            before
                .iter()
                .all(|s| !s.unreachable && s.temperature_c > 20.0)
        );
        h.inject(&SimFault::EccDbe { card: 2 }).expect("valid");
        h.inject(&SimFault::GpuLost { card: 1 }).expect("valid");
        let after = cards.sample();
        let sig1: Vec<_> = sample_transitions(Some(&before[1]), &after[1])
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(sig1, [Signal::GpuLost]);
        let sig2: Vec<_> = sample_transitions(Some(&before[2]), &after[2])
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert!(sig2.contains(&Signal::EccDbe));
        let xids = cards.drain_errors();
        assert_eq!(xids.len(), 1);
        assert_eq!(xids[0].1, Signal::Xid(48));
        assert!(cards.drain_errors().is_empty());
        assert!(h.inject(&SimFault::GpuLost { card: 9 }).is_err());
    }
}
