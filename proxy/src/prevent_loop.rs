//! Refuses connections whose original destination is one of the proxy's own listeners: forwarding
//! them would send the proxy traffic to itself, forever.

use std::net::{IpAddr, SocketAddr};

/// True if forwarding to `dst` would loop back into this proxy. `local` is the address the
/// connection was accepted on; `own_ports` are the proxy's listener ports.
pub fn is_loop(dst: SocketAddr, local: SocketAddr, own_ports: &[u16]) -> bool {
    if dst == local {
        return true;
    }
    own_ports.contains(&dst.port()) && is_local(dst.ip(), local.ip())
}

fn is_local(ip: IpAddr, local: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || ip == local.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops() {
        let local: SocketAddr = "10.1.0.5:15006".parse().unwrap();
        let own = [15001, 15006, 9901];
        assert!(is_loop(local, local, &own));
        assert!(is_loop("127.0.0.1:15001".parse().unwrap(), local, &own));
        assert!(is_loop("10.1.0.5:15001".parse().unwrap(), local, &own));
        assert!(!is_loop("10.1.0.5:8080".parse().unwrap(), local, &own));
        assert!(!is_loop("10.1.0.9:15001".parse().unwrap(), local, &own));
        assert!(is_loop(
            "[::1]:15006".parse().unwrap(),
            "[::1]:15006".parse().unwrap(),
            &own
        ));
    }
}
