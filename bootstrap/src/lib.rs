//! Start-up shared by `vigil-agent`, `vigil-controller` and `vigil`:
//! logging to stderr filtered by `VIGIL_LOG`, the tokio runtime, the
//! shutdown signals and the exit codes.
//!
//! Exit codes: 0 on success or a requested stop, 1 ([`ExitCode::FAILURE`])
//! on a runtime failure, [`USAGE`] (2) on a bad flag or config. Every
//! failure is printed as `binary: reason` on stderr.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// The environment variable that holds the log filter (`EnvFilter` syntax).
pub const LOG_ENV: &str = "VIGIL_LOG";
/// Exit status for a bad flag or config.
pub const USAGE: u8 = 2;

/// Logs to stderr, filtered by `VIGIL_LOG`, or by `default_filter` when it
/// is unset or does not parse.
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Which tokio runtime a binary runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MultiThread,
    CurrentThread,
}

/// Runs `fut` to completion on a fresh runtime. When the runtime cannot
/// start, says so and returns the failure exit code instead.
pub fn block_on<F: Future>(binary: &str, flavor: Flavor, fut: F) -> Result<F::Output, ExitCode> {
    let mut builder = match flavor {
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    match builder.enable_all().build() {
        Ok(rt) => Ok(rt.block_on(fut)),
        Err(e) => {
            eprintln!("{binary}: cannot start the runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Prints a bad flag or config and returns the usage exit code.
pub fn usage_error(binary: &str, e: impl Display) -> ExitCode {
    eprintln!("{binary}: {e}");
    ExitCode::from(USAGE)
}

/// The exit code for a binary's result, printing the error chain on failure.
pub fn exit_code(binary: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. A signal that cannot be watched
/// is logged and never fires.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt() => {}
        _ = term => {}
    }
}

/// Resolves on SIGINT (Ctrl-C) only: an interactive command stops on
/// Ctrl-C and keeps the default action of SIGTERM.
pub async fn interrupt() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot watch SIGINT");
        std::future::pending::<()>().await;
    }
}
