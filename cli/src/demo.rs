//! `vigil demo`: an embedded controller on SQLite and a simulated cluster of
//! real agents over real gRPC on loopback, playing a scenario.

use crate::Output;
use serde::Serialize;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;
use vigil_controller::config::ControllerConfig;
use vigil_core::incident::Incident;
use vigil_sim::scenario::{self, FaultType, Scenario};
use vigil_sim::{InjectedFault, SimOptions, Truth};

/// Options of one demo run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub scenario: Option<std::path::PathBuf>,
    pub speed: f64,
    pub output: Output,
    /// Directory for the demo's SQLite store (default: a fresh temp dir).
    pub data_dir: Option<std::path::PathBuf>,
    /// Address of the embedded controller's HTTP API and dashboard
    /// (default: a free port on 127.0.0.1).
    pub http_listen: Option<std::net::SocketAddr>,
}

/// Loads the scenario named by the options, or the built-in one.
pub fn load_scenario(path: Option<&std::path::Path>) -> anyhow::Result<Scenario> {
    match path {
        None => scenario::parse(scenario::DEFAULT_SCENARIO)
            .map_err(|e| anyhow::anyhow!("built-in scenario: {e}")),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read scenario {}: {e}", p.display()))?;
            scenario::parse(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", p.display()))
        }
    }
}

/// Where a correct verdict for a fault points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// An incident naming the fault's card.
    Card,
    /// An incident naming the fault's node, no card.
    Node,
    /// No incident at all: nothing is wrong with the hardware (an
    /// informational XID, a job-wide slowdown, a partition shorter than the
    /// loss threshold, a corrupt checkpoint before any restore).
    Nothing,
    /// Either outcome is defensible (a partition near the loss threshold).
    Unscored,
}

/// What a correct verdict for `f` is, at heartbeat period `hb_ms`
/// (scenario milliseconds).
pub fn expectation(f: &InjectedFault, hb_ms: f64) -> Expect {
    use FaultType as T;
    match f.kind {
        T::Xid if f.code.is_some_and(vigil_sim::informational_xid) => Expect::Nothing,
        T::Xid
        | T::EccDbe
        | T::GpuLost
        | T::Thermal
        | T::Nvlink
        | T::PcieDegraded
        | T::Hang
        | T::Slow
        | T::WorkerExit => Expect::Card,
        T::ProbeHang | T::NodeCrash | T::Flap => Expect::Node,
        T::Partition => {
            let ms = f.for_s.unwrap_or(0.0) * 1000.0;
            if ms >= 3.0 * hb_ms {
                Expect::Node
            } else if ms <= 1.5 * hb_ms {
                Expect::Nothing
            } else {
                Expect::Unscored
            }
        }
        T::JobSlowdown | T::CheckpointCorrupt => Expect::Nothing,
    }
}

/// How one injected fault was judged.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub fault: InjectedFault,
    pub expect: Expect,
    /// The incident that names this fault's location, if any.
    pub incident: Option<String>,
    /// The fault got the verdict it should have (an incident at the right
    /// place, or none when none is due).
    pub correct: bool,
    /// Detection latency in scenario seconds.
    pub latency_s: Option<f64>,
}

/// Verdict quality over a run.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub faults: usize,
    /// Faults that call for an incident.
    pub expected_incidents: usize,
    /// Of those, how many got one at the right place.
    pub localized: usize,
    pub incidents: usize,
    /// Incidents that point at no injected fault.
    pub false_incidents: usize,
    /// Incidents that point at the right place / all incidents.
    pub precision: f64,
    /// Faults localized / faults that call for an incident.
    pub recall: f64,
    /// Quarantined cards that no fault explains.
    pub false_quarantines: usize,
    pub verdicts: Vec<Verdict>,
}

/// Compares incidents and quarantines with the injected truth.
pub fn score(
    truth: &Truth,
    incidents: &[Incident],
    quarantined: &[(String, u32)],
    speed: f64,
    hb_ms: f64,
) -> Score {
    let mut used = vec![false; incidents.len()];
    let mut verdicts = Vec::new();
    let at_place = |f: &InjectedFault, inc: &Incident, expect: Expect| {
        f.node.as_deref() == Some(inc.cause.node.as_str())
            && match expect {
                Expect::Card => inc.cause.card == f.card,
                Expect::Node => inc.cause.card.is_none(),
                // Anything at the fault's node or card counts against it.
                Expect::Nothing | Expect::Unscored => f.card.is_none() || inc.cause.card == f.card,
            }
            && inc.detected_at.0 + 1000 >= f.at.0
    };
    for f in &truth.faults {
        let expect = expectation(f, hb_ms);
        let found = incidents
            .iter()
            .enumerate()
            .find(|(i, inc)| !used[*i] && at_place(f, inc, expect))
            .map(|(i, inc)| {
                (
                    i,
                    inc.id.to_string(),
                    (inc.detected_at.0 - f.at.0).max(0) as f64 / 1000.0 * speed,
                )
            });
        let (incident, latency) = match (&found, expect) {
            (Some((i, id, l)), Expect::Card | Expect::Node | Expect::Unscored) => {
                used[*i] = true;
                (Some(id.clone()), Some(*l))
            }
            (Some((_, id, l)), Expect::Nothing) => (Some(id.clone()), Some(*l)),
            (None, _) => (None, None),
        };
        let correct = match expect {
            Expect::Card | Expect::Node => incident.is_some(),
            Expect::Nothing => incident.is_none(),
            Expect::Unscored => true,
        };
        verdicts.push(Verdict {
            fault: f.clone(),
            expect,
            incident,
            correct,
            latency_s: latency,
        });
    }
    let expected: Vec<&Verdict> = verdicts
        .iter()
        .filter(|v| matches!(v.expect, Expect::Card | Expect::Node))
        .collect();
    let localized = expected.iter().filter(|v| v.correct).count();
    let false_incidents = used.iter().filter(|u| !**u).count();
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    // A quarantine is explained by a fault at that card, or at its node when
    // the fault takes the node (node-level kinds, XID 79, a lost card).
    let explained = |node: &str, card: u32| {
        truth.faults.iter().any(|f| {
            f.node.as_deref() == Some(node)
                && (f.card == Some(card)
                    || matches!(
                        f.kind,
                        FaultType::NodeCrash
                            | FaultType::Flap
                            | FaultType::Partition
                            | FaultType::GpuLost
                    )
                    || (f.kind == FaultType::Xid && f.code == Some(79)))
        })
    };
    let false_quarantines = quarantined
        .iter()
        .filter(|(n, c)| !explained(n, *c))
        .count();
    Score {
        faults: truth.faults.len(),
        expected_incidents: expected.len(),
        localized,
        incidents: incidents.len(),
        false_incidents,
        precision: ratio(incidents.len() - false_incidents, incidents.len()),
        recall: ratio(localized, expected.len()),
        false_quarantines,
        verdicts,
    }
}

/// Runs a demo and prints the live feed and the report.
pub async fn run(opts: DemoOptions) -> anyhow::Result<Value> {
    let scn = load_scenario(opts.scenario.as_deref())?;
    if !(opts.speed > 0.0 && opts.speed <= 1000.0) {
        anyhow::bail!("--speed {}: must be within (0, 1000]", opts.speed);
    }
    let speed = opts.speed;
    let dir = data_dir(&opts)?;
    let cfg = controller_config(&scn, speed, &dir, opts.http_listen)?;
    let controller = vigil_controller::start(cfg).await?;
    let human = opts.output == Output::Table;
    let mut log: Box<dyn Write + Send> = if human {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::io::stderr())
    };
    if let Err(e) = writeln!(
        log,
        "vigil demo: scenario {:?}, {} nodes x {} cards + {} spare(s), {} s at speed {} ({:.0} s of wall time)\n  controller: grpc {} http {} (dashboard at http://{}/), store {}",
        scn.name,
        scn.cluster.nodes,
        scn.cluster.cards_per_node,
        scn.cluster.spares,
        scn.duration_s,
        speed,
        scn.duration_s / speed,
        controller.grpc_addr,
        controller.http_addr,
        controller.http_addr,
        dir.display()
    ) {
        tracing::warn!(error = %e, "cannot write the demo's banner");
    }
    let opts_sim = SimOptions {
        controller: format!("http://{}", controller.grpc_addr),
        speed,
    };
    let mut sim = vigil_sim::spawn_nodes(&scn, &opts_sim)?;
    wait_for_agents(&controller, sim.nodes.len()).await?;

    let started_ms = now_ms();
    let sub = controller
        .state
        .subscribe()
        .await
        .ok_or_else(controller_stopped)?;
    let printer = tokio::spawn(print_feed(sub, started_ms, speed, log));
    let truth = vigil_sim::play(&scn, &mut sim, speed).await;
    // Let detections of faults near the end land: the node-loss threshold
    // plus a heartbeat.
    let hb = f64::from(vigil_sim::heartbeat_ms(&scn, speed));
    tokio::time::sleep(Duration::from_millis((hb * 3.5) as u64)).await;
    printer.abort();

    // The controller's ledger in scenario time, up to the scenario's end.
    let end_ms = started_ms + (scn.duration_s * 1000.0 / speed) as i64;
    let seen = collect(&controller, end_ms, speed).await?;
    drop(sim);
    controller.shutdown().await;
    let (report, sc) = build_report(&scn, speed, &truth, seen);
    if human {
        print_summary(&report, &sc);
    }
    Ok(report)
}

fn controller_stopped() -> anyhow::Error {
    anyhow::anyhow!("the embedded controller stopped")
}

/// The demo's store directory: the one asked for, or a fresh temp dir.
fn data_dir(opts: &DemoOptions) -> anyhow::Result<std::path::PathBuf> {
    let dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "vigil-demo-{}-{}",
            std::process::id(),
            vigil_agent::backoff::random_u64() % 1_000_000
        )),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The embedded controller's config: loopback, a SQLite store in `dir`,
/// and the detectors' wall-clock floors at the scenario's pace.
fn controller_config(
    scn: &Scenario,
    speed: f64,
    dir: &std::path::Path,
    http_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<ControllerConfig> {
    let mut cfg = ControllerConfig {
        grpc_listen: "127.0.0.1:0".parse()?,
        http_listen: match http_listen {
            Some(a) => a,
            None => "127.0.0.1:0".parse()?,
        },
        // A throwaway store: durable across crashes, not power losses.
        store: format!("sqlite://{}?sync=normal", dir.join("vigil.db").display()),
        ..Default::default()
    };
    cfg.cluster.liveness.heartbeat_ms = vigil_sim::heartbeat_ms(scn, speed);
    cfg.cluster.workload.hang_floor_ms =
        (cfg.cluster.workload.hang_floor_ms as f64 / speed).round() as i64;
    cfg.cluster.restart_grace_ms = (cfg.cluster.restart_grace_ms as f64 / speed).round() as i64;
    cfg.cluster
        .liveness
        .validate()
        .map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

/// Waits until `want` simulated agents have registered.
async fn wait_for_agents(
    controller: &vigil_controller::Running,
    want: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n = controller
            .state
            .query(|c| c.nodes().count())
            .await
            .ok_or_else(controller_stopped)?;
        if n >= want {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("only {n} of {want} simulated agents registered within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One job as the controller saw it at the end of the run.
#[derive(Debug, Clone, Serialize)]
struct JobSummary {
    id: vigil_core::JobId,
    world_size: u32,
    final_step: u64,
    restarts: u32,
    state: vigil_core::cluster::JobRunState,
    steps_total: u64,
}

/// What the controller concluded, read from its state at the end of the run.
struct Seen {
    incidents: Vec<Incident>,
    jobs: Vec<JobSummary>,
    quarantined: Vec<(String, u32)>,
    /// Ledger rows in scenario time (wall card-ms x speed).
    rows: Vec<vigil_core::ledger::LedgerRow>,
}

async fn collect(
    controller: &vigil_controller::Running,
    end_ms: i64,
    speed: f64,
) -> anyhow::Result<Seen> {
    let state = &controller.state;
    let incidents: Vec<Incident> = state
        .query(|c| c.incidents().cloned().collect())
        .await
        .ok_or_else(controller_stopped)?;
    let jobs = state
        .query(|c| {
            c.jobs()
                .map(|j| JobSummary {
                    id: j.id.clone(),
                    world_size: j.world_size,
                    final_step: j.step,
                    restarts: j.restarts,
                    state: j.state,
                    steps_total: j.steps_total,
                })
                .collect()
        })
        .await
        .ok_or_else(controller_stopped)?;
    let quarantined = state
        .query(|c| {
            c.nodes()
                .flat_map(|n| {
                    n.cards
                        .iter()
                        .filter(|c| c.health.name() == "quarantined")
                        .map(|c| (n.id.to_string(), c.info.index))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .await
        .ok_or_else(controller_stopped)?;
    let rows = state
        .query(move |c| c.ledger().rows(end_ms, None, Some(end_ms)))
        .await
        .ok_or_else(controller_stopped)?
        .into_iter()
        .map(|mut r| {
            r.card_ms = (r.card_ms as f64 * speed).round() as i64;
            r
        })
        .collect();
    Ok(Seen {
        incidents,
        jobs,
        quarantined,
        rows,
    })
}

/// The report `vigil demo` prints (JSON shape in CONTRACT.md) and its score.
fn build_report(scn: &Scenario, speed: f64, truth: &Truth, seen: Seen) -> (Value, Score) {
    let ledger = vigil_core::ledger::report(&seen.rows, vigil_core::ledger::GroupBy::Job, None);
    let sc = score(
        truth,
        &seen.incidents,
        &seen.quarantined,
        speed,
        f64::from(scn.cluster.heartbeat_ms),
    );
    let mut newest_first = seen.incidents;
    newest_first.reverse();
    let report = json!({
        "scenario": scn.name,
        "speed": speed,
        "duration_s": scn.duration_s,
        "incidents": newest_first,
        "ledger": ledger,
        "ledger_truth": ledger_truth(truth, scn),
        "jobs": seen.jobs,
        "faults": truth.faults,
        "score": sc,
        "quarantined": seen.quarantined.iter().map(|(n, c)| format!("{n}/{c}")).collect::<Vec<_>>(),
    });
    (report, sc)
}

/// The simulator's own account of the job's card-time, in the ledger's
/// shape, to compare the controller's ledger with.
fn ledger_truth(truth: &Truth, scn: &Scenario) -> Vec<Value> {
    let (Some(job), Some(spec)) = (&truth.job, &scn.job) else {
        return Vec::new();
    };
    let ms = |k: &str| job.truth_card_ms.get(k).copied().unwrap_or(0);
    let h = |v: i64| v as f64 / 3_600_000.0;
    let losses = [
        "detection",
        "recovery",
        "rolled_back",
        "straggler",
        "waiting_for_capacity",
        "checkpoint",
        "other",
    ];
    let allocated: i64 = job.truth_card_ms.values().sum();
    let lost: serde_json::Map<String, Value> = losses
        .iter()
        .map(|k| ((*k).to_owned(), h(ms(k)).into()))
        .collect();
    vec![json!({
        "job": spec.id,
        "allocated_card_hours": h(allocated),
        "effective_card_hours": h(ms("effective")),
        "ettr": if allocated > 0 { ms("effective") as f64 / allocated as f64 } else { 0.0 },
        "lost_card_hours": lost,
    })]
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn print_feed(
    mut sub: vigil_controller::state::Subscription,
    started_ms: i64,
    speed: f64,
    mut out: Box<dyn Write + Send>,
) {
    // An incident update is shown when its state, action or phases change,
    // not for every piece of evidence folded in.
    let mut last_shown: std::collections::HashMap<String, String> =
        std::collections::HashMap::new();
    let show = |kind: &str| {
        !matches!(
            kind,
            "node_registered"
                | "card_signal"
                | "job_started"
                | "command_result"
                | "checkpoint_complete"
        )
    };
    loop {
        let ev = match sub.live.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if !show(&ev.kind) {
            continue;
        }
        let t = (ev.at.0 - started_ms) as f64 / 1000.0 * speed;
        let d = &ev.data;
        if ev.kind.starts_with("incident_") {
            let d = &ev.data;
            let fingerprint = format!(
                "{}|{}|{}",
                d["state"],
                d["action"],
                d["phases"].as_array().map_or(0, Vec::len)
            );
            let id = d["id"].as_str().unwrap_or("").to_owned();
            if ev.kind == "incident_updated" && last_shown.get(&id) == Some(&fingerprint) {
                continue;
            }
            last_shown.insert(id, fingerprint);
        }
        let what = match ev.kind.as_str() {
            "incident_opened" | "incident_updated" | "incident_resolved" => {
                let c = &d["cause"];
                let phase = d["phases"]
                    .as_array()
                    .and_then(|p| p.last())
                    .and_then(|p| p["name"].as_str())
                    .unwrap_or("-");
                format!(
                    "{} {} {}{} signal {} rank {} action {} phase {phase}",
                    d["id"].as_str().unwrap_or("?"),
                    d["kind"].as_str().unwrap_or("?"),
                    c["node"].as_str().unwrap_or("?"),
                    c["card"]
                        .as_u64()
                        .map(|x| format!("/{x}"))
                        .unwrap_or_default(),
                    c["signal"].as_str().unwrap_or("?"),
                    c["rank"],
                    d["action"].as_str().unwrap_or("-"),
                )
            }
            _ => d.to_string(),
        };
        if let Err(e) = writeln!(out, "[t={t:7.1}s] {:<18} {what}", ev.kind) {
            tracing::warn!(error = %e, "cannot write the demo's feed; no more feed lines");
            return;
        }
    }
}

fn print_summary(report: &Value, sc: &Score) {
    println!("\n== incidents ==");
    print!(
        "{}",
        crate::view::incidents(
            report["incidents"]
                .as_array()
                .map_or(&[][..], Vec::as_slice),
            crate::table::Style::detect(),
        )
    );
    println!("\n== verdicts ==");
    let rows: Vec<Vec<String>> = sc
        .verdicts
        .iter()
        .map(|v| {
            let verdict = match (v.expect, v.correct) {
                (Expect::Unscored, _) => "not scored",
                (Expect::Nothing, true) => "correctly ignored",
                (Expect::Nothing, false) => "FALSE ALARM",
                (_, true) => "localized",
                (_, false) => "MISSED",
            };
            vec![
                format!("{:.0}", v.fault.at_s),
                v.fault.kind.name().to_owned(),
                format!(
                    "{}{}",
                    v.fault.node.clone().unwrap_or_else(|| "job".into()),
                    v.fault.card.map(|c| format!("/{c}")).unwrap_or_default()
                ),
                verdict.to_owned(),
                v.incident.clone().unwrap_or_else(|| "-".into()),
                v.latency_s.map_or("-".into(), |l| format!("{l:.2}s")),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::table::render_with(
            &["AT", "FAULT", "WHERE", "VERDICT", "INCIDENT", "LATENCY"],
            &rows,
            crate::table::Style::detect(),
        )
    );
    println!(
        "\n{} of {} faults localized (recall {:.2}), {} false incidents (precision {:.2}), {} false quarantines",
        sc.localized,
        sc.expected_incidents,
        sc.recall,
        sc.false_incidents,
        sc.precision,
        sc.false_quarantines
    );
    for j in report["jobs"].as_array().into_iter().flatten() {
        println!(
            "job {}: world {} final step {}",
            j["id"].as_str().unwrap_or("?"),
            j["world_size"],
            j["final_step"]
        );
    }
}
