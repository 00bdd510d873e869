//! Real processes end to end: two agent processes supervise real worker
//! processes (tests/workers/train.py, a synchronous job with a file-system
//! barrier as its collective) that report over the real progress endpoint,
//! write real checkpoints and resume from VIGIL_RESUME_FROM. A killed worker
//! and a frozen (SIGSTOP) worker each lead to a coordinated restart from the
//! latest complete checkpoint, and the final result equals an uninterrupted
//! run's.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use vigil_tests::{Controller, Proc, bin, free_port, scratch, wait_until};

const STEPS: u64 = 80;

fn python() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn pid(out: &std::path::Path, rank: u32) -> i32 {
    std::fs::read_to_string(out.join(format!("pid-rank{rank}")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("worker pid file")
}

#[allow(unsafe_code)]
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with integer arguments.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A resolved incident of `kind` not among `seen`.
fn incident_resolved(c: &Controller, kind: &str, seen: &[String]) -> bool {
    c.get("/api/v1/incidents").is_some_and(|v| {
        v.as_array().into_iter().flatten().any(|i| {
            i["kind"] == kind
                && i["state"] == "resolved"
                && !seen.iter().any(|s| i["id"].as_str() == Some(s.as_str()))
        })
    })
}

fn incident_ids(c: &Controller) -> Vec<String> {
    c.get("/api/v1/incidents")
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Two agent processes, each supervising one rank of the job `sup`.
fn start_agents(c: &Controller, dir: &std::path::Path, out: &std::path::Path) -> Vec<Proc> {
    let worker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workers/train.py");
    let mut agents = Vec::new();
    for rank in 0..2u32 {
        let log = std::fs::File::create(dir.join(format!("agent-{rank}.log"))).expect("log");
        let child = Command::new(bin("vigil-agent"))
            .args([
                "--controller",
                &c.grpc_url(),
                "--node-id",
                &format!("w{rank}"),
                "--cards",
                "sim:1",
            ])
            .args([
                "--progress-listen",
                &format!("127.0.0.1:{}", free_port()),
                "--job",
                "sup",
                "--",
            ])
            .arg("python3")
            .arg(&worker)
            .env("RANK", rank.to_string())
            .env("WORLD", "2")
            .env("OUT_DIR", out)
            .env("STEPS", STEPS.to_string())
            .env("STEP_S", "0.1")
            .env("VIGIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent");
        agents.push(Proc {
            child,
            name: format!("agent-{rank}"),
        });
    }
    agents
}

fn step(c: &Controller) -> u64 {
    c.get("/api/v1/jobs")
        .and_then(|j| j[0]["step"].as_u64())
        .unwrap_or(0)
}

fn results_ok(out: &std::path::Path) -> Vec<serde_json::Value> {
    let expected: u64 = (1..=STEPS).map(|s| s * s).sum();
    wait_until(Duration::from_secs(90), "both ranks to finish", || {
        (0..2).all(|r| out.join(format!("result-rank{r}.json")).exists())
    });
    (0..2)
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join(format!("result-rank{r}.json"))).expect("result"),
            )
            .expect("json");
            assert_eq!(v["acc"], expected, "rank {r}");
            v
        })
        .collect()
}

#[test]
fn a_controller_killed_right_after_the_restart_order_restores_exactly_once() {
    crash_during_recovery("after_start_orders");
}

#[test]
fn a_controller_killed_right_after_the_stop_order_restores_exactly_once() {
    crash_during_recovery("after_stop_orders");
}

/// Kills the controller (abort at a failpoint) in the middle of a recovery,
/// restarts it, and checks the job was restored exactly once.
fn crash_during_recovery(failpoint: &str) {
    if !python() {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let dir = scratch(failpoint);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let config = dir.join("controller.toml");
    std::fs::write(&config, "[workload]\nhang_floor_ms = 2000\n").expect("config");
    let (grpc, http) = (free_port(), free_port());
    let store = format!("sqlite://{}", dir.join("vigil.db").display());
    let extra = vec![
        "--heartbeat-ms".to_owned(),
        "200".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    let mut c = Controller::start_env(
        &dir,
        grpc,
        http,
        store,
        extra,
        vec![(
            "VIGIL_FAILPOINT".to_owned(),
            "after_start_orders".to_owned(),
        )],
    );
    let _agents = start_agents(&c, &dir, &out);
    wait_until(Duration::from_secs(60), "the job to pass step 15", || {
        step(&c) >= 15
    });
    signal(pid(&out, 1), libc::SIGKILL);
    // The controller orders the restart, then dies at the failpoint.
    wait_until(
        Duration::from_secs(60),
        "the controller to hit the failpoint",
        || c.proc.child.try_wait().is_ok_and(|s| s.is_some()),
    );
    c.env.clear();
    c.restart();
    wait_until(
        Duration::from_secs(60),
        "the recovery to finish after the restart",
        || incident_resolved(&c, "worker_exit", &[]),
    );
    let results = results_ok(&out);
    for r in &results {
        assert_eq!(r["restart"], "1", "exactly one restore: {r}");
    }
    for rank in 0..2 {
        let log = std::fs::read_to_string(dir.join(format!("agent-{rank}.log"))).expect("log");
        assert_eq!(
            log.matches("worker started").count(),
            2,
            "agent {rank}: first start and one restore"
        );
    }
    let incidents = c.get("/api/v1/incidents").expect("incidents");
    let i = incidents
        .as_array()
        .and_then(|a| a.iter().find(|i| i["kind"] == "worker_exit"))
        .expect("the incident survived the crash");
    let names: Vec<&str> = i["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["detect", "localize", "isolate", "restore", "resume"],
        "{i}"
    );
    c.proc.kill();
}

#[test]
fn killed_and_frozen_workers_restart_from_the_latest_checkpoint() {
    if !python() {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let dir = scratch("supervised");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let config = dir.join("controller.toml");
    std::fs::write(&config, "[workload]\nhang_floor_ms = 2000\n").expect("config");
    let mut c = Controller::start_with(&dir, 200, &["--config", config.to_str().expect("utf8")]);
    let _agents = start_agents(&c, &dir, &out);
    let step = |c: &Controller| {
        c.get("/api/v1/jobs")
            .and_then(|j| j[0]["step"].as_u64())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), "the job to pass step 15", || {
        step(&c) >= 15
    });

    // Kill rank 1's worker outright.
    signal(pid(&out, 1), libc::SIGKILL);
    wait_until(Duration::from_secs(60), "the worker_exit recovery", || {
        incident_resolved(&c, "worker_exit", &[])
    });
    let seen = incident_ids(&c);

    // Freeze rank 0's new worker: the job hangs in the collective.
    wait_until(
        Duration::from_secs(60),
        "progress after the restart",
        || step(&c) >= 35,
    );
    signal(pid(&out, 0), libc::SIGSTOP);
    wait_until(Duration::from_secs(90), "the hang recovery", || {
        incident_resolved(&c, "hang", &seen)
    });

    // Both ranks finish with the uninterrupted result, after two restarts.
    for v in results_ok(&out) {
        assert_eq!(v["restart"], "2", "two coordinated restarts: {v}");
    }
    let incidents = c.get("/api/v1/incidents").expect("incidents");
    for i in incidents.as_array().into_iter().flatten() {
        if i["kind"] == "hang" || i["kind"] == "worker_exit" {
            assert_eq!(i["action"], "restart_in_place", "{i}");
            let from = i["checkpoint"]["step"]
                .as_u64()
                .expect("restored from a checkpoint");
            assert_eq!(from % 10, 0, "{i}");
            assert!(from > 0, "{i}");
        }
    }
    c.proc.kill();
}
