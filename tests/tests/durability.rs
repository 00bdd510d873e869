//! A controller killed with SIGKILL and restarted mid-stream loses no event
//! an agent handed it, and stores none twice.

use std::time::Duration;
use vigil_controller::store::Store;
use vigil_core::NodeId;
use vigil_tests::{Controller, agent, free_port, scratch, wait_until};

async fn post(client: &reqwest::Client, port: u16, body: String) -> u16 {
    match client
        .post(format!("http://127.0.0.1:{port}/v1/progress"))
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[test]
fn controller_sigkill_loses_and_duplicates_nothing() {
    let dir = scratch("durable");
    let mut c = Controller::start(&dir, 100);
    let ports = [free_port(), free_port()];
    let _a0 = agent(&c, "d0", "sim:2", ports[0], &[]);
    let _a1 = agent(&c, "d1", "sim:2", ports[1], &[]);
    wait_until(Duration::from_secs(20), "agents registered", || {
        c.node("d0").is_some() && c.node("d1").is_some()
    });
    const N: u64 = 400;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let feeder = rt.spawn(async move {
        let client = reqwest::Client::new();
        for step in 1..=N {
            for (i, port) in ports.iter().enumerate() {
                let rec = format!(
                    r#"{{"type":"step","job":"dur","rank":{i},"step":{step},"phase":"end"}}"#
                );
                assert_eq!(
                    post(&client, *port, rec).await,
                    202,
                    "the agent must accept at once"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Kill the controller while records stream in, then bring it back.
    std::thread::sleep(Duration::from_millis(700));
    c.proc.kill();
    std::thread::sleep(Duration::from_millis(800));
    c.restart();
    rt.block_on(feeder).expect("feeder");
    // Everything reaches the store once the agents have replayed their spools.
    let store_url = c.store.clone();
    let check = move || {
        rt.block_on(async {
            let store = Store::open(&store_url).await.expect("store");
            let mut out = Vec::new();
            for node in ["d0", "d1"] {
                out.push(
                    store
                        .event_seqs(&NodeId::new(node).expect("id"))
                        .await
                        .expect("seqs"),
                );
            }
            out
        })
    };
    let mut last = Vec::new();
    wait_until(Duration::from_secs(30), "all events stored", || {
        last = check();
        last.iter().all(|seqs| seqs.len() as u64 >= N)
    });
    for seqs in &last {
        // One boot per agent, sequence numbers 1..=N exactly: no gap (nothing
        // lost) and no repeat (nothing duplicated).
        let boots: std::collections::BTreeSet<&String> = seqs.iter().map(|(b, _)| b).collect();
        assert_eq!(boots.len(), 1);
        let s: Vec<u64> = seqs.iter().map(|(_, s)| *s).collect();
        assert_eq!(s, (1..=N).collect::<Vec<_>>());
    }
    // The job's progress survived too: its last step is known.
    wait_until(Duration::from_secs(10), "job progress", || {
        c.get("/api/v1/jobs").is_some_and(|j| j[0]["step"] == N)
    });
}
