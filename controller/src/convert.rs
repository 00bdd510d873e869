//! The edge: wire messages to validated domain types.
//!
//! Everything an agent sends passes through here before it reaches cluster
//! state. A message that does not validate is refused with a reason that
//! names the field; the stream that sent it is closed with
//! `INVALID_ARGUMENT`, and no other stream is affected.

use vigil_core::cluster::Registration;
use vigil_core::model::{
    AgentEvent, CardInfo, CardSample, CheckpointReport, EventBody, Heartbeat, HostMetrics, Signal,
};
use vigil_core::progress::{Phase, ProgressRecord};
use vigil_core::{JobId, NodeId};
use vigil_proto::v1 as pb;

/// Most cards one node may declare.
pub const MAX_CARDS: usize = 64;
/// Most events in one batch.
pub const MAX_BATCH: usize = 4096;
const MAX_TEXT: usize = 4096;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

fn text(field: &str, s: String) -> Result<String, Invalid> {
    if s.len() > MAX_TEXT {
        return invalid(format!("{field} is longer than {MAX_TEXT} bytes"));
    }
    Ok(s)
}

/// Optional text: empty means absent.
fn opt_text(field: &str, s: String) -> Result<Option<String>, Invalid> {
    if s.is_empty() {
        Ok(None)
    } else {
        text(field, s).map(Some)
    }
}

fn finite(field: &str, v: f32) -> Result<f32, Invalid> {
    if v.is_finite() {
        Ok(v)
    } else {
        invalid(format!("{field} is not a finite number"))
    }
}

pub fn registration(r: pb::Register) -> Result<Registration, Invalid> {
    let node = NodeId::new(r.node_id).map_err(|e| Invalid(format!("register.node_id: {e}")))?;
    if r.boot_id.is_empty() || r.boot_id.len() > 64 {
        return invalid("register.boot_id must be 1 to 64 characters");
    }
    if r.cards.len() > MAX_CARDS {
        return invalid(format!(
            "register.cards: {} cards, at most {MAX_CARDS}",
            r.cards.len()
        ));
    }
    let mut cards = Vec::with_capacity(r.cards.len());
    for (i, c) in r.cards.into_iter().enumerate() {
        if c.index as usize != i {
            return invalid(format!(
                "register.cards[{i}].index is {}; cards must be listed by index from 0",
                c.index
            ));
        }
        cards.push(CardInfo {
            index: c.index,
            uuid: text("card uuid", c.uuid)?,
            vendor: text("card vendor", c.vendor)?,
            model: text("card model", c.model)?,
            memory_total_bytes: c.memory_total_bytes,
            pci_bus_id: text("card pci_bus_id", c.pci_bus_id)?,
        });
    }
    let job = if r.job.is_empty() {
        None
    } else {
        Some(JobId::new(r.job).map_err(|e| Invalid(format!("register.job: {e}")))?)
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

pub fn heartbeat(h: pb::Heartbeat, ncards: usize) -> Result<Heartbeat, Invalid> {
    if h.seq == 0 {
        return invalid("heartbeat.seq must start at 1");
    }
    if h.cards.len() > ncards {
        return invalid(format!(
            "heartbeat has {} card samples for {ncards} registered cards",
            h.cards.len()
        ));
    }
    let host = h.host.unwrap_or_default();
    let host = HostMetrics {
        cpu_percent: finite("host.cpu_percent", host.cpu_percent)?,
        memory_used_bytes: host.memory_used_bytes,
        memory_total_bytes: host.memory_total_bytes,
        load_1m: finite("host.load_1m", host.load_1m)?,
        uptime_s: host.uptime_s,
    };
    let mut cards = Vec::with_capacity(h.cards.len());
    for c in h.cards {
        if c.index as usize >= ncards {
            return invalid(format!("heartbeat sample for unknown card {}", c.index));
        }
        cards.push(CardSample {
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
        });
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

pub fn events(batch: pb::EventBatch, ncards: usize) -> Result<Vec<AgentEvent>, Invalid> {
    if batch.events.len() > MAX_BATCH {
        return invalid(format!(
            "event batch of {} events, at most {MAX_BATCH}",
            batch.events.len()
        ));
    }
    let mut last = 0;
    batch
        .events
        .into_iter()
        .map(|e| {
            if e.seq == 0 || e.seq <= last {
                return invalid(format!(
                    "event seq {} is not above the previous one ({last})",
                    e.seq
                ));
            }
            last = e.seq;
            let seq = e.seq;
            event(e, ncards).map_err(|Invalid(m)| Invalid(format!("event {seq}: {m}")))
        })
        .collect()
}

fn job(s: String) -> Result<JobId, Invalid> {
    JobId::new(s).map_err(|e| Invalid(e.to_string()))
}

fn card(c: u32, ncards: usize) -> Result<u32, Invalid> {
    if (c as usize) < ncards {
        Ok(c)
    } else {
        invalid(format!("card {c} is not in this node's inventory"))
    }
}

fn event(e: pb::Event, ncards: usize) -> Result<AgentEvent, Invalid> {
    use pb::event::Body;
    let body = match e.body {
        None => return invalid("empty event"),
        Some(Body::CardError(c)) => {
            let signal = Signal::from_parts(&c.signal, c.code).map_err(Invalid)?;
            EventBody::CardError {
                card: card(c.card, ncards)?,
                signal: signal.to_string(),
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
        Some(Body::Checkpoint(c)) => {
            if c.path.is_empty() {
                return invalid("checkpoint path is empty");
            }
            EventBody::Checkpoint(CheckpointReport {
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
        Some(Body::Progress(p)) => {
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
                    phase: Phase::parse(&p.phase).map_err(Invalid)?,
                    samples: (p.samples > 0).then_some(p.samples),
                    tokens: (p.tokens > 0).then_some(p.tokens),
                },
                "end" => ProgressRecord::End {
                    job: job(p.job)?,
                    rank: p.rank,
                    status: text("status", p.status)?,
                },
                other => return invalid(format!("unknown progress type {other:?}")),
            };
            rec.validate().map_err(Invalid)?;
            EventBody::Progress(rec)
        }
    };
    Ok(AgentEvent {
        seq: e.seq,
        at_ms: e.at_ms,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> pb::Register {
        pb::Register {
            node_id: "n0".into(),
            boot_id: "b".into(),
            protocol_version: 1,
            cards: vec![pb::CardInfo {
                index: 0,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn registrations_are_validated() {
        assert!(registration(reg()).is_ok());
        let mut r = reg();
        r.node_id = "bad node".into();
        assert!(registration(r).is_err_and(|e| e.0.contains("node_id")));
        let mut r = reg();
        r.cards[0].index = 3;
        assert!(registration(r).is_err_and(|e| e.0.contains("index")));
        let mut r = reg();
        r.boot_id.clear();
        assert!(registration(r).is_err());
    }

    #[test]
    fn heartbeats_are_validated() {
        let hb = pb::Heartbeat {
            seq: 1,
            cards: vec![pb::CardSample {
                index: 0,
                temperature_c: f32::NAN,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(heartbeat(hb.clone(), 1).is_err_and(|e| e.0.contains("temperature")));
        let mut ok = hb;
        ok.cards[0].temperature_c = 40.0;
        assert!(heartbeat(ok.clone(), 1).is_ok());
        assert!(heartbeat(ok, 0).is_err());
    }

    #[test]
    fn events_are_validated() {
        let ev = |seq, body| pb::Event {
            seq,
            at_ms: 0,
            body: Some(body),
        };
        let xid = pb::event::Body::CardError(pb::CardError {
            card: 0,
            signal: "xid".into(),
            code: 79,
            detail: String::new(),
        });
        let ok = events(
            pb::EventBatch {
                events: vec![ev(1, xid.clone())],
            },
            1,
        )
        .expect("valid");
        assert!(matches!(&ok[0].body, EventBody::CardError { signal, .. } if signal == "xid:79"));
        // Out of order, unknown card, unknown signal.
        assert!(
            events(
                pb::EventBatch {
                    events: vec![ev(2, xid.clone()), ev(1, xid.clone())]
                },
                1
            )
            .is_err()
        );
        assert!(
            events(
                pb::EventBatch {
                    events: vec![ev(1, xid)]
                },
                0
            )
            .is_err()
        );
        let bogus = pb::event::Body::CardError(pb::CardError {
            card: 0,
            signal: "meltdown".into(),
            code: 0,
            detail: String::new(),
        });
        assert!(
            events(
                pb::EventBatch {
                    events: vec![ev(1, bogus)]
                },
                1
            )
            .is_err()
        );
    }
}
