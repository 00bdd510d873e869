//! The Vigil controller, as a library so that `vigil demo`, the benchmark
//! and the tests run the same code as the `vigil-controller` binary.

pub mod actions;
pub mod config;
pub mod convert;
pub mod dto;
pub mod feed;
pub mod grpc;
pub mod http;
#[cfg(feature = "kubernetes")]
mod kube;
pub mod metrics;
pub mod state;
pub mod store;

use config::ControllerConfig;
use state::StateHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use vigil_core::cluster::Cluster;
use vigil_proto::v1::agent_service_server::AgentServiceServer;
use vigil_proto::v1::read_service_server::ReadServiceServer;

/// A running controller.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: StateHandle,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops serving (open streams are dropped).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for s in self.servers {
            s.abort();
            let _ = s.await;
        }
    }

    /// Waits until a server stops (it should not).
    pub async fn wait(&mut self) {
        if let Some(s) = self.servers.first_mut()
            && let Err(e) = s.await
        {
            tracing::error!(error = %e, "a server task failed");
        }
    }
}

/// The wall clock, in milliseconds since the Unix epoch: the `now` every
/// input to the core is applied at.
pub(crate) fn now_ms() -> vigil_core::Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as vigil_core::Millis)
        .unwrap_or(0)
}

/// Binds both listeners, opens and restores the store, and starts serving.
pub async fn start(cfg: ControllerConfig) -> anyhow::Result<Running> {
    let grpc_listener = TcpListener::bind(cfg.grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for gRPC: {e}", cfg.grpc_listen))?;
    let http_listener = TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for HTTP: {e}", cfg.http_listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let store = Store::open(&cfg.store)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open store {}: {e}", cfg.store))?;

    let mut cluster = Cluster::new(cfg.cluster.clone());
    let nodes = store.nodes().await?;
    let incidents = store.incidents().await?;
    tracing::info!(
        nodes = nodes.len(),
        incidents = incidents.len(),
        "restored state from the store"
    );
    cluster.restore(nodes, incidents, now_ms());
    let recoveries = store.recoveries().await?;
    if !recoveries.is_empty() {
        tracing::info!(
            recoveries = recoveries.len(),
            "carrying on recoveries in progress"
        );
    }
    cluster.restore_recoveries(recoveries);
    cluster.restore_checkpoints(store.checkpoints().await?);
    let (ledger_rows, cursors) = store.ledger().await?;
    cluster.restore_ledger(ledger_rows, cursors);
    let feed_seq = store.max_feed_seq().await?;
    let state = state::spawn(cluster, store.clone(), feed_seq, cfg.actions.clone());

    let (shutdown, rx) = watch::channel(false);
    let agent_svc = grpc::AgentSvc {
        state: state.clone(),
        store: store.clone(),
        heartbeat_ms: cfg.cluster.liveness.heartbeat_ms,
        next_conn: Arc::new(AtomicU64::new(1)),
    };
    let read_svc = grpc::ReadSvc {
        state: state.clone(),
        store: store.clone(),
    };
    let mut grpc_stop = rx.clone();
    let grpc = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                AgentServiceServer::new(agent_svc)
                    .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
            )
            .add_service(ReadServiceServer::new(read_svc))
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    let app = http::router(state.clone(), store.clone());
    let mut http_stop = rx;
    let http = tokio::spawn(async move {
        let r = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(%grpc_addr, %http_addr, store = %cfg.store, "controller serving");
    Ok(Running {
        grpc_addr,
        http_addr,
        state,
        store,
        shutdown,
        servers: vec![grpc, http],
    })
}
