//! Log-tail mode: follows a training job's log file (like `tail -F`) and
//! sends the progress records [`vigil_ingest::logtail::LogParser`] finds in it
//! as the agent's progress events, through the same channel as the progress
//! endpoint.
//!
//! The file is followed on a thread of its own with plain blocking reads,
//! polled a few times a second. It starts at the end of the file unless
//! told otherwise, waits for a file that does not exist yet, and starts over
//! at the beginning of the file when the file is truncated or replaced
//! (rotated) under the same name.

use crate::progress::to_event;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use vigil_core::JobId;
use vigil_core::model::EventBody;
use vigil_ingest::logtail::{LogParser, Preset};

/// Longest line kept; the rest of a longer line is skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// Most bytes read per poll, so one burst does not starve the queue.
const READ_CHUNK: usize = 256 * 1024;

/// What to follow and whom the records belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct TailConfig {
    pub path: PathBuf,
    pub preset: Preset,
    pub job: JobId,
    /// The rank the log belongs to.
    pub rank: u32,
    pub world_size: u32,
    /// Read the file from its beginning instead of its end (the first time).
    pub from_start: bool,
    pub poll: Duration,
}

impl TailConfig {
    pub fn new(path: PathBuf, job: JobId) -> Self {
        TailConfig {
            path,
            preset: Preset::Auto,
            job,
            rank: 0,
            world_size: 1,
            from_start: false,
            poll: Duration::from_millis(250),
        }
    }
}

/// Starts following on a thread of its own. The thread ends when the event
/// channel closes.
pub fn spawn(
    cfg: TailConfig,
    events: mpsc::Sender<EventBody>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vigil-logtail".to_owned())
        .stack_size(256 * 1024)
        .spawn(move || follow(cfg, events))
}

/// The open file and where we are in it.
struct Open {
    file: File,
    dev: u64,
    ino: u64,
    pos: u64,
}

/// Follows the file until the event channel closes.
pub fn follow(cfg: TailConfig, events: mpsc::Sender<EventBody>) {
    tracing::info!(path = %cfg.path.display(), format = %cfg.preset, job = %cfg.job, rank = cfg.rank, "following the training log");
    let mut parser = LogParser::new(cfg.preset, cfg.job.clone(), cfg.rank, cfg.world_size);
    let mut lines = LineSplitter::default();
    let mut open: Option<Open> = None;
    let mut first = true;
    let mut warned_missing = false;
    let mut buf = vec![0u8; READ_CHUNK];
    while !events.is_closed() {
        if open.is_none() {
            match File::open(&cfg.path).and_then(|f| {
                let m = f.metadata()?;
                Ok((f, m))
            }) {
                Ok((mut file, meta)) => {
                    let pos = if first && !cfg.from_start {
                        file.seek(SeekFrom::End(0)).unwrap_or(0)
                    } else {
                        0
                    };
                    first = false;
                    warned_missing = false;
                    lines.clear();
                    open = Some(Open {
                        file,
                        dev: meta.dev(),
                        ino: meta.ino(),
                        pos,
                    });
                }
                Err(e) => {
                    if !warned_missing {
                        tracing::warn!(path = %cfg.path.display(), error = %e, "training log not readable yet; waiting for it");
                        warned_missing = true;
                    }
                    // A file that appears later is read from its beginning.
                    first = false;
                    std::thread::sleep(cfg.poll);
                    continue;
                }
            }
        }
        let Some(o) = open.as_mut() else { continue };
        match o.file.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                o.pos += n as u64;
                for line in lines.push(&buf[..n]) {
                    for rec in parser.line(&line) {
                        if !send(&events, &parser, rec) {
                            return;
                        }
                    }
                }
                // More may be waiting: read again before sleeping.
                continue;
            }
            Err(e) => {
                tracing::warn!(path = %cfg.path.display(), error = %e, "cannot read the training log; reopening");
                open = None;
                std::thread::sleep(cfg.poll);
                continue;
            }
        }
        // At the end of the file: was it truncated or replaced?
        match std::fs::metadata(&cfg.path) {
            Ok(m) if m.dev() != o.dev || m.ino() != o.ino => {
                tracing::info!(path = %cfg.path.display(), "training log replaced; following the new file");
                open = None;
                continue;
            }
            Ok(m) if m.len() < o.pos => {
                tracing::info!(path = %cfg.path.display(), "training log truncated; reading from its start");
                if o.file.seek(SeekFrom::Start(0)).is_err() {
                    open = None;
                    continue;
                }
                o.pos = 0;
                lines.clear();
            }
            // Gone (being rotated): keep the old file until a new one appears.
            _ => {}
        }
        std::thread::sleep(cfg.poll);
    }
}

fn send(
    events: &mpsc::Sender<EventBody>,
    parser: &LogParser,
    rec: vigil_core::progress::ProgressRecord,
) -> bool {
    let mut ev = to_event(rec);
    if let EventBody::Checkpoint(c) = &mut ev {
        let preset = parser.active().unwrap_or(parser.preset());
        c.source = Some(format!("log:{preset}"));
    }
    // This thread may wait for room in the queue; training does not.
    events.blocking_send(ev).is_ok()
}

/// Splits bytes into lines at `\n` and `\r` (progress bars redraw with a
/// carriage return), keeping an unfinished line for the next read.
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
    /// The current line went over [`MAX_LINE`]; skip to its end.
    skipping: bool,
}

impl LineSplitter {
    fn clear(&mut self) {
        self.partial.clear();
        self.skipping = false;
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.skipping && !self.partial.is_empty() {
                    out.push(String::from_utf8_lossy(&self.partial).into_owned());
                }
                self.partial.clear();
                self.skipping = false;
            } else if !self.skipping {
                if self.partial.len() >= MAX_LINE {
                    self.partial.clear();
                    self.skipping = true;
                } else {
                    self.partial.push(b);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vigil_core::progress::ProgressRecord;

    #[test]
    fn splitter_keeps_partial_lines_and_splits_on_carriage_returns() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"abc").is_empty());
        assert_eq!(
            s.push(b"def\n 1/9 [\r 2/9 [\r"),
            ["abcdef", " 1/9 [", " 2/9 ["]
        );
        let long = vec![b'x'; MAX_LINE + 10];
        assert!(s.push(&long).is_empty());
        assert_eq!(s.push(b"tail\nok\n"), ["ok"]);
    }

    const STEP: &str = "[2025-09-07 23:58:47] iteration      609/  500000 | consumed samples:        19488 | elapsed time per iteration (ms): 438.3 | learning rate: 5.999998E-05 | global batch size:    32 | lm loss: 6.159759E+00 | loss scale: 131072.0 | grad norm: 1.095 | number of skipped iterations:   0 | number of nan iterations:   0 |\n";

    fn step_line(n: u64) -> String {
        STEP.replace("609/", &format!("{n}/"))
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-logtail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log");
        f.write_all(text.as_bytes()).expect("append");
    }

    async fn next(rx: &mut mpsc::Receiver<EventBody>) -> EventBody {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("channel open")
    }

    async fn next_step(rx: &mut mpsc::Receiver<EventBody>) -> u64 {
        loop {
            match next(rx).await {
                EventBody::Progress(ProgressRecord::Step { step, .. }) => return step,
                EventBody::Progress(ProgressRecord::Start { .. }) => continue,
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    fn config(path: PathBuf) -> TailConfig {
        TailConfig {
            preset: Preset::Megatron,
            rank: 3,
            world_size: 4,
            poll: Duration::from_millis(20),
            ..TailConfig::new(path, JobId::new("gpt").expect("id"))
        }
    }

    #[tokio::test]
    async fn follows_appends_from_the_end_through_truncation_and_rotation() {
        let dir = scratch("follow");
        let path = dir.join("train.log");
        // Lines already there are history: not reported.
        append(&path, &step_line(1));
        let (tx, mut rx) = mpsc::channel(64);
        let handle = spawn(config(path.clone()), tx).expect("thread");
        tokio::time::sleep(Duration::from_millis(200)).await;

        append(&path, &step_line(2));
        match next(&mut rx).await {
            EventBody::Progress(ProgressRecord::Start {
                rank: 3,
                world_size: 4,
                job,
                ..
            }) => assert_eq!(job.as_str(), "gpt"),
            other => panic!("expected a start record, got {other:?}"),
        }
        match next(&mut rx).await {
            EventBody::Progress(ProgressRecord::Step {
                step: 2, rank: 3, ..
            }) => {}
            other => panic!("expected step 2, got {other:?}"),
        }
        // A line written in two pieces is one line.
        let l3 = step_line(3);
        let (a, b) = l3.split_at(40);
        append(&path, a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        append(&path, b);
        assert_eq!(next_step(&mut rx).await, 3);

        append(
            &path,
            "  successfully saved checkpoint from iteration       3 to /ckpt/gpt [ t 1/1, p 1/1 ]\n",
        );
        match next(&mut rx).await {
            EventBody::Checkpoint(c) => {
                assert_eq!(
                    (c.step, c.path.as_str(), c.rank),
                    (3, "/ckpt/gpt/iter_0000003", 3)
                );
                assert_eq!(c.source.as_deref(), Some("log:megatron"));
                assert!(!c.complete_all);
            }
            other => panic!("expected a checkpoint, got {other:?}"),
        }

        // copytruncate: the file shrinks and is written again from the start.
        std::fs::write(&path, step_line(4)).expect("truncate");
        assert_eq!(next_step(&mut rx).await, 4);

        // Rotation: the file is renamed and a new one takes its name.
        std::fs::rename(&path, dir.join("train.log.1")).expect("rotate");
        tokio::time::sleep(Duration::from_millis(100)).await;
        append(&path, &step_line(5));
        assert_eq!(next_step(&mut rx).await, 5);

        // Closing the channel stops the thread.
        drop(rx);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .expect("join task")
            .expect("thread ends cleanly");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn waits_for_a_missing_file_and_reads_it_from_the_start() {
        let dir = scratch("missing");
        let path = dir.join("later.log");
        let (tx, mut rx) = mpsc::channel(64);
        let _handle = spawn(config(path.clone()), tx).expect("thread");
        tokio::time::sleep(Duration::from_millis(100)).await;
        append(&path, &format!("{}{}", step_line(7), step_line(8)));
        assert_eq!(next_step(&mut rx).await, 7);
        assert_eq!(next_step(&mut rx).await, 8);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn from_start_reads_existing_lines_and_noise_is_ignored() {
        let dir = scratch("fromstart");
        let path = dir.join("train.log");
        append(
            &path,
            &format!(
                "building GPT model ...\n{}garbage \u{fffd}\n",
                step_line(10)
            ),
        );
        let (tx, mut rx) = mpsc::channel(64);
        let cfg = TailConfig {
            from_start: true,
            ..config(path.clone())
        };
        let _handle = spawn(cfg, tx).expect("thread");
        assert_eq!(next_step(&mut rx).await, 10);
        append(&path, &step_line(11));
        assert_eq!(next_step(&mut rx).await, 11);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
