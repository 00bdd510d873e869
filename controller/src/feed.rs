//! The live feed, as both the HTTP SSE endpoint (`/api/v1/events`) and gRPC
//! `ReadService.Watch` serve it: stored history, the state task's recent
//! events, then live events, without gaps or repeats.

use crate::state::StateHandle;
use crate::store::{FeedRow, Store, StoreError};
use futures_util::Stream;
use serde::Serialize;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::broadcast;
use vigil_core::Timestamp;

/// One event of the live feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedEvent {
    pub seq: u64,
    pub at: Timestamp,
    pub kind: String,
    pub data: serde_json::Value,
}

impl From<FeedRow> for FeedEvent {
    fn from(r: FeedRow) -> Self {
        FeedEvent {
            seq: r.seq,
            at: Timestamp(r.at_ms),
            kind: r.kind,
            data: r.data,
        }
    }
}

/// A feed subscription: recent events then live ones.
#[derive(Debug)]
pub struct Subscription {
    /// The retained recent events, oldest first.
    pub recent: Vec<Arc<FeedEvent>>,
    /// Live events after `recent`.
    pub live: broadcast::Receiver<Arc<FeedEvent>>,
}

/// One item of a feed stream.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Event(Arc<FeedEvent>),
    /// The consumer fell behind and this many events were skipped.
    Dropped(u64),
}

/// Why a feed stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The stored history could not be read; going on would leave a gap.
    #[error("cannot read the stored feed: {0}")]
    Store(#[from] StoreError),
}

/// Stored rows read at a time.
const PAGE: u32 = 1000;

/// Where a feed stream is.
struct Cursor {
    store: Store,
    state: StateHandle,
    /// Stored rows after this sequence number are still to be read; `None`
    /// once the stored history is done.
    stored_after: Option<u64>,
    /// The first retained recent event: stored rows from here on are not
    /// read (`u64::MAX` when there are none).
    cutoff: u64,
    /// Events ready to send.
    ready: VecDeque<Arc<FeedEvent>>,
    /// The retained recent events, sent once the stored history is done.
    recent: Option<Vec<Arc<FeedEvent>>>,
    live: broadcast::Receiver<Arc<FeedEvent>>,
    /// The newest sequence number sent.
    last: u64,
    failed: bool,
}

/// The feed from `after`: stored history (read a page at a time), retained
/// recent events, then live events, without gaps or repeats. `None` when the
/// state task is gone. A store error ends the stream with that error, logged
/// at warn and counted.
pub async fn stream(
    state: StateHandle,
    store: Store,
    after: u64,
) -> Option<impl Stream<Item = Result<FeedItem, FeedError>> + Send + 'static> {
    let sub = state.subscribe().await?;
    let cutoff = sub.recent.first().map_or(u64::MAX, |e| e.seq);
    let cursor = Cursor {
        store,
        state,
        // Nothing stored to read when the recent events follow `after`.
        stored_after: (after.saturating_add(1) < cutoff).then_some(after),
        cutoff,
        ready: VecDeque::new(),
        recent: Some(sub.recent),
        live: sub.live,
        last: after,
        failed: false,
    };
    Some(futures_util::stream::unfold(cursor, |mut c| async move {
        let item = c.next().await?;
        Some((item, c))
    }))
}

impl Cursor {
    async fn next(&mut self) -> Option<Result<FeedItem, FeedError>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(e) = self.ready.pop_front() {
                self.last = e.seq;
                return Some(Ok(FeedItem::Event(e)));
            }
            if let Some(after) = self.stored_after {
                if let Err(e) = self.read_page(after).await {
                    self.failed = true;
                    self.state
                        .stats
                        .store_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "feed stream ended: the stored feed cannot be read");
                    return Some(Err(e));
                }
                continue;
            }
            if let Some(recent) = self.recent.take() {
                let last = self.last;
                self.ready
                    .extend(recent.into_iter().filter(|e| e.seq > last));
                continue;
            }
            return self.live().await;
        }
    }

    /// Reads the next page of stored history into `ready`; when the page is
    /// the last one, or reaches the recent events, the history is done.
    async fn read_page(&mut self, after: u64) -> Result<(), FeedError> {
        let rows = self.store.feed_after(after, PAGE).await?;
        let full = rows.len() == PAGE as usize;
        self.stored_after = None;
        for r in rows {
            if r.seq >= self.cutoff {
                self.stored_after = None;
                return Ok(());
            }
            self.stored_after = Some(r.seq);
            self.ready.push_back(Arc::new(FeedEvent::from(r)));
        }
        if !full {
            self.stored_after = None;
        }
        Ok(())
    }

    /// The next live event after `last`.
    async fn live(&mut self) -> Option<Result<FeedItem, FeedError>> {
        loop {
            match self.live.recv().await {
                Ok(e) if e.seq > self.last => {
                    self.last = e.seq;
                    return Some(Ok(FeedItem::Event(e)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some(Ok(FeedItem::Dropped(n)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Incidents a snapshot carries, newest first.
const SNAPSHOT_INCIDENTS: usize = 500;

/// The current state as one feed event whose `seq` is the newest feed event
/// it reflects: nodes, jobs and the newest incidents, taken in one step of
/// the state task, so the deltas after `seq` continue it exactly.
pub async fn snapshot(state: &StateHandle) -> Option<FeedEvent> {
    let stats = state.stats.clone();
    state
        .query(move |c| {
            let seq = stats.feed_seq.load(Ordering::Relaxed);
            FeedEvent {
                seq,
                at: Timestamp(crate::now_ms()),
                kind: "snapshot".to_owned(),
                data: json!({
                    "nodes": c.nodes().collect::<Vec<_>>(),
                    "jobs": c.jobs().collect::<Vec<_>>(),
                    "incidents": c.incidents().rev().take(SNAPSHOT_INCIDENTS).collect::<Vec<_>>(),
                }),
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn setup(name: &str) -> (StateHandle, Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("vigil-feed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = format!("sqlite://{}/vigil.db", dir.display());
        let store = Store::open(&url).await.expect("store");
        let cluster = vigil_core::cluster::Cluster::new(Default::default());
        let state = crate::state::spawn(cluster, store.clone(), 0, Default::default());
        (state, store, dir)
    }

    fn row(seq: u64) -> FeedRow {
        FeedRow {
            seq,
            at_ms: 1000 + seq as i64,
            kind: "test".to_owned(),
            data: json!({ "n": seq }),
        }
    }

    #[tokio::test]
    async fn stored_history_is_read_page_by_page_without_gaps() {
        let (state, store, dir) = setup("pages").await;
        let rows: Vec<FeedRow> = (1..=2500).map(row).collect();
        store.append_feed(&rows).await.expect("append");
        let feed = stream(state, store, 10).await.expect("stream");
        let seqs: Vec<u64> = feed
            .take(2490)
            .map(|i| match i {
                Ok(FeedItem::Event(e)) => e.seq,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
            .await;
        assert_eq!(seqs, (11..=2500).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_store_error_ends_the_stream_with_the_error() {
        let (state, store, dir) = setup("error").await;
        sqlx::query("DROP TABLE feed")
            .execute(store.pool())
            .await
            .expect("drop");
        let stats = state.stats.clone();
        let mut feed = Box::pin(stream(state, store, 0).await.expect("stream"));
        assert!(matches!(feed.next().await, Some(Err(FeedError::Store(_)))));
        assert!(
            feed.next().await.is_none(),
            "the stream went on after an error"
        );
        assert_eq!(stats.store_errors.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
