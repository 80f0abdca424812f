//! What the sandbox made, so that an interrupted demo (Ctrl-C, SIGTERM) can still remove it all:
//! network namespaces (with every process inside them; the kit keeps that list) and temporary
//! directories and files. Drop handlers remove their own entries; [`all`] removes whatever is left.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

static DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

pub(crate) fn add_dir(dir: PathBuf) {
    DIRS.lock().unwrap().insert(dir);
}

pub(crate) fn forget_dir(dir: &PathBuf) {
    DIRS.lock().unwrap().remove(dir);
}

/// Removes everything still registered (the demo's Ctrl-C handler); no namespace is created
/// after this.
pub fn all() {
    kit::netns::remove_all();
    let dirs: Vec<PathBuf> = DIRS.lock().unwrap().iter().cloned().collect();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Output files of commands that were still running (`Spec::run`, `load::start`).
    kit::process::remove_temp_files(&["run", "loadgen"]);
}
