//! Registering and filling metric families.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Bucket bounds (seconds) of the phase-duration histograms: from a
/// sub-second detection to an hour of waiting for capacity.
const PHASE_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

pub(super) type Labels = Vec<(&'static str, String)>;
pub(super) type GaugeF = Family<Labels, Gauge<f64, AtomicU64>>;
pub(super) type CounterF = Family<Labels, Counter<f64, AtomicU64>>;
pub(super) type HistogramF = Family<Labels, Histogram>;

fn histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

/// Registers and returns a gauge family.
pub(super) fn gauge(reg: &mut Registry, name: &str, help: &str) -> GaugeF {
    let f = GaugeF::default();
    reg.register(name, help, f.clone());
    f
}

/// Registers and returns a counter family; the encoder adds `_total`.
pub(super) fn counter(reg: &mut Registry, name: &str, help: &str) -> CounterF {
    let f = CounterF::default();
    reg.register(name, help, f.clone());
    f
}

/// Registers and returns a family of phase-duration histograms.
pub(super) fn histograms(reg: &mut Registry, name: &str, help: &str) -> HistogramF {
    let f = HistogramF::new_with_constructor(histogram as fn() -> Histogram);
    reg.register(name, help, f.clone());
    f
}

pub(super) fn set(f: &GaugeF, labels: Labels, v: f64) {
    f.get_or_create(&labels).set(v);
}

pub(super) fn add(f: &CounterF, labels: Labels, v: f64) {
    if v.is_finite() && v > 0.0 {
        f.get_or_create(&labels).inc_by(v);
    } else {
        // Make the series exist at zero.
        let _series = f.get_or_create(&labels);
    }
}

pub(super) fn b(x: bool) -> f64 {
    if x { 1.0 } else { 0.0 }
}
