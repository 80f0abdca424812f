//! Golden files: rendered artefacts (iptables-restore text, AdmissionReview answers) held against
//! files under review. One switch, `UPDATE_GOLDEN=1`, rewrites them from the code instead of
//! comparing; the diff is then reviewed like any other change.

use std::fmt;
use std::path::{Path, PathBuf};

/// The switch: set to `1` to rewrite golden files instead of comparing.
pub const SWITCH: &str = "UPDATE_GOLDEN";

/// True when this run rewrites golden files (`UPDATE_GOLDEN=1`; any other value compares).
pub fn updating() -> bool {
    std::env::var_os(SWITCH).is_some_and(|v| v == "1")
}

/// A golden file that is missing or differs from what the code computed.
#[derive(Debug)]
pub struct Mismatch {
    pub path: PathBuf,
    /// The file's text, or why it could not be read.
    pub want: Result<String, String>,
    pub got: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.want {
            Ok(want) => writeln!(
                f,
                "{} differs from the computed text\n--- golden\n{want}\n+++ computed\n{}",
                self.path.display(),
                self.got
            )?,
            Err(e) => writeln!(f, "{}: {e}", self.path.display())?,
        }
        // Cargo sets the package name for the test binaries it runs.
        let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "<crate>".into());
        write!(
            f,
            "to regenerate: `{SWITCH}=1 cargo test --release -p {package}`, then review the diff"
        )
    }
}

/// Compares `got` with the golden file at `path`, or (with `UPDATE_GOLDEN=1`) writes it there.
pub fn compare(path: &Path, got: &str) -> Result<(), Mismatch> {
    compare_or_update(path, got, updating())
}

fn compare_or_update(path: &Path, got: &str, update: bool) -> Result<(), Mismatch> {
    if update {
        if let Err(e) = std::fs::write(path, got) {
            panic!("writing golden file {}: {e}", path.display());
        }
        return Ok(());
    }
    let want = std::fs::read_to_string(path).map_err(|e| e.to_string());
    if want.as_deref() == Ok(got) {
        return Ok(());
    }
    Err(Mismatch {
        path: path.to_path_buf(),
        want,
        got: got.to_string(),
    })
}

/// [`compare`], failing the test on a mismatch.
pub fn assert_golden(path: &Path, got: &str) {
    if let Err(m) = compare(path, got) {
        panic!("{m}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_and_says_how_to_regenerate() {
        let dir = std::env::temp_dir().join(format!("trellis-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.txt");
        std::fs::write(&path, "one\n").unwrap();
        assert!(compare_or_update(&path, "one\n", false).is_ok());
        let m = compare_or_update(&path, "two\n", false)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("--- golden\none\n") && m.contains("+++ computed\ntwo\n"),
            "{m}"
        );
        assert!(
            m.contains("UPDATE_GOLDEN=1 cargo test --release -p kit"),
            "{m}"
        );
        let missing = compare_or_update(&dir.join("missing.txt"), "x", false)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("missing.txt: ") && missing.contains("UPDATE_GOLDEN=1"),
            "{missing}"
        );
        // Update mode writes the computed text, and then it compares equal.
        assert!(compare_or_update(&path, "two\n", true).is_ok());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert!(compare_or_update(&path, "two\n", false).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
