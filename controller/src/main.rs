//! `vigil-controller`: the controller binary.

use clap::Parser;
use std::process::ExitCode;
use vigil_bootstrap::Flavor;
use vigil_controller::config::{Args, ControllerConfig};

const NAME: &str = "vigil-controller";

fn main() -> ExitCode {
    let cfg = match ControllerConfig::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => return vigil_bootstrap::usage_error(NAME, e),
    };
    vigil_bootstrap::init_tracing("info");
    vigil_bootstrap::block_on(NAME, Flavor::MultiThread, async {
        let mut running = match vigil_controller::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{NAME}: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = running.wait() => ExitCode::FAILURE,
            _ = vigil_bootstrap::shutdown_signal() => {
                tracing::info!("interrupted; stopping");
                running.shutdown().await;
                ExitCode::SUCCESS
            }
        }
    })
    .unwrap_or_else(|code| code)
}
