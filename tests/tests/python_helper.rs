//! Runs the Python progress helper's own unit tests
//! (`integrations/python/test_vigil.py`) with the system `python3`. Skipped
//! with a printed message when `python3` is missing, unless `CI` is set.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn python_helper_unit_tests_pass() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../integrations/python");
    let has_python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_python {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is required when CI is set"
        );
        println!("SKIPPED: python3 is not installed");
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_vigil"])
        .current_dir(&dir)
        // The helper must not need anything outside the standard library.
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VIGIL_PROGRESS_URL")
        .env_remove("VIGIL_JOB")
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python helper tests failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // unittest reports on stderr; make sure tests actually ran.
    assert!(stderr.contains("OK"), "{stderr}");
    assert!(!stderr.contains("Ran 0 tests"), "{stderr}");
}
