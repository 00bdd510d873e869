use super::agent::{self, CommandOutcome, Hello};
use super::controller::{Ack, Command, ControllerMsg, Order, Welcome};
use crate::v1 as pb;
use proptest::prelude::*;
use vigil_core::cluster::{Registration, WorkerCommand};
use vigil_core::model::{
    AgentEvent, CardInfo, CardSample, CheckpointReport, EventBody, Heartbeat, HostMetrics, Signal,
};
use vigil_core::progress::{MAX_WORLD_SIZE, Phase, ProgressRecord};
use vigil_core::{JobId, NodeId};

// ---------------------------------------------------------------------------
// Validation examples (moved from the controller's edge)
// ---------------------------------------------------------------------------

fn reg() -> pb::Register {
    pb::Register {
        node_id: "n0".into(),
        boot_id: "b".into(),
        protocol_version: 1,
        cards: vec![pb::CardInfo {
            index: 0,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, super::InvalidMessage>, part: &str) -> bool {
    r.is_err_and(|e| e.to_string().contains(part))
}

#[test]
fn registrations_are_validated() {
    assert!(Registration::try_from(reg()).is_ok());
    let mut r = reg();
    r.node_id = "bad node".into();
    assert!(refused(Registration::try_from(r), "node_id"));
    let mut r = reg();
    r.cards[0].index = 3;
    assert!(refused(Registration::try_from(r), "index"));
    let mut r = reg();
    r.boot_id.clear();
    assert!(refused(Registration::try_from(r), "register.boot_id"));
}

#[test]
fn heartbeats_are_validated() {
    let hb = pb::Heartbeat {
        seq: 1,
        cards: vec![pb::CardSample {
            index: 0,
            temperature_c: f32::NAN,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(refused(agent::heartbeat(hb.clone(), 1), "temperature"));
    let mut ok = hb;
    ok.cards[0].temperature_c = 40.0;
    assert!(agent::heartbeat(ok.clone(), 1).is_ok());
    assert!(refused(
        agent::heartbeat(ok, 0),
        "heartbeat has 1 card samples for 0 registered cards"
    ));
}

#[test]
fn events_are_validated() {
    let ev = |seq, body| pb::Event {
        seq,
        at_ms: 0,
        body: Some(body),
    };
    let batch = |events| pb::EventBatch { events };
    let xid = pb::event::Body::CardError(pb::CardError {
        card: 0,
        signal: "xid".into(),
        code: 79,
        detail: String::new(),
    });
    let ok = agent::events(batch(vec![ev(1, xid.clone())]), 1).expect("valid");
    assert!(
        matches!(&ok[0].body, EventBody::CardError { signal, .. } if *signal == Signal::Xid(79))
    );
    // Out of order, unknown card, unknown signal.
    assert!(refused(
        agent::events(batch(vec![ev(2, xid.clone()), ev(1, xid.clone())]), 1),
        "event seq 1 is not above the previous one (2)"
    ));
    assert!(refused(
        agent::events(batch(vec![ev(1, xid)]), 0),
        "event 1: card 0 is not in this node's inventory"
    ));
    let bogus = pb::event::Body::CardError(pb::CardError {
        card: 0,
        signal: "meltdown".into(),
        code: 0,
        detail: String::new(),
    });
    assert!(refused(
        agent::events(batch(vec![ev(1, bogus)]), 1),
        "meltdown"
    ));
}

#[test]
fn empty_controller_messages_are_refused() {
    assert!(ControllerMsg::try_from(pb::ControllerMessage { body: None }).is_err());
    let cmd = pb::ControllerMessage::from(ControllerMsg::Command(Command { id: 3, order: None }));
    assert_eq!(
        ControllerMsg::try_from(cmd),
        Ok(ControllerMsg::Command(Command { id: 3, order: None }))
    );
}

#[test]
fn a_rank_checkpoint_travels_as_a_checkpoint_report() {
    let job = JobId::new("j").expect("valid id");
    let sent = AgentEvent {
        seq: 1,
        at_ms: 5,
        body: EventBody::Progress(ProgressRecord::Checkpoint {
            job: job.clone(),
            rank: 2,
            step: 10,
            path: "/ckpt/10".into(),
            bytes: Some(7),
            sha256: None,
        }),
    };
    let got = AgentEvent::try_from(pb::Event::from(&sent)).expect("valid");
    assert_eq!(
        got.body,
        EventBody::Checkpoint(CheckpointReport {
            job,
            rank: 2,
            step: 10,
            path: "/ckpt/10".into(),
            bytes: Some(7),
            sha256: None,
            complete_all: false,
            invalid: None,
            source: Some("rank".into()),
        })
    );
}

// ---------------------------------------------------------------------------
// Round trips: domain value -> wire -> domain value is the identity for
// every value the codec can carry without loss.
// ---------------------------------------------------------------------------

fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}"
}

fn node_id() -> impl Strategy<Value = NodeId> {
    id().prop_map(|s| NodeId::new(s).expect("valid id"))
}

fn job_id() -> impl Strategy<Value = JobId> {
    id().prop_map(|s| JobId::new(s).expect("valid id"))
}

fn small_text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

/// Absent or non-empty text (empty means absent on the wire).
fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[ -~]{1,40}")
}

/// Absent or non-zero (zero means absent on the wire).
fn opt_nonzero_u64() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(1..u64::MAX)
}

fn float() -> impl Strategy<Value = f32> {
    -1.0e6f32..1.0e6f32
}

fn card_info(index: u32) -> impl Strategy<Value = CardInfo> {
    (
        small_text(),
        small_text(),
        small_text(),
        any::<u64>(),
        small_text(),
    )
        .prop_map(
            move |(uuid, vendor, model, memory_total_bytes, pci_bus_id)| CardInfo {
                index,
                uuid,
                vendor,
                model,
                memory_total_bytes,
                pci_bus_id,
            },
        )
}

fn registration() -> impl Strategy<Value = Registration> {
    let cards = (0..8usize).prop_flat_map(|n| (0..n as u32).map(card_info).collect::<Vec<_>>());
    (
        node_id(),
        "[0-9a-f]{1,64}",
        cards,
        any::<bool>(),
        proptest::option::of(job_id()),
        any::<bool>(),
    )
        .prop_map(
            |(node, boot_id, cards, spare, job, supervises)| Registration {
                node,
                boot_id,
                cards,
                spare,
                job,
                supervises,
            },
        )
}

fn card_sample() -> impl Strategy<Value = CardSample> {
    (
        (0..8u32, float(), any::<u64>(), float(), float()),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            any::<u64>(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
        (
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        ),
    )
        .prop_map(|(a, b, c, d)| CardSample {
            index: a.0,
            utilization_percent: a.1,
            memory_used_bytes: a.2,
            temperature_c: a.3,
            power_w: a.4,
            ecc_sbe_volatile: b.0,
            ecc_dbe_volatile: b.1,
            retired_pages: b.2,
            retirement_pending: b.3,
            throttle_reasons: b.4,
            pcie_link_width: c.0,
            pcie_link_width_max: c.1,
            nvlink_up: c.2,
            nvlink_total: c.3,
            probe_latency_us: c.4,
            unreachable: d.0,
            pcie_link_gen: d.1,
            pcie_link_gen_max: d.2,
            pcie_replay: d.3,
            nvlink_errors: d.4,
        })
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    let host = (float(), any::<u64>(), any::<u64>(), float(), any::<u64>()).prop_map(
        |(cpu_percent, memory_used_bytes, memory_total_bytes, load_1m, uptime_s)| HostMetrics {
            cpu_percent,
            memory_used_bytes,
            memory_total_bytes,
            load_1m,
            uptime_s,
        },
    );
    (
        1..u64::MAX,
        any::<i64>(),
        host,
        proptest::collection::vec(card_sample(), 0..8),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(seq, sent_at_ms, host, cards, spool_dropped, spool_pending)| Heartbeat {
                seq,
                sent_at_ms,
                host,
                cards,
                spool_dropped,
                spool_pending,
            },
        )
}

fn signal() -> impl Strategy<Value = Signal> {
    prop_oneof![
        any::<u32>().prop_map(Signal::Xid),
        Just(Signal::EccDbe),
        Just(Signal::GpuLost),
        Just(Signal::Thermal),
        Just(Signal::Nvlink),
        Just(Signal::PcieDegraded),
        Just(Signal::RetiredPages),
    ]
}

fn progress() -> impl Strategy<Value = ProgressRecord> {
    let start = (job_id(), 1..=MAX_WORLD_SIZE, any::<u32>()).prop_flat_map(|(job, ws, lr)| {
        (
            Just(job),
            0..ws,
            Just(ws),
            Just(lr),
            proptest::option::of(0..u32::MAX),
            proptest::option::of(1..=u32::MAX),
        )
            .prop_map(|(job, rank, world_size, local_rank, card, pid)| {
                ProgressRecord::Start {
                    job,
                    rank,
                    world_size,
                    local_rank: Some(local_rank),
                    card,
                    pid,
                }
            })
    });
    let phase = prop_oneof![
        Just(Phase::Begin),
        Just(Phase::Collective),
        Just(Phase::End)
    ];
    let step = (
        job_id(),
        0..MAX_WORLD_SIZE,
        any::<u64>(),
        phase,
        opt_nonzero_u64(),
        opt_nonzero_u64(),
    )
        .prop_map(
            |(job, rank, step, phase, samples, tokens)| ProgressRecord::Step {
                job,
                rank,
                step,
                phase,
                samples,
                tokens,
            },
        );
    let end = (job_id(), 0..MAX_WORLD_SIZE, small_text())
        .prop_map(|(job, rank, status)| ProgressRecord::End { job, rank, status });
    prop_oneof![start, step, end]
}

fn checkpoint() -> impl Strategy<Value = CheckpointReport> {
    (
        (job_id(), any::<u32>(), any::<u64>(), "/[ -~]{1,40}"),
        (
            opt_nonzero_u64(),
            opt_text(),
            any::<bool>(),
            opt_text(),
            opt_text(),
        ),
    )
        .prop_map(|(a, b)| CheckpointReport {
            job: a.0,
            rank: a.1,
            step: a.2,
            path: a.3,
            bytes: b.0,
            sha256: b.1,
            complete_all: b.2,
            invalid: b.3,
            source: b.4,
        })
}

fn event_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (0..8u32, signal(), small_text()).prop_map(|(card, s, detail)| EventBody::CardError {
            card,
            signal: s,
            detail,
        }),
        (
            proptest::option::of(0..=i32::MAX as u32),
            any::<u32>(),
            proptest::option::of(0..=i32::MAX),
            proptest::option::of(1..=i32::MAX),
        )
            .prop_map(|(rank, pid, exit_code, signal)| EventBody::WorkerExit {
                rank,
                pid,
                exit_code,
                signal,
            }),
        progress().prop_map(EventBody::Progress),
        checkpoint().prop_map(EventBody::Checkpoint),
        (0..8u32, small_text(), any::<u32>()).prop_map(|(card, probe, waited_ms)| {
            EventBody::ProbeHung {
                card,
                probe,
                waited_ms,
            }
        }),
    ]
}

fn events() -> impl Strategy<Value = Vec<AgentEvent>> {
    proptest::collection::vec((1..1000u64, any::<i64>(), event_body()), 0..12).prop_map(|v| {
        let mut seq = 0;
        v.into_iter()
            .map(|(gap, at_ms, body)| {
                seq += gap;
                AgentEvent { seq, at_ms, body }
            })
            .collect()
    })
}

fn order() -> impl Strategy<Value = Order> {
    prop_oneof![
        any::<u32>().prop_map(|grace_s| Order::Worker(WorkerCommand::Stop { grace_s })),
        (small_text(), any::<u32>(), small_text()).prop_map(
            |(resume_from, restart_count, replaces)| Order::Worker(WorkerCommand::Start {
                resume_from,
                restart_count,
                replaces,
            })
        ),
        (proptest::option::of(any::<u32>()), small_text())
            .prop_map(|(card, reason)| Order::Quarantine { card, reason }),
        any::<u32>().prop_map(|heartbeat_ms| Order::Configure { heartbeat_ms }),
    ]
}

fn controller_msg() -> impl Strategy<Value = ControllerMsg> {
    prop_oneof![
        (
            small_text(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(controller_version, protocol_version, acked_event_seq, heartbeat_ms)| {
                    ControllerMsg::Welcome(Welcome {
                        controller_version,
                        protocol_version,
                        acked_event_seq,
                        heartbeat_ms,
                    })
                }
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(event_seq, heartbeat_seq)| {
            ControllerMsg::Ack(Ack {
                event_seq,
                heartbeat_seq,
            })
        }),
        (any::<u64>(), proptest::option::of(order()))
            .prop_map(|(id, order)| ControllerMsg::Command(Command { id, order })),
    ]
}

/// Through the wire form and its bytes, as the stream carries it.
fn over_the_wire<M: prost::Message + Default>(m: &M) -> M {
    M::decode(m.encode_to_vec().as_slice()).expect("decodes")
}

proptest! {
    #[test]
    fn registrations_round_trip(r in registration(), version in small_text(), last in any::<u64>()) {
        let hello = Hello::new(r, &version, last);
        let wire = over_the_wire(&pb::Register::from(&hello));
        prop_assert_eq!(wire.protocol_version, crate::PROTOCOL_VERSION);
        prop_assert_eq!(Hello::try_from(wire), Ok(hello));
    }

    #[test]
    fn heartbeats_round_trip(h in heartbeat()) {
        let wire = over_the_wire(&pb::Heartbeat::from(&h));
        prop_assert_eq!(agent::heartbeat(wire.clone(), 8), Ok(h.clone()));
        prop_assert_eq!(Heartbeat::try_from(wire), Ok(h));
    }

    #[test]
    fn event_batches_round_trip(evs in events()) {
        let wire = over_the_wire(&agent::event_batch(&evs));
        prop_assert_eq!(agent::events(wire, 8), Ok(evs));
    }

    #[test]
    fn command_results_round_trip(command_id in any::<u64>(), ok in any::<bool>(), detail in small_text()) {
        let r = CommandOutcome { command_id, ok, detail };
        let wire = over_the_wire(&pb::CommandResult::from(&r));
        prop_assert_eq!(CommandOutcome::from(wire), r);
    }

    #[test]
    fn controller_messages_round_trip(m in controller_msg()) {
        let wire = over_the_wire(&pb::ControllerMessage::from(&m));
        prop_assert_eq!(ControllerMsg::try_from(wire), Ok(m));
    }
}
