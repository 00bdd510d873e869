//! Carrying out the effects the core returns: publish a feed event, write a
//! recovery ahead of its orders, hand a row to the persister, send a worker
//! order or quarantine command on a node's stream, queue an action request
//! for the back-ends.
//!
//! This is the one place in the controller that matches on the core's
//! [`Effect`].

use super::persist::Persist;
use super::{FeedEvent, Msg, StateTask};
use crate::actions::Executor;
use crate::store::FeedRow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use vigil_core::cluster::{ActionRequest, Effect, WorkerCommand};
use vigil_core::incident::{Incident, IncidentChange};
use vigil_core::{Millis, NodeId};
use vigil_proto::codec::controller::{Command, ControllerMsg, Order};
use vigil_proto::v1 as pb;

/// Feed events kept in memory for new subscribers.
const RECENT: usize = 10_000;

/// An action request and the incident it is about, for the back-ends.
pub(super) type ActionJob = (ActionRequest, Option<Incident>);

/// Carries out action requests one at a time, in the order the core made
/// them (a drain before a requeue), and reports each result on the feed.
pub(super) fn spawn_actions(
    exec: Executor,
    state: mpsc::WeakSender<Msg>,
) -> mpsc::Sender<ActionJob> {
    let (tx, mut rx) = mpsc::channel::<ActionJob>(1024);
    tokio::spawn(async move {
        while let Some((req, incident)) = rx.recv().await {
            for (kind, data) in exec.run(req, incident).await {
                let Some(tx) = state.upgrade() else { return };
                if tx.send(Msg::Feed { kind, data }).await.is_err() {
                    return;
                }
            }
        }
    });
    tx
}

impl StateTask {
    /// Carries out `fx` in order.
    pub(super) async fn effects(&mut self, fx: Vec<Effect>) {
        let now = crate::now_ms();
        let mut abort_after = false;
        for e in fx {
            match e {
                Effect::Feed(ev) => self.publish(ev.kind(), ev.data(), now).await,
                Effect::Recovery(r) => {
                    // Write ahead: the orders that follow are sent only once
                    // the recovery that implies them is on disk.
                    if let Err(e) = self.store.save_recovery(&r).await {
                        self.store_error();
                        tracing::error!(job = %r.job, error = %e, "cannot persist the recovery");
                    }
                }
                Effect::RecoveryDone(job) => {
                    if let Err(e) = self.store.delete_recovery(&job).await {
                        self.store_error();
                        tracing::error!(%job, error = %e, "cannot forget the recovery");
                    }
                }
                Effect::Action(req) => self.act(*req),
                // Stored by the persister, in order, off the state task: a
                // restore names its checkpoint in its own write-ahead record.
                Effect::Checkpoint { job, state } => {
                    self.persist(Persist::Checkpoint(job, Box::new(state)))
                        .await
                }
                Effect::NodeRole { node, job, spare } => {
                    self.persist(Persist::NodeRole(node, job, spare)).await
                }
                Effect::Ledger { rows, cursors } => {
                    self.persist(Persist::Ledger(rows, cursors)).await
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
                    abort_after |= self.worker_order(&node, command)
                }
                Effect::Quarantine { node, card, reason } => {
                    self.command(&node, Order::Quarantine { card, reason });
                }
                Effect::Incident(inc, change) => self.incident(inc, change, now).await,
            }
        }
        if abort_after {
            tracing::error!(failpoint = ?self.failpoint, "failpoint reached; aborting");
            // Let the orders reach the agents' sockets first.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            std::process::abort();
        }
    }

    /// Publishes and stores an incident; the feed kind says whether it was
    /// opened, updated or resolved.
    async fn incident(&mut self, inc: Box<Incident>, change: IncidentChange, now: Millis) {
        let kind = change.kind();
        let data = match serde_json::to_value(&*inc) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(incident = %inc.id, error = %e, "cannot encode the incident for the feed");
                serde_json::Value::Null
            }
        };
        self.persist(Persist::Incident(inc)).await;
        self.publish(kind, data, now).await;
    }

    /// Sends a worker order on the node's stream; true when the failpoint
    /// asks to abort after it.
    fn worker_order(&mut self, node: &NodeId, command: WorkerCommand) -> bool {
        let fail_here = matches!(
            (&command, self.failpoint.as_deref()),
            (WorkerCommand::Stop { .. }, Some("after_stop_orders"))
                | (WorkerCommand::Start { .. }, Some("after_start_orders"))
        );
        if !self.agents.contains_key(node) {
            tracing::warn!(%node, "no stream to send a worker order on");
        }
        self.command(node, Order::Worker(command));
        fail_here
    }

    /// Sends a numbered command on the node's stream, if it has one.
    fn command(&mut self, node: &NodeId, order: Order) {
        self.next_command += 1;
        let cmd = pb::ControllerMessage::from(ControllerMsg::Command(Command {
            id: self.next_command,
            order: Some(order),
        }));
        if let Some((_, tx)) = self.agents.get(node)
            && let Err(e) = tx.try_send(Ok(cmd))
        {
            tracing::warn!(%node, error = %e, "cannot queue a command on the node's stream");
        }
    }

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

    /// Hands a write to the persister.
    async fn persist(&self, p: Persist) {
        let what = p.what();
        if self.persist.send(p).await.is_err() {
            self.store_error();
            tracing::error!("the persister is gone; {what} not stored");
        }
    }

    fn store_error(&self) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Numbers a feed event, stores it, keeps it among the recent ones and
    /// sends it to live subscribers.
    pub(super) async fn publish(&mut self, kind: &str, data: serde_json::Value, now: Millis) {
        self.feed_seq += 1;
        self.stats.feed_seq.store(self.feed_seq, Ordering::Relaxed);
        let ev = Arc::new(FeedEvent {
            seq: self.feed_seq,
            at: vigil_core::Timestamp(now),
            kind: kind.to_owned(),
            data: data.clone(),
        });
        self.persist(Persist::Feed(FeedRow {
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
        // No receiver is not an error: nobody is watching.
        let _ = self.live.send(ev);
    }
}
