//! Host metrics from `sysinfo`.

use sysinfo::System;
use vigil_core::model::HostMetrics;

/// Samples whole-host CPU and memory.
pub struct HostProbe {
    sys: System,
}

impl std::fmt::Debug for HostProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostProbe")
    }
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl HostProbe {
    pub fn new() -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        HostProbe { sys }
    }

    pub fn sample(&mut self) -> HostMetrics {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        HostMetrics {
            cpu_percent: self.sys.global_cpu_usage(),
            memory_used_bytes: self.sys.used_memory(),
            memory_total_bytes: self.sys.total_memory(),
            load_1m: System::load_average().one as f32,
            uptime_s: System::uptime(),
        }
    }
}
