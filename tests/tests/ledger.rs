//! The ledger through a real controller and agent: progress records in,
//! card-hours out over the API and the CLI, unchanged by a SIGKILL and a
//! restart of the controller.

use std::process::Command;
use std::time::Duration;
use vigil_tests::{Controller, agent, bin, blocking_post, free_port, scratch, wait_until};

fn ledger(c: &Controller, query: &str) -> serde_json::Value {
    c.get(&format!("/api/v1/ledger{query}")).expect("ledger")
}

#[test]
fn the_ledger_is_durable_and_queryable() {
    let dir = scratch("ledger");
    let mut c = Controller::start(&dir, 200);
    let port = free_port();
    let _a = agent(&c, "l0", "sim:2", port, &[]);
    wait_until(Duration::from_secs(20), "agent heartbeats", || {
        c.node("l0")
            .is_some_and(|n| n["heartbeats"].as_u64().unwrap_or(0) >= 1)
    });
    let url = format!("http://127.0.0.1:{port}/v1/progress");
    let post = |body: String| assert_eq!(blocking_post(&url, &body), 202);
    post((0..2)
        .map(|r| format!("{{\"type\":\"start\",\"job\":\"lj\",\"rank\":{r},\"world_size\":2,\"card\":{r}}}\n"))
        .collect());
    for step in 1..=6 {
        std::thread::sleep(Duration::from_millis(100));
        let mut body = String::new();
        for r in 0..2 {
            body.push_str(&format!(
                "{{\"type\":\"step\",\"job\":\"lj\",\"rank\":{r},\"step\":{step}}}\n"
            ));
            if step == 3 {
                body.push_str(&format!(
                    "{{\"type\":\"checkpoint\",\"job\":\"lj\",\"rank\":{r},\"step\":3,\"path\":\"/ckpt/3\"}}\n"
                ));
            }
        }
        post(body);
    }
    post(
        (0..2)
            .map(|r| {
                format!("{{\"type\":\"end\",\"job\":\"lj\",\"rank\":{r},\"status\":\"ok\"}}\n")
            })
            .collect(),
    );
    wait_until(Duration::from_secs(20), "job ended", || {
        c.get("/api/v1/jobs")
            .is_some_and(|j| j[0]["state"] == "finished")
    });
    let before = ledger(&c, "");
    let e = &before[0];
    assert_eq!(e["job"], "lj");
    let alloc = e["allocated_card_ms"].as_i64().expect("allocated");
    let eff = e["effective_card_ms"].as_i64().expect("effective");
    let lost: i64 = e["lost_card_ms"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_i64()).sum());
    assert_eq!(alloc, eff + lost, "identity: {e}");
    // Two cards for about 0.6 s of steps, start to end.
    assert!((2 * 500..2 * 10_000).contains(&alloc), "{e}");
    assert!(eff > 0, "{e}");
    // The job ended: the ledger no longer grows.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ledger(&c, ""), before);
    // SIGKILL and restart: the same ledger from the store.
    std::thread::sleep(Duration::from_millis(500));
    c.restart();
    assert_eq!(
        ledger(&c, ""),
        before,
        "ledger changed across a SIGKILL and restart"
    );
    // Time ranges and grouping.
    assert_eq!(
        ledger(&c, "?until=2000-01-01T00:00:00Z"),
        serde_json::json!([])
    );
    let causes = ledger(&c, "?by=cause");
    assert!(
        causes
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["cause"] == "effective")),
        "{causes}"
    );
    let bad = vigil_tests::blocking_get(&format!("{}/api/v1/ledger?by=rack", c.http_url()));
    assert!(bad.is_none(), "a bad --by is refused");
    // The CLI.
    let run = |args: &[&str]| {
        let out = Command::new(bin("vigil"))
            .args(["--controller", &c.http_url()])
            .args(args)
            .output()
            .expect("vigil");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["ledger"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("JOB") && out.contains("ETTR") && out.contains("lj"),
        "{out}"
    );
    let (code, out, _) = run(&["-o", "json", "ledger", "--job", "lj"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v, before);
    let (code, out, _) = run(&["ledger", "--advise"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("lj: checkpoint every"), "{out}");
    let (code, _, err) = run(&["ledger", "--since", "yesterday"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--since"), "{err}");
}
