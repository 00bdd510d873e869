//! Capped, jittered exponential backoff for reconnecting (the gRPC
//! connection-backoff recipe: initial delay, multiplier, +-jitter, cap).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Backoff settings, validated by [`Backoff::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub multiplier: f64,
    /// Relative jitter, 0.0 ..= 1.0 (0.2 means +-20%).
    pub jitter: f64,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(200),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(10),
        }
    }
}

/// Yields successive delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    current: Duration,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig) -> Result<Self, String> {
        if cfg.initial.is_zero() || cfg.initial > cfg.max {
            return Err("backoff: initial delay must be > 0 and <= max".to_owned());
        }
        if !(cfg.multiplier >= 1.0 && cfg.multiplier.is_finite()) {
            return Err("backoff: multiplier must be >= 1".to_owned());
        }
        if !(0.0..=1.0).contains(&cfg.jitter) {
            return Err("backoff: jitter must be within 0..=1".to_owned());
        }
        Ok(Backoff {
            cfg,
            current: cfg.initial,
        })
    }

    /// The next delay; grows until the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = self.cfg.max.min(base.mul_f64(self.cfg.multiplier));
        if self.cfg.jitter == 0.0 {
            return base;
        }
        let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64; // 0..1
        let factor = 1.0 + self.cfg.jitter * (2.0 * unit - 1.0);
        self.cfg.max.min(base.mul_f64(factor))
    }

    /// Back to the initial delay after a successful connection.
    pub fn reset(&mut self) {
        self.current = self.cfg.initial;
    }
}

/// A random number from the standard library's randomly keyed hasher.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_without_jitter() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.0,
            max: Duration::from_millis(500),
        })
        .expect("valid");
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut b = Backoff::new(BackoffConfig::default()).expect("valid");
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(10));
            assert!(d >= Duration::from_millis(160));
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = BackoffConfig {
            jitter: 2.0,
            ..Default::default()
        };
        assert!(Backoff::new(bad).is_err());
        let bad = BackoffConfig {
            initial: Duration::ZERO,
            ..Default::default()
        };
        assert!(Backoff::new(bad).is_err());
    }
}
