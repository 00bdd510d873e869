//! The task that owns cluster state.
//!
//! gRPC and HTTP handlers never touch [`Cluster`] directly: they send
//! messages to this one task, which applies them in order with the current
//! time, and then carries out the effects (acknowledge a heartbeat, persist
//! an incident, publish a feed event). Reads are closures run inside the
//! task, so there are no locks around cluster state.

use crate::actions::{ActionsConfig, Executor};
use crate::store::{FeedRow, Store};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;
use vigil_core::cluster::{ActionRequest, Cluster, Effect, Input, Registration};
use vigil_core::incident::Incident;
use vigil_core::ledger::{Cursor, LedgerRow};
use vigil_core::model::{AgentEvent, Heartbeat};
use vigil_core::{JobId, Millis, NodeId};
use vigil_proto::v1 as pb;

/// The sending half of an agent's response stream.
pub type AgentTx = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// One event of the live feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedEvent {
    pub seq: u64,
    pub at: vigil_core::Timestamp,
    pub kind: String,
    pub data: serde_json::Value,
}

impl From<FeedRow> for FeedEvent {
    fn from(r: FeedRow) -> Self {
        FeedEvent {
            seq: r.seq,
            at: vigil_core::Timestamp(r.at_ms),
            kind: r.kind,
            data: r.data,
        }
    }
}

/// Counters about the controller itself.
#[derive(Debug, Default)]
pub struct ControllerStats {
    pub streams: AtomicU64,
    pub heartbeats: AtomicU64,
    pub events: AtomicU64,
    pub duplicate_events: AtomicU64,
    pub rejected: AtomicU64,
    /// Sequence number of the newest feed event.
    pub feed_seq: AtomicU64,
}

type QueryFn = Box<dyn FnOnce(&Cluster) + Send>;

enum Msg {
    Attach {
        conn: u64,
        tx: AgentTx,
        reg: Registration,
    },
    Heartbeat {
        node: NodeId,
        heartbeat: Heartbeat,
    },
    Events {
        node: NodeId,
        events: Vec<AgentEvent>,
    },
    Disconnected {
        node: NodeId,
        boot_id: String,
        conn: u64,
    },
    Feed {
        kind: &'static str,
        data: serde_json::Value,
    },
    Query(QueryFn),
    Subscribe(oneshot::Sender<Subscription>),
    Operator(Input, oneshot::Sender<Result<(), String>>),
}

/// A feed subscription: recent events then live ones.
#[derive(Debug)]
pub struct Subscription {
    /// The retained recent events, oldest first.
    pub recent: Vec<Arc<FeedEvent>>,
    /// Live events after `recent`.
    pub live: broadcast::Receiver<Arc<FeedEvent>>,
}

/// Handle to the state task.
#[derive(Clone, Debug)]
pub struct StateHandle {
    tx: mpsc::Sender<Msg>,
    pub stats: Arc<ControllerStats>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Feed events kept in memory for new subscribers.
const RECENT: usize = 10_000;

impl StateHandle {
    async fn send(&self, m: Msg) -> bool {
        self.tx.send(m).await.is_ok()
    }

    /// A node's stream is open and registered.
    pub async fn attach(&self, conn: u64, reg: Registration, tx: AgentTx) -> bool {
        self.send(Msg::Attach { conn, tx, reg }).await
    }

    pub async fn heartbeat(&self, node: NodeId, heartbeat: Heartbeat) -> bool {
        self.send(Msg::Heartbeat { node, heartbeat }).await
    }

    /// Events already stored durably.
    pub async fn events(&self, node: NodeId, events: Vec<AgentEvent>) -> bool {
        self.send(Msg::Events { node, events }).await
    }

    /// Stream `conn` of a node ended.
    pub async fn disconnected(&self, node: NodeId, boot_id: String, conn: u64) {
        self.send(Msg::Disconnected {
            node,
            boot_id,
            conn,
        })
        .await;
    }

    /// Publishes a feed event that did not come from cluster state.
    pub async fn feed(&self, kind: &'static str, data: serde_json::Value) {
        self.send(Msg::Feed { kind, data }).await;
    }

    /// Runs `f` on the cluster state and returns its result.
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Cluster) -> R + Send + 'static,
    ) -> Option<R> {
        let (otx, orx) = oneshot::channel();
        let q: QueryFn = Box::new(move |c| {
            let _ = otx.send(f(c));
        });
        if !self.send(Msg::Query(q)).await {
            return None;
        }
        orx.await.ok()
    }

    /// An operator's cordon or uncordon; the error says why it was refused.
    pub async fn operator(&self, input: Input) -> Result<(), String> {
        let (otx, orx) = oneshot::channel();
        if !self.send(Msg::Operator(input, otx)).await {
            return Err("controller is shutting down".to_owned());
        }
        orx.await
            .unwrap_or_else(|_| Err("controller is shutting down".to_owned()))
    }

    /// Messages waiting for the state task, and the queue's capacity.
    pub fn queue_depth(&self) -> (usize, usize) {
        let max = self.tx.max_capacity();
        (max.saturating_sub(self.tx.capacity()), max)
    }

    pub async fn subscribe(&self) -> Option<Subscription> {
        let (otx, orx) = oneshot::channel();
        if !self.send(Msg::Subscribe(otx)).await {
            return None;
        }
        orx.await.ok()
    }
}

enum Persist {
    Feed(FeedRow),
    Incident(Box<Incident>),
    Ledger(Vec<LedgerRow>, Vec<Cursor>),
    Checkpoint(JobId, Box<vigil_core::cluster::CheckpointState>),
    NodeRole(NodeId, Option<JobId>, bool),
}

/// Starts the state task over `cluster` (already restored from the store).
pub fn spawn(cluster: Cluster, store: Store, feed_seq: u64, actions: ActionsConfig) -> StateHandle {
    let failpoint = std::env::var("VIGIL_FAILPOINT").ok();
    let sync_store = store.clone();
    let (tx, rx) = mpsc::channel(16_384);
    let (ptx, prx) = mpsc::channel(65_536);
    let stats = Arc::new(ControllerStats::default());
    stats.feed_seq.store(feed_seq, Ordering::Relaxed);
    tokio::spawn(persister(store, prx));
    let (live, _) = broadcast::channel(4096);
    let task = StateTask {
        cluster,
        agents: HashMap::new(),
        recent: VecDeque::new(),
        live,
        feed_seq,
        persist: ptx,
        stats: stats.clone(),
        next_command: 0,
        store: sync_store,
        failpoint,
        shadow: actions.shadow,
        actions: (actions.shadow || actions.any_backend())
            .then(|| spawn_actions(Executor::new(actions), tx.downgrade())),
    };
    tokio::spawn(task.run(rx));
    StateHandle { tx, stats }
}

struct StateTask {
    cluster: Cluster,
    agents: HashMap<NodeId, (u64, AgentTx)>,
    recent: VecDeque<Arc<FeedEvent>>,
    live: broadcast::Sender<Arc<FeedEvent>>,
    feed_seq: u64,
    persist: mpsc::Sender<Persist>,
    stats: Arc<ControllerStats>,
    next_command: u64,
    /// For writes that must land before the next effect (write-ahead).
    store: Store,
    /// Test hook: `after_stop_orders` or `after_start_orders` aborts the
    /// process right after sending such orders.
    failpoint: Option<String>,
    /// Shadow mode: orders and back-end steps are published, not carried out.
    shadow: bool,
    /// Queue of the action back-ends, if any are configured (or shadow
    /// mode is on).
    actions: Option<mpsc::Sender<ActionJob>>,
}

type ActionJob = (ActionRequest, Option<Incident>);

/// Carries out action requests one at a time, in the order the core made
/// them (a drain before a requeue), and reports each result on the feed.
fn spawn_actions(exec: Executor, state: mpsc::WeakSender<Msg>) -> mpsc::Sender<ActionJob> {
    let (tx, mut rx) = mpsc::channel::<ActionJob>(1024);
    tokio::spawn(async move {
        while let Some((req, incident)) = rx.recv().await {
            for (kind, data) in exec.run(req, incident).await {
                let Some(tx) = state.upgrade() else { return };
                let _ = tx.send(Msg::Feed { kind, data }).await;
            }
        }
    });
    tx
}

impl StateTask {
    /// Hands an action request to the back-ends, off the state task.
    fn act(&self, req: ActionRequest) {
        let Some(q) = &self.actions else { return };
        let incident = req
            .incident
            .and_then(|id| self.cluster.incident(id).cloned());
        if q.try_send((req, incident)).is_err() {
            tracing::error!("action queue full; request dropped");
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let tick_ms = self.cluster.config().liveness.tick_ms();
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.handle(m).await,
                    None => return,
                },
                _ = tick.tick() => {
                    let fx = self.cluster.apply(Input::Tick, crate::now_ms()).unwrap_or_default();
                    self.effects(fx).await;
                }
            }
        }
    }

    async fn handle(&mut self, m: Msg) {
        let now = crate::now_ms();
        match m {
            Msg::Attach { conn, tx, reg } => {
                self.stats.streams.fetch_add(1, Ordering::Relaxed);
                self.agents.insert(reg.node.clone(), (conn, tx));
                let fx = self
                    .cluster
                    .apply(Input::Register(reg), now)
                    .unwrap_or_default();
                self.effects(fx).await;
            }
            Msg::Heartbeat { node, heartbeat } => {
                let seq = heartbeat.seq;
                match self.cluster.apply(
                    Input::Heartbeat {
                        node: node.clone(),
                        heartbeat,
                    },
                    now,
                ) {
                    Ok(fx) => {
                        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        if let Some((_, tx)) = self.agents.get(&node) {
                            let _ = tx.try_send(Ok(ack(0, seq)));
                        }
                        self.effects(fx).await;
                    }
                    Err(e) => self.reject(&node, e.to_string()),
                }
            }
            Msg::Events { node, events } => {
                for event in events {
                    self.stats.events.fetch_add(1, Ordering::Relaxed);
                    match self.cluster.apply(
                        Input::Event {
                            node: node.clone(),
                            event,
                        },
                        now,
                    ) {
                        Ok(fx) => self.effects(fx).await,
                        Err(e) => {
                            tracing::warn!(%node, error = %e, "event refused by cluster state");
                        }
                    }
                }
            }
            Msg::Disconnected {
                node,
                boot_id,
                conn,
            } => {
                self.stats.streams.fetch_sub(1, Ordering::Relaxed);
                // Only the node's current stream counts; an older one may
                // close after the agent has already reconnected.
                if self.agents.get(&node).is_none_or(|(c, _)| *c != conn) {
                    return;
                }
                self.agents.remove(&node);
                let fx = self
                    .cluster
                    .apply(Input::Disconnected { node, boot_id }, now)
                    .unwrap_or_default();
                self.effects(fx).await;
            }
            Msg::Feed { kind, data } => self.publish(kind, data, now).await,
            Msg::Query(f) => f(&self.cluster),
            Msg::Operator(input, reply) => match self.cluster.apply(input, now) {
                Ok(fx) => {
                    self.effects(fx).await;
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            },
            Msg::Subscribe(reply) => {
                let _ = reply.send(Subscription {
                    recent: self.recent.iter().cloned().collect(),
                    live: self.live.subscribe(),
                });
            }
        }
    }

    fn reject(&mut self, node: &NodeId, reason: String) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%node, %reason, "closing agent stream");
        if let Some((_, tx)) = self.agents.remove(node) {
            let _ = tx.try_send(Err(Status::invalid_argument(reason)));
        }
    }

    async fn effects(&mut self, fx: Vec<Effect>) {
        let now = crate::now_ms();
        let mut abort_after = false;
        for e in fx {
            match e {
                Effect::Feed(ev) => self.publish(ev.kind(), ev.data(), now).await,
                Effect::Recovery(r) => {
                    // Write ahead: the orders that follow are sent only once
                    // the recovery that implies them is on disk.
                    if let Err(e) = self.store.save_recovery(&r).await {
                        tracing::error!(job = %r.job, error = %e, "cannot persist the recovery");
                    }
                }
                Effect::RecoveryDone(job) => {
                    if let Err(e) = self.store.delete_recovery(&job).await {
                        tracing::error!(%job, error = %e, "cannot forget the recovery");
                    }
                }
                Effect::Action(req) => self.act(*req),
                // Stored by the persister, in order, off the state task: a
                // restore names its checkpoint in its own write-ahead record.
                Effect::Checkpoint { job, state } => {
                    if self
                        .persist
                        .send(Persist::Checkpoint(job, Box::new(state)))
                        .await
                        .is_err()
                    {
                        tracing::error!("the persister is gone; checkpoint not stored");
                    }
                }
                Effect::NodeRole { node, job, spare } => {
                    if self
                        .persist
                        .send(Persist::NodeRole(node, job, spare))
                        .await
                        .is_err()
                    {
                        tracing::error!("the persister is gone; node role not stored");
                    }
                }
                Effect::Ledger { rows, cursors } => {
                    if self
                        .persist
                        .send(Persist::Ledger(rows, cursors))
                        .await
                        .is_err()
                    {
                        tracing::error!("the persister is gone; ledger not stored");
                    }
                }
                Effect::Worker { node, command } if self.shadow => {
                    let data = serde_json::json!({ "action": "worker_order", "node": node, "order": format!("{command:?}") });
                    self.publish("action_shadow", data, now).await;
                }
                Effect::Quarantine { node, card, reason } if self.shadow => {
                    let data = serde_json::json!({ "action": "quarantine_command", "node": node, "card": card, "reason": reason });
                    self.publish("action_shadow", data, now).await;
                }
                Effect::Worker { node, command } => {
                    use vigil_core::cluster::WorkerCommand as W;
                    let fail_here = matches!(
                        (&command, self.failpoint.as_deref()),
                        (W::Stop { .. }, Some("after_stop_orders"))
                            | (W::Start { .. }, Some("after_start_orders"))
                    );
                    self.next_command += 1;
                    let body = match command {
                        vigil_core::cluster::WorkerCommand::Stop { grace_s } => {
                            pb::command::Body::StopWorkers(pb::StopWorkers { grace_s })
                        }
                        vigil_core::cluster::WorkerCommand::Start {
                            resume_from,
                            restart_count,
                            replaces,
                        } => pb::command::Body::StartWorkers(pb::StartWorkers {
                            resume_from,
                            restart_count,
                            replaces,
                        }),
                    };
                    let cmd = pb::ControllerMessage {
                        body: Some(pb::controller_message::Body::Command(pb::Command {
                            id: self.next_command,
                            body: Some(body),
                        })),
                    };
                    match self.agents.get(&node) {
                        Some((_, tx)) => {
                            let _ = tx.try_send(Ok(cmd));
                        }
                        None => tracing::warn!(%node, "no stream to send a worker order on"),
                    }
                    abort_after |= fail_here;
                }
                Effect::Quarantine { node, card, reason } => {
                    self.next_command += 1;
                    let cmd = pb::ControllerMessage {
                        body: Some(pb::controller_message::Body::Command(pb::Command {
                            id: self.next_command,
                            body: Some(pb::command::Body::Quarantine(pb::Quarantine {
                                card,
                                reason,
                            })),
                        })),
                    };
                    if let Some((_, tx)) = self.agents.get(&node) {
                        let _ = tx.try_send(Ok(cmd));
                    }
                }
                Effect::Incident(inc, change) => {
                    let kind = change.kind();
                    let data = serde_json::to_value(&*inc).unwrap_or_default();
                    let _ = self.persist.send(Persist::Incident(inc)).await;
                    self.publish(kind, data, now).await;
                }
            }
        }
        if abort_after {
            tracing::error!(failpoint = ?self.failpoint, "failpoint reached; aborting");
            // Let the orders reach the agents' sockets first.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            std::process::abort();
        }
    }

    async fn publish(&mut self, kind: &str, data: serde_json::Value, now: Millis) {
        self.feed_seq += 1;
        self.stats.feed_seq.store(self.feed_seq, Ordering::Relaxed);
        let ev = Arc::new(FeedEvent {
            seq: self.feed_seq,
            at: vigil_core::Timestamp(now),
            kind: kind.to_owned(),
            data: data.clone(),
        });
        let _ = self
            .persist
            .send(Persist::Feed(FeedRow {
                seq: ev.seq,
                at_ms: now,
                kind: ev.kind.clone(),
                data,
            }))
            .await;
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(ev.clone());
        let _ = self.live.send(ev);
    }
}

fn ack(event_seq: u64, heartbeat_seq: u64) -> pb::ControllerMessage {
    pb::ControllerMessage {
        body: Some(pb::controller_message::Body::Ack(pb::Ack {
            event_seq,
            heartbeat_seq,
        })),
    }
}

/// Acknowledges stored events up to `seq`.
pub fn event_ack(seq: u64) -> pb::ControllerMessage {
    ack(seq, 0)
}

/// Writes feed events and incidents in batches, off the state task.
async fn persister(store: Store, mut rx: mpsc::Receiver<Persist>) {
    let mut feed = Vec::new();
    let mut incidents: Vec<Incident> = Vec::new();
    let mut ledger: std::collections::BTreeMap<String, LedgerRow> = Default::default();
    let mut cursors: std::collections::BTreeMap<String, Cursor> = Default::default();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(p) = next {
            match p {
                Persist::Feed(f) => feed.push(f),
                Persist::Incident(i) => {
                    incidents.retain(|x| x.id != i.id);
                    incidents.push(*i);
                }
                Persist::Ledger(rows, cs) => {
                    // Absolute values: the newest of each row wins.
                    for r in rows {
                        let key =
                            format!("{}|{}|{:?}|{:?}", r.job, r.bucket_ms, r.category, r.culprit);
                        ledger.insert(key, r);
                    }
                    for c in cs {
                        cursors.insert(c.job.to_string(), c);
                    }
                }
                Persist::Checkpoint(job, c) => {
                    if let Err(e) = store.save_checkpoint(&job, &c).await {
                        tracing::error!(%job, error = %e, "cannot store the checkpoint");
                    }
                }
                Persist::NodeRole(node, job, spare) => {
                    if let Err(e) = store.set_node_role(&node, job.as_ref(), spare).await {
                        tracing::error!(%node, error = %e, "cannot store the node's role");
                    }
                }
            }
            if feed.len() + incidents.len() >= 512 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = store.save_incidents(&incidents).await {
            tracing::error!(error = %e, "cannot persist incidents");
        }
        if let Err(e) = store.append_feed(&feed).await {
            tracing::error!(error = %e, "cannot persist the feed");
        }
        let rows: Vec<LedgerRow> = std::mem::take(&mut ledger).into_values().collect();
        let cs: Vec<Cursor> = std::mem::take(&mut cursors).into_values().collect();
        if let Err(e) = store.save_ledger(&rows, &cs).await {
            tracing::error!(error = %e, "cannot persist the ledger");
        }
        feed.clear();
        incidents.clear();
    }
}
