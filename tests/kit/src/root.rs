//! The one root check. Namespaces, veths, iptables and running a program as another uid all need
//! root; a suite without it fails with this message and never skips, so a green run means the
//! tests ran.

use crate::Error;

const MESSAGE: &str = "this needs root: it creates network namespaces, veth pairs and iptables \
     rules, and runs programs as other users (the proxy as uid 1337); run it as root, e.g. \
     `sudo -E cargo test --release` or `sudo make demo`";

/// `Err` when not root, for binaries that report errors themselves (`make demo`).
pub fn check() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot(MESSAGE))
    }
}

/// Fails the test (a panic, never a skip) when not root.
pub fn require_root() {
    if let Err(e) = check() {
        panic!("{e}");
    }
}
