//! `tests/kind/dry-run.sh`: `tests/kind/run.sh` (make e2e-kind) against stub docker, kind and
//! kubectl, so that the commands it would send to a real cluster are checked on every CI run.

use std::path::Path;
use std::process::Command;

#[test]
fn kind_e2e_script_dry_run() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kind/dry-run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run tests/kind/dry-run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/kind/dry-run.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("tests/kind dry run: all checks passed"),
        "{stdout}"
    );
}
