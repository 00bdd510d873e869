use super::*;
use crate::model::CheckpointReport;
use proptest::prelude::*;
use serde_json::Value;

fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("valid node id")
}

fn job(s: &str) -> JobId {
    JobId::new(s).expect("valid job id")
}

fn cards(n: u32) -> Vec<CardInfo> {
    (0..n)
        .map(|i| CardInfo {
            index: i,
            uuid: format!("GPU-{i}"),
            vendor: "sim".into(),
            model: "H100".into(),
            memory_total_bytes: 80 << 30,
            pci_bus_id: format!("0000:{:02x}:00.0", i + 0x10),
        })
        .collect()
}

fn reg(c: &mut Cluster, name: &str, now: Millis) {
    c.apply(
        Input::Register(Registration {
            node: node(name),
            boot_id: "b1".into(),
            cards: cards(8),
            spare: false,
            job: None,
            supervises: false,
        }),
        now,
    )
    .expect("register");
}

fn hb(c: &mut Cluster, name: &str, now: Millis) -> Result<Vec<Effect>, Rejected> {
    c.apply(
        Input::Heartbeat {
            node: node(name),
            heartbeat: Heartbeat {
                seq: 1,
                sent_at_ms: now,
                cards: vec![CardSample {
                    index: 0,
                    ..Default::default()
                }],
                ..Default::default()
            },
        },
        now,
    )
}

fn ev(c: &mut Cluster, name: &str, body: EventBody, now: Millis) -> Vec<Effect> {
    c.apply(
        Input::Event {
            node: node(name),
            event: AgentEvent {
                seq: 1,
                at_ms: now,
                body,
            },
        },
        now,
    )
    .expect("event accepted")
}

fn xid(card: u32, code: u32) -> EventBody {
    EventBody::CardError {
        card,
        signal: Signal::Xid(code),
        detail: String::new(),
    }
}

fn start(c: &mut Cluster, name: &str, rank: u32, card: u32, world: u32, now: Millis) {
    ev(
        c,
        name,
        EventBody::Progress(ProgressRecord::Start {
            job: job("pretrain"),
            rank,
            world_size: world,
            local_rank: Some(card),
            card: Some(card),
            pid: None,
        }),
        now,
    );
}

/// The incidents the effects persist, each once in its latest form, in the
/// order they first appear.
fn incidents(fx: &[Effect]) -> Vec<&Incident> {
    let mut out: Vec<&Incident> = Vec::new();
    for e in fx {
        if let Effect::Incident(i, _) = e {
            match out.iter_mut().find(|o| o.id == i.id) {
                Some(o) => *o = &**i,
                None => out.push(&**i),
            }
        }
    }
    out
}

fn actions(fx: &[Effect]) -> Vec<&ActionRequest> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Action(a) => Some(&**a),
            _ => None,
        })
        .collect()
}

fn cluster() -> Cluster {
    Cluster::new(ClusterConfig::default())
}

#[test]
fn heartbeats_from_unknown_nodes_and_cards_are_rejected() {
    let mut c = cluster();
    assert_eq!(hb(&mut c, "n0", 0), Err(Rejected::UnknownNode(node("n0"))));
    reg(&mut c, "n0", 0);
    assert!(hb(&mut c, "n0", 100).is_ok());
    let bad = c.apply(
        Input::Heartbeat {
            node: node("n0"),
            heartbeat: Heartbeat {
                cards: vec![CardSample {
                    index: 8,
                    ..Default::default()
                }],
                ..Default::default()
            },
        },
        200,
    );
    assert_eq!(
        bad,
        Err(Rejected::UnknownCard {
            node: node("n0"),
            card: 8
        })
    );
    assert_eq!(c.node(&node("n0")).map(|n| n.heartbeats), Some(1));
}

#[test]
fn a_silent_node_is_lost_at_the_threshold_and_never_before() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    for i in 1..=10 {
        hb(&mut c, "n0", i * 1000).expect("hb");
    }
    let last = 10_000;
    let l = c.config().liveness;
    let mut t = last;
    let mut opened = Vec::new();
    while t <= last + l.lost_ms() {
        let fx = c.apply(Input::Tick, t).expect("tick");
        if !incidents(&fx).is_empty() {
            opened.push(t);
        }
        t += 50;
    }
    assert_eq!(opened.len(), 1, "exactly one incident");
    let silence = opened[0] - last;
    assert!(
        silence >= l.min_lost_ms(),
        "lost too early after {silence} ms"
    );
    assert!(silence <= l.lost_ms(), "lost too late after {silence} ms");
    let inc = c.incidents().next().expect("incident");
    assert_eq!(inc.kind, IncidentKind::NodeLost);
    assert_eq!(inc.cause.node, node("n0"));
    assert_eq!(inc.cause.card, None);
    // Further ticks change nothing.
    assert!(c.apply(Input::Tick, 9000).expect("tick").is_empty());
    // Coming back resolves it.
    let fx = hb(&mut c, "n0", 9500).expect("hb");
    let inc = incidents(&fx);
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].state, IncidentState::Resolved);
}

#[test]
fn a_closed_stream_makes_a_node_suspect_but_not_lost() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    c.apply(
        Input::Disconnected {
            node: node("n0"),
            boot_id: "b1".into(),
        },
        10,
    )
    .expect("disconnect");
    let n = c.node(&node("n0")).expect("known");
    assert!(matches!(n.liveness, Liveness::Suspect { .. }));
    assert!(!n.connected);
    // A stale stream's close does not touch the current one.
    reg(&mut c, "n0", 20);
    c.apply(
        Input::Disconnected {
            node: node("n0"),
            boot_id: "old".into(),
        },
        30,
    )
    .expect("disconnect");
    assert!(c.node(&node("n0")).is_some_and(|n| n.connected));
}

#[test]
fn xid_79_fails_the_card_and_names_the_rank() {
    let mut c = cluster();
    reg(&mut c, "n2", 0);
    for card in 0..8 {
        start(&mut c, "n2", 16 + card, card, 64, 10);
    }
    let fx = ev(&mut c, "n2", xid(5, 79), 1000);
    let inc = incidents(&fx);
    assert!(inc.iter().all(|i| i.id == inc[0].id), "one incident");
    let i = *inc.last().expect("incident");
    assert_eq!(i.kind, IncidentKind::CardFault);
    assert_eq!(i.cause.card, Some(5));
    assert_eq!(i.cause.rank, Some(21));
    assert_eq!(i.cause.what.to_string(), "xid:79");
    assert_eq!(i.job, Some(job("pretrain")));
    assert_eq!(i.action.as_deref(), Some("drain_node"));
    let names: Vec<_> = i.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["detect", "localize", "isolate"]);
    // XID 79 takes the whole node out: every card quarantined.
    let n = c.node(&node("n2")).expect("node");
    assert!(n.cards.iter().all(|c| c.health.name() == "quarantined"));
    assert!(n.cordoned.is_some());
    // A burst of the same signal folds into the same incident.
    let fx = ev(&mut c, "n2", xid(5, 79), 1100);
    assert_eq!(incidents(&fx)[0].id, i.id);
    assert_eq!(c.incidents().count(), 1);
}

#[test]
fn application_xids_do_not_blame_the_card() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    let fx = ev(&mut c, "n0", xid(1, 13), 10);
    assert_eq!(incidents(&fx)[0].action.as_deref(), Some("restart_app"));
    assert_eq!(
        c.node(&node("n0")).expect("node").cards[1].health,
        CardHealth::Healthy
    );
    // Informational ones open nothing.
    let fx = ev(&mut c, "n0", xid(2, 63), 20);
    assert!(incidents(&fx).is_empty());
}

#[test]
fn non_fatal_signals_make_a_card_suspect() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    let fx = ev(
        &mut c,
        "n0",
        EventBody::CardError {
            card: 3,
            signal: Signal::Thermal,
            detail: "sw thermal slowdown".into(),
        },
        10,
    );
    assert!(incidents(&fx).is_empty());
    assert_eq!(
        c.node(&node("n0")).expect("node").cards[3].health.name(),
        "suspect"
    );
}

#[test]
fn symptoms_of_a_lost_node_fold_into_its_incident() {
    let mut c = cluster();
    reg(&mut c, "n6", 0);
    c.apply(Input::Tick, 5000).expect("tick");
    assert_eq!(c.incidents().count(), 1);
    let fx = ev(
        &mut c,
        "n6",
        EventBody::CardError {
            card: 0,
            signal: Signal::GpuLost,
            detail: String::new(),
        },
        5100,
    );
    let inc = incidents(&fx);
    assert_eq!(inc[0].kind, IncidentKind::NodeLost);
    assert_eq!(inc[0].folded, 1);
    assert_eq!(c.incidents().count(), 1);
}

#[test]
fn checkpoints_complete_when_every_rank_reports() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    for r in 0..2 {
        start(&mut c, "n0", r, r, 2, 1);
    }
    let ck = |rank| {
        EventBody::Checkpoint(CheckpointReport {
            job: job("pretrain"),
            rank,
            step: 10,
            path: "/ckpt/10".into(),
            bytes: None,
            sha256: None,
            complete_all: false,
            invalid: None,
            source: None,
        })
    };
    ev(&mut c, "n0", ck(0), 2);
    let j = c.jobs().next().expect("job");
    assert!(j.latest_complete_checkpoint().is_none());
    let fx = ev(&mut c, "n0", ck(1), 3);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Feed(FeedEvent::CheckpointComplete { .. })))
    );
    let j = c.jobs().next().expect("job");
    assert_eq!(j.latest_complete_checkpoint().map(|c| c.step), Some(10));
}

fn watched(step: u64, invalid: Option<&str>) -> EventBody {
    EventBody::Checkpoint(CheckpointReport {
        job: job("pretrain"),
        rank: 0,
        step,
        path: format!("/ckpt/iter_{step:07}"),
        bytes: None,
        sha256: None,
        complete_all: true,
        invalid: invalid.map(str::to_owned),
        source: Some("watcher:megatron".into()),
    })
}

#[test]
fn a_watcher_report_completes_a_checkpoint_for_every_rank() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    // Found before any rank of the job reported: kept until the job appears.
    let fx = ev(&mut c, "n0", watched(100, None), 1);
    assert_eq!(feeds(&fx, "checkpoint_complete").len(), 1);
    for r in 0..4 {
        start(&mut c, "n0", r, r, 4, 2);
    }
    let j = c.jobs().next().expect("job");
    let ck = j.latest_complete_checkpoint().expect("complete");
    assert_eq!((ck.step, ck.source.as_str()), (100, "watcher:megatron"));
    ev(&mut c, "n0", watched(200, None), 3);
    let j = c.jobs().next().expect("job");
    assert_eq!(j.latest_complete_checkpoint().map(|c| c.step), Some(200));
}

#[test]
fn an_invalid_checkpoint_is_never_the_latest_complete_one() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    for r in 0..2 {
        start(&mut c, "n0", r, r, 2, 1);
    }
    ev(&mut c, "n0", watched(100, None), 2);
    let fx = ev(
        &mut c,
        "n0",
        watched(200, Some("sha256 mismatch: model.pt")),
        3,
    );
    assert!(feeds(&fx, "checkpoint_complete").is_empty());
    assert_eq!(feeds(&fx, "checkpoint_invalid").len(), 1);
    // A rank's own report with a bad checksum taints it too.
    let rank_report = |rank, invalid: Option<&str>| {
        EventBody::Checkpoint(CheckpointReport {
            job: job("pretrain"),
            rank,
            step: 300,
            path: "/ckpt/300.pt".into(),
            bytes: Some(10),
            sha256: Some("0".repeat(64)),
            complete_all: false,
            invalid: invalid.map(str::to_owned),
            source: Some("rank".into()),
        })
    };
    ev(&mut c, "n0", rank_report(0, Some("sha256 mismatch")), 4);
    ev(&mut c, "n0", rank_report(1, None), 5);
    let j = c.jobs().next().expect("job");
    assert!(j.checkpoints[&300].complete);
    assert_eq!(j.latest_complete_checkpoint().map(|c| c.step), Some(100));
}

#[test]
fn restore_reopens_incidents_and_continues_numbering() {
    let mut c = cluster();
    reg(&mut c, "n2", 0);
    ev(&mut c, "n2", xid(5, 79), 10);
    let saved: Vec<Incident> = c.incidents().cloned().collect();
    let regs = vec![Registration {
        node: node("n2"),
        boot_id: "b1".into(),
        cards: cards(8),
        spare: false,
        job: None,
        supervises: false,
    }];
    let mut d = cluster();
    d.restore(regs, saved, 100);
    assert_eq!(
        d.node(&node("n2")).expect("node").cards[5].health.name(),
        "failed"
    );
    // The same cause folds into the restored incident.
    let fx = ev(&mut d, "n2", xid(5, 79), 200);
    assert_eq!(incidents(&fx)[0].id, IncidentId(1));
    // A new cause gets the next number.
    let fx = ev(&mut d, "n2", xid(1, 48), 300);
    assert_eq!(incidents(&fx)[0].id, IncidentId(2));
}

fn arb_input() -> impl Strategy<Value = (u8, Input)> {
    let n = prop_oneof![Just("n0"), Just("n1"), Just("n2")];
    (
        n,
        0u8..6,
        0u32..9,
        prop::sample::select(vec![13u32, 48, 63, 79]),
    )
        .prop_map(|(n, k, card, code)| {
            let input = match k {
                0 => Input::Register(Registration {
                    node: node(n),
                    boot_id: "b".into(),
                    cards: cards(8),
                    spare: false,
                    job: None,
                    supervises: false,
                }),
                1 => Input::Heartbeat {
                    node: node(n),
                    heartbeat: Heartbeat::default(),
                },
                2 => Input::Event {
                    node: node(n),
                    event: AgentEvent {
                        seq: 1,
                        at_ms: 0,
                        body: xid(card, code),
                    },
                },
                3 => Input::Disconnected {
                    node: node(n),
                    boot_id: "b".into(),
                },
                4 => Input::Event {
                    node: node(n),
                    event: AgentEvent {
                        seq: 1,
                        at_ms: 0,
                        body: EventBody::CardError {
                            card,
                            signal: Signal::EccDbe,
                            detail: String::new(),
                        },
                    },
                },
                _ => Input::Tick,
            };
            (k, input)
        })
}

proptest! {
    /// Whatever arrives, there is at most one open incident per root cause,
    /// a failed card always points at an open incident, and nothing panics.
    #[test]
    fn one_open_incident_per_cause(inputs in prop::collection::vec((arb_input(), 0i64..2000), 1..200)) {
        let mut c = cluster();
        let mut now = 0;
        for ((_, input), dt) in inputs {
            now += dt;
            let _ = c.apply(input, now);
            let mut keys = BTreeSet::new();
            for inc in c.incidents().filter(|i| i.state == IncidentState::Open) {
                prop_assert!(keys.insert((inc.cause.node.clone(), inc.cause.card)));
            }
            for n in c.nodes() {
                for card in &n.cards {
                    if let CardHealth::Failed { incident, .. } = &card.health {
                        prop_assert!(c.incident(*incident).is_some());
                    }
                }
            }
        }
    }
}

#[test]
fn progress_of_a_job_never_started_here_is_still_tracked() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    ev(
        &mut c,
        "n0",
        EventBody::Progress(ProgressRecord::Step {
            job: job("late"),
            rank: 3,
            step: 40,
            phase: Phase::End,
            samples: None,
            tokens: None,
        }),
        5,
    );
    let j = c.jobs().next().expect("job");
    assert_eq!(j.world_size, 4);
    assert_eq!(j.step, 40);
}

#[test]
fn restored_nodes_get_time_to_reconnect_after_a_controller_restart() {
    let regs = vec![Registration {
        node: node("n0"),
        boot_id: "b1".into(),
        cards: cards(1),
        spare: false,
        job: None,
        supervises: false,
    }];
    let mut c = cluster();
    c.restore(regs, Vec::new(), 0);
    let grace = c.config().restart_grace_ms;
    assert!(c.apply(Input::Tick, grace - 1).expect("tick").is_empty());
    assert_eq!(
        c.node(&node("n0")).expect("node").liveness.name(),
        "suspect"
    );
    // Past the grace, silence counts as usual.
    let fx = c.apply(Input::Tick, grace + 1).expect("tick");
    assert_eq!(incidents(&fx)[0].kind, IncidentKind::NodeLost);
}

fn quarantines(fx: &[Effect]) -> Vec<(NodeId, Option<u32>)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Quarantine { node, card, .. } => Some((node.clone(), *card)),
            _ => None,
        })
        .collect()
}

fn feeds(fx: &[Effect], kind: &str) -> Vec<Value> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Feed(ev) if ev.kind() == kind => Some(ev.data()),
            _ => None,
        })
        .collect()
}

fn big_cluster(nodes: u32) -> Cluster {
    let mut c = cluster();
    for i in 0..nodes {
        reg(&mut c, &format!("n{i}"), 0);
    }
    c
}

#[test]
fn a_hardware_fault_quarantines_the_card_and_records_isolate() {
    let mut c = big_cluster(20);
    let fx = ev(&mut c, "n3", xid(2, 48), 10);
    assert_eq!(quarantines(&fx), [(node("n3"), Some(2))]);
    let inc = c.incidents().next().expect("incident");
    assert!(inc.phases.iter().any(|p| p.name == "isolate"));
    assert_eq!(
        c.node(&node("n3")).expect("node").cards[2].health.name(),
        "quarantined"
    );
    // XID 79 calls for the node: every card of it.
    let fx = ev(&mut c, "n4", xid(0, 79), 20);
    assert_eq!(quarantines(&fx), [(node("n4"), None)]);
    assert!(c.node(&node("n4")).expect("node").cordoned.is_some());
}

#[test]
fn the_circuit_breaker_stops_mass_quarantine_and_alerts_once() {
    // 20 nodes x 8 cards = 160 cards; 10% = 16, i.e. two nodes.
    let mut c = big_cluster(20);
    let mut alerts = 0;
    let mut isolated = 0;
    for i in 0..6 {
        let fx = ev(&mut c, &format!("n{i}"), xid(0, 79), 100 + i as i64);
        alerts += feeds(&fx, "alert").len();
        isolated += quarantines(&fx).len();
    }
    assert_eq!(isolated, 2, "only 10% of the cluster");
    assert_eq!(alerts, 1, "one alert, not a stream");
    assert!(c.breaker_open());
    // The faults are still recorded and localized.
    assert_eq!(c.incidents().count(), 6);
    let withheld = c
        .incidents()
        .filter(|i| i.evidence.iter().any(|e| e.contains("circuit breaker")))
        .count();
    assert_eq!(withheld, 4);
    // After the window, quarantine resumes.
    let later = 200 + c.config().breaker.window_ms;
    let fx = ev(&mut c, "n10", xid(0, 48), later);
    assert_eq!(quarantines(&fx).len(), 1);
    assert!(!c.breaker_open());
}

#[test]
fn operators_cordon_and_uncordon() {
    let mut c = big_cluster(2);
    let fx = c
        .apply(
            Input::Cordon {
                node: node("n1"),
                card: Some(3),
                reason: "bad fan".into(),
            },
            5,
        )
        .expect("cordon");
    assert_eq!(quarantines(&fx), [(node("n1"), Some(3))]);
    assert!(
        c.apply(
            Input::Cordon {
                node: node("n1"),
                card: Some(9),
                reason: String::new()
            },
            6
        )
        .is_err()
    );
    assert!(
        c.apply(
            Input::Uncordon {
                node: node("nx"),
                card: None
            },
            6
        )
        .is_err()
    );
    ev(&mut c, "n0", xid(1, 48), 10);
    let fx = c
        .apply(
            Input::Uncordon {
                node: node("n0"),
                card: Some(1),
            },
            20,
        )
        .expect("uncordon");
    assert_eq!(incidents(&fx)[0].state, IncidentState::Resolved);
    assert_eq!(
        c.node(&node("n0")).expect("node").cards[1].health,
        CardHealth::Healthy
    );
}

fn thermal_hb(c: &mut Cluster, name: &str, now: Millis, hot: bool) -> Vec<Effect> {
    c.apply(
        Input::Heartbeat {
            node: node(name),
            heartbeat: Heartbeat {
                seq: 1,
                cards: vec![CardSample {
                    index: 4,
                    temperature_c: if hot { 95.0 } else { 60.0 },
                    throttle_reasons: if hot {
                        crate::model::THROTTLE_HW_THERMAL
                    } else {
                        0
                    },
                    ..Default::default()
                }],
                ..Default::default()
            },
        },
        now,
    )
    .expect("hb")
}

#[test]
fn only_sustained_throttling_opens_an_incident() {
    let mut c = big_cluster(1);
    let n = c.config().health.thermal_heartbeats as i64;
    // Short bursts, however many, never add up.
    for i in 0..50 {
        let fx = thermal_hb(&mut c, "n0", i * 1000, i % 4 != 0);
        assert!(incidents(&fx).is_empty());
    }
    let mut opened = 0;
    for i in 0..n {
        opened += incidents(&thermal_hb(&mut c, "n0", 100_000 + i * 1000, true)).len();
    }
    assert_eq!(opened, 1);
    let inc = c.incidents().next().expect("incident");
    assert_eq!(inc.cause.what.to_string(), "thermal");
    assert_eq!(inc.cause.card, Some(4));
    // Throttling is not fatal: suspect, not quarantined.
    assert_eq!(
        c.node(&node("n0")).expect("node").cards[4].health.name(),
        "suspect"
    );
}

#[test]
fn a_suspect_card_is_healthy_again_after_a_quiet_period() {
    let mut c = big_cluster(1);
    ev(
        &mut c,
        "n0",
        EventBody::CardError {
            card: 4,
            signal: Signal::Thermal,
            detail: String::new(),
        },
        0,
    );
    thermal_hb(&mut c, "n0", 10, false);
    let quiet = c.config().health.quiet_ms;
    c.apply(Input::Tick, quiet - 1).expect("tick");
    assert_eq!(
        c.node(&node("n0")).expect("node").cards[4].health.name(),
        "suspect"
    );
    // Keep the node alive so the tick only judges the card.
    hb(&mut c, "n0", quiet).expect("hb");
    c.apply(Input::Tick, quiet + 1).expect("tick");
    assert_eq!(
        c.node(&node("n0")).expect("node").cards[4].health.name(),
        "healthy"
    );
}

#[test]
fn a_hung_probe_is_recorded_but_never_blames_the_card() {
    let mut c = big_cluster(1);
    for card in 0..8 {
        ev(
            &mut c,
            "n0",
            EventBody::ProbeHung {
                card,
                probe: "nvml".into(),
                waited_ms: 3000,
            },
            10,
        );
    }
    assert_eq!(c.incidents().count(), 1);
    let inc = c.incidents().next().expect("incident");
    assert_eq!(inc.kind, IncidentKind::ProbeHung);
    assert_eq!(inc.folded, 7);
    assert!(
        c.node(&node("n0"))
            .expect("node")
            .cards
            .iter()
            .all(|c| c.health == CardHealth::Healthy)
    );
}

fn lose_and_return(c: &mut Cluster, name: &str, start: Millis) -> Millis {
    hb(c, name, start).expect("hb");
    let mut t = start;
    while !matches!(
        c.node(&node(name)).expect("node").liveness,
        Liveness::Lost { .. }
    ) {
        t += 100;
        c.apply(Input::Tick, t).expect("tick");
    }
    hb(c, name, t + 100).expect("back");
    t + 100
}

#[test]
fn a_flapping_node_is_one_incident_and_is_cordoned() {
    let mut c = big_cluster(1);
    let mut t = 0;
    for _ in 0..4 {
        t = lose_and_return(&mut c, "n0", t + 500);
    }
    let incs: Vec<&Incident> = c.incidents().collect();
    assert_eq!(incs.len(), 1, "{incs:#?}");
    assert_eq!(incs[0].kind, IncidentKind::Network);
    assert_eq!(incs[0].cause.what.to_string(), "flapping");
    assert_eq!(incs[0].state, IncidentState::Open);
    assert!(c.node(&node("n0")).expect("node").cordoned.is_some());
}

#[test]
fn a_single_partition_heals_into_a_network_incident() {
    let mut c = big_cluster(1);
    lose_and_return(&mut c, "n0", 1000);
    let inc = c.incidents().next().expect("incident");
    assert_eq!(inc.kind, IncidentKind::Network);
    assert_eq!(inc.state, IncidentState::Resolved);
    assert_eq!(inc.cause.what.to_string(), "partition");
}

#[test]
fn a_short_partition_below_the_threshold_opens_nothing() {
    let mut c = big_cluster(1);
    for i in 1..=10 {
        hb(&mut c, "n0", i * 1000).expect("hb");
    }
    // 1.7 intervals of silence, then heartbeats again.
    for t in (10_000..11_700).step_by(50) {
        assert!(incidents(&c.apply(Input::Tick, t).expect("tick")).is_empty());
    }
    hb(&mut c, "n0", 11_700).expect("hb");
    assert_eq!(c.incidents().count(), 0);
}

fn step(c: &mut Cluster, name: &str, rank: u32, step: u64, phase: Phase, now: Millis) {
    ev(
        c,
        name,
        EventBody::Progress(ProgressRecord::Step {
            job: job("pretrain"),
            rank,
            step,
            phase,
            samples: None,
            tokens: None,
        }),
        now,
    );
}

#[test]
fn a_hang_is_localized_to_the_rank_that_missed_the_collective() {
    let mut c = big_cluster(2);
    for r in 0..16 {
        start(&mut c, &format!("n{}", r / 8), r, r % 8, 16, 0);
    }
    let mut t = 0;
    for s in 1..=10u64 {
        for r in 0..16 {
            step(&mut c, &format!("n{}", r / 8), r, s, Phase::Begin, t);
        }
        for r in 0..16 {
            step(
                &mut c,
                &format!("n{}", r / 8),
                r,
                s,
                Phase::Collective,
                t + 900,
            );
        }
        for r in 0..16 {
            step(&mut c, &format!("n{}", r / 8), r, s, Phase::End, t + 1000);
        }
        t += 1000;
    }
    // Step 11: rank 13 never reaches the collective.
    for r in 0..16 {
        step(&mut c, &format!("n{}", r / 8), r, 11, Phase::Begin, t);
    }
    for r in (0..16).filter(|r| *r != 13) {
        step(
            &mut c,
            &format!("n{}", r / 8),
            r,
            11,
            Phase::Collective,
            t + 900,
        );
    }
    let last = t + 900;
    let deadline = c.config().workload.hang_floor_ms; // 3 x 1 s < 10 s floor
    for node_name in ["n0", "n1"] {
        hb(&mut c, node_name, last + deadline - 100).expect("hb");
    }
    assert!(incidents(&c.apply(Input::Tick, last + deadline - 1).expect("tick")).is_empty());
    for node_name in ["n0", "n1"] {
        hb(&mut c, node_name, last + deadline).expect("hb");
    }
    let fx = c.apply(Input::Tick, last + deadline).expect("tick");
    let inc = incidents(&fx);
    assert_eq!(inc.len(), 1, "{inc:#?}");
    assert_eq!(inc[0].kind, IncidentKind::Hang);
    assert_eq!(inc[0].cause.node, node("n1"));
    assert_eq!(inc[0].cause.card, Some(5));
    assert_eq!(inc[0].cause.rank, Some(13));
    // Reported once.
    let later = c.apply(Input::Tick, last + deadline + 5000).expect("tick");
    assert!(
        incidents(&later)
            .iter()
            .all(|i| i.kind != IncidentKind::Hang)
    );
}

#[test]
fn the_first_worker_to_exit_is_the_culprit() {
    let mut c = big_cluster(2);
    for r in 0..16 {
        start(&mut c, &format!("n{}", r / 8), r, r % 8, 16, 0);
    }
    let exit = |rank: u32| EventBody::WorkerExit {
        rank: Some(rank),
        pid: 100 + rank,
        exit_code: Some(1),
        signal: None,
    };
    // The symptom (rank 2's NCCL error) is reported before the cause (rank
    // 12 died first) because its agent was quicker.
    c.apply(
        Input::Event {
            node: node("n0"),
            event: AgentEvent {
                seq: 1,
                at_ms: 1500,
                body: exit(2),
            },
        },
        1600,
    )
    .expect("event");
    c.apply(
        Input::Event {
            node: node("n1"),
            event: AgentEvent {
                seq: 1,
                at_ms: 1000,
                body: exit(12),
            },
        },
        1700,
    )
    .expect("event");
    let incs: Vec<&Incident> = c.incidents().collect();
    assert_eq!(incs.len(), 1);
    assert_eq!(incs[0].kind, IncidentKind::WorkerExit);
    assert_eq!(incs[0].cause.rank, Some(12));
    assert_eq!(incs[0].cause.node, node("n1"));
    assert_eq!(incs[0].cause.card, Some(4));
    assert_eq!(incs[0].folded, 1);
    // A clean exit is no incident.
    let fx = ev(
        &mut c,
        "n0",
        EventBody::WorkerExit {
            rank: Some(3),
            pid: 1,
            exit_code: Some(0),
            signal: None,
        },
        2000,
    );
    assert!(incidents(&fx).is_empty());
}

fn reg_as(c: &mut Cluster, name: &str, spare: bool, job_label: Option<&str>, now: Millis) {
    c.apply(
        Input::Register(Registration {
            node: node(name),
            boot_id: "b1".into(),
            cards: cards(8),
            spare,
            job: job_label.map(job),
            supervises: true,
        }),
        now,
    )
    .expect("register");
}

fn workers(fx: &[Effect]) -> Vec<(String, WorkerCommand)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Worker { node, command } => Some((node.to_string(), command.clone())),
            _ => None,
        })
        .collect()
}

/// Two supervised nodes of a 16-rank job, checkpoints at steps 10 and 20
/// complete, step 23 reached.
fn supervised(spares: &[&str]) -> Cluster {
    let mut c = cluster();
    for n in ["n0", "n1"] {
        reg_as(&mut c, n, false, Some("pretrain"), 0);
    }
    for s in spares {
        reg_as(&mut c, s, true, None, 0);
    }
    for r in 0..16 {
        start(&mut c, &format!("n{}", r / 8), r, r % 8, 16, 1);
    }
    for s in 1..=23u64 {
        for r in 0..16 {
            step(
                &mut c,
                &format!("n{}", r / 8),
                r,
                s,
                Phase::End,
                10 + s as i64 * 10,
            );
        }
        if s % 10 == 0 {
            for r in 0..16 {
                ev(
                    &mut c,
                    &format!("n{}", r / 8),
                    EventBody::Checkpoint(CheckpointReport {
                        job: job("pretrain"),
                        rank: r,
                        step: s,
                        path: format!("/ckpt/step-{s}"),
                        bytes: None,
                        sha256: None,
                        complete_all: false,
                        invalid: None,
                        source: None,
                    }),
                    10 + s as i64 * 10,
                );
            }
        }
    }
    c
}

#[test]
fn a_dead_node_is_replaced_by_a_spare_and_the_job_resumes_from_the_latest_checkpoint() {
    let mut c = supervised(&["s0"]);
    let fx = ev(&mut c, "n1", xid(0, 79), 1000);
    let w = workers(&fx);
    assert!(
        w.contains(&("n0".into(), WorkerCommand::Stop { grace_s: 10 })),
        "{w:?}"
    );
    assert!(w.contains(&("n1".into(), WorkerCommand::Stop { grace_s: 10 })));
    let start_s0 = WorkerCommand::Start {
        resume_from: "/ckpt/step-20".into(),
        restart_count: 1,
        replaces: "n1".into(),
    };
    assert!(w.contains(&("s0".into(), start_s0)), "{w:?}");
    assert!(
        !w.iter()
            .any(|(n, c)| n == "n1" && matches!(c, WorkerCommand::Start { .. }))
    );
    // Ranks come back on n0 and s0; the first step after 20 resolves it.
    for r in 0..16 {
        let n = if r < 8 { "n0" } else { "s0" };
        start(&mut c, n, r, r % 8, 16, 1100);
    }
    for r in 0..16 {
        step(
            &mut c,
            if r < 8 { "n0" } else { "s0" },
            r,
            21,
            Phase::End,
            1200,
        );
    }
    let inc = c.incidents().next().expect("incident");
    assert_eq!(inc.state, IncidentState::Resolved);
    assert_eq!(inc.action.as_deref(), Some("replace_node"));
    assert_eq!(inc.lost_steps, Some(3));
    assert_eq!(inc.checkpoint.as_ref().map(|c| c.step), Some(20));
    let names: Vec<&str> = inc.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["detect", "localize", "isolate", "restore", "resume"]
    );
    assert_eq!(c.jobs().next().map(|j| j.restarts), Some(1));
}

#[test]
fn without_a_spare_the_recovery_waits_and_goes_on_when_one_joins() {
    let mut c = supervised(&[]);
    let fx = ev(&mut c, "n1", xid(0, 79), 1000);
    assert!(
        !workers(&fx)
            .iter()
            .any(|(_, c)| matches!(c, WorkerCommand::Start { .. }))
    );
    let inc = c.incidents().next().expect("incident");
    assert!(
        inc.phases
            .iter()
            .any(|p| p.name == "waiting_for_capacity" && p.end.is_none())
    );
    let fx = c
        .apply(
            Input::Register(Registration {
                node: node("s9"),
                boot_id: "b".into(),
                cards: cards(8),
                spare: true,
                job: None,
                supervises: true,
            }),
            5000,
        )
        .expect("register");
    let starts: Vec<String> = workers(&fx)
        .into_iter()
        .filter(|(_, c)| matches!(c, WorkerCommand::Start { .. }))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(starts, ["n0", "s9"]);
    let inc = c.incidents().next().expect("incident");
    assert!(
        inc.phases
            .iter()
            .any(|p| p.name == "waiting_for_capacity" && p.end.is_some())
    );
}

#[test]
fn an_unreadable_checkpoint_falls_back_to_the_previous_complete_one() {
    let mut c = supervised(&[]);
    // An application fault: restart in place from step 20.
    let fx = ev(&mut c, "n0", xid(3, 13), 1000);
    assert!(workers(&fx).iter().any(|(_, c)| matches!(c, WorkerCommand::Start { resume_from, .. } if resume_from == "/ckpt/step-20")));
    // A worker cannot load it and exits.
    let fx = ev(
        &mut c,
        "n0",
        EventBody::WorkerExit {
            rank: Some(0),
            pid: 9,
            exit_code: Some(3),
            signal: None,
        },
        1100,
    );
    let w = workers(&fx);
    assert!(w.iter().any(|(_, c)| matches!(c, WorkerCommand::Start { resume_from, restart_count: 2, .. } if resume_from == "/ckpt/step-10")), "{w:?}");
    // Ordered stops (SIGTERM) during the recovery are not new incidents.
    ev(
        &mut c,
        "n1",
        EventBody::WorkerExit {
            rank: Some(9),
            pid: 10,
            exit_code: None,
            signal: Some(15),
        },
        1150,
    );
    assert_eq!(c.incidents().count(), 1);
    assert_eq!(
        c.incidents()
            .next()
            .and_then(|i| i.action.clone())
            .as_deref(),
        Some("restart_in_place")
    );
}

#[test]
fn a_fatal_fault_is_not_hidden_in_a_weaker_incident_at_the_same_place() {
    let mut c = big_cluster(1);
    ev(
        &mut c,
        "n0",
        EventBody::ProbeHung {
            card: 0,
            probe: "nvml".into(),
            waited_ms: 3000,
        },
        10,
    );
    // The node's card 2 degrades (non-fatal), then fails for real.
    ev(
        &mut c,
        "n0",
        EventBody::CardError {
            card: 2,
            signal: Signal::PcieDegraded,
            detail: String::new(),
        },
        20,
    );
    ev(&mut c, "n0", xid(2, 48), 30);
    let kinds: Vec<(IncidentKind, String)> = c
        .incidents()
        .map(|i| (i.kind, i.cause.what.to_string()))
        .collect();
    assert!(
        kinds.contains(&(IncidentKind::CardFault, "xid:48".to_owned())),
        "{kinds:?}"
    );
    assert_eq!(
        c.node(&node("n0")).expect("node").cards[2].health.name(),
        "quarantined"
    );
}

#[test]
fn an_unsupervised_job_is_handed_to_the_action_backends_once() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    for r in 0..8 {
        start(&mut c, "n0", r, r, 8, 1);
    }
    ev(&mut c, "n0", watched(100, None), 2);
    let fx = ev(&mut c, "n0", xid(3, 79), 3);
    let acts = actions(&fx);
    let verbs: Vec<ActionVerb> = acts.iter().map(|a| a.verb).collect();
    assert_eq!(verbs, [ActionVerb::Quarantine, ActionVerb::Restart]);
    let restart = acts[1];
    assert_eq!(restart.job, Some(job("pretrain")));
    assert_eq!(restart.checkpoint.as_ref().map(|c| c.step), Some(100));
    assert_eq!(acts[0].node, Some(node("n0")));
    assert!(acts[0].incident.is_some() && acts[0].incident == restart.incident);
    // A repeat of the same fault folds into the incident: no second restart.
    let fx = ev(&mut c, "n0", xid(3, 79), 4);
    assert!(actions(&fx).iter().all(|a| a.verb != ActionVerb::Restart));
    // An operator's uncordon asks the back-ends to release the card.
    let fx = c
        .apply(
            Input::Uncordon {
                node: node("n0"),
                card: Some(3),
            },
            5,
        )
        .expect("uncordon");
    assert_eq!(
        actions(&fx).iter().map(|a| a.verb).collect::<Vec<_>>(),
        [ActionVerb::Release]
    );
}

#[test]
fn shadow_mode_records_the_plan_and_orders_nothing() {
    let mut c = Cluster::new(ClusterConfig {
        shadow: true,
        ..ClusterConfig::default()
    });
    for (name, spare) in [("n0", false), ("s0", true)] {
        c.apply(
            Input::Register(Registration {
                node: node(name),
                boot_id: "b1".into(),
                cards: cards(8),
                spare,
                job: Some(job("pretrain")),
                supervises: true,
            }),
            0,
        )
        .expect("register");
    }
    for r in 0..8 {
        start(&mut c, "n0", r, r, 8, 1);
    }
    ev(&mut c, "n0", watched(100, None), 2);
    let fx = ev(&mut c, "n0", xid(3, 79), 3);
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Worker { .. } | Effect::Recovery(_))),
        "no orders in shadow mode"
    );
    assert_eq!(c.recoveries().count(), 0);
    let plan = feeds(&fx, "shadow_action");
    assert_eq!(plan.len(), 1);
    let text = plan[0]["plan"].to_string();
    assert!(text.contains("stop the workers"), "{text}");
    assert!(text.contains("step 100"), "{text}");
    let inc = incidents(&fx);
    assert!(
        inc[0]
            .evidence
            .iter()
            .any(|e| e.starts_with("shadow mode, not done")),
        "{:?}",
        inc[0].evidence
    );
}

#[test]
fn a_spare_keeps_its_job_across_a_controller_restart() {
    let mut c = cluster();
    let reg = |name: &str, spare: bool| Registration {
        node: node(name),
        boot_id: format!("boot-{name}"),
        cards: cards(8),
        spare,
        job: (!spare).then(|| job("pretrain")),
        supervises: true,
    };
    for (n, spare) in [("n0", false), ("s0", true)] {
        c.apply(Input::Register(reg(n, spare)), 0)
            .expect("register");
    }
    for r in 0..8 {
        start(&mut c, "n0", r, r, 8, 1);
    }
    let fx = ev(&mut c, "n0", xid(3, 79), 2);
    let roles: Vec<(NodeId, Option<JobId>, bool)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::NodeRole { node, job, spare } => Some((node.clone(), job.clone(), *spare)),
            _ => None,
        })
        .collect();
    assert!(
        roles.contains(&(node("s0"), Some(job("pretrain")), false)),
        "{roles:?}"
    );
    assert!(roles.contains(&(node("n0"), None, false)), "{roles:?}");
    // The controller restarts with the stored roles; the spare's agent
    // reconnects with its flags (a spare, no job) and the same boot id.
    let stored: Vec<Registration> = c
        .nodes()
        .map(|n| Registration {
            node: n.id.clone(),
            boot_id: n.boot_id.clone(),
            cards: cards(8),
            spare: n.spare,
            job: n.job.clone(),
            supervises: true,
        })
        .collect();
    let mut after = cluster();
    after.restore(stored, Vec::new(), 10);
    let fx = after
        .apply(Input::Register(reg("s0", true)), 11)
        .expect("register");
    let s0 = after.nodes().find(|n| n.id == node("s0")).expect("s0");
    assert_eq!((s0.job.clone(), s0.spare), (Some(job("pretrain")), false));
    assert!(fx.iter().any(|e| matches!(e, Effect::NodeRole { .. })));
    // A new boot of the same agent starts from its flags again.
    let mut fresh = reg("s0", true);
    fresh.boot_id = "boot-2".into();
    after.apply(Input::Register(fresh), 12).expect("register");
    let s0 = after.nodes().find(|n| n.id == node("s0")).expect("s0");
    assert_eq!((s0.job.clone(), s0.spare), (None, true));
}

#[test]
fn stored_checkpoints_survive_a_controller_restart() {
    let mut c = cluster();
    reg(&mut c, "n0", 0);
    for r in 0..2 {
        start(&mut c, "n0", r, r, 2, 1);
    }
    let fx = ev(&mut c, "n0", watched(100, None), 2);
    let stored: Vec<(JobId, CheckpointState)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Checkpoint { job, state } => Some((job.clone(), state.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), 1);
    let mut after = cluster();
    after.restore_checkpoints(stored);
    reg(&mut after, "n0", 10);
    start(&mut after, "n0", 0, 0, 2, 11);
    let j = after.jobs().next().expect("job");
    assert_eq!(j.latest_complete_checkpoint().map(|c| c.step), Some(100));
}
