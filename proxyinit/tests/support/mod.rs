//! proxyinit's fixtures on top of the kit's pod/peer namespaces ([`kit::netns::Pair`]): the
//! proxyinit binary run in a namespace, its nat table read back, listeners that report the
//! original destination (SO_ORIGINAL_DST) of what they accept, and clients run as a chosen
//! uid/gid inside a namespace.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::process::Output;
use std::thread;

use kit::netns::Netns;
use kit::process::Spec;
use nix::sys::socket::{getsockopt, sockopt};

/// The proxyinit binary under test.
pub const PROXYINIT: &str = env!("CARGO_BIN_EXE_proxyinit");

/// What proxyinit's tests do in a pod namespace.
pub trait PodExt {
    /// `proxyinit ARGS` in the namespace.
    fn proxyinit(&self, args: &[&str]) -> Output;
    /// The nat table as `<iptables>-<backend>-save -t nat` prints it, without the dated comments.
    fn nat(&self, command: &str, backend: &str) -> String;
}

impl PodExt for Netns {
    fn proxyinit(&self, args: &[&str]) -> Output {
        let mut argv = vec![PROXYINIT];
        argv.extend_from_slice(args);
        self.exec(&argv).unwrap()
    }

    fn nat(&self, command: &str, backend: &str) -> String {
        self.run(&[&format!("{command}-{backend}-save"), "-t", "nat"])
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

/// Starts a listener on `port` (all IPv4 addresses) in `ns`; see [`serve_on`].
pub fn serve(ns: &Netns, port: u16, label: &'static str) {
    serve_on(ns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), label);
}

/// Starts a listener on `addr` in `ns`. Each accepted connection is answered
/// with one line, `LABEL ORIGINAL_DST`, then closed; the listener lives until the process exits.
pub fn serve_on(ns: &Netns, addr: SocketAddr, label: &'static str) {
    let listener = ns.listen(addr).unwrap();
    listener.set_nonblocking(false).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, label);
        }
    });
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
    let argv = ["timeout", "5", "bash", "-c", &script].map(String::from);
    let out = Spec::new(argv.to_vec(), uid, gid).output(ns).unwrap();
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
