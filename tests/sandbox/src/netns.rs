//! Named network namespaces (`ip netns add`), deleted with every process inside them on drop.

use std::fs::File;
use std::process::Command;
use std::thread;

use anyhow::{bail, Context as _};
use nix::sched::{setns, CloneFlags};

use crate::cleanup;

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> anyhow::Result<Netns> {
        if cleanup::stopping() {
            bail!("stopping: not creating {name}");
        }
        // A leftover of the same name (a killed run with a recycled pid) would make `add` fail.
        cleanup::delete_netns(&name);
        sh(&["ip", "netns", "add", &name])?;
        cleanup::add_netns(&name);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        sh(&argv).map(drop)
    }

    /// The namespace file, for `setns`.
    pub fn file(&self) -> anyhow::Result<File> {
        File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening /run/netns/{}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace: the sockets it makes live there.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let file = self.file()?;
        let name = self.name.clone();
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {name}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        cleanup::delete_netns(&self.name);
    }
}

/// Runs a host command that must succeed; returns its stdout.
pub fn sh(argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("running `{}` (is iproute2 installed?)", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
