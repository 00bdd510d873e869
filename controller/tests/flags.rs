//! The binary answers `--help` and refuses a bad flag with a one-line reason.
//! (Also makes `cargo test --workspace` build the binary, which the
//! integration tests in tests/ run.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vigil-controller");

#[test]
fn help_and_bad_flags() {
    let help = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
    let args: Vec<&str> = "--store=mysql://x".split(' ').collect();
    let bad = Command::new(BIN)
        .args(&args)
        .output()
        .expect("run with a bad flag");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!err.trim().is_empty(), "a reason is printed");
}
