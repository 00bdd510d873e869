//! `vigil bench`: many simulated agents against one controller process over
//! loopback, measuring sustained heartbeat ingest, ingest latency (agent
//! send to controller acknowledgement, after the state task applied it),
//! and the controller's CPU and memory.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vigil_agent::AgentStats;
use vigil_agent::cards::{SimCards, SimFault, SimHandle};
use vigil_agent::supervise::WorkerOrder;
use vigil_agent::uplink::AgentIo;
use vigil_agent::{AgentConfig, backoff::BackoffConfig};
use vigil_core::model::{CheckpointReport, EventBody};
use vigil_core::progress::ProgressRecord;
use vigil_core::{JobId, NodeId};

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
    /// Also time a recovery across every node.
    pub recovery: bool,
}

/// Timing of one recovery across the whole benchmark cluster.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryTiming {
    pub world_size: u32,
    /// Fault injected on the simulated card to the incident's detection
    /// (includes up to one probe interval for the agent to read the XID).
    pub fault_to_detect_ms: f64,
    /// Detection to the last agent receiving its stop order.
    pub detect_to_last_stop_ms: f64,
    /// Detection to the last agent receiving its restart order (the
    /// restart order is sent once the recovery is stored).
    pub detect_to_last_start_ms: f64,
    /// Detection to the first agent receiving its restart order.
    pub detect_to_first_start_ms: f64,
    pub agents_stopped: usize,
    pub agents_started: usize,
    pub action: String,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryTiming>,
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill() {
            tracing::warn!(error = %e, "cannot stop the benchmark's controller");
        }
        if let Err(e) = self.0.wait() {
            tracing::warn!(error = %e, "cannot reap the benchmark's controller");
        }
    }
}

/// Locks `m`, also when a thread panicked holding it (the data are plain
/// timings and samples, valid either way).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// The fields of `GET /api/v1/status` the benchmark reads.
#[derive(Debug, Deserialize)]
struct Status {
    heartbeats: u64,
}

async fn status(http: &reqwest::Client, base: &str) -> anyhow::Result<Status> {
    http.get(format!("{base}/api/v1/status"))
        .send()
        .await?
        .json()
        .await
        .context("reading the controller's status")
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
    let bin = controller_bin(&opts)?;
    let dir = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = opts
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("vigil.db").display()));
    let hb_ms = (1000.0 / opts.hz).round().max(10.0) as u32;
    let ctl = start_controller(&bin, &store, hb_ms).await?;

    eprintln!(
        "bench: starting {} agents x {} cards at {} Hz",
        opts.nodes, opts.cards, opts.hz
    );
    let job = JobId::new("bench")?;
    let agents = spawn_agents(&opts, ctl.grpc_port, hb_ms, &job).await?;
    agents.wait_connected().await?;
    eprintln!(
        "bench: all agents connected; warming up for {:?}",
        opts.warmup
    );
    tokio::time::sleep(opts.warmup).await;
    let m = measure(&ctl, &agents, opts.duration).await?;
    let recovery = if opts.recovery {
        Some(time_recovery(&opts, &ctl.http, &ctl.base, &job, &agents).await?)
    } else {
        None
    };
    for t in agents.tasks {
        t.abort();
    }
    drop(ctl);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the benchmark's temp dir");
    }
    let hbps = m.heartbeats / m.seconds;
    let lat = &m.latencies_us;
    Ok(BenchReport {
        nodes: opts.nodes,
        cards_per_node: opts.cards,
        heartbeat_hz: opts.hz,
        measured_s: m.seconds,
        heartbeats_expected_per_s: f64::from(opts.nodes) * 1000.0 / f64::from(hb_ms),
        heartbeats_per_s: hbps,
        card_samples_per_s: hbps * f64::from(opts.cards),
        latency_p50_ms: percentile(lat, 0.50),
        latency_p99_ms: percentile(lat, 0.99),
        latency_max_ms: lat.last().map_or(0.0, |x| f64::from(*x) / 1000.0),
        latency_samples: lat.len(),
        controller_cpu_percent: m.cpu_ticks as f64 / TICKS_PER_S / m.seconds * 100.0,
        controller_rss_mb: m.rss_mb,
        controller_peak_rss_mb: m.peak_rss_mb,
        store: if opts.store.is_some() {
            store
        } else {
            "sqlite (temp dir)".into()
        },
        recovery,
    })
}

/// The controller binary: the one asked for, or `vigil-controller` beside `vigil`.
fn controller_bin(opts: &BenchOptions) -> anyhow::Result<PathBuf> {
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
    Ok(bin)
}

/// The controller process under test.
struct Controller {
    /// Killed when dropped.
    child: Child,
    grpc_port: u16,
    base: String,
    http: reqwest::Client,
}

/// Starts the controller on free loopback ports and waits until it is ready.
async fn start_controller(bin: &PathBuf, store: &str, hb_ms: u32) -> anyhow::Result<Controller> {
    let (gport, hport) = (free_port()?, free_port()?);
    let child = std::process::Command::new(bin)
        .args(["--grpc-listen", &format!("127.0.0.1:{gport}")])
        .args(["--http-listen", &format!("127.0.0.1:{hport}")])
        .args(["--store", store])
        .args(["--heartbeat-ms", &hb_ms.to_string()])
        .env("VIGIL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let ctl = Controller {
        child: Child(child),
        grpc_port: gport,
        base: format!("http://127.0.0.1:{hport}"),
        http: reqwest::Client::new(),
    };
    let ready_by = Instant::now() + Duration::from_secs(20);
    loop {
        // Refused connections are expected until the controller listens.
        let last = match ctl.http.get(format!("{}/readyz", ctl.base)).send().await {
            Ok(r) if r.status().is_success() => return Ok(ctl),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > ready_by {
            anyhow::bail!("controller did not become ready within 20 s (last answer: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The simulated agents and the levers on them.
struct Agents {
    stats: Vec<Arc<AgentStats>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each agent's progress endpoint.
    senders: Vec<tokio::sync::mpsc::Sender<EventBody>>,
    /// Each agent's simulated cards.
    handles: Vec<SimHandle>,
    /// When each agent received its first stop and start orders.
    orders: Arc<Vec<OrderTimes>>,
}

/// Starts `opts.nodes` agents (and, with `--recovery`, one more: the spare).
async fn spawn_agents(
    opts: &BenchOptions,
    gport: u16,
    hb_ms: u32,
    job: &JobId,
) -> anyhow::Result<Agents> {
    let mut agents = Agents {
        stats: Vec::new(),
        tasks: Vec::new(),
        senders: Vec::new(),
        handles: Vec::new(),
        orders: Arc::new((0..=opts.nodes).map(|_| OrderTimes::default()).collect()),
    };
    let total = opts.nodes + u32::from(opts.recovery);
    for i in 0..total {
        let spare = i == opts.nodes;
        let name = if spare {
            "bench-spare".to_owned()
        } else {
            format!("bench-{i:05}")
        };
        let node = NodeId::new(name)?;
        let (cards, h) = SimCards::new(node.as_str(), opts.cards, "H100");
        let mut cfg = AgentConfig::new(format!("http://127.0.0.1:{gport}"), node);
        cfg.heartbeat = Duration::from_millis(u64::from(hb_ms));
        cfg.host_metrics = false;
        cfg.backoff = BackoffConfig {
            initial: Duration::from_millis(100),
            ..Default::default()
        };
        let (mut io, tx) = AgentIo::new();
        if opts.recovery {
            cfg.supervises = true;
            cfg.spare = spare;
            cfg.job = (!spare).then(|| job.clone());
            io.worker = Some(record_orders(agents.orders.clone(), i as usize));
        }
        agents.stats.push(io.stats.clone());
        agents.senders.push(tx.clone());
        agents.handles.push(h);
        agents.tasks.push(tokio::spawn(async move {
            let _keep = tx;
            if let Err(e) = vigil_agent::run(cfg, Box::new(cards), io).await {
                tracing::warn!(error = %e, "benchmark agent stopped");
            }
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(agents)
}

/// A worker channel for agent `idx` that notes when its first stop and
/// start orders arrive.
fn record_orders(
    orders: Arc<Vec<OrderTimes>>,
    idx: usize,
) -> tokio::sync::mpsc::Sender<WorkerOrder> {
    let (wtx, mut wrx) = tokio::sync::mpsc::channel::<WorkerOrder>(16);
    tokio::spawn(async move {
        while let Some(o) = wrx.recv().await {
            let Some(t) = orders.get(idx) else { return };
            let slot = match o {
                WorkerOrder::Stop { .. } => &t.stop,
                WorkerOrder::Start { .. } => &t.start,
            };
            lock(slot).get_or_insert_with(Instant::now);
        }
    });
    wtx
}

impl Agents {
    /// Waits until every agent is connected.
    async fn wait_connected(&self) -> anyhow::Result<()> {
        let total = self.stats.len();
        let connect_by = Instant::now() + Duration::from_secs(60);
        loop {
            let up = self
                .stats
                .iter()
                .filter(|s| s.connected.load(Ordering::Relaxed))
                .count();
            if up == total {
                return Ok(());
            }
            if Instant::now() > connect_by {
                anyhow::bail!("only {up} of {total} agents connected within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What one measurement window saw.
struct Measured {
    seconds: f64,
    heartbeats: f64,
    cpu_ticks: u64,
    /// Sorted.
    latencies_us: Vec<u32>,
    rss_mb: f64,
    peak_rss_mb: f64,
}

/// Measures heartbeat ingest, latency and the controller's CPU over `duration`.
async fn measure(
    ctl: &Controller,
    agents: &Agents,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let pid = ctl.child.0.id();
    for s in &agents.stats {
        s.record_latency.store(true, Ordering::Relaxed);
    }
    let s0 = status(&ctl.http, &ctl.base).await?;
    let cpu0 = proc_cpu_ticks(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(duration).await;
    let s1 = status(&ctl.http, &ctl.base).await?;
    let cpu1 = proc_cpu_ticks(pid)?;
    let seconds = t0.elapsed().as_secs_f64();
    for s in &agents.stats {
        s.record_latency.store(false, Ordering::Relaxed);
    }
    let mut latencies_us: Vec<u32> = Vec::new();
    for s in &agents.stats {
        latencies_us.extend_from_slice(&lock(&s.latencies_us));
    }
    latencies_us.sort_unstable();
    Ok(Measured {
        seconds,
        heartbeats: s1.heartbeats.saturating_sub(s0.heartbeats) as f64,
        cpu_ticks: cpu1.saturating_sub(cpu0),
        latencies_us,
        rss_mb: proc_rss_kb(pid, "VmRSS:")? as f64 / 1024.0,
        peak_rss_mb: proc_rss_kb(pid, "VmHWM:")? as f64 / 1024.0,
    })
}

/// When an agent received its first stop and start orders.
#[derive(Debug, Default)]
struct OrderTimes {
    stop: std::sync::Mutex<Option<Instant>>,
    start: std::sync::Mutex<Option<Instant>>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The fields of a job in `GET /api/v1/jobs` the benchmark reads.
#[derive(Debug, Deserialize)]
struct JobView {
    id: String,
    #[serde(default)]
    ranks: serde_json::Map<String, serde_json::Value>,
}

/// The fields of an incident in `GET /api/v1/incidents` the benchmark reads.
#[derive(Debug, Deserialize)]
struct IncidentView {
    job: Option<String>,
    detected_at: String,
    action: Option<String>,
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
) -> anyhow::Result<T> {
    http.get(&url)
        .send()
        .await?
        .json()
        .await
        .with_context(|| format!("reading {url}"))
}

/// One job over every node, a complete checkpoint, then XID 79 on one card:
/// times detection and the stop and restart orders reaching the agents.
async fn time_recovery(
    opts: &BenchOptions,
    http: &reqwest::Client,
    base: &str,
    job: &JobId,
    agents: &Agents,
) -> anyhow::Result<RecoveryTiming> {
    let world = opts.nodes * opts.cards;
    start_job(opts, job, &agents.senders).await?;
    wait_for_ranks(http, base, job, world).await?;
    eprintln!("bench: job of {world} ranks running; injecting XID 79 on bench-00000/3");
    let injected_wall = wall_ms();
    let injected = Instant::now();
    agents
        .handles
        .first()
        .context("no agents")?
        .inject(&SimFault::Xid { card: 3, code: 79 })
        .map_err(anyhow::Error::msg)?;
    let orders = agents.orders.as_slice();
    wait_for_restarts(orders, opts.nodes as usize).await?;
    let incidents: Vec<IncidentView> = get_json(http, format!("{base}/api/v1/incidents")).await?;
    let inc = incidents
        .iter()
        .find(|i| i.job.as_deref() == Some(job.as_str()))
        .context("no incident for the bench job")?;
    let detected_wall = vigil_core::Timestamp::parse_rfc3339(&inc.detected_at)
        .map_err(|e| anyhow::anyhow!("incident detected_at {:?}: {e}", inc.detected_at))?
        .0;
    // The controller's clock and ours are the same machine's.
    let detected = injected + Duration::from_millis((detected_wall - injected_wall).max(0) as u64);
    let since = |t: Instant| t.saturating_duration_since(detected).as_secs_f64() * 1000.0;
    let stops: Vec<Instant> = orders.iter().filter_map(|o| *lock(&o.stop)).collect();
    let starts: Vec<Instant> = orders.iter().filter_map(|o| *lock(&o.start)).collect();
    Ok(RecoveryTiming {
        world_size: world,
        fault_to_detect_ms: (detected_wall - injected_wall) as f64,
        detect_to_last_stop_ms: stops.iter().copied().max().map_or(0.0, since),
        detect_to_last_start_ms: starts.iter().copied().max().map_or(0.0, since),
        detect_to_first_start_ms: starts.iter().copied().min().map_or(0.0, since),
        agents_stopped: stops.len(),
        agents_started: starts.len(),
        action: inc.action.clone().unwrap_or_default(),
    })
}

/// Every rank of the job starts, and rank 0 reports a complete checkpoint.
async fn start_job(
    opts: &BenchOptions,
    job: &JobId,
    senders: &[tokio::sync::mpsc::Sender<EventBody>],
) -> anyhow::Result<()> {
    let world = opts.nodes * opts.cards;
    for (i, tx) in senders.iter().take(opts.nodes as usize).enumerate() {
        for c in 0..opts.cards {
            let rank = i as u32 * opts.cards + c;
            tx.send(EventBody::Progress(ProgressRecord::Start {
                job: job.clone(),
                rank,
                world_size: world,
                local_rank: Some(c),
                card: Some(c),
                pid: None,
            }))
            .await
            .map_err(|_| anyhow::anyhow!("agent {i} is gone"))?;
        }
    }
    if let Some(tx) = senders.first() {
        tx.send(EventBody::Checkpoint(CheckpointReport {
            job: job.clone(),
            rank: 0,
            step: 100,
            path: "/ckpt/bench/step-100".to_owned(),
            bytes: None,
            sha256: None,
            complete_all: true,
            invalid: None,
            source: Some("watcher:bench".to_owned()),
        }))
        .await
        .map_err(|_| anyhow::anyhow!("agent 0 is gone"))?;
    }
    Ok(())
}

/// Waits until the controller knows every rank of the job.
async fn wait_for_ranks(
    http: &reqwest::Client,
    base: &str,
    job: &JobId,
    world: u32,
) -> anyhow::Result<()> {
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs: Vec<JobView> = get_json(http, format!("{base}/api/v1/jobs")).await?;
        let ranks = jobs
            .iter()
            .find(|j| j.id == job.as_str())
            .map_or(0, |j| j.ranks.len());
        if ranks == world as usize {
            return Ok(());
        }
        if Instant::now() > ready_by {
            anyhow::bail!("the controller saw {ranks} of {world} ranks within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `n` agents (every surviving node and the spare) got their
/// restart order.
async fn wait_for_restarts(orders: &[OrderTimes], n: usize) -> anyhow::Result<()> {
    let done_by = Instant::now() + Duration::from_secs(60);
    loop {
        let started = orders.iter().filter(|o| lock(&o.start).is_some()).count();
        if started >= n {
            return Ok(());
        }
        if Instant::now() > done_by {
            anyhow::bail!("only {started} of {n} agents got a restart order within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
