//! The PyTorch DDP example (`examples/torch-ddp/train.py`) under torchrun:
//! two CPU ranks on gloo for a few steps, reporting to a stand-in progress
//! endpoint, writing atomic checkpoints with a SHA256SUMS manifest; then a
//! second run resuming from the checkpoint the first one wrote, which must
//! end with the same weights as an uninterrupted run.
//!
//! Needs `python3` with PyTorch; otherwise it prints
//! `SKIPPED: PyTorch is not installed` and passes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use vigil_tests::scratch;

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A minimal HTTP endpoint that answers 202 and keeps every JSON line posted.
fn progress_endpoint() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let records = Arc::new(Mutex::new(Vec::new()));
    let keep = records.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_ok() {
                let text = String::from_utf8_lossy(&body);
                let mut recs = keep.lock().expect("lock");
                recs.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
            }
            let _ = stream.write_all(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, records)
}

fn run_train(
    dir: &Path,
    steps: u32,
    ckpt: &Path,
    result: &Path,
    resume: &str,
    url: &str,
) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/torch-ddp/train.py");
    let out = Command::new("python3")
        .args([
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
        ])
        .arg(&script)
        .args([
            "--steps",
            &steps.to_string(),
            "--checkpoint-every",
            "3",
            "--step-s",
            "0",
        ])
        .arg("--checkpoint-dir")
        .arg(ckpt)
        .arg("--result")
        .arg(result)
        .current_dir(dir)
        .env("VIGIL_PROGRESS_URL", url)
        .env("VIGIL_JOB", "ddp-example")
        .env("VIGIL_RESUME_FROM", resume)
        .env("OMP_NUM_THREADS", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run torchrun");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "train.py failed:\n{text}");
    text
}

fn result(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("result file");
    serde_json::from_str(&text).expect("result json")
}

#[test]
fn ddp_example_checkpoints_and_resumes() {
    if !torch_available() {
        println!("SKIPPED: PyTorch is not installed");
        return;
    }
    let dir = scratch("torch-ddp");
    let (url, records) = progress_endpoint();
    let ckpt = dir.join("ckpt");

    // First run: 6 steps, checkpoints at 3 and 6.
    run_train(&dir, 6, &ckpt, &dir.join("r1.json"), "", &url);
    assert_eq!(result(&dir.join("r1.json"))["step"], 6);
    for step in [3, 6] {
        let d = ckpt.join(format!("step-{step}"));
        let manifest = std::fs::read_to_string(d.join("SHA256SUMS")).expect("manifest");
        assert!(manifest.trim_end().ends_with("  state.pt"), "{manifest}");
        assert!(d.join("state.pt").is_file());
    }
    let leftovers: Vec<_> = std::fs::read_dir(&ckpt)
        .expect("ckpt dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary directories left: {leftovers:?}"
    );

    // The helper reported every phase from both ranks, the collective one
    // from the DDP communication hook, and both checkpoints from both ranks.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let recs = records.lock().expect("lock").clone();
    for rank in 0..2 {
        let of = |kind: &str, phase: Option<&str>| {
            recs.iter()
                .filter(|r| r["rank"] == rank && r["type"] == kind)
                .filter(|r| phase.is_none_or(|p| r["phase"] == p))
                .count()
        };
        assert_eq!(of("start", None), 1, "rank {rank}: {recs:?}");
        assert_eq!(of("step", Some("begin")), 6, "rank {rank}");
        assert_eq!(of("step", Some("collective")), 6, "rank {rank}");
        assert_eq!(of("step", Some("end")), 6, "rank {rank}");
        assert_eq!(of("checkpoint", None), 2, "rank {rank}");
        assert_eq!(of("end", None), 1, "rank {rank}");
    }
    assert!(recs.iter().all(|r| r["job"] == "ddp-example"));

    // Second run: resumes from step 6 and goes on to 10.
    let resume = ckpt.join("step-6");
    let log = run_train(
        &dir,
        10,
        &ckpt,
        &dir.join("r2.json"),
        &resume.to_string_lossy(),
        &url,
    );
    assert!(log.contains("at step 6"), "{log}");
    let resumed = result(&dir.join("r2.json"));
    assert_eq!(resumed["step"], 10);

    // An uninterrupted 10-step run ends with the same weights.
    let fresh = run_train(
        &dir,
        10,
        &dir.join("ckpt-fresh"),
        &dir.join("r3.json"),
        "",
        &url,
    );
    assert!(!fresh.contains("resumed from"));
    assert_eq!(result(&dir.join("r3.json"))["weights"], resumed["weights"]);

    // A corrupted checkpoint is refused on resume.
    std::fs::write(ckpt.join("step-3/state.pt"), b"garbage").expect("corrupt");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/torch-ddp/train.py");
    let out = Command::new("python3")
        .args([
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "1",
        ])
        .arg(&script)
        .args(["--steps", "4", "--step-s", "0", "--checkpoint-dir"])
        .arg(dir.join("ckpt-bad"))
        .current_dir(&dir)
        .env("VIGIL_RESUME_FROM", ckpt.join("step-3"))
        .env_remove("VIGIL_PROGRESS_URL")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run torchrun");
    assert!(!out.status.success(), "a corrupted checkpoint was loaded");
    let _ = std::fs::remove_dir_all(&dir);
}
