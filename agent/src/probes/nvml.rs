//! `--cards nvml` (and `auto` when a driver is present): NVML through
//! `nvml-wrapper`, which loads `libnvidia-ml` at run time, so the agent
//! builds and runs on machines without a driver.
//!
//! Readings are polled on each `sample` call: utilization, memory,
//! temperature, power, volatile ECC counters, retired pages and whether a
//! retirement is pending, throttle reasons, PCIe width current/max and NVLink
//! links up of those present. XIDs are event-driven: a dedicated thread waits
//! on an NVML event set registered for critical XID errors
//! (`Nvml::create_event_set`, `Device::register_events`, `EventSet::wait`
//! with a 1 s timeout so that it notices the probe going away). The kernel
//! log is read as well, for its fuller message and for fallen-off-the-bus
//! lines; an XID seen by both within 10 s is reported once.

use super::Dedup;
use super::kmsg::KernelLog;
use crate::cards::CardProbe;
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};
use vigil_core::model::{CardInfo, CardSample, Signal};
use vigil_ingest::probe::normalize_bus_id;

/// Environment variable naming the NVML library to load.
pub const LIB_ENV: &str = "VIGIL_NVML_LIB";

/// NVML's largest link count (`NVML_NVLINK_MAX_LINKS`).
const MAX_NVLINKS: u32 = 18;

/// Loads and initializes NVML: `$VIGIL_NVML_LIB`, else `libnvidia-ml.so.1`
/// (what the driver installs), else `libnvidia-ml.so`.
pub fn load() -> Result<Nvml, String> {
    if let Some(path) = std::env::var_os(LIB_ENV).filter(|p| !p.is_empty()) {
        return Nvml::builder()
            .lib_path(&path)
            .init()
            .map_err(|e| format!("{}: {e}", path.to_string_lossy()));
    }
    match Nvml::builder()
        .lib_path(OsStr::new("libnvidia-ml.so.1"))
        .init()
    {
        Ok(n) => Ok(n),
        Err(first) => Nvml::init().map_err(|e| match e {
            NvmlError::LibloadingError(_) => format!("libnvidia-ml.so.1: {first}"),
            e => e.to_string(),
        }),
    }
}

/// Cards read through NVML.
pub struct NvmlProbe {
    nvml: Arc<Nvml>,
    inventory: Vec<CardInfo>,
    kernel: Option<KernelLog>,
    events: Option<Receiver<(u32, Signal, String)>>,
    stop: Arc<AtomicBool>,
    dedup: Dedup,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("inventory", &self.inventory)
            .finish_non_exhaustive()
    }
}

impl Drop for NvmlProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl NvmlProbe {
    /// Loads NVML and takes the inventory. The error says why NVML is not
    /// available (no library, no driver, no permission).
    pub fn new(kernel: Option<KernelLog>) -> Result<NvmlProbe, String> {
        let nvml = Arc::new(load()?);
        let count = nvml
            .device_count()
            .map_err(|e| format!("cannot count devices: {e}"))?;
        let mut inventory = Vec::with_capacity(count as usize);
        for i in 0..count {
            let dev = match nvml.device_by_index(i) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(index = i, error = %e, "NVML cannot open a device; it is left out of the inventory");
                    continue;
                }
            };
            inventory.push(CardInfo {
                index: dev.index().unwrap_or(i),
                uuid: dev.uuid().unwrap_or_default(),
                vendor: "nvidia".to_owned(),
                model: dev.name().unwrap_or_default(),
                memory_total_bytes: dev.memory_info().map(|m| m.total).unwrap_or(0),
                pci_bus_id: dev.pci_info().map(|p| p.bus_id).unwrap_or_default(),
            });
        }
        inventory.sort_by_key(|c| c.index);
        let stop = Arc::new(AtomicBool::new(false));
        let events = spawn_events(nvml.clone(), &inventory, stop.clone());
        tracing::info!(
            cards = inventory.len(),
            driver = %nvml.sys_driver_version().unwrap_or_default(),
            xid_events = events.is_some(),
            "NVML probe ready"
        );
        Ok(NvmlProbe {
            nvml,
            inventory,
            kernel,
            events,
            stop,
            dedup: Dedup::new(Duration::from_secs(10)),
        })
    }

    fn read(&self, card: &CardInfo) -> CardSample {
        let started = Instant::now();
        let lost = |index| CardSample {
            index,
            unreachable: true,
            ..Default::default()
        };
        let dev = match self.nvml.device_by_pci_bus_id(card.pci_bus_id.as_str()) {
            Ok(d) => d,
            Err(NvmlError::GpuLost) => return lost(card.index),
            Err(e) => {
                tracing::debug!(card = card.index, error = %e, "NVML cannot open the device");
                return lost(card.index);
            }
        };
        let util = match dev.utilization_rates() {
            Ok(u) => u.gpu as f32,
            Err(NvmlError::GpuLost) => return lost(card.index),
            Err(_) => 0.0,
        };
        let ecc = |t| dev.total_ecc_errors(t, EccCounter::Volatile).unwrap_or(0);
        let retired = [
            RetirementCause::MultipleSingleBitEccErrors,
            RetirementCause::DoubleBitEccError,
        ]
        .into_iter()
        .map(|c| dev.retired_pages(c).map(|p| p.len()).unwrap_or(0))
        .sum::<usize>();
        let (mut up, mut total, mut nvlink_errors) = (0, 0, 0u64);
        for link in 0..MAX_NVLINKS {
            let wrapper = dev.link_wrapper_for(link);
            match wrapper.is_active() {
                Ok(active) => {
                    total += 1;
                    up += u32::from(active);
                    for counter in [
                        ErrorCounter::DlReplay,
                        ErrorCounter::DlRecovery,
                        ErrorCounter::DlCrcFlit,
                        ErrorCounter::DlCrcData,
                    ] {
                        nvlink_errors = nvlink_errors
                            .saturating_add(wrapper.error_counter(counter).unwrap_or(0));
                    }
                }
                Err(_) => continue,
            }
        }
        CardSample {
            index: card.index,
            utilization_percent: util,
            memory_used_bytes: dev.memory_info().map(|m| m.used).unwrap_or(0),
            temperature_c: dev.temperature(TemperatureSensor::Gpu).unwrap_or(0) as f32,
            power_w: dev.power_usage().unwrap_or(0) as f32 / 1000.0,
            ecc_sbe_volatile: ecc(MemoryError::Corrected),
            ecc_dbe_volatile: ecc(MemoryError::Uncorrected),
            retired_pages: u32::try_from(retired).unwrap_or(u32::MAX),
            retirement_pending: dev.are_pages_pending_retired().unwrap_or(false),
            throttle_reasons: dev
                .current_throttle_reasons()
                .map(|r| r.bits())
                .unwrap_or(0),
            pcie_link_width: dev.current_pcie_link_width().unwrap_or(0),
            pcie_link_width_max: dev.max_pcie_link_width().unwrap_or(0),
            nvlink_up: up,
            nvlink_total: total,
            probe_latency_us: u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX),
            unreachable: false,
            pcie_link_gen: dev.current_pcie_link_gen().unwrap_or(0),
            pcie_link_gen_max: dev.max_pcie_link_gen().unwrap_or(0),
            pcie_replay: u64::from(dev.pcie_replay_counter().unwrap_or(0)),
            nvlink_errors,
        }
    }
}

impl CardProbe for NvmlProbe {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn inventory(&self) -> Vec<CardInfo> {
        self.inventory.clone()
    }

    fn sample(&mut self) -> Vec<CardSample> {
        self.inventory.iter().map(|c| self.read(c)).collect()
    }

    fn drain_errors(&mut self) -> Vec<(u32, Signal, String)> {
        let mut all = match &self.kernel {
            Some(k) => k.drain(&self.inventory),
            None => Vec::new(),
        };
        if let Some(rx) = &self.events {
            loop {
                match rx.try_recv() {
                    Ok(e) => all.push(e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.events = None;
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        all.retain(|(card, signal, _)| self.dedup.admit(*card, *signal, now));
        all
    }
}

/// Starts the XID event thread. `None` when no device supports XID events or
/// the thread cannot start (XIDs then come from the kernel log only).
fn spawn_events(
    nvml: Arc<Nvml>,
    inventory: &[CardInfo],
    stop: Arc<AtomicBool>,
) -> Option<Receiver<(u32, Signal, String)>> {
    let buses: Vec<(String, u32)> = inventory
        .iter()
        .filter_map(|c| normalize_bus_id(&c.pci_bus_id).map(|b| (b, c.index)))
        .collect();
    let (tx, rx) = mpsc::sync_channel(256);
    let (ready_tx, ready_rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("vigil-nvml-events".into())
        .stack_size(256 * 1024)
        .spawn(move || wait_events(&nvml, &buses, &stop, &tx, &ready_tx));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the NVML event thread");
        return None;
    }
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(true) => Some(rx),
        _ => None,
    }
}

fn wait_events(
    nvml: &Nvml,
    buses: &[(String, u32)],
    stop: &AtomicBool,
    tx: &SyncSender<(u32, Signal, String)>,
    ready: &mpsc::Sender<bool>,
) {
    let set = match nvml.create_event_set() {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "NVML event sets are not available; XIDs come from the kernel log only");
            let _ = ready.send(false);
            return;
        }
    };
    let mut set = Some(set);
    let mut registered = 0;
    for (bus, _) in buses {
        let Ok(dev) = nvml.device_by_pci_bus_id(bus.as_str()) else {
            continue;
        };
        let supported = dev.supported_event_types().unwrap_or(EventTypes::empty());
        if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
            continue;
        }
        let Some(s) = set.take() else { break };
        match dev.register_events(EventTypes::CRITICAL_XID_ERROR, s) {
            Ok(s) => {
                set = Some(s);
                registered += 1;
            }
            Err(e) => {
                // The wrapper has released the set: no events at all.
                tracing::info!(error = %e.error, bus_id = %bus, "cannot register for NVML XID events; XIDs come from the kernel log only");
                let _ = ready.send(false);
                return;
            }
        }
    }
    let Some(set) = set.filter(|_| registered > 0) else {
        let _ = ready.send(false);
        return;
    };
    let _ = ready.send(true);
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        match set.wait(1000) {
            Ok(data) => {
                let code = match data.event_data {
                    Some(XidError::Value(v)) => u32::try_from(v).unwrap_or(999),
                    Some(XidError::Unknown) => 999,
                    None => continue,
                };
                let bus = data
                    .device
                    .pci_info()
                    .ok()
                    .and_then(|p| normalize_bus_id(&p.bus_id));
                let Some(card) =
                    bus.and_then(|b| buses.iter().find(|(x, _)| *x == b).map(|(_, i)| *i))
                else {
                    tracing::warn!(
                        xid = code,
                        "NVML XID event for a device not in the inventory"
                    );
                    continue;
                };
                if tx
                    .try_send((card, Signal::Xid(code), format!("NVML event: Xid {code}")))
                    .is_err()
                    && stop.load(Ordering::Relaxed)
                {
                    break;
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                // GpuLost and the like: the next sample marks the card
                // unreachable. Do not spin.
                if !warned {
                    tracing::warn!(error = %e, "waiting for NVML events failed; retrying every second");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let _ = set.release_events();
}
