//! Domain types to wire messages (the agent only encodes; the controller
//! validates and decodes at its own edge).

use vigil_core::model::{AgentEvent, CardInfo, CardSample, EventBody, Heartbeat, HostMetrics};
use vigil_core::progress::ProgressRecord;
use vigil_proto::v1 as pb;

pub fn card_info(c: &CardInfo) -> pb::CardInfo {
    pb::CardInfo {
        index: c.index,
        uuid: c.uuid.clone(),
        vendor: c.vendor.clone(),
        model: c.model.clone(),
        memory_total_bytes: c.memory_total_bytes,
        pci_bus_id: c.pci_bus_id.clone(),
    }
}

pub fn host(h: &HostMetrics) -> pb::HostMetrics {
    pb::HostMetrics {
        cpu_percent: h.cpu_percent,
        memory_used_bytes: h.memory_used_bytes,
        memory_total_bytes: h.memory_total_bytes,
        load_1m: h.load_1m,
        uptime_s: h.uptime_s,
    }
}

pub fn card_sample(s: &CardSample) -> pb::CardSample {
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

pub fn heartbeat(h: &Heartbeat) -> pb::Heartbeat {
    pb::Heartbeat {
        seq: h.seq,
        sent_at_ms: h.sent_at_ms,
        host: Some(host(&h.host)),
        cards: h.cards.iter().map(card_sample).collect(),
        spool_dropped: h.spool_dropped,
        spool_pending: h.spool_pending,
    }
}

pub fn event(e: &AgentEvent) -> pb::Event {
    use pb::event::Body;
    let body = match &e.body {
        EventBody::CardError {
            card,
            signal,
            detail,
        } => {
            let (name, code) = signal
                .parse::<vigil_core::model::Signal>()
                .map(|s| {
                    let (n, c) = s.parts();
                    (n.to_owned(), c)
                })
                .unwrap_or_else(|_| (signal.clone(), 0));
            Body::CardError(pb::CardError {
                card: *card,
                signal: name,
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
        EventBody::Checkpoint(c) => Body::Checkpoint(pb::CheckpointReport {
            job: c.job.to_string(),
            rank: c.rank,
            step: c.step,
            path: c.path.clone(),
            bytes: c.bytes.unwrap_or(0),
            sha256: c.sha256.clone().unwrap_or_default(),
            complete_all: c.complete_all,
            invalid: c.invalid.clone().unwrap_or_default(),
            source: c.source.clone().unwrap_or_default(),
        }),
        EventBody::Progress(p) => match p {
            ProgressRecord::Checkpoint {
                job,
                rank,
                step,
                path,
                bytes,
                sha256,
            } => Body::Checkpoint(pb::CheckpointReport {
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
            other => Body::Progress(progress(other)),
        },
    };
    pb::Event {
        seq: e.seq,
        at_ms: e.at_ms,
        body: Some(body),
    }
}

fn progress(p: &ProgressRecord) -> pb::Progress {
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
