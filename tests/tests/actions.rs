//! Action back-ends with real processes: a controller configured with a
//! Slurm `scontrol` and an exec hook (both small scripts that record how
//! they were called), an agent with simulated cards, and a job that no
//! agent supervises.

use std::path::Path;
use std::time::Duration;
use vigil_tests::{Controller, agent, blocking_post, free_port, scratch, wait_until};

/// Writes the fake `scontrol`, the hook and the controller config.
fn setup(dir: &Path) -> String {
    let scontrol = dir.join("scontrol");
    std::fs::write(
        &scontrol,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n",
            dir.join("scontrol.log").display()
        ),
    )
    .expect("write");
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n{{ echo \"$VIGIL_ACTION $VIGIL_INCIDENT $VIGIL_JOB $VIGIL_CHECKPOINT\"; cat; echo; }} >> {}\n",
            dir.join("hook.log").display()
        ),
    )
    .expect("write");
    let cfg = dir.join("controller.toml");
    std::fs::write(
        &cfg,
        format!(
            "[actions.slurm]\nscontrol = \"{}\"\n\n[actions.exec]\ncommand = [\"sh\", \"{}\"]\n",
            scontrol.display(),
            hook.display()
        ),
    )
    .expect("write");
    // `sh scontrol` is not how the controller runs it: make it executable.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    cfg.display().to_string()
}

/// Two ranks of job 4242 on the node, a complete checkpoint, then XID 79.
fn run_job_and_fault(c: &Controller, node: &str, port: u16) {
    wait_until(Duration::from_secs(20), "agent heartbeats", || {
        c.node(node)
            .is_some_and(|n| n["heartbeats"].as_u64().unwrap_or(0) >= 1)
    });
    let url = format!("http://127.0.0.1:{port}");
    let mut body = String::new();
    for r in 0..2 {
        body.push_str(&format!(
            "{{\"type\":\"start\",\"job\":\"4242\",\"rank\":{r},\"world_size\":2,\"card\":{r}}}\n\
             {{\"type\":\"checkpoint\",\"job\":\"4242\",\"rank\":{r},\"step\":50,\"path\":\"/ckpt/step-50\"}}\n"
        ));
    }
    assert_eq!(blocking_post(&format!("{url}/v1/progress"), &body), 202);
    wait_until(Duration::from_secs(20), "job seen", || {
        c.get("/api/v1/jobs")
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    });
    let fault = r#"{"kind":"xid","card":1,"code":79}"#;
    let code = blocking_post(&format!("{url}/v1/sim/fault"), fault);
    assert!((200..300).contains(&code), "fault injection: HTTP {code}");
    wait_until(Duration::from_secs(20), "incident", || {
        c.get("/api/v1/incidents")
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    });
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn slurm_and_the_exec_hook_are_called_for_a_fault() {
    let dir = scratch("actions");
    let cfg = setup(&dir);
    let c = Controller::start_with(&dir, 200, &["--config", &cfg]);
    let port = free_port();
    let _a = agent(&c, "act0", "sim:2", port, &[]);
    run_job_and_fault(&c, "act0", port);
    wait_until(Duration::from_secs(20), "scontrol calls", || {
        let log = read(&dir.join("scontrol.log"));
        log.contains("requeue 4242") && log.contains("update nodename=act0 state=drain")
    });
    let log = read(&dir.join("scontrol.log"));
    assert!(log.contains("reason=vigil inc-1: "), "{log}");
    wait_until(Duration::from_secs(20), "hook calls", || {
        let log = read(&dir.join("hook.log"));
        log.contains("quarantine inc-1 4242") && log.contains("restart inc-1 4242 /ckpt/step-50")
    });
    // The hook got the incident as JSON on stdin.
    let log = read(&dir.join("hook.log"));
    let doc = log
        .lines()
        .find(|l| l.starts_with('{') && l.contains("\"restart\""))
        .expect("json line");
    let v: serde_json::Value = serde_json::from_str(doc).expect("json");
    assert_eq!(v["incident"]["id"], "inc-1");
    assert_eq!(v["incident"]["cause"]["node"], "act0");
    assert_eq!(v["request"]["checkpoint"]["step"], 50);
}

#[test]
fn shadow_mode_calls_nothing_and_records_the_plan() {
    let dir = scratch("actions-shadow");
    let cfg = setup(&dir);
    let c = Controller::start_with(&dir, 200, &["--config", &cfg, "--shadow"]);
    let port = free_port();
    let _a = agent(&c, "sh0", "sim:2", port, &[]);
    run_job_and_fault(&c, "sh0", port);
    wait_until(Duration::from_secs(20), "shadow plan", || {
        c.get("/api/v1/incidents/inc-1").is_some_and(|i| {
            i["evidence"].as_array().is_some_and(|e| {
                e.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|s| s.starts_with("shadow mode, not done"))
                })
            })
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read(&dir.join("scontrol.log")),
        "",
        "shadow mode ran scontrol"
    );
    assert_eq!(read(&dir.join("hook.log")), "", "shadow mode ran the hook");
}
