//! `/metrics`: Prometheus text exposition (OpenMetrics 1.0) of cluster
//! state and controller internals.
//!
//! Every scrape builds a fresh [`Registry`] from one snapshot taken inside
//! the state task ([`StateHandle::query`]), so the state task stays the only
//! owner of cluster state and no metric can drift from what the JSON API
//! shows. Counters that are derived from state (incidents by kind, phase
//! durations) are recomputed from the incidents the controller keeps, which
//! survive a restart through the store, so they only grow.
//!
//! Names follow the Prometheus conventions with a `vigil_` prefix. Where a
//! reading also exists in NVIDIA's dcgm-exporter, docs/api.md names the
//! `DCGM_FI_*` field it corresponds to.

use crate::state::StateHandle;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use vigil_core::cluster::{Cluster, JobRunState};
use vigil_core::incident::IncidentState;

/// The content type of the OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text answer.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds (seconds) of the phase-duration histograms: from a
/// sub-second detection to an hour of waiting for capacity.
const PHASE_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

type Labels = Vec<(&'static str, String)>;
type GaugeF = Family<Labels, Gauge<f64, AtomicU64>>;
type CounterF = Family<Labels, Counter<f64, AtomicU64>>;

fn histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

/// Registers and returns a gauge family.
fn gauge(reg: &mut Registry, name: &str, help: &str) -> GaugeF {
    let f = GaugeF::default();
    reg.register(name, help, f.clone());
    f
}

/// Registers and returns a counter family; the encoder adds `_total`.
fn counter(reg: &mut Registry, name: &str, help: &str) -> CounterF {
    let f = CounterF::default();
    reg.register(name, help, f.clone());
    f
}

fn set(f: &GaugeF, labels: Labels, v: f64) {
    f.get_or_create(&labels).set(v);
}

fn add(f: &CounterF, labels: Labels, v: f64) {
    if v.is_finite() && v > 0.0 {
        f.get_or_create(&labels).inc_by(v);
    } else {
        // Make the series exist at zero.
        let _ = f.get_or_create(&labels);
    }
}

fn b(x: bool) -> f64 {
    if x { 1.0 } else { 0.0 }
}

const CARD_STATES: [&str; 4] = ["healthy", "suspect", "failed", "quarantined"];
const NODE_STATES: [&str; 3] = ["alive", "suspect", "lost"];

/// Everything the state task contributes, registered in `reg`. Runs inside
/// the state task: it copies numbers and does no IO.
fn cluster_metrics(c: &Cluster, now_ms: i64, reg: &mut Registry) {
    // Cards.
    let health = gauge(
        reg,
        "vigil_card_health",
        "Card health state: 1 for the card's current state, 0 for the others",
    );
    let temp = gauge(
        reg,
        "vigil_card_temperature_celsius",
        "Card temperature (dcgm: DCGM_FI_DEV_GPU_TEMP)",
    );
    let power = gauge(
        reg,
        "vigil_card_power_watts",
        "Card power draw (dcgm: DCGM_FI_DEV_POWER_USAGE)",
    );
    let util = gauge(
        reg,
        "vigil_card_utilization_ratio",
        "Card utilization, 0 to 1 (dcgm: DCGM_FI_DEV_GPU_UTIL / 100)",
    );
    let mem_used = gauge(
        reg,
        "vigil_card_memory_used_bytes",
        "Card memory in use (dcgm: DCGM_FI_DEV_FB_USED, in MiB there)",
    );
    let mem_total = gauge(reg, "vigil_card_memory_total_bytes", "Card memory size");
    let sbe = counter(
        reg,
        "vigil_card_ecc_sbe_volatile",
        "Volatile single-bit ECC errors (dcgm: DCGM_FI_DEV_ECC_SBE_VOL_TOTAL)",
    );
    let dbe = counter(
        reg,
        "vigil_card_ecc_dbe_volatile",
        "Volatile double-bit ECC errors (dcgm: DCGM_FI_DEV_ECC_DBE_VOL_TOTAL)",
    );
    let retired = gauge(
        reg,
        "vigil_card_retired_pages",
        "Retired memory pages (dcgm: DCGM_FI_DEV_RETIRED_SBE + DCGM_FI_DEV_RETIRED_DBE)",
    );
    let pending = gauge(
        reg,
        "vigil_card_retirement_pending",
        "1 when a page retirement or row remap is pending (dcgm: DCGM_FI_DEV_ROW_REMAP_PENDING)",
    );
    let throttle = gauge(
        reg,
        "vigil_card_throttle_reasons",
        "Clock throttle reason bit mask (dcgm: DCGM_FI_DEV_CLOCK_THROTTLE_REASONS)",
    );
    let pcie = gauge(
        reg,
        "vigil_card_pcie_link_width",
        "Current PCIe link width (dcgm: DCGM_FI_DEV_PCIE_LINK_WIDTH)",
    );
    let pcie_max = gauge(
        reg,
        "vigil_card_pcie_link_width_max",
        "Maximum PCIe link width",
    );
    let nvlink_up = gauge(reg, "vigil_card_nvlink_up", "NVLinks up");
    let nvlink_total = gauge(reg, "vigil_card_nvlinks", "NVLinks the card has");
    let unreachable = gauge(
        reg,
        "vigil_card_unreachable",
        "1 when the card stopped answering its probe",
    );
    let probe = gauge(
        reg,
        "vigil_card_probe_latency_seconds",
        "How long the latest probe of the card took",
    );
    // Nodes.
    let liveness = gauge(
        reg,
        "vigil_node_liveness",
        "Node liveness: 1 for the node's current state, 0 for the others",
    );
    let connected = gauge(
        reg,
        "vigil_node_connected",
        "1 while the node's agent stream is open",
    );
    let cordoned = gauge(
        reg,
        "vigil_node_cordoned",
        "1 while the node is kept out of service",
    );
    let spare = gauge(reg, "vigil_node_spare", "1 for a standby node");
    let node_hb = counter(
        reg,
        "vigil_node_heartbeats",
        "Heartbeats applied from the node since it registered",
    );
    let spool_pending = gauge(
        reg,
        "vigil_node_spool_pending",
        "Events the agent holds that the controller has not acknowledged",
    );
    let spool_dropped = counter(
        reg,
        "vigil_node_spool_dropped",
        "Events or progress records the agent dropped because a queue was full",
    );
    let last_seen = gauge(
        reg,
        "vigil_node_last_seen_timestamp_seconds",
        "When the node was last heard from (Unix time)",
    );
    let host_cpu = gauge(reg, "vigil_node_cpu_ratio", "Host CPU use, 0 to 1");
    for n in c.nodes() {
        let node = n.id.to_string();
        for s in NODE_STATES {
            set(
                &liveness,
                vec![("node", node.clone()), ("state", s.to_owned())],
                b(n.liveness.name() == s),
            );
        }
        let nl = || vec![("node", node.clone())];
        set(&connected, nl(), b(n.connected));
        set(&cordoned, nl(), b(n.cordoned.is_some()));
        set(&spare, nl(), b(n.spare));
        add(&node_hb, nl(), n.heartbeats as f64);
        set(&spool_pending, nl(), n.spool_pending as f64);
        add(&spool_dropped, nl(), n.spool_dropped as f64);
        set(&last_seen, nl(), n.last_seen_ms as f64 / 1000.0);
        if let Some(h) = &n.host {
            set(&host_cpu, nl(), f64::from(h.cpu_percent) / 100.0);
        }
        for card in &n.cards {
            let l = || {
                vec![
                    ("node", node.clone()),
                    ("card", card.info.index.to_string()),
                    ("model", card.info.model.clone()),
                ]
            };
            for s in CARD_STATES {
                let mut hl = l();
                hl.push(("state", s.to_owned()));
                set(&health, hl, b(card.health.name() == s));
            }
            set(&mem_total, l(), card.info.memory_total_bytes as f64);
            let Some(x) = &card.sample else { continue };
            set(&temp, l(), f64::from(x.temperature_c));
            set(&power, l(), f64::from(x.power_w));
            set(&util, l(), f64::from(x.utilization_percent) / 100.0);
            set(&mem_used, l(), x.memory_used_bytes as f64);
            add(&sbe, l(), x.ecc_sbe_volatile as f64);
            add(&dbe, l(), x.ecc_dbe_volatile as f64);
            set(&retired, l(), f64::from(x.retired_pages));
            set(&pending, l(), b(x.retirement_pending));
            set(&throttle, l(), x.throttle_reasons as f64);
            set(&pcie, l(), f64::from(x.pcie_link_width));
            set(&pcie_max, l(), f64::from(x.pcie_link_width_max));
            set(&nvlink_up, l(), f64::from(x.nvlink_up));
            set(&nvlink_total, l(), f64::from(x.nvlink_total));
            set(&unreachable, l(), b(x.unreachable));
            set(&probe, l(), f64::from(x.probe_latency_us) / 1e6);
        }
    }

    // Jobs.
    let step = gauge(
        reg,
        "vigil_job_step",
        "Highest step any rank of the job has finished",
    );
    let world = gauge(reg, "vigil_job_world_size", "Ranks the job has");
    let reporting = gauge(
        reg,
        "vigil_job_ranks_reporting",
        "Ranks that have reported progress",
    );
    let running = gauge(reg, "vigil_job_running", "1 while the job runs");
    let hung = gauge(
        reg,
        "vigil_job_hung",
        "1 from a hang verdict until the next step ends",
    );
    let rank_steps = counter(
        reg,
        "vigil_job_rank_steps",
        "Steps finished, summed over ranks",
    );
    let samples = counter(reg, "vigil_job_samples", "Samples processed");
    let tokens = counter(reg, "vigil_job_tokens", "Tokens processed");
    let restarts = counter(
        reg,
        "vigil_job_restarts",
        "Times a recovery restarted the job",
    );
    let progress = gauge(
        reg,
        "vigil_job_last_progress_timestamp_seconds",
        "When the job last reported progress (Unix time)",
    );
    let stragglers = gauge(
        reg,
        "vigil_job_stragglers",
        "Ranks currently judged stragglers",
    );
    for j in c.jobs() {
        let l = || vec![("job", j.id.to_string())];
        set(&step, l(), j.step as f64);
        set(&world, l(), f64::from(j.world_size));
        set(&reporting, l(), j.ranks.len() as f64);
        set(&running, l(), b(j.state == JobRunState::Running));
        set(&hung, l(), b(j.hung));
        add(&rank_steps, l(), j.steps_total as f64);
        add(&samples, l(), j.samples_total as f64);
        add(&tokens, l(), j.tokens_total as f64);
        add(&restarts, l(), f64::from(j.restarts));
        set(&progress, l(), j.last_progress_ms as f64 / 1000.0);
        let n = serde_json::to_value(&j.timing)
            .ok()
            .and_then(|t| t.get("stragglers").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0);
        set(&stragglers, l(), n as f64);
    }

    // Incidents.
    let opened = counter(reg, "vigil_incidents", "Incidents opened, by kind");
    let open = gauge(reg, "vigil_incidents_open", "Incidents open now, by kind");
    let phases = Family::<Labels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
    reg.register(
        "vigil_incident_phase_duration_seconds",
        "Duration of each finished phase of an incident's timeline",
        phases.clone(),
    );
    let resolve = Family::<Labels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
    reg.register(
        "vigil_incident_resolution_seconds",
        "Time from detection to resolution of resolved incidents, by kind",
        resolve.clone(),
    );
    for kind in [
        "card_fault",
        "node_lost",
        "hang",
        "straggler",
        "worker_exit",
        "probe_hung",
        "network",
    ] {
        let _ = opened.get_or_create(&vec![("kind", kind.to_owned())]);
        set(&open, vec![("kind", kind.to_owned())], 0.0);
    }
    for i in c.incidents() {
        let kind = i.kind.as_str().to_owned();
        opened.get_or_create(&vec![("kind", kind.clone())]).inc();
        if i.state == IncidentState::Open {
            open.get_or_create(&vec![("kind", kind.clone())]).inc();
        }
        for p in &i.phases {
            if let Some(end) = p.end {
                let secs = (end.0 - p.start.0).max(0) as f64 / 1000.0;
                phases
                    .get_or_create(&vec![("phase", p.name.clone())])
                    .observe(secs);
            }
        }
        if let Some(r) = i.resolved_at {
            let secs = (r.0 - i.detected_at.0).max(0) as f64 / 1000.0;
            resolve.get_or_create(&vec![("kind", kind)]).observe(secs);
        }
    }

    // Safety.
    let breaker = gauge(
        reg,
        "vigil_circuit_breaker_open",
        "1 while automatic quarantine is withheld",
    );
    set(&breaker, Vec::new(), b(c.breaker_open()));
    let allowance = gauge(
        reg,
        "vigil_quarantine_allowance_cards",
        "Cards an automatic quarantine may still take now",
    );
    set(
        &allowance,
        Vec::new(),
        f64::from(c.quarantine_allowance(now_ms)),
    );

    ledger_metrics(reg, &ledger_entries(c, now_ms));
}

/// The ledger entries of the cluster, one per job, in the JSON shape of
/// `GET /api/v1/ledger` (docs/api.md).
fn ledger_entries(c: &Cluster, now_ms: i64) -> Vec<Value> {
    let rows = c.ledger().rows(now_ms, None, None);
    vigil_core::ledger::report_jobs(&rows, None)
        .iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect()
}

/// LEDGER: publishes ledger entries shaped as in docs/api.md
/// (`{"job", "allocated_card_hours", "effective_card_hours", "ettr",
/// "lost_card_hours": {cause: hours}}`) as
/// `vigil_ledger_card_hours_total{job, category}` (category `allocated`,
/// `effective`, or a loss cause such as `detection`) and
/// `vigil_ledger_ettr{job}`. Entries that lack a job are skipped.
pub fn ledger_metrics(reg: &mut Registry, entries: &[Value]) {
    let hours = counter(
        reg,
        "vigil_ledger_card_hours",
        "Card-hours of each job: allocated, effective, and lost by cause",
    );
    let ettr = gauge(
        reg,
        "vigil_ledger_ettr",
        "Effective training time ratio: effective over allocated card-hours",
    );
    for e in entries {
        let Some(job) = e.get("job").and_then(Value::as_str) else {
            continue;
        };
        let l = |cat: &str| vec![("job", job.to_owned()), ("category", cat.to_owned())];
        for (key, cat) in [
            ("allocated_card_hours", "allocated"),
            ("effective_card_hours", "effective"),
        ] {
            if let Some(v) = e.get(key).and_then(Value::as_f64) {
                add(&hours, l(cat), v);
            }
        }
        for (cause, v) in e
            .get("lost_card_hours")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(v) = v.as_f64() {
                add(&hours, l(cause), v);
            }
        }
        if let Some(v) = e.get("ettr").and_then(Value::as_f64) {
            set(&ettr, vec![("job", job.to_owned())], v);
        }
    }
}

/// The controller's own counters, registered in `reg`.
fn controller_metrics(state: &StateHandle, reg: &mut Registry) {
    let s = &state.stats;
    let streams = gauge(reg, "vigil_agent_streams", "Agent streams open now");
    set(&streams, Vec::new(), s.streams.load(Relaxed) as f64);
    let heartbeats = counter(reg, "vigil_heartbeats", "Heartbeats applied since start");
    add(&heartbeats, Vec::new(), s.heartbeats.load(Relaxed) as f64);
    let events = counter(
        reg,
        "vigil_agent_events",
        "Agent events applied since start",
    );
    add(&events, Vec::new(), s.events.load(Relaxed) as f64);
    let dup = counter(
        reg,
        "vigil_duplicate_events",
        "Replayed agent events that were already stored and were skipped",
    );
    add(&dup, Vec::new(), s.duplicate_events.load(Relaxed) as f64);
    let rejected = counter(
        reg,
        "vigil_rejected_streams",
        "Agent streams closed because the cluster state refused a heartbeat",
    );
    add(&rejected, Vec::new(), s.rejected.load(Relaxed) as f64);
    let feed = gauge(
        reg,
        "vigil_feed_sequence",
        "Sequence number of the newest feed event (it survives restarts)",
    );
    set(&feed, Vec::new(), s.feed_seq.load(Relaxed) as f64);
    let (depth, capacity) = state.queue_depth();
    let q = gauge(
        reg,
        "vigil_state_queue_depth",
        "Messages waiting for the state task",
    );
    set(&q, Vec::new(), depth as f64);
    let qc = gauge(
        reg,
        "vigil_state_queue_capacity",
        "Capacity of the state task's queue",
    );
    set(&qc, Vec::new(), capacity as f64);
    let info = gauge(
        reg,
        "vigil_build_info",
        "The controller's version, as a label",
    );
    set(
        &info,
        vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
        1.0,
    );
}

/// Renders `/metrics` as OpenMetrics text when `openmetrics` is true
/// (Prometheus asks for it), else in the classic Prometheus text format
/// (version 0.0.4) that older tools and `promtool check metrics` read.
/// `None` when the state task is gone.
pub async fn render(state: &StateHandle, openmetrics: bool) -> Option<String> {
    let now = crate::now_ms();
    let mut reg = state
        .query(move |c| {
            let mut reg = Registry::default();
            cluster_metrics(c, now, &mut reg);
            reg
        })
        .await?;
    controller_metrics(state, &mut reg);
    let mut out = String::new();
    encode(&mut out, &reg).ok()?;
    Some(if openmetrics {
        tidy(&out)
    } else {
        classic(&out)
    })
}

/// Drops the empty label braces (`name{} 1`) of unlabelled samples.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if !line.starts_with('#')
            && let Some(i) = line.find("{} ")
        {
            out.push_str(&line[..i]);
            out.push_str(&line[i + 2..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// OpenMetrics text to the classic Prometheus text format: a counter's
/// family is named with its `_total` suffix, and there is no `# EOF` or
/// `# UNIT` line.
fn classic(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in tidy(text).lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(p);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_entries_become_counters_by_category() {
        let mut reg = Registry::default();
        let e = serde_json::json!({
            "job": "pretrain", "allocated_card_hours": 10.0, "effective_card_hours": 9.4,
            "ettr": 0.94, "lost_card_hours": {"detection": 0.1, "recovery": 0.5}
        });
        ledger_metrics(&mut reg, &[e, serde_json::json!({"no_job": 1})]);
        let mut out = String::new();
        encode(&mut out, &reg).expect("encode");
        assert!(
            out.contains(
                r#"vigil_ledger_card_hours_total{job="pretrain",category="allocated"} 10.0"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"vigil_ledger_card_hours_total{job="pretrain",category="recovery"} 0.5"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"vigil_ledger_ettr{job="pretrain"} 0.94"#),
            "{out}"
        );
    }

    #[test]
    fn an_empty_cluster_still_exposes_every_family() {
        let c = Cluster::new(vigil_core::cluster::ClusterConfig::default());
        let mut reg = Registry::default();
        cluster_metrics(&c, 0, &mut reg);
        let mut out = String::new();
        encode(&mut out, &reg).expect("encode");
        assert!(out.contains("# TYPE vigil_incidents counter"), "{out}");
        assert!(
            out.contains(r#"vigil_incidents_total{kind="card_fault"} 0.0"#),
            "{out}"
        );
        assert!(out.contains("vigil_circuit_breaker_open{} 0.0"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
        let c = classic(&out);
        assert!(c.contains("# TYPE vigil_incidents_total counter\n"), "{c}");
        assert!(c.contains("\nvigil_circuit_breaker_open 0.0\n"), "{c}");
        assert!(!c.contains("# EOF"), "{c}");
    }
}
