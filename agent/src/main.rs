//! `vigil-agent`: the node agent binary.

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;
use vigil_agent::config::{AgentConfig, Args};
use vigil_agent::supervise::{WorkerEnv, supervise};
use vigil_agent::uplink::AgentIo;
use vigil_agent::{cards, progress};
use vigil_bootstrap::Flavor;

const NAME: &str = "vigil-agent";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = match AgentConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => return vigil_bootstrap::usage_error(NAME, e),
    };
    vigil_bootstrap::init_tracing("info");
    match vigil_bootstrap::block_on(NAME, Flavor::CurrentThread, run(cfg)) {
        Ok(r) => vigil_bootstrap::exit_code(NAME, r),
        Err(code) => code,
    }
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
        _ = vigil_bootstrap::shutdown_signal() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
    }
}
