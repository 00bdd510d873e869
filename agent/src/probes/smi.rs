//! `--cards smi`: runs `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`
//! on each sample, and reads XIDs from the kernel log.

use super::COMMAND_TIMEOUT;
use super::command;
use super::kmsg::KernelLog;
use crate::cards::CardProbe;
use std::collections::HashMap;
use vigil_core::model::{CardInfo, CardSample, Signal};
use vigil_ingest::probe::{normalize_bus_id, smi};

/// Environment variable naming the `nvidia-smi` binary (tests, odd installs).
pub const ENV: &str = "VIGIL_NVIDIA_SMI";

/// Cards read through `nvidia-smi`.
#[derive(Debug)]
pub struct SmiProbe {
    program: String,
    inventory: Vec<CardInfo>,
    /// Normalized PCI address to inventory index.
    by_bus: HashMap<String, u32>,
    kernel: Option<KernelLog>,
    failing: bool,
}

impl SmiProbe {
    /// `$VIGIL_NVIDIA_SMI` (else `nvidia-smi` on the `PATH`), with the kernel
    /// log of [`KernelLog::from_env`].
    pub fn from_env() -> Result<SmiProbe, String> {
        let program = std::env::var(ENV)
            .ok()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| "nvidia-smi".to_owned());
        SmiProbe::new(program, Some(KernelLog::from_env()))
    }

    /// Runs `program` once for the inventory. Fails when it cannot run, fails,
    /// or prints something that does not parse.
    pub fn new(program: String, kernel: Option<KernelLog>) -> Result<SmiProbe, String> {
        let out = command::run(&program, &smi::args(), COMMAND_TIMEOUT)?;
        if !out.status.success() && out.stdout.trim().is_empty() {
            return Err(format!(
                "{program} failed ({}): {}",
                out.status,
                out.stderr_tail()
            ));
        }
        let rows = smi::parse(&out.stdout).map_err(|e| format!("{program}: {e}"))?;
        let mut inventory: Vec<CardInfo> = rows.into_iter().map(|(info, _)| info).collect();
        inventory.sort_by_key(|c| c.index);
        if inventory.windows(2).any(|w| w[0].index == w[1].index) {
            return Err(format!("{program}: the same GPU index is listed twice"));
        }
        let by_bus = inventory
            .iter()
            .filter_map(|c| normalize_bus_id(&c.pci_bus_id).map(|b| (b, c.index)))
            .collect();
        let lost = smi::lost_bus_ids(&format!("{}\n{}", out.stdout, out.stderr));
        if !lost.is_empty() {
            tracing::warn!(
                ?lost,
                "nvidia-smi cannot reach some GPUs; they are not in the inventory"
            );
        }
        tracing::info!(cards = inventory.len(), program = %program, "nvidia-smi probe ready");
        Ok(SmiProbe {
            program,
            inventory,
            by_bus,
            kernel,
            failing: false,
        })
    }

    fn fail(&mut self, why: &str) -> Vec<CardSample> {
        if !self.failing {
            tracing::warn!(program = %self.program, error = %why, "nvidia-smi probe failed; no card readings until it answers again");
            self.failing = true;
        }
        Vec::new()
    }
}

impl CardProbe for SmiProbe {
    fn name(&self) -> &'static str {
        "smi"
    }

    fn inventory(&self) -> Vec<CardInfo> {
        self.inventory.clone()
    }

    fn sample(&mut self) -> Vec<CardSample> {
        let out = match command::run(&self.program, &smi::args(), COMMAND_TIMEOUT) {
            Ok(out) => out,
            Err(e) => return self.fail(&e),
        };
        let latency_us = u32::try_from(out.elapsed.as_micros()).unwrap_or(u32::MAX);
        let lost = smi::lost_bus_ids(&format!("{}\n{}", out.stdout, out.stderr));
        let rows = match smi::parse(&out.stdout) {
            Ok(rows) => rows,
            Err(e) => return self.fail(&e),
        };
        if rows.is_empty() && lost.is_empty() {
            let why = if out.status.success() {
                "no GPU rows in the output".to_owned()
            } else {
                format!("{}: {}", out.status, out.stderr_tail())
            };
            return self.fail(&why);
        }
        if self.failing {
            tracing::info!(program = %self.program, "nvidia-smi probe answers again");
            self.failing = false;
        }
        let mut by_index: HashMap<u32, CardSample> = HashMap::new();
        for (info, mut s) in rows {
            // Match by PCI address: nvidia-smi's index can shift when a GPU
            // disappears.
            let index = normalize_bus_id(&info.pci_bus_id)
                .and_then(|b| self.by_bus.get(&b).copied())
                .or_else(|| {
                    self.inventory
                        .iter()
                        .any(|c| c.index == info.index && c.pci_bus_id.is_empty())
                        .then_some(info.index)
                });
            if let Some(index) = index {
                s.index = index;
                s.probe_latency_us = latency_us;
                by_index.insert(index, s);
            }
        }
        // A card in the inventory that nvidia-smi no longer lists, or names as
        // unreachable, is reported unreachable.
        self.inventory
            .iter()
            .map(|c| {
                by_index.remove(&c.index).unwrap_or(CardSample {
                    index: c.index,
                    unreachable: true,
                    probe_latency_us: latency_us,
                    ..Default::default()
                })
            })
            .collect()
    }

    fn drain_errors(&mut self) -> Vec<(u32, Signal, String)> {
        match &self.kernel {
            Some(k) => k.drain(&self.inventory),
            None => Vec::new(),
        }
    }
}
