//! Recognizing complete checkpoints in a checkpoint directory.
//!
//! Training frameworks mark a finished save in their own ways (see
//! `docs/recovery.md`): Megatron-LM writes `latest_checkpointed_iteration.txt`
//! after every rank has saved, DeepSpeed writes `latest` after the commit,
//! PyTorch DCP renames `.metadata` into place last, and HF Trainer writes
//! `trainer_state.json` late in the save. A directory without its marker is
//! incomplete or still being written, and is never offered for a restore.
//!
//! The functions here read a directory through [`FsView`], which the agent
//! implements over the real file system and the tests over a map, so the
//! decisions stay free of IO.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The checkpoint layouts Vigil recognizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Megatron-LM: `iter_NNNNNNN/` and `latest_checkpointed_iteration.txt`.
    Megatron,
    /// DeepSpeed: `global_stepN/` and `latest`.
    Deepspeed,
    /// PyTorch DCP: a directory with `.metadata` (torchtitan's `step-N/`
    /// included; its HF format with `model.safetensors.index.json` too).
    Dcp,
    /// HF Trainer: `checkpoint-N/` with `trainer_state.json`.
    HfTrainer,
}

impl Layout {
    pub const ALL: [Layout; 4] = [
        Layout::Megatron,
        Layout::Deepspeed,
        Layout::Dcp,
        Layout::HfTrainer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Megatron => "megatron",
            Layout::Deepspeed => "deepspeed",
            Layout::Dcp => "dcp",
            Layout::HfTrainer => "hf_trainer",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                format!("unknown checkpoint layout {s:?} (expected megatron, deepspeed, dcp or hf_trainer)")
            })
    }
}

/// Read access to a directory tree. Paths are joined with `/`.
pub trait FsView {
    /// The entries of a directory as (name, is_dir); empty if unreadable.
    fn list(&self, dir: &str) -> Vec<(String, bool)>;
    /// A small file's text (markers, manifests); None if absent or unreadable.
    fn read_small(&self, path: &str) -> Option<String>;
}

/// A complete checkpoint found in a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub layout: Layout,
    pub step: u64,
    pub path: String,
}

/// The name of a checksum manifest in a checkpoint directory, in the
/// `sha256sum` format (`HEX  relative/path` per line).
pub const MANIFEST: &str = "SHA256SUMS";

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

/// Digits after a prefix, as a step: `iter_0000100` -> 100.
fn step_after(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The complete checkpoints under `root` in the given layout (or in every
/// layout whose marker is present, for `None`), oldest first.
pub fn find_complete(fs: &dyn FsView, root: &str, layout: Option<Layout>) -> Vec<Found> {
    let entries = fs.list(root);
    let layouts: Vec<Layout> = match layout {
        Some(l) => vec![l],
        None => Layout::ALL.to_vec(),
    };
    let mut out = Vec::new();
    for l in layouts {
        match l {
            Layout::Megatron => megatron(fs, root, &entries, &mut out),
            Layout::Deepspeed => deepspeed(fs, root, &entries, &mut out),
            Layout::Dcp => dcp(fs, root, &entries, &mut out),
            Layout::HfTrainer => hf(fs, root, &entries, &mut out),
        }
    }
    out.sort_by_key(|f| (f.step, f.layout));
    out.dedup_by(|a, b| a.path == b.path);
    out
}

/// Megatron: the tracker names the newest complete iteration; older
/// `iter_*` directories were complete when the tracker moved past them, and
/// newer ones are still being written.
fn megatron(fs: &dyn FsView, root: &str, entries: &[(String, bool)], out: &mut Vec<Found>) {
    let Some(tracker) = fs.read_small(&join(root, "latest_checkpointed_iteration.txt")) else {
        return;
    };
    let tracker = tracker.trim();
    if tracker == "release" {
        if entries.iter().any(|(n, d)| *d && n == "release") {
            out.push(Found {
                layout: Layout::Megatron,
                step: 0,
                path: join(root, "release"),
            });
        }
        return;
    }
    let Ok(latest) = tracker.parse::<u64>() else {
        return;
    };
    for (name, is_dir) in entries {
        if let (true, Some(step)) = (*is_dir, step_after(name, "iter_"))
            && step <= latest
        {
            out.push(Found {
                layout: Layout::Megatron,
                step,
                path: join(root, name),
            });
        }
    }
}

/// DeepSpeed data-parallel ranks with an optimizer shard in a tag directory.
fn zero_shards(fs: &dyn FsView, dir: &str) -> Vec<u32> {
    let mut ranks: Vec<u32> = fs
        .list(dir)
        .into_iter()
        .filter_map(|(n, _)| {
            let n = n.strip_prefix("bf16_").unwrap_or(&n);
            let rest = n.strip_prefix("zero_pp_rank_")?;
            let (dp, tail) = rest.split_once('_')?;
            tail.ends_with("optim_states.pt")
                .then(|| dp.parse().ok())
                .flatten()
        })
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    ranks
}

/// Shards 0..n all present (or no ZeRO shards at all, for ZeRO stage 0).
fn shards_whole(ranks: &[u32], expected: Option<usize>) -> bool {
    let contiguous = ranks.iter().enumerate().all(|(i, r)| *r as usize == i);
    contiguous && expected.is_none_or(|n| ranks.len() == n)
}

/// DeepSpeed: `latest` names the newest committed tag. Its optimizer shards
/// give the data-parallel size; an older tag counts only with the same
/// number of shards, so a tag an older engine left half-written is skipped.
fn deepspeed(fs: &dyn FsView, root: &str, entries: &[(String, bool)], out: &mut Vec<Found>) {
    let Some(tag) = fs.read_small(&join(root, "latest")) else {
        return;
    };
    let tag = tag.trim();
    let Some(latest) = step_after(tag, "global_step") else {
        return;
    };
    if !entries.iter().any(|(n, d)| *d && n == tag) {
        return;
    }
    let expected = zero_shards(fs, &join(root, tag));
    if !shards_whole(&expected, None) {
        return;
    }
    for (name, is_dir) in entries {
        if let (true, Some(step)) = (*is_dir, step_after(name, "global_step"))
            && step <= latest
            && (step == latest
                || shards_whole(&zero_shards(fs, &join(root, name)), Some(expected.len())))
        {
            out.push(Found {
                layout: Layout::Deepspeed,
                step,
                path: join(root, name),
            });
        }
    }
}

/// The step a DCP directory's name carries: `step-100`, `step_100`,
/// `iter_0000100`, `checkpoint-100`, `global_step100` or just `100`.
fn dcp_step(name: &str) -> Option<u64> {
    ["step-", "step_", "iter_", "checkpoint-", "global_step", ""]
        .iter()
        .find_map(|p| step_after(name, p))
}

/// DCP (and torchtitan): a directory is complete once `.metadata` is in
/// place; torchtitan's HF format marks it with `model.safetensors.index.json`.
fn dcp(fs: &dyn FsView, root: &str, entries: &[(String, bool)], out: &mut Vec<Found>) {
    for (name, is_dir) in entries {
        let Some(step) = dcp_step(name).filter(|_| *is_dir) else {
            continue;
        };
        let dir = join(root, name);
        let inner = fs.list(&dir);
        let marked = inner
            .iter()
            .any(|(n, d)| !*d && (n == ".metadata" || n == "model.safetensors.index.json"));
        if marked {
            out.push(Found {
                layout: Layout::Dcp,
                step,
                path: dir,
            });
        }
    }
}

#[derive(Deserialize)]
struct TrainerState {
    global_step: u64,
}

/// HF Trainer: `checkpoint-N/trainer_state.json` with `global_step == N`.
fn hf(fs: &dyn FsView, root: &str, entries: &[(String, bool)], out: &mut Vec<Found>) {
    for (name, is_dir) in entries {
        let Some(step) = step_after(name, "checkpoint-").filter(|_| *is_dir) else {
            continue;
        };
        let dir = join(root, name);
        let ok = fs
            .read_small(&join(&dir, "trainer_state.json"))
            .and_then(|s| serde_json::from_str::<TrainerState>(&s).ok())
            .is_some_and(|t| t.global_step == step);
        if ok {
            out.push(Found {
                layout: Layout::HfTrainer,
                step,
                path: dir,
            });
        }
    }
}

/// One line of a checksum manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub sha256: String,
    pub file: String,
}

/// Parses a `sha256sum`-format manifest. Paths must stay inside the
/// checkpoint directory.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("{MANIFEST} line {}: expected \"HEX  FILE\"", i + 1);
        let (hex, file) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        let file = file.trim_start().trim_start_matches('*');
        if !is_sha256(hex) || file.is_empty() {
            return Err(bad());
        }
        if file.starts_with('/') || file.split('/').any(|p| p == "..") {
            return Err(format!(
                "{MANIFEST} line {}: {file:?} is outside the checkpoint directory",
                i + 1
            ));
        }
        out.push(ManifestEntry {
            sha256: hex.to_ascii_lowercase(),
            file: file.to_owned(),
        });
    }
    Ok(out)
}

/// 64 hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Files as path -> contents; directories are implied by the paths.
    #[derive(Default)]
    struct Mem(BTreeMap<String, String>);

    impl Mem {
        fn with(files: &[(&str, &str)]) -> Self {
            Mem(files
                .iter()
                .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
                .collect())
        }
    }

    impl FsView for Mem {
        fn list(&self, dir: &str) -> Vec<(String, bool)> {
            let prefix = format!("{dir}/");
            let mut out: Vec<(String, bool)> = Vec::new();
            for p in self.0.keys() {
                if let Some(rest) = p.strip_prefix(&prefix) {
                    let (name, is_dir) = match rest.split_once('/') {
                        Some((d, _)) => (d.to_owned(), true),
                        None => (rest.to_owned(), false),
                    };
                    if !out.iter().any(|(n, _)| *n == name) {
                        out.push((name, is_dir));
                    }
                }
            }
            out
        }
        fn read_small(&self, path: &str) -> Option<String> {
            self.0.get(path).cloned()
        }
    }

    fn steps(found: &[Found]) -> Vec<u64> {
        found.iter().map(|f| f.step).collect()
    }

    #[test]
    fn megatron_tracker_bounds_the_complete_iterations() {
        let fs = Mem::with(&[
            ("c/latest_checkpointed_iteration.txt", "200\n"),
            ("c/iter_0000100/mp_rank_00/model_optim_rng.pt", ""),
            ("c/iter_0000200/mp_rank_00/model_optim_rng.pt", ""),
            ("c/iter_0000300/mp_rank_00/model_optim_rng.pt", ""),
        ]);
        let f = find_complete(&fs, "c", Some(Layout::Megatron));
        assert_eq!(steps(&f), [100, 200]);
        assert_eq!(f[1].path, "c/iter_0000200");
        assert!(f.iter().all(|x| x.layout == Layout::Megatron));
        // No tracker: nothing is known complete.
        let fs = Mem::with(&[("c/iter_0000100/x.pt", "")]);
        assert!(find_complete(&fs, "c", None).is_empty());
        // A garbled tracker is not trusted.
        let fs = Mem::with(&[
            ("c/latest_checkpointed_iteration.txt", "2x0"),
            ("c/iter_0000100/x.pt", ""),
        ]);
        assert!(find_complete(&fs, "c", Some(Layout::Megatron)).is_empty());
        let fs = Mem::with(&[
            ("c/latest_checkpointed_iteration.txt", "release"),
            ("c/release/mp_rank_00/model_optim_rng.pt", ""),
        ]);
        assert_eq!(
            find_complete(&fs, "c", Some(Layout::Megatron))[0].path,
            "c/release"
        );
    }

    #[test]
    fn deepspeed_latest_and_shard_counts() {
        let shard =
            |t: &str, dp: u32| format!("c/{t}/bf16_zero_pp_rank_{dp}_mp_rank_00_optim_states.pt");
        let mut files = vec![("c/latest".to_owned(), "global_step30".to_owned())];
        for dp in 0..4 {
            files.push((shard("global_step10", dp), String::new()));
            files.push((shard("global_step30", dp), String::new()));
            files.push((shard("global_step40", dp), String::new()));
        }
        // step 20 lost a shard: incomplete.
        for dp in [0, 1, 3] {
            files.push((shard("global_step20", dp), String::new()));
        }
        let fs = Mem(files.into_iter().collect());
        let f = find_complete(&fs, "c", Some(Layout::Deepspeed));
        assert_eq!(
            steps(&f),
            [10, 30],
            "20 misses a shard, 40 is newer than latest"
        );
        // `latest` naming a missing tag: nothing.
        let fs = Mem::with(&[("c/latest", "global_step50"), ("c/global_step10/a.pt", "")]);
        assert!(find_complete(&fs, "c", None).is_empty());
    }

    #[test]
    fn dcp_needs_its_metadata_file() {
        let fs = Mem::with(&[
            ("c/step-10/.metadata", ""),
            ("c/step-10/__0_0.distcp", ""),
            ("c/step-20/__0_0.distcp", ""),
            ("c/step-30/model.safetensors.index.json", "{}"),
            ("c/notes/.metadata", ""),
        ]);
        let f = find_complete(&fs, "c", None);
        assert_eq!(steps(&f), [10, 30]);
        assert!(f.iter().all(|x| x.layout == Layout::Dcp));
    }

    #[test]
    fn hf_trainer_state_must_match_the_step() {
        let fs = Mem::with(&[
            (
                "o/checkpoint-500/trainer_state.json",
                r#"{"global_step": 500, "log_history": []}"#,
            ),
            ("o/checkpoint-1000/optimizer.pt", ""),
            (
                "o/checkpoint-1500/trainer_state.json",
                r#"{"global_step": 1000}"#,
            ),
            ("o/checkpoint-2000/trainer_state.json", "{truncated"),
        ]);
        let f = find_complete(&fs, "o", None);
        assert_eq!(steps(&f), [500]);
        assert_eq!(f[0].layout, Layout::HfTrainer);
    }

    #[test]
    fn layouts_parse_by_name() {
        for l in Layout::ALL {
            assert_eq!(l.name().parse::<Layout>(), Ok(l));
        }
        assert!("nemo".parse::<Layout>().is_err());
    }

    #[test]
    fn manifests_parse_and_stay_inside() {
        let h = "a".repeat(64);
        let m = parse_manifest(&format!("{h}  model.pt\n{h} *optim/x.pt\n\n")).expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].file, "optim/x.pt");
        assert!(parse_manifest(&format!("{h}  ../etc/passwd")).is_err());
        assert!(parse_manifest(&format!("{h}  /abs")).is_err());
        assert!(parse_manifest("abc  x").is_err());
        assert!(parse_manifest(&h).is_err());
    }
}
