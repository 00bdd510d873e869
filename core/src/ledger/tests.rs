use super::*;
use proptest::prelude::*;

/// A report as the JSON it serializes to, checking that direct
/// serialization writes the same bytes as the sorted JSON object form.
fn json(r: Report) -> Vec<serde_json::Value> {
    let direct = serde_json::to_string(&r).expect("serialize");
    let value = serde_json::to_value(&r).expect("to value");
    assert_eq!(direct, value.to_string());
    match value {
        serde_json::Value::Array(v) => v,
        other => panic!("not a list: {other}"),
    }
}

fn job() -> JobId {
    JobId::new("pretrain").expect("valid")
}

fn culprit() -> Culprit {
    Culprit {
        incident: Some(IncidentId(1)),
        node: Some(NodeId::new("n2").expect("valid")),
        card: Some(5),
        model: Some("H100".into()),
    }
}

fn get(t: &Totals, c: Category) -> i64 {
    t.by_category.get(&c).copied().unwrap_or(0)
}

/// 8 cards, 1 s steps, a checkpoint after step 10, an XID at 15.5 s,
/// detected at 16 s, 2 s waiting for a spare, restored from step 10 at
/// 20 s, resumed at 23 s, ended at 30 s.
#[test]
fn a_recovery_is_accounted_by_cause() {
    let mut l = Ledger::default();
    let j = job();
    for s in 1..=10 {
        l.step(&j, 8, 0, s, s as i64 * 1000);
    }
    l.checkpoint(&j, 12_000);
    l.step(&j, 8, 0, 11, 13_000); // 2 s checkpoint pause
    for s in 12..=15 {
        l.step(&j, 8, 0, s, 13_000 + (s as i64 - 11) * 1000);
    }
    l.fault(&j, 17_500, 18_000, culprit());
    l.waiting(&j, 18_500, true);
    l.waiting(&j, 20_500, false);
    l.restored(&j, Some(10));
    l.step(&j, 8, 0, 11, 23_000);
    for s in 12..=18 {
        l.step(&j, 8, 0, s, 23_000 + (s as i64 - 11) * 1000);
    }
    l.ended(&j, 30_000);
    let t = &l.totals(40_000)[&j];
    assert_eq!(t.allocated(), 30_000 * 8, "from start to end");
    assert_eq!(get(t, Category::Checkpoint), 2000 * 8);
    assert_eq!(get(t, Category::Detection), 500 * 8);
    assert_eq!(get(t, Category::WaitingForCapacity), 2000 * 8);
    // 17 s..17.5 s in flight, and the effective time of steps 11..15
    // (1 s of step 11, whose other 2 s were the checkpoint, and 4 s).
    assert_eq!(get(t, Category::RolledBack), (500 + 5000) * 8);
    // 18 s..18.5 s and 20.5 s..22 s (the resumed step took the last 1 s).
    assert_eq!(get(t, Category::Recovery), (500 + 1500) * 8);
    assert_eq!(t.effective() + t.lost(), t.allocated());
    assert_eq!(t.effective(), (10_000 + 1000 + 7000) * 8);
    // The losses link to the incident and card.
    let rows = l.rows(40_000, None, None);
    assert!(
        rows.iter()
            .filter(|r| matches!(r.category, Category::Detection | Category::Recovery))
            .all(|r| r.culprit.card == Some(5) && r.culprit.incident == Some(IncidentId(1)))
    );
}

#[test]
fn straggler_excess_is_charged_to_the_slow_card() {
    let mut l = Ledger::default();
    let j = job();
    for s in 1..=10 {
        l.step(&j, 4, 0, s, s as i64 * 1000);
    }
    l.straggler(&j, Some(culprit()), 0);
    for s in 11..=15 {
        l.step(&j, 4, 0, s, 10_000 + (s as i64 - 10) * 1300);
    }
    l.straggler(&j, None, 0);
    let t = &l.totals(16_500)[&j];
    assert_eq!(get(t, Category::Straggler), 5 * 300 * 4);
    assert_eq!(t.allocated(), 16_500 * 4);
    assert_eq!(t.effective() + t.lost(), t.allocated());
}

#[test]
fn time_ranges_select_minutes_and_restore_round_trips() {
    let mut l = Ledger::default();
    let j = job();
    for s in 1..=180 {
        l.step(&j, 2, 0, s, s as i64 * 1000);
    }
    let (rows, cursors) = l.take_dirty();
    let minute2: i64 = l
        .rows(180_000, Some(60_000), Some(120_000))
        .iter()
        .map(|r| r.card_ms)
        .sum();
    assert_eq!(minute2, 60_000 * 2);
    let mut back = Ledger::default();
    back.restore(rows, cursors);
    assert_eq!(back.totals(200_000), l.totals(200_000));
    // A restored ledger goes on from its cursor.
    back.step(&j, 2, 0, 181, 181_000);
    assert_eq!(back.totals(181_000)[&j].allocated(), 181_000 * 2);
}

proptest! {
    /// Whatever happens, in whatever order, the identity holds exactly
    /// and the total is the job's cards over its life.
    #[test]
    fn the_identity_always_holds(ops in proptest::collection::vec((0u8..7, 1i64..5000), 1..120)) {
        let mut l = Ledger::default();
        let j = job();
        let mut now = 0;
        let mut step = 0;
        l.step(&j, 8, 0, 0, 0);
        for (op, dt) in ops {
            now += dt;
            match op {
                0 | 1 => { step += 1; l.step(&j, 8, 0, step, now); }
                2 => l.checkpoint(&j, now),
                3 => l.fault(&j, now - dt / 2, now, culprit()),
                4 => l.waiting(&j, now, dt % 2 == 0),
                5 => { l.restored(&j, Some(step / 2)); step /= 2; }
                _ => l.straggler(&j, (dt % 2 == 0).then(culprit), (dt % 8) as usize),
            }
        }
        let t = &l.totals(now)[&j];
        prop_assert_eq!(t.effective() + t.lost(), t.allocated());
        prop_assert_eq!(t.allocated(), now * 8);
        prop_assert!(t.by_category.values().all(|v| *v >= 0), "{:?}", t);
    }
}

#[test]
fn reports_group_by_job_culprit_and_cause() {
    let mut l = Ledger::default();
    let j = job();
    for s in 1..=10 {
        l.step(&j, 8, 0, s, s as i64 * 1000);
    }
    l.fault(&j, 10_500, 11_000, culprit());
    l.restored(&j, Some(5));
    l.step(&j, 8, 0, 6, 14_000);
    let rows = l.rows(14_000, None, None);
    let by_job = json(report(&rows, GroupBy::Job, None));
    assert_eq!(by_job.len(), 1);
    let e = &by_job[0];
    let lost: i64 = e["lost_card_ms"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_i64()).sum());
    assert_eq!(e["allocated_card_ms"].as_i64(), Some(14_000 * 8));
    assert_eq!(
        e["effective_card_ms"].as_i64().map(|x| x + lost),
        Some(14_000 * 8)
    );
    assert!(
        (e["allocated_card_hours"].as_f64().unwrap_or(0.0) - 14.0 * 8.0 / 3600.0).abs() < 1e-12
    );
    let by_card = json(report(&rows, GroupBy::Card, None));
    assert_eq!(by_card[0]["card"], "n2/5");
    assert_eq!(by_card[0]["incidents"][0], "inc-1");
    let by_cause = json(report(&rows, GroupBy::Cause, None));
    assert!(by_cause.iter().any(|c| c["cause"] == "rolled_back"));
    assert!(
        report(
            &rows,
            GroupBy::Job,
            Some(&JobId::new("other").expect("valid"))
        )
        .is_empty()
    );
    for by in [GroupBy::Node, GroupBy::Model] {
        assert!(!json(report(&rows, by, None)).is_empty());
    }
    assert!("rack".parse::<GroupBy>().is_err());
}

#[test]
fn advice_follows_young_daly() {
    let mut l = Ledger::default();
    let j = job();
    // 1 s steps, a 10 s checkpoint every 100 steps, a fault every 1000 s
    // with a 60 s recovery.
    let mut t = 0;
    let mut step = 0;
    for cycle in 0..4 {
        for _ in 0..10 {
            for _ in 0..100 {
                step += 1;
                t += 1000;
                l.step(&j, 8, 0, step, t);
            }
            t += 10_000;
            l.checkpoint(&j, t);
        }
        if cycle < 3 {
            l.fault(&j, t, t, culprit());
            t += 60_000;
            l.restored(&j, Some(step));
        }
    }
    let a = &l.advise(t)[0];
    assert!((a.checkpoint_cost_s - 10.0).abs() < 1.5, "{a:?}");
    assert!(a.optimal_interval_s > a.checkpoint_cost_s);
    // sqrt(2 * 10 * (mtbf + 60)) - 10 with mtbf about 1000 s.
    let expect =
        (2.0 * a.checkpoint_cost_s * (a.mtbf_s + a.restart_cost_s)).sqrt() - a.checkpoint_cost_s;
    assert!((a.optimal_interval_s - expect).abs() < 1e-9);
    assert!(a.expected_gain.is_some_and(|g| g >= 0.0), "{a:?}");
}
