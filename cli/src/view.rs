//! Turning API documents into table rows.

use crate::table::{Style, render_with};
use serde_json::Value;

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(x) => x.to_string(),
    }
}

fn age(now_ms: i64, then: Option<i64>) -> String {
    match then {
        Some(t) => format!("{:.1}s", (now_ms - t) as f64 / 1000.0),
        None => "-".to_owned(),
    }
}

/// `vigil nodes`: one row per node, then one per card that is not healthy.
pub fn nodes(list: &[Value], now_ms: i64, style: Style) -> String {
    let mut rows = Vec::new();
    let mut cards = Vec::new();
    for n in list {
        let id = s(n, "id");
        let live = n.get("liveness").cloned().unwrap_or_default();
        let state = s(&live, "state");
        let ncards = n.get("cards").and_then(Value::as_array).map_or(0, Vec::len);
        let healthy = n.get("cards").and_then(Value::as_array).map_or(0, |c| {
            c.iter()
                .filter(|c| c["health"]["state"] == "healthy")
                .count()
        });
        let evidence = match state.as_str() {
            "suspect" => s(&live, "reason"),
            "lost" => format!(
                "last seen {} ago",
                age(now_ms, live["last_seen_ms"].as_i64())
            ),
            _ => String::new(),
        };
        rows.push(vec![
            id.clone(),
            state,
            if n["spare"] == true {
                "spare".into()
            } else {
                s(n, "job")
            },
            format!("{healthy}/{ncards}"),
            age(now_ms, n["last_seen_ms"].as_i64()),
            evidence,
        ]);
        for c in n
            .get("cards")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let h = &c["health"];
            if h["state"] == "healthy" {
                continue;
            }
            let ev = [s(h, "signal"), s(h, "reason"), s(h, "incident")]
                .into_iter()
                .filter(|x| x != "-")
                .collect::<Vec<_>>()
                .join(" ");
            cards.push(vec![
                format!("{id}/{}", s(c, "index")),
                s(c, "model"),
                s(h, "state"),
                ev,
            ]);
        }
    }
    let mut out = render_with(
        &["NODE", "STATE", "JOB", "HEALTHY", "SEEN", "EVIDENCE"],
        &rows,
        style,
    );
    if !cards.is_empty() {
        out.push('\n');
        out.push_str(&render_with(
            &["CARD", "MODEL", "HEALTH", "EVIDENCE"],
            &cards,
            style,
        ));
    }
    out
}

/// `vigil jobs`.
pub fn jobs(list: &[Value], now_ms: i64, style: Style) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|j| {
            let ranks = j
                .get("ranks")
                .and_then(Value::as_object)
                .map_or(0, |r| r.len());
            let ckpt = j
                .get("checkpoints")
                .and_then(Value::as_object)
                .and_then(|c| {
                    c.values()
                        .filter(|c| c["complete"] == true)
                        .max_by_key(|c| c["step"].as_u64().unwrap_or(0))
                })
                .map_or("-".to_owned(), |c| s(c, "step"));
            vec![
                s(j, "id"),
                s(j, "state"),
                format!("{}/{}", ranks, s(j, "world_size")),
                s(j, "step"),
                ckpt,
                age(now_ms, j["last_progress_ms"].as_i64()),
            ]
        })
        .collect();
    render_with(
        &[
            "JOB",
            "STATE",
            "RANKS",
            "STEP",
            "CHECKPOINT",
            "LAST PROGRESS",
        ],
        &rows,
        style,
    )
}

/// `vigil history`.
pub fn incidents(list: &[Value], style: Style) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let c = &i["cause"];
            vec![
                s(i, "id"),
                s(i, "kind"),
                s(i, "state"),
                s(i, "job"),
                format!(
                    "{}{}",
                    s(c, "node"),
                    c["card"]
                        .as_u64()
                        .map(|x| format!("/{x}"))
                        .unwrap_or_default()
                ),
                s(c, "rank"),
                s(c, "signal"),
                s(i, "action"),
                s(i, "detected_at"),
            ]
        })
        .collect();
    render_with(
        &[
            "ID", "KIND", "STATE", "JOB", "WHERE", "RANK", "SIGNAL", "ACTION", "DETECTED",
        ],
        &rows,
        style,
    )
}

/// How long a phase took, from its RFC 3339 `start` and `end`.
fn duration(p: &Value) -> String {
    let t = |k: &str| {
        p[k].as_str()
            .and_then(|x| vigil_core::Timestamp::parse_rfc3339(x).ok())
    };
    match (t("start"), t("end")) {
        (Some(a), Some(b)) => format!("{:.3}s", (b.0 - a.0) as f64 / 1000.0),
        (Some(_), None) => "open".to_owned(),
        _ => "-".to_owned(),
    }
}

/// `vigil history show ID`.
pub fn incident(i: &Value, style: Style) -> String {
    let c = &i["cause"];
    let mut out = format!(
        "{}  {}  {}\njob:     {}\ncause:   node {} card {} rank {} signal {}\naction:  {}\ndetected {}\nresolved {}\n",
        s(i, "id"),
        s(i, "kind"),
        s(i, "state"),
        s(i, "job"),
        s(c, "node"),
        s(c, "card"),
        s(c, "rank"),
        s(c, "signal"),
        s(i, "action"),
        s(i, "detected_at"),
        s(i, "resolved_at"),
    );
    out.push_str("\ntimeline:\n");
    let rows: Vec<Vec<String>> = i["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| vec![s(p, "name"), s(p, "start"), s(p, "end"), duration(p)])
        .collect();
    out.push_str(&render_with(
        &["PHASE", "START", "END", "DURATION"],
        &rows,
        style,
    ));
    out.push_str("\nevidence:\n");
    for e in i["evidence"].as_array().into_iter().flatten() {
        out.push_str("  ");
        out.push_str(e.as_str().unwrap_or_default());
        out.push('\n');
    }
    out
}

const LOSSES: [(&str, &str); 7] = [
    ("detection", "DETECT"),
    ("recovery", "RECOVERY"),
    ("rolled_back", "ROLLBACK"),
    ("straggler", "STRAGGLER"),
    ("waiting_for_capacity", "WAITING"),
    ("checkpoint", "CKPT"),
    ("other", "OTHER"),
];

fn hours(v: &Value) -> String {
    v.as_f64().map_or("-".to_owned(), |h| format!("{h:.3}"))
}

/// `vigil ledger`: card-hours per job (or losses per node, card, model or
/// cause, by the shape of the entries).
pub fn ledger(list: &[Value], style: Style) -> String {
    let Some(first) = list.first() else {
        return "no ledger entries\n".to_owned();
    };
    if first.get("job").is_some() {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|e| {
                let mut row = vec![
                    s(e, "job"),
                    hours(&e["allocated_card_hours"]),
                    hours(&e["effective_card_hours"]),
                    e["ettr"]
                        .as_f64()
                        .map_or("-".to_owned(), |x| format!("{:.1}%", x * 100.0)),
                ];
                row.extend(LOSSES.iter().map(|(k, _)| hours(&e["lost_card_hours"][k])));
                row
            })
            .collect();
        let mut headers = vec!["JOB", "ALLOCATED", "EFFECTIVE", "ETTR"];
        headers.extend(LOSSES.iter().map(|(_, h)| *h));
        let mut out = render_with(&headers, &rows, style);
        out.push_str("(card-hours)\n");
        return out;
    }
    if first.get("cause").is_some() {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|e| {
                vec![
                    s(e, "cause"),
                    hours(&e["card_hours"]),
                    e["share"]
                        .as_f64()
                        .map_or("-".to_owned(), |x| format!("{:.1}%", x * 100.0)),
                ]
            })
            .collect();
        return render_with(&["CAUSE", "CARD-HOURS", "SHARE"], &rows, style);
    }
    let field = ["node", "card", "model"]
        .into_iter()
        .find(|f| first.get(*f).is_some())
        .unwrap_or("node");
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let mut row = vec![s(e, field), hours(&e["lost_card_hours_total"])];
            row.extend(LOSSES.iter().map(|(k, _)| hours(&e["lost_card_hours"][k])));
            row.push(
                e["incidents"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            );
            row
        })
        .collect();
    let upper = field.to_uppercase();
    let mut headers = vec![upper.as_str(), "LOST"];
    headers.extend(LOSSES.iter().map(|(_, h)| *h));
    headers.push("INCIDENTS");
    let mut out = render_with(&headers, &rows, style);
    out.push_str("(card-hours lost, by what caused them)\n");
    out
}

/// `vigil ledger --advise`.
pub fn advice(list: &[Value]) -> String {
    if list.is_empty() {
        return "no advice yet: a job needs at least one checkpoint on record\n".to_owned();
    }
    let mut out = String::new();
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    for a in list {
        out.push_str(&format!(
            "{}: checkpoint every {} s (now {} s)\n  observed: MTBF {} s, checkpoint cost {} s, restart cost {} s\n",
            s(a, "job"),
            f(&a["optimal_interval_s"]),
            f(&a["current_interval_s"]),
            f(&a["mtbf_s"]),
            f(&a["checkpoint_cost_s"]),
            f(&a["restart_cost_s"]),
        ));
        let pct = |v: &Value| {
            v.as_f64()
                .map_or("-".to_owned(), |x| format!("{:.2}%", x * 100.0))
        };
        out.push_str(&format!(
            "  expected ETTR {} now, {} at the optimum (gain {} points)\n",
            pct(&a["expected_ettr_now"]),
            pct(&a["expected_ettr_optimal"]),
            pct(&a["expected_gain"]),
        ));
        if let Some(n) = a["note"].as_str() {
            out.push_str(&format!("  note: {n}\n"));
        }
    }
    out
}
