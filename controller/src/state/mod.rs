//! The task that owns cluster state.
//!
//! gRPC and HTTP handlers never touch [`Cluster`] directly: they send
//! messages to this one task, which applies them in order with the current
//! time, and then carries out the effects (acknowledge a heartbeat, persist
//! an incident, publish a feed event). Reads are closures run inside the
//! task, so there are no locks around cluster state.
//!
//! - this file: the messages, [`StateHandle`], and the task's inbox loop and
//!   clock tick.
//! - `effects.rs`: carrying out the core's effects (the one place that
//!   matches on them), publishing feed events, the action queue.
//! - `persist.rs`: the persister, which writes feed rows, incidents, the
//!   ledger, checkpoints and node roles off the task.

mod effects;
mod persist;

use crate::actions::{ActionsConfig, Executor};
pub use crate::feed::{FeedEvent, Subscription};
use crate::store::Store;
use effects::ActionJob;
use persist::Persist;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;
use vigil_core::cluster::{Cluster, Input, Registration};
use vigil_core::model::{AgentEvent, Heartbeat};
use vigil_core::{Millis, NodeId};
use vigil_proto::codec::controller::Ack;
use vigil_proto::v1 as pb;

/// The sending half of an agent's response stream.
pub type AgentTx = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

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
    /// Store reads and writes that failed.
    pub store_errors: AtomicU64,
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

/// Starts the state task over `cluster` (already restored from the store).
pub fn spawn(cluster: Cluster, store: Store, feed_seq: u64, actions: ActionsConfig) -> StateHandle {
    let failpoint = std::env::var("VIGIL_FAILPOINT").ok();
    let (tx, rx) = mpsc::channel(16_384);
    let stats = Arc::new(ControllerStats::default());
    stats.feed_seq.store(feed_seq, Ordering::Relaxed);
    let persist = persist::spawn(store.clone(), stats.clone());
    let (live, _) = broadcast::channel(4096);
    let task = StateTask {
        cluster,
        agents: HashMap::new(),
        recent: VecDeque::new(),
        live,
        feed_seq,
        persist,
        stats: stats.clone(),
        next_command: 0,
        store,
        failpoint,
        shadow: actions.shadow,
        actions: (actions.shadow || actions.any_backend())
            .then(|| effects::spawn_actions(Executor::new(actions), tx.downgrade())),
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

impl StateTask {
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
                _ = tick.tick() => self.apply_or_warn(Input::Tick, crate::now_ms()).await,
            }
        }
    }

    async fn handle(&mut self, m: Msg) {
        let now = crate::now_ms();
        match m {
            Msg::Attach { conn, tx, reg } => {
                self.stats.streams.fetch_add(1, Ordering::Relaxed);
                self.agents.insert(reg.node.clone(), (conn, tx));
                self.apply_or_warn(Input::Register(reg), now).await;
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
                self.apply_or_warn(Input::Disconnected { node, boot_id }, now)
                    .await;
            }
            Msg::Feed { kind, data } => self.publish(kind, data, now).await,
            Msg::Query(f) => f(&self.cluster),
            Msg::Operator(input, reply) => {
                let r = match self.cluster.apply(input, now) {
                    Ok(fx) => {
                        self.effects(fx).await;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                // The operator's request may have given up waiting.
                let _ = reply.send(r);
            }
            Msg::Subscribe(reply) => {
                // The subscriber may have gone away.
                let _ = reply.send(Subscription {
                    recent: self.recent.iter().cloned().collect(),
                    live: self.live.subscribe(),
                });
            }
        }
    }

    /// Applies an input the cluster state does not refuse in practice
    /// (register, disconnect, tick); a refusal is logged and dropped.
    async fn apply_or_warn(&mut self, input: Input, now: Millis) {
        let what = input_name(&input);
        match self.cluster.apply(input, now) {
            Ok(fx) => self.effects(fx).await,
            Err(e) => tracing::warn!(input = what, error = %e, "input refused by cluster state"),
        }
    }

    fn reject(&mut self, node: &NodeId, reason: String) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%node, %reason, "closing agent stream");
        if let Some((_, tx)) = self.agents.remove(node) {
            let _ = tx.try_send(Err(Status::invalid_argument(reason)));
        }
    }
}

/// The name of an input, for log lines.
fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Register(_) => "register",
        Input::Disconnected { .. } => "disconnected",
        Input::Tick => "tick",
        _ => "other",
    }
}

fn ack(event_seq: u64, heartbeat_seq: u64) -> pb::ControllerMessage {
    pb::ControllerMessage::from(Ack {
        event_seq,
        heartbeat_seq,
    })
}

/// Acknowledges stored events up to `seq`.
pub fn event_ack(seq: u64) -> pb::ControllerMessage {
    ack(seq, 0)
}
