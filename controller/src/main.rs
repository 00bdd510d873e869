//! `vigil-controller`: the controller binary.

use clap::Parser;
use vigil_controller::config::{Args, ControllerConfig};

fn main() -> std::process::ExitCode {
    let cfg = match ControllerConfig::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-controller: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-controller: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let mut running = match vigil_controller::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("vigil-controller: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = running.wait() => std::process::ExitCode::FAILURE,
            _ = shutdown_signal() => {
                tracing::info!("interrupted; stopping");
                running.shutdown().await;
                std::process::ExitCode::SUCCESS
            }
        }
    })
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
