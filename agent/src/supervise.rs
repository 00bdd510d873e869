//! Supervision of a job's local worker command.
//!
//! The worker runs in its own process group so that stopping it reaches
//! every process it started. Stopping sends SIGTERM to the group, then
//! SIGKILL after a grace period (which also ends stopped or hung processes).

use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use vigil_core::model::EventBody;

/// What the agent asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerOrder {
    Start {
        resume_from: String,
        restart_count: u32,
        replaces: String,
    },
    Stop {
        grace: Duration,
    },
}

/// Environment shared by every start.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub job: String,
    pub node_id: String,
    pub progress_url: String,
}

/// Runs the supervisor until `orders` closes.
pub async fn supervise(
    command: Vec<String>,
    env: WorkerEnv,
    start_now: bool,
    mut orders: mpsc::Receiver<WorkerOrder>,
    events: mpsc::Sender<EventBody>,
) {
    let mut child: Option<Child> = None;
    // The pid of the running worker, kept because a reaped child has none.
    let mut pid = 0;
    // Which restart the running worker belongs to: an order repeated for
    // the same restart (a controller that restarted) is not a new restore.
    let mut running_restart: Option<u32> = None;
    if start_now {
        child = spawn(&command, &env, "", 0, "", &events).await;
        pid = child.as_ref().and_then(Child::id).unwrap_or(0);
    }
    loop {
        tokio::select! {
            order = orders.recv() => match order {
                None => {
                    if let Some(c) = child.as_mut() { stop(c, Duration::from_secs(5)).await; }
                    return;
                }
                Some(WorkerOrder::Stop { grace }) => {
                    running_restart = None;
                    if let Some(mut c) = child.take() { stop(&mut c, grace).await; }
                }
                Some(WorkerOrder::Start { resume_from, restart_count, replaces }) => {
                    if child.is_some() && running_restart == Some(restart_count) {
                        tracing::info!(restart_count, "workers already run this restart; order ignored");
                        continue;
                    }
                    running_restart = Some(restart_count);
                    if let Some(mut c) = child.take() { stop(&mut c, Duration::from_secs(5)).await; }
                    child = spawn(&command, &env, &resume_from, restart_count, &replaces, &events).await;
                    pid = child.as_ref().and_then(Child::id).unwrap_or(0);
                }
            },
            status = wait(&mut child) => {
                child = None;
                let (exit_code, signal) = match status {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        (s.code(), s.signal())
                    }
                    Err(_) => (None, None),
                };
                tracing::info!(pid, ?exit_code, ?signal, "worker exited");
                let _ = events.send(EventBody::WorkerExit { rank: None, pid, exit_code, signal }).await;
            }
        }
    }
}

async fn wait(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn spawn(
    command: &[String],
    env: &WorkerEnv,
    resume_from: &str,
    restart_count: u32,
    replaces: &str,
    events: &mpsc::Sender<EventBody>,
) -> Option<Child> {
    let (prog, args) = command.split_first()?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env("VIGIL_JOB", &env.job)
        .env("VIGIL_NODE_ID", &env.node_id)
        .env("VIGIL_PROGRESS_URL", &env.progress_url)
        .env("VIGIL_RESUME_FROM", resume_from)
        .env("VIGIL_RESTART_COUNT", restart_count.to_string())
        .env("VIGIL_REPLACES", replaces)
        .process_group(0)
        .kill_on_drop(true);
    match cmd.spawn() {
        Ok(c) => {
            tracing::info!(pid = c.id(), resume_from, restart_count, "worker started");
            Some(c)
        }
        Err(e) => {
            tracing::error!(%e, program = %prog, "cannot start worker");
            let _ = events
                .send(EventBody::WorkerExit {
                    rank: None,
                    pid: 0,
                    exit_code: Some(127),
                    signal: None,
                })
                .await;
            None
        }
    }
}

/// SIGTERM to the group, SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, libc::SIGCONT);
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

#[allow(unsafe_code)]
fn signal_group(pgid: u32, sig: i32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(-pgid, sig);
    }
}
