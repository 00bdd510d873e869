//! The shapes of the JSON documents the store keeps, apart from the core's
//! types, so that a core type can change without changing stored rows.
//!
//! Every document is written as version 1: its fields plus `"v": 1`
//! ([`encode`]). Rows written before documents had a version carry no `v`;
//! they have the same fields as version 1, and [`decode`] reads both. A
//! document of a newer version than this controller knows is refused as
//! corrupt rather than misread. Version 1 is exactly the shape the core
//! types serialized to when versions were introduced; when a core type
//! changes, its conversion here changes, not the stored shape.
//!
//! The ledger's culprit is part of the `ledger` table's primary key, so it
//! is stored without a version, in the same shape as ever ([`CulpritDoc`]).
//! The ledger cursor's fields are private to the core, so its document is
//! the core's own serialization under a version ([`encode`] of a
//! [`Cursor`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use vigil_core::cluster::{CheckpointState, Recovery, RecoveryPhase};
use vigil_core::incident::{
    Cause, CauseKind, CheckpointRef, Incident, IncidentKind, IncidentState, PhaseSpan, lost_boot_in,
};
use vigil_core::ledger::{Culprit, Cursor};
use vigil_core::model::CardInfo;
use vigil_core::{IncidentId, JobId, Millis, NodeId, Timestamp};

/// The newest document version this controller writes and reads.
pub const VERSION: u64 = 1;

/// Why a stored document cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("document version {0} is newer than this controller reads ({VERSION})")]
    Newer(u64),
    #[error("document version must be a number")]
    BadVersion,
    #[error("unknown {what} {value:?}")]
    Unknown { what: &'static str, value: String },
}

/// `doc` as stored: its fields plus `"v": 1`.
pub fn encode<T: Serialize>(doc: &T) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(doc)?;
    if let Value::Object(m) = &mut v {
        m.insert("v".to_owned(), Value::from(VERSION));
    }
    serde_json::to_string(&v)
}

/// A stored document, versioned (`"v": 1`) or written before versions.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, DocError> {
    let mut v: Value = serde_json::from_str(text)?;
    if let Value::Object(m) = &mut v
        && let Some(version) = m.remove("v")
    {
        match version.as_u64() {
            Some(n) if n <= VERSION => {}
            Some(n) => return Err(DocError::Newer(n)),
            None => return Err(DocError::BadVersion),
        }
    }
    Ok(serde_json::from_value(v)?)
}

/// Reads a stored document and converts it to a core type.
pub fn load<D, T>(text: &str) -> Result<T, DocError>
where
    D: DeserializeOwned + TryInto<T, Error = DocError>,
{
    decode::<D>(text)?.try_into()
}

/// An incident (`incidents.body_json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentDoc {
    pub id: IncidentId,
    pub job: Option<JobId>,
    /// `card_fault`, `node_lost`, `hang`, `straggler`, `worker_exit`,
    /// `probe_hung` or `network`.
    pub kind: String,
    /// `open` or `resolved`.
    pub state: String,
    pub cause: CauseDoc,
    pub detected_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub phases: Vec<PhaseDoc>,
    pub action: Option<String>,
    pub checkpoint: Option<CheckpointRefDoc>,
    pub lost_steps: Option<u64>,
    pub evidence: Vec<String>,
    pub folded: u32,
}

/// An incident's root cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CauseDoc {
    pub node: NodeId,
    pub card: Option<u32>,
    pub rank: Option<u32>,
    pub signal: String,
}

/// One phase of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseDoc {
    pub name: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

/// A checkpoint a recovery restores from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRefDoc {
    pub step: u64,
    pub path: String,
}

const INCIDENT_KINDS: [IncidentKind; 7] = [
    IncidentKind::CardFault,
    IncidentKind::NodeLost,
    IncidentKind::Hang,
    IncidentKind::Straggler,
    IncidentKind::WorkerExit,
    IncidentKind::ProbeHung,
    IncidentKind::Network,
];

fn unknown(what: &'static str, value: &str) -> DocError {
    DocError::Unknown {
        what,
        value: value.to_owned(),
    }
}

impl From<&Incident> for IncidentDoc {
    fn from(i: &Incident) -> Self {
        IncidentDoc {
            id: i.id,
            job: i.job.clone(),
            kind: i.kind.as_str().to_owned(),
            state: match i.state {
                IncidentState::Open => "open",
                IncidentState::Resolved => "resolved",
            }
            .to_owned(),
            cause: CauseDoc {
                node: i.cause.node.clone(),
                card: i.cause.card,
                rank: i.cause.rank,
                signal: i.cause.what.to_string(),
            },
            detected_at: i.detected_at,
            resolved_at: i.resolved_at,
            phases: i
                .phases
                .iter()
                .map(|p| PhaseDoc {
                    name: p.name.clone(),
                    start: p.start,
                    end: p.end,
                })
                .collect(),
            action: i.action.clone(),
            checkpoint: i.checkpoint.as_ref().map(CheckpointRefDoc::from),
            lost_steps: i.lost_steps,
            evidence: i.evidence.clone(),
            folded: i.folded,
        }
    }
}

impl TryFrom<IncidentDoc> for Incident {
    type Error = DocError;

    fn try_from(d: IncidentDoc) -> Result<Self, DocError> {
        let kind = INCIDENT_KINDS
            .into_iter()
            .find(|k| k.as_str() == d.kind)
            .ok_or_else(|| unknown("incident kind", &d.kind))?;
        let state = match d.state.as_str() {
            "open" => IncidentState::Open,
            "resolved" => IncidentState::Resolved,
            other => return Err(unknown("incident state", other)),
        };
        Ok(Incident {
            id: d.id,
            job: d.job,
            kind,
            state,
            cause: Cause {
                node: d.cause.node,
                card: d.cause.card,
                rank: d.cause.rank,
                what: CauseKind::parse(&d.cause.signal),
            },
            detected_at: d.detected_at,
            resolved_at: d.resolved_at,
            phases: d
                .phases
                .into_iter()
                .map(|p| PhaseSpan {
                    name: p.name,
                    start: p.start,
                    end: p.end,
                })
                .collect(),
            action: d.action,
            checkpoint: d.checkpoint.map(CheckpointRef::from),
            lost_steps: d.lost_steps,
            lost_boot: lost_boot_in(&d.evidence),
            evidence: d.evidence,
            folded: d.folded,
        })
    }
}

impl From<&CheckpointRef> for CheckpointRefDoc {
    fn from(c: &CheckpointRef) -> Self {
        CheckpointRefDoc {
            step: c.step,
            path: c.path.clone(),
        }
    }
}

impl From<CheckpointRefDoc> for CheckpointRef {
    fn from(c: CheckpointRefDoc) -> Self {
        CheckpointRef {
            step: c.step,
            path: c.path,
        }
    }
}

/// A job's recovery in progress (`recoveries.body_json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryDoc {
    pub job: JobId,
    pub incidents: Vec<IncidentId>,
    /// `isolate`, `waiting_for_capacity`, `restore` or `resume`.
    pub phase: String,
    pub since_ms: Millis,
    pub replacements: BTreeMap<NodeId, NodeId>,
    pub checkpoint: Option<CheckpointRefDoc>,
    pub bad_checkpoints: Vec<u64>,
    pub restart_count: u32,
    pub failed_at_step: u64,
    pub restarted: BTreeSet<u32>,
}

const RECOVERY_PHASES: [(RecoveryPhase, &str); 4] = [
    (RecoveryPhase::Isolate, "isolate"),
    (RecoveryPhase::WaitingForCapacity, "waiting_for_capacity"),
    (RecoveryPhase::Restore, "restore"),
    (RecoveryPhase::Resume, "resume"),
];

impl From<&Recovery> for RecoveryDoc {
    fn from(r: &Recovery) -> Self {
        let phase = RECOVERY_PHASES
            .iter()
            .find(|(p, _)| *p == r.phase)
            .map_or("isolate", |(_, name)| name);
        RecoveryDoc {
            job: r.job.clone(),
            incidents: r.incidents.clone(),
            phase: phase.to_owned(),
            since_ms: r.since_ms,
            replacements: r.replacements.clone(),
            checkpoint: r.checkpoint.as_ref().map(CheckpointRefDoc::from),
            bad_checkpoints: r.bad_checkpoints.clone(),
            restart_count: r.restart_count,
            failed_at_step: r.failed_at_step,
            restarted: r.restarted.clone(),
        }
    }
}

impl TryFrom<RecoveryDoc> for Recovery {
    type Error = DocError;

    fn try_from(d: RecoveryDoc) -> Result<Self, DocError> {
        let phase = RECOVERY_PHASES
            .iter()
            .find(|(_, name)| *name == d.phase)
            .map(|(p, _)| *p)
            .ok_or_else(|| unknown("recovery phase", &d.phase))?;
        Ok(Recovery {
            job: d.job,
            incidents: d.incidents,
            phase,
            since_ms: d.since_ms,
            replacements: d.replacements,
            checkpoint: d.checkpoint.map(CheckpointRef::from),
            bad_checkpoints: d.bad_checkpoints,
            restart_count: d.restart_count,
            failed_at_step: d.failed_at_step,
            restarted: d.restarted,
        })
    }
}

/// A complete or invalid checkpoint of a job (`checkpoints.body_json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointDoc {
    pub step: u64,
    pub path: String,
    pub ranks: BTreeSet<u32>,
    pub complete: bool,
    pub invalid: Option<String>,
    pub source: String,
}

impl From<&CheckpointState> for CheckpointDoc {
    fn from(c: &CheckpointState) -> Self {
        CheckpointDoc {
            step: c.step,
            path: c.path.clone(),
            ranks: c.ranks.clone(),
            complete: c.complete,
            invalid: c.invalid.clone(),
            source: c.source.clone(),
        }
    }
}

impl TryFrom<CheckpointDoc> for CheckpointState {
    type Error = DocError;

    fn try_from(d: CheckpointDoc) -> Result<Self, DocError> {
        Ok(CheckpointState {
            step: d.step,
            path: d.path,
            ranks: d.ranks,
            complete: d.complete,
            invalid: d.invalid,
            source: d.source,
        })
    }
}

/// What caused a ledger loss (`ledger.culprit_json`, part of the primary
/// key: stored without a version, field order as written since the table
/// exists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CulpritDoc {
    pub incident: Option<IncidentId>,
    pub node: Option<NodeId>,
    pub card: Option<u32>,
    pub model: Option<String>,
}

impl From<&Culprit> for CulpritDoc {
    fn from(c: &Culprit) -> Self {
        CulpritDoc {
            incident: c.incident,
            node: c.node.clone(),
            card: c.card,
            model: c.model.clone(),
        }
    }
}

impl TryFrom<CulpritDoc> for Culprit {
    type Error = DocError;

    fn try_from(d: CulpritDoc) -> Result<Self, DocError> {
        Ok(Culprit {
            incident: d.incident,
            node: d.node,
            card: d.card,
            model: d.model,
        })
    }
}

/// A ledger cursor (`ledger_cursors.body_json`): the core's own shape,
/// versioned; its fields are private to the core.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CursorDoc(pub Cursor);

impl TryFrom<CursorDoc> for Cursor {
    type Error = DocError;

    fn try_from(d: CursorDoc) -> Result<Self, DocError> {
        Ok(d.0)
    }
}

/// A node's card inventory (`nodes.cards_json`): `{"v": 1, "cards": [...]}`,
/// or a bare list in rows written before documents had a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CardsDoc {
    Versioned { cards: Vec<CardInfoDoc> },
    Unversioned(Vec<CardInfoDoc>),
}

/// One card of a node's inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardInfoDoc {
    pub index: u32,
    pub uuid: String,
    pub vendor: String,
    pub model: String,
    pub memory_total_bytes: u64,
    pub pci_bus_id: String,
}

impl From<&[CardInfo]> for CardsDoc {
    fn from(cards: &[CardInfo]) -> Self {
        CardsDoc::Versioned {
            cards: cards
                .iter()
                .map(|c| CardInfoDoc {
                    index: c.index,
                    uuid: c.uuid.clone(),
                    vendor: c.vendor.clone(),
                    model: c.model.clone(),
                    memory_total_bytes: c.memory_total_bytes,
                    pci_bus_id: c.pci_bus_id.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<CardsDoc> for Vec<CardInfo> {
    type Error = DocError;

    fn try_from(d: CardsDoc) -> Result<Self, DocError> {
        let (CardsDoc::Versioned { cards } | CardsDoc::Unversioned(cards)) = d;
        Ok(cards
            .into_iter()
            .map(|c| CardInfo {
                index: c.index,
                uuid: c.uuid,
                vendor: c.vendor,
                model: c.model,
                memory_total_bytes: c.memory_total_bytes,
                pci_bus_id: c.pci_bus_id,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An incident row as the store wrote it before documents had a
    /// version (the core's serialization at the time).
    const OLD_INCIDENT: &str = r#"{"id":"inc-3","job":"pretrain","kind":"card_fault","state":"resolved","cause":{"node":"n2","card":5,"rank":21,"signal":"xid:79"},"detected_at":"2026-01-02T03:04:05.678Z","resolved_at":"2026-01-02T03:09:05.678Z","phases":[{"name":"detect","start":"2026-01-02T03:04:05Z","end":"2026-01-02T03:04:05.678Z"},{"name":"resume","start":"2026-01-02T03:08:00Z","end":null}],"action":"quarantine card n2/5","checkpoint":{"step":100,"path":"/ckpt/step-100"},"lost_steps":20,"evidence":["xid 79 on n2/5"],"folded":2}"#;
    const OLD_RECOVERY: &str = r#"{"job":"pretrain","incidents":["inc-3"],"phase":"waiting_for_capacity","since_ms":1767323045678,"replacements":{"n2":"spare1"},"checkpoint":{"step":100,"path":"/ckpt/step-100"},"bad_checkpoints":[120],"restart_count":1,"failed_at_step":130,"restarted":[0,3]}"#;
    const OLD_CHECKPOINT: &str = r#"{"step":100,"path":"/ckpt/step-100","ranks":[0,1],"complete":true,"invalid":null,"source":"ranks"}"#;
    const OLD_CULPRIT: &str = r#"{"incident":"inc-3","node":"n2","card":5,"model":"H100"}"#;

    #[test]
    fn old_unversioned_rows_still_load() {
        let i: Incident = load::<IncidentDoc, _>(OLD_INCIDENT).expect("old incident loads");
        assert_eq!(i.id, IncidentId(3));
        assert_eq!(i.kind, IncidentKind::CardFault);
        assert_eq!(i.state, IncidentState::Resolved);
        assert_eq!(i.cause.card, Some(5));
        assert_eq!(i.phases.len(), 2);
        assert_eq!(i.folded, 2);
        let r: Recovery = load::<RecoveryDoc, _>(OLD_RECOVERY).expect("old recovery loads");
        assert_eq!(r.phase, RecoveryPhase::WaitingForCapacity);
        assert_eq!(r.replacements.len(), 1);
        let c: CheckpointState =
            load::<CheckpointDoc, _>(OLD_CHECKPOINT).expect("old checkpoint loads");
        assert!(c.complete);
        let k: Culprit = load::<CulpritDoc, _>(OLD_CULPRIT).expect("old culprit loads");
        assert_eq!(k.card, Some(5));
    }

    #[test]
    fn documents_are_written_as_version_1_and_read_back() {
        let i: Incident = load::<IncidentDoc, _>(OLD_INCIDENT).expect("load");
        let text = encode(&IncidentDoc::from(&i)).expect("encode");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["v"], 1);
        assert_eq!(v["cause"]["signal"], "xid:79");
        assert_eq!(load::<IncidentDoc, Incident>(&text).expect("reload"), i);
        // Version 1 has exactly the fields of the unversioned rows.
        let mut old: Value = serde_json::from_str(OLD_INCIDENT).expect("json");
        old["v"] = Value::from(1);
        assert_eq!(v, old);
        let r: Recovery = load::<RecoveryDoc, _>(OLD_RECOVERY).expect("load");
        let text = encode(&RecoveryDoc::from(&r)).expect("encode");
        assert_eq!(load::<RecoveryDoc, Recovery>(&text).expect("reload"), r);
        let c: CheckpointState = load::<CheckpointDoc, _>(OLD_CHECKPOINT).expect("load");
        let text = encode(&CheckpointDoc::from(&c)).expect("encode");
        assert_eq!(
            load::<CheckpointDoc, CheckpointState>(&text).expect("reload"),
            c
        );
    }

    #[test]
    fn the_culprit_key_keeps_its_exact_text() {
        let k: Culprit = load::<CulpritDoc, _>(OLD_CULPRIT).expect("load");
        let text = serde_json::to_string(&CulpritDoc::from(&k)).expect("encode");
        assert_eq!(text, OLD_CULPRIT);
        let none = serde_json::to_string(&CulpritDoc::from(&Culprit::default())).expect("encode");
        assert_eq!(
            none,
            r#"{"incident":null,"node":null,"card":null,"model":null}"#
        );
    }

    #[test]
    fn card_lists_load_bare_or_versioned() {
        let old = r#"[{"index":0,"uuid":"GPU-0","vendor":"nvidia","model":"H100","memory_total_bytes":85899345920,"pci_bus_id":"0000:10:00.0"}]"#;
        let cards: Vec<CardInfo> = load::<CardsDoc, _>(old).expect("old list loads");
        assert_eq!(cards[0].model, "H100");
        let text = encode(&CardsDoc::from(cards.as_slice())).expect("encode");
        assert!(text.contains(r#""v":1"#), "{text}");
        assert_eq!(
            load::<CardsDoc, Vec<CardInfo>>(&text).expect("reload"),
            cards
        );
    }

    #[test]
    fn newer_or_broken_versions_are_refused() {
        let newer = OLD_CHECKPOINT.replacen('{', r#"{"v":2,"#, 1);
        assert!(matches!(
            load::<CheckpointDoc, CheckpointState>(&newer),
            Err(DocError::Newer(2))
        ));
        let bad = OLD_CHECKPOINT.replacen('{', r#"{"v":"one","#, 1);
        assert!(matches!(
            load::<CheckpointDoc, CheckpointState>(&bad),
            Err(DocError::BadVersion)
        ));
        let kind = OLD_INCIDENT.replace("card_fault", "meteor");
        assert!(load::<IncidentDoc, Incident>(&kind).is_err());
    }
}
