//! The progress endpoint: `POST /v1/progress` from training processes.
//!
//! The endpoint answers at once and never blocks the caller: records go into
//! the agent's event queue with `try_send`, and when the queue is full they
//! are counted as dropped rather than making training wait.

use crate::cards::{SimFault, SimHandle};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use vigil_core::model::{CheckpointReport, EventBody};
use vigil_core::progress::ProgressRecord;
use vigil_ingest::progress::parse_body;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
struct Ctx {
    events: mpsc::Sender<EventBody>,
    dropped: Arc<AtomicU64>,
    sim: Option<SimHandle>,
}

/// Counts records dropped because the agent's queue was full.
pub type DropCounter = Arc<AtomicU64>;

/// The router: `POST /v1/progress`, `GET /healthz`, and with simulated cards
/// `POST /v1/sim/fault` (a test hook that injects a card fault).
pub fn router(
    events: mpsc::Sender<EventBody>,
    dropped: DropCounter,
    sim: Option<SimHandle>,
) -> Router {
    Router::new()
        .route("/v1/progress", post(progress))
        .route("/v1/sim/fault", post(sim_fault))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Ctx {
            events,
            dropped,
            sim,
        })
}

/// Turns a progress record into the event the agent spools.
pub fn to_event(rec: ProgressRecord) -> EventBody {
    match rec {
        ProgressRecord::Checkpoint {
            job,
            rank,
            step,
            path,
            bytes,
            sha256,
        } => EventBody::Checkpoint(CheckpointReport {
            job,
            rank,
            step,
            path,
            bytes,
            sha256,
            complete_all: false,
            invalid: None,
            source: Some("rank".to_owned()),
        }),
        other => EventBody::Progress(other),
    }
}

async fn progress(State(ctx): State<Ctx>, body: String) -> (StatusCode, String) {
    let recs = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let n = recs.len();
    for rec in recs {
        match to_event(rec) {
            // A reported checksum is verified off the request path; the
            // report follows once the file has been read.
            EventBody::Checkpoint(c) if c.sha256.is_some() => {
                let (events, dropped) = (ctx.events.clone(), ctx.dropped.clone());
                tokio::spawn(async move {
                    let c = crate::checkpoints::check_report(c).await;
                    if events.send(EventBody::Checkpoint(c)).await.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            ev => {
                if ctx.events.try_send(ev).is_err() {
                    ctx.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    (StatusCode::ACCEPTED, format!("accepted {n}\n"))
}

async fn sim_fault(State(ctx): State<Ctx>, body: String) -> (StatusCode, String) {
    let Some(sim) = &ctx.sim else {
        return (
            StatusCode::NOT_FOUND,
            "this agent has no simulated cards\n".to_owned(),
        );
    };
    let fault: SimFault = match serde_json::from_str(&body) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad fault: {e}\n")),
    };
    match sim.inject(&fault) {
        Ok(()) => (StatusCode::ACCEPTED, "injected\n".to_owned()),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}
