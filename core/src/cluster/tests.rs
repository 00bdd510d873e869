use super::*;
use crate::model::CheckpointReport;
use proptest::prelude::*;

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
        signal: "xid".to_owned() + &format!(":{code}"),
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

fn incidents(fx: &[Effect]) -> Vec<&Incident> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Incident(i) => Some(&**i),
            Effect::Feed { .. } => None,
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
    assert_eq!(inc.len(), 1);
    let i = inc[0];
    assert_eq!(i.kind, IncidentKind::CardFault);
    assert_eq!(i.cause.card, Some(5));
    assert_eq!(i.cause.rank, Some(21));
    assert_eq!(i.cause.signal, "xid:79");
    assert_eq!(i.job, Some(job("pretrain")));
    assert_eq!(i.action.as_deref(), Some("drain_node"));
    let names: Vec<_> = i.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["detect", "localize"]);
    let card = &c.node(&node("n2")).expect("node").cards[5];
    assert_eq!(card.health.name(), "failed");
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
            signal: "thermal".into(),
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
            signal: "gpu_lost".into(),
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
        })
    };
    ev(&mut c, "n0", ck(0), 2);
    let j = c.jobs().next().expect("job");
    assert!(j.latest_complete_checkpoint().is_none());
    let fx = ev(&mut c, "n0", ck(1), 3);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Feed {
            kind: "checkpoint_complete",
            ..
        }
    )));
    let j = c.jobs().next().expect("job");
    assert_eq!(j.latest_complete_checkpoint().map(|c| c.step), Some(10));
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
                            signal: "ecc_dbe".into(),
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
                if inc.cause.card.is_some() {
                    prop_assert!(!keys.contains(&(inc.cause.node.clone(), None))
                        || inc.folded == 0, "card incident beside a node incident");
                }
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
