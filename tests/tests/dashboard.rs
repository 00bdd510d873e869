//! The dashboard in headless Chromium, driven over WebDriver (chromedriver),
//! against a running `vigil demo`: the heatmap, a live incident and its
//! timeline, a card's evidence. Leaves a screenshot in
//! `target/test-artifacts/dashboard.png`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`. Without them
//! it prints `SKIPPED: ... not installed` and passes, unless `CI` is set.

use base64::Engine;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use vigil_tests::{Proc, artifacts_dir, blocking_get, free_port, scratch, tool, wait_until};

/// A small scenario: 4 nodes of 8 cards and a spare, an XID 79 on n2/5
/// early, and a long tail so the demo outlives the test (which ends it).
const SCENARIO: &str = r#"
name = "dashboard"
duration_s = 1200
seed = 3

[cluster]
nodes = 4
cards_per_node = 8
spares = 1
card_model = "H100"
heartbeat_ms = 1000

[job]
id = "pretrain"
world_size = 32
step_ms = 2000
checkpoint_every = 5
checkpoint_ms = 1000
restore_ms = 4000

[[fault]]
at_s = 16
kind = "xid"
node = "n2"
card = 5
code = 79
"#;

/// A minimal WebDriver client over HTTP.
struct WebDriver {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    session: String,
}

impl WebDriver {
    fn call(
        rt: &tokio::runtime::Runtime,
        http: &reqwest::Client,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Value {
        rt.block_on(async {
            let req = match method {
                "GET" => http.get(url),
                "DELETE" => http.delete(url),
                _ => http.post(url).json(&body.unwrap_or_else(|| json!({}))),
            };
            let r = req
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "{method} {url}: {status} {v}");
            v["value"].clone()
        })
    }

    fn start(driver_port: u16, chromium: &std::path::Path, profile: &std::path::Path) -> WebDriver {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{driver_port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1100", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = Self::call(&rt, &http, "POST", &format!("{base}/session"), Some(caps));
        let session = v["sessionId"].as_str().expect("session id").to_owned();
        WebDriver {
            rt,
            http,
            base,
            session,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        Self::call(&self.rt, &self.http, method, &url, body)
    }

    fn script(&self, js: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    /// Polls `js` until it returns something truthy; returns that.
    fn wait_for(&self, what: &str, js: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let v = self.script(js);
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; last {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element id")
            .to_owned()
    }
}

impl WebDriver {
    /// Clicks the first element matching `css`, finding it again when the
    /// page re-rendered it in between (a stale element reference).
    fn click(&self, css: &str) {
        for _ in 0..50 {
            let id = self.find(css);
            let url = format!("{}/session/{}/element/{id}/click", self.base, self.session);
            let http = self.http.clone();
            let (ok, body) = self.rt.block_on(async move {
                let r = http
                    .post(&url)
                    .json(&json!({}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .expect("click");
                (r.status().is_success(), r.text().await.unwrap_or_default())
            });
            if ok {
                return;
            }
            assert!(body.contains("stale element"), "click {css}: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{css} kept going stale");
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let http = self.http.clone();
        let _ = self.rt.block_on(async move {
            http.delete(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
        });
    }
}

#[test]
fn the_dashboard_shows_the_heatmap_a_live_incident_and_its_timeline() {
    let Some(driver) = tool(&["chromedriver"]) else {
        return;
    };
    let Some(chromium) = tool(&["chromium", "chromium-browser", "google-chrome"]) else {
        return;
    };
    let dir = scratch("dashboard");
    let scenario = dir.join("dashboard.toml");
    std::fs::write(&scenario, SCENARIO).expect("scenario");
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let data = dir.join("data");
    let _demo = Proc::spawn(
        "vigil",
        &[
            "demo",
            "--scenario",
            &scenario.display().to_string(),
            "--speed",
            "2",
            "--http-listen",
            &listen,
            "--data-dir",
            &data.display().to_string(),
        ],
        &dir.join("demo.log"),
    );
    let url = format!("http://{listen}/");
    wait_until(Duration::from_secs(60), "the demo's controller", || {
        blocking_get(&format!("{url}readyz")).is_some()
    });

    let port = free_port();
    let _driver = Proc::spawn_program(
        &driver,
        &[&format!("--port={port}")],
        &dir.join("chromedriver.log"),
    );
    wait_until(Duration::from_secs(30), "chromedriver", || {
        blocking_get(&format!("http://127.0.0.1:{port}/status"))
            .is_some_and(|s| s.contains("\"ready\":true"))
    });
    let wd = WebDriver::start(port, &chromium, &dir.join("profile"));
    wd.cmd("POST", "/url", Some(json!({ "url": url })));

    // The heatmap draws every card: 5 nodes (one spare) of 8 cards.
    let cards = wd.wait_for(
        "the heatmap",
        "const c = document.getElementById('heatmap'); return c.dataset.cards === '40' && c.dataset.cards;",
    );
    assert_eq!(cards, "40");
    assert_eq!(
        wd.script("return document.getElementById('conn').textContent"),
        "live"
    );

    // The XID 79 arrives over the live feed as an incident on n2/5.
    wd.wait_for(
        "the incident on n2/5",
        "return [...document.querySelectorAll('#incidents tr.incident')].some(r => r.textContent.includes('n2/5'))",
    );
    wd.click("#incidents tr.incident");
    let phases = wd.wait_for(
        "the incident's timeline",
        "const p = [...document.querySelectorAll('#timeline svg rect.phase')].map(r => r.dataset.phase); return p.length >= 2 && p;",
    );
    let phases: Vec<&str> = phases
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(phases[..2], ["detect", "localize"], "{phases:?}");
    let title = wd.script("return document.getElementById('timeline-title').textContent");
    assert!(
        title.as_str().is_some_and(|t| t.contains("n2/5")),
        "{title}"
    );

    // Clicking the failed card on the canvas shows its evidence.
    let at = wd.script(
        "const c = document.getElementById('heatmap'), r = c.getBoundingClientRect(), p = window.vigil.cellCenter('n2', 5);\
         return p && {x: Math.round(r.left + p.x), y: Math.round(r.top + p.y)};",
    );
    let (x, y) = (at["x"].as_i64().expect("x"), at["y"].as_i64().expect("y"));
    wd.cmd(
        "POST",
        "/actions",
        Some(json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "origin": "viewport", "x": x, "y": y, "duration": 0},
                        {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})),
    );
    let detail = wd.wait_for(
        "the card's evidence",
        "const t = document.getElementById('card-detail').textContent; return t.includes('n2/5') && /failed|quarantined/.test(t) && t;",
    );
    assert!(
        detail.as_str().is_some_and(|t| t.contains("xid:79")),
        "{detail}"
    );

    // The ledger panel settles, with entries or with a note that this
    // controller has no ledger endpoint.
    wd.wait_for(
        "the ledger panel",
        "return !document.getElementById('ledger').textContent.includes('loading')",
    );
    // Jobs: the demo's job shows its progress.
    wd.wait_for(
        "the job panel",
        "return document.querySelector('#jobs .job[data-job=\"pretrain\"]') !== null",
    );

    let shot = wd.cmd("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().expect("base64 screenshot"))
        .expect("decode screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = artifacts_dir().join("dashboard.png");
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());

    // 10,000 cards: 1,250 synthetic nodes of 8 cards go through the same
    // drawing path, and a card can still be picked by position.
    let drawn = wd.script(
        "const nodes = []; for (let i = 0; i < 1250; i++) nodes.push({id: 'big' + i, liveness: {state: i % 97 ? 'alive' : 'lost'},\
           cards: Array.from({length: 8}, (_, k) => ({index: k, model: 'H100', health: {state: (i * 8 + k) % 501 ? 'healthy' : 'failed'}}))});\
         const t0 = performance.now(); window.vigil.setNodes(nodes); window.vigil.drawHeatmap(); const ms = performance.now() - t0;\
         const c = document.getElementById('heatmap'), p = window.vigil.cellCenter('big1249', 7);\
         return {cards: c.dataset.cards, ms, hit: window.vigil.cardAt(p.x, p.y)};",
    );
    assert_eq!(drawn["cards"], "10000", "{drawn}");
    assert_eq!(drawn["hit"], json!(["big1249", 7]), "{drawn}");
    println!("10,000 cards drawn in {} ms", drawn["ms"]);
}
