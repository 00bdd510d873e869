//! The ledger's families.

use super::family::{add, counter, gauge, set};
use prometheus_client::registry::Registry;
use serde_json::Value;
use vigil_core::ledger::LedgerRow;

/// The ledger entries of the cluster, one per job, in the JSON shape of
/// `GET /api/v1/ledger` (docs/api.md).
pub(super) fn entries(rows: &[LedgerRow]) -> Vec<Value> {
    vigil_core::ledger::report_jobs(rows, None)
        .iter()
        .filter_map(|e| match serde_json::to_value(e) {
            Ok(v) => Some(v),
            Err(err) => {
                tracing::warn!(job = %e.job, error = %err, "cannot encode a ledger entry");
                None
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

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
}
