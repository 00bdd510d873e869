//! Log-tail mode: progress records from a training job's own log lines, so a
//! job can be watched without changing its code.
//!
//! [`LogParser`] takes one line at a time (the agent follows the file) and
//! returns the progress records it implies. Presets know the lines of
//! Megatron-LM, DeepSpeed, the Hugging Face Trainer and torchtitan;
//! [`Preset::Auto`] tries each and keeps the first that recognizes a line.
//! Torchrun's `--tee` prefixes (`[rank0]:`, `[default0]:`), timestamps and
//! ANSI colour codes are tolerated. The parser is pure: no clock, no IO.
//!
//! Every step record is a step end (`phase` `end`): logs say when a step is
//! done, not when it began or entered its collective.

use std::fmt;
use std::str::FromStr;
use vigil_core::ids::JobId;
use vigil_core::progress::{Phase, ProgressRecord};

/// Which framework wrote the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Try each preset; the first that recognizes a line is kept.
    Auto,
    /// Megatron-LM (and Megatron-DeepSpeed) `training_log` lines.
    Megatron,
    /// The DeepSpeed engine's `steps_per_print` lines.
    DeepSpeed,
    /// The Hugging Face Trainer: its tqdm bar and logged dicts.
    HfTrainer,
    /// torchtitan's `MetricsProcessor` lines.
    Torchtitan,
}

impl Preset {
    /// The presets `Auto` tries, in order.
    pub const CONCRETE: [Preset; 4] = [
        Preset::Megatron,
        Preset::DeepSpeed,
        Preset::HfTrainer,
        Preset::Torchtitan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Auto => "auto",
            Preset::Megatron => "megatron",
            Preset::DeepSpeed => "deepspeed",
            Preset::HfTrainer => "hf_trainer",
            Preset::Torchtitan => "torchtitan",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Preset::Auto),
            "megatron" => Ok(Preset::Megatron),
            "deepspeed" => Ok(Preset::DeepSpeed),
            "hf_trainer" => Ok(Preset::HfTrainer),
            "torchtitan" => Ok(Preset::Torchtitan),
            other => Err(format!(
                "unknown log format {other:?} (expected auto, megatron, deepspeed, hf_trainer or torchtitan)"
            )),
        }
    }
}

/// What one preset read from a line, before it is addressed to a job.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Step {
        step: u64,
        samples: Option<u64>,
        tokens: Option<u64>,
    },
    Checkpoint {
        step: u64,
        path: String,
    },
    End,
}

/// Turns the lines of one training log into progress records of one rank.
#[derive(Debug, Clone)]
pub struct LogParser {
    preset: Preset,
    /// The preset in use: the configured one, or the one `Auto` settled on.
    active: Option<Preset>,
    job: JobId,
    rank: u32,
    world_size: u32,
    started: bool,
    last_step: Option<u64>,
    last_checkpoint: Option<u64>,
    megatron: Megatron,
    deepspeed: DeepSpeed,
    hf: HfTrainer,
}

impl LogParser {
    /// A parser whose records are sent as `rank` of `world_size` in `job`.
    pub fn new(preset: Preset, job: JobId, rank: u32, world_size: u32) -> Self {
        LogParser {
            preset,
            active: (preset != Preset::Auto).then_some(preset),
            job,
            rank,
            world_size,
            started: false,
            last_step: None,
            last_checkpoint: None,
            megatron: Megatron::default(),
            deepspeed: DeepSpeed::default(),
            hf: HfTrainer {
                armed: preset == Preset::HfTrainer,
                ..HfTrainer::default()
            },
        }
    }

    /// The preset in use, once known.
    pub fn active(&self) -> Option<Preset> {
        self.active
    }

    /// The configured preset.
    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// The records one log line implies (usually none). A `start` record
    /// precedes the first record, and the first after an `end`.
    pub fn line(&mut self, raw: &str) -> Vec<ProgressRecord> {
        let clean = strip_ansi(raw);
        let line = strip_prefixes(&clean);
        let seen = match self.active {
            Some(p) => self.run(p, line),
            None => {
                let mut found = Vec::new();
                for p in Preset::CONCRETE {
                    // Every preset sees every line until one is chosen, so
                    // that state lines (the HF Trainer's totals) are kept.
                    let s = self.run(p, line);
                    if found.is_empty() && !s.is_empty() {
                        self.active = Some(p);
                        found = s;
                    }
                }
                found
            }
        };
        let mut out = Vec::new();
        for s in seen {
            self.emit(s, &mut out);
        }
        out
    }

    fn run(&mut self, p: Preset, line: &str) -> Vec<Seen> {
        match p {
            Preset::Megatron => self.megatron.line(line),
            Preset::DeepSpeed => self.deepspeed.line(line),
            Preset::HfTrainer => self.hf.line(line),
            Preset::Torchtitan => torchtitan(line),
            Preset::Auto => Vec::new(),
        }
    }

    fn emit(&mut self, s: Seen, out: &mut Vec<ProgressRecord>) {
        let (job, rank) = (self.job.clone(), self.rank);
        let rec = match s {
            Seen::Step {
                step,
                samples,
                tokens,
            } => {
                // Two lines of one step (DeepSpeed prints two) are one record.
                if self.last_step == Some(step) {
                    return;
                }
                self.last_step = Some(step);
                ProgressRecord::Step {
                    job,
                    rank,
                    step,
                    phase: Phase::End,
                    samples,
                    tokens,
                }
            }
            Seen::Checkpoint { step, path } => {
                if self.last_checkpoint == Some(step) || path.is_empty() {
                    return;
                }
                self.last_checkpoint = Some(step);
                ProgressRecord::Checkpoint {
                    job,
                    rank,
                    step,
                    path,
                    bytes: None,
                    sha256: None,
                }
            }
            Seen::End => {
                if !self.started {
                    return;
                }
                self.started = false;
                self.last_step = None;
                self.last_checkpoint = None;
                out.push(ProgressRecord::End {
                    job,
                    rank,
                    status: "ok".to_owned(),
                });
                return;
            }
        };
        if !self.started {
            self.started = true;
            out.push(ProgressRecord::Start {
                job: self.job.clone(),
                rank: self.rank,
                world_size: self.world_size,
                local_rank: None,
                card: None,
                pid: None,
            });
        }
        out.push(rec);
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Strips leading whitespace and torchrun's per-process prefixes such as
/// `[rank0]:` or `[default3]:`.
fn strip_prefixes(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        let Some(rest) = s.strip_prefix('[') else {
            return s;
        };
        let Some(end) = rest.find("]:") else {
            return s;
        };
        let inner = &rest[..end];
        let digits = inner.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == '_');
        if inner.len() > 32 || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return s;
        }
        s = &rest[end + 2..];
    }
}

/// The unsigned integer at the start of `s` after spaces, with optional
/// thousands separators; and the rest of `s`.
fn leading_u64(s: &str) -> Option<(u64, &str)> {
    let s = s.trim_start();
    let mut n: u64 = 0;
    let mut len = 0;
    let mut digits = 0;
    for (i, c) in s.char_indices() {
        if let Some(d) = c.to_digit(10) {
            n = n.checked_mul(10)?.checked_add(u64::from(d))?;
            digits += 1;
            len = i + 1;
        } else if c == ',' && digits > 0 && s[i + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            len = i + 1;
        } else {
            break;
        }
    }
    (digits > 0).then(|| (n, &s[len..]))
}

/// The number after the first `key` in `s`.
fn number_after(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)?;
    leading_u64(&s[i + key.len()..]).map(|(n, _)| n)
}

/// The step in a checkpoint directory name: `iter_0000100`, `global_step100`,
/// `checkpoint-100`, `step-100`.
fn step_of_dir(name: &str) -> Option<u64> {
    ["iter_", "global_step", "checkpoint-", "step-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
}

/// The directory part of a file path (`a/b/c.pt` -> `a/b`).
fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
}

fn last_component(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    p.rsplit('/').next().unwrap_or(p)
}

/// Megatron-LM: `iteration N/M | consumed samples: ... |` and
/// `successfully saved checkpoint from iteration N to DIR`.
#[derive(Debug, Clone, Default)]
struct Megatron {
    consumed_samples: Option<u64>,
    consumed_tokens: Option<u64>,
}

impl Megatron {
    fn line(&mut self, l: &str) -> Vec<Seen> {
        if let Some(i) = l.find("successfully saved checkpoint ") {
            return Self::saved(&l[i + "successfully saved checkpoint ".len()..])
                .into_iter()
                .collect();
        }
        let Some(step) = Self::iteration(l) else {
            return Vec::new();
        };
        let samples_now = number_after(l, "consumed samples:");
        let tokens_now = number_after(l, "consumed tokens:");
        let batch = number_after(l, "global batch size:");
        let seqlen = number_after(l, "actual seqlen:");
        let delta = |now: Option<u64>, before: Option<u64>| match (now, before) {
            (Some(n), Some(b)) if n > b => Some(n - b),
            _ => None,
        };
        let samples = delta(samples_now, self.consumed_samples).or(batch);
        let tokens = delta(tokens_now, self.consumed_tokens).or(match (batch, seqlen) {
            (Some(b), Some(s)) => b.checked_mul(s),
            _ => None,
        });
        self.consumed_samples = samples_now;
        self.consumed_tokens = tokens_now;
        vec![Seen::Step {
            step,
            samples,
            tokens,
        }]
    }

    /// `iteration      609/  500000 |`: the step, when the line is a
    /// training-log line.
    fn iteration(l: &str) -> Option<u64> {
        l.match_indices("iteration").find_map(|(i, _)| {
            let (n, rest) = leading_u64(&l[i + "iteration".len()..])?;
            let rest = rest.trim_start().strip_prefix('/')?;
            let (_, rest) = leading_u64(rest)?;
            rest.trim_start().starts_with('|').then_some(n)
        })
    }

    /// `from iteration     100 to /ckpt/gpt [ t 1/1, p 1/1 ]` (older
    /// versions say `at iteration`).
    fn saved(rest: &str) -> Option<Seen> {
        let rest = rest
            .strip_prefix("from iteration")
            .or_else(|| rest.strip_prefix("at iteration"))?;
        let (step, rest) = leading_u64(rest)?;
        let dir = rest.trim_start().strip_prefix("to ")?;
        let dir = dir.split(" [").next().unwrap_or(dir).trim();
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() {
            return None;
        }
        Some(Seen::Checkpoint {
            step,
            path: format!("{dir}/iter_{step:07}"),
        })
    }
}

/// DeepSpeed: `[Rank 0] step=600, skipped=0, ...`, the timer's
/// `global_step=600, RunningAvgSamplesPerSec=...`, and the checkpoint
/// engine's save and commit lines.
#[derive(Debug, Clone, Default)]
struct DeepSpeed {
    /// The tag directory of the checkpoint being saved.
    saving_dir: Option<String>,
}

impl DeepSpeed {
    fn line(&mut self, l: &str) -> Vec<Seen> {
        if let Some(i) = l.find("] step=")
            && l.contains("skipped=")
            && let Some((step, _)) = leading_u64(&l[i + "] step=".len()..])
        {
            return vec![Self::step(step)];
        }
        if l.contains("SamplesPerSec=")
            && let Some(step) = number_after(l, "global_step=")
        {
            return vec![Self::step(step)];
        }
        if let Some(i) = l.find("Saving model checkpoint: ") {
            let file = l[i + "Saving model checkpoint: ".len()..].trim();
            self.saving_dir = parent(file).map(str::to_owned);
            return Vec::new();
        }
        // `zero checkpoint saved DIR/global_step600/..._optim_states.pt`,
        // the last file a rank writes.
        if let Some(i) = l.find("zero checkpoint saved ") {
            let file = l[i + "zero checkpoint saved ".len()..].trim();
            if let Some(dir) = parent(file)
                && let Some(step) = step_of_dir(last_component(dir))
            {
                return vec![Seen::Checkpoint {
                    step,
                    path: dir.to_owned(),
                }];
            }
            return Vec::new();
        }
        // `[Torch] Checkpoint global_step600 is ready now!` (the commit).
        if let Some(i) = l.find("Checkpoint ")
            && let Some(tag) = l[i + "Checkpoint ".len()..].strip_suffix(" is ready now!")
            && let Some(step) = step_of_dir(tag)
            && let Some(dir) = &self.saving_dir
            && last_component(dir) == tag
        {
            return vec![Seen::Checkpoint {
                step,
                path: dir.clone(),
            }];
        }
        Vec::new()
    }

    fn step(step: u64) -> Seen {
        Seen::Step {
            step,
            samples: None,
            tokens: None,
        }
    }
}

/// The Hugging Face Trainer. Its logged dicts carry no step, so steps come
/// from the training progress bar (`| 300/3000 [01:23<12:34, 3.58it/s]`);
/// its total is taken from `Total optimization steps = N` when the log has
/// it, else from the first bar seen. `Saving model checkpoint to DIR` is
/// reported once training moves past it (the save is synchronous), and the
/// final `{'train_runtime': ...}` dict ends the job.
#[derive(Debug, Clone, Default)]
struct HfTrainer {
    /// Bars count only once the log shows the Trainer is training (always,
    /// when the preset was chosen explicitly).
    armed: bool,
    total: Option<u64>,
    batch: Option<u64>,
    step: Option<u64>,
    pending: Option<(u64, String)>,
}

impl HfTrainer {
    fn line(&mut self, l: &str) -> Vec<Seen> {
        if let Some(n) = number_after(l, "Total optimization steps =") {
            self.total = Some(n);
            self.armed = true;
            return Vec::new();
        }
        if l.contains("***** Running training *****") {
            self.armed = true;
            return Vec::new();
        }
        if let Some(n) = number_after(
            l,
            "Total train batch size (w. parallel, distributed & accumulation) =",
        ) {
            self.batch = Some(n);
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(i) = l.find("Saving model checkpoint to ") {
            let dir = l[i + "Saving model checkpoint to ".len()..].trim();
            let dir = dir.trim_end_matches('/');
            if let Some(step) = step_of_dir(last_component(dir)).or(self.step) {
                self.pending = Some((step, dir.to_owned()));
            }
            return out;
        }
        if l.contains("{'train_runtime':") {
            self.flush(u64::MAX, &mut out);
            out.push(Seen::End);
            self.step = None;
            return out;
        }
        if l.contains("{'loss':") {
            self.armed = true;
            if let Some(step) = self.step {
                self.flush(step.saturating_add(1), &mut out);
                out.push(Seen::Step {
                    step,
                    samples: None,
                    tokens: None,
                });
            }
            return out;
        }
        if !self.armed {
            return out;
        }
        // A line may hold several bar updates (tqdm redraws with `\r`, and
        // a log may hold them on one line): the last one counts.
        let Some((n, total)) = last_bar(l) else {
            return out;
        };
        match self.total {
            Some(t) if t != total => return out, // an evaluation bar
            Some(_) => {}
            None => self.total = Some(total),
        }
        if n == 0 || self.step == Some(n) {
            return out;
        }
        let samples = self.batch.map(|b| match self.step {
            Some(prev) if n > prev => b.saturating_mul(n - prev),
            _ => b,
        });
        self.step = Some(n);
        self.flush(n, &mut out);
        out.push(Seen::Step {
            step: n,
            samples,
            tokens: None,
        });
        out
    }

    /// Reports the pending checkpoint once training is past its step.
    fn flush(&mut self, now_at: u64, out: &mut Vec<Seen>) {
        if let Some((step, _)) = &self.pending
            && now_at > *step
            && let Some((step, path)) = self.pending.take()
        {
            out.push(Seen::Checkpoint { step, path });
        }
    }
}

/// The last tqdm update in a line counted in iterations:
/// `| 300/3000 [01:23<12:34,  3.58it/s]` gives (300, 3000).
fn last_bar(l: &str) -> Option<(u64, u64)> {
    let mut found = None;
    for (i, _) in l.match_indices('|') {
        let rest = &l[i + 1..];
        let Some((n, rest)) = leading_u64(rest) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('/') else {
            continue;
        };
        let Some((total, rest)) = leading_u64(rest) else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('[') else {
            continue;
        };
        let info = rest.split(']').next().unwrap_or(rest);
        // Training and evaluation bars count iterations; dataset bars count
        // `examples/s` or `ba/s`.
        if (info.contains("it/s") || info.contains("s/it")) && n <= total {
            found = Some((n, total));
        }
    }
    found
}

/// torchtitan: `... - INFO - step: 200  loss:  6.1384  memory: ...`.
/// Validation lines (`validate step:`) are not training steps.
fn torchtitan(l: &str) -> Vec<Seen> {
    let msg = match l.find(" - INFO - ") {
        Some(i) => &l[i + " - INFO - ".len()..],
        None => l,
    };
    let Some(rest) = msg.trim_start().strip_prefix("step:") else {
        return Vec::new();
    };
    if !rest.contains("loss:") {
        return Vec::new();
    }
    match leading_u64(rest) {
        Some((step, _)) => vec![Seen::Step {
            step,
            samples: None,
            tokens: None,
        }],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(p: Preset) -> LogParser {
        LogParser::new(p, JobId::new("pretrain").expect("id"), 0, 1)
    }

    /// Feeds lines and returns every record, without the `start` records.
    fn feed(p: &mut LogParser, lines: &[&str]) -> Vec<ProgressRecord> {
        lines
            .iter()
            .flat_map(|l| p.line(l))
            .filter(|r| !matches!(r, ProgressRecord::Start { .. }))
            .collect()
    }

    fn step(r: &ProgressRecord) -> (u64, Option<u64>, Option<u64>) {
        match r {
            ProgressRecord::Step {
                step,
                samples,
                tokens,
                phase,
                ..
            } => {
                assert_eq!(*phase, Phase::End);
                (*step, *samples, *tokens)
            }
            other => panic!("not a step: {other:?}"),
        }
    }

    fn checkpoint(r: &ProgressRecord) -> (u64, &str) {
        match r {
            ProgressRecord::Checkpoint { step, path, .. } => (*step, path.as_str()),
            other => panic!("not a checkpoint: {other:?}"),
        }
    }

    const MEGATRON: &[&str] = &[
        "[2025-08-01 07:19:37] iteration        1/    5000 | consumed samples:          128 | elapsed time per iteration (ms): 19138.8 | throughput per GPU (TFLOP/s/GPU): 80.2 | learning rate: 6.976744E-08 | global batch size:   128 | lm loss: 1.043863E+01 | loss scale: 1.0 | grad norm: 26.203 | number of skipped iterations:   0 | number of nan iterations:   0 |",
        "[Rank 0] (after 1 iterations) memory (MB) | allocated: 12345.6 | max allocated: 23456.7 | reserved: 30000.0 | max reserved: 30000.0",
        "[2025-08-01 07:22:47] iteration       11/    5000 | consumed samples:         1408 | elapsed time per iteration (ms): 19001.2 | throughput per GPU (TFLOP/s/GPU): 80.8 | learning rate: 7.674419E-07 | global batch size:   128 | lm loss: 9.871234E+00 | loss scale: 1.0 | grad norm: 12.120 | number of skipped iterations:   0 | number of nan iterations:   0 |",
        " validation loss at iteration 20 on validation set | lm loss value: 9.120000E+00 | lm loss PPL: 9.136E+03 | ",
        "saving checkpoint at iteration      20 to /ckpt/gpt in torch_dist format",
        "  successfully saved checkpoint from iteration      20 to /ckpt/gpt [ t 1/2, p 1/1 ]",
    ];

    #[test]
    fn megatron_steps_samples_and_checkpoints() {
        let mut p = parser(Preset::Megatron);
        let recs = feed(&mut p, MEGATRON);
        assert_eq!(recs.len(), 3, "{recs:?}");
        // First line: no earlier consumed count, so the global batch size.
        assert_eq!(step(&recs[0]), (1, Some(128), None));
        // Then the consumed-samples delta over the 10 iterations logged.
        assert_eq!(step(&recs[1]), (11, Some(1280), None));
        assert_eq!(checkpoint(&recs[2]), (20, "/ckpt/gpt/iter_0000020"));
    }

    #[test]
    fn megatron_variants_with_prefixes_and_tokens() {
        let mut p = parser(Preset::Megatron);
        let recs = feed(
            &mut p,
            &[
                "[default0]: [2026-09-11 12:06:52.987995] iteration        3/ 7629408 | consumed samples:           96 | elapsed time per iteration (ms): 24379.9 | throughput per GPU (TFLOP/s/GPU): 26.8 | learning rate: 1.406250E-04 | global batch size:    32 | lm loss: 1.107468E+01 | loss scale: 1.0 | grad norm: 30.066 | num zeros: 1299.0 | params norm: 496.206 | number of skipped iterations:   0 | number of nan iterations:   0 |",
                "     iteration        1/  317892 | consumed samples:           96 | consumed tokens:       393216 | elapsed time per iteration (ms): 25849.1 | learning rate: 3.000E-04 | global batch size:    96 | lm loss: 1.117136E+01 | loss scale: 1.0 | actual seqlen:  4096 | number of skipped iterations:   0 | number of nan iterations:   0 | samples per second: 3.714 | tokens per gpu per second(tgs): 633.832 | TFLOPs: 38.61 |",
                "     iteration        2/  317892 | consumed samples:          192 | consumed tokens:       786432 | elapsed time per iteration (ms): 25849.1 | learning rate: 3.000E-04 | global batch size:    96 | lm loss: 1.117136E+01 | loss scale: 1.0 | actual seqlen:  4096 | number of skipped iterations:   0 | number of nan iterations:   0 |",
                "  successfully saved checkpoint at iteration     100 to /data/ckpt/",
            ],
        );
        assert_eq!(step(&recs[0]), (3, Some(32), None));
        // A restart (consumed samples went back): the batch size again, and
        // the tokens of one batch of the actual sequence length.
        assert_eq!(step(&recs[1]), (1, Some(96), Some(96 * 4096)));
        assert_eq!(step(&recs[2]), (2, Some(96), Some(393_216)));
        assert_eq!(checkpoint(&recs[3]), (100, "/data/ckpt/iter_0000100"));
    }

    #[test]
    fn records_carry_job_rank_and_a_start_first() {
        let mut p = LogParser::new(Preset::Megatron, JobId::new("gpt").expect("id"), 7, 8);
        let recs = p.line(MEGATRON[0]);
        assert_eq!(recs.len(), 2);
        assert!(matches!(
            &recs[0],
            ProgressRecord::Start { rank: 7, world_size: 8, job, .. } if job.as_str() == "gpt"
        ));
        assert_eq!(recs[1].rank(), 7);
        assert_eq!(recs[1].job().as_str(), "gpt");
        for r in &recs {
            r.validate().expect("valid record");
        }
        // No second start for later lines.
        assert_eq!(p.line(MEGATRON[2]).len(), 1);
    }

    const DEEPSPEED: &[&str] = &[
        "[2024-08-15 21:12:21,408] [INFO] [logging.py:96:log_dist] [Rank 0] step=600, skipped=0, lr=[9.26050416794548e-05], mom=[(0.9, 0.999)]",
        "[2024-08-15 21:12:21,418] [INFO] [timer.py:260:stop] epoch=0/micro_step=1200/global_step=600, RunningAvgSamplesPerSec=51.18608989565034, CurrSamplesPerSec=56.79136995208808, MemAllocated=15.78GB, MaxMemAllocated=43.28GB",
        "[2024-04-04 09:09:53,313] [INFO] [logging.py:96:log_dist] [Rank 0] time (ms) | fwd: 6567.66 | bwd: 17950.35 | bwd_inner: 17711.19 | bwd_allreduce: 239.11 | step: 1139.29",
        "[2024-08-15 21:12:30,001] [INFO] [timer.py:198:stop] 0/20, RunningAvgSamplesPerSec=51.2, CurrSamplesPerSec=56.8, MemAllocated=15.78GB, MaxMemAllocated=43.28GB",
        "[2024-10-22 20:11:28,103] [INFO] [logging.py:96:log_dist] [Rank 0] [Torch] Checkpoint global_step500 is about to be saved!",
        "[2024-10-22 20:11:28,124] [INFO] [logging.py:96:log_dist] [Rank 0] Saving model checkpoint: out/global_step500/mp_rank_00_model_states.pt",
        "[2024-10-22 20:11:28,124] [INFO] [torch_checkpoint_engine.py:21:save] [Torch] Saving out/global_step500/mp_rank_00_model_states.pt...",
        "[2024-10-22 20:11:28,430] [INFO] [torch_checkpoint_engine.py:23:save] [Torch] Saved out/global_step500/mp_rank_00_model_states.pt.",
        "[2024-10-22 20:11:28,487] [INFO] [torch_checkpoint_engine.py:33:commit] [Torch] Checkpoint global_step500 is ready now!",
        "[2024-08-15 21:13:21,408] [INFO] [logging.py:68:log_dist] [Rank 0] step=610, skipped=1, lr=[9.2e-05], mom=[(0.9, 0.999)]",
        "[2024-10-22 20:17:44,991] [INFO] [engine.py:3536:_save_zero_checkpoint] bf16_zero checkpoint saved /ckpt/global_step1000/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ];

    #[test]
    fn deepspeed_steps_once_per_step_and_checkpoints() {
        let mut p = parser(Preset::DeepSpeed);
        let recs = feed(&mut p, DEEPSPEED);
        assert_eq!(recs.len(), 4, "{recs:?}");
        // The log_dist line and the timer line of step 600 are one record.
        assert_eq!(step(&recs[0]), (600, None, None));
        assert_eq!(checkpoint(&recs[1]), (500, "out/global_step500"));
        assert_eq!(step(&recs[2]), (610, None, None));
        assert_eq!(checkpoint(&recs[3]), (1000, "/ckpt/global_step1000"));
    }

    #[test]
    fn deepspeed_commit_of_an_unknown_directory_is_not_reported() {
        let mut p = parser(Preset::DeepSpeed);
        let recs = feed(
            &mut p,
            &[
                "[2024-10-22 20:11:28,487] [INFO] [torch_checkpoint_engine.py:33:commit] [Torch] Checkpoint global_step500 is ready now!",
            ],
        );
        assert!(recs.is_empty(), "{recs:?}");
    }

    const HF: &[&str] = &[
        "Map: 100%|██████████| 1000/1000 [00:00<00:00, 9000.12 examples/s]",
        "[INFO|trainer.py:2243] 2024-10-22 20:04:00,000 >> ***** Running training *****",
        "[INFO|trainer.py:2244] 2024-10-22 20:04:00,000 >>   Num examples = 1,000",
        "[INFO|trainer.py:2246] 2024-10-22 20:04:00,000 >>   Total train batch size (w. parallel, distributed & accumulation) = 16",
        "[INFO|trainer.py:2249] 2024-10-22 20:04:00,000 >>   Total optimization steps = 1,350",
        "  0%|          | 0/1350 [00:00<?, ?it/s]",
        "  0%|          | 1/1350 [00:01<22:30,  1.00s/it]",
        " 37%|███▋      | 500/1350 [06:14<10:35,  1.34it/s]",
        "{'loss': 3.0859, 'grad_norm': 3.913444757461548, 'learning_rate': 7.828034377432693e-05, 'epoch': 1.13}",
        "100%|██████████| 13/13 [00:05<00:00,  2.51it/s]",
        "{'eval_loss': 0.5922794938087463, 'eval_accuracy': 0.8382352941176471, 'eval_runtime': 5.187, 'eval_samples_per_second': 78.658, 'eval_steps_per_second': 9.832, 'epoch': 3.0}",
        "0:46,  1.31it/s[INFO|trainer.py:3705] 2024-10-22 20:11:27,853 >> Saving model checkpoint to saves/sft/checkpoint-500",
        "[INFO|tokenization_utils_base.py:2641] 2024-10-22 20:11:27,888 >> tokenizer config file saved in saves/sft/checkpoint-500/tokenizer_config.json",
        " 44%|███▊      | 593/1350 [07:27<09:22,  1.35it/s]",
        "100%|██████████| 1350/1350 [16:50<00:00,  1.34it/s]",
        "{'train_runtime': 1010.5, 'train_samples_per_second': 21.4, 'train_steps_per_second': 1.336, 'train_loss': 2.95, 'epoch': 3.0}",
        "***** train metrics *****",
        "  train_runtime = 0:16:50.50",
    ];

    #[test]
    fn hf_trainer_steps_from_the_bar_checkpoint_after_save_and_end() {
        let mut p = parser(Preset::HfTrainer);
        let all: Vec<ProgressRecord> = HF.iter().flat_map(|l| p.line(l)).collect();
        assert!(matches!(all[0], ProgressRecord::Start { .. }), "{all:?}");
        let recs: Vec<_> = all[1..].to_vec();
        assert_eq!(recs.len(), 6, "{recs:?}");
        assert_eq!(step(&recs[0]), (1, Some(16), None));
        assert_eq!(step(&recs[1]), (500, Some(16 * 499), None));
        // The 13-step evaluation bar and the dataset bar are not steps; the
        // checkpoint is reported once training is past step 500.
        assert_eq!(checkpoint(&recs[2]), (500, "saves/sft/checkpoint-500"));
        assert_eq!(step(&recs[3]), (593, Some(16 * 93), None));
        assert_eq!(step(&recs[4]), (1350, Some(16 * 757), None));
        assert!(matches!(&recs[5], ProgressRecord::End { status, .. } if status == "ok"));
        // A later run in the same log starts again.
        let again = p.line("  0%|          | 1/1350 [00:01<22:30,  1.00s/it]");
        assert!(
            matches!(again[0], ProgressRecord::Start { .. }),
            "{again:?}"
        );
    }

    #[test]
    fn hf_trainer_without_totals_locks_on_the_first_iteration_bar() {
        let mut p = parser(Preset::HfTrainer);
        let recs = feed(
            &mut p,
            &[
                "Map: 100%|██████████| 1000/1000 [00:00<00:00, 9000.12 examples/s]",
                " 10%|█         | 300/3000 [01:23<12:34,  3.58it/s]",
                " 98%|█████████▊| 50/51 [00:05<00:00,  9.83it/s]",
                // Two redraws on one line: the last one counts.
                " 10%|█         | 301/3000 [01:23<12:34,  3.58it/s]\u{1b}[A 10%|█         | 302/3000 [01:24<12:34,  3.58it/s]",
            ],
        );
        let steps: Vec<u64> = recs.iter().map(|r| step(r).0).collect();
        assert_eq!(steps, [300, 302]);
    }

    #[test]
    fn auto_ignores_bars_until_the_trainer_shows_up() {
        let mut p = parser(Preset::Auto);
        assert!(p.line(HF[0]).is_empty());
        assert!(
            p.line(" 10%|█         | 300/3000 [01:23<12:34,  3.58it/s]")
                .is_empty()
        );
        assert_eq!(p.active(), None);
        let recs = feed(&mut p, &HF[1..8]);
        assert_eq!(p.active(), Some(Preset::HfTrainer));
        assert_eq!(recs.len(), 2, "{recs:?}");
    }

    const TITAN: &[&str] = &[
        "[titan] 2026-02-24 19:46:10,000 - root - INFO - Training starts at step 1.",
        "\u{1b}[31m[titan] 2026-02-24 19:46:17,508 - root - INFO - \u{1b}[31mstep:  4  \u{1b}[32mloss:  7.62585  \u{1b}[38;2;180;60;0mgrad_norm: 26.6250  \u{1b}[33mmemory: 66.91GiB(37.51%)  \u{1b}[34mtps: 10,050  \u{1b}[36mtflops: 314.71  \u{1b}[35mmfu: 13.99%\u{1b}[39m",
        "[rank0]:[titan] 2025-06-16 22:30:50,322 - root - INFO - step: 200  loss:  6.1384  memory: 49.66GiB(52.28%)  tps: 5,856  tflops: 339.16  mfu: 34.29%",
        "[rank0]:[titan] 2025-06-16 22:31:00,000 - root - INFO - validate step: 200  loss:  6.2000  memory: 49.66GiB(52.28%)",
        "[rank0]:[titan] 2025-06-16 22:31:05,000 - root - INFO - Saving the checkpoint (or staging if async is enabled).",
        "[titan] 2026-02-24 19:47:17,508 - root - INFO - step: 1000  loss:  3.1  memory: 66.91GiB(37.51%)  tps: 10,050  tflops: 1,314.71  mfu: N/A",
    ];

    #[test]
    fn torchtitan_steps_with_colours_and_prefixes() {
        let mut p = parser(Preset::Torchtitan);
        let recs = feed(&mut p, TITAN);
        let steps: Vec<u64> = recs.iter().map(|r| step(r).0).collect();
        assert_eq!(steps, [4, 200, 1000]);
    }

    #[test]
    fn auto_picks_each_preset_and_sticks_to_it() {
        for (lines, want) in [
            (MEGATRON, Preset::Megatron),
            (DEEPSPEED, Preset::DeepSpeed),
            (TITAN, Preset::Torchtitan),
        ] {
            let mut auto = parser(Preset::Auto);
            let mut fixed = parser(want);
            let got = feed(&mut auto, lines);
            assert_eq!(auto.active(), Some(want));
            assert_eq!(got, feed(&mut fixed, lines), "{want}");
            assert!(!got.is_empty());
        }
        // Once chosen, other formats' lines are ignored.
        let mut p = parser(Preset::Auto);
        feed(&mut p, &MEGATRON[..1]);
        assert!(feed(&mut p, &TITAN[1..3]).is_empty());
    }

    #[test]
    fn unrelated_lines_are_ignored_by_every_preset() {
        let noise = [
            "",
            "   ",
            "Traceback (most recent call last):",
            "NCCL INFO Channel 00/02 :    0   1   2   3",
            "[rank0]: RuntimeError: CUDA error: an illegal memory access was encountered",
            "building GPT model ...",
            "> number of parameters on (tensor, pipeline) model parallel rank (0, 0): 1234567",
            "iteration 5 of my own loop | not megatron",
            "step: x loss: 1",
            "{'eval_loss': 0.5, 'epoch': 1.0}",
            "Downloading: 100%|██████████| 570/570 [00:00<00:00, 1.2MB/s]",
            "[rank12345678901234567890123456789012345]: step: 5  loss: 1.0",
        ];
        for preset in [
            Preset::Auto,
            Preset::Megatron,
            Preset::DeepSpeed,
            Preset::HfTrainer,
            Preset::Torchtitan,
        ] {
            let mut p = parser(preset);
            for l in noise {
                assert!(p.line(l).is_empty(), "{preset} took {l:?}");
            }
        }
    }

    #[test]
    fn presets_parse_by_name() {
        for p in [
            Preset::Auto,
            Preset::Megatron,
            Preset::DeepSpeed,
            Preset::HfTrainer,
            Preset::Torchtitan,
        ] {
            assert_eq!(p.as_str().parse::<Preset>(), Ok(p));
        }
        assert!(
            "nemo"
                .parse::<Preset>()
                .is_err_and(|e| e.contains("megatron"))
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(strip_prefixes("[rank3]:[default0]:  x"), "x");
        assert_eq!(
            strip_prefixes("[2025-01-01 00:00:00] x"),
            "[2025-01-01 00:00:00] x"
        );
        assert_eq!(leading_u64(" 10,050  tflops"), Some((10_050, "  tflops")));
        assert_eq!(leading_u64("1,"), Some((1, ",")));
        assert_eq!(leading_u64("99999999999999999999999"), None);
        assert_eq!(step_of_dir("iter_0000100"), Some(100));
        assert_eq!(step_of_dir("global_step"), None);
        assert_eq!(strip_ansi("\u{1b}[1;31mred\u{1b}[0m"), "red");
    }
}
