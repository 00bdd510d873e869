//! Vigil's pure parsers for what only the agent reads: `nvidia-smi` CSV,
//! kernel log lines and exec probe JSON (`probe`), training log lines
//! (`logtail`), progress bodies (`progress`) and checkpoint layouts
//! (`checkpoint`).
//!
//! Nothing here runs a command, opens a file or reads a clock: the agent's
//! shells do that and hand the text over, and what comes out is
//! `vigil_core` types.

pub mod checkpoint;
pub mod logtail;
pub mod probe;
pub mod progress;
