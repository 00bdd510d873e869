//! The store behaves the same on SQLite and PostgreSQL.

use vigil_controller::store::Store;
use vigil_core::cluster::Registration;
use vigil_core::incident::{Cause, CauseKind, Incident, IncidentKind, IncidentState};
use vigil_core::model::{AgentEvent, CardInfo, EventBody, Signal};
use vigil_core::{IncidentId, NodeId, Timestamp};

fn ev(seq: u64) -> AgentEvent {
    AgentEvent {
        seq,
        at_ms: 1,
        body: EventBody::ProbeHung {
            card: 0,
            probe: "t".into(),
            waited_ms: 1,
        },
    }
}

async fn exercise(store: &Store, tag: &str) {
    let node = NodeId::new(format!("st-{tag}")).expect("id");
    let reg = Registration {
        node: node.clone(),
        boot_id: format!("b-{tag}"),
        cards: vec![CardInfo {
            index: 0,
            uuid: "GPU-0".into(),
            vendor: "sim".into(),
            model: "H100".into(),
            memory_total_bytes: 1,
            pci_bus_id: "0000:18:00.0".into(),
        }],
        spare: true,
        job: None,
        supervises: true,
    };
    store.upsert_node(&reg, 5).await.expect("upsert");
    store.upsert_node(&reg, 6).await.expect("upsert twice");
    let nodes = store.nodes().await.expect("nodes");
    let got = nodes.iter().find(|n| n.node == node).expect("stored");
    assert_eq!(got, &reg);

    let boot = reg.boot_id.as_str();
    let fresh = store
        .append_events(&node, boot, vec![ev(1), ev(2)], 10)
        .await
        .expect("append");
    assert_eq!(fresh.len(), 2);
    // A replay of 2 with a new 3: only 3 is new.
    let fresh = store
        .append_events(&node, boot, vec![ev(2), ev(3)], 11)
        .await
        .expect("append");
    assert_eq!(fresh.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(store.max_event_seq(&node, boot).await.expect("max"), 3);
    assert_eq!(store.max_event_seq(&node, "other").await.expect("max"), 0);

    let id = IncidentId(1_000_000 + (vigil_agent::backoff::random_u64() % 1_000_000));
    let mut inc = Incident {
        id,
        job: None,
        kind: IncidentKind::CardFault,
        state: IncidentState::Open,
        cause: Cause {
            node: node.clone(),
            card: Some(0),
            rank: None,
            what: CauseKind::Card(Signal::Xid(79)),
        },
        detected_at: Timestamp(1000),
        resolved_at: None,
        phases: vec![],
        action: Some("drain_node".into()),
        checkpoint: None,
        lost_steps: None,
        evidence: vec!["x".into()],
        folded: 0,
        lost_boot: None,
    };
    store
        .save_incidents(std::slice::from_ref(&inc))
        .await
        .expect("save");
    inc.resolve(2000);
    store
        .save_incidents(std::slice::from_ref(&inc))
        .await
        .expect("update");
    let all = store.incidents().await.expect("load");
    assert_eq!(all.iter().find(|i| i.id == id), Some(&inc));
}

#[tokio::test]
async fn sqlite_store() {
    let dir = vigil_tests::scratch("sqlite");
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("nested/dir/v.db").display()
    ))
    .await
    .expect("open creates the directory");
    exercise(&store, "sqlite").await;
    assert!(Store::open("mysql://x").await.is_err());
}

#[tokio::test]
async fn postgres_store() {
    let url = std::env::var("VIGIL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let store =
        match tokio::time::timeout(std::time::Duration::from_secs(10), Store::open(&url)).await {
            Ok(Ok(s)) => s,
            other => {
                if std::env::var("CI").is_ok() {
                    panic!("PostgreSQL at {url} is required in CI: {other:?}");
                }
                eprintln!("SKIPPED: no PostgreSQL at {url} ({other:?}); set VIGIL_TEST_POSTGRES");
                return;
            }
        };
    let tag = format!("pg{}", vigil_agent::backoff::random_u64() % 1_000_000_000);
    exercise(&store, &tag).await;
}
