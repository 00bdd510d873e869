//! Messages an agent sends: domain types to wire messages (infallible), and
//! wire messages to validated domain types (the controller's edge).

use super::{InvalidMessage, MAX_BATCH, MAX_BOOT_ID, MAX_CARDS, finite, opt_text, text};
use crate::v1 as pb;
use vigil_core::cluster::Registration;
use vigil_core::model::{
    AgentEvent, CardInfo, CardSample, CheckpointReport, EventBody, Heartbeat, HostMetrics, Signal,
};
use vigil_core::progress::{Phase, ProgressRecord};
use vigil_core::{JobId, NodeId};

/// A `Register`: the registration plus what only the handshake carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub registration: Registration,
    pub agent_version: String,
    pub protocol_version: u32,
    /// Highest event sequence number this agent has produced so far.
    pub last_event_seq: u64,
}

impl Hello {
    /// A `Register` in this build's protocol version.
    pub fn new(registration: Registration, agent_version: &str, last_event_seq: u64) -> Self {
        Hello {
            registration,
            agent_version: agent_version.to_owned(),
            protocol_version: crate::PROTOCOL_VERSION,
            last_event_seq,
        }
    }
}

/// A `CommandResult`: how the agent carried out a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub command_id: u64,
    pub ok: bool,
    pub detail: String,
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

impl From<&CardInfo> for pb::CardInfo {
    fn from(c: &CardInfo) -> Self {
        pb::CardInfo {
            index: c.index,
            uuid: c.uuid.clone(),
            vendor: c.vendor.clone(),
            model: c.model.clone(),
            memory_total_bytes: c.memory_total_bytes,
            pci_bus_id: c.pci_bus_id.clone(),
        }
    }
}

impl From<&Hello> for pb::Register {
    fn from(h: &Hello) -> Self {
        let r = &h.registration;
        pb::Register {
            node_id: r.node.to_string(),
            boot_id: r.boot_id.clone(),
            agent_version: h.agent_version.clone(),
            protocol_version: h.protocol_version,
            cards: r.cards.iter().map(pb::CardInfo::from).collect(),
            spare: r.spare,
            job: r.job.as_ref().map(|j| j.to_string()).unwrap_or_default(),
            last_event_seq: h.last_event_seq,
            supervises: r.supervises,
        }
    }
}

impl From<&HostMetrics> for pb::HostMetrics {
    fn from(h: &HostMetrics) -> Self {
        pb::HostMetrics {
            cpu_percent: h.cpu_percent,
            memory_used_bytes: h.memory_used_bytes,
            memory_total_bytes: h.memory_total_bytes,
            load_1m: h.load_1m,
            uptime_s: h.uptime_s,
        }
    }
}

impl From<&CardSample> for pb::CardSample {
    fn from(s: &CardSample) -> Self {
        pb::CardSample {
            index: s.index,
            utilization_percent: s.utilization_percent,
            memory_used_bytes: s.memory_used_bytes,
            temperature_c: s.temperature_c,
            power_w: s.power_w,
            ecc_sbe_volatile: s.ecc_sbe_volatile,
            ecc_dbe_volatile: s.ecc_dbe_volatile,
            retired_pages: s.retired_pages,
            retirement_pending: s.retirement_pending,
            throttle_reasons: s.throttle_reasons,
            pcie_link_width: s.pcie_link_width,
            pcie_link_width_max: s.pcie_link_width_max,
            nvlink_up: s.nvlink_up,
            nvlink_total: s.nvlink_total,
            probe_latency_us: s.probe_latency_us,
            unreachable: s.unreachable,
            pcie_link_gen: s.pcie_link_gen,
            pcie_link_gen_max: s.pcie_link_gen_max,
            pcie_replay: s.pcie_replay,
            nvlink_errors: s.nvlink_errors,
        }
    }
}

impl From<&Heartbeat> for pb::Heartbeat {
    fn from(h: &Heartbeat) -> Self {
        pb::Heartbeat {
            seq: h.seq,
            sent_at_ms: h.sent_at_ms,
            host: Some(pb::HostMetrics::from(&h.host)),
            cards: h.cards.iter().map(pb::CardSample::from).collect(),
            spool_dropped: h.spool_dropped,
            spool_pending: h.spool_pending,
        }
    }
}

impl From<&CheckpointReport> for pb::CheckpointReport {
    fn from(c: &CheckpointReport) -> Self {
        pb::CheckpointReport {
            job: c.job.to_string(),
            rank: c.rank,
            step: c.step,
            path: c.path.clone(),
            bytes: c.bytes.unwrap_or(0),
            sha256: c.sha256.clone().unwrap_or_default(),
            complete_all: c.complete_all,
            invalid: c.invalid.clone().unwrap_or_default(),
            source: c.source.clone().unwrap_or_default(),
        }
    }
}

impl From<&AgentEvent> for pb::Event {
    fn from(e: &AgentEvent) -> Self {
        pb::Event {
            seq: e.seq,
            at_ms: e.at_ms,
            body: Some(event_body(&e.body)),
        }
    }
}

fn event_body(body: &EventBody) -> pb::event::Body {
    use pb::event::Body;
    match body {
        EventBody::CardError {
            card,
            signal,
            detail,
        } => {
            let (name, code) = signal.parts();
            Body::CardError(pb::CardError {
                card: *card,
                signal: name.to_owned(),
                code,
                detail: detail.clone(),
            })
        }
        EventBody::WorkerExit {
            rank,
            pid,
            exit_code,
            signal,
        } => Body::WorkerExit(pb::WorkerExit {
            rank: rank.map_or(-1, |r| r as i32),
            pid: *pid,
            exit_code: exit_code.unwrap_or(-1),
            signal: signal.unwrap_or(0),
        }),
        EventBody::ProbeHung {
            card,
            probe,
            waited_ms,
        } => Body::ProbeHung(pb::ProbeHung {
            card: *card,
            probe: probe.clone(),
            waited_ms: *waited_ms,
        }),
        EventBody::Checkpoint(c) => Body::Checkpoint(c.into()),
        // A rank's checkpoint record travels as a checkpoint report.
        EventBody::Progress(ProgressRecord::Checkpoint {
            job,
            rank,
            step,
            path,
            bytes,
            sha256,
        }) => Body::Checkpoint(pb::CheckpointReport {
            job: job.to_string(),
            rank: *rank,
            step: *step,
            path: path.clone(),
            bytes: bytes.unwrap_or(0),
            sha256: sha256.clone().unwrap_or_default(),
            complete_all: false,
            invalid: String::new(),
            source: "rank".to_owned(),
        }),
        EventBody::Progress(p) => Body::Progress(p.into()),
    }
}

impl From<&ProgressRecord> for pb::Progress {
    fn from(p: &ProgressRecord) -> Self {
        let mut out = pb::Progress {
            job: p.job().to_string(),
            rank: p.rank(),
            ..Default::default()
        };
        match p {
            ProgressRecord::Start {
                world_size,
                local_rank,
                card,
                pid,
                ..
            } => {
                out.r#type = "start".into();
                out.world_size = *world_size;
                out.local_rank = local_rank.unwrap_or(0);
                // Card indexes are sent +1 so that 0 can mean "unknown".
                out.card = card.map_or(0, |c| c + 1);
                out.pid = pid.unwrap_or(0);
            }
            ProgressRecord::Step {
                step,
                phase,
                samples,
                tokens,
                ..
            } => {
                out.r#type = "step".into();
                out.step = *step;
                out.phase = phase.as_str().into();
                out.samples = samples.unwrap_or(0);
                out.tokens = tokens.unwrap_or(0);
            }
            ProgressRecord::End { status, .. } => {
                out.r#type = "end".into();
                out.status = status.clone();
            }
            ProgressRecord::Checkpoint { .. } => {}
        }
        out
    }
}

/// One `EventBatch` of spooled events.
pub fn event_batch<'a>(events: impl IntoIterator<Item = &'a AgentEvent>) -> pb::EventBatch {
    pb::EventBatch {
        events: events.into_iter().map(pb::Event::from).collect(),
    }
}

impl From<&CommandOutcome> for pb::CommandResult {
    fn from(r: &CommandOutcome) -> Self {
        pb::CommandResult {
            command_id: r.command_id,
            ok: r.ok,
            detail: r.detail.clone(),
        }
    }
}

impl From<pb::CommandResult> for CommandOutcome {
    fn from(r: pb::CommandResult) -> Self {
        CommandOutcome {
            command_id: r.command_id,
            ok: r.ok,
            detail: r.detail,
        }
    }
}

impl From<pb::Register> for pb::AgentMessage {
    fn from(m: pb::Register) -> Self {
        pb::AgentMessage {
            body: Some(pb::agent_message::Body::Register(m)),
        }
    }
}

impl From<pb::Heartbeat> for pb::AgentMessage {
    fn from(m: pb::Heartbeat) -> Self {
        pb::AgentMessage {
            body: Some(pb::agent_message::Body::Heartbeat(m)),
        }
    }
}

impl From<pb::EventBatch> for pb::AgentMessage {
    fn from(m: pb::EventBatch) -> Self {
        pb::AgentMessage {
            body: Some(pb::agent_message::Body::Events(m)),
        }
    }
}

impl From<pb::CommandResult> for pb::AgentMessage {
    fn from(m: pb::CommandResult) -> Self {
        pb::AgentMessage {
            body: Some(pb::agent_message::Body::CommandResult(m)),
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

impl TryFrom<pb::Register> for Hello {
    type Error = InvalidMessage;

    fn try_from(r: pb::Register) -> Result<Self, InvalidMessage> {
        let agent_version = r.agent_version.clone();
        let protocol_version = r.protocol_version;
        let last_event_seq = r.last_event_seq;
        Ok(Hello {
            registration: Registration::try_from(r)?,
            agent_version,
            protocol_version,
            last_event_seq,
        })
    }
}

impl TryFrom<pb::Register> for Registration {
    type Error = InvalidMessage;

    fn try_from(r: pb::Register) -> Result<Self, InvalidMessage> {
        let node = NodeId::new(r.node_id).map_err(InvalidMessage::NodeId)?;
        if r.boot_id.is_empty() || r.boot_id.len() > MAX_BOOT_ID {
            return Err(InvalidMessage::BootId);
        }
        if r.cards.len() > MAX_CARDS {
            return Err(InvalidMessage::TooManyCards(r.cards.len()));
        }
        let mut cards = Vec::with_capacity(r.cards.len());
        for (position, c) in r.cards.into_iter().enumerate() {
            if c.index as usize != position {
                return Err(InvalidMessage::CardOrder {
                    position,
                    index: c.index,
                });
            }
            cards.push(CardInfo::try_from(c)?);
        }
        let job = if r.job.is_empty() {
            None
        } else {
            Some(JobId::new(r.job).map_err(InvalidMessage::RegisterJob)?)
        };
        Ok(Registration {
            node,
            boot_id: r.boot_id,
            cards,
            spare: r.spare,
            job,
            supervises: r.supervises,
        })
    }
}

impl TryFrom<pb::CardInfo> for CardInfo {
    type Error = InvalidMessage;

    fn try_from(c: pb::CardInfo) -> Result<Self, InvalidMessage> {
        Ok(CardInfo {
            index: c.index,
            uuid: text("card uuid", c.uuid)?,
            vendor: text("card vendor", c.vendor)?,
            model: text("card model", c.model)?,
            memory_total_bytes: c.memory_total_bytes,
            pci_bus_id: text("card pci_bus_id", c.pci_bus_id)?,
        })
    }
}

impl TryFrom<pb::HostMetrics> for HostMetrics {
    type Error = InvalidMessage;

    fn try_from(host: pb::HostMetrics) -> Result<Self, InvalidMessage> {
        Ok(HostMetrics {
            cpu_percent: finite("host.cpu_percent", host.cpu_percent)?,
            memory_used_bytes: host.memory_used_bytes,
            memory_total_bytes: host.memory_total_bytes,
            load_1m: finite("host.load_1m", host.load_1m)?,
            uptime_s: host.uptime_s,
        })
    }
}

impl TryFrom<pb::CardSample> for CardSample {
    type Error = InvalidMessage;

    fn try_from(c: pb::CardSample) -> Result<Self, InvalidMessage> {
        Ok(CardSample {
            index: c.index,
            utilization_percent: finite("utilization_percent", c.utilization_percent)?,
            memory_used_bytes: c.memory_used_bytes,
            temperature_c: finite("temperature_c", c.temperature_c)?,
            power_w: finite("power_w", c.power_w)?,
            ecc_sbe_volatile: c.ecc_sbe_volatile,
            ecc_dbe_volatile: c.ecc_dbe_volatile,
            retired_pages: c.retired_pages,
            retirement_pending: c.retirement_pending,
            throttle_reasons: c.throttle_reasons,
            pcie_link_width: c.pcie_link_width,
            pcie_link_width_max: c.pcie_link_width_max,
            nvlink_up: c.nvlink_up,
            nvlink_total: c.nvlink_total,
            probe_latency_us: c.probe_latency_us,
            unreachable: c.unreachable,
            pcie_link_gen: c.pcie_link_gen,
            pcie_link_gen_max: c.pcie_link_gen_max,
            pcie_replay: c.pcie_replay,
            nvlink_errors: c.nvlink_errors,
        })
    }
}

/// A heartbeat checked against the shape of any node ([`MAX_CARDS`]); the
/// controller uses [`heartbeat`] with the node's own inventory.
impl TryFrom<pb::Heartbeat> for Heartbeat {
    type Error = InvalidMessage;

    fn try_from(h: pb::Heartbeat) -> Result<Self, InvalidMessage> {
        heartbeat(h, MAX_CARDS)
    }
}

/// A heartbeat from a node with `ncards` registered cards.
pub fn heartbeat(h: pb::Heartbeat, ncards: usize) -> Result<Heartbeat, InvalidMessage> {
    if h.seq == 0 {
        return Err(InvalidMessage::HeartbeatSeq);
    }
    if h.cards.len() > ncards {
        return Err(InvalidMessage::TooManySamples {
            samples: h.cards.len(),
            cards: ncards,
        });
    }
    let host = HostMetrics::try_from(h.host.unwrap_or_default())?;
    let mut cards = Vec::with_capacity(h.cards.len());
    for c in h.cards {
        if c.index as usize >= ncards {
            return Err(InvalidMessage::UnknownSample(c.index));
        }
        cards.push(CardSample::try_from(c)?);
    }
    Ok(Heartbeat {
        seq: h.seq,
        sent_at_ms: h.sent_at_ms,
        host,
        cards,
        spool_dropped: h.spool_dropped,
        spool_pending: h.spool_pending,
    })
}

/// A batch from a node with `ncards` registered cards: at most
/// [`MAX_BATCH`] events with rising sequence numbers.
pub fn events(batch: pb::EventBatch, ncards: usize) -> Result<Vec<AgentEvent>, InvalidMessage> {
    if batch.events.len() > MAX_BATCH {
        return Err(InvalidMessage::BatchTooLarge(batch.events.len()));
    }
    let mut last = 0;
    batch
        .events
        .into_iter()
        .map(|e| {
            if e.seq == 0 || e.seq <= last {
                return Err(InvalidMessage::EventOrder { seq: e.seq, last });
            }
            last = e.seq;
            let seq = e.seq;
            event(e, ncards).map_err(|reason| InvalidMessage::Event {
                seq,
                reason: Box::new(reason),
            })
        })
        .collect()
}

/// An event checked against the shape of any node ([`MAX_CARDS`]).
impl TryFrom<pb::Event> for AgentEvent {
    type Error = InvalidMessage;

    fn try_from(e: pb::Event) -> Result<Self, InvalidMessage> {
        event(e, MAX_CARDS)
    }
}

fn job(s: String) -> Result<JobId, InvalidMessage> {
    JobId::new(s).map_err(InvalidMessage::Job)
}

fn card(c: u32, ncards: usize) -> Result<u32, InvalidMessage> {
    if (c as usize) < ncards {
        Ok(c)
    } else {
        Err(InvalidMessage::UnknownCard(c))
    }
}

fn event(e: pb::Event, ncards: usize) -> Result<AgentEvent, InvalidMessage> {
    use pb::event::Body;
    let body = match e.body {
        None => return Err(InvalidMessage::EmptyEvent),
        Some(Body::CardError(c)) => {
            let signal = Signal::from_parts(&c.signal, c.code).map_err(InvalidMessage::Signal)?;
            EventBody::CardError {
                card: card(c.card, ncards)?,
                signal,
                detail: text("detail", c.detail)?,
            }
        }
        Some(Body::WorkerExit(w)) => EventBody::WorkerExit {
            rank: u32::try_from(w.rank).ok(),
            pid: w.pid,
            exit_code: (w.exit_code >= 0).then_some(w.exit_code),
            signal: (w.signal > 0).then_some(w.signal),
        },
        Some(Body::ProbeHung(p)) => EventBody::ProbeHung {
            card: card(p.card, ncards)?,
            probe: text("probe", p.probe)?,
            waited_ms: p.waited_ms,
        },
        Some(Body::Checkpoint(c)) => EventBody::Checkpoint(c.try_into()?),
        Some(Body::Progress(p)) => EventBody::Progress(p.try_into()?),
    };
    Ok(AgentEvent {
        seq: e.seq,
        at_ms: e.at_ms,
        body,
    })
}

impl TryFrom<pb::CheckpointReport> for CheckpointReport {
    type Error = InvalidMessage;

    fn try_from(c: pb::CheckpointReport) -> Result<Self, InvalidMessage> {
        if c.path.is_empty() {
            return Err(InvalidMessage::EmptyCheckpointPath);
        }
        Ok(CheckpointReport {
            job: job(c.job)?,
            rank: c.rank,
            step: c.step,
            path: text("path", c.path)?,
            bytes: (c.bytes > 0).then_some(c.bytes),
            sha256: opt_text("sha256", c.sha256)?,
            complete_all: c.complete_all,
            invalid: opt_text("invalid", c.invalid)?,
            source: opt_text("source", c.source)?,
        })
    }
}

impl TryFrom<pb::Progress> for ProgressRecord {
    type Error = InvalidMessage;

    fn try_from(p: pb::Progress) -> Result<Self, InvalidMessage> {
        let rec = match p.r#type.as_str() {
            "start" => ProgressRecord::Start {
                job: job(p.job)?,
                rank: p.rank,
                world_size: p.world_size,
                local_rank: Some(p.local_rank),
                card: p.card.checked_sub(1),
                pid: (p.pid > 0).then_some(p.pid),
            },
            "step" => ProgressRecord::Step {
                job: job(p.job)?,
                rank: p.rank,
                step: p.step,
                phase: Phase::parse(&p.phase).map_err(InvalidMessage::Phase)?,
                samples: (p.samples > 0).then_some(p.samples),
                tokens: (p.tokens > 0).then_some(p.tokens),
            },
            "end" => ProgressRecord::End {
                job: job(p.job)?,
                rank: p.rank,
                status: text("status", p.status)?,
            },
            other => return Err(InvalidMessage::ProgressType(other.to_owned())),
        };
        rec.validate().map_err(InvalidMessage::Progress)?;
        Ok(rec)
    }
}
