//! `/metrics` against promtool and a real Prometheus, the alert rules and
//! the Grafana dashboard against the metrics the controller exposes, and
//! the SSE feed's snapshot-then-deltas mode.
//!
//! The promtool and Prometheus parts print `SKIPPED: ... not installed` and
//! pass when the Debian package `prometheus` is missing, unless `CI` is set.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vigil_tests::{Controller, Proc, agent, blocking_get, free_port, scratch, tool, wait_until};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// POSTs a simulated fault to an agent's progress endpoint.
fn inject(port: u16, body: &str) {
    let status = vigil_tests::blocking_post(&format!("http://127.0.0.1:{port}/v1/sim/fault"), body);
    assert_eq!(status, 202, "fault injection answered {status}");
}

/// A controller with two simulated agents, one card fault, and an incident.
fn cluster(name: &str) -> (Controller, Vec<Proc>) {
    let dir = scratch(name);
    let c = Controller::start(&dir, 200);
    let (p0, p1) = (free_port(), free_port());
    let agents = vec![
        agent(&c, "m0", "sim:2", p0, &[]),
        agent(&c, "m1", "sim:4", p1, &[]),
    ];
    wait_until(Duration::from_secs(30), "both agents heartbeat", || {
        ["m0", "m1"].iter().all(|n| {
            c.node(n)
                .is_some_and(|v| v["heartbeats"].as_u64().unwrap_or(0) >= 2)
        })
    });
    // A job on m0 that runs two steps and ends.
    let status = vigil_tests::blocking_post(
        &format!("http://127.0.0.1:{p0}/v1/progress"),
        concat!(
            r#"{"type":"start","job":"mjob","rank":0,"world_size":1,"card":0}"#,
            "\n",
            r#"{"type":"step","job":"mjob","rank":0,"step":1,"phase":"end"}"#,
            "\n",
            r#"{"type":"step","job":"mjob","rank":0,"step":2,"phase":"end"}"#,
            "\n",
            r#"{"type":"end","job":"mjob","rank":0,"status":"ok"}"#,
        ),
    );
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(30), "job mjob", || {
        c.get("/api/v1/jobs")
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    });
    inject(p1, r#"{"kind":"xid","card":3,"code":79}"#);
    wait_until(Duration::from_secs(30), "an incident", || {
        c.get("/api/v1/incidents")
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    });
    (c, agents)
}

fn metrics_text(c: &Controller) -> String {
    blocking_get(&format!("{}/metrics", c.http_url())).expect("GET /metrics answers 200")
}

/// The metric families a text exposition declares (`# TYPE name ...`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metrics_describe_the_cluster_and_pass_promtool() {
    let (c, _agents) = cluster("metrics");
    let text = metrics_text(&c);
    // Per-card health: the failed card is 1 in its state and 0 elsewhere.
    let failed_or_quarantined = text.lines().any(|l| {
        l.starts_with("vigil_card_health{")
            && l.contains(r#"node="m1""#)
            && l.contains(r#"card="3""#)
            && (l.contains(r#"state="quarantined""#) || l.contains(r#"state="failed""#))
            && l.ends_with(" 1.0")
    });
    assert!(
        failed_or_quarantined,
        "m1/3 is not failed or quarantined:\n{text}"
    );
    let healthy = text.lines().any(|l| {
        l.starts_with("vigil_card_health{")
            && l.contains(r#"node="m0""#)
            && l.contains(r#"card="0""#)
            && l.contains(r#"state="healthy""#)
            && l.ends_with(" 1.0")
    });
    assert!(healthy, "m0/0 is not healthy:\n{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with(r#"vigil_incidents_total{kind="card_fault"}"#)
                && !l.ends_with(" 0.0")
        ),
        "no card_fault incident counted:\n{text}"
    );
    assert!(
        text.contains(r#"vigil_incident_phase_duration_seconds_count{phase="detect"}"#),
        "{text}"
    );
    assert!(text.contains("vigil_agent_streams 2.0"), "{text}");
    let temps = text
        .lines()
        .filter(|l| l.starts_with("vigil_card_temperature_celsius{"))
        .count();
    assert_eq!(temps, 6, "one temperature per card:\n{text}");
    let fams = families(&text);
    for f in [
        "vigil_heartbeats_total",
        "vigil_agent_events_total",
        "vigil_state_queue_depth",
        "vigil_feed_sequence",
        "vigil_node_liveness",
        "vigil_incident_phase_duration_seconds",
        "vigil_job_step",
    ] {
        assert!(fams.contains(f), "family {f} missing:\n{text}");
    }

    // Prometheus asks for OpenMetrics and gets it.
    let om = std::thread::spawn({
        let url = format!("{}/metrics", c.http_url());
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let r = reqwest::Client::new()
                    .get(&url)
                    .header("Accept", "application/openmetrics-text;version=1.0.0")
                    .send()
                    .await
                    .expect("GET /metrics");
                let ct = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                (ct, r.text().await.expect("body"))
            })
        }
    })
    .join()
    .expect("thread");
    assert!(om.0.starts_with("application/openmetrics-text"), "{}", om.0);
    assert!(om.1.ends_with("# EOF\n"), "{}", om.1);

    let Some(promtool) = tool(&["promtool"]) else {
        return;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_the_controller() {
    let Some(prometheus) = tool(&["prometheus"]) else {
        return;
    };
    let (c, _agents) = cluster("prometheus");
    let dir = scratch("prometheus-server");
    let port = free_port();
    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: vigil\n    honor_labels: true\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            c.http
        ),
    )
    .expect("write prometheus.yml");
    let tsdb = dir.join("tsdb");
    let _prom = Proc::spawn_program(
        &prometheus,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", tsdb.display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &dir.join("prometheus.log"),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let query = |q: &str| -> Option<serde_json::Value> {
        let url = format!("{api}/query?query={}", urlencode(q));
        let body = blocking_get(&url)?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"]
            .as_array()
            .cloned()
            .map(serde_json::Value::Array)
    };
    let log = dir.join("prometheus.log");
    let tail = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut up = None;
    for _ in 0..600 {
        if let Some(r) = query(r#"up{job="vigil"}"#)
            && let Some(s) = r.as_array().and_then(|a| a.first())
        {
            up = s["value"][1].as_str().map(str::to_owned);
            if up.as_deref() == Some("1") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        up.as_deref(),
        Some("1"),
        "target not up; prometheus log:\n{}",
        tail()
    );
    // The samples arrived and parsed: per-card series with our labels.
    let mut cards = 0;
    wait_until(Duration::from_secs(30), "card health series", || {
        cards = query(r#"vigil_card_health{state="healthy"}"#)
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        cards == 6
    });
    // The target reports no scrape error and the rules loaded.
    let targets = blocking_get(&format!("{api}/targets")).expect("targets");
    let t: serde_json::Value = serde_json::from_str(&targets).expect("json");
    let active = &t["data"]["activeTargets"][0];
    assert_eq!(active["health"], "up", "{targets}");
    assert_eq!(active["lastError"], "", "{targets}");
    let rules = blocking_get(&format!("{api}/rules")).expect("rules");
    assert!(rules.contains("VigilCardFailed"), "{rules}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `vigil_*` names an alert rule or dashboard expression refers to,
/// reduced to their family (histogram series suffixes dropped).
fn referenced(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bvigil_[a-z0-9_]+").expect("regex");
    re.find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_owned()
        })
        .collect()
}

#[test]
fn alert_rules_and_grafana_dashboard_use_exposed_metrics() {
    let root = repo_root();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("rules");
    let grafana = std::fs::read_to_string(root.join("deploy/grafana/vigil.json")).expect("grafana");
    let dash: serde_json::Value = serde_json::from_str(&grafana).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "vigil");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    // A cluster with a job and an incident, resolved by an uncordon, so
    // that every family has samples.
    let (c, _agents) = cluster("names");
    let status = vigil_tests::blocking_post(
        &format!("{}/api/v1/uncordon", c.http_url()),
        r#"{"target":"m1"}"#,
    );
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(30), "a resolved incident", || {
        c.get("/api/v1/incidents")
            .is_some_and(|v| v[0]["state"] == "resolved")
    });
    let mut fams = families(&metrics_text(&c));
    // The ledger families have samples once a job has ledger entries; the
    // unit tests in controller/src/metrics.rs check them. Here the job may
    // be too short to have any.
    let ledger = c.get("/api/v1/ledger").unwrap_or_default();
    if ledger.as_array().is_none_or(Vec::is_empty) {
        fams.extend(["vigil_ledger_card_hours_total", "vigil_ledger_ettr"].map(String::from));
    }
    let mut wanted = referenced(&rules);
    wanted.extend(exprs.iter().flat_map(|e| referenced(e)));
    assert!(wanted.len() >= 15, "{wanted:?}");
    let missing: Vec<&String> = wanted.iter().filter(|n| !fams.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "referenced but not exposed: {missing:?}"
    );

    let Some(promtool) = tool(&["promtool"]) else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(root.join("deploy/prometheus/alerts.yml"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw SSE reader over HTTP/1.1.
struct Sse {
    r: BufReader<std::net::TcpStream>,
}

type SseEvent = (Option<u64>, String, String);

impl Sse {
    /// Opens `target`; the status code, and the reader on 200.
    fn open(port: u16, target: &str, headers: &str) -> (u16, Option<Sse>) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}\r\n"
        )
        .expect("request");
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).expect("status line");
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code != 200 {
            let mut rest = String::new();
            let _ = r.take(4096).read_to_string(&mut rest);
            return (code, None);
        }
        (code, Some(Sse { r }))
    }

    /// The next event: (id, event, data).
    fn next(&mut self) -> SseEvent {
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.r.read_line(&mut line).expect("the feed stays open");
            assert!(n > 0, "the feed ended");
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !data.is_empty() {
                    return (id, kind, data);
                }
            } else if let Some(v) = l.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = l.strip_prefix("event:") {
                kind = v.trim().to_owned();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
            // Anything else (chunk sizes, headers, comments) is skipped.
        }
    }
}

#[test]
fn the_feed_starts_with_a_snapshot_then_deltas() {
    let (c, _agents) = cluster("snapshot");
    let (code, feed) = Sse::open(c.http, "/api/v1/events?snapshot=true", "");
    assert_eq!(code, 200);
    let mut feed = feed.expect("feed");
    let (id, kind, data) = feed.next();
    assert_eq!(kind, "snapshot");
    let v: serde_json::Value = serde_json::from_str(&data).expect("json");
    let seq = v["seq"].as_u64().expect("seq");
    assert_eq!(
        id,
        Some(seq),
        "the snapshot's id is the feed position it reflects"
    );
    assert!(seq > 0);
    let nodes = v["data"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert!(
        !v["data"]["incidents"]
            .as_array()
            .expect("incidents")
            .is_empty()
    );
    assert!(v["data"]["jobs"].is_array());

    // Deltas follow, after the snapshot's position: an operator's cordon.
    let status = vigil_tests::blocking_post(
        &format!("{}/api/v1/cordon", c.http_url()),
        r#"{"target":"m0/1","reason":"snapshot test"}"#,
    );
    assert_eq!(status, 200);
    loop {
        let (id, kind, data) = feed.next();
        let id = id.expect("a delta has an id");
        assert!(id > seq, "delta {id} is not after the snapshot {seq}");
        if kind == "quarantined" {
            assert!(data.contains("snapshot test"), "{data}");
            break;
        }
    }

    // Resuming with Last-Event-ID skips the snapshot: deltas only.
    let (_, feed) = Sse::open(
        c.http,
        "/api/v1/events?snapshot=true",
        "Last-Event-ID: 1\r\n",
    );
    let (id, kind, _) = feed.expect("feed").next();
    assert_eq!(id, Some(2));
    assert_ne!(kind, "snapshot");

    // A snapshot and a starting point contradict each other.
    let (code, _) = Sse::open(c.http, "/api/v1/events?snapshot=true&after=3", "");
    assert_eq!(code, 400);
}
