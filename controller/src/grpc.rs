//! gRPC: the agent stream and the read API.
//!
//! Handlers are thin: validate at the edge ([`crate::convert`]), persist
//! events, hand everything else to the state task. A bad message closes
//! only the stream that sent it, with a status that says why.

use crate::convert;
use crate::state::{AgentTx, StateHandle};
use crate::store::Store;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vigil_proto::PROTOCOL_VERSION;
use vigil_proto::codec::agent::CommandOutcome;
use vigil_proto::codec::controller::{Ack, ControllerMsg, Welcome};
use vigil_proto::v1 as pb;

/// How long a new stream may take to send its `Register`.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted message.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The agent-facing service.
#[derive(Debug, Clone)]
pub struct AgentSvc {
    pub state: StateHandle,
    pub store: Store,
    pub heartbeat_ms: u32,
    pub next_conn: std::sync::Arc<AtomicU64>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentSvc {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register message within 10 s"))?
            .map_err(|s| {
                Status::invalid_argument(format!("malformed first message: {}", s.message()))
            })?;
        let reg = match first.and_then(|m| m.body) {
            Some(pb::agent_message::Body::Register(r)) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Register",
                ));
            }
        };
        if reg.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "unsupported protocol version {}; this controller speaks version {PROTOCOL_VERSION}",
                reg.protocol_version
            )));
        }
        let reg = convert::registration(reg)?;
        let acked = self
            .store
            .max_event_seq(&reg.node, &reg.boot_id)
            .await
            .map_err(|e| Status::unavailable(format!("store: {e}")))?;
        self.store
            .upsert_node(&reg, crate::now_ms())
            .await
            .map_err(|e| Status::unavailable(format!("store: {e}")))?;
        let (tx, rx) = mpsc::channel(256);
        let welcome = ControllerMsg::Welcome(Welcome::new(
            env!("CARGO_PKG_VERSION"),
            acked,
            self.heartbeat_ms,
        ));
        if tx.send(Ok(welcome.into())).await.is_err() {
            // The receiver is still held here; a closed channel means the
            // stream is already gone.
            tracing::warn!(node = %reg.node, "could not queue the welcome");
        }
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %reg.node, boot_id = %reg.boot_id, cards = reg.cards.len(), acked, "agent registered");
        let node = reg.node.clone();
        let boot_id = reg.boot_id.clone();
        let ncards = reg.cards.len();
        if !self.state.attach(conn, reg, tx.clone()).await {
            return Err(Status::unavailable("controller is shutting down"));
        }
        let svc = self.clone();
        tokio::spawn(async move {
            if let Err(status) = svc.pump(&node, &boot_id, ncards, &mut inbound, &tx).await {
                tracing::warn!(%node, code = ?status.code(), reason = status.message(), "agent stream refused");
                if tx.send(Err(status)).await.is_err() {
                    tracing::debug!(%node, "the agent left before its refusal was sent");
                }
            }
            svc.state.disconnected(node, boot_id, conn).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl AgentSvc {
    /// Reads one agent's stream until it ends or sends something invalid.
    async fn pump(
        &self,
        node: &vigil_core::NodeId,
        boot_id: &str,
        ncards: usize,
        inbound: &mut Streaming<pb::AgentMessage>,
        tx: &AgentTx,
    ) -> Result<(), Status> {
        use pb::agent_message::Body;
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(s) => {
                    // Oversized or undecodable messages land here.
                    return match s.code() {
                        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Err(
                            Status::resource_exhausted(format!("message refused: {}", s.message())),
                        ),
                        tonic::Code::Internal
                        | tonic::Code::InvalidArgument
                        | tonic::Code::DataLoss => Err(Status::invalid_argument(format!(
                            "malformed message: {}",
                            s.message()
                        ))),
                        _ => Ok(()), // the peer went away
                    };
                }
            };
            match msg.body {
                Some(Body::Heartbeat(h)) => {
                    let hb = convert::heartbeat(h, ncards)?;
                    if !self.state.heartbeat(node.clone(), hb).await {
                        return Err(Status::unavailable("controller is shutting down"));
                    }
                }
                Some(Body::Events(batch)) => {
                    let events = convert::events(batch, ncards)?;
                    let Some(last) = events.last().map(|e| e.seq) else {
                        continue;
                    };
                    let total = events.len();
                    let fresh = self
                        .store
                        .append_events(node, boot_id, events, crate::now_ms())
                        .await
                        .map_err(|e| Status::unavailable(format!("store: {e}")))?;
                    self.state
                        .stats
                        .duplicate_events
                        .fetch_add((total - fresh.len()) as u64, Ordering::Relaxed);
                    if !fresh.is_empty() && !self.state.events(node.clone(), fresh).await {
                        return Err(Status::unavailable("controller is shutting down"));
                    }
                    let ack = Ack {
                        event_seq: last,
                        heartbeat_seq: 0,
                    };
                    if tx.send(Ok(ack.into())).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Body::CommandResult(r)) => {
                    let r = CommandOutcome::from(r);
                    self.state
                        .feed(
                            "command_result",
                            serde_json::json!({ "node": node, "command": r.command_id, "ok": r.ok, "detail": r.detail }),
                        )
                        .await;
                }
                Some(Body::Register(_)) => {
                    return Err(Status::invalid_argument(
                        "Register may only be the first message of a session",
                    ));
                }
                None => return Err(Status::invalid_argument("empty message")),
            }
        }
    }
}

/// The client-facing read API.
#[derive(Debug, Clone)]
pub struct ReadSvc {
    pub state: StateHandle,
    pub store: Store,
}

/// A state document that does not serialize: logged, and refused as an
/// internal error rather than sent as an empty document.
fn unserializable(e: serde_json::Error) -> Status {
    tracing::warn!(error = %e, "cannot serialize a read API document");
    Status::internal(format!("serialize: {e}"))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::FeedEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::read_service_server::ReadService for ReadSvc {
    type WatchStream = WatchStream;

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self
            .state
            .query(|c| {
                c.nodes()
                    .map(serde_json::to_string)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .ok_or_else(|| Status::unavailable("controller is shutting down"))?
            .map_err(unserializable)?;
        Ok(Response::new(pb::ListNodesResponse { nodes_json: nodes }))
    }

    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self
            .state
            .query(|c| {
                c.jobs()
                    .map(serde_json::to_string)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .ok_or_else(|| Status::unavailable("controller is shutting down"))?
            .map_err(unserializable)?;
        Ok(Response::new(pb::ListJobsResponse { jobs_json: jobs }))
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let job = r.job;
        let list = self
            .state
            .query(move |c| {
                c.incidents()
                    .rev()
                    .filter(|i| job.is_empty() || i.job.as_ref().is_some_and(|j| j.as_str() == job))
                    .take(limit)
                    .map(serde_json::to_string)
                    .collect::<Result<Vec<String>, _>>()
                    .map(|mut v| {
                        v.shrink_to_fit();
                        v
                    })
            })
            .await
            .ok_or_else(|| Status::unavailable("controller is shutting down"))?
            .map_err(unserializable)?;
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents_json: list,
        }))
    }

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let after = req.into_inner().after_seq;
        let feed = crate::feed::stream(self.state.clone(), self.store.clone(), after)
            .await
            .ok_or_else(|| Status::unavailable("controller is shutting down"))?;
        let out = tokio_stream::StreamExt::map(feed, |item| {
            let item = item.map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(match item {
                crate::feed::FeedItem::Event(e) => pb::FeedEvent {
                    seq: e.seq,
                    at_ms: e.at.0,
                    kind: e.kind.clone(),
                    data_json: e.data.to_string(),
                },
                crate::feed::FeedItem::Dropped(n) => pb::FeedEvent {
                    seq: 0,
                    at_ms: crate::now_ms(),
                    kind: "dropped".into(),
                    data_json: serde_json::json!({ "dropped": n }).to_string(),
                },
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}
