#![allow(clippy::unwrap_used)]

use super::kinds::{FactorRule, Param, SPECS, build_kind};
use super::*;
use proptest::prelude::*;

/// Line numbers: 1 name, 2 duration_s, 3 seed, 5 [cluster], 6 nodes, 7 cards_per_node,
/// 8 spares, 10 [job], 11 id, 12 world_size, 13 step_ms; appended text starts on line 14.
const BASE: &str = r#"name = "t"
duration_s = 100
seed = 3

[cluster]
nodes = 4
cards_per_node = 8
spares = 1

[job]
id = "j"
world_size = 32
step_ms = 1000
"#;

/// BASE without the job; appended text starts on line 10.
const BASE_NO_JOB: &str = r#"name = "t"
duration_s = 100
seed = 3

[cluster]
nodes = 4
cards_per_node = 8
spares = 1
"#;

/// A fault table appended to BASE: `[[fault]]` on line 15, `body` from line 16.
fn with_fault(body: &str) -> String {
    format!("{BASE}\n[[fault]]\n{body}")
}

fn err(text: &str) -> ScenarioError {
    match parse(text) {
        Ok(s) => panic!("expected an error, parsed {s:?}\n---\n{text}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_err(text: &str, line: usize, needle: &str) {
    let e = err(text);
    assert_eq!(e.line, line, "wrong line for {e}\n---\n{text}");
    assert!(
        e.reason.contains(needle),
        "reason {:?} lacks {needle:?}",
        e.reason
    );
}

fn ok(text: &str) -> Scenario {
    match parse(text) {
        Ok(s) => s,
        Err(e) => panic!("unexpected error {e}\n---\n{text}"),
    }
}

// ---- good files ------------------------------------------------------------------------

#[test]
fn default_scenario_is_the_workspace_copy() {
    // `scenarios/default.toml` at the workspace root is what users and the
    // corpus read; the crate carries its own copy so it builds alone.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/default.toml");
    let text = std::fs::read_to_string(&root).expect("scenarios/default.toml");
    assert_eq!(
        text,
        DEFAULT_SCENARIO,
        "sim/scenarios/default.toml differs from {}",
        root.display()
    );
}

#[test]
fn kind_table_follows_the_type_order() {
    for (i, s) in SPECS.iter().enumerate() {
        assert_eq!(s.ty as usize, i, "{}", s.name);
        assert_eq!(FaultType::from_name(s.name), Some(s.ty));
        assert_eq!(s.ty.name(), s.name);
    }
    assert_eq!(
        serde_json::to_value(FaultType::NodeCrash).unwrap(),
        "node_crash"
    );
    assert_eq!(FaultKind::Xid { code: 79 }.fault_type(), FaultType::Xid);
}

#[test]
fn default_scenario_parses() {
    let s = ok(DEFAULT_SCENARIO);
    assert_eq!(s.name, "default");
    assert_eq!(s.duration_s, 120.0);
    assert_eq!(s.seed, 0);
    assert_eq!(
        s.cluster,
        ClusterSpec {
            nodes: 32,
            cards_per_node: 8,
            spares: 2,
            card_model: "H100".into(),
            heartbeat_ms: 1000,
            groups: vec![],
        }
    );
    assert_eq!(
        s.job,
        Some(JobSpec {
            id: "pretrain".into(),
            world_size: 256,
            step_ms: 2000,
            checkpoint_every: 10,
            checkpoint_ms: 3000,
            restore_ms: 10000,
        })
    );
    let got: Vec<_> = s
        .faults
        .iter()
        .map(|f| (f.at_s, f.node.as_deref(), f.card, f.kind.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (30.0, Some("n2"), Some(5), FaultKind::Xid { code: 79 }),
            (55.0, Some("n4"), Some(1), FaultKind::EccDbe),
            (75.0, Some("n5"), Some(3), FaultKind::GpuLost),
            (95.0, Some("n6"), None, FaultKind::NodeCrash),
        ]
    );
    // Each fault's line is its `[[fault]]` header.
    let lines: Vec<&str> = DEFAULT_SCENARIO.lines().collect();
    for f in &s.faults {
        assert_eq!(lines[f.line - 1].trim(), "[[fault]]");
    }
}

const CONTRACT_EXAMPLE: &str = r#"name = "xid79-midrun"
duration_s = 600
seed = 7

[cluster]
nodes = 8              # named n0 .. n7
cards_per_node = 8     # card indexes 0 .. 7
spares = 1             # standby nodes named s0 ..
card_model = "H100"
heartbeat_ms = 1000

[[cluster.group]]      # optional: heterogeneous nodes
nodes = ["n6", "n7"]
card_model = "C500"
speed = 0.55           # relative compute speed; the job knows it (expected, not a fault)

[job]
id = "pretrain"
world_size = 64        # rank r runs on node n(r / cards_per_node), card (r % cards_per_node)
step_ms = 2000         # healthy step time on a speed-1.0 card
checkpoint_every = 50  # steps
checkpoint_ms = 5000
restore_ms = 20000

[[fault]]
at_s = 120
kind = "xid"           # kinds below
node = "n2"
card = 5
code = 79
"#;

#[test]
fn contract_example_parses() {
    let s = ok(CONTRACT_EXAMPLE);
    let expected = Scenario {
        name: "xid79-midrun".into(),
        duration_s: 600.0,
        seed: 7,
        cluster: ClusterSpec {
            nodes: 8,
            cards_per_node: 8,
            spares: 1,
            card_model: "H100".into(),
            heartbeat_ms: 1000,
            groups: vec![GroupSpec {
                nodes: vec!["n6".into(), "n7".into()],
                card_model: "C500".into(),
                speed: 0.55,
            }],
        },
        job: Some(JobSpec {
            id: "pretrain".into(),
            world_size: 64,
            step_ms: 2000,
            checkpoint_every: 50,
            checkpoint_ms: 5000,
            restore_ms: 20000,
        }),
        faults: vec![Fault {
            at_s: 120.0,
            node: Some("n2".into()),
            card: Some(5),
            kind: FaultKind::Xid { code: 79 },
            line: 25,
        }],
    };
    assert_eq!(s, expected);
    assert_eq!(s.card_model_of("n6"), "C500");
    assert_eq!(s.card_model_of("n7"), "C500");
    assert_eq!(s.card_model_of("n0"), "H100");
    assert_eq!(s.card_model_of("s0"), "H100");
    assert_eq!(s.speed_of("n7"), 0.55);
    assert_eq!(s.speed_of("n1"), 1.0);
    assert_eq!(s.rank_location(0), ("n0".to_string(), 0));
    assert_eq!(s.rank_location(13), ("n1".to_string(), 5));
    assert_eq!(s.rank_location(63), ("n7".to_string(), 7));
}

#[test]
fn defaults_apply() {
    let s = ok(
        "duration_s = 10\n[cluster]\nnodes = 2\n[job]\nid = \"a\"\nworld_size = 3\nstep_ms = 5\n",
    );
    assert_eq!(s.name, "unnamed");
    assert_eq!(s.seed, 0);
    assert_eq!(s.cluster.cards_per_node, 8);
    assert_eq!(s.cluster.spares, 0);
    assert_eq!(s.cluster.card_model, "H100");
    assert_eq!(s.cluster.heartbeat_ms, 1000);
    assert!(s.cluster.groups.is_empty());
    let job = s.job.expect("job");
    assert_eq!(job.checkpoint_every, 50);
    assert_eq!(job.checkpoint_ms, 5000);
    assert_eq!(job.restore_ms, 20000);
    assert!(s.faults.is_empty());

    let s = ok("duration_s = 10\n[cluster]\nnodes = 2\n");
    assert_eq!(s.job, None);
}

#[test]
fn group_defaults_to_cluster_model_and_unit_speed() {
    let s = ok(
        "duration_s = 10\n[cluster]\nnodes = 3\ncard_model = \"B200\"\n\
         [[cluster.group]]\nnodes = [\"n1\"]\n[[cluster.group]]\nnodes = [\"n2\"]\nspeed = 2.5\n",
    );
    assert_eq!(s.card_model_of("n1"), "B200");
    assert_eq!(s.speed_of("n1"), 1.0);
    assert_eq!(s.card_model_of("n2"), "B200");
    assert_eq!(s.speed_of("n2"), 2.5);
    assert_eq!(s.speed_of("unknown"), 1.0);
}

#[test]
fn names() {
    let s = ok(BASE);
    assert_eq!(s.node_names(), vec!["n0", "n1", "n2", "n3"]);
    assert_eq!(s.spare_names(), vec!["s0"]);
    let s = ok(BASE_NO_JOB.replace("spares = 1", "spares = 0").as_str());
    assert!(s.spare_names().is_empty());
}

#[test]
fn every_kind_parses_with_its_parameters() {
    let cases: [(&str, &str, FaultKind); 19] = [
        (
            "xid",
            "node = \"n0\"\ncard = 0\ncode = 48",
            FaultKind::Xid { code: 48 },
        ),
        ("ecc_dbe", "node = \"n0\"\ncard = 1", FaultKind::EccDbe),
        ("gpu_lost", "node = \"n0\"\ncard = 1", FaultKind::GpuLost),
        (
            "thermal",
            "node = \"n0\"\ncard = 1",
            FaultKind::Thermal { for_s: None },
        ),
        (
            "thermal",
            "node = \"n0\"\ncard = 1\nfor_s = 30",
            FaultKind::Thermal { for_s: Some(30.0) },
        ),
        (
            "nvlink",
            "node = \"n1\"\ncard = 7\nfor_s = 0.5",
            FaultKind::Nvlink { for_s: Some(0.5) },
        ),
        (
            "pcie_degraded",
            "node = \"n1\"\ncard = 2",
            FaultKind::PcieDegraded { for_s: None },
        ),
        ("hang", "node = \"n3\"\ncard = 7", FaultKind::Hang),
        (
            "slow",
            "node = \"n3\"\ncard = 7\nfactor = 0.6",
            FaultKind::Slow {
                factor: 0.6,
                for_s: None,
            },
        ),
        (
            "slow",
            "node = \"n3\"\ncard = 7\nfactor = 1\nfor_s = 12",
            FaultKind::Slow {
                factor: 1.0,
                for_s: Some(12.0),
            },
        ),
        (
            "worker_exit",
            "node = \"n2\"\ncard = 0",
            FaultKind::WorkerExit,
        ),
        (
            "probe_hang",
            "node = \"s0\"\ncard = 3\nfor_s = 9",
            FaultKind::ProbeHang { for_s: Some(9.0) },
        ),
        ("node_crash", "node = \"n2\"", FaultKind::NodeCrash),
        ("node_crash", "node = \"s0\"", FaultKind::NodeCrash),
        (
            "partition",
            "node = \"n1\"\nfor_s = 20",
            FaultKind::Partition { for_s: 20.0 },
        ),
        (
            "flap",
            "node = \"n1\"\nfor_s = 40",
            FaultKind::Flap { for_s: 40.0 },
        ),
        (
            "job_slowdown",
            "factor = 0.5\nfor_s = 30",
            FaultKind::JobSlowdown {
                factor: 0.5,
                for_s: 30.0,
            },
        ),
        (
            "job_slowdown",
            "factor = 3\nfor_s = 30",
            FaultKind::JobSlowdown {
                factor: 3.0,
                for_s: 30.0,
            },
        ),
        ("checkpoint_corrupt", "", FaultKind::CheckpointCorrupt),
    ];
    for (name, params, expected) in cases {
        let s = ok(&with_fault(&format!(
            "at_s = 10\nkind = \"{name}\"\n{params}\n"
        )));
        assert_eq!(s.faults.len(), 1);
        let f = &s.faults[0];
        assert_eq!(f.kind, expected, "{name}");
        assert_eq!(f.kind.name(), name);
        assert_eq!(f.line, 15);
        assert_eq!(f.at_s, 10.0);
        match f.kind.scope() {
            FaultScope::Card => assert!(f.node.is_some() && f.card.is_some()),
            FaultScope::Node => assert!(f.node.is_some() && f.card.is_none()),
            FaultScope::Job => assert!(f.node.is_none() && f.card.is_none()),
        }
    }
}

#[test]
fn kind_names_match_the_list() {
    for (spec, name) in SPECS.iter().zip(FAULT_KINDS) {
        assert_eq!(spec.name, name);
    }
    let job_kinds: Vec<&str> = SPECS
        .iter()
        .filter(|s| s.needs_job)
        .map(|s| s.name)
        .collect();
    assert_eq!(
        job_kinds,
        [
            "hang",
            "slow",
            "worker_exit",
            "job_slowdown",
            "checkpoint_corrupt"
        ]
    );
    assert!(FaultKind::Hang.needs_job());
    assert!(!FaultKind::NodeCrash.needs_job());
    assert_eq!(FaultKind::Flap { for_s: 3.0 }.for_s(), Some(3.0));
    assert_eq!(FaultKind::EccDbe.for_s(), None);
}

#[test]
fn inline_fault_tables_and_lines() {
    let text = BASE.replace(
        "seed = 3\n",
        "seed = 3\nfault = [\n  { at_s = 5, kind = \"gpu_lost\", node = \"n0\", card = 1 },\n  \
         { at_s = 6, kind = \"node_crash\", node = \"n1\" },\n]\n",
    );
    let s = ok(&text);
    assert_eq!(s.faults.len(), 2);
    assert_eq!(s.faults[0].line, 5);
    assert_eq!(s.faults[1].line, 6);
}

#[test]
fn faults_sorted_is_stable_by_time() {
    let text = format!(
        "{BASE}\n\
         [[fault]]\nat_s = 50\nkind = \"node_crash\"\nnode = \"n1\"\n\
         [[fault]]\nat_s = 10\nkind = \"node_crash\"\nnode = \"n2\"\n\
         [[fault]]\nat_s = 50\nkind = \"node_crash\"\nnode = \"n0\"\n\
         [[fault]]\nat_s = 0\nkind = \"node_crash\"\nnode = \"n3\"\n"
    );
    let s = ok(&text);
    let order: Vec<_> = s
        .faults_sorted()
        .into_iter()
        .map(|f| f.node.unwrap_or_default())
        .collect();
    assert_eq!(order, ["n3", "n2", "n1", "n0"]);
    // The original order is untouched.
    assert_eq!(s.faults[0].node.as_deref(), Some("n1"));
}

#[test]
fn error_display_names_the_line() {
    let e = err(&with_fault("at_s = 1\nkind = \"meteor\"\n"));
    assert!(
        e.to_string()
            .starts_with("line 17: unknown fault kind `meteor`"),
        "{e}"
    );
    assert!(e.reason.contains(&FAULT_KINDS.join(", ")), "{e}");
}

#[test]
fn serializes_to_json() {
    let s = ok(DEFAULT_SCENARIO);
    let v = serde_json::to_value(&s.faults[0]).expect("json");
    assert_eq!(v["kind"]["kind"], "xid");
    assert_eq!(v["kind"]["code"], 79);
    assert_eq!(v["node"], "n2");
    let v = serde_json::to_value(&s.faults[1].kind).expect("json");
    assert_eq!(v["kind"], "ecc_dbe");
}

// ---- errors, each with its line -------------------------------------------------------

#[test]
fn toml_syntax_error_reports_its_line() {
    assert_err("duration_s = 10\n[cluster]\nnodes = = 3\n", 3, "");
    assert_err(&format!("{BASE}\n[[fault]\n"), 15, "");
    assert_err(
        "duration_s = 10\n\n[cluster]\nnodes = 1\nnodes = 2\n",
        5,
        "duplicate",
    );
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    assert_err(
        &BASE.replace("seed = 3\n", "seed = 3\nspeed = 2\n"),
        4,
        "unknown field `speed`",
    );
    assert_err(
        &BASE.replace("spares = 1\n", "spares = 1\nfoo = 1\n"),
        9,
        "unknown field `foo`",
    );
    assert_err(
        &format!("{BASE}restart_ms = 5\n"),
        14,
        "unknown field `restart_ms`",
    );
    assert_err(
        &BASE.replace(
            "spares = 1\n",
            "spares = 1\n[[cluster.group]]\nnodes = [\"n1\"]\nspeeed = 0.5\n",
        ),
        11,
        "unknown field `speeed`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"gpu_lost\"\nnode = \"n0\"\ncard = 0\nseverity = 3\n"),
        20,
        "unknown field `severity`",
    );
    assert_err(
        &format!("{BASE}\n[metrics]\nx = 1\n"),
        15,
        "unknown field `metrics`",
    );
}

#[test]
fn wrong_types_report_their_line() {
    assert_err(&BASE.replace("nodes = 4", "nodes = \"four\""), 6, "");
    assert_err(&BASE.replace("seed = 3", "seed = -3"), 3, "");
    assert_err(
        &with_fault("at_s = 1\nkind = \"gpu_lost\"\nnode = \"n0\"\ncard = -1\n"),
        19,
        "",
    );
    assert_err(
        &with_fault("at_s = \"soon\"\nkind = \"gpu_lost\"\n"),
        16,
        "",
    );
}

#[test]
fn missing_required_keys() {
    assert_err(&BASE.replace("duration_s = 100\n", ""), 1, "`duration_s`");
    assert_err(BASE.split("[cluster]").next().unwrap(), 1, "[cluster]");
    assert_err(&BASE.replace("nodes = 4\n", ""), 5, "`nodes`");
    assert_err(&BASE.replace("id = \"j\"\n", ""), 10, "`id`");
    assert_err(&BASE.replace("world_size = 32\n", ""), 10, "`world_size`");
    assert_err(&BASE.replace("step_ms = 1000\n", ""), 10, "`step_ms`");
    assert_err(&with_fault("at_s = 1\nnode = \"n0\"\n"), 15, "`kind`");
    assert_err(
        &with_fault("kind = \"node_crash\"\nnode = \"n0\"\n"),
        15,
        "`at_s`",
    );
    assert_err(
        &BASE.replace(
            "spares = 1\n",
            "spares = 1\n[[cluster.group]]\nspeed = 0.5\n",
        ),
        9,
        "`nodes`",
    );
}

#[test]
fn unknown_kind_lists_the_valid_ones() {
    assert_err(
        &with_fault("at_s = 1\nkind = \"XID\"\nnode = \"n0\"\ncard = 0\n"),
        17,
        "valid kinds: xid, ecc_dbe, gpu_lost, thermal, nvlink, pcie_degraded, hang, slow, \
         worker_exit, probe_hang, node_crash, partition, flap, job_slowdown, checkpoint_corrupt",
    );
}

#[test]
fn required_parameters() {
    assert_err(
        &with_fault("at_s = 1\nkind = \"xid\"\nnode = \"n0\"\ncard = 0\n"),
        15,
        "requires `code`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"slow\"\nnode = \"n0\"\ncard = 0\n"),
        15,
        "requires `factor`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"job_slowdown\"\nfor_s = 3\n"),
        15,
        "requires `factor`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"job_slowdown\"\nfactor = 0.5\n"),
        15,
        "requires `for_s`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"partition\"\nnode = \"n0\"\n"),
        15,
        "requires `for_s`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"flap\"\nnode = \"n0\"\n"),
        15,
        "requires `for_s`",
    );
}

#[test]
fn parameters_a_kind_does_not_take() {
    assert_err(
        &with_fault("at_s = 1\nkind = \"ecc_dbe\"\nnode = \"n0\"\ncard = 0\ncode = 48\n"),
        20,
        "does not take `code`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"xid\"\nnode = \"n0\"\ncard = 0\ncode = 79\nfactor = 0.5\n"),
        21,
        "does not take `factor`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"node_crash\"\nnode = \"n0\"\nfor_s = 5\n"),
        19,
        "does not take `for_s`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"hang\"\nfor_s = 5\nnode = \"n0\"\ncard = 0\n"),
        18,
        "does not take `for_s`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"partition\"\nnode = \"n0\"\nfor_s = 5\ncode = 1\n"),
        20,
        "does not take `code`",
    );
}

#[test]
fn factor_bounds() {
    let slow = |f: &str| {
        with_fault(&format!(
            "at_s = 1\nkind = \"slow\"\nnode = \"n0\"\ncard = 0\nfactor = {f}\n"
        ))
    };
    for bad in ["0", "0.0", "-0.5", "1.5", "nan", "inf"] {
        assert_err(&slow(bad), 20, "`factor`");
    }
    for good in ["1", "1.0", "0.01", "0.6"] {
        ok(&slow(good));
    }
    let js = |f: &str| {
        with_fault(&format!(
            "at_s = 1\nkind = \"job_slowdown\"\nfactor = {f}\nfor_s = 10\n"
        ))
    };
    for bad in ["0", "-1", "nan", "inf"] {
        assert_err(&js(bad), 18, "`factor`");
    }
    for good in ["0.5", "1", "2.5"] {
        ok(&js(good));
    }
}

#[test]
fn for_s_must_be_positive() {
    for bad in ["0", "-1", "-0.5", "nan", "inf"] {
        assert_err(
            &with_fault(&format!(
                "at_s = 1\nkind = \"thermal\"\nnode = \"n0\"\ncard = 0\nfor_s = {bad}\n"
            )),
            20,
            "`for_s`",
        );
        assert_err(
            &with_fault(&format!(
                "at_s = 1\nkind = \"partition\"\nnode = \"n0\"\nfor_s = {bad}\n"
            )),
            19,
            "`for_s`",
        );
    }
}

#[test]
fn at_s_within_the_scenario() {
    let f = |at: &str| {
        with_fault(&format!(
            "at_s = {at}\nkind = \"node_crash\"\nnode = \"n0\"\n"
        ))
    };
    for bad in ["-1", "-0.001", "100.5", "101", "inf", "nan"] {
        assert_err(&f(bad), 16, "`at_s`");
    }
    for good in ["0", "0.0", "50", "99.9", "100"] {
        ok(&f(good));
    }
}

#[test]
fn nodes_must_exist() {
    let f = |node: &str| {
        with_fault(&format!(
            "at_s = 1\nkind = \"node_crash\"\nnode = \"{node}\"\n"
        ))
    };
    for bad in ["n4", "n10", "s1", "n01", "n", "node0", "N0", "n-1", ""] {
        assert_err(&f(bad), 18, "unknown node");
    }
    for good in ["n0", "n3", "s0"] {
        ok(&f(good));
    }
    let e = err(&f("n9"));
    assert!(
        e.reason.contains("n0 .. n3") && e.reason.contains("s0 .. s0"),
        "{e}"
    );

    // Groups: each listed node is checked on its own line.
    let g = |nodes: &str| {
        BASE.replace(
            "spares = 1\n",
            &format!("spares = 1\n[[cluster.group]]\nnodes = [\n  \"n1\",\n  {nodes},\n]\n"),
        )
    };
    assert_err(&g("\"n7\""), 12, "unknown node `n7`");
    assert_err(&g("\"n1\""), 12, "already in the group");
    ok(&g("\"s0\""));
    assert_err(
        &BASE.replace(
            "spares = 1\n",
            "spares = 1\n[[cluster.group]]\nnodes = []\n",
        ),
        10,
        "at least one node",
    );
    // The same node in two groups.
    assert_err(
        &BASE.replace(
            "spares = 1\n",
            "spares = 1\n[[cluster.group]]\nnodes = [\"n1\"]\n[[cluster.group]]\nnodes = [\"n2\", \"n1\"]\n",
        ),
        12,
        "already in the group at line 9",
    );
}

#[test]
fn cards_and_scopes() {
    // Card out of range.
    assert_err(
        &with_fault("at_s = 1\nkind = \"gpu_lost\"\nnode = \"n0\"\ncard = 8\n"),
        19,
        "`card` 8 is out of range",
    );
    ok(&with_fault(
        "at_s = 1\nkind = \"gpu_lost\"\nnode = \"n0\"\ncard = 7\n",
    ));
    // Card-level kinds need node and card.
    for (kind, params) in [
        ("xid", "code = 1\n"),
        ("ecc_dbe", ""),
        ("gpu_lost", ""),
        ("thermal", ""),
        ("nvlink", ""),
        ("pcie_degraded", ""),
        ("hang", ""),
        ("slow", "factor = 0.5\n"),
        ("worker_exit", ""),
        ("probe_hang", ""),
    ] {
        let body = format!("at_s = 1\nkind = \"{kind}\"\n{params}");
        assert_err(
            &with_fault(&format!("{body}node = \"n0\"\n")),
            15,
            "requires `node` and `card`",
        );
        assert_err(
            &with_fault(&format!("{body}card = 0\n")),
            15,
            "requires `node` and `card`",
        );
        ok(&with_fault(&format!("{body}node = \"n0\"\ncard = 0\n")));
    }
    // Node-level kinds need a node and take no card.
    assert_err(
        &with_fault("at_s = 1\nkind = \"node_crash\"\n"),
        15,
        "requires `node`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"node_crash\"\nnode = \"n0\"\ncard = 1\n"),
        19,
        "takes no `card`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"flap\"\nfor_s = 3\nnode = \"n0\"\ncard = 1\n"),
        20,
        "takes no `card`",
    );
    // Job-wide kinds take neither.
    assert_err(
        &with_fault("at_s = 1\nkind = \"checkpoint_corrupt\"\nnode = \"n0\"\n"),
        18,
        "takes no `node`",
    );
    assert_err(
        &with_fault("at_s = 1\nkind = \"job_slowdown\"\nfactor = 0.5\nfor_s = 2\ncard = 1\n"),
        20,
        "takes no `card`",
    );
}

#[test]
fn job_kinds_need_a_job() {
    let f = |body: &str| format!("{BASE_NO_JOB}\n[[fault]]\nat_s = 1\n{body}");
    for body in [
        "kind = \"hang\"\nnode = \"n0\"\ncard = 0\n",
        "kind = \"slow\"\nnode = \"n0\"\ncard = 0\nfactor = 0.5\n",
        "kind = \"worker_exit\"\nnode = \"n0\"\ncard = 0\n",
        "kind = \"job_slowdown\"\nfactor = 0.5\nfor_s = 3\n",
        "kind = \"checkpoint_corrupt\"\n",
    ] {
        assert_err(&f(body), 12, "no [job]");
    }
    // Hardware kinds do not.
    ok(&f("kind = \"gpu_lost\"\nnode = \"n0\"\ncard = 0\n"));
    ok(&f("kind = \"node_crash\"\nnode = \"s0\"\n"));
}

#[test]
fn zero_and_out_of_range_sizes() {
    assert_err(
        &BASE.replace("world_size = 32", "world_size = 33"),
        12,
        "exceeds",
    );
    ok(&BASE.replace("world_size = 32", "world_size = 1"));
    assert_err(
        &BASE.replace("world_size = 32", "world_size = 0"),
        12,
        "`world_size`",
    );
    assert_err(&BASE.replace("nodes = 4", "nodes = 0"), 6, "`nodes`");
    assert_err(
        &BASE.replace("cards_per_node = 8", "cards_per_node = 0"),
        7,
        "`cards_per_node`",
    );
    assert_err(
        &BASE.replace("spares = 1\n", "spares = 1\nheartbeat_ms = 0\n"),
        9,
        "`heartbeat_ms`",
    );
    assert_err(
        &BASE.replace("step_ms = 1000", "step_ms = 0"),
        13,
        "`step_ms`",
    );
    assert_err(
        &format!("{BASE}checkpoint_every = 0\n"),
        14,
        "`checkpoint_every`",
    );
    for bad in ["0", "-1", "nan", "inf"] {
        assert_err(
            &BASE.replace("duration_s = 100", &format!("duration_s = {bad}")),
            2,
            "`duration_s`",
        );
        assert_err(
            &BASE.replace(
                "spares = 1\n",
                &format!("spares = 1\n[[cluster.group]]\nnodes = [\"n1\"]\nspeed = {bad}\n"),
            ),
            11,
            "`speed`",
        );
    }
    assert_err(&BASE.replace("name = \"t\"", "name = \"\""), 1, "`name`");
    assert_err(&BASE.replace("id = \"j\"", "id = \" \""), 11, "`id`");
}

// ---- property: generated valid scenarios round-trip ----------------------------------

#[derive(Debug, Clone)]
struct GenFault {
    kind: usize,
    at_milli: u32,
    node: usize,
    card: u32,
    code: u32,
    factor_milli: u32,
    for_s: Option<u32>,
}

/// world_size seed, step_ms, checkpoint_every, checkpoint_ms, restore_ms.
type GenJob = (u32, u32, Option<u64>, Option<u32>, Option<u32>);

#[derive(Debug, Clone)]
struct Gen {
    name: String,
    duration_q: u32,
    seed: Option<u64>,
    nodes: u32,
    cards: Option<u32>,
    spares: Option<u32>,
    model: Option<String>,
    heartbeat: Option<u32>,
    group_of: Vec<u8>,
    speeds: [u32; 2],
    job: Option<GenJob>,
    faults: Vec<GenFault>,
}

fn gen_fault() -> impl Strategy<Value = GenFault> {
    (
        0..FAULT_KINDS.len(),
        0..=1000u32,
        0..64usize,
        0..64u32,
        any::<u32>(),
        1..=1000u32,
        proptest::option::of(1..100_000u32),
    )
        .prop_map(
            |(kind, at_milli, node, card, code, factor_milli, for_s)| GenFault {
                kind,
                at_milli,
                node,
                card,
                code,
                factor_milli,
                for_s,
            },
        )
}

fn arb_scenario() -> impl Strategy<Value = Gen> {
    (
        "[a-z][a-z0-9_-]{0,12}",
        1..=40_000u32,
        proptest::option::of(0..=i64::MAX as u64),
        1..=12u32,
        proptest::option::of(1..=16u32),
        proptest::option::of(0..=3u32),
        proptest::option::of("[A-Z][A-Z0-9]{1,5}"),
        proptest::option::of(1..=10_000u32),
        proptest::collection::vec(0..3u8, 12),
        [1..=4000u32, 1..=4000u32],
        proptest::option::of((
            any::<u32>(),
            1..=100_000u32,
            proptest::option::of(1..=10_000u64),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
        )),
        proptest::collection::vec(gen_fault(), 0..12),
    )
        .prop_map(
            |(
                name,
                duration_q,
                seed,
                nodes,
                cards,
                spares,
                model,
                heartbeat,
                group_of,
                speeds,
                job,
                faults,
            )| {
                Gen {
                    name,
                    duration_q,
                    seed,
                    nodes,
                    cards,
                    spares,
                    model,
                    heartbeat,
                    group_of,
                    speeds,
                    job,
                    faults,
                }
            },
        )
}

/// Build the TOML text and the scenario it must parse to.
fn render(g: &Gen) -> (String, Scenario) {
    let mut out: Vec<String> = Vec::new();
    let duration_s = f64::from(g.duration_q) / 4.0;
    out.push(format!("name = \"{}\"", g.name));
    out.push(format!("duration_s = {duration_s}"));
    if let Some(seed) = g.seed {
        out.push(format!("seed = {seed}"));
    }
    out.push(String::new());
    out.push("[cluster]".into());
    out.push(format!("nodes = {}", g.nodes));
    if let Some(c) = g.cards {
        out.push(format!("cards_per_node = {c}"));
    }
    if let Some(s) = g.spares {
        out.push(format!("spares = {s}"));
    }
    if let Some(m) = &g.model {
        out.push(format!("card_model = \"{m}\""));
    }
    if let Some(h) = g.heartbeat {
        out.push(format!("heartbeat_ms = {h}"));
    }
    let cards_per_node = g.cards.unwrap_or(8);
    let spares = g.spares.unwrap_or(0);
    let card_model = g.model.clone().unwrap_or_else(|| "H100".into());
    let mut groups = Vec::new();
    for gi in 1..=2u8 {
        let members: Vec<String> = (0..g.nodes)
            .filter(|&n| g.group_of[n as usize] == gi)
            .map(|n| format!("n{n}"))
            .collect();
        if members.is_empty() {
            continue;
        }
        let speed = f64::from(g.speeds[usize::from(gi - 1)]) / 1000.0;
        let model = format!("G{gi}");
        out.push(String::new());
        out.push("[[cluster.group]]".into());
        let quoted: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
        out.push(format!("nodes = [{}]", quoted.join(", ")));
        out.push(format!("card_model = \"{model}\""));
        out.push(format!("speed = {speed:?}"));
        groups.push(GroupSpec {
            nodes: members,
            card_model: model,
            speed,
        });
    }
    let capacity = g.nodes * cards_per_node;
    let job = g.job.map(|(ws, step_ms, every, ckpt_ms, restore_ms)| {
        out.push(String::new());
        out.push("[job]".into());
        out.push("id = \"job-1\"".into());
        let world_size = ws % capacity + 1;
        out.push(format!("world_size = {world_size}"));
        out.push(format!("step_ms = {step_ms}"));
        if let Some(e) = every {
            out.push(format!("checkpoint_every = {e}"));
        }
        if let Some(c) = ckpt_ms {
            out.push(format!("checkpoint_ms = {c}"));
        }
        if let Some(r) = restore_ms {
            out.push(format!("restore_ms = {r}"));
        }
        JobSpec {
            id: "job-1".into(),
            world_size,
            step_ms,
            checkpoint_every: every.unwrap_or(50),
            checkpoint_ms: ckpt_ms.unwrap_or(5000),
            restore_ms: restore_ms.unwrap_or(20000),
        }
    });
    let all_nodes: Vec<String> = (0..g.nodes)
        .map(|i| format!("n{i}"))
        .chain((0..spares).map(|i| format!("s{i}")))
        .collect();
    let mut faults = Vec::new();
    for f in &g.faults {
        let spec = &SPECS[f.kind];
        if spec.needs_job && job.is_none() {
            continue;
        }
        out.push(String::new());
        out.push("[[fault]]".into());
        let line = out.len();
        let at_s = duration_s * f64::from(f.at_milli) / 1000.0;
        out.push(format!("at_s = {at_s}"));
        out.push(format!("kind = \"{}\"", spec.name));
        let node =
            (spec.scope != FaultScope::Job).then(|| all_nodes[f.node % all_nodes.len()].clone());
        let card = (spec.scope == FaultScope::Card).then_some(f.card % cards_per_node);
        if let Some(n) = &node {
            out.push(format!("node = \"{n}\""));
        }
        if let Some(c) = card {
            out.push(format!("card = {c}"));
        }
        let code = (spec.code != Param::No).then_some(f.code);
        let factor = (spec.factor != Param::No).then(|| match spec.factor_rule {
            FactorRule::Speed => f64::from(f.factor_milli) / 1000.0,
            FactorRule::Positive => f64::from(f.factor_milli) / 100.0,
        });
        let for_s = match spec.for_s {
            Param::No => None,
            Param::Optional => f.for_s.map(|x| f64::from(x) / 10.0),
            Param::Required => Some(f64::from(f.for_s.unwrap_or(7)) / 10.0),
        };
        if let Some(c) = code {
            out.push(format!("code = {c}"));
        }
        if let Some(x) = factor {
            out.push(format!("factor = {x:?}"));
        }
        if let Some(x) = for_s {
            out.push(format!("for_s = {x:?}"));
        }
        let kind = build_kind(spec.ty, code, factor, for_s).expect("generated kind");
        faults.push(Fault {
            at_s,
            node,
            card,
            kind,
            line,
        });
    }
    let text = out.join("\n") + "\n";
    let scenario = Scenario {
        name: g.name.clone(),
        duration_s,
        seed: g.seed.unwrap_or(0),
        cluster: ClusterSpec {
            nodes: g.nodes,
            cards_per_node,
            spares,
            card_model,
            heartbeat_ms: g.heartbeat.unwrap_or(1000),
            groups,
        },
        job,
        faults,
    };
    (text, scenario)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_scenarios_round_trip(g in arb_scenario()) {
        let (text, expected) = render(&g);
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n---\n{text}")))?;
        prop_assert_eq!(&parsed, &expected, "\n---\n{}", text);
        for rank in 0..parsed.job.as_ref().map_or(0, |j| j.world_size) {
            let (node, card) = parsed.rank_location(rank);
            prop_assert!(parsed.node_names().contains(&node));
            prop_assert!(card < parsed.cluster.cards_per_node);
        }
        let sorted = parsed.faults_sorted();
        prop_assert!(sorted.windows(2).all(|w| w[0].at_s <= w[1].at_s));
    }

    #[test]
    fn a_fault_after_the_end_is_rejected_on_its_line(g in arb_scenario(), extra in 1..1000u32) {
        let (text, expected) = render(&g);
        let line = text.lines().count() + 3;
        let at = expected.duration_s + f64::from(extra) / 100.0;
        let text = format!("{text}\n[[fault]]\nat_s = {at}\nkind = \"node_crash\"\nnode = \"n0\"\n");
        let e = parse(&text).err();
        prop_assert_eq!(e.map(|e| e.line), Some(line), "\n---\n{}", text);
    }
}
