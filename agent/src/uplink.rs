//! The agent's main loop: one task owns the controller connection, the
//! spool and the heartbeat clock.
//!
//! Connection life cycle: connect, send `Register`, wait for `Welcome`
//! (which says how far the controller has already stored our events), send
//! every unacknowledged event again, then heartbeat and stream events until
//! the stream breaks; then wait a capped, jittered exponential backoff and
//! start over. Card probing never stops while disconnected, so errors seen
//! then are spooled and delivered later.

use crate::backoff::Backoff;
use crate::cards::CardProbe;
use crate::config::AgentConfig;
use crate::host::HostProbe;
use crate::spool::Spool;
use crate::supervise::WorkerOrder;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use vigil_core::Millis;
use vigil_core::cluster::{Registration, WorkerCommand};
use vigil_core::model::{
    CardInfo, CardSample, EventBody, Heartbeat, HostMetrics, Signal, sample_transitions,
};
use vigil_proto::codec::agent::{self as codec, CommandOutcome, Hello};
use vigil_proto::codec::controller::{Command, ControllerMsg, Order};
use vigil_proto::v1 as pb;
use vigil_proto::v1::agent_service_client::AgentServiceClient;

/// Counters the agent keeps about itself (read by the benchmark and tests).
#[derive(Debug, Default)]
pub struct AgentStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_acked: AtomicU64,
    pub events_acked: AtomicU64,
    /// Heartbeat round trips (send to controller's ack), microseconds; only
    /// recorded when `record_latency` is set.
    pub latencies_us: Mutex<Vec<u32>>,
    pub record_latency: AtomicBool,
}

/// The channels the agent loop is wired to.
#[derive(Debug)]
pub struct AgentIo {
    /// Events from the progress endpoint and the supervisor.
    pub events: mpsc::Receiver<EventBody>,
    /// Orders to the worker supervisor, if one runs.
    pub worker: Option<mpsc::Sender<WorkerOrder>>,
    /// While true the agent is frozen: it neither sends nor reads, but holds
    /// its connection (the simulator's node crash and partition).
    pub pause: Option<watch::Receiver<bool>>,
    pub stats: Arc<AgentStats>,
    /// Records dropped at the progress endpoint.
    pub progress_dropped: Arc<AtomicU64>,
}

impl AgentIo {
    /// Channels for an agent with no supervisor and no pause switch.
    pub fn new() -> (Self, mpsc::Sender<EventBody>) {
        let (tx, rx) = mpsc::channel(4096);
        (
            AgentIo {
                events: rx,
                worker: None,
                pause: None,
                stats: Arc::new(AgentStats::default()),
                progress_dropped: Arc::new(AtomicU64::new(0)),
            },
            tx,
        )
    }
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

struct Conn {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
}

struct ProbeResult {
    samples: Vec<CardSample>,
    errors: Vec<(u32, Signal, String)>,
}

/// Events sent per message.
const BATCH: usize = 512;

/// Runs the agent until the process ends.
pub async fn run(cfg: AgentConfig, probe: Box<dyn CardProbe>, io: AgentIo) -> anyhow::Result<()> {
    let mut uplink = Uplink::new(cfg, probe, io)?;
    loop {
        if uplink.frozen() {
            uplink.wait_thawed().await;
            continue;
        }
        uplink.maybe_connect().await;
        let wake = uplink.wait().await;
        uplink.handle(wake).await;
        uplink.send_pending();
    }
}

/// What woke the agent's loop.
enum Wake {
    PauseChanged,
    Message(Result<Option<pb::ControllerMessage>, tonic::Status>),
    Probe(ProbeResult),
    Event(EventBody),
    Tick,
    Retry,
}

/// The agent loop's state: the connection, the spool, the heartbeat clock
/// and the previous card samples.
struct Uplink {
    cfg: AgentConfig,
    io: AgentIo,
    backoff: Backoff,
    boot_id: String,
    inventory: Vec<CardInfo>,
    /// The heartbeat period, shared with the probe thread.
    interval_ms: Arc<AtomicU64>,
    probe_rx: mpsc::Receiver<ProbeResult>,
    host: Option<HostProbe>,
    host_last: HostMetrics,
    spool: Spool,
    samples: Vec<CardSample>,
    prev: Vec<Option<CardSample>>,
    last_probe: Instant,
    probe_hung_reported: bool,
    hb_seq: u64,
    hb_sent: VecDeque<(u64, Instant)>,
    conn: Option<Conn>,
    retry_at: Instant,
    tick: tokio::time::Interval,
    results: Vec<CommandOutcome>,
}

fn heartbeat_interval(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

impl Uplink {
    fn new(cfg: AgentConfig, probe: Box<dyn CardProbe>, io: AgentIo) -> anyhow::Result<Self> {
        let backoff = Backoff::new(cfg.backoff).map_err(anyhow::Error::msg)?;
        let inventory = probe.inventory();
        let interval_ms = Arc::new(AtomicU64::new(cfg.heartbeat.as_millis() as u64));
        let (probe_tx, probe_rx) = mpsc::channel::<ProbeResult>(4);
        spawn_probe_thread(probe, interval_ms.clone(), probe_tx)?;
        Ok(Uplink {
            backoff,
            boot_id: format!("{:016x}", crate::backoff::random_u64()),
            prev: vec![None; inventory.len()],
            inventory,
            interval_ms,
            probe_rx,
            host: cfg.host_metrics.then(HostProbe::new),
            host_last: HostMetrics::default(),
            spool: Spool::new(cfg.spool_capacity),
            samples: Vec::new(),
            last_probe: Instant::now(),
            probe_hung_reported: false,
            hb_seq: 0,
            hb_sent: VecDeque::new(),
            conn: None,
            retry_at: Instant::now(),
            tick: heartbeat_interval(cfg.heartbeat),
            results: Vec::new(),
            cfg,
            io,
        })
    }

    fn frozen(&self) -> bool {
        self.io.pause.as_ref().is_some_and(|p| *p.borrow())
    }

    /// Frozen: hold everything, including the connection, until thawed.
    async fn wait_thawed(&mut self) {
        if let Some(p) = self.io.pause.as_mut()
            && p.changed().await.is_err()
        {
            std::future::pending::<()>().await;
        }
        // Time spent frozen is not the probe's delay.
        self.last_probe = Instant::now();
    }

    async fn maybe_connect(&mut self) {
        if self.conn.is_some() || Instant::now() < self.retry_at {
            return;
        }
        let cfg = &self.cfg;
        match connect(cfg, &self.boot_id, &self.inventory, &mut self.spool).await {
            Ok((c, hb_ms)) => {
                if let Some(ms) = hb_ms {
                    self.interval_ms.store(u64::from(ms), Ordering::Relaxed);
                    self.tick = heartbeat_interval(Duration::from_millis(u64::from(ms)));
                }
                self.backoff.reset();
                self.io.stats.connected.store(true, Ordering::Relaxed);
                self.io.stats.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(controller = %cfg.controller, node = %cfg.node_id, "connected");
                self.conn = Some(c);
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(controller = %cfg.controller, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the controller");
                self.retry_at = Instant::now() + delay;
            }
        }
    }

    async fn wait(&mut self) -> Wake {
        let pause_changed = async {
            match self.io.pause.as_mut() {
                Some(p) => {
                    if p.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let disconnected = self.conn.is_none();
        tokio::select! {
            _ = pause_changed => Wake::PauseChanged,
            msg = next_message(&mut self.conn) => Wake::Message(msg),
            Some(r) = self.probe_rx.recv() => Wake::Probe(r),
            Some(body) = self.io.events.recv() => Wake::Event(body),
            _ = self.tick.tick() => Wake::Tick,
            _ = tokio::time::sleep_until(self.retry_at), if disconnected => Wake::Retry,
        }
    }

    async fn handle(&mut self, wake: Wake) {
        match wake {
            Wake::PauseChanged | Wake::Retry => {}
            Wake::Message(Ok(Some(m))) => {
                handle_message(
                    m,
                    &mut self.spool,
                    &mut self.hb_sent,
                    &self.io,
                    &mut self.results,
                    &self.interval_ms,
                    &mut self.tick,
                )
                .await;
            }
            Wake::Message(msg) => {
                if let Err(e) = &msg {
                    tracing::warn!(status = %e, "controller stream ended");
                }
                self.drop_conn();
                self.retry_at = Instant::now() + self.backoff.next_delay();
            }
            Wake::Probe(r) => self.on_probe(r),
            Wake::Event(body) => {
                self.spool.push(body, now_ms());
                // Take whatever else is already queued, to batch it.
                while let Ok(body) = self.io.events.try_recv() {
                    self.spool.push(body, now_ms());
                }
            }
            Wake::Tick => self.on_tick(),
        }
    }

    fn on_probe(&mut self, r: ProbeResult) {
        self.last_probe = Instant::now();
        self.probe_hung_reported = false;
        let at = now_ms();
        // Error events first: a driver logs an XID before the card stops
        // answering, and the first signal names the incident.
        let mut found = r.errors;
        for s in &r.samples {
            let i = s.index as usize;
            if i < self.prev.len() {
                let changes = sample_transitions(self.prev[i].as_ref(), s);
                found.extend(changes.into_iter().map(|(sig, d)| (s.index, sig, d)));
                self.prev[i] = Some(s.clone());
            }
        }
        for (card, signal, detail) in found {
            let body = EventBody::CardError {
                card,
                signal,
                detail,
            };
            self.spool.push(body, at);
        }
        self.samples = r.samples;
    }

    fn on_tick(&mut self) {
        self.check_probe();
        if let Some(h) = self.host.as_mut() {
            self.host_last = h.sample();
        }
        self.send_heartbeat();
    }

    /// Reports `probe_hung` for every card once the probe is overdue.
    fn check_probe(&mut self) {
        let waited = self.last_probe.elapsed();
        // A result already waiting means the probe answered.
        if waited <= self.cfg.probe_timeout
            || !self.probe_rx.is_empty()
            || self.probe_hung_reported
            || self.inventory.is_empty()
        {
            return;
        }
        self.probe_hung_reported = true;
        tracing::warn!(
            waited_ms = waited.as_millis() as u64,
            "card probe is not answering"
        );
        for c in &self.inventory {
            let body = EventBody::ProbeHung {
                card: c.index,
                probe: "cards".into(),
                waited_ms: waited.as_millis() as u32,
            };
            self.spool.push(body, now_ms());
        }
    }

    fn send_heartbeat(&mut self) {
        let Some(c) = &self.conn else {
            return;
        };
        self.hb_seq += 1;
        let hb = Heartbeat {
            seq: self.hb_seq,
            sent_at_ms: now_ms(),
            host: self.host_last.clone(),
            cards: self.samples.clone(),
            spool_dropped: self.spool.dropped() + self.io.progress_dropped.load(Ordering::Relaxed),
            spool_pending: self.spool.pending(),
        };
        match c.tx.try_send(pb::Heartbeat::from(&hb).into()) {
            Ok(()) => {
                self.io
                    .stats
                    .heartbeats_sent
                    .fetch_add(1, Ordering::Relaxed);
                if self.hb_sent.len() >= 64 {
                    self.hb_sent.pop_front();
                }
                self.hb_sent.push_back((self.hb_seq, Instant::now()));
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(seq = self.hb_seq, "send queue full; heartbeat skipped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.drop_conn(),
        }
    }

    /// Sends command results and unsent events on the connection, if any.
    fn send_pending(&mut self) {
        let Some(c) = &self.conn else {
            return;
        };
        for r in self.results.drain(..) {
            if let Err(e) = c.tx.try_send(pb::CommandResult::from(&r).into()) {
                tracing::warn!(command = r.command_id, error = %e, "command result not sent");
            }
        }
        if !flush(c, &mut self.spool) {
            self.drop_conn();
        }
    }

    fn drop_conn(&mut self) {
        self.conn = None;
        self.spool.rewind();
        self.io.stats.connected.store(false, Ordering::Relaxed);
    }
}

/// Sends unsent spooled events; false when the connection is closed.
fn flush(c: &Conn, spool: &mut Spool) -> bool {
    while spool.has_unsent() {
        let batch = spool.take_unsent(BATCH);
        let Some(first) = batch.first().map(|e| e.seq) else {
            break;
        };
        match c.tx.try_send(codec::event_batch(&batch).into()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                spool.unsend(first);
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    true
}

async fn next_message(
    conn: &mut Option<Conn>,
) -> Result<Option<pb::ControllerMessage>, tonic::Status> {
    match conn {
        Some(c) => c.inbound.message().await,
        None => std::future::pending().await,
    }
}

async fn handle_message(
    m: pb::ControllerMessage,
    spool: &mut Spool,
    hb_sent: &mut VecDeque<(u64, Instant)>,
    io: &AgentIo,
    results: &mut Vec<CommandOutcome>,
    interval_ms: &AtomicU64,
    tick: &mut tokio::time::Interval,
) {
    let m = match ControllerMsg::try_from(m) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a message from the controller");
            return;
        }
    };
    match m {
        ControllerMsg::Ack(a) => {
            if a.event_seq > 0 {
                spool.ack(a.event_seq);
                io.stats
                    .events_acked
                    .store(spool.acked(), Ordering::Relaxed);
            }
            if a.heartbeat_seq > 0 {
                io.stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                while let Some(&(seq, at)) = hb_sent.front() {
                    if seq > a.heartbeat_seq {
                        break;
                    }
                    hb_sent.pop_front();
                    if seq == a.heartbeat_seq && io.stats.record_latency.load(Ordering::Relaxed) {
                        let us = at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        if let Ok(mut l) = io.stats.latencies_us.lock() {
                            l.push(us);
                        }
                    }
                }
            }
        }
        ControllerMsg::Command(Command { id, order }) => {
            let (ok, detail) = execute(order, io, interval_ms, tick).await;
            results.push(CommandOutcome {
                command_id: id,
                ok,
                detail,
            });
        }
        ControllerMsg::Welcome(_) => {}
    }
}

async fn execute(
    order: Option<Order>,
    io: &AgentIo,
    interval_ms: &AtomicU64,
    tick: &mut tokio::time::Interval,
) -> (bool, String) {
    let to_worker = |order: WorkerOrder| async {
        match &io.worker {
            Some(w) => match w.send(order).await {
                Ok(()) => (true, "ordered".to_owned()),
                Err(_) => (false, "supervisor is gone".to_owned()),
            },
            None => (false, "this agent supervises no workers".to_owned()),
        }
    };
    match order {
        Some(Order::Configure { heartbeat_ms }) => {
            if !(10..=60_000).contains(&heartbeat_ms) {
                return (false, format!("heartbeat_ms {heartbeat_ms} out of range"));
            }
            interval_ms.store(u64::from(heartbeat_ms), Ordering::Relaxed);
            *tick = tokio::time::interval(Duration::from_millis(u64::from(heartbeat_ms)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (true, format!("heartbeat every {heartbeat_ms} ms"))
        }
        Some(Order::Worker(WorkerCommand::Stop { grace_s })) => {
            to_worker(WorkerOrder::Stop {
                grace: Duration::from_secs(u64::from(grace_s.max(1))),
            })
            .await
        }
        Some(Order::Worker(WorkerCommand::Start {
            resume_from,
            restart_count,
            replaces,
        })) => {
            to_worker(WorkerOrder::Start {
                resume_from,
                restart_count,
                replaces,
            })
            .await
        }
        Some(Order::Quarantine { card, reason }) => {
            tracing::info!(card = ?card, reason = %reason, "quarantined by the controller");
            (true, "noted".to_owned())
        }
        None => (false, "empty command".to_owned()),
    }
}

async fn connect(
    cfg: &AgentConfig,
    boot_id: &str,
    inventory: &[CardInfo],
    spool: &mut Spool,
) -> anyhow::Result<(Conn, Option<u32>)> {
    let endpoint = Endpoint::from_shared(cfg.controller.clone())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await?;
    let (tx, rx) = mpsc::channel(256);
    let hello = Hello::new(
        Registration {
            node: cfg.node_id.clone(),
            boot_id: boot_id.to_owned(),
            cards: inventory.to_vec(),
            spare: cfg.spare,
            job: cfg.job.clone(),
            supervises: cfg.supervises,
        },
        crate::VERSION,
        spool.last_seq(),
    );
    tx.send(pb::Register::from(&hello).into()).await?;
    let mut client = AgentServiceClient::new(channel);
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.session(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("controller did not answer in 5 s"))??;
    let mut inbound = resp.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .map_err(|_| anyhow::anyhow!("no welcome from the controller in 5 s"))??;
    let Some(Ok(ControllerMsg::Welcome(w))) = first.map(ControllerMsg::try_from) else {
        anyhow::bail!("controller did not start with a welcome");
    };
    spool.ack(w.acked_event_seq);
    spool.rewind();
    let hb = w.heartbeat_ms.filter(|ms| (10..=60_000).contains(ms));
    Ok((Conn { tx, inbound }, hb))
}

fn spawn_probe_thread(
    mut probe: Box<dyn CardProbe>,
    interval_ms: Arc<AtomicU64>,
    tx: mpsc::Sender<ProbeResult>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("vigil-probe".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            loop {
                let started = std::time::Instant::now();
                let samples = probe.sample();
                let errors = probe.drain_errors();
                match tx.try_send(ProbeResult { samples, errors }) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
                let period = Duration::from_millis(interval_ms.load(Ordering::Relaxed).max(10));
                std::thread::sleep(period.saturating_sub(started.elapsed()));
            }
        })?;
    Ok(())
}
