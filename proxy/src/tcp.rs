//! Opaque TCP: bytes copied both ways. The cluster's max connections applies: an overflowing
//! connection is closed at once and counted (`upstream_cx_overflow`). A connection on which no
//! byte moves for `--idle-timeout` is closed (`tcp.<listener>.idle_timeout`), as Envoy's
//! tcp_proxy does, so quiet or garbage clients cannot hold the pool's slots. A Service's
//! connections are balanced per connection (a consistent hash uses the client's address).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::cluster::{AcquireError, Cluster};
use crate::idle::{copy_until_idle, Ended};
use crate::stats::ListenerStats;

pub async fn proxy(
    mut down: TcpStream,
    cluster: Arc<Cluster>,
    listener: Arc<ListenerStats>,
    connect_timeout: Duration,
    idle_timeout: Duration,
) {
    listener.tcp.downstream_cx_total.inc();
    listener.tcp.downstream_cx_active.inc();
    struct Active(Arc<ListenerStats>);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.tcp.downstream_cx_active.dec();
        }
    }
    let _active = Active(listener.clone());
    let key = cluster
        .hash_on()
        .and_then(|_| down.peer_addr().ok())
        .map(|a| crate::balancer::stable_hash(a.ip().to_canonical().to_string().as_bytes()));
    let slot = match cluster.open_tcp(key) {
        Ok(s) => s,
        Err(AcquireError::Overflow) => {
            listener.tcp.upstream_cx_overflow.inc();
            return;
        }
        Err(_) => return,
    };
    let st = &cluster.stats;
    let addr = slot.host().addr;
    slot.host()
        .cx_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut up = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            st.upstream_cx_connect_fail.inc();
            slot.connect_failed();
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let (ended, to_up, to_down) = copy_until_idle(&mut down, &mut up, idle_timeout).await;
    st.upstream_cx_tx_bytes_total.add(to_up);
    st.upstream_cx_rx_bytes_total.add(to_down);
    if ended == Ended::Idle {
        tracing::debug!(cluster = %cluster.name, "tcp proxy: idle timeout");
        listener.tcp.idle_timeout.inc();
    }
    st.upstream_cx_destroy.inc();
}
