//! `vigil demo` end to end, as a user runs it.

use std::process::Command;
use vigil_tests::{bin, scratch};

fn demo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("vigil"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run vigil demo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_default_scenario_attributes_every_fault() {
    let (code, stdout, stderr) = demo(&["-o", "json", "--speed", "2"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("the report is JSON");
    let incidents = r["incidents"].as_array().expect("incidents");
    let find = |node: &str, card: Option<u64>| {
        incidents
            .iter()
            .find(|i| i["cause"]["node"] == node && i["cause"]["card"].as_u64() == card)
            .unwrap_or_else(|| panic!("no incident for {node}/{card:?}: {incidents:#?}"))
    };
    let xid = find("n2", Some(5));
    assert_eq!(xid["kind"], "card_fault");
    assert_eq!(xid["cause"]["signal"], "xid:79");
    assert_eq!(xid["cause"]["rank"], 21);
    assert_eq!(xid["job"], "pretrain");
    assert_eq!(find("n4", Some(1))["kind"], "card_fault");
    assert_eq!(find("n5", Some(3))["kind"], "card_fault");
    let lost = find("n6", None);
    assert_eq!(lost["kind"], "node_lost");
    assert!(lost["cause"]["rank"].is_null());
    // Nothing else was blamed.
    assert_eq!(incidents.len(), 4, "{incidents:#?}");
    assert_eq!(r["score"]["localized"], 4);
    assert_eq!(r["score"]["precision"], 1.0);
    assert_eq!(r["score"]["recall"], 1.0);
    assert_eq!(r["score"]["false_quarantines"], 0);
    assert_eq!(r["score"]["false_incidents"], 0);
    // Every incident has a timestamped detect and localize phase.
    for i in incidents {
        let names: Vec<&str> = i["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names[..2], ["detect", "localize"]);
        assert!(i["detected_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    let job = &r["jobs"][0];
    assert_eq!(job["id"], "pretrain");
    assert_eq!(job["world_size"], 256);
    assert!(job["final_step"].as_u64().is_some_and(|s| s >= 10), "{job}");
    let l = &r["ledger"][0];
    assert_eq!(l["job"], "pretrain");
    assert!(l["allocated_card_hours"].as_f64().is_some_and(|a| a > 0.0));
}

#[test]
fn a_bad_scenario_is_refused_with_its_line() {
    let dir = scratch("badscn");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\nduration_s = 60\n[cluster]\nnodes = 2\n\n[[fault]]\nat_s = 10\nkind = \"meteor\"\nnode = \"n0\"\n",
    )
    .expect("write");
    let (code, _, stderr) = demo(&["--scenario", path.to_str().expect("utf8")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("line 8"), "{stderr}");
    assert!(stderr.contains("meteor"), "{stderr}");
    let (code, _, stderr) = demo(&["--scenario", "/nonexistent/x.toml"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot read scenario"), "{stderr}");
}

#[test]
fn a_node_crash_alone_is_one_node_lost_incident() {
    let dir = scratch("crash");
    let path = dir.join("crash.toml");
    std::fs::write(
        &path,
        "name = \"crash\"\nduration_s = 30\n[cluster]\nnodes = 3\ncards_per_node = 2\n[job]\nid = \"j\"\nworld_size = 6\nstep_ms = 1000\n[[fault]]\nat_s = 10\nkind = \"node_crash\"\nnode = \"n1\"\n",
    )
    .expect("write");
    let (code, stdout, stderr) = demo(&[
        "--scenario",
        path.to_str().expect("utf8"),
        "--speed",
        "10",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let inc = r["incidents"].as_array().expect("incidents");
    assert_eq!(inc.len(), 1, "{inc:#?}");
    assert_eq!(inc[0]["kind"], "node_lost");
    assert_eq!(inc[0]["cause"]["node"], "n1");
    assert_eq!(inc[0]["job"], "j");
    // Detected within three heartbeat intervals (scenario seconds).
    let latency = r["score"]["verdicts"][0]["latency_s"]
        .as_f64()
        .expect("latency");
    assert!(latency <= 3.0 + 0.25 * 5.0, "latency {latency}");
}
