//! Runs a probe command with a time limit.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most output kept from one stream of a probe command.
const MAX_OUTPUT: u64 = 8 << 20;

/// What a finished command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    /// The last line of stderr, for an error message.
    pub fn stderr_tail(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    }
}

/// Runs `program args` in a process group of its own, with no stdin. After
/// `timeout` the group is killed and an error returned. A command that cannot
/// start is an error that names it.
pub fn run(program: &str, args: &[String], timeout: Duration) -> Result<CmdOutput, String> {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let out_rx = reader(child.stdout.take());
    let err_rx = reader(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish within {} s and was killed",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot wait for {program}: {e}")),
        }
    };
    // A grandchild may still hold the pipes open: wait a little, not for ever.
    let grace = Duration::from_secs(1);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    Ok(CmdOutput {
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

fn reader<R: Read + Send + 'static>(stream: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(stream) = stream {
        let spawned = std::thread::Builder::new()
            .name("vigil-probe-io".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = Vec::new();
                let _ = stream.take(MAX_OUTPUT).read_to_end(&mut buf);
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to read probe output");
        }
    }
    rx
}

#[allow(unsafe_code)]
fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; the group is the one this
    // module created for the child with process_group(0).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".to_owned(), script.to_owned()]
    }

    #[test]
    fn captures_output_and_status() {
        let out = run(
            "sh",
            &sh("echo hello; echo oops >&2; exit 3"),
            Duration::from_secs(10),
        )
        .expect("runs");
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr_tail(), "oops");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = run("/nonexistent/vigil-probe", &[], Duration::from_secs(1)).expect_err("missing");
        assert!(e.contains("/nonexistent/vigil-probe"), "{e}");
    }

    #[test]
    fn a_hung_command_is_killed_with_its_children() {
        let t = Instant::now();
        let e =
            run("sh", &sh("sleep 30 & sleep 30"), Duration::from_millis(300)).expect_err("hung");
        assert!(e.contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
