//! Where the workspace's binaries are: beside the running executable (the demo in
//! `target/release/`, a test in `target/release/deps/`), or in `$TRELLIS_BIN_DIR`.
//!
//! Pods run them as uid 1337 and 65532, which must be able to reach them. When the build directory
//! is private (a checkout under `/root`), they are hard-linked (or copied) into a world-readable
//! temporary directory first, as an image would have them in `/usr/local/bin`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context as _};

use crate::cleanup;

/// The programs a pod spec may name that come from this workspace (the image's `/usr/local/bin`).
pub const OURS: [&str; 7] = [
    "webhook",
    "control",
    "proxyinit",
    "proxy",
    "color",
    "loadgen",
    "grpc-echo",
];

/// Where the build put them.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRELLIS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut d = exe.parent().expect("exe dir").to_path_buf();
    if d.ends_with("deps") {
        d.pop();
    }
    d
}

/// Where pods run them from: [`dir`] if every user can reach it, else a staged copy.
pub fn run_dir() -> anyhow::Result<PathBuf> {
    static RUN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    RUN_DIR
        .get_or_init(|| stage().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Every directory above `p` searchable by others, and `p` executable by others.
fn reachable_by_all(p: &Path) -> bool {
    let others_x =
        |q: &Path| std::fs::metadata(q).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    others_x(p) && p.ancestors().skip(1).all(others_x)
}

fn stage() -> anyhow::Result<PathBuf> {
    let src = dir();
    let built: Vec<&str> = OURS
        .iter()
        .copied()
        .filter(|n| src.join(n).is_file())
        .collect();
    if built.iter().all(|n| reachable_by_all(&src.join(n))) {
        return Ok(src);
    }
    let tmp = std::env::temp_dir();
    // Staged copies of earlier runs whose process is gone.
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("trellis-bin-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dst = tmp.join(format!("trellis-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dst)?;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
    cleanup::add_dir(dst.clone());
    for n in built {
        let (from, to) = (src.join(n), dst.join(n));
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dst)
}

/// The path of one of [`OURS`], which must have been built.
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    let p = run_dir()?.join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build the workspace's binaries first (`cargo build --workspace \
             --release --bins`; `make test` and `make demo` do), or point TRELLIS_BIN_DIR at them",
            dir().join(name).display()
        );
    }
    Ok(p)
}

/// A container's `argv[0]` as the image would resolve it: ours from the build, others from PATH.
pub fn resolve(argv0: &str) -> anyhow::Result<String> {
    if OURS.contains(&argv0) {
        Ok(path(argv0)?.display().to_string())
    } else {
        Ok(argv0.to_string())
    }
}
