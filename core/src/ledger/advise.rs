//! Young/Daly checkpoint interval advice from what the ledger observed.

use super::*;

/// The checkpoint interval that maximizes ETTR for a job, from what the
/// ledger observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub job: JobId,
    /// Observed: seconds of training per fault (running time / faults).
    pub mtbf_s: f64,
    /// Observed: seconds one checkpoint save blocks training.
    pub checkpoint_cost_s: f64,
    /// Observed: seconds from a fault to training again, per fault.
    pub restart_cost_s: f64,
    /// Observed: seconds between checkpoints now.
    pub current_interval_s: Option<f64>,
    /// Young/Daly: sqrt(2 C (M + R)) - C, at least C.
    pub optimal_interval_s: f64,
    pub expected_ettr_now: Option<f64>,
    pub expected_ettr_optimal: f64,
    /// ETTR gained by moving to the optimal interval.
    pub expected_gain: Option<f64>,
    /// Why the advice is rough, if it is.
    pub note: Option<String>,
}

/// First-order expected ETTR with checkpoints every `tau` seconds:
/// checkpoint overhead C/(tau + C), plus per fault the rework (half an
/// interval) and the restart.
fn expected_ettr(tau: f64, c: f64, r: f64, m: f64) -> f64 {
    let overhead = c / (tau + c);
    let per_fault = (tau + c) / 2.0 + r;
    ((1.0 - overhead) * (1.0 - per_fault / m)).clamp(0.0, 1.0)
}

impl Ledger {
    /// Young/Daly advice for every job with enough history.
    pub fn advise(&self, now: Millis) -> Vec<Advice> {
        let totals = self.totals(now);
        let mut out = Vec::new();
        for (job, c) in &self.cursors {
            let Some(t) = totals.get(job) else { continue };
            let cards = f64::from(c.cards.max(1));
            let secs = |cat: Category| {
                t.by_category.get(&cat).copied().unwrap_or(0) as f64 / cards / 1000.0
            };
            let running =
                secs(Category::Effective) + secs(Category::Straggler) + secs(Category::Checkpoint);
            if running <= 0.0 || c.checkpoints == 0 {
                continue;
            }
            let ckpt = secs(Category::Checkpoint) / c.checkpoints as f64;
            let faults = c.faults.max(1) as f64;
            let restart = (secs(Category::Detection)
                + secs(Category::Recovery)
                + secs(Category::WaitingForCapacity))
                / faults;
            let mtbf = running / faults;
            let note = (c.faults == 0).then(|| {
                "no fault observed yet: the failure rate is a lower bound (one fault assumed)"
                    .to_owned()
            });
            let current = Some((running - secs(Category::Checkpoint)) / c.checkpoints as f64);
            let opt = ((2.0 * ckpt.max(0.001) * (mtbf + restart)).sqrt() - ckpt).max(ckpt);
            let now_e = current.map(|tau| expected_ettr(tau, ckpt, restart, mtbf));
            let opt_e = expected_ettr(opt, ckpt, restart, mtbf);
            out.push(Advice {
                job: job.clone(),
                mtbf_s: mtbf,
                checkpoint_cost_s: ckpt,
                restart_cost_s: restart,
                current_interval_s: current,
                optimal_interval_s: opt,
                expected_ettr_now: now_e,
                expected_ettr_optimal: opt_e,
                expected_gain: now_e.map(|e| opt_e - e),
                note,
            });
        }
        out
    }
}
