//! Listeners: accept, find the destination (gateway: fixed upstream; sidecar: `SO_ORIGINAL_DST`),
//! refuse loops, pick the cluster, detect the protocol, and hand the connection to HTTP or TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::{inbound_name, outbound_name, Cluster};
use crate::detect::{detect, Detected, Protocol};
use crate::drain::Side;
use crate::http::HttpCtx;
use crate::router::Upstream;
use crate::Proxy;

/// How long to wait for a client's first bytes before treating it as server-speaks-first TCP.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
    Gateway,
}

impl Direction {
    /// Listener stat prefix: `http.<name>.*`, `tcp.<name>.*`.
    /// Which drain it follows: a gateway serves callers, as inbound does.
    pub fn side(self) -> Side {
        match self {
            Direction::Outbound => Side::Outbound,
            Direction::Inbound | Direction::Gateway => Side::Inbound,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Gateway => "gateway",
        }
    }
}

/// Binds with SO_REUSEADDR and a deep backlog; IPv6 sockets are v6-only (v4 has its own).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// Binds the admin API's address. `[::]` (the default) is one dual-stack socket (`IPV6_V6ONLY`
/// off), reached over IPv6 and IPv4 alike, so Prometheus and the kubelet get it on either family of
/// a dual-stack or IPv6-only pod; where the pod has no IPv6 it falls back to `0.0.0.0`, same port.
/// Any other address is bound as given.
pub fn bind_admin(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let v6_any = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    if !v6_any {
        return bind(addr);
    }
    let dual = || -> std::io::Result<TcpListener> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_only_v6(false)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        TcpListener::from_std(s.into())
    };
    match dual() {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
        Err(e) => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, fallback = %v4, "no IPv6 in this pod ({e}): admin on IPv4 only");
            bind(v4)
        }
    }
}

pub struct Listener {
    pub proxy: Arc<Proxy>,
    pub dir: Direction,
    pub tcp: TcpListener,
    /// Gateway mode: where every connection goes (one cluster, or the gateway's routes).
    pub fixed: Option<Upstream>,
}

impl Listener {
    pub async fn run(self) {
        let proxy = self.proxy.clone();
        let drain = proxy.drain.side(self.dir.side());
        let http = Arc::new(HttpCtx {
            listener: proxy.registry.listener(self.dir.name()),
            request_timeout: proxy.config.request_timeout,
            idle_timeout: proxy.config.idle_timeout,
            add_forwarded_for: self.dir != Direction::Outbound,
            access_log: proxy.access_log.clone(),
            drain: drain.clone(),
            nowhere: Arc::default(),
        });
        // The socket is not shared with the connections: it closes as soon as this side's drain
        // reaches `Close` (inbound: `--drain-time` after SIGTERM; outbound: only on
        // `/quitquitquit`, so the app's calls go on while it shuts down).
        let Listener {
            proxy: _,
            dir,
            tcp,
            fixed,
        } = self;
        let this = Arc::new(Conns {
            proxy: proxy.clone(),
            dir,
            fixed,
        });
        loop {
            let accepted = tokio::select! {
                a = tcp.accept() => a,
                _ = drain.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = this.clone();
            let http = http.clone();
            let tracked = drain.track();
            tokio::spawn(async move {
                this.connection(stream, peer, http).await;
                drop(tracked);
            });
        }
    }
}

/// What each accepted connection of a listener needs.
struct Conns {
    proxy: Arc<Proxy>,
    dir: Direction,
    fixed: Option<Upstream>,
}

impl Conns {
    async fn connection(&self, stream: TcpStream, peer: SocketAddr, http: Arc<HttpCtx>) {
        let _ = stream.set_nodelay(true);
        let p = &self.proxy;
        let (up, port) = match &self.fixed {
            // The upstream's port decides opaque-ness (`--opaque-ports`), as in a sidecar.
            Some(up) => (up.clone(), up.tcp_cluster().map_or(0, |c| c.addr.port())),
            None => {
                let Ok(local) = stream.local_addr() else {
                    return;
                };
                let dst = crate::orig_dst::original_dst(&stream).unwrap_or(local);
                if crate::prevent_loop::is_loop(dst, local, &p.own_ports()) {
                    tracing::debug!(%dst, %peer, "refusing a connection to the proxy itself");
                    http.listener.http.downstream_cx_loop_refused.inc();
                    return;
                }
                let service = match (&p.discovery, self.dir) {
                    (Some(d), Direction::Outbound) => d.resolve(p, dst).await,
                    _ => None,
                };
                let up = service.unwrap_or_else(|| Upstream::Cluster(p.cluster_for(self.dir, dst)));
                (up, dst.port())
            }
        };
        let opaque = p.config.opaque_ports.contains(&port);
        let proto = if opaque {
            Protocol::Opaque
        } else if self.dir == Direction::Gateway {
            // An explicit listener expects HTTP: a silent client (a pre-dialled spare connection)
            // must not hold an upstream connection. It may stay silent up to the idle timeout.
            match detect(&stream, p.config.idle_timeout).await {
                Detected::Is(proto) => proto,
                Detected::Silent | Detected::Closed => return,
            }
        } else {
            // Transparent capture: silence may mean the server speaks first, so go opaque.
            match detect(&stream, DETECT_TIMEOUT).await {
                Detected::Is(proto) => proto,
                Detected::Silent => Protocol::Opaque,
                Detected::Closed => return,
            }
        };
        match proto {
            Protocol::Http1 | Protocol::Http2 => {
                let l = &http.listener;
                l.http.downstream_cx_total.inc();
                l.http.downstream_cx_active.inc();
                if proto == Protocol::Http1 {
                    crate::http::serve(stream, peer, up, http.clone()).await;
                } else {
                    crate::http2::serve(stream, peer, up, http.clone()).await;
                }
                http.listener.http.downstream_cx_active.dec();
            }
            Protocol::Opaque => {
                let Some(cluster) = up.tcp_cluster().cloned() else {
                    tracing::debug!(%peer, "not HTTP, and no route table can take opaque TCP: closing");
                    return;
                };
                crate::tcp::proxy(
                    stream,
                    cluster,
                    http.listener.clone(),
                    p.config.connect_timeout,
                    p.config.idle_timeout,
                )
                .await
            }
        }
    }
}

impl Proxy {
    fn own_ports(&self) -> [u16; 3] {
        [
            self.config.inbound_capture_port,
            self.config.outbound_capture_port,
            self.config.admin_listen.port(),
        ]
    }

    /// The cluster of a sidecar destination, created on first use.
    pub fn cluster_for(&self, dir: Direction, dst: SocketAddr) -> Arc<Cluster> {
        let (name, limits) = match dir {
            Direction::Inbound => (inbound_name(dst.port()), self.config.pools.inbound),
            _ => (outbound_name(dst), self.config.pools.outbound),
        };
        self.clusters.get_or_create(&name, &self.registry, || {
            Cluster::new(name.clone(), dst, limits, self.timeouts(), &self.registry)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};

    /// `[::]` is one socket that IPv6 and IPv4 clients both reach (connects complete in the
    /// backlog, nothing accepts); an IPv4 address stays IPv4 only.
    #[tokio::test]
    async fn the_admin_default_address_is_reached_over_ipv6_and_ipv4() {
        let l = bind_admin(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).unwrap();
        let local = l.local_addr().unwrap();
        assert!(local.is_ipv6(), "{local}: IPv6 is available here");
        let port = local.port();
        let timeout = Duration::from_secs(2);
        for to in [
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ] {
            TcpStream::connect_timeout(&to, timeout).unwrap_or_else(|e| panic!("{to}: {e}"));
        }
        let v4 = bind_admin(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, v4.local_addr().unwrap().port()));
        assert!(TcpStream::connect_timeout(&v6, timeout).is_err());
    }
}
