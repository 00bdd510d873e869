//! Incidents: one per root cause, with a timeline.

use crate::ids::{IncidentId, JobId, NodeId};
use crate::model::Signal;
use crate::time::{Millis, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of failure an incident records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    CardFault,
    NodeLost,
    Hang,
    Straggler,
    WorkerExit,
    ProbeHung,
    Network,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::CardFault => "card_fault",
            IncidentKind::NodeLost => "node_lost",
            IncidentKind::Hang => "hang",
            IncidentKind::Straggler => "straggler",
            IncidentKind::WorkerExit => "worker_exit",
            IncidentKind::ProbeHung => "probe_hung",
            IncidentKind::Network => "network",
        }
    }
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Resolved,
}

/// What an incident effect reports: a new incident, or a change to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentChange {
    Opened,
    Updated,
    /// Changed while resolved (just resolved, or a note added later).
    Resolved,
}

impl IncidentChange {
    /// A change to an existing incident, by the state it is in now.
    pub fn of(inc: &Incident) -> Self {
        match inc.state {
            IncidentState::Resolved => IncidentChange::Resolved,
            IncidentState::Open => IncidentChange::Updated,
        }
    }

    /// The feed kind that publishes it.
    pub fn kind(self) -> &'static str {
        match self {
            IncidentChange::Opened => "incident_opened",
            IncidentChange::Updated => "incident_updated",
            IncidentChange::Resolved => "incident_resolved",
        }
    }
}

/// The localized root cause.
///
/// It is stored and served in its older, flat shape (`{"node", "card",
/// "rank", "signal"}`, with `signal` the string form of [`CauseKind`]), so
/// the API and stored rows do not change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "CauseRow", from = "CauseRow")]
pub struct Cause {
    pub node: NodeId,
    /// None when the cause is the whole node.
    pub card: Option<u32>,
    /// The rank that ran on the card, when known.
    pub rank: Option<u32>,
    /// What went wrong there.
    pub what: CauseKind,
}

/// What a cause is: a card's signal, or what a detector concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum CauseKind {
    /// A card reported a failure signal (or throttled for long).
    Card(Signal),
    /// The node's heartbeats stopped.
    NodeLost,
    /// A lost node came back with the same agent boot: its network failed.
    Partition,
    /// The node was lost and came back repeatedly.
    Flapping,
    /// The agent's card probe stopped answering.
    ProbeHung { probe: String },
    /// A job stopped making progress.
    Hang(HangClue),
    /// A rank computes slower than its peers by this factor.
    Straggler { factor: f64 },
    /// A worker process ended badly.
    Exit(ExitStatus),
    /// A cause stored by another version that this one does not know; kept
    /// verbatim, and never decided on.
    Unrecognized(String),
}

/// How a hang was localized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangClue {
    /// The ranks that never reached the step's collective.
    Collective,
    /// A node of the job was suspect or lost.
    NodeSilent,
    /// A card of the job was failed or suspect.
    CardSignal,
    /// No clue: the node of the rank that went silent first.
    SilentFirst { rank: u32 },
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Signal(i32),
    Code(i32),
    Unknown,
}

impl ExitStatus {
    /// From a process's exit code and terminating signal (the signal wins).
    pub fn new(exit_code: Option<i32>, signal: Option<i32>) -> Self {
        match (exit_code, signal) {
            (_, Some(sig)) => ExitStatus::Signal(sig),
            (Some(code), _) => ExitStatus::Code(code),
            _ => ExitStatus::Unknown,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Signal(sig) => write!(f, "signal {sig}"),
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Unknown => f.write_str("unknown status"),
        }
    }
}

impl fmt::Display for CauseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CauseKind::Card(s) => write!(f, "{s}"),
            CauseKind::NodeLost => f.write_str("heartbeat_timeout"),
            CauseKind::Partition => f.write_str("partition"),
            CauseKind::Flapping => f.write_str("flapping"),
            CauseKind::ProbeHung { probe } => write!(f, "probe_hung:{probe}"),
            CauseKind::Hang(HangClue::Collective) => f.write_str("hang:collective"),
            CauseKind::Hang(HangClue::NodeSilent) => f.write_str("hang:node_silent"),
            CauseKind::Hang(HangClue::CardSignal) => f.write_str("hang:card_signal"),
            CauseKind::Hang(HangClue::SilentFirst { rank }) => {
                write!(f, "hang:silent_first(rank {rank})")
            }
            CauseKind::Straggler { factor } => write!(f, "slow:{factor:.2}x"),
            CauseKind::Exit(how) => write!(f, "exit:{how}"),
            CauseKind::Unrecognized(s) => f.write_str(s),
        }
    }
}

impl CauseKind {
    /// Reads the string form [`Display`](fmt::Display) writes. Anything else
    /// is kept as [`CauseKind::Unrecognized`].
    pub fn parse(s: &str) -> CauseKind {
        Self::parse_known(s).unwrap_or_else(|| CauseKind::Unrecognized(s.to_owned()))
    }

    fn parse_known(s: &str) -> Option<CauseKind> {
        Some(match s {
            "heartbeat_timeout" => CauseKind::NodeLost,
            "partition" => CauseKind::Partition,
            "flapping" => CauseKind::Flapping,
            "hang:collective" => CauseKind::Hang(HangClue::Collective),
            "hang:node_silent" => CauseKind::Hang(HangClue::NodeSilent),
            "hang:card_signal" => CauseKind::Hang(HangClue::CardSignal),
            "exit:unknown status" => CauseKind::Exit(ExitStatus::Unknown),
            _ => {
                if let Some(probe) = s.strip_prefix("probe_hung:") {
                    CauseKind::ProbeHung {
                        probe: probe.to_owned(),
                    }
                } else if let Some(r) = s.strip_prefix("hang:silent_first(rank ") {
                    let rank = r.strip_suffix(')')?.parse().ok()?;
                    CauseKind::Hang(HangClue::SilentFirst { rank })
                } else if let Some(f) = s.strip_prefix("slow:") {
                    let factor = f.strip_suffix('x')?.parse().ok()?;
                    CauseKind::Straggler { factor }
                } else if let Some(sig) = s.strip_prefix("exit:signal ") {
                    CauseKind::Exit(ExitStatus::Signal(sig.parse().ok()?))
                } else if let Some(code) = s.strip_prefix("exit:exit code ") {
                    CauseKind::Exit(ExitStatus::Code(code.parse().ok()?))
                } else {
                    CauseKind::Card(s.parse::<Signal>().ok()?)
                }
            }
        })
    }

    /// The card signal, when the cause is one.
    pub fn signal(&self) -> Option<Signal> {
        match self {
            CauseKind::Card(s) => Some(*s),
            _ => None,
        }
    }
}

/// The stored and served shape of a [`Cause`].
#[derive(Serialize, Deserialize)]
struct CauseRow {
    node: NodeId,
    card: Option<u32>,
    rank: Option<u32>,
    signal: String,
}

impl From<Cause> for CauseRow {
    fn from(c: Cause) -> Self {
        CauseRow {
            node: c.node,
            card: c.card,
            rank: c.rank,
            signal: c.what.to_string(),
        }
    }
}

impl From<CauseRow> for Cause {
    fn from(r: CauseRow) -> Self {
        Cause {
            node: r.node,
            card: r.card,
            rank: r.rank,
            what: CauseKind::parse(&r.signal),
        }
    }
}

/// One phase of the timeline: detect, localize, isolate, restore, resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSpan {
    pub name: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

/// The checkpoint a recovery restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub step: u64,
    pub path: String,
}

/// A recorded incident, in the shape of CONTRACT.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "IncidentRow")]
pub struct Incident {
    pub id: IncidentId,
    pub job: Option<JobId>,
    pub kind: IncidentKind,
    pub state: IncidentState,
    pub cause: Cause,
    pub detected_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub phases: Vec<PhaseSpan>,
    pub action: Option<String>,
    pub checkpoint: Option<CheckpointRef>,
    pub lost_steps: Option<u64>,
    /// What was observed, oldest first (bounded).
    pub evidence: Vec<String>,
    /// Correlated symptoms folded into this incident.
    pub folded: u32,
    /// The agent boot its node ran when the node was lost: the same boot
    /// coming back means the node never died, its network did. Not served;
    /// the stored row keeps it as the evidence line `boot ID`.
    #[serde(skip_serializing)]
    pub lost_boot: Option<String>,
}

/// The stored shape of an [`Incident`].
#[derive(Deserialize)]
struct IncidentRow {
    id: IncidentId,
    job: Option<JobId>,
    kind: IncidentKind,
    state: IncidentState,
    cause: Cause,
    detected_at: Timestamp,
    resolved_at: Option<Timestamp>,
    phases: Vec<PhaseSpan>,
    action: Option<String>,
    checkpoint: Option<CheckpointRef>,
    lost_steps: Option<u64>,
    evidence: Vec<String>,
    folded: u32,
}

/// The evidence line that records the boot of a lost node.
const BOOT_LINE: &str = "boot ";

/// The lost boot a stored incident's evidence records (the line
/// `note_lost_boot` writes), for rows read back from the store.
pub fn lost_boot_in(evidence: &[String]) -> Option<String> {
    evidence
        .iter()
        .find_map(|e| e.strip_prefix(BOOT_LINE).map(str::to_owned))
}

impl From<IncidentRow> for Incident {
    fn from(r: IncidentRow) -> Self {
        let lost_boot = lost_boot_in(&r.evidence);
        Incident {
            id: r.id,
            job: r.job,
            kind: r.kind,
            state: r.state,
            cause: r.cause,
            detected_at: r.detected_at,
            resolved_at: r.resolved_at,
            phases: r.phases,
            action: r.action,
            checkpoint: r.checkpoint,
            lost_steps: r.lost_steps,
            evidence: r.evidence,
            folded: r.folded,
            lost_boot,
        }
    }
}

/// Evidence lines kept per incident.
pub const MAX_EVIDENCE: usize = 32;

impl Incident {
    /// Adds a line of evidence, keeping the list bounded.
    pub fn add_evidence(&mut self, line: String) {
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(line);
        }
    }

    /// Records the boot its node ran when it was lost (the first one, and
    /// only while the evidence has room for the line that stores it).
    pub fn note_lost_boot(&mut self, boot: &str) {
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(format!("{BOOT_LINE}{boot}"));
            self.lost_boot.get_or_insert_with(|| boot.to_owned());
        }
    }

    /// Records a phase with its start and end.
    pub fn phase(&mut self, name: &str, start: Millis, end: Option<Millis>) {
        self.phases.push(PhaseSpan {
            name: name.to_owned(),
            start: Timestamp(start),
            end: end.map(Timestamp),
        });
    }

    /// Marks the incident resolved at `now`, closing any open phase.
    pub fn resolve(&mut self, now: Millis) {
        for p in &mut self.phases {
            if p.end.is_none() {
                p.end = Some(Timestamp(now));
            }
        }
        self.state = IncidentState::Resolved;
        self.resolved_at = Some(Timestamp(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An incident row as stored and served before causes were typed.
    const OLD_ROW: &str = r#"{"id":"inc-7","job":"pretrain","kind":"node_lost","state":"open","cause":{"node":"n2","card":null,"rank":null,"signal":"heartbeat_timeout"},"detected_at":"1970-01-01T00:00:01Z","resolved_at":null,"phases":[{"name":"detect","start":"1970-01-01T00:00:01Z","end":"1970-01-01T00:00:01Z"}],"action":"drain_node","checkpoint":null,"lost_steps":null,"evidence":["no message from n2 for 9000 ms","boot b-1"],"folded":0}"#;

    #[test]
    fn an_old_row_loads_and_serializes_unchanged() {
        let inc: Incident = serde_json::from_str(OLD_ROW).expect("old row");
        assert_eq!(inc.cause.what, CauseKind::NodeLost);
        assert_eq!(inc.lost_boot.as_deref(), Some("b-1"));
        assert_eq!(serde_json::to_string(&inc).expect("json"), OLD_ROW);
    }

    #[test]
    fn every_cause_round_trips_through_its_string() {
        for what in [
            CauseKind::Card(Signal::Xid(79)),
            CauseKind::Card(Signal::Thermal),
            CauseKind::NodeLost,
            CauseKind::Partition,
            CauseKind::Flapping,
            CauseKind::ProbeHung {
                probe: "nvml".to_owned(),
            },
            CauseKind::Hang(HangClue::Collective),
            CauseKind::Hang(HangClue::NodeSilent),
            CauseKind::Hang(HangClue::CardSignal),
            CauseKind::Hang(HangClue::SilentFirst { rank: 3 }),
            CauseKind::Straggler { factor: 1.25 },
            CauseKind::Exit(ExitStatus::Signal(9)),
            CauseKind::Exit(ExitStatus::Code(1)),
            CauseKind::Exit(ExitStatus::Unknown),
            CauseKind::Unrecognized("something:else".to_owned()),
        ] {
            let s = what.to_string();
            assert_eq!(CauseKind::parse(&s), what, "{s}");
        }
        assert_eq!(
            CauseKind::Straggler { factor: 1.234 }.to_string(),
            "slow:1.23x"
        );
        let row = r#"{"node":"n1","card":3,"rank":12,"signal":"exit:signal 9"}"#;
        let c: Cause = serde_json::from_str(row).expect("cause");
        assert_eq!(c.what, CauseKind::Exit(ExitStatus::Signal(9)));
        assert_eq!(serde_json::to_string(&c).expect("json"), row);
    }
}
