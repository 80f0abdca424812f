//! The original destination of a connection redirected by iptables `REDIRECT` (`SO_ORIGINAL_DST`,
//! and `IP6T_SO_ORIGINAL_DST` for IPv6).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// `None` when the connection was not redirected (no conntrack NAT entry).
pub fn original_dst(s: &TcpStream) -> Option<SocketAddr> {
    match s.local_addr().ok()? {
        SocketAddr::V4(_) => {
            let a = getsockopt(s, sockopt::OriginalDst).ok()?;
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        SocketAddr::V6(_) => {
            let a = getsockopt(s, sockopt::Ip6tOriginalDst).ok()?;
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                0,
                0,
            )))
        }
    }
}
