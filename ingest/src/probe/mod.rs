//! Pure parsers for what card probes read: `nvidia-smi` CSV, kernel log
//! lines (XIDs, SXIDs, fallen-off-the-bus) and the JSON document that vendor
//! probe wrappers print for `--cards exec:CMD`.
//!
//! Nothing here runs a command or opens a file; the agent's probe shells do
//! that and hand the text over. See `docs/probes.md`.

pub mod exec;
pub mod kmsg;
pub mod smi;

pub use kmsg::{KernelEvent, normalize_bus_id};

/// Whether a reading is one of the spellings tools use for "no value":
/// empty, `N/A`, `[N/A]`, `[Not Supported]`, `[Unknown Error]`, `[GPU requires reset]`.
pub(crate) fn is_unavailable(v: &str) -> bool {
    let v = v.trim();
    v.is_empty()
        || v.eq_ignore_ascii_case("n/a")
        || v.eq_ignore_ascii_case("not supported")
        || (v.starts_with('[') && v.ends_with(']'))
}
