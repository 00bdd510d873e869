//! `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` output.
//!
//! One row per GPU, values separated by `, `, in the order of [`QUERY`].
//! Unavailable values print as `[N/A]`, `N/A`, `[Not Supported]` (or another
//! bracketed word such as `[Unknown Error]`); they read as zero or false.
//! A GPU that has fallen off the bus makes `nvidia-smi` print
//! `Unable to determine the device handle for GPU0000:91:00.0: Unknown Error`
//! instead of a row; [`lost_bus_ids`] picks those out and [`parse`] skips them.

use super::is_unavailable;
use super::kmsg::normalize_bus_id;
use vigil_core::model::{CardInfo, CardSample};

/// The fields queried, in column order.
pub const QUERY: &str = "index,uuid,name,pci.bus_id,memory.total,memory.used,utilization.gpu,\
temperature.gpu,power.draw,ecc.errors.uncorrected.volatile.total,\
ecc.errors.corrected.volatile.total,retired_pages.pending,clocks_throttle_reasons.active,\
pcie.link.width.current,pcie.link.width.max,pcie.link.gen.current,pcie.link.gen.max";

/// The number of columns in a row; rows without the last two (the PCIe
/// generation, as older recordings and tools print them) are read too.
pub const COLUMNS: usize = 17;
const COLUMNS_WITHOUT_GEN: usize = 15;

/// The arguments to give `nvidia-smi`.
pub fn args() -> [String; 2] {
    [
        format!("--query-gpu={QUERY}"),
        "--format=csv,noheader,nounits".to_owned(),
    ]
}

const LOST_PREFIX: &str = "Unable to determine the device handle for ";

/// The PCI bus ids (normalized, see [`normalize_bus_id`]) of the GPUs that
/// `nvidia-smi` could not reach.
pub fn lost_bus_ids(output: &str) -> Vec<String> {
    output.lines().filter_map(|l| lost_line(l.trim())).collect()
}

fn lost_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix(LOST_PREFIX)?;
    let dev = rest.split(": ").next()?.trim();
    let dev = dev.strip_prefix("GPU").unwrap_or(dev);
    normalize_bus_id(dev)
}

/// Parses the CSV rows. Blank lines and lost-device lines are skipped; any
/// other line that is not a row of [`COLUMNS`] readable values is an error
/// that names the line.
pub fn parse(csv: &str) -> Result<Vec<(CardInfo, CardSample)>, String> {
    let mut out = Vec::new();
    for (i, raw) in csv.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || lost_line(line).is_some() {
            continue;
        }
        out.push(parse_row(line).map_err(|e| format!("nvidia-smi line {}: {e}: {line:?}", i + 1))?);
    }
    Ok(out)
}

fn parse_row(line: &str) -> Result<(CardInfo, CardSample), String> {
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    if f.len() != COLUMNS && f.len() != COLUMNS_WITHOUT_GEN {
        return Err(format!("expected {COLUMNS} columns, found {}", f.len()));
    }
    let small = |i: usize, field: &str| -> Result<u32, String> {
        match f.get(i) {
            Some(v) => {
                u32::try_from(int(v, field)?).map_err(|_| format!("{field} {v:?} is out of range"))
            }
            None => Ok(0),
        }
    };
    let index: u32 = f[0]
        .parse()
        .map_err(|_| format!("index {:?} is not a number", f[0]))?;
    let text = |v: &str| {
        if is_unavailable(v) {
            String::new()
        } else {
            v.to_owned()
        }
    };
    const MIB: u64 = 1 << 20;
    let info = CardInfo {
        index,
        uuid: text(f[1]),
        vendor: "nvidia".to_owned(),
        model: text(f[2]),
        memory_total_bytes: int(f[4], "memory.total")?.saturating_mul(MIB),
        pci_bus_id: text(f[3]),
    };
    let sample = CardSample {
        index,
        utilization_percent: float(f[6], "utilization.gpu")?,
        memory_used_bytes: int(f[5], "memory.used")?.saturating_mul(MIB),
        temperature_c: float(f[7], "temperature.gpu")?,
        power_w: float(f[8], "power.draw")?,
        ecc_dbe_volatile: int(f[9], "ecc.errors.uncorrected.volatile.total")?,
        ecc_sbe_volatile: int(f[10], "ecc.errors.corrected.volatile.total")?,
        retired_pages: 0,
        retirement_pending: yes_no(f[11], "retired_pages.pending")?,
        throttle_reasons: hex(f[12], "clocks_throttle_reasons.active")?,
        pcie_link_width: u32::try_from(int(f[13], "pcie.link.width.current")?)
            .map_err(|_| format!("pcie.link.width.current {:?} is out of range", f[13]))?,
        pcie_link_width_max: u32::try_from(int(f[14], "pcie.link.width.max")?)
            .map_err(|_| format!("pcie.link.width.max {:?} is out of range", f[14]))?,
        nvlink_up: 0,
        nvlink_total: 0,
        probe_latency_us: 0,
        unreachable: false,
        pcie_link_gen: small(15, "pcie.link.gen.current")?,
        pcie_link_gen_max: small(16, "pcie.link.gen.max")?,
        pcie_replay: 0,
        nvlink_errors: 0,
    };
    Ok((info, sample))
}

fn int(v: &str, field: &str) -> Result<u64, String> {
    if is_unavailable(v) {
        return Ok(0);
    }
    if let Ok(n) = v.parse::<u64>() {
        return Ok(n);
    }
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x.round() as u64),
        _ => Err(format!("{field} {v:?} is not a count")),
    }
}

fn float(v: &str, field: &str) -> Result<f32, String> {
    if is_unavailable(v) {
        return Ok(0.0);
    }
    match v.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("{field} {v:?} is not a number")),
    }
}

fn yes_no(v: &str, field: &str) -> Result<bool, String> {
    if is_unavailable(v) {
        return Ok(false);
    }
    match v.to_ascii_lowercase().as_str() {
        "yes" | "active" | "true" | "1" => Ok(true),
        "no" | "not active" | "false" | "0" => Ok(false),
        _ => Err(format!("{field} {v:?} is not Yes or No")),
    }
}

fn hex(v: &str, field: &str) -> Result<u64, String> {
    if is_unavailable(v) {
        return Ok(0);
    }
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse::<u64>(),
    };
    parsed.map_err(|_| format!("{field} {v:?} is not a hex bitmask"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::model::{THROTTLE_HW_THERMAL, THROTTLE_SW_POWER_CAP, THROTTLE_SW_THERMAL};

    const H100X8: &str = include_str!("../../tests/samples/nvidia-smi-h100x8.csv");

    #[test]
    fn query_has_one_field_per_column() {
        assert_eq!(QUERY.split(',').count(), COLUMNS);
        assert!(args()[0].starts_with("--query-gpu=index,uuid,"));
        assert_eq!(args()[1], "--format=csv,noheader,nounits");
    }

    #[test]
    fn parses_a_recorded_h100_node() {
        let cards = parse(H100X8).expect("sample parses");
        assert_eq!(cards.len(), 8);
        let (info, s) = &cards[0];
        assert_eq!(info.index, 0);
        assert_eq!(info.uuid, "GPU-4b3a2f1e-9d3c-4c1a-8e2b-1f0d6c5a4b30");
        assert_eq!(info.model, "NVIDIA H100 80GB HBM3");
        assert_eq!(info.vendor, "nvidia");
        assert_eq!(info.pci_bus_id, "00000000:18:00.0");
        assert_eq!(info.memory_total_bytes, 81559 * 1024 * 1024);
        assert_eq!(s.memory_used_bytes, 74213 * 1024 * 1024);
        assert_eq!(s.utilization_percent, 98.0);
        assert_eq!(s.temperature_c, 61.0);
        assert!((s.power_w - 612.47).abs() < 0.01);
        assert_eq!((s.pcie_link_width, s.pcie_link_width_max), (16, 16));
        // Card 1: corrected only. Card 2: uncorrected + pending retirement.
        assert_eq!(
            (cards[1].1.ecc_sbe_volatile, cards[1].1.ecc_dbe_volatile),
            (3, 0)
        );
        assert_eq!(cards[2].1.ecc_dbe_volatile, 2);
        assert!(cards[2].1.retirement_pending && !cards[1].1.retirement_pending);
        // Card 3: thermal throttling bits 0x20 | 0x40.
        assert_eq!(
            cards[3].1.throttle_reasons,
            THROTTLE_SW_THERMAL | THROTTLE_HW_THERMAL
        );
        // Card 4: idle (bit 0) and a narrowed link.
        assert_eq!(cards[4].1.throttle_reasons, 1);
        assert_eq!(cards[4].1.pcie_link_width, 8);
        assert_eq!(cards[5].1.throttle_reasons, THROTTLE_SW_POWER_CAP);
    }

    #[test]
    fn unavailable_values_read_as_zero_or_false() {
        let cards = parse(H100X8).expect("sample parses");
        assert_eq!(cards[5].1.power_w, 0.0);
        let s6 = &cards[6].1;
        assert_eq!((s6.ecc_dbe_volatile, s6.ecc_sbe_volatile), (0, 0));
        assert!(!s6.retirement_pending);
        let s7 = &cards[7].1;
        assert_eq!(s7.throttle_reasons, 0);
        assert_eq!((s7.pcie_link_width, s7.pcie_link_width_max), (0, 0));
        assert!(!s7.unreachable);
        let row = "0, [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A]";
        let all = parse(row).expect("all-N/A row parses");
        assert_eq!(all[0].0.uuid, "");
        assert_eq!(all[0].1, CardSample::default());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let short = format!(
            "{}\n0, GPU-x, H100, 00000000:18:00.0\n",
            H100X8.lines().next().unwrap_or("")
        );
        let e = parse(&short).expect_err("short row");
        assert!(
            e.contains("line 2") && e.contains("expected 17 columns"),
            "{e}"
        );
        let bad_index = H100X8.replacen("0, GPU-4b3a", "x, GPU-4b3a", 1);
        let e = parse(&bad_index).expect_err("bad index");
        assert!(e.contains("line 1") && e.contains("index \"x\""), "{e}");
        let bad_hex = H100X8.replace("0x0000000000000060", "0xZZ");
        let e = parse(&bad_hex).expect_err("bad hex");
        assert!(
            e.contains("line 4") && e.contains("clocks_throttle_reasons.active"),
            "{e}"
        );
        let bad_temp = H100X8.replacen(", 61, 612.47", ", hot, 612.47", 1);
        assert!(
            parse(&bad_temp)
                .expect_err("bad temp")
                .contains("temperature.gpu")
        );
        let bad_bool = H100X8.replacen(", Yes,", ", Maybe,", 1);
        assert!(parse(&bad_bool).expect_err("bad bool").contains("line 3"));
    }

    #[test]
    fn lost_gpus_are_picked_out_and_skipped() {
        let out = format!(
            "{}\nUnable to determine the device handle for GPU0000:91:00.0: Unknown Error\n",
            H100X8.lines().next().unwrap_or("")
        );
        assert_eq!(lost_bus_ids(&out), ["0000:91:00"]);
        assert_eq!(parse(&out).expect("row plus lost line").len(), 1);
        assert!(lost_bus_ids(H100X8).is_empty());
        assert_eq!(parse("").expect("empty"), []);
    }

    #[test]
    fn rows_with_the_pcie_generation_parse() {
        let row = "0, GPU-1, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 81559, 1, 97, 61, 690.5, 0, 0, No, 0x0000000000000000, 16, 16, 3, 5";
        let (_, s) = &parse(row).expect("17 columns")[0];
        assert_eq!((s.pcie_link_gen, s.pcie_link_gen_max), (3, 5));
        assert!(parse(&format!("{row}, 9")).is_err());
    }
}
