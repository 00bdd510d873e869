//! The ledger report: grouped by job, culprit or cause.

use super::*;

/// How `report` groups the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One entry per job (CONTRACT.md's ledger entry).
    Job,
    /// Losses by the node, card or card model that caused them.
    Node,
    Card,
    Model,
    /// Losses by category over every job.
    Cause,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "job" => GroupBy::Job,
            "node" => GroupBy::Node,
            "card" => GroupBy::Card,
            "model" => GroupBy::Model,
            "cause" => GroupBy::Cause,
            _ => {
                return Err(format!(
                    "--by {s:?}: expected job, node, card, model or cause"
                ));
            }
        })
    }
}

const MS_PER_HOUR: f64 = 3_600_000.0;

fn hours(card_ms: i64) -> f64 {
    card_ms as f64 / MS_PER_HOUR
}

/// Amounts per loss category, by category name.
pub type Losses<T> = BTreeMap<&'static str, T>;

fn losses(t: &Totals) -> (Losses<f64>, Losses<i64>) {
    let mut h = Losses::new();
    let mut ms = Losses::new();
    for c in Category::LOSSES {
        let v = t.by_category.get(&c).copied().unwrap_or(0);
        h.insert(c.as_str(), hours(v));
        ms.insert(c.as_str(), v);
    }
    (h, ms)
}

/// One job's entry (CONTRACT.md's ledger entry), in hours, with the exact
/// integer card-milliseconds beside them (`*_card_ms`), for which
/// allocated = effective + lost holds exactly. Fields are in the order
/// they serialize (by name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEntry {
    pub allocated_card_hours: f64,
    pub allocated_card_ms: i64,
    pub effective_card_hours: f64,
    pub effective_card_ms: i64,
    pub ettr: f64,
    pub job: JobId,
    pub lost_card_hours: Losses<f64>,
    pub lost_card_ms: Losses<i64>,
}

/// The card-time of one category over every job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CauseEntry {
    pub card_hours: f64,
    pub card_ms: i64,
    pub cause: &'static str,
    pub share: f64,
}

/// The losses one node, card or card model caused.
#[derive(Debug, Clone, PartialEq)]
pub struct CulpritEntry {
    /// `node`, `card` or `model`: the field that names the culprit.
    pub field: &'static str,
    /// The node, `node/index` or model.
    pub culprit: String,
    pub incidents: Vec<IncidentId>,
    pub lost_card_hours: Losses<f64>,
    pub lost_card_hours_total: f64,
    pub lost_card_ms_total: i64,
}

impl Serialize for CulpritEntry {
    /// The fields in order of their names, as for every other entry.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(5))?;
        if self.field < "incidents" {
            m.serialize_entry(self.field, &self.culprit)?;
        }
        m.serialize_entry("incidents", &self.incidents)?;
        m.serialize_entry("lost_card_hours", &self.lost_card_hours)?;
        m.serialize_entry("lost_card_hours_total", &self.lost_card_hours_total)?;
        m.serialize_entry("lost_card_ms_total", &self.lost_card_ms_total)?;
        if self.field > "lost_card_ms_total" {
            m.serialize_entry(self.field, &self.culprit)?;
        }
        m.end()
    }
}

/// The ledger, grouped: serializes as a list of entries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Report {
    Jobs(Vec<JobEntry>),
    Causes(Vec<CauseEntry>),
    Culprits(Vec<CulpritEntry>),
}

impl Report {
    pub fn len(&self) -> usize {
        match self {
            Report::Jobs(v) => v.len(),
            Report::Causes(v) => v.len(),
            Report::Culprits(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ledger grouped as `by` says, of one job or of all.
pub fn report(rows: &[LedgerRow], by: GroupBy, job: Option<&JobId>) -> Report {
    match by {
        GroupBy::Job => Report::Jobs(report_jobs(rows, job)),
        GroupBy::Cause => Report::Causes(report_causes(rows, job)),
        GroupBy::Node | GroupBy::Card | GroupBy::Model => {
            Report::Culprits(report_culprits(rows, by, job))
        }
    }
}

fn of_job<'a>(
    rows: &'a [LedgerRow],
    job: Option<&'a JobId>,
) -> impl Iterator<Item = &'a LedgerRow> {
    rows.iter().filter(move |r| job.is_none_or(|j| r.job == *j))
}

/// One entry per job.
pub fn report_jobs(rows: &[LedgerRow], job: Option<&JobId>) -> Vec<JobEntry> {
    let mut per: BTreeMap<&JobId, Totals> = BTreeMap::new();
    for r in of_job(rows, job) {
        *per.entry(&r.job)
            .or_default()
            .by_category
            .entry(r.category)
            .or_insert(0) += r.card_ms;
    }
    per.into_iter()
        .map(|(j, t)| {
            let (lost_h, lost_ms) = losses(&t);
            let alloc = t.allocated();
            JobEntry {
                job: j.clone(),
                allocated_card_hours: hours(alloc),
                effective_card_hours: hours(t.effective()),
                ettr: if alloc > 0 {
                    t.effective() as f64 / alloc as f64
                } else {
                    0.0
                },
                lost_card_hours: lost_h,
                allocated_card_ms: alloc,
                effective_card_ms: t.effective(),
                lost_card_ms: lost_ms,
            }
        })
        .collect()
}

fn report_causes(rows: &[LedgerRow], job: Option<&JobId>) -> Vec<CauseEntry> {
    let mut per: BTreeMap<Category, i64> = BTreeMap::new();
    let mut alloc = 0;
    for r in of_job(rows, job) {
        alloc += r.card_ms;
        *per.entry(r.category).or_insert(0) += r.card_ms;
    }
    per.into_iter()
        .map(|(c, v)| CauseEntry {
            cause: c.as_str(),
            card_hours: hours(v),
            card_ms: v,
            share: if alloc > 0 {
                v as f64 / alloc as f64
            } else {
                0.0
            },
        })
        .collect()
}

fn report_culprits(rows: &[LedgerRow], by: GroupBy, job: Option<&JobId>) -> Vec<CulpritEntry> {
    let key = |c: &Culprit| -> Option<String> {
        match by {
            GroupBy::Node => c.node.as_ref().map(|n| n.to_string()),
            GroupBy::Card => c
                .node
                .as_ref()
                .zip(c.card)
                .map(|(n, i)| format!("{n}/{i}"))
                .or_else(|| c.node.as_ref().map(|n| n.to_string())),
            _ => c.model.clone(),
        }
    };
    let field = match by {
        GroupBy::Node => "node",
        GroupBy::Card => "card",
        _ => "model",
    };
    let mut per: BTreeMap<String, (Totals, BTreeSet<IncidentId>)> = BTreeMap::new();
    for r in of_job(rows, job).filter(|r| r.category != Category::Effective) {
        let Some(k) = key(&r.culprit) else { continue };
        let e = per.entry(k).or_default();
        *e.0.by_category.entry(r.category).or_insert(0) += r.card_ms;
        e.1.extend(r.culprit.incident);
    }
    let mut out: Vec<CulpritEntry> = per
        .into_iter()
        .map(|(k, (t, incs))| CulpritEntry {
            field,
            culprit: k,
            incidents: incs.into_iter().collect(),
            lost_card_hours: losses(&t).0,
            lost_card_hours_total: hours(t.lost()),
            lost_card_ms_total: t.lost(),
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.lost_card_ms_total));
    out
}
