//! The persister: writes feed rows, incidents and the ledger to the store in
//! batches, and checkpoints and node roles in order, off the state task.

use super::ControllerStats;
use crate::store::{FeedRow, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use vigil_core::cluster::CheckpointState;
use vigil_core::incident::Incident;
use vigil_core::ledger::{Cursor, LedgerRow};
use vigil_core::{JobId, NodeId};

/// One write for the persister.
pub(super) enum Persist {
    Feed(FeedRow),
    Incident(Box<Incident>),
    Ledger(Vec<LedgerRow>, Vec<Cursor>),
    Checkpoint(JobId, Box<CheckpointState>),
    NodeRole(NodeId, Option<JobId>, bool),
}

impl Persist {
    /// What is written, for log lines.
    pub(super) fn what(&self) -> &'static str {
        match self {
            Persist::Feed(_) => "feed event",
            Persist::Incident(_) => "incident",
            Persist::Ledger(..) => "ledger",
            Persist::Checkpoint(..) => "checkpoint",
            Persist::NodeRole(..) => "node role",
        }
    }
}

/// Feed rows plus incidents after which a batch is written.
const BATCH: usize = 512;

/// Starts the persister; it stops when every sender is gone.
pub(super) fn spawn(store: Store, stats: Arc<ControllerStats>) -> mpsc::Sender<Persist> {
    let (tx, rx) = mpsc::channel(65_536);
    tokio::spawn(Persister::new(store, stats).run(rx));
    tx
}

/// The writes of one batch; the newest of each incident, ledger row and
/// cursor wins.
struct Persister {
    store: Store,
    stats: Arc<ControllerStats>,
    feed: Vec<FeedRow>,
    incidents: Vec<Incident>,
    ledger: BTreeMap<String, LedgerRow>,
    cursors: BTreeMap<String, Cursor>,
}

impl Persister {
    fn new(store: Store, stats: Arc<ControllerStats>) -> Self {
        Persister {
            store,
            stats,
            feed: Vec::new(),
            incidents: Vec::new(),
            ledger: BTreeMap::new(),
            cursors: BTreeMap::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Persist>) {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(p) = next {
                self.take(p).await;
                if self.feed.len() + self.incidents.len() >= BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.flush().await;
        }
    }

    /// Adds a write to the batch; checkpoints and node roles are written at
    /// once, in order.
    async fn take(&mut self, p: Persist) {
        match p {
            Persist::Feed(f) => self.feed.push(f),
            Persist::Incident(i) => {
                self.incidents.retain(|x| x.id != i.id);
                self.incidents.push(*i);
            }
            Persist::Ledger(rows, cs) => {
                // Absolute values: the newest of each row wins.
                for r in rows {
                    let key = format!("{}|{}|{:?}|{:?}", r.job, r.bucket_ms, r.category, r.culprit);
                    self.ledger.insert(key, r);
                }
                for c in cs {
                    self.cursors.insert(c.job.to_string(), c);
                }
            }
            Persist::Checkpoint(job, c) => {
                if let Err(e) = self.store.save_checkpoint(&job, &c).await {
                    self.count_error();
                    tracing::error!(%job, error = %e, "cannot store the checkpoint");
                }
            }
            Persist::NodeRole(node, job, spare) => {
                if let Err(e) = self.store.set_node_role(&node, job.as_ref(), spare).await {
                    self.count_error();
                    tracing::error!(%node, error = %e, "cannot store the node's role");
                }
            }
        }
    }

    /// Writes the batch: incidents, then the feed, then the ledger.
    async fn flush(&mut self) {
        let r = self.store.save_incidents(&self.incidents).await;
        self.check(r, "cannot persist incidents");
        let r = self.store.append_feed(&self.feed).await;
        self.check(r, "cannot persist the feed");
        let rows: Vec<LedgerRow> = std::mem::take(&mut self.ledger).into_values().collect();
        let cs: Vec<Cursor> = std::mem::take(&mut self.cursors).into_values().collect();
        let r = self.store.save_ledger(&rows, &cs).await;
        self.check(r, "cannot persist the ledger");
        self.feed.clear();
        self.incidents.clear();
    }

    /// Logs and counts a failed write.
    fn check(&self, r: Result<(), crate::store::StoreError>, what: &str) {
        if let Err(e) = r {
            self.count_error();
            tracing::error!(error = %e, "{what}");
        }
    }

    fn count_error(&self) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
    }
}
