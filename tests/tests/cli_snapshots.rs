//! Golden files of the `vigil` client's output (`tests/snapshots/*.txt`)
//! against a real controller and agent, with times and durations
//! normalized; and the client's terminal manners: colors, completions,
//! errors when the controller is unreachable.
//!
//! `VIGIL_UPDATE_SNAPSHOTS=1 cargo test -p vigil-tests --test cli_snapshots`
//! rewrites the golden files from the current output.

use regex::Regex;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use vigil_tests::{Controller, agent, bin, blocking_post, free_port, scratch, wait_until};

/// Runs `vigil` with a fixed width and no terminal: plain, fitted tables.
fn vigil(controller: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin("vigil"))
        .args(["--controller", controller])
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("COLUMNS", "120")
        .envs(env.iter().copied())
        .output()
        .expect("run vigil");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces what changes from run to run: RFC 3339 times, ages and
/// durations, then collapses the padding (whose width follows them).
fn normalize(text: &str) -> String {
    let time = Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z").expect("regex");
    let dur = Regex::new(r"\b\d+(\.\d+)?s\b").expect("regex");
    let pad = Regex::new(r" {2,}").expect("regex");
    text.lines()
        .map(|l| {
            let l = time.replace_all(l, "<TIME>");
            let l = dur.replace_all(&l, "<DUR>");
            pad.replace_all(&l, "  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A line diff of `want` and `got` (longest common subsequence), with
/// `-` for lines only in the golden file and `+` for lines only in the
/// output.
fn diff(want: &str, got: &str) -> String {
    let a: Vec<&str> = want.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

/// Compares `got` with `tests/snapshots/<name>.txt`, or rewrites it when
/// `VIGIL_UPDATE_SNAPSHOTS=1`. Returns a failure message, if any.
fn check(name: &str, got: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(format!("{name}.txt"));
    if std::env::var("VIGIL_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("snapshots dir");
        std::fs::write(&path, got).expect("write snapshot");
        println!("updated {}", path.display());
        return None;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    (want != got).then(|| {
        format!(
            "{} differs from the output (- golden, + output); rerun with VIGIL_UPDATE_SNAPSHOTS=1 if the change is intended:\n{}",
            path.display(),
            diff(&want, got)
        )
    })
}

#[test]
fn nodes_jobs_history_and_show_match_the_golden_files() {
    let dir = scratch("snapshots");
    let c = Controller::start(&dir, 200);
    let port = free_port();
    let _a = agent(&c, "snap0", "sim:2", port, &["--job", "train"]);
    wait_until(Duration::from_secs(30), "snap0 heartbeats", || {
        c.node("snap0")
            .is_some_and(|n| n["heartbeats"].as_u64().unwrap_or(0) >= 1)
    });
    // A two-rank job that checkpoints at step 2 and finishes at step 3.
    let mut records = String::new();
    for rank in 0..2 {
        records.push_str(&format!(
            "{{\"type\":\"start\",\"job\":\"train\",\"rank\":{rank},\"world_size\":2,\"local_rank\":{rank},\"card\":{rank}}}\n"
        ));
    }
    for step in 1..=3 {
        for rank in 0..2 {
            for phase in ["begin", "collective", "end"] {
                records.push_str(&format!(
                    "{{\"type\":\"step\",\"job\":\"train\",\"rank\":{rank},\"step\":{step},\"phase\":\"{phase}\"}}\n"
                ));
            }
            if step == 2 {
                records.push_str(&format!(
                    "{{\"type\":\"checkpoint\",\"job\":\"train\",\"rank\":{rank},\"step\":2,\"path\":\"/ckpt/train/step-2\"}}\n"
                ));
            }
        }
    }
    for rank in 0..2 {
        records.push_str(&format!(
            "{{\"type\":\"end\",\"job\":\"train\",\"rank\":{rank},\"status\":\"ok\"}}\n"
        ));
    }
    let status = blocking_post(&format!("http://127.0.0.1:{port}/v1/progress"), &records);
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(30), "the job finished", || {
        c.get("/api/v1/jobs")
            .is_some_and(|v| v[0]["state"] == "finished")
    });
    // An XID 48 (double-bit ECC error) on card 1.
    let status = blocking_post(
        &format!("http://127.0.0.1:{port}/v1/sim/fault"),
        r#"{"kind":"xid","card":1,"code":48}"#,
    );
    assert_eq!(status, 202);
    wait_until(
        Duration::from_secs(30),
        "the incident and its quarantine",
        || {
            c.get("/api/v1/incidents/inc-1")
                .is_some_and(|i| i["evidence"].as_array().is_some_and(|e| e.len() >= 3))
        },
    );

    let url = c.http_url();
    let mut failures = Vec::new();
    for (name, args) in [
        ("nodes", vec!["nodes"]),
        ("jobs", vec!["jobs"]),
        ("history", vec!["history"]),
        ("history_show", vec!["history", "show", "inc-1"]),
    ] {
        let (code, out, err) = vigil(&url, &args, &[]);
        assert_eq!(code, 0, "vigil {args:?}: {err}");
        assert!(!out.contains('\x1b'), "colors off a terminal: {out:?}");
        for l in out.lines() {
            assert!(l.chars().count() <= 120, "wider than COLUMNS=120: {l:?}");
        }
        if let Some(f) = check(name, &normalize(&out)) {
            failures.push(f);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Narrow terminals get narrower tables.
    let (_, out, _) = vigil(&url, &["history"], &[("COLUMNS", "60")]);
    for l in out.lines() {
        assert!(l.chars().count() <= 60, "wider than COLUMNS=60: {l:?}");
    }

    // Colors: forced on with CLICOLOR_FORCE, and NO_COLOR always wins.
    let (_, out, _) = vigil(&url, &["nodes"], &[("CLICOLOR_FORCE", "1")]);
    assert!(out.contains("\x1b[32malive\x1b[0m"), "{out:?}");
    let (_, out, _) = vigil(
        &url,
        &["nodes"],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    );
    assert!(!out.contains('\x1b'), "{out:?}");

    // -o json everywhere: the same documents as the API.
    for args in [
        vec!["nodes"],
        vec!["jobs"],
        vec!["history"],
        vec!["history", "show", "1"],
    ] {
        let mut a = vec!["-o", "json"];
        a.extend(&args);
        let (code, out, err) = vigil(&url, &a, &[]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("vigil {a:?}: {e}: {out}"));
        assert!(v.is_array() || v["id"] == "inc-1", "{v}");
    }
}

#[test]
fn the_golden_file_normalizer_and_diff() {
    assert_eq!(
        normalize("inc-1  open  2026-11-28T01:37:09.33Z  12.5s   x\n"),
        "inc-1  open  <TIME>  <DUR>  x\n"
    );
    let d = diff("a\nb\nc\n", "a\nx\nc\n");
    assert_eq!(d, "  a\n- b\n+ x\n  c\n");
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef vigil"),
        ("fish", "complete -c vigil"),
    ] {
        let out = Command::new(bin("vigil"))
            .args(["completions", shell])
            .output()
            .expect("run vigil");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        // Subcommands and their flags are in the script.
        assert!(
            text.contains("history") && text.contains("http-listen"),
            "{shell}"
        );
    }
    let out = Command::new(bin("vigil"))
        .args(["completions", "tcsh"])
        .output()
        .expect("run vigil");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn an_unreachable_controller_gets_a_helpful_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = vigil(&url, &["nodes"], &[]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("cannot reach the controller at {url}"))
            && err.to_lowercase().contains("connection refused")
            && err.contains("--controller"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn watch_resumes_after_a_controller_restart_without_gaps() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let dir = scratch("watch-resume");
    let mut c = Controller::start(&dir, 200);
    let port = free_port();
    let _a = agent(&c, "w0", "sim:2", port, &[]);
    wait_until(Duration::from_secs(30), "w0 heartbeats", || {
        c.node("w0")
            .is_some_and(|n| n["heartbeats"].as_u64().unwrap_or(0) >= 1)
    });
    let mut child = Command::new(bin("vigil"))
        .args(["--controller", &c.http_url(), "-o", "json", "watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vigil watch");
    let stdout = child.stdout.take().expect("stdout");
    let seqs = Arc::new(Mutex::new(Vec::<u64>::new()));
    let reader = std::thread::spawn({
        let seqs = seqs.clone();
        move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(s) = v["seq"].as_u64() {
                    seqs.lock().expect("lock").push(s);
                }
            }
        }
    });
    let cordon = |c: &Controller, target: &str| {
        assert_eq!(
            blocking_post(
                &format!("{}/api/v1/cordon", c.http_url()),
                &format!(r#"{{"target":"{target}"}}"#)
            ),
            200
        );
    };
    let max_seq = |c: &Controller| -> u64 {
        vigil_tests::blocking_get(&format!("{}/metrics", c.http_url()))
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("vigil_feed_sequence "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map_or(0, |v| v as u64)
    };
    cordon(&c, "w0/0");
    let before = max_seq(&c);
    wait_until(Duration::from_secs(30), "watch caught up", || {
        seqs.lock().expect("lock").last().copied() >= Some(before)
    });
    // The controller goes away and comes back; events happen meanwhile
    // (the agent reconnects) and after.
    c.restart();
    cordon(&c, "w0/1");
    let after = max_seq(&c);
    assert!(after > before);
    wait_until(Duration::from_secs(60), "watch resumed", || {
        seqs.lock().expect("lock").last().copied() >= Some(after)
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let seqs = seqs.lock().expect("lock").clone();
    let expected: Vec<u64> = (1..=*seqs.last().expect("events")).collect();
    assert_eq!(seqs, expected, "gaps or repeats across the reconnect");
}
