//! `vigil bench`: many simulated agents against one controller process over
//! loopback, measuring sustained heartbeat ingest, ingest latency (agent
//! send to controller acknowledgement, after the state task applied it),
//! and the controller's CPU and memory.

use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vigil_agent::AgentStats;
use vigil_agent::cards::SimCards;
use vigil_agent::uplink::AgentIo;
use vigil_agent::{AgentConfig, backoff::BackoffConfig};
use vigil_core::NodeId;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub nodes: u32,
    pub cards: u32,
    pub hz: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// The controller binary (default: `vigil-controller` beside `vigil`).
    pub controller_bin: Option<PathBuf>,
    /// Store URL for the controller (default: SQLite in a temp dir).
    pub store: Option<String>,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub nodes: u32,
    pub cards_per_node: u32,
    pub heartbeat_hz: f64,
    pub measured_s: f64,
    pub heartbeats_expected_per_s: f64,
    pub heartbeats_per_s: f64,
    pub card_samples_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub latency_samples: usize,
    pub controller_cpu_percent: f64,
    pub controller_rss_mb: f64,
    pub controller_peak_rss_mb: f64,
    pub store: String,
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .context("bad /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("short /proc stat")?.parse()?;
    let stime: u64 = f.get(12).context("short /proc stat")?.parse()?;
    Ok(utime + stime)
}

fn proc_rss_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .context("no RSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad RSS line")?
        .parse()?)
}

/// Linux reports process CPU time in USER_HZ ticks, 100 per second on every
/// mainstream configuration.
const TICKS_PER_S: f64 = 100.0;

async fn status(http: &reqwest::Client, base: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(format!("{base}/api/v1/status"))
        .send()
        .await?
        .json()
        .await?)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.nodes == 0 || opts.cards == 0 || opts.cards > 64 || !(opts.hz > 0.0 && opts.hz <= 100.0)
    {
        anyhow::bail!("bench: --nodes >= 1, --cards 1..=64 and --hz in (0, 100] are required");
    }
    let bin = match &opts.controller_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the vigil binary")?
            .join("vigil-controller"),
    };
    if !bin.exists() {
        anyhow::bail!(
            "controller binary {} not found; build it (cargo build --release) or pass --controller-bin",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = opts
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("vigil.db").display()));
    let (gport, hport) = (free_port()?, free_port()?);
    let hb_ms = (1000.0 / opts.hz).round().max(10.0) as u32;
    let child = std::process::Command::new(&bin)
        .args(["--grpc-listen", &format!("127.0.0.1:{gport}")])
        .args(["--http-listen", &format!("127.0.0.1:{hport}")])
        .args(["--store", &store])
        .args(["--heartbeat-ms", &hb_ms.to_string()])
        .env("VIGIL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let child = Child(child);
    let pid = child.0.id();
    let base = format!("http://127.0.0.1:{hport}");
    let http = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(20);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        if Instant::now() > ready_by {
            anyhow::bail!("controller did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    eprintln!(
        "bench: starting {} agents x {} cards at {} Hz",
        opts.nodes, opts.cards, opts.hz
    );
    let mut stats: Vec<Arc<AgentStats>> = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..opts.nodes {
        let node = NodeId::new(format!("bench-{i:05}"))?;
        let (cards, _h) = SimCards::new(node.as_str(), opts.cards, "H100");
        let mut cfg = AgentConfig::new(format!("http://127.0.0.1:{gport}"), node);
        cfg.heartbeat = Duration::from_millis(u64::from(hb_ms));
        cfg.host_metrics = false;
        cfg.backoff = BackoffConfig {
            initial: Duration::from_millis(100),
            ..Default::default()
        };
        let (io, _tx) = AgentIo::new();
        stats.push(io.stats.clone());
        tasks.push(tokio::spawn(async move {
            let _keep = _tx;
            let _ = vigil_agent::run(cfg, Box::new(cards), io).await;
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let connect_by = Instant::now() + Duration::from_secs(60);
    loop {
        let up = stats
            .iter()
            .filter(|s| s.connected.load(Ordering::Relaxed))
            .count();
        if up == opts.nodes as usize {
            break;
        }
        if Instant::now() > connect_by {
            anyhow::bail!("only {up} of {} agents connected within 60 s", opts.nodes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "bench: all agents connected; warming up for {:?}",
        opts.warmup
    );
    tokio::time::sleep(opts.warmup).await;

    for s in &stats {
        s.record_latency.store(true, Ordering::Relaxed);
    }
    let s0 = status(&http, &base).await?;
    let cpu0 = proc_cpu_ticks(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(opts.duration).await;
    let s1 = status(&http, &base).await?;
    let cpu1 = proc_cpu_ticks(pid)?;
    let dt = t0.elapsed().as_secs_f64();
    for s in &stats {
        s.record_latency.store(false, Ordering::Relaxed);
    }
    let rss = proc_rss_kb(pid, "VmRSS:")? as f64 / 1024.0;
    let peak = proc_rss_kb(pid, "VmHWM:")? as f64 / 1024.0;
    let hb =
        (s1["heartbeats"].as_u64().unwrap_or(0) - s0["heartbeats"].as_u64().unwrap_or(0)) as f64;
    let mut lat: Vec<u32> = Vec::new();
    for s in &stats {
        if let Ok(l) = s.latencies_us.lock() {
            lat.extend_from_slice(&l);
        }
    }
    lat.sort_unstable();
    for t in tasks {
        t.abort();
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    let hbps = hb / dt;
    Ok(BenchReport {
        nodes: opts.nodes,
        cards_per_node: opts.cards,
        heartbeat_hz: opts.hz,
        measured_s: dt,
        heartbeats_expected_per_s: f64::from(opts.nodes) * 1000.0 / f64::from(hb_ms),
        heartbeats_per_s: hbps,
        card_samples_per_s: hbps * f64::from(opts.cards),
        latency_p50_ms: percentile(&lat, 0.50),
        latency_p99_ms: percentile(&lat, 0.99),
        latency_max_ms: lat.last().map_or(0.0, |x| f64::from(*x) / 1000.0),
        latency_samples: lat.len(),
        controller_cpu_percent: (cpu1 - cpu0) as f64 / TICKS_PER_S / dt * 100.0,
        controller_rss_mb: rss,
        controller_peak_rss_mb: peak,
        store: if opts.store.is_some() {
            store
        } else {
            "sqlite (temp dir)".into()
        },
    })
}
