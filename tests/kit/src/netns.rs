//! Named network namespaces (`ip netns add`) and the veths between them: the pods, peers and nodes
//! of every root suite. A namespace is deleted on drop, with every process still inside it (a
//! process would otherwise keep it alive), so also when a test panics; the ones still alive are
//! registered so that an interrupted run can remove them all ([`remove_all`]).
//!
//! Sockets are made inside a namespace on a short-lived thread that entered it
//! ([`Netns::enter`]); a socket keeps its namespace for life, so it can then be used from any
//! thread or runtime.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;

use nix::sched::{setns, CloneFlags};

use crate::Error;

static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static STOPPING: AtomicBool = AtomicBool::new(false);
static NAMES: AtomicU32 = AtomicU32::new(0);

/// `trellis-TAG-PID-N`: unique to this process and call, so suites and their tests run in
/// parallel; [`remove_stale`] finds a killed run's leftovers by the `trellis-TAG-` prefix.
pub fn unique_name(tag: &str) -> String {
    format!(
        "trellis-{tag}-{}-{}",
        std::process::id(),
        NAMES.fetch_add(1, Ordering::SeqCst)
    )
}

/// A named network namespace with `lo` up; deleted, with its processes, on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: impl Into<String>) -> Result<Netns, Error> {
        let name = name.into();
        if stopping() {
            return Err(Error::Stopping(name));
        }
        // A leftover of the same name (a killed run with a recycled pid) would make `add` fail.
        delete(&name);
        sh(&["ip", "netns", "add", &name])?;
        LIVE.lock().unwrap().insert(name.clone());
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/run/netns/NAME`, what `setns` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace file, for `setns`.
    pub fn file(&self) -> Result<File, Error> {
        File::open(self.path()).map_err(|source| Error::Netns {
            name: self.name.clone(),
            what: "opening /run/netns",
            source,
        })
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Result<(), Error> {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        sh(&argv).map(drop)
    }

    /// A veth pair: `dev` here, `peer_dev` in `peer` (both down, without addresses).
    pub fn veth(&self, dev: &str, peer: &Netns, peer_dev: &str) -> Result<(), Error> {
        self.ip(&[
            "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", &peer.name,
        ])
    }

    /// Adds `cidr` to `dev`; an IPv6 address skips duplicate address detection, so it is usable
    /// at once.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<(), Error> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])
        }
    }

    pub fn link_up(&self, dev: &str) -> Result<(), Error> {
        self.ip(&["link", "set", dev, "up"])
    }

    /// Runs `argv` inside the namespace (as root, `ip netns exec`); its output, whatever its status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output, Error> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                command: format!("ip netns exec {} {}", self.name, argv.join(" ")),
                source,
            })
    }

    /// Runs `argv` inside the namespace; it must succeed; returns its stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String, Error> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            return Err(Error::Failed {
                command: format!("{} (in {})", argv.join(" "), self.name),
                status: out.status,
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread that has entered this namespace: the sockets it makes live there. A
    /// panic in `f` is a panic here.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let file = self.file()?;
        let name = self.name.clone();
        let joined = thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                name,
                what: "setns",
                source: e.into(),
            })?;
            Ok(f())
        })
        .join();
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// A listening socket bound to `addr` in this namespace (non-blocking, so it can be handed
    /// to tokio with `TcpListener::from_std`).
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        let name = self.name.clone();
        self.enter(move || {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })?
        .map_err(|source| Error::Io {
            what: format!("listening on {addr} in {name}"),
            source,
        })
    }

    /// An unconnected, non-blocking TCP socket of `addr`'s family made in this namespace, for
    /// `tokio::net::TcpSocket::from_std_stream(..).connect(addr)`.
    pub fn socket_for(&self, addr: SocketAddr) -> Result<TcpStream, Error> {
        let name = self.name.clone();
        self.enter(move || {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(TcpStream::from(s))
        })?
        .map_err(|source| Error::Io {
            what: format!("making a socket for {addr} in {name}"),
            source,
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// True once [`remove_all`] has started: no namespace may be created any more.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Kills every process in the namespace `name`, then deletes it. Safe to call twice.
pub fn delete(name: &str) {
    if std::path::Path::new("/run/netns").join(name).exists() {
        kill_pids(name);
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
    }
    LIVE.lock().unwrap().remove(name);
}

/// SIGKILLs the processes whose network namespace is `name`, never this one (whose threads may
/// have entered it).
fn kill_pids(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            if pid != me {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Deletes every namespace this process still has (an interrupted demo's Ctrl-C handler); from
/// then on [`Netns::new`] refuses.
pub fn remove_all() {
    STOPPING.store(true, Ordering::SeqCst);
    let names: Vec<String> = LIVE.lock().unwrap().iter().cloned().collect();
    for name in names {
        delete(&name);
    }
}

/// Deletes the namespaces a run killed outright (`kill -9`) left: every one whose name starts
/// with `prefix`. Returns how many.
pub fn remove_stale(prefix: &str) -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return 0;
    };
    let mut n = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if !name.is_empty() && name.starts_with(prefix) {
            delete(name);
            n += 1;
        }
    }
    n
}

/// Runs a host command that must succeed; returns its stdout.
pub fn sh(argv: &[&str]) -> Result<String, Error> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: argv.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: argv.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static PAIRS: AtomicU32 = AtomicU32::new(0);

/// A pod namespace (`eth0` = 10.213.N.2/24, and fd00:213:N::2/64 with IPv6) wired by a veth pair
/// to a peer namespace that plays the other pods and the outside world (`eth0` = 10.213.N.1/24
/// and 10.213.N.130/24, fd00:213:N::1/64). N is unique in this process; addresses are per
/// namespace, so other processes may use the same N.
pub struct Pair {
    pub pod: Netns,
    pub peer: Netns,
    pub n: u32,
}

impl Pair {
    /// `ipv6`: give both ends a routable IPv6 address too.
    pub fn new(ipv6: bool) -> Result<Pair, Error> {
        let n = PAIRS.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(n < 250, "too many pairs for the 10.213.N.0/24 scheme");
        let pair = Pair {
            pod: Netns::new(unique_name("pod"))?,
            peer: Netns::new(unique_name("peer"))?,
            n,
        };
        let (pod, peer) = (&pair.pod, &pair.peer);
        pod.veth("eth0", peer, "eth0")?;
        pod.add_addr("eth0", &format!("{}/24", pair.pod_ip()))?;
        peer.add_addr("eth0", &format!("{}/24", pair.peer_ip()))?;
        peer.add_addr("eth0", &format!("{}/24", pair.peer_ip2()))?;
        if ipv6 {
            pod.add_addr("eth0", &format!("{}/64", pair.pod_ip6()))?;
            peer.add_addr("eth0", &format!("{}/64", pair.peer_ip6()))?;
        }
        pod.link_up("eth0")?;
        peer.link_up("eth0")?;
        Ok(pair)
    }

    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n as u8, 2)
    }

    pub fn peer_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n as u8, 1)
    }

    /// A second peer address, in the upper half of the /24 (for CIDR exclusions).
    pub fn peer_ip2(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n as u8, 130)
    }

    /// The pod's IPv6 address (configured only by `Pair::new(true)`).
    pub fn pod_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x213, self.n as u16, 0, 0, 0, 0, 2)
    }

    pub fn peer_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x213, self.n as u16, 0, 0, 0, 0, 1)
    }
}
