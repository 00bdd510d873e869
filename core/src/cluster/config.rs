//! Settings of the decision logic.

use super::*;

/// Settings of the decision logic.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub liveness: LivenessConfig,
    pub rules: RuleTable,
    /// After a controller restart, how long restored nodes may take to
    /// reconnect before silence counts against them (agents back off up to
    /// 10 s between attempts).
    pub restart_grace_ms: Millis,
    pub workload: WorkloadConfig,
    pub health: HealthConfig,
    pub breaker: BreakerConfig,
    /// Shadow mode: detect, localize and record what recovery would do,
    /// without stopping, restarting or asking any back-end to act.
    pub shadow: bool,
}

/// Card health hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HealthConfig {
    /// A suspect card with no new evidence for this long is healthy again.
    pub quiet_ms: Millis,
    /// Consecutive heartbeats with thermal or power-brake throttling that
    /// make throttling "sustained".
    pub thermal_heartbeats: u32,
    /// Losses of one node within `flap_window_ms` that make it flapping.
    pub flap_losses: u32,
    pub flap_window_ms: Millis,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            quiet_ms: 300_000,
            thermal_heartbeats: 10,
            flap_losses: 3,
            flap_window_ms: 600_000,
        }
    }
}

/// The automatic-quarantine circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BreakerConfig {
    /// Largest share of the cluster's cards quarantined automatically within
    /// the window (at least one node's worth).
    pub share: f64,
    pub window_ms: Millis,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            share: 0.10,
            window_ms: 600_000,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            liveness: LivenessConfig::default(),
            rules: RuleTable::default(),
            restart_grace_ms: 15_000,
            workload: WorkloadConfig::default(),
            health: HealthConfig::default(),
            breaker: BreakerConfig::default(),
            shadow: false,
        }
    }
}
