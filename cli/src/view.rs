//! Turning API documents into table rows.

use crate::table::render;
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
pub fn nodes(list: &[Value], now_ms: i64) -> String {
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
    let mut out = render(
        &["NODE", "STATE", "JOB", "HEALTHY", "SEEN", "EVIDENCE"],
        &rows,
    );
    if !cards.is_empty() {
        out.push('\n');
        out.push_str(&render(&["CARD", "MODEL", "HEALTH", "EVIDENCE"], &cards));
    }
    out
}

/// `vigil jobs`.
pub fn jobs(list: &[Value], now_ms: i64) -> String {
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
    render(
        &[
            "JOB",
            "STATE",
            "RANKS",
            "STEP",
            "CHECKPOINT",
            "LAST PROGRESS",
        ],
        &rows,
    )
}

/// `vigil history`.
pub fn incidents(list: &[Value]) -> String {
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
    render(
        &[
            "ID", "KIND", "STATE", "JOB", "WHERE", "RANK", "SIGNAL", "ACTION", "DETECTED",
        ],
        &rows,
    )
}

/// `vigil history show ID`.
pub fn incident(i: &Value) -> String {
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
        .map(|p| vec![s(p, "name"), s(p, "start"), s(p, "end")])
        .collect();
    out.push_str(&render(&["PHASE", "START", "END"], &rows));
    out.push_str("\nevidence:\n");
    for e in i["evidence"].as_array().into_iter().flatten() {
        out.push_str("  ");
        out.push_str(e.as_str().unwrap_or_default());
        out.push('\n');
    }
    out
}
