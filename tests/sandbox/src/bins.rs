//! Where the workspace's binaries are: beside the running executable (the demo in
//! `target/release/`, a test in `target/release/deps/`), or in `$TRELLIS_BIN_DIR`.

use std::path::PathBuf;

use anyhow::bail;

/// The programs a pod spec may name that come from this workspace (the image's `/usr/local/bin`).
pub const OURS: [&str; 5] = ["webhook", "proxyinit", "proxy", "color", "loadgen"];

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

/// The path of one of [`OURS`], which must have been built.
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    let p = dir().join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build the workspace's binaries first (`cargo build --workspace \
             --release --bins`; `make test` and `make demo` do), or point TRELLIS_BIN_DIR at them",
            p.display()
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
