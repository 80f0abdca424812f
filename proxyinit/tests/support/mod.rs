//! The pod sandbox for proxyinit's root tests: network namespaces named uniquely per test (and
//! deleted on drop, so also when a test fails), a "pod" joined by a veth pair to a "peer" that plays
//! both the other pods and the outside world, listeners that report the original destination
//! (SO_ORIGINAL_DST) of what they accept, and clients run as a chosen uid/gid inside a namespace.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs::File;
use std::io::Write as _;
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{getsockopt, sockopt};

/// The proxyinit binary under test.
pub const PROXYINIT: &str = env!("CARGO_BIN_EXE_proxyinit");

/// Fails the test (never skips it) when not root: network namespaces and iptables need it.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it creates network namespaces and writes iptables rules): \
         run `sudo -E cargo test -p proxyinit` or run CI as root"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique small number per sandbox in this process, used in names and addresses.
fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst) + 1
}

/// A named network namespace (`ip netns add`), deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str, id: u32) -> Netns {
        let name = format!("trellis-t{}-{id}-{role}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        sh(&argv);
    }

    /// Runs `argv` inside the namespace and returns its output, whatever its status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run `ip netns exec` (is iproute2 installed?)")
    }

    /// Runs `argv` inside the namespace; it must succeed; returns stdout.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "`{}` in {} failed ({}): {}{}",
            argv.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `proxyinit ARGS` in the namespace.
    pub fn proxyinit(&self, args: &[&str]) -> Output {
        let mut argv = vec![PROXYINIT];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// The nat table as `<iptables>-<backend>-save -t nat` prints it, without the dated comments.
    pub fn nat(&self, command: &str, backend: &str) -> String {
        self.run(&[&format!("{command}-{backend}-save"), "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates live there.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open /run/netns");
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a host command that must succeed.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("run `{}`: {e}", argv.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A pod namespace (`eth0` = 10.213.N.2/24, fd00:213:N::2/64) wired to a peer namespace
/// (`eth0` = 10.213.N.1/24 and 10.213.N.130/24, fd00:213:N::1/64).
pub struct Sandbox {
    pub pod: Netns,
    pub peer: Netns,
    pub n: u32,
}

impl Sandbox {
    /// `ipv6`: give the pod (and peer) a routable IPv6 address, so `--ipv6=auto` turns IPv6 on.
    pub fn new(ipv6: bool) -> Sandbox {
        let n = next_id();
        assert!(n < 250, "too many sandboxes for the 10.213.N.0/24 scheme");
        let pod = Netns::new("pod", n);
        let peer = Netns::new("peer", n);
        pod.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ]);
        let sb = Sandbox { pod, peer, n };
        sb.pod
            .ip(&["addr", "add", &format!("{}/24", sb.pod_ip()), "dev", "eth0"]);
        sb.peer.ip(&[
            "addr",
            "add",
            &format!("{}/24", sb.peer_ip()),
            "dev",
            "eth0",
        ]);
        sb.peer.ip(&[
            "addr",
            "add",
            &format!("{}/24", sb.peer_ip2()),
            "dev",
            "eth0",
        ]);
        if ipv6 {
            sb.pod.ip(&[
                "addr",
                "add",
                &format!("fd00:213:{n}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            sb.peer.ip(&[
                "addr",
                "add",
                &format!("fd00:213:{n}::1/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        sb.pod.ip(&["link", "set", "eth0", "up"]);
        sb.peer.ip(&["link", "set", "eth0", "up"]);
        sb
    }

    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n as u8, 2)
    }

    /// The pod's IPv6 address (only configured with `Sandbox::new(true)`).
    pub fn pod_ip6(&self) -> Ipv6Addr {
        format!("fd00:213:{}::2", self.n).parse().unwrap()
    }

    pub fn peer_ip6(&self) -> Ipv6Addr {
        format!("fd00:213:{}::1", self.n).parse().unwrap()
    }

    pub fn peer_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n as u8, 1)
    }

    /// A second peer address, in the upper half of the /24 (for CIDR exclusions).
    pub fn peer_ip2(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n as u8, 130)
    }
}

/// Starts a listener on `port` (all IPv4 addresses) in `ns`; see [`serve_on`].
pub fn serve(ns: &Netns, port: u16, label: &'static str) {
    serve_on(ns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), label);
}

/// Starts a listener on `addr` in `ns`. Each accepted connection is answered
/// with one line, `LABEL ORIGINAL_DST`, then closed; the listener lives until the process exits.
pub fn serve_on(ns: &Netns, addr: SocketAddr, label: &'static str) {
    let (tx, rx) = mpsc::channel();
    let file = File::open(format!("/run/netns/{}", ns.name)).expect("open /run/netns");
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = TcpListener::bind(addr);
        let listener = match listener {
            Ok(l) => {
                tx.send(Ok(())).unwrap();
                l
            }
            Err(e) => {
                tx.send(Err(e.to_string())).unwrap();
                return;
            }
        };
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, label);
        }
    });
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", ns.name));
}

fn answer(mut stream: TcpStream, label: &str) -> std::io::Result<()> {
    // Without conntrack (the peer has no nat rules) there is no original destination: nothing
    // was redirected, so the address the client reached is the one it dialled.
    let orig = original_dst(&stream).or_else(|_| stream.local_addr())?;
    writeln!(stream, "{label} {orig}")?;
    stream.flush()
}

/// The destination the client dialled, before any REDIRECT (SO_ORIGINAL_DST).
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    if stream.local_addr()?.is_ipv6() {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(std::io::Error::from)?;
        return Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            0,
            0,
        )));
    }
    let sa = getsockopt(stream, sockopt::OriginalDst).map_err(std::io::Error::from)?;
    Ok(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )))
}

/// Connects from `ns` as `uid`/`gid` (a separate process: owner matching is per socket) to
/// `addr` and returns the first line the server sent, or `error: ...`.
pub fn dial(ns: &Netns, uid: u32, gid: u32, addr: SocketAddr) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && head -n1 <&3",
        addr.ip(),
        addr.port()
    );
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let out = ns.exec(&[
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
        "timeout",
        "5",
        "bash",
        "-c",
        &script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !stdout.is_empty() {
        stdout
    } else {
        format!(
            "error: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}
