//! Checkpoint checks on the node: checksum verification of what ranks
//! report, and the optional checkpoint directory watcher.
//!
//! The watcher polls a directory, finds the checkpoints its layout marks
//! complete (`vigil_ingest::checkpoint`), verifies a `SHA256SUMS` manifest when
//! the checkpoint carries one, and reports each new one once. A checkpoint
//! whose files do not match is reported as invalid, so the controller never
//! restores from it.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use vigil_core::JobId;
use vigil_core::model::{CheckpointReport, EventBody};
use vigil_ingest::checkpoint::{self, FsView, Layout, MANIFEST};

/// The largest marker or manifest file read whole.
const SMALL_FILE: u64 = 1 << 20;

/// [`FsView`] over the real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl FsView for RealFs {
    fn list(&self, dir: &str) -> Vec<(String, bool)> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let is_dir = e.file_type().ok()?.is_dir();
                Some((name, is_dir))
            })
            .collect()
    }

    fn read_small(&self, path: &str) -> Option<String> {
        let f = std::fs::File::open(path).ok()?;
        if f.metadata().ok()?.len() > SMALL_FILE {
            return None;
        }
        let mut s = String::new();
        f.take(SMALL_FILE).read_to_string(&mut s).ok()?;
        Some(s)
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

/// Checks a file against the checksum a rank reported. `Ok(true)` verified,
/// `Ok(false)` not checkable here (no checksum, not a 64-hex one, or the
/// path is not a regular file on this node), `Err` a mismatch or a read
/// error.
pub fn verify_reported(path: &str, sha256: Option<&str>) -> Result<bool, String> {
    let Some(want) = sha256.filter(|s| checkpoint::is_sha256(s)) else {
        return Ok(false);
    };
    let p = Path::new(path);
    if !p.is_file() {
        return Ok(false);
    }
    let got = sha256_file(p).map_err(|e| format!("cannot read {path}: {e}"))?;
    if got.eq_ignore_ascii_case(want) {
        Ok(true)
    } else {
        Err(format!(
            "sha256 mismatch for {path}: reported {want}, file has {got}"
        ))
    }
}

/// Verifies a checkpoint directory's `SHA256SUMS`, if it has one. `Ok(n)`
/// is the number of files verified (0 without a manifest).
pub fn verify_manifest(dir: &Path) -> Result<usize, String> {
    let manifest = dir.join(MANIFEST);
    if !manifest.exists() {
        return Ok(0);
    }
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let entries = checkpoint::parse_manifest(&text)?;
    for e in &entries {
        let file = dir.join(&e.file);
        let got = sha256_file(&file).map_err(|err| format!("{}: {err}", file.display()))?;
        if got != e.sha256 {
            return Err(format!(
                "sha256 mismatch for {}: manifest {}, file {got}",
                file.display(),
                e.sha256
            ));
        }
    }
    Ok(entries.len())
}

/// A rank's checkpoint report, with the agent's checksum verdict.
pub async fn check_report(mut c: CheckpointReport) -> CheckpointReport {
    let (path, sha) = (c.path.clone(), c.sha256.clone());
    let verdict = tokio::task::spawn_blocking(move || verify_reported(&path, sha.as_deref())).await;
    match verdict {
        Ok(Ok(true)) => tracing::debug!(path = %c.path, "checkpoint checksum verified"),
        Ok(Ok(false)) => {}
        Ok(Err(why)) => {
            tracing::warn!(path = %c.path, %why, "checkpoint is invalid");
            c.invalid = Some(why);
        }
        Err(e) => tracing::warn!(%e, "checksum task failed"),
    }
    c
}

/// What the watcher watches.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub dir: PathBuf,
    /// None: every layout whose markers are present.
    pub layout: Option<Layout>,
    pub job: JobId,
    pub poll: Duration,
}

/// One scan: the complete checkpoints not reported yet, each checked against
/// its manifest.
pub fn scan(cfg: &WatchConfig, seen: &mut BTreeSet<String>) -> Vec<CheckpointReport> {
    let root = cfg.dir.to_string_lossy();
    let mut out = Vec::new();
    for f in checkpoint::find_complete(&RealFs, &root, cfg.layout) {
        if !seen.insert(f.path.clone()) {
            continue;
        }
        let invalid = verify_manifest(Path::new(&f.path)).err();
        out.push(CheckpointReport {
            job: cfg.job.clone(),
            rank: 0,
            step: f.step,
            path: f.path,
            bytes: None,
            sha256: None,
            complete_all: true,
            invalid,
            source: Some(format!("watcher:{}", f.layout)),
        });
    }
    out
}

/// Polls the directory until the event channel closes.
pub async fn watch(cfg: WatchConfig, events: mpsc::Sender<EventBody>) {
    tracing::info!(dir = %cfg.dir.display(), layout = ?cfg.layout, "watching checkpoints");
    if !cfg.dir.is_dir() {
        tracing::warn!(dir = %cfg.dir.display(), "checkpoint directory does not exist yet; watching for it");
    }
    let mut seen = BTreeSet::new();
    loop {
        let c = cfg.clone();
        let s = std::mem::take(&mut seen);
        let Ok((found, s)) = tokio::task::spawn_blocking(move || {
            let mut s = s;
            (scan(&c, &mut s), s)
        })
        .await
        else {
            tracing::warn!("checkpoint scan failed");
            tokio::time::sleep(cfg.poll).await;
            continue;
        };
        seen = s;
        for r in found {
            match &r.invalid {
                Some(why) => tracing::warn!(path = %r.path, %why, "checkpoint is invalid"),
                None => tracing::info!(path = %r.path, step = r.step, "complete checkpoint found"),
            }
            if events.send(EventBody::Checkpoint(r)).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(cfg.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn sha256_of_a_known_file() {
        let d = tmpdir("sha");
        let f = d.join("x");
        std::fs::write(&f, b"abc").expect("write");
        assert_eq!(
            sha256_file(&f).expect("read"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let p = f.to_string_lossy();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(verify_reported(&p, Some(good)), Ok(true));
        assert!(verify_reported(&p, Some(&"0".repeat(64))).is_err());
        assert_eq!(verify_reported(&p, Some("..."),), Ok(false));
        assert_eq!(verify_reported(&p, None), Ok(false));
        assert_eq!(verify_reported("/nonexistent/x", Some(good)), Ok(false));
    }

    #[test]
    fn the_watcher_reports_complete_checkpoints_once_and_checks_manifests() {
        let d = tmpdir("watch");
        let cfg = WatchConfig {
            dir: d.clone(),
            layout: None,
            job: JobId::new("pretrain").expect("valid"),
            poll: Duration::from_millis(10),
        };
        let it = |n: u64| d.join(format!("iter_{n:07}"));
        for n in [100, 200, 300] {
            std::fs::create_dir_all(it(n)).expect("mkdir");
            std::fs::write(it(n).join("model.pt"), format!("weights {n}")).expect("write");
        }
        std::fs::write(d.join("latest_checkpointed_iteration.txt"), "100").expect("write");
        let mut seen = BTreeSet::new();
        let r = scan(&cfg, &mut seen);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].step, r[0].complete_all), (100, true));
        assert_eq!(r[0].source.as_deref(), Some("watcher:megatron"));
        assert!(scan(&cfg, &mut seen).is_empty(), "reported once");
        // 200 carries a manifest that matches; 300 one that does not.
        let sum = sha256_file(&it(200).join("model.pt")).expect("sum");
        std::fs::write(it(200).join(MANIFEST), format!("{sum}  model.pt\n")).expect("write");
        std::fs::write(it(300).join(MANIFEST), format!("{sum}  model.pt\n")).expect("write");
        std::fs::write(d.join("latest_checkpointed_iteration.txt"), "300").expect("write");
        let r = scan(&cfg, &mut seen);
        assert_eq!(r.iter().map(|c| c.step).collect::<Vec<_>>(), [200, 300]);
        assert_eq!(r[0].invalid, None);
        assert!(
            r[1].invalid
                .as_deref()
                .is_some_and(|w| w.contains("mismatch")),
            "{:?}",
            r[1].invalid
        );
        // A manifest naming a missing file.
        std::fs::write(it(200).join(MANIFEST), format!("{sum}  gone.pt\n")).expect("write");
        assert!(verify_manifest(&it(200)).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
