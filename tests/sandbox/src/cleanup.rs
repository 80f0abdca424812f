//! What the sandbox made, so that an interrupted demo (Ctrl-C, SIGTERM) can still remove it all:
//! network namespaces (with every process inside them) and temporary directories. Drop handlers
//! remove their own entries; [`all`] removes whatever is left.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static NETNS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
static STOPPING: AtomicBool = AtomicBool::new(false);

pub(crate) fn add_netns(name: &str) {
    NETNS.lock().unwrap().insert(name.to_string());
}

pub(crate) fn add_dir(dir: PathBuf) {
    DIRS.lock().unwrap().insert(dir);
}

pub(crate) fn forget_dir(dir: &PathBuf) {
    DIRS.lock().unwrap().remove(dir);
}

/// True once [`all`] has started: nothing new may be created.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Kills every process in the namespace `name`, then deletes it. Safe to call twice.
pub fn delete_netns(name: &str) {
    if std::path::Path::new("/run/netns").join(name).exists() {
        kill_netns_pids(name);
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
    }
    NETNS.lock().unwrap().remove(name);
}

/// SIGKILLs the processes whose network namespace is `name` (only the sandbox's own run there).
pub fn kill_netns_pids(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes everything still registered (the demo's Ctrl-C handler).
pub fn all() {
    STOPPING.store(true, Ordering::SeqCst);
    let names: Vec<String> = NETNS.lock().unwrap().iter().cloned().collect();
    for name in names {
        delete_netns(&name);
    }
    let dirs: Vec<PathBuf> = DIRS.lock().unwrap().iter().cloned().collect();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Output files of commands that were still running (`process::Spec::run`, `load::start`).
    let pid = std::process::id();
    let ours = [
        format!("trellis-run-{pid}-"),
        format!("trellis-loadgen-{pid}-"),
    ];
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ours.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Deletes namespaces left by an earlier run that was killed outright (`kill -9`): every
/// namespace whose name starts with `prefix`.
pub fn stale(prefix: &str) -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return 0;
    };
    let mut n = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if !name.is_empty() && name.starts_with(prefix) {
            delete_netns(name);
            n += 1;
        }
    }
    n
}
