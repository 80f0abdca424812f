//! Processes started the way a container runtime would: inside a pod's network namespace, as the
//! container's uid/gid with no supplementary groups, with exactly the given environment, output
//! appended to a log file (what `kubectl logs` shows), in their own process group.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sched::{setns, CloneFlags};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use crate::netns::Netns;

/// What to run and as whom.
#[derive(Debug, Clone)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
}

impl Spec {
    pub fn new(argv: Vec<String>, uid: u32, gid: u32) -> Spec {
        Spec {
            argv,
            env: Vec::new(),
            uid,
            gid,
        }
    }

    fn command(&self, ns: &Netns) -> anyhow::Result<Command> {
        let file = ns.file()?;
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).env_clear();
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        cmd.env("HOME", "/");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir("/").process_group(0);
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)?;
                setgroups(&[])?;
                setgid(gid)?;
                setuid(uid)?;
                Ok(())
            });
        }
        Ok(cmd)
    }

    fn describe(&self) -> String {
        format!("`{}` (uid {})", self.argv.join(" "), self.uid)
    }

    /// Runs to completion; returns the exit status and the combined output.
    pub fn run(&self, ns: &Netns, timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let out = tempfile(&format!("run-{}", std::process::id()))?;
        let mut child = self.spawn_to(ns, &out)?;
        let status = wait_timeout(&mut child, timeout);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        match status {
            Some(s) => Ok((s, text)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "{} in {} did not finish within {timeout:?}: {text}",
                    self.describe(),
                    ns.name
                )
            }
        }
    }

    /// Runs to completion with stdout and stderr kept apart.
    pub fn output(&self, ns: &Netns) -> anyhow::Result<std::process::Output> {
        self.command(ns)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} in {}", self.describe(), ns.name))
    }

    /// Starts in the background, output appended to `log`.
    pub fn spawn_to(&self, ns: &Netns, log: &Path) -> anyhow::Result<Child> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        self.command(ns)?
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {} in {}", self.describe(), ns.name))
    }
}

/// A running container process; killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `spec` in `ns` as the process called `name`, its output appended to `log`.
    pub fn spawn(name: &str, spec: &Spec, ns: &Netns, log: PathBuf) -> anyhow::Result<Proc> {
        let child = spec.spawn_to(ns, &log)?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
            exited: None,
        })
    }

    /// Exit status if it has exited (kept once seen).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_timeout(&mut self.child, timeout);
        }
        self.exited
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tempfile(tag: &str) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "trellis-{tag}-{}",
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&p, b"")?;
    Ok(p)
}
