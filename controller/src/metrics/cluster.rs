//! The cluster's families, from a [`ClusterSnapshot`]: cards, nodes, jobs,
//! incidents, safety and the ledger.

use super::family::{CounterF, GaugeF, add, b, counter, gauge, histograms, set};
use super::snapshot::{CardSnapshot, ClusterSnapshot, NodeSnapshot};
use prometheus_client::registry::Registry;

const CARD_STATES: [&str; 4] = ["healthy", "suspect", "failed", "quarantined"];
const NODE_STATES: [&str; 3] = ["alive", "suspect", "lost"];
/// Incident kinds that are always present, at 0 when there are none.
const INCIDENT_KINDS: [&str; 7] = [
    "card_fault",
    "node_lost",
    "hang",
    "straggler",
    "worker_exit",
    "probe_hung",
    "network",
];

/// Every family the cluster contributes, registered in `reg`.
pub(super) fn register(s: &ClusterSnapshot, reg: &mut Registry) {
    let cards = CardFamilies::new(reg);
    let nodes = NodeFamilies::new(reg);
    for n in &s.nodes {
        nodes.fill(n);
        for card in &n.cards {
            cards.fill(&n.id, card);
        }
    }
    jobs(s, reg);
    incidents(s, reg);
    safety(s, reg);
    super::ledger::ledger_metrics(reg, &super::ledger::entries(&s.ledger));
}

struct CardFamilies {
    health: GaugeF,
    temp: GaugeF,
    power: GaugeF,
    util: GaugeF,
    mem_used: GaugeF,
    mem_total: GaugeF,
    sbe: CounterF,
    dbe: CounterF,
    retired: GaugeF,
    pending: GaugeF,
    throttle: GaugeF,
    pcie: GaugeF,
    pcie_max: GaugeF,
    nvlink_up: GaugeF,
    nvlink_total: GaugeF,
    unreachable: GaugeF,
    probe: GaugeF,
}

impl CardFamilies {
    fn new(reg: &mut Registry) -> Self {
        CardFamilies {
            health: gauge(
                reg,
                "vigil_card_health",
                "Card health state: 1 for the card's current state, 0 for the others",
            ),
            temp: gauge(
                reg,
                "vigil_card_temperature_celsius",
                "Card temperature (dcgm: DCGM_FI_DEV_GPU_TEMP)",
            ),
            power: gauge(
                reg,
                "vigil_card_power_watts",
                "Card power draw (dcgm: DCGM_FI_DEV_POWER_USAGE)",
            ),
            util: gauge(
                reg,
                "vigil_card_utilization_ratio",
                "Card utilization, 0 to 1 (dcgm: DCGM_FI_DEV_GPU_UTIL / 100)",
            ),
            mem_used: gauge(
                reg,
                "vigil_card_memory_used_bytes",
                "Card memory in use (dcgm: DCGM_FI_DEV_FB_USED, in MiB there)",
            ),
            mem_total: gauge(reg, "vigil_card_memory_total_bytes", "Card memory size"),
            sbe: counter(
                reg,
                "vigil_card_ecc_sbe_volatile",
                "Volatile single-bit ECC errors (dcgm: DCGM_FI_DEV_ECC_SBE_VOL_TOTAL)",
            ),
            dbe: counter(
                reg,
                "vigil_card_ecc_dbe_volatile",
                "Volatile double-bit ECC errors (dcgm: DCGM_FI_DEV_ECC_DBE_VOL_TOTAL)",
            ),
            retired: gauge(
                reg,
                "vigil_card_retired_pages",
                "Retired memory pages (dcgm: DCGM_FI_DEV_RETIRED_SBE + DCGM_FI_DEV_RETIRED_DBE)",
            ),
            pending: gauge(
                reg,
                "vigil_card_retirement_pending",
                "1 when a page retirement or row remap is pending (dcgm: DCGM_FI_DEV_ROW_REMAP_PENDING)",
            ),
            throttle: gauge(
                reg,
                "vigil_card_throttle_reasons",
                "Clock throttle reason bit mask (dcgm: DCGM_FI_DEV_CLOCK_THROTTLE_REASONS)",
            ),
            pcie: gauge(
                reg,
                "vigil_card_pcie_link_width",
                "Current PCIe link width (dcgm: DCGM_FI_DEV_PCIE_LINK_WIDTH)",
            ),
            pcie_max: gauge(
                reg,
                "vigil_card_pcie_link_width_max",
                "Maximum PCIe link width",
            ),
            nvlink_up: gauge(reg, "vigil_card_nvlink_up", "NVLinks up"),
            nvlink_total: gauge(reg, "vigil_card_nvlinks", "NVLinks the card has"),
            unreachable: gauge(
                reg,
                "vigil_card_unreachable",
                "1 when the card stopped answering its probe",
            ),
            probe: gauge(
                reg,
                "vigil_card_probe_latency_seconds",
                "How long the latest probe of the card took",
            ),
        }
    }

    fn fill(&self, node: &str, card: &CardSnapshot) {
        let l = || {
            vec![
                ("node", node.to_owned()),
                ("card", card.index.to_string()),
                ("model", card.model.clone()),
            ]
        };
        for s in CARD_STATES {
            let mut hl = l();
            hl.push(("state", s.to_owned()));
            set(&self.health, hl, b(card.health == s));
        }
        set(&self.mem_total, l(), card.memory_total_bytes as f64);
        let Some(x) = &card.sample else { return };
        set(&self.temp, l(), f64::from(x.temperature_c));
        set(&self.power, l(), f64::from(x.power_w));
        set(&self.util, l(), f64::from(x.utilization_percent) / 100.0);
        set(&self.mem_used, l(), x.memory_used_bytes as f64);
        add(&self.sbe, l(), x.ecc_sbe_volatile as f64);
        add(&self.dbe, l(), x.ecc_dbe_volatile as f64);
        set(&self.retired, l(), f64::from(x.retired_pages));
        set(&self.pending, l(), b(x.retirement_pending));
        set(&self.throttle, l(), x.throttle_reasons as f64);
        set(&self.pcie, l(), f64::from(x.pcie_link_width));
        set(&self.pcie_max, l(), f64::from(x.pcie_link_width_max));
        set(&self.nvlink_up, l(), f64::from(x.nvlink_up));
        set(&self.nvlink_total, l(), f64::from(x.nvlink_total));
        set(&self.unreachable, l(), b(x.unreachable));
        set(&self.probe, l(), f64::from(x.probe_latency_us) / 1e6);
    }
}

struct NodeFamilies {
    liveness: GaugeF,
    connected: GaugeF,
    cordoned: GaugeF,
    spare: GaugeF,
    heartbeats: CounterF,
    spool_pending: GaugeF,
    spool_dropped: CounterF,
    last_seen: GaugeF,
    host_cpu: GaugeF,
}

impl NodeFamilies {
    fn new(reg: &mut Registry) -> Self {
        NodeFamilies {
            liveness: gauge(
                reg,
                "vigil_node_liveness",
                "Node liveness: 1 for the node's current state, 0 for the others",
            ),
            connected: gauge(
                reg,
                "vigil_node_connected",
                "1 while the node's agent stream is open",
            ),
            cordoned: gauge(
                reg,
                "vigil_node_cordoned",
                "1 while the node is kept out of service",
            ),
            spare: gauge(reg, "vigil_node_spare", "1 for a standby node"),
            heartbeats: counter(
                reg,
                "vigil_node_heartbeats",
                "Heartbeats applied from the node since it registered",
            ),
            spool_pending: gauge(
                reg,
                "vigil_node_spool_pending",
                "Events the agent holds that the controller has not acknowledged",
            ),
            spool_dropped: counter(
                reg,
                "vigil_node_spool_dropped",
                "Events or progress records the agent dropped because a queue was full",
            ),
            last_seen: gauge(
                reg,
                "vigil_node_last_seen_timestamp_seconds",
                "When the node was last heard from (Unix time)",
            ),
            host_cpu: gauge(reg, "vigil_node_cpu_ratio", "Host CPU use, 0 to 1"),
        }
    }

    fn fill(&self, n: &NodeSnapshot) {
        for s in NODE_STATES {
            set(
                &self.liveness,
                vec![("node", n.id.clone()), ("state", s.to_owned())],
                b(n.liveness == s),
            );
        }
        let nl = || vec![("node", n.id.clone())];
        set(&self.connected, nl(), b(n.connected));
        set(&self.cordoned, nl(), b(n.cordoned));
        set(&self.spare, nl(), b(n.spare));
        add(&self.heartbeats, nl(), n.heartbeats as f64);
        set(&self.spool_pending, nl(), n.spool_pending as f64);
        add(&self.spool_dropped, nl(), n.spool_dropped as f64);
        set(&self.last_seen, nl(), n.last_seen_ms as f64 / 1000.0);
        if let Some(cpu) = n.cpu_percent {
            set(&self.host_cpu, nl(), f64::from(cpu) / 100.0);
        }
    }
}

fn jobs(s: &ClusterSnapshot, reg: &mut Registry) {
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
    for j in &s.jobs {
        let l = || vec![("job", j.id.clone())];
        set(&step, l(), j.step as f64);
        set(&world, l(), f64::from(j.world_size));
        set(&reporting, l(), j.ranks_reporting as f64);
        set(&running, l(), b(j.running));
        set(&hung, l(), b(j.hung));
        add(&rank_steps, l(), j.steps_total as f64);
        add(&samples, l(), j.samples_total as f64);
        add(&tokens, l(), j.tokens_total as f64);
        add(&restarts, l(), f64::from(j.restarts));
        set(&progress, l(), j.last_progress_ms as f64 / 1000.0);
        set(&stragglers, l(), j.stragglers as f64);
    }
}

fn incidents(s: &ClusterSnapshot, reg: &mut Registry) {
    let opened = counter(reg, "vigil_incidents", "Incidents opened, by kind");
    let open = gauge(reg, "vigil_incidents_open", "Incidents open now, by kind");
    let phases = histograms(
        reg,
        "vigil_incident_phase_duration_seconds",
        "Duration of each finished phase of an incident's timeline",
    );
    let resolve = histograms(
        reg,
        "vigil_incident_resolution_seconds",
        "Time from detection to resolution of resolved incidents, by kind",
    );
    for kind in INCIDENT_KINDS {
        let _series = opened.get_or_create(&vec![("kind", kind.to_owned())]);
        set(&open, vec![("kind", kind.to_owned())], 0.0);
    }
    for i in &s.incidents {
        let kind = i.kind.to_owned();
        opened.get_or_create(&vec![("kind", kind.clone())]).inc();
        if i.open {
            open.get_or_create(&vec![("kind", kind.clone())]).inc();
        }
        for (name, secs) in &i.phases {
            phases
                .get_or_create(&vec![("phase", name.clone())])
                .observe(*secs);
        }
        if let Some(secs) = i.resolution_s {
            resolve.get_or_create(&vec![("kind", kind)]).observe(secs);
        }
    }
}

fn safety(s: &ClusterSnapshot, reg: &mut Registry) {
    let breaker = gauge(
        reg,
        "vigil_circuit_breaker_open",
        "1 while automatic quarantine is withheld",
    );
    set(&breaker, Vec::new(), b(s.breaker_open));
    let allowance = gauge(
        reg,
        "vigil_quarantine_allowance_cards",
        "Cards an automatic quarantine may still take now",
    );
    set(&allowance, Vec::new(), f64::from(s.quarantine_allowance));
}
