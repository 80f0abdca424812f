//! Programs started the way a container runtime starts them: inside a namespace, as a uid/gid with
//! no supplementary groups, with exactly the given environment, in their own process group. The
//! iptables rules under test match on the socket owner's uid/gid, so the identity has to be real.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use crate::netns::Netns;
use crate::Error;

/// What to run and as whom.
#[derive(Debug, Clone)]
pub struct Spec {
    pub argv: Vec<String>,
    /// The whole environment besides `PATH` and `HOME` (nothing is inherited).
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

    /// The command, ready to spawn into `ns` as `uid`/`gid`; stdio is the caller's to set.
    pub fn command(&self, ns: &Netns) -> Result<Command, Error> {
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
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: setns, setgroups, setgid and setuid are plain
        // system calls, and it allocates nothing (the namespace file was opened before the fork).
        // The group goes before the user: once the uid is dropped, the gid may not change.
        #[allow(unsafe_code)] // the one pre_exec in the tree
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

    fn describe(&self, ns: &Netns) -> String {
        format!("{} (uid {}, in {})", self.argv.join(" "), self.uid, ns.name)
    }

    /// Runs to completion within `timeout`; returns the exit status and the combined output.
    pub fn run(&self, ns: &Netns, timeout: Duration) -> Result<(ExitStatus, String), Error> {
        let out = temp_file("run")?;
        let result = self.spawn_to(ns, &out).map(|mut child| {
            let status = wait_timeout(&mut child, timeout);
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            status
        });
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        match result? {
            Some(status) => Ok((status, text)),
            None => Err(Error::Timeout {
                command: self.describe(ns),
                timeout,
                output: text,
            }),
        }
    }

    /// Runs to completion with stdout and stderr kept apart.
    pub fn output(&self, ns: &Netns) -> Result<Output, Error> {
        self.command(ns)?
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                command: self.describe(ns),
                source,
            })
    }

    /// Starts in the background, output appended to `log`.
    pub fn spawn_to(&self, ns: &Netns, log: &Path) -> Result<Child, Error> {
        let io = |source| Error::Io {
            what: format!("opening {}", log.display()),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io)?;
        self.command(ns)?
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(io)?)
            .stderr(file)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: self.describe(ns),
                source,
            })
    }
}

/// A running process with a name and a log; killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `spec` in `ns` as the process called `name`, its output appended to `log`.
    pub fn spawn(name: &str, spec: &Spec, ns: &Netns, log: PathBuf) -> Result<Proc, Error> {
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

/// The exit status, or `None` if `child` is still running after `timeout`.
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

/// The prefix of this process's temporary files: `trellis-TAG-PID-`.
pub fn temp_prefix(tag: &str) -> String {
    format!("trellis-{tag}-{}-", std::process::id())
}

/// A new empty file `$TMPDIR/trellis-TAG-PID-N`.
pub fn temp_file(tag: &str) -> Result<PathBuf, Error> {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "{}{}",
        temp_prefix(tag),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&p, b"").map_err(|source| Error::Io {
        what: format!("creating {}", p.display()),
        source,
    })?;
    Ok(p)
}

/// Removes the temporary files of this process left by commands that were still running (an
/// interrupted demo).
pub fn remove_temp_files(tags: &[&str]) {
    let prefixes: Vec<String> = tags.iter().map(|t| temp_prefix(t)).collect();
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
