//! `vigil-agent`: the node agent binary.

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;
use vigil_agent::config::{AgentConfig, Args};
use vigil_agent::supervise::{WorkerEnv, supervise};
use vigil_agent::uplink::AgentIo;
use vigil_agent::{cards, progress};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = match AgentConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-agent: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let (probe, sim) =
        cards::from_spec(&cfg.cards, cfg.node_id.as_str()).map_err(anyhow::Error::msg)?;
    let (mut io, events_tx) = AgentIo::new();
    let dropped: Arc<AtomicU64> = io.progress_dropped.clone();
    let mut progress_url = String::new();
    if let Some(addr) = cfg.progress_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for progress on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        progress_url = format!("http://{local}");
        tracing::info!(%local, "progress endpoint listening");
        let app = progress::router(events_tx.clone(), dropped, sim);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(%e, "progress endpoint stopped");
            }
        });
    }
    if !cfg.worker.is_empty() {
        let (wtx, wrx) = mpsc::channel(16);
        io.worker = Some(wtx);
        let env = WorkerEnv {
            job: cfg.job.as_ref().map(|j| j.to_string()).unwrap_or_default(),
            node_id: cfg.node_id.to_string(),
            progress_url,
        };
        tokio::spawn(supervise(
            cfg.worker.clone(),
            env,
            !cfg.spare,
            wrx,
            events_tx.clone(),
        ));
    }
    if let Some(t) = cfg.log_tail.clone() {
        vigil_agent::logtail::spawn(t, events_tx.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the log follower: {e}"))?;
    }
    if let Some(w) = cfg.checkpoints.clone() {
        tokio::spawn(vigil_agent::checkpoints::watch(w, events_tx.clone()));
    }
    let run = vigil_agent::run(cfg, probe, io);
    tokio::select! {
        r = run => r,
        _ = shutdown_signal() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
