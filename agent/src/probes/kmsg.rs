//! The kernel-log reader: a thread that follows `/dev/kmsg` (or the file
//! named by `VIGIL_KMSG`) and passes the driver's XID, SXID and
//! fallen-off-the-bus lines to a probe, which maps them to its cards by PCI
//! address in `drain_errors`.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;
use vigil_core::model::{CardInfo, Signal};
use vigil_ingest::probe::kmsg::{KernelEvent, LineParser, card_for};

/// Environment variable naming another kernel log to read (tests, replays).
pub const ENV: &str = "VIGIL_KMSG";
/// Where the kernel log is read by default.
pub const DEFAULT_PATH: &str = "/dev/kmsg";

/// Events queued between two drains; more are dropped (and counted in a log).
const QUEUE: usize = 1024;

/// The receiving end of a kernel-log reader thread.
#[derive(Debug)]
pub struct KernelLog {
    rx: Receiver<KernelEvent>,
    path: PathBuf,
}

impl KernelLog {
    /// Reads `$VIGIL_KMSG`, else `/dev/kmsg`.
    pub fn from_env() -> KernelLog {
        let path = std::env::var_os(ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        KernelLog::spawn(path)
    }

    /// Starts a thread that follows `path`. A character device (`/dev/kmsg`)
    /// is read from its end, so records from before the agent started are
    /// not reported again; a regular file is read from its start and then
    /// followed as it grows. A log that cannot be opened gives one warning,
    /// and the probe goes on without it.
    pub fn spawn(path: PathBuf) -> KernelLog {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let p = path.clone();
        let spawned = std::thread::Builder::new()
            .name("vigil-kmsg".into())
            .stack_size(128 * 1024)
            .spawn(move || follow(&p, &tx));
        if let Err(e) = spawned {
            tracing::warn!(path = %path.display(), error = %e, "cannot start the kernel log reader; XIDs from the kernel log will not be reported");
        }
        KernelLog { rx, path }
    }

    /// The events read since the last call, mapped to the inventory's cards.
    /// Events for no card of the inventory (an NVSwitch SXID, another
    /// device) are logged, not returned.
    pub fn drain(&self, inventory: &[CardInfo]) -> Vec<(u32, Signal, String)> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(ev) => match card_for(&ev, inventory) {
                    Some(card) => out.push((card, ev.signal, ev.message)),
                    None => match ev.nvswitch {
                        Some(sx) => tracing::warn!(
                            switch = sx.switch,
                            sxid = sx.code,
                            fatal = sx.fatal,
                            bus_id = %ev.bus_id,
                            message = %ev.message,
                            "NVSwitch error in the kernel log (not attributed to a card)"
                        ),
                        None => tracing::warn!(
                            bus_id = %ev.bus_id,
                            message = %ev.message,
                            "driver error in the kernel log for a device that is not in this probe's inventory"
                        ),
                    },
                },
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// The path being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn follow(path: &Path, tx: &SyncSender<KernelEvent>) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "kernel log is not readable; XIDs will be reported only by NVML events, if any");
            return;
        }
    };
    let is_device = file
        .metadata()
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    let mut file = file;
    if is_device && let Err(e) = file.seek(SeekFrom::End(0)) {
        tracing::debug!(error = %e, "cannot seek to the end of the kernel log; reading it whole");
    }
    let mut reader = BufReader::with_capacity(16 * 1024, file);
    let mut parser = LineParser::new();
    let mut buf = Vec::new();
    let mut dropped = 0u64;
    loop {
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => {
                if is_device {
                    // /dev/kmsg blocks for new records; an EOF means it is gone.
                    tracing::warn!(path = %path.display(), "kernel log ended");
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(_) if !buf.ends_with(b"\n") && !is_device => {
                // A regular file's last line is still being written.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Ok(_) => {}
            // /dev/kmsg: records were overwritten before we read them (EPIPE),
            // or a record did not fit (EINVAL). Go on with the next one.
            Err(e) if e.kind() == ErrorKind::BrokenPipe || e.kind() == ErrorKind::InvalidInput => {
                tracing::debug!(error = %e, "kernel log records skipped");
                buf.clear();
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the kernel log; XIDs from it will not be reported");
                return;
            }
        }
        let line = String::from_utf8_lossy(&buf);
        if let Some(ev) = parser.feed(&line) {
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped,
                            "kernel log events dropped: the probe is not draining them"
                        );
                    }
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    fn card(index: u32, bus: &str) -> CardInfo {
        CardInfo {
            index,
            uuid: String::new(),
            vendor: "nvidia".to_owned(),
            model: String::new(),
            memory_total_bytes: 0,
            pci_bus_id: bus.to_owned(),
        }
    }

    fn drain_until(log: &KernelLog, inv: &[CardInfo], n: usize) -> Vec<(u32, Signal, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(log.drain(inv));
            std::thread::sleep(Duration::from_millis(20));
        }
        got
    }

    #[test]
    fn a_file_is_read_and_followed() {
        let dir = std::env::temp_dir().join(format!("vigil-kmsg-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("kmsg");
        std::fs::write(
            &path,
            "4,1,2,-;NVRM: Xid (PCI:0000:18:00): 48, pid=1, name=p, DBE\n",
        )
        .expect("write");
        let inv = [card(0, "00000000:18:00.0"), card(1, "00000000:3B:00.0")];
        let log = KernelLog::spawn(path.clone());
        let first = drain_until(&log, &inv, 1);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].0, first[0].1), (0, Signal::Xid(48)));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        // Written in two pieces: the reader waits for the end of the line.
        f.write_all(b"4,2,3,-;NVRM: GPU 0000:3b:00.0: GPU has ")
            .expect("append");
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(b"fallen off the bus.\n").expect("append");
        let second = drain_until(&log, &inv, 1);
        assert_eq!(second.len(), 1);
        assert_eq!((second[0].0, second[0].1), (1, Signal::GpuLost));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_log_gives_no_events() {
        let log = KernelLog::spawn(PathBuf::from("/nonexistent/vigil/kmsg"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(log.drain(&[card(0, "0000:18:00.0")]).is_empty());
    }
}
