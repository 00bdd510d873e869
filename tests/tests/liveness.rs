//! A real controller and real agents over gRPC on loopback: registration,
//! heartbeats, and node loss.

use std::time::Duration;
use vigil_tests::{Controller, agent, free_port, now_ms, scratch, wait_until};

#[test]
fn agents_register_and_heartbeat() {
    let dir = scratch("register");
    let c = Controller::start(&dir, 200);
    let _a = agent(&c, "n0", "sim:4", free_port(), &[]);
    wait_until(Duration::from_secs(20), "n0 heartbeats", || {
        c.node("n0")
            .is_some_and(|n| n["heartbeats"].as_u64().unwrap_or(0) >= 3)
    });
    let n = c.node("n0").expect("n0 known");
    assert_eq!(n["liveness"]["state"], "alive");
    assert_eq!(n["connected"], true);
    let cards = n["cards"].as_array().expect("cards");
    assert_eq!(cards.len(), 4);
    for (i, card) in cards.iter().enumerate() {
        assert_eq!(card["index"], i);
        assert_eq!(card["vendor"], "sim");
        assert_eq!(card["health"]["state"], "healthy");
        assert!(card["uuid"].as_str().is_some_and(|u| u.starts_with("GPU-")));
        assert!(card["pci_bus_id"].as_str().is_some_and(|p| p.contains(':')));
        // Every heartbeat carries a sample of every card.
        assert!(
            card["sample"]["temperature_c"]
                .as_f64()
                .is_some_and(|t| t > 0.0)
        );
    }
    let status = c.get("/api/v1/status").expect("status");
    assert_eq!(status["streams"], 1);
}

/// Heartbeat period of the node-loss test.
const HB: i64 = 500;
/// The documented grace on top of the thresholds (docs/liveness.md).
const GRACE: i64 = 250;

#[test]
fn a_killed_agent_is_lost_within_three_intervals_and_never_before() {
    let dir = scratch("lost");
    let c = Controller::start(&dir, HB as u32);
    let mut a = agent(&c, "n1", "sim:2", free_port(), &[]);
    wait_until(Duration::from_secs(20), "n1 heartbeats", || {
        c.node("n1")
            .is_some_and(|n| n["heartbeats"].as_u64().unwrap_or(0) >= 2)
    });
    // While the agent lives it stays alive: watch it for six intervals.
    let watch_until = now_ms() + 6 * HB;
    while now_ms() < watch_until {
        let n = c.node("n1").expect("n1 known");
        assert_eq!(
            n["liveness"]["state"], "alive",
            "a live agent must never be suspected: {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed_at = now_ms();
    a.kill();
    wait_until(Duration::from_secs(20), "n1 lost", || {
        c.node("n1")
            .is_some_and(|n| n["liveness"]["state"] == "lost")
    });
    let n = c.node("n1").expect("n1 known");
    let lost_at = n["liveness"]["at_ms"].as_i64().expect("at_ms");
    let last_seen = n["liveness"]["last_seen_ms"]
        .as_i64()
        .expect("last_seen_ms");
    // Declared only after 1.8 intervals of silence (the adaptive
    // detector's floor), never before ...
    assert!(
        lost_at - last_seen >= HB * 9 / 5,
        "lost after only {} ms of silence",
        lost_at - last_seen
    );
    // ... and within 3 intervals of the kill plus the grace.
    assert!(
        lost_at - killed_at <= 3 * HB + GRACE,
        "lost {} ms after the kill (limit {})",
        lost_at - killed_at,
        3 * HB + GRACE
    );
    let incidents = c.get("/api/v1/incidents").expect("incidents");
    let inc = &incidents.as_array().expect("array")[0];
    assert_eq!(inc["kind"], "node_lost");
    assert_eq!(inc["cause"]["node"], "n1");
    assert!(inc["cause"]["card"].is_null());
}

#[test]
fn an_agent_started_before_its_controller_connects_when_it_comes_up() {
    let dir = scratch("late");
    // Reserve ports, start the agent first.
    let mut c = Controller::start(&dir, 200);
    c.proc.kill();
    let _a = agent(&c, "n2", "sim:1", free_port(), &[]);
    std::thread::sleep(Duration::from_millis(700));
    c.restart();
    wait_until(Duration::from_secs(20), "n2 connects after backoff", || {
        c.node("n2")
            .is_some_and(|n| n["connected"] == true && n["heartbeats"].as_u64().unwrap_or(0) >= 1)
    });
}
