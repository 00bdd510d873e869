//! The document a vendor probe wrapper prints for `--cards exec:CMD`.
//!
//! One JSON object per invocation (schema version 1, described field by
//! field in `docs/probes.md`):
//!
//! ```json
//! {"vigil_probe": 1, "vendor": "amd",
//!  "cards": [{"index": 0, "uuid": "...", "model": "MI300X", "pci_bus_id": "0000:0c:00.0",
//!             "memory_total_bytes": 206158430208, "utilization_percent": 97.0,
//!             "memory_used_bytes": 1024, "temperature_c": 71.0, "power_w": 640.5,
//!             "ecc_uncorrected": 0, "ecc_corrected": 2, "throttle_thermal": false,
//!             "pcie_link_width": 16, "pcie_link_width_max": 16, "unreachable": false}],
//!  "errors": [{"card": 0, "signal": "xid", "code": 79, "message": "..."}]}
//! ```
//!
//! Only `vigil_probe` and each card's `index` (and each error's `card`) are
//! required. A reading that is absent, `null`, or one of the "no value"
//! strings (`"N/A"`, `"[Not Supported]"`, ...) reads as zero or false.
//! Unknown fields are ignored, so a wrapper may print more.

use super::is_unavailable;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;
use vigil_core::model::{CardInfo, CardSample, Signal, THROTTLE_HW_THERMAL, THROTTLE_SW_POWER_CAP};

/// The schema version this agent reads.
pub const VERSION: u64 = 1;

/// A parsed probe document.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecReport {
    pub vendor: String,
    /// Inventory and reading of each card, in document order.
    pub cards: Vec<(CardInfo, CardSample)>,
    /// Error events: card index, signal, message.
    pub errors: Vec<(u32, Signal, String)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CardDoc {
    #[serde(deserialize_with = "reading")]
    uuid: String,
    #[serde(deserialize_with = "reading")]
    model: String,
    #[serde(deserialize_with = "reading")]
    pci_bus_id: String,
    #[serde(deserialize_with = "reading")]
    memory_total_bytes: u64,
    #[serde(deserialize_with = "reading")]
    utilization_percent: f32,
    #[serde(deserialize_with = "reading")]
    memory_used_bytes: u64,
    #[serde(deserialize_with = "reading")]
    temperature_c: f32,
    #[serde(deserialize_with = "reading")]
    power_w: f32,
    #[serde(deserialize_with = "reading")]
    ecc_uncorrected: u64,
    #[serde(deserialize_with = "reading")]
    ecc_corrected: u64,
    #[serde(deserialize_with = "reading")]
    retired_pages: u32,
    #[serde(deserialize_with = "reading")]
    retirement_pending: bool,
    #[serde(deserialize_with = "reading")]
    throttle_thermal: bool,
    #[serde(deserialize_with = "reading")]
    throttle_power: bool,
    #[serde(deserialize_with = "reading")]
    pcie_link_width: u32,
    #[serde(deserialize_with = "reading")]
    pcie_link_width_max: u32,
    #[serde(deserialize_with = "reading")]
    pcie_link_gen: u32,
    #[serde(deserialize_with = "reading")]
    pcie_link_gen_max: u32,
    #[serde(deserialize_with = "reading")]
    pcie_replay: u64,
    #[serde(deserialize_with = "reading")]
    link_errors: u64,
    #[serde(deserialize_with = "reading")]
    links_up: u32,
    #[serde(deserialize_with = "reading")]
    links_total: u32,
    #[serde(deserialize_with = "reading")]
    unreachable: bool,
}

#[derive(Debug, Deserialize)]
struct ErrorDoc {
    card: u32,
    #[serde(default = "xid_name")]
    signal: String,
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: Option<String>,
}

fn xid_name() -> String {
    "xid".to_owned()
}

/// A reading: absent, `null` or a "no value" string give the default.
fn reading<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(T::default()),
        Value::String(s) if is_unavailable(s) => Ok(T::default()),
        _ => serde_json::from_value(v).map_err(serde::de::Error::custom),
    }
}

fn field<T: DeserializeOwned>(v: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("{what}: {e}"))
}

/// Parses one probe document.
pub fn parse(json: &str) -> Result<ExecReport, String> {
    let doc: Value = serde_json::from_str(json.trim())
        .map_err(|e| format!("probe output is not a JSON document: {e}"))?;
    let Value::Object(mut doc) = doc else {
        return Err("probe output is not a JSON object".to_owned());
    };
    match doc.get("vigil_probe") {
        None => {
            return Err(
                "probe output has no \"vigil_probe\" field (is this a Vigil probe wrapper?)"
                    .to_owned(),
            );
        }
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "probe document version {v} is not supported (this agent reads vigil_probe {VERSION})"
            ));
        }
    }
    let vendor = match doc.remove("vendor") {
        None | Some(Value::Null) => "unknown".to_owned(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(other) => return Err(format!("vendor: expected a name, found {other}")),
    };
    let cards_v = match doc.remove("cards") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => return Err(format!("cards: expected an array, found {other}")),
    };
    let mut cards = Vec::with_capacity(cards_v.len());
    let mut seen = BTreeSet::new();
    for (i, mut c) in cards_v.into_iter().enumerate() {
        let what = format!("cards[{i}]");
        let index: u32 = match c.as_object_mut().and_then(|o| o.remove("index")) {
            Some(v) => field(v, &format!("{what}.index"))?,
            None => return Err(format!("{what}: no \"index\"")),
        };
        if !seen.insert(index) {
            return Err(format!("{what}: card index {index} appears twice"));
        }
        let d: CardDoc = field(c, &what)?;
        cards.push(card(index, &vendor, d));
    }
    let errors_v = match doc.remove("errors") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => Vec::new(),
        Some(other) => return Err(format!("errors: expected an array, found {other}")),
    };
    let mut errors = Vec::with_capacity(errors_v.len());
    for (i, e) in errors_v.into_iter().enumerate() {
        let what = format!("errors[{i}]");
        let e: ErrorDoc = field(e, &what)?;
        if !seen.contains(&e.card) {
            return Err(format!("{what}: card {} is not in \"cards\"", e.card));
        }
        if e.signal == "xid" && e.code.is_none() {
            return Err(format!("{what}: an xid error needs a \"code\""));
        }
        let signal = Signal::from_parts(&e.signal, e.code.unwrap_or(0))
            .map_err(|m| format!("{what}: {m}"))?;
        let message = e.message.unwrap_or_else(|| signal.to_string());
        errors.push((e.card, signal, message));
    }
    Ok(ExecReport {
        vendor,
        cards,
        errors,
    })
}

fn card(index: u32, vendor: &str, d: CardDoc) -> (CardInfo, CardSample) {
    let mut throttle = 0;
    if d.throttle_thermal {
        throttle |= THROTTLE_HW_THERMAL;
    }
    if d.throttle_power {
        throttle |= THROTTLE_SW_POWER_CAP;
    }
    (
        CardInfo {
            index,
            uuid: d.uuid,
            vendor: vendor.to_owned(),
            model: d.model,
            memory_total_bytes: d.memory_total_bytes,
            pci_bus_id: d.pci_bus_id,
        },
        CardSample {
            index,
            utilization_percent: d.utilization_percent,
            memory_used_bytes: d.memory_used_bytes,
            temperature_c: d.temperature_c,
            power_w: d.power_w,
            ecc_sbe_volatile: d.ecc_corrected,
            ecc_dbe_volatile: d.ecc_uncorrected,
            retired_pages: d.retired_pages,
            retirement_pending: d.retirement_pending,
            throttle_reasons: throttle,
            pcie_link_width: d.pcie_link_width,
            pcie_link_width_max: d.pcie_link_width_max,
            nvlink_up: d.links_up,
            nvlink_total: d.links_total,
            probe_latency_us: 0,
            unreachable: d.unreachable,
            pcie_link_gen: d.pcie_link_gen,
            pcie_link_gen_max: d.pcie_link_gen_max,
            pcie_replay: d.pcie_replay,
            nvlink_errors: d.link_errors,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "vigil_probe": 1, "vendor": "amd", "host_tool": "amd-smi 24.6.3",
      "cards": [
        {"index": 0, "uuid": "c4ff74a1-0000-1000-80ab-5f3c2a7e01de", "model": "MI300X",
         "memory_total_bytes": 205822885888, "pci_bus_id": "0000:0c:00.0",
         "utilization_percent": 97.5, "memory_used_bytes": 190000000000,
         "temperature_c": 71.0, "power_w": 640.5, "ecc_uncorrected": 1, "ecc_corrected": 12,
         "throttle_thermal": true, "pcie_link_width": 16, "pcie_link_width_max": 16,
         "links_up": 7, "links_total": 7, "unreachable": false, "vendor_extra": {"x": 1}},
        {"index": 1, "model": "MI300X", "temperature_c": null, "power_w": "N/A",
         "unreachable": true}
      ],
      "errors": [{"card": 1, "code": 79, "signal": "xid", "message": "card lost"},
                 {"card": 0, "signal": "ecc_dbe"}]
    }"#;

    #[test]
    fn parses_a_full_document() {
        let r = parse(FULL).expect("valid");
        assert_eq!(r.vendor, "amd");
        assert_eq!(r.cards.len(), 2);
        let (i0, s0) = &r.cards[0];
        assert_eq!(i0.index, 0);
        assert_eq!(i0.vendor, "amd");
        assert_eq!(i0.model, "MI300X");
        assert_eq!(i0.pci_bus_id, "0000:0c:00.0");
        assert_eq!(i0.memory_total_bytes, 205_822_885_888);
        assert_eq!(s0.utilization_percent, 97.5);
        assert_eq!((s0.ecc_dbe_volatile, s0.ecc_sbe_volatile), (1, 12));
        assert_eq!(s0.throttle_reasons, THROTTLE_HW_THERMAL);
        assert_eq!((s0.nvlink_up, s0.nvlink_total), (7, 7));
        assert_eq!((s0.pcie_link_width, s0.pcie_link_width_max), (16, 16));
        assert_eq!(
            r.errors,
            [
                (1, Signal::Xid(79), "card lost".to_owned()),
                (0, Signal::EccDbe, "ecc_dbe".to_owned())
            ]
        );
    }

    #[test]
    fn missing_null_and_na_readings_default() {
        let r = parse(FULL).expect("valid");
        let (i1, s1) = &r.cards[1];
        assert_eq!(i1.uuid, "");
        assert_eq!(s1.temperature_c, 0.0);
        assert_eq!(s1.power_w, 0.0);
        assert!(s1.unreachable);
        let minimal = parse(r#"{"vigil_probe":1,"cards":[{"index":3}]}"#).expect("minimal");
        assert_eq!(minimal.vendor, "unknown");
        assert_eq!(
            minimal.cards[0].1,
            CardSample {
                index: 3,
                ..Default::default()
            }
        );
        assert!(minimal.errors.is_empty());
        assert!(
            parse(r#"{"vigil_probe":1}"#)
                .expect("no cards")
                .cards
                .is_empty()
        );
    }

    #[test]
    fn bad_documents_are_refused_clearly() {
        let cases = [
            ("", "not a JSON document"),
            ("not json", "not a JSON document"),
            ("[1,2]", "not a JSON object"),
            (r#"{"cards":[]}"#, "no \"vigil_probe\""),
            (
                r#"{"vigil_probe":2,"cards":[]}"#,
                "version 2 is not supported",
            ),
            (r#"{"vigil_probe":"1"}"#, "is not supported"),
            (
                r#"{"vigil_probe":1,"cards":{}}"#,
                "cards: expected an array",
            ),
            (
                r#"{"vigil_probe":1,"cards":[{"uuid":"x"}]}"#,
                "cards[0]: no \"index\"",
            ),
            (
                r#"{"vigil_probe":1,"cards":[{"index":-1}]}"#,
                "cards[0].index",
            ),
            (
                r#"{"vigil_probe":1,"cards":[{"index":0},{"index":0}]}"#,
                "cards[1]: card index 0 appears twice",
            ),
            (
                r#"{"vigil_probe":1,"cards":[{"index":0,"temperature_c":"hot"}]}"#,
                "cards[0]",
            ),
            (
                r#"{"vigil_probe":1,"cards":[{"index":0}],"errors":[{"card":1,"code":79}]}"#,
                "errors[0]: card 1 is not in",
            ),
            (
                r#"{"vigil_probe":1,"cards":[{"index":0}],"errors":[{"card":0}]}"#,
                "needs a \"code\"",
            ),
            (
                r#"{"vigil_probe":1,"cards":[{"index":0}],"errors":[{"card":0,"signal":"melted"}]}"#,
                "unknown card signal",
            ),
            (r#"{"vigil_probe":1,"vendor":7}"#, "vendor"),
        ];
        for (doc, want) in cases {
            let e = parse(doc).expect_err(doc);
            assert!(e.contains(want), "{doc}: {e}");
        }
    }

    #[test]
    fn errors_use_signal_names() {
        let doc = r#"{"vigil_probe":1,"cards":[{"index":0}],"errors":[
            {"card":0,"signal":"gpu_lost"},{"card":0,"signal":"thermal","message":"hot"},
            {"card":0,"signal":"xid","code":48}]}"#;
        let sig: Vec<Signal> = parse(doc)
            .expect("valid")
            .errors
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(sig, [Signal::GpuLost, Signal::Thermal, Signal::Xid(48)]);
    }
}
