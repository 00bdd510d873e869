//! `--cards exec:CMD`: runs `sh -c CMD` on each sample and reads the probe
//! document it prints (`vigil_ingest::probe::exec`, schema in
//! `docs/probes.md`).

use super::COMMAND_TIMEOUT;
use super::command::{self, CmdOutput};
use crate::cards::CardProbe;
use std::collections::BTreeSet;
use vigil_core::model::{CardInfo, CardSample, Signal};
use vigil_ingest::probe::exec::{self, ExecReport};

/// Cards read through a vendor probe command.
#[derive(Debug)]
pub struct ExecProbe {
    cmd: String,
    inventory: Vec<CardInfo>,
    known: BTreeSet<u32>,
    errors: Vec<(u32, Signal, String)>,
    failing: bool,
    warned_unknown: BTreeSet<u32>,
}

fn invoke(cmd: &str) -> Result<(ExecReport, CmdOutput), String> {
    let args = ["-c".to_owned(), cmd.to_owned()];
    let out = command::run("sh", &args, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        let tail = out.stderr_tail();
        return Err(format!(
            "probe command {cmd:?} failed ({}){}{tail}",
            out.status,
            if tail.is_empty() { "" } else { ": " }
        ));
    }
    let report = exec::parse(&out.stdout).map_err(|e| format!("probe command {cmd:?}: {e}"))?;
    Ok((report, out))
}

impl ExecProbe {
    /// Runs the command once for the inventory. Fails clearly when it cannot
    /// run, exits non-zero, or prints no valid document.
    pub fn new(cmd: &str) -> Result<ExecProbe, String> {
        let (report, _) = invoke(cmd)?;
        let mut inventory: Vec<CardInfo> = report.cards.iter().map(|(i, _)| i.clone()).collect();
        inventory.sort_by_key(|c| c.index);
        let known = inventory.iter().map(|c| c.index).collect();
        tracing::info!(cards = inventory.len(), vendor = %report.vendor, cmd, "exec probe ready");
        Ok(ExecProbe {
            cmd: cmd.to_owned(),
            inventory,
            known,
            errors: report.errors,
            failing: false,
            warned_unknown: BTreeSet::new(),
        })
    }

    fn known(&mut self, index: u32) -> bool {
        if self.known.contains(&index) {
            return true;
        }
        if self.warned_unknown.insert(index) {
            tracing::warn!(card = index, cmd = %self.cmd, "the probe reports a card that was not in its first inventory; ignored until the agent restarts");
        }
        false
    }
}

impl CardProbe for ExecProbe {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn inventory(&self) -> Vec<CardInfo> {
        self.inventory.clone()
    }

    fn sample(&mut self) -> Vec<CardSample> {
        let (report, out) = match invoke(&self.cmd) {
            Ok(r) => r,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "exec probe failed; no card readings until it answers again");
                    self.failing = true;
                }
                return Vec::new();
            }
        };
        if self.failing {
            tracing::info!(cmd = %self.cmd, "exec probe answers again");
            self.failing = false;
        }
        let latency_us = u32::try_from(out.elapsed.as_micros()).unwrap_or(u32::MAX);
        for e in report.errors {
            if self.known(e.0) {
                self.errors.push(e);
            }
        }
        let mut samples = Vec::with_capacity(report.cards.len());
        for (_, mut s) in report.cards {
            if self.known(s.index) {
                if s.probe_latency_us == 0 {
                    s.probe_latency_us = latency_us;
                }
                samples.push(s);
            }
        }
        samples
    }

    fn drain_errors(&mut self) -> Vec<(u32, Signal, String)> {
        std::mem::take(&mut self.errors)
    }
}
