//! Malformed, oversized and wrong-version messages are refused with a clear
//! status, and other agents' streams carry on undisturbed.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use vigil_agent::AgentConfig;
use vigil_agent::cards::SimCards;
use vigil_agent::uplink::AgentIo;
use vigil_controller::config::ControllerConfig;
use vigil_core::NodeId;
use vigil_proto::v1 as pb;
use vigil_proto::v1::agent_service_client::AgentServiceClient;

fn register(node: &str, version: u32, cards: u32) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Register(pb::Register {
            node_id: node.into(),
            boot_id: "boot".into(),
            agent_version: "test".into(),
            protocol_version: version,
            cards: (0..cards)
                .map(|i| pb::CardInfo {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    vendor: "test".into(),
                    model: "X".into(),
                    memory_total_bytes: 1,
                    pci_bus_id: String::new(),
                })
                .collect(),
            ..Default::default()
        })),
    }
}

/// Opens a session, sends `msgs`, and returns the status the stream ends with.
async fn session_status(url: &str, msgs: Vec<pb::AgentMessage>) -> tonic::Status {
    let mut client = AgentServiceClient::connect(url.to_owned())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.expect("queue");
    }
    let resp = client.session(ReceiverStream::new(rx)).await;
    let mut inbound = match resp {
        Err(status) => return status,
        Ok(r) => r.into_inner(),
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Err(_) => panic!("the controller neither answered nor closed the stream"),
            Ok(Err(status)) => return status,
            Ok(Ok(None)) => return tonic::Status::ok("closed"),
            Ok(Ok(Some(_))) => {} // welcome, acks
        }
    }
}

fn heartbeat(card: u32) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
            seq: 1,
            cards: vec![pb::CardSample {
                index: card,
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

fn events(evs: Vec<pb::Event>) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Events(pb::EventBatch {
            events: evs,
        })),
    }
}

fn card_error(seq: u64, signal: &str, detail: String) -> pb::Event {
    pb::Event {
        seq,
        at_ms: 0,
        body: Some(pb::event::Body::CardError(pb::CardError {
            card: 0,
            signal: signal.into(),
            code: 79,
            detail,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_without_disturbing_others() {
    let dir = vigil_tests::scratch("reject");
    let mut cfg = ControllerConfig {
        grpc_listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        store: format!("sqlite://{}", dir.join("v.db").display()),
        ..Default::default()
    };
    cfg.cluster.liveness.heartbeat_ms = 100;
    let ctl = vigil_controller::start(cfg).await.expect("controller");
    let url = format!("http://{}", ctl.grpc_addr);

    // A well-behaved agent streams throughout.
    let mut acfg = AgentConfig::new(url.clone(), NodeId::new("good").expect("id"));
    acfg.heartbeat = Duration::from_millis(100);
    acfg.host_metrics = false;
    let (io, _tx) = AgentIo::new();
    let stats = io.stats.clone();
    let (cards, _h) = SimCards::new("good", 2, "H100");
    let good = tokio::spawn(vigil_agent::run(acfg, Box::new(cards), io));
    let hb = |ctl: &vigil_controller::Running| {
        let state = ctl.state.clone();
        async move {
            state
                .query(|c| {
                    c.node(&NodeId::new("good").expect("id"))
                        .map(|n| n.heartbeats)
                })
                .await
                .flatten()
                .unwrap_or(0)
        }
    };
    for _ in 0..200 {
        if hb(&ctl).await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = hb(&ctl).await;
    assert!(before >= 2, "the good agent must be heartbeating");

    // Unknown protocol version.
    let s = session_status(&url, vec![register("v99", 99, 1)]).await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("protocol version 99"),
        "{}",
        s.message()
    );

    // A session that does not start with Register.
    let s = session_status(&url, vec![heartbeat(0)]).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("Register"), "{}", s.message());

    // An invalid registration.
    let s = session_status(&url, vec![register("bad node", 1, 1)]).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("node_id"), "{}", s.message());

    // A sample for a card the node does not have.
    let s = session_status(&url, vec![register("m1", 1, 1), heartbeat(5)]).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("card"), "{}", s.message());

    // An unknown signal and out-of-order sequence numbers.
    let s = session_status(
        &url,
        vec![
            register("m2", 1, 1),
            events(vec![card_error(1, "meltdown", String::new())]),
        ],
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("meltdown"), "{}", s.message());
    let s = session_status(
        &url,
        vec![
            register("m3", 1, 1),
            events(vec![
                card_error(2, "xid", String::new()),
                card_error(1, "xid", String::new()),
            ]),
        ],
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // A message over the 4 MiB limit.
    let huge = "x".repeat(5 << 20);
    let s = session_status(
        &url,
        vec![
            register("m4", 1, 1),
            events(vec![card_error(1, "xid", huge)]),
        ],
    )
    .await;
    assert!(
        matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
        "oversized message: {s:?}"
    );

    // Register twice on one stream.
    let s = session_status(&url, vec![register("m5", 1, 1), register("m5", 1, 1)]).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // The good agent never noticed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(hb(&ctl).await > before, "the good agent kept heartbeating");
    assert_eq!(
        stats.connects.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "and never reconnected"
    );
    assert!(!good.is_finished());
    // Nothing was blamed on the good node. (The refused agents had
    // registered; once silent they are declared lost like any node.)
    let blamed = ctl
        .state
        .query(|c| {
            c.incidents()
                .filter(|i| i.cause.node.as_str() == "good")
                .count()
        })
        .await
        .expect("state");
    assert_eq!(blamed, 0);
    let alive = ctl
        .state
        .query(|c| {
            c.node(&NodeId::new("good").expect("id"))
                .map(|n| n.liveness.name())
        })
        .await
        .flatten();
    assert_eq!(alive, Some("alive"));
    good.abort();
    ctl.shutdown().await;
}
