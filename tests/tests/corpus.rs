//! The scenario corpus: every file in `scenarios/` played through
//! `vigil demo` (at speed 5: 200 ms heartbeats, gentle on a loaded CI
//! machine), its verdicts scored against the injected truth.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use vigil_tests::bin;

fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        // The 34-node default runs in tests/demo.rs at a gentler speed.
        .filter(|p| !p.ends_with("default.toml"))
        .collect();
    v.sort();
    v
}

fn play(path: &PathBuf) -> Result<serde_json::Value, String> {
    let out = Command::new(bin("vigil"))
        .args(["demo", "-o", "json", "--speed", "5", "--scenario"])
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[test]
fn every_scenario_is_localized_without_false_alarms() {
    let files = corpus();
    assert!(
        files.len() >= 18,
        "one scenario per fault kind plus mixed ones"
    );
    let queue = Mutex::new(files.clone());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some(path) = queue.lock().expect("queue").pop() else {
                        return;
                    };
                    let r = play(&path);
                    results.lock().expect("results").push((path, r));
                }
            });
        }
    });
    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for (path, r) in results.into_inner().expect("results") {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match r {
            Err(e) => failures.push(format!("{name}: demo failed: {e}")),
            Ok(report) => {
                let s = &report["score"];
                for v in s["verdicts"].as_array().into_iter().flatten() {
                    kinds.insert(v["fault"]["kind"].as_str().unwrap_or("").to_owned());
                }
                if s["precision"] != 1.0 || s["recall"] != 1.0 || s["false_quarantines"] != 0 {
                    let incidents: Vec<String> = report["incidents"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| {
                            format!(
                                "{} {} {}/{} {}",
                                i["id"],
                                i["kind"],
                                i["cause"]["node"],
                                i["cause"]["card"],
                                i["cause"]["signal"]
                            )
                        })
                        .collect();
                    failures.push(format!(
                        "{name}: precision {} recall {} false quarantines {}; verdicts {}; incidents {incidents:?}",
                        s["precision"], s["recall"], s["false_quarantines"], s["verdicts"]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for kind in [
        "xid",
        "ecc_dbe",
        "gpu_lost",
        "thermal",
        "nvlink",
        "pcie_degraded",
        "hang",
        "slow",
        "worker_exit",
        "probe_hang",
        "node_crash",
        "partition",
        "flap",
        "job_slowdown",
        "checkpoint_corrupt",
    ] {
        assert!(kinds.contains(kind), "no scenario injects {kind}");
    }
}
