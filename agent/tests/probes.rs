//! The real card probe back-ends end to end, without hardware: the vendor
//! wrappers in integrations/probes on their recorded samples, `ExecProbe` and
//! `SmiProbe` against fake commands, and the kernel-log reader on a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vigil_agent::cards::{CardProbe, CardSpec, from_spec};
use vigil_agent::probes::exec::ExecProbe;
use vigil_agent::probes::kmsg::KernelLog;
use vigil_agent::probes::smi::SmiProbe;
use vigil_core::model::{Signal, THROTTLE_HW_THERMAL, sample_transitions};
use vigil_ingest::probe::exec;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-probes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    let status = Command::new("chmod")
        .arg("+x")
        .arg(&p)
        .status()
        .expect("chmod");
    assert!(status.success());
    p
}

fn python3() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 is needed for the wrapper tests");
        }
        println!("SKIPPED: no python3");
    }
    ok
}

fn wrapper(name: &str, args: &[&str]) -> exec::ExecReport {
    let dir = root().join("integrations/probes");
    let out = Command::new("python3")
        .arg(dir.join(name))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run wrapper");
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exec::parse(&String::from_utf8_lossy(&out.stdout)).expect("wrapper output parses")
}

#[test]
fn amd_smi_wrapper_reads_recorded_output() {
    if !python3() {
        return;
    }
    let r = wrapper(
        "amd-smi.py",
        &[
            "--sample",
            "samples/amd-smi-static.json",
            "--sample",
            "samples/amd-smi-metric.json",
        ],
    );
    assert_eq!(r.vendor, "amd");
    assert_eq!(r.cards.len(), 2);
    let (i0, s0) = &r.cards[0];
    assert_eq!(
        (i0.index, i0.model.as_str(), i0.pci_bus_id.as_str()),
        (0, "AMD Instinct MI300X", "0000:0c:00.0")
    );
    assert_eq!(i0.memory_total_bytes, 196_592 << 20);
    assert_eq!(s0.memory_used_bytes, 181_233 << 20);
    assert_eq!(
        (s0.utilization_percent, s0.temperature_c, s0.power_w),
        (97.0, 78.0, 642.0)
    );
    assert_eq!((s0.ecc_sbe_volatile, s0.ecc_dbe_volatile), (3, 0));
    assert_eq!(s0.throttle_reasons, 0);
    let s1 = &r.cards[1].1;
    assert_eq!(s1.ecc_dbe_volatile, 2);
    assert_eq!(s1.throttle_reasons, THROTTLE_HW_THERMAL);
    assert_eq!((s1.pcie_link_width, s1.pcie_link_width_max), (8, 16));
    assert_eq!(r.errors.len(), 1);
    assert_eq!((r.errors[0].0, r.errors[0].1), (1, Signal::Nvlink));
    // The shared transition rules see the second card's faults.
    let sig: Vec<Signal> = sample_transitions(None, s1)
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(
        sig.contains(&Signal::EccDbe)
            && sig.contains(&Signal::PcieDegraded)
            && sig.contains(&Signal::Thermal),
        "{sig:?}"
    );
}

#[test]
fn npu_smi_wrapper_reads_recorded_output() {
    if !python3() {
        return;
    }
    let r = wrapper("npu-smi.py", &["--sample", "samples/npu-smi-info.txt"]);
    assert_eq!(r.vendor, "huawei");
    let got: Vec<(u32, &str, bool)> = r
        .cards
        .iter()
        .map(|(i, s)| (i.index, i.pci_bus_id.as_str(), s.unreachable))
        .collect();
    assert_eq!(
        got,
        [
            (0, "0000:c1:00.0", false),
            (1, "0000:01:00.0", false),
            (2, "0000:c2:00.0", true)
        ]
    );
    let (i0, s0) = &r.cards[0];
    assert_eq!(i0.model, "Ascend 910B3");
    assert_eq!(i0.memory_total_bytes, 65_536 << 20);
    assert_eq!(s0.memory_used_bytes, 58_339 << 20);
    assert_eq!((s0.utilization_percent, s0.temperature_c), (87.0, 40.0));
    assert!((s0.power_w - 93.6).abs() < 0.01);
    assert_eq!(r.cards[1].1.temperature_c, 92.0);
    assert!(r.errors.is_empty());
}

#[test]
fn template_wrapper_reads_recorded_output() {
    if !python3() {
        return;
    }
    let r = wrapper("template.py", &["--sample", "samples/template-tool.json"]);
    assert_eq!(r.vendor, "example");
    assert_eq!(r.cards.len(), 2);
    assert_eq!(r.cards[0].1.temperature_c, 48.0);
    assert_eq!(r.cards[0].0.memory_total_bytes, 65_536 << 20);
    assert!(r.cards[1].1.unreachable);
    assert_eq!(
        r.errors,
        [(1, Signal::Xid(3), "example-smi error 3".to_owned())]
    );
}

#[test]
fn exec_probe_end_to_end() {
    let dir = tmp_dir("exec");
    let doc = dir.join("doc.json");
    std::fs::write(
        &doc,
        r#"{"vigil_probe":1,"vendor":"acme","cards":[{"index":0,"model":"A1","temperature_c":50},{"index":1,"model":"A1"}]}"#,
    )
    .expect("write doc");
    let cmd = format!("cat '{}'", doc.display());
    let mut p = ExecProbe::new(&cmd).expect("probe starts");
    assert_eq!(p.name(), "exec");
    let inv = p.inventory();
    assert_eq!(inv.len(), 2);
    assert_eq!(inv[0].vendor, "acme");
    let s = p.sample();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].temperature_c, 50.0);
    assert!(s[0].probe_latency_us > 0);
    assert!(p.drain_errors().is_empty());

    // Errors in the document go to drain_errors, once; a card that was not
    // in the first inventory is ignored.
    std::fs::write(
        &doc,
        r#"{"vigil_probe":1,"cards":[{"index":0},{"index":1,"unreachable":true},{"index":7}],
            "errors":[{"card":1,"signal":"xid","code":79,"message":"fell off"},{"card":7,"signal":"gpu_lost"}]}"#,
    )
    .expect("write doc");
    let s = p.sample();
    assert_eq!(s.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 1]);
    assert!(s[1].unreachable);
    assert_eq!(
        p.drain_errors(),
        [(1, Signal::Xid(79), "fell off".to_owned())]
    );
    assert!(p.drain_errors().is_empty());

    // Bad output and a failing command give no readings, not a panic.
    std::fs::write(&doc, "garbage").expect("write doc");
    assert!(p.sample().is_empty());
    std::fs::remove_file(&doc).expect("rm doc");
    assert!(p.sample().is_empty());

    // At start, the same failures are errors that say what went wrong.
    let e = ExecProbe::new(&cmd).expect_err("failing command");
    assert!(e.contains("failed") && e.contains("doc.json"), "{e}");
    std::fs::write(&doc, r#"{"vigil_probe":9}"#).expect("write doc");
    let e = ExecProbe::new(&cmd).expect_err("wrong version");
    assert!(e.contains("version 9"), "{e}");
    let e = from_spec(&CardSpec::Exec("exit 3".to_owned()), "n0")
        .err()
        .expect("from_spec refuses");
    assert!(
        e.starts_with("--cards exec:") && e.contains("exit status: 3"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn drain_until(p: &mut dyn CardProbe, n: usize) -> Vec<(u32, Signal, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(p.drain_errors());
        std::thread::sleep(Duration::from_millis(20));
    }
    got
}

#[test]
fn smi_probe_end_to_end_with_the_kernel_log() {
    let dir = tmp_dir("smi");
    let csv = root().join("ingest/tests/samples/nvidia-smi-h100x8.csv");
    let current = dir.join("current.csv");
    std::fs::copy(&csv, &current).expect("copy sample");
    // A fake nvidia-smi that insists on the real query and prints a file.
    let fake = script(
        &dir,
        "nvidia-smi",
        &format!(
            "case \"$1\" in --query-gpu=index,uuid,name,pci.bus_id,*) ;; *) echo \"bad args: $*\" >&2; exit 2;; esac\n\
             [ \"$2\" = --format=csv,noheader,nounits ] || exit 2\n\
             cat '{}' || exit 9",
            current.display()
        ),
    );
    let kmsg = dir.join("kmsg");
    std::fs::write(&kmsg, "").expect("kmsg file");
    let mut p = SmiProbe::new(
        fake.display().to_string(),
        Some(KernelLog::spawn(kmsg.clone())),
    )
    .expect("probe starts");
    assert_eq!(p.name(), "smi");
    let inv = p.inventory();
    assert_eq!(inv.len(), 8);
    assert_eq!(inv[3].pci_bus_id, "00000000:5D:00.0");
    let first = p.sample();
    assert_eq!(first.len(), 8);
    assert_eq!(first[2].ecc_dbe_volatile, 2);
    assert!(first.iter().all(|s| !s.unreachable));

    // XIDs in the kernel log reach drain_errors, mapped by PCI address.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .expect("open kmsg");
    writeln!(
        f,
        "4,1236,6781741548,-;NVRM: Xid (PCI:0000:3a:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n\
         4,1238,6781753400,-;nvidia-nvswitch1: SXid (PCI:0000:06:00.0): 20034, Fatal, Link 48 LTSSM Fault Up\n\
         4,1239,6781753500,-;NVRM: Xid (PCI:0000:9a:00): 48, pid=7, name=python3, DBE"
    )
    .expect("append");
    drop(f);
    let errors = drain_until(&mut p, 2);
    let got: Vec<(u32, Signal)> = errors.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(got, [(2, Signal::Xid(79)), (4, Signal::Xid(48))]);
    assert!(errors[0].2.contains("fallen off the bus"));

    // nvidia-smi loses card 2: it prints an error line instead of its row.
    let text = std::fs::read_to_string(&csv).expect("read sample");
    let lost: String = text
        .lines()
        .map(|l| {
            if l.contains("00000000:3A:00.0") {
                "Unable to determine the device handle for GPU0000:3A:00.0: Unknown Error\n"
                    .to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&current, lost).expect("write");
    let second = p.sample();
    assert_eq!(second.len(), 8);
    assert!(second[2].unreachable && !second[1].unreachable);
    let sig: Vec<Signal> = sample_transitions(Some(&first[2]), &second[2])
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(sig, [Signal::GpuLost]);

    // The command failing altogether is not evidence against any card.
    std::fs::remove_file(&current).expect("rm");
    assert!(p.sample().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smi_and_nvml_refuse_clearly_when_absent() {
    let bin = env!("CARGO_BIN_EXE_vigil-agent");
    let out = Command::new(bin)
        .args(["--cards", "smi", "--controller", "http://127.0.0.1:9"])
        .env("VIGIL_NVIDIA_SMI", "/nonexistent/nvidia-smi")
        .output()
        .expect("run agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cards smi") && err.contains("/nonexistent/nvidia-smi"),
        "{err}"
    );
    let out = Command::new(bin)
        .args(["--cards", "nvml", "--controller", "http://127.0.0.1:9"])
        .env("VIGIL_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .output()
        .expect("run agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NVML is not available"), "{err}");
}

#[test]
fn auto_falls_back_to_no_cards_without_a_driver() {
    let (p, sim) = from_spec(&CardSpec::Auto, "n0").expect("auto never fails");
    assert!(sim.is_none());
    if vigil_agent::probes::nvml::load().is_err() {
        assert_eq!(p.name(), "none");
        assert!(p.inventory().is_empty());
    } else {
        assert_eq!(p.name(), "nvml");
    }
}
